//! Checkpoints of paused jobs in a content-addressed [`store::Store`], and jobs restored
//! from them.
//!
//! A [`Snapshot`](crate::Snapshot) is one self-contained file; a checkpoint instead
//! shares every unchanged chunk with its parent, so a job checkpointed over and over
//! costs what it wrote in between (dirty tracking, [`crate::memory`]). This module
//! maps a job onto a store manifest:
//!
//! | manifest field | content |
//! |---|---|
//! | `module` | the instrumented module bytes (a blob; reused from the parent) |
//! | `memory` | linear memory, chunked (incremental when the parent is the last checkpoint) |
//! | `globals` | [`JobGlobals`] (CBOR) |
//! | `host_state` | [`JobState`] (CBOR): module hash, unwound stack, WASI state |
//! | `extra["file/<preopen>/<path>"]` | each file the job touched (a blob) |
//!
//! An incremental checkpoint is only correct against the checkpoint whose memory equals
//! memory at the last dirty-set take. The job remembers that checkpoint's id and builds an
//! incremental one only when the caller's parent is it; any other parent (or none, or no
//! tracking) gets every chunk hashed, which the store dedups.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;
use store::{BlobRef, Checkpoint, CheckpointInfo, CheckpointMeta, ChunkId, Store, StoreError};

use crate::drive::{PausePlan, PauseTimer};
use crate::error::{HostError, SnapshotError};
use crate::host::{hex, Host, LoadedModule};
use crate::job::{Job, Limits, Outcome};
use crate::snapshot::{GlobalValue, JobGlobals, JobState, JOB_STATE_FORMAT, MAX_MEMORY};
use crate::staged::StagedRestore;
use crate::wasi::{FileImage, OutputSink, Preopen};

/// Prefix of the extra blobs that hold the files a job touched.
pub const FILE_BLOB_PREFIX: &str = "file/";
/// Largest module a restore fetches from a store.
pub const MAX_MODULE_BYTES: u64 = 256 << 20;

static UNTRACKED_WARNED: AtomicBool = AtomicBool::new(false);

/// Why a checkpoint could not be written or restored.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("checkpoint store: {0}")]
    Store(#[from] StoreError),
    #[error("checkpoint {id} cannot be restored: {reason}")]
    Invalid { id: ChunkId, reason: String },
    /// A staged restore was given something it cannot apply (see [`StagedRestore`]).
    #[error("staged restore: {0}")]
    Staged(String),
}

impl From<SnapshotError> for CheckpointError {
    fn from(e: SnapshotError) -> Self {
        CheckpointError::Host(e.into())
    }
}

fn file_blob_name(f: &FileImage) -> String {
    format!("{FILE_BLOB_PREFIX}{}/{}", f.preopen, f.rel)
}

fn parse_file_blob_name(name: &str) -> Option<(u32, &str)> {
    let (preopen, rel) = name.strip_prefix(FILE_BLOB_PREFIX)?.split_once('/')?;
    Some((preopen.parse().ok()?, rel))
}

