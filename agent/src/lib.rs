//! The Outpost endpoint agent.
//!
//! Enrolls against a site appliance ([`enroll`]), keeps its identity in a
//! state directory ([`identity`]), collects host metrics and inventory
//! ([`collect`]), buffers every record on disk until the appliance
//! acknowledges it ([`buffer`]) and streams records over one long-lived QUIC
//! session with reconnect backoff ([`session`]), hands command and file
//! events to remote management ([`remote`]), scans installed packages
//! ([`scan`]), installs and rolls back patches ([`install`]), and while running keeps its
//! live state in `status.json` for `outpost-agent status` ([`status`]).

pub mod backoff;
pub mod buffer;
pub mod collect;
pub mod commands;
pub mod config;
pub mod enroll;
pub mod files;
pub mod identity;
pub mod install;
pub mod net;
pub mod remote;
pub mod scan;
pub mod session;
pub mod status;

/// Opens a sled database again right after the test dropped it. sled's
/// flusher thread holds the database (and its file lock) for up to one
/// flush interval after the last handle is dropped, so a reopen in the same
/// process can briefly fail on the lock; a restarted agent is a new process
/// and never does. Retries for up to 10 s, then panics with the error.
#[cfg(test)]
pub(crate) fn reopen_sled<T, E: std::fmt::Display>(mut open: impl FnMut() -> Result<T, E>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open() {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("reopening a sled database: {e}"),
        }
    }
}
