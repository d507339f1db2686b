//! The names recovery works with: nodes, checkpoints, and a checkpoint's
//! place in a job's history. Kept here (not taken from `store`/`mesh`) so the
//! core depends on nothing but serde and blake3; the shell converts.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A node, by a name every node spells the same way. Rendezvous hashing and
/// tie-breaks depend on it, so the shell must use a unique, stable id (the
/// libp2p peer id in base58, or the chaos harness's `n1`..`nN`), never a
/// free-form name two nodes could share.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl NodeId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> NodeId {
        NodeId(s.to_string())
    }
}

impl From<String> for NodeId {
    fn from(s: String) -> NodeId {
        NodeId(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A checkpoint's id: the blake3 hash of its manifest (`store::ChunkId`'s
/// bytes). Serialises as 64 hex digits in human-readable formats (JSON, TOML)
/// and as 32 bytes otherwise (CBOR).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CheckpointId(pub [u8; 32]);

impl CheckpointId {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Exactly 64 hex digits, either case.
    pub fn from_hex(s: &str) -> Option<CheckpointId> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(CheckpointId(out))
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CheckpointId({})", &self.to_hex()[..12])
    }
}

impl Serialize for CheckpointId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

struct IdVisitor;

impl Visitor<'_> for IdVisitor {
    type Value = CheckpointId;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a checkpoint id (64 hex digits or 32 bytes)")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<CheckpointId, E> {
        CheckpointId::from_hex(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<CheckpointId, E> {
        <[u8; 32]>::try_from(v)
            .map(CheckpointId)
            .map_err(|_| E::invalid_length(v.len(), &self))
    }
}

impl<'de> Deserialize<'de> for CheckpointId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CheckpointId, D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(IdVisitor)
        } else {
            d.deserialize_bytes(IdVisitor)
        }
    }
}

/// A checkpoint and its place in the job's history. The order is the order of
/// recency: generation first (a move or a recovery starts a new one), then
/// the sequence number within the generation; the id only breaks ties so the
/// order is total (two different checkpoints with the same generation and
/// sequence number are a conflict the bookkeeping refuses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CheckpointRef {
    pub generation: u64,
    pub seq: u64,
    pub id: CheckpointId,
}

impl fmt::Display for CheckpointRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "g{}#{} ({})",
            self.generation,
            self.seq,
            &self.id.to_hex()[..12]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ck(generation: u64, seq: u64, b: u8) -> CheckpointRef {
        CheckpointRef {
            generation,
            seq,
            id: CheckpointId([b; 32]),
        }
    }

    #[test]
    fn recency_is_generation_then_seq() {
        assert!(ck(2, 0, 9) > ck(1, 99, 0));
        assert!(ck(1, 5, 0) > ck(1, 4, 9));
        assert_eq!(ck(3, 1, 2).max(ck(3, 1, 1)).id, CheckpointId([2; 32]));
    }

    #[test]
    fn id_hex_round_trip_and_refusals() {
        let id = CheckpointId(std::array::from_fn(|i| i as u8 * 7));
        assert_eq!(CheckpointId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(
            CheckpointId::from_hex(&id.to_hex().to_uppercase()),
            Some(id)
        );
        for bad in ["", "00", &"g".repeat(64), &"é".repeat(32), &"0".repeat(65)] {
            assert_eq!(CheckpointId::from_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn serde_hex_in_json_bytes_in_cbor() {
        let c = ck(4, 2, 0xab);
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(&"ab".repeat(32)), "{json}");
        assert_eq!(serde_json::from_str::<CheckpointRef>(&json).unwrap(), c);
        let mut cbor = Vec::new();
        ciborium::into_writer(&c, &mut cbor).unwrap();
        assert!(cbor.len() < 64, "bytes, not hex: {} bytes", cbor.len());
        assert_eq!(
            ciborium::from_reader::<CheckpointRef, _>(&cbor[..]).unwrap(),
            c
        );
        assert!(serde_json::from_str::<CheckpointId>("\"abc\"").is_err());
    }
}
