//! Random result sequences, technician actions, window changes and
//! crash/restarts (the state re-read from its stored JSON, then
//! `recover`) against the rollout's promises: an install attempt is
//! dispatched once (a re-emit after a restart reuses its id), a device
//! with a result is never sent a new install, a stage is promoted only
//! when its gate (recomputed here from the device records) holds, and a
//! deployment completes only when every device has installed — driving
//! any surviving deployment to the end installs every device.

use super::*;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap};

const T0: u64 = 1_800_000_000_000;
const MIN: u64 = 60_000;

#[derive(Debug, Clone)]
enum Op {
    Tick(u64),
    Report {
        device: usize,
        kind: u8,
        stale: bool,
    },
    Pause,
    Resume {
        force: bool,
    },
    Crash,
    RollbackDevice(usize),
    RollbackStage(u32),
    RollbackDeployment,
    Abort,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => (0..120 * MIN).prop_map(Op::Tick),
        50 => (0..40usize, 0..8u8, prop::bool::weighted(0.05))
            .prop_map(|(device, kind, stale)| Op::Report { device, kind, stale }),
        3 => Just(Op::Pause),
        5 => any::<bool>().prop_map(|force| Op::Resume { force }),
        6 => Just(Op::Crash),
        2 => (0..40usize).prop_map(Op::RollbackDevice),
        1 => (0..4u32).prop_map(Op::RollbackStage),
        1 => prop::bool::weighted(0.3).prop_map(|_| Op::RollbackDeployment),
        1 => Just(Op::Abort),
    ]
}

fn spec_strategy() -> impl Strategy<Value = DeploymentSpec> {
    (
        1..40usize,
        prop::collection::vec(any::<bool>(), 40),
        prop_oneof![
            Just(vec![1u8, 10, 50, 100]),
            Just(vec![100u8]),
            Just(vec![25u8, 100]),
            Just(vec![5u8, 30, 60, 100])
        ],
        (50..=100u8, 1..4u32, 0..30 * MIN),
        prop::option::weighted(0.3, 20..=100u8),
    )
        .prop_map(|(n, pilots, stages, (pct, min_finished, soak), auto)| {
            let targets = (0..n)
                .map(|i| Target {
                    device: format!("d{i}"),
                    pilot: pilots[i] && i % 5 == 0,
                })
                .collect();
            let mut s = DeploymentSpec::new(
                "dep-p",
                vec![crate::approval::PatchKey::new("p", "1")],
                targets,
            );
            s.stages = stages;
            s.gate = GateSpec {
                min_success_pct: pct,
                min_finished,
                soak_ms: soak,
            };
            s.auto_rollback_failed_pct = auto;
            s
        })
}

fn report(kind: u8) -> Report {
    match kind {
        0 => Report::Downloading,
        1 => Report::Installing,
        2 => Report::RebootPending,
        3 => Report::Succeeded,
        4 => Report::Failed { reason: "x".into() },
        5 => Report::RolledBack,
        6 => Report::RollbackFailed { reason: "y".into() },
        _ => Report::Cancelled,
    }
}

/// Devices' windows: each device is out of its window one half-hour in
/// three, shifted per device.
fn windows(all_open: bool) -> impl Fn(&str, u64) -> bool {
    move |d: &str, now: u64| {
        all_open || {
            let shift: u64 = d.bytes().map(u64::from).sum();
            !(now / (30 * MIN) + shift).is_multiple_of(3)
        }
    }
}

/// What the test remembers across steps.
#[derive(Default)]
struct Ledger {
    /// Install command ids dispatched by `step`.
    commands: BTreeSet<String>,
    /// Devices that had a final install result at some point.
    finished: BTreeSet<String>,
}

/// The gate rule, recomputed from the device records: `fresh` devices
/// (dispatched in this very step, after the promotion) count as waiting.
fn gate_holds(dep: &Deployment, k: u32, now: u64, fresh: &BTreeSet<String>) -> Result<(), String> {
    if dep.forced.contains(&k) {
        return Ok(());
    }
    let (mut succ, mut fail, mut flight, mut last) = (0u64, 0u64, 0u64, None::<u64>);
    let devs = &dep.stages[k as usize];
    for d in devs {
        let r = &dep.devices[d];
        if fresh.contains(d) || r.state.is_undispatched() {
            continue;
        }
        match r.state {
            DeviceState::Succeeded => succ += 1,
            s if s.is_installing() => flight += 1,
            _ => fail += 1,
        }
        if let Some(t) = r.finished_at_ms {
            last = Some(last.map_or(t, |l: u64| l.max(t)));
        }
    }
    let g = &dep.spec.gate;
    let min_finished = u64::from(g.min_finished).min(devs.len() as u64);
    if flight > 0 {
        return Err(format!("stage {k} promoted with {flight} in flight"));
    }
    if succ + fail < min_finished {
        return Err(format!(
            "stage {k} promoted with {} finished < {min_finished}",
            succ + fail
        ));
    }
    if succ * 100 < u64::from(g.min_success_pct) * (succ + fail) {
        return Err(format!(
            "stage {k} promoted at {succ}/{} below {}%",
            succ + fail,
            g.min_success_pct
        ));
    }
    if let Some(l) = last
        && now < l + g.soak_ms
    {
        return Err(format!("stage {k} promoted before its soak"));
    }
    Ok(())
}

