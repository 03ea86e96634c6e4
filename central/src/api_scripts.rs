//! Central's `/api/v1/scripts`: the tenant's versioned script library in
//! the site's JSON shape plus `customer`. Admins add (`POST`) and edit
//! (`PUT`, a new version); technicians run (`POST .../{name}/run`, the
//! site's body plus `site`); every role reads. Customer scopes apply: a
//! customer's script is invisible (404) outside that customer and runs
//! only on its devices; a tenant-wide script needs a tenant-wide admin to
//! add or edit.
//!
//! This module only translates HTTP: the record and its rules are
//! [`crate::scripts`], storage [`crate::store::CommandStore`], a run is a
//! command queued through [`crate::api_commands`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use outpost_proto::command::{
    CommandKind, CommandSpec, DEFAULT_EXPIRY_MS, DEFAULT_TIMEOUT_MS, Interpreter,
};
use outpost_proto::ids::CommandId;
use outpost_proto::{CustomerId, SiteId};
use outpost_web::{Json, Path, Query};
use serde::{Deserialize, Serialize};

use crate::Central;
use crate::api::{ApiError, require};
use crate::api_commands::CommandView;
use crate::commands::AuditRow;
use crate::model::{Principal, Role};
use crate::scripts::{self, CentralScript};

fn internal(e: impl std::fmt::Display + 'static) -> ApiError {
    crate::api::internal_error(e)
}

/// A script of the library, by name and (optionally) version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScriptRef {
    pub name: String,
    #[serde(default)]
    pub version: Option<u32>,
}

/// Body of `POST /api/v1/scripts` and `PUT /api/v1/scripts/{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptRequest {
    /// Only in `POST` (the path names it in `PUT`).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub interpreter: Option<Interpreter>,
    pub body: String,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub parameters: Vec<String>,
    /// Only in `POST`: the customer whose script it is (the tenant's
    /// without it). An edit keeps the script's customer.
    #[serde(default)]
    pub customer: Option<CustomerId>,
}

fn not_found(name: &str, version: Option<u32>) -> ApiError {
    match version {
        Some(v) => ApiError::NotFound(format!("no version {v} of script {name}")),
        None => ApiError::NotFound(format!("no script {name}")),
    }
}

/// Script `name` (version `version`, the newest by default) if `p` sees
/// it, else 404 naming it.
pub async fn visible_script(
    c: &Arc<Central>,
    p: &Principal,
    name: &str,
    version: Option<u32>,
) -> Result<CentralScript, ApiError> {
    c.store
        .script(&p.tenant, name, version)
        .await
        .map_err(internal)?
        .filter(|s| scripts::visible(p, s))
        .ok_or_else(|| not_found(name, version))
}

/// Script `name` as a run on a device of `customer` takes it: visible to
/// `p` (404) and allowed on that customer's devices (400).
pub async fn runnable(
    c: &Arc<Central>,
    p: &Principal,
    name: &str,
    version: Option<u32>,
    customer: &CustomerId,
) -> Result<CentralScript, ApiError> {
    let s = visible_script(c, p, name, version).await?;
    scripts::runs_on(&s, customer).map_err(ApiError::BadRequest)?;
    Ok(s)
}

