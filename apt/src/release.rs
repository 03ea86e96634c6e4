//! The signed content of an `InRelease` (or a `Release`): its suite,
//! date, `Valid-Until` and the SHA-256 list of the suite's index files,
//! and the checks a correctly signed one must still pass before it is
//! trusted ([`judge_release`], [`check_valid_until`]). No I/O, no clock:
//! callers pass `now`.

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
    /// `Suite:` (`stable`, `stable-security`).
    pub suite: Option<String>,
    /// `Codename:` (`bookworm`, `bookworm-security`).
    pub codename: Option<String>,
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
            "Suite" => info.suite = Some(v.to_string()),
            "Codename" => info.codename = Some(v.to_string()),
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

/// Why a correctly signed `InRelease` is still not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Signed by the archive key, but for another suite: the same key signs
    /// `oldstable`, `bookworm-backports`, … so a replay under this URL
    /// would be accepted on the signature alone.
    #[error(
        "it is for another suite: the URL names {expected:?}, the file says Suite {suite:?} and Codename {codename:?}"
    )]
    WrongSuite {
        expected: String,
        suite: Option<String>,
        codename: Option<String>,
    },
    /// Dated in the future: once accepted it would block every genuine
    /// newer InRelease as a rollback (a freeze).
    #[error(
        "its Date ({}) is more than {}s ahead of this appliance's clock ({}): refused, or it would freeze the suite",
        fmt_ms(*date_ms),
        max_future_ms / 1000,
        fmt_ms(*now_ms)
    )]
    FromTheFuture {
        date_ms: u64,
        now_ms: u64,
        max_future_ms: u64,
    },
    #[error(
        "its Date ({}) is older than the InRelease already accepted for this suite ({}): possible rollback or freeze attack",
        fmt_ms(*date_ms),
        fmt_ms(*accepted_date_ms)
    )]
    Rollback { date_ms: u64, accepted_date_ms: u64 },
    #[error("expired (Valid-Until {})", fmt_ms(*valid_until_ms))]
    Expired { valid_until_ms: u64 },
}

impl Rejection {
    /// The metric label (`outpost_cache_verify_failures_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::WrongSuite { .. } => "suite_mismatch",
            Rejection::FromTheFuture { .. } => "future_date",
            Rejection::Rollback { .. } => "rollback",
            Rejection::Expired { .. } => "expired",
        }
    }
}

/// Whether a correctly signed InRelease of the suite whose dist is
/// `expected_dist` ([`crate::url::Suite::expected_dist`]) may replace the
/// one accepted before (dated `accepted_date_ms`), at `now_ms`: its
/// `Suite` or `Codename` names that dist (apt's own check), its `Date` is
/// at most `max_future_ms` ahead of `now_ms` and not older than the one
/// accepted, and it has not expired.
pub fn judge_release(
    info: &ReleaseInfo,
    expected_dist: &str,
    accepted_date_ms: Option<u64>,
    now_ms: u64,
    max_future_ms: u64,
) -> Result<(), Rejection> {
    if info.suite.as_deref() != Some(expected_dist)
        && info.codename.as_deref() != Some(expected_dist)
    {
        return Err(Rejection::WrongSuite {
            expected: expected_dist.to_string(),
            suite: info.suite.clone(),
            codename: info.codename.clone(),
        });
    }
    if info.date_ms > now_ms.saturating_add(max_future_ms) {
        return Err(Rejection::FromTheFuture {
            date_ms: info.date_ms,
            now_ms,
            max_future_ms,
        });
    }
    if let Some(prev) = accepted_date_ms
        && info.date_ms < prev
    {
        return Err(Rejection::Rollback {
            date_ms: info.date_ms,
            accepted_date_ms: prev,
        });
    }
    check_valid_until(info.valid_until_ms, now_ms)
}

