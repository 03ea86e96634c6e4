//! The orchestrator over a real RocksDB, an explicit clock, and an
//! in-process installer that records every call.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use outpost_patch::approval::{ApprovalRule, ApprovalScope, AutoRule, RuleKind};
use outpost_patch::install::PackageChange;
use outpost_patch::rollout::{Phase as DPhase, RollbackScope};

use super::*;
use crate::deploy::LinkFuture;
use crate::deploy::approvals::tests::{FakePatches, enroll, missing, open_store};

/// One call the orchestrator made on the device link.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Install {
        device: DeviceId,
        key: String,
        targets: Vec<String>,
    },
    Rollback {
        device: DeviceId,
        key: String,
        request: RollbackRequest,
    },
    Cancel {
        key: String,
    },
}

#[derive(Default)]
struct TestInstaller {
    calls: Mutex<Vec<Call>>,
    /// Devices whose installs the link refuses.
    refuse: Mutex<BTreeSet<DeviceId>>,
}

impl TestInstaller {
    fn installs(&self) -> Vec<(DeviceId, String)> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter_map(|c| match c {
                Call::Install { device, key, .. } => Some((*device, key.clone())),
                _ => None,
            })
            .collect()
    }
    fn rollbacks(&self) -> Vec<(DeviceId, String, usize)> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter_map(|c| match c {
                Call::Rollback {
                    device,
                    key,
                    request,
                } => Some((*device, key.clone(), request.changes.len())),
                _ => None,
            })
            .collect()
    }
}

impl Installer for TestInstaller {
    fn install<'a>(
        &'a self,
        device: DeviceId,
        key: &'a str,
        request: &'a InstallRequest,
        _by: &'a str,
    ) -> LinkFuture<'a> {
        Box::pin(async move {
            if self.refuse.lock().unwrap().contains(&device) {
                return Err(LinkError::Refused("device link not available".into()));
            }
            self.calls.lock().unwrap().push(Call::Install {
                device,
                key: key.to_string(),
                targets: request.targets.iter().map(|t| t.apt_arg()).collect(),
            });
            Ok(())
        })
    }
    fn rollback<'a>(
        &'a self,
        device: DeviceId,
        key: &'a str,
        request: &'a RollbackRequest,
        _by: &'a str,
    ) -> LinkFuture<'a> {
        Box::pin(async move {
            self.calls.lock().unwrap().push(Call::Rollback {
                device,
                key: key.to_string(),
                request: request.clone(),
            });
            Ok(())
        })
    }
    fn cancel<'a>(&'a self, key: &'a str, _by: &'a str) -> LinkFuture<'a> {
        Box::pin(async move {
            self.calls.lock().unwrap().push(Call::Cancel {
                key: key.to_string(),
            });
            Ok(())
        })
    }
}

/// The site environment with recorded notifications and prefetches.
struct TestEnv {
    site: SiteEnv,
    notices: Mutex<Vec<Event>>,
    prefetched: Mutex<Vec<Vec<PatchKey>>>,
    /// The last alert level sent per (device, deployment).
    levels: Mutex<BTreeMap<(DeviceId, String), f64>>,
    /// Prefetches wait for a permit of this (none: they end at once).
    prefetch_hold: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// Deployments whose cache pins were released.
    released: Mutex<Vec<String>>,
}

impl DeployEnv for TestEnv {
    fn windows(&self, d: &StoredDeployment, now_ms: u64) -> SiteWindows {
        self.site.windows(d, now_ms)
    }
    fn notify(&self, d: &StoredDeployment, event: &Event) {
        self.site.notify(d, event);
        self.notices.lock().unwrap().push(event.clone());
    }
    fn alert_levels(&self, d: &StoredDeployment) {
        for (dev, values) in alert_samples(d) {
            for v in values {
                assert_eq!(v.name, GATE_FAILED_METRIC);
                self.levels.lock().unwrap().insert((dev, v.label), v.value);
            }
        }
    }
    fn prefetch(&self, _d: &str, patches: &[PatchKey]) -> PrefetchFuture {
        self.prefetched.lock().unwrap().push(patches.to_vec());
        let hold = self.prefetch_hold.lock().unwrap().clone();
        Box::pin(async move {
            if let Some(h) = hold {
                let _p = h.acquire().await;
            }
            Ok(1000)
        })
    }
    fn release(&self, deployment: &str) {
        self.released.lock().unwrap().push(deployment.to_string());
    }
    fn targets(&self, device: DeviceId, patches: &[PatchKey], now_ms: u64) -> DeviceTargets {
        self.site.targets(device, patches, now_ms)
    }
}

struct Site {
    _dir: tempfile::TempDir,
    store: Store,
    patches: Arc<FakePatches>,
    devices: Vec<DeviceId>,
}

const H: u64 = 3_600_000;

/// `n` devices (the first tagged `pilot`), each missing openssl 3.0.2-1,
/// security patches auto-approved tenant-wide.
fn site(n: u64) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let patches = Arc::new(FakePatches::default());
    let mut devices = Vec::new();
    for i in 1..=n {
        let tags: &[&str] = if i == 1 { &["pilot"] } else { &["servers"] };
        let d = enroll(&store, i, "dental", tags);
        patches
            .0
            .lock()
            .unwrap()
            .insert(d, vec![missing("openssl", "3.0.1-1", "3.0.2-1", true)]);
        devices.push(d);
    }
    approvals::add_rule(
        &store,
        &ApprovalRule {
            id: "security".into(),
            scope: ApprovalScope::Tenant {
                tenant: "msp".into(),
            },
            rule: RuleKind::Auto(AutoRule {
                security_only: true,
                ..Default::default()
            }),
        },
        "admin",
        0,
    )
    .unwrap();
    Site {
        _dir: dir,
        store,
        patches,
        devices,
    }
}

