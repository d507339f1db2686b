//! Maintenance: garbage collection under a caller-chosen retention policy,
//! whole-store verification, and size reports. Separate from `store.rs`
//! because none of it is on the checkpoint/restore hot path.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use crate::error::Result;
use crate::manifest::{CheckpointRef, Manifest};
use crate::mem::lock;
use crate::store::{Store, MAX_STORED_CHUNK};
use crate::ChunkId;

/// Which checkpoints GC keeps.
#[derive(Clone, Debug, Default)]
pub struct RetentionPolicy {
    /// Keep the newest `keep_per_job` listed checkpoints of every job
    /// (by generation, then commit order).
    pub keep_per_job: usize,
    /// Checkpoint ids kept (with all their chunks) whether listed or not.
    pub pinned_checkpoints: Vec<ChunkId>,
    /// Plain chunks kept, e.g. those received for a migration in progress.
    pub pinned_chunks: Vec<ChunkId>,
}

/// What a GC run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub checkpoints_kept: usize,
    pub refs_removed: usize,
    pub chunks_removed: u64,
    /// Stored bytes freed (file bytes on disk; raw bytes in memory).
    pub bytes_freed: u64,
}

/// One problem found by [`Store::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A chunk's bytes do not match its name (or the file is not a chunk).
    CorruptChunk {
        id: Option<ChunkId>,
        path: Option<PathBuf>,
        reason: String,
    },
    /// A listed checkpoint needs a chunk that is absent or corrupt.
    MissingChunk { checkpoint: ChunkId, chunk: ChunkId },
    /// A ref entry whose manifest is missing/undecodable/inconsistent, or a
    /// file in the checkpoints directory that is not a ref.
    BadCheckpoint {
        checkpoint: Option<ChunkId>,
        path: Option<PathBuf>,
        reason: String,
    },
    /// The store could not be read.
    Io { path: PathBuf, error: String },
}

/// Result of [`Store::verify`].
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub chunks_checked: u64,
    pub checkpoints_checked: u64,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// Whether some problem names chunk `id` (corrupt, or missing from a checkpoint).
    pub fn mentions(&self, id: &ChunkId) -> bool {
        self.problems.iter().any(|p| match p {
            Problem::CorruptChunk { id: Some(i), .. } => i == id,
            Problem::MissingChunk { checkpoint, chunk } => chunk == id || checkpoint == id,
            Problem::BadCheckpoint {
                checkpoint: Some(c),
                ..
            } => c == id,
            _ => false,
        })
    }
}

/// Sizes of the whole store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Chunks in the authoritative tier (disk, or memory for in-memory stores).
    pub chunk_count: u64,
    /// Their stored bytes (chunk files incl. headers on disk; raw in memory).
    pub stored_bytes: u64,
    /// The size limit in force.
    pub limit_bytes: u64,
    /// Memory tier entries and bytes (the cache, for a disk store).
    pub mem_chunks: u64,
    pub mem_bytes: u64,
    /// Memory kept for buffer reuse (counted in the memory budget).
    pub mem_pooled_bytes: u64,
    /// Listed checkpoints.
    pub checkpoints: u64,
    /// Since this `Store` was created: chunks newly stored, their raw bytes,
    /// and puts that found the chunk already there.
    pub chunks_written: u64,
    pub bytes_written: u64,
    pub dedup_hits: u64,
}

/// Sizes of one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointSize {
    pub checkpoint: CheckpointRef,
    /// Encoded manifest bytes.
    pub manifest_bytes: u64,
    /// Raw bytes of the distinct chunks it references (plus its manifest).
    pub referenced_bytes: u64,
    /// Raw bytes of chunks no other listed checkpoint references (plus its
    /// manifest): what deleting only this checkpoint would free.
    pub unique_bytes: u64,
}