fn check_step(
    before: &Deployment,
    after: &Deployment,
    actions: &[Action],
    now: u64,
    ledger: &mut Ledger,
) -> Result<(), String> {
    let mut fresh = BTreeSet::new();
    for a in actions {
        if let Action::DispatchInstall {
            device,
            command_id,
            attempt,
            ..
        } = a
        {
            let prev = &before.devices[device];
            if !prev.state.is_undispatched() {
                return Err(format!(
                    "install dispatched to {device} while {}",
                    prev.state.as_str()
                ));
            }
            if ledger.finished.contains(device) {
                return Err(format!(
                    "install dispatched again to {device}, which had a result"
                ));
            }
            if *attempt != prev.attempt + 1 || !ledger.commands.insert(command_id.clone()) {
                return Err(format!("command {command_id} dispatched twice"));
            }
            fresh.insert(device.clone());
        }
    }
    for a in actions {
        if let Action::PromoteStage { from, .. } = a {
            gate_holds(after, *from, now, &fresh)?;
        }
    }
    for (d, r) in &after.devices {
        if r.state.is_finished() {
            ledger.finished.insert(d.clone());
        }
    }
    if after.phase == Phase::Completed
        && before.phase != Phase::Completed
        && let Some((d, r)) = after
            .devices
            .iter()
            .find(|(_, r)| !r.state.is_finished() || r.attempt == 0)
    {
        return Err(format!("completed while {d} is {}", r.state.as_str()));
    }
    Ok(())
}

fn run(spec: DeploymentSpec, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut dep = Deployment::new(spec).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let n = dep.devices.len();
    let names: Vec<String> = dep.devices.keys().cloned().collect();
    let mut now = T0;
    let mut ledger = Ledger::default();
    let w = windows(false);
    let apply =
        |dep: &mut Deployment, input: Input, w: &dyn Windows, now: u64, ledger: &mut Ledger| {
            let before = dep.clone();
            let actions = dep.step(input, w, now);
            check_step(&before, dep, &actions, now, ledger)
        };
    apply(&mut dep, Input::Start, &w, now, &mut ledger).map_err(TestCaseError::fail)?;
    for op in ops {
        let input = match op {
            Op::Tick(dt) => {
                now += dt;
                Input::Tick
            }
            Op::Report {
                device,
                kind,
                stale,
            } => {
                let d = &names[device % n];
                let attempt = dep.devices[d].attempt;
                Input::Report {
                    device: d.clone(),
                    attempt: if stale {
                        attempt.wrapping_sub(1)
                    } else {
                        attempt
                    },
                    report: report(kind),
                }
            }
            Op::Pause => Input::Pause { note: "p".into() },
            Op::Resume { force } => Input::Resume {
                retry_failed: false,
                force,
                patches: None,
            },
            Op::Crash => {
                let stored =
                    serde_json::to_vec(&dep).map_err(|e| TestCaseError::fail(e.to_string()))?;
                dep = serde_json::from_slice(&stored)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                for a in dep.recover() {
                    if let Action::DispatchInstall {
                        device, command_id, ..
                    } = &a
                    {
                        prop_assert!(
                            ledger.commands.contains(command_id),
                            "recover invented {command_id}"
                        );
                        prop_assert_eq!(dep.devices[device].state, DeviceState::Queued);
                    }
                }
                continue;
            }
            Op::RollbackDevice(i) => Input::Rollback(RollbackScope::Device {
                device: names[i % n].clone(),
            }),
            Op::RollbackStage(k) => Input::Rollback(RollbackScope::Stage { stage: k }),
            Op::RollbackDeployment => Input::Rollback(RollbackScope::Deployment),
            Op::Abort => Input::Abort { note: "a".into() },
        };
        apply(&mut dep, input, &w, now, &mut ledger).map_err(TestCaseError::fail)?;
    }
    // Drive to the end: windows open, every device succeeds, a paused
    // deployment is forced on.
    let open = windows(true);
    for _ in 0..200 {
        if dep.is_terminal() {
            break;
        }
        let mut inputs = Vec::new();
        if matches!(dep.phase, Phase::Paused { .. }) {
            inputs.push(Input::Resume {
                retry_failed: false,
                force: true,
                patches: None,
            });
        }
        for (d, r) in &dep.devices {
            if r.state.is_installing() {
                inputs.push(Input::Report {
                    device: d.clone(),
                    attempt: r.attempt,
                    report: Report::Succeeded,
                });
            } else if r.state == DeviceState::RollingBack {
                inputs.push(Input::Report {
                    device: d.clone(),
                    attempt: r.attempt,
                    report: Report::RolledBack,
                });
            }
        }
        now += 31 * MIN;
        inputs.push(Input::Tick);
        for input in inputs {
            apply(&mut dep, input, &open, now, &mut ledger).map_err(TestCaseError::fail)?;
        }
    }
    match &dep.phase {
        Phase::Completed => {
            let skipped: Vec<&String> = dep
                .devices
                .iter()
                .filter(|(_, r)| r.attempt == 0)
                .map(|(d, _)| d)
                .collect();
            prop_assert!(skipped.is_empty(), "skipped {:?}", skipped);
        }
        Phase::Aborted { .. } | Phase::RolledBack => {}
        other => prop_assert!(false, "did not finish: {:?}", other),
    }
    // Every attempt was dispatched once.
    let mut per_device: HashMap<&str, u32> = HashMap::new();
    for c in &ledger.commands {
        let d = c.split('/').nth(1).unwrap_or_default();
        *per_device.entry(d).or_default() += 1;
    }
    for (d, r) in &dep.devices {
        prop_assert_eq!(per_device.get(d.as_str()).copied().unwrap_or(0), r.attempt);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_results_and_restarts_never_reinstall_skip_or_promote_past_a_failing_gate(
        spec in spec_strategy(),
        ops in prop::collection::vec(op(), 0..150),
    ) {
        run(spec, ops)?;
    }
}
