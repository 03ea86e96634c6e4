//! Maintenance windows: is a window active at a given instant for a device?
//! Pure functions over the schedule (time zones via jiff's tz database).

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use super::model::{MaintenanceWindow, Schedule, WindowEffect};

/// Why a schedule is invalid.
pub fn validate(w: &MaintenanceWindow) -> Result<(), String> {
    if w.name.trim().is_empty() {
        return Err("window name must not be empty".into());
    }
    match &w.schedule {
        Schedule::OneOff { start, end } => {
            let s: Timestamp = start
                .parse()
                .map_err(|e| format!("bad start {start:?}: {e}"))?;
            let e: Timestamp = end.parse().map_err(|e| format!("bad end {end:?}: {e}"))?;
            if e <= s {
                return Err("end must be after start".into());
            }
        }
        Schedule::Weekly {
            days,
            start,
            duration,
            timezone,
        } => {
            if days.is_empty() {
                return Err("weekly windows need at least one day".into());
            }
            for d in days {
                weekday(d)?;
            }
            start
                .parse::<Time>()
                .map_err(|e| format!("bad start time {start:?} (HH:MM): {e}"))?;
            TimeZone::get(timezone).map_err(|e| format!("unknown time zone {timezone:?}: {e}"))?;
            if duration.is_zero() || duration.as_secs() > 7 * 86_400 {
                return Err("duration must be between 1s and 7 days".into());
            }
        }
    }
    Ok(())
}

fn weekday(d: &str) -> Result<Weekday, String> {
    Ok(match d.to_ascii_lowercase().get(..3) {
        Some("mon") => Weekday::Monday,
        Some("tue") => Weekday::Tuesday,
        Some("wed") => Weekday::Wednesday,
        Some("thu") => Weekday::Thursday,
        Some("fri") => Weekday::Friday,
        Some("sat") => Weekday::Saturday,
        Some("sun") => Weekday::Sunday,
        _ => return Err(format!("bad weekday {d:?} (mon..sun)")),
    })
}

/// Whether the schedule covers `at_ms` (invalid schedules never do).
pub fn active(schedule: &Schedule, at_ms: u64) -> bool {
    let Ok(now) = Timestamp::from_millisecond(at_ms as i64) else {
        return false;
    };
    match schedule {
        Schedule::OneOff { start, end } => {
            match (start.parse::<Timestamp>(), end.parse::<Timestamp>()) {
                (Ok(s), Ok(e)) => s <= now && now < e,
                _ => false,
            }
        }
        Schedule::Weekly {
            days,
            start,
            duration,
            timezone,
        } => {
            let (Ok(tz), Ok(start)) = (TimeZone::get(timezone), start.parse::<Time>()) else {
                return false;
            };
            let Ok(span) = jiff::SignedDuration::try_from(*duration) else {
                return false;
            };
            let local = now.to_zoned_datetime(tz.clone());
            // A window that started on one of the last 7 days may still run.
            (0..=7).any(|back| {
                let Ok(day) = local.date().checked_sub(back.days()) else {
                    return false;
                };
                if !days.iter().any(|d| weekday(d) == Ok(day.weekday())) {
                    return false;
                }
                let Ok(begin) = day.to_datetime(start).to_zoned_datetime(tz.clone()) else {
                    return false;
                };
                let begin = begin.timestamp();
                let Ok(end) = begin.checked_add(span) else {
                    return false;
                };
                begin <= now && now < end
            })
        }
    }
}

/// The first window with `effect` active at `at_ms` among those matching.
pub fn active_window<'a>(
    windows: impl IntoIterator<Item = &'a MaintenanceWindow>,
    effect: WindowEffect,
    at_ms: u64,
) -> Option<&'a MaintenanceWindow> {
    windows
        .into_iter()
        .find(|w| w.effects.contains(&effect) && active(&w.schedule, at_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(s: &str) -> u64 {
        s.parse::<Timestamp>().unwrap().as_millisecond() as u64
    }

    #[test]
    fn one_off_window() {
        let s = Schedule::OneOff {
            start: "2026-11-24T10:00:00Z".into(),
            end: "2026-11-24T11:00:00Z".into(),
        };
        assert!(!active(&s, ms("2026-11-24T09:59:59Z")));
        assert!(active(&s, ms("2026-11-24T10:00:00Z")));
        assert!(active(&s, ms("2026-11-24T10:59:59Z")));
        assert!(!active(&s, ms("2026-11-24T11:00:00Z")));
    }

    #[test]
    fn weekly_window_in_a_time_zone_across_midnight() {
        // Saturdays 23:00 Berlin for 3 hours (2026-11-28 is a Saturday; CET = UTC+1).
        let s = Schedule::Weekly {
            days: vec!["sat".into()],
            start: "23:00".into(),
            duration: Duration::from_secs(3 * 3600),
            timezone: "Europe/Berlin".into(),
        };
        assert!(!active(&s, ms("2026-11-28T21:59:00Z")));
        assert!(active(&s, ms("2026-11-28T22:00:00Z")));
        assert!(
            active(&s, ms("2026-11-29T00:30:00Z")),
            "runs past midnight into Sunday"
        );
        assert!(!active(&s, ms("2026-11-29T01:00:00Z")));
        assert!(!active(&s, ms("2026-11-27T22:30:00Z")), "not on Friday");
    }

    #[test]
    fn invalid_schedules_are_rejected() {
        let mut w = MaintenanceWindow {
            id: String::new(),
            name: "w".into(),
            scope: Default::default(),
            schedule: Schedule::Weekly {
                days: vec!["funday".into()],
                start: "23:00".into(),
                duration: Duration::from_secs(60),
                timezone: "UTC".into(),
            },
            effects: vec![WindowEffect::SuppressNotifications],
        };
        assert!(validate(&w).is_err());
        w.schedule = Schedule::Weekly {
            days: vec!["mon".into()],
            start: "23:00".into(),
            duration: Duration::from_secs(60),
            timezone: "Mars/Olympus".into(),
        };
        assert!(validate(&w).is_err());
        w.schedule = Schedule::OneOff {
            start: "2026-01-02T00:00:00Z".into(),
            end: "2026-01-01T00:00:00Z".into(),
        };
        assert!(validate(&w).is_err());
        w.schedule = Schedule::OneOff {
            start: "2026-01-01T00:00:00Z".into(),
            end: "2026-01-02T00:00:00Z".into(),
        };
        assert!(validate(&w).is_ok());
    }
}
