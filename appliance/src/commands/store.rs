//! Persistence of commands in the appliance database:
//!
//! * `commands`: `id` (16 bytes) → [`CommandRecord`] (bincode);
//! * `commands_by_time`: `!created_ms (8, BE) | id` → device id (8, BE):
//!   newest first for lists;
//! * `commands_open`: `device (8, BE) | id` → empty: commands not yet
//!   terminal, per device (what to offer a device that connects);
//! * `command_output`: `id | offset (8, BE)` → output bytes (head and tail
//!   chunks, see [`super::output`]).
//!
//! A record and its index entries are written in one batch, so a crash
//! never leaves an index pointing at a state the record does not have.

use outpost_proto::DeviceId;
use outpost_proto::ids::CommandId;
use outpost_storage::error::Result;
use outpost_storage::keys::prefix_successor;
use outpost_storage::{Batch, Codec, Store, Table};

use super::model::{CommandRecord, CommandState};
use super::output::{OutputCap, truncation_marker};

pub const COMMANDS: Table = Table::new("commands");
pub const COMMANDS_BY_TIME: Table = Table::new("commands_by_time").codec(Codec::Raw);
pub const COMMANDS_OPEN: Table = Table::new("commands_open").codec(Codec::Raw);
pub const COMMAND_OUTPUT: Table = Table::new("command_output").codec(Codec::Raw);

/// Every table of the command subsystem, for `Store::open`.
pub const TABLES: &[Table] = &[
    COMMANDS,
    COMMANDS_BY_TIME,
    COMMANDS_OPEN,
    COMMAND_OUTPUT,
    super::scripts::SCRIPTS,
    super::bulk::BULK_RUNS,
    super::bulk::COMMAND_RUNS,
];

fn by_time_key(created_ms: u64, id: CommandId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&(u64::MAX - created_ms).to_be_bytes());
    k[8..].copy_from_slice(&id.0);
    k
}

fn open_key(device: DeviceId, id: CommandId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&device.to_be_bytes());
    k[8..].copy_from_slice(&id.0);
    k
}

pub fn output_key(id: CommandId, offset: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&id.0);
    k[16..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// Adds the record (and its index entries) to `b`. `new` for a command
/// written the first time.
pub fn put(b: &mut Batch, rec: &CommandRecord, new: bool) -> Result<()> {
    b.put(COMMANDS, &rec.id.0, rec)?;
    if new {
        b.put_raw(
            COMMANDS_BY_TIME,
            &by_time_key(rec.created_ms, rec.id),
            &rec.device.to_be_bytes(),
        )?;
    }
    let ok = open_key(rec.device, rec.id);
    if rec.state.is_terminal() {
        b.delete(COMMANDS_OPEN, &ok)?;
    } else {
        b.put_raw(COMMANDS_OPEN, &ok, &[])?;
    }
    Ok(())
}

pub fn get(store: &Store, id: CommandId) -> Result<Option<CommandRecord>> {
    store.get(COMMANDS, &id.0)
}

/// Every command not yet terminal, by device (loaded at start).
pub fn open_commands(store: &Store) -> Result<Vec<(DeviceId, CommandId)>> {
    let mut out = Vec::new();
    store.scan_raw(COMMANDS_OPEN, &[], None, |k, _| {
        if k.len() == 24 {
            let mut d = [0u8; 8];
            d.copy_from_slice(&k[..8]);
            let mut id = [0u8; 16];
            id.copy_from_slice(&k[8..]);
            out.push((DeviceId(u64::from_be_bytes(d)), CommandId(id)));
        }
        Ok(true)
    })?;
    Ok(out)
}

/// Which commands a list shows.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub device: Option<DeviceId>,
    pub state: Option<CommandState>,
    /// Only commands created before this time (paging: the `created_ms` of
    /// the last row of the previous page).
    pub before_ms: Option<u64>,
    /// With `before_ms`: the id of the previous page's last row; the page
    /// goes on after it among the commands of that same millisecond (all
    /// of a bulk run's share one), instead of skipping them.
    pub before_id: Option<CommandId>,
    pub limit: usize,
}

