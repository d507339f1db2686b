//! The `Store`: one API over the two tiers (memory only, or a disk directory
//! with the memory tier as a cache in front), plus building checkpoints from a
//! memory image and restoring them.
//!
//! Threading: every method takes `&self`; the store is `Send + Sync` and meant
//! to be shared in an `Arc`. Chunk maps are sharded behind locks; building a
//! checkpoint hashes on up to `StoreConfig::threads` threads
//! (`std::thread::scope`). Checkpoint writes and GC exclude each other, so GC
//! never removes the chunks of a checkpoint being written.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use crate::disk::DiskTier;
use crate::encoded::{Compression, EncodedChunk};
use crate::error::{Result, StoreError};
use crate::manifest::{
    check_chunk_size, BlobRef, Checkpoint, CheckpointRef, ChunkMap, Manifest, MANIFEST_VERSION,
    MAX_MANIFEST_BYTES,
};
use crate::mem::{lock, MemTier};
use crate::util::{check_job_id, is_zero, par_queue, try_zeroed_vec};
use crate::ChunkId;

/// Chunks per unit of work handed to a hashing/restoring thread.
const GRAIN: usize = 16;

/// Largest chunk the store accepts or reads back (a manifest is a chunk too).
pub const MAX_STORED_CHUNK: usize = MAX_MANIFEST_BYTES;

/// Largest note ([`Store::put_note_if`]).
pub const MAX_NOTE_BYTES: usize = 64 << 10;
/// Most notes a store keeps.
pub const MAX_NOTES: usize = 65_536;

/// A note's name: 1..=128 bytes of `[A-Za-z0-9._-]`, not starting with a dot
/// (it is a file name in a disk store).
pub(crate) fn check_note_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidArgument(format!(
            "note name {name:?}: 1..=128 of [A-Za-z0-9._-], not starting with a dot"
        )))
    }
}

/// Settings of a store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Chunk size for memory images and blobs: power of two, 4 KiB..=16 MiB.
    pub chunk_size: u32,
    /// Byte budget of the memory tier. For `Store::in_memory` this is the
    /// store's size limit (`Full` beyond it); in front of a disk it is a cache
    /// (oldest entries evicted). Buffers kept for reuse count in it.
    pub cache_bytes: u64,
    /// Size limit of the disk tier (bytes of chunk files); `Full` beyond it.
    pub disk_limit_bytes: u64,
    /// Compression of chunk files on disk.
    pub disk_compression: Compression,
    /// Threads used to hash/store/restore chunks (the caller's thread is one).
    pub threads: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            chunk_size: 64 << 10,
            cache_bytes: 512 << 20,
            disk_limit_bytes: u64::MAX,
            disk_compression: Compression::Zstd(1),
            threads: 2,
        }
    }
}

/// What a job's checkpoint carries besides memory.
#[derive(Clone, Debug)]
pub struct CheckpointMeta {
    pub job: String,
    pub generation: u64,
    /// The module, stored with [`Store::put_blob`].
    pub module: BlobRef,
    pub globals: Vec<u8>,
    pub host_state: Vec<u8>,
    pub extra: BTreeMap<String, BlobRef>,
}

/// Result of building a checkpoint.
#[derive(Clone, Debug)]
pub struct CheckpointInfo {
    pub checkpoint: Checkpoint,
    /// Memory chunks hashed (dirty ones for an incremental).
    pub chunks_hashed: u64,
    /// Chunks newly stored (memory chunks + the manifest); dedup hits excluded.
    pub chunks_written: u64,
    /// Uncompressed bytes of those chunks.
    pub bytes_written: u64,
}