impl Store {
    /// Remove every checkpoint the policy does not retain, then every chunk no
    /// retained checkpoint (or pin) reaches. Crash-safe: refs go first (made
    /// durable), chunks after; a crash in between leaves garbage, never a
    /// listed checkpoint with missing chunks. Excludes concurrent checkpoint
    /// writes; chunks stored with `put_chunk`/`put_blob`/`put_encoded` and not
    /// yet referenced by a committed checkpoint are removed unless pinned.
    ///
    /// If a retained checkpoint's manifest cannot be read, nothing is deleted
    /// and the error is returned (its chunks cannot be known).
    pub fn gc(&self, policy: &RetentionPolicy) -> Result<GcReport> {
        self.gc_with(policy, &mut |_, _| {})
    }

    /// [`Store::gc`], calling `progress(done, total)` as it goes: items are the
    /// retained checkpoints (their manifests are read) and then the stored chunks
    /// (each is kept or removed).
    pub fn gc_with(
        &self,
        policy: &RetentionPolicy,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<GcReport> {
        let _guard = self.commit_lock.write().unwrap_or_else(|e| e.into_inner());
        let all = self.list_checkpoints(None);
        let pinned: HashSet<ChunkId> = policy.pinned_checkpoints.iter().copied().collect();
        let mut by_job: HashMap<&str, Vec<&CheckpointRef>> = HashMap::new();
        for r in &all {
            by_job.entry(&r.job).or_default().push(r);
        }
        let mut keep_ids: HashSet<ChunkId> = pinned.clone();
        let mut drop_refs = Vec::new();
        for refs in by_job.values_mut() {
            refs.sort_by_key(|r| std::cmp::Reverse((r.generation, r.seq)));
            for (k, r) in refs.iter().enumerate() {
                if k < policy.keep_per_job || pinned.contains(&r.id) {
                    keep_ids.insert(r.id);
                } else {
                    drop_refs.push((*r).clone());
                }
            }
        }
        // Reachable set, computed before deleting anything.
        let mut reachable: HashSet<ChunkId> = policy.pinned_chunks.iter().copied().collect();
        let (mut done, mut total) = (0u64, keep_ids.len() as u64);
        for id in &keep_ids {
            done += 1;
            progress(done, total);
            match self.load_checkpoint(id) {
                Ok(c) => {
                    reachable.insert(*id);
                    reachable.extend(c.manifest.referenced().map(|(i, _)| i));
                }
                Err(e) if pinned.contains(id) && !all.iter().any(|r| r.id == *id) => {
                    tracing::warn!(%id, error = %e, "pinned checkpoint not readable; ignored");
                }
                Err(e) => return Err(e),
            }
        }
        let report_kept = all.len() - drop_refs.len();
        // 1. refs
        {
            let mut refs = lock(&self.refs);
            for r in &drop_refs {
                if let Some(d) = &self.disk {
                    d.remove_ref(r)?;
                }
                if let Some(m) = refs.get_mut(&r.job) {
                    m.remove(&(r.generation, r.seq));
                    if m.is_empty() {
                        refs.remove(&r.job);
                    }
                }
            }
        }
        if let Some(d) = &self.disk {
            d.sync_dirs()?;
            d.remove_empty_job_dirs();
        }
        // 2. chunks
        let mut chunks_removed = 0;
        let mut bytes_freed = 0;
        match &self.disk {
            Some(d) => {
                let ids = d.ids();
                total += ids.len() as u64;
                for id in ids {
                    done += 1;
                    progress(done, total);
                    if !reachable.contains(&id) {
                        bytes_freed += d.remove_chunk(&id)?;
                        chunks_removed += 1;
                    }
                }
                for id in self.mem.ids() {
                    if !reachable.contains(&id) {
                        self.mem.remove(&id);
                    }
                }
                d.sync_dirs()?;
            }
            None => {
                let ids = self.mem.ids();
                total += ids.len() as u64;
                for id in ids {
                    done += 1;
                    progress(done, total);
                    if !reachable.contains(&id) {
                        if let Some(n) = self.mem.remove(&id) {
                            bytes_freed += n;
                            chunks_removed += 1;
                        }
                    }
                }
            }
        }
        let report = GcReport {
            checkpoints_kept: report_kept,
            refs_removed: drop_refs.len(),
            chunks_removed,
            bytes_freed,
        };
        tracing::debug!(?report, "gc done");
        Ok(report)
    }

    /// Drop the memory tier's pool of reusable buffers (returns memory to the
    /// allocator; the next full checkpoint will be slower).
    pub fn release_cache_pool(&self) {
        self.mem.release_pool();
    }

    /// Read and verify everything: every chunk (on disk: every file, decoded
    /// and hashed; the memory tier too), every ref, every listed checkpoint's
    /// manifest and the presence of all the chunks it references. Each problem
    /// is logged with `tracing::warn` and returned; nothing is modified except
    /// that corrupt memory-tier entries are dropped (and chunks still waiting to be
    /// flushed are made durable first: `Store::sync`).
    pub fn verify(&self) -> VerifyReport {
        self.verify_with(&mut |_, _| {})
    }

    /// [`Store::verify`], calling `progress(done, total)` as it goes: items are the
    /// chunk files and then the checkpoints (a store without a disk reports only the
    /// checkpoints).
    pub fn verify_with(&self, progress: &mut dyn FnMut(u64, u64)) -> VerifyReport {
        let mut rep = VerifyReport::default();
        let mut good: HashSet<ChunkId> = HashSet::new();
        let (n, bad) = self.mem.verify_all();
        for id in bad {
            rep.problems.push(Problem::CorruptChunk {
                id: Some(id),
                path: None,
                reason: "memory tier entry does not match its hash".into(),
            });
        }
        let listed: Vec<(Option<PathBuf>, CheckpointRef)>;
        let mut done = 0u64;
        let total: u64;
        match &self.disk {
            None => {
                rep.chunks_checked = n;
                good.extend(self.mem.ids());
                listed = self
                    .list_checkpoints(None)
                    .into_iter()
                    .map(|r| (None, r))
                    .collect();
                total = listed.len() as u64;
            }
            Some(d) => {
                // Chunks still waiting in `tmp/` are put in place first, so the walk
                // sees every listed chunk.
                if let Err(e) = d.sync() {
                    rep.problems.push(io_problem(d.root().join("tmp"), e));
                }
                // Listing is cheap; reading and hashing every file is the work.
                let (files, refs) = (d.walk_chunks(), d.walk_refs());
                total = files.as_ref().map_or(0, |v| v.len() as u64)
                    + refs.as_ref().map_or(0, |v| v.len() as u64);
                match files {
                    Err(e) => rep.problems.push(io_problem(d.root().join("chunks"), e)),
                    Ok(files) => {
                        for (path, id, _) in files {
                            rep.chunks_checked += 1;
                            done += 1;
                            progress(done, total);
                            let Some(id) = id else {
                                rep.problems.push(Problem::CorruptChunk {
                                    id: None,
                                    path: Some(path),
                                    reason: "not a chunk file name".into(),
                                });
                                continue;
                            };
                            match std::fs::read(&path) {
                                Err(e) => rep.problems.push(Problem::Io {
                                    path,
                                    error: e.to_string(),
                                }),
                                Ok(bytes) => {
                                    match crate::encoded::decode_file(&id, &bytes, MAX_STORED_CHUNK)
                                    {
                                        Ok(_) => {
                                            good.insert(id);
                                        }
                                        Err(reason) => rep.problems.push(Problem::CorruptChunk {
                                            id: Some(id),
                                            path: Some(path),
                                            reason,
                                        }),
                                    }
                                }
                            }
                        }
                    }
                }
                let mut v = Vec::new();
                match refs {
                    Err(e) => rep
                        .problems
                        .push(io_problem(d.root().join("checkpoints"), e)),
                    Ok(refs) => {
                        for (path, r) in refs {
                            match r {
                                Some(r) => v.push((Some(path), r)),
                                None => rep.problems.push(Problem::BadCheckpoint {
                                    checkpoint: None,
                                    path: Some(path),
                                    reason:
                                        "not a ref entry (bad name, not a directory, or not empty)"
                                            .into(),
                                }),
                            }
                        }
                    }
                }
                listed = v;
            }
        }
        for (path, r) in listed {
            rep.checkpoints_checked += 1;
            done += 1;
            progress(done, total);
            let bad = |reason: String| Problem::BadCheckpoint {
                checkpoint: Some(r.id),
                path: path.clone(),
                reason,
            };
            if !good.contains(&r.id) {
                rep.problems.push(bad("manifest missing or corrupt".into()));
                continue;
            }
            // Straight from the disk when there is one (the cache is not the truth).
            let read = match &self.disk {
                Some(d) => d.read(&r.id, MAX_STORED_CHUNK),
                None => self.get_chunk(&r.id),
            };
            let bytes = match read {
                Ok(b) => b,
                Err(e) => {
                    rep.problems.push(bad(e.to_string()));
                    continue;
                }
            };
            let m = match Manifest::decode(&bytes) {
                Ok(m) => m,
                Err(e) => {
                    rep.problems.push(bad(format!("manifest: {e}")));
                    continue;
                }
            };
            if m.job != r.job || m.generation != r.generation {
                rep.problems.push(bad(format!(
                    "ref says job {:?} generation {}, manifest says {:?} {}",
                    r.job, r.generation, m.job, m.generation
                )));
            }
            let mut seen = HashSet::new();
            for (id, _) in m.referenced() {
                if !good.contains(&id) && seen.insert(id) {
                    rep.problems.push(Problem::MissingChunk {
                        checkpoint: r.id,
                        chunk: id,
                    });
                }
            }
        }
        for p in &rep.problems {
            tracing::warn!(problem = ?p, "store verification");
        }
        rep
    }

    /// Sizes of the whole store.
    pub fn stats(&self) -> StoreStats {
        let (chunk_count, stored_bytes, limit_bytes) = match &self.disk {
            Some(d) => (d.len(), d.bytes(), d.limit()),
            None => (self.mem.len(), self.mem.used(), self.cfg.cache_bytes),
        };
        StoreStats {
            chunk_count,
            stored_bytes,
            limit_bytes,
            mem_chunks: self.mem.len(),
            mem_bytes: self.mem.used(),
            mem_pooled_bytes: self.mem.pooled(),
            checkpoints: self.list_checkpoints(None).len() as u64,
            chunks_written: self.counters.chunks_written.load(Ordering::Relaxed),
            bytes_written: self.counters.bytes_written.load(Ordering::Relaxed),
            dedup_hits: self.counters.dedup_hits.load(Ordering::Relaxed),
        }
    }

    /// Per-checkpoint sizes for the listed checkpoints (of `job`, or all).
    /// Uniqueness is computed against every listed checkpoint of every job.
    pub fn checkpoint_sizes(&self, job: Option<&str>) -> Result<Vec<CheckpointSize>> {
        let all = self.list_checkpoints(None);
        let mut per: Vec<(CheckpointRef, u64, HashMap<ChunkId, u64>)> = Vec::new();
        let mut count: HashMap<ChunkId, u32> = HashMap::new();
        for r in all {
            let bytes = self.get_chunk(&r.id)?;
            let m = Manifest::decode(&bytes)?;
            let ids: HashMap<ChunkId, u64> = m.referenced().collect();
            for id in ids.keys() {
                *count.entry(*id).or_default() += 1;
            }
            per.push((r, bytes.len() as u64, ids));
        }
        Ok(per
            .into_iter()
            .filter(|(r, _, _)| job.is_none_or(|j| j == r.job))
            .map(|(r, mlen, ids)| CheckpointSize {
                manifest_bytes: mlen,
                referenced_bytes: mlen + ids.values().sum::<u64>(),
                unique_bytes: mlen
                    + ids
                        .iter()
                        .filter(|(id, _)| count.get(*id) == Some(&1))
                        .map(|(_, l)| l)
                        .sum::<u64>(),
                checkpoint: r,
            })
            .collect())
    }
}

fn io_problem(path: PathBuf, e: crate::StoreError) -> Problem {
    Problem::Io {
        path,
        error: e.to_string(),
    }
}
