//! Chaos: simulated agents stream while the appliance is `kill -9`'d and
//! restarted at random intervals; then the appliance's database is read
//! and every agent's acknowledged records are checked to be stored exactly
//! once.
//!
//! What "exactly once" is checked against, per device (every record is a
//! heartbeat, stored under `device | ts | seq`):
//! * **lost**: sequence numbers in `1..=acked_up_to` (the highest the agent
//!   saw acknowledged, by an `Ack` or a `Welcome`) with no stored heartbeat;
//! * **duplicated**: `records_stored` (incremented once per record the
//!   writer stores) minus the distinct sequence numbers stored: a replay
//!   stored twice overwrites its own key but is counted twice;
//! * **gaps**: stored sequence numbers must be exactly `1..=last_seq`.
//!
//! The pure comparison is [`check_device`]; [`run`] drives the processes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use outpost_proto::DeviceId;
use outpost_proto::tls::CaFingerprint;
use outpost_storage::heartbeats;
use outpost_storage::ingest::DEVICE_STATE;
use outpost_storage::model::DeviceState;
use outpost_storage::{Store, StoreOptions, keys};
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::fleet;
use crate::report::Report;
use crate::sim::{self, AgentOutcome, Control, Mix, RunStats, SimOptions};
use crate::spawn::Spawned;

/// Parameters of a chaos run.
#[derive(Debug, Clone)]
pub struct ChaosRun {
    pub agents: usize,
    /// Records per second per agent.
    pub rate: f64,
    /// How many times the appliance is killed and restarted.
    pub kills: usize,
    /// Time the appliance runs between restarts: uniform in this range.
    pub up: (Duration, Duration),
    /// Time it stays down after a kill: uniform in this range.
    pub down: (Duration, Duration),
    /// Where enrolled identities are cached.
    pub state: PathBuf,
    pub seed: u64,
    pub quiet: bool,
}

/// The verdict on one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCheck {
    /// Acknowledged sequence numbers with no stored record.
    pub lost: u64,
    /// Records stored more than once.
    pub duplicated: u64,
    /// Stored sequence numbers that break `1..=last_seq` (holes or strays).
    pub gaps: u64,
    /// Distinct records stored.
    pub stored: u64,
    /// Stored but never acknowledged (the ack was lost in a crash, or the
    /// run ended first): allowed, not an error.
    pub stored_unacked: u64,
}

/// Compares what an agent saw acknowledged with what the database holds
/// for its device (pure).
pub fn check_device(
    seen: AgentOutcome,
    stored_seqs: &BTreeSet<u64>,
    state: Option<&DeviceState>,
) -> DeviceCheck {
    let lost = (1..=seen.acked_up_to)
        .filter(|s| !stored_seqs.contains(s))
        .count() as u64;
    let stored = stored_seqs.len() as u64;
    let (last_seq, records_stored) = state.map_or((0, 0), |s| (s.last_seq, s.records_stored));
    let in_order = stored_seqs
        .iter()
        .zip(1u64..)
        .take_while(|(s, i)| *s == i)
        .count() as u64;
    DeviceCheck {
        lost,
        duplicated: records_stored.saturating_sub(stored),
        gaps: (stored - in_order) + last_seq.abs_diff(in_order),
        stored,
        stored_unacked: stored_seqs.range(seen.acked_up_to + 1..).count() as u64,
    }
}

/// Reads the stored heartbeat sequence numbers and state of `device`.
fn stored(store: &Store, device: DeviceId) -> anyhow::Result<(BTreeSet<u64>, Option<DeviceState>)> {
    let seqs = heartbeats::read(store, device, 0, u64::MAX, usize::MAX)?
        .into_iter()
        .map(|b| b.seq)
        .collect();
    let state = store.get::<DeviceState>(DEVICE_STATE, &keys::device_key(device))?;
    Ok((seqs, state))
}

