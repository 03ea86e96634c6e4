use super::*;
use std::collections::BTreeSet;

const T0: u64 = 1_800_000_000_000;
const MIN: u64 = 60_000;

fn targets(n: usize, pilots: &[usize]) -> Vec<Target> {
    (0..n)
        .map(|i| Target {
            device: format!("d{i:03}"),
            pilot: pilots.contains(&i),
        })
        .collect()
}

fn spec(n: usize) -> DeploymentSpec {
    let mut s = DeploymentSpec::new(
        "dep-1",
        vec![PatchKey::new("openssl", "3.0.15-1")],
        targets(n, &[]),
    );
    s.gate.soak_ms = 10 * MIN;
    s
}

fn installs(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::DispatchInstall { device, .. } => Some(device.clone()),
            _ => None,
        })
        .collect()
}

fn rollbacks(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::DispatchRollback { device, .. } => Some(device.clone()),
            _ => None,
        })
        .collect()
}

fn has(actions: &[Action], pred: impl Fn(&Action) -> bool) -> bool {
    actions.iter().any(pred)
}

fn rejected(actions: &[Action]) -> bool {
    has(actions, |a| matches!(a, Action::Rejected { .. }))
}

/// A deployment driven by an explicit clock.
struct Sim {
    dep: Deployment,
    now: u64,
    windows: Box<dyn Windows>,
}

impl Sim {
    fn new(spec: DeploymentSpec) -> Sim {
        Sim {
            dep: Deployment::new(spec).unwrap(),
            now: T0,
            windows: Box::new(AlwaysOpen),
        }
    }
    fn step(&mut self, input: Input) -> Vec<Action> {
        self.dep.step(input, self.windows.as_ref(), self.now)
    }
    fn report(&mut self, device: &str, report: Report) -> Vec<Action> {
        let attempt = self.dep.devices[device].attempt;
        self.step(Input::Report {
            device: device.into(),
            attempt,
            report,
        })
    }
    fn succeed(&mut self, devices: &[String]) -> Vec<Action> {
        let mut out = Vec::new();
        for d in devices {
            out.extend(self.report(d, Report::Succeeded));
        }
        out
    }
    fn fail(&mut self, device: &str) -> Vec<Action> {
        self.report(
            device,
            Report::Failed {
                reason: "preinst failed".into(),
            },
        )
    }
    fn tick_after(&mut self, ms: u64) -> Vec<Action> {
        self.now += ms;
        self.step(Input::Tick)
    }
    fn stage(&self, k: usize) -> Vec<String> {
        self.dep.stages[k].clone()
    }
    fn state(&self, d: &str) -> DeviceState {
        self.dep.devices[d].state
    }
}

fn resume(retry_failed: bool, force: bool) -> Input {
    Input::Resume {
        retry_failed,
        force,
        patches: None,
    }
}

// ---- planning ----

#[test]
fn default_stages_are_1_10_50_100_percent_with_at_least_one_pilot() {
    let stages = plan_stages(&spec(200)).unwrap();
    let sizes: Vec<usize> = stages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![2, 18, 80, 100]);
    let stages = plan_stages(&spec(10)).unwrap();
    let sizes: Vec<usize> = stages.iter().map(Vec::len).collect();
    assert_eq!(
        sizes,
        vec![1, 0, 4, 5],
        "ceil(1%·10)=1, ceil(10%·10)=1: stage 1 empty"
    );
    let all: BTreeSet<&String> = stages.iter().flatten().collect();
    assert_eq!(all.len(), 10, "every device in exactly one stage");
}

#[test]
fn device_selection_is_a_pure_function_of_the_id_and_the_device_set() {
    let a = spec(50);
    let mut b = a.clone();
    b.targets.reverse();
    assert_eq!(
        plan_stages(&a).unwrap(),
        plan_stages(&b).unwrap(),
        "input order does not matter"
    );
    let mut c = a.clone();
    c.id = "dep-2".into();
    assert_ne!(
        plan_stages(&a).unwrap(),
        plan_stages(&c).unwrap(),
        "another id picks other devices"
    );
    // The ordering is pinned: a stored plan and a recomputed one agree
    // across builds (FNV-1a).
    assert_eq!(selection_hash("dep-1", "d000"), 0xf5fcbfcef9d6ca39);
}

