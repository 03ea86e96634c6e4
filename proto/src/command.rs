//! What a remote command asks for: [`CommandSpec`], the format of the
//! opaque `spec` bytes of [`crate::messages::Command`] that the device
//! session carries without reading.
//!
//! This module owns the spec's shape, its defaults and its one encoding
//! ([`CommandSpec::encode`] / [`CommandSpec::decode`], through
//! [`crate::codec`]). It does not own command state (the appliance's
//! `commands` subsystem) or execution (the agent's executor).
//!
//! Compatibility: the encoding starts with [`SPEC_FORMAT`]; an agent that
//! reads a format it does not know refuses the command with a reason
//! instead of guessing. New kinds, interpreters and actions are appended
//! to their enums (bincode numbers variants by position).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};

/// Version of the spec's encoding (the first field).
pub const SPEC_FORMAT: u16 = 1;

/// Default time a command may run before the agent kills it: 5 minutes.
pub const DEFAULT_TIMEOUT_MS: u64 = 5 * 60 * 1000;

/// Default time a command waits for an offline device before it expires:
/// 24 hours.
pub const DEFAULT_EXPIRY_MS: u64 = 24 * 60 * 60 * 1000;

/// Longest timeout a command may ask for: 24 hours.
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

/// Longest expiry a command may ask for: 30 days.
pub const MAX_EXPIRY_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Largest encoded spec: well under a frame, so a command always fits.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

/// How the agent's output of a scheduled reboot's command begins the line
/// answering a cancel that came once the reboot was due (the reboot runs;
/// the appliance stops asking and records it).
pub const REBOOT_CANCEL_TOO_LATE: &str = "too late to cancel";

/// The program that runs a command line or a script body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Interpreter {
    #[default]
    Sh,
    Bash,
    Python3,
    /// Reserved for Windows agents; Linux agents refuse it.
    Powershell,
}

impl Interpreter {
    pub fn as_str(self) -> &'static str {
        match self {
            Interpreter::Sh => "sh",
            Interpreter::Bash => "bash",
            Interpreter::Python3 => "python3",
            Interpreter::Powershell => "powershell",
        }
    }
}

impl fmt::Display for Interpreter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Interpreter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sh" => Ok(Interpreter::Sh),
            "bash" => Ok(Interpreter::Bash),
            "python3" => Ok(Interpreter::Python3),
            "powershell" => Ok(Interpreter::Powershell),
            other => Err(format!(
                "unknown interpreter {other:?}: expected sh, bash, python3 or powershell"
            )),
        }
    }
}

