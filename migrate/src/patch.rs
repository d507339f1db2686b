//! The final manifest sent as a patch of the offered state.
//!
//! A manifest lists every memory chunk of the job: ~45 bytes of CBOR per 64 KiB
//! chunk, ~190 KB for 256 MiB, 15 ms at 100 Mbit/s. The Final travels while the job
//! is paused, so those bytes are downtime, yet the destination already holds most
//! of them: the Offer carried the memory map of a checkpoint taken moments before.
//! [`ManifestPatch`] carries only what changed since (the slots rewritten or newly
//! used, and the slots now all-zero) plus the manifest's small fields; the
//! destination rebuilds the full manifest and checks it against the manifest id,
//! so a wrong patch is caught as surely as a wrong manifest.

use crate::ids::FastSet;

use serde::{Deserialize, Serialize};
use store::{ChunkId, ChunkMap, Manifest};

use crate::msg::MessageError;

/// The final manifest as a difference from the offered memory map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPatch {
    /// CBOR of the final manifest with `memory.chunks` cut down to the entries whose
    /// id differs from the offered memory map (or whose slot it lacks).
    #[serde(with = "crate::bytes")]
    pub head: Vec<u8>,
    /// Slots the offered memory map lists that are all-zero in the final manifest.
    pub zeroed: Vec<u64>,
}

impl ManifestPatch {
    /// The patch that turns `offered` (the Offer's memory map) into `manifest`.
    pub fn between(offered: &ChunkMap, manifest: &Manifest) -> ManifestPatch {
        let (base, now) = (&offered.chunks, &manifest.memory.chunks);
        let mut changed = Vec::new();
        let mut zeroed = Vec::new();
        let (mut i, mut j) = (0, 0);
        // Both lists are sorted by slot (a validated map's invariant).
        while i < base.len() || j < now.len() {
            match (base.get(i), now.get(j)) {
                (Some(b), Some(n)) if b.0 == n.0 => {
                    if b.1 != n.1 {
                        changed.push(*n);
                    }
                    i += 1;
                    j += 1;
                }
                (Some(b), Some(n)) if b.0 < n.0 => {
                    zeroed.push(b.0);
                    i += 1;
                }
                (Some(b), None) => {
                    zeroed.push(b.0);
                    i += 1;
                }
                (_, Some(n)) => {
                    changed.push(*n);
                    j += 1;
                }
                (None, None) => break,
            }
        }
        let head = Manifest {
            memory: ChunkMap {
                len: manifest.memory.len,
                chunk_size: manifest.memory.chunk_size,
                chunks: changed,
            },
            version: manifest.version,
            job: manifest.job.clone(),
            generation: manifest.generation,
            module: manifest.module.clone(),
            globals: manifest.globals.clone(),
            host_state: manifest.host_state.clone(),
            extra: manifest.extra.clone(),
            parent: manifest.parent,
        };
        ManifestPatch {
            head: head.encode(),
            zeroed,
        }
    }

    /// Rebuilds the full manifest on `offered` and checks it against `manifest_id`:
    /// the decoded manifest and its encoding (whose blake3 is `manifest_id`).
    pub fn apply(
        &self,
        offered: &ChunkMap,
        manifest_id: &ChunkId,
    ) -> Result<(Manifest, Vec<u8>), MessageError> {
        let malformed = |detail: String| MessageError::Malformed {
            what: "manifest patch",
            detail,
        };
        let mut m = Manifest::decode(&self.head).map_err(|e| malformed(e.to_string()))?;
        let zeroed: FastSet<u64> = self.zeroed.iter().copied().collect();
        if zeroed.len() != self.zeroed.len() {
            return Err(malformed("a zeroed slot is listed twice".into()));
        }
        let changed = std::mem::take(&mut m.memory.chunks);
        let mut merged = Vec::with_capacity(offered.chunks.len() + changed.len());
        let mut unmatched = zeroed.len();
        let (mut i, mut j) = (0, 0);
        while i < offered.chunks.len() || j < changed.len() {
            let (b, c) = (offered.chunks.get(i), changed.get(j));
            match (b, c) {
                (Some(b), Some(c)) if b.0 == c.0 => {
                    if zeroed.contains(&b.0) {
                        return Err(malformed(format!("slot {} both changed and zeroed", b.0)));
                    }
                    merged.push(*c);
                    i += 1;
                    j += 1;
                }
                (Some(b), c) if c.is_none_or(|c| b.0 < c.0) => {
                    if zeroed.contains(&b.0) {
                        unmatched -= 1;
                    } else {
                        merged.push(*b);
                    }
                    i += 1;
                }
                (_, Some(c)) => {
                    merged.push(*c);
                    j += 1;
                }
                _ => break,
            }
        }
        if unmatched != 0 {
            return Err(malformed(format!(
                "{unmatched} zeroed slots are not in the offered map"
            )));
        }
        m.memory.chunks = merged;
        m.validate().map_err(|e| malformed(e.to_string()))?;
        let bytes = m.encode();
        let actual = ChunkId::of(&bytes);
        if actual != *manifest_id {
            return Err(MessageError::ManifestHashMismatch {
                claimed: *manifest_id,
                actual,
            });
        }
        Ok((m, bytes))
    }
}
