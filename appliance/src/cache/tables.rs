//! The patch cache's tables in the appliance database. Only the cache
//! reads and writes them.

use outpost_storage::Table;

/// Upstream URL → cached entry (content hash, validators).
pub const CACHE_URLS: Table = Table::new("cache_urls");
/// sha256 → blob metadata (size, last access, hits).
pub const CACHE_BLOBS: Table = Table::new("cache_blobs");
/// sha256 → requests of that file answered from upstream (u64), beside
/// `cache_blobs` whose record encoding is fixed on disk.
pub const CACHE_MISSES: Table = Table::new("cache_misses");
/// Upstream URL → size and sha256 a verified index states.
pub const CACHE_EXPECT: Table = Table::new("cache_expect");
/// Suite URL (`…/dists/SUITE`) → last accepted InRelease.
pub const CACHE_SUITES: Table = Table::new("cache_suites");
/// Upstream URL → pin (never evicted).
pub const CACHE_PINS: Table = Table::new("cache_pins");
/// Who holds a pin (a deployment): empty values under two keys,
/// `o` + owner + URL (an owner's pins) and `u` + URL + owner (a URL's
/// owners); see [`super::ops::owner_key`].
pub const CACHE_PIN_OWNERS: Table =
    Table::new("cache_pin_owners").codec(outpost_storage::Codec::Raw);

/// Every table of the cache, for `Store::open`.
pub const TABLES: &[Table] = &[
    CACHE_URLS,
    CACHE_BLOBS,
    CACHE_MISSES,
    CACHE_EXPECT,
    CACHE_SUITES,
    CACHE_PINS,
    CACHE_PIN_OWNERS,
];
