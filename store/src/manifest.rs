//! Checkpoint manifests: the versioned CBOR document that says which chunks
//! make up a job's state. A manifest is itself stored as a chunk, so its hash
//! is the checkpoint id and a checkpoint can be moved like any other chunk.
//!
//! Decoding is bounded ([`MAX_MANIFEST_BYTES`]) and every structural invariant
//! (sorted, in-range chunk indices, power-of-two chunk size, version) is
//! checked, because manifests arrive from peers and from disk.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::{malformed, Result, StoreError};
use crate::util::check_job_id;
use crate::ChunkId;

/// The manifest format version this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
/// Largest encoded manifest accepted (a 4 GiB memory at 64 KiB chunks needs ~3 MiB).
pub const MAX_MANIFEST_BYTES: usize = 64 << 20;
/// Smallest chunk size accepted.
pub const MIN_CHUNK_SIZE: u32 = 4 << 10;
/// Largest chunk size accepted.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Largest memory or blob length a manifest may describe.
pub const MAX_MAP_LEN: u64 = 1 << 40;
/// Largest number of extra named blobs.
pub const MAX_EXTRA_BLOBS: usize = 4096;

/// Check a chunk size: a power of two in `MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE`.
pub fn check_chunk_size(cs: u32) -> Result<()> {
    if !cs.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
        return Err(StoreError::InvalidArgument(format!(
            "chunk size {cs} is not a power of two in {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"
        )));
    }
    Ok(())
}

/// A byte string of `len` bytes cut into `chunk_size` chunks; `chunks` lists the
/// non-zero ones as `(index, id)` sorted by index. Absent chunks are all-zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMap {
    pub len: u64,
    pub chunk_size: u32,
    pub chunks: Vec<(u64, ChunkId)>,
}

impl ChunkMap {
    /// An all-zero map of `len` bytes.
    pub fn empty(len: u64, chunk_size: u32) -> ChunkMap {
        ChunkMap {
            len,
            chunk_size,
            chunks: Vec::new(),
        }
    }

    /// Number of chunk slots (present or zero).
    pub fn chunk_count(&self) -> u64 {
        self.len.div_ceil(self.chunk_size.max(1) as u64)
    }

    /// Byte range of slot `index` (the last one may be short).
    pub fn chunk_range(&self, index: u64) -> Range<u64> {
        let start = index.saturating_mul(self.chunk_size as u64).min(self.len);
        let end = start.saturating_add(self.chunk_size as u64).min(self.len);
        start..end
    }

    /// Length of slot `index`.
    pub fn chunk_len(&self, index: u64) -> u64 {
        let r = self.chunk_range(index);
        r.end - r.start
    }

    /// Id of slot `index`, `None` when it is all-zero.
    pub fn get(&self, index: u64) -> Option<ChunkId> {
        self.chunks
            .binary_search_by_key(&index, |e| e.0)
            .ok()
            .map(|i| self.chunks[i].1)
    }

    /// Bytes of the non-zero chunks.
    pub fn stored_len(&self) -> u64 {
        self.chunks.iter().map(|(i, _)| self.chunk_len(*i)).sum()
    }

    /// Check the invariants (chunk size, length bound, strictly increasing
    /// in-range indices).
    pub fn validate(&self, what: &'static str) -> Result<()> {
        check_chunk_size(self.chunk_size).map_err(|e| malformed(what, e))?;
        if self.len > MAX_MAP_LEN {
            return Err(malformed(
                what,
                format!("length {} over {MAX_MAP_LEN}", self.len),
            ));
        }
        let n = self.chunk_count();
        let mut prev: Option<u64> = None;
        for (i, _) in &self.chunks {
            if *i >= n {
                return Err(malformed(what, format!("chunk index {i} out of {n}")));
            }
            if prev.is_some_and(|p| p >= *i) {
                return Err(malformed(what, "chunk indices not strictly increasing"));
            }
            prev = Some(*i);
        }
        Ok(())
    }
}

/// A byte string stored as chunks (the module, files the job wrote...).
/// `hash` is the blake3 of the whole content, checked when it is read back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub hash: ChunkId,
    pub map: ChunkMap,
}

