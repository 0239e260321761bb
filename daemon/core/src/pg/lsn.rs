//! WAL positions and segment names as PostgreSQL spells them
//! (`xlog_internal.h`): the `X/X` form of an LSN, the WAL segment size, the
//! 24-digit segment file names and the `.history` file names.

use std::fmt;
use std::str::FromStr;

/// A position in PostgreSQL's WAL: a byte offset in the log, the same
/// series across timelines. PostgreSQL's `XLogRecPtr`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// PostgreSQL's `InvalidXLogRecPtr`: no position. In a status update it
    /// means "nothing", which PostgreSQL does not take as a position.
    pub const INVALID: Lsn = Lsn(0);

    /// The position `n` bytes further on, or None past the end of the LSN
    /// space.
    pub fn checked_add(self, n: u64) -> Option<Lsn> {
        self.0.checked_add(n).map(Lsn)
    }

    /// How many bytes `self` lies past `other`; 0 when it does not.
    pub fn saturating_sub(self, other: Lsn) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

/// PostgreSQL's `%X/%X`: the high and low 32 bits in upper-case hex.
impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The same as Display, so that logs and test failures read like
/// PostgreSQL's.
impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a text is not an LSN, or a number not a WAL segment size.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LsnError {
    #[error("{input:?} is not an LSN: {why} (expected the form 16/B374D848)")]
    Syntax { input: String, why: &'static str },
    #[error(
        "a WAL segment size of {0} bytes is not a power of two from 1 MiB to 1 GiB, \
         so it is not one PostgreSQL can use"
    )]
    SegSize(u64),
    #[error(
        "{input:?} is not a wal_segment_size setting: {why} (expected e.g. 16MB, \
         1024kB or a byte count)"
    )]
    Setting { input: String, why: &'static str },
}

/// One side of an LSN: 1 to 8 hex digits, either case.
fn hex_half(s: &str) -> Result<u64, &'static str> {
    if s.is_empty() {
        return Err("a side of the '/' is empty");
    }
    if s.len() > 8 {
        return Err("a side of the '/' has more than 8 hex digits");
    }
    // from_str_radix would also take a leading '+'.
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a side of the '/' has a character that is not a hex digit");
    }
    u64::from_str_radix(s, 16).map_err(|_| "a side of the '/' is not a hex number")
}

/// Parses PostgreSQL's `X/X` form, as `pg_lsn` input does.
impl FromStr for Lsn {
    type Err = LsnError;

    fn from_str(s: &str) -> Result<Lsn, LsnError> {
        let syntax = |why| LsnError::Syntax {
            input: s.to_owned(),
            why,
        };
        let (hi, lo) = s.split_once('/').ok_or_else(|| syntax("no '/'"))?;
        let hi = hex_half(hi).map_err(syntax)?;
        let lo = hex_half(lo).map_err(syntax)?;
        Ok(Lsn((hi << 32) | lo))
    }
}

/// The smallest WAL segment size PostgreSQL accepts (`WalSegMinSize`).
const MIN_SEG_SIZE: u64 = 1 << 20;
/// The largest WAL segment size PostgreSQL accepts (`WalSegMaxSize`).
const MAX_SEG_SIZE: u64 = 1 << 30;
/// The LSN space is cut into "xlogids" of 4 GiB; a segment name spells the
/// xlogid and the segment within it (`XLogSegmentsPerXLogId`).
const XLOGID_BYTES: u64 = 0x1_0000_0000;

/// A cluster's WAL segment size (`initdb --wal-segsize`), valid by
/// construction: a power of two from 1 MiB to 1 GiB.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SegSize(u64);

impl SegSize {
    /// Checks `bytes` as PostgreSQL's `IsValidWalSegSize` does.
    pub fn new(bytes: u64) -> Result<SegSize, LsnError> {
        if bytes.is_power_of_two() && (MIN_SEG_SIZE..=MAX_SEG_SIZE).contains(&bytes) {
            Ok(SegSize(bytes))
        } else {
            Err(LsnError::SegSize(bytes))
        }
    }

