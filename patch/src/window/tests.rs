use super::*;

fn ms(s: &str) -> u64 {
    s.parse::<Timestamp>().unwrap().as_millisecond() as u64
}

fn window(days: &[Day], start: &str, minutes: u32, tz: &str) -> Schedule {
    InstallWindow {
        days: days.to_vec(),
        start: start.into(),
        duration_minutes: minutes,
        timezone: tz.into(),
    }
    .compile(None)
    .unwrap()
}

#[test]
fn weekly_window_opens_at_local_start_for_its_duration() {
    // Tuesdays 02:00 Berlin (CET, UTC+1 in November) for 2 hours; 2026-12-01 is a Tuesday.
    let w = window(&[Day::Tue], "02:00", 120, "Europe/Berlin");
    assert!(!w.is_open(ms("2026-12-01T00:59:59Z")));
    assert!(w.is_open(ms("2026-12-01T01:00:00Z")));
    assert!(w.is_open(ms("2026-12-01T02:59:59.999Z")));
    assert!(!w.is_open(ms("2026-12-01T03:00:00Z")));
    assert!(
        !w.is_open(ms("2026-12-02T01:30:00Z")),
        "wednesday is not listed"
    );
    assert_eq!(
        w.current(ms("2026-12-01T02:00:00Z")),
        Some((ms("2026-12-01T01:00:00Z"), ms("2026-12-01T03:00:00Z")))
    );
}

#[test]
fn next_open_is_now_inside_and_the_next_start_outside() {
    let w = window(&[Day::Tue, Day::Thu], "02:00", 120, "Europe/Berlin");
    let inside = ms("2026-12-01T01:30:00Z");
    assert_eq!(w.next_open(inside), Some(inside));
    assert_eq!(
        w.next_open(ms("2026-12-01T03:00:00Z")),
        Some(ms("2026-12-03T01:00:00Z"))
    );
    // From Friday the next opening is the following Tuesday.
    assert_eq!(
        w.next_open(ms("2026-12-04T12:00:00Z")),
        Some(ms("2026-12-08T01:00:00Z"))
    );
}

#[test]
fn window_at_0230_on_the_spring_forward_day_opens_at_0330_summer_time() {
    // Europe/Berlin skips 02:00–03:00 on Sunday 2026-03-29.
    let w = window(&[Day::Sun], "02:30", 60, "Europe/Berlin");
    // The Sunday before: 02:30 CET = 01:30Z.
    assert!(w.is_open(ms("2026-03-22T01:30:00Z")));
    // On the day: 02:30 does not exist; opens at 03:30 CEST = 01:30Z, for one real hour.
    assert!(!w.is_open(ms("2026-03-29T01:29:59Z")));
    assert!(w.is_open(ms("2026-03-29T01:30:00Z")));
    assert!(w.is_open(ms("2026-03-29T02:29:59Z")));
    assert!(!w.is_open(ms("2026-03-29T02:30:00Z")));
    assert_eq!(
        w.next_open(ms("2026-03-28T12:00:00Z")),
        Some(ms("2026-03-29T01:30:00Z"))
    );
    // The Sunday after: 02:30 CEST = 00:30Z.
    assert_eq!(
        w.next_open(ms("2026-03-29T03:00:00Z")),
        Some(ms("2026-04-05T00:30:00Z"))
    );
}

#[test]
fn window_at_0230_on_the_fall_back_day_opens_once_at_the_first_0230() {
    // Europe/Berlin repeats 02:00–03:00 on Sunday 2026-10-25: 02:30 is
    // 00:30Z (CEST) and again 01:30Z (CET).
    let w = window(&[Day::Sun], "02:30", 60, "Europe/Berlin");
    assert_eq!(
        w.next_open(ms("2026-10-25T00:00:00Z")),
        Some(ms("2026-10-25T00:30:00Z"))
    );
    assert!(w.is_open(ms("2026-10-25T00:30:00Z")));
    assert!(w.is_open(ms("2026-10-25T01:29:59Z")));
    assert!(
        !w.is_open(ms("2026-10-25T01:30:00Z")),
        "the second 02:30 does not reopen it"
    );
    assert_eq!(
        w.next_open(ms("2026-10-25T01:30:00Z")),
        Some(ms("2026-11-01T01:30:00Z"))
    );
}

#[test]
fn window_across_a_dst_change_lasts_its_real_duration() {
    // Saturday 23:00 Berlin for 6 hours, the night the clocks spring forward.
    let w = window(&[Day::Sat], "23:00", 360, "Europe/Berlin");
    assert!(w.is_open(ms("2026-03-28T22:00:00Z")));
    assert!(w.is_open(ms("2026-03-29T03:59:59Z")));
    assert!(!w.is_open(ms("2026-03-29T04:00:00Z")));
}

#[test]
fn windows_in_other_zones_and_the_device_zone() {
    // 22:00 in New York (EST, UTC-5) on Monday = 03:00Z Tuesday.
    let ny = window(&[Day::Mon], "22:00", 60, "America/New_York");
    assert!(ny.is_open(ms("2026-12-01T03:30:00Z")));
    assert!(!ny.is_open(ms("2026-11-30T22:30:00Z")));
    let local = InstallWindow {
        days: vec![Day::Mon],
        start: "22:00".into(),
        duration_minutes: 60,
        timezone: DEVICE_LOCAL.into(),
    };
    let w = local.compile(Some("Asia/Tokyo")).unwrap();
    assert!(w.is_open(ms("2026-11-30T13:30:00Z")));
    assert_eq!(local.compile(None).unwrap_err(), WindowError::NoDeviceZone);
}

