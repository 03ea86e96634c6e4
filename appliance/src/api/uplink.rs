//! `/api/v1/uplink/*`: join a central, show the link status.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use outpost_proto::tls::CaFingerprint;
use outpost_uplink::join::JoinParams;
use outpost_uplink::service::UplinkStatus;
use outpost_web::Json;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// `HOST:PORT` of central's QUIC listener.
    pub central: String,
    pub token: String,
    pub ca_fingerprint: String,
    /// Compaction interval, e.g. `60s`.
    #[serde(default)]
    pub interval: Option<String>,
}

pub async fn join(
    State(st): State<Arc<ApiState>>,
    Json(r): Json<JoinRequest>,
) -> Result<Json<UplinkStatus>, ApiError> {
    let fingerprint: CaFingerprint = r
        .ca_fingerprint
        .parse()
        .map_err(|e: outpost_proto::tls::BadFingerprint| ApiError::BadRequest(e.to_string()))?;
    let interval = match r.interval.as_deref() {
        Some(i) => humantime::parse_duration(i)
            .map_err(|e| ApiError::BadRequest(format!("interval {i:?}: {e}")))?,
        None => Duration::from_secs(60),
    };
    if interval < Duration::from_millis(100) {
        return Err(ApiError::BadRequest(
            "interval must be at least 100ms".into(),
        ));
    }
    let params = JoinParams {
        central: r.central,
        token: r.token,
        fingerprint,
        interval,
    };
    st.uplink
        .join(&params)
        .await
        .map_err(|e| ApiError::BadRequest(format!("joining central failed: {e:#}")))?;
    Ok(Json(status_of(&st).await?))
}

/// The uplink status (it reads the device registry: off the async threads).
async fn status_of(st: &Arc<ApiState>) -> Result<UplinkStatus, ApiError> {
    let uplink = st.uplink.clone();
    tokio::task::spawn_blocking(move || uplink.status())
        .await
        .map_err(|e| ApiError::Internal(format!("uplink status task failed: {e}")))
}

pub async fn status(State(st): State<Arc<ApiState>>) -> Result<Json<UplinkStatus>, ApiError> {
    Ok(Json(status_of(&st).await?))
}
