//! `drctl certs init`: makes the certificates for mutual TLS between drd
//! nodes — a private CA and one certificate per node — with
//! [`drd_client::certs::init_dir`], then says which file goes where.

use clap::{Args, Subcommand};
use drd_client::certs::{CertError, CA_CERT_FILE, CA_KEY_FILE};
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Validity of generated certificates when `--days` is not given: two years.
/// The CA and the node certificates expire together; renew before then.
pub const DEFAULT_DAYS: u32 = 730;

/// Exit code for a usage error (bad node name, file exists, ...).
const EXIT_USAGE: u8 = 2;

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Create a private CA and a certificate and key for each node.
    Init(InitArgs),
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory to write into (created with mode 0700 if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// A node's id, as in its `node_id`; repeat for every node
    /// (e.g. --node verona-db1 --node rochester-dr1).
    #[arg(long = "node", value_name = "NAME", required = true)]
    pub nodes: Vec<String>,
    /// Validity of the CA and node certificates, in days.
    #[arg(long, default_value_t = DEFAULT_DAYS,
          value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub days: u32,
    /// Replace existing files. This makes a new CA: every node then needs
    /// its new certificate, key and ca.pem.
    #[arg(long)]
    pub force: bool,
}

/// Runs a `drctl certs` subcommand. Usage errors (a bad node name, a file
/// that exists) are printed here and give exit code 2; other failures are
/// returned.
pub fn run(cmd: &CertsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCmd::Init(args) => init(args),
    }
}

fn init(args: &InitArgs) -> anyhow::Result<ExitCode> {
    match drd_client::certs::init_dir(&args.out, &args.nodes, args.days, args.force) {
        Ok(written) => {
            print!("{}", report(args, &written));
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (CertError::Generate { .. } | CertError::Io { .. })) => {
            Err(anyhow::Error::new(e).context("certs init failed"))
        }
        Err(e) => {
            eprintln!("drctl: certs init: {e}");
            Ok(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// What each written file is and where it goes.
fn describe(file: &str) -> String {
    if file == CA_CERT_FILE {
        return "CA certificate: copy to every node".to_string();
    }
    if file == CA_KEY_FILE {
        return "CA private key: keep OFFLINE, on no node (it signs new node certificates)"
            .to_string();
    }
    match file.rsplit_once('.') {
        Some((node, "pem")) => format!("certificate of node {node}: copy to {node}"),
        Some((node, "key")) => format!("private key of node {node}: copy to {node} only"),
        _ => String::new(),
    }
}

fn mode_of(path: &Path) -> String {
    std::fs::metadata(path)
        .map(|m| format!("{:04o}", m.permissions().mode() & 0o7777))
        .unwrap_or_else(|_| "?".to_string())
}

/// The table of written files and the next steps.
fn report(args: &InitArgs, written: &[PathBuf]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Wrote {} files to {} (certificates valid for {} days):\n",
        written.len(),
        args.out.display(),
        args.days
    );
    let names: Vec<String> = written
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let width = names.iter().map(String::len).max().unwrap_or(4).max(4);
    let _ = writeln!(s, "  {:width$}  MODE  WHAT", "FILE");
    for (name, path) in names.iter().zip(written) {
        let _ = writeln!(s, "  {name:width$}  {}  {}", mode_of(path), describe(name));
    }
    let dir = args.out.display();
    let _ = writeln!(s, "\nNext steps:");
    let _ = writeln!(
        s,
        "  1. Copy to each node, into a directory only the drd user can read \
         (e.g. /etc/drd/tls, keys mode 0600):"
    );
    for node in &args.nodes {
        let _ = writeln!(
            s,
            "       {node}: {dir}/{CA_CERT_FILE} {dir}/{node}.pem {dir}/{node}.key"
        );
    }
    let _ = writeln!(
        s,
        "  2. Move {dir}/{CA_KEY_FILE} to offline storage and delete it here; \
         no node needs it."
    );
    let _ = writeln!(
        s,
        "  3. In each node's drd.toml, point [tls] ca, cert and key at its files, \
         list the nodes it accepts in tls.allowed_peers, and use https:// peer URLs."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: CertsCmd,
    }

    fn parse(args: &[&str]) -> Result<InitArgs, clap::Error> {
        let mut argv = vec!["certs"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|c| match c.cmd {
            CertsCmd::Init(a) => a,
        })
    }

    #[test]
    fn parses_repeated_nodes_and_defaults() {
        let a = parse(&["init", "--out", "/x", "--node", "a", "--node", "b"]).unwrap();
        assert_eq!(a.nodes, ["a", "b"]);
        assert_eq!(a.days, DEFAULT_DAYS);
        assert!(!a.force);
        assert!(
            parse(&["init", "--out", "/x"]).is_err(),
            "--node is required"
        );
        assert!(parse(&["init", "--out", "/x", "--node", "a", "--days", "0"]).is_err());
    }

    #[test]
    fn init_writes_and_reports_then_refuses_overwrite() {
        let out = std::env::temp_dir().join(format!("drctl-certs-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let out_s = out.to_str().unwrap();
        let args = parse(&[
            "init",
            "--out",
            out_s,
            "--node",
            "verona-db1",
            "--node",
            "dr1",
        ])
        .unwrap();
        let written =
            drd_client::certs::init_dir(&args.out, &args.nodes, args.days, false).unwrap();
        let text = report(&args, &written);
        let line = |file: &str| -> Vec<String> {
            let l = text
                .lines()
                .find(|l| l.split_whitespace().next() == Some(file))
                .unwrap_or_else(|| panic!("no line for {file} in:\n{text}"));
            l.split_whitespace().map(String::from).collect()
        };
        assert_eq!(line("ca.key")[1], "0600");
        assert!(line("ca.key").contains(&"OFFLINE,".to_string()), "{text}");
        assert_eq!(line("verona-db1.pem")[1], "0644");
        assert_eq!(line("verona-db1.key")[1], "0600");
        let copy = format!("dr1: {out_s}/ca.pem {out_s}/dr1.pem {out_s}/dr1.key");
        assert!(text.contains(&copy), "{text}");

        let code = init(&args).unwrap();
        assert_eq!(
            code,
            ExitCode::from(EXIT_USAGE),
            "existing files are refused"
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
}
