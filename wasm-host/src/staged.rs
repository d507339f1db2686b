//! Restores built ahead of the checkpoint they finish with, for live migration.
//!
//! Filling linear memory is most of a restore (~26 ms for 64 MiB). During a migration
//! the destination receives the job's chunks over several pre-copy rounds while the job
//! still runs at the source; only what happens after the final manifest arrives is
//! downtime. A [`StagedRestore`] instantiates the module and fills memory from an early
//! round's map ([`StagedRestore::stage`]), brings memory up to later maps by writing only
//! the chunks whose id changed ([`StagedRestore::update`]), and at the end applies the
//! last differences plus globals, stack, WASI state and files of the final checkpoint
//! ([`StagedRestore::finish`]). [`Job::restore_from_checkpoint`] is the same path staged
//! and finished at once, so both give the same job.
//!
//! Memory writes of a staged restore are host writes outside wasm: with dirty tracking
//! they un-protect only the chunks written, and `finish` takes the dirty set, so none of
//! them counts as a write of the job.

use std::collections::BTreeMap;

use serde_bytes::ByteBuf;
use store::{
    BlobRef, Checkpoint, ChunkId, ChunkMap, Manifest, Store, StoreError, MANIFEST_VERSION,
    MIN_CHUNK_SIZE,
};

use crate::checkpoint::{files_limit, module_from_store, CheckpointError, FinalState};
use crate::host::{hex, Host};
use crate::job::{Job, Limits};
use crate::snapshot::MAX_MEMORY;
use crate::wasi::{OutputSink, Preopen};

/// An instantiated job whose linear memory equals a known chunk map, waiting for the
/// checkpoint it resumes from. Not runnable until [`StagedRestore::finish`].
pub struct StagedRestore {
    job: Job,
    /// The map memory equals (when `exact`).
    memory: ChunkMap,
    /// False after an update failed part-way: memory is somewhere between two maps, and
    /// the next update or finish rewrites every chunk.
    exact: bool,
    files_limit: u64,
}

impl std::fmt::Debug for StagedRestore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedRestore")
            .field("module", &hex(&self.job.module().hash))
            .field("memory_len", &self.memory.len)
            .field("chunk_size", &self.memory.chunk_size)
            .field("chunks", &self.memory.chunks.len())
            .field("exact", &self.exact)
            .finish()
    }
}

impl StagedRestore {
    /// Instantiates `module` (the instrumented module's blob in `store`, or the host's
    /// copy if it has loaded it), sizes linear memory to `memory.len` and fills it with
    /// the chunks of `memory` (absent ones are zero), each verified by the store.
    /// `preopens`, `limits` and `sink` are those of the restored job.
    pub fn stage(
        host: &Host,
        store: &Store,
        module: &BlobRef,
        memory: &ChunkMap,
        preopens: Vec<Preopen>,
        limits: &Limits,
        sink: Box<dyn OutputSink>,
    ) -> Result<StagedRestore, CheckpointError> {
        let missing = store.missing(memory.chunks.iter().map(|(_, id)| id));
        if let Some(first) = missing.first() {
            return Err(StoreError::MissingChunks {
                first: *first,
                count: missing.len(),
            }
            .into());
        }
        StagedRestore::stage_present(host, store, module, memory, preopens, limits, sink)
    }

