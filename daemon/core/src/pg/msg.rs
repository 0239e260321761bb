//! The CopyData payloads of PostgreSQL's streaming replication protocol
//! (the "Streaming Replication Protocol" page of its docs; `receivelog.c`):
//! XLogData and keepalives from the walsender, standby status updates from
//! drd. All integers are big-endian; times are microseconds since
//! 2000-01-01 00:00 UTC.

use super::lsn::Lsn;

/// The largest CopyData payload drd accepts. A walsender sends at most
/// `MAX_SEND_SIZE` = 16 × XLOG_BLCKSZ (128 KiB with 8 KiB pages) of WAL per
/// message; 1 MiB leaves room for larger block sizes and refuses a peer that
/// would make drd hold an unbounded frame in memory.
pub const MAX_COPY_DATA: usize = 1 << 20;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00 UTC).
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// XLogData: 'w', dataStart, walEnd, sendTime, then the WAL bytes.
const XLOG_DATA_HEADER: usize = 1 + 8 + 8 + 8;
/// Primary keepalive: 'k', walEnd, sendTime, replyRequested.
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;

/// A CopyData payload the walsender sends during START_REPLICATION.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerMsg<'a> {
    /// 'w': WAL bytes.
    XLogData {
        /// The LSN of `data`'s first byte.
        start: Lsn,
        /// The server's end of WAL when it sent this (its flush position).
        end: Lsn,
        /// The server's clock when it sent this (PostgreSQL time).
        time: i64,
        /// The WAL itself; may cross a segment boundary.
        data: &'a [u8],
    },
    /// 'k': a primary keepalive.
    Keepalive {
        /// The server's end of WAL (its flush position).
        end: Lsn,
        /// The server's clock when it sent this (PostgreSQL time).
        time: i64,
        /// The server wants a status update now; without one it closes the
        /// connection after `wal_sender_timeout`.
        reply_requested: bool,
    },
}

/// Why a CopyData payload is not a message drd understands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    #[error("empty CopyData message from the walsender")]
    Empty,
    #[error("unknown CopyData message kind {} from the walsender", kind_name(*.0))]
    UnknownKind(u8),
    #[error(
        "truncated {} message from the walsender: {len} bytes, at least {need} needed",
        kind_name(*.kind)
    )]
    Truncated { kind: u8, len: usize, need: usize },
    #[error(
        "{} message from the walsender has {len} bytes, expected exactly {expected}",
        kind_name(*.kind)
    )]
    WrongLength {
        kind: u8,
        len: usize,
        expected: usize,
    },
    #[error(
        "CopyData message of {len} bytes from the walsender is larger than the {max} \
         drd accepts"
    )]
    TooLong { len: usize, max: usize },
    #[error("XLogData at {start} with {len} bytes runs past the end of the LSN space")]
    Overflow { start: Lsn, len: usize },
}

/// A kind byte as an error shows it: 'w', or 0x00 when not printable.
fn kind_name(kind: u8) -> String {
    if kind.is_ascii_graphic() {
        format!("'{}'", char::from(kind))
    } else {
        format!("0x{kind:02X}")
    }
}

/// The 8 bytes at `at`, or None past the end.
fn eight(b: &[u8], at: usize) -> Option<[u8; 8]> {
    b.get(at..at.checked_add(8)?)?.try_into().ok()
}

/// Reads one CopyData payload from the walsender. The payload is borrowed:
/// XLogData's `data` points into it.
pub fn decode(payload: &[u8]) -> Result<ServerMsg<'_>, MsgError> {
    let len = payload.len();
    let &kind = payload.first().ok_or(MsgError::Empty)?;
    if len > MAX_COPY_DATA {
        return Err(MsgError::TooLong {
            len,
            max: MAX_COPY_DATA,
        });
    }
    let need = match kind {
        b'w' => XLOG_DATA_HEADER,
        b'k' => KEEPALIVE_LEN,
        _ => return Err(MsgError::UnknownKind(kind)),
    };
    let truncated = MsgError::Truncated { kind, len, need };
    if len < need {
        return Err(truncated);
    }
    // Within the length checked above; a miss would be a bug here, and is
    // still an error, not a panic.
    let field = |at| eight(payload, at).ok_or_else(|| truncated.clone());
    match kind {
        b'w' => {
            let start = Lsn(u64::from_be_bytes(field(1)?));
            let data = payload.get(XLOG_DATA_HEADER..).unwrap_or_default();
            let msg = ServerMsg::XLogData {
                start,
                end: Lsn(u64::from_be_bytes(field(9)?)),
                time: i64::from_be_bytes(field(17)?),
                data,
            };
            // The bytes must fit the LSN space, so end_of_data has a value.
            msg.end_of_data().ok_or(MsgError::Overflow {
                start,
                len: data.len(),
            })?;
            Ok(msg)
        }
        _ => {
            if len != KEEPALIVE_LEN {
                return Err(MsgError::WrongLength {
                    kind,
                    len,
                    expected: KEEPALIVE_LEN,
                });
            }
            Ok(ServerMsg::Keepalive {
                end: Lsn(u64::from_be_bytes(field(1)?)),
                time: i64::from_be_bytes(field(9)?),
                reply_requested: payload.get(17).is_some_and(|&b| b != 0),
            })
        }
    }
}