impl Job {
    /// Writes a checkpoint of this paused job into `store` and returns it with what it
    /// cost. With `parent` = the checkpoint this job last wrote (or was restored from)
    /// and dirty tracking on, only the chunks written since are hashed; otherwise every
    /// chunk is (unchanged ones are deduplicated by the store). The job stays paused;
    /// [`Job::run`] resumes it.
    pub fn checkpoint(
        &mut self,
        store: &Store,
        parent: Option<&Checkpoint>,
        job_id: &str,
        generation: u64,
    ) -> Result<CheckpointInfo, CheckpointError> {
        let (globals, wasi, files) = self.capture_state()?;
        let module = self.module().clone();
        let module_blob = module_blob(store, &module, parent)?;
        let mut extra = BTreeMap::new();
        for f in &files {
            extra.insert(file_blob_name(f), store.put_blob(&f.data)?);
        }
        let host_state = JobState {
            format: JOB_STATE_FORMAT,
            module_hash: module.hash,
            stack: ByteBuf::from(self.stack().to_vec()),
            wasi,
        }
        .encode();
        let meta = CheckpointMeta {
            job: job_id.to_string(),
            generation,
            module: module_blob,
            globals: JobGlobals {
                format: JOB_STATE_FORMAT,
                globals,
            }
            .encode(),
            host_state,
            extra,
        };
        let chunk_size = parent.map_or(store.config().chunk_size, |p| p.manifest.memory.chunk_size);
        // Always take (it re-protects memory); the set is only valid against the base.
        let dirty = self.take_dirty_raw(chunk_size);
        if dirty.is_none() && !UNTRACKED_WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                reason = if self.dirty_tracking() {
                    "chunk size is not a multiple of the host page size"
                } else {
                    "dirty tracking is off (HostConfig::dirty_tracking, ROAM_DIRTY_TRACKING=0) or unavailable on this host"
                },
                "checkpoints hash every chunk of memory"
            );
        }
        let based = parent.is_some_and(|p| Some(p.id) == self.tracking_base);
        self.tracking_base = None;
        let memory = self.memory_data();
        let info = match parent {
            Some(p) if p.manifest.job == job_id => {
                let all: Vec<u64>;
                let which = match (&dirty, based) {
                    (Some(d), true) => d.as_slice(),
                    _ => {
                        all = (0..(memory.len() as u64).div_ceil(u64::from(chunk_size))).collect();
                        &all
                    }
                };
                store.checkpoint_incremental(p, meta, memory, which)?
            }
            _ => store.checkpoint_full(meta, memory)?,
        };
        tracing::debug!(
            id = %info.id(),
            hashed = info.chunks_hashed,
            written = info.chunks_written,
            tracked = dirty.is_some() && based,
            "checkpoint written"
        );
        if dirty.is_some() {
            self.tracking_base = Some(info.id());
        }
        Ok(info)
    }

    /// Rebuilds a paused job from checkpoint `id` of `store`, with this node's host
    /// directories as `preopens` (their guest names must match). Returns the job and the
    /// checkpoint, which is the parent for the job's next incremental checkpoint.
    ///
    /// This is a [`StagedRestore`] staged from the checkpoint's own memory and finished at
    /// once; a migration stages ahead of the final checkpoint instead.
    pub fn restore_from_checkpoint(
        host: &Host,
        store: &Store,
        id: &ChunkId,
        preopens: Vec<Preopen>,
        limits: &Limits,
        sink: Box<dyn OutputSink>,
    ) -> Result<(Job, Checkpoint), CheckpointError> {
        let cp = store.load_checkpoint(id)?;
        // Everything but memory is read and checked before the costly part.
        let last = FinalState::read(store, &cp, files_limit(limits))?;
        let m = &cp.manifest;
        let staged =
            StagedRestore::stage(host, store, &m.module, &m.memory, preopens, limits, sink)?;
        staged.finish_with(store, cp, last)
    }
}

/// Largest total size of the files a restore puts back.
pub(crate) fn files_limit(limits: &Limits) -> u64 {
    limits.snapshot_files_bytes.unwrap_or(1 << 30)
}

/// What a checkpoint holds besides memory, read and checked: what a restore applies
/// last.
pub(crate) struct FinalState {
    pub(crate) state: JobState,
    pub(crate) globals: Vec<(String, GlobalValue)>,
    pub(crate) files: Vec<FileImage>,
}

