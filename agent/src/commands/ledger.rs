//! The agent's command ledger (sled, `STATE/commands`): every command id
//! the agent has recorded, what became of it, and its output not yet
//! acknowledged by the appliance.
//!
//! * tree `commands`: id (16 bytes) → [`Entry`] (the one codec);
//! * tree `output`: id | offset (8, BE) → output bytes;
//! * tree `reboots`: id → the boot id (text) recorded before a reboot was
//!   scheduled (see [`super::reboot`]).
//! * tree `reboot_due`: id → when a scheduled reboot is due (ms since the
//!   epoch, big-endian u64): a cancel after it is too late.
//!
//! An id is written (and flushed) before the agent acknowledges the
//! command, and marked `running` (flushed) before its process starts: after
//! a crash, a `running` entry is reported `interrupted`, never started
//! again (so is a `recorded` one: the spec is not kept, and the appliance,
//! which had the acknowledgement, does not send it again). This module
//! owns the ledger's layout; it runs nothing.

use std::path::Path;

use outpost_proto::codec;
use outpost_proto::ids::CommandId;
use outpost_proto::messages::{CommandOutcome, CommandResult};
use serde::{Deserialize, Serialize};

/// Bytes of sled page cache (explicit: the default costs RSS).
const SLED_CACHE_BYTES: u64 = 1024 * 1024;

/// Finished entries whose result the appliance acknowledged are kept this
/// long (an id is never run twice while its entry exists), then pruned.
pub const KEEP_FINISHED_MS: u64 = 40 * 24 * 3600 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("command ledger (sled): {0}")]
    Sled(#[from] sled::Error),
    #[error("command ledger entry is malformed: {0}")]
    Codec(#[from] codec::CodecError),
}

pub type Result<T> = std::result::Result<T, LedgerError>;

/// Where a recorded command stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Recorded (and acknowledged); the process has not been started.
    Recorded,
    /// The process was (about to be) started.
    Running { started_ms: u64 },
    /// Over: the result is final.
    Finished(CommandResult),
}

/// One recorded command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub phase: Phase,
    pub recorded_ms: u64,
    /// Output bytes produced (the next offset).
    pub output_len: u64,
    /// Output the appliance acknowledged (bytes below are deleted here).
    pub output_acked: u64,
    /// The appliance acknowledged the result.
    pub result_acked: bool,
}

impl Entry {
    pub fn new(now_ms: u64) -> Entry {
        Entry {
            phase: Phase::Recorded,
            recorded_ms: now_ms,
            output_len: 0,
            output_acked: 0,
            result_acked: false,
        }
    }

    pub fn result(&self) -> Option<&CommandResult> {
        match &self.phase {
            Phase::Finished(r) => Some(r),
            _ => None,
        }
    }
}

/// The ledger (cheap to clone).
#[derive(Clone)]
pub struct Ledger {
    db: sled::Db,
    commands: sled::Tree,
    output: sled::Tree,
    reboots: sled::Tree,
    reboot_due: sled::Tree,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

fn output_key(id: CommandId, offset: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&id.0);
    k[16..].copy_from_slice(&offset.to_be_bytes());
    k
}

fn id_of(k: &[u8]) -> Option<CommandId> {
    let b: [u8; 16] = k.get(..16)?.try_into().ok()?;
    Some(CommandId(b))
}

