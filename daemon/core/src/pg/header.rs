//! The long page header (`XLogLongPageHeaderData`, `xlog_internal.h`) at
//! the start of every WAL segment file: read from the first bytes of a
//! segment, and checked against the cluster, segment size and segment LSN
//! drd expects, so that WAL from another cluster or another place in the log
//! is refused before it is stored.
//!
//! The fields are in the server's byte order; drd reads them little-endian,
//! the order of x86-64 and arm64.

use super::lsn::{Lsn, SegSize};

/// The length of `XLogLongPageHeaderData` (`SizeOfXLogLongPHD`), padding
/// included.
pub const LONG_HEADER_LEN: usize = 40;

/// The `xlp_info` bit that says the page starts with the long header
/// (`XLP_LONG_HEADER`); set on the first page of every segment.
pub const XLP_LONG_HEADER: u16 = 0x0002;

/// The long page header of a segment's first page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongHeader {
    /// `xlp_magic`: the WAL format version (0xD110 for PostgreSQL 15). Not
    /// checked: drd stores whatever version the server writes.
    pub magic: u16,
    /// `xlp_info`: flag bits, [`XLP_LONG_HEADER`] among them.
    pub info: u16,
    /// `xlp_tli`: the timeline of the page's first record. Not checked: the
    /// first segment of a new timeline is a copy of the old one's, header
    /// included.
    pub tli: u32,
    /// `xlp_pageaddr`: the LSN of the page, for a segment's first page the
    /// segment's start.
    pub pageaddr: Lsn,
    /// `xlp_rem_len`: bytes of a record continued from the previous segment.
    pub rem_len: u32,
    /// `xlp_sysid`: the database cluster's system identifier (initdb's).
    pub sysid: u64,
    /// `xlp_seg_size`: the cluster's WAL segment size.
    pub seg_size: u32,
    /// `xlp_xlog_blcksz`: the cluster's WAL page size.
    pub blcksz: u32,
}

/// Why the first bytes of a segment are not the segment drd expects.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("a WAL segment's long page header needs {LONG_HEADER_LEN} bytes, only {0} were given")]
    TooShort(usize),
    #[error(
        "the first page of the WAL segment has no long header (xlp_info {0:#06X} lacks \
         XLP_LONG_HEADER): this is not the start of a segment"
    )]
    NotLong(u16),
    #[error(
        "the WAL segment's header gives a segment size of {0} bytes, which PostgreSQL \
         cannot have written"
    )]
    BadSegSize(u32),
    #[error(
        "the WAL segment belongs to another database cluster: system identifier {found}, \
         expected {expected}; check which server drd connects to"
    )]
    OtherCluster { expected: u64, found: u64 },
    #[error(
        "the WAL segment has a segment size of {found} bytes, expected {expected}: the \
         cluster was initialised with another --wal-segsize"
    )]
    OtherSegSize { expected: u64, found: u32 },
    #[error(
        "the WAL segment's page address is {found}, expected the segment start {expected}: \
         the server sent WAL from another place in the log"
    )]
    PageAddr { expected: Lsn, found: Lsn },
}