/// A built-in action: the agent knows how to do it, no script needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuiltinAction {
    /// `systemctl restart UNIT`, then report the unit's state.
    RestartService { unit: String },
    /// Reboot the host after `delay_ms`.
    Reboot { delay_ms: u64 },
    /// File push (appliance → device): the agent receives the transfer's
    /// bytes on the file flow, writes them to a temporary file beside
    /// `path`, checks `size_bytes` and `sha256`, sets `mode`/`owner`, and
    /// renames it over `path` (see [`crate::transfer`]).
    PushFile {
        transfer: crate::ids::TransferId,
        path: String,
        size_bytes: u64,
        /// Lowercase hex SHA-256 of the content.
        sha256: String,
        #[serde(default)]
        mode: Option<u32>,
        #[serde(default)]
        owner: Option<String>,
    },
    /// File pull (device → appliance): the agent streams `path` on the
    /// file flow after a header announcing its size and SHA-256 (see
    /// [`crate::transfer::PullHeader`]); it refuses a file over
    /// `max_bytes` before sending anything.
    PullFile {
        transfer: crate::ids::TransferId,
        path: String,
        max_bytes: u64,
    },
    /// Package scan now: the agent's package scanner scans at once (the
    /// whole inventory when `full`, else a delta against its last
    /// report) and the command completes when the scan record is
    /// buffered for the appliance. Refused when the agent's
    /// `package_scan` is off.
    ScanPackages { full: bool },
    /// One device's part of a patch deployment (issue 15): install exact
    /// package versions. `request` is
    /// `outpost_patch::install::wire::InstallRequest` encoded with
    /// [`crate::codec::encode_compressed`]; `format` names that encoding
    /// (`outpost_patch::install::wire::REQUEST_FORMAT`), so an agent that
    /// does not know it refuses the command instead of guessing. Progress
    /// travels up as `PatchStatus` records; the command's output is the
    /// apt/dpkg log.
    InstallPatches {
        format: u16,
        #[serde(with = "crate::messages::raw_bytes")]
        request: Vec<u8>,
    },
    /// Undo an install of a deployment on one device: `request` is
    /// `outpost_patch::install::wire::RollbackRequest`, encoded as for
    /// [`BuiltinAction::InstallPatches`].
    RollbackPatches {
        format: u16,
        #[serde(with = "crate::messages::raw_bytes")]
        request: Vec<u8>,
    },
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// A command line run by the interpreter (`sh -c LINE`), with the
    /// spec's `args` as positional parameters (`$1`...).
    Shell {
        line: String,
    },
    /// A script of the library, in the version the run was queued with
    /// (its body travels with it: an edit never changes a queued run).
    Script {
        name: String,
        version: u32,
        body: String,
    },
    Builtin(BuiltinAction),
}

/// A remote command as the technician asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    pub kind: CommandKind,
    pub interpreter: Interpreter,
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables (name, value).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory (the agent's default when absent: `/`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// User to run as (the agent's own user when absent).
    #[serde(default)]
    pub run_as: Option<String>,
    pub timeout_ms: u64,
    /// How long the command may wait for an offline device.
    pub expiry_ms: u64,
    /// Who asked (user name or token label), for the audit log.
    pub requested_by: String,
}

/// A remote file path must be absolute, free of NUL and of `..`.
fn file_path(p: &str) -> Result<(), SpecError> {
    if p.contains('\0') {
        return Err(SpecError::Nul { what: "the path" });
    }
    if !p.starts_with('/') || p.split('/').any(|c| c == "..") || p.ends_with('/') {
        return Err(SpecError::Malformed(format!(
            "path {p:?} must be an absolute file path without `..`"
        )));
    }
    Ok(())
}

/// Why a spec is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("the command line is empty")]
    EmptyCommand,
    #[error("timeout {0} ms is out of range (1 ms to 24 h)")]
    Timeout(u64),
    #[error("expiry {0} ms is out of range (1 ms to 30 days)")]
    Expiry(u64),
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("environment variable name {0:?} is not valid")]
    EnvName(String),
    #[error("the encoded command is {len} bytes; the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("unknown command spec format {0} (this build reads {SPEC_FORMAT})")]
    Format(u16),
    #[error("malformed command spec: {0}")]
    Malformed(String),
}

impl CommandSpec {
    /// A shell command line with the defaults (sh, 5 min timeout, 24 h
    /// expiry).
    pub fn shell(line: impl Into<String>, requested_by: impl Into<String>) -> CommandSpec {
        CommandSpec {
            kind: CommandKind::Shell { line: line.into() },
            interpreter: Interpreter::Sh,
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            run_as: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            expiry_ms: DEFAULT_EXPIRY_MS,
            requested_by: requested_by.into(),
        }
    }

