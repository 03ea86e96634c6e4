//! Install windows, pure: weekly windows in an IANA time zone, during which
//! a device may install patches, combined with the maintenance windows
//! that pause patch installs (`pause_patch_installs`, given as
//! `[start_ms, end_ms)` intervals already resolved by the caller).
//!
//! Owns the window model and its arithmetic; must not touch the clock
//! (`now` is a parameter, Unix ms), storage, or the alerting crate's
//! maintenance-window model (the orchestrator resolves those to
//! intervals).
//!
//! Local-time rules (the tz database is bundled, see patch/Cargo.toml):
//!
//! - A window opens on each listed weekday at `start` local time and
//!   stays open for `duration_minutes` of elapsed time (not wall-clock
//!   time: a 3-hour window across a DST change lasts 3 real hours).
//! - A start time that does not exist that day (spring forward, e.g.
//!   02:30 in Europe/Berlin on the last Sunday of March) opens at the
//!   instant the skipped time maps to with the offset before the change:
//!   02:30 CET = 03:30 CEST (jiff's `compatible` disambiguation).
//! - A start time that occurs twice (fall back, 02:30 on the last Sunday
//!   of October) opens once, at its first occurrence (the earlier, summer
//!   time).
//! - Occurrences of one window that overlap (durations over a day on
//!   consecutive days) merge.

use jiff::Timestamp;
use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;

/// A day of the week, as stored (`mon` … `sun`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Day {
    fn weekday(self) -> Weekday {
        match self {
            Day::Mon => Weekday::Monday,
            Day::Tue => Weekday::Tuesday,
            Day::Wed => Weekday::Wednesday,
            Day::Thu => Weekday::Thursday,
            Day::Fri => Weekday::Friday,
            Day::Sat => Weekday::Saturday,
            Day::Sun => Weekday::Sunday,
        }
    }
}

/// The time-zone name that means "the device's own zone".
pub const DEVICE_LOCAL: &str = "device";

/// Longest window: a week.
pub const MAX_DURATION_MINUTES: u32 = 7 * 24 * 60;

/// A weekly install window as stored and sent down the uplink.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstallWindow {
    pub days: Vec<Day>,
    /// Local start time, `HH:MM`.
    pub start: String,
    pub duration_minutes: u32,
    /// IANA zone (`Europe/Berlin`), or [`DEVICE_LOCAL`] for the device's
    /// own zone.
    pub timezone: String,
}

/// Why a window is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("an install window needs at least one day")]
    NoDays,
    #[error("bad start time {0:?}: expected HH:MM")]
    BadStart(String),
    #[error("duration must be between 1 and {MAX_DURATION_MINUTES} minutes, got {0}")]
    BadDuration(u32),
    #[error("unknown time zone {0:?} (an IANA name such as Europe/Berlin)")]
    UnknownZone(String),
    #[error(
        "time zone \"device\" (each device's own zone) is not supported: name an IANA zone such as Europe/Berlin, or UTC"
    )]
    NoDeviceZone,
}

impl InstallWindow {
    /// Checks and compiles the window; `device_zone` replaces
    /// [`DEVICE_LOCAL`].
    pub fn compile(&self, device_zone: Option<&str>) -> Result<Schedule, WindowError> {
        if self.days.is_empty() {
            return Err(WindowError::NoDays);
        }
        let start =
            parse_hhmm(&self.start).ok_or_else(|| WindowError::BadStart(self.start.clone()))?;
        if self.duration_minutes == 0 || self.duration_minutes > MAX_DURATION_MINUTES {
            return Err(WindowError::BadDuration(self.duration_minutes));
        }
        let zone = if self.timezone == DEVICE_LOCAL {
            device_zone.ok_or(WindowError::NoDeviceZone)?
        } else {
            self.timezone.as_str()
        };
        let tz = TimeZone::get(zone).map_err(|_| WindowError::UnknownZone(zone.to_string()))?;
        let mut days: Vec<Weekday> = self.days.iter().map(|d| d.weekday()).collect();
        days.sort_by_key(|d| d.to_monday_one_offset());
        days.dedup();
        Ok(Schedule {
            days,
            start,
            duration_ms: u64::from(self.duration_minutes) * 60_000,
            tz,
        })
    }
}

fn parse_hhmm(s: &str) -> Option<Time> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let h: i8 = h.parse().ok()?;
    let m: i8 = m.parse().ok()?;
    Time::new(h, m, 0, 0).ok()
}

/// A compiled window.
#[derive(Debug, Clone)]
pub struct Schedule {
    days: Vec<Weekday>,
    start: Time,
    duration_ms: u64,
    tz: TimeZone,
}

