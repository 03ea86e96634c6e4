//! Alerting API: CRUD for rules, channels, escalation policies and
//! maintenance windows; alert listing, detail and acknowledgement; the
//! notification queue and dead letters; device tags. Every change is
//! audited (actor: a session's user; with the admin token the
//! `X-Outpost-User` header, else `admin-token`: [`Caller::actor`]).

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use outpost_proto::DeviceId;
use outpost_storage::model::AuditEntry;
use outpost_storage::{Store, now_ms, registry};
use outpost_web::{Json, Path, Query};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::devices::blocking;
use super::timeparse::parse_time;
use super::{ApiError, ApiState};
use crate::alerts::model::{
    Alert, AlertEvent, Channel, ChannelKind, EscalationPolicy, MaintenanceWindow, Notification,
    Rule,
};
use crate::alerts::notify::{self, resend::Resent};
use crate::alerts::references::{self, RuleProblems};
use crate::alerts::store::{self, ConfigKind};
use crate::alerts::windows;
use crate::users::auth::{Caller, Credential};

/// A configuration object managed by the generic CRUD handlers.
pub trait ConfigObject: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    const KIND: ConfigKind;
    /// Singular noun for messages and audit actions.
    const NOUN: &'static str;
    fn id(&self) -> &str;
    fn set_id(&mut self, id: String);
    fn validate(&self) -> Result<(), String>;
    /// What the API shows (secrets redacted).
    fn shown(&self) -> Self {
        self.clone()
    }
    /// Adjusts an update against the stored object (keeps secrets, flags).
    fn merge_update(&mut self, _old: &Self) {}
    fn deletable(&self) -> Result<(), String> {
        Ok(())
    }
    /// Checks what the object refers to against the stored configuration,
    /// before it is saved: an error names what does not resolve; warnings
    /// are answered with the saved object.
    fn check_references(&self, _s: &Store) -> Result<Vec<String>, ApiError> {
        Ok(Vec::new())
    }
}

/// A created or updated object, with the warnings it was saved with
/// (`warnings` only when there are some).
#[derive(Debug, Serialize)]
pub struct Saved<T> {
    #[serde(flatten)]
    pub object: T,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The ids of the stored channels.
fn channel_ids(s: &Store) -> Result<std::collections::BTreeSet<String>, ApiError> {
    Ok(store::list_config::<Channel>(s, ConfigKind::Channel)?
        .into_iter()
        .map(|c| c.id)
        .collect())
}

/// The stored escalation policies by id.
fn policies(s: &Store) -> Result<std::collections::HashMap<String, EscalationPolicy>, ApiError> {
    Ok(
        store::list_config::<EscalationPolicy>(s, ConfigKind::Policy)?
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect(),
    )
}

impl ConfigObject for Rule {
    const KIND: ConfigKind = ConfigKind::Rule;
    const NOUN: &'static str = "rule";
    fn id(&self) -> &str {
        &self.id
    }
    fn set_id(&mut self, id: String) {
        self.id = id;
    }
    fn validate(&self) -> Result<(), String> {
        Rule::validate(self)
    }
    fn merge_update(&mut self, old: &Self) {
        self.builtin = old.builtin;
    }
    fn check_references(&self, s: &Store) -> Result<Vec<String>, ApiError> {
        if let Some(why) = references::unresolved(self, &channel_ids(s)?, &policies(s)?) {
            return Err(ApiError::BadRequest(format!("rule {}: {why}", self.id)));
        }
        let mut scan_error = None;
        let warnings = references::metric_warnings(self, |name| {
            store::any_device_reports(s, name).unwrap_or_else(|e| {
                scan_error = Some(e);
                false
            })
        });
        match scan_error {
            Some(e) => Err(e.into()),
            None => Ok(warnings),
        }
    }
    fn deletable(&self) -> Result<(), String> {
        if self.builtin {
            Err(format!(
                "rule {} is built in: disable it (\"enabled\": false) instead",
                self.id
            ))
        } else {
            Ok(())
        }
    }
}

impl ConfigObject for Channel {
    const KIND: ConfigKind = ConfigKind::Channel;
    const NOUN: &'static str = "channel";
    fn id(&self) -> &str {
        &self.id
    }
    fn set_id(&mut self, id: String) {
        self.id = id;
    }
    fn validate(&self) -> Result<(), String> {
        Channel::validate(self)
    }
    fn shown(&self) -> Self {
        self.redacted()
    }
    fn merge_update(&mut self, old: &Self) {
        // A client that sends back the redacted password keeps the stored one.
        if let (ChannelKind::Email { password: new, .. }, ChannelKind::Email { password: old, .. }) =
            (&mut self.kind, &old.kind)
            && new.as_deref() == Some("********")
        {
            new.clone_from(old);
        }
    }
}

impl ConfigObject for EscalationPolicy {
    const KIND: ConfigKind = ConfigKind::Policy;
    const NOUN: &'static str = "escalation policy";
    fn id(&self) -> &str {
        &self.id
    }
    fn set_id(&mut self, id: String) {
        self.id = id;
    }
    fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.steps.is_empty() {
            return Err("an escalation policy needs a name and at least one step".into());
        }
        if self.steps.windows(2).any(|w| w[1].after < w[0].after) {
            return Err("escalation steps must be in increasing `after` order".into());
        }
        Ok(())
    }
    fn check_references(&self, s: &Store) -> Result<Vec<String>, ApiError> {
        match references::policy_unresolved(self, &channel_ids(s)?) {
            Some(why) => Err(ApiError::BadRequest(format!(
                "escalation policy {}: {why} (create them with POST /api/v1/channels)",
                self.id
            ))),
            None => Ok(Vec::new()),
        }
    }
}

