//! Scans on request: the handle the command executor uses for the
//! built-in action `ScanPackages` (`outpost_proto::command`), and the
//! receiving end the scanner's loop ([`super::task`]) serves.
//!
//! Owns only the channel and the "why scans are off" reason; it must not
//! touch the command ledger (the executor's) or the records buffer (the
//! scanner's).

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

/// Reason given when `package_scan = false` (the default state of a
/// handle no scanner has attached to).
pub const SCANS_OFF: &str =
    "package scans are off on this device (package_scan = false in agent.toml)";

/// What a requested scan produced once its record is buffered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanDone {
    /// Sequence number of the report's last record.
    pub seq: u64,
    pub full: bool,
    pub packages: usize,
    pub upgrades: usize,
    /// Size of the compressed report.
    pub bytes: usize,
}

impl ScanDone {
    /// The command's output line.
    pub fn line(&self) -> String {
        format!(
            "package scan buffered: {} report, packages={} upgrades={} bytes={} seq={}\n",
            if self.full { "full" } else { "delta" },
            self.packages,
            self.upgrades,
            self.bytes,
            self.seq
        )
    }
}

/// One request: scan now (whole when `full`), answer when buffered.
#[derive(Debug)]
pub struct ScanRequest {
    pub full: bool,
    pub reply: oneshot::Sender<Result<ScanDone, String>>,
}

#[derive(Debug)]
struct State {
    tx: Option<mpsc::UnboundedSender<ScanRequest>>,
    off_reason: String,
}

/// The handle (cheap to clone): the executor asks, the scanner attaches.
#[derive(Debug, Clone)]
pub struct ScanRequests {
    state: Arc<Mutex<State>>,
}

impl Default for ScanRequests {
    fn default() -> Self {
        ScanRequests::new()
    }
}

impl ScanRequests {
    /// A handle no scanner serves yet: requests are refused with
    /// [`SCANS_OFF`].
    pub fn new() -> ScanRequests {
        ScanRequests {
            state: Arc::new(Mutex::new(State {
                tx: None,
                off_reason: SCANS_OFF.into(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The scanner starts serving requests.
    pub fn attach(&self) -> mpsc::UnboundedReceiver<ScanRequest> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().tx = Some(tx);
        rx
    }

    /// No scanner will serve requests, for this reason.
    pub fn set_off(&self, reason: impl Into<String>) {
        let mut s = self.lock();
        s.tx = None;
        s.off_reason = reason.into();
    }

    /// Whether a request would be served now (`Err`: the reason not).
    pub fn available(&self) -> Result<(), String> {
        let s = self.lock();
        match &s.tx {
            Some(tx) if !tx.is_closed() => Ok(()),
            Some(_) => Err("the package scanner has stopped".into()),
            None => Err(s.off_reason.clone()),
        }
    }

    /// Asks for a scan and waits until its record is buffered.
    pub async fn scan(&self, full: bool) -> Result<ScanDone, String> {
        let (reply, rx) = oneshot::channel();
        {
            let s = self.lock();
            let Some(tx) = &s.tx else {
                return Err(s.off_reason.clone());
            };
            tx.send(ScanRequest { full, reply })
                .map_err(|_| "the package scanner has stopped".to_string())?;
        }
        rx.await
            .unwrap_or_else(|_| Err("the package scanner stopped before the scan ended".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_handle_without_a_scanner_refuses_with_the_config_reason() {
        let h = ScanRequests::new();
        assert_eq!(h.available(), Err(SCANS_OFF.to_string()));
        assert_eq!(h.scan(true).await, Err(SCANS_OFF.to_string()));
        h.set_off("no package manager found");
        assert_eq!(h.scan(false).await, Err("no package manager found".into()));
    }

    #[tokio::test]
    async fn an_attached_scanner_answers_and_a_stopped_one_is_reported() {
        let h = ScanRequests::new();
        let mut rx = h.attach();
        assert_eq!(h.available(), Ok(()));
        let asker = tokio::spawn({
            let h = h.clone();
            async move { h.scan(true).await }
        });
        let req = rx.recv().await.unwrap();
        assert!(req.full);
        let done = ScanDone {
            seq: 7,
            full: true,
            packages: 3,
            upgrades: 1,
            bytes: 99,
        };
        req.reply.send(Ok(done.clone())).unwrap();
        assert_eq!(asker.await.unwrap(), Ok(done));
        drop(rx);
        assert!(h.available().is_err());
        assert!(h.scan(true).await.is_err());
    }
}
