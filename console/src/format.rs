//! Human units, as pure functions: bytes (KiB/MiB/GiB, binary), rates,
//! percentages, durations, relative and absolute (UTC) times, counts with
//! thousands separators, and the unit of a metric by its name. Pages and
//! charts format through here only; the browser localises the absolute
//! times (`<time datetime>`) with `console.js`.
//!
//! No clock in here: "ago" takes `now_ms`.

use outpost_proto::metric_names as m;

/// What a metric's numbers mean, for axes, tables and tooltips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// 0–100.
    Percent,
    Bytes,
    BytesPerSec,
    Seconds,
    /// A plain number (load, process counts).
    Count,
}

impl Unit {
    /// The unit of a metric by its stable name ([`outpost_proto::metric_names`]).
    pub fn of_metric(name: &str) -> Unit {
        match name {
            m::CPU | m::MEMORY | m::SWAP | m::DISK_USED_PERCENT => Unit::Percent,
            m::NET_RX_BYTES_PER_SEC | m::NET_TX_BYTES_PER_SEC => Unit::BytesPerSec,
            m::UPTIME_SECONDS => Unit::Seconds,
            n if n.ends_with("_bytes_per_sec") => Unit::BytesPerSec,
            n if n.ends_with("_bytes") => Unit::Bytes,
            n if n.ends_with("_percent") => Unit::Percent,
            n if n.ends_with("_seconds") => Unit::Seconds,
            _ => Unit::Count,
        }
    }

    /// `v` in this unit, for people.
    pub fn format(self, v: f64) -> String {
        match self {
            Unit::Percent => percent(v),
            Unit::Bytes => bytes(v),
            Unit::BytesPerSec => format!("{}/s", bytes(v)),
            Unit::Seconds => duration_ms(if v.is_finite() && v > 0.0 {
                (v * 1000.0) as u64
            } else {
                0
            }),
            Unit::Count => number(v),
        }
    }

    /// The largest value an axis of this unit should show at least (a
    /// percentage axis goes to 100 only when the data comes near it).
    pub fn axis_floor_max(self) -> f64 {
        match self {
            Unit::Percent => 10.0,
            _ => 1.0,
        }
    }
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `270.6 GiB`, `1.2 TiB`.
pub fn bytes(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let neg = v < 0.0;
    let mut x = v.abs();
    let mut i = 0;
    while x >= 1024.0 && i < UNITS.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    let sign = if neg { "-" } else { "" };
    if i == 0 {
        format!("{sign}{} B", x.round() as u64)
    } else if x >= 100.0 {
        format!("{sign}{x:.0} {}", UNITS[i])
    } else {
        format!("{sign}{x:.1} {}", UNITS[i])
    }
}

/// A percentage: one decimal below 10, none above (`4.2 %`, `97 %`).
pub fn percent(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if v.abs() < 10.0 && v.fract() != 0.0 {
        format!("{v:.1} %")
    } else {
        format!("{v:.0} %")
    }
}

/// A plain number: integers with thousands separators (`12,345`), others
/// with up to two decimals (`0.42`, `3.5`).
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return count(v as i64);
    }
    let s = if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// An integer with thousands separators: `100,000`.
pub fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration, the two largest units: `45 s`, `3 min 20 s`, `5 h 2 min`,
/// `12 d 4 h`.
pub fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, mi, se) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        if h > 0 {
            format!("{d} d {h} h")
        } else {
            format!("{d} d")
        }
    } else if h > 0 {
        if mi > 0 {
            format!("{h} h {mi} min")
        } else {
            format!("{h} h")
        }
    } else if mi > 0 {
        if se > 0 {
            format!("{mi} min {se} s")
        } else {
            format!("{mi} min")
        }
    } else if ms < 1000 && ms > 0 {
        format!("{ms} ms")
    } else {
        format!("{se} s")
    }
}

