//! Timeline history files (`0000000N.history`, PostgreSQL's
//! `readTimeLineHistory`): which timelines led to timeline N, and at which
//! LSN each of them ended. drd reads them to follow a promotion: the stream
//! on the old timeline ends at the switch point, and the next timeline
//! carries on from there.

use super::lsn::Lsn;

/// One line of a history file: timeline `tli` ended at `end`, and the
/// next line's timeline (or, on the last line, the file's own timeline)
/// continued from there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switch {
    /// The timeline that ended.
    pub tli: u32,
    /// The switch point: the first LSN that belongs to the next timeline.
    pub end: Lsn,
}

/// Why a history file cannot be read. Lines count from 1.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "timeline history line {line}: expected a numeric timeline ID other than 0, \
         found {found:?}"
    )]
    TimelineId { line: usize, found: String },
    #[error("timeline history line {line}: no switch point after the timeline ID")]
    MissingSwitchPoint { line: usize },
    #[error("timeline history line {line}: bad switch point: {source}")]
    SwitchPoint {
        line: usize,
        source: super::lsn::LsnError,
    },
    #[error(
        "timeline history line {line}: timeline {tli} after timeline {prev}; timeline IDs \
         must increase"
    )]
    NotAscending { line: usize, tli: u32, prev: u32 },
    #[error(
        "timeline history line {line}: switch point {end} lies before the previous one, \
         {prev}"
    )]
    SwitchBackwards { line: usize, end: Lsn, prev: Lsn },
}

/// Reads a history file: one `parentTLI<TAB>switchpoint<TAB>reason` line per
/// ancestor, oldest first. Blank lines and `#` comments are skipped and the
/// reason is ignored, as PostgreSQL does. Timelines must be strictly
/// ascending and switch points must not go backwards.
pub fn parse(content: &str) -> Result<Vec<Switch>, HistoryError> {
    let mut out: Vec<Switch> = Vec::new();
    for (i, raw) in content.lines().enumerate() {
        let line = i.saturating_add(1);
        let text = raw.trim_start();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let mut fields = text.split_whitespace();
        let first = fields.next().unwrap_or_default();
        let tli = Some(first)
            .filter(|f| f.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|f| f.parse::<u32>().ok())
            .filter(|&t| t != 0)
            .ok_or_else(|| HistoryError::TimelineId {
                line,
                found: first.to_owned(),
            })?;
        let end: Lsn = fields
            .next()
            .ok_or(HistoryError::MissingSwitchPoint { line })?
            .parse()
            .map_err(|source| HistoryError::SwitchPoint { line, source })?;
        if let Some(prev) = out.last() {
            if tli <= prev.tli {
                return Err(HistoryError::NotAscending {
                    line,
                    tli,
                    prev: prev.tli,
                });
            }
            if end < prev.end {
                return Err(HistoryError::SwitchBackwards {
                    line,
                    end,
                    prev: prev.end,
                });
            }
        }
        out.push(Switch { tli, end });
    }
    Ok(out)
}