fn orchestrator(s: &Site, installer: Arc<TestInstaller>) -> (Orchestrator, Arc<TestEnv>) {
    let env = Arc::new(TestEnv {
        site: SiteEnv {
            store: s.store.clone(),
            patches: s.patches.clone(),
            alerts: None,
            cache: Default::default(),
        },
        notices: Mutex::new(Vec::new()),
        prefetched: Mutex::new(Vec::new()),
        levels: Mutex::new(BTreeMap::new()),
        prefetch_hold: Mutex::new(None),
        released: Mutex::new(Vec::new()),
    });
    let o = Orchestrator::new(
        s.store.clone(),
        installer,
        env.clone(),
        Arc::new(Metrics::new()),
        InstallOptions::default(),
    );
    (o, env)
}

fn status(dep: &str, attempt: u32, phase: Phase, rollback: bool) -> DeviceStatus {
    DeviceStatus {
        command: String::new(),
        deployment: dep.to_string(),
        attempt,
        rollback,
        phase,
        reason: (phase == Phase::Failed).then(|| "preinst failed".to_string()),
        changes: if phase == Phase::Succeeded && !rollback {
            vec![PackageChange {
                name: "openssl".into(),
                arch: None,
                from: Some("3.0.1-1".into()),
                to: Some("3.0.2-1".into()),
                configured: true,
            }]
        } else {
            vec![]
        },
        kept: vec![],
        skipped: vec![],
        snapshot: None,
        boot_id: None,
        reboot_required: false,
        log_tail: String::new(),
        at_ms: 0,
    }
}

fn request(target: DeployTarget) -> CreateRequest {
    CreateRequest {
        id: Some("dep-1".into()),
        target,
        patches: None,
        security_only: false,
        stages: None,
        gate: Some(GateSpec {
            soak_ms: H,
            ..Default::default()
        }),
        auto_rollback_failed_pct: None,
        install_deadline_ms: None,
        window: None,
        options: Default::default(),
        start: true,
    }
}

fn dispatched_keys(i: &TestInstaller) -> BTreeMap<DeviceId, BTreeSet<String>> {
    let mut m: BTreeMap<DeviceId, BTreeSet<String>> = BTreeMap::new();
    for (d, k) in i.installs() {
        m.entry(d).or_default().insert(k);
    }
    m
}

#[tokio::test]
async fn a_failed_pilot_pauses_notifies_and_holds_later_stages_until_resumed_with_a_fixed_version()
{
    let s = site(10);
    let inst = Arc::new(TestInstaller::default());
    let (o, env) = orchestrator(&s, inst.clone());
    let t0 = 1_000 * H;
    let d = o
        .create(request(DeployTarget::All), s.patches.as_ref(), "admin", t0)
        .await
        .unwrap();
    assert_eq!(
        d.deployment.spec.patches,
        vec![PatchKey::new("openssl", "3.0.2-1")]
    );
    let pilot = s.devices[0];
    assert_eq!(
        inst.installs(),
        vec![(pilot, format!("dep-1/{pilot}/install/1"))],
        "only the pilot is dispatched first"
    );
    assert_eq!(env.prefetched.lock().unwrap().len(), 1);
    o.report(pilot, &status("dep-1", 1, Phase::Failed, false), t0 + 1)
        .await
        .unwrap();
    let d = o.get("dep-1").unwrap();
    assert!(
        matches!(d.deployment.phase, DPhase::Paused { stage: 0, .. }),
        "{:?}",
        d.deployment.phase
    );
    assert_eq!(
        d.installs[&pilot.to_string()].reason.as_deref(),
        Some("preinst failed")
    );
    assert!(
        env.notices
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::GateFailed { stage: 0, .. })),
        "{:?}",
        env.notices.lock().unwrap()
    );
    assert_eq!(
        env.levels
            .lock()
            .unwrap()
            .get(&(pilot, "dep-1".to_string())),
        Some(&1.0),
        "the failed pilot raises its deploy_gate_failed alert"
    );
    // Days pass: nothing else is dispatched while paused.
    o.tick(t0 + 48 * H).await.unwrap();
    assert_eq!(inst.installs().len(), 1);
    // A fixed version is published and approved (auto rule): resume with it.
    for p in s.patches.0.lock().unwrap().values_mut() {
        *p = vec![missing("openssl", "3.0.1-1", "3.0.2-2", true)];
    }
    let fixed = PatchKey::new("openssl", "3.0.2-2");
    o.input(
        "dep-1",
        Input::Resume {
            retry_failed: true,
            force: false,
            patches: Some(vec![fixed.clone()]),
        },
        "tech",
        t0 + 49 * H,
    )
    .await
    .unwrap();
    assert_eq!(env.prefetched.lock().unwrap()[1], vec![fixed.clone()]);
    assert_eq!(
        env.levels
            .lock()
            .unwrap()
            .get(&(pilot, "dep-1".to_string())),
        Some(&0.0),
        "resuming lowers it"
    );
    let calls = inst.calls.lock().unwrap().clone();
    assert!(
        matches!(calls.last(), Some(Call::Install { device, key, targets })
            if *device == pilot && key.ends_with("/install/2") && targets == &vec!["openssl=3.0.2-2".to_string()]),
        "{calls:?}"
    );
    // Every stage completes: each device reports success, ticks past the soak.
    let mut now = t0 + 50 * H;
    for _round in 0..6 {
        let d = o.get("dep-1").unwrap();
        for (dev, r) in &d.deployment.devices {
            if r.state == outpost_patch::rollout::DeviceState::Queued {
                let id: DeviceId = dev.parse().unwrap();
                o.report(
                    id,
                    &status("dep-1", r.attempt, Phase::Succeeded, false),
                    now,
                )
                .await
                .unwrap();
            }
        }
        now += 2 * H;
        o.tick(now).await.unwrap();
    }
    let d = o.get("dep-1").unwrap();
    assert_eq!(
        d.deployment.phase,
        DPhase::Completed,
        "{:?}",
        d.deployment.phase
    );
    let keys = dispatched_keys(&inst);
    assert_eq!(keys.len(), 10, "every device dispatched");
    for (dev, k) in &keys {
        if *dev != pilot {
            assert_eq!(k.len(), 1, "{dev}: {k:?}");
        }
    }
}

