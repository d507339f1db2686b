//! The destination's pull of a post-copy move: after the job resumed here, the memory
//! chunks the source deferred are fetched — those the job touches at once, the rest in
//! the background in the source's order (hottest first) — verified, stored and
//! installed into the job's lazy memory (`wasm_host::lazy`).
//!
//! Two fetch loops share the link: the background one asks for a few chunks at a time
//! (so a demand never waits behind a long transfer), the demand one asks for each
//! touched chunk on its own, at once. Chunks come from the source first and, if it is
//! gone, from any connected peer holding them (content addressing makes any copy as
//! good). If a chunk can be had from nobody, the job's memory is failed: the job is
//! poisoned and stopped, and crash recovery resumes it from its newest replicated
//! checkpoint (see the README's failure model) — never from a memory image with holes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mesh::{FetchItem, FetchOptions, PeerId, Sources};
use serde::Serialize;
use store::ChunkId;

use super::checkpoint::{to_mesh_id, to_store_id, LazyFill};

/// Chunks per background request: small, so a demand fetch is not starved.
const BACKGROUND_BATCH: usize = 8;

/// How one pull went (for `/status`, the timeline and the bench).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct PullStatus {
    pub job: String,
    pub from: String,
    pub chunks: usize,
    pub bytes: u64,
    pub installed: usize,
    /// Chunks the job touched before the background got to them.
    pub demanded: usize,
    pub started_ms: u64,
    /// Set when every chunk is in (or the pull failed).
    pub finished_ms: Option<u64>,
    pub failed: Option<String>,
}

/// Shared view of the pulls of this node, newest last.
pub type Pulls = Arc<Mutex<Vec<PullStatus>>>;

fn lock(p: &Pulls) -> std::sync::MutexGuard<'_, Vec<PullStatus>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where fetched chunks go: the store (verified again there) and every slot of memory
/// that holds them.
struct Sink {
    store: Arc<store::Store>,
    fill: wasm_host::LazyMemory,
    slots: HashMap<ChunkId, Vec<u64>>,
    pulls: Pulls,
    index: usize,
}

impl Sink {
    fn put(&self, id: &ChunkId, data: &[u8], demanded: bool) -> Result<(), String> {
        let got = self
            .store
            .put_chunk(data)
            .map_err(|e| format!("storing chunk {id}: {e}"))?;
        if got != *id {
            return Err(format!("chunk {id} hashed to {got}"));
        }
        let mut installed = 0;
        for slot in self.slots.get(id).into_iter().flatten() {
            if self
                .fill
                .install(*slot, data)
                .map_err(|e| format!("installing chunk {id}: {e}"))?
            {
                installed += 1;
            }
        }
        let mut pulls = lock(&self.pulls);
        if let Some(p) = pulls.get_mut(self.index) {
            p.installed += installed;
            if demanded {
                p.demanded += installed;
            }
        }
        Ok(())
    }
}

/// Fetches `ids` from `peer`, then from any connected peer; installs what arrives.
/// Returns the ids nobody delivered.
async fn fetch_into(
    mesh: &mesh::MeshHandle,
    peer: PeerId,
    ids: Vec<ChunkId>,
    sink: &Sink,
    options: FetchOptions,
    demanded: bool,
) -> Result<Vec<ChunkId>, String> {
    let mut want: Vec<ChunkId> = ids
        .into_iter()
        .filter(|id| {
            sink.slots
                .get(id)
                .is_some_and(|slots| slots.iter().any(|s| sink.fill.is_missing(*s)))
        })
        .collect();
    for sources in [Sources::HoldingAll(vec![peer]), Sources::Connected] {
        if want.is_empty() {
            break;
        }
        let mesh_ids = want.iter().map(to_mesh_id).collect();
        let mut fetch = match mesh.fetch_with(mesh_ids, sources, options).await {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(%e, "post-copy fetch could not start");
                continue;
            }
        };
        while let Some(item) = fetch.next().await {
            match item {
                FetchItem::Chunks { chunks, .. } => {
                    for (id, data) in chunks {
                        let id = to_store_id(&id);
                        sink.put(&id, &data, demanded)?;
                        want.retain(|w| *w != id);
                    }
                }
                FetchItem::Done(_) => break,
            }
        }
    }
    Ok(want)
}

