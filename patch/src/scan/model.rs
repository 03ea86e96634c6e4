//! The scan model: what one device has installed, what apt would upgrade,
//! whether it waits for a reboot. Serde-friendly and compact for bincode
//! as well as JSON (no skipped fields, no internally tagged enums).
//!
//! Built by the agent from the parsers next to this module; never parsed
//! from the network without the codec's limits (the caller's job).

use crate::release::ReleaseKey;
use crate::scan::os_release::OsInfo;
use crate::version::{DebVersion, RpmEvr};

/// A line of tool output that could not be used, kept for the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LineProblem {
    /// Which output: `dpkg-query`, `apt-get`, `rpm`.
    pub tool: String,
    /// 1-based line number in that output.
    pub line: u32,
    pub reason: String,
}

/// Problems met while reading tool output: all are counted, the first
/// [`Problems::KEPT`] are kept with their reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problems {
    pub total: u32,
    pub first: Vec<LineProblem>,
}

impl Problems {
    /// How many problems are kept with their reason.
    pub const KEPT: usize = 20;

    pub fn push(&mut self, tool: &str, line: usize, reason: impl Into<String>) {
        self.total = self.total.saturating_add(1);
        if self.first.len() < Self::KEPT {
            self.first.push(LineProblem {
                tool: tool.to_string(),
                line: u32::try_from(line).unwrap_or(u32::MAX),
                reason: reason.into(),
            });
        }
    }

    pub fn extend(&mut self, other: Problems) {
        self.total = self.total.saturating_add(other.total);
        for p in other.first {
            if self.first.len() < Self::KEPT {
                self.first.push(p);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

/// dpkg's view of an installed package (the second letter of
/// `${db:Status-Abbrev}`); packages only `config-files` or `not-installed`
/// are not part of a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PkgState {
    // Explicit values: they are part of the scan digest's encoding.
    Installed = 0,
    TriggersPending = 1,
    TriggersAwaited = 2,
    HalfConfigured = 3,
    Unpacked = 4,
    HalfInstalled = 5,
}

/// One installed Debian binary package.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DpkgPackage {
    pub name: String,
    pub arch: String,
    pub version: DebVersion,
    /// The source package, when its name differs from the binary's.
    pub source: Option<String>,
    /// The source version, when it differs (binNMUs, own binary versions).
    pub source_version: Option<DebVersion>,
    pub state: PkgState,
    /// Marked `hold` (`apt-mark hold`): apt will not upgrade it.
    pub held: bool,
}

impl DpkgPackage {
    /// The source package the advisories speak of.
    pub fn source_name(&self) -> &str {
        self.source.as_deref().unwrap_or(&self.name)
    }

    /// The source version the advisories compare with.
    pub fn source_version(&self) -> &DebVersion {
        self.source_version.as_ref().unwrap_or(&self.version)
    }

    /// Textual identity (versions as written, not dpkg-equal).
    pub(crate) fn same_as(&self, other: &DpkgPackage) -> bool {
        self.name == other.name
            && self.arch == other.arch
            && self.version.as_str() == other.version.as_str()
            && self.source == other.source
            && self.source_version.as_ref().map(DebVersion::as_str)
                == other.source_version.as_ref().map(DebVersion::as_str)
            && self.state == other.state
            && self.held == other.held
    }
}

/// One installed RPM package (several versions of one name can be
/// installed: kernels).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RpmPackage {
    pub name: String,
    pub evr: RpmEvr,
    pub arch: String,
    /// `%{SOURCERPM}` (`openssl-3.0.7-27.el9.src.rpm`), when known.
    pub source_rpm: Option<String>,
}

/// One package apt would install or upgrade (`apt-get -s dist-upgrade`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AptUpgrade {
    pub name: String,
    /// The architecture apt printed (`[amd64]`), when it did.
    pub arch: Option<String>,
    /// The installed version; `None` for a package newly pulled in.
    pub from: Option<DebVersion>,
    /// The candidate version.
    pub to: DebVersion,
    /// Where the candidate comes from, as apt prints it
    /// (`Debian-Security:12/stable-security`).
    pub origins: Vec<String>,
    /// Offered by a security pocket (an origin's archive ends in
    /// `-security` or its label names `Security`).
    pub security: bool,
    /// The candidate's download size in bytes (the `Size:` field of its
    /// package index entry, as `apt-cache show` prints it); `None` when
    /// unknown (reports of format 1, or apt could not tell).
    pub size_bytes: Option<u64>,
}

impl AptUpgrade {
    pub(crate) fn same_as(&self, other: &AptUpgrade) -> bool {
        self.name == other.name
            && self.arch == other.arch
            && self.from.as_ref().map(DebVersion::as_str)
                == other.from.as_ref().map(DebVersion::as_str)
            && self.to.as_str() == other.to.as_str()
            && self.origins == other.origins
            && self.security == other.security
            && self.size_bytes == other.size_bytes
    }
}

