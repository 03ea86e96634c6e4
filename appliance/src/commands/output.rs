//! Capped command output, as a pure plan: which bytes of an incoming
//! piece to store, which stored chunks to delete, and how far to
//! acknowledge. The head (the first `head_bytes`) is kept whole, then only
//! the last `tail_bytes`; what falls between is dropped and the output is
//! marked truncated. Memory and disk per command stay bounded whatever the
//! command prints.
//!
//! Chunks are stored under their byte offset (see [`super::store`]); the
//! front tail chunk may be partly stale: readers slice it from
//! [`OutputState::tail_start`].

use serde::{Deserialize, Serialize};

/// Default cap on stored output per command: 1 MiB (head and tail half
/// each).
pub const DEFAULT_OUTPUT_CAP_BYTES: u64 = 1024 * 1024;

/// How much output to keep per command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputCap {
    pub head_bytes: u64,
    pub tail_bytes: u64,
}

impl OutputCap {
    /// A cap of `total` bytes, half head and half tail.
    pub fn total(total: u64) -> OutputCap {
        OutputCap {
            head_bytes: total / 2,
            tail_bytes: total - total / 2,
        }
    }
}

impl Default for OutputCap {
    fn default() -> Self {
        OutputCap::total(DEFAULT_OUTPUT_CAP_BYTES)
    }
}

/// What is stored of a command's output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputState {
    /// Bytes received so far (the next expected offset).
    pub received: u64,
    /// Stored tail chunks beyond the head: (offset, length), oldest first.
    pub tail: Vec<(u64, u32)>,
    /// First byte of the tail that is kept (`head_bytes` until the cap is
    /// reached).
    pub tail_start: u64,
    /// Bytes dropped between the head and the tail (or lost in a gap).
    pub dropped: u64,
}

impl OutputState {
    pub fn truncated(&self) -> bool {
        self.dropped > 0
    }
}

/// What to do with one incoming piece of output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputPlan {
    /// Store these slices of the piece: (offset in the output, range of
    /// the piece's bytes).
    pub store: Vec<(u64, std::ops::Range<usize>)>,
    /// Delete the stored chunks at these offsets.
    pub delete: Vec<u64>,
    /// Acknowledge up to here (everything received is durable once the
    /// plan is written).
    pub ack_to: u64,
    /// Bytes newly dropped by the cap (for the truncation counters).
    pub newly_dropped: u64,
    /// The piece repeated bytes already received (a re-send).
    pub duplicate_bytes: u64,
}

/// Plans storing `len` bytes at `offset`, updating `state` as if the plan
/// were written.
pub fn plan(state: &mut OutputState, cap: OutputCap, offset: u64, len: usize) -> OutputPlan {
    let mut p = OutputPlan::default();
    let end = offset + len as u64;
    if end <= state.received {
        p.duplicate_bytes = len as u64;
        p.ack_to = state.received;
        return p;
    }
    // Skip what was received already; a gap (never expected: the agent
    // re-sends from the acknowledged offset) counts as dropped.
    let mut start = offset;
    if start < state.received {
        p.duplicate_bytes = state.received - start;
        start = state.received;
    } else if start > state.received {
        let gap = start - state.received;
        state.dropped += gap;
        p.newly_dropped += gap;
    }
    let piece = |o: u64| (o - offset) as usize;
    // Head part.
    if start < cap.head_bytes {
        let head_end = end.min(cap.head_bytes);
        p.store.push((start, piece(start)..piece(head_end)));
        start = head_end;
    }
    if state.tail_start < cap.head_bytes {
        state.tail_start = cap.head_bytes;
    }
    if start < end {
        p.store.push((start, piece(start)..piece(end)));
        state.tail.push((start, (end - start) as u32));
    }
    state.received = end;
    // Keep only the last `tail_bytes` beyond the head.
    let keep_from = state
        .received
        .saturating_sub(cap.tail_bytes)
        .max(cap.head_bytes);
    if keep_from > state.tail_start {
        // Bytes of the tail between the old and new start that were
        // stored are dropped now (a gap's bytes were counted already).
        let mut newly = 0;
        for &(o, l) in &state.tail {
            let (a, b) = (o.max(state.tail_start), (o + l as u64).min(keep_from));
            if b > a {
                newly += b - a;
            }
        }
        state.dropped += newly;
        p.newly_dropped += newly;
        state.tail_start = keep_from;
        while let Some(&(o, l)) = state.tail.first() {
            if o + l as u64 <= keep_from {
                p.delete.push(o);
                state.tail.remove(0);
            } else {
                break;
            }
        }
    }
    p.ack_to = state.received;
    p
}

