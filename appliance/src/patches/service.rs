//! The patch service: applies the package reports the ingest writer stored
//! (`package_scans_in`) to each device's current scan, keeps the advisory
//! catalog in service, assesses devices when their scan or the catalog
//! changes, and answers the views.
//!
//! All assessment work runs on the service's own worker thread or on the
//! caller's blocking thread (imports), never on the ingest writer. One
//! mutex serialises every change (reports, imports); readers take a
//! snapshot of the [`View`] (an `Arc` swap) and never wait for an import.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use outpost_patch::assess::fleet::{
    CveSummary, CveView, FleetSummary, PatchSummary, cve_list, cve_view, fleet_summary, patch_list,
};
use outpost_patch::assess::{
    DeviceAssessment, DownloadSize, Policy, assess_device, reassess_device,
};
use outpost_patch::catalog::{
    Catalog, ChangeSet, FeedFormat, ImportOptions, SourceCatalog, osv::import_osv,
    tracker::import_debian_tracker,
};
use outpost_patch::scan::legacy::PackageReportV1;
use outpost_patch::scan::{
    MAX_REPORT_PLAIN_BYTES, PACKAGE_REPORT_FORMAT, PackageReport, REPORT_FORMATS, Scan,
};
use outpost_proto::DeviceId;
use outpost_proto::codec;
use outpost_proto::messages::{PackageScanRecord, PartsGroup, next_parts_group};
use outpost_storage::Store;
use outpost_storage::ingest::PACKAGE_SCANS_IN;
use serde::Serialize;
use tracing::{info, warn};

use super::store::{
    DailyCompliance, DeviceScan, PATCH_COMPLIANCE_DAILY, PATCH_SOURCES, SourceRecord,
};
use crate::metrics::Metrics;

const DAY_MS: u64 = 86_400_000;
/// How often the patch state is sent to the alert engine (besides after
/// every applied report).
const ALERT_SAMPLE_INTERVAL_MS: u64 = 5 * 60 * 1000;

/// What readers see: the catalog in service and every device's assessment.
#[derive(Default)]
pub struct View {
    pub catalog: Arc<Catalog>,
    pub assessments: BTreeMap<DeviceId, Arc<DeviceAssessment>>,
    /// Since when each device waiting for a reboot has been waiting.
    pub reboot_since: BTreeMap<DeviceId, u64>,
}

/// Where the patch state goes as alert samples (the alert engine).
pub type AlertSink =
    Box<dyn Fn(Vec<(DeviceId, Vec<outpost_proto::messages::MetricValue>)>) + Send + Sync>;

/// Where a device that needs a whole scan is reported
/// ([`super::full_scan::FullScanRequester::sink`]).
pub type FullScanSink = Box<dyn Fn(DeviceId) + Send + Sync>;

/// The patch service (cheap to clone).
#[derive(Clone)]
pub struct PatchService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// `DATA/advisories`: the imported feeds, one file per source.
    dir: PathBuf,
    metrics: Arc<Metrics>,
    policy: Policy,
    /// Serialises every change: report application and imports.
    change: Mutex<()>,
    view: RwLock<Arc<View>>,
    /// Wakes the worker early (tests, imports).
    wake: std::sync::Condvar,
    wake_flag: Mutex<bool>,
    /// The alert engine's input, once wired ([`PatchService::set_alert_sink`]).
    alert_sink: Mutex<Option<AlertSink>>,
    /// Asks devices for a whole scan, once wired
    /// ([`PatchService::set_full_scan_sink`]).
    full_scan_sink: Mutex<Option<FullScanSink>>,
    /// Queues scan commands (`POST /api/v1/patches/devices/{id}/scan`),
    /// once wired ([`PatchService::set_scan_requester`]).
    scan_requester: Mutex<Option<Arc<super::full_scan::FullScanRequester>>>,
    /// Findings owed to central after batches went to an older one, once
    /// wired ([`PatchService::set_findings_resend`]).
    findings_resend: Mutex<Option<Arc<outpost_uplink::resend::FindingsResend>>>,
    /// The site's name for reports, once wired ([`PatchService::set_site_name`]).
    site_name: Mutex<Option<SiteName>>,
}

/// Gives the site's current name (it changes when the site joins central).
pub type SiteName = Box<dyn Fn() -> String + Send + Sync>;

/// Why an import was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImportFailure {
    #[error("{0}")]
    Feed(String),
    #[error("{0}")]
    Invalid(String),
    #[error("storing the catalog: {0:#}")]
    Store(anyhow::Error),
}

/// What an import did.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ImportOutcome {
    pub source: String,
    pub format: FeedFormat,
    pub advisories: u64,
    pub vulns: u64,
    /// (release, source package) pairs whose advisories changed.
    pub changed_packages: usize,
    pub devices_reassessed: usize,
    pub import_ms: u64,
    pub reassess_ms: u64,
}

/// `outpost advisories status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AdvisoriesStatus {
    pub sources: Vec<SourceStatus>,
    pub advisories: u64,
    pub releases: Vec<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SourceStatus {
    pub name: String,
    pub format: FeedFormat,
    pub location: String,
    pub imported_at_ms: u64,
    pub age_ms: u64,
    pub entries: u64,
    pub vulns: u64,
    pub advisories: u64,
    pub skipped: u64,
    pub size_bytes: u64,
    /// Loaded in the catalog in service (false: its file failed to load at start).
    pub loaded: bool,
}