/// Whether the device waits for a reboot.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RebootState {
    /// `/var/run/reboot-required` exists (Debian/Ubuntu), or the running
    /// kernel is older than the newest installed one.
    pub required: bool,
    /// Packages listed in `/var/run/reboot-required.pkgs`.
    pub packages: Vec<String>,
    /// `uname -r`.
    pub running_kernel: Option<String>,
    /// The newest installed kernel's release, when the package database
    /// tells (`6.1.0-18-amd64`).
    pub newest_kernel: Option<String>,
    /// The running kernel is not the newest installed one.
    pub kernel_pending: bool,
}

/// Freshness of apt's package indexes when the upgrades were computed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexState {
    /// When the last successful `apt-get update` finished (Unix ms).
    pub refreshed_at_ms: Option<u64>,
    /// Why the last refresh failed, if it did: the upgrades may be stale.
    pub error: Option<String>,
}

/// Which package manager the device uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageManager {
    Dpkg,
    Rpm,
}

/// A full package scan of one device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scan {
    /// When the scan was taken (Unix ms, the agent's clock).
    pub scanned_at_ms: u64,
    pub os: OsInfo,
    pub manager: PackageManager,
    /// Sorted by (name, arch), unique.
    pub dpkg: Vec<DpkgPackage>,
    /// Sorted by (name, arch, evr), unique.
    pub rpm: Vec<RpmPackage>,
    /// Sorted by (name, arch), unique.
    pub upgrades: Vec<AptUpgrade>,
    pub indexes: IndexState,
    pub reboot: RebootState,
    /// Output lines that could not be used (unparsable versions…).
    pub problems: Problems,
}

impl Scan {
    /// An empty scan of a dpkg system.
    pub fn new_dpkg(scanned_at_ms: u64, os: OsInfo) -> Scan {
        Scan {
            scanned_at_ms,
            os,
            manager: PackageManager::Dpkg,
            dpkg: Vec::new(),
            rpm: Vec::new(),
            upgrades: Vec::new(),
            indexes: IndexState::default(),
            reboot: RebootState::default(),
            problems: Problems::default(),
        }
    }

    /// An empty scan of an RPM system.
    pub fn new_rpm(scanned_at_ms: u64, os: OsInfo) -> Scan {
        Scan {
            manager: PackageManager::Rpm,
            ..Scan::new_dpkg(scanned_at_ms, os)
        }
    }

    /// The release whose advisories apply, `None` when unsupported.
    pub fn release(&self) -> Option<ReleaseKey> {
        self.os.release()
    }

    /// Sorts and deduplicates the lists (the model's invariants); call it
    /// after filling a scan from the parsers or by hand.
    pub fn normalize(&mut self) {
        self.dpkg
            .sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
        self.dpkg
            .dedup_by(|a, b| a.name == b.name && a.arch == b.arch);
        self.rpm.sort_by(|a, b| {
            (&a.name, &a.arch)
                .cmp(&(&b.name, &b.arch))
                .then_with(|| a.evr.compare(&b.evr))
                .then_with(|| a.evr.to_string().cmp(&b.evr.to_string()))
        });
        self.rpm
            .dedup_by(|a, b| a.name == b.name && a.arch == b.arch && a.evr == b.evr);
        self.upgrades
            .sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
        self.upgrades
            .dedup_by(|a, b| a.name == b.name && a.arch == b.arch);
    }

    /// A digest of the scan's content (everything but `scanned_at_ms`):
    /// a delta names the digest of the scan it applies to, and of the
    /// result, so that a delta applied to the wrong base is refused.
    ///
    /// The encoding is fixed (agent and appliance may run different
    /// builds; a change here only costs full scans, never wrong data): the
    /// small fields as JSON, then every dpkg package, RPM package and
    /// upgrade as length-prefixed strings and flag bytes, hashed 8 bytes at
    /// a time as they are produced (FNV-1a's multiply over little-endian
    /// words, the length, then a final mix). ~0.1 ms for 1,500 packages.
    pub fn digest(&self) -> u64 {
        let mut h = WordHasher::new();
        // Serialising these plain structs into a hasher cannot fail.
        let _ = serde_json::to_writer(
            &mut h,
            &(
                &self.os,
                self.manager,
                &self.indexes,
                &self.reboot,
                &self.problems,
            ),
        );
        fn put(h: &mut WordHasher, s: &str) {
            h.write(&(s.len() as u32).to_le_bytes());
            h.write(s.as_bytes());
        }
        fn put_opt(h: &mut WordHasher, s: Option<&str>) {
            match s {
                Some(s) => {
                    h.write(&[1]);
                    put(h, s);
                }
                None => h.write(&[0]),
            }
        }
        h.write(&(self.dpkg.len() as u64).to_le_bytes());
        for p in &self.dpkg {
            put(&mut h, &p.name);
            put(&mut h, &p.arch);
            put(&mut h, p.version.as_str());
            put_opt(&mut h, p.source.as_deref());
            put_opt(&mut h, p.source_version.as_ref().map(DebVersion::as_str));
            h.write(&[p.state as u8, u8::from(p.held)]);
        }
        h.write(&(self.rpm.len() as u64).to_le_bytes());
        for p in &self.rpm {
            put(&mut h, &p.name);
            put(&mut h, &p.arch);
            h.write(&p.evr.epoch.unwrap_or(u64::MAX).to_le_bytes());
            h.write(&[u8::from(p.evr.epoch.is_some())]);
            put(&mut h, &p.evr.version);
            put_opt(&mut h, p.evr.release.as_deref());
            put_opt(&mut h, p.source_rpm.as_deref());
        }
        h.write(&(self.upgrades.len() as u64).to_le_bytes());
        for u in &self.upgrades {
            put(&mut h, &u.name);
            put_opt(&mut h, u.arch.as_deref());
            put_opt(&mut h, u.from.as_ref().map(DebVersion::as_str));
            put(&mut h, u.to.as_str());
            h.write(&(u.origins.len() as u32).to_le_bytes());
            for o in &u.origins {
                put(&mut h, o);
            }
            h.write(&[u8::from(u.security)]);
        }
        // Download sizes (report format 2) in a section of their own after
        // the upgrades, only when one is known: a scan without sizes (format
        // 1) keeps the digest it always had, so an older agent's deltas
        // still apply to its stored scan.
        if self.upgrades.iter().any(|u| u.size_bytes.is_some()) {
            h.write(b"sizes");
            for u in &self.upgrades {
                match u.size_bytes {
                    Some(n) => {
                        h.write(&[1]);
                        h.write(&n.to_le_bytes());
                    }
                    None => h.write(&[0]),
                }
            }
        }
        h.finish()
    }
}

