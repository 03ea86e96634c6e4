//! Store-level behaviour every [`CentralStore`] backend must show, written
//! once against `Arc<dyn CentralStore>` and run against each backend
//! ([`both_backends!`]): RocksDB in a temporary directory, PostgreSQL in a
//! fresh database of the test process's private server
//! ([`crate::pg::cluster`]; skipped with a message only when the server
//! binaries are not installed). Backend-specific tests (RocksDB layout and
//! reopen, PostgreSQL row-level security and partitions) stay in their
//! backend's module.

use std::sync::Arc;

use outpost_proto::{SiteId, TenantId};

use crate::commands::AuditRow;
use crate::model::{
    ApiTokenRecord, JoinTokenRecord, Principal, Role, SessionRecord, SiteRecord, TokenLife,
    UserRecord,
};
use crate::store::{
    AlertFilter, AlertPage, AlertStates, ApplyOutcome, CentralStore, CentralStoreError,
    DeviceFilter, RollupQuery,
};
use crate::testing::sample_batch;

pub type Store = Arc<dyn CentralStore>;

/// Runs each named `async fn(Store)` of the enclosing module against both
/// backends, as `rocks_backend::NAME` and `pg_backend::NAME`.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod rocks_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let st: $crate::store_tests::Store = std::sync::Arc::new(
                        $crate::rocks::RocksCentralStore::open(dir.path()).unwrap(),
                    );
                    super::$name(st).await;
                }
            )*
        }
        mod pg_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(st) = $crate::store_tests::pg_store(stringify!($name)).await else {
                        return;
                    };
                    super::$name(st).await;
                }
            )*
        }
    };
}

/// A PostgreSQL store on a fresh database, `None` (with a skip message)
/// when the server binaries are not installed.
pub async fn pg_store(test: &str) -> Option<Store> {
    let c = tokio::task::spawn_blocking({
        let test = test.to_string();
        move || crate::pg::cluster::TestCluster::shared_or_skip(&test)
    })
    .await
    .unwrap()?;
    let url = c.fresh_database().await;
    Some(Arc::new(
        crate::pg::PgCentralStore::connect(&url, Default::default())
            .await
            .unwrap(),
    ))
}

pub fn t(s: &str) -> TenantId {
    s.into()
}

pub fn s(x: &str) -> SiteId {
    x.into()
}

pub fn site(tenant: &str, id: &str) -> SiteRecord {
    SiteRecord::new(tenant.into(), "dental".into(), id.into(), "main".into(), 1)
}

pub fn tok(t: &str, s: &str) -> JoinTokenRecord {
    JoinTokenRecord {
        tenant: t.into(),
        site_id: s.into(),
        expires_ms: u64::MAX,
    }
}

pub async fn add_site(st: &Store, tenant: &str, id: &str, hash: u8) {
    st.create_site(&site(tenant, id), &[hash; 32], &tok(tenant, id))
        .await
        .unwrap();
}

both_backends!(
    an_alert_page_filters_in_the_store_keeps_the_newest_and_counts_all,
    a_batch_applies_once_in_any_order_and_tenants_do_not_see_each_other,
    device_pages_follow_the_cursor_without_gaps_or_repeats,
    concurrent_applies_of_one_site_apply_each_batch_once,
    an_existing_user_is_a_conflict_and_a_new_password_ends_the_users_sessions,
    an_existing_site_is_a_conflict_and_an_ack_is_kept_in_the_alerts_history,
    a_batch_reports_its_delta_and_writes_histories_search_and_counts_follow,
    the_cve_index_follows_the_newest_findings_of_each_device,
    the_cve_index_counts_each_cves_devices_per_site_by_their_best_state,
    script_versions_bulk_runs_and_held_members_round_trip_in_one_tenant,
    deployment_orders_are_acknowledged_once_per_site_and_progress_only_moves_forward,
    device_ips_and_tags_follow_the_newest_snapshot_and_feed_search_and_the_tag_filter,
    the_deployment_list_pages_newest_first_within_scope_and_a_deployment_is_read_by_its_id,
    device_facts_many_answers_what_device_facts_answers_device_by_device,
    a_revoked_token_keeps_its_record_and_a_removed_user_loses_its_sessions_audited,
);

