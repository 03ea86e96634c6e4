//! Open sessions by device, so that revocation can close a device's session,
//! a reconnecting device replaces its stale one, and remote management can
//! reach a connected device at once ([`LiveSessions::link`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_proto::DeviceId;
use outpost_proto::messages::CloseReason;

use super::remote::RemoteLink;

/// One open session: its registration id, connection and, once it is
/// established with protocol 2 or later, its remote-management link.
#[derive(Debug)]
struct Entry {
    id: u64,
    conn: quinn::Connection,
    link: Option<RemoteLink>,
}

/// A registry of open sessions.
#[derive(Debug, Default)]
pub struct LiveSessions {
    sessions: Mutex<HashMap<DeviceId, Entry>>,
    next_id: AtomicU64,
}

fn close(conn: &quinn::Connection, reason: CloseReason, message: &str) {
    conn.close(reason.code().into(), message.as_bytes());
}

impl LiveSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Entry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session; closes an older session of the same device.
    /// Returns a registration id for [`LiveSessions::remove`].
    pub fn insert(&self, device: DeviceId, conn: quinn::Connection) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            id,
            conn,
            link: None,
        };
        if let Some(old) = self.lock().insert(device, entry) {
            close(
                &old.conn,
                CloseReason::Superseded,
                "a newer session of this device replaced this one",
            );
        }
        id
    }

    /// Removes a registration if it is still the current one.
    pub fn remove(&self, device: DeviceId, id: u64) {
        let mut g = self.lock();
        if g.get(&device).is_some_and(|e| e.id == id) {
            g.remove(&device);
        }
    }

    /// Attaches the remote-management link of registration `id` (if it is
    /// still the device's current session).
    pub fn set_link(&self, device: DeviceId, id: u64, link: RemoteLink) {
        if let Some(e) = self.lock().get_mut(&device)
            && e.id == id
        {
            e.link = Some(link);
        }
    }

    /// The link to the device's open session, if it is connected with a
    /// protocol that carries commands: push a command through it at once.
    pub fn link(&self, device: DeviceId) -> Option<RemoteLink> {
        self.lock()
            .get(&device)
            .and_then(|e| e.link.clone())
            .filter(RemoteLink::is_open)
    }

    /// Closes the device's session, if any. Returns whether one was open.
    pub fn close(&self, device: DeviceId, reason: CloseReason, message: &str) -> bool {
        match self.lock().remove(&device) {
            Some(e) => {
                close(&e.conn, reason, message);
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
