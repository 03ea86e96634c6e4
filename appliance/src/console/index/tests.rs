//! The index's queries and merges over hand-made rows (no store).

use outpost_proto::messages::{Inventory, NicInventory};

use super::*;

fn record(n: u64, host: &str, customer: &str, os: &str) -> DeviceRecord {
    DeviceRecord {
        id: DeviceId(n),
        tenant: "msp".into(),
        customer: customer.into(),
        hostname: host.into(),
        os: os.into(),
        kernel: "6.1".into(),
        arch: "x86_64".into(),
        agent_version: "0.1.0".into(),
        enrolled_at_ms: 1_000,
        cert_serial: String::new(),
        revoked_at_ms: None,
    }
}

fn state(status: DeviceStatus, since: u64, seen: u64) -> DeviceState {
    DeviceState {
        status,
        status_since_ms: since,
        last_seen_ms: seen,
        ..DeviceState::new(since)
    }
}

fn value(name: &str, label: &str, v: f64) -> MetricValue {
    MetricValue {
        name: name.into(),
        label: label.into(),
        value: v,
    }
}

fn site() -> SiteRef {
    SiteRef {
        id: "local".into(),
        name: "harbour".into(),
    }
}

/// Five devices: two customers, every status, tags, IPs and values.
fn index() -> DeviceIndex {
    let mut s = Snapshot::default();
    let mut revoked = record(5, "old-kiosk", "dental", "Windows 10");
    revoked.revoked_at_ms = Some(2_000);
    s.records = vec![
        record(1, "web-1", "dental", "Debian 12"),
        record(2, "Web-2", "dental", "Debian 12"),
        record(3, "db-1", "vet", "Ubuntu 24.04"),
        record(4, "backup", "vet", "Debian 12"),
        revoked,
    ];
    s.states = [
        (DeviceId(1), state(DeviceStatus::Online, 10, 500)),
        (DeviceId(2), state(DeviceStatus::Offline, 20, 400)),
        (DeviceId(3), state(DeviceStatus::Online, 30, 600)),
        (DeviceId(5), state(DeviceStatus::Offline, 40, 300)),
    ]
    .into_iter()
    .collect();
    s.tags = [(DeviceId(3), vec!["sql".to_string(), "prod".to_string()])]
        .into_iter()
        .collect();
    s.ips = Some(
        [(DeviceId(2), vec!["10.1.2.3".to_string()])]
            .into_iter()
            .collect(),
    );
    s.values = [
        (
            DeviceId(1),
            vec![
                value(m::CPU, "", 12.5),
                value(m::DISK_USED_PERCENT, "/", 40.0),
            ],
        ),
        (
            DeviceId(2),
            vec![
                value(m::CPU, "", 97.0),
                value(m::DISK_USED_PERCENT, "/", 10.0),
                value(m::DISK_USED_PERCENT, "/srv", 91.0),
            ],
        ),
        (DeviceId(3), vec![value(m::CPU, "", 55.0)]),
    ]
    .into_iter()
    .collect();
    let ix = DeviceIndex::default();
    ix.merge(s);
    ix
}

fn q() -> DeviceQuery {
    DeviceQuery {
        limit: 100,
        ..Default::default()
    }
}

fn hosts(ix: &DeviceIndex, q: &DeviceQuery) -> Vec<String> {
    ix.query(q, &site())
        .unwrap()
        .rows
        .into_iter()
        .map(|r| r.hostname)
        .collect()
}

fn alert(id: u64, device: u64, severity: Severity, state: AlertState) -> Alert {
    let rule = crate::alerts::builtin::builtin_rules().remove(0);
    let scope = crate::alerts::model::DeviceScope {
        tenant: "msp".into(),
        customer: if device >= 3 { "vet" } else { "dental" }.into(),
        tags: vec![],
        hostname: format!("h{device}"),
    };
    let mut a =
        crate::alerts::lifecycle::new_alert(&rule, id, DeviceId(device), &scope, "", None, 0);
    a.severity = severity;
    a.state = state;
    a
}

#[test]
fn search_matches_every_word_in_hostname_ip_os_tag_or_id_case_insensitively() {
    let ix = index();
    let mut query = q();
    query.text = "WEB".into();
    assert_eq!(hosts(&ix, &query), vec!["web-1", "Web-2"]);
    query.text = "10.1.2".into();
    assert_eq!(hosts(&ix, &query), vec!["Web-2"], "an IP address");
    query.text = "debian backup".into();
    assert_eq!(hosts(&ix, &query), vec!["backup"], "every word");
    query.text = "prod".into();
    assert_eq!(hosts(&ix, &query), vec!["db-1"], "a tag");
    query.text = DeviceId(4).to_string();
    assert_eq!(hosts(&ix, &query), vec!["backup"], "the device id");
    query.text = "nothing-like-it".into();
    let p = ix.query(&query, &site()).unwrap();
    assert_eq!((p.rows.len(), p.total, p.next), (0, 0, None));
}

