//! `serve`'s start-up against a store that may not answer yet (PostgreSQL
//! down, failing over, still starting): the store is opened again with a
//! bounded exponential back-off while the listeners already answer, so a
//! load balancer sees a live but unready instance instead of a refused
//! port, and systemd does not restart the process in a loop.
//!
//! Owns: the retry decision ([`next_step`], pure, takes `now`), the
//! classification of what failed ([`OpenFailure`]: retry, or refuse to
//! start for what retrying cannot fix: a bad `--store` URL, credentials
//! PostgreSQL refuses, a schema newer than this binary knows), the answers
//! while starting ([`StartGate`]: `/healthz` 503 with the reason, the API
//! 503 with `Retry-After`, `/metrics`), and the refusal of uplink
//! connections while starting ([`refuse_uplinks`]; sites keep their
//! outboxes and try their next central address).
//!
//! Must not touch: the schema and its migrations (`pg/`), the API routes
//! (`api.rs`), what a ready central does (`serve_on` after the store
//! opened).

use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio_util::sync::CancellationToken;

use crate::StoreLocation;
use crate::metrics::ReasonLabel;
use crate::store::{CentralStore, CentralStoreError};

/// Attempts to open the store at start, by result (`opened`, `retry`,
/// `fatal`); registered in every [`crate::metrics::CentralMetrics`] as
/// `outpost_central_store_open_attempts_total`.
pub static OPEN_ATTEMPTS: LazyLock<Family<ReasonLabel, Counter>> = LazyLock::new(Default::default);

/// What was refused while the store was not open yet (`uplink`
/// connections, `http` requests); `outpost_central_starting_refusals_total`.
pub static STARTING_REFUSALS: LazyLock<Family<ReasonLabel, Counter>> =
    LazyLock::new(Default::default);

fn count(family: &Family<ReasonLabel, Counter>, reason: &str) {
    family
        .get_or_create(&ReasonLabel {
            reason: reason.to_string(),
        })
        .inc();
}

/// Registers the start-up counters in `r` (central's registry, and the
/// start-up `/metrics`).
pub fn register(r: &mut prometheus_client::registry::Registry) {
    r.register(
        "store_open_attempts",
        "Attempts to open the store at start, by result (opened, retry, fatal)",
        OPEN_ATTEMPTS.clone(),
    );
    r.register(
        "starting_refusals",
        "Uplink connections and HTTP requests refused while the store was not open yet",
        STARTING_REFUSALS.clone(),
    );
}

/// Delays between attempts: `first_ms`, doubling, at most `max_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first_ms: u64,
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first_ms: 500,
            max_ms: 30_000,
        }
    }
}

impl Backoff {
    /// The wait after the `attempt`-th failed attempt (1 is the first).
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        let doublings = attempt.saturating_sub(1).min(63);
        self.first_ms
            .max(1)
            .saturating_mul(1u64 << doublings)
            .min(self.max_ms.max(self.first_ms.max(1)))
    }
}

/// Why opening the store failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenFailure {
    /// Retrying later can succeed (the database is down, starting,
    /// failing over, slow; anything not known to be permanent).
    Retry(String),
    /// Retrying cannot fix it: `serve` exits with this message.
    Fatal(String),
}