async fn an_alert_page_filters_in_the_store_keeps_the_newest_and_counts_all(st: Store) {
    use crate::model::{AlertState, Severity};
    use outpost_uplink::batch::{AlertState as BState, AlertTransition, Severity as BSev};
    add_site(&st, "msp", "s-1", 1).await;
    // 30 alerts: ids 1..=30 at time id; every third resolved, the rest
    // firing; ids divisible by 5 are warnings.
    let mut b = sample_batch(1);
    b.alerts = (1..=30u64)
        .map(|id| AlertTransition {
            alert_id: id,
            device: b.alerts[0].device,
            rule: format!("r{id}"),
            severity: if id % 5 == 0 {
                BSev::Warning
            } else {
                BSev::Critical
            },
            state: if id % 3 == 0 {
                BState::Resolved
            } else {
                BState::Firing
            },
            at_ms: id,
            message: String::new(),
            value: None,
        })
        .collect();
    st.apply_batch(&t("msp"), &s("s-1"), b, 10).await.unwrap();
    let ids = |p: &AlertPage| p.rows.iter().map(|a| a.alert_id).collect::<Vec<_>>();
    let page = |tenant: &'static str, f: AlertFilter| {
        let st = st.clone();
        async move { st.alert_page(&t(tenant), &f).await.unwrap() }
    };

    let open = page(
        "msp",
        AlertFilter {
            limit: 3,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(open.total, 20, "30 minus the 10 resolved");
    assert_eq!(ids(&open), vec![29, 28, 26], "newest open first");

    let all = page(
        "msp",
        AlertFilter {
            states: AlertStates::All,
            limit: 4,
            ..Default::default()
        },
    )
    .await;
    assert_eq!((all.total, ids(&all)), (30, vec![30, 29, 28, 27]));

    let resolved_warn = page(
        "msp",
        AlertFilter {
            states: AlertStates::Only(AlertState::Resolved),
            severity: Some(Severity::Warning),
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        (resolved_warn.total, ids(&resolved_warn)),
        (2, vec![30, 15])
    );

    // Out of the reader's customers, another site, another tenant: nothing.
    for (tenant, f) in [
        (
            "msp",
            AlertFilter {
                customers_allowed: vec!["other".into()],
                limit: 5,
                ..Default::default()
            },
        ),
        (
            "msp",
            AlertFilter {
                site: Some("s-2".into()),
                states: AlertStates::All,
                limit: 5,
                ..Default::default()
            },
        ),
        (
            "other",
            AlertFilter {
                states: AlertStates::All,
                limit: 5,
                ..Default::default()
            },
        ),
    ] {
        let p = page(tenant, f.clone()).await;
        assert_eq!((p.total, p.rows.len()), (0, 0), "{tenant} {f:?}");
    }
}

async fn a_batch_applies_once_in_any_order_and_tenants_do_not_see_each_other(st: Store) {
    add_site(&st, "msp", "s-1", 1).await;
    add_site(&st, "other", "s-1", 2).await;
    assert!(st.take_join_token(&[1; 32]).await.unwrap().is_some());
    assert!(
        st.take_join_token(&[1; 32]).await.unwrap().is_none(),
        "one use"
    );
    let (msp, s1) = (t("msp"), s("s-1"));
    let b2 = sample_batch(2);
    assert!(matches!(
        st.apply_batch(&msp, &s1, b2.clone(), 10).await.unwrap(),
        ApplyOutcome::Applied { rollups_new: 2, .. }
    ));
    assert_eq!(
        st.apply_batch(&msp, &s1, b2.clone(), 11).await.unwrap(),
        ApplyOutcome::Duplicate
    );
    let b1 = sample_batch(1);
    assert!(matches!(
        st.apply_batch(&msp, &s1, b1.clone(), 12).await.unwrap(),
        ApplyOutcome::Applied { rollups_new: 0, .. }
    ));
    assert_eq!(
        st.apply_batch(&msp, &s1, b1, 13).await.unwrap(),
        ApplyOutcome::Duplicate
    );
    let rec = st.site(&msp, &s1).await.unwrap().unwrap();
    assert_eq!(
        (
            rec.applied_up_to,
            rec.applied_above.clone(),
            rec.batches_applied
        ),
        (2, vec![], 2)
    );
    let all = DeviceFilter {
        limit: 10,
        ..Default::default()
    };
    let page = st.devices(&msp, &all).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].rollups_stored, 2);
    assert!(
        st.devices(&t("other"), &all)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        st.device(&t("other"), &s1, &page.items[0].device)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(st.alerts(&msp, None).await.unwrap().len(), 1);
    assert!(st.alerts(&t("other"), None).await.unwrap().is_empty());
    let bucket = b2.rollups[0].bucket_start_ms;
    let r = st
        .rollups(
            &msp,
            &RollupQuery {
                site_id: "s-1".into(),
                device: page.items[0].device.clone(),
                series: "cpu".into(),
                label: String::new(),
                from_ms: 0,
                to_ms: u64::MAX,
                limit: 100,
            },
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, bucket);
}

async fn device_pages_follow_the_cursor_without_gaps_or_repeats(st: Store) {
    add_site(&st, "msp", "s-1", 1).await;
    let mut b = sample_batch(1);
    let d0 = b.devices[0].clone();
    b.devices = (0..5u64)
        .map(|i| outpost_uplink::batch::DeviceUpdate {
            device: outpost_proto::DeviceId(100 + i),
            ..d0.clone()
        })
        .collect();
    st.apply_batch(&t("msp"), &s("s-1"), b, 1).await.unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let p = st
            .devices(
                &t("msp"),
                &DeviceFilter {
                    site_id: Some("s-1".into()),
                    after: after.clone(),
                    limit: 2,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        pages += 1;
        seen.extend(p.items.iter().map(|d| d.device.clone()));
        match p.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    // 5 from the snapshot list + device 42 of the sample's rollups.
    assert_eq!(seen.len(), 6, "{seen:?}");
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), seen.len(), "{seen:?}");
    assert_eq!(pages, 3);
    // A cursor of another tenant's key space, or of another site's
    // listing, is refused, not followed.
    let r = st
        .devices(
            &t("other"),
            &DeviceFilter {
                after: after.clone(),
                limit: 10,
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(&r, Err(CentralStoreError::InvalidCursor(_))),
        "{r:?}"
    );
    let r = st
        .devices(
            &t("msp"),
            &DeviceFilter {
                site_id: Some("s-2".into()),
                after: after.clone(),
                limit: 10,
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(&r, Err(CentralStoreError::InvalidCursor(_))),
        "{r:?}"
    );
    let r = st
        .devices(
            &t("msp"),
            &DeviceFilter {
                after: Some("not a cursor".into()),
                limit: 10,
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(&r, Err(CentralStoreError::InvalidCursor(_))),
        "{r:?}"
    );
}

/// Four tasks apply batches 1..=20 of two sites (two tasks per site, so
/// every batch is offered twice at once): each batch of each site applies
/// exactly once.
async fn concurrent_applies_of_one_site_apply_each_batch_once(st: Store) {
    for (i, id) in ["s-a", "s-b"].iter().enumerate() {
        add_site(&st, "msp", id, i as u8).await;
    }
    let tasks: Vec<_> = (0..4)
        .map(|n| {
            let st = st.clone();
            tokio::spawn(async move {
                let id = if n % 2 == 0 { "s-a" } else { "s-b" };
                let mut out = Vec::new();
                for seq in 1..=20 {
                    let o = st
                        .apply_batch(&t("msp"), &s(id), sample_batch(seq), seq)
                        .await
                        .unwrap();
                    out.push((id.to_string(), o));
                }
                out
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for h in tasks {
        outcomes.extend(h.await.unwrap());
    }
    for id in ["s-a", "s-b"] {
        let applied = outcomes
            .iter()
            .filter(|(x, o)| x == id && matches!(o, ApplyOutcome::Applied { .. }))
            .count();
        assert_eq!(applied, 20, "{id}");
        let rec = st.site(&t("msp"), &s(id)).await.unwrap().unwrap();
        assert_eq!((rec.applied_up_to, rec.batches_applied), (20, 20), "{id}");
    }
}

fn user(name: &str, hash: &str) -> UserRecord {
    UserRecord {
        tenant: "msp".into(),
        name: name.into(),
        role: Role::Viewer,
        customers: vec![],
        password_hash: hash.into(),
        created_ms: 1,
    }
}

fn session(name: &str, expires_ms: u64) -> SessionRecord {
    SessionRecord {
        principal: Principal {
            tenant: "msp".into(),
            role: Role::Viewer,
            customers: vec![],
            name: name.into(),
        },
        expires_ms,
    }
}

/// Creating a user that exists is a conflict; a password change replaces
/// the hash and ends that user's sessions, not others', in one write
/// (expired sessions met on the way go too).
async fn an_existing_user_is_a_conflict_and_a_new_password_ends_the_users_sessions(st: Store) {
    let msp = t("msp");
    let far = u64::MAX / 4;
    st.create_user(&user("alice", "h1")).await.unwrap();
    assert!(matches!(
        st.create_user(&user("alice", "h2")).await,
        Err(CentralStoreError::Conflict(_))
    ));
    let hash = |name: &'static str| {
        let st = st.clone();
        async move {
            st.user(&t("msp"), name)
                .await
                .unwrap()
                .unwrap()
                .password_hash
        }
    };
    assert_eq!(hash("alice").await, "h1");
    st.create_user(&user("bob", "hb")).await.unwrap();
    st.put_session(&[1; 32], &session("alice", far))
        .await
        .unwrap();
    st.put_session(&[2; 32], &session("alice", far))
        .await
        .unwrap();
    st.put_session(&[3; 32], &session("bob", far))
        .await
        .unwrap();
    st.put_session(&[4; 32], &session("carol", 10))
        .await
        .unwrap();
    assert_eq!(st.set_password(&msp, "alice", "h3").await.unwrap(), Some(2));
    assert_eq!(hash("alice").await, "h3");
    assert!(st.session(&[1; 32]).await.unwrap().is_none());
    assert!(st.session(&[2; 32]).await.unwrap().is_none());
    assert!(st.session(&[3; 32]).await.unwrap().is_some(), "bob's stays");
    assert!(
        st.session(&[4; 32]).await.unwrap().is_none(),
        "expired: swept"
    );
    assert_eq!(st.set_password(&msp, "nobody", "h").await.unwrap(), None);
    // The operator's replace (CLI `user add`) ends sessions too.
    st.put_session(&[5; 32], &session("bob", far))
        .await
        .unwrap();
    assert_eq!(st.put_user(&user("bob", "hb2")).await.unwrap(), 2);
    assert!(st.session(&[5; 32]).await.unwrap().is_none());
    assert_eq!(
        st.put_user(&user("dave", "hd")).await.unwrap(),
        0,
        "new user"
    );
    st.put_session(&[6; 32], &session("dave", far))
        .await
        .unwrap();
    st.delete_session(&[6; 32]).await.unwrap();
    assert!(st.session(&[6; 32]).await.unwrap().is_none());
}

fn api_token(tenant: &str, id: &str, created_ms: u64, expires_ms: Option<u64>) -> ApiTokenRecord {
    ApiTokenRecord {
        id: id.into(),
        principal: Principal {
            tenant: tenant.into(),
            role: Role::Technician,
            customers: vec!["dental".into()],
            name: format!("token:{id}"),
        },
        created_ms,
        life: TokenLife {
            expires_ms,
            created_by: Some("alice".into()),
            revoked_ms: None,
            revoked_by: None,
        },
    }
}

fn audit(tenant: &str, action: &str, target: &str) -> AuditRow {
    AuditRow {
        at_ms: 50,
        tenant: tenant.into(),
        actor: "alice".into(),
        action: action.into(),
        target: target.into(),
        detail: String::new(),
    }
}

/// A tenant lists its own tokens only, oldest first, with their expiry
/// and creator; a revocation is kept in the token's record (the token is
/// still found by its hash, refused by the caller) with its audit entry,
/// once; another tenant's token is not found. Removing a user deletes
/// it and its sessions (not others'), audited; a second removal finds
/// nothing.
async fn a_revoked_token_keeps_its_record_and_a_removed_user_loses_its_sessions_audited(st: Store) {
    let (msp, other) = (t("msp"), t("other"));
    let old = ApiTokenRecord {
        life: TokenLife::default(),
        ..api_token("msp", "aa01", 1, None)
    };
    st.put_api_token(&[1; 32], &api_token("msp", "bb02", 5, Some(1_000)))
        .await
        .unwrap();
    st.put_api_token(&[2; 32], &old).await.unwrap();
    st.put_api_token(&[3; 32], &api_token("other", "cc03", 2, None))
        .await
        .unwrap();
    let listed = st.api_tokens(&msp).await.unwrap();
    assert_eq!(
        listed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["aa01", "bb02"]
    );
    assert_eq!(listed[0], old, "a token without life section round-trips");
    assert_eq!(listed[1].life.expires_ms, Some(1_000));
    assert_eq!(listed[1].life.created_by.as_deref(), Some("alice"));

    let a = audit("msp", "token.revoke", "token:bb02");
    assert!(
        st.revoke_api_token(&msp, "cc03", "alice", 50, &a)
            .await
            .unwrap()
            .is_none(),
        "another tenant's token"
    );
    let (t1, now) = st
        .revoke_api_token(&msp, "bb02", "alice", 50, &a)
        .await
        .unwrap()
        .unwrap();
    assert!(now);
    assert_eq!(
        (t1.life.revoked_ms, t1.life.revoked_by.as_deref()),
        (Some(50), Some("alice"))
    );
    let (t2, now) = st
        .revoke_api_token(&msp, "bb02", "bob", 60, &a)
        .await
        .unwrap()
        .unwrap();
    assert!(!now, "revoked already");
    assert_eq!(t2, t1, "the first revocation stays");
    let stored = st.api_token(&[1; 32]).await.unwrap().unwrap();
    assert_eq!(stored, t1);
    assert!(stored.refusal(51).is_some());
    assert!(
        st.api_token(&[3; 32])
            .await
            .unwrap()
            .unwrap()
            .refusal(u64::MAX / 2)
            .is_none()
    );
    let log = st.audit(&msp, 10).await.unwrap();
    assert_eq!(
        log.iter().filter(|r| r.action == "token.revoke").count(),
        1,
        "{log:?}"
    );
    assert!(st.audit(&other, 10).await.unwrap().is_empty());

    let far = u64::MAX / 4;
    st.create_user(&user("alice", "h1")).await.unwrap();
    st.create_user(&user("bob", "h2")).await.unwrap();
    st.put_session(&[7; 32], &session("alice", far))
        .await
        .unwrap();
    st.put_session(&[8; 32], &session("alice", far))
        .await
        .unwrap();
    st.put_session(&[9; 32], &session("bob", far))
        .await
        .unwrap();
    let r = audit("msp", "user.remove", "alice");
    assert_eq!(st.remove_user(&other, "alice", &r).await.unwrap(), None);
    assert_eq!(st.remove_user(&msp, "alice", &r).await.unwrap(), Some(2));
    assert!(st.user(&msp, "alice").await.unwrap().is_none());
    assert!(st.session(&[7; 32]).await.unwrap().is_none());
    assert!(st.session(&[8; 32]).await.unwrap().is_none());
    assert!(st.session(&[9; 32]).await.unwrap().is_some(), "bob's stays");
    assert_eq!(st.remove_user(&msp, "alice", &r).await.unwrap(), None);
    let log = st.audit(&msp, 10).await.unwrap();
    assert_eq!(
        log.iter().filter(|r| r.action == "user.remove").count(),
        1,
        "{log:?}"
    );
    // The name is free again.
    st.create_user(&user("alice", "h3")).await.unwrap();
}

/// A second site of the same id is a conflict; an acknowledgement marks
/// the alert and joins its history after the transition.
async fn an_existing_site_is_a_conflict_and_an_ack_is_kept_in_the_alerts_history(st: Store) {
    use crate::store::AlertHistoryEntry;
    add_site(&st, "msp", "s-1", 1).await;
    assert!(matches!(
        st.create_site(&site("msp", "s-1"), &[9; 32], &tok("msp", "s-1"))
            .await,
        Err(CentralStoreError::Conflict(_))
    ));
    let (msp, s1) = (t("msp"), s("s-1"));
    st.apply_batch(&msp, &s1, sample_batch(1), 10)
        .await
        .unwrap();
    let a = st
        .ack_alert(&msp, &s1, 9, "alice", "seen", u64::MAX / 8)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.acked_by.as_deref(), Some("alice"));
    assert!(
        st.ack_alert(&t("other"), &s1, 9, "mallory", "", 1)
            .await
            .unwrap()
            .is_none(),
        "another tenant's alert is not found"
    );
    let h = st.alert_history(&msp, &s1, 9).await.unwrap();
    assert_eq!(h.len(), 2, "{h:?}");
    assert!(matches!(h[0], AlertHistoryEntry::Transition { .. }));
    assert!(matches!(&h[1], AlertHistoryEntry::Ack { by, .. } if by == "alice"));
    let alerts = st.alerts(&msp, Some(&s1)).await.unwrap();
    assert_eq!(alerts[0].acked_by.as_deref(), Some("alice"));
    let sites = st.sites(&msp).await.unwrap();
    assert_eq!((sites.len(), sites[0].batches_applied), (1, 1));
}

/// A batch answers what changed for live viewers (a device whose status
/// changed, every alert it moved, with what they were before), appends
/// the status change and the alert's transitions to their histories, and
/// the search, counts, hostnames and series reads follow it.
async fn a_batch_reports_its_delta_and_writes_histories_search_and_counts_follow(st: Store) {
    use crate::model::{AlertState, DeviceStatus};
    use crate::store::{AlertHistoryEntry, DeviceSearch, FleetDelta, SeriesQuery};
    add_site(&st, "msp", "s-1", 1).await;
    let (msp, s1) = (t("msp"), s("s-1"));
    let (_, d1) = st
        .apply_batch_delta(&msp, &s1, sample_batch(1), 1)
        .await
        .unwrap();
    assert_eq!(d1.devices.len(), 1, "a new device");
    assert_eq!(d1.devices[0].1, None);
    assert_eq!(d1.alerts.len(), 1);
    assert_eq!(
        (d1.alerts[0].1, d1.alerts[0].2.as_deref()),
        (None, Some("web-1"))
    );
    // Same status again: no device change; the alert resolves.
    let mut b = sample_batch(2);
    b.devices[0].as_of_ms = 10;
    b.alerts[0].state = outpost_uplink::batch::AlertState::Resolved;
    b.alerts[0].at_ms = 50;
    let (_, d2) = st.apply_batch_delta(&msp, &s1, b, 2).await.unwrap();
    assert!(d2.devices.is_empty(), "{d2:?}");
    assert_eq!(d2.alerts[0].1, Some(AlertState::Firing));
    assert_eq!(d2.alerts[0].0.state, AlertState::Resolved);
    let mut b = sample_batch(3);
    b.devices[0].as_of_ms = 20;
    b.devices[0].status = outpost_uplink::batch::DeviceStatus::Offline;
    b.devices[0].status_since_ms = 30;
    b.alerts.clear();
    let (_, d3) = st.apply_batch_delta(&msp, &s1, b.clone(), 3).await.unwrap();
    assert_eq!(d3.devices.len(), 1);
    assert_eq!(d3.devices[0].1, Some(DeviceStatus::Online));
    assert_eq!(d3.devices[0].0.status, DeviceStatus::Offline);
    let (_, dup) = st.apply_batch_delta(&msp, &s1, b, 4).await.unwrap();
    assert_eq!(dup, FleetDelta::default(), "a duplicate changes nothing");
    let dev = "000000000000002a";
    assert_eq!(
        st.status_history(&msp, &s1, dev, 10).await.unwrap(),
        vec![(30, DeviceStatus::Offline), (2, DeviceStatus::Online)]
    );
    st.ack_alert(&msp, &s1, 9, "tess", "looked", 60)
        .await
        .unwrap();
    let h = st.alert_history(&msp, &s1, 9).await.unwrap();
    assert_eq!(h.len(), 3, "{h:?}");
    assert!(matches!(
        h[0],
        AlertHistoryEntry::Transition {
            state: AlertState::Firing,
            at_ms: 5,
            ..
        }
    ));
    assert!(matches!(
        h[1],
        AlertHistoryEntry::Transition {
            state: AlertState::Resolved,
            ..
        }
    ));
    assert!(
        matches!(&h[2], AlertHistoryEntry::Ack { by, comment, .. } if by == "tess" && comment == "looked")
    );
    assert!(
        st.alert_history(&t("other"), &s1, 9)
            .await
            .unwrap()
            .is_empty(),
        "tenant-scoped"
    );
    let p = st
        .search_devices(
            &msp,
            &DeviceSearch {
                words: vec!["web".into()],
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((p.total, p.items[0].status), (1, DeviceStatus::Offline));
    assert_eq!(p.items[0].site_name, "main");
    assert_eq!(p.items[0].cpu, Some(12.75), "latest cpu average");
    let c = st.fleet_counts(&msp, &[]).await.unwrap();
    assert_eq!(c.per_site[&s1].offline, 1);
    assert!(
        st.fleet_counts(&t("other"), &[])
            .await
            .unwrap()
            .per_site
            .is_empty()
    );
    assert_eq!(
        st.hostnames(&msp, &[(s1.clone(), dev.into()), (s1.clone(), "ff".into())])
            .await
            .unwrap(),
        vec![Some("web-1".to_string()), None]
    );
    let series = st
        .series_rollups(
            &msp,
            &SeriesQuery {
                site_id: "s-1".into(),
                device: dev.into(),
                series: vec![
                    ("disk_used_percent".into(), "/".into()),
                    ("cpu".into(), String::new()),
                ],
                from_ms: 0,
                to_ms: u64::MAX,
            },
        )
        .await
        .unwrap();
    assert_eq!((series[0].len(), series[0][0].1.min), (1, 71.5));
    assert_eq!((series[1].len(), series[1][0].1.min), (1, 12.25));
}

/// Findings of `device` whose fixable `openssl` group has `cves`.
pub(crate) fn findings_of(
    device: u64,
    as_of_ms: u64,
    cves: &[&str],
) -> outpost_uplink::batch::PatchFindings {
    use outpost_uplink::batch;
    batch::PatchFindings {
        device: outpost_proto::DeviceId(device),
        as_of_ms,
        patches: vec![],
        vulns: vec![batch::VulnGroup {
            source: "openssl".into(),
            installed: "3.0.11-1".into(),
            fixed: Some("3.0.15-1".into()),
            fix_available: true,
            severity: batch::FindingSeverity::High,
            cves: cves.iter().map(|c| c.to_string()).collect(),
        }],
    }
}

/// The CVE index is written with the findings rows: a newer assessment
/// that no longer has a CVE takes the device out of that CVE's exposure,
/// an older one changes nothing, and another tenant's devices never show.
async fn the_cve_index_follows_the_newest_findings_of_each_device(st: Store) {
    add_site(&st, "msp", "s-1", 1).await;
    add_site(&st, "msp", "s-2", 2).await;
    add_site(&st, "other", "s-1", 3).await;
    let exposed = |st: Store, tenant: &'static str, cve: &'static str| async move {
        st.cve_exposure(&t(tenant), cve, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|r| format!("{}/{}", r.site_id, r.device))
            .collect::<Vec<_>>()
    };
    let mut b = sample_batch(1);
    b.patch_findings = vec![
        findings_of(0x2a, 100, &["CVE-A", "CVE-B"]),
        findings_of(0x2b, 100, &["CVE-A"]),
    ];
    st.apply_batch(&t("msp"), &s("s-2"), b.clone(), 1)
        .await
        .unwrap();
    st.apply_batch(&t("msp"), &s("s-1"), b.clone(), 1)
        .await
        .unwrap();
    st.apply_batch(&t("other"), &s("s-1"), b, 1).await.unwrap();
    assert_eq!(
        exposed(st.clone(), "msp", "CVE-A").await,
        [
            "s-1/000000000000002a",
            "s-1/000000000000002b",
            "s-2/000000000000002a",
            "s-2/000000000000002b"
        ],
        "(site, device) order"
    );
    let first = st.cve_exposure(&t("msp"), "CVE-A", 1).await.unwrap();
    assert_eq!(first.len(), 1, "at most `limit`");
    assert_eq!(first[0].hits.len(), 1);
    assert!(first[0].hits[0].fix_available);

    // Device 2a of s-1 is reassessed: CVE-B is fixed.
    let mut newer = sample_batch(2);
    newer.patch_findings = vec![findings_of(0x2a, 200, &["CVE-A"])];
    st.apply_batch(&t("msp"), &s("s-1"), newer, 2)
        .await
        .unwrap();
    assert_eq!(
        exposed(st.clone(), "msp", "CVE-B").await,
        ["s-2/000000000000002a"]
    );
    // An older assessment arriving late changes nothing.
    let mut stale = sample_batch(3);
    stale.patch_findings = vec![findings_of(0x2a, 150, &["CVE-B", "CVE-C"])];
    st.apply_batch(&t("msp"), &s("s-1"), stale, 3)
        .await
        .unwrap();
    assert!(exposed(st.clone(), "msp", "CVE-C").await.is_empty());
    assert_eq!(
        exposed(st.clone(), "msp", "CVE-B").await,
        ["s-2/000000000000002a"]
    );
    assert_eq!(
        exposed(st.clone(), "other", "CVE-A").await,
        ["s-1/000000000000002a", "s-1/000000000000002b"]
    );

    let rows = st.patch_findings(&t("msp"), Some(&s("s-1"))).await.unwrap();
    let got: Vec<(String, u64)> = rows
        .iter()
        .map(|r| (r.device.clone(), r.as_of_ms))
        .collect();
    assert_eq!(
        got,
        [
            ("000000000000002a".to_string(), 200),
            ("000000000000002b".to_string(), 100)
        ]
    );
    assert!(rows.iter().all(|r| r.customer.as_str() == "dental"));
    assert_eq!(st.patch_findings(&t("msp"), None).await.unwrap().len(), 4);
    let one = st
        .device_patch_findings(&t("msp"), &s("s-2"), "000000000000002b")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.vulns[0].cves, ["CVE-A"]);
    assert!(
        st.device_patch_findings(&t("msp"), &s("s-2"), "00000000000000ff")
            .await
            .unwrap()
            .is_none()
    );
}

/// Per (CVE, site) counts from the CVE index alone: a device counts once
/// with its best state (a CVE fixable in one source package and open in
/// another is fixable), the severity is the highest, lines come in (CVE,
/// site) order, one site's when asked, and another tenant's never.
async fn the_cve_index_counts_each_cves_devices_per_site_by_their_best_state(st: Store) {
    use outpost_uplink::batch;
    add_site(&st, "msp", "s-1", 1).await;
    add_site(&st, "msp", "s-2", 2).await;
    add_site(&st, "other", "s-1", 3).await;
    let mut two_packages = findings_of(0x2c, 100, &["CVE-A"]);
    two_packages.vulns.push(batch::VulnGroup {
        source: "libfoo".into(),
        installed: "1.0-1".into(),
        fixed: None,
        fix_available: false,
        severity: batch::FindingSeverity::Critical,
        cves: vec!["CVE-A".into(), "CVE-OPEN".into()],
    });
    let mut not_in_repos = findings_of(0x2d, 100, &["CVE-A"]);
    not_in_repos.vulns[0].fix_available = false;
    let mut b = sample_batch(1);
    b.patch_findings = vec![
        findings_of(0x2a, 100, &["CVE-A", "CVE-B"]),
        findings_of(0x2b, 100, &["CVE-A"]),
        two_packages,
        not_in_repos,
    ];
    st.apply_batch(&t("msp"), &s("s-1"), b, 1).await.unwrap();
    let mut b = sample_batch(1);
    b.patch_findings = vec![findings_of(0x2a, 100, &["CVE-B"])];
    st.apply_batch(&t("msp"), &s("s-2"), b.clone(), 1)
        .await
        .unwrap();
    st.apply_batch(&t("other"), &s("s-1"), b, 1).await.unwrap();

    let line = |cve: &str, site: &str, severity, counts: [u32; 4]| crate::model::CveSiteExposure {
        cve: cve.into(),
        site_id: s(site),
        severity,
        devices: counts[0],
        fixable: counts[1],
        fix_not_in_repositories: counts[2],
        open: counts[3],
    };
    use batch::FindingSeverity::{Critical, High};
    let all = st.cve_site_exposure(&t("msp"), None).await.unwrap();
    assert_eq!(
        all,
        [
            line("CVE-A", "s-1", Critical, [4, 3, 1, 0]),
            line("CVE-B", "s-1", High, [1, 1, 0, 0]),
            line("CVE-B", "s-2", High, [1, 1, 0, 0]),
            line("CVE-OPEN", "s-1", Critical, [1, 0, 0, 1]),
        ]
    );
    let one = st
        .cve_site_exposure(&t("msp"), Some(&s("s-2")))
        .await
        .unwrap();
    assert_eq!(one, [line("CVE-B", "s-2", High, [1, 1, 0, 0])]);
    let other = st.cve_site_exposure(&t("other"), None).await.unwrap();
    assert_eq!(other, [line("CVE-B", "s-1", High, [1, 1, 0, 0])]);
}

pub(crate) fn audit_row(tenant: &str, at_ms: u64) -> crate::commands::AuditRow {
    crate::commands::AuditRow {
        at_ms,
        tenant: tenant.into(),
        actor: "ann".into(),
        action: "test".into(),
        target: String::new(),
        detail: String::new(),
    }
}

/// Scripts keep every version (an edit keeps the first version's
/// customer, a second "new" is refused with the latest), bulk runs list
/// newest first and cancel once, held members are listed per site and
/// released, and commands are read back by id in the order asked; another
/// tenant sees none of it.
async fn script_versions_bulk_runs_and_held_members_round_trip_in_one_tenant(st: Store) {
    use crate::bulk::{BulkTarget, CentralBulk};
    use crate::commands::CentralCommand;
    use crate::scripts::CentralScript;
    use outpost_proto::command::CommandSpec;
    use outpost_proto::ids::CommandId;

    let script = |body: &str, customer: Option<&str>| CentralScript {
        name: "restart-cups".into(),
        version: 0,
        interpreter: Default::default(),
        body: body.into(),
        default_timeout_ms: 30_000,
        parameters: vec![],
        created_ms: 5,
        created_by: "ann".into(),
        customer: customer.map(Into::into),
    };
    let v1 = st
        .put_script(
            &t("msp"),
            script("v1", Some("dental")),
            true,
            audit_row("msp", 1),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v1.version, 1);
    let again = st
        .put_script(&t("msp"), script("again", None), true, audit_row("msp", 2))
        .await
        .unwrap();
    assert_eq!(again, Err(Some(v1.clone())));
    let missing = st
        .put_script(
            &t("other"),
            script("edit", None),
            false,
            audit_row("other", 2),
        )
        .await
        .unwrap();
    assert_eq!(missing, Err(None), "an edit of another tenant's name");
    let v2 = st
        .put_script(&t("msp"), script("v2", None), false, audit_row("msp", 3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (v2.version, v2.customer.as_ref().map(|c| c.as_str())),
        (2, Some("dental"))
    );
    let mut other = script("x", None);
    other.name = "a-first".into();
    st.put_script(&t("msp"), other, true, audit_row("msp", 4))
        .await
        .unwrap()
        .unwrap();
    let names: Vec<(String, u32)> = st
        .scripts(&t("msp"))
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.version))
        .collect();
    assert_eq!(
        names,
        [("a-first".to_string(), 1), ("restart-cups".to_string(), 2)]
    );
    assert_eq!(
        st.script(&t("msp"), "restart-cups", Some(1)).await.unwrap(),
        Some(v1)
    );
    assert_eq!(
        st.script(&t("msp"), "restart-cups", None).await.unwrap(),
        Some(v2)
    );
    assert!(st.scripts(&t("other")).await.unwrap().is_empty());
    let audit = st.audit(&t("msp"), 10).await.unwrap();
    assert!(
        audit.iter().any(|a| a.detail == "restart-cups version 2"),
        "{audit:?}"
    );

    let cmd = |id: u8, site: &str| {
        CentralCommand::new(
            CommandId([id; 16]),
            "msp".into(),
            site.into(),
            "dental".into(),
            format!("00000000000000{id:02x}"),
            "web".into(),
            CommandSpec::shell("true", "ann"),
            "ann".into(),
            10,
        )
    };
    let run = |id: u8, created_ms: u64| CentralBulk {
        id: CommandId([id; 16]),
        tenant: "msp".into(),
        target: BulkTarget::All,
        command: "true".into(),
        concurrency: 1,
        created_ms,
        created_by: "ann".into(),
        cancelled: None,
        members: vec![],
    };
    let cmds = [cmd(1, "s-1"), cmd(2, "s-1"), cmd(3, "s-2")];
    let (r1, r2) = (run(0xa1, 100), run(0xa2, 200));
    st.create_bulk(&r1, &cmds, &[cmds[1].id, cmds[2].id], &audit_row("msp", 5))
        .await
        .unwrap();
    st.create_bulk(&r2, &[], &[], &audit_row("msp", 6))
        .await
        .unwrap();
    let ids: Vec<CommandId> = st
        .bulks(&t("msp"), 10)
        .await
        .unwrap()
        .iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids, [r2.id, r1.id], "newest first");
    // The run's three commands share one millisecond: pages of one, with
    // the (time, id) cursor of the last row, show each exactly once.
    let mut seen = Vec::new();
    let mut f = crate::store::CommandFilter {
        limit: 1,
        ..Default::default()
    };
    while let Some(last) = st.commands(&t("msp"), &f).await.unwrap().pop() {
        seen.push(last.id);
        assert!(seen.len() <= 3, "{seen:?}");
        f.before_ms = Some(last.created_ms);
        f.before_id = Some(last.id);
    }
    assert_eq!(
        seen,
        [cmds[2].id, cmds[1].id, cmds[0].id],
        "time, then id, descending"
    );
    // The time alone skips the rest of that millisecond (older clients).
    f.before_id = None;
    f.before_ms = Some(10);
    assert!(st.commands(&t("msp"), &f).await.unwrap().is_empty());
    assert_eq!(st.bulks(&t("msp"), 1).await.unwrap().len(), 1);
    assert!(st.bulks(&t("other"), 10).await.unwrap().is_empty());
    assert!(st.bulk(&t("other"), r1.id).await.unwrap().is_none());
    assert_eq!(st.bulk(&t("msp"), r1.id).await.unwrap(), Some(r1.clone()));

    assert_eq!(
        st.held(Some((&t("msp"), &s("s-1")))).await.unwrap(),
        [(t("msp"), s("s-1"), r1.id, cmds[1].id)]
    );
    assert_eq!(st.held(None).await.unwrap().len(), 2);
    assert!(
        st.held(Some((&t("other"), &s("s-1"))))
            .await
            .unwrap()
            .is_empty()
    );
    st.unhold(&t("msp"), &s("s-1"), r1.id, &[cmds[1].id])
        .await
        .unwrap();
    assert_eq!(
        st.held(None).await.unwrap(),
        [(t("msp"), s("s-2"), r1.id, cmds[2].id)]
    );
    let by_id = st
        .commands_by_id(&t("msp"), &[cmds[2].id, CommandId([9; 16]), cmds[0].id])
        .await
        .unwrap();
    let got: Vec<Option<CommandId>> = by_id.iter().map(|c| c.as_ref().map(|c| c.id)).collect();
    assert_eq!(got, [Some(cmds[2].id), None, Some(cmds[0].id)]);
    assert!(
        st.commands_by_id(&t("other"), &[cmds[0].id])
            .await
            .unwrap()
            .iter()
            .all(Option::is_none)
    );
    assert_eq!(
        st.open_commands(Some((&t("msp"), &s("s-1"))))
            .await
            .unwrap()
            .len(),
        2,
        "members are open commands"
    );

    let c1 = st
        .cancel_bulk(&t("msp"), r1.id, "bob", 300, audit_row("msp", 300))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c1.cancelled, Some((300, "bob".to_string())));
    let c2 = st
        .cancel_bulk(&t("msp"), r1.id, "eve", 400, audit_row("msp", 400))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        c2.cancelled,
        Some((300, "bob".to_string())),
        "the first cancel wins"
    );
    assert!(
        st.cancel_bulk(&t("other"), r1.id, "eve", 400, audit_row("other", 400))
            .await
            .unwrap()
            .is_none()
    );
}

async fn deployment_orders_are_acknowledged_once_per_site_and_progress_only_moves_forward(
    st: Store,
) {
    use crate::deploy::{Delivery, DeliveryState, OrderRecord, SiteDeploymentRecord};
    use outpost_uplink::deploy_link::{DeployAck, DeployOrderKind};
    add_site(&st, "msp", "s-1", 1).await;
    add_site(&st, "msp", "s-2", 2).await;
    let order = |id: &str, at: u64| OrderRecord {
        tenant: t("msp"),
        id: id.into(),
        created_ms: at,
        created_by: "ann".into(),
        deployment: Some("cdep-1".into()),
        sites: vec![s("s-1"), s("s-2")],
        customers: vec!["dental".into()],
        kind: DeployOrderKind::RemoveRule { id: "r".into() },
    };
    let audit = crate::commands::AuditRow {
        at_ms: 1,
        tenant: t("msp"),
        actor: "ann".into(),
        action: "deployment.create".into(),
        target: "cdep-1".into(),
        detail: String::new(),
    };
    for (id, at) in [("ord-b", 2), ("ord-a", 1)] {
        let o = order(id, at);
        let d: Vec<Delivery> = o.sites.iter().map(|x| Delivery::queued(&o, x)).collect();
        st.create_order(&o, &d, &audit).await.unwrap();
    }
    let o = order("ord-a", 1);
    assert!(matches!(
        st.create_order(&o, &[], &audit).await,
        Err(CentralStoreError::Conflict(_))
    ));
    let ids = |v: Vec<OrderRecord>| v.into_iter().map(|o| o.id).collect::<Vec<_>>();
    assert_eq!(ids(st.orders(&t("msp")).await.unwrap()), ["ord-a", "ord-b"]);
    assert_eq!(
        ids(st.open_orders(&t("msp"), &s("s-1")).await.unwrap()),
        ["ord-a", "ord-b"]
    );
    assert!(st.orders(&t("other")).await.unwrap().is_empty());
    assert!(st.order(&t("other"), "ord-a").await.unwrap().is_none());
    assert_eq!(st.order(&t("msp"), "ord-a").await.unwrap(), Some(o));
    // s-1 acknowledges ord-a: delivered there only, and only once.
    let ack = DeployAck {
        id: "ord-a".into(),
        refused: None,
    };
    let d = st
        .acknowledge_order(&t("msp"), &s("s-1"), &ack, 7)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((d.state, d.done_ms), (DeliveryState::Delivered, Some(7)));
    assert!(
        st.acknowledge_order(&t("msp"), &s("s-1"), &ack, 8)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        st.acknowledge_order(&t("other"), &s("s-1"), &ack, 8)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        ids(st.open_orders(&t("msp"), &s("s-1")).await.unwrap()),
        ["ord-b"]
    );
    assert_eq!(
        ids(st.open_orders(&t("msp"), &s("s-2")).await.unwrap()),
        ["ord-a", "ord-b"]
    );
    let all = st.deliveries(&t("msp")).await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all.iter().filter(|d| d.is_open()).count(), 3);
    // Progress: the newest state stands.
    let rec = |at: u64| SiteDeploymentRecord {
        tenant: t("msp"),
        site: s("s-1"),
        customer: "dental".into(),
        deployment: "cdep-1".into(),
        from_central: true,
        updated_at_ms: at,
        received_ms: 0,
        view_json: format!("{{\"at\":{at}}}"),
    };
    assert!(st.put_site_deployment(&rec(5)).await.unwrap());
    assert!(!st.put_site_deployment(&rec(4)).await.unwrap());
    assert!(!st.put_site_deployment(&rec(5)).await.unwrap());
    assert!(st.put_site_deployment(&rec(6)).await.unwrap());
    let held = st.site_deployments(&t("msp")).await.unwrap();
    assert_eq!(held, vec![rec(6)]);
    assert!(st.site_deployments(&t("other")).await.unwrap().is_empty());
}

/// A batch of `seq`: devices 42 (`web-1`) and 43 (`db-1`) as of
/// `as_of_ms`, with `facts` (format 6).
fn facts_batch(
    seq: u64,
    as_of_ms: u64,
    facts: Vec<outpost_uplink::batch::DeviceIpsTags>,
) -> outpost_uplink::batch::SiteBatch {
    let mut b = sample_batch(seq);
    b.rollups.clear();
    b.alerts.clear();
    b.devices[0].as_of_ms = as_of_ms;
    let mut db = b.devices[0].clone();
    db.device = outpost_proto::DeviceId(43);
    db.hostname = "db-1".into();
    b.devices.push(db);
    b.device_facts = facts;
    b
}

pub(crate) fn ips_tags(
    device: u64,
    ips: &[&str],
    tags: &[&str],
) -> outpost_uplink::batch::DeviceIpsTags {
    outpost_uplink::batch::DeviceIpsTags {
        device: outpost_proto::DeviceId(device),
        ips: ips.iter().map(|s| s.to_string()).collect(),
        tags: tags.iter().map(|s| s.to_string()).collect(),
    }
}

/// IPs and tags (batch format 6) are stored with a winning snapshot only:
/// the search finds a device by an IP prefix and by a tag, the tag filter
/// (search and device list) keeps exact matches, the tag facets list the
/// tenant's tags; an older snapshot's facts change nothing, and a newer
/// snapshot without facts clears them.
async fn device_ips_and_tags_follow_the_newest_snapshot_and_feed_search_and_the_tag_filter(
    st: Store,
) {
    use crate::model::DeviceFacts;
    use crate::store::DeviceSearch;
    add_site(&st, "msp", "s-1", 1).await;
    let (msp, s1) = (t("msp"), s("s-1"));
    let b = facts_batch(
        1,
        4,
        vec![
            ips_tags(42, &["10.0.1.5", "2001:db8::5"], &["Web", "eu"]),
            ips_tags(43, &["192.168.7.20"], &["db"]),
        ],
    );
    st.apply_batch(&msp, &s1, b, 1).await.unwrap();
    let search = |words: &[&str], tag: Option<&str>| DeviceSearch {
        words: words.iter().map(|w| w.to_string()).collect(),
        tag: tag.map(str::to_string),
        limit: 10,
        ..Default::default()
    };
    let hosts = |p: crate::store::SearchPage| -> Vec<String> {
        p.items.into_iter().map(|d| d.hostname).collect()
    };
    let find = |words: &'static [&'static str], tag: Option<&'static str>| {
        let (st, msp) = (st.clone(), msp.clone());
        async move { hosts(st.search_devices(&msp, &search(words, tag)).await.unwrap()) }
    };
    assert_eq!(find(&["10.0.1"], None).await, ["web-1"], "IP prefix");
    assert_eq!(find(&["2001:db8"], None).await, ["web-1"], "IPv6 prefix");
    assert_eq!(find(&["192.168.7.20"], None).await, ["db-1"]);
    assert!(
        find(&["0.1.5"], None).await.is_empty(),
        "a prefix, not a substring"
    );
    assert_eq!(find(&["eu"], None).await, ["web-1"], "a tag word");
    assert_eq!(
        find(&["web"], None).await,
        ["web-1"],
        "tags are searched lowercased"
    );
    assert_eq!(find(&[], Some("db")).await, ["db-1"], "tag filter");
    assert_eq!(find(&[], Some("Web")).await, ["web-1"]);
    assert!(
        find(&[], Some("web")).await.is_empty(),
        "the tag filter is exact"
    );
    let items = st
        .search_devices(&msp, &search(&["10.0"], None))
        .await
        .unwrap()
        .items;
    assert_eq!(
        (items[0].ips.clone(), items[0].tags.clone()),
        (
            vec!["10.0.1.5".to_string(), "2001:db8::5".to_string()],
            vec!["Web".to_string(), "eu".to_string()]
        )
    );
    assert_eq!(
        st.device_tags(&msp, &[]).await.unwrap(),
        ["Web", "db", "eu"]
    );
    assert!(
        st.device_tags(&msp, &["vet".into()])
            .await
            .unwrap()
            .is_empty(),
        "scoped"
    );
    assert!(st.device_tags(&t("other"), &[]).await.unwrap().is_empty());
    let listed = st
        .devices(
            &msp,
            &DeviceFilter {
                tag: Some("db".into()),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        listed
            .items
            .iter()
            .map(|d| d.hostname.as_str())
            .collect::<Vec<_>>(),
        ["db-1"],
        "the device list's tag filter"
    );
    // An older snapshot: its facts are not stored.
    let b = facts_batch(2, 1, vec![ips_tags(42, &["1.2.3.4"], &["stale"])]);
    st.apply_batch(&msp, &s1, b, 2).await.unwrap();
    assert!(find(&["1.2.3"], None).await.is_empty());
    assert_eq!(
        st.device_facts(&msp, &s1, "000000000000002a")
            .await
            .unwrap(),
        DeviceFacts {
            ips: vec!["10.0.1.5".into(), "2001:db8::5".into()],
            tags: vec!["Web".into(), "eu".into()],
        }
    );
    // A newer snapshot of 42 without facts: it has none now; 43 (same
    // batch, newer too) gets its new ones.
    let b = facts_batch(3, 10, vec![ips_tags(43, &["192.168.7.21"], &["db", "eu"])]);
    st.apply_batch(&msp, &s1, b, 3).await.unwrap();
    assert_eq!(
        st.device_facts(&msp, &s1, "000000000000002a")
            .await
            .unwrap(),
        DeviceFacts::default()
    );
    assert!(find(&["10.0.1"], None).await.is_empty());
    assert_eq!(find(&[], Some("eu")).await, ["db-1"]);
    assert_eq!(find(&["192.168.7.21"], None).await, ["db-1"]);
    assert_eq!(st.device_tags(&msp, &[]).await.unwrap(), ["db", "eu"]);
    assert_eq!(
        st.device_facts(&t("other"), &s1, "000000000000002b")
            .await
            .unwrap(),
        DeviceFacts::default(),
        "tenant-scoped"
    );
}

/// The deployment list: central's deployments (by their create order)
/// and those made at sites, newest first, page by page without gaps or
/// repeats, counted; only what a customer scope sees all of; another
/// tenant's never; a bad cursor refused. A deployment's orders,
/// deliveries and reports are read by its id.
async fn the_deployment_list_pages_newest_first_within_scope_and_a_deployment_is_read_by_its_id(
    st: Store,
) {
    use crate::deploy::{Delivery, OrderRecord, SiteDeploymentRecord};
    use crate::store::DeploymentQuery;
    use outpost_uplink::deploy_link::DeployOrderKind;
    let audit = crate::commands::AuditRow {
        at_ms: 1,
        tenant: t("msp"),
        actor: "ann".into(),
        action: "deployment.create".into(),
        target: String::new(),
        detail: String::new(),
    };
    // (tenant, order, deployment, created, sites, customers, kind)
    let order = |tenant: &str,
                 id: &str,
                 dep: &str,
                 at: u64,
                 sites: &[&str],
                 customers: &[&str],
                 create: bool| {
        OrderRecord {
            tenant: t(tenant),
            id: id.into(),
            created_ms: at,
            created_by: "ann".into(),
            deployment: Some(dep.into()),
            sites: sites.iter().map(|x| s(x)).collect(),
            customers: customers.iter().map(|c| (*c).into()).collect(),
            kind: if create {
                DeployOrderKind::CreateDeployment {
                    request_json: format!("{{\"id\":\"{dep}\"}}"),
                }
            } else {
                DeployOrderKind::Act {
                    deployment: dep.into(),
                    action: "pause".into(),
                    body_json: "{}".into(),
                }
            },
        }
    };
    let orders = [
        order("msp", "ord-1", "cdep-1", 10, &["s-d"], &["dental"], true),
        order(
            "msp",
            "ord-2",
            "cdep-2",
            20,
            &["s-d", "s-v"],
            &["dental", "vet"],
            true,
        ),
        order("msp", "ord-3", "cdep-3", 30, &["s-v"], &["vet"], true),
        order("msp", "ord-4", "cdep-4", 30, &["s-d"], &["dental"], true),
        order("msp", "ord-5", "cdep-1", 40, &["s-d"], &["dental"], false),
        order("other", "ord-9", "cdep-9", 50, &["s-o"], &["dental"], true),
    ];
    for o in &orders {
        let d: Vec<Delivery> = o.sites.iter().map(|x| Delivery::queued(o, x)).collect();
        st.create_order(
            o,
            &d,
            &crate::commands::AuditRow {
                tenant: o.tenant.clone(),
                ..audit.clone()
            },
        )
        .await
        .unwrap();
    }
    let report =
        |tenant: &str, site: &str, customer: &str, dep: &str, central: bool, created: u64| {
            SiteDeploymentRecord {
                tenant: t(tenant),
                site: s(site),
                customer: customer.into(),
                deployment: dep.into(),
                from_central: central,
                updated_at_ms: created + 1,
                received_ms: created + 1,
                view_json: format!(
                    "{{\"summary\":{{\"created_at_ms\":{created},\"phase\":\"running\"}}}}"
                ),
            }
        };
    let reports = [
        report("msp", "s-d", "dental", "cdep-1", true, 10),
        report("msp", "s-v", "vet", "cdep-2", true, 20),
        report("msp", "s-d", "dental", "dep-local", false, 25),
        report("msp", "s-v", "vet", "dep-local", false, 30),
        report("other", "s-o", "dental", "dep-other", false, 60),
    ];
    for r in &reports {
        assert!(st.put_site_deployment(r).await.unwrap());
    }
    // A newer report of a site-made deployment moves nothing in the list.
    let mut newer = reports[2].clone();
    newer.updated_at_ms += 100;
    assert!(st.put_site_deployment(&newer).await.unwrap());

    let key = |e: &crate::deploy::DeploymentEntry| {
        format!(
            "{}{}",
            e.id,
            e.site.as_ref().map(|x| format!("@{x}")).unwrap_or_default()
        )
    };
    let all = |allowed: &'static [&'static str], limit: usize| {
        let st = st.clone();
        async move {
            let mut q = DeploymentQuery {
                customers_allowed: allowed.iter().map(|c| (*c).into()).collect(),
                after: None,
                limit,
            };
            let mut seen = Vec::new();
            let mut totals = Vec::new();
            loop {
                let p = st.deployment_page(&t("msp"), &q).await.unwrap();
                assert!(p.items.len() <= limit);
                totals.push((p.total, p.total_more));
                seen.extend(p.items.iter().map(key));
                match p.next {
                    Some(n) => q.after = Some(n),
                    None => break,
                }
            }
            (seen, totals)
        }
    };
    // Newest first; at one time by id, then site (central's first).
    let expect = [
        "cdep-3",
        "cdep-4",
        "dep-local@s-v",
        "dep-local@s-d",
        "cdep-2",
        "cdep-1",
    ];
    for limit in [1, 2, 4, 6, 100] {
        let (seen, totals) = all(&[], limit).await;
        assert_eq!(seen, expect, "limit {limit}");
        assert!(totals.iter().all(|t| *t == (6, false)), "{totals:?}");
    }
    let (seen, totals) = all(&["dental"], 2).await;
    assert_eq!(
        seen,
        ["cdep-4", "dep-local@s-d", "cdep-1"],
        "cdep-2 has a vet site"
    );
    assert!(totals.iter().all(|t| *t == (3, false)), "{totals:?}");
    let (seen, _) = all(&["vet"], 1).await;
    assert_eq!(seen, ["cdep-3", "dep-local@s-v"]);
    let other = st
        .deployment_page(
            &t("other"),
            &DeploymentQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        other.items.iter().map(key).collect::<Vec<_>>(),
        ["dep-other@s-o", "cdep-9"]
    );
    assert!(matches!(
        st.deployment_page(
            &t("msp"),
            &DeploymentQuery {
                after: Some("not-a-cursor".into()),
                limit: 10,
                ..Default::default()
            }
        )
        .await,
        Err(CentralStoreError::InvalidCursor(_))
    ));

    // By id: cdep-1's creation and pause, oldest first; nothing of
    // another tenant's.
    let ids = |v: Vec<OrderRecord>| v.into_iter().map(|o| o.id).collect::<Vec<_>>();
    let of1 = st.deployment_orders(&t("msp"), "cdep-1").await.unwrap();
    assert_eq!(ids(of1.clone()), ["ord-1", "ord-5"]);
    assert!(
        st.deployment_orders(&t("other"), "cdep-1")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        st.deployment_orders(&t("msp"), "cdep-9")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(st
            .orders_by_id(&t("msp"), &["ord-3".into(), "ord-9".into(), "ord-1".into()])
            .await
            .unwrap()),
        ["ord-3", "ord-1"]
    );
    let two = st.orders_by_id(&t("msp"), &["ord-2".into()]).await.unwrap();
    let d = st.order_deliveries(&t("msp"), &two).await.unwrap();
    assert_eq!(
        d.iter()
            .map(|d| (d.order.as_str(), d.site.as_str()))
            .collect::<Vec<_>>(),
        [("ord-2", "s-d"), ("ord-2", "s-v")]
    );
    assert!(
        st.order_deliveries(&t("other"), &two)
            .await
            .unwrap()
            .is_empty()
    );
    let p = st
        .deployment_progress(&t("msp"), &["dep-local".into(), "cdep-1".into()])
        .await
        .unwrap();
    let mut got: Vec<(String, String, u64)> = p
        .iter()
        .map(|r| (r.deployment.clone(), r.site.to_string(), r.updated_at_ms))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("cdep-1".to_string(), "s-d".to_string(), 11),
            ("dep-local".into(), "s-d".into(), 126),
            ("dep-local".into(), "s-v".into(), 31),
        ]
    );
    assert!(
        st.deployment_progress(&t("other"), &["dep-local".into()])
            .await
            .unwrap()
            .is_empty()
    );
}