/// A checkpoint of one job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_VERSION`] when written by this build.
    pub version: u32,
    pub job: String,
    pub generation: u64,
    /// The module's bytes; `module.hash` is the module hash.
    pub module: BlobRef,
    /// Linear memory.
    pub memory: ChunkMap,
    /// Opaque to the store (the host's encoding of mutable globals).
    pub globals: ByteBuf,
    /// Opaque to the store (the host's WASI/resource state).
    pub host_state: ByteBuf,
    /// Further named blobs, e.g. files the job wrote.
    pub extra: BTreeMap<String, BlobRef>,
    /// The checkpoint this one was built from, if any (informational: every
    /// manifest lists all of its chunks, so it never needs its parent).
    pub parent: Option<ChunkId>,
}

#[derive(Deserialize)]
struct VersionProbe {
    version: u32,
}

impl Manifest {
    /// Canonical CBOR encoding (its blake3 is the checkpoint id).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.memory.chunks.len() * 40);
        // Serialising plain data into a Vec cannot fail.
        let _ = ciborium::into_writer(self, &mut out);
        out
    }

    /// Decode untrusted bytes: bounded size, known version, valid structure.
    pub fn decode(bytes: &[u8]) -> Result<Manifest> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(StoreError::TooLarge {
                what: "manifest",
                len: bytes.len() as u64,
                limit: MAX_MANIFEST_BYTES as u64,
            });
        }
        let probe: VersionProbe =
            ciborium::from_reader(bytes).map_err(|e| malformed("manifest", e))?;
        if probe.version != MANIFEST_VERSION {
            return Err(StoreError::UnsupportedVersion {
                what: "manifest",
                found: probe.version,
                supported: MANIFEST_VERSION,
            });
        }
        let m: Manifest = ciborium::from_reader(bytes).map_err(|e| malformed("manifest", e))?;
        m.validate()?;
        Ok(m)
    }

    /// Check every invariant a well-formed manifest has.
    pub fn validate(&self) -> Result<()> {
        if self.version != MANIFEST_VERSION {
            return Err(StoreError::UnsupportedVersion {
                what: "manifest",
                found: self.version,
                supported: MANIFEST_VERSION,
            });
        }
        check_job_id(&self.job).map_err(|e| malformed("manifest", e))?;
        self.module.map.validate("manifest module map")?;
        self.memory.validate("manifest memory map")?;
        if self.extra.len() > MAX_EXTRA_BLOBS {
            return Err(malformed("manifest", "too many extra blobs"));
        }
        for (name, b) in &self.extra {
            if name.is_empty() || name.len() > 4096 {
                return Err(malformed(
                    "manifest",
                    "extra blob name must be 1..=4096 bytes",
                ));
            }
            b.map.validate("manifest extra blob map")?;
        }
        Ok(())
    }

    /// Every chunk the checkpoint needs, with its uncompressed length
    /// (may repeat an id). Does not include the manifest itself.
    pub fn referenced(&self) -> impl Iterator<Item = (ChunkId, u64)> + '_ {
        std::iter::once(&self.memory)
            .chain(std::iter::once(&self.module.map))
            .chain(self.extra.values().map(|b| &b.map))
            .flat_map(|map| {
                map.chunks
                    .iter()
                    .map(move |(i, id)| (*id, map.chunk_len(*i)))
            })
    }
}

/// A manifest together with its id (the hash of its stored encoding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub id: ChunkId,
    pub manifest: Manifest,
}

