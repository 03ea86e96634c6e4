//! Values stored in the column families. Serialized with the proto codec for
//! storage and with serde_json by the admin API, so no serde attribute here
//! may change the shape between formats.

use outpost_proto::DeviceId;
use outpost_proto::messages::Heartbeat;
use outpost_proto::{CustomerId, TenantId};
use serde::{Deserialize, Serialize};

/// A device in the registry (one per enrolled endpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub id: DeviceId,
    pub tenant: TenantId,
    pub customer: CustomerId,
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub agent_version: String,
    pub enrolled_at_ms: u64,
    /// Serial of the currently valid client certificate (hex).
    pub cert_serial: String,
    /// Set when the device's certificate was revoked.
    pub revoked_at_ms: Option<u64>,
}

/// Online status of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Enrolled, never heard from on a session.
    Pending,
    Online,
    Offline,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Online => "online",
            DeviceStatus::Offline => "offline",
        }
    }
}

/// Mutable per-device state maintained by the ingest writer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Highest record sequence number stored: the dedupe high-water mark.
    pub last_seq: u64,
    /// Appliance clock, ms, when the last record or session arrived.
    pub last_seen_ms: u64,
    pub status: DeviceStatus,
    pub status_since_ms: u64,
    /// The agent's heartbeat interval (from its Hello).
    pub heartbeat_interval_ms: u32,
    /// The latest heartbeat's content and its agent timestamp.
    pub last_heartbeat: Option<Heartbeat>,
    pub last_heartbeat_ts_ms: u64,
    pub records_stored: u64,
}

impl DeviceState {
    pub fn new(now_ms: u64) -> DeviceState {
        DeviceState {
            last_seq: 0,
            last_seen_ms: 0,
            status: DeviceStatus::Pending,
            status_since_ms: now_ms,
            heartbeat_interval_ms: 30_000,
            last_heartbeat: None,
            last_heartbeat_ts_ms: 0,
            records_stored: 0,
        }
    }
}

/// A persisted status change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusTransition {
    pub at_ms: u64,
    pub from: DeviceStatus,
    pub to: DeviceStatus,
    /// Last time the device was heard from before the change.
    pub last_seen_ms: u64,
}

/// An enrollment token (stored under the SHA-256 of its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollToken {
    pub tenant: TenantId,
    pub customer: CustomerId,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub uses_allowed: u32,
    pub uses: u32,
}

/// Min/max/sum/count/last of one series over one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rollup {
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub count: u64,
    pub last: f64,
    /// Timestamp of `last`.
    pub last_ts_ms: u64,
}

impl Rollup {
    pub fn of(ts_ms: u64, v: f64) -> Rollup {
        Rollup {
            min: v,
            max: v,
            sum: v,
            count: 1,
            last: v,
            last_ts_ms: ts_ms,
        }
    }

    /// Folds one more sample in (samples may arrive in any order).
    pub fn add(&mut self, ts_ms: u64, v: f64) {
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        self.count += 1;
        if ts_ms >= self.last_ts_ms {
            self.last = v;
            self.last_ts_ms = ts_ms;
        }
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }
}

/// An administrative action, for the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// Who: `admin-token`, `cli`, a user name later.
    pub actor: String,
    /// What, as a stable verb: `token.create`, `device.revoke`, ...
    pub action: String,
    /// The object acted on (device id, token tenant, ...).
    pub target: String,
    pub detail: String,
}
