//! Flow-control accounting shared by both ends: a byte window over keyed
//! streams of bytes at offsets (command output by command id, file bytes by
//! transfer id). The sender asks it whether it may send more; the receiver
//! uses the same accounting to refuse a peer that ignores the window.
//!
//! Pure bookkeeping: no frames, no I/O.

use std::collections::HashMap;
use std::hash::Hash;

/// Keys a window tracks at most at once (open transfers, commands with
/// unacknowledged output). A peer opening more is violating the protocol.
pub const MAX_OPEN_KEYS: usize = 4096;

/// Why the receiver refuses what the sender did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("{in_flight} unacknowledged bytes exceed the window of {window} bytes")]
    Exceeded { in_flight: u64, window: u64 },
    #[error("more than {MAX_OPEN_KEYS} open streams of bytes")]
    TooManyKeys,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    /// Everything below is acknowledged.
    acked: u64,
    /// End of the highest byte sent (or received).
    end: u64,
}

impl Span {
    fn in_flight(&self) -> u64 {
        self.end.saturating_sub(self.acked)
    }
}

/// Unacknowledged bytes per key, and their total.
#[derive(Debug, Clone)]
pub struct ByteWindow<K> {
    spans: HashMap<K, Span>,
    in_flight: u64,
    window: u64,
}

impl<K: Hash + Eq + Copy> ByteWindow<K> {
    pub fn new(window: u64) -> Self {
        ByteWindow {
            spans: HashMap::new(),
            in_flight: 0,
            window,
        }
    }

    /// Bytes sent (or received) and not acknowledged, all keys together.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    /// Whether a sender may send another chunk: anything while the window
    /// is not full (one chunk may overshoot it; the receiver allows for that).
    pub fn has_room(&self) -> bool {
        self.in_flight < self.window
    }

    /// Bytes before the window is full.
    pub fn room(&self) -> u64 {
        self.window.saturating_sub(self.in_flight)
    }

    /// Counts `len` bytes at `offset` of `key`. The first chunk of a key
    /// seen in this session starts its span (a resumed transfer starts at
    /// the offset the receiver acknowledged before). Re-sent bytes below the
    /// span's end count nothing.
    pub fn note(&mut self, key: K, offset: u64, len: u64) -> Result<(), WindowError> {
        let end = offset.saturating_add(len);
        if len == 0 {
            return Ok(());
        }
        let n = self.spans.len();
        let span = match self.spans.get_mut(&key) {
            Some(s) => s,
            None => {
                if n >= MAX_OPEN_KEYS {
                    return Err(WindowError::TooManyKeys);
                }
                self.spans.entry(key).or_insert(Span {
                    acked: offset,
                    end: offset,
                })
            }
        };
        let before = span.in_flight();
        span.end = span.end.max(end);
        let after = span.in_flight();
        self.in_flight = self.in_flight - before + after;
        Ok(())
    }

    /// As [`ByteWindow::note`], then checks the window (receiver side):
    /// the total may exceed the window by at most `slack` (one chunk).
    pub fn receive(
        &mut self,
        key: K,
        offset: u64,
        len: u64,
        slack: u64,
    ) -> Result<(), WindowError> {
        self.note(key, offset, len)?;
        if self.in_flight > self.window.saturating_add(slack) {
            return Err(WindowError::Exceeded {
                in_flight: self.in_flight,
                window: self.window,
            });
        }
        Ok(())
    }

    /// Everything of `key` below `up_to` is acknowledged. A key whose bytes
    /// are all acknowledged is forgotten.
    pub fn ack(&mut self, key: K, up_to: u64) {
        if let Some(span) = self.spans.get_mut(&key) {
            let before = span.in_flight();
            span.acked = span.acked.max(up_to);
            let after = span.in_flight();
            self.in_flight = self.in_flight - before + after;
            if after == 0 {
                self.spans.remove(&key);
            }
        }
    }

    /// Forgets `key` (its result was stored, its transfer aborted).
    pub fn release(&mut self, key: K) {
        if let Some(span) = self.spans.remove(&key) {
            self.in_flight -= span.in_flight();
        }
    }

    /// Keys with unacknowledged bytes.
    pub fn open_keys(&self) -> usize {
        self.spans.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_bytes_fill_the_window_and_acks_free_it() {
        let mut w = ByteWindow::<u8>::new(100);
        assert!(w.has_room());
        w.note(1, 0, 60).unwrap();
        w.note(2, 0, 50).unwrap();
        assert_eq!(w.in_flight(), 110);
        assert!(!w.has_room());
        w.ack(1, 30);
        assert_eq!(w.in_flight(), 80);
        assert!(w.has_room());
        w.ack(1, 60);
        assert_eq!(w.open_keys(), 1, "a fully acknowledged key is forgotten");
        w.release(2);
        assert_eq!(w.in_flight(), 0);
        assert_eq!(w.open_keys(), 0);
    }

    #[test]
    fn a_resumed_key_counts_from_its_first_offset_and_resends_count_once() {
        let mut w = ByteWindow::<u8>::new(100);
        w.note(1, 1_000, 10).unwrap();
        assert_eq!(w.in_flight(), 10);
        w.note(1, 1_000, 10).unwrap();
        assert_eq!(w.in_flight(), 10, "the same bytes again");
        w.ack(1, 500);
        assert_eq!(w.in_flight(), 10, "an old ack moves nothing");
        w.ack(1, 1_010);
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn a_receiver_refuses_a_sender_beyond_the_window_and_its_slack() {
        let mut w = ByteWindow::<u8>::new(100);
        w.receive(1, 0, 100, 10).unwrap();
        w.receive(1, 100, 10, 10).unwrap();
        assert_eq!(
            w.receive(1, 110, 1, 10),
            Err(WindowError::Exceeded {
                in_flight: 111,
                window: 100
            })
        );
    }

    #[test]
    fn a_receiver_refuses_too_many_open_keys() {
        let mut w = ByteWindow::<u32>::new(u64::MAX);
        for k in 0..MAX_OPEN_KEYS as u32 {
            w.receive(k, 0, 1, 0).unwrap();
        }
        assert_eq!(w.receive(u32::MAX, 0, 1, 0), Err(WindowError::TooManyKeys));
        assert_eq!(w.receive(0, 1, 1, 0), Ok(()), "an open key goes on");
        assert_eq!(
            w.receive(7, 0, 0, 0),
            Ok(()),
            "an empty chunk opens nothing"
        );
    }

    #[test]
    fn offsets_near_the_end_of_u64_do_not_overflow() {
        let mut w = ByteWindow::<u8>::new(100);
        w.note(1, u64::MAX - 5, 10).unwrap();
        assert_eq!(w.in_flight(), 5);
        w.ack(1, u64::MAX);
        assert_eq!(w.in_flight(), 0);
    }
}
