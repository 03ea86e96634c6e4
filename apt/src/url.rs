//! Upstream URLs as the cache sees them: parsed from a client's request
//! target (forward-proxy `http://host/path` or mirror path `/host/path`),
//! normalised so that both modes reach the same cache entry, and classified
//! by what apt does with the file. No I/O.

use std::fmt;

/// A normalised `http://host[:port]/path` upstream URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamUrl {
    /// Lower-case host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Absolute path, starting with `/`, without `.`/`..` segments.
    pub path: String,
}

/// A suite of an archive: `…/dists/NAME`, whose `InRelease` lists its
/// index files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Suite {
    /// `http://host/…/dists/NAME`.
    pub url: UpstreamUrl,
    /// NAME, as in a sources.list line (`bookworm`, `bookworm-security`,
    /// `buster/updates`).
    pub name: String,
}

impl Suite {
    /// `…/dists/NAME/InRelease`.
    pub fn inrelease(&self) -> UpstreamUrl {
        self.file("InRelease")
    }

    /// A file of the suite by its path relative to `…/dists/NAME/`.
    pub fn file(&self, rel: &str) -> UpstreamUrl {
        self.url
            .with_path(format!("{}/{}", self.url.path, rel.trim_start_matches('/')))
    }

    /// The distribution apt expects in the `Suite:` or `Codename:` of this
    /// suite's InRelease: NAME up to its last `/` (`buster/updates` →
    /// `buster`), as apt's own check does.
    pub fn expected_dist(&self) -> &str {
        self.name
            .rsplit_once('/')
            .map(|(d, _)| d)
            .unwrap_or(&self.name)
    }
}

/// Why a request target is not an upstream URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error(
        "only http:// upstreams are supported (got {0:?}); https repositories cannot be cached by a proxy"
    )]
    Scheme(String),
    #[error(
        "request target {0:?} names no upstream host: use the proxy form `GET http://HOST/PATH` or a mirror path `/HOST/PATH`"
    )]
    NoHost(String),
    #[error("invalid host or port in {0:?}")]
    BadHost(String),
    #[error("path {0:?} is not allowed (`..`, query strings and fragments are refused)")]
    BadPath(String),
}

impl UpstreamUrl {
    /// Parses `http://host[:port]/path`.
    pub fn parse_absolute(target: &str) -> Result<UpstreamUrl, UrlError> {
        let (scheme, rest) = target
            .split_once("://")
            .ok_or_else(|| UrlError::NoHost(target.to_string()))?;
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(UrlError::Scheme(scheme.to_string()));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        Self::from_parts(authority, path, target)
    }

    /// Parses a mirror path `/host[:port]/path`.
    pub fn parse_mirror_path(target: &str) -> Result<UpstreamUrl, UrlError> {
        let rest = target
            .strip_prefix('/')
            .ok_or_else(|| UrlError::NoHost(target.to_string()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => return Err(UrlError::NoHost(target.to_string())),
        };
        if authority.is_empty() || !authority.contains('.') && !authority.contains(':') {
            // `/pool/x.deb` or `/debian/...` is a path, not a host.
            if authority != "localhost" {
                return Err(UrlError::NoHost(target.to_string()));
            }
        }
        Self::from_parts(authority, path, target)
    }

    /// Parses either form.
    pub fn parse_target(target: &str) -> Result<UpstreamUrl, UrlError> {
        if target.starts_with('/') {
            Self::parse_mirror_path(target)
        } else {
            Self::parse_absolute(target)
        }
    }

    fn from_parts(authority: &str, path: &str, whole: &str) -> Result<UpstreamUrl, UrlError> {
        if authority.contains('@') || authority.is_empty() {
            return Err(UrlError::BadHost(whole.to_string()));
        }
        let (host, port) =
            split_host_port(authority).ok_or_else(|| UrlError::BadHost(whole.to_string()))?;
        let path = normalise_path(path).ok_or_else(|| UrlError::BadPath(whole.to_string()))?;
        Ok(UpstreamUrl {
            host: host.to_ascii_lowercase(),
            port,
            path,
        })
    }

    /// Where an HTTP redirect from this URL leads: `Location` absolute
    /// (`http://host/path`), host-relative (`/path`) or relative to this
    /// URL's directory, normalised like a request target (`https`,
    /// `..`, queries and fragments are refused).
    pub fn redirect(&self, location: &str) -> Result<UpstreamUrl, UrlError> {
        let location = location.trim();
        if location.contains("://") {
            return Self::parse_absolute(location);
        }
        let path = if location.starts_with('/') {
            location.to_string()
        } else {
            let dir = self.path.rfind('/').map_or("/", |i| &self.path[..=i]);
            format!("{dir}{location}")
        };
        Self::from_parts(&self.authority(), &path, location)
    }

    /// `host` or `host:port` when the port is not 80 (the allow-list key).
    pub fn authority(&self) -> String {
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            h
        } else {
            format!("{h}:{}", self.port)
        }
    }

