//! Short immutable strings stored inline (CVE ids, package names,
//! versions), and a fast hasher for the catalog's tables.
//!
//! An assessment copies ids and versions out of the catalog thousands of
//! times per device; inline copies touch no shared memory (no reference
//! count bumped on the catalog's cache lines, which threads assessing in
//! parallel would fight over) and need no allocation. Longer strings fall
//! back to a shared `Arc<str>`.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

const INLINE: usize = 22;

#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Arc<str>),
}

/// An immutable string, inline up to 22 bytes. Serialised as a string.
#[derive(Clone)]
pub struct SmallStr(Repr);

impl SmallStr {
    pub fn new(s: &str) -> SmallStr {
        if s.len() <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            SmallStr(Repr::Inline {
                len: s.len() as u8,
                buf,
            })
        } else {
            SmallStr(Repr::Heap(Arc::from(s)))
        }
    }

    /// The bytes (always UTF-8: copied from a `&str`).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => &buf[..usize::from(*len)],
            Repr::Heap(s) => s.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Valid by construction; the check is a few nanoseconds on
            // 22 bytes and keeps this module free of `unsafe`.
            Repr::Inline { len, buf } => {
                std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or_default()
            }
            Repr::Heap(s) => s,
        }
    }

    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::ops::Deref for SmallStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for SmallStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// Maps keyed by `SmallStr` are looked up with `key.as_bytes()`: no UTF-8
/// check on the hot path (a `Borrow<str>` would validate every compared
/// key).
impl Borrow<[u8]> for SmallStr {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl From<&str> for SmallStr {
    fn from(s: &str) -> SmallStr {
        SmallStr::new(s)
    }
}

impl From<String> for SmallStr {
    fn from(s: String) -> SmallStr {
        SmallStr::new(&s)
    }
}

impl PartialEq for SmallStr {
    fn eq(&self, other: &SmallStr) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for SmallStr {}

impl PartialEq<str> for SmallStr {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialOrd for SmallStr {
    fn partial_cmp(&self, other: &SmallStr) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SmallStr {
    fn cmp(&self, other: &SmallStr) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Hash for SmallStr {
    /// The same as `[u8]`'s, consistent with `Borrow<[u8]>`.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl fmt::Display for SmallStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Debug for SmallStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl serde::Serialize for SmallStr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
impl<'de> serde::Deserialize<'de> for SmallStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SmallStr, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SmallStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<SmallStr, E> {
                Ok(SmallStr::new(s))
            }
        }
        d.deserialize_str(V)
    }
}

/// FxHash (rustc's hasher): a multiply-rotate per word. Not
/// DoS-resistant; used only for tables keyed by feed content the
/// appliance chose to import (package names, CVE ids), where SipHash's
/// cost showed in profiles.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    /// The state through murmur3's 64-bit finaliser. The state's low bits
    /// depend only on the low bits of the words (a multiply carries
    /// upwards only), and hashbrown places entries by the low bits: names
    /// that differ only in their last word (`src-00001`, `src-00002`,
    /// `CVE-2024-…`) fell into a few hundred buckets of a 30,000-entry
    /// table, and every lookup walked a long probe sequence (most of an
    /// assessment's time, measured). The finaliser spreads every bit over
    /// all 64.
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
}

/// `HashMap<K, V, FxBuild>`.
pub type FxBuild = BuildHasherDefault<FxHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn short_and_long_strings_round_trip_and_compare_like_str() {
        for s in [
            "",
            "CVE-2024-1234",
            "exactly-twenty-two-by",
            "a string longer than twenty-two bytes",
            "é✓",
        ] {
            let x = SmallStr::new(s);
            assert_eq!(x.as_str(), s);
            assert_eq!(x.len(), s.len());
            assert_eq!(
                serde_json::to_string(&x).unwrap(),
                serde_json::to_string(s).unwrap()
            );
            let back: SmallStr = serde_json::from_str(&serde_json::to_string(s).unwrap()).unwrap();
            assert_eq!(back, x);
        }
        assert!(SmallStr::new("a") < SmallStr::new("b"));
        assert!(
            SmallStr::new("a string longer than twenty-two bytes, b")
                > SmallStr::new("a string longer")
        );
    }

    #[test]
    fn names_differing_in_their_last_bytes_spread_over_the_low_bits_of_the_hash() {
        use std::hash::BuildHasher;
        let build = FxBuild::default();
        for (prefix, n) in [
            ("src-", 30_000u32),
            ("CVE-2024-", 30_000),
            ("libpkg", 30_000),
        ] {
            let low: std::collections::HashSet<u64> = (0..n)
                .map(|i| build.hash_one(SmallStr::new(&format!("{prefix}{i:05}"))) & 0xffff)
                .collect();
            // A uniform hash fills ~23,000 of the 65,536 low-16-bit
            // values with 30,000 keys; the raw multiply state filled a
            // few hundred.
            assert!(low.len() > 20_000, "{prefix}: {} distinct", low.len());
            let top: std::collections::HashSet<u64> = (0..n)
                .map(|i| build.hash_one(SmallStr::new(&format!("{prefix}{i:05}"))) >> 57)
                .collect();
            assert_eq!(top.len(), 128, "{prefix}: hashbrown's tag bits");
        }
    }

    #[test]
    fn maps_keyed_by_smallstr_are_looked_up_with_bytes() {
        let mut m: HashMap<SmallStr, u32, FxBuild> = HashMap::default();
        m.insert(SmallStr::new("openssl"), 1);
        m.insert(SmallStr::new("a-very-long-source-package-name-indeed"), 2);
        assert_eq!(m.get("openssl".as_bytes()), Some(&1));
        assert_eq!(
            m.get("a-very-long-source-package-name-indeed".as_bytes()),
            Some(&2)
        );
        assert_eq!(m.get("curl".as_bytes()), None);
    }
}
