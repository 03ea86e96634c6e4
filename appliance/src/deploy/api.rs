//! `/api/v1/approvals/...` and `/api/v1/deployments/...`: approval rules,
//! manual approve/decline, per-device decisions, and deployments
//! (create, list, show, pause, resume, abort, rollback). Merged into the
//! admin router behind the same authentication and roles
//! (`crate::users::auth::required_role`: viewer reads, admin writes,
//! technician pauses, resumes and rolls back).
//!
//! Owns only the HTTP mapping; the work is in [`super::approvals`] and
//! [`super::orchestrator`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use outpost_patch::approval::{ApprovalRule, ApprovalScope, PatchKey, Verdict};
use outpost_patch::assess::DownloadSize;
use outpost_patch::rollout::{GateFigures, GateStatus, Input, RollbackScope};
use outpost_proto::DeviceId;
use outpost_storage::Store;
use outpost_web::ApiError;
use serde::{Deserialize, Serialize};

use super::approvals::{self, ApprovalError, DeviceApprovals, MissingPatches};
use super::orchestrator::{CreateRequest, DeployError, Orchestrator};
use super::store::StoredDeployment;
use crate::users::auth::Caller;

/// Shared state of the routes.
#[derive(Clone)]
pub struct DeployApi {
    pub store: Store,
    pub patches: Arc<dyn MissingPatches>,
    pub orchestrator: Arc<Orchestrator>,
}

pub fn router(api: DeployApi) -> Router {
    Router::new()
        .route("/api/v1/approvals", post(set_manual))
        .route("/api/v1/approvals/rules", get(rules).post(add_rule))
        .route(
            "/api/v1/approvals/rules/{id}",
            axum::routing::delete(remove_rule),
        )
        .route("/api/v1/approvals/devices/{id}", get(device))
        .route("/api/v1/deployments", get(list).post(create))
        .route("/api/v1/deployments/{id}", get(show))
        .route("/api/v1/deployments/{id}/pause", post(pause))
        .route("/api/v1/deployments/{id}/resume", post(resume))
        .route("/api/v1/deployments/{id}/abort", post(abort))
        .route("/api/v1/deployments/{id}/rollback", post(rollback))
        .route(
            "/api/v1/deploy-schedules",
            get(schedules).post(add_schedule),
        )
        .route(
            "/api/v1/deploy-schedules/{id}",
            axum::routing::delete(remove_schedule),
        )
        .with_state(api)
}

fn approval_error(e: ApprovalError) -> ApiError {
    match e {
        ApprovalError::UnknownDevice(_)
        | ApprovalError::UnknownPatch(_)
        | ApprovalError::UnknownRule(_) => ApiError::NotFound(e.to_string()),
        ApprovalError::DuplicateRule(_) => ApiError::Conflict(e.to_string()),
        ApprovalError::Invalid(_) => ApiError::BadRequest(e.to_string()),
        ApprovalError::Store(_) => ApiError::Internal(e.to_string()),
    }
}

fn deploy_error(e: DeployError) -> ApiError {
    match e {
        DeployError::NotFound(_) | DeployError::UnknownDevice(_) => {
            ApiError::NotFound(e.to_string())
        }
        DeployError::Conflict(_) | DeployError::Refused(_) => ApiError::Conflict(e.to_string()),
        DeployError::Invalid(_) => ApiError::BadRequest(e.to_string()),
        DeployError::Approvals(a) => approval_error(a),
        DeployError::Store(_) => ApiError::Internal(e.to_string()),
    }
}

fn now() -> u64 {
    outpost_storage::now_ms()
}

async fn rules(State(a): State<DeployApi>) -> Result<Json<Vec<ApprovalRule>>, ApiError> {
    approvals::list(&a.store).map(Json).map_err(approval_error)
}

async fn add_rule(
    State(a): State<DeployApi>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Json(rule): Json<ApprovalRule>,
) -> Result<Response, ApiError> {
    approvals::add_rule(&a.store, &rule, &caller.actor(&headers), now()).map_err(approval_error)?;
    Ok((StatusCode::CREATED, Json(rule)).into_response())
}

async fn remove_rule(
    State(a): State<DeployApi>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ApprovalRule>, ApiError> {
    approvals::remove_rule(&a.store, &id, &caller.actor(&headers), now())
        .map(Json)
        .map_err(approval_error)
}

/// Body of `POST /api/v1/approvals`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualBody {
    /// `PKG=VERSION`.
    pub patch: String,
    /// `device:ID`, `tag:T`, `customer:C`, `tenant[:T]` (default: the
    /// site's tenant).
    #[serde(default)]
    pub scope: Option<String>,
    pub verdict: Verdict,
}