impl OpenFailure {
    pub fn message(&self) -> &str {
        match self {
            OpenFailure::Retry(m) | OpenFailure::Fatal(m) => m,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Try again at `at_ms` (`delay_ms` from now).
    RetryAt { at_ms: u64, delay_ms: u64 },
    /// Refuse to start, saying why.
    GiveUp(String),
}

/// The decision after the `attempt`-th attempt failed at `now_ms`.
pub fn next_step(backoff: &Backoff, attempt: u32, now_ms: u64, failure: &OpenFailure) -> Next {
    match failure {
        OpenFailure::Fatal(m) => Next::GiveUp(m.clone()),
        OpenFailure::Retry(_) => {
            let delay_ms = backoff.delay_ms(attempt);
            Next::RetryAt {
                at_ms: now_ms.saturating_add(delay_ms),
                delay_ms,
            }
        }
    }
}

/// The message refusing a schema that has versions `migrations` does not
/// list (a newer binary migrated it), `None` when every applied version
/// is known.
pub fn unknown_schema(applied: &[i32], migrations: &[(i32, &str, &str)]) -> Option<String> {
    let known = migrations.iter().map(|m| m.0).max().unwrap_or(0);
    let current = applied
        .iter()
        .copied()
        .filter(|v| !migrations.iter().any(|m| m.0 == *v))
        .max()?;
    Some(format!(
        "the database schema is version {current}, newer than this outpost-central \
         knows ({known}): run the newer outpost-central (or restore a matching backup)"
    ))
}

/// The failure of `StoreLocation::open` (after a successful probe): a
/// store that is unavailable is retried; a schema refused by the
/// migration runner (another instance upgraded it since the probe) is
/// fatal; anything else on PostgreSQL is retried (logged with its
/// reason), on RocksDB fatal as it always was (the directory is held by
/// another process, or unreadable).
pub fn classify_open_error(e: &anyhow::Error, postgres: bool) -> OpenFailure {
    let text = format!("{e:#}");
    let unavailable = e.chain().any(|c| {
        c.downcast_ref::<CentralStoreError>()
            .is_some_and(CentralStoreError::is_unavailable)
    });
    if !postgres || text.contains("newer than this outpost-central knows") {
        OpenFailure::Fatal(text)
    } else if unavailable {
        OpenFailure::Retry(text)
    } else {
        OpenFailure::Retry(format!("{text} (retried: it may be passing)"))
    }
}

/// A connection error of the probe: credentials refused (SQLSTATE class
/// 28: bad password, unknown role, no `pg_hba.conf` entry) are fatal,
/// anything else is retried.
fn classify_connect(e: &tokio_postgres::Error) -> OpenFailure {
    let text = crate::pg::tls::hint(describe(e));
    match e.code().map(|c| c.code()) {
        Some(c) if c.starts_with("28") => OpenFailure::Fatal(format!(
            "PostgreSQL refused the credentials of --store (SQLSTATE {c}): {text}; \
             fix the user, password or pg_hba.conf"
        )),
        _ => OpenFailure::Retry(format!("postgresql: {text}")),
    }
}

fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// One connection to `url` that tells the permanent failures apart
/// before the pool hides them as "no database connection": the URL
/// (parsed, `sslrootcert` read), the credentials, and the schema version.
pub async fn probe(url: &str, wait: Duration) -> Result<(), OpenFailure> {
    let (mut cfg, tls) = crate::pg::tls::configure(url)
        .map_err(|e| OpenFailure::Fatal(format!("the --store URL is not usable: {e}")))?;
    cfg.connect_timeout(wait);
    let (client, conn) =
        match tokio::time::timeout(wait + Duration::from_secs(1), cfg.connect(tls)).await {
            Err(_) => {
                return Err(OpenFailure::Retry(format!(
                    "postgresql: no answer within {} ms",
                    wait.as_millis()
                )));
            }
            Ok(Err(e)) => return Err(classify_connect(&e)),
            Ok(Ok(c)) => c,
        };
    let task = tokio::spawn(conn);
    let r = match client
        .query("SELECT version FROM outpost_schema_version", &[])
        .await
    {
        Ok(rows) => {
            let applied: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
            match unknown_schema(&applied, crate::pg::MIGRATIONS) {
                Some(m) => Err(OpenFailure::Fatal(m)),
                None => Ok(()),
            }
        }
        // A database central never used: the migrations create it.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(()),
        Err(e) => Err(classify_connect(&e)),
    };
    drop(client);
    let _ = task.await;
    r
}

/// One attempt to open `loc` (PostgreSQL: probed first).
pub async fn open_once(loc: &StoreLocation) -> Result<Arc<dyn CentralStore>, OpenFailure> {
    let postgres = match loc {
        StoreLocation::Postgres {
            url, pool_wait_ms, ..
        } => {
            let wait = (*pool_wait_ms).clamp(
                crate::pg::POOL_WAIT_BOUNDS_MS.0,
                crate::pg::POOL_WAIT_BOUNDS_MS.1,
            );
            probe(url, Duration::from_millis(wait)).await?;
            true
        }
        StoreLocation::Rocks(_) => false,
    };
    loc.open()
        .await
        .map_err(|e| classify_open_error(&e, postgres))
}

/// Where start-up stands, for the answers while not ready.
#[derive(Debug, Default, Clone)]
struct Status {
    /// Attempts made so far.
    attempts: u32,
    /// Why the last one failed.
    reason: String,
    /// When the next one starts (ms since the epoch).
    next_at_ms: u64,
}

/// The HTTP service of a central that is starting: every request waits
/// for nothing; until [`StartGate::set_ready`] hands it the real router it
/// answers `/healthz` 503 with the reason, `/metrics` with the start-up
/// counters, and anything else 503 with `Retry-After`; then it passes
/// every request to the real router.
#[derive(Default)]
pub struct StartGate {
    /// The last failed attempt (what the 503s say).
    status: Mutex<Status>,
    /// The API of the ready central.
    ready: OnceLock<Router>,
}

impl StartGate {
    pub fn new() -> Arc<StartGate> {
        Arc::new(StartGate::default())
    }

    /// The router to serve on the HTTP listener from the start.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new().fallback(gate).with_state(self.clone())
    }

    /// From now on, requests go to `router`.
    pub fn set_ready(&self, router: Router) {
        let _ = self.ready.set(router);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.get().is_some()
    }

    /// Records a failed attempt.
    pub fn failed(&self, attempts: u32, reason: &str, next_at_ms: u64) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        *s = Status {
            attempts,
            reason: reason.to_string(),
            next_at_ms,
        };
    }

