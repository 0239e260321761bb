//! Operator hooks: shell commands run at role changes (promote the database,
//! stop writes, …). Each runs with a timeout, its output is logged, its
//! failure reported — and it runs at most once per epoch change, recorded in
//! the catalog before it starts.

use crate::catalog::Catalog;
use std::process::Stdio;
use std::time::Duration;

/// What happened when a hook was due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    NotConfigured,
    /// Already ran for this epoch change (e.g. before a crash).
    AlreadyRan,
    Succeeded {
        output: String,
    },
    Failed {
        reason: String,
        output: String,
    },
}

impl HookOutcome {
    pub fn failed(&self) -> bool {
        matches!(self, HookOutcome::Failed { .. })
    }

    /// One line for reports and the audit log.
    pub fn summary(&self, name: &str) -> String {
        match self {
            HookOutcome::NotConfigured => format!("{name} hook: none configured"),
            HookOutcome::AlreadyRan => {
                format!("{name} hook: already ran for this epoch, not run again")
            }
            HookOutcome::Succeeded { .. } => format!("{name} hook: succeeded"),
            HookOutcome::Failed { reason, output } => {
                let tail: String = output
                    .lines()
                    .last()
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect();
                format!("{name} hook: FAILED ({reason}) {tail}")
            }
        }
    }
}

/// Context passed to hooks as environment variables (no secrets).
pub struct HookEnv<'a> {
    pub node_id: &'a str,
    pub epoch: u64,
    pub role: &'a str,
    pub fork_position: Option<u64>,
}

/// Runs hook `name` (`sh -c COMMAND`) for the change to `env.epoch`, at most
/// once per epoch.
pub async fn run(
    catalog: &Catalog,
    name: &str,
    command: Option<&str>,
    timeout: Duration,
    env: &HookEnv<'_>,
) -> HookOutcome {
    let Some(command) = command else {
        return HookOutcome::NotConfigured;
    };
    match catalog.claim_hook(name, env.epoch) {
        Ok(true) => {}
        Ok(false) => return HookOutcome::AlreadyRan,
        Err(e) => {
            return HookOutcome::Failed {
                reason: format!("cannot record the hook run: {e}"),
                output: String::new(),
            }
        }
    }
    tracing::warn!(hook = name, epoch = env.epoch, "running hook");
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .env("DRD_HOOK", name)
        .env("DRD_NODE_ID", env.node_id)
        .env("DRD_EPOCH", env.epoch.to_string())
        .env("DRD_ROLE", env.role)
        .env(
            "DRD_FORK_POSITION",
            env.fork_position.map(|p| p.to_string()).unwrap_or_default(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            crate::metrics::hook_ran(name, true);
            return HookOutcome::Failed {
                reason: format!("cannot start sh: {e}"),
                output: String::new(),
            };
        }
    };
    let result = tokio::time::timeout(timeout, child.wait_with_output()).await;
    let outcome = match result {
        Err(_) => HookOutcome::Failed {
            reason: format!("timed out after {timeout:?} and was killed"),
            output: String::new(),
        },
        Ok(Err(e)) => HookOutcome::Failed {
            reason: format!("wait failed: {e}"),
            output: String::new(),
        },
        Ok(Ok(out)) => {
            let output = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            for line in output.lines() {
                tracing::info!(hook = name, "{line}");
            }
            if out.status.success() {
                HookOutcome::Succeeded { output }
            } else {
                HookOutcome::Failed {
                    reason: format!("exited with {}", out.status),
                    output,
                }
            }
        }
    };
    crate::metrics::hook_ran(name, outcome.failed());
    match &outcome {
        HookOutcome::Failed { reason, .. } => {
            tracing::error!(hook = name, epoch = env.epoch, %reason, "hook failed")
        }
        _ => tracing::warn!(hook = name, epoch = env.epoch, "hook succeeded"),
    }
    outcome
}

/// Runs the configured hook `name` (promote, demote, fence,
/// pre_switchover, abort_switchover) for the change to `epoch`, with the
/// node's timeout and environment.
pub async fn run_configured(
    node: &crate::node::Node,
    name: &str,
    epoch: u64,
    role: &str,
    fork_position: Option<u64>,
) -> HookOutcome {
    let h = &node.config.hooks;
    let command = match name {
        "promote" => h.promote.as_deref(),
        "demote" => h.demote.as_deref(),
        "fence" => h.fence.as_deref(),
        "pre_switchover" => h.pre_switchover.as_deref(),
        "abort_switchover" => h.abort_switchover.as_deref(),
        _ => None,
    };
    run(
        &node.catalog,
        name,
        command,
        Duration::from_secs(h.timeout_seconds),
        &HookEnv {
            node_id: node.config.node_id.as_str(),
            epoch,
            role,
            fork_position,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HookEnv<'static> {
        HookEnv {
            node_id: "n1",
            epoch: 7,
            role: "primary",
            fork_position: Some(42),
        }
    }

    #[tokio::test]
    async fn hooks_run_once_per_epoch_with_their_environment() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c")).unwrap();
        let out = dir.path().join("out");
        let cmd = format!(
            "echo $DRD_HOOK $DRD_EPOCH $DRD_FORK_POSITION >> {}",
            out.display()
        );
        let t = Duration::from_secs(10);
        let first = run(&cat, "promote", Some(&cmd), t, &env()).await;
        assert!(matches!(first, HookOutcome::Succeeded { .. }), "{first:?}");
        assert_eq!(
            run(&cat, "promote", Some(&cmd), t, &env()).await,
            HookOutcome::AlreadyRan
        );
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "promote 7 42\n");
        assert_eq!(
            run(&cat, "fence", None, t, &env()).await,
            HookOutcome::NotConfigured
        );
    }

    #[tokio::test]
    async fn failures_and_timeouts_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        let r = run(
            &cat,
            "a",
            Some("echo nope >&2; exit 3"),
            Duration::from_secs(10),
            &env(),
        )
        .await;
        assert!(r.failed());
        assert!(r.summary("a").contains("nope"), "{}", r.summary("a"));
        let r = run(
            &cat,
            "b",
            Some("sleep 5"),
            Duration::from_millis(200),
            &env(),
        )
        .await;
        assert!(r.summary("b").contains("timed out"));
    }
}
