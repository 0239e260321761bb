//! Sizes, rates and durations as an operator writes them in the config file
//! or on the command line: the one parser for all of them, so `16MiB` means
//! the same thing in every key and flag.
//!
//! The units (documented once, in deploy/README.md "Units"):
//!
//! - **Sizes**: a bare number is bytes; `B`; `KiB`, `MiB`, `GiB`, `TiB` are
//!   1024-based; `KB` (or `kB`), `MB`, `GB`, `TB` are 1000-based (SI).
//!   Fractions are allowed (`1.5GiB`). A bare letter (`16K`, `16M`, `16G`)
//!   is refused as ambiguous, and so is a lowercase `b` (`16Mb`), which
//!   usually means bits.
//! - **Rates** (bandwidth): a size per second (`200MiB/s`, `50MB/s`), or a
//!   bit rate `kbit/s`, `Mbit/s`, `Gbit/s` (1000-based, as links are sold).
//! - **Durations**: humantime's meaning: `500ms`, `30s`, `5min`, `1h`,
//!   `1h 30min`. Where a value may be a size or a time (`rpo_budget`,
//!   `--max-data-loss`), `16m` and `16M` are refused as ambiguous (to
//!   humantime `m` is minutes and `M` months).
//!
//! Nothing else in drd parses these by hand: config keys named `*_ms`,
//! `*_seconds` or `*_bytes` and CLI flags named for their unit take plain
//! numbers.
//!
//! Why these crates: `bytesize` knows both the SI and the IEC unit names and
//! is small, dependency-free and widely used; `humantime` is the usual
//! duration parser of the Rust ecosystem and already drctl's time formatter.
//! What they leave open — ambiguous bare letters, lowercase bits, overflow —
//! is refused here before their answer is used.

use std::time::Duration;
use thiserror::Error;

/// Why a size, rate or duration was refused. The text says what to write
/// instead.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("{text:?} is not {what} like {example}")]
    NotANumber {
        text: String,
        what: &'static str,
        example: &'static str,
    },
    #[error("{text:?} is ambiguous: write {choices}")]
    Ambiguous { text: String, choices: String },
    #[error(
        "{text:?}: a lowercase \"b\" usually means bits; write \"{num}{upper}B\" (bytes, \
         1000-based) or \"{num}{upper}iB\" (1024-based){bits}"
    )]
    LowercaseB {
        text: String,
        num: String,
        upper: String,
        bits: String,
    },
    #[error("{text:?}: unknown unit {unit:?} (use {allowed})")]
    UnknownUnit {
        text: String,
        unit: String,
        allowed: &'static str,
    },
    #[error("{text:?} is too large (more than 16 EiB)")]
    TooLarge { text: String },
    #[error("{text:?} is not a rate like \"200MiB/s\" or \"1Gbit/s\" (a size or a bit rate, then \"/s\")")]
    NotARate { text: String },
    #[error("{text:?} is not a duration like \"30s\", \"500ms\", \"5min\" or \"1h\" ({reason})")]
    NotADuration { text: String, reason: String },
}

const SIZE_UNITS: &str = "B, KiB, MiB, GiB, TiB (1024-based) or KB, MB, GB, TB (1000-based)";

/// Splits `16.5 MiB` into (`16.5`, `MiB`), both trimmed.
fn split(text: &str) -> (&str, &str) {
    let t = text.trim();
    let at = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(at);
    (num, unit.trim())
}

/// `number × factor` in bytes, refusing what does not fit in a u64.
fn scale(text: &str, num: &str, factor: u64) -> Result<u64, UnitError> {
    let too_large = || UnitError::TooLarge { text: text.into() };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(factor).ok_or_else(too_large);
    }
    let v: f64 = num.parse().map_err(|_| UnitError::NotANumber {
        text: text.into(),
        what: "a size",
        example: "\"16MiB\" or \"16MB\"",
    })?;
    let bytes = v * factor as f64;
    // 2^64 is exactly representable; anything at or above it does not fit.
    if !bytes.is_finite() || bytes >= 18_446_744_073_709_551_616.0 {
        return Err(too_large());
    }
    Ok(bytes as u64)
}

/// Is `unit` a bare letter that could mean 1000, 1024 (or minutes, or
/// months)? Returns the unambiguous spellings to suggest.
fn ambiguous_letter(unit: &str) -> Option<char> {
    let mut chars = unit.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if "kKmMgGtTpPeE".contains(c) => Some(c.to_ascii_uppercase()),
        _ => None,
    }
}