#[test]
fn pilot_tagged_devices_fill_the_first_stage_first() {
    let mut s = spec(100);
    s.targets = targets(100, &[42, 77]);
    let stages = plan_stages(&s).unwrap();
    assert_eq!(stages[0].len(), 1);
    assert!(["d042", "d077"].contains(&stages[0][0].as_str()));
    // The other pilot leads the second stage.
    assert!(["d042", "d077"].contains(&stages[1][0].as_str()));
}

#[test]
fn custom_stages_and_invalid_specs() {
    let mut s = spec(4);
    s.stages = vec![50, 100];
    assert_eq!(
        plan_stages(&s)
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect::<Vec<_>>(),
        vec![2, 2]
    );
    for bad in [
        vec![],
        vec![0, 100],
        vec![10, 10, 100],
        vec![50, 20, 100],
        vec![10, 50],
    ] {
        s.stages = bad.clone();
        assert_eq!(plan_stages(&s), Err(PlanError::BadStages(bad)));
    }
    let mut s = spec(3);
    s.patches.clear();
    assert_eq!(plan_stages(&s), Err(PlanError::NoPatches));
    let mut s = spec(3);
    s.targets.clear();
    assert_eq!(plan_stages(&s), Err(PlanError::NoTargets));
    let mut s = spec(3);
    s.targets.push(s.targets[0].clone());
    assert_eq!(
        plan_stages(&s),
        Err(PlanError::DuplicateDevice("d000".into()))
    );
    let mut s = spec(3);
    s.id = " ".into();
    assert_eq!(plan_stages(&s), Err(PlanError::EmptyId));
    let mut s = spec(3);
    s.gate.min_success_pct = 101;
    assert_eq!(plan_stages(&s), Err(PlanError::BadSuccessPct(101)));
    let mut s = spec(3);
    s.auto_rollback_failed_pct = Some(0);
    assert_eq!(plan_stages(&s), Err(PlanError::BadRollbackPct(0)));
}

// ---- the happy path ----

