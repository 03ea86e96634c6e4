//! The uplink batch decoder (`outpost_uplink::batch::decode`: zstd, the
//! bincode layout, the columnar rollups) fed arbitrary bytes twice: as a
//! payload off the wire, and compressed first, so that the bytes reach the
//! bincode and column decoders behind zstd.
//!
//! Properties: no panic, bounded memory; a batch that decodes encodes
//! again and that encoding decodes to the identical batch (every `f64`
//! bit pattern included).

#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_fuzz::check;

fuzz_target!(|data: &[u8]| {
    check::batch_round_trip(data);
    let compressed = zstd::bulk::compress(data, 1).expect("compressing in memory");
    check::batch_round_trip(&compressed);
});
