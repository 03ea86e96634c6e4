//! The content store of file transfers (`DATA/files/`): moved to
//! `outpost_storage::blobs` so central keeps its contents the same way.

pub use outpost_storage::blobs::*;