#[tokio::test]
async fn a_crash_between_persist_and_apply_neither_repeats_nor_skips_an_install() {
    let s = site(10);
    let t0 = 1_000 * H;
    {
        let inst = Arc::new(TestInstaller::default());
        let (o, _) = orchestrator(&s, inst.clone());
        let mut req = request(DeployTarget::All);
        req.stages = Some(vec![100]);
        req.start = false;
        o.create(req, s.patches.as_ref(), "admin", t0)
            .await
            .unwrap();
        // Start is stepped and persisted, then the appliance dies before
        // applying any action.
        let (_, actions) = o.step_persist("dep-1", Input::Start, t0, |_| {}).unwrap();
        assert_eq!(
            actions
                .iter()
                .filter(|a| matches!(a, Action::DispatchInstall { .. }))
                .count(),
            10
        );
        assert!(inst.installs().is_empty());
    }
    // Restart over the same database.
    let inst = Arc::new(TestInstaller::default());
    let (o, _) = orchestrator(&s, inst.clone());
    o.recover(t0 + 1).await.unwrap();
    let keys = dispatched_keys(&inst);
    assert_eq!(keys.len(), 10, "no device skipped");
    for (dev, k) in &keys {
        assert_eq!(k, &BTreeSet::from([format!("dep-1/{dev}/install/1")]));
    }
    // One device finishes, then another crash and restart: that device
    // gets nothing again; the others are re-applied with the same keys
    // (the installer queues a key once).
    let first = s.devices[3];
    o.report(first, &status("dep-1", 1, Phase::Succeeded, false), t0 + 2)
        .await
        .unwrap();
    drop(o);
    let inst2 = Arc::new(TestInstaller::default());
    let (o, _) = orchestrator(&s, inst2.clone());
    o.recover(t0 + 3).await.unwrap();
    let keys = dispatched_keys(&inst2);
    assert_eq!(keys.len(), 9);
    assert!(
        !keys.contains_key(&first),
        "a finished device is not re-dispatched"
    );
    for (dev, k) in &keys {
        assert_eq!(k, &BTreeSet::from([format!("dep-1/{dev}/install/1")]));
    }
}

async fn succeed_queued(o: &Orchestrator, now: u64) {
    let d = o.get("dep-1").unwrap();
    for (dev, r) in &d.deployment.devices {
        if r.state == outpost_patch::rollout::DeviceState::Queued {
            o.report(
                dev.parse().unwrap(),
                &status("dep-1", r.attempt, Phase::Succeeded, false),
                now,
            )
            .await
            .unwrap();
        }
    }
}

async fn roll_back_rolling(o: &Orchestrator, now: u64) {
    let d = o.get("dep-1").unwrap();
    for (dev, r) in &d.deployment.devices {
        if r.state == outpost_patch::rollout::DeviceState::RollingBack {
            o.report(
                dev.parse().unwrap(),
                &status("dep-1", r.attempt, Phase::RolledBack, true),
                now,
            )
            .await
            .unwrap();
        }
    }
}

#[tokio::test]
async fn rollback_per_stage_per_device_and_per_deployment_sends_what_each_install_changed() {
    let s = site(4);
    let inst = Arc::new(TestInstaller::default());
    let (o, env) = orchestrator(&s, inst.clone());
    let t0 = 1_000 * H;
    let mut req = request(DeployTarget::All);
    req.stages = Some(vec![50, 100]);
    o.create(req, s.patches.as_ref(), "admin", t0)
        .await
        .unwrap();
    succeed_queued(&o, t0 + 1).await;
    o.tick(t0 + 2 * H).await.unwrap();
    let d = o.get("dep-1").unwrap();
    assert_eq!(d.deployment.phase, DPhase::Running { stage: 1 });
    let stage0: BTreeSet<DeviceId> = d.deployment.stages[0]
        .iter()
        .map(|x| x.parse().unwrap())
        .collect();
    let stage1: Vec<DeviceId> = d.deployment.stages[1]
        .iter()
        .map(|x| x.parse().unwrap())
        .collect();
    // Per stage: stage 0's devices, each with what its install changed.
    o.input(
        "dep-1",
        Input::Rollback(RollbackScope::Stage { stage: 0 }),
        "tech",
        t0 + 2 * H + 1,
    )
    .await
    .unwrap();
    let rb = inst.rollbacks();
    assert_eq!(rb.iter().map(|r| r.0).collect::<BTreeSet<_>>(), stage0);
    for (dev, key, changes) in &rb {
        assert_eq!(key, &format!("dep-1/{dev}/rollback/1"));
        assert_eq!(*changes, 1, "the rollback carries what the install changed");
    }
    roll_back_rolling(&o, t0 + 2 * H + 2).await;
    succeed_queued(&o, t0 + 2 * H + 3).await;
    let d = o.get("dep-1").unwrap();
    assert!(
        matches!(d.deployment.phase, DPhase::Paused { .. }),
        "a rolled-back stage pauses: {:?}",
        d.deployment.phase
    );
    // Per device: one device of stage 1.
    o.input(
        "dep-1",
        Input::Rollback(RollbackScope::Device {
            device: stage1[0].to_string(),
        }),
        "tech",
        t0 + 3 * H,
    )
    .await
    .unwrap();
    assert_eq!(inst.rollbacks().len(), rb.len() + 1);
    assert_eq!(inst.rollbacks().last().unwrap().0, stage1[0]);
    roll_back_rolling(&o, t0 + 3 * H + 1).await;
    // Per deployment: the rest.
    o.input(
        "dep-1",
        Input::Rollback(RollbackScope::Deployment),
        "tech",
        t0 + 4 * H,
    )
    .await
    .unwrap();
    let rolled: BTreeSet<DeviceId> = inst.rollbacks().iter().map(|r| r.0).collect();
    assert_eq!(
        rolled.len(),
        4,
        "every device rolled back: {:?}",
        inst.rollbacks()
    );
    roll_back_rolling(&o, t0 + 4 * H + 1).await;
    o.tick(t0 + 4 * H + 2).await.unwrap();
    let d = o.get("dep-1").unwrap();
    assert_eq!(
        d.deployment.phase,
        DPhase::RolledBack,
        "{:?}",
        d.deployment.phase
    );
    assert!(
        env.notices
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::RolledBack { .. }))
    );
    // Nothing is ever re-installed by a rollback.
    assert_eq!(inst.installs().len(), 4);
}