impl Ledger {
    pub fn open(dir: &Path) -> Result<Ledger> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(Some(200))
            .open()?;
        let commands = db.open_tree("commands")?;
        let output = db.open_tree("output")?;
        let reboots = db.open_tree("reboots")?;
        let reboot_due = db.open_tree("reboot_due")?;
        Ok(Ledger {
            db,
            commands,
            output,
            reboots,
            reboot_due,
        })
    }

    pub fn get(&self, id: CommandId) -> Result<Option<Entry>> {
        match self.commands.get(id.0)? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Writes an entry (not flushed: call [`Ledger::flush`] where the
    /// write must be durable before going on).
    pub fn put(&self, id: CommandId, e: &Entry) -> Result<()> {
        self.commands.insert(id.0, codec::encode(e)?)?;
        Ok(())
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Every entry (start-up and session-up scans; the ledger is small).
    pub fn entries(&self) -> Result<Vec<(CommandId, Entry)>> {
        let mut out = Vec::new();
        for item in self.commands.iter() {
            let (k, v) = item?;
            if let Some(id) = id_of(&k) {
                out.push((id, codec::decode(&v)?));
            }
        }
        Ok(out)
    }

    /// Appends output at `offset`.
    pub fn put_output(&self, id: CommandId, offset: u64, bytes: &[u8]) -> Result<()> {
        self.output.insert(output_key(id, offset), bytes)?;
        Ok(())
    }

    /// Stored output chunks of `id` at or after `from` (offset, bytes),
    /// at most `max` chunks.
    pub fn output_from(&self, id: CommandId, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        // The chunk containing `from` starts at or before it.
        let start = match self
            .output
            .range(output_key(id, 0)..=output_key(id, from))
            .next_back()
        {
            Some(item) => item?.0.to_vec(),
            None => output_key(id, from).to_vec(),
        };
        for item in self.output.range(start..) {
            let (k, v) = item?;
            if id_of(&k) != Some(id) || out.len() >= max {
                break;
            }
            let off = u64::from_be_bytes(k[16..24].try_into().unwrap_or([0; 8]));
            if off + v.len() as u64 <= from {
                continue;
            }
            out.push((off, v.to_vec()));
        }
        Ok(out)
    }

    /// Deletes stored output of `id` entirely below `up_to`.
    pub fn drop_output_below(&self, id: CommandId, up_to: u64) -> Result<()> {
        let mut dead = Vec::new();
        for item in self.output.range(output_key(id, 0)..output_key(id, up_to)) {
            let (k, v) = item?;
            let off = u64::from_be_bytes(k[16..24].try_into().unwrap_or([0; 8]));
            if off + v.len() as u64 <= up_to {
                dead.push(k);
            }
        }
        for k in dead {
            self.output.remove(k)?;
        }
        Ok(())
    }

    /// Output bytes stored for `id` and not yet acknowledged, oldest
    /// chunk first: (offset, length).
    pub fn output_chunks(&self, id: CommandId) -> Result<Vec<(u64, usize)>> {
        let mut out = Vec::new();
        for item in self
            .output
            .range(output_key(id, 0)..=output_key(id, u64::MAX))
        {
            let (k, v) = item?;
            let off = u64::from_be_bytes(k[16..24].try_into().unwrap_or([0; 8]));
            out.push((off, v.len()));
        }
        Ok(out)
    }

    /// The oldest stored output chunk of `id` starting at or after
    /// `from`: (offset, length).
    pub fn first_output_chunk_from(
        &self,
        id: CommandId,
        from: u64,
    ) -> Result<Option<(u64, usize)>> {
        match self
            .output
            .range(output_key(id, from)..=output_key(id, u64::MAX))
            .next()
        {
            Some(item) => {
                let (k, v) = item?;
                let off = u64::from_be_bytes(k[16..24].try_into().unwrap_or([0; 8]));
                Ok(Some((off, v.len())))
            }
            None => Ok(None),
        }
    }

    pub fn remove_output_chunk(&self, id: CommandId, offset: u64) -> Result<()> {
        self.output.remove(output_key(id, offset))?;
        Ok(())
    }

    /// Records the boot id before a reboot is scheduled (not flushed).
    pub fn put_reboot(&self, id: CommandId, boot_id: &str) -> Result<()> {
        self.reboots.insert(id.0, boot_id.as_bytes())?;
        Ok(())
    }

    /// Records when a scheduled reboot is due (not flushed).
    pub fn put_reboot_due(&self, id: CommandId, due_ms: u64) -> Result<()> {
        self.reboot_due.insert(id.0, &due_ms.to_be_bytes())?;
        Ok(())
    }

    /// When a scheduled reboot is due (`None`: not recorded, e.g. by an
    /// older agent).
    pub fn reboot_due(&self, id: CommandId) -> Result<Option<u64>> {
        Ok(self
            .reboot_due
            .get(id.0)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes))
    }

    /// Forgets a reboot (cancelled): its boot id and due time.
    pub fn remove_reboot(&self, id: CommandId) -> Result<()> {
        self.reboots.remove(id.0)?;
        self.reboot_due.remove(id.0)?;
        Ok(())
    }

    /// The boot id recorded for a reboot command.
    pub fn reboot_boot_id(&self, id: CommandId) -> Result<Option<String>> {
        Ok(self
            .reboots
            .get(id.0)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// At start-up: a command that was running when the agent stopped is
    /// finished `interrupted` (never started again). Returns those ids.
    /// A running reboot is finished `exited 0` if the host's boot id
    /// (`boot_id`) differs from the one recorded before it, with both ids
    /// in its output; otherwise it stays running (the reboot may still be
    /// pending). Also prunes finished, acknowledged entries older than
    /// [`KEEP_FINISHED_MS`].
    pub fn recover(&self, now_ms: u64, boot_id: Option<&str>) -> Result<Vec<CommandId>> {
        self.recover_except(now_ms, boot_id, &std::collections::HashSet::new())
    }

    /// As [`Ledger::recover`], but the `running` commands in `resumable`
    /// stay running: their work survives a restart (file transfers, which
    /// resume from what is durable).
    pub fn recover_except(
        &self,
        now_ms: u64,
        boot_id: Option<&str>,
        resumable: &std::collections::HashSet<CommandId>,
    ) -> Result<Vec<CommandId>> {
        let mut interrupted = Vec::new();
        for (id, mut e) in self.entries()? {
            let reboot = match &e.phase {
                Phase::Running { .. } => self.reboot_boot_id(id)?,
                _ => None,
            };
            match &e.phase {
                Phase::Running { .. } if resumable.contains(&id) => {}
                Phase::Running { .. } if reboot.is_some() => {
                    let before = reboot.unwrap_or_default();
                    if super::reboot::rebooted(&before, boot_id) {
                        let line = format!(
                            "the device came back: boot id {} (was {before})\n",
                            boot_id.unwrap_or_default()
                        );
                        self.put_output(id, e.output_len, line.as_bytes())?;
                        e.output_len += line.len() as u64;
                        e.phase = Phase::Finished(CommandResult {
                            id,
                            outcome: CommandOutcome::Exited { code: 0 },
                            output_bytes: e.output_len,
                            finished_ms: now_ms,
                        });
                        self.put(id, &e)?;
                        self.remove_reboot(id)?;
                    }
                }
                Phase::Running { .. } => {
                    e.phase = Phase::Finished(CommandResult {
                        id,
                        outcome: CommandOutcome::Interrupted,
                        output_bytes: e.output_len,
                        finished_ms: now_ms,
                    });
                    self.put(id, &e)?;
                    interrupted.push(id);
                }
                Phase::Finished(r)
                    if e.result_acked
                        && e.output_acked >= e.output_len
                        && now_ms.saturating_sub(r.finished_ms) > KEEP_FINISHED_MS =>
                {
                    self.commands.remove(id.0)?;
                    self.remove_reboot(id)?;
                    self.drop_output_below(id, u64::MAX)?;
                }
                _ => {}
            }
        }
        self.db.flush()?;
        Ok(interrupted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_command_running_at_a_crash_is_interrupted_after_restart_and_output_survives() {
        let dir = tempfile::tempdir().unwrap();
        let id = CommandId([3; 16]);
        {
            let l = crate::reopen_sled(|| Ledger::open(dir.path()));
            let mut e = Entry::new(1);
            e.phase = Phase::Running { started_ms: 2 };
            e.output_len = 5;
            l.put(id, &e).unwrap();
            l.put_output(id, 0, b"hello").unwrap();
            l.flush().await.unwrap();
        }
        let l = crate::reopen_sled(|| Ledger::open(dir.path()));
        assert_eq!(l.recover(10, Some("b1")).unwrap(), vec![id]);
        let e = l.get(id).unwrap().unwrap();
        assert_eq!(e.result().unwrap().outcome, CommandOutcome::Interrupted);
        assert_eq!(e.result().unwrap().output_bytes, 5);
        assert_eq!(
            l.output_from(id, 2, 10).unwrap(),
            vec![(0, b"hello".to_vec())]
        );
        l.drop_output_below(id, 5).unwrap();
        assert!(l.output_from(id, 0, 10).unwrap().is_empty());
        // A second restart reports nothing new.
        assert!(l.recover(11, Some("b1")).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_running_reboot_completes_after_a_restart_with_a_new_boot_id_only() {
        let dir = tempfile::tempdir().unwrap();
        let id = CommandId([4; 16]);
        {
            let l = crate::reopen_sled(|| Ledger::open(dir.path()));
            let mut e = Entry::new(1);
            e.phase = Phase::Running { started_ms: 2 };
            l.put(id, &e).unwrap();
            l.put_reboot(id, "boot-1").unwrap();
            l.flush().await.unwrap();
        }
        let l = crate::reopen_sled(|| Ledger::open(dir.path()));
        // The agent restarted, the host did not (yet): still running.
        assert!(l.recover(10, Some("boot-1")).unwrap().is_empty());
        assert!(l.recover(10, None).unwrap().is_empty());
        assert!(matches!(
            l.get(id).unwrap().unwrap().phase,
            Phase::Running { .. }
        ));
        // Back with a new boot id: exited 0, both ids in the output.
        assert!(l.recover(20, Some("boot-2")).unwrap().is_empty());
        let e = l.get(id).unwrap().unwrap();
        assert_eq!(
            e.result().unwrap().outcome,
            CommandOutcome::Exited { code: 0 }
        );
        let out = l.output_from(id, 0, 10).unwrap();
        let text = String::from_utf8(out[0].1.clone()).unwrap();
        assert!(text.contains("boot-2") && text.contains("boot-1"), "{text}");
        assert_eq!(l.reboot_boot_id(id).unwrap(), None);
    }
}
