//! Every message decode through the one codec (`outpost_proto::codec`):
//! arbitrary bytes as a frame payload of each message type either end of
//! an Outpost connection reads (agent session and enrollment, uplink
//! stream and join).
//!
//! Properties: no panic; whatever decodes re-encodes to a canonical form
//! that decodes and re-encodes to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_fuzz::check;

fuzz_target!(|data: &[u8]| {
    check::every_message(data);
});