#[tokio::test]
async fn a_rollback_after_a_retry_undoes_every_attempt_and_names_the_agents_command_id() {
    let s = site(1);
    let dev = s.devices[0];
    let inst = Arc::new(TestInstaller::default());
    let (o, _env) = orchestrator(&s, inst.clone());
    let t0 = 1_000 * H;
    o.create(request(DeployTarget::All), s.patches.as_ref(), "admin", t0)
        .await
        .unwrap();
    let change = |name: &str, from: &str, to: &str| PackageChange {
        name: name.into(),
        arch: None,
        from: Some(from.into()),
        to: Some(to.into()),
        configured: true,
    };
    // Attempt 1 upgrades libssl3, then fails on openssl.
    let mut failed = status("dep-1", 1, Phase::Failed, false);
    failed.changes = vec![change("libssl3", "3.0.1-1", "3.0.2-1")];
    o.report(dev, &failed, t0 + 1).await.unwrap();
    o.input(
        "dep-1",
        Input::Resume {
            retry_failed: true,
            force: false,
            patches: None,
        },
        "tech",
        t0 + 2,
    )
    .await
    .unwrap();
    // Attempt 2 starts (no changes yet), attempt 1's report arrives again
    // late, then attempt 2 upgrades openssl.
    o.report(dev, &status("dep-1", 2, Phase::Downloading, false), t0 + 3)
        .await
        .unwrap();
    o.report(dev, &failed, t0 + 4).await.unwrap();
    o.report(dev, &status("dep-1", 2, Phase::Succeeded, false), t0 + 5)
        .await
        .unwrap();
    let d = o.get("dep-1").unwrap();
    let shown = &d.installs[&dev.to_string()];
    assert_eq!((shown.attempt, shown.phase.as_str()), (2, "succeeded"));
    o.input(
        "dep-1",
        Input::Rollback(RollbackScope::Device {
            device: dev.to_string(),
        }),
        "tech",
        t0 + 6,
    )
    .await
    .unwrap();
    let calls = inst.calls.lock().unwrap().clone();
    let Some(Call::Rollback { request, .. }) = calls.last() else {
        panic!("no rollback: {calls:?}");
    };
    assert_eq!(
        request.changes,
        vec![
            change("libssl3", "3.0.1-1", "3.0.2-1"),
            change("openssl", "3.0.1-1", "3.0.2-1"),
        ],
        "both attempts' changes"
    );
    assert_eq!(request.attempt, 2);
    assert_eq!(
        request.install_command,
        crate::deploy::command_id(&format!("dep-1/{dev}/install/2")).to_string(),
        "the id the agent ran (and recorded) the install under"
    );
}

#[tokio::test]
async fn a_device_that_still_needs_the_patch_but_cannot_get_it_as_deployed_fails_never_succeeds() {
    let s = site(4);
    let inst = Arc::new(TestInstaller::default());
    let (o, _env) = orchestrator(&s, inst.clone());
    let t0 = 1_000 * H;
    let mut req = request(DeployTarget::All);
    req.stages = Some(vec![25, 100]);
    o.create(req, s.patches.as_ref(), "admin", t0)
        .await
        .unwrap();
    succeed_queued(&o, t0 + 1).await;
    let d = o.get("dep-1").unwrap();
    let later: Vec<DeviceId> = d.deployment.stages[1]
        .iter()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(later.len(), 3);
    {
        let mut p = s.patches.0.lock().unwrap();
        // Superseded before its stage: the device is offered 3.0.2-2 now.
        p.insert(
            later[0],
            vec![missing("openssl", "3.0.1-1", "3.0.2-2", true)],
        );
        // Installed it meanwhile (by hand): nothing of it is missing.
        p.insert(later[1], vec![]);
        // Still offered 3.0.2-1, but declined for this device below.
    }
    approvals::set_manual(
        &s.store,
        s.patches.as_ref(),
        PatchKey::new("openssl", "3.0.2-1"),
        ApprovalScope::Device {
            device: later[2].to_string(),
        },
        outpost_patch::approval::Verdict::Decline,
        "admin",
        t0 + 2,
    )
    .unwrap();
    o.tick(t0 + 2 * H).await.unwrap();
    let d = o.get("dep-1").unwrap();
    let state = |dev: DeviceId| d.deployment.devices[&dev.to_string()].clone();
    let superseded = state(later[0]);
    assert_eq!(
        superseded.state,
        outpost_patch::rollout::DeviceState::Failed
    );
    let why = superseded.reason.unwrap_or_default();
    assert!(why.contains("offer 3.0.2-2"), "{why}");
    assert_eq!(
        state(later[1]).state,
        outpost_patch::rollout::DeviceState::Succeeded,
        "nothing left to install: done"
    );
    let declined = state(later[2]);
    assert_eq!(declined.state, outpost_patch::rollout::DeviceState::Failed);
    assert!(
        declined
            .reason
            .unwrap_or_default()
            .contains("no longer approved"),
        "{:?}",
        d.deployment.devices
    );
    // Neither failed device got an install command.
    let sent: BTreeSet<DeviceId> = inst.installs().iter().map(|(d, _)| *d).collect();
    assert!(
        !sent.contains(&later[0]) && !sent.contains(&later[2]),
        "{sent:?}"
    );
}