/// Runs the scenario against a spawned appliance and checks its database.
pub async fn run(r: &ChaosRun, app: &mut Spawned) -> anyhow::Result<Report> {
    let started = Instant::now();
    let pin: CaFingerprint = app.fingerprint()?;
    let token = app.token(r.agents)?;
    let pb = if r.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    let fleet =
        Arc::new(fleet::load_or_enroll(&r.state, app.quic, &token, pin, r.agents, &pb).await?);
    let endpoints = fleet::endpoints(app.quic, 16.min(r.agents).max(1))?;
    let stats = RunStats::new(16);
    let opts = Arc::new(SimOptions {
        addr: app.quic,
        rate: Some(r.rate),
        window: 100_000,
        batch: 256,
        mix: Mix::Heartbeat,
        announced_interval: Duration::from_secs_f64((1.0 / r.rate).max(1.0)),
    });
    let ctl = Control {
        start: CancellationToken::new(),
        stop: CancellationToken::new(),
        gate: Arc::new(tokio::sync::Semaphore::new(512)),
        drain: Duration::from_secs(60),
    };
    let mut tasks = Vec::with_capacity(r.agents);
    for i in 0..r.agents {
        tasks.push(tokio::spawn(sim::run_agent(
            endpoints[i % endpoints.len()].clone(),
            fleet.client_config(i)?,
            opts.clone(),
            stats.clone(),
            i % 16,
            ctl.clone(),
        )));
    }
    let connect_deadline = Instant::now() + Duration::from_secs(300);
    while (stats.connected.load(Ordering::Relaxed) as usize) < r.agents {
        anyhow::ensure!(
            Instant::now() < connect_deadline,
            "only {} of {} agents connected within 300 s",
            stats.connected.load(Ordering::Relaxed),
            r.agents
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ctl.start.cancel();

    let mut rng = rand::rngs::StdRng::seed_from_u64(r.seed);
    let pick = |rng: &mut rand::rngs::StdRng, (lo, hi): (Duration, Duration)| {
        if hi <= lo {
            lo
        } else {
            Duration::from_secs_f64(rng.random_range(lo.as_secs_f64()..hi.as_secs_f64()))
        }
    };
    let mut downtime = Duration::ZERO;
    for k in 0..r.kills {
        tokio::time::sleep(pick(&mut rng, r.up)).await;
        app.kill9();
        let down = pick(&mut rng, r.down);
        downtime += down;
        tokio::time::sleep(down).await;
        app.restart()?;
        if !r.quiet {
            eprintln!(
                "chaos: kill {}/{} (down {:.1} s), acked {} of {} sent",
                k + 1,
                r.kills,
                down.as_secs_f64(),
                stats.acked.load(Ordering::Relaxed),
                stats.sent.load(Ordering::Relaxed)
            );
        }
    }
    // A last stretch up, then every agent drains its acks and leaves.
    tokio::time::sleep(pick(&mut rng, r.up)).await;
    ctl.stop.cancel();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await?);
    }
    app.stop(Duration::from_secs(60))?;

    let db = app.data.join("db");
    let ids: Vec<DeviceId> = fleet.identities.iter().map(|i| i.device_id).collect();
    let checks = tokio::task::spawn_blocking(move || check_all(&db, &ids, &outcomes)).await??;
    let mut total = DeviceCheck::default();
    let mut bad_devices = 0u64;
    for c in &checks {
        total.lost += c.lost;
        total.duplicated += c.duplicated;
        total.gaps += c.gaps;
        total.stored += c.stored;
        total.stored_unacked += c.stored_unacked;
        if c.lost + c.duplicated + c.gaps > 0 {
            bad_devices += 1;
        }
    }
    let mut rep = Report::new("chaos");
    rep.int("agents", r.agents as u64)
        .num("rate_per_agent", r.rate)
        .int("kills", r.kills as u64)
        .num("downtime_secs", downtime.as_secs_f64())
        .num("run_secs", started.elapsed().as_secs_f64())
        .int("sent", stats.sent.load(Ordering::Relaxed))
        .int("acked", stats.acked.load(Ordering::Relaxed))
        .int("sessions", stats.sessions.load(Ordering::Relaxed))
        .int("stored", total.stored)
        .int("stored_unacked", total.stored_unacked)
        .int("lost", total.lost)
        .int("duplicated", total.duplicated)
        .int("gaps", total.gaps)
        .int("bad_devices", bad_devices);
    Ok(rep)
}

fn check_all(
    db: &Path,
    ids: &[DeviceId],
    outcomes: &[AgentOutcome],
) -> anyhow::Result<Vec<DeviceCheck>> {
    // The ingest engine's tables are declared; the appliance's others are
    // opened as they are and not touched.
    let store = Store::open(db, &StoreOptions::default(), outpost_storage::TABLES)?;
    ids.iter()
        .zip(outcomes)
        .map(|(id, seen)| {
            let (seqs, state) = stored(&store, *id)?;
            Ok(check_device(*seen, &seqs, state.as_ref()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(last_seq: u64, records_stored: u64) -> DeviceState {
        DeviceState {
            last_seq,
            records_stored,
            ..DeviceState::new(0)
        }
    }

    fn seen(acked_up_to: u64) -> AgentOutcome {
        AgentOutcome {
            acked_up_to,
            generated_up_to: acked_up_to + 5,
        }
    }

    #[test]
    fn every_acked_record_stored_once_is_clean() {
        let seqs: BTreeSet<u64> = (1..=12).collect();
        let c = check_device(seen(10), &seqs, Some(&state(12, 12)));
        assert_eq!(
            c,
            DeviceCheck {
                lost: 0,
                duplicated: 0,
                gaps: 0,
                stored: 12,
                stored_unacked: 2,
            }
        );
    }

    #[test]
    fn an_acked_record_missing_is_lost() {
        let seqs: BTreeSet<u64> = (1..=10).filter(|s| *s != 4).collect();
        let c = check_device(seen(10), &seqs, Some(&state(10, 9)));
        assert_eq!(c.lost, 1);
        assert!(c.gaps > 0, "a hole below last_seq is also a gap");
        // Nothing stored at all, though acked.
        let c = check_device(seen(3), &BTreeSet::new(), None);
        assert_eq!(c.lost, 3);
    }

    #[test]
    fn a_record_stored_twice_is_a_duplicate() {
        let seqs: BTreeSet<u64> = (1..=10).collect();
        let c = check_device(seen(10), &seqs, Some(&state(10, 11)));
        assert_eq!(c.duplicated, 1);
        assert_eq!(c.lost, 0);
    }

    #[test]
    fn stored_numbers_must_be_exactly_one_to_last_seq() {
        // A stray above last_seq.
        let seqs: BTreeSet<u64> = (1..=10).chain([15]).collect();
        assert_eq!(check_device(seen(10), &seqs, Some(&state(10, 11))).gaps, 1);
        // last_seq claims more than is stored.
        let seqs: BTreeSet<u64> = (1..=10).collect();
        assert_eq!(check_device(seen(10), &seqs, Some(&state(12, 10))).gaps, 2);
    }
}
