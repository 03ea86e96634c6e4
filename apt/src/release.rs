//! The signed content of an `InRelease` (or a `Release`): its date,
//! `Valid-Until` and the SHA-256 list of the suite's index files. No I/O.

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

pub use crate::ParseError;

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
}