    /// The file name (last path segment).
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or("")
    }

    /// This URL with another path.
    pub fn with_path(&self, path: String) -> UpstreamUrl {
        UpstreamUrl {
            host: self.host.clone(),
            port: self.port,
            path,
        }
    }

    /// For `…/dists/SUITE/InRelease` (or `Release`, `Release.gpg`): its
    /// suite. SUITE is everything between `dists/` and the file name, so
    /// it may contain `/` (`buster/updates`).
    pub fn release_suite(&self) -> Option<Suite> {
        if !matches!(self.kind(), FileKind::InRelease | FileKind::Release) {
            return None;
        }
        let i = self.path.find("/dists/")?;
        let after = &self.path[i + "/dists/".len()..];
        let (name, _file) = after.rsplit_once('/')?;
        if name.is_empty() {
            return None;
        }
        Some(Suite {
            url: self.with_path(format!("{}/dists/{name}", &self.path[..i])),
            name: name.to_string(),
        })
    }

    /// The suites that may cover a file under `…/dists/`, each with the
    /// path relative to it: `…/dists/A` (`bookworm`, `bookworm-security`),
    /// then `…/dists/A/B` for the suites whose name has a `/`
    /// (`buster/updates`). Deeper names are not guessed (apt's own suites
    /// have at most one `/`); their `InRelease` is still found when
    /// requested directly.
    pub fn suite_candidates(&self) -> Vec<(Suite, String)> {
        let Some(i) = self.path.find("/dists/") else {
            return Vec::new();
        };
        let base = &self.path[..i];
        let after = &self.path[i + "/dists/".len()..];
        let mut out = Vec::new();
        let mut name_end = 0;
        for _ in 0..2 {
            let Some(slash) = after[name_end..].find('/') else {
                break;
            };
            let end = name_end + slash;
            let (name, rel) = (&after[..end], &after[end + 1..]);
            if name.is_empty() || rel.is_empty() {
                break;
            }
            out.push((
                Suite {
                    url: self.with_path(format!("{base}/dists/{name}")),
                    name: name.to_string(),
                },
                rel.to_string(),
            ));
            name_end = end + 1;
        }
        out
    }

    /// The first of [`UpstreamUrl::suite_candidates`]: `…/dists/A` and
    /// the path relative to it.
    pub fn suite(&self) -> Option<(UpstreamUrl, String)> {
        self.suite_candidates()
            .into_iter()
            .next()
            .map(|(s, rel)| (s.url, rel))
    }

    /// The archive root (`…` before `/dists/`), against which `Filename:` of
    /// a Packages index and `Directory:` of a Sources index are relative.
    pub fn archive_root(&self) -> Option<UpstreamUrl> {
        let i = self.path.find("/dists/")?;
        Some(self.with_path(self.path[..i].to_string()))
    }

    /// The database key (the URL text).
    pub fn key(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// What apt does with this file.
    pub fn kind(&self) -> FileKind {
        FileKind::of_path(&self.path)
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

fn split_host_port(authority: &str) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (h, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if tail.is_empty() => 80,
            None => return None,
        };
        // Only an IPv6 literal, in its canonical text (so `[::1]` and
        // `[0:0::1]` are one cache entry, and no stray byte reaches a
        // request line).
        let ip: std::net::Ipv6Addr = h.parse().ok()?;
        if port == 0 {
            return None;
        }
        return Some((ip.to_string(), port));
    }
    let (h, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (authority, 80),
    };
    if h.is_empty()
        || port == 0
        || !h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        return None;
    }
    Some((h.to_string(), port))
}

