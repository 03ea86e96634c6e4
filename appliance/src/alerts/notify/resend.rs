//! Re-sending dead letters (`POST /api/v1/notifications/dead-letters/resend`,
//! `outpost alerts dead-letters --resend`): which letters may go again
//! ([`plan`], pure) and moving them back to the queue for a new retry
//! period ([`resend`]). It must not deliver anything itself: the dispatcher
//! does, in the order of the notifications' ids.

use std::collections::BTreeSet;

use outpost_storage::Store;
use serde::{Deserialize, Serialize};

use crate::alerts::model::{Notification, NotifyEvent};
use crate::alerts::store;

/// A dead letter that was not re-sent, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub id: u64,
    pub reason: String,
}

/// What a re-send did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resent {
    /// Ids of the dead letters queued again.
    pub resent: Vec<u64>,
    /// Dead letters left as they are.
    pub skipped: Vec<Skipped>,
    /// Asked-for ids that are not dead letters.
    pub not_found: Vec<u64>,
}

/// Which of the `dead` letters `selected` (`None`: all) go again. A
/// firing, escalation or reminder of an alert that is no longer open is
/// re-sent only when a resolution of that alert for the same channel is
/// queued or re-sent with it (it follows, by id): alone it would show the
/// alert open again at the receiver, after its resolution.
pub fn plan(
    dead: &[Notification],
    selected: Option<&BTreeSet<u64>>,
    queued: &[Notification],
    alert_open: impl Fn(u64) -> bool,
) -> (Vec<Notification>, Resent) {
    let mut out = Resent::default();
    let chosen: Vec<&Notification> = dead
        .iter()
        .filter(|n| selected.is_none_or(|s| s.contains(&n.id)))
        .collect();
    if let Some(s) = selected {
        out.not_found = s
            .iter()
            .copied()
            .filter(|id| !dead.iter().any(|n| n.id == *id))
            .collect();
    }
    let resolution_follows = |n: &Notification| {
        chosen.iter().copied().chain(queued.iter()).any(|r| {
            r.event == NotifyEvent::Resolved
                && r.alert.id == n.alert.id
                && r.channel_id == n.channel_id
                && r.id > n.id
        })
    };
    let mut go = Vec::new();
    for n in chosen.iter().copied() {
        if n.event != NotifyEvent::Resolved && !alert_open(n.alert.id) && !resolution_follows(n) {
            out.skipped.push(Skipped {
                id: n.id,
                reason: format!(
                    "alert {} is no longer open and no resolution of it for channel {:?} \
                     follows: this {} would show it open again; re-send it with the \
                     alert's resolved dead letter",
                    n.alert.id,
                    n.channel_id,
                    n.event.as_str()
                ),
            });
            continue;
        }
        out.resent.push(n.id);
        go.push(n.clone());
    }
    (go, out)
}

/// Moves the chosen dead letters back to the queue at `now_ms`, each with
/// a new retry period and its attempts counted from zero. The caller
/// hands the returned notifications to the dispatcher.
pub fn resend(
    s: &Store,
    selected: Option<&BTreeSet<u64>>,
    now_ms: u64,
) -> outpost_storage::error::Result<(Vec<Notification>, Resent)> {
    let dead = store::dead_letters(s)?;
    let queued = store::queued(s)?;
    let mut open = std::collections::HashMap::new();
    for n in &dead {
        if let std::collections::hash_map::Entry::Vacant(e) = open.entry(n.alert.id) {
            e.insert(store::get_alert(s, n.alert.id)?.is_some_and(|a| a.state.is_open()));
        }
    }
    let (go, out) = plan(&dead, selected, &queued, |id| {
        open.get(&id).copied().unwrap_or(false)
    });
    let mut queued_again = Vec::with_capacity(go.len());
    for mut n in go {
        n.attempts = 0;
        n.next_attempt_ms = now_ms;
        n.retry_since_ms = now_ms;
        store::requeue_dead_letter(s, &n)?;
        queued_again.push(n);
    }
    Ok((queued_again, out))
}
