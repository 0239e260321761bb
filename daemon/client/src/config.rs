//! What a client needs of the daemon's configuration (`/etc/drd/drd.toml`):
//! where it is, where the control socket is, and the data-loss amounts that
//! `rpo_budget` and `drctl failover --max-data-loss` are written in. The
//! daemon's own parsing and validation of the whole file is its `config`
//! module, which re-exports these.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// Where `drd` and `drctl` look for the configuration by default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/drd/drd.toml";
/// Control socket used when the configuration names none.
pub const DEFAULT_SOCKET_PATH: &str = "/run/drd/drd.sock";

/// An amount of data loss: bytes (`16MiB`) or time (`30s`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DataLoss {
    Bytes(u64),
    Seconds(f64),
}

impl DataLoss {
    /// Parses an amount of bytes (`123`, `64KiB`, `16MiB`, `16MB`) or time
    /// (`500ms`, `30s`, `5min`, `1h`) with the units of [`crate::units`];
    /// `16m` and `16M` are refused as ambiguous.
    pub fn parse(text: &str) -> Result<Self, crate::units::UnitError> {
        use crate::units::SizeOrDuration;
        Ok(match crate::units::parse_size_or_duration(text)? {
            SizeOrDuration::Bytes(b) => DataLoss::Bytes(b),
            SizeOrDuration::Duration(d) => DataLoss::Seconds(d.as_secs_f64()),
        })
    }
}

/// The control socket the config file at `path` names (`[control] socket`,
/// an absolute path), or [`DEFAULT_SOCKET_PATH`] when it names none. Reads
/// only that key: the rest of the file is the daemon's to validate
/// (`drd --check-config`).
pub fn control_socket(path: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("invalid config file {}", path.display()))?;
    let socket = match table.get("control").and_then(|c| c.get("socket")) {
        None => return Ok(PathBuf::from(DEFAULT_SOCKET_PATH)),
        Some(toml::Value::String(s)) => PathBuf::from(s),
        Some(v) => bail!("key `control.socket`: {v} must be a path (a string)"),
    };
    if !socket.is_absolute() {
        bail!("key `control.socket`: {socket:?} must be an absolute path");
    }
    Ok(socket)
}

/// The CA certificate the config file at `path` names (`[tls] ca`), if
/// any: what `drctl drill verify` checks a report's signer against.
pub fn tls_ca(path: &Path) -> anyhow::Result<Option<PathBuf>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("invalid config file {}", path.display()))?;
    match table.get("tls").and_then(|t| t.get("ca")) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(PathBuf::from(s))),
        Some(v) => bail!("key `tls.ca`: {v} must be a path (a string)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket_of(text: &str) -> anyhow::Result<PathBuf> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("drd.toml");
        std::fs::write(&path, text)?;
        control_socket(&path)
    }

    #[test]
    fn the_socket_is_the_configured_one_or_the_default() {
        let named = "node_id = \"a\"\n[control]\nsocket = \"/run/x/drd.sock\"\n";
        assert_eq!(socket_of(named).unwrap(), PathBuf::from("/run/x/drd.sock"));
        let none = "node_id = \"a\"\ndata_dir = \"/var/lib/drd\"\n";
        assert_eq!(socket_of(none).unwrap(), PathBuf::from(DEFAULT_SOCKET_PATH));
        assert!(socket_of("[control]\nsocket = \"rel/drd.sock\"\n").is_err());
        assert!(socket_of("[control]\nsocket = 3\n").is_err());
        assert!(socket_of("not toml [").is_err());
    }

    #[test]
    fn the_ca_is_the_configured_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drd.toml");
        std::fs::write(&path, "[tls]\nca = \"/etc/drd/ca.pem\"\n").unwrap();
        assert_eq!(
            tls_ca(&path).unwrap(),
            Some(PathBuf::from("/etc/drd/ca.pem"))
        );
        std::fs::write(&path, "node_id = \"a\"\n").unwrap();
        assert_eq!(tls_ca(&path).unwrap(), None);
        std::fs::write(&path, "[tls]\nca = 1\n").unwrap();
        assert!(tls_ca(&path).is_err());
    }

    #[test]
    fn data_loss_reads_bytes_and_durations() {
        assert_eq!(DataLoss::parse("16MiB").unwrap(), DataLoss::Bytes(16 << 20));
        assert_eq!(DataLoss::parse("30s").unwrap(), DataLoss::Seconds(30.0));
        assert!(DataLoss::parse("16m").is_err());
    }
}
