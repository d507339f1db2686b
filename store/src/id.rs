//! `ChunkId`: the name of every stored object (chunk, blob piece, manifest).
//!
//! A chunk is named by the blake3 hash of its *uncompressed* bytes, so the name
//! never depends on how the bytes travel or rest, and two equal chunks anywhere
//! in the swarm have the same name (deduplication for free).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// blake3 hash of a chunk's uncompressed bytes. Displays as 64 lowercase hex
/// digits; serialises as a 32-byte CBOR byte string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Hash `data` (single-threaded blake3).
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }

    /// Parse exactly 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Option<ChunkId> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
        }
        Some(ChunkId(out))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

/// Error of [`ChunkId::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a chunk id is 64 hex digits")]
pub struct ParseChunkIdError;

impl FromStr for ChunkId {
    type Err = ParseChunkIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChunkId::from_hex(s).ok_or(ParseChunkIdError)
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

struct IdVisitor;

impl<'de> Visitor<'de> for IdVisitor {
    type Value = ChunkId;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("32 bytes")
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ChunkId, E> {
        let arr: [u8; 32] = v
            .try_into()
            .map_err(|_| E::invalid_length(v.len(), &self))?;
        Ok(ChunkId(arr))
    }
    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<ChunkId, E> {
        self.visit_bytes(v)
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<ChunkId, E> {
        self.visit_bytes(&v)
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ChunkId, D::Error> {
        d.deserialize_bytes(IdVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrip_and_rejects() {
        let id = ChunkId::of(b"hello");
        assert_eq!(id.to_string().parse::<ChunkId>().unwrap(), id);
        assert_eq!(id.to_string(), blake3::hash(b"hello").to_hex().as_str());
        assert!("zz".parse::<ChunkId>().is_err());
        assert!(id.to_string()[1..].parse::<ChunkId>().is_err());
        let mut bad = id.to_string();
        bad.replace_range(0..1, "g");
        assert!(bad.parse::<ChunkId>().is_err());
    }

    #[test]
    fn cbor_is_a_byte_string() {
        let id = ChunkId::of(b"x");
        let mut buf = Vec::new();
        ciborium::into_writer(&id, &mut buf).unwrap();
        assert_eq!(buf.len(), 34); // 0x58 0x20 + 32 bytes
        assert_eq!(buf[0], 0x58);
        let back: ChunkId = ciborium::from_reader(&buf[..]).unwrap();
        assert_eq!(back, id);
        // Wrong length is an error, not a panic.
        let short: Result<ChunkId, _> = ciborium::from_reader(&buf[..20]);
        assert!(short.is_err());
        let mut b31 = Vec::new();
        ciborium::into_writer(&serde_bytes::Bytes::new(&[1u8; 31]), &mut b31).unwrap();
        assert!(ciborium::from_reader::<ChunkId, _>(&b31[..]).is_err());
    }
}