/// The marker put between head and tail when reading truncated output.
pub fn truncation_marker(dropped: u64) -> String {
    format!("\n[... {dropped} bytes of output truncated ...]\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies plans to an in-memory chunk map and reads it back as the
    /// store does.
    #[derive(Default)]
    struct Model {
        chunks: std::collections::BTreeMap<u64, Vec<u8>>,
        state: OutputState,
    }

    impl Model {
        fn feed(&mut self, cap: OutputCap, offset: u64, bytes: &[u8]) -> OutputPlan {
            let p = plan(&mut self.state, cap, offset, bytes.len());
            for (o, r) in &p.store {
                self.chunks.insert(*o, bytes[r.clone()].to_vec());
            }
            for o in &p.delete {
                self.chunks.remove(o);
            }
            p
        }

        fn read(&self, cap: OutputCap) -> Vec<u8> {
            let mut out = Vec::new();
            for (o, c) in &self.chunks {
                if *o < cap.head_bytes {
                    out.extend_from_slice(c);
                }
            }
            if self.state.truncated() {
                out.extend_from_slice(truncation_marker(self.state.dropped).as_bytes());
            }
            for (o, c) in self.chunks.range(cap.head_bytes..) {
                let skip = self.state.tail_start.saturating_sub(*o) as usize;
                out.extend_from_slice(&c[skip.min(c.len())..]);
            }
            out
        }

        fn stored(&self) -> usize {
            self.chunks.values().map(Vec::len).sum()
        }
    }

    #[test]
    fn output_under_the_cap_is_stored_whole() {
        let cap = OutputCap::total(100);
        let mut m = Model::default();
        m.feed(cap, 0, b"hello ");
        let p = m.feed(cap, 6, b"world");
        assert_eq!(p.ack_to, 11);
        assert_eq!(m.read(cap), b"hello world");
        assert!(!m.state.truncated());
    }

    #[test]
    fn output_over_the_cap_keeps_head_and_tail_and_is_marked() {
        let cap = OutputCap::total(20);
        let mut m = Model::default();
        let all: Vec<u8> = (0..200u8).collect();
        for (i, c) in all.chunks(7).enumerate() {
            m.feed(cap, (i * 7) as u64, c);
            // Bounded at every step: head + tail + one partial chunk.
            assert!(m.stored() <= 20 + 7, "{}", m.stored());
        }
        assert!(m.state.truncated());
        assert_eq!(m.state.dropped, 180);
        let mut want = all[..10].to_vec();
        want.extend_from_slice(truncation_marker(180).as_bytes());
        want.extend_from_slice(&all[190..]);
        assert_eq!(m.read(cap), want);
    }

    #[test]
    fn a_resent_piece_is_stored_once() {
        let cap = OutputCap::total(100);
        let mut m = Model::default();
        m.feed(cap, 0, b"abcdef");
        let p = m.feed(cap, 0, b"abcdef");
        assert!(p.store.is_empty());
        assert_eq!(p.duplicate_bytes, 6);
        assert_eq!(p.ack_to, 6);
        // Overlapping: only the new bytes.
        m.feed(cap, 4, b"efgh");
        assert_eq!(m.read(cap), b"abcdefgh");
    }

    #[test]
    fn a_large_single_piece_beyond_the_cap_is_cut_to_head_and_tail() {
        let cap = OutputCap::total(10);
        let mut m = Model::default();
        let all: Vec<u8> = (0..50u8).collect();
        m.feed(cap, 0, &all);
        let mut want = all[..5].to_vec();
        want.extend_from_slice(truncation_marker(40).as_bytes());
        want.extend_from_slice(&all[45..]);
        assert_eq!(m.read(cap), want);
    }
}
