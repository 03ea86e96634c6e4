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

/// Memory the xz decoder may use for one index. The dictionary size is
/// chosen by whoever compressed the file (up to 4 GiB in its header) and
/// the decoder allocates it up front; the largest standard preset
/// (`xz -9`, 64 MiB dictionary) needs about 65 MiB to decompress. A file
/// asking for more fails with "memory limit reached" instead of
/// allocating it.
pub const XZ_MEMLIMIT_BYTES: u64 = 128 << 20;

/// Decompressing reader over `r`. `.xz` is read as xz streams only (not
/// the legacy `.lzma` format, which apt does not use for indexes), one
/// after the other, within [`XZ_MEMLIMIT_BYTES`].
pub fn decompress<'a, R: Read + 'a>(r: R, c: Compression) -> Box<dyn Read + 'a> {
    match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Xz => {
            match liblzma::stream::Stream::new_stream_decoder(
                XZ_MEMLIMIT_BYTES,
                liblzma::stream::CONCATENATED,
            ) {
                Ok(stream) => Box::new(liblzma::read::XzDecoder::new_stream(r, stream)),
                Err(e) => Box::new(Failed(Some(e.into()))),
            }
        }
    }
}

/// A reader whose first read fails with the error it holds (a decoder that
/// could not be set up), then reads as empty.
struct Failed(Option<std::io::Error>);

impl Read for Failed {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        match self.0.take() {
            Some(e) => Err(e),
            None => Ok(0),
        }
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

    /// An xz stream of `text` whose LZMA2 filter asks for a dictionary of
    /// 4 GiB (dictionary byte 40), its block header checksum fixed up.
    fn xz_with_4gib_dictionary(text: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(text).unwrap();
        let mut bytes = xz.finish().unwrap();
        // Stream header: 12 bytes. Block header: size, flags, optional
        // sizes (varints), then the filter flags, then its CRC32.
        let start = 12;
        let size = (usize::from(bytes[start]) + 1) * 4;
        let flags = bytes[start + 1];
        let mut at = start + 2;
        let skip_varint = |at: &mut usize, bytes: &[u8]| {
            while bytes[*at] & 0x80 != 0 {
                *at += 1;
            }
            *at += 1;
        };
        if flags & 0x40 != 0 {
            skip_varint(&mut at, &bytes);
        }
        if flags & 0x80 != 0 {
            skip_varint(&mut at, &bytes);
        }
        assert_eq!(
            &bytes[at..at + 2],
            &[0x21, 0x01],
            "the LZMA2 filter, 1 property byte"
        );
        bytes[at + 2] = 40;
        let mut crc = flate2::Crc::new();
        crc.update(&bytes[start..start + size - 4]);
        bytes[start + size - 4..start + size].copy_from_slice(&crc.sum().to_le_bytes());
        bytes
    }

    /// Fails before the fix (the auto decoder had no memory limit and
    /// allocated the 4 GiB dictionary, then decoded "Package: a").
    #[test]
    fn an_xz_index_asking_for_a_4_gib_dictionary_is_refused_before_allocating_it() {
        let bytes = xz_with_4gib_dictionary(b"Package: a\n");
        let mut out = Vec::new();
        let err = decompress(&bytes[..], Compression::Xz)
            .read_to_end(&mut out)
            .expect_err("over the decoder's memory limit");
        assert!(err.to_string().contains("memory limit"), "{err}");
        assert!(out.is_empty());
        // The fuzzer's input: a legacy .lzma header with a 4 GiB
        // dictionary, named .xz. Not an xz stream: refused as such.
        let lzma = [
            &[0x0a][..],
            &[0xff; 52],
            &[0x87, 0x41, 0, 0, 0x25, 0x0a, 0x0d],
        ]
        .concat();
        let err = decompress(&lzma[..], Compression::Xz)
            .read_to_end(&mut out)
            .expect_err("not an xz stream");
        assert!(err.to_string().contains("format"), "{err}");
    }

    #[test]
    fn concatenated_xz_streams_are_read_one_after_the_other() {
        use std::io::Write;
        let mut bytes = Vec::new();
        for part in [&b"Package: a\n"[..], b"Package: b\n"] {
            let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
            xz.write_all(part).unwrap();
            bytes.extend(xz.finish().unwrap());
        }
        let mut out = String::new();
        decompress(&bytes[..], Compression::Xz)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "Package: a\nPackage: b\n");
    }
}