/// Commands newest first (by creation time, then id).
pub fn list(store: &Store, f: &ListFilter) -> Result<Vec<CommandRecord>> {
    // Keys are (inverted time, id): the rows after the cursor's own key.
    let (from, skip) = match (f.before_ms, f.before_id) {
        (Some(t), Some(id)) => (by_time_key(t, id).to_vec(), Some(by_time_key(t, id))),
        (Some(t), None) => (
            (u64::MAX - t).saturating_add(1).to_be_bytes().to_vec(),
            None,
        ),
        (None, _) => (Vec::new(), None),
    };
    let mut ids = Vec::new();
    let mut out = Vec::new();
    // Read index rows in pages and filter by device first (cheap).
    let mut err = None;
    store.scan_raw(COMMANDS_BY_TIME, &from, None, |k, v| {
        if k.len() != 24 || v.len() != 8 || skip.is_some_and(|c| c[..] == *k) {
            return Ok(true);
        }
        let mut d = [0u8; 8];
        d.copy_from_slice(v);
        if let Some(dev) = f.device
            && dev.0 != u64::from_be_bytes(d)
        {
            return Ok(true);
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&k[8..]);
        ids.push(CommandId(id));
        if f.state.is_none() && ids.len() >= f.limit {
            return Ok(false);
        }
        if ids.len() >= 256 {
            for id in ids.drain(..) {
                match get(store, id) {
                    Ok(Some(r)) if f.state.is_none_or(|s| s == r.state) => out.push(r),
                    Ok(_) => {}
                    Err(e) => {
                        err = Some(e);
                        return Ok(false);
                    }
                }
            }
            if out.len() >= f.limit {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    for id in ids {
        if out.len() >= f.limit {
            break;
        }
        if let Some(r) = get(store, id)?
            && f.state.is_none_or(|s| s == r.state)
        {
            out.push(r);
        }
    }
    out.truncate(f.limit);
    Ok(out)
}

/// The command's stored output: the head, a truncation marker if bytes
/// were dropped, then the tail.
pub fn read_output(store: &Store, rec: &CommandRecord, cap: OutputCap) -> Result<Vec<u8>> {
    let from = output_key(rec.id, 0);
    let to = prefix_successor(&rec.id.0);
    let mut head = Vec::new();
    let mut tail = Vec::new();
    let tail_start = rec.output.tail_start;
    store.scan_raw(COMMAND_OUTPUT, &from, to.as_deref(), |k, v| {
        let Some(off) = outpost_storage::keys::be_u64(k, 16) else {
            return Ok(true);
        };
        if off < cap.head_bytes {
            head.extend_from_slice(v);
        } else {
            let skip = (tail_start.saturating_sub(off) as usize).min(v.len());
            tail.extend_from_slice(&v[skip..]);
        }
        Ok(true)
    })?;
    if rec.output.truncated() {
        head.extend_from_slice(truncation_marker(rec.output.dropped).as_bytes());
    }
    head.extend_from_slice(&tail);
    Ok(head)
}

#[cfg(test)]
mod tests {
    use outpost_proto::command::CommandSpec;
    use outpost_storage::StoreOptions;

    use super::*;

    fn rec(n: u8, device: u64, at: u64) -> CommandRecord {
        CommandRecord::new(
            CommandId([n; 16]),
            DeviceId(device),
            CommandSpec::shell("true", "t"),
            at,
        )
    }

    #[test]
    fn pages_with_a_time_and_id_cursor_show_every_command_of_one_millisecond_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::db::open(dir.path(), &StoreOptions::default()).unwrap();
        let mut b = s.batch();
        // A bulk run: five members created in the same millisecond.
        for n in 1..=5 {
            put(&mut b, &rec(n, u64::from(n), 50), true).unwrap();
        }
        put(&mut b, &rec(9, 9, 40), true).unwrap();
        s.write(b).unwrap();
        let mut seen = Vec::new();
        let (mut before_ms, mut before_id) = (None, None);
        loop {
            let page = list(
                &s,
                &ListFilter {
                    before_ms,
                    before_id,
                    limit: 2,
                    ..Default::default()
                },
            )
            .unwrap();
            let Some(last) = page.last() else { break };
            before_ms = Some(last.created_ms);
            before_id = Some(last.id);
            seen.extend(page.iter().map(|r| r.id.0[0]));
            assert!(seen.len() <= 6, "{seen:?}");
        }
        assert_eq!(seen, vec![1, 2, 3, 4, 5, 9]);
        // The time alone (older clients) still pages by time.
        let older = list(
            &s,
            &ListFilter {
                before_ms: Some(50),
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(older.iter().map(|r| r.id.0[0]).collect::<Vec<_>>(), vec![9]);
    }

    #[test]
    fn records_list_newest_first_filtered_and_open_ones_are_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::db::open(dir.path(), &StoreOptions::default()).unwrap();
        let mut b = s.batch();
        for (n, dev, at) in [(1, 1, 10), (2, 2, 20), (3, 1, 30)] {
            put(&mut b, &rec(n, dev, at), true).unwrap();
        }
        s.write(b).unwrap();
        let mut done = rec(2, 2, 20);
        done.enter(CommandState::Completed, 25);
        let mut b = s.batch();
        put(&mut b, &done, false).unwrap();
        s.write(b).unwrap();

        let all = list(
            &s,
            &ListFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
        let ids: Vec<u8> = all.iter().map(|r| r.id.0[0]).collect();
        assert_eq!(ids, vec![3, 2, 1]);
        let dev1 = list(
            &s,
            &ListFilter {
                device: Some(DeviceId(1)),
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(dev1.len(), 2);
        let completed = list(
            &s,
            &ListFilter {
                state: Some(CommandState::Completed),
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(completed.len(), 1);
        let page = list(
            &s,
            &ListFilter {
                before_ms: Some(30),
                limit: 1,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(page[0].id.0[0], 2);
        let mut open = open_commands(&s).unwrap();
        open.sort();
        assert_eq!(
            open,
            vec![
                (DeviceId(1), CommandId([1; 16])),
                (DeviceId(1), CommandId([3; 16]))
            ]
        );
    }
}