#[tokio::test]
async fn a_deployment_with_nothing_approved_is_refused_with_the_reason() {
    let s = site(2);
    let (o, _) = orchestrator(&s, Arc::new(TestInstaller::default()));
    let e = o
        .create(
            request(DeployTarget::Tag {
                tag: "nobody".into(),
            }),
            s.patches.as_ref(),
            "admin",
            0,
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no enrolled device matches tag nobody"),
        "{e}"
    );
    approvals::remove_rule(&s.store, "security", "admin", 1).unwrap();
    let e = o
        .create(request(DeployTarget::All), s.patches.as_ref(), "admin", 2)
        .await
        .unwrap_err();
    assert!(matches!(e, DeployError::Refused(_)));
    assert!(
        e.to_string()
            .contains("no patch is approved for all devices"),
        "{e}"
    );
    assert!(o.list().unwrap().is_empty());
}

#[tokio::test]
async fn an_install_the_device_link_refuses_fails_that_device_with_the_reason() {
    let s = site(3);
    let inst = Arc::new(TestInstaller::default());
    inst.refuse.lock().unwrap().insert(s.devices[0]);
    let (o, env) = orchestrator(&s, inst.clone());
    o.create(request(DeployTarget::All), s.patches.as_ref(), "admin", 0)
        .await
        .unwrap();
    let d = o.get("dep-1").unwrap();
    let r = &d.deployment.devices[&s.devices[0].to_string()];
    assert_eq!(r.state, outpost_patch::rollout::DeviceState::Failed);
    assert!(
        r.reason
            .as_deref()
            .unwrap_or("")
            .contains("device link not available"),
        "{r:?}"
    );
    assert!(matches!(d.deployment.phase, DPhase::Paused { .. }));
    assert!(!env.notices.lock().unwrap().is_empty());
}

#[tokio::test]
async fn pause_and_resume_are_refused_in_the_wrong_state_as_conflicts() {
    let s = site(2);
    let (o, _) = orchestrator(&s, Arc::new(TestInstaller::default()));
    o.create(request(DeployTarget::All), s.patches.as_ref(), "admin", 0)
        .await
        .unwrap();
    let e = o
        .input(
            "dep-1",
            Input::Resume {
                retry_failed: false,
                force: false,
                patches: None,
            },
            "tech",
            1,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, DeployError::Conflict(ref m) if m.contains("not paused")),
        "{e}"
    );
    o.input("dep-1", Input::Pause { note: "x".into() }, "tech", 2)
        .await
        .unwrap();
    assert!(matches!(
        o.input("nope", Input::Pause { note: "x".into() }, "tech", 3)
            .await,
        Err(DeployError::NotFound(_))
    ));
}

/// The orchestration benchmark of issue 15 (one patch to 1,000 simulated
/// devices, in-process installer): run with
/// `cargo test -p outpost-appliance --lib deploy::orchestrator::tests::bench_ -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "benchmark: prints RESULT lines"]
async fn bench_one_patch_to_1000_devices() {
    let s = site(1000);
    let inst = Arc::new(TestInstaller::default());
    let (o, _) = orchestrator(&s, inst.clone());
    let t0 = 1_000 * H;
    let mut req = request(DeployTarget::All);
    req.stages = Some(vec![100]);
    req.gate = Some(GateSpec {
        soak_ms: 0,
        ..Default::default()
    });
    req.start = false;
    let started = std::time::Instant::now();
    o.create(req, s.patches.as_ref(), "admin", t0)
        .await
        .unwrap();
    let create_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = std::time::Instant::now();
    o.input("dep-1", Input::Start, "admin", t0).await.unwrap();
    let dispatch_ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(inst.installs().len(), 1000);
    let started = std::time::Instant::now();
    let (last, rest) = s.devices.split_last().unwrap();
    let (bytes0, records0, _) = writes(&o);
    for d in rest {
        o.report(*d, &status("dep-1", 1, Phase::Succeeded, false), t0 + 1)
            .await
            .unwrap();
    }
    let report_us = started.elapsed().as_secs_f64() * 1e6 / rest.len() as f64;
    let (bytes1, records1, _) = writes(&o);
    let write_bytes = (bytes1 - bytes0) / rest.len() as u64;
    let records = (records1 - records0) as f64 / rest.len() as f64;
    let before = o.get("dep-1").unwrap();
    // What a report wrote before the per-device records: the whole
    // deployment's JSON.
    let whole_bytes = serde_json::to_vec(&before).unwrap().len();
    let started = std::time::Instant::now();
    let verdict = before.deployment.gate(0, t0 + 1);
    let gate_us = started.elapsed().as_secs_f64() * 1e6;
    assert!(matches!(
        verdict,
        outpost_patch::rollout::GateStatus::Waiting(_)
    ));
    // The last report: step (gate holds → completed), persist, apply.
    let started = std::time::Instant::now();
    o.report(*last, &status("dep-1", 1, Phase::Succeeded, false), t0 + 2)
        .await
        .unwrap();
    let gate_ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(o.get("dep-1").unwrap().deployment.phase, DPhase::Completed);
    println!(
        "RESULT deploy_orchestration devices=1000 create_ms={create_ms:.1} stage_start_to_all_dispatched_ms={dispatch_ms:.1} report_step_persist_us={report_us:.0} report_write_bytes={write_bytes} report_device_records={records:.2} whole_record_bytes={whole_bytes} gate_eval_us={gate_us:.0} final_report_gate_to_completed_ms={gate_ms:.2}"
    );
}

