//! The Checkpoint actor: the store side of a node.
//!
//! It serves the node's chunks to the mesh ([`StoreChunks`]), stores chunks fetched
//! by a move (already verified by the mesh; the store checks again), and restores a
//! moved job from its final manifest. Store and restore work is blocking (hashing,
//! copying memory, compiling a module) and runs on the blocking pool.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use mesh::{ChunkProvider, PeerId};
use migrate::MigrationId;
use store::{BlobRef, ChunkId, ChunkMap, Store};
use wasm_host::{Job, StagedRestore};

use super::runner::ForwardSink;
use super::scheduler::{InstallRestored, Scheduler};
use super::Shared;

pub fn to_store_id(id: &mesh::ChunkId) -> ChunkId {
    ChunkId(id.0)
}

pub fn to_mesh_id(id: &ChunkId) -> mesh::ChunkId {
    mesh::ChunkId(id.0)
}

/// The node's store as the mesh's chunk provider.
pub struct StoreChunks(pub Arc<Store>);

impl ChunkProvider for StoreChunks {
    fn chunk_len(&self, id: &mesh::ChunkId) -> Option<usize> {
        self.0.get_chunk(&to_store_id(id)).ok().map(|c| c.len())
    }

    fn get(&self, id: &mesh::ChunkId) -> Option<Bytes> {
        self.0.get_chunk(&to_store_id(id)).ok().map(Bytes::from)
    }

    fn has(&self, id: &mesh::ChunkId) -> bool {
        self.0.contains(&to_store_id(id))
    }
}

/// A restore being built for an incoming move (filled while pre-copy goes on). The
/// lock is held while it is staged, so the final restore waits for it.
type Staging = Arc<tokio::sync::Mutex<Option<StagedRestore>>>;

pub struct CheckpointActor {
    shared: Arc<Shared>,
    scheduler: Addr<Scheduler>,
    staged: HashMap<MigrationId, Staging>,
}

impl CheckpointActor {
    pub fn new(shared: Arc<Shared>, scheduler: Addr<Scheduler>) -> CheckpointActor {
        CheckpointActor {
            shared,
            scheduler,
            staged: HashMap::new(),
        }
    }
}

/// Build the job of an incoming move from its offered state while pre-copy goes on,
/// so the final restore only applies what changed since.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stage {
    pub migration: MigrationId,
    pub job: String,
    pub home: PeerId,
    pub module: BlobRef,
    pub memory: ChunkMap,
}

impl Handler<Stage> for CheckpointActor {
    type Result = ResponseFuture<()>;

    /// Resolves once the job is staged (or staging failed: the final restore then
    /// restores in full).
    fn handle(&mut self, m: Stage, _: &mut Context<Self>) -> Self::Result {
        let slot: Staging = Arc::new(tokio::sync::Mutex::new(None));
        self.staged.insert(m.migration, slot.clone());
        let shared = self.shared.clone();
        Box::pin(async move {
            let mut guard = slot.lock().await;
            let started = Instant::now();
            let r = tokio::task::spawn_blocking(move || {
                let sink = ForwardSink {
                    job: m.job.clone(),
                    home: m.home,
                    tx: shared.output.clone(),
                };
                // Only what is here: a post-copy move stages before most of memory came.
                StagedRestore::stage_present(
                    &shared.host,
                    &shared.store,
                    &m.module,
                    &m.memory,
                    Vec::new(),
                    &Scheduler::limits(&shared),
                    Box::new(sink),
                )
            })
            .await;
            match r {
                Ok(Ok(staged)) => {
                    tracing::debug!(took = ?started.elapsed(), "incoming job staged");
                    *guard = Some(staged);
                }
                // The final restore falls back to a full one.
                Ok(Err(e)) => tracing::warn!(%e, "staging an incoming job failed"),
                Err(e) => tracing::warn!(%e, "staging task failed"),
            }
        })
    }
}

