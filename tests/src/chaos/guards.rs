//! Faults outside the proxy that need root and must be undone even when a
//! run panics: iptables DROP rules on the test's own loopback ports, and a
//! small tmpfs under a replica's data directory that can be filled up.
//! Each is a guard whose `Drop` removes what it added.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Every rule the suite inserts carries this comment, so rules left behind
/// by a killed test process can be found and removed.
const RULE_COMMENT: &str = "drd-chaos";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Ok when iptables partitions can run here; otherwise why not (printed
/// with the skipped fault).
pub fn iptables_available() -> Result<(), String> {
    if !is_root() {
        return Err("not root: iptables partitions skipped".into());
    }
    run("iptables", &["-w", "-S", "INPUT"])
        .map_err(|e| format!("iptables unusable ({e}): iptables partitions skipped"))?;
    remove_stale_rules();
    Ok(())
}

/// Removes rules a previous, killed test process left behind.
fn remove_stale_rules() {
    let Ok(out) = Command::new("iptables")
        .args(["-w", "-S", "INPUT"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(rule) = line.strip_prefix("-A ") {
            if rule.contains(RULE_COMMENT) {
                let args: Vec<&str> = ["-w", "-D"]
                    .into_iter()
                    .chain(rule.split_whitespace())
                    .collect();
                let _ = run("iptables", &args);
            }
        }
    }
}

/// DROP rules on loopback for some ports, both directions; removed on drop.
pub struct IptablesGuard {
    rules: Vec<Vec<String>>,
}

impl IptablesGuard {
    /// Drops every TCP packet on `lo` to or from each of `ports` (the
    /// test's own proxy ports): established connections hang, new ones
    /// cannot be made, as in a real partition.
    pub fn drop_ports(ports: &[u16]) -> Result<Self, String> {
        let mut g = Self { rules: Vec::new() };
        for p in ports {
            for dir in ["--dport", "--sport"] {
                let rule: Vec<String> = [
                    "INPUT",
                    "-i",
                    "lo",
                    "-p",
                    "tcp",
                    dir,
                    &p.to_string(),
                    "-m",
                    "comment",
                    "--comment",
                    RULE_COMMENT,
                    "-j",
                    "DROP",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                let mut args = vec!["-w", "-I"];
                args.extend(rule.iter().map(String::as_str));
                // On failure `g` drops here and removes what was inserted.
                run("iptables", &args)?;
                g.rules.push(rule);
            }
        }
        Ok(g)
    }
}

impl Drop for IptablesGuard {
    fn drop(&mut self) {
        for rule in self.rules.drain(..).rev() {
            let mut args = vec!["-w", "-D"];
            args.extend(rule.iter().map(String::as_str));
            if let Err(e) = run("iptables", &args) {
                eprintln!("WARNING: could not remove iptables rule: {e}");
            }
        }
    }
}

/// A tmpfs of `size_mib` mounted at a directory; unmounted on drop.
pub struct TmpfsGuard {
    pub dir: PathBuf,
}

impl TmpfsGuard {
    pub fn mount(dir: &Path, size_mib: u64) -> Result<Self, String> {
        if !is_root() {
            return Err("not root: the disk-full fault (tmpfs) is skipped".into());
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mib}m"),
                "tmpfs",
                &dir.display().to_string(),
            ],
        )
        .map_err(|e| format!("cannot mount a tmpfs ({e}): the disk-full fault is skipped"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Fills the file system with a filler file until it is full; returns
    /// the filler's path and size.
    pub fn fill(&self) -> (PathBuf, u64) {
        use std::io::Write;
        let path = self.dir.join("chaos-filler");
        let mut written = 0u64;
        if let Ok(mut f) = std::fs::File::create(&path) {
            let block = vec![0xa5u8; 1 << 20];
            // Big blocks, then small ones for the last bytes; bounded by
            // the tmpfs size.
            for size in [1 << 20, 4096, 512] {
                while f.write_all(&block[..size]).is_ok() {
                    written += size as u64;
                }
            }
        }
        (path, written)
    }
}

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let d = self.dir.display().to_string();
        if run("umount", &[&d]).is_err() {
            // Still busy (a daemon not yet reaped): detach it lazily.
            if let Err(e) = run("umount", &["-l", &d]) {
                eprintln!("WARNING: could not unmount {d}: {e}");
            }
        }
    }
}
