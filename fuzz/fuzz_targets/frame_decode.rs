//! The frame decoder (`outpost_proto::frame`) fed arbitrary bytes, as a
//! peer's stream would deliver them.
//!
//! Properties: no panic; every payload the framing yields decodes as each
//! message type or fails cleanly (and what decodes round-trips, see
//! `check::every_message`); feeding the same bytes in chunks yields the
//! same frames and ends the same way as feeding them at once; "need more"
//! leaves the buffer untouched; `FrameReader` over the bytes agrees.

#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use outpost_fuzz::check;
use outpost_proto::frame::{FrameError, FrameReader, LENGTH_PREFIX_BYTES, split_frame};
use outpost_proto::messages::AgentFrame;

/// The appliance's default frame limit.
const MAX: usize = outpost_proto::DEFAULT_MAX_FRAME_BYTES;

/// How the bytes ended: every frame taken and nothing left, a partial
/// frame waiting for more, or an error (its metric label).
#[derive(Debug, PartialEq)]
enum End {
    Clean,
    NeedMore,
    Error(&'static str),
}

/// Splits `buf` until it needs more bytes or fails.
fn split_all(buf: &mut BytesMut, frames: &mut Vec<Vec<u8>>) -> Option<&'static str> {
    loop {
        let before = buf.clone();
        match split_frame(buf, MAX) {
            Ok(Some(payload)) => {
                assert!(!payload.is_empty() && payload.len() <= MAX);
                assert_eq!(
                    before.len(),
                    LENGTH_PREFIX_BYTES + payload.len() + buf.len(),
                    "a frame takes its prefix and payload, nothing else"
                );
                frames.push(payload.to_vec());
            }
            Ok(None) => {
                assert_eq!(&before[..], &buf[..], "need-more leaves the bytes");
                return None;
            }
            Err(e) => {
                assert!(
                    matches!(e, FrameError::Oversize { .. } | FrameError::Empty),
                    "{e}"
                );
                return Some(e.reason_label());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // All at once.
    let mut buf = BytesMut::from(data);
    let mut whole = Vec::new();
    let end = match split_all(&mut buf, &mut whole) {
        Some(label) => End::Error(label),
        None if buf.is_empty() => End::Clean,
        None => End::NeedMore,
    };
    for payload in &whole {
        check::every_message(payload);
    }

    // In chunks (sizes from the data itself, 1 to 64 bytes).
    let chunk = data.first().map_or(1, |b| usize::from(b % 64) + 1);
    let mut buf = BytesMut::new();
    let mut chunked = Vec::new();
    let mut chunked_end = End::Clean;
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        if let Some(label) = split_all(&mut buf, &mut chunked) {
            chunked_end = End::Error(label);
            break;
        }
    }
    if chunked_end == End::Clean && !buf.is_empty() {
        chunked_end = End::NeedMore;
    }
    assert_eq!(whole, chunked, "chunking changed the frames");
    assert_eq!(end, chunked_end, "chunking changed how the bytes end");

    // The async reader over the same bytes (a slice is always ready, so
    // one poll runs it to the end).
    let mut reader = FrameReader::new(MAX);
    let mut src: &[u8] = data;
    let mut read = pin!(async {
        let mut n = 0usize;
        loop {
            match reader.next::<AgentFrame, _>(&mut src).await {
                Ok(Some(_)) => n += 1,
                Ok(None) => return (n, None),
                Err(e) => return (n, Some(e)),
            }
        }
    });
    let Poll::Ready((n, err)) = read.as_mut().poll(&mut Context::from_waker(Waker::noop())) else {
        panic!("reading a slice never waits");
    };
    assert!(n <= whole.len());
    match err {
        None => assert_eq!(
            (end, n),
            (End::Clean, whole.len()),
            "the reader ended cleanly"
        ),
        Some(FrameError::Truncated(_)) => assert_eq!((end, n), (End::NeedMore, whole.len())),
        Some(FrameError::Malformed(_)) => {}
        Some(e @ (FrameError::Oversize { .. } | FrameError::Empty)) => {
            assert_eq!(end, End::Error(e.reason_label()))
        }
        Some(FrameError::Io(e)) => panic!("reading a slice failed: {e}"),
    }
});