/// Forget a staged restore (the move ended without using it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unstage(pub MigrationId);

impl Handler<Unstage> for CheckpointActor {
    type Result = ();
    fn handle(&mut self, m: Unstage, _: &mut Context<Self>) {
        self.staged.remove(&m.0);
    }
}

impl Actor for CheckpointActor {
    type Context = Context<Self>;
}

/// Store chunks a fetch delivered.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct StoreChunksMsg(pub Vec<(mesh::ChunkId, Bytes)>);

impl Handler<StoreChunksMsg> for CheckpointActor {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, m: StoreChunksMsg, _: &mut Context<Self>) -> Self::Result {
        let store = self.shared.store.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                for (id, data) in m.0 {
                    let got = store.put_chunk(&data).map_err(|e| e.to_string())?;
                    if got.0 != id.0 {
                        return Err(format!("chunk {id:?} hashed to {got}"));
                    }
                }
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }
}

/// Which of these chunks the store holds.
#[derive(Message)]
#[rtype(result = "Vec<bool>")]
pub struct Has(pub Vec<ChunkId>);

impl Handler<Has> for CheckpointActor {
    type Result = MessageResult<Has>;

    fn handle(&mut self, m: Has, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            m.0.iter()
                .map(|id| self.shared.store.contains(id))
                .collect(),
        )
    }
}

/// Restore a moved job (paused) from its final manifest and hand it to the
/// scheduler. Answers with the time the restore took.
#[derive(Message)]
#[rtype(result = "Result<Restored, String>")]
pub struct Restore {
    pub migration: MigrationId,
    pub job: String,
    pub generation: u64,
    pub home: PeerId,
    pub manifest: Vec<u8>,
    pub manifest_id: ChunkId,
    /// The same manifest, decoded, when the caller checked it hashes to its id
    /// already (a migration core has); else it is decoded and checked here.
    pub decoded: Option<Box<store::Manifest>>,
    /// Post-copy: the memory chunks the store lacks (fetched after the resume);
    /// memory is restored lazily. Every other chunk must be in the store.
    pub deferred: Option<HashSet<ChunkId>>,
}

/// A finished restore.
pub struct Restored {
    pub took: Duration,
    /// Post-copy: the memory still to fill (installed by the Migrator's pull).
    pub lazy: Option<LazyFill>,
}

/// The lazy part of a post-copy restore: what is missing and where demands arrive.
pub struct LazyFill {
    pub memory: wasm_host::LazyMemory,
    /// Missing slots and their chunks.
    pub missing: Vec<(u64, ChunkId)>,
    /// Slots the job touched (each once), for priority fetches.
    pub demands: tokio::sync::mpsc::UnboundedReceiver<u64>,
    /// The final manifest, imported into the store once every chunk is there.
    pub manifest: Vec<u8>,
    pub chunk_size: u32,
}

impl Handler<Restore> for CheckpointActor {
    type Result = ResponseFuture<Result<Restored, String>>;

    fn handle(&mut self, m: Restore, _: &mut Context<Self>) -> Self::Result {
        let shared = self.shared.clone();
        let scheduler = self.scheduler.clone();
        let staging = self.staged.remove(&m.migration);
        Box::pin(async move {
            let started = Instant::now();
            let job_id = m.job.clone();
            let sh = shared.clone();
            let home = m.home;
            let staged = match staging {
                Some(s) => s.lock().await.take(),
                None => None,
            };
            let (job, cp, lazy) = tokio::task::spawn_blocking(move || {
                if let Some(deferred) = m.deferred {
                    let manifest = match m.decoded {
                        Some(d) => *d,
                        None if ChunkId::of(&m.manifest) == m.manifest_id => {
                            store::Manifest::decode(&m.manifest).map_err(|e| e.to_string())?
                        }
                        None => return Err("the manifest does not hash to its id".to_string()),
                    };
                    let cp = store::Checkpoint {
                        id: m.manifest_id,
                        manifest,
                    };
                    restore_lazily(&sh, &m.job, home, m.manifest, cp, &deferred, staged)
                } else {
                    restore(&sh, &m.job, home, &m.manifest, &m.manifest_id, staged)
                        .map(|(job, cp)| (job, cp, None))
                }
            })
            .await
            .map_err(|e| e.to_string())??;
            if cp.manifest.job != job_id {
                return Err(format!(
                    "the manifest is of job {:?}, not {job_id:?}",
                    cp.manifest.job
                ));
            }
            scheduler
                .send(InstallRestored {
                    job_id,
                    generation: m.generation,
                    home: m.home,
                    job,
                    checkpoint: cp,
                })
                .await
                .map_err(|e| e.to_string())??;
            Ok(Restored {
                took: started.elapsed(),
                lazy,
            })
        })
    }
}