/// A device's scan state and assessment (`outpost patches device`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DevicePatches {
    pub device: DeviceId,
    pub scanned_at_ms: Option<u64>,
    pub received_at_ms: u64,
    pub packages: usize,
    pub upgrades: usize,
    pub needs_full_scan: bool,
    pub base_misses: u64,
    pub last_error: Option<String>,
    /// The agent's last scan was deferred (dpkg's lock held through its
    /// back-off): why; cleared by the next scan.
    #[serde(default)]
    pub deferred: Option<String>,
    /// Deferred scans of this device so far.
    #[serde(default)]
    pub deferred_reports: u64,
    pub index_refreshed_at_ms: Option<u64>,
    pub index_error: Option<String>,
    pub os: Option<String>,
    pub assessment: Option<DeviceAssessment>,
}

/// One device's line in `outpost patches devices`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DeviceLine {
    pub device: DeviceId,
    pub release: Option<String>,
    pub compliance: outpost_patch::assess::Compliance,
    pub risk: Option<u32>,
    pub patches: u32,
    pub fixable: u32,
    pub open: u32,
    pub reboot_required: bool,
    pub scanned_at_ms: u64,
    /// What its missing patches cost to download.
    #[serde(default)]
    pub download: DownloadSize,
    /// Its customer (the enrollment token's; empty when unknown).
    #[serde(default)]
    pub customer: String,
}

/// One customer's line of `outpost patches summary` (as central's
/// per-customer compliance).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CustomerLine {
    pub customer: String,
    pub summary: FleetSummary,
    pub download: DownloadSize,
}

/// `outpost patches summary`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Summary {
    pub fleet: FleetSummary,
    /// What every device's missing patches cost to download, in all.
    #[serde(default)]
    pub download: DownloadSize,
    /// The customer the summary is narrowed to (`?customer=C`).
    #[serde(default)]
    pub customer: Option<String>,
    /// Per customer, by name (one line when narrowed to a customer).
    #[serde(default)]
    pub customers: Vec<CustomerLine>,
    pub devices: Vec<DeviceLine>,
    /// Most severe and widespread CVEs first (at most 50).
    pub top_cves: Vec<CveSummary>,
    /// Daily compliance, oldest first (at most 90 days).
    pub history: Vec<DailyCompliance>,
}

fn now_ms() -> u64 {
    outpost_storage::now_ms()
}

fn device_key(d: DeviceId) -> [u8; 8] {
    d.to_be_bytes()
}

/// Source names are file names: letters, digits, `-`, `_`, `.`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn import_feed(
    format: FeedFormat,
    reader: impl std::io::Read,
    options: ImportOptions,
) -> Result<SourceCatalog, String> {
    match format {
        FeedFormat::DebianTracker => import_debian_tracker(reader, options),
        FeedFormat::Osv => import_osv(reader, options),
    }
    .map_err(|e| e.to_string())
}