    /// Reads the output of `SHOW wal_segment_size` ("16MB", "1GB",
    /// "1024kB") or a bare byte count (pg_settings' `setting`, "16777216").
    /// The units are PostgreSQL's memory units: case as PostgreSQL writes
    /// them, powers of 1024.
    pub fn parse_setting(s: &str) -> Result<SegSize, LsnError> {
        let setting = |why| LsnError::Setting {
            input: s.to_owned(),
            why,
        };
        let t = s.trim();
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = t.split_at(digits);
        if number.is_empty() {
            return Err(setting("it does not start with a number"));
        }
        let number: u64 = number
            .parse()
            .map_err(|_| setting("the number is too large"))?;
        let scale: u64 = match unit.trim_start() {
            "" | "B" => 1,
            "kB" => 1 << 10,
            "MB" => 1 << 20,
            "GB" => 1 << 30,
            "TB" => 1 << 40,
            _ => return Err(setting("the unit is not one of B, kB, MB, GB, TB")),
        };
        let bytes = number
            .checked_mul(scale)
            .ok_or_else(|| setting("the size is too large"))?;
        SegSize::new(bytes)
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// How many segments fit in one 4 GiB xlogid: 4 to 4096.
    fn per_xlogid(self) -> u64 {
        XLOGID_BYTES / self.0
    }

    /// The number of the segment that holds `lsn` (`XLByteToSeg`).
    pub fn segno(self, lsn: Lsn) -> u64 {
        lsn.0 / self.0
    }

    /// Where `lsn` lies in its segment (`XLogSegmentOffset`).
    pub fn offset(self, lsn: Lsn) -> u64 {
        lsn.0 % self.0
    }

    /// The first LSN of the segment that holds `lsn`.
    pub fn segment_start(self, lsn: Lsn) -> Lsn {
        Lsn(lsn.0 - self.offset(lsn))
    }

    /// The first LSN of segment `segno` (`XLogSegNoOffsetToRecPtr` at offset
    /// 0), or None past the end of the LSN space.
    pub fn segment_lsn(self, segno: u64) -> Option<Lsn> {
        segno.checked_mul(self.0).map(Lsn)
    }

    /// The file name of segment `segno` of timeline `tli` (`XLogFileName`),
    /// e.g. `000000010000000000000003`. A `segno` past the LSN space (more
    /// than `u64::MAX / bytes()`) spells more than 24 digits, which
    /// [`SegSize::parse_segment_name`] refuses.
    pub fn segment_name(self, tli: u32, segno: u64) -> String {
        let per = self.per_xlogid();
        format!("{tli:08X}{:08X}{:08X}", segno / per, segno % per)
    }

    /// The timeline and segment number a segment file name stands for
    /// (`XLogFromFileName`): exactly 24 upper-case hex digits, a timeline
    /// other than 0, and a segment within its xlogid for this size. None for
    /// anything else, `.partial` names included.
    pub fn parse_segment_name(self, name: &str) -> Option<(u32, u64)> {
        let b = name.as_bytes();
        if b.len() != 24 || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F')) {
            return None;
        }
        // Checked above: 24 ASCII hex digits, so every slice is 8 of them.
        let field = |i: usize| {
            name.get(i..i + 8)
                .and_then(|s| u32::from_str_radix(s, 16).ok())
        };
        let tli = field(0)?;
        let xlogid = u64::from(field(8)?);
        let seg = u64::from(field(16)?);
        let per = self.per_xlogid();
        if tli == 0 || seg >= per {
            return None;
        }
        let segno = xlogid.checked_mul(per)?.checked_add(seg)?;
        Some((tli, segno))
    }

    /// The timeline and the LSN at byte `offset` of the segment file `name`;
    /// `offset` may be the segment's size (its end). None when the name is
    /// not a segment name, the offset lies past the end, or the LSN would be
    /// past the end of the LSN space.
    pub fn lsn_in(self, name: &str, offset: u64) -> Option<(u32, Lsn)> {
        let (tli, segno) = self.parse_segment_name(name)?;
        if offset > self.0 {
            return None;
        }
        let lsn = self.segment_lsn(segno)?.checked_add(offset)?;
        Some((tli, lsn))
    }
}

/// The name of timeline `tli`'s history file (`TLHistoryFileName`), e.g.
/// `00000002.history`.
pub fn history_name(tli: u32) -> String {
    format!("{tli:08X}.history")
}

