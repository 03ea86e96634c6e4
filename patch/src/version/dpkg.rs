//! Debian package versions (`[epoch:]upstream[-revision]`) with dpkg's own
//! validity rules (`parseversion` in dpkg's `lib/dpkg/parsehelp.c`) and its
//! exact order (`dpkg_version_compare` / `verrevcmp` in `lib/dpkg/version.c`).
//!
//! Owns only the version type; knows nothing of packages or catalogs.

use crate::smallstr::SmallStr;
use std::cmp::Ordering;
use std::fmt;

/// Why a string is not a dpkg version. The messages are dpkg's own.
///
/// dpkg distinguishes errors from warnings: `dpkg --compare-versions`
/// aborts on an error but only warns (and compares anyway) on the last
/// three variants; see [`VersionError::is_warning`]. [`DebVersion::parse`]
/// rejects both, [`DebVersion::parse_lenient`] accepts what dpkg compares.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("version string is empty")]
    Empty,
    #[error("version string has embedded spaces")]
    EmbeddedSpaces,
    #[error("epoch in version is empty")]
    EpochEmpty,
    #[error("epoch in version is not number")]
    EpochNotNumber,
    #[error("epoch in version is negative")]
    EpochNegative,
    #[error("epoch in version is too big")]
    EpochTooBig,
    #[error("nothing after colon in version number")]
    NothingAfterColon,
    #[error("revision number is empty")]
    RevisionEmpty,
    #[error("version number is empty")]
    UpstreamEmpty,
    #[error("version number does not start with digit")]
    UpstreamNotDigit,
    #[error("invalid character {0:?} in version number")]
    UpstreamInvalidChar(char),
    #[error("invalid character {0:?} in revision number")]
    RevisionInvalidChar(char),
    /// Outpost's own bound (dpkg has none; no real version comes close):
    /// keeps a version 32 bytes.
    #[error("version is {0} bytes long, more than 65535")]
    TooLong(usize),
}

impl VersionError {
    /// True for what dpkg reports as a warning (it still compares such a
    /// version), false for what it refuses.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            VersionError::UpstreamNotDigit
                | VersionError::UpstreamInvalidChar(_)
                | VersionError::RevisionInvalidChar(_)
        )
    }
}

/// A parsed Debian version. Cheap to compare (no allocation) and to clone
/// (one shared string). Equality and order are dpkg's: `1.0` == `1.00` ==
/// `0:1.0-0`. (No `Hash`: equal versions can be spelled differently.)
#[derive(Clone)]
pub struct DebVersion {
    /// The version as given, without surrounding blanks.
    text: SmallStr,
    epoch: u32,
    /// Byte range of the upstream part in `text`.
    upstream_start: u16,
    upstream_end: u16,
}

const INT_MAX: u128 = i32::MAX as u128;

/// Longest version accepted (offsets are kept in `u16`).
const MAX_LEN: usize = u16::MAX as usize;

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// C's `isspace` in the C locale (what `strtol` skips).
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

impl DebVersion {
    /// Parses like dpkg and refuses what dpkg refuses or warns about.
    pub fn parse(s: &str) -> Result<DebVersion, VersionError> {
        let (version, warning) = Self::parse_inner(s)?;
        match warning {
            Some(w) => Err(w),
            None => Ok(version),
        }
    }

    /// Parses like `dpkg --compare-versions`: refuses its errors, accepts
    /// what it only warns about (a letter first, odd characters).
    pub fn parse_lenient(s: &str) -> Result<DebVersion, VersionError> {
        Self::parse_inner(s).map(|(v, _)| v)
    }

    fn parse_inner(s: &str) -> Result<(DebVersion, Option<VersionError>), VersionError> {
        let bytes = s.as_bytes();
        let mut start = 0;
        while start < bytes.len() && is_blank(bytes[start]) {
            start += 1;
        }
        if start == bytes.len() {
            return Err(VersionError::Empty);
        }
        let mut end = start;
        while end < bytes.len() && !is_blank(bytes[end]) {
            end += 1;
        }
        let mut after = end;
        while after < bytes.len() && is_blank(bytes[after]) {
            after += 1;
        }
        if after < bytes.len() {
            return Err(VersionError::EmbeddedSpaces);
        }
        let text = &s[start..end];
        if text.len() > MAX_LEN {
            return Err(VersionError::TooLong(text.len()));
        }
        let t = text.as_bytes();

        let (epoch, upstream_start) = match t.iter().position(|&b| b == b':') {
            Some(colon) => {
                let epoch = parse_epoch(&t[..colon])?;
                if colon + 1 == t.len() {
                    return Err(VersionError::NothingAfterColon);
                }
                (epoch, colon + 1)
            }
            None => (0, 0),
        };
        let rest = &t[upstream_start..];
        let upstream_end = match rest.iter().rposition(|&b| b == b'-') {
            Some(hyphen) => {
                if hyphen + 1 == rest.len() {
                    return Err(VersionError::RevisionEmpty);
                }
                upstream_start + hyphen
            }
            None => t.len(),
        };
        let upstream = &text[upstream_start..upstream_end];
        if upstream.is_empty() {
            return Err(VersionError::UpstreamEmpty);
        }
        let revision = if upstream_end < t.len() {
            &text[upstream_end + 1..]
        } else {
            ""
        };
        let warning = check_chars(upstream, revision);
        Ok((
            DebVersion {
                text: SmallStr::new(text),
                epoch,
                upstream_start: upstream_start as u16,
                upstream_end: upstream_end as u16,
            },
            warning,
        ))
    }

