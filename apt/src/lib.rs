//! Debian/apt formats and the apt proxy's request parsing, as pure
//! functions over bytes and strings: `Release`/`InRelease` fields
//! ([`release`]), `Packages`/`Sources` indexes ([`packages`]), archive URL
//! normalisation ([`url`]), and the HTTP request head and `Range` header
//! the LAN patch cache reads from clients ([`http`]), and gpgv's verdict on
//! a signature, judged like apt ([`gpgv`]).
//!
//! Owns no storage, no sockets and no clock: callers pass `now`. It must
//! never depend on `outpost-storage` or RocksDB, so that its fuzz targets
//! (`fuzz/fuzz_targets/apt_*.rs`) build in seconds.

pub mod gpgv;
pub mod http;
pub mod packages;
pub mod release;
pub mod url;

/// Why apt metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("release has no SHA256 file list")]
    NoSha256,
    #[error("bad {field} value {value:?}")]
    Field { field: &'static str, value: String },
    #[error("reading index: {0}")]
    Io(#[from] std::io::Error),
}
