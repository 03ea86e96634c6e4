//! The appliance database: the tables of every subsystem the appliance
//! runs. A subsystem that adds tables declares them in its own module and
//! adds its `TABLES` here; nothing in `outpost-storage` lists them.

use std::path::Path;

use outpost_storage::{Store, StoreOptions, Table};

/// Every table of the appliance: the ingest engine's, the alert engine's,
/// the patch cache's, the uplink outbox's, the local users' and the
/// command queue's.
pub fn tables() -> Vec<Table> {
    [
        outpost_storage::TABLES,
        crate::alerts::store::TABLES,
        crate::cache::tables::TABLES,
        outpost_uplink::outbox::TABLES,
        crate::users::store::TABLES,
        crate::commands::store::TABLES,
        crate::files::store::TABLES,
        crate::patches::store::TABLES,
        crate::deploy::approvals::TABLES,
        crate::deploy::store::TABLES,
        crate::deploy::schedules::TABLES,
        crate::deploy::device::TABLES,
        crate::deploy::central::TABLES,
    ]
    .concat()
}

/// Opens (creating if needed) the appliance database at `path`.
pub fn open(path: &Path, opts: &StoreOptions) -> outpost_storage::error::Result<Store> {
    Store::open(path, opts, &tables())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subsystem_table_has_a_distinct_name() {
        let t = tables();
        let mut names: Vec<&str> = t.iter().map(|t| t.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "two subsystems declare the same table name");
        // The 25 tables of wave 1 (plus `meta`, always opened): stored
        // data of existing appliances keeps its column families; plus
        // `cache_misses` (issue 10); `users` and `sessions` (issue 12);
        // `commands`, `commands_by_time`, `commands_open`, `command_output`,
        // `scripts`, `bulk_runs`, `command_runs`, `file_transfers`,
        // `file_transfers_by_time` (issue 13); `package_scans_in`,
        // `patch_scans`, `patch_assessments`, `patch_sources`,
        // `patch_compliance_daily` (issue 14); `patch_status_in` (ingest),
        // `deploy_device_commands` (the device link), `approval_rules`,
        // `deployments`, `deploy_schedules`, `central_deploy_orders`,
        // `deployment_devices`, `deployment_state` (per-device records),
        // `cache_pin_owners` (pins held per deployment) (issue 15);
        // `heartbeat_blocks` (issue 18: heartbeats one key per device,
        // minute and commit; `heartbeats` stays, read and expired);
        // `sample_blocks` (issue 18: the head of raw samples one key per
        // device, 5 minutes and commit; `samples` stays, read, sealed and
        // expired).
        assert_eq!(n, 53);
    }

    #[test]
    fn a_database_of_an_older_appliance_gains_the_new_tables() {
        let dir = tempfile::tempdir().unwrap();
        let older: Vec<Table> = tables()
            .into_iter()
            .filter(|t| *t != crate::cache::tables::CACHE_MISSES)
            .collect();
        let s = Store::open(dir.path(), &StoreOptions::default(), &older).unwrap();
        s.put(crate::cache::tables::CACHE_BLOBS, b"k", &1u64)
            .unwrap();
        drop(s);
        let s = open(dir.path(), &StoreOptions::default()).unwrap();
        let v: Option<u64> = s.get(crate::cache::tables::CACHE_BLOBS, b"k").unwrap();
        assert_eq!(v, Some(1));
        s.put(crate::cache::tables::CACHE_MISSES, b"k", &2u64)
            .unwrap();
    }

    #[test]
    fn the_database_opens_and_reopens_with_every_table() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(s.tables().len(), 54);
        drop(s);
        open(dir.path(), &StoreOptions::default()).unwrap();
    }
}
