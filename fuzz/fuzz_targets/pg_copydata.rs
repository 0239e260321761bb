//! The walsender's CopyData payloads: arbitrary bytes are decoded as a
//! server message, as drd's PostgreSQL stream does with every frame.
//! Properties: nothing panics; an XLogData's WAL is the whole payload after
//! its 25-byte header and ends inside the LSN space; a keepalive is exactly
//! 18 bytes; nothing larger than the frame limit is accepted.
#![no_main]

use drd_core::pg::msg::{self, ServerMsg, MAX_COPY_DATA};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    let Ok(m) = msg::decode(payload) else {
        return;
    };
    assert!(payload.len() <= MAX_COPY_DATA);
    match m {
        ServerMsg::XLogData { start, data, .. } => {
            assert_eq!(data.len() + 25, payload.len());
            assert_eq!(payload[0], b'w');
            let end = m.end_of_data().expect("decode checked the end");
            assert_eq!(end.saturating_sub(start), data.len() as u64);
        }
        ServerMsg::Keepalive { .. } => {
            assert_eq!(payload.len(), 18);
            assert_eq!(payload[0], b'k');
            assert_eq!(m.end_of_data(), None);
        }
    }
});