/// Who pulls, from where, for which generation of the job.
pub struct PullCtx {
    pub shared: Arc<super::Shared>,
    pub scheduler: actix::Addr<super::scheduler::Scheduler>,
    /// The source of the move.
    pub peer: PeerId,
    pub pulls: Pulls,
    /// The generation the job runs at here.
    pub generation: u64,
    /// How the source compresses the chunks (the move's choice for the link).
    pub compression: migrate::Compression,
}

/// Pulls the deferred chunks of a post-copy move into the job's memory; see the
/// module doc. `order` is the source's (hottest first). Ends when every chunk is in,
/// or fails the memory (and so the job) when one cannot be had.
pub async fn pull(ctx: PullCtx, fill: LazyFill, order: Vec<ChunkId>, status: PullStatus) {
    let PullCtx {
        shared,
        scheduler,
        peer,
        pulls,
        generation,
        compression,
    } = ctx;
    let options = FetchOptions {
        zstd_level: match compression {
            migrate::Compression::None => None,
            migrate::Compression::Zstd(l) => Some(l),
        },
    };
    let job = status.job.clone();
    let (mesh, store) = (shared.mesh.clone(), shared.store.clone());
    let started = Instant::now();
    let index = {
        let mut p = lock(&pulls);
        p.push(status);
        // Keep the last 64 pulls.
        if p.len() > 64 {
            p.remove(0);
        }
        p.len() - 1
    };
    let LazyFill {
        memory,
        missing,
        mut demands,
        manifest,
        ..
    } = fill;
    let mut slots: HashMap<ChunkId, Vec<u64>> = HashMap::new();
    for (slot, id) in &missing {
        slots.entry(*id).or_default().push(*slot);
    }
    let mut background: Vec<ChunkId> = Vec::with_capacity(slots.len());
    let mut queued = std::collections::HashSet::new();
    for id in order.into_iter().chain(missing.iter().map(|(_, id)| *id)) {
        if slots.contains_key(&id) && queued.insert(id) {
            background.push(id);
        }
    }
    let sink = Sink {
        store: store.clone(),
        fill: memory,
        slots,
        pulls: pulls.clone(),
        index,
    };
    let slot_ids: HashMap<u64, ChunkId> = missing.iter().copied().collect();
    let demands = async {
        while let Some(slot) = demands.recv().await {
            let Some(id) = slot_ids.get(&slot) else {
                continue;
            };
            // A touched chunk is wanted now: no compression (it costs CPU time).
            let left =
                fetch_into(&mesh, peer, vec![*id], &sink, FetchOptions::default(), true).await?;
            if !left.is_empty() {
                return Err(format!(
                    "chunk {id} (touched by the job) is nowhere to be had"
                ));
            }
            if sink.fill.is_complete() {
                break;
            }
        }
        Ok::<(), String>(())
    };
    let background_pull = async {
        for batch in background.chunks(BACKGROUND_BATCH) {
            if sink.fill.is_complete() {
                break;
            }
            let left = fetch_into(&mesh, peer, batch.to_vec(), &sink, options, false).await?;
            if let Some(id) = left.first() {
                return Err(format!("chunk {id} is nowhere to be had"));
            }
        }
        Ok::<(), String>(())
    };
    // The demand loop ends when memory is complete; the background one when its list
    // is done (which completes memory) — or either on the first chunk nobody has.
    let result = tokio::select! {
        r = background_pull => r,
        r = async {
            demands.await?;
            // Complete through demands alone: nothing left for the background.
            std::future::pending::<Result<(), String>>().await
        } => r,
    };
    let result = result.and_then(|()| {
        if sink.fill.is_complete() {
            Ok(())
        } else {
            Err(format!("{} chunks still missing", sink.fill.remaining()))
        }
    });
    match &result {
        Ok(()) => {
            // Every chunk is here: the checkpoint can be listed (a later move or a
            // recovery starts from it).
            if let Err(e) = store.import_manifest(&manifest) {
                tracing::warn!(%e, "importing the final manifest after post-copy");
            }
            tracing::info!(took = ?started.elapsed(), "post-copy pull complete");
        }
        Err(e) => {
            tracing::warn!(%e, "post-copy failed: the job stops here and is recovered from its newest replicated checkpoint");
            // First give the job up (so its stop is not taken for its end), then
            // poison and release it.
            let _ = scheduler
                .send(super::scheduler::Abandon {
                    job: job.clone(),
                    generation,
                    published: generation,
                    kill: false,
                })
                .await;
            sink.fill.fail();
        }
    }
    let mut p = lock(&pulls);
    if let Some(s) = p.get_mut(index) {
        s.finished_ms = Some(shared.now_ms());
        s.failed = result.err();
    }
}
