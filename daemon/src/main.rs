//! `drd`: the daemon binary. `drd --config FILE` runs it, `--check-config`
//! validates the file and exits, `drd demo` runs a local primary + replica,
//! `drd completions SHELL` prints a completion script, and the hidden
//! `drd man --out DIR` writes the man page (for packaging).
//!
//! Exit codes: 0 clean stop or valid config; 1 runtime failure; 2 invalid
//! configuration or usage.

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use drd::config::{Config, DEFAULT_CONFIG_PATH};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "drd",
    version = drd::version::VERSION_LINE,
    about = "Disaster-recovery replication daemon for database WAL"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, env = "DRD_CONFIG")]
    config: PathBuf,
    /// Validate the configuration and exit (0 valid, 2 invalid).
    #[arg(long)]
    check_config: bool,
    /// Log format: human-readable lines or JSON objects for log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local primary and replica on loopback with generated WAL and a
    /// live status table (Ctrl-C to stop).
    Demo(drd::demo::DemoArgs),
    /// Print a shell completion script to stdout, e.g.
    /// `drd completions bash > /etc/bash_completion.d/drd`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man page drd.1 into a directory (for packaging).
    #[command(hide = true)]
    Man {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Writes drd.1 into `dir` and names it on stdout. The hidden `man`
/// subcommand gets no page of its own; `completions` does not either: the
/// page documents the daemon.
fn write_man_page(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the man page directory {}", dir.display()))?;
    let page = clap_mangen::Man::new(Cli::command())
        .generate_to(dir)
        .with_context(|| format!("cannot write the man page into {}", dir.display()))?;
    println!("{}", page.display());
    Ok(())
}

/// Installs the log subscriber: `DRD_LOG` if set, else `default_level`.
/// Returns what changes the filter later (`log_level` on SIGHUP).
fn init_logging(format: LogFormat, default_level: &str) -> drd::notify::LogReload {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let filter =
        EnvFilter::try_from_env("DRD_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let (filter, handle) = reload::Layer::new(filter);
    let layer = fmt::layer()
        // Colour only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Human => registry.with(layer).init(),
        LogFormat::Json => registry.with(layer.json()).init(),
    }
    Box::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Demo(args)) => {
            let _ = init_logging(cli.log_format, "warn");
            return report(drd::demo::run(args));
        }
        Some(Command::Completions { shell }) => {
            use std::io::Write;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "drd", &mut script);
            // A closed pipe (`drd completions bash | head`) is not an error.
            return match std::io::stdout().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("drd: cannot write the completion script to stdout: {e}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::SUCCESS,
            };
        }
        Some(Command::Man { out }) => return report(write_man_page(&out)),
        None => {}
    }
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drd: {e:#}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        if let Err(e) = config.check_environment() {
            eprintln!("drd: {e:#}");
            return ExitCode::from(2);
        }
        println!("{}: configuration is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let level = config
        .log_level
        .clone()
        .unwrap_or_else(|| drd::config::DEFAULT_LOG_LEVEL.to_string());
    let log_reload = init_logging(cli.log_format, &level);
    let service = drd::notify::Service {
        config_path: Some(cli.config.clone()),
        log_reload: Some(log_reload),
    };
    report(serve(config, service))
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config, service: drd::notify::Service) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        // Installed before anything starts: a daemon that could not stop
        // cleanly on SIGTERM (systemctl stop) must not run.
        let mut term = signal(SignalKind::terminate())
            .context("cannot install the SIGTERM handler (needed for a clean stop)")?;
        let mut int = signal(SignalKind::interrupt())
            .context("cannot install the SIGINT handler (needed for a clean stop)")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            signals.cancel();
        });
        // SIGHUP (systemctl reload) is handled inside: see drd::notify.
        drd::run_with(config, shutdown, service).await
    })
}
