//! The one place that calls bincode.
//!
//! Every Outpost encoding of a value to bytes (wire frames, RocksDB values,
//! uplink batches) goes through [`encode`] / [`decode`], so the format can move
//! to another crate in one place (see DESIGN.md, dependency notes). The
//! configuration is explicit: little endian, variable-length integers, and a
//! decode limit so that a hostile length field can never make us allocate
//! more than [`DECODE_LIMIT_BYTES`].

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Upper bound on what one decode may allocate. Larger than any frame or
/// stored value we produce (frames are capped well below this by the framing
/// layer; uplink batches are capped by the outbox).
pub const DECODE_LIMIT_BYTES: usize = 64 * 1024 * 1024;

type Config = Configuration<LittleEndian, Varint, Limit<DECODE_LIMIT_BYTES>>;

const CONFIG: Config = bincode::config::standard()
    .with_little_endian()
    .with_variable_int_encoding()
    .with_limit::<DECODE_LIMIT_BYTES>();

/// Encoding or decoding failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encoding failed: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("malformed message: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("malformed message: {0} trailing bytes after the value")]
    TrailingBytes(usize),
}

/// Encodes `value` into a new buffer.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, CONFIG)?)
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    // Encode in place: bincode writes through a `Writer`; `Vec<u8>` is one.
    let written = bincode::serde::encode_into_std_write(value, out, CONFIG)?;
    debug_assert_eq!(out.len() - start, written);
    Ok(())
}

/// Decodes a value that must fill `bytes` exactly.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, CONFIG)?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}

/// Decodes a value from the start of `bytes` and returns it with the
/// number of bytes it used: for layouts that append a section after a
/// value whose own encoding must not change (the caller decodes the rest,
/// or refuses it).
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    Ok(bincode::serde::decode_from_slice(bytes, CONFIG)?)
}

/// A compressed encoding failed or does not fit its bound.
#[derive(Debug, thiserror::Error)]
pub enum CompressedError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("zstd: {0}")]
    Zstd(std::io::Error),
}

/// Encodes `value` and compresses it with zstd (level 3): for payloads
/// that are large and repetitive (package scans), carried as opaque bytes.
pub fn encode_compressed<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CompressedError> {
    let plain = encode(value)?;
    zstd::bulk::compress(&plain, 3).map_err(CompressedError::Zstd)
}

/// Decompresses at most `max_plain_bytes` (a larger content is refused,
/// never allocated) and decodes a value that must fill them exactly.
pub fn decode_compressed<T: DeserializeOwned>(
    bytes: &[u8],
    max_plain_bytes: usize,
) -> Result<T, CompressedError> {
    let plain = zstd::bulk::decompress(bytes, max_plain_bytes.min(DECODE_LIMIT_BYTES))
        .map_err(CompressedError::Zstd)?;
    Ok(decode(&plain)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_trailing_bytes_rejected() {
        let v: (u64, String) = (7, "x".into());
        let mut bytes = encode(&v).unwrap();
        assert_eq!(decode::<(u64, String)>(&bytes).unwrap(), v);
        bytes.push(0);
        assert!(matches!(
            decode::<(u64, String)>(&bytes),
            Err(CodecError::TrailingBytes(1))
        ));
    }

    #[test]
    fn a_prefix_decodes_and_says_where_the_rest_begins() {
        let mut bytes = encode(&(7u64, "x".to_string())).unwrap();
        let head = bytes.len();
        encode_into(&9u32, &mut bytes).unwrap();
        let (v, used) = decode_prefix::<(u64, String)>(&bytes).unwrap();
        assert_eq!((v, used), ((7, "x".to_string()), head));
        assert_eq!(decode::<u32>(&bytes[used..]).unwrap(), 9);
        assert!(decode_prefix::<(u64, String)>(&bytes[..head - 1]).is_err());
    }

    #[test]
    fn a_compressed_value_round_trips_and_an_oversized_content_is_refused() {
        let v: Vec<String> = (0..1000).map(|i| format!("package-{i}")).collect();
        let bytes = encode_compressed(&v).unwrap();
        assert!(bytes.len() < encode(&v).unwrap().len() / 2);
        assert_eq!(
            decode_compressed::<Vec<String>>(&bytes, 1 << 20).unwrap(),
            v
        );
        assert!(decode_compressed::<Vec<String>>(&bytes, 1000).is_err());
        assert!(decode_compressed::<Vec<String>>(&bytes[..bytes.len() / 2], 1 << 20).is_err());
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // A varint length claiming u64::MAX elements must fail on the limit,
        // not attempt the allocation.
        let bytes = [0xFFu8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(decode::<Vec<u8>>(&bytes).is_err());
        assert!(decode::<String>(&bytes).is_err());
    }
}
