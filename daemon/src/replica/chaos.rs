//! The chaos suite's deliberately broken replica (test builds only).

/// `DRD_CHAOS_UNSAFE_EARLY_ACK=1` under the `chaos-testing` feature: the
/// deliberately broken early-ack mode (see `replica::server`'s `read_loop` and the disk worker). Read once; logs a
/// WARN the first time so a test can see the mode is really in the binary.
#[cfg(all(feature = "chaos-testing", debug_assertions))]
pub(crate) fn unsafe_early_ack() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let on = std::env::var("DRD_CHAOS_UNSAFE_EARLY_ACK").is_ok_and(|v| v == "1");
        if on {
            tracing::warn!(
                "CHAOS TESTING: DRD_CHAOS_UNSAFE_EARLY_ACK=1 — this replica acks data BEFORE it is durable; \
                 a test-only broken mode, never for real data"
            );
        }
        on
    })
}
