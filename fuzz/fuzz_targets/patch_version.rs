//! dpkg and rpm version orders: two strings (split at the first newline)
//! never panic; dpkg's order is antisymmetric, reflexive and stable
//! through printing; rpm's comparisons are antisymmetric.
#![no_main]

use std::cmp::Ordering;

use libfuzzer_sys::fuzz_target;
use outpost_patch::version::{DebVersion, RpmEvr, rpmvercmp};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (a, b) = text.split_once('\n').unwrap_or((&text, "1.0"));
    let strict = DebVersion::parse(a);
    let lenient = DebVersion::parse_lenient(a);
    if strict.is_ok() {
        assert!(
            lenient.is_ok(),
            "strict accepts what lenient refuses: {a:?}"
        );
    }
    if let (Ok(x), Ok(y)) = (lenient, DebVersion::parse_lenient(b)) {
        assert_eq!(x.compare(&x), Ordering::Equal);
        assert_eq!(x.compare(&y), y.compare(&x).reverse(), "{a:?} vs {b:?}");
        let again = DebVersion::parse_lenient(x.as_str()).expect("printed form parses");
        assert_eq!(again.compare(&x), Ordering::Equal);
        let _ = x.without_binnmu();
    }
    assert_eq!(rpmvercmp(a, b), rpmvercmp(b, a).reverse(), "{a:?} vs {b:?}");
    let (ea, eb) = (RpmEvr::parse(a), RpmEvr::parse(b));
    assert_eq!(ea.compare(&eb), eb.compare(&ea).reverse());
});
