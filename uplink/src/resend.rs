//! Patch findings lost to an older central, and their resend once central
//! reads them (appliance side).
//!
//! When the sender re-encodes a stored batch that carried patch findings
//! for a central that does not read them (batch format < 5), those
//! findings never reach central, and the appliance queues a device's
//! findings again only when its assessment changes. This module records
//! the loss (a marker file in the uplink directory, so a restart keeps it)
//! and the newest batch format central reads (from each `Welcome`); the
//! patch service asks [`FindingsResend::due`] and, once central reads
//! findings, re-queues every device's current findings and calls
//! [`FindingsResend::done`]: once per loss.
//!
//! Owns the marker file only; queueing is the patch service's.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};

/// The first batch format that carries patch findings.
pub const FINDINGS_BATCH_FORMAT: u16 = 5;

/// Whether findings are owed to central (see the module docs).
#[derive(Debug)]
pub struct FindingsResend {
    /// `DATA/uplink/findings-resend`: present while findings are owed.
    path: PathBuf,
    /// The marker, as the file says.
    pending: AtomicBool,
    /// Newest batch format the central of the current (or last) link
    /// reads; 0 before any `Welcome`.
    central_format: AtomicU16,
}

impl FindingsResend {
    /// Reads the marker in `uplink_dir` (absent: nothing owed).
    pub fn open(uplink_dir: &std::path::Path) -> FindingsResend {
        let path = uplink_dir.join("findings-resend");
        FindingsResend {
            pending: AtomicBool::new(path.exists()),
            path,
            central_format: AtomicU16::new(0),
        }
    }

    /// A batch went to central without its findings.
    pub fn note_dropped(&self) -> std::io::Result<()> {
        if self.pending.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(
            &self.path,
            b"patch findings were left out of a batch for an older central\n",
        )?;
        self.pending.store(true, Ordering::Release);
        Ok(())
    }

    /// Central said (in its `Welcome`) it reads batch formats up to
    /// `max_format`.
    pub fn connected(&self, max_format: u16) {
        self.central_format.store(max_format, Ordering::Release);
    }

    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Findings are owed and the current central reads them.
    pub fn due(&self) -> bool {
        resend_due(self.pending(), self.central_format.load(Ordering::Acquire))
    }

    /// Every device's findings were queued again: nothing owed.
    pub fn done(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.pending.store(false, Ordering::Release);
        Ok(())
    }
}

/// The decision: findings owed (`pending`) and a central that reads
/// `central_format` takes them.
pub fn resend_due(pending: bool, central_format: u16) -> bool {
    pending && central_format >= FINDINGS_BATCH_FORMAT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_findings_are_owed_across_restarts_until_a_central_that_reads_them_gets_them_once() {
        let dir = tempfile::tempdir().unwrap();
        let r = FindingsResend::open(dir.path());
        assert!(!r.pending());
        r.connected(3);
        r.note_dropped().unwrap();
        assert!(
            r.pending() && !r.due(),
            "central of format 3 reads no findings"
        );
        // A restart keeps the marker.
        let r = FindingsResend::open(dir.path());
        assert!(r.pending());
        assert!(!r.due(), "no Welcome yet");
        r.connected(5);
        assert!(r.due());
        r.done().unwrap();
        assert!(!r.due() && !r.pending(), "once");
        assert!(!FindingsResend::open(dir.path()).pending());
        assert!(!resend_due(false, 6) && resend_due(true, 6) && !resend_due(true, 4));
    }
}