async fn set_manual(
    State(a): State<DeployApi>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Json(b): Json<ManualBody>,
) -> Result<Response, ApiError> {
    let patch = approvals::parse_patch(&b.patch).map_err(ApiError::BadRequest)?;
    let tenant = approvals::site_tenant(&a.store).map_err(approval_error)?;
    let scope: ApprovalScope =
        approvals::parse_scope(b.scope.as_deref().unwrap_or("tenant"), tenant.as_deref())
            .map_err(ApiError::BadRequest)?;
    let rule = approvals::set_manual(
        &a.store,
        a.patches.as_ref(),
        patch,
        scope,
        b.verdict,
        &caller.actor(&headers),
        now(),
    )
    .map_err(approval_error)?;
    Ok((StatusCode::CREATED, Json(rule)).into_response())
}

async fn device(
    State(a): State<DeployApi>,
    Path(id): Path<String>,
) -> Result<Json<DeviceApprovals>, ApiError> {
    let dev = id
        .parse::<DeviceId>()
        .map_err(|_| ApiError::NotFound(format!("unknown device {id}")))?;
    approvals::device_decisions(&a.store, a.patches.as_ref(), dev, now())
        .map(Json)
        .map_err(approval_error)
}

/// One line of `GET /api/v1/deployments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentSummary {
    pub id: String,
    pub phase: String,
    /// The stage reached (running, paused or rolling back).
    pub stage: Option<u32>,
    pub stages: u32,
    pub target: String,
    pub patches: Vec<PatchKey>,
    pub devices: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub created_at_ms: u64,
    pub created_by: String,
    pub updated_at_ms: u64,
    /// Reboot policy, scripts (name and version), snapshot (`null`: made
    /// before per-deployment options, runs with `[deploy]`'s defaults).
    #[serde(default)]
    pub options: Option<super::options::StoredOptions>,
}

/// One stage of `GET /api/v1/deployments/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageView {
    pub figures: GateFigures,
    /// `holds`, `waiting: …`, `fails: …`.
    pub gate: String,
}

/// `GET /api/v1/deployments/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentView {
    pub summary: DeploymentSummary,
    pub stages: Vec<StageView>,
    pub stored: StoredDeployment,
    /// Who did what to it (create with its options, start, pause,
    /// resume, abort, rollback), oldest first ([`deployment_audit`]).
    #[serde(default)]
    pub audit: Vec<outpost_storage::model::AuditEntry>,
    /// What its devices still download (`null` from older appliances).
    #[serde(default)]
    pub download: Option<PlanDownload>,
}

/// What a deployment's devices still download: for each target device,
/// the deployment's patches its assessment still shows missing (their
/// candidates' sizes, from the agents' scans), and what the site's LAN
/// cache fetches from upstream for them (each package version once).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanDownload {
    /// Summed over devices (what the devices fetch from the cache).
    pub devices: DownloadSize,
    /// Each distinct patch once (what the cache fetches upstream).
    pub site: DownloadSize,
    /// Target devices still missing at least one of its patches.
    pub devices_missing: u32,
}

/// [`PlanDownload`] of `patches` on `targets` (device ids as the
/// deployment stores them; one that does not parse is skipped).
pub fn plan_download<'a>(
    missing: &dyn MissingPatches,
    patches: &[PatchKey],
    targets: impl IntoIterator<Item = &'a str>,
) -> PlanDownload {
    let mut out = PlanDownload::default();
    let mut seen = std::collections::BTreeSet::new();
    for t in targets {
        let Ok(dev) = t.parse::<DeviceId>() else {
            continue;
        };
        let mut any = false;
        for p in missing.missing(dev).unwrap_or_default() {
            let Some(candidate) = &p.candidate else {
                continue;
            };
            if !patches
                .iter()
                .any(|k| k.package == p.source.as_str() && k.version == candidate.as_str())
            {
                continue;
            }
            any = true;
            out.devices.add(&p);
            if seen.insert((p.source.to_string(), candidate.to_string())) {
                out.site.add(&p);
            }
        }
        out.devices_missing += u32::from(any);
    }
    out
}

/// Most audit entries read (from the deployment's creation on) when
/// looking for a deployment's own.
pub const AUDIT_SCAN: usize = 10_000;
/// Most audit entries shown per deployment (the newest).
pub const MAX_DEPLOYMENT_AUDIT: usize = 100;

