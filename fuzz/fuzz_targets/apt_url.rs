//! Upstream URL normalisation: never panics, and a normalised URL parses
//! back to itself (proxy form and mirror form reach one cache entry).
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_apt::url::UpstreamUrl;

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(url) = UpstreamUrl::parse_target(target) else {
        return;
    };
    assert!(url.path.starts_with('/'), "{url:?}");
    assert!(
        !url.path.split('/').any(|s| s == ".." || s == "."),
        "{url:?}"
    );
    let again = UpstreamUrl::parse_absolute(&url.to_string())
        .unwrap_or_else(|e| panic!("{url} does not parse back: {e}"));
    assert_eq!(again, url);
    let _ = (url.kind(), url.file_name(), url.key());
    for (suite, rel) in url.suite_candidates() {
        assert!(!rel.is_empty());
        assert_eq!(suite.file(&rel), url, "{suite:?} + {rel}");
    }
    if let Some(suite) = url.release_suite() {
        assert!(!suite.expected_dist().is_empty());
        assert!(url.path.starts_with(&suite.url.path));
    }
    if let Some(root) = url.archive_root() {
        assert!(url.path.starts_with(&root.path));
    }
});