/// A listed checkpoint: what the store's ref index says about it.
/// Ordered by `(job, generation, seq)`; `seq` grows with every commit in this
/// store, so it orders checkpoints of equal generation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CheckpointRef {
    pub job: String,
    pub generation: u64,
    pub seq: u64,
    pub id: ChunkId,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        let id = |s: &str| ChunkId::of(s.as_bytes());
        Manifest {
            version: MANIFEST_VERSION,
            job: "job-1".into(),
            generation: 3,
            module: BlobRef {
                hash: id("m"),
                map: ChunkMap {
                    len: 100,
                    chunk_size: 65536,
                    chunks: vec![(0, id("m"))],
                },
            },
            memory: ChunkMap {
                len: 5 * 65536,
                chunk_size: 65536,
                chunks: vec![(0, id("a")), (3, id("b")), (4, id("c"))],
            },
            globals: ByteBuf::from(vec![1, 2, 3]),
            host_state: ByteBuf::from(vec![4; 10]),
            extra: [(
                "out.txt".to_string(),
                BlobRef {
                    hash: id("f"),
                    map: ChunkMap {
                        len: 10,
                        chunk_size: 4096,
                        chunks: vec![(0, id("f"))],
                    },
                },
            )]
            .into_iter()
            .collect(),
            parent: Some(id("p")),
        }
    }

    #[test]
    fn roundtrip_and_referenced() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        // Deterministic encoding: same manifest, same id.
        assert_eq!(ChunkId::of(&m.encode()), ChunkId::of(&bytes));
        let refs: Vec<_> = m.referenced().collect();
        assert_eq!(refs.len(), 5);
        assert!(refs.contains(&(ChunkId::of(b"f"), 10)));
        assert!(refs.contains(&(ChunkId::of(b"m"), 100)));
        assert_eq!(m.memory.get(3), Some(ChunkId::of(b"b")));
        assert_eq!(m.memory.get(2), None);
    }

    #[test]
    fn unknown_version_is_typed() {
        let mut m = sample();
        m.version = 2;
        let mut bytes = Vec::new();
        ciborium::into_writer(&m, &mut bytes).unwrap();
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(StoreError::UnsupportedVersion { found: 2, .. })
        ));
        // A future format that is not even shaped like this one.
        #[derive(Serialize)]
        struct Future {
            version: u32,
            stuff: Vec<String>,
        }
        let mut bytes = Vec::new();
        ciborium::into_writer(
            &Future {
                version: 7,
                stuff: vec!["x".into()],
            },
            &mut bytes,
        )
        .unwrap();
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(StoreError::UnsupportedVersion { found: 7, .. })
        ));
    }

    #[test]
    fn invariants_are_checked() {
        let enc = |m: &Manifest| {
            let mut b = Vec::new();
            ciborium::into_writer(m, &mut b).unwrap();
            b
        };
        let mut m = sample();
        m.memory.chunks.swap(0, 1);
        assert!(matches!(
            Manifest::decode(&enc(&m)),
            Err(StoreError::Malformed { .. })
        ));
        let mut m = sample();
        m.memory.chunks.push((5, ChunkId::of(b"z")));
        assert!(matches!(
            Manifest::decode(&enc(&m)),
            Err(StoreError::Malformed { .. })
        ));
        let mut m = sample();
        m.memory.chunk_size = 65535;
        assert!(matches!(
            Manifest::decode(&enc(&m)),
            Err(StoreError::Malformed { .. })
        ));
        let mut m = sample();
        m.job = String::new();
        assert!(matches!(
            Manifest::decode(&enc(&m)),
            Err(StoreError::Malformed { .. })
        ));
        let too_big = vec![0u8; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            Manifest::decode(&too_big),
            Err(StoreError::TooLarge { .. })
        ));
    }

    #[test]
    fn huge_declared_lengths_do_not_allocate() {
        // A CBOR map whose "memory.chunks" array claims 2^60 entries.
        let m = sample();
        let mut bytes = m.encode();
        // Find the 3-entry chunks array header (0x83 followed by a 2-array 0x82 0x00)
        let pos = bytes
            .windows(3)
            .position(|w| w == [0x83, 0x82, 0x00])
            .unwrap();
        let mut evil = bytes[..pos].to_vec();
        evil.push(0x9b); // array, 8-byte length
        evil.extend_from_slice(&(1u64 << 60).to_be_bytes());
        evil.extend_from_slice(&bytes[pos + 1..]);
        assert!(Manifest::decode(&evil).is_err());
        bytes.truncate(bytes.len() / 2);
        assert!(Manifest::decode(&bytes).is_err());
    }
}