/// The device list's batched read answers, device by device and in the
/// order asked, what the one-device read answers (unknown devices and
/// another tenant's: empty).
async fn device_facts_many_answers_what_device_facts_answers_device_by_device(st: Store) {
    add_site(&st, "msp", "s-1", 1).await;
    add_site(&st, "msp", "s-2", 2).await;
    let (msp, s1, s2) = (t("msp"), s("s-1"), s("s-2"));
    let b = facts_batch(
        1,
        5,
        vec![
            ips_tags(42, &["10.0.1.5"], &["web", "eu"]),
            ips_tags(43, &["10.0.1.6", "fe80::1"], &[]),
        ],
    );
    st.apply_batch(&msp, &s1, b, 1).await.unwrap();
    let mut b = facts_batch(1, 5, vec![ips_tags(42, &["192.168.0.9"], &["lab"])]);
    b.site = s2.clone();
    st.apply_batch(&msp, &s2, b, 1).await.unwrap();
    let asked: Vec<(outpost_proto::SiteId, String)> = [
        (&s2, "000000000000002a"),
        (&s1, "000000000000002b"),
        (&s1, "000000000000002a"),
        (&s2, "000000000000002b"),
        (&s1, "00000000000000ff"),
        (&s1, "000000000000002a"),
    ]
    .iter()
    .map(|(x, d)| ((*x).clone(), d.to_string()))
    .collect();
    let many = st.device_facts_many(&msp, &asked).await.unwrap();
    let mut one_by_one = Vec::new();
    for (x, d) in &asked {
        one_by_one.push(st.device_facts(&msp, x, d).await.unwrap());
    }
    assert_eq!(many, one_by_one);
    assert_eq!(many[0].tags, ["lab"]);
    assert_eq!(many[2].ips, ["10.0.1.5"]);
    assert_eq!(many[4], Default::default(), "unknown device");
    assert!(
        st.device_facts_many(&t("other"), &asked)
            .await
            .unwrap()
            .iter()
            .all(|f| *f == Default::default()),
        "tenant-scoped"
    );
    assert!(st.device_facts_many(&msp, &[]).await.unwrap().is_empty());
}
