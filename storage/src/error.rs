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
    #[error("column family {0} is missing (database created by another program?)")]
    MissingColumnFamily(&'static str),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
