//! Debian Security Tracker JSON import: any input is imported or refused
//! with a position, never a panic; limits hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_patch::catalog::tracker::import_debian_tracker;
use outpost_patch::catalog::{Catalog, ImportError, ImportOptions};

fuzz_target!(|data: &[u8]| {
    let mut options = ImportOptions::new("fuzz", "fuzz", 0);
    options.max_advisories = 1_000;
    options.max_description_bytes = 64;
    match import_debian_tracker(data, options) {
        Ok(source) => {
            assert!(source.info.stats.advisories <= 1_000);
            let catalog = Catalog::new().with_source(source);
            assert!(catalog.changes_since(&catalog).is_empty());
            let _ = Catalog::new().changes_since(&catalog);
        }
        Err(ImportError::Malformed { reason, .. }) => assert!(!reason.is_empty()),
        Err(_) => {}
    }
});