    /// Checks the bounds and shapes a sender must respect (the appliance
    /// before queueing, the agent again before running).
    pub fn validate(&self) -> Result<(), SpecError> {
        fn no_nul(s: &str, what: &'static str) -> Result<(), SpecError> {
            if s.contains('\0') {
                Err(SpecError::Nul { what })
            } else {
                Ok(())
            }
        }
        match &self.kind {
            CommandKind::Shell { line } => {
                if line.trim().is_empty() {
                    return Err(SpecError::EmptyCommand);
                }
                no_nul(line, "the command line")?;
            }
            CommandKind::Script { body, .. } => no_nul(body, "the script body")?,
            CommandKind::Builtin(BuiltinAction::RestartService { unit }) => {
                if unit.is_empty() {
                    return Err(SpecError::EmptyCommand);
                }
                no_nul(unit, "the unit name")?
            }
            CommandKind::Builtin(BuiltinAction::Reboot { .. }) => {}
            CommandKind::Builtin(BuiltinAction::PushFile {
                path,
                sha256,
                mode,
                owner,
                ..
            }) => {
                file_path(path)?;
                if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(SpecError::Malformed(format!(
                        "sha256 {sha256:?} is not 64 hex digits"
                    )));
                }
                if mode.is_some_and(|m| m > 0o7777) {
                    return Err(SpecError::Malformed(format!(
                        "mode {:o} is not a file mode (at most 7777 octal)",
                        mode.unwrap_or(0)
                    )));
                }
                if let Some(o) = owner {
                    if o.is_empty() {
                        return Err(SpecError::Malformed("the owner is empty".into()));
                    }
                    no_nul(o, "the owner")?;
                }
            }
            CommandKind::Builtin(BuiltinAction::PullFile { path, .. }) => file_path(path)?,
            CommandKind::Builtin(BuiltinAction::ScanPackages { .. }) => {}
            CommandKind::Builtin(
                BuiltinAction::InstallPatches { request, .. }
                | BuiltinAction::RollbackPatches { request, .. },
            ) => {
                if request.is_empty() {
                    return Err(SpecError::Malformed("the patch request is empty".into()));
                }
            }
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(SpecError::Timeout(self.timeout_ms));
        }
        if self.expiry_ms == 0 || self.expiry_ms > MAX_EXPIRY_MS {
            return Err(SpecError::Expiry(self.expiry_ms));
        }
        for a in &self.args {
            no_nul(a, "an argument")?;
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(SpecError::EnvName(k.clone()));
            }
            no_nul(v, "an environment value")?;
        }
        if let Some(c) = &self.cwd {
            no_nul(c, "the working directory")?;
        }
        if let Some(u) = &self.run_as {
            no_nul(u, "the run-as user")?;
        }
        Ok(())
    }

    /// The spec as the session's opaque `spec` bytes: the format number,
    /// then the spec, through the one codec.
    pub fn encode(&self) -> Result<Vec<u8>, SpecError> {
        let bytes = codec::encode(&(SPEC_FORMAT, self))
            .map_err(|e: CodecError| SpecError::Malformed(e.to_string()))?;
        if bytes.len() > MAX_SPEC_BYTES {
            return Err(SpecError::TooLarge {
                len: bytes.len(),
                max: MAX_SPEC_BYTES,
            });
        }
        Ok(bytes)
    }

    /// Reads `spec` bytes (bounded: never more than [`MAX_SPEC_BYTES`]).
    pub fn decode(bytes: &[u8]) -> Result<CommandSpec, SpecError> {
        if bytes.len() > MAX_SPEC_BYTES {
            return Err(SpecError::TooLarge {
                len: bytes.len(),
                max: MAX_SPEC_BYTES,
            });
        }
        let (format, used): (u16, usize) =
            codec::decode_prefix(bytes).map_err(|e| SpecError::Malformed(e.to_string()))?;
        if format != SPEC_FORMAT {
            return Err(SpecError::Format(format));
        }
        let spec: CommandSpec =
            codec::decode(&bytes[used..]).map_err(|e| SpecError::Malformed(e.to_string()))?;
        Ok(spec)
    }

    /// A one-line description for lists and the audit log.
    pub fn summary(&self) -> String {
        match &self.kind {
            CommandKind::Shell { line } => {
                if self.args.is_empty() {
                    line.clone()
                } else {
                    format!("{line} {}", self.args.join(" "))
                }
            }
            CommandKind::Script { name, version, .. } => format!("script {name} v{version}"),
            CommandKind::Builtin(BuiltinAction::RestartService { unit }) => {
                format!("restart-service {unit}")
            }
            CommandKind::Builtin(BuiltinAction::Reboot { delay_ms }) => {
                format!("reboot (delay {delay_ms} ms)")
            }
            CommandKind::Builtin(BuiltinAction::PushFile {
                path, size_bytes, ..
            }) => format!("push-file {path} ({size_bytes} bytes)"),
            CommandKind::Builtin(BuiltinAction::PullFile { path, .. }) => {
                format!("pull-file {path}")
            }
            CommandKind::Builtin(BuiltinAction::ScanPackages { full }) => {
                if *full {
                    "scan-packages (full)".to_string()
                } else {
                    "scan-packages".to_string()
                }
            }
            CommandKind::Builtin(BuiltinAction::InstallPatches { .. }) => {
                "install-patches".to_string()
            }
            CommandKind::Builtin(BuiltinAction::RollbackPatches { .. }) => {
                "rollback-patches".to_string()
            }
        }
    }
}

