//! File bytes on the uplink (protocol version 7,
//! [`crate::wire::FILES_PROTOCOL_VERSION`]): a push's content central →
//! site, a pull's verified content site → central, on the site's one
//! uplink stream beside batches and command frames.
//!
//! This module owns the wire types ([`UpFileChunk`], [`UpFileAck`],
//! [`UpFileAbort`]) and the pure flow control both ends use: a
//! [`StreamSender`] per transfer and a [`FileFlow`] that interleaves them
//! under one small window, and a [`StreamReceiver`]. No I/O, no clock:
//! central's files module and the appliance's downlink adapter drive them
//! and own the bytes (blobs) and records.
//!
//! The contract:
//!
//! * A transfer's stream is its content, `total` bytes (a push: as
//!   announced in the command's `PushFile`; a pull: the size the site
//!   verified), identified by the transfer id.
//! * **Cumulative acks.** The receiver answers [`UpFileAck`] `up_to` = the
//!   length it holds durably (fsynced); acks never move back.
//! * **Small window.** At most [`FILE_WINDOW_BYTES`] unacknowledged over all
//!   transfers of a link, in chunks of at most [`FILE_CHUNK_BYTES`], and a
//!   writer sends one chunk at a time between its other frames, so a
//!   command, an update or a batch waits for at most one chunk.
//! * **Resume.** After a reconnect the sender starts again at the offset
//!   the receiver acknowledged ([`StreamSender::resume`]); the receiver
//!   acknowledges what it holds when it learns of the stream again, and
//!   treats re-sent bytes with [`outpost_proto::transfer::plan_chunk`].

use std::collections::BTreeMap;

use outpost_proto::ids::TransferId;
use outpost_proto::transfer::{ChunkPlan, next_chunk, plan_chunk};
use serde::{Deserialize, Serialize};

/// Largest chunk of a file on the uplink.
pub const FILE_CHUNK_BYTES: usize = 256 * 1024;
/// Unacknowledged file bytes per link (both directions each).
pub const FILE_WINDOW_BYTES: u64 = 4 * FILE_CHUNK_BYTES as u64;

/// Bytes of a transfer's stream at `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpFileChunk {
    pub transfer: TransferId,
    pub offset: u64,
    pub bytes: Vec<u8>,
    /// The stream ends with this chunk.
    pub last: bool,
}

/// The receiver holds the stream durably up to `up_to` (cumulative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpFileAck {
    pub transfer: TransferId,
    pub up_to: u64,
}

/// The receiver (or sender) gives the stream up for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpFileAbort {
    pub transfer: TransferId,
    pub reason: String,
}

/// The sending side of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSender {
    total: u64,
    /// The receiver holds everything below (cumulative ack).
    acked: u64,
    /// Next offset to send on this connection.
    next: u64,
    /// The empty stream's one (empty, last) chunk was sent.
    sent_empty: bool,
}

impl StreamSender {
    /// A stream of `total` bytes the receiver holds up to `acked`.
    pub fn new(total: u64, acked: u64) -> StreamSender {
        let acked = acked.min(total);
        StreamSender {
            total,
            acked,
            next: acked,
            sent_empty: false,
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Bytes sent on this connection and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.next.saturating_sub(self.acked)
    }

    /// Every byte is acknowledged.
    pub fn done(&self) -> bool {
        self.acked >= self.total && (self.total > 0 || self.sent_empty)
    }

    /// A cumulative ack: returns whether it moved the stream on. Stale
    /// acks are ignored; an ack beyond what was sent (a receiver that held
    /// more from an earlier connection) moves `next` along.
    pub fn on_ack(&mut self, up_to: u64) -> bool {
        let up_to = up_to.min(self.total);
        if up_to < self.acked || (up_to == self.acked && !(self.total == 0 && self.sent_empty)) {
            return false;
        }
        self.acked = up_to;
        self.next = self.next.max(up_to);
        true
    }

    /// A new connection: send again from what the receiver acknowledged.
    pub fn resume(&mut self) {
        self.next = self.acked;
        self.sent_empty = false;
    }

    /// The next chunk to send (offset, length, last) if `room` bytes of
    /// window are free; it is counted as sent.
    pub fn poll_chunk(&mut self, room: u64, max: usize) -> Option<(u64, usize, bool)> {
        if self.total == 0 {
            if self.sent_empty {
                return None;
            }
            self.sent_empty = true;
            return Some((0, 0, true));
        }
        if room == 0 || self.next >= self.total {
            return None;
        }
        let max = (max as u64).min(room) as usize;
        let (off, len, last) = next_chunk(self.next, self.total, max)?;
        self.next = off + len as u64;
        Some((off, len, last))
    }
}

/// The streams a link sends, interleaved under one window
/// ([`FILE_WINDOW_BYTES`]), round robin by transfer id.
#[derive(Debug, Clone, Default)]
pub struct FileFlow {
    streams: BTreeMap<TransferId, StreamSender>,
    window: u64,
    chunk: usize,
    /// Where the round robin continues.
    cursor: Option<TransferId>,
}

impl FileFlow {
    pub fn new(window: u64, chunk: usize) -> FileFlow {
        FileFlow {
            streams: BTreeMap::new(),
            window: window.max(1),
            chunk: chunk.max(1),
            cursor: None,
        }
    }

