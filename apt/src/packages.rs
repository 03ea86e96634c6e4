//! `Packages` and `Sources` indexes (plain, `.gz`, `.xz`): the package
//! files they list, each with the size and SHA-256 it must have. No I/O
//! beyond the reader it is given.

use std::io::{BufRead, BufReader, Read};

use crate::ParseError;
use crate::release::{Checksum, parse_sha256};

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
