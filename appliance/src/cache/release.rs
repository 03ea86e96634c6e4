//! Parsing apt repository metadata (no I/O): the signed content of an
//! `InRelease` (date, `Valid-Until`, SHA-256 list of index files) and the
//! package entries of `Packages` / `Sources` indexes, which state each
//! package file's size and SHA-256.

use std::io::{BufRead, BufReader, Read};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

/// A file's size and SHA-256 as a verified index states them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub sha256: [u8; 32],
    pub size: u64,
}

/// What a verified `InRelease` says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReleaseInfo {
    /// `Date:` in ms since the epoch (0 if absent).
    pub date_ms: u64,
    /// `Valid-Until:` in ms since the epoch.
    pub valid_until_ms: Option<u64>,
    /// `Acquire-By-Hash: yes`.
    pub by_hash: bool,
    /// `(path relative to the suite, checksum)` from the `SHA256:` field.
    pub files: Vec<(String, Checksum)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("release has no SHA256 file list")]
    NoSha256,
    #[error("bad {field} value {value:?}")]
    Field { field: &'static str, value: String },
    #[error("reading index: {0}")]
    Io(#[from] std::io::Error),
}

/// Parses an RFC 2822 date as apt writes it (`Sat, 17 May 2025 08:49:13 UTC`).
pub fn parse_date_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s
        .strip_suffix(" UTC")
        .map(|p| format!("{p} +0000"))
        .unwrap_or_else(|| s.to_string());
    let t = OffsetDateTime::parse(&s, &Rfc2822).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Parses the signed text of an `InRelease` (or a `Release`).
pub fn parse_release(text: &str) -> Result<ReleaseInfo, ParseError> {
    let mut info = ReleaseInfo::default();
    let mut in_sha256 = false;
    let mut saw_sha256 = false;
    for line in text.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if in_sha256 {
                let mut parts = line.split_whitespace();
                let (Some(h), Some(sz), Some(p)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let sha = parse_sha256(h).ok_or_else(|| ParseError::Field {
                    field: "SHA256",
                    value: h.to_string(),
                })?;
                let size = sz.parse().map_err(|_| ParseError::Field {
                    field: "SHA256 size",
                    value: sz.to_string(),
                })?;
                info.files
                    .push((p.to_string(), Checksum { sha256: sha, size }));
            }
            continue;
        }
        in_sha256 = false;
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "SHA256" => {
                in_sha256 = true;
                saw_sha256 = true;
            }
            "Date" => {
                info.date_ms = parse_date_ms(v).ok_or_else(|| ParseError::Field {
                    field: "Date",
                    value: v.to_string(),
                })?
            }
            "Valid-Until" => {
                info.valid_until_ms = Some(parse_date_ms(v).ok_or_else(|| ParseError::Field {
                    field: "Valid-Until",
                    value: v.to_string(),
                })?)
            }
            "Acquire-By-Hash" => info.by_hash = v.eq_ignore_ascii_case("yes"),
            _ => {}
        }
    }
    if !saw_sha256 {
        return Err(ParseError::NoSha256);
    }
    Ok(info)
}

pub fn parse_sha256(h: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(h, &mut out).ok()?;
    Some(out)
}

/// Kind of index whose entries name package files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageIndex {
    /// `Packages`: `Filename`, `Size`, `SHA256` per stanza.
    Packages,
    /// `Sources`: `Directory` and `Checksums-Sha256` per stanza.
    Sources,
}

/// Compression of an index file, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
}

/// For an index path (relative to the suite): does it list packages, and how
/// is it compressed? `None` for other indexes and unsupported compressions.
pub fn package_index(rel: &str) -> Option<(PackageIndex, Compression)> {
    let name = rel.rsplit('/').next()?;
    let (base, comp) = match name.rsplit_once('.') {
        Some((b, "gz")) => (b, Compression::Gzip),
        Some((b, "xz")) => (b, Compression::Xz),
        Some(_) => return None,
        None => (name, Compression::None),
    };
    match base {
        "Packages" => Some((PackageIndex::Packages, comp)),
        "Sources" => Some((PackageIndex::Sources, comp)),
        _ => None,
    }
}

/// Decompressing reader over `r`.
pub fn decompress<'a, R: Read + 'a>(r: R, c: Compression) -> Box<dyn Read + 'a> {
    match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
    }
}