/// The timeline a history file name stands for (`IsTLHistoryFileName`):
/// exactly 8 upper-case hex digits and `.history`. None for anything else,
/// and for timeline 0, which does not exist.
pub fn parse_history_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".history")?;
    if hex.len() != 8 || !hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F')) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok().filter(|&tli| tli != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;

    fn seg16() -> SegSize {
        SegSize::new(MB16).unwrap()
    }

    #[test]
    fn lsn_prints_as_postgresql_does() {
        assert_eq!(Lsn(0x0300_0028).to_string(), "0/3000028");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(format!("{:?}", Lsn(0x16_B374_D848)), "16/B374D848");
        assert_eq!(Lsn::INVALID.to_string(), "0/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!(Lsn::default(), Lsn::INVALID);
    }

    #[test]
    fn lsn_parses_both_cases_and_round_trips() {
        assert_eq!("0/3000028".parse::<Lsn>().unwrap(), Lsn(0x0300_0028));
        assert_eq!("16/b374d848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        assert!("00000016/0B374D848".parse::<Lsn>().is_err());
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
        for v in [0, 1, 0x1_0000_0000, 0x16_B374_D848, u64::MAX] {
            assert_eq!(Lsn(v).to_string().parse::<Lsn>().unwrap(), Lsn(v));
        }
    }

    #[test]
    fn lsn_parse_errors_say_what_was_wrong() {
        let why = |s: &str| match s.parse::<Lsn>() {
            Err(LsnError::Syntax { why, .. }) => why,
            other => panic!("{s:?} gave {other:?}"),
        };
        assert_eq!(why("3000028"), "no '/'");
        assert_eq!(why("/1"), "a side of the '/' is empty");
        assert_eq!(why("1/"), "a side of the '/' is empty");
        assert_eq!(
            why("123456789/0"),
            "a side of the '/' has more than 8 hex digits"
        );
        assert_eq!(
            why("+1/0"),
            "a side of the '/' has a character that is not a hex digit"
        );
        assert_eq!(
            why("0/1/2"),
            "a side of the '/' has a character that is not a hex digit"
        );
        assert_eq!(
            why(" 0/1"),
            "a side of the '/' has a character that is not a hex digit"
        );
        let msg = "x".parse::<Lsn>().unwrap_err().to_string();
        assert_eq!(
            msg,
            "\"x\" is not an LSN: no '/' (expected the form 16/B374D848)"
        );
    }

    #[test]
    fn lsn_arithmetic_is_checked() {
        assert_eq!(Lsn(10).checked_add(5), Some(Lsn(15)));
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
        assert_eq!(Lsn(u64::MAX - 1).checked_add(1), Some(Lsn(u64::MAX)));
        assert_eq!(Lsn(15).saturating_sub(Lsn(10)), 5);
        assert_eq!(Lsn(10).saturating_sub(Lsn(15)), 0);
    }

    #[test]
    fn seg_size_is_a_power_of_two_from_1_mib_to_1_gib() {
        for shift in 20..=30 {
            assert_eq!(SegSize::new(1 << shift).unwrap().bytes(), 1 << shift);
        }
        for bad in [0, 1, 1 << 19, 1 << 31, (16 << 20) + 1, 3 << 20, u64::MAX] {
            assert_eq!(SegSize::new(bad), Err(LsnError::SegSize(bad)));
        }
    }

    #[test]
    fn seg_size_reads_show_wal_segment_size() {
        let p = |s: &str| SegSize::parse_setting(s).map(SegSize::bytes);
        assert_eq!(p("16MB"), Ok(MB16));
        assert_eq!(p("1MB"), Ok(1 << 20));
        assert_eq!(p("1GB"), Ok(1 << 30));
        assert_eq!(p("64MB"), Ok(64 << 20));
        assert_eq!(p("1024kB"), Ok(1 << 20));
        assert_eq!(p("16777216"), Ok(MB16));
        assert_eq!(p("16777216B"), Ok(MB16));
        assert_eq!(p(" 16MB\n"), Ok(MB16));
        // Valid syntax, not a valid size.
        assert_eq!(p("2GB"), Err(LsnError::SegSize(2 << 30)));
        assert_eq!(p("1TB"), Err(LsnError::SegSize(1 << 40)));
        assert_eq!(p("512kB"), Err(LsnError::SegSize(512 << 10)));
        let why = |s: &str| match SegSize::parse_setting(s) {
            Err(LsnError::Setting { why, .. }) => why,
            other => panic!("{s:?} gave {other:?}"),
        };
        assert_eq!(why(""), "it does not start with a number");
        assert_eq!(why("MB"), "it does not start with a number");
        assert_eq!(why("-16MB"), "it does not start with a number");
        assert_eq!(why("16mb"), "the unit is not one of B, kB, MB, GB, TB");
        assert_eq!(why("16 MiB"), "the unit is not one of B, kB, MB, GB, TB");
        assert_eq!(why("99999999999999999999"), "the number is too large");
        assert_eq!(why("99999999999TB"), "the size is too large");
    }

    #[test]
    fn segno_offset_and_segment_start() {
        let s = seg16();
        let lsn = Lsn(0x16_B374_D848);
        assert_eq!(s.segno(lsn), 0x16B3);
        assert_eq!(s.offset(lsn), 0x74_D848);
        assert_eq!(s.segment_start(lsn), Lsn(0x16_B300_0000));
        assert_eq!(s.segment_lsn(0x16B3), Some(Lsn(0x16_B300_0000)));
        assert_eq!(
            s.segment_lsn(u64::MAX / MB16),
            Some(Lsn(0xFFFF_FFFF_FF00_0000))
        );
        assert_eq!(s.segment_lsn(u64::MAX / MB16 + 1), None);
        assert_eq!(s.segno(Lsn(u64::MAX)), 0xFF_FFFF_FFFF);
        assert_eq!(s.offset(Lsn(u64::MAX)), MB16 - 1);
    }

    #[test]
    fn segment_names_are_xlog_file_names() {
        let s = seg16();
        // pg_walfile_name('0/3000028') on timeline 1, 16 MiB segments.
        assert_eq!(s.segment_name(1, 3), "000000010000000000000003");
        assert_eq!(s.segment_name(2, 0x16B3), "0000000200000016000000B3");
        assert_eq!(
            s.segment_name(u32::MAX, u64::MAX / MB16),
            "FFFFFFFFFFFFFFFF000000FF"
        );
        let g = SegSize::new(1 << 30).unwrap();
        assert_eq!(g.segment_name(1, 5), "000000010000000100000001");
        let m = SegSize::new(1 << 20).unwrap();
        assert_eq!(m.segment_name(1, 0x1001), "000000010000000100000001");
    }

    #[test]
    fn segment_names_parse_back() {
        let s = seg16();
        assert_eq!(
            s.parse_segment_name("000000010000000000000003"),
            Some((1, 3))
        );
        assert_eq!(
            s.parse_segment_name("0000000200000016000000B3"),
            Some((2, 0x16B3))
        );
        assert_eq!(
            s.parse_segment_name("FFFFFFFFFFFFFFFF000000FF"),
            Some((u32::MAX, u64::MAX / MB16))
        );
        for bad in [
            "0000000200000016000000b3",         // lower case
            "00000000000000160000000B",         // timeline 0
            "000000010000000000000100",         // 0x100 segments of 16 MiB per xlogid
            "00000001000000000000000",          // 23 digits
            "0000000100000000000000030",        // 25 digits
            "000000010000000000000003.partial", // not a whole segment
            "00000001000000000000000G",
            "+00000010000000000000003",
            "",
        ] {
            assert_eq!(s.parse_segment_name(bad), None, "{bad}");
        }
        for (tli, segno) in [(1, 0), (1, 3), (7, 0x16B3), (u32::MAX, u64::MAX / MB16)] {
            assert_eq!(
                s.parse_segment_name(&s.segment_name(tli, segno)),
                Some((tli, segno))
            );
        }
        // The low part's limit depends on the size: 0xFF is valid with
        // 16 MiB segments, not with 1 GiB ones.
        let g = SegSize::new(1 << 30).unwrap();
        assert_eq!(
            g.parse_segment_name("000000010000000100000003"),
            Some((1, 7))
        );
        assert_eq!(g.parse_segment_name("000000010000000100000004"), None);
    }

    #[test]
    fn lsn_in_a_segment() {
        let s = seg16();
        let name = "0000000200000016000000B3";
        assert_eq!(s.lsn_in(name, 0), Some((2, Lsn(0x16_B300_0000))));
        assert_eq!(s.lsn_in(name, 0x74_D848), Some((2, Lsn(0x16_B374_D848))));
        assert_eq!(s.lsn_in(name, MB16), Some((2, Lsn(0x16_B400_0000))));
        assert_eq!(s.lsn_in(name, MB16 + 1), None);
        assert_eq!(s.lsn_in("0000000200000016000000B3.partial", 0), None);
        let last = "00000001FFFFFFFF000000FF";
        assert_eq!(s.lsn_in(last, MB16 - 1), Some((1, Lsn(u64::MAX))));
        // Its end is one past the LSN space.
        assert_eq!(s.lsn_in(last, MB16), None);
    }

    #[test]
    fn history_names() {
        assert_eq!(history_name(2), "00000002.history");
        assert_eq!(history_name(0x1A), "0000001A.history");
        assert_eq!(parse_history_name("00000002.history"), Some(2));
        assert_eq!(parse_history_name("0000001A.history"), Some(0x1A));
        assert_eq!(parse_history_name("FFFFFFFF.history"), Some(u32::MAX));
        for bad in [
            "00000000.history",
            "0000001a.history",
            "0000002.history",
            "000000002.history",
            "00000002.History",
            "00000002.history.tmp",
            "00000002",
            ".history",
        ] {
            assert_eq!(parse_history_name(bad), None, "{bad}");
        }
    }
}
