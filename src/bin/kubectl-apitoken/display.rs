//! Pure formatting: kubectl-style tables, ages and relative times. `now` is always an argument.

use jiff::{SignedDuration, Timestamp};

/// What kubectl prints for an empty cell.
pub const NONE: &str = "<none>";

/// A table printed the way kubectl prints one: upper-case headers, columns padded with spaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

/// Space between columns, as kubectl's tabwriter (padding 3).
const PADDING: usize = 3;
/// Narrowest column including its padding, as kubectl's tabwriter (minwidth 6).
const MIN_WIDTH: usize = 6;

impl Table {
    pub fn new(headers: Vec<&'static str>) -> Self {
        Table {
            headers,
            rows: Vec::new(),
        }
    }

    /// Adds a row; control characters (a description with a newline) become spaces so rows stay rows.
    pub fn push(&mut self, row: Vec<String>) {
        let clean = row
            .into_iter()
            .map(|cell| {
                cell.chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect()
            })
            .collect();
        self.rows.push(clean);
    }

    /// The table as text, one line per row, each ending in `\n`. The last column is not padded.
    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map_or("", String::as_str);
                line.push_str(cell);
                if i + 1 < columns {
                    let target = (width + PADDING).max(MIN_WIDTH);
                    let pad = target.saturating_sub(cell.chars().count());
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A duration the way kubectl prints ages (`k8s.io/apimachinery/pkg/util/duration.HumanDuration`):
/// `45s`, `3m20s`, `12m`, `5h7m`, `20h`, `3d4h`, `29d`, `2y30d`, `9y`.
pub fn human_duration(d: SignedDuration) -> String {
    let secs = d.as_secs();
    if secs < -1 {
        return "<invalid>".to_owned();
    }
    if secs < 0 {
        return "0s".to_owned();
    }
    let minutes = secs / 60;
    let hours = secs / 3600;
    let days = hours / 24;
    let years = days / 365;
    let with = |big: i64, unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{unit}")
        } else {
            format!("{big}{unit}{small}{small_unit}")
        }
    };
    if secs < 120 {
        format!("{secs}s")
    } else if minutes < 10 {
        with(minutes, "m", secs % 60, "s")
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        with(hours, "h", minutes % 60, "m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        with(days, "d", hours % 24, "h")
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        with(years, "y", days % 365, "d")
    } else {
        format!("{years}y")
    }
}

/// Age of something created at `at`, as kubectl's AGE column (`5m`); `<none>` when unknown.
pub fn age(at: Option<Timestamp>, now: Timestamp) -> String {
    at.map_or_else(
        || NONE.to_owned(),
        |at| human_duration(now.duration_since(at)),
    )
}

/// An instant relative to `now`: `in 29d` when ahead, `5m ago` when past; `<none>` when unknown.
pub fn relative(at: Option<Timestamp>, now: Timestamp) -> String {
    let Some(at) = at else {
        return NONE.to_owned();
    };
    if at >= now {
        format!("in {}", human_duration(at.duration_since(now)))
    } else {
        format!("{} ago", human_duration(now.duration_since(at)))
    }
}

/// The value, or `<none>` when absent or empty.
pub fn or_none(value: Option<&str>) -> String {
    match value {
        Some(v) if !v.is_empty() => v.to_owned(),
        _ => NONE.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: i64) -> SignedDuration {
        SignedDuration::from_secs(s)
    }

    #[test]
    fn durations_read_like_kubectl_ages() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (45, "45s"),
            (119, "119s"),
            (120, "2m"),
            (200, "3m20s"),
            (600, "10m"),
            (179 * 60 + 59, "179m"),
            (3 * 3600, "3h"),
            (5 * 3600 + 7 * 60, "5h7m"),
            (20 * 3600, "20h"),
            (47 * 3600, "47h"),
            (3 * 86_400 + 4 * 3600, "3d4h"),
            (7 * 86_400, "7d"),
            (29 * 86_400 + 23 * 3600, "29d"),
            (400 * 86_400, "400d"),
            (2 * 365 * 86_400 + 30 * 86_400, "2y30d"),
            (3 * 365 * 86_400, "3y"),
            (9 * 365 * 86_400, "9y"),
        ];
        for (s, want) in cases {
            assert_eq!(human_duration(secs(s)), want, "{s}s");
        }
    }

    #[test]
    fn ages_and_relative_times() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        assert_eq!(age(Some(now - secs(300)), now), "5m");
        assert_eq!(age(None, now), "<none>");
        assert_eq!(
            relative(Some(now + secs(29 * 86_400 + 3600)), now),
            "in 29d"
        );
        assert_eq!(relative(Some(now - secs(90)), now), "90s ago");
        assert_eq!(relative(Some(now), now), "in 0s");
        assert_eq!(relative(None, now), "<none>");
    }

    #[test]
    fn table_pads_columns_like_kubectl() {
        let mut table = Table::new(vec!["NAME", "ACCESS KEY", "ROLE"]);
        table.push(vec![
            "superset-reader".into(),
            "XkQBXKr652MV1VF9".into(),
            "reader".into(),
        ]);
        table.push(vec!["a".into(), "<none>".into(), "admin".into()]);
        assert_eq!(
            table.render(),
            "NAME              ACCESS KEY         ROLE\n\
             superset-reader   XkQBXKr652MV1VF9   reader\n\
             a                 <none>             admin\n"
        );
    }

    #[test]
    fn narrow_columns_get_kubectl_minimum_width_and_no_trailing_spaces() {
        let mut table = Table::new(vec!["A", "B"]);
        table.push(vec!["x".into(), String::new()]);
        assert_eq!(table.render(), "A     B\nx\n");
    }

    #[test]
    fn control_characters_cannot_break_a_row() {
        let mut table = Table::new(vec!["NAME", "DESCRIPTION"]);
        table.push(vec!["t".into(), "two\nlines".into()]);
        assert_eq!(table.render(), "NAME   DESCRIPTION\nt      two lines\n");
    }

    #[test]
    fn unicode_cells_are_padded_by_characters() {
        let mut table = Table::new(vec!["NAME", "ROLE"]);
        table.push(vec!["café".into(), "r".into()]);
        assert_eq!(table.render(), "NAME   ROLE\ncafé   r\n");
    }
}
