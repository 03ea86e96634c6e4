//! What both ends of a file transfer must agree on beyond the session's
//! `FileFrame`s: the header that opens a pulled file's byte stream
//! ([`PullHeader`]), how a receiver treats a chunk against what it already
//! holds durably ([`plan_chunk`]), and how a sender cuts its stream from a
//! resume offset ([`next_chunk`]).
//!
//! Pure functions on numbers and byte buffers: no files, no clock. The
//! appliance's `files` subsystem and the agent's `files` module call them;
//! the frame-level windows are `crate::session`'s.
//!
//! Byte streams:
//! * push (appliance → agent): the file's content, `size_bytes` long, as
//!   announced in [`crate::command::BuiltinAction::PushFile`];
//! * pull (agent → appliance): a [`PullHeader`] ([`PULL_HEADER_BYTES`]:
//!   the size, big-endian u64, then the SHA-256 the agent computed before
//!   sending), then the content. The appliance checks the size against its
//!   limit as soon as it has the header, and the hash of what it received
//!   against the header before it keeps the content.

/// Length of the header that opens a pulled file's stream.
pub const PULL_HEADER_BYTES: u64 = 40;

/// What the agent announces before a pulled file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullHeader {
    pub size_bytes: u64,
    pub sha256: [u8; 32],
}

impl PullHeader {
    pub fn encode(&self) -> [u8; PULL_HEADER_BYTES as usize] {
        let mut b = [0u8; PULL_HEADER_BYTES as usize];
        b[..8].copy_from_slice(&self.size_bytes.to_be_bytes());
        b[8..].copy_from_slice(&self.sha256);
        b
    }

    /// `None` when fewer than [`PULL_HEADER_BYTES`] bytes are given.
    pub fn decode(b: &[u8]) -> Option<PullHeader> {
        let size = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
        let sha: [u8; 32] = b.get(8..40)?.try_into().ok()?;
        Some(PullHeader {
            size_bytes: size,
            sha256: sha,
        })
    }

    /// Length of the whole stream (header and content).
    pub fn stream_len(&self) -> u64 {
        PULL_HEADER_BYTES.saturating_add(self.size_bytes)
    }
}

/// What a receiver does with a chunk of `len` bytes at `offset`, holding
/// the stream durably up to `durable`, when the stream is at most `total`
/// bytes long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkPlan {
    /// Write the chunk's bytes from `skip` on at offset `at` (= `durable`);
    /// afterwards the stream is durable up to `offset + len`.
    Write { skip: usize, at: u64 },
    /// Every byte is already held (a re-send after a reconnect):
    /// acknowledge `durable` again.
    Duplicate,
    /// The chunk starts beyond what is held (bytes in between were lost
    /// with a session): drop it and acknowledge `durable`; the sender
    /// resumes there on its next session.
    Gap,
    /// The chunk ends beyond the stream's length: the sender is wrong,
    /// abort the transfer.
    TooLong,
}

pub fn plan_chunk(durable: u64, total: u64, offset: u64, len: u64) -> ChunkPlan {
    let end = offset.saturating_add(len);
    if end > total {
        return ChunkPlan::TooLong;
    }
    if offset > durable {
        return ChunkPlan::Gap;
    }
    if end <= durable {
        return ChunkPlan::Duplicate;
    }
    ChunkPlan::Write {
        skip: (durable - offset) as usize,
        at: durable,
    }
}

/// The next chunk a sender sends of a stream `total` bytes long, from
/// `from`, at most `max` bytes: `(offset, len, last)`, or `None` when
/// everything was sent. An empty stream is one empty last chunk.
pub fn next_chunk(from: u64, total: u64, max: usize) -> Option<(u64, usize, bool)> {
    if from > total || (from == total && total > 0) {
        return None;
    }
    let len = (total - from).min(max.max(1) as u64) as usize;
    Some((from, len, from + len as u64 == total))
}

/// Lowercase hex of a SHA-256.
pub fn hex_sha(sha: &[u8; 32]) -> String {
    hex::encode(sha)
}

/// A 64-digit hex SHA-256 (either case).
pub fn parse_sha(s: &str) -> Option<[u8; 32]> {
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pull_header_round_trips_and_a_short_one_is_not_read() {
        let h = PullHeader {
            size_bytes: 0x0102_0304_0506,
            sha256: [7; 32],
        };
        let b = h.encode();
        assert_eq!(PullHeader::decode(&b), Some(h));
        assert_eq!(PullHeader::decode(&b[..39]), None);
        assert_eq!(h.stream_len(), 40 + 0x0102_0304_0506);
    }

    #[test]
    fn a_chunk_is_written_from_what_is_durable_and_resends_are_acknowledged_again() {
        // Fresh stream.
        assert_eq!(
            plan_chunk(0, 100, 0, 10),
            ChunkPlan::Write { skip: 0, at: 0 }
        );
        // A resend overlapping what is held: only the new tail is written.
        assert_eq!(
            plan_chunk(25, 100, 20, 10),
            ChunkPlan::Write { skip: 5, at: 25 }
        );
        // All held already.
        assert_eq!(plan_chunk(30, 100, 20, 10), ChunkPlan::Duplicate);
        assert_eq!(plan_chunk(30, 100, 30, 0), ChunkPlan::Duplicate);
        // A hole: dropped, the sender resumes from 30.
        assert_eq!(plan_chunk(30, 100, 40, 10), ChunkPlan::Gap);
        // Beyond the announced length.
        assert_eq!(plan_chunk(95, 100, 95, 10), ChunkPlan::TooLong);
        assert_eq!(plan_chunk(0, 100, u64::MAX, 10), ChunkPlan::TooLong);
    }

    #[test]
    fn a_sender_resumes_from_the_acknowledged_offset_and_marks_the_last_chunk() {
        assert_eq!(next_chunk(0, 10, 4), Some((0, 4, false)));
        assert_eq!(next_chunk(8, 10, 4), Some((8, 2, true)));
        assert_eq!(next_chunk(10, 10, 4), None);
        assert_eq!(next_chunk(0, 0, 4), Some((0, 0, true)), "an empty file");
        assert_eq!(next_chunk(11, 10, 4), None);
        // Walk a resumed stream: the bytes sent are what was missing.
        let mut from = 6;
        let mut sent = 0;
        while let Some((off, len, last)) = next_chunk(from, 20, 4) {
            assert_eq!(off, from);
            sent += len;
            from += len as u64;
            if last {
                break;
            }
        }
        assert_eq!(sent, 14);
    }

    #[test]
    fn sha_text_round_trips() {
        let s = [0xab; 32];
        assert_eq!(parse_sha(&hex_sha(&s)), Some(s));
        assert_eq!(parse_sha("ab"), None);
        assert_eq!(parse_sha(&"zz".repeat(32)), None);
    }
}
