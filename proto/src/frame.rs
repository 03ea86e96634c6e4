//! Length-prefixed framing.
//!
//! A frame is a 4-byte big-endian payload length followed by the payload (one
//! [`crate::codec`]-encoded message). The length is checked against the
//! configured maximum *before* any buffer grows for the payload, so a peer
//! cannot make us allocate more than `max_frame_bytes` per connection. A zero
//! length is malformed (no message encodes to zero bytes).
//!
//! [`FrameCodec`] implements tokio-util's `Decoder`/`Encoder` so callers can
//! wrap any byte stream; it never touches I/O itself.

use std::io;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder};

use crate::codec::{self, CodecError};

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversize { len: usize, max: usize },
    #[error("malformed frame: zero-length payload")]
    Empty,
    #[error("malformed frame: stream ended inside a frame ({0} bytes buffered)")]
    Truncated(usize),
    #[error(transparent)]
    Malformed(#[from] CodecError),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl FrameError {
    /// A short stable label for metrics (`rejects_total{reason=...}`).
    pub fn reason_label(&self) -> &'static str {
        match self {
            FrameError::Oversize { .. } => "oversize_frame",
            FrameError::Empty | FrameError::Malformed(_) | FrameError::Truncated(_) => {
                "malformed_frame"
            }
            FrameError::Io(_) => "io",
        }
    }
}

/// Splits one frame payload off the front of `buf`, if a whole frame is there.
///
/// Returns `Ok(None)` when more bytes are needed (and reserves room for the
/// announced payload, which is at most `max`).
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, FrameError> {
    if buf.len() < LENGTH_PREFIX_BYTES {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(FrameError::Oversize { len, max });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    let total = LENGTH_PREFIX_BYTES + len;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(LENGTH_PREFIX_BYTES);
    Ok(Some(buf.split_to(len)))
}

/// Appends `msg` as one frame to `out`. Fails if the encoding exceeds `max`,
/// leaving `out` untouched.
pub fn write_frame<T: Serialize + ?Sized>(
    msg: &T,
    out: &mut BytesMut,
    max: usize,
) -> Result<(), FrameError> {
    let payload = codec::encode(msg)?;
    let len = payload.len();
    if len > max || len > u32::MAX as usize {
        return Err(FrameError::Oversize { len, max });
    }
    out.reserve(LENGTH_PREFIX_BYTES + len);
    out.put_u32(len as u32);
    out.extend_from_slice(&payload);
    Ok(())
}

/// Encodes one message as a standalone frame.
pub fn encode_frame<T: Serialize + ?Sized>(msg: &T, max: usize) -> Result<BytesMut, FrameError> {
    let mut out = BytesMut::new();
    write_frame(msg, &mut out, max)?;
    Ok(out)
}

/// Decodes one frame payload into a message.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    Ok(codec::decode(payload)?)
}

/// Reads frames from any async byte stream (a QUIC receive stream in
/// practice) with a bounded buffer: at most one maximum-size frame plus one
/// read chunk is ever buffered.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max_frame_bytes: usize,
    /// Bytes read so far (for metrics).
    bytes_read: u64,
}

/// Bytes requested from the stream per read.
const READ_CHUNK_BYTES: usize = 8 * 1024;

impl FrameReader {
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameReader {
            buf: BytesMut::new(),
            max_frame_bytes,
            bytes_read: 0,
        }
    }

    /// Decodes the next frame already buffered, without reading.
    pub fn try_next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match split_frame(&mut self.buf, self.max_frame_bytes)? {
            Some(payload) => Ok(Some(decode_payload(&payload)?)),
            None => Ok(None),
        }
    }

    /// Reads more bytes from `r`. Returns `false` on end of stream.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<bool, FrameError> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK_BYTES {
            self.buf.reserve(READ_CHUNK_BYTES);
        }
        let n = r.read_buf(&mut self.buf).await?;
        self.bytes_read += n as u64;
        Ok(n > 0)
    }

    /// Reads the next frame. `Ok(None)` on a clean end of stream (between
    /// frames); a stream that ends inside a frame is an error.
    pub async fn next<T: DeserializeOwned, R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<T>, FrameError> {
        loop {
            if let Some(m) = self.try_next()? {
                return Ok(Some(m));
            }
            if !self.fill(r).await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated(self.buf.len()))
                };
            }
        }
    }

    /// Adds bytes read elsewhere (a QUIC stream's chunks, which cost no
    /// buffer here while nothing arrives).
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.bytes_read += data.len() as u64;
    }

    /// Total bytes read from the stream.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Releases buffer memory while idle (many mostly idle connections).
    pub fn shrink_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }
}