impl PatchService {
    /// Opens the service: loads the stored assessments (views work at
    /// once), then re-imports the stored feeds.
    pub fn open(
        store: Store,
        data_dir: &Path,
        metrics: Arc<Metrics>,
        policy: Policy,
    ) -> anyhow::Result<PatchService> {
        let dir = data_dir.join("advisories");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut assessments = BTreeMap::new();
        super::store::scan_assessments(&store, |k, a| {
            if let Ok(b) = <[u8; 8]>::try_from(k) {
                assessments.insert(DeviceId(u64::from_be_bytes(b)), Arc::new(a));
            }
        })?;
        let mut reboot_since = BTreeMap::new();
        super::store::scan_scans(&store, |k, ds| {
            if let (Ok(b), Some(t)) = (<[u8; 8]>::try_from(k), ds.reboot_since_ms) {
                reboot_since.insert(DeviceId(u64::from_be_bytes(b)), t);
            }
        })?;
        let mut catalog = Catalog::new();
        let mut sources = Vec::new();
        store.scan::<SourceRecord>(PATCH_SOURCES, &[], None, |_, r| {
            sources.push(r);
            true
        })?;
        for r in sources {
            let path = dir.join(&r.file);
            let loaded = std::fs::File::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    let mut o =
                        ImportOptions::new(&r.info.name, &r.info.location, r.info.imported_at_ms);
                    o.max_description_bytes = 2048;
                    import_feed(r.format, f, o)
                });
            match loaded {
                Ok(src) => catalog = catalog.with_source(src),
                Err(e) => {
                    metrics.patches.import_failures.inc();
                    warn!(source = %r.info.name, file = %path.display(), error = %e,
                        "could not reload an imported advisory feed; import it again");
                }
            }
        }
        let service = PatchService {
            inner: Arc::new(Inner {
                store,
                dir,
                metrics,
                policy,
                change: Mutex::new(()),
                view: RwLock::new(Arc::new(View {
                    catalog: Arc::new(catalog),
                    assessments,
                    reboot_since,
                })),
                wake: std::sync::Condvar::new(),
                wake_flag: Mutex::new(false),
                alert_sink: Mutex::new(None),
                full_scan_sink: Mutex::new(None),
                scan_requester: Mutex::new(None),
                findings_resend: Mutex::new(None),
                site_name: Mutex::new(None),
            }),
        };
        service.publish_gauges();
        Ok(service)
    }

    /// Starts the worker thread: applies stored reports every `poll`
    /// (or when woken), records the day's compliance.
    pub fn spawn_worker(
        &self,
        poll: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let s = self.clone();
        std::thread::Builder::new()
            .name("patches".into())
            .spawn(move || {
                let mut last_snapshot = 0u64;
                let mut last_alerts = 0u64;
                // Whether every assessment was queued for the uplink since
                // the site's tracking went on (join, or start while joined).
                let mut uplink_queued = false;
                while !shutdown.is_cancelled() {
                    let tracking = s.inner.store.uplink_tracking();
                    if tracking && !uplink_queued {
                        match s.queue_all_for_uplink() {
                            Ok(n) => {
                                info!(devices = n, "patch compliance queued for the uplink");
                                uplink_queued = true;
                            }
                            Err(e) => warn!(error = %format!("{e:#}"),
                                "queueing patch compliance for the uplink failed"),
                        }
                    }
                    uplink_queued &= tracking;
                    if let Err(e) = s.resend_findings_if_due() {
                        warn!(error = %format!("{e:#}"), "re-queueing patch findings failed");
                    }
                    match s.process_reports(now_ms()) {
                        Ok(n) if n > 0 => {
                            last_snapshot = 0;
                            last_alerts = 0;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            warn!(error = %format!("{e:#}"), "applying package reports failed")
                        }
                    }
                    let now = now_ms();
                    if now.saturating_sub(last_snapshot) >= 60_000 {
                        if let Err(e) = s.record_compliance(now) {
                            warn!(error = %format!("{e:#}"), "recording compliance failed");
                        }
                        last_snapshot = now;
                    }
                    if now.saturating_sub(last_alerts) >= ALERT_SAMPLE_INTERVAL_MS {
                        s.send_alert_samples(now);
                        last_alerts = now;
                    }
                    s.wait(poll);
                }
            })
    }

    /// Queues every device's current compliance for the next uplink batch
    /// (when the site joins central, or starts joined: what central holds
    /// may be older). Returns how many were queued (0 when not joined).
    pub fn queue_all_for_uplink(&self) -> anyhow::Result<usize> {
        let _g = self.inner.change.lock().unwrap_or_else(|p| p.into_inner());
        let view = self.view();
        let mut n = 0;
        let mut b = self.inner.store.batch();
        for (dev, a) in &view.assessments {
            if super::uplink::queue_if_changed(&self.inner.store, &mut b, *dev, a, None)? {
                n += 1;
            }
            if b.len() >= 256 {
                let full = std::mem::replace(&mut b, self.inner.store.batch());
                self.inner.store.write(full)?;
            }
        }
        self.inner.store.write(b)?;
        Ok(n)
    }

    fn wait(&self, poll: Duration) {
        let guard = self
            .inner
            .wake_flag
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (mut guard, _) = self
            .inner
            .wake
            .wait_timeout_while(guard, poll, |woken| !*woken)
            .unwrap_or_else(|p| p.into_inner());
        *guard = false;
    }

    /// Re-queues every device's findings when the uplink owes them to a
    /// central that now reads them (see [`outpost_uplink::resend`]).
    /// Wires the site's name into reports (`source` of the compliance
    /// report; `site` until wired).
    pub fn set_site_name(&self, name: SiteName) {
        *self
            .inner
            .site_name
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(name);
    }

    fn site_name(&self) -> String {
        self.inner
            .site_name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|f| f())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "site".to_string())
    }

    pub fn set_findings_resend(&self, r: Arc<outpost_uplink::resend::FindingsResend>) {
        *self
            .inner
            .findings_resend
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(r);
    }

    /// When findings are owed and central reads them (and the site is
    /// joined): queues every device's compliance and findings again and
    /// clears the debt; how many devices, `None` when nothing was due.
    pub fn resend_findings_if_due(&self) -> anyhow::Result<Option<usize>> {
        let Some(r) = self
            .inner
            .findings_resend
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Ok(None);
        };
        if !r.due() || !self.inner.store.uplink_tracking() {
            return Ok(None);
        }
        let n = self.queue_all_for_uplink()?;
        r.done()
            .context("clearing the findings-resend marker of the uplink")?;
        info!(
            devices = n,
            "central reads patch findings again: every device's findings queued once more"
        );
        Ok(Some(n))
    }

    /// Sends the patch state to the alert engine from now on.
    pub fn set_alert_sink(&self, sink: AlertSink) {
        *self
            .inner
            .alert_sink
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    /// Asks a device for a whole scan (through the sink) whenever a report
    /// cannot be applied to its stored scan.
    pub fn set_full_scan_sink(&self, sink: FullScanSink) {
        *self
            .inner
            .full_scan_sink
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    /// Wires scan commands: a device whose report cannot be applied gets
    /// one queued (on `rt`), and the API queues them through it.
    pub fn set_scan_requester(
        &self,
        requester: Arc<super::full_scan::FullScanRequester>,
        rt: tokio::runtime::Handle,
    ) {
        self.set_full_scan_sink(requester.clone().sink(rt));
        *self
            .inner
            .scan_requester
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(requester);
    }

    /// The scan command queue, when wired.
    pub fn scan_requester(&self) -> Option<Arc<super::full_scan::FullScanRequester>> {
        self.inner
            .scan_requester
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn request_full_scan(&self, dev: DeviceId) {
        let sink = self
            .inner
            .full_scan_sink
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(sink) = sink.as_ref() {
            sink(dev);
        }
    }

    /// Sends every device's patch values ([`super::alerts`]) to the sink.
    pub fn send_alert_samples(&self, now: u64) {
        let sink = self
            .inner
            .alert_sink
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(sink) = sink.as_ref() else { return };
        let v = self.view();
        let batch = v
            .assessments
            .iter()
            .map(|(d, a)| {
                (
                    *d,
                    super::alerts::device_values(a, v.reboot_since.get(d).copied(), now),
                )
            })
            .collect::<Vec<_>>();
        if !batch.is_empty() {
            sink(batch);
        }
    }

    /// Wakes the worker.
    pub fn wake(&self) {
        *self
            .inner
            .wake_flag
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = true;
        self.inner.wake.notify_all();
    }

    /// The current view (a snapshot).
    pub fn view(&self) -> Arc<View> {
        self.inner
            .view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn publish(&self, view: View) {
        *self.inner.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(view);
        self.publish_gauges();
    }

    fn publish_gauges(&self) {
        let v = self.view();
        let m = &self.inner.metrics.patches;
        m.devices.set(v.assessments.len() as i64);
        let advisories: u64 = v.catalog.sources().map(|s| s.info.stats.advisories).sum();
        m.catalog_advisories.set(advisories as i64);
    }

    fn assess(
        &self,
        scan: &Scan,
        catalog: &Catalog,
        previous: Option<&DeviceAssessment>,
        now: u64,
    ) -> DeviceAssessment {
        let t = Instant::now();
        let a = assess_device(scan, catalog, &self.inner.policy, previous, now);
        self.inner
            .metrics
            .patches
            .assessment_seconds
            .observe(t.elapsed().as_secs_f64());
        a
    }

    /// Applies the stored package reports, device by device, oldest first;
    /// the parts of a report are joined first (a report whose parts have
    /// not all arrived waits; one whose parts are broken — a part dropped
    /// by a full agent buffer — is discarded, counted, and the device waits
    /// for a full scan). Returns how many records were consumed.
    pub fn process_reports(&self, now: u64) -> anyhow::Result<usize> {
        let mut total = 0;
        let mut cursor: Vec<u8> = Vec::new();
        let view = self.view();
        let mut assessments = view.assessments.clone();
        let mut reboot_since = view.reboot_since.clone();
        let mut changed_any = false;
        let result = loop {
            let mut next = None;
            if let Err(e) = self
                .inner
                .store
                .scan_raw(PACKAGE_SCANS_IN, &cursor, None, |k, _| {
                    next = k
                        .get(..8)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(|b| DeviceId(u64::from_be_bytes(b)));
                    Ok(false)
                })
            {
                break Err(e.into());
            }
            let Some(dev) = next else { break Ok(()) };
            let upper = dev.0.checked_add(1).map(|n| n.to_be_bytes().to_vec());
            let mut entries: Vec<(Vec<u8>, u64, PackageScanRecord)> = Vec::new();
            if let Err(e) = self.inner.store.scan::<PackageScanRecord>(
                PACKAGE_SCANS_IN,
                &device_key(dev),
                upper.as_deref(),
                |k, v| {
                    let seq = k
                        .get(8..16)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_be_bytes)
                        .unwrap_or(0);
                    entries.push((k.to_vec(), seq, v));
                    true
                },
            ) {
                break Err(e.into());
            }
            let _g = self.inner.change.lock().unwrap_or_else(|p| p.into_inner());
            match self.process_device(
                dev,
                &entries,
                &view.catalog,
                &mut assessments,
                &mut reboot_since,
                now,
            ) {
                Ok(n) => {
                    total += n;
                    changed_any |= n > 0;
                }
                Err(e) => break Err(e),
            }
            match upper {
                Some(u) => cursor = u,
                None => break Ok(()),
            }
        };
        if changed_any {
            self.publish(View {
                catalog: view.catalog.clone(),
                assessments,
                reboot_since,
            });
        }
        result.map(|()| total)
    }

    /// Applies one device's complete reports (see [`Self::process_reports`]).
    fn process_device(
        &self,
        dev: DeviceId,
        entries: &[(Vec<u8>, u64, PackageScanRecord)],
        catalog: &Catalog,
        assessments: &mut BTreeMap<DeviceId, Arc<DeviceAssessment>>,
        reboot_since: &mut BTreeMap<DeviceId, u64>,
        now: u64,
    ) -> anyhow::Result<usize> {
        let mut consumed = 0;
        let mut i = 0;
        while i < entries.len() {
            let (_, seq, first) = &entries[i];
            let complete = match next_parts_group(&entries[i..], |(_, _, r)| {
                (r.part, r.parts, (r.format, r.full))
            }) {
                PartsGroup::Complete(n) => Some(n),
                // The rest of the report has not arrived yet.
                PartsGroup::Waiting => break,
                PartsGroup::Broken => None,
            };
            let mut ds: DeviceScan =
                super::store::get_scan(&self.inner.store, &device_key(dev))?.unwrap_or_default();
            let Some(parts) = complete else {
                // A part without its start, or a report with a part missing.
                self.inner.metrics.patches.rejected("incomplete");
                ds.needs_full = true;
                ds.last_seq = *seq;
                ds.received_at_ms = now;
                ds.last_error = Some(format!(
                    "package report part {} of {} (record {seq}) without the rest: a part was lost; waiting for a full scan",
                    first.part + 1,
                    first.parts
                ));
                let mut b = self.inner.store.batch();
                super::store::put_scan(&mut b, &device_key(dev), &ds)?;
                b.delete(PACKAGE_SCANS_IN, &entries[i].0)?;
                self.inner.store.write(b)?;
                self.request_full_scan(dev);
                consumed += 1;
                i += 1;
                continue;
            };
            let group = &entries[i..i + parts];
            let joined = PackageScanRecord {
                format: first.format,
                full: first.full,
                part: 0,
                parts: 1,
                payload: group
                    .iter()
                    .flat_map(|(_, _, r)| r.payload.iter().copied())
                    .collect(),
            };
            let last_seq = group.last().map_or(*seq, |(_, s, _)| *s);
            let misses_before = ds.base_misses;
            let changed = self.apply_report(&mut ds, &joined, last_seq, now);
            let mut b = self.inner.store.batch();
            if changed && let Some(scan) = &ds.scan {
                ds.reboot_since_ms = if scan.reboot.required {
                    Some(ds.reboot_since_ms.unwrap_or(scan.scanned_at_ms))
                } else {
                    None
                };
                match ds.reboot_since_ms {
                    Some(t) => reboot_since.insert(dev, t),
                    None => reboot_since.remove(&dev),
                };
                let prev = assessments.get(&dev).map(|a| a.as_ref());
                let a = self.assess(scan, catalog, prev, now);
                super::store::put_assessment(&mut b, &device_key(dev), &a)?;
                super::uplink::queue_if_changed(&self.inner.store, &mut b, dev, &a, prev)?;
                assessments.insert(dev, Arc::new(a));
            }
            super::store::put_scan(&mut b, &device_key(dev), &ds)?;
            for (k, _, _) in group {
                b.delete(PACKAGE_SCANS_IN, k)?;
            }
            self.inner.store.write(b)?;
            if ds.base_misses > misses_before {
                self.request_full_scan(dev);
            }
            consumed += parts;
            i += parts;
        }
        Ok(consumed)
    }

    /// Applies one report to a device's stored scan; true when the scan
    /// changed (or arrived).
    fn apply_report(
        &self,
        ds: &mut DeviceScan,
        rec: &PackageScanRecord,
        seq: u64,
        now: u64,
    ) -> bool {
        let m = &self.inner.metrics.patches;
        ds.last_seq = seq;
        ds.received_at_ms = now;
        if !REPORT_FORMATS.contains(&rec.format) {
            m.rejected("unknown_format");
            ds.needs_full = true;
            ds.last_error = Some(format!(
                "package report format {} is not known to this appliance (it reads 1 to {PACKAGE_REPORT_FORMAT}); upgrade the appliance",
                rec.format
            ));
            return false;
        }
        // Format 1 (agents before download sizes): the old shape, sizes
        // unknown.
        let decoded = if rec.format == 1 {
            codec::decode_compressed::<PackageReportV1>(&rec.payload, MAX_REPORT_PLAIN_BYTES)
                .map(PackageReport::from)
        } else {
            codec::decode_compressed::<PackageReport>(&rec.payload, MAX_REPORT_PLAIN_BYTES)
        };
        let report: PackageReport = match decoded {
            Ok(r) => r,
            Err(e) => {
                m.rejected("malformed");
                ds.needs_full = true;
                ds.last_error = Some(format!("malformed package report: {e}"));
                return false;
            }
        };
        match report {
            PackageReport::Full(scan) => {
                m.received("full");
                m.unparsable_versions_skipped
                    .inc_by(u64::from(scan.problems.total));
                let mut scan = *scan;
                scan.normalize();
                ds.scan = Some(scan);
                ds.full_reports += 1;
                ds.needs_full = false;
                ds.last_error = None;
                ds.deferred = None;
                true
            }
            PackageReport::Deferred(d) => {
                // The agent did not read a database an install was
                // changing: the stored scan and assessment stay.
                m.received("deferred");
                ds.deferred_reports += 1;
                ds.deferred = Some(format!(
                    "scan deferred: {} through {} attempts over {:.1} s; the last scan is kept, the next follows the install",
                    d.reason,
                    d.attempts,
                    d.waited_ms as f64 / 1000.0
                ));
                false
            }
            PackageReport::Delta(delta) => {
                m.received("delta");
                ds.delta_reports += 1;
                let Some(scan) = ds.scan.as_mut().filter(|_| !ds.needs_full) else {
                    m.delta_base_misses.inc();
                    ds.base_misses += 1;
                    ds.needs_full = true;
                    ds.last_error = Some(
                        "a delta arrived without a stored scan: waiting for a full scan".into(),
                    );
                    return false;
                };
                match scan.apply(&delta) {
                    Ok(()) => {
                        if let Some(p) = &delta.problems {
                            m.unparsable_versions_skipped.inc_by(u64::from(p.total));
                        }
                        ds.last_error = None;
                        ds.deferred = None;
                        true
                    }
                    Err(e) => {
                        m.delta_base_misses.inc();
                        ds.base_misses += 1;
                        ds.needs_full = true;
                        ds.last_error = Some(e.to_string());
                        false
                    }
                }
            }
        }
    }

    /// Imports a feed and puts it in service; the previous catalog stays
    /// in service when the feed is refused. Blocking (seconds for the
    /// whole tracker): call it from a blocking thread.
    pub fn import(
        &self,
        format: FeedFormat,
        name: Option<&str>,
        location: &str,
        body: &[u8],
    ) -> Result<ImportOutcome, ImportFailure> {
        let name = name.unwrap_or(format.as_str());
        if !valid_name(name) {
            return Err(ImportFailure::Invalid(format!(
                "source name {name:?}: use letters, digits, '-', '_' or '.' (at most 64)"
            )));
        }
        let now = now_ms();
        let started = Instant::now();
        let src = match import_feed(format, body, ImportOptions::new(name, location, now)) {
            Ok(s) => s,
            Err(e) => {
                self.inner.metrics.patches.import_failures.inc();
                warn!(source = name, error = %e, "advisory import refused; the previous catalog stays in service");
                return Err(ImportFailure::Feed(e));
            }
        };
        let import_ms = started.elapsed().as_millis() as u64;
        let info = src.info.clone();
        let _g = self.inner.change.lock().unwrap_or_else(|p| p.into_inner());
        // The feed file first (atomically), then its record: a crash in
        // between leaves the old record naming the new file, which is the
        // feed that was being put in service.
        let file = format!("{name}.json");
        let tmp = self.inner.dir.join(format!(".{file}.tmp"));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.inner.dir.join(&file))
        };
        write().map_err(|e| ImportFailure::Store(anyhow::anyhow!("writing the feed file: {e}")))?;
        self.inner
            .store
            .put(
                PATCH_SOURCES,
                name.as_bytes(),
                &SourceRecord {
                    info: info.clone(),
                    format,
                    file,
                    size_bytes: body.len() as u64,
                },
            )
            .map_err(|e| ImportFailure::Store(e.into()))?;
        let view = self.view();
        let catalog = Arc::new(view.catalog.with_source(src));
        let changes = catalog.changes_since(&view.catalog);
        let t = Instant::now();
        let (assessments, n) = self
            .reassess_all(&view, &catalog, &changes, now)
            .map_err(ImportFailure::Store)?;
        let reassess_ms = t.elapsed().as_millis() as u64;
        self.publish(View {
            catalog,
            assessments,
            reboot_since: view.reboot_since.clone(),
        });
        self.inner.metrics.patches.imports.inc();
        info!(
            source = name,
            advisories = info.stats.advisories,
            changed = changes.len(),
            devices = n,
            import_ms,
            reassess_ms,
            "advisories imported"
        );
        drop(_g);
        self.wake();
        Ok(ImportOutcome {
            source: name.to_string(),
            format,
            advisories: info.stats.advisories,
            vulns: info.stats.vulns,
            changed_packages: changes.len(),
            devices_reassessed: n,
            import_ms,
            reassess_ms,
        })
    }

    /// When the source `name` was last imported.
    pub fn imported_at(&self, name: &str) -> Option<u64> {
        self.view()
            .catalog
            .sources()
            .find(|s| s.info.name == name)
            .map(|s| s.info.imported_at_ms)
    }

    /// Counts an import that failed before the feed was read (download).
    pub fn note_import_failure(&self) {
        self.inner.metrics.patches.import_failures.inc();
    }

    /// Re-assesses the devices a catalog change touches (only the changed
    /// packages of each); returns the new map and how many changed.
    fn reassess_all(
        &self,
        view: &View,
        catalog: &Catalog,
        changes: &ChangeSet,
        now: u64,
    ) -> anyhow::Result<(BTreeMap<DeviceId, Arc<DeviceAssessment>>, usize)> {
        let mut out = view.assessments.clone();
        let mut n = 0;
        let mut batch = self.inner.store.batch();
        let mut scans: Vec<(DeviceId, Scan)> = Vec::new();
        super::store::scan_scans(&self.inner.store, |k, ds| {
            if let (Ok(b), Some(scan)) = (<[u8; 8]>::try_from(k), ds.scan) {
                scans.push((DeviceId(u64::from_be_bytes(b)), scan));
            }
        })?;
        for (dev, scan) in scans {
            let prev = view.assessments.get(&dev);
            let stale_status =
                prev.is_none_or(|p| p.status != outpost_patch::assess::AssessmentStatus::Assessed);
            if !stale_status && !changes.touches_scan(&scan) {
                continue;
            }
            let t = Instant::now();
            let a = match prev {
                Some(p) => reassess_device(p, &scan, catalog, changes, &self.inner.policy, now),
                None => assess_device(&scan, catalog, &self.inner.policy, None, now),
            };
            self.inner
                .metrics
                .patches
                .assessment_seconds
                .observe(t.elapsed().as_secs_f64());
            super::store::put_assessment(&mut batch, &device_key(dev), &a)?;
            super::uplink::queue_if_changed(
                &self.inner.store,
                &mut batch,
                dev,
                &a,
                prev.map(|p| p.as_ref()),
            )?;
            out.insert(dev, Arc::new(a));
            n += 1;
            if batch.len() >= 256 {
                let full = std::mem::replace(&mut batch, self.inner.store.batch());
                self.inner.store.write(full)?;
            }
        }
        self.inner.store.write(batch)?;
        Ok((out, n))
    }

    /// Writes today's fleet compliance (the day's last value wins).
    pub fn record_compliance(&self, now: u64) -> anyhow::Result<()> {
        let view = self.view();
        if view.assessments.is_empty() {
            return Ok(());
        }
        let day = now - now % DAY_MS;
        let summary = fleet_summary(view.assessments.values().map(|a| a.as_ref()));
        self.inner.store.put(
            PATCH_COMPLIANCE_DAILY,
            &day.to_be_bytes(),
            &DailyCompliance {
                day_start_ms: day,
                at_ms: now,
                summary,
            },
        )?;
        Ok(())
    }

    // ---- views ----

    pub fn advisories_status(&self, now: u64) -> anyhow::Result<AdvisoriesStatus> {
        let view = self.view();
        let mut sources = Vec::new();
        self.inner
            .store
            .scan::<SourceRecord>(PATCH_SOURCES, &[], None, |_, r| {
                let loaded = view.catalog.sources().any(|s| {
                    s.info.name == r.info.name && s.info.imported_at_ms == r.info.imported_at_ms
                });
                sources.push(SourceStatus {
                    name: r.info.name.clone(),
                    format: r.format,
                    location: r.info.location.clone(),
                    imported_at_ms: r.info.imported_at_ms,
                    age_ms: now.saturating_sub(r.info.imported_at_ms),
                    entries: r.info.stats.entries,
                    vulns: r.info.stats.vulns,
                    advisories: r.info.stats.advisories,
                    skipped: r.info.stats.skipped,
                    size_bytes: r.size_bytes,
                    loaded,
                });
                true
            })?;
        Ok(AdvisoriesStatus {
            advisories: view
                .catalog
                .sources()
                .map(|s| s.info.stats.advisories)
                .sum(),
            releases: view
                .catalog
                .releases()
                .iter()
                .map(|r| r.to_string())
                .collect(),
            sources,
        })
    }

    pub fn device(&self, dev: DeviceId) -> anyhow::Result<Option<DevicePatches>> {
        let ds: Option<DeviceScan> = super::store::get_scan(&self.inner.store, &device_key(dev))?;
        let Some(ds) = ds else {
            return Ok(None);
        };
        let a = self
            .view()
            .assessments
            .get(&dev)
            .map(|a| a.as_ref().clone());
        let scan = ds.scan.as_ref();
        Ok(Some(DevicePatches {
            device: dev,
            scanned_at_ms: scan.map(|s| s.scanned_at_ms),
            received_at_ms: ds.received_at_ms,
            packages: scan.map_or(0, |s| s.dpkg.len() + s.rpm.len()),
            upgrades: scan.map_or(0, |s| s.upgrades.len()),
            needs_full_scan: ds.needs_full,
            base_misses: ds.base_misses,
            last_error: ds.last_error.clone(),
            deferred: ds.deferred.clone(),
            deferred_reports: ds.deferred_reports,
            index_refreshed_at_ms: scan.and_then(|s| s.indexes.refreshed_at_ms),
            index_error: scan.and_then(|s| s.indexes.error.clone()),
            os: scan.and_then(|s| s.os.pretty_name.clone()),
            assessment: a,
        }))
    }

    /// The missing patches of every device (of `customer`, when given) as
    /// CSV, one line per (device, patch), most risky first per device.
    pub fn report_csv(&self, customer: Option<&str>) -> anyhow::Result<String> {
        fn field(s: &str) -> String {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        }
        let v = self.view();
        let mut out = String::from(
            "device,hostname,customer,release,compliance,source,installed,candidate,security,severity,cves,risk,reboot_expected,missing_since_ms,download_bytes\n",
        );
        for (dev, a) in &v.assessments {
            let rec = outpost_storage::registry::get(&self.inner.store, *dev)?;
            let (hostname, cust) = rec
                .as_ref()
                .map(|r| (r.hostname.clone(), r.customer.to_string()))
                .unwrap_or_default();
            if customer.is_some_and(|c| c != cust) {
                continue;
            }
            let mut patches: Vec<_> = a.patches.iter().collect();
            patches.sort_by(|x, y| y.risk.cmp(&x.risk).then(x.source.cmp(&y.source)));
            for p in patches {
                let cells = [
                    dev.to_string(),
                    hostname.clone(),
                    cust.clone(),
                    a.release
                        .as_ref()
                        .map(|r| r.to_string())
                        .unwrap_or_default(),
                    serde_json::to_value(a.compliance)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    p.source.to_string(),
                    p.installed.to_string(),
                    p.candidate
                        .as_ref()
                        .map(|c| c.to_string())
                        .unwrap_or_default(),
                    p.security.to_string(),
                    p.severity
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                    p.cves
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                    p.risk.to_string(),
                    p.reboot_expected.to_string(),
                    p.first_seen_ms.to_string(),
                    p.download_bytes.map(|n| n.to_string()).unwrap_or_default(),
                ];
                let line: Vec<String> = cells.iter().map(|c| field(c)).collect();
                out.push_str(&line.join(","));
                out.push('\n');
            }
        }
        Ok(out)
    }

    /// The compliance report of the site's devices (one customer's when
    /// given): what `outpost patches report --format json|pdf` prints.
    pub fn report_document(
        &self,
        customer: Option<&str>,
        now: u64,
    ) -> anyhow::Result<outpost_patch::report::ComplianceDocument> {
        use outpost_patch::assess::Compliance;
        use outpost_patch::report::{
            ComplianceDocument, MAX_REPORT_TOP, ReportCve, ReportDevice, ReportPatch,
            SeverityFigures,
        };
        let v = self.view();
        let mut chosen: Vec<&DeviceAssessment> = Vec::new();
        let mut devices = Vec::new();
        for (dev, a) in &v.assessments {
            let rec = outpost_storage::registry::get(&self.inner.store, *dev)?;
            let (hostname, cust) = rec
                .as_ref()
                .map(|r| (r.hostname.clone(), r.customer.to_string()))
                .unwrap_or_default();
            if customer.is_some_and(|c| c != cust) {
                continue;
            }
            chosen.push(a);
            let sp = &a.counts.security_patches;
            devices.push(ReportDevice {
                name: if hostname.is_empty() {
                    dev.to_string()
                } else {
                    hostname
                },
                site: String::new(),
                compliance: match a.compliance {
                    Compliance::Compliant => "compliant",
                    Compliance::NonCompliant => "non-compliant",
                    Compliance::UnsupportedRelease => "unsupported-release",
                    Compliance::NoCatalog => "no-catalog",
                }
                .to_string(),
                missing_patches: u64::from(a.counts.patches),
                security: SeverityFigures {
                    critical: u64::from(sp.critical),
                    high: u64::from(sp.high),
                    medium: u64::from(sp.medium),
                    low: u64::from(sp.low),
                },
                fixable_cves: u64::from(a.counts.fixable.total() - a.counts.fixable.unimportant),
                open_cves: u64::from(a.counts.open.total() - a.counts.open.unimportant),
                risk: a.risk,
                reboot_required: a.reboot_required,
                cves: device_cve_ids(a),
            });
        }
        let fleet = fleet_summary(chosen.iter().copied());
        let mut patches = patch_list(chosen.iter().copied());
        patches.sort_by(|a, b| {
            (
                std::cmp::Reverse(a.severity),
                std::cmp::Reverse(a.devices),
                &a.source,
            )
                .cmp(&(
                    std::cmp::Reverse(b.severity),
                    std::cmp::Reverse(b.devices),
                    &b.source,
                ))
        });
        patches.truncate(MAX_REPORT_TOP);
        let mut cves = cve_list(chosen.iter().copied());
        cves.truncate(MAX_REPORT_TOP);
        let sp = &fleet.security_patches;
        let mut doc = ComplianceDocument {
            customer: customer.map(str::to_string),
            source: self.site_name(),
            generated_ms: now,
            devices_total: fleet.devices,
            compliant: fleet.compliant,
            non_compliant: fleet.non_compliant,
            unsupported_release: fleet.unsupported_release,
            not_assessed: fleet.no_catalog,
            compliance_percent: fleet.compliance_percent,
            missing_patches: devices.iter().map(|d| d.missing_patches).sum(),
            security_patches: SeverityFigures {
                critical: u64::from(sp.critical),
                high: u64::from(sp.high),
                medium: u64::from(sp.medium),
                low: u64::from(sp.low),
            },
            reboot_required: fleet.reboot_required,
            devices,
            devices_left_out: 0,
            top_patches: patches
                .into_iter()
                .map(|p| ReportPatch {
                    candidate: p
                        .candidates
                        .iter()
                        .filter(|c| c.as_str() != "?")
                        .max_by(|a, b| {
                            outpost_patch::version::dpkg::compare_versions(a, b)
                                .unwrap_or(std::cmp::Ordering::Equal)
                        })
                        .cloned()
                        .unwrap_or_default(),
                    severity: p
                        .severity
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                    security: p.security,
                    devices: p.devices,
                    cves: p.cves,
                    source: p.source,
                })
                .collect(),
            top_cves: cves
                .into_iter()
                .map(|c| ReportCve {
                    id: c.id.to_string(),
                    severity: c.severity.as_str().to_string(),
                    devices: c.devices,
                    fixable: c.fixable_now,
                    fix_not_in_repositories: c.fix_not_in_repositories,
                    open: c.open,
                })
                .collect(),
        };
        doc.finish_devices();
        Ok(doc)
    }

    /// Every missing patch, most risky and widespread first.
    pub fn patches(&self) -> Vec<PatchSummary> {
        let v = self.view();
        let mut list = patch_list(v.assessments.values().map(|a| a.as_ref()));
        list.sort_by(|a, b| {
            b.max_risk
                .cmp(&a.max_risk)
                .then(b.devices.cmp(&a.devices))
                .then(a.source.cmp(&b.source))
        });
        list
    }

    pub fn cve(&self, id: &str) -> CveView<DeviceId> {
        let v = self.view();
        cve_view(id, v.assessments.iter().map(|(k, a)| (k, a.as_ref())))
    }

    /// The site's summary (every customer).
    pub fn summary(&self, now: u64) -> anyhow::Result<Summary> {
        self.summary_for(now, None)
    }

    /// The summary of one customer's devices (`customer`), or of all with
    /// a per-customer breakdown (`Summary::customers`, like central's).
    /// The daily history is the site's whole fleet's.
    pub fn summary_for(&self, now: u64, customer: Option<&str>) -> anyhow::Result<Summary> {
        let v = self.view();
        let mut mine: Vec<(DeviceId, &DeviceAssessment, String)> =
            Vec::with_capacity(v.assessments.len());
        for (d, a) in &v.assessments {
            let cust = outpost_storage::registry::get(&self.inner.store, *d)?
                .map(|r| r.customer.to_string())
                .unwrap_or_default();
            if customer.is_some_and(|c| c != cust) {
                continue;
            }
            mine.push((*d, a.as_ref(), cust));
        }
        let fleet = fleet_summary(mine.iter().map(|(_, a, _)| *a));
        let mut top_cves = cve_list(mine.iter().map(|(_, a, _)| *a));
        top_cves.truncate(50);
        let devices = mine
            .iter()
            .map(|(d, a, cust)| DeviceLine {
                device: *d,
                release: a.release.as_ref().map(|r| r.to_string()),
                compliance: a.compliance,
                risk: a.risk,
                patches: a.counts.patches,
                fixable: a.counts.fixable.total(),
                open: a.counts.open.total(),
                reboot_required: a.reboot_required,
                scanned_at_ms: a.scanned_at_ms,
                download: a.download_size(),
                customer: cust.clone(),
            })
            .collect::<Vec<DeviceLine>>();
        let mut download = DownloadSize::default();
        for d in &devices {
            download.merge(&d.download);
        }
        let mut by_customer: BTreeMap<&str, Vec<&DeviceAssessment>> = BTreeMap::new();
        for (_, a, cust) in &mine {
            by_customer.entry(cust.as_str()).or_default().push(a);
        }
        let customers = by_customer
            .into_iter()
            .map(|(c, list)| {
                let mut download = DownloadSize::default();
                for a in &list {
                    download.merge(&a.download_size());
                }
                CustomerLine {
                    customer: c.to_string(),
                    summary: fleet_summary(list.iter().copied()),
                    download,
                }
            })
            .collect();
        let from = (now - now % DAY_MS).saturating_sub(89 * DAY_MS);
        let mut history = Vec::new();
        self.inner.store.scan::<DailyCompliance>(
            PATCH_COMPLIANCE_DAILY,
            &from.to_be_bytes(),
            None,
            |_, d| {
                history.push(d);
                true
            },
        )?;
        Ok(Summary {
            fleet,
            download,
            customers,
            customer: customer.map(str::to_string),
            devices,
            top_cves,
            history,
        })
    }
}

#[cfg(test)]
#[path = "tests.rs"]
pub(crate) mod tests;

/// The CVE ids a device is exposed to, as the report lists them: fixable
/// by an offered upgrade first, then fixed in the release but not in the
/// device's repositories, then without a fix yet (central's order); each
/// id once, at its best state.
fn device_cve_ids(a: &DeviceAssessment) -> Vec<String> {
    let mut ids: Vec<(&str, u8)> = a
        .fixable()
        .map(|(_, f)| (&*f.id, if f.fix_available { 0 } else { 1 }))
        .chain(a.open().map(|(_, f)| (&*f.id, 2)))
        .collect();
    ids.sort_unstable();
    ids.dedup_by_key(|(id, _)| *id);
    ids.sort_unstable_by_key(|(id, rank)| (*rank, *id));
    ids.into_iter().map(|(id, _)| id.to_string()).collect()
}
