//! File transfer between the appliance and its devices: **push** (a file
//! the technician uploads, written on the device) and **pull** (a file
//! read on the device, kept here and downloadable). This module owns the
//! transfer records, the content store and the `/api/v1/files` routes; it
//! must not touch the session protocol (`outpost_proto::session`) or the
//! command state machine (`crate::commands`), which it uses as they are.
//!
//! # Design
//!
//! **A transfer is a command.** Starting a transfer queues a command whose
//! spec is a built-in action, [`BuiltinAction::PushFile`] or
//! [`BuiltinAction::PullFile`] (`outpost_proto::command`), carrying the
//! transfer id, the remote path, the size and SHA-256 (push) or the size
//! limit (pull), and mode/owner (push). So a transfer inherits what
//! commands already guarantee: exactly once (the agent records the command
//! id before acknowledging it and never starts it twice), queueing for
//! offline devices until expiry (default 24 h), cancel, audit, and every
//! state change stored with its time. The bytes ride the session's file
//! flow (`FileChunk` / `Ack` / `Abort`, with its own 1 MiB window per
//! direction), never the command flow, so a large file does not delay
//! commands or heartbeats.
//!
//! **The record** ([`model::TransferRecord`], table `file_transfers`):
//! id, device, direction, remote path, size and SHA-256 (push: from the
//! upload; pull: as the agent announced and this appliance verified),
//! mode/owner (push), the size limit, who asked, the command id, the bytes
//! the receiver holds durably, resumes, and a state with the time of each
//! transition:
//!
//! ```text
//! queued ──first ack / first byte──▶ transferring ──▶ completed
//!   │                                     │        ├─▶ failed     (refused by the agent, hash
//!   ├─▶ expired (device never came)       │        │              mismatch, over the limit,
//!   └─▶ cancelled ◀───────────────────────┘        │              interrupted, write error)
//!                                                  └─▶ cancelled
//! ```
//!
//! The state follows the command ([`model::step`], pure, with `now`):
//! the command's end decides, except that a pull completes only once its
//! content is verified and stored here (the appliance acknowledges a
//! pull's last byte only after that, and the agent reports the command
//! complete only after that acknowledgement).
//!
//! **Content store** ([`blobs`]): files on disk under `DATA/files/blobs/`,
//! named by their SHA-256, written to a temporary file, `fsync`ed and
//! renamed (then the directory `fsync`ed): never a half-written blob under
//! its name, identical contents stored once. Not RocksDB: contents go up
//! to the limit (default 256 MiB); large values in the LSM would be
//! rewritten by every compaction and held whole in memory by a get, while a
//! file is streamed at any offset, which is what a resume needs. Uploads
//! stream to `DATA/files/tmp/` while hashed and counted against the limit;
//! a pull streams to `DATA/files/partial/<transfer>` (`fsync` before each
//! acknowledgement, so what is acknowledged survives a `kill -9`).
//!
//! **Push**: the upload is checked against the limit (413 before the body
//! is read when `Content-Length` says so, else as it streams), hashed and
//! stored; the command goes out. The agent checks the path against its
//! `file_roots`, creates `.outpost-push-<transfer>.part` beside the target
//! and acknowledges offset 0; each acknowledgement the appliance gets on a
//! new session starts a sender from that offset (a resume, counted), which
//! streams the blob in 64 KiB chunks under the window. The agent writes
//! each chunk at its offset and `fsync`s before acknowledging; at the
//! announced size it checks the SHA-256, sets mode and owner, renames, and
//! ends the command.
//!
//! **Pull**: the agent checks the path (roots, links resolved), refuses a
//! file over the limit before sending anything, hashes it and streams
//! `size | sha256 | content` (`outpost_proto::transfer::PullHeader`). The
//! appliance refuses a header over the limit, writes each chunk at its
//! offset (what it holds is the partial file's length: a resend below it
//! is acknowledged again), and at the end hashes the content, compares it
//! with the header (a mismatch is counted, aborted and `failed`), stores it
//! content-addressed, then acknowledges the last byte.
//!
//! **Resume**: after a reconnect or a restart of either side, the
//! receiver's acknowledged offset is where the sender starts: the agent
//! acknowledges a push's durable length on every session; the agent
//! re-sends a pull from the offset the appliance acknowledged and the
//! appliance drops what it already holds. The agent keeps a transfer's
//! command running across its own restart (a transfer resumes, it is not
//! `interrupted`).
//!
//! Metrics `outpost_files_*`; audit actions `file.push`, `file.pull`,
//! `file.cancel`, `file.result`.

pub mod api;
pub mod blobs;
pub mod central;
pub mod gc;
pub mod metrics;
pub mod model;
pub mod service;
pub mod store;

use serde::{Deserialize, Serialize};

pub use outpost_proto::command::BuiltinAction;

/// `[files]` in the appliance's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Largest file pushed or pulled; a larger one is refused before any
    /// byte moves (413 for an upload, a refusal by the agent for a pull).
    pub max_bytes: u64,
    /// How long the content of an ended transfer is kept (a pulled file
    /// stays downloadable); the daily collector deletes it after.
    #[serde(with = "humantime_serde")]
    pub retention: std::time::Duration,
}

/// Default size limit of a transfer: 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Default `[files] retention`: 7 days.
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            max_bytes: DEFAULT_MAX_BYTES,
            retention: DEFAULT_RETENTION,
        }
    }
}
