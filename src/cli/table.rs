//! Output for people: aligned tables and relative times.

use std::fmt::Write as _;

/// A table with a header row; columns are padded to their widest cell.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(headers: &[&str]) -> Self {
        Table {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| visible_len(s))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[c] - visible_len(cell) + 2;
                    let _ = write!(line, "{cell}{:pad$}", "");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Characters shown, colour codes left out.
fn visible_len(s: &str) -> usize {
    let mut n = 0;
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

/// A state or outcome word, coloured when standard output is a terminal and `NO_COLOR` is
/// unset: green for good, yellow for waiting, red for given up, dim for idle.
pub fn paint(word: &str) -> String {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || std::env::var_os("NO_COLOR").is_some() {
        return word.to_string();
    }
    let colour = match word {
        "active" | "delivered" | "running" => "32",
        "backing-off" | "retry" | "paused" => "33",
        "gone" | "dead" => "31",
        _ => "2",
    };
    format!("\x1b[{colour}m{word}\x1b[0m")
}

/// "3 min ago", "2 h ago", "just now" for a Unix-ms time, relative to `now_ms`.
pub fn ago(then_ms: i64, now_ms: i64) -> String {
    let s = now_ms.saturating_sub(then_ms).max(0) / 1000;
    match s {
        0..=4 => "just now".into(),
        5..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    }
}

/// A Unix-ms time as RFC 3339 (UTC), for any time the outbox can hold: a year past 9999 (or
/// before year 0) takes ISO 8601's expanded form, `+10000-01-01T00:00:00.000Z`, where
/// `humantime` would panic.
pub fn rfc3339(ms: i64) -> String {
    const DAY: i64 = 86_400_000;
    let (year, month, day) = civil_from_days(ms.div_euclid(DAY));
    let t = ms.rem_euclid(DAY);
    let year = match year {
        0..=9999 => format!("{year:04}"),
        10_000.. => format!("+{year}"),
        _ => format!("-{:04}", -year),
    };
    format!(
        "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        t / 3_600_000,
        t / 60_000 % 60,
        t / 1000 % 60,
        t % 1000
    )
}

/// The proleptic Gregorian date (year, month, day) of the day `days` after 1970-01-01
/// (Howard Hinnant's `civil_from_days`); exact for every `i64` day of an `i64` of ms.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_under_their_headers() {
        let mut t = Table::new(&["SINK", "STATE"]);
        t.row(vec!["cloud-primary".into(), "active".into()]);
        t.row(vec!["b".into(), "gone".into()]);
        assert_eq!(
            t.render(),
            "SINK           STATE\ncloud-primary  active\nb              gone\n"
        );
    }

    #[test]
    fn colour_codes_do_not_count_towards_column_widths() {
        let mut t = Table::new(&["STATE", "N"]);
        t.row(vec!["\x1b[32mactive\x1b[0m".into(), "1".into()]);
        t.row(vec!["gone".into(), "2".into()]);
        assert_eq!(
            t.render(),
            "STATE   N\n\x1b[32mactive\x1b[0m  1\ngone    2\n"
        );
    }

    #[test]
    fn times_read_as_humantime_writes_them_and_past_its_range_too() {
        let mut ms = 0i64;
        while ms < 253_402_300_800_000 {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
            assert_eq!(rfc3339(ms), humantime::format_rfc3339_millis(t).to_string());
            ms += 997_651_234_567;
        }
        assert_eq!(rfc3339(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(253_402_300_800_000), "+10000-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(-62_167_219_200_001), "-0001-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(i64::MAX), "+292278994-08-17T07:12:55.807Z");
        assert_eq!(rfc3339(i64::MIN), "-292275055-05-16T16:47:04.192Z");
        assert_eq!(ago(i64::MIN, i64::MAX), "106751991167 d ago");
        assert_eq!(ago(i64::MAX, 0), "just now");
    }

    #[test]
    fn relative_times_read_naturally() {
        assert_eq!(ago(0, 1000), "just now");
        assert_eq!(ago(0, 42_000), "42 s ago");
        assert_eq!(ago(0, 180_000), "3 min ago");
        assert_eq!(ago(0, 7_200_000), "2 h ago");
        assert_eq!(ago(0, 3 * 86_400_000), "3 d ago");
    }
}
