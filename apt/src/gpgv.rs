//! Judging `gpgv --status-fd` output the way apt does (`methods/gpgv.cc`):
//! a signature counts only if `gpgv` exited 0 and said `GOODSIG` for it,
//! with a `VALIDSIG` whose digest is not weak. `EXPKEYSIG`, `REVKEYSIG`
//! and `EXPSIG` (signed by an expired or revoked key, or an expired
//! signature) are worthless, any `BADSIG` fails the whole file, and
//! `VALIDSIG` alone (which gpgv also prints for an expired key) is not
//! enough. Pure: the caller runs gpgv.

/// What the status lines said about one signature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Sig {
    /// `GOODSIG`, `EXPKEYSIG`, `REVKEYSIG`, `EXPSIG`, `BADSIG`, `ERRSIG`.
    verdict: Option<&'static str>,
    /// Key id or fingerprint, for messages.
    key: String,
    /// `VALIDSIG` seen, with its digest algorithm.
    valid_digest: Option<u32>,
}

/// Why a signed file is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpgvError {
    #[error("bad signature from key {0}")]
    BadSignature(String),
    #[error("gpgv exited with status {code}: {detail}")]
    ExitStatus { code: i32, detail: String },
    #[error("no valid signature from a configured keyring: {0}")]
    NoValidSignature(String),
}

/// Digest algorithms apt no longer trusts (OpenPGP ids: MD5, SHA-1, RIPEMD-160).
const WEAK_DIGESTS: [u32; 3] = [1, 2, 3];