impl ConfigObject for MaintenanceWindow {
    const KIND: ConfigKind = ConfigKind::Window;
    const NOUN: &'static str = "maintenance window";
    fn id(&self) -> &str {
        &self.id
    }
    fn set_id(&mut self, id: String) {
        self.id = id;
    }
    fn validate(&self) -> Result<(), String> {
        windows::validate(self)
    }
}

fn actor(caller: &Caller, headers: &HeaderMap) -> String {
    caller.actor(headers)
}

fn valid_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::BadRequest(format!(
            "id {id:?} must be 1-64 characters of [A-Za-z0-9_-]"
        )));
    }
    Ok(())
}

fn audit(st: &ApiState, actor: &str, action: String, target: &str, detail: String) {
    let _ = registry::audit(
        &st.store,
        &AuditEntry {
            at_ms: now_ms(),
            actor: actor.to_string(),
            action,
            target: target.to_string(),
            detail,
        },
    );
}

async fn list_cfg<T: ConfigObject>(
    State(st): State<Arc<ApiState>>,
) -> Result<Json<Vec<T>>, ApiError> {
    let v: Vec<T> = blocking(&st.store, |s| Ok(store::list_config(s, T::KIND)?)).await?;
    Ok(Json(v.iter().map(T::shown).collect()))
}