impl CheckpointInfo {
    pub fn id(&self) -> ChunkId {
        self.checkpoint.id
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub chunks_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub dedup_hits: AtomicU64,
}

/// Listed checkpoints: job -> (generation, seq) -> id.
pub(crate) type Refs = BTreeMap<String, BTreeMap<(u64, u64), ChunkId>>;

/// A content-addressed chunk store with checkpoint manifests. See the crate doc.
pub struct Store {
    pub(crate) cfg: StoreConfig,
    pub(crate) mem: MemTier,
    pub(crate) disk: Option<DiskTier>,
    pub(crate) refs: Mutex<Refs>,
    /// Small named records kept with the checkpoints ([`Store::put_note_if`]).
    pub(crate) notes: Mutex<BTreeMap<String, Vec<u8>>>,
    pub(crate) next_seq: AtomicU64,
    /// Read: writing a checkpoint. Write: GC.
    pub(crate) commit_lock: RwLock<()>,
    pub(crate) counters: Counters,
}

enum Slot {
    Zero,
    Chunk { id: ChunkId, written: bool },
}

impl Store {
    /// A store that lives in memory only; `cfg.cache_bytes` is its size limit.
    pub fn in_memory(cfg: StoreConfig) -> Result<Store> {
        check_chunk_size(cfg.chunk_size)?;
        Ok(Store {
            mem: MemTier::new(cfg.cache_bytes, false, cfg.chunk_size as usize),
            disk: None,
            refs: Mutex::default(),
            notes: Mutex::default(),
            next_seq: AtomicU64::new(1),
            commit_lock: RwLock::new(()),
            counters: Counters::default(),
            cfg,
        })
    }

    /// Open (or create) a store directory, with a memory cache in front.
    /// Cleans stale temporary files; lists only checkpoints whose manifest is
    /// present. Fails with [`StoreError::Locked`] if another process has it open.
    pub fn open(dir: impl AsRef<Path>, cfg: StoreConfig) -> Result<Store> {
        check_chunk_size(cfg.chunk_size)?;
        let (disk, scan) =
            DiskTier::open(dir.as_ref(), cfg.disk_limit_bytes, cfg.disk_compression)?;
        let mut refs = Refs::new();
        let mut max_seq = 0;
        for r in scan.refs {
            max_seq = max_seq.max(r.seq);
            refs.entry(r.job)
                .or_default()
                .insert((r.generation, r.seq), r.id);
        }
        Ok(Store {
            mem: MemTier::new(cfg.cache_bytes, true, cfg.chunk_size as usize),
            disk: Some(disk),
            refs: Mutex::new(refs),
            notes: Mutex::new(scan.notes.into_iter().collect()),
            next_seq: AtomicU64::new(max_seq + 1),
            commit_lock: RwLock::new(()),
            counters: Counters::default(),
            cfg,
        })
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// The store directory, if on disk.
    pub fn dir(&self) -> Option<&Path> {
        self.disk.as_ref().map(|d| d.root())
    }

    // ---- chunks ----------------------------------------------------------

    /// Store a chunk whose id the caller computed from `data`. Returns whether
    /// it was new.
    fn put_verified(&self, id: ChunkId, data: &[u8]) -> Result<bool> {
        let written = match &self.disk {
            None => self.mem.insert_copy(id, data)?,
            Some(disk) => {
                let w = disk.write_chunk(&id, data)?.is_some();
                if w {
                    // Write-through: fresh chunks are the ones peers ask for.
                    let _ = self.mem.insert_copy(id, data);
                }
                w
            }
        };
        if written {
            self.counters.chunks_written.fetch_add(1, Ordering::Relaxed);
            self.counters
                .bytes_written
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        } else {
            self.counters.dedup_hits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(written)
    }

    /// Store one memory/blob chunk. It is copied into a store buffer first and
    /// the id is the hash of that copy, so the id always matches what is stored
    /// even if the caller's memory changes meanwhile (and the hash reads the
    /// copy from cache, which is faster than hashing then copying).
    fn put_slot(&self, chunk: &[u8]) -> Result<(ChunkId, bool)> {
        let buf = match self.mem.take_copy(chunk) {
            Ok(buf) => buf,
            // No room for a copy (in-memory store at its limit): fine if the
            // chunk is already there.
            Err(full @ StoreError::Full { .. }) if self.disk.is_none() => {
                let id = ChunkId::of(chunk);
                if self.mem.contains(&id) {
                    self.counters.dedup_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok((id, false));
                }
                return Err(full);
            }
            Err(_) => {
                // A disk store whose cache cannot hold a copy: write from a
                // private heap copy so the hash still matches the bytes.
                let copy = chunk.to_vec();
                let id = ChunkId::of(&copy);
                return Ok((id, self.put_verified(id, &copy)?));
            }
        };
        let id = ChunkId::of(&buf);
        let written = match &self.disk {
            None => self.mem.insert_owned(id, buf),
            Some(disk) => match disk.write_chunk(&id, &buf) {
                Ok(Some(_)) => {
                    // Write-through: fresh chunks are the ones peers ask for.
                    self.mem.insert_owned(id, buf);
                    true
                }
                Ok(None) => {
                    self.mem.recycle(buf);
                    false
                }
                Err(e) => {
                    self.mem.recycle(buf);
                    return Err(e);
                }
            },
        };
        if written {
            self.counters.chunks_written.fetch_add(1, Ordering::Relaxed);
            self.counters
                .bytes_written
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        } else {
            self.counters.dedup_hits.fetch_add(1, Ordering::Relaxed);
        }
        Ok((id, written))
    }

    /// Make every chunk stored before this call durable (a disk store writes chunks
    /// in batches: see [`put_chunk`](Self::put_chunk)). Committing a checkpoint does
    /// this for its chunks; call it to keep chunks that are not in one yet.
    pub fn sync(&self) -> Result<()> {
        match &self.disk {
            Some(d) => d.sync(),
            None => Ok(()),
        }
    }

    /// Store one chunk (any content, up to [`MAX_STORED_CHUNK`]); returns its id.
    /// Readable at once; in a disk store, durable after the next [`sync`](Self::sync)
    /// or the commit of a checkpoint (which syncs first), so a batch of received
    /// chunks costs one flush, not one each. Not protected from `gc` until a
    /// committed checkpoint references it (or the caller pins it).
    pub fn put_chunk(&self, data: &[u8]) -> Result<ChunkId> {
        if data.len() > MAX_STORED_CHUNK {
            return Err(StoreError::TooLarge {
                what: "chunk",
                len: data.len() as u64,
                limit: MAX_STORED_CHUNK as u64,
            });
        }
        let id = ChunkId::of(data);
        self.put_verified(id, data)?;
        Ok(id)
    }

    /// Store a chunk received from a peer: decoded with a bound and verified.
    /// Durable as [`put_chunk`](Self::put_chunk)'s.
    pub fn put_encoded(&self, chunk: &EncodedChunk) -> Result<ChunkId> {
        let data = chunk.decode_verified(MAX_STORED_CHUNK)?;
        self.put_verified(chunk.id, &data)?;
        Ok(chunk.id)
    }

    /// Whether the store holds `id` (either tier).
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.mem.contains(id) || self.disk.as_ref().is_some_and(|d| d.contains(id))
    }

    /// The ids among `ids` the store does not hold (what to ask peers for).
    pub fn missing<'a>(&self, ids: impl IntoIterator<Item = &'a ChunkId>) -> Vec<ChunkId> {
        ids.into_iter()
            .filter(|id| !self.contains(id))
            .copied()
            .collect()
    }

