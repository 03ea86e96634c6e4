//! What the installer keeps on disk between steps and across restarts,
//! under its state directory (one JSON file per command, written to a
//! temporary name, fsynced and renamed):
//!
//! - `inflight/ID.json`: an install or rollback is between its first step
//!   and its final status. Found at start, it is reported `failed`
//!   ("interrupted") with the `dpkg --audit` findings, then removed.
//! - `reboot/ID.json`: an install waits for its reboot, with the boot id
//!   before it and the versions expected after it.
//! - `records/ID.json`: what an install changed and which `.deb` files it
//!   kept (what a rollback of that command undoes).
//! - `debs/`: the kept `.deb` files.
//!
//! Owns these files only; runs nothing.

use std::path::{Path, PathBuf};

use outpost_patch::install::wire::DeviceStatus;
use outpost_patch::install::{BinaryTarget, KeptDeb, PackageChange};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// An install or rollback in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub command: String,
    pub deployment: String,
    pub attempt: u32,
    pub rollback: bool,
}

/// An install waiting for its reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReboot {
    /// The `reboot_pending` status sent (its changes, kept debs…).
    pub status: DeviceStatus,
    /// The boot id before the reboot.
    pub boot_id: String,
    /// Versions that must be installed after the reboot.
    pub expected: Vec<BinaryTarget>,
}

/// What an install changed (for its rollback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    pub changes: Vec<PackageChange>,
    pub kept: Vec<KeptDeb>,
    /// The deployment and attempt the install was (empty and 0 in records
    /// written before they were kept): a rollback undoes every attempt of
    /// its deployment.
    #[serde(default)]
    pub deployment: String,
    #[serde(default)]
    pub attempt: u32,
}

/// The installer's directory.
#[derive(Debug, Clone)]
pub struct StateDir(pub PathBuf);

/// A command id as a file name (ids are hex; anything else is escaped).
fn file_name(command: &str) -> String {
    command
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        + ".json"
}

impl StateDir {
    pub fn debs(&self) -> PathBuf {
        self.0.join("debs")
    }

    fn path(&self, kind: &str, command: &str) -> PathBuf {
        self.0.join(kind).join(file_name(command))
    }

    fn write<T: Serialize>(&self, kind: &str, command: &str, value: &T) -> std::io::Result<()> {
        let dir = self.0.join(kind);
        std::fs::create_dir_all(&dir)?;
        let path = self.path(kind, command);
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn read<T: DeserializeOwned>(&self, kind: &str, command: &str) -> Option<T> {
        let bytes = std::fs::read(self.path(kind, command)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn remove(&self, kind: &str, command: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(kind, command)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every readable file of `kind` (unreadable ones are skipped: a
    /// half-written temporary never has the `.json` name).
    fn all<T: DeserializeOwned>(&self, kind: &str) -> Vec<(PathBuf, Option<T>)> {
        let Ok(rd) = std::fs::read_dir(self.0.join(kind)) else {
            return Vec::new();
        };
        rd.flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| {
                let v = std::fs::read(&p)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                (p, v)
            })
            .collect()
    }

    pub fn begin(&self, f: &InFlight) -> std::io::Result<()> {
        self.write("inflight", &f.command, f)
    }

    pub fn end(&self, command: &str) -> std::io::Result<()> {
        self.remove("inflight", command)
    }

    /// In-flight markers left by a previous run (unreadable ones are
    /// removed and logged by the caller through `Err`).
    pub fn in_flight(&self) -> Vec<Result<InFlight, PathBuf>> {
        self.all::<InFlight>("inflight")
            .into_iter()
            .map(|(p, v)| v.ok_or(p))
            .collect()
    }

    pub fn put_reboot(&self, r: &PendingReboot) -> std::io::Result<()> {
        self.write("reboot", &r.status.command, r)
    }

    pub fn reboots(&self) -> Vec<PendingReboot> {
        self.all::<PendingReboot>("reboot")
            .into_iter()
            .filter_map(|(_, v)| v)
            .collect()
    }

    pub fn remove_reboot(&self, command: &str) -> std::io::Result<()> {
        self.remove("reboot", command)
    }

    pub fn put_record(&self, command: &str, r: &InstallRecord) -> std::io::Result<()> {
        self.write("records", command, r)
    }

    pub fn record(&self, command: &str) -> Option<InstallRecord> {
        self.read("records", command)
    }

    /// The records of every install of `deployment`, by attempt.
    pub fn records_of(&self, deployment: &str) -> Vec<InstallRecord> {
        let mut out: Vec<InstallRecord> = self
            .all::<InstallRecord>("records")
            .into_iter()
            .filter_map(|(_, v)| v)
            .filter(|r| !deployment.is_empty() && r.deployment == deployment)
            .collect();
        out.sort_by_key(|r| r.attempt);
        out
    }

    /// Whether `path` lies inside the kept-debs directory (a rollback
    /// installs a `.deb` named by the appliance only from there).
    pub fn is_kept_path(&self, path: &Path) -> bool {
        let debs = self.debs();
        path.is_absolute()
            && path.starts_with(&debs)
            && !path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
    }
}