/// The audit entries of deployment `d` (actions `deployment.*` on its
/// id), oldest first: at most [`MAX_DEPLOYMENT_AUDIT`], the newest, out
/// of the first [`AUDIT_SCAN`] entries of the site's log since its
/// creation.
pub fn deployment_audit(
    store: &Store,
    d: &StoredDeployment,
) -> Result<Vec<outpost_storage::model::AuditEntry>, outpost_storage::StorageError> {
    let all = outpost_storage::registry::audit_log(
        store,
        d.created_at_ms.saturating_sub(1_000),
        u64::MAX,
        AUDIT_SCAN,
    )?;
    let mut mine: Vec<_> = all
        .into_iter()
        .filter(|e| e.target == d.id() && e.action.starts_with("deployment."))
        .collect();
    let extra = mine.len().saturating_sub(MAX_DEPLOYMENT_AUDIT);
    mine.drain(..extra);
    Ok(mine)
}

pub fn summary(d: &StoredDeployment) -> DeploymentSummary {
    let dep = &d.deployment;
    let mut succeeded = 0;
    let mut failed = 0;
    for r in dep.devices.values() {
        match r.state {
            outpost_patch::rollout::DeviceState::Succeeded => succeeded += 1,
            s if s.is_finished() => failed += 1,
            _ => {}
        }
    }
    DeploymentSummary {
        id: d.id().to_string(),
        phase: dep.phase.name().to_string(),
        stage: dep.current_stage(),
        stages: dep.stages.len() as u32,
        target: d.target.to_string(),
        patches: dep.spec.patches.clone(),
        devices: dep.devices.len() as u32,
        succeeded,
        failed,
        created_at_ms: d.created_at_ms,
        created_by: d.created_by.clone(),
        updated_at_ms: d.updated_at_ms,
        options: d.options.clone(),
    }
}

pub fn view(d: StoredDeployment, now_ms: u64) -> DeploymentView {
    let stages = (0..d.deployment.stages.len() as u32)
        .map(|k| StageView {
            figures: d.deployment.figures(k),
            gate: match d.deployment.gate(k, now_ms) {
                GateStatus::Holds => "holds".into(),
                GateStatus::Waiting(w) => format!("waiting: {w}"),
                GateStatus::Fails(f) => format!("fails: {f}"),
            },
        })
        .collect();
    DeploymentView {
        summary: summary(&d),
        stages,
        stored: d,
        audit: Vec::new(),
        download: None,
    }
}

async fn list(State(a): State<DeployApi>) -> Result<Json<Vec<DeploymentSummary>>, ApiError> {
    let all = a.orchestrator.list().map_err(deploy_error)?;
    Ok(Json(all.iter().map(summary).collect()))
}

async fn show(
    State(a): State<DeployApi>,
    Path(id): Path<String>,
) -> Result<Json<DeploymentView>, ApiError> {
    let d = a.orchestrator.get(&id).map_err(deploy_error)?;
    let audit = deployment_audit(&a.store, &d).map_err(|e| ApiError::Internal(e.to_string()))?;
    let download = plan_download(
        a.patches.as_ref(),
        &d.deployment.spec.patches,
        d.deployment.spec.targets.iter().map(|t| t.device.as_str()),
    );
    let mut v = view(d, now());
    v.audit = audit;
    v.download = Some(download);
    Ok(Json(v))
}

async fn create(
    State(a): State<DeployApi>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Json(req): Json<CreateRequest>,
) -> Result<Response, ApiError> {
    let d = a
        .orchestrator
        .create(req, a.patches.as_ref(), &caller.actor(&headers), now())
        .await
        .map_err(deploy_error)?;
    Ok((StatusCode::CREATED, Json(view(d, now()))).into_response())
}

/// Body of pause and abort.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NoteBody {
    #[serde(default)]
    pub note: String,
}

/// Body of resume.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResumeBody {
    /// Give failed and rolled-back devices of the started stages a new attempt.
    #[serde(default)]
    pub retry_failed: bool,
    /// Override the current stage's gate.
    #[serde(default)]
    pub force: bool,
    /// Replace the versions to install (a fixed version).
    #[serde(default)]
    pub patches: Option<Vec<PatchKey>>,
}

/// Body of rollback: `{"scope": "deployment"}`, `{"scope": "stage",
/// "stage": 1}`, `{"scope": "device", "device": "ID"}`.
pub type RollbackBody = RollbackScope;

async fn act(
    a: &DeployApi,
    id: &str,
    input: Input,
    actor: &str,
) -> Result<Json<DeploymentView>, ApiError> {
    let d = a
        .orchestrator
        .input(id, input, actor, now())
        .await
        .map_err(deploy_error)?;
    Ok(Json(view(d, now())))
}

