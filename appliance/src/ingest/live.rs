//! Open sessions by device, so that revocation can close a device's session
//! and a reconnecting device replaces its stale one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_proto::DeviceId;
use outpost_proto::messages::CloseReason;

/// A registry of open sessions.
#[derive(Debug, Default)]
pub struct LiveSessions {
    sessions: Mutex<HashMap<DeviceId, (u64, quinn::Connection)>>,
    next_id: AtomicU64,
}

fn close(conn: &quinn::Connection, reason: CloseReason, message: &str) {
    conn.close(reason.code().into(), message.as_bytes());
}

impl LiveSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, (u64, quinn::Connection)>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session; closes an older session of the same device.
    /// Returns a registration id for [`LiveSessions::remove`].
    pub fn insert(&self, device: DeviceId, conn: quinn::Connection) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some((_, old)) = self.lock().insert(device, (id, conn)) {
            close(
                &old,
                CloseReason::Superseded,
                "a newer session of this device replaced this one",
            );
        }
        id
    }

    /// Removes a registration if it is still the current one.
    pub fn remove(&self, device: DeviceId, id: u64) {
        let mut g = self.lock();
        if g.get(&device).is_some_and(|(cur, _)| *cur == id) {
            g.remove(&device);
        }
    }

    /// Closes the device's session, if any. Returns whether one was open.
    pub fn close(&self, device: DeviceId, reason: CloseReason, message: &str) -> bool {
        match self.lock().remove(&device) {
            Some((_, conn)) => {
                close(&conn, reason, message);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_connected(&self, device: DeviceId) -> bool {
        self.lock().contains_key(&device)
    }
}