    /// What the 503s say at `now_ms`.
    pub fn reason(&self, now_ms: u64) -> String {
        let s = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if s.attempts == 0 {
            return "central storage unavailable: starting: opening the store".into();
        }
        let next_s = s.next_at_ms.saturating_sub(now_ms).div_ceil(1000);
        format!(
            "central storage unavailable: starting: attempt {} to open the store failed: {}; \
             next attempt in {next_s} s",
            s.attempts, s.reason
        )
    }
}

async fn gate(State(g): State<Arc<StartGate>>, req: Request) -> Response {
    if let Some(r) = g.ready.get() {
        use tower::ServiceExt;
        return match r.clone().oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
    }
    let reason = g.reason(crate::now_ms());
    match req.uri().path() {
        "/healthz" => {
            count(&STARTING_REFUSALS, "http");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response()
        }
        "/metrics" => {
            let mut r = prometheus_client::registry::Registry::with_prefix("outpost_central");
            register(&mut r);
            r.register(
                "store_errors",
                "Store errors by kind: unavailable (database down, failing over, timed out; \
                 retried later) or other",
                crate::store::STORE_ERRORS.clone(),
            );
            let mut s = String::new();
            let _ = prometheus_client::encoding::text::encode(&mut s, &r);
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                s,
            )
                .into_response()
        }
        _ => {
            count(&STARTING_REFUSALS, "http");
            outpost_web::ApiError::Unavailable(reason).into_response()
        }
    }
}

/// Refuses every uplink connection (sites try their next central address
/// and keep their outboxes) until `stop`.
pub async fn refuse_uplinks(endpoint: quinn::Endpoint, stop: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = stop.cancelled() => return,
        };
        let Some(incoming) = incoming else { return };
        count(&STARTING_REFUSALS, "uplink");
        tracing::debug!(remote = %incoming.remote_address(), "uplink refused: central is starting");
        incoming.refuse();
    }
}

/// Opens `loc`, again and again after [`Backoff`] delays while it fails
/// for a reason retrying can fix, each failure logged with its reason
/// and the attempt number and shown by `gate`. `Ok(None)` when `shutdown`
/// came first; `Err` for what retrying cannot fix.
pub async fn open_store(
    loc: &StoreLocation,
    gate: &StartGate,
    backoff: &Backoff,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Arc<dyn CentralStore>>> {
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        let r = tokio::select! {
            r = open_once(loc) => r,
            _ = shutdown.cancelled() => return Ok(None),
        };
        let failure = match r {
            Ok(store) => {
                count(&OPEN_ATTEMPTS, "opened");
                if attempt > 1 {
                    tracing::info!(attempt, "the store opened");
                }
                return Ok(Some(store));
            }
            Err(f) => f,
        };
        let now = crate::now_ms();
        match next_step(backoff, attempt, now, &failure) {
            Next::GiveUp(m) => {
                count(&OPEN_ATTEMPTS, "fatal");
                tracing::error!(attempt, reason = %m, "the store cannot be opened; not retrying");
                anyhow::bail!("opening the store: {m}");
            }
            Next::RetryAt { at_ms, delay_ms } => {
                count(&OPEN_ATTEMPTS, "retry");
                let reason = failure.message();
                tracing::warn!(
                    attempt,
                    retry_in_ms = delay_ms,
                    reason = %reason,
                    "the store did not open; central answers 503 meanwhile and retries"
                );
                gate.failed(attempt, reason, at_ms);
                let status = format!("waiting for the store (attempt {attempt} failed: {reason})");
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&status)]);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
                    _ = shutdown.cancelled() => return Ok(None),
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "startup_tests.rs"]
mod tests;