    /// [`stage`](Self::stage) with only the chunks `store` has (a post-copy move has the
    /// rest follow after the resume): memory is grown to `memory.len`, the present chunks
    /// are written and the absent slots are zero. Memory past what the fresh instance
    /// had (its data segments) is zero once grown, so it is neither read nor written:
    /// checking a large memory for zeros would fault every page in.
    pub fn stage_present(
        host: &Host,
        store: &Store,
        module: &BlobRef,
        memory: &ChunkMap,
        preopens: Vec<Preopen>,
        limits: &Limits,
        sink: Box<dyn OutputSink>,
    ) -> Result<StagedRestore, CheckpointError> {
        let mut job = fresh_job(host, store, module, memory, preopens, limits, sink)?;
        let initial = job.memory_len() as u64;
        job.grow_memory(memory.len)?;
        let present: BTreeMap<u64, ChunkId> = memory
            .chunks
            .iter()
            .filter(|(_, id)| store.contains(id))
            .copied()
            .collect();
        let cs = u64::from(memory.chunk_size);
        let slots: Vec<(u64, Option<ChunkId>)> = (0..memory.chunk_count())
            .filter_map(|i| match present.get(&i) {
                Some(id) => Some((i, Some(*id))),
                None => (i * cs < initial).then_some((i, None)),
            })
            .collect();
        let mut staged = StagedRestore {
            job,
            memory: ChunkMap::empty(memory.len, memory.chunk_size),
            exact: false,
            files_limit: files_limit(limits),
        };
        staged.write_slots(store, memory, &slots)?;
        // Arm tracking now, so that updates un-protect (and finish re-protects) only the
        // chunks they write, not all of memory.
        let _ = staged.job.take_dirty_raw(memory.chunk_size);
        staged.memory = ChunkMap {
            len: memory.len,
            chunk_size: memory.chunk_size,
            chunks: present.into_iter().collect(),
        };
        staged.exact = true;
        Ok(staged)
    }

    /// Brings memory up to `memory` (e.g. the map of a later pre-copy round): writes the
    /// chunks whose id differs from the current map's, zeroes the ones it no longer has,
    /// grows memory if it is longer. Returns the number of chunks written. A map with
    /// another chunk size rewrites every chunk; a shorter one is refused (Wasm memory
    /// never shrinks). Chunks missing from `store` are refused before anything is
    /// written.
    pub fn update(&mut self, store: &Store, memory: &ChunkMap) -> Result<usize, CheckpointError> {
        memory.validate("memory map")?;
        if memory.len > MAX_MEMORY {
            return Err(CheckpointError::Staged(format!(
                "memory of {} bytes",
                memory.len
            )));
        }
        if memory.len < self.memory.len {
            return Err(CheckpointError::Staged(format!(
                "memory map of {} bytes, but {} are staged: linear memory cannot shrink",
                memory.len, self.memory.len
            )));
        }
        if !self.exact || memory.chunk_size != self.memory.chunk_size {
            self.exact = false;
            fill_map(store, memory.clone(), self.job.resize_memory(memory.len)?)?;
            self.memory = memory.clone();
            self.exact = true;
            return Ok(memory.chunk_count() as usize);
        }
        let changed = changed_slots(&self.memory, memory);
        let missing = store.missing(changed.iter().filter_map(|(_, id)| id.as_ref()));
        if let Some(first) = missing.first() {
            return Err(StoreError::MissingChunks {
                first: *first,
                count: missing.len(),
            }
            .into());
        }
        self.job.grow_memory(memory.len)?;
        self.write_slots(store, memory, &changed)?;
        self.memory = memory.clone();
        self.exact = true;
        Ok(changed.len())
    }

    /// Writes the `changed` slots of `memory` (ids from the store, `None` = zero).
    fn write_slots(
        &mut self,
        store: &Store,
        memory: &ChunkMap,
        changed: &[(u64, Option<ChunkId>)],
    ) -> Result<(), CheckpointError> {
        // A failed read may leave a slot half written; the next update rewrites all.
        self.exact = false;
        // Each run of consecutive changed slots is one fill (one un-protect, and the
        // store's threads for long runs).
        for run in changed.chunk_by(|a, b| a.0 + 1 == b.0) {
            let (Some(&(first, _)), Some(&(last, _))) = (run.first(), run.last()) else {
                continue;
            };
            let range = memory.chunk_range(first).start..memory.chunk_range(last).end;
            let part = ChunkMap {
                len: range.end - range.start,
                chunk_size: memory.chunk_size,
                chunks: run
                    .iter()
                    .filter_map(|&(i, id)| Some((i - first, id?)))
                    .collect(),
            };
            let dst = self
                .job
                .memory_for_write(range.start as usize, range.end as usize)?;
            fill_map(store, part, dst)?;
        }
        Ok(())
    }

