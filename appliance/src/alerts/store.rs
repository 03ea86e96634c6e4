//! Persistence of alerting state in the appliance database. The tables are
//! JSON (they were before tables declared their codec; converting them to
//! the bincode codec would need a migration of stored alerts, so they stay):
//!
//! * `alert_config`: `rule/ID`, `chan/ID`, `pol/ID`, `win/ID`;
//! * `alerts`: `a/ID` → [`Alert`], `open/RULE\0DEVICE\0LABEL` → ID (the
//!   dedupe index: one open alert per rule, device and label);
//! * `alert_events`: `ID | n` → [`AlertEvent`];
//! * `notifications`: `q/ID` → queued [`Notification`], `d/ID` → dead letter.

use outpost_proto::DeviceId;
use outpost_storage::error::Result;
use outpost_storage::keys::{prefix_successor, time_counter_key};
use outpost_storage::{Batch, Codec, StorageError, Store, Table};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::model::{Alert, AlertEvent, Notification};

/// `kind/id` → alerting configuration object: rules, channels, escalation
/// policies, maintenance windows.
pub const ALERT_CONFIG: Table = Table::new("alert_config").codec(Codec::Json);
/// `a/ID` → alert record; `open/RULE\0DEVICE\0LABEL` → ID (raw u64 BE).
pub const ALERTS: Table = Table::new("alerts").codec(Codec::Json);
/// `alert id | ts | n` → alert transition.
pub const ALERT_EVENTS: Table = Table::new("alert_events").codec(Codec::Json);
/// `q/ID` → queued notification, `d/ID` → dead letter.
pub const NOTIFICATIONS: Table = Table::new("notifications").codec(Codec::Json);

/// Every table of the alert engine, for `Store::open`.
pub const TABLES: &[Table] = &[ALERT_CONFIG, ALERTS, ALERT_EVENTS, NOTIFICATIONS];

/// Kinds of configuration objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    Rule,
    Channel,
    Policy,
    Window,
}

impl ConfigKind {
    fn prefix(self) -> &'static [u8] {
        match self {
            ConfigKind::Rule => b"rule/",
            ConfigKind::Channel => b"chan/",
            ConfigKind::Policy => b"pol/",
            ConfigKind::Window => b"win/",
        }
    }
}

fn config_key(kind: ConfigKind, id: &str) -> Vec<u8> {
    [kind.prefix(), id.as_bytes()].concat()
}

pub fn put_config<T: Serialize>(store: &Store, kind: ConfigKind, id: &str, v: &T) -> Result<()> {
    store.put(ALERT_CONFIG, &config_key(kind, id), v)
}

pub fn get_config<T: DeserializeOwned>(
    store: &Store,
    kind: ConfigKind,
    id: &str,
) -> Result<Option<T>> {
    store.get(ALERT_CONFIG, &config_key(kind, id))
}

pub fn delete_config(store: &Store, kind: ConfigKind, id: &str) -> Result<bool> {
    let key = config_key(kind, id);
    if store.get_raw(ALERT_CONFIG, &key)?.is_none() {
        return Ok(false);
    }
    let mut b = store.batch();
    b.delete(ALERT_CONFIG, &key)?;
    store.write(b)?;
    Ok(true)
}

pub fn list_config<T: DeserializeOwned>(store: &Store, kind: ConfigKind) -> Result<Vec<T>> {
    let p = kind.prefix();
    let end = prefix_successor(p);
    let mut out = Vec::new();
    store.scan::<T>(ALERT_CONFIG, p, end.as_deref(), |_, v| {
        out.push(v);
        true
    })?;
    Ok(out)
}

/// Calls `visit(name, label)` for every series any device has reported
/// (the ingest's series dictionary) until it returns false.
pub fn visit_reported_series(
    store: &Store,
    mut visit: impl FnMut(&str, &str) -> bool,
) -> Result<()> {
    store.scan_raw(outpost_storage::samples::SERIES, &[], None, |k, _| {
        Ok(match outpost_storage::keys::parse_series_name_key(k) {
            Some((_, name, label)) => visit(&name, &label),
            None => true,
        })
    })
}

/// Every series devices have reported.
pub fn reported_series(store: &Store) -> Result<super::references::Reported> {
    let mut r = super::references::Reported::default();
    visit_reported_series(store, |name, label| {
        r.add(name, label);
        true
    })?;
    Ok(r)
}

/// Whether any device has reported metric `name` (stops at the first).
pub fn any_device_reports(store: &Store, name: &str) -> Result<bool> {
    let mut found = false;
    visit_reported_series(store, |n, _| {
        found = n == name;
        !found
    })?;
    Ok(found)
}

fn alert_key(id: u64) -> Vec<u8> {
    [b"a/".as_slice(), &id.to_be_bytes()].concat()
}

/// The dedupe key of an open alert.
pub fn open_key(rule: &str, device: DeviceId, label: &str) -> Vec<u8> {
    format!("open/{rule}\0{device}\0{label}").into_bytes()
}

/// Adds an alert record (and its open index entry, or its removal) to `b`.
pub fn save_alert(b: &mut Batch, a: &Alert) -> Result<()> {
    b.put(ALERTS, &alert_key(a.id), a)?;
    let ok = open_key(&a.rule_id, a.device, &a.label);
    if a.state.is_open() {
        b.put_raw(ALERTS, &ok, &a.id.to_be_bytes())?;
    } else {
        b.delete(ALERTS, &ok)?;
    }
    Ok(())
}

