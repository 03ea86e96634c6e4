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
    Ok(Json(view(d, now())))
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
}
