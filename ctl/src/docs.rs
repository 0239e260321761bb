//! `drctl completions SHELL` and the hidden `drctl man --out DIR`: shell
//! completion scripts and man pages generated from the clap definitions, so
//! they never drift from the CLI (the Debian package ships both).

use anyhow::Context;
use clap::{Args, CommandFactory};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
}

/// Prints the completion script for `a.shell` to stdout.
pub fn completions(a: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut crate::Cli::command(), "drctl", &mut script);
    match std::io::stdout().write_all(&script) {
        // `drctl completions bash | head` is not an error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write the completion script to stdout")
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Writes drctl.1 and a page per visible subcommand (drctl-status.1,
/// drctl-certs-init.1, ...) into `a.out`, and names them on stdout.
pub fn man(a: &ManArgs) -> anyhow::Result<ExitCode> {
    for page in write_man_pages(crate::Cli::command(), &a.out)? {
        println!("{}", page.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The pages of `cmd` and its visible subcommands, written into `dir`.
pub fn write_man_pages(cmd: clap::Command, dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the man page directory {}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    Ok(pages)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pages_cover_every_visible_subcommand_and_no_hidden_one() {
        let dir = std::env::temp_dir().join(format!("drctl-man-{}", std::process::id()));
        let pages =
            super::write_man_pages(<crate::Cli as clap::CommandFactory>::command(), &dir).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "drctl.1",
            "drctl-status.1",
            "drctl-verify.1",
            "drctl-certs-init.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        assert!(!names.iter().any(|n| n == "drctl-man.1"), "{names:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