/// Calls `f(path relative to the archive root, checksum)` for every package
/// file an index lists. Stanzas without a SHA-256 are skipped.
pub fn for_each_package_file<R: Read>(
    r: R,
    kind: PackageIndex,
    mut f: impl FnMut(String, Checksum),
) -> Result<u64, ParseError> {
    let mut n = 0u64;
    let reader = BufReader::with_capacity(256 * 1024, r);
    let mut filename: Option<String> = None;
    let mut size: Option<u64> = None;
    let mut sha: Option<[u8; 32]> = None;
    let mut directory: Option<String> = None;
    let mut files: Vec<(String, Checksum)> = Vec::new();
    let mut in_checksums = false;
    let mut flush = |filename: &mut Option<String>,
                     size: &mut Option<u64>,
                     sha: &mut Option<[u8; 32]>,
                     directory: &mut Option<String>,
                     files: &mut Vec<(String, Checksum)>,
                     n: &mut u64| {
        match kind {
            PackageIndex::Packages => {
                if let (Some(fname), Some(sz), Some(h)) = (filename.take(), *size, *sha) {
                    f(
                        fname,
                        Checksum {
                            sha256: h,
                            size: sz,
                        },
                    );
                    *n += 1;
                }
            }
            PackageIndex::Sources => {
                if let Some(dir) = directory.take() {
                    for (name, c) in files.drain(..) {
                        f(format!("{}/{name}", dir.trim_end_matches('/')), c);
                        *n += 1;
                    }
                }
            }
        }
        *filename = None;
        *size = None;
        *sha = None;
        *directory = None;
        files.clear();
    };
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            flush(
                &mut filename,
                &mut size,
                &mut sha,
                &mut directory,
                &mut files,
                &mut n,
            );
            in_checksums = false;
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if in_checksums {
                let mut p = line.split_whitespace();
                if let (Some(h), Some(sz), Some(name)) = (p.next(), p.next(), p.next())
                    && let (Some(h), Ok(sz)) = (parse_sha256(h), sz.parse())
                {
                    files.push((
                        name.to_string(),
                        Checksum {
                            sha256: h,
                            size: sz,
                        },
                    ));
                }
            }
            continue;
        }
        in_checksums = false;
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match (kind, k) {
            (PackageIndex::Packages, "Filename") => filename = Some(v.to_string()),
            (PackageIndex::Packages, "Size") => size = v.parse().ok(),
            (PackageIndex::Packages, "SHA256") => sha = parse_sha256(v),
            (PackageIndex::Sources, "Directory") => directory = Some(v.to_string()),
            (PackageIndex::Sources, "Checksums-Sha256") => in_checksums = true,
            _ => {}
        }
    }
    flush(
        &mut filename,
        &mut size,
        &mut sha,
        &mut directory,
        &mut files,
        &mut n,
    );
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str = "Origin: Test\nSuite: stable\nDate: Sat, 17 May 2025 08:49:13 UTC\n\
Valid-Until: Sat, 24 May 2025 08:49:13 UTC\nAcquire-By-Hash: yes\nMD5Sum:\n \
d41d8cd98f00b204e9800998ecf8427e 0 main/binary-amd64/Packages\nSHA256:\n \
e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0 main/binary-amd64/Packages\n \
0000000000000000000000000000000000000000000000000000000000000001 20 main/binary-amd64/Packages.gz\n";

    #[test]
    fn release_fields_and_sha256_list_are_read() {
        let r = parse_release(RELEASE).unwrap();
        assert_eq!(r.date_ms, 1_747_471_753_000);
        assert_eq!(r.valid_until_ms, Some(1_747_471_753_000 + 7 * 86_400_000));
        assert!(r.by_hash);
        assert_eq!(r.files.len(), 2);
        assert_eq!(r.files[1].0, "main/binary-amd64/Packages.gz");
        assert_eq!(r.files[1].1.size, 20);
        assert!(parse_release("Date: x\n").is_err());
        assert!(matches!(
            parse_release("Origin: x\n"),
            Err(ParseError::NoSha256)
        ));
    }

    #[test]
    fn packages_and_sources_entries_are_listed() {
        let sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let pk = format!(
            "Package: a\nFilename: pool/a_1.deb\nSize: 10\nSHA256: {sha}\nDescription: x\n y\n\n\
             Package: nosha\nFilename: pool/n.deb\nSize: 3\n\nPackage: b\nSHA256: {sha}\nSize: 7\nFilename: pool/b_1.deb\n"
        );
        let mut got = Vec::new();
        let n = for_each_package_file(pk.as_bytes(), PackageIndex::Packages, |p, c| {
            got.push((p, c.size))
        })
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            got,
            [("pool/a_1.deb".to_string(), 10), ("pool/b_1.deb".into(), 7)]
        );

        let src = format!(
            "Package: a\nDirectory: pool/main/a\nChecksums-Sha256:\n {sha} 5 a_1.dsc\n {sha} 9 a_1.tar.xz\n"
        );
        let mut got = Vec::new();
        for_each_package_file(src.as_bytes(), PackageIndex::Sources, |p, c| {
            got.push((p, c.size))
        })
        .unwrap();
        assert_eq!(
            got,
            [
                ("pool/main/a/a_1.dsc".to_string(), 5),
                ("pool/main/a/a_1.tar.xz".into(), 9)
            ]
        );
    }

    #[test]
    fn compressed_indexes_are_recognised_and_decoded() {
        assert_eq!(
            package_index("main/binary-amd64/Packages.xz"),
            Some((PackageIndex::Packages, Compression::Xz))
        );
        assert_eq!(
            package_index("main/source/Sources"),
            Some((PackageIndex::Sources, Compression::None))
        );
        assert_eq!(package_index("main/i18n/Translation-en.bz2"), None);
        assert_eq!(package_index("main/binary-amd64/Packages.bz2"), None);
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"hello").unwrap();
        let bytes = gz.finish().unwrap();
        let mut out = String::new();
        decompress(&bytes[..], Compression::Gzip)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello");
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(b"world").unwrap();
        let bytes = xz.finish().unwrap();
        let mut out = String::new();
        decompress(&bytes[..], Compression::Xz)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "world");
    }
}