    /// The version as written (without surrounding blanks).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    pub fn upstream(&self) -> &str {
        &self.text[self.upstream_start as usize..self.upstream_end as usize]
    }

    /// The Debian revision, `""` when there is none.
    pub fn revision(&self) -> &str {
        let end = self.upstream_end as usize;
        if end < self.text.len() {
            &self.text[end + 1..]
        } else {
            ""
        }
    }

    fn upstream_bytes(&self) -> &[u8] {
        &self.text.as_bytes()[self.upstream_start as usize..self.upstream_end as usize]
    }

    fn revision_bytes(&self) -> &[u8] {
        let bytes = self.text.as_bytes();
        let end = self.upstream_end as usize;
        if end < bytes.len() {
            &bytes[end + 1..]
        } else {
            &[]
        }
    }

    /// dpkg's `dpkg_version_compare`.
    pub fn compare(&self, other: &DebVersion) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| verrevcmp(self.upstream_bytes(), other.upstream_bytes()))
            .then_with(|| verrevcmp(self.revision_bytes(), other.revision_bytes()))
    }

    /// The version without a trailing binNMU suffix (`+bN`): the source
    /// version a binary rebuild was made from (`5.2.15-2+b8` → `5.2.15-2`).
    pub fn without_binnmu(&self) -> DebVersion {
        let rev = self.revision();
        if let Some(pos) = rev.rfind("+b") {
            let digits = &rev[pos + 2..];
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && pos > 0 {
                let cut = self.text.len() - (rev.len() - pos);
                if let Ok(v) = DebVersion::parse_lenient(&self.text[..cut]) {
                    return v;
                }
            }
        }
        self.clone()
    }
}

/// `strtol(s, &end, 10)` over the epoch bytes, then dpkg's checks.
fn parse_epoch(e: &[u8]) -> Result<u32, VersionError> {
    let mut i = 0;
    while i < e.len() && is_c_space(e[i]) {
        i += 1;
    }
    let mut negative = false;
    if i < e.len() && (e[i] == b'+' || e[i] == b'-') {
        negative = e[i] == b'-';
        i += 1;
    }
    let digits_start = i;
    let mut value: u128 = 0;
    while i < e.len() && e[i].is_ascii_digit() {
        value = value
            .saturating_mul(10)
            .saturating_add(u128::from(e[i] - b'0'));
        i += 1;
    }
    if i == digits_start {
        // strtol consumed nothing: end pointer is the string itself.
        return Err(VersionError::EpochEmpty);
    }
    if i != e.len() {
        return Err(VersionError::EpochNotNumber);
    }
    if negative && value != 0 {
        return Err(VersionError::EpochNegative);
    }
    if value > INT_MAX {
        return Err(VersionError::EpochTooBig);
    }
    Ok(value as u32)
}

/// dpkg's character checks, which it reports as warnings.
fn check_chars(upstream: &str, revision: &str) -> Option<VersionError> {
    let mut chars = upstream.chars();
    match chars.next() {
        Some(c) if c.is_ascii_digit() => {}
        _ => return Some(VersionError::UpstreamNotDigit),
    }
    for c in chars {
        if !(c.is_ascii_alphanumeric() || ".-+~:".contains(c)) {
            return Some(VersionError::UpstreamInvalidChar(c));
        }
    }
    for c in revision.chars() {
        if !(c.is_ascii_alphanumeric() || ".+~".contains(c)) {
            return Some(VersionError::RevisionInvalidChar(c));
        }
    }
    None
}

/// dpkg's `order()`: digits and the end sort as 0, `~` before everything,
/// letters by ASCII, anything else after letters. Bytes above 0x7f are
/// `char` (signed on the platforms dpkg runs on) plus 256, as in C.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        Some(c) => i32::from(c as i8) + 256,
    }
}

