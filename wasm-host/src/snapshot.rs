//! The captured state of a paused job, and its self-checking byte format.
//!
//! File layout (all integers little-endian):
//!
//! ```text
//! "ROAMSNAP" | format: u32 | manifest_len: u32 | manifest (CBOR) | memory chunks | blake3(all before): 32 bytes
//! ```
//!
//! The manifest lists the memory size and, for every non-zero chunk of memory, its index
//! and blake3 hash; the chunk bytes follow in that order (all-zero chunks are left out).
//! A reader checks the trailing hash first, so any flipped or missing byte is refused
//! before anything is decoded, then bounds-checks every field. It never allocates more
//! than the input's own length justifies.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::SnapshotError;
use crate::host::{hex, Hash32};
use crate::wasi::{FileImage, WasiState};

pub const MAGIC: &[u8; 8] = b"ROAMSNAP";
pub const FORMAT_VERSION: u32 = 1;
/// Memory chunk size of the file format (one Wasm page).
pub const CHUNK: usize = 64 * 1024;
/// Largest manifest a reader accepts.
pub const MAX_MANIFEST: usize = 256 << 20;
/// Largest linear memory a snapshot may describe (wasm32: 4 GiB).
pub const MAX_MEMORY: u64 = 4 << 30;

/// A global's value. Floats are kept as bits so NaN payloads survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GlobalValue {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
    V128(u128),
}

/// Everything needed to resume a paused job in a fresh instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// blake3 of the (instrumented) module bytes the job runs.
    pub module_hash: Hash32,
    /// The module bytes themselves, so a snapshot file is self-contained (optional).
    pub module: Option<Vec<u8>>,
    pub memory: Vec<u8>,
    /// Mutable globals by export name.
    pub globals: Vec<(String, GlobalValue)>,
    /// The Asyncify-unwound call stack.
    pub stack: Vec<u8>,
    pub wasi: WasiState,
    pub files: Vec<FileImage>,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    #[serde(with = "serde_bytes")]
    module_hash: [u8; 32],
    module: Option<ByteBuf>,
    memory_len: u64,
    /// (chunk index, blake3 of the chunk) for every non-zero chunk, ascending.
    chunks: Vec<(u32, ByteBuf)>,
    globals: Vec<(String, GlobalValue)>,
    stack: ByteBuf,
    wasi: WasiState,
    files: Vec<FileImage>,
}

/// Whether a chunk is all zeros (word-at-a-time; the common case exits early).
pub fn is_zero(chunk: &[u8]) -> bool {
    let (head, words, tail) = unsafe { chunk.align_to::<u64>() };
    head.iter().all(|b| *b == 0) && words.iter().all(|w| *w == 0) && tail.iter().all(|b| *b == 0)
}