    /// Read and verify a chunk. A corrupt copy is never returned: the error is
    /// [`StoreError::Corrupt`] (a corrupt cache entry is dropped and the disk
    /// copy tried).
    pub fn get_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        match self.mem.get(id) {
            Some(Ok(d)) => return Ok(d),
            Some(Err(e)) if self.disk.is_none() => return Err(e),
            _ => {}
        }
        let Some(disk) = &self.disk else {
            return Err(StoreError::NotFound(*id));
        };
        let data = disk.read(id, MAX_STORED_CHUNK)?;
        let _ = self.mem.insert_copy(*id, &data);
        Ok(data)
    }

    /// A chunk encoded for the wire.
    pub fn get_encoded(&self, id: &ChunkId, compression: Compression) -> Result<EncodedChunk> {
        let data = self.get_chunk(id)?;
        Ok(EncodedChunk::encode_with_id(*id, &data, compression))
    }

    /// Read and verify chunk `id` into `dst`, which must be its exact length.
    fn read_chunk_into(&self, id: &ChunkId, dst: &mut [u8]) -> Result<()> {
        match self.mem.read_into(id, dst) {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) if self.disk.is_none() => return Err(e),
            _ => {}
        }
        match &self.disk {
            Some(disk) => disk.read_into(id, dst),
            None => Err(StoreError::NotFound(*id)),
        }
    }

    // ---- blobs -----------------------------------------------------------

    /// Store a byte string (a module, a file) as chunks of the configured size
    /// (zero chunks skipped). Its chunks are not protected from `gc` until a
    /// committed checkpoint references the blob.
    pub fn put_blob(&self, data: &[u8]) -> Result<BlobRef> {
        let map = self.store_map(data, self.cfg.chunk_size, None, &[])?.0;
        self.sync()?;
        Ok(BlobRef {
            hash: ChunkId::of(data),
            map,
        })
    }

    /// Read a blob back, verifying every chunk and the whole-content hash.
    pub fn get_blob(&self, blob: &BlobRef, max_len: u64) -> Result<Vec<u8>> {
        blob.map.validate("blob map")?;
        if blob.map.len > max_len {
            return Err(StoreError::TooLarge {
                what: "blob",
                len: blob.map.len,
                limit: max_len,
            });
        }
        let mut out = try_zeroed_vec(blob.map.len as usize)?;
        self.restore_map_into(&blob.map, &mut out)?;
        if ChunkId::of(&out) != blob.hash {
            tracing::warn!(hash = %blob.hash, "blob content does not match its hash");
            return Err(StoreError::Corrupt {
                id: blob.hash,
                path: None,
                reason: "blob hash mismatch".into(),
            });
        }
        Ok(out)
    }

    // ---- checkpoints -----------------------------------------------------

    /// Hash and store slots `which` of `data` (all slots when `parent` is None),
    /// reusing `parent`'s ids for the other slots. Returns the new map and
    /// (hashed, written, bytes written).
    fn store_map(
        &self,
        data: &[u8],
        chunk_size: u32,
        parent: Option<&ChunkMap>,
        which: &[u64],
    ) -> Result<(ChunkMap, u64, u64, u64)> {
        let cs = chunk_size as usize;
        let len = data.len() as u64;
        let n = data.len().div_ceil(cs);
        let all: Vec<u64>;
        let slots: &[u64] = match parent {
            None => {
                all = (0..n as u64).collect();
                &all
            }
            Some(_) => which,
        };
        let blocks: Vec<&[u64]> = slots.chunks(GRAIN).collect();
        let threads = if slots.len() >= 2 * GRAIN {
            self.cfg.threads
        } else {
            1
        };
        let results = par_queue(blocks, threads, |block| {
            block
                .iter()
                .map(|&i| {
                    let start = i as usize * cs;
                    let chunk = &data[start..(start + cs).min(data.len())];
                    if is_zero(chunk) {
                        return Ok(Slot::Zero);
                    }
                    let (id, written) = self.put_slot(chunk)?;
                    Ok(Slot::Chunk { id, written })
                })
                .collect::<Result<Vec<Slot>>>()
        })?;
        let mut hashed = 0;
        let mut written = 0;
        let mut bytes = 0;
        let mut fresh: Vec<(u64, Option<ChunkId>)> = Vec::with_capacity(slots.len());
        for (&i, r) in slots.iter().zip(results.into_iter().flatten()) {
            hashed += 1;
            match r {
                Slot::Zero => fresh.push((i, None)),
                Slot::Chunk { id, written: w } => {
                    if w {
                        written += 1;
                        bytes += (cs as u64).min(len - i * cs as u64);
                    }
                    fresh.push((i, Some(id)));
                }
            }
        }
        let mut chunks = Vec::with_capacity(fresh.len() + parent.map_or(0, |p| p.chunks.len()));
        match parent {
            None => chunks.extend(fresh.into_iter().filter_map(|(i, id)| Some((i, id?)))),
            Some(p) => {
                // Merge: fresh slots win over the parent's (both sorted).
                let mut old = p.chunks.iter().filter(|(i, _)| *i < n as u64).peekable();
                for (i, id) in fresh {
                    while let Some(&&(j, oid)) = old.peek() {
                        if j > i {
                            break;
                        }
                        old.next();
                        if j < i {
                            chunks.push((j, oid));
                        }
                    }
                    if let Some(id) = id {
                        chunks.push((i, id));
                    }
                }
                chunks.extend(old.copied());
            }
        }
        Ok((
            ChunkMap {
                len,
                chunk_size,
                chunks,
            },
            hashed,
            written,
            bytes,
        ))
    }

    fn meta_manifest(
        &self,
        meta: CheckpointMeta,
        memory: ChunkMap,
        parent: Option<ChunkId>,
    ) -> Result<Manifest> {
        check_job_id(&meta.job)?;
        Ok(Manifest {
            version: MANIFEST_VERSION,
            job: meta.job,
            generation: meta.generation,
            module: meta.module,
            memory,
            globals: serde_bytes::ByteBuf::from(meta.globals),
            host_state: serde_bytes::ByteBuf::from(meta.host_state),
            extra: meta.extra,
            parent,
        })
    }

    /// Full checkpoint: hash every chunk of `memory` (zero chunks skipped),
    /// store the new ones, then commit the manifest. Cost: one pass of blake3
    /// over the non-zero memory, on `threads` threads.
    pub fn checkpoint_full(&self, meta: CheckpointMeta, memory: &[u8]) -> Result<CheckpointInfo> {
        let _guard = self.commit_lock.read().unwrap_or_else(|e| e.into_inner());
        let (map, hashed, written, bytes) =
            self.store_map(memory, self.cfg.chunk_size, None, &[])?;
        let m = self.meta_manifest(meta, map, None)?;
        self.finish(m, hashed, written, bytes)
    }

    /// Incremental checkpoint: hash only the chunks listed in `dirty` (indices
    /// in units of the parent's chunk size; duplicates and out-of-range ones
    /// are fine) and reuse the parent's ids for all others. Chunks not fully
    /// inside both the old and the new length (memory grew or shrank) are
    /// re-hashed too. Cost: proportional to the dirty chunks (plus one pass
    /// over the chunk list).
    pub fn checkpoint_incremental(
        &self,
        parent: &Checkpoint,
        meta: CheckpointMeta,
        memory: &[u8],
        dirty: &[u64],
    ) -> Result<CheckpointInfo> {
        if meta.job != parent.manifest.job {
            return Err(StoreError::InvalidArgument(format!(
                "incremental checkpoint of job {:?} from a parent of job {:?}",
                meta.job, parent.manifest.job
            )));
        }
        let pm = &parent.manifest.memory;
        pm.validate("parent memory map")?;
        let cs = pm.chunk_size as u64;
        let new_len = memory.len() as u64;
        let n = new_len.div_ceil(cs);
        let common = pm.len.min(new_len);
        // Slots to hash: the dirty ones, plus every slot not entirely within
        // the common prefix of old and new memory.
        let mut mark = vec![0u64; (n as usize).div_ceil(64)];
        for &i in dirty.iter().filter(|&&i| i < n) {
            mark[(i / 64) as usize] |= 1 << (i % 64);
        }
        for i in (common / cs)..n {
            mark[(i / 64) as usize] |= 1 << (i % 64);
        }
        let mut which = Vec::with_capacity(dirty.len().min(n as usize) + 8);
        for (w, &bits) in mark.iter().enumerate() {
            let mut b = bits;
            while b != 0 {
                which.push(w as u64 * 64 + b.trailing_zeros() as u64);
                b &= b - 1;
            }
        }
        let _guard = self.commit_lock.read().unwrap_or_else(|e| e.into_inner());
        let (map, hashed, written, bytes) =
            self.store_map(memory, pm.chunk_size, Some(pm), &which)?;
        let m = self.meta_manifest(meta, map, Some(parent.id))?;
        self.finish(m, hashed, written, bytes)
    }

    fn finish(&self, m: Manifest, hashed: u64, written: u64, bytes: u64) -> Result<CheckpointInfo> {
        let encoded = m.encode();
        let (checkpoint, mw) = self.commit_locked(&encoded, m)?;
        Ok(CheckpointInfo {
            checkpoint,
            chunks_hashed: hashed,
            chunks_written: written + mw as u64,
            bytes_written: bytes + if mw { encoded.len() as u64 } else { 0 },
        })
    }

    /// Commit a manifest: check that every chunk it references is present,
    /// store the manifest chunk (after making the chunks durable), then list
    /// it (ref entry written last). Caller holds `commit_lock` (read).
    fn commit_locked(&self, encoded: &[u8], m: Manifest) -> Result<(Checkpoint, bool)> {
        if encoded.len() > MAX_MANIFEST_BYTES {
            return Err(StoreError::TooLarge {
                what: "manifest",
                len: encoded.len() as u64,
                limit: MAX_MANIFEST_BYTES as u64,
            });
        }
        {
            let mut missing = m
                .referenced()
                .map(|(id, _)| id)
                .filter(|id| !self.contains(id));
            if let Some(first) = missing.next() {
                return Err(StoreError::MissingChunks {
                    first,
                    count: 1 + missing.count(),
                });
            }
        }
        // Chunks durable before the manifest, manifest before the ref.
        self.sync()?;
        let id = ChunkId::of(encoded);
        let written = self.put_verified(id, encoded)?;
        self.sync()?;
        let mut refs = lock(&self.refs);
        let listed = refs
            .get(&m.job)
            .is_some_and(|j| j.values().any(|v| *v == id));
        if !listed {
            let r = CheckpointRef {
                job: m.job.clone(),
                generation: m.generation,
                seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
                id,
            };
            if let Some(disk) = &self.disk {
                disk.write_ref(&r)?;
            }
            refs.entry(r.job)
                .or_default()
                .insert((r.generation, r.seq), id);
        }
        drop(refs);
        Ok((Checkpoint { id, manifest: m }, written))
    }

    /// Commit a manifest built by the caller (all its chunks must be present).
    pub fn commit_manifest(&self, manifest: Manifest) -> Result<Checkpoint> {
        manifest.validate()?;
        let _guard = self.commit_lock.read().unwrap_or_else(|e| e.into_inner());
        let encoded = manifest.encode();
        Ok(self.commit_locked(&encoded, manifest)?.0)
    }

    /// Commit manifest bytes received from a peer, keeping their exact bytes
    /// (so the id matches the sender's). All referenced chunks must be present.
    pub fn import_manifest(&self, bytes: &[u8]) -> Result<Checkpoint> {
        let m = Manifest::decode(bytes)?;
        let _guard = self.commit_lock.read().unwrap_or_else(|e| e.into_inner());
        Ok(self.commit_locked(bytes, m)?.0)
    }

    // ---- notes -----------------------------------------------------------

    /// Writes the note `name` (at most [`MAX_NOTE_BYTES`]) when `replace`, given the
    /// note held now (if any), says so; returns whether it did. Read, decision and
    /// write happen under one lock, so concurrent writers of a note cannot reorder
    /// (a writer that only replaces older content never loses to an older one).
    /// Durable when this returns in a disk store (`DIR/notes/<name>`); an in-memory
    /// store keeps notes as long as itself. Notes are how a node finds again, after a
    /// restart, what it had promised its peers (e.g. which replicas it holds): they
    /// are not checkpoints, GC leaves them alone.
    pub fn put_note_if(
        &self,
        name: &str,
        bytes: &[u8],
        replace: impl FnOnce(Option<&[u8]>) -> bool,
    ) -> Result<bool> {
        check_note_name(name)?;
        if bytes.len() > MAX_NOTE_BYTES {
            return Err(StoreError::TooLarge {
                what: "note",
                len: bytes.len() as u64,
                limit: MAX_NOTE_BYTES as u64,
            });
        }
        let mut notes = lock(&self.notes);
        if !notes.contains_key(name) && notes.len() >= MAX_NOTES {
            return Err(StoreError::InvalidArgument(format!(
                "too many notes ({MAX_NOTES})"
            )));
        }
        if !replace(notes.get(name).map(Vec::as_slice)) {
            return Ok(false);
        }
        if let Some(disk) = &self.disk {
            disk.write_note(name, bytes)?;
        }
        notes.insert(name.to_string(), bytes.to_vec());
        Ok(true)
    }

    /// Deletes the note `name` (nothing if there is none).
    pub fn remove_note(&self, name: &str) -> Result<()> {
        check_note_name(name)?;
        let mut notes = lock(&self.notes);
        if notes.remove(name).is_some() {
            if let Some(disk) = &self.disk {
                disk.remove_note(name)?;
                disk.sync_dirs()?;
            }
        }
        Ok(())
    }

    /// Every note whose name starts with `prefix`, by name.
    pub fn notes(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        lock(&self.notes)
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Load and decode a checkpoint's manifest (verified like any chunk).
    pub fn load_checkpoint(&self, id: &ChunkId) -> Result<Checkpoint> {
        let bytes = self.get_chunk(id)?;
        Ok(Checkpoint {
            id: *id,
            manifest: Manifest::decode(&bytes)?,
        })
    }

    /// Listed checkpoints (of one job, or all), oldest first.
    pub fn list_checkpoints(&self, job: Option<&str>) -> Vec<CheckpointRef> {
        let refs = lock(&self.refs);
        let one = |job: &String, m: &BTreeMap<(u64, u64), ChunkId>| {
            m.iter()
                .map(|(&(generation, seq), &id)| CheckpointRef {
                    job: job.clone(),
                    generation,
                    seq,
                    id,
                })
                .collect::<Vec<_>>()
        };
        match job {
            Some(j) => refs
                .get_key_value(j)
                .map(|(k, m)| one(k, m))
                .unwrap_or_default(),
            None => refs.iter().flat_map(|(k, m)| one(k, m)).collect(),
        }
    }

    /// The newest listed checkpoint of `job` (highest generation, then latest commit).
    pub fn latest(&self, job: &str) -> Option<CheckpointRef> {
        let refs = lock(&self.refs);
        let (&(generation, seq), &id) = refs.get(job)?.iter().next_back()?;
        Some(CheckpointRef {
            job: job.to_string(),
            generation,
            seq,
            id,
        })
    }

    // ---- restore ---------------------------------------------------------

    /// Rebuild a checkpoint's linear memory, fetching and verifying every chunk.
    pub fn restore_memory(&self, manifest: &Manifest) -> Result<Vec<u8>> {
        manifest.memory.validate("memory map")?;
        let len = usize::try_from(manifest.memory.len)
            .map_err(|_| StoreError::InvalidArgument("memory too large for this host".into()))?;
        let mut out = try_zeroed_vec(len)?;
        self.restore_map_into(&manifest.memory, &mut out)?;
        Ok(out)
    }

    /// Like [`restore_memory`](Self::restore_memory) into a caller buffer of
    /// exactly the manifest's memory length (e.g. a fresh instance's memory).
    /// Zero chunks are written as zeros only where the buffer is not zero.
    pub fn restore_memory_into(&self, manifest: &Manifest, dst: &mut [u8]) -> Result<()> {
        manifest.memory.validate("memory map")?;
        if dst.len() as u64 != manifest.memory.len {
            return Err(StoreError::InvalidArgument(format!(
                "buffer is {} bytes, memory is {}",
                dst.len(),
                manifest.memory.len
            )));
        }
        self.restore_map_into(&manifest.memory, dst)
    }

    fn restore_map_into(&self, map: &ChunkMap, dst: &mut [u8]) -> Result<()> {
        let cs = map.chunk_size as usize;
        let n_slots = dst.len().div_ceil(cs);
        // Blocks of GRAIN slots, each with the map entries that fall in it.
        let mut blocks = Vec::with_capacity(n_slots.div_ceil(GRAIN));
        let mut entries = &map.chunks[..];
        for (b, block) in dst.chunks_mut(cs * GRAIN).enumerate() {
            let first = (b * GRAIN) as u64;
            let end = first + GRAIN as u64;
            let k = entries.partition_point(|e| e.0 < end);
            blocks.push((first, block, &entries[..k]));
            entries = &entries[k..];
        }
        let threads = if n_slots >= 2 * GRAIN {
            self.cfg.threads
        } else {
            1
        };
        par_queue(blocks, threads, |(first, block, entries)| {
            let mut entries = entries.iter().peekable();
            for (k, slot) in block.chunks_mut(cs).enumerate() {
                let i = first + k as u64;
                match entries.peek() {
                    Some(&&(j, id)) if j == i => {
                        entries.next();
                        self.read_chunk_into(&id, slot)?;
                    }
                    _ => {
                        if !is_zero(slot) {
                            slot.fill(0);
                        }
                    }
                }
            }
            Ok(())
        })?;
        Ok(())
    }
}
