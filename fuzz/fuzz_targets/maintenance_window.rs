//! Maintenance windows (`outpost_alerting::windows`, `model::Schedule`):
//! arbitrary text as a window (RFC 3339 instants, weekday names, `HH:MM`
//! starts, humantime durations, IANA time zone names), validated and asked
//! whether it is active at instants around its own times, around DST
//! changes and at the edges of the clock.
//!
//! Properties: no panic; JSON round trip as in `alert_rule_json`; a valid
//! one-off window is active from its start (inclusive) to its end
//! (exclusive); a valid weekly window is active from each of its starts
//! (local time in its zone) to the last millisecond of its duration; a
//! weekly window without days or with zero duration is never active.

#![no_main]

use jiff::Timestamp;
use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use libfuzzer_sys::fuzz_target;
use outpost_alerting::model::{MaintenanceWindow, Schedule, WindowEffect};
use outpost_alerting::windows;
use outpost_fuzz::check::json_round_trip;

/// Instants every window is asked about: the clock's edges, and times
/// around the 2026 DST changes in Europe and the US.
const INSTANTS: &[u64] = &[
    0,
    1,
    1_700_000_000_000,
    1_772_931_600_000,   // 2026-03-08T01:00:00Z (US DST starts that day)
    1_774_746_000_000,   // 2026-03-29T01:00:00Z (EU DST starts)
    1_792_890_000_000,   // 2026-10-25T01:00:00Z (EU DST ends)
    1_793_595_600_000,   // 2026-11-02T06:00:00Z (US DST ended the day before)
    253_402_300_799_999, // 9999-12-31T23:59:59.999Z
    i64::MAX as u64,
    u64::MAX,
];

/// Days the weekly property is checked on (DST days among them).
const DAYS: &[(i16, i8, i8)] = &[
    (2026, 3, 8),
    (2026, 3, 9),
    (2026, 3, 28),
    (2026, 3, 29),
    (2026, 10, 25),
    (2026, 11, 1),
    (2026, 11, 26),
];

fn ms(t: Timestamp) -> Option<u64> {
    u64::try_from(t.as_millisecond()).ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(w) = json_round_trip::<MaintenanceWindow>(text) else {
        return;
    };
    let valid = windows::validate(&w).is_ok();
    for &t in INSTANTS {
        let on = windows::active(&w.schedule, t);
        let first = windows::active_window([&w], WindowEffect::SuppressNotifications, t);
        assert_eq!(
            first.is_some(),
            on && w.effects.contains(&WindowEffect::SuppressNotifications)
        );
    }
    match &w.schedule {
        Schedule::OneOff { start, end } => {
            let (Ok(s), Ok(e)) = (start.parse::<Timestamp>(), end.parse::<Timestamp>()) else {
                return;
            };
            for t in [s, e] {
                if let Some(t) = ms(t) {
                    for at in [t.saturating_sub(1), t, t.saturating_add(1)] {
                        windows::active(&w.schedule, at);
                    }
                }
            }
            if valid && let (Some(s), Some(e)) = (ms(s), ms(e)) {
                assert!(windows::active(&w.schedule, s), "active at its start");
                assert!(windows::active(&w.schedule, e - 1), "active until its end");
                assert!(!windows::active(&w.schedule, e), "over at its end");
                if s > 0 {
                    assert!(!windows::active(&w.schedule, s - 1), "not before its start");
                }
            }
        }
        Schedule::Weekly {
            days,
            start,
            duration,
            timezone,
        } => {
            if days.is_empty() || duration.is_zero() {
                for &t in INSTANTS {
                    assert!(
                        !windows::active(&w.schedule, t),
                        "an empty window is never on"
                    );
                }
            }
            if !valid {
                return;
            }
            let tz = TimeZone::get(timezone).expect("validated zone");
            let at = start.parse::<Time>().expect("validated start");
            let duration_ms = u64::try_from(duration.as_millis()).expect("at most 7 days");
            for &(y, m, d) in DAYS {
                let day = Date::new(y, m, d).expect("a real date");
                let name = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                    [usize::from(day.weekday().to_monday_zero_offset().unsigned_abs())];
                let named = days
                    .iter()
                    .any(|n| n.to_ascii_lowercase().get(..3) == Some(name));
                if !named {
                    continue;
                }
                let begin = day
                    .to_datetime(at)
                    .to_zoned_datetime(tz.clone())
                    .expect("a local time in 2026 exists or is moved");
                let Some(b) = ms(begin.timestamp()) else {
                    continue;
                };
                assert!(
                    windows::active(&w.schedule, b),
                    "active at its start {begin}"
                );
                if duration_ms > 0 {
                    assert!(
                        windows::active(&w.schedule, b + duration_ms - 1),
                        "active until its end ({begin} + {duration_ms} ms)"
                    );
                }
            }
        }
    }
});
