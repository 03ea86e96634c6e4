//! OSV import (one record, an array, or JSON lines): imported or refused
//! with a position, never a panic; every kept advisory evaluates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_patch::catalog::osv::import_osv;
use outpost_patch::catalog::{Catalog, ImportOptions};
use outpost_patch::version::DebVersion;

fuzz_target!(|data: &[u8]| {
    let mut options = ImportOptions::new("fuzz", "fuzz", 0);
    options.max_advisories = 1_000;
    if let Ok(source) = import_osv(data, options) {
        let catalog = Catalog::new().with_source(source);
        let probe = DebVersion::parse("1.0-1").expect("valid");
        for release in catalog.releases() {
            let Some(handle) = catalog.release(&release) else {
                continue;
            };
            // Package names are not enumerable through the public API;
            // evaluate what a device with a common name would see.
            for name in ["p", "openssl", "curl"] {
                for a in catalog.advisories(&handle, name) {
                    let _ = a.advisory.affected.exposure(&probe);
                }
            }
        }
    }
});