    /// Post-copy: finishes the restore from the checkpoint whose manifest is `manifest`
    /// (bytes, hashing to `id`) although the store may lack some of its memory chunks.
    /// Memory is brought up to the checkpoint's map with the chunks the store has;
    /// globals, stack, WASI state and files are applied as [`finish`](Self::finish) does
    /// (module, files and the manifest's own fields must be complete). Returns the job,
    /// the checkpoint (not listed in the store: it cannot be, until every chunk is
    /// there) and the memory slots still to fill, with their ids, for
    /// [`Job::make_lazy`].
    pub fn finish_lazy(
        self,
        store: &Store,
        manifest: &[u8],
        id: &ChunkId,
    ) -> Result<LazyRestore, CheckpointError> {
        if ChunkId::of(manifest) != *id {
            return Err(CheckpointError::Staged(
                "the manifest does not hash to its id".into(),
            ));
        }
        let cp = Checkpoint {
            id: *id,
            manifest: Manifest::decode(manifest)?,
        };
        self.finish_lazy_with(store, cp, |id| !store.contains(id))
    }

    /// [`finish_lazy`](Self::finish_lazy) for a checkpoint the caller decoded and
    /// checked against its id already, told which chunks are missing (`missing`; all
    /// others must be in `store`). A post-copy destination knows both from its
    /// protocol core, and saves a decode and a store lookup per chunk while its job
    /// is down.
    pub fn finish_lazy_with(
        mut self,
        store: &Store,
        cp: Checkpoint,
        missing: impl Fn(&ChunkId) -> bool,
    ) -> Result<LazyRestore, CheckpointError> {
        cp.manifest.memory.validate("memory map")?;
        let last = FinalState::read(store, &cp, self.files_limit)?;
        let m = &cp.manifest;
        let invalid = |reason: String| CheckpointError::Invalid { id: cp.id, reason };
        if last.state.module_hash != self.job.module().hash {
            return Err(invalid("it is of another module than was staged".into()));
        }
        if m.memory.len < self.memory.len || m.memory.len > MAX_MEMORY {
            return Err(invalid(format!(
                "its memory has {} bytes, {} were staged",
                m.memory.len, self.memory.len
            )));
        }
        let changed = if self.exact && m.memory.chunk_size == self.memory.chunk_size {
            changed_slots(&self.memory, &m.memory)
        } else {
            // Rewrite all: every slot of the new map, and zeros elsewhere.
            let mut all: BTreeMap<u64, Option<ChunkId>> =
                (0..self.memory.chunk_count()).map(|i| (i, None)).collect();
            all.extend(m.memory.chunks.iter().map(|(i, id)| (*i, Some(*id))));
            all.into_iter().collect()
        };
        let (present, lazy): (Vec<_>, Vec<_>) = changed
            .into_iter()
            .partition(|(_, id)| id.as_ref().is_none_or(|id| !missing(id)));
        self.job.grow_memory(m.memory.len)?;
        self.write_slots(store, &m.memory, &present)?;
        self.memory = m.memory.clone();
        self.exact = true;
        let lazy: Vec<(u64, ChunkId)> = lazy
            .into_iter()
            .filter_map(|(i, id)| Some((i, id?)))
            .collect();
        let mut job = self.job;
        job.install_wasi(last.state.wasi, &last.files)?;
        job.set_globals(&last.globals)?;
        job.set_paused(last.state.stack.into_vec());
        if job.take_dirty_raw(m.memory.chunk_size).is_some() {
            job.tracking_base = Some(cp.id);
        }
        tracing::debug!(id = %cp.id, written = present.len(), lazy = lazy.len(), "lazy restore finished");
        Ok(LazyRestore {
            job,
            checkpoint: cp,
            missing: lazy,
        })
    }

    /// Finishes the restore from checkpoint `id` of `store`: memory is brought up to its
    /// map as [`update`](Self::update) does, then globals, the unwound stack, WASI state
    /// and touched files come from its manifest. The job and checkpoint are what
    /// [`Job::restore_from_checkpoint`] returns for `id`, dirty-tracking base included.
    /// A checkpoint of another module is [`CheckpointError::Invalid`].
    pub fn finish(self, store: &Store, id: &ChunkId) -> Result<(Job, Checkpoint), CheckpointError> {
        let cp = store.load_checkpoint(id)?;
        self.finish_checkpoint(store, cp)
    }

