//! Recurring deployments: "every Tuesday 02:00 Europe/Berlin, the
//! approved security patches, tag servers". Stored in `deploy_schedules`
//! (id → JSON [`DeploySchedule`]); when a schedule's window opens, one
//! deployment of that occurrence is created (id `SCHEDULE-OCCURRENCE`,
//! so a restart inside the window creates nothing twice), with the
//! schedule's window as its install window.
//!
//! Owns the `deploy_schedules` table and the due-time rule. Must not
//! create deployments other than through the orchestrator.

use outpost_patch::rollout::GateSpec;
use outpost_patch::window::InstallWindow;
use outpost_storage::{Codec, Store, Table};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::approvals::MissingPatches;
use super::orchestrator::{CreateRequest, DeployError, Orchestrator};
use super::store::DeployTarget;

/// Schedule id → [`DeploySchedule`].
pub const DEPLOY_SCHEDULES: Table = Table::new("deploy_schedules").codec(Codec::Json);

/// The tables of this module, for `Store::open`.
pub const TABLES: &[Table] = &[DEPLOY_SCHEDULES];

/// Most schedules read.
pub const MAX_SCHEDULES: usize = 1_000;

/// One recurring deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploySchedule {
    /// Letters, digits, `-`, `_` (it prefixes the deployments' ids).
    pub id: String,
    /// When (days, start, IANA zone) and for how long installs may run.
    pub window: InstallWindow,
    pub target: DeployTarget,
    /// Only security updates among the approved patches.
    #[serde(default)]
    pub security_only: bool,
    #[serde(default)]
    pub stages: Option<Vec<u8>>,
    #[serde(default)]
    pub gate: Option<GateSpec>,
    /// Reboot policy, pre/post-install scripts, snapshot of every
    /// deployment it creates (flat in the JSON, like a create request's).
    #[serde(flatten)]
    pub options: super::options::DeployOptions,
    #[serde(default)]
    pub created_by: String,
    /// Start of the last occurrence a deployment was created for (or
    /// refused: nothing approved).
    #[serde(default)]
    pub last_run_ms: Option<u64>,
    /// The deployment created then, or why none was.
    #[serde(default)]
    pub last_result: Option<String>,
}

/// Why a schedule cannot be stored.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("{0}")]
    Invalid(String),
    #[error("deployment schedule {0:?} exists already")]
    Duplicate(String),
    #[error("unknown deployment schedule {0:?}")]
    NotFound(String),
    #[error("the schedule store failed: {0}")]
    Store(#[from] outpost_storage::StorageError),
}

impl DeploySchedule {
    pub fn validate(&self) -> Result<(), ScheduleError> {
        let ok_id = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok_id {
            return Err(ScheduleError::Invalid(format!(
                "schedule id {:?}: 1 to 64 letters, digits, - or _",
                self.id
            )));
        }
        self.window
            .compile(None)
            .map_err(|e| ScheduleError::Invalid(format!("schedule window: {e}")))?;
        Ok(())
    }

    /// The start of the occurrence due at `now_ms`: the window is open and
    /// no deployment was made for this opening yet.
    pub fn due(&self, now_ms: u64) -> Option<u64> {
        let schedule = self.window.compile(None).ok()?;
        let (start, _) = schedule.current(now_ms)?;
        match self.last_run_ms {
            Some(last) if last >= start => None,
            _ => Some(start),
        }
    }
}

pub fn list(store: &Store) -> Result<Vec<DeploySchedule>, ScheduleError> {
    let mut out = Vec::new();
    store.scan::<DeploySchedule>(DEPLOY_SCHEDULES, &[], None, |_, s| {
        out.push(s);
        out.len() < MAX_SCHEDULES
    })?;
    Ok(out)
}

pub fn add(store: &Store, s: &DeploySchedule) -> Result<(), ScheduleError> {
    s.validate()?;
    if store
        .get::<DeploySchedule>(DEPLOY_SCHEDULES, s.id.as_bytes())?
        .is_some()
    {
        return Err(ScheduleError::Duplicate(s.id.clone()));
    }
    store.put(DEPLOY_SCHEDULES, s.id.as_bytes(), s)?;
    Ok(())
}

pub fn remove(store: &Store, id: &str) -> Result<DeploySchedule, ScheduleError> {
    let Some(s) = store.get::<DeploySchedule>(DEPLOY_SCHEDULES, id.as_bytes())? else {
        return Err(ScheduleError::NotFound(id.to_string()));
    };
    let mut b = store.batch();
    b.delete(DEPLOY_SCHEDULES, id.as_bytes())?;
    store.write(b)?;
    Ok(s)
}