    /// Adds (or keeps) a stream; a known one is left as it is.
    pub fn open(&mut self, t: TransferId, total: u64, acked: u64) {
        self.streams
            .entry(t)
            .or_insert_with(|| StreamSender::new(total, acked));
    }

    pub fn close(&mut self, t: TransferId) -> Option<StreamSender> {
        self.streams.remove(&t)
    }

    pub fn get(&self, t: TransferId) -> Option<&StreamSender> {
        self.streams.get(&t)
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Unacknowledged bytes over all streams.
    pub fn in_flight(&self) -> u64 {
        self.streams.values().map(|s| s.in_flight()).sum()
    }

    /// A cumulative ack; `Some(true)` when the stream is now complete (it
    /// is then closed), `Some(false)` otherwise, `None` for an unknown one.
    pub fn on_ack(&mut self, t: TransferId, up_to: u64) -> Option<bool> {
        let s = self.streams.get_mut(&t)?;
        s.on_ack(up_to);
        if s.done() {
            self.streams.remove(&t);
            return Some(true);
        }
        Some(false)
    }

    /// A new connection: every stream resends from its acknowledged offset.
    pub fn resume(&mut self) {
        for s in self.streams.values_mut() {
            s.resume();
        }
    }

    /// The next chunk to send, if the window has room: (transfer, offset,
    /// length, last). One call, one chunk: the writer sends its other
    /// frames between calls.
    pub fn poll_chunk(&mut self) -> Option<(TransferId, u64, usize, bool)> {
        let room = self.window.saturating_sub(self.in_flight());
        let ids: Vec<TransferId> = match self.cursor {
            Some(c) => self
                .streams
                .range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded))
                .chain(self.streams.range(..=c))
                .map(|(t, _)| *t)
                .collect(),
            None => self.streams.keys().copied().collect(),
        };
        for t in ids {
            let chunk = self.chunk;
            if let Some(s) = self.streams.get_mut(&t)
                && let Some((off, len, last)) = s.poll_chunk(room, chunk)
            {
                self.cursor = Some(t);
                return Some((t, off, len, last));
            }
        }
        None
    }
}

/// The receiving side of one stream: what is durable, and what to do with
/// a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamReceiver {
    pub total: u64,
    /// Bytes held durably (the ack to send).
    pub durable: u64,
}

impl StreamReceiver {
    pub fn new(total: u64, durable: u64) -> StreamReceiver {
        StreamReceiver {
            total,
            durable: durable.min(total),
        }
    }

    /// What to do with a chunk (see [`plan_chunk`]).
    pub fn plan(&self, offset: u64, len: u64) -> ChunkPlan {
        plan_chunk(self.durable, self.total, offset, len)
    }

    /// The chunk's bytes from its plan's `skip` on are durable.
    pub fn wrote(&mut self, offset: u64, len: u64) {
        self.durable = self.durable.max(offset.saturating_add(len)).min(self.total);
    }

    pub fn complete(&self) -> bool {
        self.durable >= self.total
    }
}

#[cfg(test)]
mod tests;
