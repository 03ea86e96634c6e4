//! Structure-aware: valid messages of one kind, generated from the
//! fuzzer's bytes (`outpost_fuzz::generate`), encoded as a stream of
//! frames, then mutated (bit flips, byte sets, truncation, insertion,
//! deletion, splices, length-field changes) and decoded again.
//!
//! Properties: decode(encode(x)) == x, bit for bit, for every generated
//! message; the framing returns exactly the frames written; the mutated
//! stream never panics the framing or any message decoder.

#![no_main]

use arbitrary::{Result, Unstructured};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use outpost_fuzz::{check, generate, mutate};
use outpost_proto::codec;
use outpost_proto::frame::{LENGTH_PREFIX_BYTES, split_frame, write_frame};
use serde::Serialize;
use serde::de::DeserializeOwned;

const MAX: usize = outpost_proto::DEFAULT_MAX_FRAME_BYTES;

/// Encodes `msg` as one frame of `stream` and checks its round trip.
/// Returns its payload.
fn frame<T: Serialize + DeserializeOwned>(msg: &T, stream: &mut BytesMut) -> Vec<u8> {
    let payload = codec::encode(msg).expect("a generated message encodes");
    let back: T = codec::decode(&payload).expect("an encoded message decodes");
    assert_eq!(
        codec::encode(&back).expect("encodes"),
        payload,
        "decode(encode(x)) != x"
    );
    write_frame(msg, stream, MAX).expect("a generated message fits a frame");
    payload
}

fn run(u: &mut Unstructured) -> Result<()> {
    use generate::*;
    let kind = u.int_in_range(0..=7u8)?;
    let count = u.int_in_range(1..=4)?;
    let mut stream = BytesMut::new();
    let mut payloads = Vec::new();
    for _ in 0..count {
        let p = match kind {
            0 => frame(&agent_frame(u)?, &mut stream),
            1 => frame(&appliance_frame(u)?, &mut stream),
            2 => frame(&enroll_request(u)?, &mut stream),
            3 => frame(&enroll_response(u)?, &mut stream),
            4 => frame(&site_frame(u)?, &mut stream),
            5 => frame(&central_frame(u)?, &mut stream),
            6 => frame(&join_request(u)?, &mut stream),
            _ => frame(&join_response(u)?, &mut stream),
        };
        payloads.push(p);
    }
    let valid = stream.to_vec();

    // The framing gives back exactly what was written.
    let mut buf = stream;
    for p in &payloads {
        let got = split_frame(&mut buf, MAX).expect("a valid frame splits");
        assert_eq!(got.as_deref(), Some(&p[..]));
        assert!(check::every_message(p) >= 1, "a written message decodes");
    }
    assert!(buf.is_empty());

    // Mutated: a length field changed, then byte-level mutations.
    let mut bytes = valid.clone();
    if u.ratio(1, 3)? {
        let which = u.choose_index(payloads.len())?;
        let at: usize = payloads[..which]
            .iter()
            .map(|p| LENGTH_PREFIX_BYTES + p.len())
            .sum();
        let real = payloads[which].len() as u32;
        let len = match u.int_in_range(0..=3)? {
            0 => real.wrapping_add(u.int_in_range(1..=8)?),
            1 => real.wrapping_sub(u.int_in_range(1..=8)?),
            2 => *u.choose(&[0, 1, MAX as u32, MAX as u32 + 1, u32::MAX])?,
            _ => u.arbitrary()?,
        };
        bytes[at..at + LENGTH_PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
    }
    let donor = payloads[u.choose_index(payloads.len())?].clone();
    mutate::bytes(u, &mut bytes, &donor, 6)?;
    let mut buf = BytesMut::from(&bytes[..]);
    while let Ok(Some(payload)) = split_frame(&mut buf, MAX) {
        check::every_message(&payload);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
