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

/// A Unix-ms time as RFC 3339 (UTC), for any time the outbox can hold.
pub fn rfc3339(ms: i64) -> String {
    crate::event::rfc3339_ms(ms)
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
    fn relative_times_read_naturally() {
        assert_eq!(ago(0, 1000), "just now");
        assert_eq!(ago(0, 42_000), "42 s ago");
        assert_eq!(ago(0, 180_000), "3 min ago");
        assert_eq!(ago(0, 7_200_000), "2 h ago");
        assert_eq!(ago(0, 3 * 86_400_000), "3 d ago");
        assert_eq!(ago(i64::MIN, i64::MAX), "106751991167 d ago");
        assert_eq!(ago(i64::MAX, 0), "just now");
    }
}