/// Joins words into one POSIX shell command line, quoting where needed
/// (`outpost commands run -- CMD ARGS...`). A single word is taken as a
/// command line as it is (`-- 'echo a; exit 3'`).
pub fn shell_join(words: &[String]) -> String {
    if words.len() == 1 {
        return words[0].clone();
    }
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes one word for a POSIX shell (single quotes when needed).
pub fn shell_quote(w: &str) -> String {
    let plain = !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> CommandSpec {
        CommandSpec {
            kind: CommandKind::Script {
                name: "cleanup".into(),
                version: 3,
                body: "echo $1".into(),
            },
            interpreter: Interpreter::Bash,
            args: vec!["a b".into()],
            env: vec![("K".into(), "v".into())],
            cwd: Some("/tmp".into()),
            run_as: Some("nobody".into()),
            timeout_ms: 1000,
            expiry_ms: 2000,
            requested_by: "alice".into(),
        }
    }

    #[test]
    fn a_spec_round_trips_through_the_session_bytes() {
        for spec in [
            CommandSpec::shell("uptime", "cli"),
            full(),
            CommandSpec {
                kind: CommandKind::Builtin(BuiltinAction::RestartService { unit: "x".into() }),
                ..CommandSpec::shell("-", "cli")
            },
        ] {
            let bytes = spec.encode().unwrap();
            assert_eq!(CommandSpec::decode(&bytes).unwrap(), spec);
        }
    }

    #[test]
    fn an_unknown_format_or_garbage_is_refused_with_a_reason() {
        let mut bytes = CommandSpec::shell("uptime", "cli").encode().unwrap();
        bytes[0] = 9;
        assert_eq!(CommandSpec::decode(&bytes), Err(SpecError::Format(9)));
        assert!(matches!(
            CommandSpec::decode(b"\x01\xff\xff\xff"),
            Err(SpecError::Malformed(_))
        ));
        assert!(matches!(
            CommandSpec::decode(&vec![0; MAX_SPEC_BYTES + 1]),
            Err(SpecError::TooLarge { .. })
        ));
    }

    #[test]
    fn validation_refuses_empty_lines_bad_limits_and_bad_env_names() {
        assert!(full().validate().is_ok());
        assert_eq!(
            CommandSpec::shell("  ", "x").validate(),
            Err(SpecError::EmptyCommand)
        );
        let mut s = full();
        s.timeout_ms = 0;
        assert_eq!(s.validate(), Err(SpecError::Timeout(0)));
        let mut s = full();
        s.expiry_ms = MAX_EXPIRY_MS + 1;
        assert!(matches!(s.validate(), Err(SpecError::Expiry(_))));
        let mut s = full();
        s.env = vec![("A=B".into(), "x".into())];
        assert!(matches!(s.validate(), Err(SpecError::EnvName(_))));
        let mut s = full();
        s.args = vec!["a\0".into()];
        assert!(matches!(s.validate(), Err(SpecError::Nul { .. })));
    }

    #[test]
    fn file_actions_round_trip_and_bad_paths_hashes_and_modes_are_refused() {
        let push = |path: &str, sha: &str, mode| CommandSpec {
            kind: CommandKind::Builtin(BuiltinAction::PushFile {
                transfer: crate::ids::TransferId([3; 16]),
                path: path.into(),
                size_bytes: 5,
                sha256: sha.into(),
                mode,
                owner: Some("root".into()),
            }),
            ..CommandSpec::shell("-", "cli")
        };
        let good = push("/etc/motd", &"ab".repeat(32), Some(0o644));
        good.validate().unwrap();
        assert_eq!(CommandSpec::decode(&good.encode().unwrap()).unwrap(), good);
        assert_eq!(good.summary(), "push-file /etc/motd (5 bytes)");
        for bad in [
            push("etc/motd", &"ab".repeat(32), None),
            push("/etc/../shadow", &"ab".repeat(32), None),
            push("/etc/", &"ab".repeat(32), None),
            push("/etc/motd", "abc", None),
            push("/etc/motd", &"ab".repeat(32), Some(0o10000)),
        ] {
            assert!(bad.validate().is_err(), "{bad:?} accepted");
        }
        let pull = CommandSpec {
            kind: CommandKind::Builtin(BuiltinAction::PullFile {
                transfer: crate::ids::TransferId([4; 16]),
                path: "/var/log/syslog".into(),
                max_bytes: 10,
            }),
            ..CommandSpec::shell("-", "cli")
        };
        pull.validate().unwrap();
        assert_eq!(CommandSpec::decode(&pull.encode().unwrap()).unwrap(), pull);
    }

    #[test]
    fn scan_packages_round_trips_and_earlier_actions_keep_their_indexes() {
        for full in [true, false] {
            let spec = CommandSpec {
                kind: CommandKind::Builtin(BuiltinAction::ScanPackages { full }),
                ..CommandSpec::shell("-", "cli")
            };
            spec.validate().unwrap();
            assert_eq!(CommandSpec::decode(&spec.encode().unwrap()).unwrap(), spec);
        }
        // bincode numbers variants by position: the appended action is
        // index 4, the earlier ones keep 0..=3.
        let index = |a: BuiltinAction| -> u32 {
            let bytes = codec::encode(&a).unwrap();
            let (i, _): (u32, usize) = codec::decode_prefix(&bytes).unwrap();
            i
        };
        assert_eq!(index(BuiltinAction::RestartService { unit: "x".into() }), 0);
        assert_eq!(index(BuiltinAction::Reboot { delay_ms: 1 }), 1);
        assert_eq!(
            index(BuiltinAction::PullFile {
                transfer: crate::ids::TransferId([4; 16]),
                path: "/x".into(),
                max_bytes: 1,
            }),
            3
        );
        assert_eq!(index(BuiltinAction::ScanPackages { full: true }), 4);
        let spec = CommandSpec {
            kind: CommandKind::Builtin(BuiltinAction::ScanPackages { full: true }),
            ..CommandSpec::shell("-", "cli")
        };
        assert_eq!(spec.summary(), "scan-packages (full)");
    }

    #[test]
    fn words_are_joined_into_a_line_the_shell_splits_back() {
        assert_eq!(shell_join(&["echo a; exit 3".into()]), "echo a; exit 3");
        assert_eq!(
            shell_join(&["echo".into(), "a b".into(), "it's".into(), "x=1".into()]),
            r#"echo 'a b' 'it'\''s' x=1"#
        );
        assert_eq!(shell_join(&["ls".into(), "".into()]), "ls ''");
    }
}
