//! Who asked for an operation (or a pass like retention's), for the audit
//! log: shared by the operations and the drivers they and the timers run.

/// Who asked for an operation, for the audit log.
#[derive(Clone, Debug)]
pub struct Caller {
    /// OS user of the control-socket peer (or a node id).
    pub user: String,
    /// e.g. "control socket, pid 1234".
    pub origin: String,
}