async fn get_cfg<T: ConfigObject>(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<T>, ApiError> {
    let i2 = id.clone();
    let v: Option<T> =
        blocking(&st.store, move |s| Ok(store::get_config(s, T::KIND, &i2)?)).await?;
    v.map(|v| Json(v.shown()))
        .ok_or_else(|| ApiError::NotFound(format!("no {} {id}", T::NOUN)))
}

async fn create_cfg<T: ConfigObject>(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Extension(caller): Extension<Caller>,
    Json(mut v): Json<T>,
) -> Result<Json<Saved<T>>, ApiError> {
    if v.id().is_empty() {
        let prefix = T::NOUN.split(' ').next_back().unwrap_or("obj");
        v.set_id(format!("{prefix}-{:08x}", rand::random::<u32>()));
    }
    valid_id(v.id())?;
    v.validate().map_err(ApiError::BadRequest)?;
    let id = v.id().to_string();
    let v2 = v.clone();
    let warnings = blocking(&st.store, move |s| {
        if store::get_config::<T>(s, T::KIND, v2.id())?.is_some() {
            return Err(ApiError::Conflict(format!(
                "{} {} already exists (use PUT to change it)",
                T::NOUN,
                v2.id()
            )));
        }
        let warnings = v2.check_references(s)?;
        store::put_config(s, T::KIND, v2.id(), &v2)?;
        Ok(warnings)
    })
    .await?;
    let who = actor(&caller, &headers);
    audit(
        &st,
        &who,
        format!("{}.create", T::NOUN.replace(' ', "_")),
        &id,
        serde_json::to_string(&v.shown()).unwrap_or_default(),
    );
    st.alerts.reload();
    Ok(Json(Saved {
        object: v.shown(),
        warnings,
    }))
}

async fn update_cfg<T: ConfigObject>(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(mut v): Json<T>,
) -> Result<Json<Saved<T>>, ApiError> {
    if !v.id().is_empty() && v.id() != id {
        return Err(ApiError::BadRequest(format!(
            "body id {:?} does not match the path id {id:?}",
            v.id()
        )));
    }
    v.set_id(id.clone());
    let i2 = id.clone();
    let old: Option<T> =
        blocking(&st.store, move |s| Ok(store::get_config(s, T::KIND, &i2)?)).await?;
    let old = old.ok_or_else(|| ApiError::NotFound(format!("no {} {id}", T::NOUN)))?;
    v.merge_update(&old);
    v.validate().map_err(ApiError::BadRequest)?;
    let v2 = v.clone();
    let warnings = blocking(&st.store, move |s| {
        let warnings = v2.check_references(s)?;
        store::put_config(s, T::KIND, v2.id(), &v2)?;
        Ok(warnings)
    })
    .await?;
    let who = actor(&caller, &headers);
    audit(
        &st,
        &who,
        format!("{}.update", T::NOUN.replace(' ', "_")),
        &id,
        serde_json::to_string(&v.shown()).unwrap_or_default(),
    );
    st.alerts.reload();
    Ok(Json(Saved {
        object: v.shown(),
        warnings,
    }))
}

async fn delete_cfg<T: ConfigObject>(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let i2 = id.clone();
    blocking(&st.store, move |s| {
        let old: T = store::get_config(s, T::KIND, &i2)?
            .ok_or_else(|| ApiError::NotFound(format!("no {} {i2}", T::NOUN)))?;
        old.deletable().map_err(ApiError::BadRequest)?;
        store::delete_config(s, T::KIND, &i2)?;
        Ok(())
    })
    .await?;
    let who = actor(&caller, &headers);
    audit(
        &st,
        &who,
        format!("{}.delete", T::NOUN.replace(' ', "_")),
        &id,
        String::new(),
    );
    st.alerts.reload();
    Ok(Json(serde_json::json!({ "deleted": id })))
}

fn crud<T: ConfigObject>(path: &str) -> Router<Arc<ApiState>> {
    Router::new()
        .route(path, get(list_cfg::<T>).post(create_cfg::<T>))
        .route(
            &format!("{path}/{{id}}"),
            get(get_cfg::<T>)
                .put(update_cfg::<T>)
                .delete(delete_cfg::<T>),
        )
}

/// Every rule with a problem: references that do not resolve, a metric no
/// device reports (`outpost alerts rules --check`).
async fn check_rules(State(st): State<Arc<ApiState>>) -> Result<Json<Vec<RuleProblems>>, ApiError> {
    let problems = blocking(&st.store, |s| {
        let rules: Vec<Rule> = store::list_config(s, ConfigKind::Rule)?;
        Ok(references::check(
            &rules,
            &channel_ids(s)?,
            &policies(s)?,
            &store::reported_series(s)?,
        ))
    })
    .await?;
    Ok(Json(problems))
}

#[derive(Debug, Deserialize)]
pub struct AlertQuery {
    /// pending, firing, resolved, cleared, or `open` (pending + firing).
    pub state: Option<String>,
    pub severity: Option<String>,
    pub device: Option<String>,
    pub rule: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: Option<usize>,
}

async fn list_alerts(
    State(st): State<Arc<ApiState>>,
    Query(q): Query<AlertQuery>,
) -> Result<Json<Vec<Alert>>, ApiError> {
    let now = now_ms();
    let from = q
        .from
        .as_deref()
        .map(|t| parse_time(t, now))
        .transpose()
        .map_err(ApiError::BadRequest)?
        .unwrap_or(0);
    let to =
        q.to.as_deref()
            .map(|t| parse_time(t, now))
            .transpose()
            .map_err(ApiError::BadRequest)?
            .unwrap_or(u64::MAX);
    let device: Option<DeviceId> = q
        .device
        .as_deref()
        .map(|d| {
            d.parse()
                .map_err(|e: outpost_proto::ParseIdError| ApiError::BadRequest(e.to_string()))
        })
        .transpose()?;
    if let Some(s) = &q.state
        && !["pending", "firing", "resolved", "cleared", "open"].contains(&s.as_str())
    {
        return Err(ApiError::BadRequest(format!(
            "state {s:?}: use pending, firing, resolved, cleared or open"
        )));
    }
    let limit = outpost_web::limit(q.limit, 1000, 100_000)?;
    let mut v = blocking(&st.store, move |s| {
        Ok(store::list_alerts(
            s,
            |a| {
                q.state.as_deref().is_none_or(|st| {
                    if st == "open" {
                        a.state.is_open()
                    } else {
                        a.state.as_str() == st
                    }
                }) && q
                    .severity
                    .as_deref()
                    .is_none_or(|sv| a.severity.as_str() == sv)
                    && device.is_none_or(|d| a.device == d)
                    && q.rule.as_deref().is_none_or(|r| a.rule_id == r)
                    && a.started_ms >= from
                    && a.started_ms < to
            },
            limit,
        )?)
    })
    .await?;
    v.reverse();
    Ok(Json(v))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AlertDetail {
    pub alert: Alert,
    pub events: Vec<AlertEvent>,
}

fn parse_alert_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::BadRequest(format!("alert id {id:?} is not a number")))
}

