//! `/api/v1/uplink/*`: join a central, show the link status.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use outpost_proto::tls::CaFingerprint;
use outpost_uplink::join::JoinParams;
use outpost_uplink::service::UplinkStatus;
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
    Ok(Json(st.uplink.status()))
}

pub async fn status(State(st): State<Arc<ApiState>>) -> Json<UplinkStatus> {
    Json(st.uplink.status())
}