pub fn get_alert(store: &Store, id: u64) -> Result<Option<Alert>> {
    store.get(ALERTS, &alert_key(id))
}

/// Every open (pending or firing) alert.
pub fn load_open(store: &Store) -> Result<Vec<Alert>> {
    let mut ids = Vec::new();
    let end = prefix_successor(b"open/");
    store.scan_raw(ALERTS, b"open/", end.as_deref(), |_, v| {
        if let Ok(b) = <[u8; 8]>::try_from(v) {
            ids.push(u64::from_be_bytes(b));
        }
        Ok(true)
    })?;
    let mut out = Vec::new();
    for id in ids {
        if let Some(a) = get_alert(store, id)? {
            out.push(a);
        }
    }
    Ok(out)
}

/// All alerts, oldest first, filtered by `keep`, at most `limit` (newest kept).
pub fn list_alerts(
    store: &Store,
    mut keep: impl FnMut(&Alert) -> bool,
    limit: usize,
) -> Result<Vec<Alert>> {
    let end = prefix_successor(b"a/");
    let mut out = std::collections::VecDeque::new();
    store.scan::<Alert>(ALERTS, b"a/", end.as_deref(), |_, a| {
        if keep(&a) {
            out.push_back(a);
            if out.len() > limit {
                out.pop_front();
            }
        }
        true
    })?;
    Ok(out.into_iter().collect())
}

/// Highest alert id in use.
pub fn max_alert_id(store: &Store) -> Result<u64> {
    let end = prefix_successor(b"a/").unwrap_or_default();
    Ok(store
        .last_in_range(ALERTS, b"a/", &end)?
        .and_then(|(k, _)| k.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()))
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// Adds an event of an alert to `b`: `alert id | at | n`, time-ordered.
pub fn add_event(b: &mut Batch, e: &AlertEvent) -> Result<()> {
    let key = time_counter_key::<8>(&e.alert_id.to_be_bytes(), e.at_ms);
    b.put(ALERT_EVENTS, &key, e)
}

pub fn events(store: &Store, alert_id: u64) -> Result<Vec<AlertEvent>> {
    let p = alert_id.to_be_bytes();
    let end = prefix_successor(&p);
    let mut out = Vec::new();
    store.scan::<AlertEvent>(ALERT_EVENTS, &p, end.as_deref(), |_, e| {
        out.push(e);
        true
    })?;
    Ok(out)
}

fn queue_key(id: u64) -> Vec<u8> {
    [b"q/".as_slice(), &id.to_be_bytes()].concat()
}

fn dead_key(id: u64) -> Vec<u8> {
    [b"d/".as_slice(), &id.to_be_bytes()].concat()
}

pub fn queue_notification(b: &mut Batch, n: &Notification) -> Result<()> {
    b.put(NOTIFICATIONS, &queue_key(n.id), n)
}

/// Records a delivery attempt's outcome: `None` = delivered.
pub fn finish_notification(
    store: &Store,
    n: &Notification,
    dead: bool,
    delivered: bool,
) -> Result<()> {
    let mut b = store.batch();
    if delivered {
        b.delete(NOTIFICATIONS, &queue_key(n.id))?;
    } else if dead {
        b.delete(NOTIFICATIONS, &queue_key(n.id))?;
        b.put(NOTIFICATIONS, &dead_key(n.id), n)?;
    } else {
        b.put(NOTIFICATIONS, &queue_key(n.id), n)?;
    }
    store.write(b)
}

/// Removes a queued notification (superseded before it was sent).
pub fn unqueue_notification(store: &Store, id: u64) -> Result<()> {
    let mut b = store.batch();
    b.delete(NOTIFICATIONS, &queue_key(id))?;
    store.write(b)
}

/// Moves a dead letter back to the queue (`n` as it is queued again).
pub fn requeue_dead_letter(store: &Store, n: &Notification) -> Result<()> {
    let mut b = store.batch();
    b.delete(NOTIFICATIONS, &dead_key(n.id))?;
    b.put(NOTIFICATIONS, &queue_key(n.id), n)?;
    store.write(b)
}

fn list_prefix(store: &Store, p: &[u8]) -> Result<Vec<Notification>> {
    let end = prefix_successor(p);
    let mut out = Vec::new();
    store.scan::<Notification>(NOTIFICATIONS, p, end.as_deref(), |_, n| {
        out.push(n);
        true
    })?;
    Ok(out)
}

pub fn queued(store: &Store) -> Result<Vec<Notification>> {
    list_prefix(store, b"q/")
}

pub fn dead_letters(store: &Store) -> Result<Vec<Notification>> {
    list_prefix(store, b"d/")
}

/// Highest notification id in use (queued or dead).
pub fn max_notification_id(store: &Store) -> Result<u64> {
    let q = queued(store)?.iter().map(|n| n.id).max().unwrap_or(0);
    let d = dead_letters(store)?.iter().map(|n| n.id).max().unwrap_or(0);
    Ok(q.max(d).max(outpost_storage::now_ms()))
}

/// An error for a value the API gave that the store cannot hold.
pub fn invalid(msg: impl Into<String>) -> StorageError {
    StorageError::Invalid(msg.into())
}
