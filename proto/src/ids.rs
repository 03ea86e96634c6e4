//! Identifier newtypes shared by every Outpost component.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A device (endpoint) identifier, assigned by the appliance at enrollment
/// and carried in the device's client certificate.
///
/// Random 64-bit values, shown as 16 lower-case hex digits. Random rather
/// than sequential so that an appliance restored from an old backup never
/// hands out an id that a live certificate already carries.
///
/// Serialized as a `u64` in binary formats (bincode) and as the 16-hex-digit
/// string in human-readable ones (JSON), where a 64-bit integer would lose
/// precision in JavaScript clients.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u64);

impl Serialize for DeviceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            u64::deserialize(d).map(DeviceId)
        }
    }
}

impl DeviceId {
    /// A fresh random device id.
    pub fn random() -> Self {
        DeviceId(rand::random::<u64>())
    }

    /// Big-endian bytes, used as key prefixes in storage.
    pub fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

/// Error parsing an identifier from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {input:?}: expected {expected}")]
pub struct ParseIdError {
    kind: &'static str,
    input: String,
    expected: &'static str,
}

impl FromStr for DeviceId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseIdError {
            kind: "device id",
            input: s.chars().take(64).collect(),
            expected: "16 hex digits, as printed by `outpost devices`",
        };
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        u64::from_str_radix(s, 16).map(DeviceId).map_err(|_| err())
    }
}

/// Declares an identifier that is a name chosen by an operator (tenant,
/// customer, site): a `String` newtype, serde-transparent, so stored and
/// JSON shapes are exactly those of the `String` it replaces. The type only
/// keeps one kind of id from being passed where another is expected;
/// validation of new names stays where they are accepted (API, CLI).
macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Self {
                $name(s.into())
            }

            /// The empty id (usable in `const` and `static` items).
            pub const fn empty() -> Self {
                $name(String::new())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }

            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_string())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok($name(s.to_string()))
            }
        }
    };
}

name_id!(
    /// An MSP (tenant): the top of the hierarchy MSP → customers → sites →
    /// devices. Carried in device and site certificates.
    TenantId
);
name_id!(
    /// One of an MSP's customers, named by the MSP. Carried in device
    /// certificates.
    CustomerId
);
name_id!(
    /// A customer site (one appliance), as central names it (`s-…`).
    SiteId
);

/// Declares a 128-bit random identifier: an idempotency key. Serialized as
/// its 16 bytes in binary formats (bincode) and as 32 lower-case hex digits
/// in human-readable ones (JSON).
macro_rules! key_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// A fresh random id.
            pub fn random() -> Self {
                $name(rand::random::<[u8; 16]>())
            }

            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let err = || ParseIdError {
                    kind: $kind,
                    input: s.chars().take(64).collect(),
                    expected: "32 hex digits",
                };
                if s.len() != 32 {
                    return Err(err());
                }
                let mut out = [0u8; 16];
                hex::decode_to_slice(s, &mut out).map_err(|_| err())?;
                Ok($name(out))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    <[u8; 16]>::deserialize(d).map($name)
                }
            }
        }
    };
}

key_id!(
    /// A remote command, chosen by whoever queues it (the appliance, or
    /// central, whose id travels down unchanged): the idempotency key the
    /// agent dedupes on, so a command delivered twice runs once.
    CommandId,
    "command id"
);
key_id!(
    /// One file transfer over a device session (push or pull); chunks and
    /// acknowledgements name it.
    TransferId,
    "transfer id"
);

impl Serialize for ParseIdError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_round_trips_through_text() {
        for v in [0u64, 1, 0xdead_beef, u64::MAX] {
            let id = DeviceId(v);
            assert_eq!(id.to_string().len(), 16);
            assert_eq!(id.to_string().parse::<DeviceId>().unwrap(), id);
        }
    }

    #[test]
    fn device_id_is_compact_in_bincode_and_a_string_elsewhere() {
        let id = DeviceId(0x0123_4567_89ab_cdef);
        let bin = crate::codec::encode(&id).unwrap();
        assert!(bin.len() <= 9);
        assert_eq!(crate::codec::decode::<DeviceId>(&bin).unwrap(), id);
    }

    #[test]
    fn name_ids_encode_exactly_like_the_strings_they_replace() {
        let t = TenantId::from("acme-msp");
        assert_eq!(
            crate::codec::encode(&t).unwrap(),
            crate::codec::encode(&"acme-msp".to_string()).unwrap()
        );
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"acme-msp\"");
        assert_eq!(
            serde_json::from_str::<TenantId>("\"x\"").unwrap(),
            TenantId::from("x")
        );
        assert_eq!(
            crate::codec::decode::<SiteId>(&crate::codec::encode(&"s-1".to_string()).unwrap())
                .unwrap(),
            "s-1"
        );
        assert_eq!(format!("{t}"), "acme-msp");
        assert_eq!(format!("{t:?}"), "TenantId(\"acme-msp\")");
        let mut m = std::collections::HashMap::new();
        m.insert(CustomerId::from("dental"), 1);
        assert_eq!(m.get("dental"), Some(&1), "looked up by &str");
    }

    #[test]
    fn command_ids_are_16_bytes_in_bincode_and_hex_in_json() {
        let id = CommandId([0xab; 16]);
        let bin = crate::codec::encode(&id).unwrap();
        assert_eq!(bin.len(), 16);
        assert_eq!(crate::codec::decode::<CommandId>(&bin).unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(16)));
        assert_eq!(serde_json::from_str::<CommandId>(&json).unwrap(), id);
        let t = TransferId::random();
        assert_eq!(t.to_string().parse::<TransferId>().unwrap(), t);
        for bad in ["", "ab", &"zz".repeat(16), &"ab".repeat(17)] {
            assert!(bad.parse::<CommandId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn device_id_rejects_bad_text() {
        for bad in [
            "",
            "123",
            "zzzzzzzzzzzzzzzz",
            "00000000000000000",
            "+000000000000001",
        ] {
            assert!(bad.parse::<DeviceId>().is_err(), "{bad:?} parsed");
        }
    }
}