    /// [`finish`](Self::finish) with the checkpoint in hand (e.g. as
    /// `Store::import_manifest` returned it), so it is not read and decoded again.
    pub fn finish_checkpoint(
        self,
        store: &Store,
        cp: Checkpoint,
    ) -> Result<(Job, Checkpoint), CheckpointError> {
        let last = FinalState::read(store, &cp, self.files_limit)?;
        self.finish_with(store, cp, last)
    }

    /// [`finish`](Self::finish) with the checkpoint loaded and its state read.
    pub(crate) fn finish_with(
        mut self,
        store: &Store,
        cp: Checkpoint,
        last: FinalState,
    ) -> Result<(Job, Checkpoint), CheckpointError> {
        let m = &cp.manifest;
        let invalid = |reason: String| CheckpointError::Invalid { id: cp.id, reason };
        let staged_hash = self.job.module().hash;
        if last.state.module_hash != staged_hash {
            return Err(invalid(format!(
                "it is of module {}, but module {} was staged",
                hex(&last.state.module_hash),
                hex(&staged_hash)
            )));
        }
        if m.memory.len < self.memory.len {
            return Err(invalid(format!(
                "its memory has {} bytes, but {} were staged: linear memory cannot shrink",
                m.memory.len, self.memory.len
            )));
        }
        if m.memory.chunk_size != self.memory.chunk_size {
            tracing::debug!(
                staged = self.memory.chunk_size,
                checkpoint = m.memory.chunk_size,
                "chunk size changed: rewriting all of memory"
            );
        }
        let written = self.update(store, &m.memory)?;
        let mut job = self.job;
        job.install_wasi(last.state.wasi, &last.files)?;
        job.set_globals(&last.globals)?;
        job.set_paused(last.state.stack.into_vec());
        // Memory now equals the checkpoint's: start tracking from it. The restore's own
        // writes are in this take, not in the job's next one.
        if job.take_dirty_raw(m.memory.chunk_size).is_some() {
            job.tracking_base = Some(cp.id);
        }
        tracing::debug!(id = %cp.id, chunks_written = written, "staged restore finished");
        Ok((job, cp))
    }

    /// The chunk map linear memory equals. After an update that failed part-way, the
    /// map it was last brought to: memory may differ from it until the next update or
    /// finish, which then rewrites every chunk.
    pub fn memory_map(&self) -> &ChunkMap {
        &self.memory
    }
}

/// A post-copy restore: the paused job, its checkpoint (not listed in the store until
/// every chunk is there) and the memory slots still to fill, with their chunk ids.
pub struct LazyRestore {
    pub job: Job,
    pub checkpoint: Checkpoint,
    pub missing: Vec<(u64, ChunkId)>,
}

impl Job {
    /// Post-copy restore with nothing staged: instantiates the checkpoint's module, fills
    /// memory with the chunks `store` has and returns the job (paused) with the slots
    /// still to fill; see [`StagedRestore::finish_lazy`].
    pub fn restore_lazily(
        host: &Host,
        store: &Store,
        manifest: &[u8],
        id: &ChunkId,
        preopens: Vec<Preopen>,
        limits: &Limits,
        sink: Box<dyn OutputSink>,
    ) -> Result<LazyRestore, CheckpointError> {
        let m = Manifest::decode(manifest)?;
        let staged = StagedRestore::stage_present(
            host, store, &m.module, &m.memory, preopens, limits, sink,
        )?;
        staged.finish_lazy(store, manifest, id)
    }
}

/// A fresh instance of `module` for a restore into `memory` (checked first).
fn fresh_job(
    host: &Host,
    store: &Store,
    module: &BlobRef,
    memory: &ChunkMap,
    preopens: Vec<Preopen>,
    limits: &Limits,
    sink: Box<dyn OutputSink>,
) -> Result<Job, CheckpointError> {
    memory.validate("memory map")?;
    if memory.len > MAX_MEMORY {
        return Err(CheckpointError::Staged(format!(
            "memory of {} bytes",
            memory.len
        )));
    }
    let module = module_from_store(host, store, module)?;
    Ok(Job::instantiate_for_restore(
        host, module, preopens, limits, sink,
    )?)
}

