//! Structure-aware: a valid uplink batch generated from the fuzzer's bytes
//! (`outpost_fuzz::generate::site_batch`: devices, rollups with realistic
//! and extreme values, alert transitions of every state, foreign tenants),
//! encoded, decoded; then its decompressed bytes mutated, compressed again
//! and decoded.
//!
//! Properties: a batch within the decoder's limits (`check_limits`, what
//! the compactor keeps to) decodes to itself bit for bit, and one over a
//! limit is refused as over a limit; the batch is written in the oldest
//! format that carries it (`format_of`); the mutated batch decodes or
//! fails cleanly, and what decodes round-trips.

#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use outpost_fuzz::{check, generate, mutate};
use outpost_uplink::batch::{self, BatchError};

/// Our own zstd frame, decompressed (allocating what it holds, not the
/// decoder's 64 MiB bound).
fn unzstd(payload: &[u8]) -> Vec<u8> {
    zstd::stream::decode_all(payload).expect("our own zstd")
}

fn run(u: &mut Unstructured) -> Result<()> {
    let b = generate::site_batch(u)?;
    let level = u.int_in_range(1..=3)?;
    let payload = batch::encode(&b, level).expect("a generated batch encodes");
    match (b.check_limits(), batch::decode(&payload)) {
        (Ok(()), Ok(back)) => assert!(
            check::batches_identical(&b, &back),
            "decode(encode(b)) != b:\n{b:?}\n{back:?}"
        ),
        (Ok(()), Err(e)) => panic!("a batch within the limits does not decode: {e}\n{b:?}"),
        (Err(over), Ok(_)) => panic!("a batch over a limit decodes ({over})"),
        (Err(_), Err(BatchError::OverLimit(_))) => {}
        (Err(over), Err(e)) => panic!("a batch over a limit ({over}) fails otherwise: {e}"),
    }
    let mut raw = unzstd(&payload);
    assert_eq!(u16::from(raw[0]), batch::format_of(&b), "format byte");

    // Mutate the decompressed layout (a donor: another generated batch).
    let other = generate::site_batch(u)?;
    let donor = unzstd(&batch::encode(&other, 1).expect("encodes"));
    mutate::bytes(u, &mut raw, &donor, 6)?;
    let mutated = zstd::bulk::compress(&raw, 1).expect("compressing in memory");
    check::batch_round_trip(&mutated);

    // And the compressed bytes themselves.
    let mut z = payload;
    mutate::bytes(u, &mut z, &[], 3)?;
    check::batch_round_trip(&z);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