async fn show_alert(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<AlertDetail>, ApiError> {
    let id = parse_alert_id(&id)?;
    let d = blocking(&st.store, move |s| {
        let alert =
            store::get_alert(s, id)?.ok_or_else(|| ApiError::NotFound(format!("no alert {id}")))?;
        Ok(AlertDetail {
            alert,
            events: store::events(s, id)?,
        })
    })
    .await?;
    Ok(Json(d))
}

#[derive(Debug, Deserialize, Serialize, Default)]
pub struct AckBody {
    #[serde(default)]
    pub comment: String,
    /// Who acknowledges, with the admin token (default: the
    /// X-Outpost-User header or `admin-token`); a session acknowledges as
    /// its user, whatever this says.
    #[serde(default)]
    pub by: Option<String>,
}

async fn ack_alert(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Option<Json<AckBody>>,
) -> Result<Json<Alert>, ApiError> {
    let id = parse_alert_id(&id)?;
    let body = body.map(|b| b.0).unwrap_or_default();
    let by = match caller.credential {
        Credential::AdminToken => body.by.filter(|b| !b.is_empty()),
        Credential::Session => None,
    }
    .unwrap_or_else(|| actor(&caller, &headers));
    st.alerts
        .ack(id, by, body.comment)
        .await
        .map(Json)
        .map_err(|e| {
            if e.starts_with("no alert") {
                ApiError::NotFound(e)
            } else {
                ApiError::Conflict(e)
            }
        })
}

async fn dead_letters(
    State(st): State<Arc<ApiState>>,
) -> Result<Json<Vec<Notification>>, ApiError> {
    Ok(Json(
        blocking(&st.store, |s| Ok(store::dead_letters(s)?)).await?,
    ))
}

/// `POST /notifications/dead-letters/resend` body: which dead letters.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResendBody {
    /// These dead letters (at most 10,000)...
    #[serde(default)]
    pub ids: Vec<u64>,
    /// ...or every dead letter (exactly one of the two).
    #[serde(default)]
    pub all: bool,
}

