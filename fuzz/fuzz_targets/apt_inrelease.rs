//! The signed text of an `InRelease`: fields and the SHA-256 file list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_apt::release::parse_release;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(info) = parse_release(&text) {
        assert!(info.files.len() <= text.lines().count());
        for (path, _) in &info.files {
            assert!(!path.is_empty());
        }
    }
});