/// Creates the deployments of every schedule due at `now_ms`; returns
/// their ids. A schedule with nothing approved records the reason and
/// waits for its next occurrence.
pub async fn run_due(
    store: &Store,
    orch: &Orchestrator,
    patches: &dyn MissingPatches,
    now_ms: u64,
) -> Result<Vec<String>, ScheduleError> {
    let mut created = Vec::new();
    for mut s in list(store)? {
        let Some(start) = s.due(now_ms) else {
            continue;
        };
        let id = format!("{}-{}", s.id, start / 1000);
        let req = CreateRequest {
            id: Some(id.clone()),
            target: s.target.clone(),
            patches: None,
            security_only: s.security_only,
            stages: s.stages.clone(),
            gate: s.gate.clone(),
            auto_rollback_failed_pct: None,
            install_deadline_ms: None,
            window: Some(s.window.clone()),
            options: s.options.clone(),
            start: true,
        };
        let actor = format!("schedule {}", s.id);
        s.last_result = Some(match orch.create(req, patches, &actor, now_ms).await {
            Ok(d) => {
                info!(schedule = %s.id, deployment = d.id(), "scheduled deployment created");
                created.push(id.clone());
                format!("created {id}")
            }
            // A restart inside the window: that occurrence's deployment exists.
            Err(DeployError::Conflict(m)) if m.contains("exists already") => {
                format!("created {id}")
            }
            Err(e) => {
                warn!(schedule = %s.id, error = %e, "scheduled deployment not created");
                format!("not created: {e}")
            }
        });
        s.last_run_ms = Some(start);
        store.put(DEPLOY_SCHEDULES, s.id.as_bytes(), &s)?;
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::approvals::tests::{FakePatches, enroll, missing, open_store};
    use crate::deploy::orchestrator::{InstallOptions, SiteEnv};
    use outpost_patch::approval::{ApprovalRule, ApprovalScope, AutoRule, PatchKey, RuleKind};
    use outpost_patch::window::Day;
    use std::sync::Arc;

    /// 2026-11-24 (a Tuesday) 01:00 UTC = 02:00 Europe/Berlin.
    const TUE_0200_BERLIN: u64 = 1_795_482_000_000;

    #[tokio::test]
    async fn a_weekly_schedule_deploys_the_approved_security_patches_once_per_occurrence() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let fake = Arc::new(FakePatches::default());
        for n in 1..=3 {
            let tags: &[&str] = if n == 3 { &["desktops"] } else { &["servers"] };
            let d = enroll(&store, n, "dental", tags);
            fake.0.lock().unwrap().insert(
                d,
                vec![
                    missing("openssl", "3.0.1-1", "3.0.2-1", true),
                    missing("vim", "9.0-1", "9.1-1", false),
                ],
            );
        }
        // Everything is approved; the schedule takes only security updates.
        crate::deploy::approvals::add_rule(
            &store,
            &ApprovalRule {
                id: "all".into(),
                scope: ApprovalScope::Tenant {
                    tenant: "msp".into(),
                },
                rule: RuleKind::Auto(AutoRule::default()),
            },
            "admin",
            0,
        )
        .unwrap();
        let orch = Orchestrator::new(
            store.clone(),
            Arc::new(crate::deploy::NoDeviceLink),
            Arc::new(SiteEnv {
                store: store.clone(),
                patches: fake.clone(),
                alerts: None,
                cache: Default::default(),
            }),
            Arc::new(crate::metrics::Metrics::new()),
            InstallOptions::default(),
        );
        let s = DeploySchedule {
            id: "tuesday".into(),
            window: InstallWindow {
                days: vec![Day::Tue],
                start: "02:00".into(),
                duration_minutes: 180,
                timezone: "Europe/Berlin".into(),
            },
            target: DeployTarget::Tag {
                tag: "servers".into(),
            },
            security_only: true,
            stages: None,
            gate: None,
            options: Default::default(),
            created_by: "admin".into(),
            last_run_ms: None,
            last_result: None,
        };
        add(&store, &s).unwrap();
        assert!(matches!(add(&store, &s), Err(ScheduleError::Duplicate(_))));
        // Monday: nothing due.
        let monday = TUE_0200_BERLIN - 86_400_000;
        assert!(
            run_due(&store, &orch, fake.as_ref(), monday)
                .await
                .unwrap()
                .is_empty()
        );
        // Tuesday 02:05 Berlin: one deployment, security patches, servers only.
        let created = run_due(&store, &orch, fake.as_ref(), TUE_0200_BERLIN + 300_000)
            .await
            .unwrap();
        assert_eq!(created, vec![format!("tuesday-{}", TUE_0200_BERLIN / 1000)]);
        let d = orch.get(&created[0]).unwrap();
        assert_eq!(
            d.deployment.spec.patches,
            vec![PatchKey::new("openssl", "3.0.2-1")]
        );
        assert_eq!(d.deployment.devices.len(), 2);
        assert_eq!(d.window, Some(s.window.clone()));
        // Later in the same window (or after a restart): nothing again.
        assert!(
            run_due(&store, &orch, fake.as_ref(), TUE_0200_BERLIN + 3_600_000)
                .await
                .unwrap()
                .is_empty()
        );
        // Next Tuesday: the next occurrence.
        let next = run_due(
            &store,
            &orch,
            fake.as_ref(),
            TUE_0200_BERLIN + 7 * 86_400_000 + 60_000,
        )
        .await
        .unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(orch.list().unwrap().len(), 2);
        remove(&store, "tuesday").unwrap();
        assert!(list(&store).unwrap().is_empty());
    }

    #[test]
    fn a_schedule_needs_a_clean_id_and_a_valid_window() {
        let mut s = DeploySchedule {
            id: "bad id".into(),
            window: InstallWindow {
                days: vec![Day::Tue],
                start: "02:00".into(),
                duration_minutes: 60,
                timezone: "Mars/Olympus".into(),
            },
            target: DeployTarget::All,
            security_only: false,
            stages: None,
            gate: None,
            options: Default::default(),
            created_by: String::new(),
            last_run_ms: None,
            last_result: None,
        };
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("schedule id")
        );
        s.id = "ok".into();
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("Mars/Olympus")
        );
    }
}
