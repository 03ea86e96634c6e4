//! Storage errors.

use outpost_proto::codec::CodecError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("RocksDB error: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt value in column family {cf}: {source}")]
    Corrupt {
        cf: &'static str,
        #[source]
        source: CodecError,
    },
    #[error("could not encode a value for {cf}: {source}")]
    Encode {
        cf: &'static str,
        #[source]
        source: CodecError,
    },
    #[error(
        "table {0} was not declared when the database was opened (add its owner's TABLES to Store::open)"
    )]
    UndeclaredTable(&'static str),
    #[error("table {0} stores raw bytes: use the _raw methods")]
    RawTable(&'static str),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