async fn pause(
    State(a): State<DeployApi>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<NoteBody>>,
) -> Result<Json<DeploymentView>, ApiError> {
    let note = body.map(|b| b.0.note).unwrap_or_default();
    act(&a, &id, Input::Pause { note }, &caller.actor(&headers)).await
}

async fn resume(
    State(a): State<DeployApi>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<ResumeBody>>,
) -> Result<Json<DeploymentView>, ApiError> {
    let b = body.map(|b| b.0).unwrap_or_default();
    let input = Input::Resume {
        retry_failed: b.retry_failed,
        force: b.force,
        patches: b.patches,
    };
    act(&a, &id, input, &caller.actor(&headers)).await
}

async fn abort(
    State(a): State<DeployApi>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<NoteBody>>,
) -> Result<Json<DeploymentView>, ApiError> {
    let note = body.map(|b| b.0.note).unwrap_or_default();
    act(&a, &id, Input::Abort { note }, &caller.actor(&headers)).await
}

async fn rollback(
    State(a): State<DeployApi>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(scope): Json<RollbackBody>,
) -> Result<Json<DeploymentView>, ApiError> {
    act(&a, &id, Input::Rollback(scope), &caller.actor(&headers)).await
}

fn schedule_error(e: super::schedules::ScheduleError) -> ApiError {
    use super::schedules::ScheduleError as E;
    match e {
        E::Invalid(_) => ApiError::BadRequest(e.to_string()),
        E::Duplicate(_) => ApiError::Conflict(e.to_string()),
        E::NotFound(_) => ApiError::NotFound(e.to_string()),
        E::Store(_) => ApiError::Internal(e.to_string()),
    }
}

async fn schedules(
    State(a): State<DeployApi>,
) -> Result<Json<Vec<super::schedules::DeploySchedule>>, ApiError> {
    super::schedules::list(&a.store)
        .map(Json)
        .map_err(schedule_error)
}

async fn add_schedule(
    State(a): State<DeployApi>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Json(mut s): Json<super::schedules::DeploySchedule>,
) -> Result<Response, ApiError> {
    // Checked now (400 naming an unknown script), resolved again by each
    // deployment it creates (the scripts' newest versions then).
    a.orchestrator
        .resolve_options(&s.options)
        .map_err(deploy_error)?;
    s.created_by = caller.actor(&headers);
    s.last_run_ms = None;
    s.last_result = None;
    super::schedules::add(&a.store, &s).map_err(schedule_error)?;
    Ok((StatusCode::CREATED, Json(s)).into_response())
}

