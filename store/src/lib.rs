//! Content-addressed (blake3) chunk store for roam's job checkpoints.
//!
//! A job's state moves and survives as *chunks* named by the blake3 hash of
//! their uncompressed bytes ([`ChunkId`]). Linear memory is cut into fixed
//! chunks (64 KiB by default); all-zero chunks are never stored or sent, they
//! are simply absent from the chunk map. A checkpoint is a versioned CBOR
//! [`Manifest`] (job, generation, module, memory map, opaque globals and host
//! state, extra blobs, parent) stored as a chunk itself: its hash is the
//! checkpoint id. Identical chunks are stored once across jobs and checkpoints.
//!
//! ```text
//! Store ── MemTier (sharded HashMap, byte budget)   the whole store, or a cache
//!      └─ DiskTier (DIR/chunks, DIR/checkpoints)     crash-safe, verified
//! ```
//!
//! - Build checkpoints with [`Store::checkpoint_full`] (hashes every non-zero
//!   chunk, on a few threads) or [`Store::checkpoint_incremental`] (hashes the
//!   dirty chunks only, reuses the parent's ids for the rest).
//! - Restore with [`Store::restore_memory`] / [`Store::restore_memory_into`];
//!   every chunk read is verified, a bad one is [`StoreError::Corrupt`].
//! - Move chunks between nodes as [`EncodedChunk`] (optionally zstd, bounded
//!   decompression, verified on receipt) and commit a received manifest with
//!   [`Store::import_manifest`].
//! - Keep the store bounded with [`Store::gc`] and a [`RetentionPolicy`];
//!   check it with [`Store::verify`]; measure it with [`Store::stats`] and
//!   [`Store::checkpoint_sizes`].
//!
//! # Size limit
//! A store has a byte limit (`cache_bytes` for an in-memory store,
//! `disk_limit_bytes` for a disk store). A put that would exceed it fails with
//! [`StoreError::Full`]; nothing is evicted from an authoritative tier behind
//! the caller's back. The caller runs [`Store::gc`] with a tighter policy and
//! retries. A checkpoint that failed half-way leaves unreferenced chunks that
//! the next GC removes; it is never listed.
//!
//! # Crash safety (disk tier)
//! Every file is written to `DIR/tmp/`, made durable, renamed into place and its
//! directory made durable before anything depending on it is written, so no
//! file under its final name is ever torn. Chunks are flushed in batches (one
//! `syncfs` per [`Store::sync`] on Linux, not an fsync per chunk): a chunk put
//! with [`Store::put_chunk`] is readable at once and durable after the next
//! `sync`, which every checkpoint commit runs before writing its manifest. A
//! checkpoint's chunks come first, its manifest chunk next, its ref entry
//! (`DIR/checkpoints/<job>/<generation>-<seq>-<id>`) last; only checkpoints
//! with both are listed. GC deletes refs before chunks. Stale temporaries are
//! removed on open; a `LOCK` file (flock) keeps a second process out.
//!
//! # Threads
//! All methods take `&self`; share a `Store` in an `Arc`. Checkpoints hash
//! and restore chunks on `StoreConfig::threads` threads (scoped, pulling work
//! from a shared queue). Each chunk is copied into a store buffer first and
//! named by the hash of that copy, so an id always matches the stored bytes.

mod disk;
mod encoded;
mod error;
mod id;
mod maint;
mod manifest;
mod mem;
mod store;
mod util;

pub use encoded::{Codec, Compression, EncodedChunk};
pub use error::{Result, StoreError};
pub use id::{ChunkId, ParseChunkIdError};
pub use maint::{CheckpointSize, GcReport, Problem, RetentionPolicy, StoreStats, VerifyReport};
pub use manifest::{
    check_chunk_size, BlobRef, Checkpoint, CheckpointRef, ChunkMap, Manifest, MANIFEST_VERSION,
    MAX_CHUNK_SIZE, MAX_EXTRA_BLOBS, MAX_MANIFEST_BYTES, MAX_MAP_LEN, MIN_CHUNK_SIZE,
};
pub use store::{
    CheckpointInfo, CheckpointMeta, Store, StoreConfig, MAX_NOTES, MAX_NOTE_BYTES, MAX_STORED_CHUNK,
};
pub use util::MAX_JOB_ID_LEN;