/// Adds (`expect_new`) or edits a script (the API's and the console's
/// path): admins only, within their scope.
pub async fn save_script(
    c: &Arc<Central>,
    p: &Principal,
    name: String,
    req: ScriptRequest,
    expect_new: bool,
) -> Result<CentralScript, ApiError> {
    require(p, Role::Admin)?;
    let customer = if expect_new {
        req.customer.clone()
    } else {
        if req.customer.is_some() {
            return Err(ApiError::BadRequest(
                "a script's customer is fixed when it is added: leave \"customer\" out of an edit"
                    .into(),
            ));
        }
        visible_script(c, p, &name, None).await?.customer
    };
    scripts::may_edit(p, customer.as_ref()).map_err(ApiError::Forbidden)?;
    if let Some(cu) = &customer {
        let known = c
            .store
            .sites(&p.tenant)
            .await
            .map_err(internal)?
            .iter()
            .any(|s| s.customer == *cu);
        if !known {
            return Err(ApiError::NotFound(format!("no customer {cu}")));
        }
    }
    let timeout = req.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    outpost_proto::script::validate(&name, &req.body, timeout).map_err(ApiError::BadRequest)?;
    let now = crate::now_ms();
    let s = CentralScript {
        name: name.clone(),
        version: 0,
        interpreter: req.interpreter.unwrap_or_default(),
        body: req.body,
        default_timeout_ms: timeout,
        parameters: req.parameters,
        created_ms: now,
        created_by: p.name.clone(),
        customer,
    };
    let audit = AuditRow {
        at_ms: now,
        tenant: p.tenant.clone(),
        actor: p.name.clone(),
        action: if expect_new {
            "script.add"
        } else {
            "script.edit"
        }
        .into(),
        target: name.clone(),
        detail: String::new(),
    };
    match c
        .store
        .put_script(&p.tenant, s, expect_new, audit)
        .await
        .map_err(internal)?
    {
        Ok(s) => Ok(s),
        // Someone else's script of the same name (another customer's)
        // answers the same conflict: names are unique in the tenant.
        Err(Some(_)) => Err(ApiError::Conflict(format!(
            "script {name} exists: edit it with PUT /api/v1/scripts/{name}"
        ))),
        Err(None) => Err(not_found(&name, None)),
    }
}

/// The newest version of each script `p` sees, by name.
pub async fn list_scripts(c: &Arc<Central>, p: &Principal) -> Result<Vec<CentralScript>, ApiError> {
    Ok(c.store
        .scripts(&p.tenant)
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|s| scripts::visible(p, s))
        .collect())
}

/// `POST /api/v1/scripts`: a new script (version 1).
pub async fn add(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Json(req): Json<ScriptRequest>,
) -> Result<(StatusCode, Json<CentralScript>), ApiError> {
    let name = req
        .name
        .clone()
        .ok_or_else(|| ApiError::BadRequest("\"name\" is required".into()))?;
    let s = save_script(&c, &p, name, req, true).await?;
    Ok((StatusCode::CREATED, Json(s)))
}

/// `PUT /api/v1/scripts/{name}`: a new version.
pub async fn edit(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(name): Path<String>,
    Json(req): Json<ScriptRequest>,
) -> Result<Json<CentralScript>, ApiError> {
    if req.name.as_ref().is_some_and(|n| *n != name) {
        return Err(ApiError::BadRequest(
            "a script is not renamed: \"name\" must match the path".into(),
        ));
    }
    Ok(Json(save_script(&c, &p, name, req, false).await?))
}

/// `GET /api/v1/scripts`.
pub async fn list(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
) -> Result<Json<Vec<CentralScript>>, ApiError> {
    Ok(Json(list_scripts(&c, &p).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    pub version: Option<u32>,
}

/// `GET /api/v1/scripts/{name}[?version=N]`.
pub async fn show(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<CentralScript>, ApiError> {
    Ok(Json(visible_script(&c, &p, &name, q.version).await?))
}

/// Body of `POST /api/v1/scripts/{name}/run` (the site's plus `site`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptRunRequest {
    pub site: SiteId,
    pub device: String,
    /// The version to run (the newest by default).
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub run_as: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub expiry_ms: Option<u64>,
}

/// `POST /api/v1/scripts/{name}/run`: queues a run on one device; the
/// command carries the body of the version it was queued with.
pub async fn run(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(name): Path<String>,
    Json(req): Json<ScriptRunRequest>,
) -> Result<(StatusCode, Json<CommandView>), ApiError> {
    let (site, dev) = crate::api_commands::target(&c, &p, &req.site, &req.device).await?;
    let s = runnable(&c, &p, &name, req.version, &site.customer).await?;
    let spec = CommandSpec {
        kind: CommandKind::Script {
            name: s.name,
            version: s.version,
            body: s.body,
        },
        interpreter: s.interpreter,
        args: req.args,
        env: req.env,
        cwd: req.cwd,
        run_as: req.run_as,
        timeout_ms: req.timeout_ms.unwrap_or(s.default_timeout_ms),
        expiry_ms: req.expiry_ms.unwrap_or(DEFAULT_EXPIRY_MS),
        requested_by: format!("{}@central", p.name),
    };
    let cmd = crate::api_commands::queue(
        &c,
        &p,
        &site,
        &dev,
        spec,
        CommandId::random(),
        crate::now_ms(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(CommandView::of(&cmd, &c))))
}