#[test]
fn filters_by_customer_status_revoked_critical_and_tag() {
    let ix = index();
    let mut query = q();
    query.customer = Some("vet".into());
    assert_eq!(hosts(&ix, &query), vec!["backup", "db-1"]);
    let mut query = q();
    query.status = Some("online".into());
    assert_eq!(hosts(&ix, &query), vec!["db-1", "web-1"]);
    query.status = Some("offline".into());
    assert_eq!(
        hosts(&ix, &query),
        vec!["Web-2"],
        "the revoked one is not offline"
    );
    query.status = Some("revoked".into());
    assert_eq!(hosts(&ix, &query), vec!["old-kiosk"]);
    query.status = Some("pending".into());
    assert_eq!(hosts(&ix, &query), vec!["backup"], "no state yet");
    query.status = Some("critical".into());
    assert!(hosts(&ix, &query).is_empty());
    ix.on_alert(&alert(7, 2, Severity::Critical, AlertState::Firing));
    ix.on_alert(&alert(8, 1, Severity::Critical, AlertState::Pending));
    ix.on_alert(&alert(9, 3, Severity::Warning, AlertState::Firing));
    assert_eq!(
        hosts(&ix, &query),
        vec!["Web-2"],
        "only a firing critical alert"
    );
    query.status = Some("broken".into());
    assert_eq!(
        ix.query(&query, &site()).unwrap_err(),
        QueryError::Status("broken".into())
    );
    let mut query = q();
    query.tag = Some("sql".into());
    assert_eq!(hosts(&ix, &query), vec!["db-1"]);
}

#[test]
fn rows_carry_the_latest_values_the_fullest_disk_and_alert_counts() {
    let ix = index();
    ix.on_alert(&alert(7, 2, Severity::Critical, AlertState::Firing));
    ix.on_alert(&alert(8, 2, Severity::Info, AlertState::Pending));
    let v = ix.view(DeviceId(2), &site()).unwrap();
    assert_eq!((v.cpu, v.disk), (Some(97.0), Some(91.0)));
    assert_eq!((v.open_alerts, v.critical), (2, true));
    assert_eq!(v.ips, vec!["10.1.2.3"]);
    assert_eq!(
        (v.site_id.as_str(), v.site_name.as_str()),
        ("local", "harbour")
    );
    assert_eq!(v.device, "0000000000000002");
    ix.on_samples(
        &[(DeviceId(2), vec![value(m::DISK_USED_PERCENT, "/srv", 50.0)])],
        9_000,
    );
    let v = ix.view(DeviceId(2), &site()).unwrap();
    assert_eq!((v.disk, v.last_seen_ms), (Some(50.0), 9_000));
}

#[test]
fn sorting_and_the_cursor_visit_every_row_once_in_order() {
    let ix = index();
    for (sort, descending, want) in [
        (
            DeviceSort::Hostname,
            false,
            vec!["backup", "db-1", "old-kiosk", "web-1", "Web-2"],
        ),
        (
            DeviceSort::Hostname,
            true,
            vec!["Web-2", "web-1", "old-kiosk", "db-1", "backup"],
        ),
        (
            DeviceSort::Cpu,
            false,
            vec!["web-1", "db-1", "Web-2", "backup", "old-kiosk"],
        ),
        (
            DeviceSort::Cpu,
            true,
            vec!["old-kiosk", "backup", "Web-2", "db-1", "web-1"],
        ),
        (
            DeviceSort::LastSeen,
            true,
            vec!["db-1", "web-1", "Web-2", "old-kiosk", "backup"],
        ),
        (
            DeviceSort::Status,
            false,
            vec!["Web-2", "db-1", "web-1", "backup", "old-kiosk"],
        ),
        (
            DeviceSort::Customer,
            false,
            vec!["old-kiosk", "web-1", "Web-2", "backup", "db-1"],
        ),
    ] {
        let mut query = q();
        query.sort = sort;
        query.descending = descending;
        // Whole, then two at a time through the cursor.
        assert_eq!(hosts(&ix, &query), want, "{sort:?} {descending}");
        query.limit = 2;
        let mut seen = Vec::new();
        loop {
            let p = ix.query(&query, &site()).unwrap();
            assert_eq!(p.total, 5);
            seen.extend(p.rows.iter().map(|r| r.hostname.clone()));
            match p.next {
                Some(n) => query.after = Some(n),
                None => break,
            }
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 5, "each once: {seen:?}");
        assert_eq!(seen, want, "{sort:?} {descending} by pages");
    }
    let mut query = q();
    query.after = Some("garbage".into());
    assert!(matches!(
        ix.query(&query, &site()),
        Err(QueryError::Cursor(_))
    ));
    // A cursor of another sort is refused, not misread.
    query.sort = DeviceSort::Cpu;
    query.limit = 1;
    query.after = None;
    let next = ix.query(&query, &site()).unwrap().next.unwrap();
    query.sort = DeviceSort::LastSeen;
    query.after = Some(next);
    assert!(matches!(
        ix.query(&query, &site()),
        Err(QueryError::Cursor(_))
    ));
}