/// Bytes waiting to be written to one stream (a session flow's QUIC send
/// stream in practice). [`PendingWrites::drive`] writes them and is
/// cancel-safe, so a task can race the writes of several streams with its
/// reads in one `select!`: a stream whose peer stopped reading holds up only
/// its own bytes.
#[derive(Debug, Default)]
pub struct PendingWrites {
    buf: BytesMut,
    /// Bytes written so far (for metrics).
    written: u64,
}

impl PendingWrites {
    pub fn new() -> Self {
        PendingWrites::default()
    }

    /// Queues bytes (whole frames) behind what is pending.
    pub fn push(&mut self, data: &[u8]) {
        if self.buf.is_empty() && self.buf.capacity() > 64 * 1024 {
            // Release what a burst grew, on the next idle push.
            self.buf = BytesMut::new();
        }
        self.buf.extend_from_slice(data);
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn poll_write_some<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        while !self.buf.is_empty() {
            match std::pin::Pin::new(&mut *w).poll_write(cx, &self.buf) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the stream takes no more bytes",
                    )));
                }
                Poll::Ready(Ok(n)) => {
                    self.buf.advance(n);
                    self.written += n as u64;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes until nothing is pending. Cancel-safe: bytes are removed only
    /// once the stream took them.
    pub async fn drive<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_write_some(w, cx)).await
    }

    /// Writes what the stream takes now, without waiting; the rest stays
    /// pending for [`PendingWrites::drive`].
    pub async fn write_now<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        std::future::poll_fn(|cx| match self.poll_write_some(w, cx) {
            std::task::Poll::Pending => std::task::Poll::Ready(Ok(())),
            ready => ready,
        })
        .await
    }
}

/// A typed frame codec: decodes `In` messages, encodes `Out` messages.
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    max_frame_bytes: usize,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameCodec {
            max_frame_bytes,
            _types: PhantomData,
        }
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }
}

impl<In, Out> Clone for FrameCodec<In, Out> {
    fn clone(&self) -> Self {
        Self::new(self.max_frame_bytes)
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        match split_frame(src, self.max_frame_bytes)? {
            Some(payload) => Ok(Some(decode_payload(&payload)?)),
            None => Ok(None),
        }
    }
}