#[test]
fn overlapping_openings_merge() {
    // Every day at 00:00 UTC for 36 hours: always open.
    let all = [
        Day::Mon,
        Day::Tue,
        Day::Wed,
        Day::Thu,
        Day::Fri,
        Day::Sat,
        Day::Sun,
    ];
    let w = window(&all, "00:00", 36 * 60, "UTC");
    let t = ms("2026-12-02T20:00:00Z");
    assert!(w.is_open(t));
    let (b, e) = w.current(t).unwrap();
    assert!(b < t && e > t + 24 * 3_600_000);
    // A week-long window from Monday covers the next Sunday night.
    let week = window(&[Day::Mon], "00:00", MAX_DURATION_MINUTES, "UTC");
    assert!(week.is_open(ms("2026-12-06T23:59:00Z")));
}

#[test]
fn invalid_windows_are_refused_with_the_reason() {
    let ok = InstallWindow {
        days: vec![Day::Sun],
        start: "02:30".into(),
        duration_minutes: 60,
        timezone: "Europe/Berlin".into(),
    };
    assert!(ok.compile(None).is_ok());
    let mut w = ok.clone();
    w.days.clear();
    assert_eq!(w.compile(None).unwrap_err(), WindowError::NoDays);
    for bad in ["2:3", "24:00", "02:60", "0230", "", "aa:bb", "02:30:00"] {
        let mut w = ok.clone();
        w.start = bad.into();
        assert_eq!(
            w.compile(None).unwrap_err(),
            WindowError::BadStart(bad.into()),
            "{bad}"
        );
    }
    let mut w = ok.clone();
    w.duration_minutes = 0;
    assert_eq!(w.compile(None).unwrap_err(), WindowError::BadDuration(0));
    w.duration_minutes = MAX_DURATION_MINUTES + 1;
    assert!(matches!(w.compile(None), Err(WindowError::BadDuration(_))));
    let mut w = ok;
    w.timezone = "Mars/Olympus".into();
    assert_eq!(
        w.compile(None).unwrap_err(),
        WindowError::UnknownZone("Mars/Olympus".into())
    );
}

#[test]
fn pauses_hold_installs_inside_the_window() {
    let w = window(&[Day::Tue], "02:00", 120, "Europe/Berlin");
    let open = ms("2026-12-01T01:00:00Z");
    let pause = (ms("2026-12-01T00:30:00Z"), ms("2026-12-01T02:00:00Z"));
    assert!(!can_install(Some(&w), &[pause], open));
    assert!(can_install(Some(&w), &[pause], pause.1));
    assert_eq!(next_install_at(Some(&w), &[pause], open), Some(pause.1));
    // No window: any time outside the pauses.
    assert!(can_install(None, &[], open));
    assert!(!can_install(None, &[pause], open));
    assert_eq!(next_install_at(None, &[pause], open), Some(pause.1));
    // A pause covering the whole opening moves to the next week.
    let whole = (ms("2026-12-01T00:00:00Z"), ms("2026-12-01T04:00:00Z"));
    assert_eq!(
        next_install_at(Some(&w), &[whole], open),
        Some(ms("2026-12-08T01:00:00Z"))
    );
    // Chained pauses are followed.
    let a = (ms("2026-12-01T01:00:00Z"), ms("2026-12-01T01:20:00Z"));
    let b = (ms("2026-12-01T01:10:00Z"), ms("2026-12-01T01:40:00Z"));
    assert_eq!(next_install_at(Some(&w), &[a, b], open), Some(b.1));
}

#[test]
fn install_windows_round_trip_through_json() {
    let w = InstallWindow {
        days: vec![Day::Tue, Day::Sat],
        start: "02:00".into(),
        duration_minutes: 90,
        timezone: "Europe/Berlin".into(),
    };
    let json = serde_json::to_string(&w).unwrap();
    assert!(json.contains(r#""days":["tue","sat"]"#), "{json}");
    assert_eq!(serde_json::from_str::<InstallWindow>(&json).unwrap(), w);
}

#[test]
fn site_windows_resolve_each_devices_window_and_pauses_for_the_rollout() {
    use crate::rollout::Windows;
    let tuesday = window(&[Day::Tue], "02:00", 120, "Europe/Berlin");
    let mut site = SiteWindows {
        default: Some(tuesday),
        ..Default::default()
    };
    site.per_device.insert("anytime".into(), None);
    let open = ms("2026-12-01T01:30:00Z");
    let closed = ms("2026-12-02T01:30:00Z");
    site.pauses
        .insert("paused".into(), vec![(open - 1, open + 1)]);
    assert!(site.can_install("d1", open));
    assert!(!site.can_install("d1", closed));
    assert!(site.can_install("anytime", closed));
    assert!(!site.can_install("paused", open));
    assert_eq!(site.next_install_at("paused", open), Some(open + 1));
    assert_eq!(
        site.next_install_at("d1", closed),
        Some(ms("2026-12-08T01:00:00Z"))
    );
}