/// Removes `.` and empty segments; refuses `..`, `?`, `#` and control bytes.
fn normalise_path(path: &str) -> Option<String> {
    if path.contains(['?', '#']) || path.bytes().any(|b| b < 0x21 || b == 0x7f) {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => return None,
            s if s.eq_ignore_ascii_case("%2e%2e") || s.eq_ignore_ascii_case("..%2f") => {
                return None;
            }
            s => {
                out.push('/');
                out.push_str(s);
            }
        }
    }
    if path.ends_with('/') || out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// Kinds of apt repository files, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `InRelease`: clear-signed suite description (mutable URL).
    InRelease,
    /// `Release` / `Release.gpg`: detached-signature variant (mutable URL).
    Release,
    /// Index files listed in a Release (`Packages*`, `Sources*`,
    /// `Translation-*`, `Contents-*`, `by-hash/…`, …) — mutable URL unless by-hash.
    Index,
    /// Package files (`.deb`, `.udeb`, `.ddeb`, `.rpm`, source parts): immutable.
    Package,
    /// Anything else.
    Other,
}

impl FileKind {
    pub fn of_path(path: &str) -> FileKind {
        let name = path.rsplit('/').next().unwrap_or("");
        if name == "InRelease" {
            return FileKind::InRelease;
        }
        if name == "Release" || name == "Release.gpg" {
            return FileKind::Release;
        }
        if path.contains("/by-hash/") || path.contains("/dists/") || path.contains("/repodata/") {
            return FileKind::Index;
        }
        const PKG: [&str; 11] = [
            ".deb", ".udeb", ".ddeb", ".rpm", ".dsc", ".tar.gz", ".tar.xz", ".tar.bz2", ".tar.zst",
            ".diff.gz", ".asc",
        ];
        if PKG.iter().any(|s| name.ends_with(s)) {
            return FileKind::Package;
        }
        FileKind::Other
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::InRelease => "inrelease",
            FileKind::Release => "release",
            FileKind::Index => "index",
            FileKind::Package => "package",
            FileKind::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_and_mirror_forms_reach_the_same_url() {
        let a = UpstreamUrl::parse_target("http://Deb.Debian.org/debian/pool/main/h/hello.deb")
            .unwrap();
        let b = UpstreamUrl::parse_target("/deb.debian.org/debian/pool/main/h/hello.deb").unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.to_string(),
            "http://deb.debian.org/debian/pool/main/h/hello.deb"
        );
        let c = UpstreamUrl::parse_target("http://127.0.0.1:8081//x/./y.deb").unwrap();
        assert_eq!(c.to_string(), "http://127.0.0.1:8081/x/y.deb");
        assert_eq!(c.authority(), "127.0.0.1:8081");
        let d = UpstreamUrl::parse_target("/127.0.0.1:8081/x/y.deb").unwrap();
        assert_eq!(c, d);
    }