/// Slots whose content differs between `old` and `new` (same chunk size, `new` no
/// shorter), sorted, with the id to write (`None`: zero). Slots past `old` are zero
/// already (grown memory), so only their non-zero chunks count. A partial last slot of
/// `old` that `new` lengthens is rewritten whenever `new` has a chunk there.
fn changed_slots(old: &ChunkMap, new: &ChunkMap) -> Vec<(u64, Option<ChunkId>)> {
    let cs = u64::from(old.chunk_size);
    let partial_tail = (new.len > old.len && !old.len.is_multiple_of(cs)).then(|| old.len / cs);
    let mut out = Vec::new();
    let mut a = old.chunks.iter().peekable();
    let mut b = new.chunks.iter().peekable();
    loop {
        match (a.peek().copied(), b.peek().copied()) {
            (None, None) => break,
            (Some(&(i, x)), Some(&(j, y))) if i == j => {
                a.next();
                b.next();
                if x != y || partial_tail == Some(j) {
                    out.push((j, Some(y)));
                }
            }
            (Some(&(i, _)), Some(&(j, _))) if i < j => {
                a.next();
                out.push((i, None));
            }
            (Some(&(i, _)), None) => {
                a.next();
                out.push((i, None));
            }
            (_, Some(&(j, y))) => {
                b.next();
                out.push((j, Some(y)));
            }
        }
    }
    out
}

/// Writes every slot of `map` into `dst` (exactly `map.len` bytes): chunks read and
/// verified by the store (on its threads for long maps), absent slots zeroed where not
/// zero already.
fn fill_map(store: &Store, map: ChunkMap, dst: &mut [u8]) -> Result<(), StoreError> {
    // The store fills a buffer from a manifest's memory map only; nothing else of this
    // carrier is read.
    let carrier = Manifest {
        version: MANIFEST_VERSION,
        job: String::new(),
        generation: 0,
        module: BlobRef {
            hash: ChunkId([0; 32]),
            map: ChunkMap::empty(0, MIN_CHUNK_SIZE),
        },
        memory: map,
        globals: ByteBuf::new(),
        host_state: ByteBuf::new(),
        extra: BTreeMap::new(),
        parent: None,
    };
    store.restore_memory_into(&carrier, dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn map(len: u64, cs: u32, chunks: &[(u64, u8)]) -> ChunkMap {
        ChunkMap {
            len,
            chunk_size: cs,
            chunks: chunks.iter().map(|&(i, n)| (i, id(n))).collect(),
        }
    }

    #[test]
    fn changed_slots_lists_exactly_the_differences() {
        let old = map(8 * 4096, 4096, &[(0, 1), (2, 2), (3, 3), (6, 6)]);
        let new = map(12 * 4096, 4096, &[(0, 1), (1, 9), (3, 4), (6, 6), (10, 7)]);
        assert_eq!(
            changed_slots(&old, &new),
            vec![
                (1, Some(id(9))),
                (2, None),
                (3, Some(id(4))),
                (10, Some(id(7)))
            ]
        );
        assert!(changed_slots(&new, &new).is_empty());
    }

    #[test]
    fn a_lengthened_partial_tail_is_rewritten() {
        // 1.5 chunks of 128 KiB, then 2 chunks: slot 1 grows from 64 KiB to 128 KiB.
        let old = map(3 << 16, 1 << 17, &[(0, 1), (1, 2)]);
        let same_id = map(4 << 16, 1 << 17, &[(0, 1), (1, 2)]);
        assert_eq!(changed_slots(&old, &same_id), vec![(1, Some(id(2)))]);
        let longer_zero = map(4 << 16, 1 << 17, &[(0, 1)]);
        assert_eq!(changed_slots(&old, &longer_zero), vec![(1, None)]);
    }
}
