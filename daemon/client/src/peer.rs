//! Errors of a connection to a daemon, as an operator reads them.

/// A connect error with its whole cause chain ("transport error" alone
/// tells an operator nothing; "Connection refused" does).
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut reason = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        reason.push_str(": ");
        reason.push_str(&c.to_string());
        cause = c.source();
    }
    reason
}
