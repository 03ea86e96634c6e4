//! Time parameters of API queries: absolute milliseconds, RFC 3339, or
//! relative to now (`-1h`, `now`); durations as `300`, `5m`, `1h`.

use std::time::Duration;

/// Parses a point in time relative to `now_ms`.
pub fn parse_time(s: &str, now_ms: u64) -> Result<u64, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(now_ms);
    }
    if let Some(rel) = s.strip_prefix('-') {
        let d =
            humantime::parse_duration(rel).map_err(|e| format!("bad relative time {s:?}: {e}"))?;
        return Ok(now_ms.saturating_sub(d.as_millis() as u64));
    }
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("bad time {s:?} (use epoch ms, RFC 3339, `now` or `-1h`): {e}"))
        .and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .map_err(|_| format!("time {s:?} is before 1970"))
        })
}

/// Parses a step: plain seconds or a humantime duration.
pub fn parse_step(s: &str) -> Result<Duration, String> {
    parse_duration("step", s)
}

/// Parses the duration parameter `what`: plain seconds or a humantime
/// duration; the error names the parameter and shows what one looks like.
pub fn parse_duration(what: &str, s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("{what} {s:?} is not a duration: use seconds (3600) or a number with a unit, e.g. 90s, 15m, 24h, 7d ({e})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_documented_form() {
        let now = 10_000_000;
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(parse_time("-1m", now).unwrap(), now - 60_000);
        assert_eq!(parse_time("1234", now).unwrap(), 1234);
        assert_eq!(parse_time("1970-01-01T00:00:01Z", now).unwrap(), 1000);
        assert!(parse_time("yesterday", now).is_err());
        assert_eq!(parse_step("300").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_step("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_step("fast").is_err());
    }

    #[test]
    fn a_bad_duration_names_the_parameter_and_shows_the_format() {
        let e = parse_duration("ttl", "forever").unwrap_err();
        assert!(e.starts_with("ttl \"forever\" is not a duration"), "{e}");
        assert!(e.contains("24h") && e.contains("7d"), "{e}");
        assert!(!e.contains("step"), "{e}");
        assert_eq!(
            parse_duration("ttl", "7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert!(parse_step("fast").unwrap_err().starts_with("step \"fast\""));
    }
}
