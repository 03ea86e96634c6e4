//! `Range` header against a body length: a partial answer always lies
//! inside the body, whatever the numbers (no overflow).
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_apt::http::{RangeAnswer, parse_range};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (len, header) = data.split_at(8);
    let len = u64::from_le_bytes(len.try_into().unwrap_or([0; 8]));
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    for len in [len, len >> 32, len & 0xffff] {
        if let RangeAnswer::Partial(r) = parse_range(Some(header), len) {
            assert!(
                r.start < r.end && r.end <= len,
                "{header:?} of {len}: {r:?}"
            );
        }
    }
});