impl Schedule {
    /// Openings `[begin, end)` (Unix ms) that start on the local days
    /// from `back` days before `at_ms`'s local date to `ahead` days after,
    /// in order, overlapping ones merged.
    fn openings(&self, at_ms: u64, back: i64, ahead: i64) -> Vec<(u64, u64)> {
        let Ok(at) = Timestamp::from_millisecond(i64::try_from(at_ms).unwrap_or(i64::MAX)) else {
            return Vec::new();
        };
        let today: Date = at.to_zoned_datetime(self.tz.clone()).date();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for offset in -back..=ahead {
            let Ok(day) = today.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            if !self.days.contains(&day.weekday()) {
                continue;
            }
            let Ok(begin) = self
                .tz
                .to_ambiguous_timestamp(day.to_datetime(self.start))
                .compatible()
            else {
                continue;
            };
            let Ok(begin) = u64::try_from(begin.as_millisecond()) else {
                continue;
            };
            let end = begin.saturating_add(self.duration_ms);
            match out.last_mut() {
                Some(last) if begin <= last.1 => last.1 = last.1.max(end),
                _ => out.push((begin, end)),
            }
        }
        out
    }

    /// The opening that covers `now_ms`, if any.
    pub fn current(&self, now_ms: u64) -> Option<(u64, u64)> {
        self.openings(now_ms, 8, 1)
            .into_iter()
            .find(|&(b, e)| b <= now_ms && now_ms < e)
    }

    /// Whether the window is open at `now_ms`.
    pub fn is_open(&self, now_ms: u64) -> bool {
        self.current(now_ms).is_some()
    }

    /// The earliest instant at or after `now_ms` when the window is open
    /// (`now_ms` itself when it is open now).
    pub fn next_open(&self, now_ms: u64) -> Option<u64> {
        if self.is_open(now_ms) {
            return Some(now_ms);
        }
        self.openings(now_ms, 0, 8)
            .into_iter()
            .map(|(b, _)| b)
            .find(|&b| b >= now_ms)
    }
}

/// A maintenance window that pauses patch installs: `[start_ms, end_ms)`.
pub type Pause = (u64, u64);

fn paused_until(pauses: &[Pause], at_ms: u64) -> Option<u64> {
    pauses
        .iter()
        .filter(|&&(s, e)| s <= at_ms && at_ms < e)
        .map(|&(_, e)| e)
        .max()
}

/// Whether a device may install at `now_ms`: inside its install window
/// (`None`: no window, always) and outside every pause.
pub fn can_install(window: Option<&Schedule>, pauses: &[Pause], now_ms: u64) -> bool {
    window.is_none_or(|w| w.is_open(now_ms)) && paused_until(pauses, now_ms).is_none()
}

/// The earliest instant at or after `now_ms` when [`can_install`] holds;
/// `None` when none is found (pauses covering every opening of the
/// coming weeks).
pub fn next_install_at(window: Option<&Schedule>, pauses: &[Pause], now_ms: u64) -> Option<u64> {
    let mut t = now_ms;
    // Each round either returns or moves past one pause or to the next
    // opening; bounded so that adversarial pauses cannot loop forever.
    for _ in 0..(pauses.len() + 2) * 4 {
        if let Some(w) = window {
            t = w.next_open(t)?;
        }
        match paused_until(pauses, t) {
            None => return Some(t),
            Some(end) => t = end,
        }
    }
    None
}

/// Every target device's install window and pauses, as the rollout
/// state machine asks for them ([`crate::rollout::Windows`]): the
/// orchestrator compiles each device's window (its own, or the
/// deployment's default) and resolves the maintenance windows with
/// `pause_patch_installs` that cover it into intervals.
#[derive(Debug, Clone, Default)]
pub struct SiteWindows {
    /// For devices without an entry in `per_device`; `None`: any time.
    pub default: Option<Schedule>,
    pub per_device: std::collections::HashMap<String, Option<Schedule>>,
    pub pauses: std::collections::HashMap<String, Vec<Pause>>,
}

impl SiteWindows {
    fn window(&self, device: &str) -> Option<&Schedule> {
        match self.per_device.get(device) {
            Some(w) => w.as_ref(),
            None => self.default.as_ref(),
        }
    }

    /// When the device may next install (for "waiting until …").
    pub fn next_install_at(&self, device: &str, now_ms: u64) -> Option<u64> {
        let pauses = self.pauses.get(device).map_or(&[][..], Vec::as_slice);
        next_install_at(self.window(device), pauses, now_ms)
    }
}

impl crate::rollout::Windows for SiteWindows {
    fn can_install(&self, device: &str, now_ms: u64) -> bool {
        let pauses = self.pauses.get(device).map_or(&[][..], Vec::as_slice);
        can_install(self.window(device), pauses, now_ms)
    }
}

#[cfg(test)]
mod tests;
