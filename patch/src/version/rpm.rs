//! RPM version order: `rpmvercmp` (rpm's `rpmio/rpmvercmp.c`, with the
//! `~` and `^` rules of rpm ≥ 4.15) and `[epoch:]version[-release]`
//! comparison as rpm's `rpmverCmp` does it.
//!
//! Owns only the version types; knows nothing of packages or catalogs.

use std::cmp::Ordering;
use std::fmt;

/// rpm's `rpmvercmp` over two version (or release) strings.
///
/// Alphanumeric segments are compared one by one (digits numerically, of
/// any length; letters by ASCII; a numeric segment is newer than an
/// alphabetic one); other characters only separate segments, except `~`
/// (sorts before everything, even the end) and `^` (sorts after the end
/// but before anything else).
pub fn rpmvercmp(a: &str, b: &str) -> Ordering {
    // rpm works on C strings: an embedded NUL ends the version.
    let a = a.split('\0').next().unwrap_or("");
    let b = b.split('\0').next().unwrap_or("");
    if a == b {
        return Ordering::Equal;
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0usize, 0usize);
    let at = |s: &[u8], k: usize| s.get(k).copied().unwrap_or(0);
    let separator = |c: u8| c != 0 && !c.is_ascii_alphanumeric() && c != b'~' && c != b'^';
    while i < a.len() || j < b.len() {
        while separator(at(a, i)) {
            i += 1;
        }
        while separator(at(b, j)) {
            j += 1;
        }
        let (one, two) = (at(a, i), at(b, j));
        if one == b'~' || two == b'~' {
            if one != b'~' {
                return Ordering::Greater;
            }
            if two != b'~' {
                return Ordering::Less;
            }
            i += 1;
            j += 1;
            continue;
        }
        if one == b'^' || two == b'^' {
            if one == 0 {
                return Ordering::Less;
            }
            if two == 0 {
                return Ordering::Greater;
            }
            if one != b'^' {
                return Ordering::Greater;
            }
            if two != b'^' {
                return Ordering::Less;
            }
            i += 1;
            j += 1;
            continue;
        }
        if one == 0 || two == 0 {
            break;
        }
        let isnum = one.is_ascii_digit();
        let class = |c: u8| {
            if isnum {
                c.is_ascii_digit()
            } else {
                c.is_ascii_alphabetic()
            }
        };
        let (s1, s2) = (i, j);
        while i < a.len() && class(a[i]) {
            i += 1;
        }
        while j < b.len() && class(b[j]) {
            j += 1;
        }
        // The first segment is never empty (checked above); an empty second
        // one means different kinds: numeric is newer than alphabetic.
        if s2 == j {
            return if isnum {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        let (mut seg1, mut seg2) = (&a[s1..i], &b[s2..j]);
        if isnum {
            while seg1.first() == Some(&b'0') {
                seg1 = &seg1[1..];
            }
            while seg2.first() == Some(&b'0') {
                seg2 = &seg2[1..];
            }
            match seg1.len().cmp(&seg2.len()) {
                Ordering::Equal => {}
                other => return other,
            }
        }
        match seg1.cmp(seg2) {
            Ordering::Equal => {}
            other => return other,
        }
    }
    match (i >= a.len(), j >= b.len()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        _ => Ordering::Greater,
    }
}

/// An RPM `[epoch:]version[-release]`, split like rpm's `parseEVR`: the
/// epoch is the leading digits before a `:`, the release what follows the
/// last `-`. Any string is accepted (rpm has no invalid versions).
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RpmEvr {
    /// `None` when the package has no epoch (`rpm -q` prints `(none)`).
    pub epoch: Option<u64>,
    pub version: String,
    /// `None` when not given (a bare version in an advisory).
    pub release: Option<String>,
}

impl RpmEvr {
    /// Splits `[epoch:]version[-release]` like rpm's `parseEVR`.
    pub fn parse(evr: &str) -> RpmEvr {
        let digits = evr.bytes().take_while(u8::is_ascii_digit).count();
        let (epoch, rest) = if evr.as_bytes().get(digits) == Some(&b':') {
            // rpm keeps the epoch as a string and compares it with rpmvercmp;
            // an all-digit string compares as its number (saturating here:
            // an epoch beyond u64 is not a real one).
            let e = &evr[..digits];
            let value = e.bytes().fold(0u64, |acc, d| {
                acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
            });
            (Some(value), &evr[digits + 1..])
        } else {
            (None, evr)
        };
        match rest.rfind('-') {
            Some(h) => RpmEvr {
                epoch,
                version: rest[..h].to_string(),
                release: Some(rest[h + 1..].to_string()),
            },
            None => RpmEvr {
                epoch,
                version: rest.to_string(),
                release: None,
            },
        }
    }

    /// rpm's `rpmverCmp` (rpm 4.16+, what `rpm.vercmp` answers): a missing
    /// epoch is 0, then versions, then releases, a missing release sorting
    /// before any release (`1.0` < `1.0-1`). A total order.
    pub fn compare(&self, other: &RpmEvr) -> Ordering {
        self.epoch
            .unwrap_or(0)
            .cmp(&other.epoch.unwrap_or(0))
            .then_with(|| rpmvercmp(&self.version, &other.version))
            .then_with(|| match (&self.release, &other.release) {
                (Some(a), Some(b)) => rpmvercmp(a, b),
                (None, Some(_)) => Ordering::Less,
                (Some(_), None) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            })
    }
}

impl fmt::Display for RpmEvr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = self.epoch {
            write!(f, "{e}:")?;
        }
        f.write_str(&self.version)?;
        if let Some(r) = &self.release {
            write!(f, "-{r}")?;
        }
        Ok(())
    }
}
impl fmt::Debug for RpmEvr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RpmEvr({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    /// Cases from rpm's test suite (`tests/rpmvercmp.at`).
    #[test]
    fn rpmvercmp_matches_rpms_documented_cases() {
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "2.0", Less),
            ("2.0", "1.0", Greater),
            ("2.0.1", "2.0.1", Equal),
            ("2.0", "2.0.1", Less),
            ("2.0.1", "2.0", Greater),
            ("2.0.1a", "2.0.1a", Equal),
            ("2.0.1a", "2.0.1", Greater),
            ("2.0.1", "2.0.1a", Less),
            ("5.5p1", "5.5p1", Equal),
            ("5.5p1", "5.5p2", Less),
            ("5.5p2", "5.5p1", Greater),
            ("5.5p10", "5.5p10", Equal),
            ("5.5p1", "5.5p10", Less),
            ("5.5p10", "5.5p1", Greater),
            ("10xyz", "10.1xyz", Less),
            ("10.1xyz", "10xyz", Greater),
            ("xyz10", "xyz10", Equal),
            ("xyz10", "xyz10.1", Less),
            ("xyz10.1", "xyz10", Greater),
            ("xyz.4", "xyz.4", Equal),
            ("xyz.4", "8", Less),
            ("8", "xyz.4", Greater),
            ("xyz.4", "2", Less),
            ("2", "xyz.4", Greater),
            ("5.5p2", "5.6p1", Less),
            ("5.6p1", "5.5p2", Greater),
            ("5.6p1", "6.5p1", Less),
            ("6.5p1", "5.6p1", Greater),
            ("6.0.rc1", "6.0", Greater),
            ("6.0", "6.0.rc1", Less),
            ("10b2", "10a1", Greater),
            ("10a2", "10b2", Less),
            ("1.0aa", "1.0aa", Equal),
            ("1.0a", "1.0aa", Less),
            ("1.0aa", "1.0a", Greater),
            ("10.0001", "10.0001", Equal),
            ("10.0001", "10.1", Equal),
            ("10.1", "10.0001", Equal),
            ("10.0001", "10.0039", Less),
            ("10.0039", "10.0001", Greater),
            ("4.999.9", "5.0", Less),
            ("5.0", "4.999.9", Greater),
            ("20101121", "20101121", Equal),
            ("20101121", "20101122", Less),
            ("20101122", "20101121", Greater),
            ("2_0", "2_0", Equal),
            ("2.0", "2_0", Equal),
            ("2_0", "2.0", Equal),
            ("a", "a", Equal),
            ("a+", "a+", Equal),
            ("a+", "a_", Equal),
            ("a_", "a+", Equal),
            ("+a", "+a", Equal),
            ("+a", "_a", Equal),
            ("_a", "+a", Equal),
            ("+_", "+_", Equal),
            ("_+", "+_", Equal),
            ("_+", "_", Equal),
            ("+", "_", Equal),
            ("_", "+", Equal),
            ("1.0~rc1", "1.0~rc1", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0~rc1", Greater),
            ("1.0~rc1", "1.0~rc2", Less),
            ("1.0~rc2", "1.0~rc1", Greater),
            ("1.0~rc1~git123", "1.0~rc1~git123", Equal),
            ("1.0~rc1~git123", "1.0~rc1", Less),
            ("1.0~rc1", "1.0~rc1~git123", Greater),
            ("1.0^", "1.0^", Equal),
            ("1.0^", "1.0", Greater),
            ("1.0", "1.0^", Less),
            ("1.0^git1", "1.0^git1", Equal),
            ("1.0^git1", "1.0", Greater),
            ("1.0", "1.0^git1", Less),
            ("1.0^git1", "1.0^git2", Less),
            ("1.0^git2", "1.0^git1", Greater),
            ("1.0^git1", "1.01", Less),
            ("1.01", "1.0^git1", Greater),
            ("1.0^20160101", "1.0^20160101", Equal),
            ("1.0^20160101", "1.0.1", Less),
            ("1.0.1", "1.0^20160101", Greater),
            ("1.0^20160101^git1", "1.0^20160101^git1", Equal),
            ("1.0^20160102", "1.0^20160101^git1", Greater),
            ("1.0^20160101^git1", "1.0^20160102", Less),
            ("1.0~rc1^git1", "1.0~rc1^git1", Equal),
            ("1.0~rc1^git1", "1.0~rc1", Greater),
            ("1.0~rc1", "1.0~rc1^git1", Less),
            ("1.0^git1~pre", "1.0^git1~pre", Equal),
            ("1.0^git1", "1.0^git1~pre", Greater),
            ("1.0^git1~pre", "1.0^git1", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(rpmvercmp(a, b), want, "{a} vs {b}");
        }
    }

    #[test]
    fn an_embedded_nul_ends_the_version_like_a_c_string() {
        // Found by fuzz/patch_version: the comparison was not antisymmetric.
        let a = "\u{1}\0\0~12u2";
        assert_eq!(rpmvercmp(a, "1.0"), rpmvercmp("1.0", a).reverse());
        assert_eq!(rpmvercmp("1.0\0junk", "1.0"), Equal);
    }

    #[test]
    fn long_digit_segments_compare_without_overflow() {
        let big = "9".repeat(300);
        assert_eq!(rpmvercmp(&big, &format!("1{big}")), Less);
        assert_eq!(rpmvercmp(&format!("000{big}"), &big), Equal);
    }

    #[test]
    fn evr_is_split_like_parse_evr() {
        let e = RpmEvr::parse("2:1.0-3.el9");
        assert_eq!(
            (e.epoch, e.version.as_str(), e.release.as_deref()),
            (Some(2), "1.0", Some("3.el9"))
        );
        let e = RpmEvr::parse("1.0");
        assert_eq!((e.epoch, e.release), (None, None));
        let e = RpmEvr::parse("a:1-2-3");
        assert_eq!(
            (e.epoch, e.version.as_str(), e.release.as_deref()),
            (None, "a:1-2", Some("3"))
        );
        assert_eq!(RpmEvr::parse("2:1.0-3.el9").to_string(), "2:1.0-3.el9");
    }

    #[test]
    fn evr_compares_epoch_then_version_then_release_and_a_missing_release_first() {
        let c = |a: &str, b: &str| RpmEvr::parse(a).compare(&RpmEvr::parse(b));
        assert_eq!(c("1:1.0-1", "2.0-1"), Greater);
        assert_eq!(c("0:1.0-1", "1.0-1"), Equal);
        assert_eq!(c("1.0-1", "1.0-2"), Less);
        assert_eq!(c("1.0", "1.0-2"), Less);
        assert_eq!(c("1.0", "1.0-~"), Less);
        assert_eq!(c(":1.0", "1.0"), Equal);
    }
}