/// Judges gpgv's run: `exit_code` (`None` if killed by a signal) and its
/// `--status-fd` text. Returns the keys of the good signatures.
pub fn judge(exit_code: Option<i32>, status: &str) -> Result<Vec<String>, GpgvError> {
    let mut sigs: Vec<Sig> = Vec::new();
    let mut missing_keys = Vec::new();
    let mut no_data = false;
    for line in status.lines() {
        let Some(rest) = line.strip_prefix("[GNUPG:] ") else {
            continue;
        };
        let mut f = rest.split_ascii_whitespace();
        let (Some(tag), arg) = (f.next(), f.next().unwrap_or("")) else {
            continue;
        };
        let verdict: Option<&'static str> = match tag {
            "NEWSIG" => {
                sigs.push(Sig::default());
                continue;
            }
            "GOODSIG" => Some("GOODSIG"),
            "EXPKEYSIG" => Some("EXPKEYSIG"),
            "REVKEYSIG" => Some("REVKEYSIG"),
            "EXPSIG" => Some("EXPSIG"),
            "BADSIG" => Some("BADSIG"),
            "ERRSIG" => Some("ERRSIG"),
            "NO_PUBKEY" => {
                missing_keys.push(arg.to_string());
                continue;
            }
            "NODATA" => {
                no_data = true;
                continue;
            }
            "VALIDSIG" => {
                // VALIDSIG fpr date ts expire version reserved pk-algo hash-algo class [primary]
                let digest = rest
                    .split_ascii_whitespace()
                    .nth(8)
                    .and_then(|d| d.parse().ok());
                if sigs.is_empty() {
                    sigs.push(Sig::default());
                }
                if let Some(s) = sigs.last_mut() {
                    s.valid_digest = Some(digest.unwrap_or(0));
                    if s.key.is_empty() {
                        s.key = arg.to_string();
                    }
                }
                continue;
            }
            _ => continue,
        };
        // Without NEWSIG lines (older gpg) a second verdict is a new signature.
        if sigs.last().is_none_or(|s| s.verdict.is_some()) {
            sigs.push(Sig::default());
        }
        if let Some(s) = sigs.last_mut() {
            s.verdict = verdict;
            s.key = arg.to_string();
        }
    }
    if let Some(bad) = sigs.iter().find(|s| s.verdict == Some("BADSIG")) {
        return Err(GpgvError::BadSignature(bad.key.clone()));
    }
    let describe = || {
        let mut why: Vec<String> = sigs
            .iter()
            .filter_map(|s| match (s.verdict, s.valid_digest) {
                (Some("GOODSIG"), Some(d)) if WEAK_DIGESTS.contains(&d) => {
                    Some(format!("{}: weak digest algorithm {d}", s.key))
                }
                (Some("GOODSIG"), None) => Some(format!("{}: no VALIDSIG", s.key)),
                (Some("GOODSIG"), _) => None,
                (Some("EXPKEYSIG"), _) => Some(format!("{}: the key has expired", s.key)),
                (Some("REVKEYSIG"), _) => Some(format!("{}: the key was revoked", s.key)),
                (Some("EXPSIG"), _) => Some(format!("{}: the signature has expired", s.key)),
                (Some(v), _) => Some(format!("{}: {v}", s.key)),
                (None, _) => None,
            })
            .collect();
        why.extend(
            missing_keys
                .iter()
                .map(|k| format!("{k}: key not in the keyrings")),
        );
        if no_data {
            why.push("no signature data".into());
        }
        if why.is_empty() {
            "no signature".to_string()
        } else {
            why.join("; ")
        }
    };
    match exit_code {
        Some(0) => {}
        Some(code) => {
            return Err(GpgvError::ExitStatus {
                code,
                detail: describe(),
            });
        }
        None => {
            return Err(GpgvError::ExitStatus {
                code: -1,
                detail: "killed by a signal".into(),
            });
        }
    }
    let good: Vec<String> = sigs
        .iter()
        .filter(|s| {
            s.verdict == Some("GOODSIG")
                && s.valid_digest.is_some_and(|d| !WEAK_DIGESTS.contains(&d))
        })
        .map(|s| s.key.clone())
        .collect();
    if good.is_empty() {
        return Err(GpgvError::NoValidSignature(describe()));
    }
    Ok(good)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FPR: &str = "0123456789ABCDEF0123456789ABCDEF01234567";

    fn validsig(digest: u32) -> String {
        format!("[GNUPG:] VALIDSIG {FPR} 2025-05-17 1747471753 0 4 0 22 {digest} 01 {FPR}\n")
    }

    #[test]
    fn a_good_signature_with_a_strong_digest_is_accepted() {
        let s = format!(
            "[GNUPG:] NEWSIG\n[GNUPG:] KEY_CONSIDERED {FPR} 0\n[GNUPG:] SIG_ID x 2025-05-17 1\n\
             [GNUPG:] GOODSIG 89ABCDEF01234567 Test <t@x>\n{}",
            validsig(8)
        );
        assert_eq!(judge(Some(0), &s), Ok(vec!["89ABCDEF01234567".to_string()]));
    }

    #[test]
    fn an_expired_or_revoked_key_is_worthless_even_with_validsig_and_exit_0() {
        for (tag, why) in [
            ("EXPKEYSIG", "the key has expired"),
            ("REVKEYSIG", "the key was revoked"),
            ("EXPSIG", "the signature has expired"),
        ] {
            let s = format!(
                "[GNUPG:] NEWSIG\n[GNUPG:] {tag} 89ABCDEF01234567 Test <t@x>\n{}",
                validsig(8)
            );
            let e = judge(Some(0), &s).unwrap_err();
            assert!(
                matches!(&e, GpgvError::NoValidSignature(m) if m.contains(why)),
                "{tag}: {e}"
            );
        }
    }

    #[test]
    fn any_bad_signature_fails_the_file_even_beside_a_good_one() {
        let s = format!(
            "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 1111 A\n{}[GNUPG:] NEWSIG\n[GNUPG:] BADSIG 2222 B\n",
            validsig(8)
        );
        assert_eq!(
            judge(Some(1), &s),
            Err(GpgvError::BadSignature("2222".into()))
        );
    }

    #[test]
    fn one_good_signature_beside_an_unknown_key_is_enough_like_apt() {
        let s = format!(
            "[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 3333 22 8 01 1747471753 9 -\n[GNUPG:] NO_PUBKEY 3333\n\
             [GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 1111 A\n{}",
            validsig(8)
        );
        assert_eq!(judge(Some(0), &s), Ok(vec!["1111".to_string()]));
        // gpgv's exit status is not ignored.
        assert!(matches!(
            judge(Some(2), &s),
            Err(GpgvError::ExitStatus { code: 2, .. })
        ));
        assert!(judge(None, &s).is_err());
    }

    #[test]
    fn weak_digests_missing_validsig_and_no_data_are_refused() {
        let weak = format!("[GNUPG:] GOODSIG 1111 A\n{}", validsig(2));
        assert!(
            matches!(judge(Some(0), &weak), Err(GpgvError::NoValidSignature(m)) if m.contains("weak"))
        );
        let no_valid = "[GNUPG:] GOODSIG 1111 A\n";
        assert!(judge(Some(0), no_valid).is_err());
        let none = "[GNUPG:] NODATA 1\n";
        assert!(matches!(
            judge(Some(2), none),
            Err(GpgvError::ExitStatus { .. })
        ));
        assert!(
            matches!(judge(Some(0), ""), Err(GpgvError::NoValidSignature(m)) if m == "no signature")
        );
        // Without NEWSIG lines, the later verdict is another signature.
        let old = format!(
            "[GNUPG:] GOODSIG 1111 A\n{}[GNUPG:] EXPKEYSIG 2222 B\n",
            validsig(8)
        );
        assert_eq!(judge(Some(0), &old), Ok(vec!["1111".to_string()]));
    }

    /// gpgv 2.2 (Debian 12) on a file signed by an expired key: exit
    /// status 0, "Good signature" on stderr, and VALIDSIG, which the old
    /// check took as enough.
    #[test]
    fn real_gpgv_output_for_an_expired_key_is_refused() {
        let status = "[GNUPG:] NEWSIG\n\
[GNUPG:] KEY_CONSIDERED 92047394D3B810B87897C61755E894DCD3A115AC 0\n\
[GNUPG:] KEYEXPIRED 1577923200\n\
[GNUPG:] SIG_ID KHWSbj3kZmmTvkk+C0MT2A8HLxk 2020-01-01 1577840400\n\
[GNUPG:] KEY_CONSIDERED 92047394D3B810B87897C61755E894DCD3A115AC 0\n\
[GNUPG:] EXPKEYSIG 55E894DCD3A115AC Exp <e@x>\n\
[GNUPG:] VALIDSIG 92047394D3B810B87897C61755E894DCD3A115AC 2020-01-01 1577840400 0 4 0 22 8 01 92047394D3B810B87897C61755E894DCD3A115AC\n";
        let e = judge(Some(0), status).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no valid signature from a configured keyring: 55E894DCD3A115AC: the key has expired"
        );
    }
}