/// dpkg's `verrevcmp`. Digit runs are compared numerically without
/// converting them (no overflow on runs of any length).
fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    let at = |s: &[u8], k: usize| s.get(k).copied();
    let is_digit = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_digit());
    while i < a.len() || j < b.len() {
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(at(a, i));
            let bc = order(at(b, j));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while at(a, i) == Some(b'0') {
            i += 1;
        }
        while at(b, j) == Some(b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while is_digit(at(a, i)) && is_digit(at(b, j)) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if is_digit(at(a, i)) {
            return Ordering::Greater;
        }
        if is_digit(at(b, j)) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

impl PartialEq for DebVersion {
    fn eq(&self, other: &Self) -> bool {
        self.compare(other) == Ordering::Equal
    }
}
impl Eq for DebVersion {}
impl PartialOrd for DebVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for DebVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.compare(other)
    }
}

impl fmt::Display for DebVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
impl fmt::Debug for DebVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DebVersion({:?})", &*self.text)
    }
}

impl std::str::FromStr for DebVersion {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DebVersion::parse(s)
    }
}

impl serde::Serialize for DebVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}
impl<'de> serde::Deserialize<'de> for DebVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DebVersion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Debian version string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<DebVersion, E> {
                DebVersion::parse(s).map_err(|e| E::custom(format_args!("version {s:?}: {e}")))
            }
        }
        d.deserialize_str(V)
    }
}