async fn remove_schedule(
    State(a): State<DeployApi>,
    Path(id): Path<String>,
) -> Result<Json<super::schedules::DeploySchedule>, ApiError> {
    super::schedules::remove(&a.store, &id)
        .map(Json)
        .map_err(schedule_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::approvals::tests::{FakePatches, enroll, missing, open_store};
    use crate::deploy::orchestrator::{InstallOptions, SiteEnv};
    use crate::users::auth::required_role;
    use axum::body::Body;
    use axum::http::{Method, Request};
    use outpost_web::login::Role;
    use tower::ServiceExt;

    /// Fails before: a deployment did not say what it downloads.
    #[test]
    fn a_deployments_download_sums_its_patches_per_device_and_once_per_site() {
        let fake = FakePatches::default();
        let sized = |src: &str, to: &str, n: Option<u64>| {
            let mut p = missing(src, "1.0-1", to, true);
            p.download_bytes = n;
            p
        };
        let (a, b, c) = (DeviceId(1), DeviceId(2), DeviceId(3));
        {
            let mut m = fake.0.lock().unwrap();
            m.insert(
                a,
                vec![
                    sized("openssl", "1.1-1", Some(3_000_000)),
                    sized("bash", "1.1-1", Some(1_000)),
                ],
            );
            m.insert(b, vec![sized("openssl", "1.1-1", Some(3_000_000))]);
            m.insert(
                c,
                vec![
                    sized("openssl", "1.1-1", None),
                    sized("zlib", "2-1", Some(9)),
                ],
            );
        }
        let patches = [
            PatchKey::new("openssl", "1.1-1"),
            PatchKey::new("bash", "1.1-1"),
        ];
        let ids: Vec<String> = [a, b, c, DeviceId(4)]
            .iter()
            .map(|d| d.to_string())
            .collect();
        let mut targets: Vec<&str> = ids.iter().map(String::as_str).collect();
        targets.push("not-a-device");
        let d = plan_download(&fake, &patches, targets);
        assert_eq!(
            (d.devices.bytes, d.devices.unknown, d.devices.patches),
            (6_001_000, 1, 4),
            "zlib is not in the deployment; device 4 misses nothing"
        );
        assert_eq!(
            (d.site.bytes, d.site.unknown, d.site.patches),
            (3_001_000, 0, 2),
            "each package version once"
        );
        assert_eq!(d.devices_missing, 3);
        assert_eq!(d.site.display(), "2.9 MiB");
    }

    async fn call(r: &Router, method: &str, path: &str, body: &str) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(path);
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Body::from(body.to_string())).unwrap();
        let resp = r.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let b = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&b).into_owned())
    }

    #[test]
    fn technicians_pause_resume_and_roll_back_admins_create_and_abort_viewers_read() {
        let post = Method::POST;
        for r in ["pause", "resume", "rollback"] {
            let route = format!("/api/v1/deployments/{{id}}/{r}");
            assert_eq!(required_role(&post, &route), Role::Technician, "{route}");
        }
        assert_eq!(
            required_role(&post, "/api/v1/deployments/{id}/abort"),
            Role::Admin
        );
        assert_eq!(required_role(&post, "/api/v1/deployments"), Role::Admin);
        assert_eq!(required_role(&post, "/api/v1/approvals"), Role::Admin);
        assert_eq!(
            required_role(&Method::DELETE, "/api/v1/approvals/rules/{id}"),
            Role::Admin
        );
        assert_eq!(
            required_role(&Method::GET, "/api/v1/deployments/{id}"),
            Role::Viewer
        );
        assert_eq!(
            required_role(&Method::GET, "/api/v1/approvals/devices/{id}"),
            Role::Viewer
        );
    }

    #[tokio::test]
    async fn unknown_patches_and_devices_are_404_and_a_deployment_with_nothing_approved_is_409() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let d = enroll(&store, 1, "dental", &[]);
        let fake = Arc::new(FakePatches::default());
        fake.0
            .lock()
            .unwrap()
            .insert(d, vec![missing("openssl", "3.0.1-1", "3.0.2-1", true)]);
        let patches: Arc<dyn MissingPatches> = fake;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let orchestrator = Arc::new(Orchestrator::new(
            store.clone(),
            Arc::new(crate::deploy::NoDeviceLink),
            Arc::new(SiteEnv {
                store: store.clone(),
                patches: patches.clone(),
                alerts: None,
                cache: Default::default(),
            }),
            metrics.clone(),
            InstallOptions::default(),
        ));
        let r = router(DeployApi {
            store: store.clone(),
            patches,
            orchestrator,
        })
        .layer(Extension(Caller::admin_token()));
        let (s, b) = call(
            &r,
            "POST",
            "/api/v1/approvals",
            r#"{"patch":"nginx=1.2-1","verdict":"approve"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
        assert!(b.contains("nginx=1.2-1"), "{b}");
        let (s, b) = call(
            &r,
            "POST",
            "/api/v1/approvals",
            r#"{"patch":"openssl=3.0.2-1","scope":"device:00000000000000ff","verdict":"approve"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
        assert!(b.contains("00000000000000ff"), "{b}");
        let (s, b) = call(&r, "GET", "/api/v1/approvals/devices/00000000000000ff", "").await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
        let (s, b) = call(
            &r,
            "POST",
            "/api/v1/deployments",
            r#"{"target":{"type":"all"}}"#,
        )
        .await;
        assert_eq!(s, StatusCode::CONFLICT, "{b}");
        assert!(b.contains("no patch is approved"), "{b}");
        // Approve by hand (the site's tenant), then deploy: with no device
        // link every install fails with the reason and the gate pauses.
        let (s, b) = call(
            &r,
            "POST",
            "/api/v1/approvals",
            r#"{"patch":"openssl=3.0.2-1","verdict":"approve"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let (s, b) = call(&r, "GET", &format!("/api/v1/approvals/devices/{d}"), "").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert!(b.contains("approved by hand for tenant msp"), "{b}");
        let (s, b) = call(
            &r,
            "POST",
            "/api/v1/deployments",
            r#"{"id":"dep-x","target":{"type":"all"}}"#,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let (s, b) = call(&r, "GET", "/api/v1/deployments/dep-x", "").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert!(b.contains("device link not available"), "{b}");
        assert!(b.contains("\"phase\":\"paused\""), "{b}");
        let (s, b) = call(&r, "POST", "/api/v1/deployments/dep-x/pause", "").await;
        assert_eq!(s, StatusCode::CONFLICT, "{b}");
        assert!(b.contains("not running"), "{b}");
        let (s, _) = call(&r, "POST", "/api/v1/deployments/nope/pause", "").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let text = metrics.encode();
        assert!(
            text.contains("outpost_deploy_gate_failures_total 1"),
            "{text}"
        );
        assert!(
            text.contains("outpost_deployments{state=\"paused\"} 1"),
            "{text}"
        );
    }

    /// A device link that keeps every install request it is given.
    #[derive(Default)]
    struct Requests(std::sync::Mutex<Vec<outpost_patch::install::wire::InstallRequest>>);

    impl crate::deploy::Installer for Requests {
        fn install<'a>(
            &'a self,
            _: DeviceId,
            _: &'a str,
            request: &'a outpost_patch::install::wire::InstallRequest,
            _: &'a str,
        ) -> crate::deploy::LinkFuture<'a> {
            self.0.lock().unwrap().push(request.clone());
            Box::pin(async { Ok(()) })
        }
        fn rollback<'a>(
            &'a self,
            _: DeviceId,
            _: &'a str,
            _: &'a outpost_patch::install::wire::RollbackRequest,
            _: &'a str,
        ) -> crate::deploy::LinkFuture<'a> {
            Box::pin(async { Ok(()) })
        }
        fn cancel<'a>(&'a self, _: &'a str, _: &'a str) -> crate::deploy::LinkFuture<'a> {
            Box::pin(async { Ok(()) })
        }
    }

    /// One enrolled device missing openssl 3.0.2-1 (approved for the
    /// tenant), a script `stop-app` in the library, and the API over an
    /// orchestrator whose `[deploy]` defaults are `defaults`.
    fn options_site(
        dir: &std::path::Path,
        defaults: InstallOptions,
    ) -> (
        Store,
        Router,
        Arc<Requests>,
        Arc<Orchestrator>,
        Arc<FakePatches>,
    ) {
        use crate::commands::scripts::{self, ScriptVersion};
        let store = open_store(dir);
        let d = enroll(&store, 1, "dental", &[]);
        let fake = Arc::new(FakePatches::default());
        fake.0
            .lock()
            .unwrap()
            .insert(d, vec![missing("openssl", "3.0.1-1", "3.0.2-1", true)]);
        let patches: Arc<dyn MissingPatches> = fake.clone();
        approvals::set_manual(
            &store,
            patches.as_ref(),
            PatchKey::new("openssl", "3.0.2-1"),
            ApprovalScope::Tenant {
                tenant: "msp".into(),
            },
            Verdict::Approve,
            "admin",
            0,
        )
        .unwrap();
        scripts::put_next(
            &store,
            ScriptVersion {
                name: "stop-app".into(),
                version: 0,
                interpreter: outpost_proto::command::Interpreter::Sh,
                body: "echo stopping".into(),
                default_timeout_ms: 20_000,
                parameters: vec![],
                created_ms: 0,
                created_by: "admin".into(),
            },
            true,
        )
        .unwrap()
        .unwrap();
        let link = Arc::new(Requests::default());
        let orchestrator = Arc::new(Orchestrator::new(
            store.clone(),
            link.clone(),
            Arc::new(SiteEnv {
                store: store.clone(),
                patches: patches.clone(),
                alerts: None,
                cache: Default::default(),
            }),
            Arc::new(crate::metrics::Metrics::new()),
            defaults,
        ));
        let r = router(DeployApi {
            store: store.clone(),
            patches,
            orchestrator: orchestrator.clone(),
        })
        .layer(Extension(Caller::admin_token()));
        (store, r, link, orchestrator, fake)
    }

    #[tokio::test]
    async fn deployment_options_are_stored_shown_and_sent_in_every_install_request() {
        use outpost_patch::install::wire::RebootPolicy;
        let dir = tempfile::tempdir().unwrap();
        let (store, r, link, _, _) = options_site(dir.path(), InstallOptions::default());
        let (s, b) = call(
            &r,
            "POST",
            "/api/v1/deployments",
            r#"{"id":"dep-o","target":{"type":"all"},"stages":[100],"reboot":"always","pre_script":"stop-app","snapshot":false}"#,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let (s, b) = call(&r, "GET", "/api/v1/deployments/dep-o", "").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        let want = serde_json::json!({
            "reboot": "always",
            "pre_script": {"name": "stop-app", "version": 1},
            "post_script": null,
            "snapshot": false
        });
        assert_eq!(v["stored"]["options"], want, "{b}");
        assert_eq!(v["summary"]["options"], want, "{b}");
        let reqs = link.0.lock().unwrap().clone();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].reboot, RebootPolicy::Always);
        assert!(!reqs[0].snapshot);
        let pre = reqs[0].pre_script.clone().unwrap();
        assert_eq!((pre.name.as_str(), pre.version), ("stop-app", 1));
        assert_eq!(pre.body, "echo stopping");
        assert_eq!(pre.timeout_ms, 20_000);
        assert_eq!(reqs[0].post_script, None);
        // The audit of the creation names the options.
        let audit = outpost_storage::registry::audit_log(&store, 0, u64::MAX, 100).unwrap();
        let create = audit
            .iter()
            .find(|e| e.action == "deployment.create")
            .unwrap();
        assert!(create.detail.contains("stop-app"), "{}", create.detail);
    }

    #[tokio::test]
    async fn an_unknown_script_or_reboot_policy_is_refused_with_400_naming_it_and_nothing_is_created()
     {
        let dir = tempfile::tempdir().unwrap();
        let (_, r, link, orch, _) = options_site(dir.path(), InstallOptions::default());
        let (s, b) = call(
            &r,
            "POST",
            "/api/v1/deployments",
            r#"{"id":"dep-u","target":{"type":"all"},"post_script":"no-such-script"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        assert!(
            b.contains("no-such-script") && b.contains("post-install"),
            "{b}"
        );
        let (s, b) = call(
            &r,
            "POST",
            "/api/v1/deployments",
            r#"{"id":"dep-u","target":{"type":"all"},"reboot":"sometimes"}"#,
        )
        .await;
        assert!(s.is_client_error(), "{s} {b}");
        assert!(b.contains("sometimes"), "{b}");
        let (s, b) = call(
            &r,
            "POST",
            "/api/v1/deploy-schedules",
            r#"{"id":"weekly","window":{"days":["tue"],"start":"02:00","duration_minutes":60,"timezone":"UTC"},"target":{"type":"all"},"pre_script":"gone"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        assert!(b.contains("gone") && b.contains("pre-install"), "{b}");
        assert!(orch.list().unwrap().is_empty());
        assert!(link.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_deployment_stored_before_options_decodes_and_installs_with_the_deploy_defaults() {
        use outpost_patch::install::wire::RebootPolicy;
        let dir = tempfile::tempdir().unwrap();
        let defaults = InstallOptions {
            reboot: RebootPolicy::Never,
            snapshot: false,
            ..Default::default()
        };
        let (store, r, link, orch, fake) = options_site(dir.path(), defaults);
        let (s, b) = call(
            &r,
            "POST",
            "/api/v1/deployments",
            r#"{"id":"dep-old","target":{"type":"all"},"stages":[100],"start":false}"#,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        // Unset options took the [deploy] defaults...
        let sd = orch.get("dep-old").unwrap();
        let o = sd.options.clone().unwrap();
        assert_eq!((o.reboot, o.snapshot), (RebootPolicy::Never, false));
        // ...and a record written by an older build (no `options`) decodes.
        let mut json = serde_json::to_value(&sd).unwrap();
        json.as_object_mut().unwrap().remove("options");
        let old: crate::deploy::store::StoredDeployment = serde_json::from_value(json).unwrap();
        assert_eq!(old.options, None);
        crate::deploy::store::put_legacy(&store, &old).unwrap();
        // After a restart over that record, started, it installs with
        // [deploy]'s defaults.
        drop((r, orch));
        let patches: Arc<dyn MissingPatches> = fake.clone();
        let orch = Arc::new(Orchestrator::new(
            store.clone(),
            link.clone(),
            Arc::new(SiteEnv {
                store: store.clone(),
                patches: patches.clone(),
                alerts: None,
                cache: Default::default(),
            }),
            Arc::new(crate::metrics::Metrics::new()),
            InstallOptions {
                reboot: RebootPolicy::Never,
                snapshot: false,
                ..Default::default()
            },
        ));
        let r = router(DeployApi {
            store: store.clone(),
            patches,
            orchestrator: orch.clone(),
        })
        .layer(Extension(Caller::admin_token()));
        orch.input("dep-old", Input::Start, "admin", now())
            .await
            .unwrap();
        let reqs = link.0.lock().unwrap().clone();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].reboot, RebootPolicy::Never);
        assert!(!reqs[0].snapshot);
        assert_eq!(reqs[0].pre_script, None);
        let (s, b) = call(&r, "GET", "/api/v1/deployments/dep-old", "").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert!(b.contains("\"options\":null"), "{b}");
    }

    #[tokio::test]
    async fn a_recurring_schedule_carries_its_options_into_every_deployment_it_creates() {
        use outpost_patch::install::wire::RebootPolicy;
        let dir = tempfile::tempdir().unwrap();
        let (store, r, link, orch, fake) = options_site(dir.path(), InstallOptions::default());
        let (s, b) = call(
            &r,
            "POST",
            "/api/v1/deploy-schedules",
            r#"{"id":"weekly","window":{"days":["tue"],"start":"02:00","duration_minutes":180,"timezone":"UTC"},"target":{"type":"all"},"stages":[100],"reboot":"never","pre_script":"stop-app"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let (_, b) = call(&r, "GET", "/api/v1/deploy-schedules", "").await;
        assert!(b.contains("\"pre_script\":\"stop-app\""), "{b}");
        // 2026-11-24 (a Tuesday) 02:05 UTC: the occurrence is created.
        let tue = 1_795_485_600_000 + 300_000;
        let created = super::super::schedules::run_due(&store, &orch, fake.as_ref(), tue)
            .await
            .unwrap();
        assert_eq!(created.len(), 1);
        let o = orch.get(&created[0]).unwrap().options.unwrap();
        assert_eq!(o.reboot, RebootPolicy::Never);
        assert_eq!(o.pre_script.unwrap().name, "stop-app");
        let reqs = link.0.lock().unwrap().clone();
        assert_eq!(reqs.len(), 1, "inside the window the install is dispatched");
        assert_eq!(reqs[0].reboot, RebootPolicy::Never);
        assert_eq!(reqs[0].pre_script.as_ref().unwrap().body, "echo stopping");
    }

    #[tokio::test]
    async fn every_technician_action_on_a_deployment_is_in_its_json_with_the_actor() {
        let dir = tempfile::tempdir().unwrap();
        let (store, r, _, orch, _) = options_site(dir.path(), InstallOptions::default());
        let (s, b) = call(
            &r,
            "POST",
            "/api/v1/deployments",
            r#"{"id":"dep-a","target":{"type":"all"},"stages":[100],"gate":{"min_success_pct":95,"min_finished":1,"soak_ms":3600000},"pre_script":"stop-app"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        for (path, body) in [("pause", r#"{"note":"hold on"}"#), ("resume", "")] {
            let (s, b) = call(
                &r,
                "POST",
                &format!("/api/v1/deployments/dep-a/{path}"),
                body,
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{path}: {b}");
        }
        // From central: the order's actor.
        orch.input(
            "dep-a",
            Input::Abort {
                note: "from central".into(),
            },
            "ann@central",
            now(),
        )
        .await
        .unwrap();
        let (s, b) = call(
            &r,
            "POST",
            "/api/v1/deployments/dep-a/rollback",
            r#"{"scope":"deployment"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "rollback: {b}");
        // A refused action is not recorded as done.
        let (s, _) = call(&r, "POST", "/api/v1/deployments/dep-a/pause", "").await;
        assert_eq!(s, StatusCode::CONFLICT);
        let (s, b) = call(&r, "GET", "/api/v1/deployments/dep-a", "").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        let trail: Vec<(String, String)> = v["audit"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["action"].as_str().unwrap().to_string(),
                    e["actor"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        // The orchestrator's own notices are in the trail too.
        assert!(
            trail
                .iter()
                .any(|(a, who)| a == "deployment.notify" && who == "orchestrator"),
            "{trail:?}"
        );
        let trail: Vec<(String, String)> = trail
            .into_iter()
            .filter(|(a, _)| a != "deployment.notify")
            .collect();
        let actions: Vec<&str> = trail.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(
            actions,
            [
                "deployment.create",
                "deployment.start",
                "deployment.pause",
                "deployment.resume",
                "deployment.abort",
                "deployment.rollback"
            ],
            "{b}"
        );
        assert_eq!(trail[4].1, "ann@central");
        assert!(
            [0, 1, 2, 3, 5].iter().all(|&i| trail[i].1 == trail[0].1),
            "{trail:?}"
        );
        assert!(!trail[0].1.is_empty());
        let create = &v["audit"][0]["detail"];
        assert!(create.as_str().unwrap().contains("stop-app"), "{create}");
        assert!(
            v["audit"][2]["detail"]
                .as_str()
                .unwrap()
                .contains("hold on")
        );
        assert_eq!(v["audit"][2]["action"], "deployment.pause");
        // The progress sent to central carries the same trail.
        let d = orch.get("dep-a").unwrap();
        let p = crate::deploy::central::progress_with_audit(
            &d,
            deployment_audit(&store, &d).unwrap(),
            now(),
        );
        let pv: serde_json::Value = serde_json::from_str(&p.view_json).unwrap();
        assert_eq!(
            pv["audit"].as_array().unwrap().len(),
            v["audit"].as_array().unwrap().len(),
            "{pv}"
        );
        assert_eq!(pv["summary"]["options"]["pre_script"]["name"], "stop-app");
    }
}
