//! Operator hooks: shell commands run at role changes (promote the database,
//! stop writes, …). Each runs with a timeout, its output is logged, its
//! failure reported — and it runs at most once per epoch change, recorded in
//! the catalog before it starts.

use crate::storage::catalog::Catalog;
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
    /// `DRD_STREAM`: the stream whose role changes (roles are per stream:
    /// a hook that promotes a database must know which one).
    pub stream: &'a drd_proto::StreamName,
    /// `DRD_EPOCH`: the stream's epoch — the new one after a role change,
    /// the current one for a hook that runs before any change.
    pub epoch: u64,
    pub role: &'a str,
    pub fork_position: Option<u64>,
    /// `DRD_FORK_LSN` and `DRD_FORK_TIMELINE`: for a WAL stream, where the
    /// log ends in PostgreSQL's terms — the promote hook waits until the
    /// database has replayed that far before it promotes it.
    pub fork_lsn: Option<(u32, u64)>,
    /// What "at most once" counts when it is not the epoch change: one
    /// switchover attempt for `pre_switchover` / `abort_switchover`, which
    /// run before the epoch changes (a failed switchover may be tried again
    /// at the same epoch, and its hooks must run again). None: once per
    /// `epoch`.
    pub attempt: Option<u64>,
}

/// Runs hook `name` (`sh -c COMMAND`) for the change to `env.epoch` (or for
/// `env.attempt`), at most once.
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
    match catalog.claim_hook(name, env.stream, env.attempt.unwrap_or(env.epoch)) {
        Ok(true) => {}
        Ok(false) => return HookOutcome::AlreadyRan,
        Err(e) => {
            return HookOutcome::Failed {
                reason: format!("cannot record the hook run: {e}"),
                output: String::new(),
            }
        }
    }
    tracing::warn!(hook = name, stream = %env.stream, epoch = env.epoch, "running hook");
    execute(name, command_for(name, command, env), timeout, env).await
}

/// `sh -c COMMAND` with the hook's environment (`DRD_*`), output piped,
/// killed if dropped. Callers add their own variables (a drill's).
pub fn command_for(name: &str, command: &str, env: &HookEnv<'_>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .env("DRD_HOOK", name)
        .env("DRD_NODE_ID", env.node_id)
        .env("DRD_STREAM", env.stream.as_str())
        .env("DRD_EPOCH", env.epoch.to_string())
        .env("DRD_ROLE", env.role)
        .env(
            "DRD_FORK_POSITION",
            env.fork_position.map(|p| p.to_string()).unwrap_or_default(),
        )
        .env(
            "DRD_FORK_LSN",
            env.fork_lsn
                .map(|(_, l)| crate::display::lsn(l))
                .unwrap_or_default(),
        )
        .env(
            "DRD_FORK_TIMELINE",
            env.fork_lsn.map(|(t, _)| t.to_string()).unwrap_or_default(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A process group of its own, so a timeout can kill everything the
        // hook started (a drill's pg_basebackup), not only its shell.
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// Runs `cmd` (from [`command_for`]) to its end or `timeout`, logs its
/// output and counts it in the hook metrics. No "at most once" here: that
/// is [`run`]'s claim, which a drill's hooks do not make (every drill runs
/// them).
pub async fn execute(
    name: &str,
    mut cmd: tokio::process::Command,
    timeout: Duration,
    env: &HookEnv<'_>,
) -> HookOutcome {
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
    let pgid = child.id();
    let result = tokio::time::timeout(timeout, child.wait_with_output()).await;
    let outcome = match result {
        Err(_) => {
            // The shell is killed on drop; its children too, through the
            // group. (A daemon it started with setsid, such as a server
            // `pg_ctl` started, is not in it: stopping that is the
            // teardown hook's job.)
            if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            HookOutcome::Failed {
                reason: format!("timed out after {timeout:?} and was killed"),
                output: String::new(),
            }
        }
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
            tracing::error!(hook = name, stream = %env.stream, epoch = env.epoch, %reason, "hook failed")
        }
        _ => tracing::warn!(hook = name, stream = %env.stream, epoch = env.epoch, "hook succeeded"),
    }
    outcome
}

/// Runs the configured hook `name` (promote, demote, fence) for `stream`'s
/// change to `epoch`, with the node's timeout and environment.
pub async fn run_configured(
    node: &crate::node::Node,
    stream: &drd_proto::StreamName,
    name: &str,
    epoch: u64,
    role: &str,
    fork_position: Option<u64>,
) -> HookOutcome {
    run_configured_with(node, stream, name, epoch, role, fork_position, None).await
}

/// Runs the configured hook `name` (pre_switchover, abort_switchover) once
/// for switchover `attempt` of `stream`, at its current `epoch`.
pub async fn run_configured_for_attempt(
    node: &crate::node::Node,
    stream: &drd_proto::StreamName,
    name: &str,
    attempt: u64,
    epoch: u64,
    role: &str,
) -> HookOutcome {
    run_configured_with(node, stream, name, epoch, role, None, Some(attempt)).await
}

async fn run_configured_with(
    node: &crate::node::Node,
    stream: &drd_proto::StreamName,
    name: &str,
    epoch: u64,
    role: &str,
    fork_position: Option<u64>,
    attempt: Option<u64>,
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
            stream,
            epoch,
            role,
            fork_position,
            fork_lsn: fork_position
                .and_then(|_| crate::walpos::replay_end(node, stream))
                .map(|(t, l)| (t, l.0)),
            attempt,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HookEnv<'static> {
        static STREAM: std::sync::OnceLock<drd_proto::StreamName> = std::sync::OnceLock::new();
        HookEnv {
            node_id: "n1",
            stream: STREAM.get_or_init(|| drd_proto::StreamName::new("ehr").unwrap()),
            epoch: 7,
            role: "primary",
            fork_position: Some(42),
            fork_lsn: None,
            attempt: None,
        }
    }

    /// Issue 15: switchover hooks are claimed once per attempt (a
    /// timestamp), but DRD_EPOCH must still be the epoch, not that id.
    #[tokio::test]
    async fn a_hook_run_per_attempt_still_sees_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c")).unwrap();
        let out = dir.path().join("out");
        let cmd = format!("echo $DRD_HOOK $DRD_EPOCH >> {}", out.display());
        let t = Duration::from_secs(10);
        let attempt = |id| HookEnv {
            attempt: Some(id),
            fork_position: None,
            ..env()
        };
        let first = run(
            &cat,
            "pre_switchover",
            Some(&cmd),
            t,
            &attempt(1_700_000_000_123),
        )
        .await;
        assert!(matches!(first, HookOutcome::Succeeded { .. }), "{first:?}");
        assert_eq!(
            run(
                &cat,
                "pre_switchover",
                Some(&cmd),
                t,
                &attempt(1_700_000_000_123)
            )
            .await,
            HookOutcome::AlreadyRan
        );
        // A second attempt at the same epoch runs the hook again.
        let again = run(
            &cat,
            "pre_switchover",
            Some(&cmd),
            t,
            &attempt(1_700_000_009_999),
        )
        .await;
        assert!(matches!(again, HookOutcome::Succeeded { .. }), "{again:?}");
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "pre_switchover 7\npre_switchover 7\n"
        );
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