/// Reads the long page header from the first bytes of a segment (at least
/// [`LONG_HEADER_LEN`] of them). Refuses a page without the long-header bit
/// and a segment size PostgreSQL cannot have.
pub fn parse(first: &[u8]) -> Result<LongHeader, HeaderError> {
    let b: &[u8; LONG_HEADER_LEN] = first
        .get(..LONG_HEADER_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(HeaderError::TooShort(first.len()))?;
    let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let u64_at = |at: usize| {
        u64::from_le_bytes([
            b[at],
            b[at + 1],
            b[at + 2],
            b[at + 3],
            b[at + 4],
            b[at + 5],
            b[at + 6],
            b[at + 7],
        ])
    };
    let header = LongHeader {
        magic: u16_at(0),
        info: u16_at(2),
        tli: u32_at(4),
        pageaddr: Lsn(u64_at(8)),
        rem_len: u32_at(16),
        // 20..24: padding to align xlp_sysid.
        sysid: u64_at(24),
        seg_size: u32_at(32),
        blcksz: u32_at(36),
    };
    if header.info & XLP_LONG_HEADER == 0 {
        return Err(HeaderError::NotLong(header.info));
    }
    if SegSize::new(u64::from(header.seg_size)).is_err() {
        return Err(HeaderError::BadSegSize(header.seg_size));
    }
    Ok(header)
}

impl LongHeader {
    /// Checks that this is the header of the segment starting at
    /// `segment_lsn`, of a cluster with segment size `seg` and, when drd
    /// knows it, system identifier `sysid`.
    pub fn check(
        &self,
        sysid: Option<u64>,
        seg: SegSize,
        segment_lsn: Lsn,
    ) -> Result<(), HeaderError> {
        if let Some(expected) = sysid {
            if self.sysid != expected {
                return Err(HeaderError::OtherCluster {
                    expected,
                    found: self.sysid,
                });
            }
        }
        if u64::from(self.seg_size) != seg.bytes() {
            return Err(HeaderError::OtherSegSize {
                expected: seg.bytes(),
                found: self.seg_size,
            });
        }
        if self.pageaddr != segment_lsn {
            return Err(HeaderError::PageAddr {
                expected: segment_lsn,
                found: self.pageaddr,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first 40 bytes of segment 000000010000000000000003 of a
    /// PostgreSQL 15 cluster, 16 MiB segments, 8 KiB pages, written by hand
    /// from the struct's layout.
    const SEGMENT_3: [u8; LONG_HEADER_LEN] = [
        0x10, 0xD1, // xlp_magic 0xD110
        0x06, 0x00, // xlp_info XLP_LONG_HEADER | XLP_BKP_REMOVABLE
        0x01, 0x00, 0x00, 0x00, // xlp_tli 1
        0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, // xlp_pageaddr 0/3000000
        0x2A, 0x00, 0x00, 0x00, // xlp_rem_len 42
        0x00, 0x00, 0x00, 0x00, // padding
        0x0B, 0x0A, 0x09, 0x08, 0x07, 0x06, 0x05, 0x04, // xlp_sysid
        0x00, 0x00, 0x00, 0x01, // xlp_seg_size 16 MiB
        0x00, 0x20, 0x00, 0x00, // xlp_xlog_blcksz 8192
    ];
    const SYSID: u64 = 0x0405_0607_0809_0A0B;

    fn seg16() -> SegSize {
        SegSize::new(16 << 20).unwrap()
    }

    #[test]
    fn parses_a_postgresql_15_long_header() {
        let h = parse(&SEGMENT_3).unwrap();
        assert_eq!(
            h,
            LongHeader {
                magic: 0xD110,
                info: 0x0006,
                tli: 1,
                pageaddr: Lsn(0x0300_0000),
                rem_len: 42,
                sysid: SYSID,
                seg_size: 16 << 20,
                blcksz: 8192,
            }
        );
        // The rest of the page does not matter.
        let mut page = SEGMENT_3.to_vec();
        page.extend_from_slice(&[0xFF; 100]);
        assert_eq!(parse(&page), Ok(h));
    }

    #[test]
    fn refuses_what_is_not_a_segment_start() {
        assert_eq!(parse(&SEGMENT_3[..39]), Err(HeaderError::TooShort(39)));
        assert_eq!(parse(&[]), Err(HeaderError::TooShort(0)));
        let mut short = SEGMENT_3;
        short[2] = 0x04; // XLP_BKP_REMOVABLE only: a short header
        assert_eq!(parse(&short), Err(HeaderError::NotLong(0x0004)));
        let mut odd = SEGMENT_3;
        odd[32..36].copy_from_slice(&(3u32 << 20).to_le_bytes());
        assert_eq!(parse(&odd), Err(HeaderError::BadSegSize(3 << 20)));
        let mut huge = SEGMENT_3;
        huge[32..36].copy_from_slice(&(1u32 << 31).to_le_bytes());
        assert_eq!(parse(&huge), Err(HeaderError::BadSegSize(1 << 31)));
    }

    #[test]
    fn checks_cluster_size_and_place() {
        let h = parse(&SEGMENT_3).unwrap();
        let at = Lsn(0x0300_0000);
        assert_eq!(h.check(Some(SYSID), seg16(), at), Ok(()));
        assert_eq!(h.check(None, seg16(), at), Ok(()));
        assert_eq!(
            h.check(Some(7), seg16(), at),
            Err(HeaderError::OtherCluster {
                expected: 7,
                found: SYSID
            })
        );
        let mb64 = SegSize::new(64 << 20).unwrap();
        assert_eq!(
            h.check(Some(SYSID), mb64, Lsn(0)),
            Err(HeaderError::OtherSegSize {
                expected: 64 << 20,
                found: 16 << 20
            })
        );
        assert_eq!(
            h.check(Some(SYSID), seg16(), Lsn(0x0400_0000)),
            Err(HeaderError::PageAddr {
                expected: Lsn(0x0400_0000),
                found: at
            })
        );
    }

    #[test]
    fn errors_say_expected_and_found() {
        let e = HeaderError::PageAddr {
            expected: Lsn(0x0400_0000),
            found: Lsn(0x0300_0000),
        };
        assert_eq!(
            e.to_string(),
            "the WAL segment's page address is 0/3000000, expected the segment start \
             0/4000000: the server sent WAL from another place in the log"
        );
        assert_eq!(
            HeaderError::NotLong(4).to_string(),
            "the first page of the WAL segment has no long header (xlp_info 0x0004 lacks \
             XLP_LONG_HEADER): this is not the start of a segment"
        );
    }
}