impl FinalState {
    pub(crate) fn read(
        store: &Store,
        cp: &Checkpoint,
        files_limit: u64,
    ) -> Result<FinalState, CheckpointError> {
        let m = &cp.manifest;
        let invalid = |reason: String| CheckpointError::Invalid { id: cp.id, reason };
        let state = JobState::decode(&m.host_state)?;
        let globals = JobGlobals::decode(&m.globals)?.globals;
        if m.module.hash.0 != state.module_hash {
            return Err(invalid(format!(
                "module blob {} is not the module {} the state was taken with",
                m.module.hash,
                hex(&state.module_hash)
            )));
        }
        if m.memory.len > MAX_MEMORY {
            return Err(invalid(format!("memory of {} bytes", m.memory.len)));
        }
        let mut files = Vec::new();
        let mut total = 0u64;
        for (name, blob) in &m.extra {
            let Some((preopen, rel)) = parse_file_blob_name(name) else {
                tracing::debug!(name, "ignoring an extra blob roam does not know");
                continue;
            };
            total = total.saturating_add(blob.map.len);
            if total > files_limit {
                return Err(invalid(format!(
                    "its files exceed the limit of {files_limit} bytes"
                )));
            }
            files.push(FileImage {
                preopen,
                rel: rel.to_string(),
                data: ByteBuf::from(store.get_blob(blob, files_limit)?),
            });
        }
        Ok(FinalState {
            state,
            globals,
            files,
        })
    }
}

/// The module a checkpoint names: the host's copy if it has loaded it, else the
/// instrumented bytes from `store` (verified against `blob.hash`).
pub(crate) fn module_from_store(
    host: &Host,
    store: &Store,
    blob: &BlobRef,
) -> Result<Arc<LoadedModule>, CheckpointError> {
    let module = match host.loaded(&blob.hash.0) {
        Some(module) => module,
        None => {
            let bytes = store.get_blob(blob, MAX_MODULE_BYTES)?;
            host.load_instrumented(&bytes)?
        }
    };
    if module.hash != blob.hash.0 {
        return Err(CheckpointError::Staged(format!(
            "module {} does not match its hash",
            blob.hash
        )));
    }
    Ok(module)
}

/// The module's blob: the parent's when it is the same module and still stored.
fn module_blob(
    store: &Store,
    module: &Arc<LoadedModule>,
    parent: Option<&Checkpoint>,
) -> Result<BlobRef, StoreError> {
    if let Some(p) = parent {
        let b = &p.manifest.module;
        if b.hash.0 == module.hash
            && store
                .missing(b.map.chunks.iter().map(|(_, id)| id))
                .is_empty()
        {
            return Ok(b.clone());
        }
    }
    store.put_blob(&module.bytes)
}

/// How [`run_with_checkpoints`] checkpoints a job.
#[derive(Debug, Clone)]
pub struct CheckpointPlan {
    /// Running time between two checkpoints.
    pub every: Duration,
    pub job_id: String,
    pub generation: u64,
}

/// Runs `job` to its end, pausing it every `plan.every` of running time to write a
/// checkpoint (incremental from `parent`, then from each previous one) and running on.
/// `on_checkpoint` sees each one and the time from paused to committed. Returns the
/// exit code and the last checkpoint.
pub fn run_with_checkpoints(
    job: &mut Job,
    store: &Store,
    plan: &CheckpointPlan,
    mut parent: Option<Checkpoint>,
    mut on_checkpoint: impl FnMut(&CheckpointInfo, Duration),
) -> Result<(i32, Option<Checkpoint>), CheckpointError> {
    let timer = PauseTimer::new(&PausePlan {
        count: u32::MAX,
        seed: 0,
        min_delay: plan.every,
        max_delay: plan.every,
        fresh_instance: false,
    });
    loop {
        timer.arm(job.pause_handle());
        match job.run()? {
            Outcome::Exited(code) => return Ok((code, parent)),
            Outcome::Paused => {
                let started = Instant::now();
                let info = job.checkpoint(store, parent.as_ref(), &plan.job_id, plan.generation)?;
                on_checkpoint(&info, started.elapsed());
                parent = Some(info.checkpoint);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_blob_names_round_trip() {
        let f = FileImage {
            preopen: 3,
            rel: "out/edges.pgm".into(),
            data: ByteBuf::new(),
        };
        let name = file_blob_name(&f);
        assert_eq!(name, "file/3/out/edges.pgm");
        assert_eq!(parse_file_blob_name(&name), Some((3, "out/edges.pgm")));
        assert_eq!(parse_file_blob_name("file/x/y"), None);
        assert_eq!(parse_file_blob_name("other/1/y"), None);
    }
}