    #[test]
    fn bad_targets_are_refused_with_a_reason() {
        assert!(matches!(
            UpstreamUrl::parse_target("https://x.org/a"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            UpstreamUrl::parse_target("/pool/main/x.deb"),
            Err(UrlError::NoHost(_))
        ));
        assert!(matches!(
            UpstreamUrl::parse_target("http://x.org/a/../../etc/passwd"),
            Err(UrlError::BadPath(_))
        ));
        assert!(matches!(
            UpstreamUrl::parse_target("http://user@x.org/a"),
            Err(UrlError::BadHost(_))
        ));
        assert!(matches!(
            UpstreamUrl::parse_target("http://x.org:99999/a"),
            Err(UrlError::BadHost(_))
        ));
        assert!(UpstreamUrl::parse_target("http://x.org/a?b=c").is_err());
    }

    #[test]
    fn suites_roots_and_kinds() {
        let u = UpstreamUrl::parse_target(
            "http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/Packages.xz",
        )
        .unwrap();
        let (suite, rel) = u.suite().unwrap();
        assert_eq!(
            suite.to_string(),
            "http://deb.debian.org/debian/dists/bookworm"
        );
        assert_eq!(rel, "main/binary-amd64/Packages.xz");
        assert_eq!(
            u.archive_root().unwrap().to_string(),
            "http://deb.debian.org/debian"
        );
        assert_eq!(u.kind(), FileKind::Index);
        assert_eq!(
            FileKind::of_path("/d/dists/s/InRelease"),
            FileKind::InRelease
        );
        assert_eq!(
            FileKind::of_path("/d/dists/s/Release.gpg"),
            FileKind::Release
        );
        assert_eq!(
            FileKind::of_path("/d/pool/h/hello_1_amd64.deb"),
            FileKind::Package
        );
        assert_eq!(FileKind::of_path("/d/README"), FileKind::Other);
    }

    #[test]
    fn suites_with_a_slash_are_found_from_their_inrelease_and_their_files() {
        let ir = UpstreamUrl::parse_target(
            "http://security.debian.org/debian-security/dists/buster/updates/InRelease",
        )
        .unwrap();
        let s = ir.release_suite().unwrap();
        assert_eq!(s.name, "buster/updates");
        assert_eq!(
            s.url.to_string(),
            "http://security.debian.org/debian-security/dists/buster/updates"
        );
        assert_eq!(s.expected_dist(), "buster");
        assert_eq!(s.inrelease(), ir);
        let pk = UpstreamUrl::parse_target(
            "http://security.debian.org/debian-security/dists/buster/updates/main/binary-amd64/Packages.xz",
        )
        .unwrap();
        let c = pk.suite_candidates();
        let names: Vec<(&str, &str)> = c
            .iter()
            .map(|(s, r)| (s.name.as_str(), r.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("buster", "updates/main/binary-amd64/Packages.xz"),
                ("buster/updates", "main/binary-amd64/Packages.xz")
            ]
        );
        assert_eq!(c[1].0, s);
        assert_eq!(c[1].0.file(&c[1].1), pk);
        let sec = UpstreamUrl::parse_target(
            "http://security.debian.org/debian-security/dists/bookworm-security/InRelease",
        )
        .unwrap();
        let s = sec.release_suite().unwrap();
        assert_eq!(
            (s.name.as_str(), s.expected_dist()),
            ("bookworm-security", "bookworm-security")
        );
        assert!(
            UpstreamUrl::parse_target("http://h/d/dists/InRelease")
                .unwrap()
                .release_suite()
                .is_none()
        );
        assert!(
            UpstreamUrl::parse_target("http://h/d/pool/InRelease")
                .unwrap()
                .release_suite()
                .is_none()
        );
    }

    #[test]
    fn bracketed_hosts_must_be_ipv6_literals_and_are_normalised() {
        // Found by the apt_url fuzz target: any bytes were accepted between
        // brackets (NUL, `>`), and the URL did not parse back to itself.
        assert!(matches!(
            UpstreamUrl::parse_target("http://[fe80=\0\0hh>]:312/p/eb"),
            Err(UrlError::BadHost(_))
        ));
        assert!(UpstreamUrl::parse_target("http://[x.org]/a").is_err());
        assert!(UpstreamUrl::parse_target("http://[::1]:0/a").is_err());
        let a = UpstreamUrl::parse_target("http://[0:0::1]:8080/a").unwrap();
        let b = UpstreamUrl::parse_target("/[::1]:8080/a").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "http://[::1]:8080/a");
        assert_eq!(UpstreamUrl::parse_absolute(&a.to_string()).unwrap(), a);
        let c = UpstreamUrl::parse_target("http://[FE80::1]/a").unwrap();
        assert_eq!(c.authority(), "[fe80::1]");
    }

    #[test]
    fn redirects_resolve_against_the_url_and_are_normalised() {
        let u = UpstreamUrl::parse_absolute("http://deb.example.com/debian/pool/a/x.deb").unwrap();
        let to = |l: &str| u.redirect(l).map(|r| r.to_string());
        assert_eq!(
            to("http://mirror.example.net:8080/pool/a/x.deb").unwrap(),
            "http://mirror.example.net:8080/pool/a/x.deb"
        );
        assert_eq!(
            to("/mirror/pool/a/x.deb").unwrap(),
            "http://deb.example.com/mirror/pool/a/x.deb"
        );
        assert_eq!(
            to("y.deb").unwrap(),
            "http://deb.example.com/debian/pool/a/y.deb"
        );
        assert!(matches!(
            to("https://secure.example.com/x.deb"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            to("/a/../../etc/passwd"),
            Err(UrlError::BadPath(_))
        ));
        assert!(to("http://user@evil.example.com/x").is_err());
    }
}