#[tokio::test]
async fn a_maintenance_window_that_pauses_patch_installs_holds_its_devices_until_it_ends() {
    use crate::alerts::model::{MaintenanceWindow, Schedule, Scope, WindowEffect};
    let s = site(3);
    let inst = Arc::new(TestInstaller::default());
    let (o, _) = orchestrator(&s, inst.clone());
    // 2026-11-24 10:00–11:00 UTC, devices tagged `servers` (not the pilot).
    let start: u64 = 1_795_514_400_000;
    let w = MaintenanceWindow {
        id: "freeze".into(),
        name: "freeze".into(),
        scope: Scope::Tag {
            tag: "servers".into(),
        },
        schedule: Schedule::OneOff {
            start: "2026-11-24T10:00:00Z".into(),
            end: "2026-11-24T11:00:00Z".into(),
        },
        effects: vec![WindowEffect::PausePatchInstalls],
    };
    crate::alerts::store::put_config(
        &s.store,
        crate::alerts::store::ConfigKind::Window,
        "freeze",
        &w,
    )
    .unwrap();
    let mut req = request(DeployTarget::All);
    req.stages = Some(vec![100]);
    o.create(req, s.patches.as_ref(), "admin", start + 60_000)
        .await
        .unwrap();
    let keys = dispatched_keys(&inst);
    assert_eq!(
        keys.keys().copied().collect::<Vec<_>>(),
        vec![s.devices[0]],
        "only the device outside the window installs"
    );
    let d = o.get("dep-1").unwrap();
    assert_eq!(
        d.deployment.devices[&s.devices[1].to_string()].state,
        outpost_patch::rollout::DeviceState::WaitingForWindow
    );
    // The window ends; before any tick a technician's refused input
    // steps the deployment: what that step dispatched is applied too.
    let e = o
        .input(
            "dep-1",
            Input::Resume {
                retry_failed: false,
                force: false,
                patches: None,
            },
            "tech",
            start + 3_600_000 + 1,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, DeployError::Conflict(_)), "{e}");
    assert_eq!(
        dispatched_keys(&inst).len(),
        3,
        "the window ended: all dispatched, even by a refused input's step"
    );
}

/// Bytes, device records and headers written by the orchestrator so far.
fn writes(o: &Orchestrator) -> (u64, u64, u64) {
    let m = &o.metrics.deploy;
    (
        m.store_write_bytes.get(),
        m.store_device_records.get(),
        m.store_header_writes.get(),
    )
}

/// One running stage of `n` devices, every install dispatched; returns
/// what one success report (the second device's) wrote.
async fn one_report_writes(n: u64) -> (u64, u64, u64) {
    let s = site(n);
    let inst = Arc::new(TestInstaller::default());
    let (o, _) = orchestrator(&s, inst.clone());
    let t0 = 1_000 * H;
    let mut req = request(DeployTarget::All);
    req.stages = Some(vec![100]);
    o.create(req, s.patches.as_ref(), "admin", t0)
        .await
        .unwrap();
    assert_eq!(inst.installs().len(), n as usize);
    let before = writes(&o);
    o.report(
        s.devices[1],
        &status("dep-1", 1, Phase::Succeeded, false),
        t0 + 1,
    )
    .await
    .unwrap();
    let after = writes(&o);
    (after.0 - before.0, after.1 - before.1, after.2 - before.2)
}

#[tokio::test]
async fn a_device_report_writes_its_device_record_and_the_state_whatever_the_deployment_size() {
    let small = one_report_writes(5).await;
    let big = one_report_writes(300).await;
    assert_eq!(small.1, 1, "one device record written");
    assert_eq!(big.1, 1, "one device record written");
    assert_eq!((small.2, big.2), (0, 0), "no header write");
    // Same bytes (the device ids have the same length): nothing grows with
    // the deployment.
    assert_eq!(small.0, big.0, "bytes of one report's write");
    assert!(big.0 < 2_000, "{} bytes", big.0);
}

/// Every stage's figures and gate at `now` (what the gates decide from).
fn gates(d: &StoredDeployment, now: u64) -> Vec<(outpost_patch::rollout::GateFigures, String)> {
    (0..d.deployment.stages.len() as u32)
        .map(|k| {
            (
                d.deployment.figures(k),
                format!("{:?}", d.deployment.gate(k, now)),
            )
        })
        .collect()
}

#[tokio::test]
async fn state_rebuilt_from_the_per_device_records_after_a_restart_matches_the_state_in_memory() {
    let s = site(20);
    let t0 = 1_000 * H;
    let inst = Arc::new(TestInstaller::default());
    let (o, _) = orchestrator(&s, inst.clone());
    let mut req = request(DeployTarget::All);
    req.stages = Some(vec![10, 50, 100]);
    req.gate = Some(GateSpec {
        min_success_pct: 50,
        soak_ms: 0,
        ..Default::default()
    });
    o.create(req, s.patches.as_ref(), "admin", t0)
        .await
        .unwrap();
    // Stage 0 succeeds; in stage 1 one fails, one reboots, the rest succeed.
    succeed_queued(&o, t0 + 1).await;
    let d = o.get("dep-1").unwrap();
    let queued: Vec<String> = d
        .deployment
        .devices
        .iter()
        .filter(|(_, r)| r.state == outpost_patch::rollout::DeviceState::Queued)
        .map(|(d, _)| d.clone())
        .collect();
    assert!(queued.len() >= 3, "{queued:?}");
    o.report(
        queued[0].parse().unwrap(),
        &status("dep-1", 1, Phase::Failed, false),
        t0 + 2,
    )
    .await
    .unwrap();
    o.report(
        queued[1].parse().unwrap(),
        &status("dep-1", 1, Phase::RebootPending, false),
        t0 + 3,
    )
    .await
    .unwrap();
    o.report(
        queued[2].parse().unwrap(),
        &status("dep-1", 1, Phase::Succeeded, false),
        t0 + 4,
    )
    .await
    .unwrap();
    let in_memory = o.get("dep-1").unwrap();
    drop(o);
    let (o, _) = orchestrator(&s, Arc::new(TestInstaller::default()));
    let read = o.get("dep-1").unwrap();
    assert_eq!(
        read, in_memory,
        "the deployment read back is the one in memory"
    );
    assert_eq!(gates(&read, t0 + 5), gates(&in_memory, t0 + 5));
    assert_eq!(
        read.installs[&queued[0]].reason.as_deref(),
        Some("preinst failed")
    );
    // Stepping on after the restart gives what the first would have.
    o.recover(t0 + 5).await.unwrap();
    let d = o.get("dep-1").unwrap();
    assert_eq!(d.deployment.devices, in_memory.deployment.devices);
}