/// Compares two version strings like `dpkg --compare-versions` (lenient
/// parse). Errors are dpkg's refusals.
pub fn compare_versions(a: &str, b: &str) -> Result<Ordering, VersionError> {
    Ok(DebVersion::parse_lenient(a)?.compare(&DebVersion::parse_lenient(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> DebVersion {
        DebVersion::parse_lenient(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn cmp(a: &str, b: &str) -> Ordering {
        v(a).compare(&v(b))
    }

    #[test]
    fn parts_are_split_at_the_first_colon_and_the_last_hyphen() {
        let x = v("1:2.3-4-5");
        assert_eq!((x.epoch(), x.upstream(), x.revision()), (1, "2.3-4", "5"));
        let y = v("2:3:4");
        assert_eq!((y.epoch(), y.upstream(), y.revision()), (2, "3:4", ""));
        let z = v("  1.0-1\t");
        assert_eq!(z.as_str(), "1.0-1");
    }

    /// Cases from dpkg's own test suite (`lib/dpkg/t/t-version.c`) and
    /// Debian Policy §5.6.12.
    #[test]
    fn order_matches_dpkgs_documented_cases() {
        use Ordering::*;
        let cases = [
            ("0", "0", Equal),
            ("0", "00", Equal),
            ("1.0", "1.00", Equal),
            ("1.0", "1.0-0", Equal),
            ("0:1.0", "1.0", Equal),
            ("1", "0:1", Equal),
            ("1:1", "1", Greater),
            ("1:0", "2", Greater),
            ("2:2.0", "1:10", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~~", "1.0~~a", Less),
            ("1.0~~a", "1.0~", Less),
            ("1.0~", "1.0", Less),
            ("1.0", "1.0a", Less),
            ("1.0a", "1.0+", Less),
            ("1.0+", "1.0.", Less),
            ("1.0.", "1.0", Greater),
            ("a", "b", Less),
            ("1a", "1A", Greater),
            ("1.2.3", "1.2.3-1", Less),
            ("1.0-1", "1.0-1+b1", Less),
            ("1.0-1+b1", "1.0-1+deb12u1", Less),
            ("1.0-1~deb12u1", "1.0-1", Less),
            ("2.30", "2.4", Greater),
            ("7.6p2-4", "7.6-0", Greater),
            ("1.0.3-3", "1.0-1", Greater),
            ("1.3", "1.2.2-2", Greater),
            ("1.3", "1.2.2", Greater),
            ("0:0-0", "0:0-0", Equal),
            ("0:0.0-0", "0:0-0", Greater),
            ("0:0-0", "0:0.0-0", Less),
            ("0:0.0-0", "0:0.0-0", Equal),
            ("0:0-a", "0:0-0", Greater),
            ("0:0.0-a", "0:0-0", Greater),
            ("0:0.0-0", "0:0-a", Greater),
            ("0:a-0", "0:0-0", Greater),
            ("0:1.2.3-1", "0:1.2.3-1~", Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(cmp(a, b), want, "{a} vs {b}");
            assert_eq!(cmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn huge_digit_runs_compare_numerically_without_overflow() {
        let big = "1".repeat(500);
        let bigger = format!("{big}0");
        assert_eq!(cmp(&big, &bigger), Ordering::Less);
        assert_eq!(cmp(&format!("000{big}"), &big), Ordering::Equal);
        assert_eq!(
            cmp(&format!("{big}.2"), &format!("{big}.10")),
            Ordering::Less
        );
        assert_eq!(
            cmp("99999999999999999999999999", "100000000000000000000000000"),
            Ordering::Less
        );
    }

    #[test]
    fn tilde_sorts_before_the_end_and_letters_before_punctuation() {
        assert_eq!(cmp("1~", "1"), Ordering::Less);
        assert_eq!(cmp("1~a", "1~"), Ordering::Greater);
        assert_eq!(cmp("1a", "1"), Ordering::Greater);
        assert_eq!(cmp("1a", "1+"), Ordering::Less);
        assert_eq!(cmp("1Z", "1a"), Ordering::Less);
        assert_eq!(cmp("1z", "1."), Ordering::Less);
    }

    #[test]
    fn dpkg_refusals_are_typed_errors() {
        use VersionError::*;
        let cases = [
            ("", Empty),
            (" \t ", Empty),
            ("1 2", EmbeddedSpaces),
            ("a:1", EpochEmpty),
            (":1", EpochEmpty),
            ("1a:1", EpochNotNumber),
            ("1.0:2", EpochNotNumber),
            ("-1:1", EpochNegative),
            ("2147483648:1", EpochTooBig),
            ("99999999999999999999999:1", EpochTooBig),
            ("-99999999999999999999999:1", EpochNegative),
            ("1:", NothingAfterColon),
            ("1-", RevisionEmpty),
            ("1:-1", UpstreamEmpty),
            ("-1", UpstreamEmpty),
        ];
        for (s, want) in cases {
            assert_eq!(DebVersion::parse_lenient(s).unwrap_err(), want, "{s:?}");
            assert!(!want.is_warning());
        }
    }

    #[test]
    fn dpkg_warnings_are_refused_by_parse_and_accepted_by_parse_lenient() {
        use VersionError::*;
        for (s, want) in [
            ("abc", UpstreamNotDigit),
            ("1_2", UpstreamInvalidChar('_')),
            ("1.0-a_b", RevisionInvalidChar('_')),
            ("1.0-1=2", RevisionInvalidChar('=')),
            ("é1", UpstreamNotDigit),
        ] {
            assert_eq!(DebVersion::parse(s).unwrap_err(), want, "{s:?}");
            assert!(want.is_warning());
            assert!(DebVersion::parse_lenient(s).is_ok(), "{s:?}");
        }
    }

    #[test]
    fn versions_longer_than_64_kib_are_refused() {
        let long = format!("1.{}", "0".repeat(70_000));
        assert_eq!(
            DebVersion::parse(&long).unwrap_err(),
            VersionError::TooLong(70_002)
        );
        let ok = format!("1.{}", "0".repeat(60_000));
        assert_eq!(
            DebVersion::parse(&ok).unwrap().compare(&v("1.0")),
            Ordering::Equal
        );
        assert_eq!(std::mem::size_of::<DebVersion>(), 32);
    }

    #[test]
    fn epochs_are_read_like_strtol() {
        assert_eq!(v("+1:1").epoch(), 1);
        assert_eq!(v("-0:1").epoch(), 0);
        assert_eq!(v("\n1:2").compare(&v("1:2")), Ordering::Equal);
        assert_eq!(v("2147483647:1").epoch(), i32::MAX as u32);
    }

    #[test]
    fn high_bytes_sort_after_letters_and_before_punctuation_like_signed_char() {
        // dpkg compares "1é" > "1z" and "1é" < "1+" (é is 0xC3 0xA9).
        assert_eq!(cmp("1é", "1z"), Ordering::Greater);
        assert_eq!(cmp("1é", "1+"), Ordering::Less);
    }

    #[test]
    fn binnmu_suffix_is_stripped_to_get_the_source_version() {
        assert_eq!(v("5.2.15-2+b8").without_binnmu().as_str(), "5.2.15-2");
        assert_eq!(v("1.0+b1").without_binnmu().as_str(), "1.0+b1");
        assert_eq!(
            v("1.0-1+deb12u1").without_binnmu().as_str(),
            "1.0-1+deb12u1"
        );
        assert_eq!(v("1.0-1+bx").without_binnmu().as_str(), "1.0-1+bx");
    }

    #[test]
    fn serde_round_trips_as_a_plain_string_and_refuses_bad_versions() {
        let x: DebVersion = serde_json::from_str("\"1:2.0-3\"").unwrap();
        assert_eq!(serde_json::to_string(&x).unwrap(), "\"1:2.0-3\"");
        assert!(serde_json::from_str::<DebVersion>("\"1:\"").is_err());
    }
}