/// In `history`, the parsed history file of timeline `of`: where timeline
/// `tli` ended and which timeline came next. None when `tli` is not one of
/// `of`'s ancestors (`tli == of` included: it has not ended), or when the
/// history names a timeline at or past `of`, which no history of `of` can.
pub fn successor(history: &[Switch], of: u32, tli: u32) -> Option<(Lsn, u32)> {
    if tli >= of {
        return None;
    }
    let i = history.iter().position(|s| s.tli == tli)?;
    let next = match history.get(i.checked_add(1)?) {
        Some(s) if s.tli < of => s.tli,
        Some(_) => return None,
        None => of,
    };
    Some((history.get(i)?.end, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `00000003.history` as PostgreSQL 15 writes it after two promotions:
    /// the parent's file, then a blank line and the new line.
    const TLI3: &str = "1\t0/3000158\tno recovery target specified\n\
                        \n\
                        2\t0/5000060\tno recovery target specified\n";

    #[test]
    fn parses_a_postgresql_history_file() {
        assert_eq!(
            parse(TLI3).unwrap(),
            vec![
                Switch {
                    tli: 1,
                    end: Lsn(0x0300_0158)
                },
                Switch {
                    tli: 2,
                    end: Lsn(0x0500_0060)
                },
            ]
        );
    }

    #[test]
    fn skips_comments_blank_lines_and_reasons() {
        let text = "# written by hand\n\
                    \r\n\
                    \t  \n\
                    1\t16/B374D848\tafter LSN \"16/B374D840\"\r\n\
                    \x20 # indented comment\n\
                    4 16/B374D848\n\
                    7\t1A/0";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                Switch {
                    tli: 1,
                    end: Lsn(0x16_B374_D848)
                },
                Switch {
                    tli: 4,
                    end: Lsn(0x16_B374_D848)
                },
                Switch {
                    tli: 7,
                    end: Lsn(0x1A_0000_0000)
                },
            ]
        );
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("\n# nothing\n").unwrap(), vec![]);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            parse("1\t0/1\nx\t0/2\n"),
            Err(HistoryError::TimelineId {
                line: 2,
                found: "x".into()
            })
        );
        assert_eq!(
            parse("0\t0/1\n"),
            Err(HistoryError::TimelineId {
                line: 1,
                found: "0".into()
            })
        );
        assert_eq!(
            parse("+1\t0/1\n"),
            Err(HistoryError::TimelineId {
                line: 1,
                found: "+1".into()
            })
        );
        assert_eq!(
            parse("99999999999\t0/1\n"),
            Err(HistoryError::TimelineId {
                line: 1,
                found: "99999999999".into()
            })
        );
        assert_eq!(
            parse("\n\n1\n"),
            Err(HistoryError::MissingSwitchPoint { line: 3 })
        );
        assert!(matches!(
            parse("1\t3000158\treason\n"),
            Err(HistoryError::SwitchPoint { line: 1, .. })
        ));
        assert_eq!(
            parse("2\t0/1\n2\t0/2\n"),
            Err(HistoryError::NotAscending {
                line: 2,
                tli: 2,
                prev: 2
            })
        );
        assert_eq!(
            parse("3\t0/1\n# c\n2\t0/2\n"),
            Err(HistoryError::NotAscending {
                line: 3,
                tli: 2,
                prev: 3
            })
        );
        assert_eq!(
            parse("1\t0/5000000\n2\t0/4FFFFFF\n"),
            Err(HistoryError::SwitchBackwards {
                line: 2,
                end: Lsn(0x04FF_FFFF),
                prev: Lsn(0x0500_0000)
            })
        );
        assert_eq!(
            parse("1\t0/5\n2\t0/4\n").unwrap_err().to_string(),
            "timeline history line 2: switch point 0/4 lies before the previous one, 0/5"
        );
    }

    #[test]
    fn successor_follows_the_history() {
        let h = parse(TLI3).unwrap();
        assert_eq!(successor(&h, 3, 1), Some((Lsn(0x0300_0158), 2)));
        assert_eq!(successor(&h, 3, 2), Some((Lsn(0x0500_0060), 3)));
        assert_eq!(successor(&h, 3, 3), None);
        assert_eq!(successor(&h, 3, 4), None);
        assert_eq!(successor(&h, 3, 0), None);
        // Timelines may be skipped: 5's parent was 2.
        let h = parse("1\t0/3000158\n2\t0/5000060\n").unwrap();
        assert_eq!(successor(&h, 5, 2), Some((Lsn(0x0500_0060), 5)));
        assert_eq!(successor(&h, 5, 3), None);
        // Timeline 1 has no history: nothing is its ancestor.
        assert_eq!(successor(&[], 1, 1), None);
        assert_eq!(successor(&[], 2, 1), None);
    }

    #[test]
    fn successor_refuses_a_history_of_another_timeline() {
        let h = parse(TLI3).unwrap();
        // TLI3's history names timeline 2, so it is not timeline 2's history.
        assert_eq!(successor(&h, 2, 1), None);
    }
}
