//! Small value types shared by every part of the mesh: chunk ids, gossip topics, errors.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// The blake3 hash of a chunk's bytes; the only name a chunk has on the mesh.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`: its blake3 hash.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// True when `data` hashes to this id.
    pub fn matches(&self, data: &[u8]) -> bool {
        // blake3::Hash compares in constant time; not needed here but harmless.
        blake3::hash(data) == blake3::Hash::from_bytes(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<blake3::Hash> for ChunkId {
    fn from(h: blake3::Hash) -> Self {
        ChunkId(*h.as_bytes())
    }
}

impl From<[u8; 32]> for ChunkId {
    fn from(b: [u8; 32]) -> Self {
        ChunkId(b)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = ChunkId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a 32-byte blake3 hash")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ChunkId, E> {
                let arr: [u8; 32] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(ChunkId(arr))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<ChunkId, E> {
                self.visit_bytes(&v)
            }
        }
        d.deserialize_bytes(V)
    }
}

/// The gossip topics of roam's control traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// ADMM placement: dual variables and proposals.
    Placement,
    /// Job lifecycle events (started, moved, committed, finished).
    JobEvents,
    /// Node liveness and load heartbeats.
    Heartbeat,
}

impl Topic {
    pub const ALL: [Topic; 3] = [Topic::Placement, Topic::JobEvents, Topic::Heartbeat];

    /// The gossipsub topic string.
    pub fn name(self) -> &'static str {
        match self {
            Topic::Placement => "roam/placement/1",
            Topic::JobEvents => "roam/jobs/1",
            Topic::Heartbeat => "roam/heartbeat/1",
        }
    }

    pub fn from_name(name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.name() == name)
    }

    pub(crate) fn ident(self) -> libp2p::gossipsub::IdentTopic {
        libp2p::gossipsub::IdentTopic::new(self.name())
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors returned to users of the mesh handle.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("the mesh task has stopped")]
    Stopped,
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid swarm key: {0}")]
    SwarmKey(String),
    #[error("invalid identity key: {0}")]
    Identity(String),
    #[error("transport: {0}")]
    Transport(String),
    #[error("dial failed: {0}")]
    Dial(String),
    #[error("message of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("publish failed: {0}")]
    Publish(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("the peer sent an invalid response: {0}")]
    BadResponse(String),
    #[error("too many requests in flight")]
    Busy,
}