impl ServerMsg<'_> {
    /// The LSN just past an XLogData's bytes, where the next one must start;
    /// None for a keepalive. [`decode`] refuses XLogData whose end does not
    /// fit, so a decoded XLogData always has one.
    pub fn end_of_data(&self) -> Option<Lsn> {
        match self {
            ServerMsg::XLogData { start, data, .. } => {
                start.checked_add(u64::try_from(data.len()).ok()?)
            }
            ServerMsg::Keepalive { .. } => None,
        }
    }
}

/// A standby status update ('r'): what drd tells the walsender it holds.
/// Each position is "last byte + 1", the next LSN drd would want.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusUpdate {
    /// Received and written (not necessarily durable).
    pub write: Lsn,
    /// Durable: the walsender moves the slot's restart_lsn here, and a
    /// synchronous commit waits for it.
    pub flush: Lsn,
    /// Replayed; drd replays nothing and sends [`Lsn::INVALID`].
    pub apply: Lsn,
    /// drd's clock (PostgreSQL time, see [`pg_time`]).
    pub time: i64,
    /// Asks the server for a keepalive at once (drd does not need to).
    pub reply_requested: bool,
}

/// The length of an encoded [`StatusUpdate`].
const STATUS_UPDATE_LEN: usize = 1 + 8 + 8 + 8 + 8 + 1;

impl StatusUpdate {
    /// The CopyData payload: 'r', write, flush, apply, time, replyRequested.
    pub fn encode(&self) -> [u8; STATUS_UPDATE_LEN] {
        let mut out = [0u8; STATUS_UPDATE_LEN];
        out[0] = b'r';
        out[1..9].copy_from_slice(&self.write.0.to_be_bytes());
        out[9..17].copy_from_slice(&self.flush.0.to_be_bytes());
        out[17..25].copy_from_slice(&self.apply.0.to_be_bytes());
        out[25..33].copy_from_slice(&self.time.to_be_bytes());
        out[33] = u8::from(self.reply_requested);
        out
    }
}

/// PostgreSQL time (µs since 2000-01-01 UTC) from Unix time in µs;
/// saturates at the ends of i64.
pub fn pg_time(unix_micros: i64) -> i64 {
    unix_micros.saturating_sub(PG_EPOCH_UNIX_MICROS)
}