impl Snapshot {
    /// Serialises to the self-checking file format.
    pub fn encode(&self) -> Vec<u8> {
        let mut chunks = Vec::new();
        let mut payload_len = 0usize;
        for (i, c) in self.memory.chunks(CHUNK).enumerate() {
            if !is_zero(c) {
                chunks.push((i as u32, ByteBuf::from(blake3::hash(c).as_bytes().to_vec())));
                payload_len += c.len();
            }
        }
        let manifest = Manifest {
            module_hash: self.module_hash,
            module: self.module.clone().map(ByteBuf::from),
            memory_len: self.memory.len() as u64,
            chunks,
            globals: self.globals.clone(),
            stack: ByteBuf::from(self.stack.clone()),
            wasi: self.wasi.clone(),
            files: self.files.clone(),
        };
        let mut cbor = Vec::new();
        // Serialising plain owned data into a Vec cannot fail.
        if let Err(e) = ciborium::into_writer(&manifest, &mut cbor) {
            unreachable!("CBOR encoding of a snapshot manifest failed: {e}");
        }
        let mut out = Vec::with_capacity(16 + cbor.len() + payload_len + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(cbor.len() as u32).to_le_bytes());
        out.extend_from_slice(&cbor);
        for (i, _) in &manifest.chunks {
            let start = *i as usize * CHUNK;
            let end = (start + CHUNK).min(self.memory.len());
            out.extend_from_slice(&self.memory[start..end]);
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// Parses and verifies a snapshot file. Every failure is a typed error.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        let have = bytes.len() as u64;
        if bytes.len() < 8 {
            return Err(SnapshotError::Truncated { needed: 8, have });
        }
        if &bytes[..8] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        if bytes.len() < 16 + 32 {
            return Err(SnapshotError::Truncated { needed: 48, have });
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != FORMAT_VERSION {
            return Err(SnapshotError::Version {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return Err(SnapshotError::Checksum);
        }
        let manifest_len =
            u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
        if manifest_len > MAX_MANIFEST || 16 + manifest_len > body.len() {
            return Err(SnapshotError::Truncated {
                needed: 16 + manifest_len as u64,
                have: body.len() as u64,
            });
        }
        let manifest: Manifest = ciborium::from_reader(&body[16..16 + manifest_len])
            .map_err(|e| SnapshotError::Manifest(e.to_string()))?;
        if manifest.memory_len > MAX_MEMORY || !manifest.memory_len.is_multiple_of(CHUNK as u64) {
            return Err(SnapshotError::Bounds {
                field: "memory_len",
                detail: format!(
                    "{} is not a whole number of 64 KiB pages up to 4 GiB",
                    manifest.memory_len
                ),
            });
        }
        let n_chunks = manifest.memory_len / CHUNK as u64;
        let payload = &body[16 + manifest_len..];
        if payload.len() as u64 != manifest.chunks.len() as u64 * CHUNK as u64 {
            return Err(SnapshotError::Bounds {
                field: "chunks",
                detail: format!(
                    "{} chunks listed but {} payload bytes present",
                    manifest.chunks.len(),
                    payload.len()
                ),
            });
        }
        // Checked, not `as`: a host whose usize is narrower than the memory refuses it.
        let memory_len =
            usize::try_from(manifest.memory_len).map_err(|_| SnapshotError::Bounds {
                field: "memory_len",
                detail: format!(
                    "{} does not fit this host's address space",
                    manifest.memory_len
                ),
            })?;
        let mut memory = vec![0u8; memory_len];
        let mut last: Option<u32> = None;
        for (k, (index, hash)) in manifest.chunks.iter().enumerate() {
            if u64::from(*index) >= n_chunks || last.is_some_and(|l| l >= *index) {
                return Err(SnapshotError::Bounds {
                    field: "chunks",
                    detail: format!("chunk index {index} out of order or beyond memory"),
                });
            }
            last = Some(*index);
            let src = &payload[k * CHUNK..(k + 1) * CHUNK];
            if blake3::hash(src).as_bytes().as_slice() != hash.as_slice() {
                return Err(SnapshotError::ChunkHash { index: *index });
            }
            let start = *index as usize * CHUNK;
            memory[start..start + CHUNK].copy_from_slice(src);
        }
        if let Some(m) = &manifest.module {
            if blake3::hash(m).as_bytes() != &manifest.module_hash {
                return Err(SnapshotError::ModuleMismatch {
                    expected: hex(&manifest.module_hash),
                    found: hex(blake3::hash(m).as_bytes()),
                });
            }
        }
        Ok(Snapshot {
            module_hash: manifest.module_hash,
            module: manifest.module.map(|b| b.into_vec()),
            memory,
            globals: manifest.globals,
            stack: manifest.stack.into_vec(),
            wasi: manifest.wasi,
            files: manifest.files,
        })
    }
}

/// Format version of [`JobState`] and [`JobGlobals`].
pub const JOB_STATE_FORMAT: u32 = 1;

/// A paused job's state without memory, globals and files: what a checkpoint in a
/// [`store::Store`] keeps as its manifest's `host_state` (memory is the chunk map,
/// globals are [`JobGlobals`], files are extra blobs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    pub format: u32,
    /// blake3 of the (instrumented) module bytes the job runs.
    #[serde(with = "serde_bytes")]
    pub module_hash: [u8; 32],
    /// The Asyncify-unwound call stack.
    pub stack: ByteBuf,
    pub wasi: WasiState,
}

/// A paused job's mutable globals, by export name: a checkpoint manifest's `globals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobGlobals {
    pub format: u32,
    pub globals: Vec<(String, GlobalValue)>,
}

fn to_cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Serialising plain owned data into a Vec cannot fail.
    if let Err(e) = ciborium::into_writer(value, &mut out) {
        unreachable!("CBOR encoding of job state failed: {e}");
    }
    out
}

fn from_cbor<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    format: impl Fn(&T) -> u32,
) -> Result<T, SnapshotError> {
    // Bounded by the caller: these bytes come from a manifest the store has size-checked.
    let v: T = ciborium::from_reader(bytes)
        .map_err(|e| SnapshotError::Manifest(format!("{what}: {e}")))?;
    let found = format(&v);
    if found != JOB_STATE_FORMAT {
        return Err(SnapshotError::Version {
            found,
            supported: JOB_STATE_FORMAT,
        });
    }
    Ok(v)
}

impl JobState {
    pub fn encode(&self) -> Vec<u8> {
        to_cbor(self)
    }
    /// Decodes untrusted bytes; a wrong format version is a typed error.
    pub fn decode(bytes: &[u8]) -> Result<JobState, SnapshotError> {
        from_cbor("job state", bytes, |s: &JobState| s.format)
    }
}

impl JobGlobals {
    pub fn encode(&self) -> Vec<u8> {
        to_cbor(self)
    }
    /// Decodes untrusted bytes; a wrong format version is a typed error.
    pub fn decode(bytes: &[u8]) -> Result<JobGlobals, SnapshotError> {
        from_cbor("job globals", bytes, |g: &JobGlobals| g.format)
    }
}
