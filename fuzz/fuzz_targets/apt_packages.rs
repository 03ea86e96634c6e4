//! `Packages` / `Sources` indexes, plain or compressed (the first byte
//! picks the kind and the compression): every listed entry is reported.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_apt::packages::{Compression, PackageIndex, decompress, for_each_package_file};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let kind = if sel & 1 == 0 {
        PackageIndex::Packages
    } else {
        PackageIndex::Sources
    };
    let comp = match (sel >> 1) % 3 {
        0 => Compression::None,
        1 => Compression::Gzip,
        _ => Compression::Xz,
    };
    let mut calls = 0u64;
    // Bound decompressed input so a compression bomb stays quick.
    let reader = std::io::Read::take(decompress(body, comp), 16 << 20);
    if let Ok(n) = for_each_package_file(reader, kind, |path, _| {
        calls += 1;
        assert!(!path.is_empty() || kind == PackageIndex::Packages);
    }) {
        assert_eq!(n, calls);
    }
});