/// The unit's multiplier in bytes, or None if it is no size unit at all.
fn size_factor(text: &str, num: &str, unit: &str) -> Result<Option<u64>, UnitError> {
    if unit.is_empty() || unit == "B" {
        return Ok(Some(1));
    }
    if let Some(letter) = ambiguous_letter(unit) {
        return Err(UnitError::Ambiguous {
            text: text.trim().into(),
            choices: format!("\"{num}{letter}iB\" (1024-based) or \"{num}{letter}B\" (1000-based)"),
        });
    }
    // `kb`, `Mb`, `mib`: bytesize would read them as bytes, people often
    // mean bits.
    let first = unit.chars().next().unwrap_or(' ');
    if unit.ends_with('b') && unit.chars().count() <= 3 && "kKmMgGtTpPeE".contains(first) {
        return Err(UnitError::LowercaseB {
            text: text.trim().into(),
            num: num.into(),
            upper: first.to_ascii_uppercase().to_string(),
            bits: String::new(),
        });
    }
    match unit.parse::<bytesize::Unit>() {
        // bytesize's names are case-insensitive; `Ki`/`Mi` alone are
        // Kubernetes' spelling, not one we document.
        Ok(u) if unit.ends_with('B') => Ok(Some(u * 1u64)),
        _ => Ok(None),
    }
}

/// Parses a byte size: `123`, `64KiB`, `16MiB`, `1.5GiB`, `16MB`.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let (num, unit) = split(text);
    match size_factor(text, num, unit)? {
        Some(factor) => scale(text, num, factor),
        None => Err(UnitError::UnknownUnit {
            text: text.into(),
            unit: unit.into(),
            allowed: SIZE_UNITS,
        }),
    }
}

/// Parses a rate into bytes per second: `200MiB/s`, `1.5MB/s`, `100Mbit/s`.
/// `unlimited` (or `0`) is None. Callers check their own minimum.
pub fn parse_rate(text: &str) -> Result<Option<u64>, UnitError> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("unlimited") || t == "0" {
        return Ok(None);
    }
    let per_second = t
        .strip_suffix("/s")
        .ok_or_else(|| UnitError::NotARate { text: text.into() })?;
    let (num, unit) = split(per_second);
    if num.is_empty() {
        return Err(UnitError::NotARate { text: text.into() });
    }
    let bits_per_unit: Option<u64> = match unit {
        "bit" => Some(1),
        "kbit" | "Kbit" => Some(1_000),
        "Mbit" => Some(1_000_000),
        "Gbit" => Some(1_000_000_000),
        _ => None,
    };
    if let Some(bits) = bits_per_unit {
        return Ok(Some(scale(text, num, bits)? / 8));
    }
    let factor = match size_factor(text, num, unit) {
        Err(UnitError::Ambiguous { text, .. }) => {
            let letter = ambiguous_letter(unit).unwrap_or('M');
            return Err(UnitError::Ambiguous {
                text,
                choices: format!(
                    "\"{num}{letter}iB/s\" (1024-based), \"{num}{letter}B/s\" (1000-based) or \
                     \"{num}{letter}bit/s\" (bits)"
                ),
            });
        }
        Err(UnitError::LowercaseB {
            text, num, upper, ..
        }) => {
            let bits = format!("; for bits \"{num}{upper}bit/s\"");
            return Err(UnitError::LowercaseB {
                text,
                num,
                upper,
                bits,
            });
        }
        Err(e) => return Err(e),
        Ok(Some(f)) => f,
        Ok(None) => {
            return Err(UnitError::UnknownUnit {
                text: text.into(),
                unit: unit.into(),
                allowed: "B, KiB, MiB, GiB (1024-based), KB, MB, GB (1000-based) or kbit, Mbit, \
                          Gbit, followed by /s",
            })
        }
    };
    Ok(Some(scale(text, num, factor)?))
}

/// Parses a duration with humantime's meaning: `500ms`, `30s`, `5min`,
/// `1h 30min`.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    humantime::parse_duration(text.trim()).map_err(|e| UnitError::NotADuration {
        text: text.into(),
        reason: e.to_string(),
    })
}

/// An amount that is either a size or a duration (`rpo_budget`,
/// `--max-data-loss`): a size unit makes it bytes, a time unit time. A bare
/// number is bytes. `16m` / `16M` are refused: 16 minutes, MiB or MB?
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SizeOrDuration {
    Bytes(u64),
    Duration(Duration),
}

