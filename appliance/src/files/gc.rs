//! Garbage collection of file blobs (`DATA/files/blobs/`): a blob is kept
//! while a transfer record names its SHA-256 and is not over (queued,
//! transferring) or ended less than `[files] retention` ago (default 7
//! days: a pulled file stays downloadable that long); every other blob is
//! deleted, counted in `outpost_files_blobs_collected_total`. A blob
//! written less than [`GRACE_MS`] ago is kept whatever the records say
//! (an upload is stored before its transfer record is written).
//!
//! The rule ([`is_live`], [`collectable`]) is pure; [`collect`] applies it
//! to the records in RocksDB and the files on disk at an explicit `now`;
//! [`gc_loop`] runs it daily. Partial files of pulls in progress and
//! temporary files are not this module's (see [`super::blobs`]).

use std::collections::HashSet;
use std::time::{Duration, UNIX_EPOCH};

use outpost_proto::transfer;
use outpost_storage::Store;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::blobs::Blobs;
use super::model::TransferRecord;
use super::store;

/// A blob younger than this is never collected (1 hour).
pub const GRACE_MS: u64 = 3_600_000;
/// How often the job runs.
pub const GC_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Whether `rec` keeps its content at `now_ms`.
pub fn is_live(rec: &TransferRecord, now_ms: u64, retention_ms: u64) -> bool {
    if !rec.state.is_terminal() {
        return true;
    }
    let ended = rec
        .transitions
        .last()
        .map(|t| t.at_ms)
        .unwrap_or(rec.created_ms);
    now_ms.saturating_sub(ended) < retention_ms
}

/// The blobs (hash, written at ms) to delete given the live hashes.
pub fn collectable(
    live: &HashSet<[u8; 32]>,
    blobs: &[([u8; 32], u64)],
    now_ms: u64,
) -> Vec<[u8; 32]> {
    blobs
        .iter()
        .filter(|(sha, written)| !live.contains(sha) && now_ms.saturating_sub(*written) >= GRACE_MS)
        .map(|(sha, _)| *sha)
        .collect()
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub kept: u64,
    pub collected: u64,
    pub bytes_freed: u64,
}

/// One run at `now_ms` (blocking: scans the records, walks the blobs).
pub fn collect(
    store: &Store,
    blobs: &Blobs,
    now_ms: u64,
    retention_ms: u64,
) -> anyhow::Result<GcReport> {
    let mut live = HashSet::new();
    store::scan_all(store, |rec| {
        if is_live(rec, now_ms, retention_ms)
            && let Some(sha) = rec.sha256.as_deref().and_then(transfer::parse_sha)
        {
            live.insert(sha);
        }
    })
    .map_err(|e| anyhow::anyhow!("scanning the transfer records: {e}"))?;
    let on_disk: Vec<([u8; 32], u64, u64)> = blobs
        .list()
        .map_err(|e| anyhow::anyhow!("listing the blobs: {e}"))?
        .into_iter()
        .map(|(sha, meta)| {
            let written = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
                .unwrap_or(now_ms);
            (sha, written, meta.len())
        })
        .collect();
    let pairs: Vec<([u8; 32], u64)> = on_disk.iter().map(|(s, w, _)| (*s, *w)).collect();
    let doomed: HashSet<[u8; 32]> = collectable(&live, &pairs, now_ms).into_iter().collect();
    let mut report = GcReport::default();
    for (sha, _, len) in &on_disk {
        if !doomed.contains(sha) {
            report.kept += 1;
            continue;
        }
        match blobs.remove(sha) {
            Ok(()) => {
                report.collected += 1;
                report.bytes_freed += len;
            }
            Err(e) => {
                warn!(sha = %transfer::hex_sha(sha), error = %e, "removing a file blob failed");
                report.kept += 1;
            }
        }
    }
    Ok(report)
}