/// FNV-1a's multiply over the 8-byte little-endian words of a byte
/// stream (the tail zero-padded), the length mixed in at the end, then a
/// final avalanche. Streaming: no buffer of the whole encoding.
struct WordHasher {
    h: u64,
    word: [u8; 8],
    filled: usize,
    len: u64,
}

impl WordHasher {
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> WordHasher {
        WordHasher {
            h: 0xcbf2_9ce4_8422_2325,
            word: [0; 8],
            filled: 0,
            len: 0,
        }
    }

    fn mix(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(Self::PRIME).rotate_left(29);
    }

    fn write(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.filled > 0 {
            let take = (8 - self.filled).min(bytes.len());
            self.word[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.word);
            self.mix(w);
            self.filled = 0;
        }
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        self.word[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
    }

    fn finish(mut self) -> u64 {
        if self.filled > 0 {
            self.word[self.filled..].fill(0);
            let w = u64::from_le_bytes(self.word);
            self.mix(w);
        }
        let len = self.len;
        self.mix(len);
        let mut h = self.h;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

impl std::io::Write for WordHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        WordHasher::write(self, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// FNV-1a, 64 bit.
pub(crate) struct Fnv(u64);
impl Fnv {
    pub(crate) fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::dpkg_query::parse_dpkg_query;
    use crate::scan::os_release::parse_os_release;

    fn scan() -> Scan {
        let mut s = Scan::new_dpkg(
            1,
            parse_os_release("ID=debian\nVERSION_CODENAME=bookworm\n"),
        );
        s.dpkg = parse_dpkg_query("ii \ta\tamd64\t1.0-1\tasrc\t1.0-1\nii \tb\tall\t2.0\tb\t2.0\n")
            .packages;
        s.normalize();
        s
    }

    #[test]
    fn the_streaming_hasher_does_not_depend_on_how_the_bytes_are_split() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut whole = WordHasher::new();
        whole.write(&data);
        for split in [1, 3, 7, 8, 9, 50] {
            let mut parts = WordHasher::new();
            for chunk in data.chunks(split) {
                parts.write(chunk);
            }
            assert_eq!(parts.finish(), WordHasher::new_with(&data), "split {split}");
        }
        let mut a = WordHasher::new();
        a.write(&[0]);
        let b = WordHasher::new();
        assert_ne!(a.finish(), b.finish(), "a zero byte is not nothing");
        let _ = whole.finish();
    }

    impl WordHasher {
        fn new_with(data: &[u8]) -> u64 {
            let mut h = WordHasher::new();
            h.write(data);
            h.finish()
        }
    }

    #[test]
    fn the_digest_ignores_the_scan_time_and_sees_every_other_change() {
        let base = scan();
        let d = base.digest();
        let mut later = base.clone();
        later.scanned_at_ms = 99;
        assert_eq!(later.digest(), d);
        type Change = Box<dyn Fn(&mut Scan)>;
        let variants: Vec<Change> = vec![
            Box::new(|s| s.dpkg[0].held = true),
            Box::new(|s| s.dpkg[0].state = PkgState::Unpacked),
            Box::new(|s| s.dpkg[0].version = DebVersion::parse("1.00-1").unwrap()),
            Box::new(|s| s.dpkg[0].source = None),
            Box::new(|s| s.dpkg[1].arch = "amd64".into()),
            Box::new(|s| s.dpkg.pop().map(drop).unwrap_or(())),
            Box::new(|s| s.reboot.required = true),
            Box::new(|s| s.indexes.error = Some("offline".into())),
            Box::new(|s| s.os.codename = Some("trixie".into())),
        ];
        for (i, change) in variants.iter().enumerate() {
            let mut s = base.clone();
            change(&mut s);
            assert_ne!(s.digest(), d, "change {i} not seen");
        }
    }
}