#[test]
fn a_merge_keeps_a_status_a_hook_wrote_after_the_snapshot_was_read() {
    let ix = index();
    // The writer's hook: web-1 goes offline at 700.
    let (before, after) = ix
        .on_transition(
            DeviceId(1),
            &StatusTransition {
                at_ms: 700,
                from: DeviceStatus::Online,
                to: DeviceStatus::Offline,
                last_seen_ms: 500,
            },
        )
        .unwrap();
    assert_eq!(
        (before.status_str(), after.status_str()),
        ("online", "offline")
    );
    // A snapshot read before that commit still says online since 10.
    let s = Snapshot {
        records: vec![record(1, "web-1-renamed", "dental", "Debian 12")],
        states: [(DeviceId(1), state(DeviceStatus::Online, 10, 650))]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    ix.merge(s);
    let r = ix.row(DeviceId(1)).unwrap();
    assert_eq!((r.status_str(), r.status_since_ms), ("offline", 700));
    assert_eq!(
        (r.hostname.as_str(), r.last_seen_ms),
        ("web-1-renamed", 650)
    );
    // IPs are kept when a merge did not read the inventory.
    assert_eq!(ix.row(DeviceId(2)).unwrap().ips, vec!["10.1.2.3"]);
    assert!(
        ix.on_transition(
            DeviceId(99),
            &StatusTransition {
                at_ms: 1,
                from: DeviceStatus::Pending,
                to: DeviceStatus::Online,
                last_seen_ms: 0,
            }
        )
        .is_none(),
        "unknown devices are the caller's to add"
    );
}

#[test]
fn counts_per_site_and_customer_and_alerts_heard_twice_count_once() {
    let ix = index();
    ix.load_alerts(&[alert(7, 2, Severity::Critical, AlertState::Firing)]);
    ix.on_alert(&alert(7, 2, Severity::Critical, AlertState::Firing));
    ix.on_alert(&alert(8, 3, Severity::Warning, AlertState::Pending));
    ix.on_alert(&alert(9, 4, Severity::Info, AlertState::Firing));
    ix.on_alert(&alert(9, 4, Severity::Info, AlertState::Resolved));
    let c = ix.counts();
    let t = c.totals;
    assert_eq!(
        (
            t.devices, t.online, t.offline, t.pending, t.revoked, t.critical
        ),
        (5, 2, 1, 1, 1, 1)
    );
    assert_eq!((t.alerts_firing, t.alerts_pending), (1, 1));
    assert_eq!(
        c.firing_by_severity,
        SeverityCounts {
            critical: 1,
            warning: 0,
            info: 0
        }
    );
    let names: Vec<&str> = c.by_customer.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["dental", "vet"]);
    let vet = c.by_customer[1].1;
    assert_eq!(
        (vet.devices, vet.online, vet.pending, vet.alerts_pending),
        (2, 1, 1, 1)
    );
    assert_eq!(
        ix.facets(),
        (
            vec!["dental".into(), "vet".into()],
            vec!["prod".into(), "sql".into()]
        )
    );
}

#[test]
fn inventory_addresses_leave_out_loopback_and_prefix_lengths() {
    let inv = Inventory {
        nics: vec![
            NicInventory {
                name: "lo".into(),
                mac: String::new(),
                ips: vec!["127.0.0.1/8".into(), "::1/128".into()],
            },
            NicInventory {
                name: "eth0".into(),
                mac: "aa:bb".into(),
                ips: vec![
                    "192.0.2.7/24".into(),
                    "2001:db8::7".into(),
                    "fe80::1/64".into(),
                ],
            },
        ],
        ..Default::default()
    };
    assert_eq!(inventory_ips(&inv), vec!["192.0.2.7", "2001:db8::7"]);
}
