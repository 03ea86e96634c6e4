//! The agent's record of file transfers in progress (sled, `STATE/files`,
//! tree `transfers`: transfer id → [`Entry`] through the one codec). An
//! entry is written and flushed before the first byte of its transfer
//! moves and removed when the transfer ends; what it holds is what a
//! restarted agent needs to resume.

use std::path::Path;

use outpost_proto::codec;
use outpost_proto::ids::{CommandId, TransferId};
use serde::{Deserialize, Serialize};

/// Bytes of sled page cache (explicit: the default costs RSS).
const SLED_CACHE_BYTES: u64 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("file transfer store (sled): {0}")]
    Sled(#[from] sled::Error),
    #[error("file transfer entry is malformed: {0}")]
    Codec(#[from] codec::CodecError),
}

/// A transfer in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    Push {
        command: CommandId,
        /// The file written at the end (resolved inside a root).
        target: String,
        /// The temporary file beside it; its length is what is durable.
        temp: String,
        size: u64,
        sha256: [u8; 32],
        mode: Option<u32>,
        /// User name, uid, gid.
        owner: Option<(String, u32, u32)>,
    },
    Pull {
        command: CommandId,
        /// The file read (resolved inside a root).
        path: String,
        size: u64,
        sha256: [u8; 32],
        /// Stream bytes (header included) the appliance acknowledged.
        acked: u64,
    },
}

impl Entry {
    pub fn command(&self) -> CommandId {
        match self {
            Entry::Push { command, .. } | Entry::Pull { command, .. } => *command,
        }
    }
}

#[derive(Clone)]
pub struct FileStore {
    db: sled::Db,
    tree: sled::Tree,
}

impl FileStore {
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(Some(200))
            .open()?;
        let tree = db.open_tree("transfers")?;
        Ok(FileStore { db, tree })
    }

    pub fn put(&self, t: TransferId, e: &Entry) -> Result<(), StoreError> {
        self.tree.insert(t.0, codec::encode(e)?)?;
        Ok(())
    }

    pub fn remove(&self, t: TransferId) -> Result<(), StoreError> {
        self.tree.remove(t.0)?;
        Ok(())
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Every entry (a malformed one is skipped: it cannot be resumed).
    pub fn entries(&self) -> Result<Vec<(TransferId, Entry)>, StoreError> {
        let mut v = Vec::new();
        for kv in self.tree.iter() {
            let (k, val) = kv?;
            let Ok(id) = <[u8; 16]>::try_from(&k[..]) else {
                continue;
            };
            if let Ok(e) = codec::decode::<Entry>(&val) {
                v.push((TransferId(id), e));
            }
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_survive_a_reopen_and_removal_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let e = Entry::Pull {
            command: CommandId([1; 16]),
            path: "/x".into(),
            size: 3,
            sha256: [2; 32],
            acked: 40,
        };
        {
            let s = FileStore::open(dir.path()).unwrap();
            s.put(TransferId([9; 16]), &e).unwrap();
            s.flush().await.unwrap();
        }
        let s = FileStore::open(dir.path()).unwrap();
        assert_eq!(s.entries().unwrap(), vec![(TransferId([9; 16]), e.clone())]);
        assert_eq!(e.command(), CommandId([1; 16]));
        s.remove(TransferId([9; 16])).unwrap();
        assert!(s.entries().unwrap().is_empty());
    }
}