impl<In, Out: Serialize> Encoder<&Out> for FrameCodec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, item: &Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        write_frame(item, dst, self.max_frame_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{AgentFrame, sample_agent_frames};
    use proptest::prelude::*;

    const MAX: usize = 64 * 1024;

    #[test]
    fn frames_round_trip() {
        let mut codec = FrameCodec::<AgentFrame, AgentFrame>::new(MAX);
        let mut buf = BytesMut::new();
        let frames = sample_agent_frames();
        for f in &frames {
            codec.encode(f, &mut buf).unwrap();
        }
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        assert_eq!(out, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversize_length_is_rejected_before_the_payload_arrives() {
        let mut buf = BytesMut::new();
        buf.put_u32((MAX + 1) as u32);
        let cap_before = buf.capacity();
        let err = split_frame(&mut buf, MAX).unwrap_err();
        assert!(matches!(err, FrameError::Oversize { len, max } if len == MAX + 1 && max == MAX));
        assert_eq!(err.reason_label(), "oversize_frame");
        assert_eq!(buf.capacity(), cap_before, "no allocation for the payload");
    }

    #[test]
    fn zero_length_frame_is_malformed() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert!(matches!(split_frame(&mut buf, MAX), Err(FrameError::Empty)));
    }

    #[test]
    fn partial_frame_waits_for_more_bytes() {
        let full = encode_frame(&sample_agent_frames()[0], MAX).unwrap();
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert!(
                split_frame(&mut buf, MAX).unwrap().is_none(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn encoding_over_the_limit_fails_and_leaves_buffer_untouched() {
        let big = AgentFrame::Goodbye {
            reason: "x".repeat(100),
        };
        let mut buf = BytesMut::from(&b"keep"[..]);
        assert!(matches!(
            write_frame(&big, &mut buf, 10),
            Err(FrameError::Oversize { .. })
        ));
        assert_eq!(&buf[..], b"keep");
    }

    #[tokio::test]
    async fn reader_reads_frames_across_arbitrary_chunking() {
        let frames = sample_agent_frames();
        let mut bytes = BytesMut::new();
        for f in &frames {
            write_frame(f, &mut bytes, MAX).unwrap();
        }
        let (mut tx, mut rx) = tokio::io::duplex(7);
        let data = bytes.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&data).await.unwrap();
        });
        let mut reader = FrameReader::new(MAX);
        let mut got = Vec::new();
        while let Some(f) = reader.next::<AgentFrame, _>(&mut rx).await.unwrap() {
            got.push(f);
        }
        writer.await.unwrap();
        assert_eq!(got, frames);
        assert_eq!(reader.bytes_read(), bytes.len() as u64);
    }

    #[tokio::test]
    async fn reader_reports_a_stream_cut_inside_a_frame() {
        let full = encode_frame(&sample_agent_frames()[1], MAX).unwrap();
        let mut cut = &full[..full.len() - 1];
        let mut reader = FrameReader::new(MAX);
        let err = reader.next::<AgentFrame, _>(&mut cut).await.unwrap_err();
        assert!(matches!(err, FrameError::Truncated(_)), "{err}");
        assert_eq!(err.reason_label(), "malformed_frame");
    }

    #[tokio::test]
    async fn pending_writes_survive_cancellation_and_a_slow_reader() {
        use tokio::io::AsyncReadExt;
        let (mut tx, mut rx) = tokio::io::duplex(16);
        let mut out = PendingWrites::new();
        let data: Vec<u8> = (0..200u8).collect();
        out.push(&data);
        // Only 16 bytes fit; a write that cannot finish is dropped midway.
        out.write_now(&mut tx).await.unwrap();
        assert_eq!(out.len(), 200 - 16);
        let cancelled =
            tokio::time::timeout(std::time::Duration::from_millis(10), out.drive(&mut tx)).await;
        assert!(cancelled.is_err());
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 200];
            rx.read_exact(&mut got).await.unwrap();
            got
        });
        out.drive(&mut tx).await.unwrap();
        assert!(out.is_empty());
        assert_eq!(out.written(), 200);
        assert_eq!(reader.await.unwrap(), data, "every byte once, in order");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut codec = FrameCodec::<AgentFrame, AgentFrame>::new(MAX);
            let mut buf = BytesMut::from(&bytes[..]);
            // Either frames, a clean error, or "need more"; never a panic.
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }

        #[test]
        fn mutated_valid_frames_never_panic(
            which in 0usize..8,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            truncate in any::<Option<usize>>(),
        ) {
            let frames = sample_agent_frames();
            let frame = &frames[which % frames.len()];
            let mut bytes = encode_frame(frame, MAX).unwrap().to_vec();
            for (pos, val) in flips {
                let i = pos % bytes.len();
                bytes[i] ^= val;
            }
            if let Some(t) = truncate {
                bytes.truncate(t % (bytes.len() + 1));
            }
            let mut codec = FrameCodec::<AgentFrame, AgentFrame>::new(MAX);
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = codec.decode(&mut buf);
        }

        #[test]
        fn payload_decode_of_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_payload::<AgentFrame>(&bytes);
            let _ = decode_payload::<crate::messages::ApplianceFrame>(&bytes);
            let _ = decode_payload::<crate::messages::EnrollRequest>(&bytes);
            let _ = decode_payload::<crate::messages::EnrollResponse>(&bytes);
        }
    }
}