pub fn parse_size_or_duration(text: &str) -> Result<SizeOrDuration, UnitError> {
    let (num, unit) = split(text);
    if let Some(letter) = ambiguous_letter(unit) {
        let time = if letter == 'M' {
            format!(", or \"{num}min\" for time")
        } else {
            String::new()
        };
        return Err(UnitError::Ambiguous {
            text: text.trim().into(),
            choices: format!(
                "\"{num}{letter}iB\" (1024-based) or \"{num}{letter}B\" (1000-based){time}"
            ),
        });
    }
    match size_factor(text, num, unit)? {
        Some(factor) => Ok(SizeOrDuration::Bytes(scale(text, num, factor)?)),
        None => match parse_duration(text) {
            Ok(d) => Ok(SizeOrDuration::Duration(d)),
            Err(_) => Err(UnitError::NotANumber {
                text: text.into(),
                what: "an amount",
                example: "\"16MiB\", \"16MB\" (bytes) or \"30s\", \"5min\" (time)",
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_have_one_meaning() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("1kB"), Ok(1000));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("16 MB"), Ok(16_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
    }

    #[test]
    fn a_bare_letter_is_refused_with_the_spellings_to_use() {
        for (text, want) in [
            (
                "16M",
                "\"16M\" is ambiguous: write \"16MiB\" (1024-based) or \"16MB\" (1000-based)",
            ),
            ("16m", "\"16MiB\""),
            ("64K", "\"64KiB\" (1024-based) or \"64KB\""),
            ("64k", "\"64KiB\""),
            ("1G", "\"1GiB\""),
        ] {
            let e = parse_size(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        let e = parse_size("16Mb").unwrap_err().to_string();
        assert!(
            e.contains("bits") && e.contains("16MB") && e.contains("16MiB"),
            "{e}"
        );
        assert!(parse_size("16kb").is_err());
        assert!(parse_size("16µb").is_err());
    }

    #[test]
    fn nonsense_and_overflow_are_refused() {
        let e = parse_size("5 parsecs").unwrap_err().to_string();
        assert!(e.contains("parsecs") && e.contains("KiB"), "{e}");
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("1.2.3MiB").is_err());
        assert!(parse_size("16Mi").is_err());
        let e = parse_size("99999999999EiB").unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        assert!(parse_size("18446744073709551616").is_err());
        assert!(parse_size("20000000000.5GiB").is_err());
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("200MiB/s"), Ok(Some(200 << 20)));
        assert_eq!(parse_rate("1.5MB/s"), Ok(Some(1_500_000)));
        assert_eq!(parse_rate("100KB/s"), Ok(Some(100_000)));
        assert_eq!(parse_rate("100KiB/s"), Ok(Some(100 << 10)));
        assert_eq!(parse_rate("100Mbit/s"), Ok(Some(12_500_000)));
        assert_eq!(parse_rate("1Gbit/s"), Ok(Some(125_000_000)));
        assert_eq!(parse_rate("800kbit/s"), Ok(Some(100_000)));
        assert_eq!(parse_rate("unlimited"), Ok(None));
        assert_eq!(parse_rate("0"), Ok(None));
        let e = parse_rate("200M/s").unwrap_err().to_string();
        assert!(
            e.contains("\"200MiB/s\"") && e.contains("\"200MB/s\"") && e.contains("\"200Mbit/s\""),
            "{e}"
        );
        let e = parse_rate("100Mb/s").unwrap_err().to_string();
        assert!(e.contains("\"100Mbit/s\""), "{e}");
        assert!(parse_rate("200MiB").unwrap_err().to_string().contains("/s"));
        assert!(parse_rate("/s").is_err());
        assert!(parse_rate("3furlongs/s")
            .unwrap_err()
            .to_string()
            .contains("unit"));
        assert!(parse_rate("99999999999999999999Gbit/s").is_err());
    }

    #[test]
    fn durations_are_humantimes() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5min"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h 30min"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon")
            .unwrap_err()
            .to_string()
            .contains("30s"));
    }

    #[test]
    fn an_amount_is_a_size_or_a_time_never_a_guess() {
        use SizeOrDuration::*;
        assert_eq!(parse_size_or_duration("16MiB"), Ok(Bytes(16 << 20)));
        assert_eq!(parse_size_or_duration("16MB"), Ok(Bytes(16_000_000)));
        assert_eq!(parse_size_or_duration("100"), Ok(Bytes(100)));
        assert_eq!(
            parse_size_or_duration("16min"),
            Ok(Duration(std::time::Duration::from_secs(960)))
        );
        assert_eq!(
            parse_size_or_duration("30s"),
            Ok(Duration(std::time::Duration::from_secs(30)))
        );
        for text in ["16m", "16M"] {
            let e = parse_size_or_duration(text).unwrap_err().to_string();
            assert!(
                e.contains("ambiguous")
                    && e.contains("\"16MiB\"")
                    && e.contains("\"16MB\"")
                    && e.contains("\"16min\""),
                "{e}"
            );
        }
        let e = parse_size_or_duration("16K").unwrap_err().to_string();
        assert!(e.contains("\"16KiB\"") && !e.contains("min"), "{e}");
        assert!(parse_size_or_duration("5 parsecs").is_err());
        assert!(parse_size_or_duration("lots").is_err());
    }
}