/// An accepted InRelease stays trusted until its `Valid-Until`, however
/// it is confirmed (a 304, the same bytes downloaded again, or served
/// stale while upstream is down).
pub fn check_valid_until(valid_until_ms: Option<u64>, now_ms: u64) -> Result<(), Rejection> {
    match valid_until_ms {
        Some(vu) if vu <= now_ms => Err(Rejection::Expired { valid_until_ms: vu }),
        _ => Ok(()),
    }
}

/// RFC 3339 for messages (`2025-05-17T08:49:13Z`); the number if out of range.
pub fn fmt_ms(ms: u64) -> String {
    i128::from(ms)
        .checked_mul(1_000_000)
        .and_then(|ns| OffsetDateTime::from_unix_timestamp_nanos(ns).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
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

    fn stable(date_ms: u64, valid_until_ms: Option<u64>) -> ReleaseInfo {
        ReleaseInfo {
            date_ms,
            valid_until_ms,
            suite: Some("stable".into()),
            codename: Some("bookworm".into()),
            ..ReleaseInfo::default()
        }
    }

    const MIN: u64 = 60_000;

    #[test]
    fn suite_and_codename_are_read() {
        let r = parse_release(RELEASE).unwrap();
        assert_eq!(r.suite.as_deref(), Some("stable"));
        assert_eq!(r.codename, None);
    }

    #[test]
    fn an_inrelease_of_another_suite_is_refused_even_when_signed() {
        let now = 1_000 * MIN;
        let r = stable(now, None);
        assert_eq!(judge_release(&r, "stable", None, now, 10 * MIN), Ok(()));
        assert_eq!(judge_release(&r, "bookworm", None, now, 10 * MIN), Ok(()));
        let e = judge_release(&r, "bookworm-backports", None, now, 10 * MIN).unwrap_err();
        assert_eq!(e.reason(), "suite_mismatch");
        assert!(e.to_string().contains("\"bookworm-backports\""), "{e}");
        let mut none = r.clone();
        none.suite = None;
        none.codename = None;
        assert_eq!(
            judge_release(&none, "stable", None, now, 10 * MIN)
                .unwrap_err()
                .reason(),
            "suite_mismatch"
        );
    }

    #[test]
    fn a_date_beyond_the_skew_is_refused_so_it_cannot_freeze_the_suite() {
        let now = 1_000 * MIN;
        let skew = 10 * MIN;
        assert_eq!(
            judge_release(&stable(now + skew, None), "stable", None, now, skew),
            Ok(())
        );
        let e =
            judge_release(&stable(now + skew + 1, None), "stable", None, now, skew).unwrap_err();
        assert_eq!(e.reason(), "future_date");
        assert!(e.to_string().contains("600s ahead"), "{e}");
        // No overflow near the end of time.
        assert!(
            judge_release(
                &stable(u64::MAX, None),
                "stable",
                None,
                u64::MAX - 1,
                u64::MAX
            )
            .is_ok()
        );
    }

    #[test]
    fn rollback_and_expiry_are_judged_against_an_explicit_clock() {
        let now = 1_000 * MIN;
        let e = judge_release(
            &stable(now - 2 * MIN, None),
            "stable",
            Some(now - MIN),
            now,
            MIN,
        )
        .unwrap_err();
        assert_eq!(e.reason(), "rollback");
        assert_eq!(
            judge_release(
                &stable(now - MIN, None),
                "stable",
                Some(now - MIN),
                now,
                MIN
            ),
            Ok(()),
            "the same Date again is not a rollback"
        );
        let e =
            judge_release(&stable(now - 2 * MIN, Some(now)), "stable", None, now, MIN).unwrap_err();
        assert_eq!(e.reason(), "expired");
        assert_eq!(check_valid_until(Some(now + 1), now), Ok(()));
        assert_eq!(check_valid_until(None, u64::MAX), Ok(()));
        assert!(check_valid_until(Some(now), now).is_err());
        assert_eq!(fmt_ms(1_747_471_753_000), "2025-05-17T08:49:13Z");
        assert_eq!(fmt_ms(u64::MAX), u64::MAX.to_string());
    }
}