#[tokio::test]
async fn a_deployment_written_whole_by_an_older_build_is_read_and_rewritten_per_device() {
    let s = site(6);
    let t0 = 1_000 * H;
    let mut req = request(DeployTarget::All);
    req.stages = Some(vec![50, 100]);
    let old = {
        let inst = Arc::new(TestInstaller::default());
        let (o, _) = orchestrator(&s, inst.clone());
        o.create(req, s.patches.as_ref(), "admin", t0)
            .await
            .unwrap();
        succeed_queued(&o, t0 + 1).await;
        o.get("dep-1").unwrap()
    };
    assert!(!old.installs.is_empty());
    // What an older build stored: the whole deployment in `deployments`,
    // no per-device records, no state record.
    let mut b = s.store.batch();
    b.delete_range(store::DEPLOYMENT_DEVICES, &[], &[0xff; 8])
        .unwrap();
    b.delete(store::DEPLOYMENT_STATE, b"dep-1").unwrap();
    s.store.write(b).unwrap();
    store::put_legacy(&s.store, &old).unwrap();
    let raw: serde_json::Value = s.store.get(store::DEPLOYMENTS, b"dep-1").unwrap().unwrap();
    assert!(raw.get("layout").is_none());
    assert_eq!(
        raw["deployment"]["devices"].as_object().unwrap().len(),
        6,
        "the old layout"
    );
    // Read as it is.
    let inst = Arc::new(TestInstaller::default());
    let (o, _) = orchestrator(&s, inst.clone());
    assert_eq!(o.get("dep-1").unwrap(), old);
    // The start rewrites it per device; nothing is dispatched again.
    o.recover(t0 + 2).await.unwrap();
    let raw: serde_json::Value = s.store.get(store::DEPLOYMENTS, b"dep-1").unwrap().unwrap();
    assert_eq!(raw["layout"], store::LAYOUT_SPLIT);
    assert!(raw["deployment"]["devices"].as_object().unwrap().is_empty());
    assert!(raw.get("installs").is_none());
    let read = store::get(&s.store, "dep-1").unwrap().unwrap();
    assert_eq!(read.deployment.devices, old.deployment.devices);
    assert_eq!(read.installs, old.installs);
    // And it runs on: stage 1 starts after the soak, its reports complete it.
    o.tick(t0 + 2 * H).await.unwrap();
    succeed_queued(&o, t0 + 3 * H).await;
    o.tick(t0 + 5 * H).await.unwrap();
    assert_eq!(o.get("dep-1").unwrap().deployment.phase, DPhase::Completed);
    let keys = dispatched_keys(&inst);
    for k in keys.values() {
        assert_eq!(k.len(), 1, "one install per device");
    }
}

/// A prefetch that takes long (a big download) does not hold the
/// orchestrator: the stage's installs are dispatched and device reports
/// are stepped while it runs.
#[tokio::test]
async fn device_reports_are_stepped_while_a_prefetch_is_still_downloading() {
    let s = site(3);
    let inst = Arc::new(TestInstaller::default());
    let (o, env) = orchestrator(&s, inst.clone());
    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    *env.prefetch_hold.lock().unwrap() = Some(hold.clone());
    let t0 = 1_000 * H;
    let mut req = request(DeployTarget::All);
    req.stages = Some(vec![100]);
    let created = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        o.create(req, s.patches.as_ref(), "admin", t0),
    )
    .await
    .expect("creation waited for the prefetch")
    .unwrap();
    assert_eq!(env.prefetched.lock().unwrap().len(), 1, "prefetch started");
    assert_eq!(inst.installs().len(), 3);
    assert!(matches!(created.deployment.phase, DPhase::Running { .. }));
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        o.report(
            s.devices[0],
            &status("dep-1", 1, Phase::Succeeded, false),
            t0 + 1,
        ),
    )
    .await
    .expect("the report waited for the prefetch")
    .unwrap();
    assert_eq!(
        o.get("dep-1").unwrap().deployment.devices[&s.devices[0].to_string()].state,
        outpost_patch::rollout::DeviceState::Succeeded
    );
    // The download ends later: counted then.
    assert_eq!(o.metrics.deploy.prefetch_bytes.get(), 0);
    hold.add_permits(1);
    for _ in 0..100 {
        if o.metrics.deploy.prefetch_bytes.get() == 1000 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(o.metrics.deploy.prefetch_bytes.get(), 1000);
}