/// Post-copy restore: the manifest (checked against its id by the migration core) is
/// not imported (the store lacks the `deferred` chunks); memory is restored from the
/// other chunks, which the store has, and the deferred ones are made lazy.
fn restore_lazily(
    shared: &Shared,
    job: &str,
    home: PeerId,
    manifest: Vec<u8>,
    cp: store::Checkpoint,
    deferred: &HashSet<ChunkId>,
    staged: Option<StagedRestore>,
) -> Result<(Job, store::Checkpoint, Option<LazyFill>), String> {
    let restored = match staged {
        Some(staged) => staged.finish_lazy_with(&shared.store, cp, |id| deferred.contains(id)),
        None => {
            let sink = ForwardSink {
                job: job.to_string(),
                home,
                tx: shared.output.clone(),
            };
            Job::restore_lazily(
                &shared.host,
                &shared.store,
                &manifest,
                &cp.id,
                Vec::new(),
                &Scheduler::limits(shared),
                Box::new(sink),
            )
        }
    }
    .map_err(|e| format!("restoring {job} lazily: {e}"))?;
    let wasm_host::LazyRestore {
        mut job,
        checkpoint,
        missing,
    } = restored;
    let chunk_size = checkpoint.manifest.memory.chunk_size;
    let (tx, demands) = tokio::sync::mpsc::unbounded_channel();
    let memory = job
        .make_lazy(
            missing.iter().map(|(slot, _)| *slot).collect(),
            chunk_size,
            std::sync::Arc::new(move |slot| {
                let _ = tx.send(slot);
            }),
        )
        .map_err(|e| format!("post-copy restore of {}: {e}", checkpoint.manifest.job))?;
    Ok((
        job,
        checkpoint,
        Some(LazyFill {
            memory,
            missing,
            demands,
            manifest,
            chunk_size,
        }),
    ))
}

fn restore(
    shared: &Shared,
    job: &str,
    home: PeerId,
    manifest: &[u8],
    id: &ChunkId,
    staged: Option<StagedRestore>,
) -> Result<(Job, store::Checkpoint), String> {
    if ChunkId::of(manifest) != *id {
        return Err("the manifest does not hash to its id".into());
    }
    let cp = shared
        .store
        .import_manifest(manifest)
        .map_err(|e| format!("importing the manifest: {e}"))?;
    if cp.id != *id {
        return Err("the imported manifest has another id".into());
    }
    if let Some(staged) = staged {
        match staged.finish_checkpoint(&shared.store, cp) {
            Ok(r) => return Ok(r),
            // E.g. the job grew past what was staged in a way finish refuses: restore
            // from scratch (slower, same result).
            Err(e) => tracing::warn!(%e, "staged restore refused; restoring in full"),
        }
    }
    let sink = ForwardSink {
        job: job.to_string(),
        home,
        tx: shared.output.clone(),
    };
    Job::restore_from_checkpoint(
        &shared.host,
        &shared.store,
        id,
        Vec::new(),
        &Scheduler::limits(shared),
        Box::new(sink),
    )
    .map_err(|e| format!("restoring {job}: {e}"))
}