/// How long ago `at_ms` was at `now_ms`, in the largest unit: `just now`,
/// `42 s ago`, `5 min ago`, `3 h ago`, `2 d ago`; a time ahead of `now`
/// (clock skew) is `in 5 min`; 0 is `never`.
pub fn ago(at_ms: u64, now_ms: u64) -> String {
    if at_ms == 0 {
        return "never".into();
    }
    let (d, future) = if at_ms > now_ms {
        (at_ms - now_ms, true)
    } else {
        (now_ms - at_ms, false)
    };
    let s = d / 1000;
    let text = if s < 5 {
        return "just now".into();
    } else if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min", s / 60)
    } else if s < 86_400 {
        format!("{} h", s / 3600)
    } else {
        format!("{} d", s / 86_400)
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// Civil date (year, month, day) of days since 1970-01-01 (proleptic
/// Gregorian; Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2023-11-14 22:13 UTC`: what a page shows until `console.js` puts it
/// in the viewer's timezone.
pub fn utc(ms: u64) -> String {
    let (date, h, mi, _) = parts(ms);
    format!("{date} {h:02}:{mi:02} UTC")
}

/// RFC 3339 (`2023-11-14T22:13:20Z`), for `<time datetime>`.
pub fn rfc3339(ms: u64) -> String {
    let (date, h, mi, s) = parts(ms);
    format!("{date}T{h:02}:{mi:02}:{s:02}Z")
}

fn parts(ms: u64) -> (String, u64, u64, u64) {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let (y, mo, d) = civil(days);
    let rem = secs % 86_400;
    (
        format!("{y:04}-{mo:02}-{d:02}"),
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
    )
}

/// An axis label of a time: `HH:MM` for ranges up to two days, `MM-DD`
/// beyond (UTC; the page says so).
pub fn axis_time(ms: u64, span_ms: u64) -> String {
    let (date, h, mi, _) = parts(ms);
    if span_ms <= 2 * 86_400_000 {
        format!("{h:02}:{mi:02}")
    } else {
        date.get(5..).unwrap_or(&date).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_use_binary_units_with_one_decimal_below_100() {
        assert_eq!(bytes(0.0), "0 B");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(1024.0 * 1024.0), "1.0 MiB");
        // The value the issue saw printed as `270553174016.00`.
        assert_eq!(bytes(270_553_174_016.0), "252 GiB");
        assert_eq!(bytes(5.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0), "5.0 TiB");
        assert_eq!(bytes(-2048.0), "-2.0 KiB");
        assert_eq!(bytes(f64::NAN), "–");
    }

    #[test]
    fn percentages_numbers_and_counts_read_like_a_person_writes_them() {
        assert_eq!(percent(4.25), "4.2 %");
        assert_eq!(percent(97.4), "97 %");
        assert_eq!(percent(0.0), "0 %");
        assert_eq!(count(100_000), "100,000");
        assert_eq!(count(999), "999");
        assert_eq!(count(-1_234_567), "-1,234,567");
        assert_eq!(number(12345.0), "12,345");
        assert_eq!(number(0.42), "0.42");
        assert_eq!(number(3.5), "3.5");
        assert_eq!(number(1234.56), "1235");
        assert_eq!(number(f64::INFINITY), "–");
    }

    #[test]
    fn durations_show_their_two_largest_units() {
        assert_eq!(duration_ms(0), "0 s");
        assert_eq!(duration_ms(250), "250 ms");
        assert_eq!(duration_ms(45_000), "45 s");
        assert_eq!(duration_ms(200_000), "3 min 20 s");
        assert_eq!(duration_ms(3_600_000), "1 h");
        assert_eq!(duration_ms(5 * 3_600_000 + 120_000), "5 h 2 min");
        assert_eq!(duration_ms(12 * 86_400_000 + 4 * 3_600_000), "12 d 4 h");
        assert_eq!(Unit::Seconds.format(90.0), "1 min 30 s");
    }

    #[test]
    fn relative_times_take_now_as_a_parameter() {
        let now = 1_700_000_000_000;
        assert_eq!(ago(0, now), "never");
        assert_eq!(ago(now - 2_000, now), "just now");
        assert_eq!(ago(now - 42_000, now), "42 s ago");
        assert_eq!(ago(now - 5 * 60_000, now), "5 min ago");
        assert_eq!(ago(now - 3 * 3_600_000, now), "3 h ago");
        assert_eq!(ago(now - 2 * 86_400_000, now), "2 d ago");
        assert_eq!(ago(now + 300_000, now), "in 5 min");
    }

    #[test]
    fn absolute_times_are_utc_calendar_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00 UTC", "leap day");
        assert_eq!(rfc3339(4_102_444_799_000), "2099-12-31T23:59:59Z");
        assert_eq!(axis_time(1_700_000_000_000, 3_600_000), "22:13");
        assert_eq!(axis_time(1_700_000_000_000, 7 * 86_400_000), "11-14");
    }

    #[test]
    fn metric_units_come_from_the_stable_names() {
        assert_eq!(Unit::of_metric("cpu"), Unit::Percent);
        assert_eq!(Unit::of_metric("memory"), Unit::Percent);
        assert_eq!(Unit::of_metric("disk_used_percent"), Unit::Percent);
        assert_eq!(Unit::of_metric("memory_used_bytes"), Unit::Bytes);
        assert_eq!(Unit::of_metric("net_rx_bytes_per_sec"), Unit::BytesPerSec);
        assert_eq!(Unit::of_metric("uptime_seconds"), Unit::Seconds);
        assert_eq!(Unit::of_metric("load1"), Unit::Count);
        assert_eq!(Unit::Bytes.format(270_553_174_016.0), "252 GiB");
        assert_eq!(Unit::BytesPerSec.format(2048.0), "2.0 KiB/s");
    }
}