#[test]
fn all_stages_complete_when_every_gate_holds_after_its_soak() {
    let mut sim = Sim::new(spec(100));
    let out = sim.step(Input::Start);
    assert!(has(&out, |a| matches!(
        a,
        Action::StartStage {
            stage: 0,
            devices: 1
        }
    )));
    assert_eq!(installs(&out), sim.stage(0));
    let cmd = out
        .iter()
        .find_map(|a| match a {
            Action::DispatchInstall { command_id, .. } => Some(command_id.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(cmd, format!("dep-1/{}/install/1", sim.stage(0)[0]));
    for k in 0..4 {
        let devs = sim.stage(k);
        for d in &devs {
            sim.report(d, Report::Downloading);
            sim.report(d, Report::Installing);
        }
        let out = sim.succeed(&devs);
        assert!(
            !has(&out, |a| matches!(a, Action::PromoteStage { .. })),
            "soak first"
        );
        let out = sim.tick_after(10 * MIN - 1);
        assert!(installs(&out).is_empty());
        let out = sim.tick_after(1);
        if k < 3 {
            assert!(has(
                &out,
                |a| matches!(a, Action::PromoteStage { from, to, .. } if *from == k as u32 && *to == k as u32 + 1)
            ));
            assert_eq!(installs(&out), sim.stage(k + 1));
        } else {
            assert!(has(&out, |a| *a == Action::Notify(Event::Completed)));
        }
    }
    assert_eq!(sim.dep.phase, Phase::Completed);
    assert!(
        sim.dep
            .devices
            .values()
            .all(|r| r.state == DeviceState::Succeeded && r.attempt == 1)
    );
}

#[test]
fn empty_stages_are_promoted_through_at_once() {
    let mut sim = Sim::new(spec(10)); // stages 1, 0, 4, 5
    sim.step(Input::Start);
    sim.succeed(&sim.stage(0));
    let out = sim.tick_after(10 * MIN);
    assert!(has(
        &out,
        |a| matches!(a, Action::PromoteStage { from, to, .. } if *from == 0 && *to == 1)
    ));
    assert!(has(
        &out,
        |a| matches!(a, Action::PromoteStage { from, to, .. } if *from == 1 && *to == 2)
    ));
    assert_eq!(installs(&out), sim.stage(2));
}

#[test]
fn reboot_pending_then_success_counts_and_the_reboot_deadline_fails_the_device() {
    let mut s = spec(2);
    s.stages = vec![100];
    s.gate.min_success_pct = 50;
    let mut sim = Sim::new(s);
    sim.step(Input::Start);
    let (a, b) = (sim.stage(0)[0].clone(), sim.stage(0)[1].clone());
    sim.report(&a, Report::RebootPending);
    sim.report(&b, Report::RebootPending);
    assert_eq!(sim.state(&a), DeviceState::RebootPending);
    sim.now += 5 * MIN;
    sim.report(&a, Report::Succeeded);
    let out = sim.tick_after(25 * MIN);
    assert_eq!(sim.state(&b), DeviceState::Failed);
    assert!(has(
        &out,
        |x| matches!(x, Action::Notify(Event::DeviceFailed { device, .. }) if *device == b)
    ));
    assert!(
        sim.dep.devices[&b]
            .reason
            .as_deref()
            .unwrap()
            .contains("reboot")
    );
    // 1 of 2 succeeded = 50 % ≥ 50 %: completes after the soak.
    let out = sim.tick_after(10 * MIN);
    assert!(has(&out, |x| *x == Action::Notify(Event::Completed)));
}

#[test]
fn install_deadline_fails_a_silent_device_and_a_late_success_is_accepted() {
    let mut s = spec(1);
    s.stages = vec![100];
    let mut sim = Sim::new(s);
    sim.step(Input::Start);
    let d = sim.stage(0)[0].clone();
    sim.tick_after(4 * 3_600_000 - 1);
    assert_eq!(sim.state(&d), DeviceState::Queued);
    let out = sim.tick_after(1);
    assert_eq!(sim.state(&d), DeviceState::Failed);
    assert!(has(&out, |a| matches!(
        a,
        Action::Notify(Event::GateFailed { .. })
    )));
    assert!(matches!(sim.dep.phase, Phase::Paused { .. }));
    sim.report(&d, Report::Succeeded);
    assert_eq!(sim.state(&d), DeviceState::Succeeded);
    assert!(!sim.dep.devices[&d].timed_out);
    // A real failure is final: no late success.
    let mut s = spec(1);
    s.stages = vec![100];
    let mut sim = Sim::new(s);
    sim.step(Input::Start);
    sim.fail(&d);
    let out = sim.report(&d, Report::Succeeded);
    assert!(has(&out, |a| matches!(a, Action::Ignored { .. })));
    assert_eq!(sim.state(&d), DeviceState::Failed);
}

// ---- gates ----

#[test]
fn failed_pilot_pauses_the_deployment_notifies_and_later_stages_never_start() {
    let mut sim = Sim::new(spec(10));
    sim.step(Input::Start);
    let pilot = sim.stage(0)[0].clone();
    let out = sim.fail(&pilot);
    let figures = out
        .iter()
        .find_map(|a| match a {
            Action::Notify(Event::GateFailed {
                stage: 0,
                figures,
                why,
            }) => {
                assert_eq!(
                    why,
                    "1 of 1 devices failed: the success rate cannot reach 95%"
                );
                Some(figures.clone())
            }
            _ => None,
        })
        .expect("gate failed notice");
    assert_eq!(
        (figures.failed, figures.succeeded, figures.devices),
        (1, 0, 1)
    );
    assert!(matches!(
        sim.dep.phase,
        Phase::Paused {
            stage: 0,
            reason: PauseReason::GateFailed { .. }
        }
    ));
    for _ in 0..10 {
        let out = sim.tick_after(3_600_000);
        assert!(installs(&out).is_empty());
        assert!(!has(&out, |a| matches!(
            a,
            Action::PromoteStage { .. } | Action::Notify(_)
        )));
    }
    assert!(
        sim.stage(2)
            .iter()
            .all(|d| sim.state(d) == DeviceState::Pending)
    );
}

#[test]
fn resume_with_a_fixed_version_retries_failed_devices_and_completes() {
    let mut sim = Sim::new(spec(10));
    sim.step(Input::Start);
    let pilot = sim.stage(0)[0].clone();
    sim.fail(&pilot);
    let fixed = vec![PatchKey::new("openssl", "3.0.15-2")];
    let out = sim.step(Input::Resume {
        retry_failed: true,
        force: false,
        patches: Some(fixed.clone()),
    });
    assert!(has(&out, |a| matches!(
        a,
        Action::Notify(Event::Resumed { retried: 1, .. })
    )));
    match &out
        .iter()
        .find(|a| matches!(a, Action::DispatchInstall { .. }))
        .unwrap()
    {
        Action::DispatchInstall {
            device,
            attempt,
            command_id,
            patches,
        } => {
            assert_eq!(device, &pilot);
            assert_eq!(*attempt, 2);
            assert!(command_id.ends_with("/install/2"));
            assert_eq!(patches, &fixed);
        }
        _ => unreachable!(),
    }
    // The first attempt's late report is stale.
    let out = sim.step(Input::Report {
        device: pilot.clone(),
        attempt: 1,
        report: Report::Succeeded,
    });
    assert!(has(&out, |a| matches!(a, Action::Ignored { .. })));
    for k in 0..4 {
        sim.succeed(&sim.stage(k));
        sim.tick_after(10 * MIN);
    }
    assert_eq!(sim.dep.phase, Phase::Completed);
}

#[test]
fn resume_without_change_pauses_again_and_force_overrides_the_gate() {
    let mut sim = Sim::new(spec(10));
    sim.step(Input::Start);
    let pilot = sim.stage(0)[0].clone();
    sim.fail(&pilot);
    let out = sim.step(resume(false, false));
    assert!(has(&out, |a| matches!(
        a,
        Action::Notify(Event::GateFailed { .. })
    )));
    assert!(matches!(sim.dep.phase, Phase::Paused { .. }));
    let out = sim.step(resume(false, true));
    assert!(has(
        &out,
        |a| matches!(a, Action::PromoteStage { from, to, .. } if *from == 0 && *to == 1)
    ));
    assert!(sim.dep.forced.contains(&0));
    assert_eq!(
        sim.state(&pilot),
        DeviceState::Failed,
        "forcing does not re-install"
    );
}

#[test]
fn gate_waits_for_min_finished_and_the_success_rate_over_finished_devices() {
    let mut s = spec(20);
    s.stages = vec![50, 100];
    s.gate.min_finished = 5;
    s.gate.min_success_pct = 80;
    let mut sim = Sim::new(s);
    sim.step(Input::Start);
    let st = sim.stage(0);
    sim.succeed(&st[..4]);
    assert!(matches!(sim.dep.gate(0, sim.now), GateStatus::Waiting(_)));
    sim.fail(&st[4]);
    // 4 of 5 finished succeeded = 80 %, but 5 are in flight.
    assert!(matches!(sim.dep.gate(0, sim.now), GateStatus::Waiting(_)));
    sim.succeed(&st[5..9]);
    sim.fail(&st[9]);
    // 8 of 10 = 80 %: holds after the soak.
    assert!(matches!(sim.dep.gate(0, sim.now), GateStatus::Waiting(_)));
    assert_eq!(sim.dep.gate(0, sim.now + 10 * MIN), GateStatus::Holds);
    let f = sim.dep.figures(0);
    assert_eq!(
        (f.succeeded, f.failed, f.in_flight, f.success_pct()),
        (8, 2, 0, Some(80))
    );
}

#[test]
fn gate_fails_early_once_the_rate_cannot_be_reached() {
    let mut s = spec(20);
    s.stages = vec![50, 100]; // 10 devices; 95 % allows no failure
    let mut sim = Sim::new(s);
    sim.step(Input::Start);
    let st = sim.stage(0);
    let out = sim.fail(&st[3]);
    assert!(has(&out, |a| matches!(
        a,
        Action::Notify(Event::GateFailed { stage: 0, .. })
    )));
    // In-flight devices still report while paused.
    sim.succeed(&st[..3]);
    assert_eq!(sim.dep.figures(0).succeeded, 3);
}

// ---- windows ----

#[test]
fn devices_outside_their_window_wait_and_the_gate_counts_only_devices_that_had_theirs() {
    let mut s = spec(4);
    s.stages = vec![50, 100];
    let mut sim = Sim::new(s);
    let st0 = sim.stage(0);
    let late = st0[1].clone();
    let late2 = late.clone();
    // `late` has its window from T0 + 2 h.
    sim.windows = Box::new(move |d: &str, now: u64| d != late2 || now >= T0 + 2 * 3_600_000);
    let out = sim.step(Input::Start);
    assert_eq!(installs(&out), vec![st0[0].clone()]);
    assert_eq!(sim.state(&late), DeviceState::WaitingForWindow);
    sim.succeed(&st0[..1]);
    sim.now += 10 * MIN;
    let out = sim.step(Input::Tick);
    let f = sim.dep.figures(0);
    assert_eq!((f.counted, f.waiting), (1, 1));
    assert!(
        has(
            &out,
            |a| matches!(a, Action::PromoteStage { from, to, .. } if *from == 0 && *to == 1)
        ),
        "the waiting device does not block"
    );
    assert_eq!(installs(&out), sim.stage(1));
    sim.succeed(&sim.stage(1));
    sim.now += 10 * MIN;
    let out = sim.step(Input::Tick);
    assert!(
        !has(&out, |a| matches!(a, Action::Notify(Event::Completed))),
        "not before every device installed"
    );
    assert_eq!(sim.state(&late), DeviceState::WaitingForWindow);
    sim.now = T0 + 2 * 3_600_000;
    let out = sim.step(Input::Tick);
    assert_eq!(installs(&out), vec![late.clone()]);
    // The last stage's gate already held: the late device's result
    // completes the deployment.
    let out = sim.succeed(std::slice::from_ref(&late));
    assert!(has(&out, |a| matches!(a, Action::Notify(Event::Completed))));
}

#[test]
fn failures_among_an_earlier_stages_late_devices_pause_the_deployment() {
    // Stage 1 (10 devices): one installs, nine are held by their window
    // until T0 + 2 h; the gate holds on the one and the next stage starts.
    let mut s = spec(20);
    s.stages = vec![50, 100];
    let mut sim = Sim::new(s);
    let st0 = sim.stage(0);
    let held: BTreeSet<String> = st0[1..].iter().cloned().collect();
    let h2 = held.clone();
    sim.windows = Box::new(move |d: &str, now: u64| !h2.contains(d) || now >= T0 + 2 * 3_600_000);
    sim.step(Input::Start);
    sim.succeed(&st0[..1]);
    let out = sim.tick_after(10 * MIN);
    assert!(has(&out, |a| matches!(
        a,
        Action::PromoteStage { from: 0, to: 1, .. }
    )));
    // Their window opens while stage 2 runs, and they fail: stage 1's
    // gate would fail now, so the deployment pauses, naming stage 1.
    sim.now = T0 + 2 * 3_600_000;
    let out = sim.step(Input::Tick);
    assert_eq!(installs(&out).len(), 9);
    let mut paused = Vec::new();
    for d in &held {
        paused.extend(sim.fail(d));
    }
    assert!(
        has(&paused, |a| matches!(
            a,
            Action::Notify(Event::GateFailed { stage: 0, why, .. }) if why.starts_with("stage 1:")
        )),
        "{paused:?}"
    );
    assert!(
        matches!(sim.dep.phase, Phase::Paused { stage: 1, .. }),
        "{:?}",
        sim.dep.phase
    );
    // Nothing more is dispatched; forcing accepts the figures of every
    // stage reached, and the deployment goes on.
    assert!(installs(&sim.tick_after(MIN)).is_empty());
    sim.step(resume(false, true));
    assert!(
        matches!(sim.dep.phase, Phase::Running { stage: 1 }),
        "{:?}",
        sim.dep.phase
    );
    // A device rolled back by hand in an earlier stage is not an install
    // failure and pauses nothing.
    let mut s = spec(4);
    s.stages = vec![50, 100];
    let mut sim = Sim::new(s);
    sim.step(Input::Start);
    sim.succeed(&sim.stage(0));
    sim.tick_after(10 * MIN);
    let first = sim.stage(0)[0].clone();
    sim.step(Input::Rollback(RollbackScope::Device {
        device: first.clone(),
    }));
    sim.report(&first, Report::RolledBack);
    sim.tick_after(MIN);
    assert!(
        matches!(sim.dep.phase, Phase::Running { stage: 1 }),
        "{:?}",
        sim.dep.phase
    );
}

// ---- technician actions ----

#[test]
fn pause_stops_dispatching_and_resume_continues() {
    let mut sim = Sim::new(spec(10));
    sim.step(Input::Start);
    sim.succeed(&sim.stage(0));
    let out = sim.step(Input::Pause {
        note: "change freeze".into(),
    });
    assert!(has(&out, |a| *a == Action::Notify(Event::Paused { stage: 0 })));
    assert!(installs(&sim.tick_after(3_600_000)).is_empty());
    assert!(rejected(&sim.step(Input::Pause {
        note: String::new()
    })));
    let out = sim.step(resume(false, false));
    assert!(has(
        &out,
        |a| matches!(a, Action::PromoteStage { from, to, .. } if *from == 0 && *to == 1)
    ));
}

#[test]
fn technician_actions_in_the_wrong_state_are_rejected() {
    let mut sim = Sim::new(spec(10));
    assert!(rejected(&sim.step(resume(false, false))));
    assert!(rejected(&sim.step(Input::Pause {
        note: String::new()
    })));
    assert!(rejected(
        &sim.step(Input::Rollback(RollbackScope::Deployment))
    ));
    assert!(rejected(
        &sim.step(Input::Rollback(RollbackScope::Stage { stage: 0 }))
    ));
    sim.step(Input::Start);
    assert!(rejected(&sim.step(Input::Start)));
    assert!(rejected(
        &sim.step(Input::Rollback(RollbackScope::Stage { stage: 2 }))
    ));
    assert!(rejected(
        &sim.step(Input::Rollback(RollbackScope::Stage { stage: 9 }))
    ));
    let pending = sim.stage(3)[0].clone();
    assert!(rejected(&sim.step(Input::Rollback(
        RollbackScope::Device { device: pending }
    ))));
    assert!(rejected(&sim.step(Input::Rollback(
        RollbackScope::Device {
            device: "nope".into()
        }
    ))));
    let empty = Input::Resume {
        retry_failed: false,
        force: false,
        patches: Some(vec![]),
    };
    sim.step(Input::Pause {
        note: String::new(),
    });
    assert!(rejected(&sim.step(empty)));
    sim.step(Input::Abort { note: "x".into() });
    assert!(rejected(&sim.step(Input::Abort {
        note: "again".into()
    })));
    assert!(rejected(
        &sim.step(Input::Rollback(RollbackScope::Stage { stage: 0 }))
    ));
}

#[test]
fn abort_cancels_queued_installs_and_records_in_flight_results() {
    let mut s = spec(4);
    s.stages = vec![100];
    let mut sim = Sim::new(s);
    sim.step(Input::Start);
    let st = sim.stage(0);
    sim.report(&st[0], Report::Installing);
    let out = sim.step(Input::Abort {
        note: "wrong patch".into(),
    });
    let cancelled: Vec<&String> = out
        .iter()
        .filter_map(|a| match a {
            Action::CancelInstall { device, .. } => Some(device),
            _ => None,
        })
        .collect();
    assert_eq!(cancelled.len(), 3);
    assert!(!cancelled.contains(&&st[0]));
    assert!(has(&out, |a| *a == Action::Notify(Event::Aborted)));
    // Withdrawn before it started: back to pending; started after all:
    // its result counts.
    sim.report(&st[1], Report::Cancelled);
    assert_eq!(sim.state(&st[1]), DeviceState::Pending);
    sim.report(&st[2], Report::Installing);
    sim.report(&st[2], Report::Succeeded);
    assert_eq!(sim.state(&st[2]), DeviceState::Succeeded);
    let out = sim.report(&st[0], Report::Cancelled);
    assert!(
        has(&out, |a| matches!(a, Action::Ignored { .. })),
        "too late to cancel"
    );
    sim.report(&st[0], Report::Succeeded);
    assert_eq!(sim.state(&st[0]), DeviceState::Succeeded);
    assert!(installs(&sim.tick_after(3_600_000)).is_empty());
    assert!(matches!(sim.dep.phase, Phase::Aborted { .. }));
    // Cancelled by hand in a running deployment: failed, not re-sent.
    let mut s = spec(1);
    s.stages = vec![100];
    let mut sim = Sim::new(s);
    sim.step(Input::Start);
    let d = sim.stage(0)[0].clone();
    let out = sim.report(&d, Report::Cancelled);
    assert_eq!(sim.state(&d), DeviceState::Failed);
    assert!(installs(&out).is_empty());
}

#[test]
fn device_rollback_dispatches_now_or_after_the_install_ends() {
    let mut s = spec(3);
    s.stages = vec![100];
    let mut sim = Sim::new(s);
    sim.step(Input::Start);
    let st = sim.stage(0);
    sim.succeed(&st[..1]);
    let out = sim.step(Input::Rollback(RollbackScope::Device {
        device: st[0].clone(),
    }));
    assert_eq!(rollbacks(&out), vec![st[0].clone()]);
    assert!(has(
        &out,
        |a| matches!(a, Action::DispatchRollback { command_id, .. } if command_id.ends_with("/rollback/1"))
    ));
    assert_eq!(sim.state(&st[0]), DeviceState::RollingBack);
    assert!(rejected(&sim.step(Input::Rollback(
        RollbackScope::Device {
            device: st[0].clone()
        }
    ))));
    sim.report(&st[0], Report::RolledBack);
    assert_eq!(sim.state(&st[0]), DeviceState::RolledBack);
    // While installing: requested, dispatched on the result.
    sim.report(&st[1], Report::Installing);
    let out = sim.step(Input::Rollback(RollbackScope::Device {
        device: st[1].clone(),
    }));
    assert!(rollbacks(&out).is_empty());
    let out = sim.report(&st[1], Report::Succeeded);
    assert_eq!(rollbacks(&out), vec![st[1].clone()]);
    let out = sim.report(
        &st[1],
        Report::RollbackFailed {
            reason: "no .deb".into(),
        },
    );
    assert!(!has(&out, |a| matches!(a, Action::Ignored { .. })));
    assert_eq!(sim.state(&st[1]), DeviceState::RollbackFailed);
    // A rollback that never reports fails at the install deadline.
    sim.succeed(&st[2..]);
    sim.step(Input::Rollback(RollbackScope::Device {
        device: st[2].clone(),
    }));
    sim.tick_after(4 * 3_600_000);
    assert_eq!(sim.state(&st[2]), DeviceState::RollbackFailed);
}

#[test]
fn stage_rollback_rolls_back_every_dispatched_device_then_pauses() {
    let mut sim = Sim::new(spec(100));
    sim.step(Input::Start);
    sim.succeed(&sim.stage(0));
    sim.tick_after(10 * MIN);
    let st1 = sim.stage(1);
    sim.succeed(&st1[..5]);
    sim.report(&st1[5], Report::Installing);
    let out = sim.step(Input::Rollback(RollbackScope::Stage { stage: 1 }));
    assert_eq!(rollbacks(&out), st1[..5].to_vec(), "finished ones now");
    assert!(matches!(
        sim.dep.phase,
        Phase::RollingBack {
            stage: Some(1),
            at: 1
        }
    ));
    assert!(rejected(
        &sim.step(Input::Rollback(RollbackScope::Deployment))
    ));
    for d in &st1[..5] {
        sim.report(d, Report::RolledBack);
    }
    let out = sim.report(&st1[5], Report::Succeeded);
    assert_eq!(rollbacks(&out), vec![st1[5].clone()]);
    for d in &st1[6..] {
        let out = sim.fail(d);
        assert_eq!(rollbacks(&out), vec![d.clone()]);
    }
    let mut out = Vec::new();
    for d in &st1[5..] {
        out.extend(sim.report(d, Report::RolledBack));
    }
    assert!(has(&out, |a| *a
        == Action::Notify(Event::RolledBack {
            scope: RollbackScope::Stage { stage: 1 }
        })));
    assert_eq!(
        sim.dep.phase,
        Phase::Paused {
            stage: 1,
            reason: PauseReason::StageRolledBack
        }
    );
    assert!(
        sim.stage(2)
            .iter()
            .all(|d| sim.state(d) == DeviceState::Pending)
    );
}

#[test]
fn deployment_rollback_after_completion_ends_rolled_back() {
    let mut s = spec(3);
    s.stages = vec![100];
    let mut sim = Sim::new(s);
    sim.step(Input::Start);
    sim.succeed(&sim.stage(0));
    sim.tick_after(10 * MIN);
    assert_eq!(sim.dep.phase, Phase::Completed);
    let out = sim.step(Input::Rollback(RollbackScope::Deployment));
    assert_eq!(rollbacks(&out).len(), 3);
    for d in sim.stage(0) {
        sim.report(&d, Report::RolledBack);
    }
    assert_eq!(sim.dep.phase, Phase::RolledBack);
    assert!(rejected(
        &sim.step(Input::Rollback(RollbackScope::Deployment))
    ));
}

#[test]
fn automatic_stage_rollback_past_the_failure_threshold() {
    let mut s = spec(20);
    s.stages = vec![50, 100];
    s.gate.min_finished = 4;
    s.auto_rollback_failed_pct = Some(50);
    let mut sim = Sim::new(s);
    sim.step(Input::Start);
    let st = sim.stage(0);
    sim.succeed(&st[..2]);
    sim.fail(&st[2]);
    let out = sim.fail(&st[3]);
    assert!(has(&out, |a| matches!(
        a,
        Action::Notify(Event::AutoRollback { stage: 0, .. })
    )));
    assert_eq!(rollbacks(&out).len(), 4, "2 succeeded + 2 failed");
    for d in &st[..4] {
        sim.report(d, Report::RolledBack);
    }
    // The six in flight roll back as they end.
    for d in &st[4..] {
        let out = sim.succeed(std::slice::from_ref(d));
        assert_eq!(rollbacks(&out), vec![d.clone()]);
        sim.report(d, Report::RolledBack);
    }
    assert!(matches!(
        sim.dep.phase,
        Phase::Paused {
            stage: 0,
            reason: PauseReason::StageRolledBack
        }
    ));
    // Off by default: the same failures only pause.
    let mut s = spec(20);
    s.stages = vec![50, 100];
    let mut sim = Sim::new(s);
    sim.step(Input::Start);
    let out = sim.fail(&sim.stage(0)[0]);
    assert!(rollbacks(&out).is_empty());
    assert!(has(&out, |a| matches!(
        a,
        Action::Notify(Event::GateFailed { .. })
    )));
}

// ---- reports ----

#[test]
fn out_of_order_unknown_and_undispatched_reports_are_ignored() {
    let mut sim = Sim::new(spec(10));
    sim.step(Input::Start);
    let pilot = sim.stage(0)[0].clone();
    let later = sim.stage(2)[0].clone();
    let out = sim.step(Input::Report {
        device: later.clone(),
        attempt: 0,
        report: Report::Succeeded,
    });
    assert!(has(&out, |a| matches!(a, Action::Ignored { .. })));
    assert_eq!(
        sim.state(&later),
        DeviceState::Pending,
        "a report never skips a device's install"
    );
    let out = sim.step(Input::Report {
        device: "stranger".into(),
        attempt: 1,
        report: Report::Succeeded,
    });
    assert!(has(&out, |a| matches!(a, Action::Ignored { .. })));
    sim.report(&pilot, Report::Installing);
    let out = sim.report(&pilot, Report::Downloading);
    assert!(has(&out, |a| matches!(a, Action::Ignored { .. })));
    let out = sim.report(&pilot, Report::RolledBack);
    assert!(has(&out, |a| matches!(a, Action::Ignored { .. })));
    assert_eq!(sim.state(&pilot), DeviceState::Installing);
}

// ---- restart ----

#[test]
fn recover_re_emits_only_queued_installs_and_pending_rollbacks_with_their_ids() {
    let mut s = spec(4);
    s.stages = vec![100];
    let mut sim = Sim::new(s);
    let first = sim.step(Input::Start);
    let st = sim.stage(0);
    sim.report(&st[0], Report::Installing);
    sim.succeed(&st[1..2]);
    sim.succeed(&st[2..3]);
    sim.step(Input::Rollback(RollbackScope::Device {
        device: st[2].clone(),
    }));
    let stored = serde_json::to_string(&sim.dep).unwrap();
    let restored: Deployment = serde_json::from_str(&stored).unwrap();
    assert_eq!(restored, sim.dep);
    let again = restored.recover();
    assert_eq!(installs(&again), vec![st[3].clone()]);
    assert_eq!(rollbacks(&again), vec![st[2].clone()]);
    let original = first
        .iter()
        .find(|a| matches!(a, Action::DispatchInstall { device, .. } if *device == st[3]))
        .unwrap();
    assert!(
        again.contains(original),
        "same command id as before the crash"
    );
}

#[test]
fn a_thousand_devices_roll_out_through_every_stage_each_installed_once() {
    let mut s = spec(1000);
    s.targets = targets(1000, &[3, 500]);
    let mut sim = Sim::new(s);
    let started = std::time::Instant::now();
    let mut dispatched = Vec::new();
    dispatched.extend(installs(&sim.step(Input::Start)));
    let sizes: Vec<usize> = sim.dep.stages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![10, 90, 400, 500]);
    let mut steps = 1u32;
    for k in 0..4 {
        for d in sim.stage(k) {
            dispatched.extend(installs(&sim.report(&d, Report::Succeeded)));
            steps += 1;
        }
        dispatched.extend(installs(&sim.tick_after(10 * MIN)));
        steps += 1;
    }
    let elapsed = started.elapsed();
    assert_eq!(sim.dep.phase, Phase::Completed);
    let unique: BTreeSet<&String> = dispatched.iter().collect();
    assert_eq!((dispatched.len(), unique.len()), (1000, 1000));
    println!(
        "1000 devices: {steps} steps in {elapsed:?} ({:?} per step, unoptimized build)",
        elapsed / steps
    );
}
