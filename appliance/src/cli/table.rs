//! Text output shared by the admin commands: aligned tables, relative
//! times, metric values. Pure formatting; callers print.

/// `header` and `rows` as left-aligned columns two spaces apart, one line
/// each (trailing spaces trimmed), every line ending in a newline.
pub fn format_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in rows {
        line(r);
    }
    out
}

/// Prints [`format_table`] to stdout.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", format_table(header, rows));
}

/// How long before now `ts_ms` was (`never` for 0).
pub fn ago(ts_ms: u64) -> String {
    ago_at(ts_ms, outpost_storage::now_ms())
}

/// How long before `now_ms` `ts_ms` was, in the largest whole unit
/// (`42s ago`, `3m ago`, `5h ago`, `2d ago`); `never` for 0.
pub fn ago_at(ts_ms: u64, now_ms: u64) -> String {
    if ts_ms == 0 {
        return "never".into();
    }
    let secs = now_ms.saturating_sub(ts_ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// A metric value: whole numbers without decimals, others with two.
pub fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_and_lines_have_no_trailing_spaces() {
        let rows = vec![
            vec!["1".to_string(), "web-1".to_string(), String::new()],
            vec!["22".to_string(), "é".to_string(), "x".to_string()],
        ];
        assert_eq!(
            format_table(&["ID", "HOST", "NOTE"], &rows),
            "ID  HOST   NOTE\n1   web-1\n22  é      x\n"
        );
        assert_eq!(format_table(&["ID"], &[]), "ID\n");
    }

    #[test]
    fn relative_times_use_the_largest_whole_unit() {
        let now = 10_000_000_000;
        assert_eq!(ago_at(0, now), "never");
        assert_eq!(ago_at(now, now), "0s ago");
        assert_eq!(ago_at(now + 5000, now), "0s ago", "clock skew");
        assert_eq!(ago_at(now - 59_999, now), "59s ago");
        assert_eq!(ago_at(now - 60_000, now), "1m ago");
        assert_eq!(ago_at(now - 3_599_000, now), "59m ago");
        assert_eq!(ago_at(now - 3_600_000, now), "1h ago");
        assert_eq!(ago_at(now - 86_400_000, now), "1d ago");
    }

    #[test]
    fn whole_values_have_no_decimals_and_others_two() {
        assert_eq!(fmt_value(42.0), "42");
        assert_eq!(fmt_value(-3.0), "-3");
        assert_eq!(fmt_value(97.456), "97.46");
        assert_eq!(fmt_value(1e16), "10000000000000000.00");
    }
}
