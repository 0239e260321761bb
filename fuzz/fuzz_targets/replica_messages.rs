//! The replica's handling of incoming messages: arbitrary bytes are cut
//! into length-prefixed frames, decoded as `ShipMessage`s, validated at the
//! wire boundary exactly as the server does, and fed to the replica's
//! protocol rules. Properties: nothing panics; a refused message changes
//! nothing; the accepted position never goes backwards; every accepted
//! segment name stays inside the landing directory.
#![no_main]

use drd_proto::{pb, ShipMsg};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

// The rules are drd-core's (no I/O): the same code the daemon runs.
use drd_core::chain;
use drd_core::receiver::{Receiver, SealAction};

fn end(r: &Receiver) -> u64 {
    r.tail.as_ref().map_or(0, |t| t.end())
}

fuzz_target!(|data: &[u8]| {
    let mut r = Receiver::new(2, None);
    let mut rest = data;
    let mut chain_head = chain::GENESIS;
    while rest.len() >= 2 {
        let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        rest = &rest[2..];
        let (frame, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        let Ok(raw) = <pb::ShipMessage as prost::Message>::decode(frame) else {
            continue;
        };
        let Ok(msg) = ShipMsg::try_from(raw) else {
            continue;
        };
        let before = r.tail.clone();
        let before_end = end(&r);
        match msg {
            ShipMsg::Chunk(c) => match r.on_chunk(&c) {
                Ok(_) => {
                    let t = r.tail.as_ref().expect("accepted chunk has a tail");
                    assert_eq!(t.segment, c.segment);
                    let landing = Path::new("/landing");
                    assert_eq!(
                        landing.join(c.segment.partial_file_name()).parent(),
                        Some(landing)
                    );
                    assert!(end(&r) >= before_end || before.as_ref().is_some_and(|b| b.sealed));
                }
                Err(_) => assert_eq!(r.tail, before, "a refused chunk changed the state"),
            },
            ShipMsg::Seal(s) => {
                match r.on_seal(&s) {
                    Ok(SealAction::Verify) => {
                        // Pretend the stored bytes hash to what the seal says.
                        if Receiver::check_digest(&s, &s.sha256, &chain_head).is_ok() {
                            r.sealed();
                            chain_head = s.chain;
                        }
                    }
                    Ok(SealAction::AlreadyDone) | Err(_) => {}
                }
                assert_eq!(end(&r), before_end, "a seal moved the position");
            }
            ShipMsg::Hello(_) | ShipMsg::Keepalive { .. } => {}
        }
    }
});
