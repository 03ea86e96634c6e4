//! Tables (RocksDB column families) as their owners declare them.
//!
//! The storage crate does not keep a list of every subsystem's tables: each
//! subsystem declares its own [`Table`] constants in its own module (the
//! ingest engine's are in this crate, the alert engine's, the patch cache's
//! and the uplink outbox's in theirs) and exports them as a `TABLES` slice.
//! The binary that opens the database passes the union of the slices of the
//! subsystems it runs to [`crate::Store::open`].
//!
//! A table's declaration fixes how its values are encoded ([`Codec`]), so
//! typed reads and writes cannot pick the wrong codec, and how RocksDB lays
//! it out ([`Layout`]).

/// How a table's values are encoded by the typed methods
/// ([`crate::Store::get`], [`crate::Batch::put`], [`crate::Store::scan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// The one bincode configuration of `outpost_proto::codec`. Every new
    /// table uses it.
    Bincode,
    /// JSON: the alerting tables, which stored JSON before tables declared
    /// their codec. Converting them would need a migration of stored data,
    /// so they stay JSON; do not declare new JSON tables.
    Json,
    /// Values are bytes with a layout of their own (f64 samples, sealed
    /// chunks, big-endian ids, empty markers): only the `_raw` methods
    /// apply; a typed read or write is an error.
    Raw,
}

/// How RocksDB stores a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Small or randomly updated tables: LZ4 at every level.
    Small,
    /// Large, append-mostly time series: zstd at the bottom level and
    /// dynamic level sizes.
    Bulk,
    /// A value per device rewritten on every group commit that touches the
    /// device (its ingest state): the memtable overwrites a key in place
    /// when the new value is no larger, instead of stacking a version per
    /// commit, so it holds about one entry per device and each write
    /// searches a skip list of that size; LZ4 at every level.
    Overwritten,
}

/// A table: its column-family name (stable: it is on disk), its codec and
/// its layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    pub codec: Codec,
    pub layout: Layout,
}

impl Table {
    /// A small bincode table.
    pub const fn new(name: &'static str) -> Table {
        Table {
            name,
            codec: Codec::Bincode,
            layout: Layout::Small,
        }
    }

    /// The same table with another codec.
    pub const fn codec(self, codec: Codec) -> Table {
        Table { codec, ..self }
    }

    /// The same table laid out as a bulk time series.
    pub const fn bulk(self) -> Table {
        Table {
            layout: Layout::Bulk,
            ..self
        }
    }

    /// The same table laid out for values rewritten in place.
    pub const fn overwritten(self) -> Table {
        Table {
            layout: Layout::Overwritten,
            ..self
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}