/// A deployment's cache pins are released when it completes, is aborted
/// or rolled back, and at the next start for one that ended before (a
/// crash between its last step and the release).
#[tokio::test]
async fn cache_pins_are_released_when_a_deployment_ends_and_at_start_for_ended_ones() {
    let s = site(2);
    let t0 = 1_000 * H;
    let inst = Arc::new(TestInstaller::default());
    let (o, env) = orchestrator(&s, inst.clone());
    let mut req = request(DeployTarget::All);
    req.stages = Some(vec![100]);
    req.gate = Some(GateSpec {
        soak_ms: 0,
        ..Default::default()
    });
    o.create(req.clone(), s.patches.as_ref(), "admin", t0)
        .await
        .unwrap();
    succeed_queued(&o, t0 + 1).await;
    assert_eq!(o.get("dep-1").unwrap().deployment.phase, DPhase::Completed);
    assert_eq!(*env.released.lock().unwrap(), vec!["dep-1".to_string()]);
    // Aborted.
    req.id = Some("dep-2".into());
    o.create(req.clone(), s.patches.as_ref(), "admin", t0 + 2)
        .await
        .unwrap();
    o.input("dep-2", Input::Abort { note: "no".into() }, "tech", t0 + 3)
        .await
        .unwrap();
    assert_eq!(env.released.lock().unwrap().last().unwrap(), "dep-2");
    // Rolled back whole (in its first stage, soaking).
    let mut req3 = req.clone();
    req3.id = Some("dep-3".into());
    req3.stages = Some(vec![50, 100]);
    req3.gate = Some(GateSpec {
        soak_ms: H,
        ..Default::default()
    });
    o.create(req3, s.patches.as_ref(), "admin", t0 + 4)
        .await
        .unwrap();
    let d = o.get("dep-3").unwrap();
    for (dev, r) in &d.deployment.devices {
        if r.state != outpost_patch::rollout::DeviceState::Queued {
            continue;
        }
        o.report(
            dev.parse().unwrap(),
            &status("dep-3", r.attempt, Phase::Succeeded, false),
            t0 + 5,
        )
        .await
        .unwrap();
    }
    o.input(
        "dep-3",
        Input::Rollback(RollbackScope::Deployment),
        "tech",
        t0 + 6,
    )
    .await
    .unwrap();
    assert_eq!(env.released.lock().unwrap().len(), 2, "not before it ends");
    let d = o.get("dep-3").unwrap();
    for (dev, r) in &d.deployment.devices {
        if r.state != outpost_patch::rollout::DeviceState::RollingBack {
            continue;
        }
        o.report(
            dev.parse().unwrap(),
            &status("dep-3", r.attempt, Phase::RolledBack, true),
            t0 + 7,
        )
        .await
        .unwrap();
    }
    assert_eq!(o.get("dep-3").unwrap().deployment.phase, DPhase::RolledBack);
    assert_eq!(env.released.lock().unwrap().last().unwrap(), "dep-3");
    // A running one keeps its pins; at the next start every ended one is
    // released again (idempotent).
    req.id = Some("dep-4".into());
    o.create(req, s.patches.as_ref(), "admin", t0 + 8)
        .await
        .unwrap();
    drop(o);
    let (o, env) = orchestrator(&s, Arc::new(TestInstaller::default()));
    o.recover(t0 + 9).await.unwrap();
    let mut r = env.released.lock().unwrap().clone();
    r.sort();
    assert_eq!(r, vec!["dep-1", "dep-2", "dep-3"]);
}

fn gauge(o: &Orchestrator, state: &str) -> i64 {
    o.metrics
        .deploy
        .deployments
        .get_or_create(&crate::metrics::labels::StateLabel {
            state: state.to_string(),
        })
        .get()
}

/// The phases the tick and the `outpost_deployments{state}` gauge use are
/// kept in memory from every write, and read back right after a restart.
#[tokio::test]
async fn the_deployment_state_gauge_follows_every_step_and_is_read_back_after_a_restart() {
    let s = site(2);
    let t0 = 1_000 * H;
    let (o, _) = orchestrator(&s, Arc::new(TestInstaller::default()));
    let mut req = request(DeployTarget::All);
    req.stages = Some(vec![100]);
    req.gate = Some(GateSpec {
        soak_ms: 0,
        ..Default::default()
    });
    for id in ["dep-1", "dep-2", "dep-3"] {
        req.id = Some(id.into());
        o.create(req.clone(), s.patches.as_ref(), "admin", t0)
            .await
            .unwrap();
    }
    assert_eq!(gauge(&o, "running"), 3);
    succeed_queued(&o, t0 + 1).await;
    o.input("dep-2", Input::Pause { note: "x".into() }, "tech", t0 + 2)
        .await
        .unwrap();
    o.input("dep-3", Input::Abort { note: "x".into() }, "tech", t0 + 3)
        .await
        .unwrap();
    assert_eq!(
        (
            gauge(&o, "completed"),
            gauge(&o, "paused"),
            gauge(&o, "aborted"),
            gauge(&o, "running")
        ),
        (1, 1, 1, 0)
    );
    drop(o);
    let (o, _) = orchestrator(&s, Arc::new(TestInstaller::default()));
    o.recover(t0 + 4).await.unwrap();
    assert_eq!(
        (
            gauge(&o, "completed"),
            gauge(&o, "paused"),
            gauge(&o, "aborted"),
            gauge(&o, "running")
        ),
        (1, 1, 1, 0)
    );
    o.input(
        "dep-2",
        Input::Resume {
            retry_failed: false,
            force: false,
            patches: None,
        },
        "tech",
        t0 + 5,
    )
    .await
    .unwrap();
    assert_eq!((gauge(&o, "paused"), gauge(&o, "running")), (0, 1));
}

/// The per-deployment options live in the header of the split layout: a
/// restart reads them back (merge of per-device records with options).
#[tokio::test]
async fn a_deployments_install_options_survive_a_restart_in_the_split_layout() {
    let s = site(2);
    let t0 = 1_000 * H;
    let created = {
        let inst = Arc::new(TestInstaller::default());
        let (o, _) = orchestrator(&s, inst.clone());
        o.create(request(DeployTarget::All), s.patches.as_ref(), "admin", t0)
            .await
            .unwrap();
        o.get("dep-1").unwrap()
    };
    assert!(created.options.is_some(), "create stores the options");
    let raw: serde_json::Value = s.store.get(store::DEPLOYMENTS, b"dep-1").unwrap().unwrap();
    assert_eq!(raw["layout"], store::LAYOUT_SPLIT);
    assert!(raw.get("options").is_some(), "{raw}");
    let inst = Arc::new(TestInstaller::default());
    let (o, _) = orchestrator(&s, inst.clone());
    o.recover(t0 + 1).await.unwrap();
    assert_eq!(o.get("dep-1").unwrap().options, created.options);
    assert_eq!(
        store::get(&s.store, "dep-1").unwrap().unwrap().options,
        created.options
    );
}