/// Unix time in µs from PostgreSQL time; saturates at the ends of i64.
pub fn unix_micros(pg_time: i64) -> i64 {
    pg_time.saturating_add(PG_EPOCH_UNIX_MICROS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlog_data(start: u64, end: u64, time: i64, data: &[u8]) -> Vec<u8> {
        let mut v = vec![b'w'];
        v.extend_from_slice(&start.to_be_bytes());
        v.extend_from_slice(&end.to_be_bytes());
        v.extend_from_slice(&time.to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn decodes_xlog_data() {
        let bytes = [
            b'w', // kind
            0, 0, 0, 0, 0x03, 0, 0, 0x28, // dataStart 0/3000028
            0, 0, 0, 0x16, 0xB3, 0x74, 0xD8, 0x48, // walEnd 16/B374D848
            0, 0x02, 0xC5, 0x1E, 0x8A, 0x4E, 0x30, 0x00, // sendTime
            0xDE, 0xAD, 0xBE, // WAL
        ];
        let msg = decode(&bytes).unwrap();
        assert_eq!(
            msg,
            ServerMsg::XLogData {
                start: Lsn(0x0300_0028),
                end: Lsn(0x16_B374_D848),
                time: 0x0002_C51E_8A4E_3000,
                data: &[0xDE, 0xAD, 0xBE],
            }
        );
        assert_eq!(msg.end_of_data(), Some(Lsn(0x0300_002B)));
        // No WAL bytes at all is still a message.
        let empty = xlog_data(0x100, 0x200, 5, &[]);
        let msg = decode(&empty).unwrap();
        assert_eq!(msg.end_of_data(), Some(Lsn(0x100)));
    }

    #[test]
    fn decodes_keepalives() {
        let bytes = [
            b'k', // kind
            0, 0, 0, 0x16, 0xB3, 0x74, 0xD8, 0x48, // walEnd
            0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, // sendTime -2
            1,    // replyRequested
        ];
        let msg = decode(&bytes).unwrap();
        assert_eq!(
            msg,
            ServerMsg::Keepalive {
                end: Lsn(0x16_B374_D848),
                time: -2,
                reply_requested: true,
            }
        );
        assert_eq!(msg.end_of_data(), None);
        let mut quiet = bytes;
        quiet[17] = 0;
        assert!(matches!(
            decode(&quiet),
            Ok(ServerMsg::Keepalive {
                reply_requested: false,
                ..
            })
        ));
    }

    #[test]
    fn refuses_what_is_not_a_message() {
        assert_eq!(decode(&[]), Err(MsgError::Empty));
        assert_eq!(decode(b"r123"), Err(MsgError::UnknownKind(b'r')));
        assert_eq!(decode(&[0]), Err(MsgError::UnknownKind(0)));
        assert_eq!(
            decode(&[b'w'; 24]),
            Err(MsgError::Truncated {
                kind: b'w',
                len: 24,
                need: 25
            })
        );
        assert_eq!(
            decode(&[b'k'; 17]),
            Err(MsgError::Truncated {
                kind: b'k',
                len: 17,
                need: 18
            })
        );
        assert_eq!(
            decode(&[b'k'; 19]),
            Err(MsgError::WrongLength {
                kind: b'k',
                len: 19,
                expected: 18
            })
        );
        let big = xlog_data(0, 0, 0, &vec![0; MAX_COPY_DATA - 25 + 1]);
        assert_eq!(
            decode(&big),
            Err(MsgError::TooLong {
                len: MAX_COPY_DATA + 1,
                max: MAX_COPY_DATA
            })
        );
        let largest = xlog_data(0, 0, 0, &vec![0; MAX_COPY_DATA - 25]);
        assert!(decode(&largest).is_ok());
    }

    #[test]
    fn refuses_data_past_the_end_of_the_lsn_space() {
        let at_end = xlog_data(u64::MAX - 2, 0, 0, &[1, 2]);
        assert_eq!(decode(&at_end).unwrap().end_of_data(), Some(Lsn(u64::MAX)));
        let past = xlog_data(u64::MAX - 2, 0, 0, &[1, 2, 3, 4]);
        assert_eq!(
            decode(&past),
            Err(MsgError::Overflow {
                start: Lsn(u64::MAX - 2),
                len: 4
            })
        );
    }

    #[test]
    fn errors_name_the_kind() {
        assert_eq!(
            MsgError::UnknownKind(b'A').to_string(),
            "unknown CopyData message kind 'A' from the walsender"
        );
        assert_eq!(
            MsgError::UnknownKind(0x07).to_string(),
            "unknown CopyData message kind 0x07 from the walsender"
        );
        assert_eq!(
            decode(&[b'w'; 3]).unwrap_err().to_string(),
            "truncated 'w' message from the walsender: 3 bytes, at least 25 needed"
        );
    }

    #[test]
    fn encodes_status_updates() {
        let r = StatusUpdate {
            write: Lsn(0x16_B374_D848),
            flush: Lsn(0x0300_0028),
            apply: Lsn::INVALID,
            time: 0x0002_C51E_8A4E_3000,
            reply_requested: false,
        };
        assert_eq!(
            r.encode(),
            [
                b'r', // kind
                0, 0, 0, 0x16, 0xB3, 0x74, 0xD8, 0x48, // write
                0, 0, 0, 0, 0x03, 0, 0, 0x28, // flush
                0, 0, 0, 0, 0, 0, 0, 0, // apply
                0, 0x02, 0xC5, 0x1E, 0x8A, 0x4E, 0x30, 0x00, // clientTime
                0,    // replyRequested
            ]
        );
        let asking = StatusUpdate {
            reply_requested: true,
            time: -1,
            ..r
        };
        let b = asking.encode();
        assert_eq!(b[25..33], [0xFF; 8]);
        assert_eq!(b[33], 1);
    }

    #[test]
    fn converts_times() {
        // 2026-12-02 00:00:00 UTC.
        let unix = 1_796_169_600_000_000;
        assert_eq!(pg_time(unix), 849_484_800_000_000);
        assert_eq!(unix_micros(849_484_800_000_000), unix);
        assert_eq!(pg_time(PG_EPOCH_UNIX_MICROS), 0);
        assert_eq!(unix_micros(0), PG_EPOCH_UNIX_MICROS);
        assert_eq!(pg_time(i64::MIN), i64::MIN);
        assert_eq!(unix_micros(i64::MAX), i64::MAX);
    }
}
