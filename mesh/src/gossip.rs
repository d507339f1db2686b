//! Signed gossip envelopes.
//!
//! gossipsub's own signing mode verifies the signature of every copy of a message a node
//! receives (in the codec, before de-duplication): with a mesh degree of d, d signature
//! checks per message. roam instead runs gossipsub anonymous (message id = hash of the
//! bytes) and signs an envelope itself, checked once, on the first copy, before the
//! message is forwarded. Same guarantee (the author is who signed), a fraction of the CPU.

use std::collections::HashMap;

use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::types::Topic;

const DOMAIN: &[u8] = b"roam-gossip/1";
/// Author keys kept decoded.
const KEY_CACHE: usize = 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    #[serde(with = "serde_bytes")]
    author: Vec<u8>,
    seq: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

/// Why a gossip message was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GossipError {
    #[error("malformed envelope: {0}")]
    Malformed(String),
    #[error("author is not a valid ed25519 peer id")]
    BadAuthor,
    #[error("bad signature")]
    BadSignature,
    #[error("signing failed: {0}")]
    Signing(String),
}

fn signed_bytes(topic: Topic, seq: u64, data: &[u8]) -> Vec<u8> {
    let name = topic.name().as_bytes();
    let mut v = Vec::with_capacity(DOMAIN.len() + 1 + name.len() + 8 + data.len());
    v.extend_from_slice(DOMAIN);
    v.push(name.len() as u8);
    v.extend_from_slice(name);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// Wraps `data` in an envelope signed by `key`.
pub fn seal(key: &Keypair, topic: Topic, seq: u64, data: Vec<u8>) -> Result<Vec<u8>, GossipError> {
    let sig = key
        .sign(&signed_bytes(topic, seq, &data))
        .map_err(|e| GossipError::Signing(e.to_string()))?;
    let env = Envelope {
        author: key.public().to_peer_id().to_bytes(),
        seq,
        data,
        sig,
    };
    let mut out = Vec::new();
    ciborium::into_writer(&env, &mut out).map_err(|e| GossipError::Signing(e.to_string()))?;
    Ok(out)
}

/// Opens envelopes, caching the decoded keys of authors.
#[derive(Default)]
pub struct Opener {
    keys: HashMap<PeerId, PublicKey>,
}

impl Opener {
    /// Checks an envelope received on `topic`; returns its author and payload.
    pub fn open(&mut self, topic: Topic, bytes: &[u8]) -> Result<(PeerId, Vec<u8>), GossipError> {
        let env: Envelope =
            ciborium::from_reader(bytes).map_err(|e| GossipError::Malformed(e.to_string()))?;
        let author = PeerId::from_bytes(&env.author).map_err(|_| GossipError::BadAuthor)?;
        let key = match self.keys.get(&author) {
            Some(k) => k.clone(),
            None => {
                // An ed25519 peer id embeds its public key (identity multihash).
                let mh: &libp2p::multihash::Multihash<64> = author.as_ref();
                if mh.code() != 0 {
                    return Err(GossipError::BadAuthor);
                }
                let k = PublicKey::try_decode_protobuf(mh.digest())
                    .map_err(|_| GossipError::BadAuthor)?;
                if self.keys.len() >= KEY_CACHE {
                    self.keys.clear();
                }
                self.keys.insert(author, k.clone());
                k
            }
        };
        if !key.verify(&signed_bytes(topic, env.seq, &env.data), &env.sig) {
            return Err(GossipError::BadSignature);
        }
        Ok((author, env.data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open() {
        let k = Keypair::generate_ed25519();
        let env = seal(&k, Topic::Placement, 7, b"dual".to_vec()).unwrap();
        let mut o = Opener::default();
        let (author, data) = o.open(Topic::Placement, &env).unwrap();
        assert_eq!(author, k.public().to_peer_id());
        assert_eq!(data, b"dual");
        // Replayed on another topic: the signature covers the topic.
        assert_eq!(
            o.open(Topic::Heartbeat, &env),
            Err(GossipError::BadSignature)
        );
    }

    #[test]
    fn forged_author_or_payload_is_rejected() {
        let k = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let mut env: Envelope =
            ciborium::from_reader(&seal(&k, Topic::JobEvents, 1, b"x".to_vec()).unwrap()[..])
                .unwrap();
        env.author = other.public().to_peer_id().to_bytes();
        let mut b = Vec::new();
        ciborium::into_writer(&env, &mut b).unwrap();
        let mut o = Opener::default();
        assert_eq!(o.open(Topic::JobEvents, &b), Err(GossipError::BadSignature));

        let mut env: Envelope =
            ciborium::from_reader(&seal(&k, Topic::JobEvents, 1, b"x".to_vec()).unwrap()[..])
                .unwrap();
        env.data = b"y".to_vec();
        let mut b = Vec::new();
        ciborium::into_writer(&env, &mut b).unwrap();
        assert_eq!(o.open(Topic::JobEvents, &b), Err(GossipError::BadSignature));

        assert!(matches!(
            o.open(Topic::JobEvents, b"\xff\x00"),
            Err(GossipError::Malformed(_))
        ));
        env.author = vec![1, 2, 3];
        let mut b = Vec::new();
        ciborium::into_writer(&env, &mut b).unwrap();
        assert_eq!(o.open(Topic::JobEvents, &b), Err(GossipError::BadAuthor));
    }
}
