//! The patch cache's request path on arbitrary client bytes: request head,
//! then the target as an upstream URL and the `Range` header, as
//! `appliance/src/cache/server.rs` uses them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_apt::http::{RangeAnswer, parse_range, parse_request};
use outpost_apt::url::UpstreamUrl;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((req, used))) = parse_request(data) else {
        return;
    };
    assert!(used <= data.len() && used > 0);
    let _ = (req.keep_alive(), req.has_body(), req.is_head());
    if let Ok(url) = UpstreamUrl::parse_target(&req.target) {
        let _ = (url.kind(), url.suite(), url.archive_root(), url.authority());
    }
    for len in [0u64, 1, 1000, u64::MAX] {
        if let RangeAnswer::Partial(r) = parse_range(req.header("range"), len) {
            assert!(r.start < r.end && r.end <= len, "{r:?} of {len}");
        }
    }
});