/// Queues dead letters again, each for a new retry period (admin;
/// audited as `notification.resend`): delivered in their original order.
async fn resend_dead_letters(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Extension(caller): Extension<Caller>,
    Json(body): Json<ResendBody>,
) -> Result<Json<Resent>, ApiError> {
    if body.all != body.ids.is_empty() {
        return Err(ApiError::BadRequest(
            "give either \"ids\": [...] (dead letters' ids) or \"all\": true".into(),
        ));
    }
    if body.ids.len() > 10_000 {
        return Err(ApiError::BadRequest(
            "at most 10000 ids at once (or \"all\": true)".into(),
        ));
    }
    let selected: Option<std::collections::BTreeSet<u64>> =
        (!body.all).then(|| body.ids.iter().copied().collect());
    let (queued, out) = blocking(&st.store, move |s| {
        Ok(notify::resend::resend(s, selected.as_ref(), now_ms())?)
    })
    .await?;
    for n in queued {
        let kind = match blocking(&st.store, {
            let id = n.channel_id.clone();
            move |s| Ok(store::get_config::<Channel>(s, ConfigKind::Channel, &id)?)
        })
        .await
        {
            Ok(Some(c)) => match c.kind {
                ChannelKind::Webhook { .. } => "webhook",
                ChannelKind::Email { .. } => "email",
            },
            _ => "missing",
        };
        st.metrics
            .notifications
            .get_or_create(&crate::metrics::NotifyLabel {
                channel_type: kind.into(),
                event: n.event.as_str().into(),
                result: "resent".into(),
            })
            .inc();
        st.notify.submit(n);
    }
    /// Ids in an audit entry, the first 20 (and how many there were).
    fn ids(v: &[u64]) -> String {
        let mut s = v
            .iter()
            .take(20)
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if v.len() > 20 {
            s.push_str(&format!(",... ({} in all)", v.len()));
        }
        s
    }
    audit(
        &st,
        &actor(&caller, &headers),
        "notification.resend".into(),
        &if body.all {
            "all".to_string()
        } else {
            ids(&body.ids)
        },
        format!(
            "resent [{}]; skipped [{}]; not found [{}]",
            ids(&out.resent),
            ids(&out.skipped.iter().map(|s| s.id).collect::<Vec<_>>()),
            ids(&out.not_found)
        ),
    );
    Ok(Json(out))
}

async fn queued(State(st): State<Arc<ApiState>>) -> Result<Json<Vec<Notification>>, ApiError> {
    Ok(Json(blocking(&st.store, |s| Ok(store::queued(s)?)).await?))
}

async fn set_tags(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(tags): Json<Vec<String>>,
) -> Result<Json<Vec<String>>, ApiError> {
    let device: DeviceId = id
        .parse()
        .map_err(|e: outpost_proto::ParseIdError| ApiError::BadRequest(e.to_string()))?;
    if tags.len() > 64 || tags.iter().any(|t| t.is_empty() || t.len() > 64) {
        return Err(ApiError::BadRequest(
            "at most 64 tags of 1-64 characters".into(),
        ));
    }
    let t2 = tags.clone();
    blocking(&st.store, move |s| {
        registry::get(s, device)?
            .ok_or_else(|| ApiError::NotFound(format!("no device {device}")))?;
        Ok(registry::set_tags(s, device, &t2)?)
    })
    .await?;
    audit(
        &st,
        &actor(&caller, &headers),
        "device.tags".into(),
        &id,
        tags.join(","),
    );
    st.alerts.reload();
    if let Some(hook) = &st.on_tags {
        hook(device, tags.as_slice());
    }
    Ok(Json(tags))
}

/// Routes under `/api/v1`.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .merge(crud::<Rule>("/alert-rules"))
        .route("/alert-rule-check", get(check_rules))
        .merge(crud::<Channel>("/channels"))
        .merge(crud::<EscalationPolicy>("/escalation-policies"))
        .merge(crud::<MaintenanceWindow>("/maintenance-windows"))
        .route("/alerts", get(list_alerts))
        .route("/alerts/{id}", get(show_alert))
        .route("/alerts/{id}/ack", post(ack_alert))
        .route("/notifications/dead-letters", get(dead_letters))
        .route(
            "/notifications/dead-letters/resend",
            post(resend_dead_letters),
        )
        .route("/notifications/queue", get(queued))
        .route("/devices/{id}/tags", axum::routing::put(set_tags))
}