/// Runs [`collect`] at start and then every [`GC_INTERVAL`] until shutdown.
pub async fn gc_loop(files: super::service::FileService, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(GC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let f = files.clone();
        match tokio::task::spawn_blocking(move || f.collect_blobs(outpost_storage::now_ms())).await
        {
            Ok(Ok(r)) => info!(
                collected = r.collected,
                kept = r.kept,
                bytes_freed = r.bytes_freed,
                "file blobs collected"
            ),
            Ok(Err(e)) => warn!(error = %e, "file blob collection failed"),
            Err(e) => warn!(error = %e, "file blob collection panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::model::{Direction, TransferState, TransferTransition};
    use outpost_proto::DeviceId;
    use outpost_proto::ids::TransferId;
    use std::io::Write;

    const DAY: u64 = 24 * 3_600_000;
    const RETENTION: u64 = 7 * DAY;

    fn record(n: u8, sha: &[u8; 32], state: TransferState, at_ms: u64) -> TransferRecord {
        let mut r = TransferRecord::new(
            TransferId([n; 16]),
            DeviceId(u64::from(n)),
            Direction::Pull,
            "/x".into(),
            Some(1),
            Some(transfer::hex_sha(sha)),
            1000,
            "alice".into(),
            at_ms.saturating_sub(DAY),
        );
        r.state = state;
        r.transitions.push(TransferTransition { state, at_ms });
        r
    }

    #[test]
    fn a_transfer_keeps_its_content_while_open_and_for_the_retention_after_it_ended() {
        let now = 100 * DAY;
        let sha = [1u8; 32];
        assert!(is_live(
            &record(1, &sha, TransferState::Transferring, 0),
            now,
            RETENTION
        ));
        let ended = |ago| record(1, &sha, TransferState::Completed, now - ago);
        assert!(is_live(&ended(RETENTION - 1), now, RETENTION));
        assert!(!is_live(&ended(RETENTION), now, RETENTION));
        assert!(!is_live(
            &record(1, &sha, TransferState::Failed, 0),
            now,
            RETENTION
        ));
        // A blob nobody names is collected only once past the grace.
        let live: HashSet<[u8; 32]> = [[2u8; 32]].into_iter().collect();
        let blobs = [
            ([2u8; 32], 0),
            ([3u8; 32], now - GRACE_MS),
            ([4u8; 32], now - 1),
        ];
        assert_eq!(collectable(&live, &blobs, now), vec![[3u8; 32]]);
    }

    #[test]
    fn the_collector_deletes_blobs_no_live_transfer_names_in_real_rocksdb_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::db::open(
            &dir.path().join("db"),
            &outpost_storage::StoreOptions::default(),
        )
        .unwrap();
        let blobs = Blobs::open(&dir.path().join("files")).unwrap();
        let blob = |content: &[u8]| {
            let src = dir.path().join("src");
            let mut f = std::fs::File::create(&src).unwrap();
            f.write_all(content).unwrap();
            blobs.store_from(&src, 0, None).unwrap().unwrap().0
        };
        let open = blob(b"pushed, not yet delivered");
        let recent = blob(b"pulled 6 days ago");
        let old = blob(b"pulled 8 days ago");
        let orphan = blob(b"named by no transfer");
        let real_now = outpost_storage::now_ms();
        let now = real_now + 2 * GRACE_MS;
        for r in [
            record(1, &open, TransferState::Queued, now - 30 * DAY),
            record(2, &recent, TransferState::Completed, now - 6 * DAY),
            record(3, &old, TransferState::Completed, now - 8 * DAY),
        ] {
            store::put(&store, &r, true).unwrap();
        }
        // Just written: within the grace, nothing goes.
        let r = collect(&store, &blobs, real_now, RETENTION).unwrap();
        assert_eq!((r.collected, r.kept), (0, 4));
        // Later: the old pull's content and the orphan go, the rest stays.
        let r = collect(&store, &blobs, now, RETENTION).unwrap();
        assert_eq!((r.collected, r.kept), (2, 2));
        assert!(r.bytes_freed > 0);
        assert!(blobs.has(&open) && blobs.has(&recent));
        assert!(!blobs.has(&old) && !blobs.has(&orphan));
        // Idempotent.
        let r = collect(&store, &blobs, now, RETENTION).unwrap();
        assert_eq!((r.collected, r.kept), (0, 2));
    }
}
