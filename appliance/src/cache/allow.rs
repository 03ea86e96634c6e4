//! The upstream allow-list: the cache is not an open proxy. By default the
//! hosts named in the appliance host's own apt sources
//! (`/etc/apt/sources.list`, `sources.list.d/*.list` one-line format and
//! `*.sources` deb822 format), plus `allow_hosts` from the configuration.

use std::collections::BTreeSet;
use std::path::Path;

use super::url::UpstreamUrl;

/// Allowed upstream authorities (`host` for port 80, else `host:port`).
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    entries: BTreeSet<String>,
}

impl AllowList {
    /// From configured entries and, if `apt_dir` is given, the apt sources under it.
    pub fn build(configured: &[String], apt_dir: Option<&Path>) -> AllowList {
        let mut entries = BTreeSet::new();
        for c in configured {
            if let Some(a) = normalise_entry(c) {
                entries.insert(a);
            } else {
                tracing::warn!(entry = %c, "ignoring an invalid cache.allow_hosts entry");
            }
        }
        if let Some(dir) = apt_dir {
            for uri in apt_source_uris(dir) {
                if let Ok(u) = UpstreamUrl::parse_absolute(&uri) {
                    entries.insert(u.authority());
                }
            }
        }
        AllowList { entries }
    }

    pub fn allows(&self, url: &UpstreamUrl) -> bool {
        self.entries.contains(&url.authority())
    }

    pub fn entries(&self) -> impl Iterator<Item = &String> {
        self.entries.iter()
    }
}

/// `host`, `host:80`, `http://host:port/x` → the authority form.
fn normalise_entry(entry: &str) -> Option<String> {
    let e = entry.trim();
    let url = if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}/")
    };
    UpstreamUrl::parse_absolute(&url)
        .ok()
        .map(|u| u.authority())
}

/// The `http://` URIs of every apt source under `dir` (normally `/etc/apt`).
/// Unreadable files are skipped (logged).
pub fn apt_source_uris(dir: &Path) -> Vec<String> {
    let mut uris = Vec::new();
    let mut files = vec![dir.join("sources.list")];
    if let Ok(rd) = std::fs::read_dir(dir.join("sources.list.d")) {
        let mut more: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let deb822 = name.ends_with(".sources");
        if !deb822 && !name.ends_with(".list") {
            continue;
        }
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                if f.exists() {
                    tracing::warn!(file = %f.display(), error = %e, "cannot read apt source");
                }
                continue;
            }
        };
        if deb822 {
            uris.extend(deb822_uris(&text));
        } else {
            uris.extend(one_line_uris(&text));
        }
    }
    uris.retain(|u| u.starts_with("http://"));
    uris
}

/// `deb [opts] URI suite comp…` lines.
pub fn one_line_uris(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut rest = match line
            .strip_prefix("deb-src ")
            .or_else(|| line.strip_prefix("deb "))
        {
            Some(r) => r.trim_start(),
            None => continue,
        };
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(i) => rest = rest[i + 1..].trim_start(),
                None => continue,
            }
        }
        if let Some(uri) = rest.split_whitespace().next() {
            out.push(uri.to_string());
        }
    }
    out
}

/// `URIs:` fields of deb822 stanzas that are not `Enabled: no`.
pub fn deb822_uris(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut uris = Vec::new();
        let mut enabled = true;
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("URIs") {
                    uris.extend(v.split_whitespace().map(str::to_string));
                } else if k.eq_ignore_ascii_case("Enabled") && v.trim().eq_ignore_ascii_case("no") {
                    enabled = false;
                }
            }
        }
        if enabled {
            out.extend(uris);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_from_both_source_formats_and_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sources.list"),
            "deb http://deb.debian.org/debian bookworm main\n# deb http://commented.org/x a b\n\
             deb [arch=amd64 signed-by=/k.gpg] http://security.debian.org/debian-security bookworm-security main\n\
             deb https://tls.example.org/x a b\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("sources.list.d")).unwrap();
        std::fs::write(
            dir.path().join("sources.list.d/x.sources"),
            "Types: deb\nURIs: http://mirror.example.net:8080/debian\nSuites: s\n\n\
             Types: deb\nURIs: http://disabled.example.net/d\nEnabled: no\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("sources.list.d/y.list.disabled"),
            "deb http://ignored.example.org/ a b\n",
        )
        .unwrap();
        let allow = AllowList::build(&["127.0.0.1:9999".into()], Some(dir.path()));
        let entries: Vec<_> = allow.entries().cloned().collect();
        assert_eq!(
            entries,
            [
                "127.0.0.1:9999",
                "deb.debian.org",
                "mirror.example.net:8080",
                "security.debian.org"
            ]
        );
        let ok = UpstreamUrl::parse_target("http://deb.debian.org/debian/x.deb").unwrap();
        let other_port = UpstreamUrl::parse_target("http://deb.debian.org:81/x.deb").unwrap();
        let evil = UpstreamUrl::parse_target("http://evil.example.com/x.deb").unwrap();
        assert!(allow.allows(&ok));
        assert!(!allow.allows(&other_port));
        assert!(!allow.allows(&evil));
    }
}
