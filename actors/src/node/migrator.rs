//! The Migrator actor: the shell around the sans-IO migration cores.
//!
//! For each move it holds a [`migrate::Source`] (this node runs the job) or a
//! [`migrate::Destination`] (the job comes here) and carries out their actions in
//! order: protocol messages go out as mesh control requests, chunk fetches through
//! the mesh's verified chunk exchange (the destination pulls from the source),
//! checkpoints, pauses and resumes through the Scheduler, restores through the
//! Checkpoint actor. A 20 ms tick drives the cores' timeouts (retransmissions,
//! give-ups). Which node runs a job is decided only by the cores; see the `migrate`
//! crate for why a job never runs twice and is never lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use mesh::{FetchItem, FetchOptions, PeerId, Sources};
use migrate::{
    Compression, DestAction, DestConfig, DestEvent, DestPhase, Destination, LevelProfile, Message,
    MigrationId, Outcome, Source, SourceAction, SourceConfig, SourceEvent, StateMap, ZSTD_PROFILES,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::checkpoint::{to_mesh_id, CheckpointActor, Restore, Stage, StoreChunksMsg, Unstage};
use super::config::CompressionChoice;
use super::link::{Estimate, LinkMonitor};
use super::proto::{encode, InlineChunk, NodeMsg, MAX_INLINE_BYTES};
use super::scheduler::{Control, JobState, Lookup, Op, Scheduler};
use super::Shared;

const TICK: Duration = Duration::from_millis(20);
/// A destination reports fetch progress this often (the source's reply timeout must
/// be longer).
const PROGRESS_EVERY: Duration = Duration::from_millis(150);
/// Finished destination cores are kept this long to answer retransmissions.
const LINGER: Duration = Duration::from_secs(30);
/// Moves remembered for status and timelines.
const MOVES_KEPT: usize = 1024;

/// How one move goes, overriding the node's config.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MovePolicy {
    /// Pre-copy rounds (0 = stop-and-copy).
    pub max_rounds: Option<u32>,
    pub compression: Option<String>,
    /// "auto", "pre-copy", "post-copy" or "hybrid" (default: `[migration] mode`).
    pub mode: Option<String>,
}

/// What a move did, as the source saw it (plus the destination's figures when the
/// move ran in this process).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MoveReport {
    pub migration: String,
    pub job: String,
    pub from: String,
    pub to: String,
    /// "committed", "aborted: ..." or "escalated".
    pub outcome: String,
    pub generation: u64,
    /// Milliseconds since the source node started, when the move began and ended.
    pub started_ms: u64,
    pub ended_ms: u64,
    pub rounds: usize,
    pub stop_reason: String,
    /// The job's downtime: pause requested → the destination resumed it. The source
    /// cannot see the resume, so it is estimated from the time the handover (Go, or a
    /// post-copy Final) first left: plus half its round trip to the GoAck, counting the
    /// destination's hold between them (its restore, which it reports in the GoAck)
    /// in full.
    pub downtime_ms: f64,
    /// Pause requested → the commit ack back at the source (an upper bound).
    pub downtime_upper_ms: f64,
    /// Of which: stopping the job and writing its last checkpoint.
    pub pause_ms: f64,
    pub total_ms: f64,
    pub offered_bytes: u64,
    pub present_bytes: u64,
    /// Uncompressed chunk bytes sent in rounds and the final copy.
    pub sent_bytes: u64,
    pub final_bytes: u64,
    pub compression: String,
    pub throughput_bytes_per_s: u64,
    /// "pre-copy", "post-copy" or "hybrid".
    #[serde(default)]
    pub mode: String,
    /// Post-copy: bytes the destination fetches after the job resumed there.
    #[serde(default)]
    pub deferred_bytes: u64,
    /// The destination's hold between the handover and the resume (its restore,
    /// after a post-copy Final), from its GoAck.
    #[serde(default)]
    pub dest_held_ms: u64,
    /// Bytes of the final manifest patch (part of the downtime's transfer).
    #[serde(default)]
    pub manifest_patch_bytes: u64,
}

/// A fault a test or a chaos run injects into this node's migrations, at the first
/// migration message of a given kind (`Offer`, `Have`, `Round`, `RoundAck`, `Final`,
/// `Ready`, `Go`, `GoAck`) this node *receives*.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Drop that message and every later one of its migration, both ways; the link
    /// comes back after `heal_after` (never, if `None`).
    CutAt {
        at: String,
        heal_after: Option<Duration>,
    },
    /// The node dies on receipt (before handling it): its mesh stops, its jobs are
    /// killed.
    DieAt(String),
}

#[derive(Default)]
struct FaultState {
    fault: Option<Fault>,
    cut: HashMap<MigrationId, Option<Instant>>,
    dead: bool,
}

impl FaultState {
    /// Whether a message of migration `id` is lost now.
    fn lost(&mut self, id: MigrationId) -> bool {
        if self.dead {
            return true;
        }
        match self.cut.get(&id) {
            Some(Some(until)) if Instant::now() >= *until => {
                self.cut.remove(&id);
                false
            }
            Some(_) => true,
            None => false,
        }
    }
}

struct SourceRun {
    core: Source,
    job: String,
    peer: PeerId,
    to_name: String,
    home: PeerId,
    started: Instant,
    started_ms: u64,
    pause_at: Option<Instant>,
    /// When Go was first sent.
    go_at: Option<Instant>,
    pause_ms: f64,
    waiter: Option<oneshot::Sender<Result<MoveReport, String>>>,
    /// The copy in flight (pre-copy round, or the final copy as round `rounds + 1`):
    /// (round, its bytes, bytes the destination reported fetched).
    copy: Option<(u32, u64, u64)>,
}

/// A move this node is making as the source, while it runs (`GET /moves/active`,
/// what `roam migrate` draws its progress bar from).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MoveProgress {
    pub migration: String,
    pub job: String,
    pub to: String,
    /// `offer`, `pre-copy`, `checkpoint`, `pause`, `final copy`, `handover`,
    /// `escalated`.
    pub phase: String,
    /// The copy in flight: pre-copy round `round`, or the final copy.
    pub round: u32,
    /// Bytes of that copy, and how many of them the destination reported fetched.
    pub copy_bytes: u64,
    pub copy_done_bytes: u64,
    /// Bytes of the pre-copy rounds the destination acknowledged.
    pub acked_bytes: u64,
    /// The job state the move carries (its offered chunk map).
    pub state_bytes: u64,
    pub elapsed_ms: u64,
}

struct DestRun {
    core: Destination,
    peer: PeerId,
    home: PeerId,
    finished_at: Option<Instant>,
    /// The offered state: staged into a restore once round 1 is here.
    offered: Option<StateMap>,
    /// Post-copy: the deferred chunks (the source's order), and the lazy memory of the
    /// restored job until Go starts the pull.
    deferred: Vec<migrate::ChunkRef>,
    deferred_compression: Compression,
    lazy: Option<super::checkpoint::LazyFill>,
}

pub struct Migrator {
    shared: Arc<Shared>,
    scheduler: Addr<Scheduler>,
    checkpoint: Addr<CheckpointActor>,
    links: Addr<LinkMonitor>,
    sources: HashMap<MigrationId, SourceRun>,
    dests: HashMap<MigrationId, DestRun>,
    /// Newest generation of each job this node was handed (destination fencing).
    owned: HashMap<String, u64>,
    moves: Vec<MoveReport>,
    /// Post-copy pulls this node ran as a destination.
    pulls: super::postcopy::Pulls,
    /// The destination's wire bytes per migration (fetches it ran).
    wire_bytes: HashMap<MigrationId, u64>,
    faults: FaultState,
}

impl Migrator {
    /// Recovery's last judgement (see `Shared::majority_in_sight`).
    fn majority_in_sight(&self) -> bool {
        self.shared
            .majority_in_sight
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn new(
        shared: Arc<Shared>,
        scheduler: Addr<Scheduler>,
        checkpoint: Addr<CheckpointActor>,
        links: Addr<LinkMonitor>,
    ) -> Migrator {
        Migrator {
            shared,
            scheduler,
            checkpoint,
            links,
            sources: HashMap::new(),
            dests: HashMap::new(),
            owned: HashMap::new(),
            moves: Vec::new(),
            pulls: Default::default(),
            wire_bytes: HashMap::new(),
            faults: FaultState::default(),
        }
    }

    fn send_msg(&mut self, peer: PeerId, msg: Message, home: Option<PeerId>) {
        if self.faults.lost(msg.migration) {
            tracing::debug!(
                body = msg.body.name(),
                "fault: outgoing migration message lost"
            );
            return;
        }
        // The last dirty chunks travel with the Final when they are few.
        let inline_ids: Vec<store::ChunkId> = match &msg.body {
            migrate::Body::Final { chunks, .. }
                if chunks.iter().map(|c| c.len as usize).sum::<usize>() <= MAX_INLINE_BYTES =>
            {
                chunks.iter().map(|c| c.id).collect()
            }
            _ => Vec::new(),
        };
        let home = home.map(|h| h.to_bytes()).unwrap_or_default();
        let mesh = self.shared.mesh.clone();
        let body = msg.body.name();
        if inline_ids.is_empty() {
            // Straight onto the mesh's queue from here: a spawned task would wait for
            // this actor thread's other work (a job starting, say), and the Final and
            // the GoAck are inside the job's downtime.
            let data = encode(&NodeMsg::Migrate {
                msg,
                home,
                inline: Vec::new(),
            });
            tracing::trace!(body, bytes = data.len(), "migration message out");
            match mesh.control_request_now(peer, data) {
                Ok(reply) => {
                    actix::spawn(async move {
                        // A lost message is the core's business (it retransmits or
                        // gives up).
                        if let Ok(Err(e)) | Err(e) =
                            reply.await.map_err(|_| mesh::MeshError::Stopped)
                        {
                            tracing::debug!(%peer, %e, "migration message not delivered");
                        }
                    });
                }
                Err((_, data)) => {
                    actix::spawn(async move {
                        if let Err(e) = mesh.control_request(peer, data).await {
                            tracing::debug!(%peer, %e, "migration message not delivered");
                        }
                    });
                }
            }
            return;
        }
        let store = self.shared.store.clone();
        actix::spawn(async move {
            let inline = tokio::task::spawn_blocking(move || {
                inline_ids
                    .into_iter()
                    .map(|id| store.get_chunk(&id).map(|data| InlineChunk { id, data }))
                    .collect::<Result<Vec<_>, _>>()
                    // Without them the destination fetches them as usual.
                    .unwrap_or_default()
            })
            .await
            .unwrap_or_default();
            let data = encode(&NodeMsg::Migrate { msg, home, inline });
            tracing::trace!(body, bytes = data.len(), "migration message out");
            // A lost message is the core's business (it retransmits or gives up).
            if let Err(e) = mesh.control_request(peer, data).await {
                tracing::debug!(%peer, %e, "migration message not delivered");
            }
        });
    }

    fn source_config(&self, policy: &MovePolicy, bandwidth: u64) -> Result<SourceConfig, String> {
        let m = &self.shared.config.migration;
        let mut cfg = SourceConfig::default();
        cfg.precopy.max_rounds = policy.max_rounds.unwrap_or(m.max_rounds);
        cfg.precopy.downtime_target_ms = m.downtime_target_ms;
        cfg.reply_timeout_ms = m.reply_timeout_ms;
        cfg.handover_timeout_ms = m.reply_timeout_ms.max(2_000);
        cfg.link_bandwidth_bytes_per_s = bandwidth.max(1);
        let choice = match &policy.compression {
            Some(c) => {
                let mut tmp = self.shared.config.clone();
                tmp.migration.compression = c.clone();
                tmp.compression()?
            }
            None => self.shared.config.compression()?,
        };
        cfg.compression_profiles = match choice {
            CompressionChoice::Auto => ZSTD_PROFILES.to_vec(),
            CompressionChoice::None => Vec::new(),
            CompressionChoice::Zstd(level) => vec![profile_of(level)],
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        cfg.compression_cores = (cpus - 1.0).max(0.25);
        cfg.postcopy.requested = match &policy.mode {
            Some(mode) => super::config::parse_move_mode(mode)?,
            None => self.shared.config.move_mode(),
        };
        cfg.postcopy.hybrid_rounds = m.hybrid_rounds;
        // The destination runs this same software: it can restore lazily where this
        // node can (if it cannot, its restore fails and the move aborts safely).
        cfg.postcopy.available = postcopy_available();
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    fn record(&mut self, r: MoveReport) {
        tracing::info!(
            job = %r.job, from = %r.from, to = %r.to, outcome = %r.outcome,
            downtime_ms = r.downtime_ms, rounds = r.rounds, sent = r.sent_bytes,
            "move finished"
        );
        self.moves.push(r);
        if self.moves.len() > MOVES_KEPT {
            self.moves.remove(0);
        }
    }

    fn drive_source(&mut self, id: MigrationId, ctx: &mut Context<Self>) {
        loop {
            let Some(run) = self.sources.get_mut(&id) else {
                return;
            };
            let Some(action) = run.core.poll_action() else {
                return;
            };
            let (peer, job, home) = (run.peer, run.job.clone(), run.home);
            match action {
                SourceAction::Send(msg) => {
                    // The handover: Go, or a post-copy Final (which carries it).
                    let hands_over = matches!(
                        msg.body,
                        migrate::Body::Go
                            | migrate::Body::Final {
                                postcopy: Some(_),
                                ..
                            }
                    );
                    if hands_over && run.go_at.is_none() {
                        run.go_at = Some(Instant::now());
                    }
                    match &msg.body {
                        migrate::Body::Round { round, chunks, .. } => {
                            let bytes = chunks.iter().map(|c| u64::from(c.len)).sum();
                            run.copy = Some((*round, bytes, 0));
                        }
                        migrate::Body::Final {
                            after_round,
                            chunks,
                            ..
                        } => {
                            let bytes = chunks.iter().map(|c| u64::from(c.len)).sum();
                            run.copy = Some((after_round.saturating_add(1), bytes, 0));
                        }
                        _ => {}
                    }
                    self.send_msg(peer, msg, Some(home))
                }
                SourceAction::Checkpoint { round } => {
                    let sched = self.scheduler.clone();
                    let me = ctx.address();
                    actix::spawn(async move {
                        let ev = match sched
                            .send(Control {
                                job,
                                op: Op::Checkpoint,
                            })
                            .await
                        {
                            Ok(Ok(Some(t))) => SourceEvent::Checkpointed {
                                round,
                                state: StateMap::from_manifest(&t.checkpoint.manifest),
                            },
                            other => {
                                tracing::warn!(?other, "checkpoint during a move failed");
                                SourceEvent::Cancel
                            }
                        };
                        me.do_send(SourceFeed(id, ev));
                    });
                }
                SourceAction::PauseJob => {
                    run.pause_at = Some(Instant::now());
                    let sched = self.scheduler.clone();
                    let me = ctx.address();
                    actix::spawn(async move {
                        let ev = match sched.send(Control { job, op: Op::Pause }).await {
                            Ok(Ok(Some(t))) => {
                                me.do_send(PauseCost(id, t.stop + t.write));
                                SourceEvent::Paused {
                                    manifest: Box::new(t.checkpoint.manifest),
                                    manifest_id: t.checkpoint.id,
                                }
                            }
                            other => {
                                tracing::info!(?other, "pause for a move failed");
                                SourceEvent::PauseFailed
                            }
                        };
                        me.do_send(SourceFeed(id, ev));
                    });
                }
                SourceAction::ResumeJob => self.control(job, Op::Resume),
                SourceAction::RecordHandover => {
                    // The store is in memory or the node keeps no journal yet: a
                    // restarted node forgets its jobs anyway, so it cannot resume this
                    // one on its own. (Crash recovery adds the durable record.)
                    tracing::debug!(%job, "handover recorded");
                }
                SourceAction::DropJob => self.control(job, Op::Drop),
                SourceAction::Escalate => {
                    tracing::warn!(%job, %peer, to = %run.to_name, node = %self.shared.name,
                        "handover unanswered: job stays paused here for recovery");
                    let escalated = (
                        run.core.generation(),
                        run.to_name.clone(),
                        self.shared.now_ms(),
                    );
                    if let Ok(mut e) = self.shared.escalated.lock() {
                        e.insert(job.clone(), escalated);
                    }
                }
                SourceAction::Finished(outcome) => {
                    if outcome == Outcome::Committed {
                        let moved = (
                            run.core.generation() + 1,
                            run.to_name.clone(),
                            self.shared.now_ms(),
                        );
                        if let Ok(mut m) = self.shared.moved.lock() {
                            m.insert(job.clone(), moved);
                        }
                    }
                    if outcome != Outcome::Escalated {
                        // Resolved (a late GoAck or Abort, or never escalated).
                        if let Ok(mut e) = self.shared.escalated.lock() {
                            e.remove(&job);
                        }
                    }
                    // An escalated move stays: a late GoAck or Abort still resolves it.
                    let run = if outcome == Outcome::Escalated {
                        self.sources.get_mut(&id).map(|r| (r.waiter.take(), None))
                    } else {
                        self.sources
                            .remove(&id)
                            .map(|mut r| (r.waiter.take(), Some(r)))
                    };
                    let Some((waiter, removed)) = run else {
                        return;
                    };
                    let report = match (&removed, self.sources.get(&id)) {
                        (Some(r), _) | (None, Some(r)) => self.source_report(id, r, outcome),
                        (None, None) => return,
                    };
                    self.record(report.clone());
                    if let Some(w) = waiter {
                        let _ = w.send(match outcome {
                            Outcome::Committed => Ok(report),
                            _ => Err(format!("move of {} {}", report.job, report.outcome)),
                        });
                    }
                    if removed.is_some() {
                        return;
                    }
                }
            }
        }
    }

    fn control(&self, job: String, op: Op) {
        let sched = self.scheduler.clone();
        actix::spawn(async move {
            match sched
                .send(Control {
                    job: job.clone(),
                    op,
                })
                .await
            {
                Ok(Ok(_)) => {}
                other => tracing::warn!(%job, ?other, "job control failed"),
            }
        });
    }

    fn source_report(&self, id: MigrationId, run: &SourceRun, outcome: Outcome) -> MoveReport {
        let r = run.core.report();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let upper = run.pause_at.map(|p| ms(p.elapsed())).unwrap_or(0.0);
        // Handover → GoAck is one way there, the destination's hold (its restore,
        // after a post-copy Final), and one way back: the job resumed there one
        // one-way trip plus the hold after the handover left.
        let held = r.dest_held_ms as f64;
        let downtime = match (run.pause_at, run.go_at) {
            (Some(p), Some(g)) => {
                ms(g.saturating_duration_since(p)) + (ms(g.elapsed()) + held) / 2.0
            }
            _ => upper,
        };
        let compression = r
            .rounds
            .first()
            .map(|x| x.compression)
            .unwrap_or(Compression::None);
        MoveReport {
            migration: id.to_string(),
            job: run.job.clone(),
            from: self.shared.name.clone(),
            to: run.to_name.clone(),
            outcome: match outcome {
                Outcome::Committed => "committed".into(),
                Outcome::Aborted(reason) => format!("aborted: {reason:?}"),
                Outcome::Escalated => "escalated".into(),
            },
            generation: run.core.generation() + u64::from(outcome == Outcome::Committed),
            started_ms: run.started_ms,
            ended_ms: self.shared.now_ms(),
            rounds: r.rounds.len(),
            stop_reason: r.stop.map(|s| format!("{s:?}")).unwrap_or_default(),
            downtime_upper_ms: if outcome == Outcome::Committed {
                upper
            } else {
                0.0
            },
            downtime_ms: if outcome == Outcome::Committed {
                downtime
            } else {
                0.0
            },
            pause_ms: run.pause_ms,
            total_ms: run.started.elapsed().as_secs_f64() * 1e3,
            offered_bytes: r.offered_bytes,
            present_bytes: r.present_bytes,
            sent_bytes: r.rounds.iter().map(|x| x.bytes).sum::<u64>() + r.final_bytes,
            final_bytes: r.final_bytes,
            compression: match compression {
                Compression::None => "none".into(),
                Compression::Zstd(l) => format!("zstd:{l}"),
            },
            throughput_bytes_per_s: r.throughput,
            mode: r.mode.name().into(),
            deferred_bytes: r.deferred_bytes,
            dest_held_ms: r.dest_held_ms,
            manifest_patch_bytes: r.manifest_patch_bytes as u64,
        }
    }

    fn drive_dest(&mut self, id: MigrationId, ctx: &mut Context<Self>) {
        loop {
            let Some(run) = self.dests.get_mut(&id) else {
                return;
            };
            let Some(action) = run.core.poll_action() else {
                return;
            };
            let (peer, home, job, generation) = (
                run.peer,
                run.home,
                run.core.job().to_string(),
                run.core.generation(),
            );
            match action {
                DestAction::Send(msg) => self.send_msg(peer, msg, None),
                DestAction::Fetch {
                    round,
                    chunks,
                    compression,
                } => {
                    let mesh = self.shared.mesh.clone();
                    let store = self.shared.store.clone();
                    let cp = self.checkpoint.clone();
                    let me = ctx.address();
                    actix::spawn(async move {
                        let ids = chunks.iter().map(|c| to_mesh_id(&c.id)).collect();
                        let progress = {
                            let me = me.clone();
                            move |bytes| {
                                me.do_send(DestFeed(id, DestEvent::Progress { round, bytes }))
                            }
                        };
                        let (ok, wire) =
                            fetch_round(mesh, store, cp, peer, ids, compression, progress).await;
                        me.do_send(WireBytes(id, wire));
                        let ev = if ok {
                            DestEvent::Fetched { round }
                        } else {
                            DestEvent::FetchFailed { round }
                        };
                        me.do_send(DestFeed(id, ev));
                    });
                }
                DestAction::Defer {
                    chunks,
                    compression,
                } => {
                    run.deferred = chunks;
                    run.deferred_compression = compression;
                }
                DestAction::VerifyAndRestore {
                    manifest,
                    manifest_id,
                    decoded,
                } => {
                    let cp = self.checkpoint.clone();
                    let me = ctx.address();
                    let deferred = (!run.deferred.is_empty())
                        .then(|| run.deferred.iter().map(|c| c.id).collect());
                    actix::spawn(async move {
                        let r = cp
                            .send(Restore {
                                migration: id,
                                job: job.clone(),
                                generation: generation + 1,
                                home,
                                manifest,
                                manifest_id,
                                decoded: Some(decoded),
                                deferred,
                            })
                            .await;
                        let ev = match r {
                            Ok(Ok(restored)) => {
                                tracing::debug!(%job, took = ?restored.took, lazy = restored.lazy.is_some(), "restored for a move");
                                if let Some(fill) = restored.lazy {
                                    me.do_send(LazyReady(id, fill));
                                }
                                DestEvent::Restored
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(%job, %e, "restore for a move failed");
                                DestEvent::RestoreFailed
                            }
                            Err(e) => {
                                tracing::warn!(%job, %e, "restore for a move failed");
                                DestEvent::RestoreFailed
                            }
                        };
                        me.do_send(DestFeed(id, ev));
                    });
                }
                DestAction::ResumeJob {
                    job, generation, ..
                } => {
                    self.owned.insert(job.clone(), generation);
                    let fill = run.lazy.take();
                    let order: Vec<store::ChunkId> = run.deferred.iter().map(|c| c.id).collect();
                    let (peer, bytes) = (run.peer, run.deferred.iter().map(|c| c.len as u64).sum());
                    let compression = run.deferred_compression;
                    self.control(job.clone(), Op::Go { generation });
                    if let Some(fill) = fill {
                        let status = super::postcopy::PullStatus {
                            job: job.clone(),
                            from: peer.to_string(),
                            chunks: fill.missing.len(),
                            bytes,
                            started_ms: self.shared.now_ms(),
                            ..Default::default()
                        };
                        let ctx = super::postcopy::PullCtx {
                            shared: self.shared.clone(),
                            scheduler: self.scheduler.clone(),
                            peer,
                            pulls: self.pulls.clone(),
                            generation,
                            compression,
                        };
                        actix::spawn(super::postcopy::pull(ctx, fill, order, status));
                    }
                }
                DestAction::DiscardRestored => self.control(job, Op::DiscardRestored),
                DestAction::Finished(outcome) => {
                    tracing::info!(%job, ?outcome, node = %self.shared.name, "incoming move finished");
                    run.finished_at = Some(Instant::now());
                    self.checkpoint.do_send(Unstage(id));
                }
            }
        }
    }

    /// Applies an injected fault to a received message; true = the message is lost.
    fn fault_on_receive(&mut self, msg: &Message) -> bool {
        let name = msg.body.name();
        match self.faults.fault.clone() {
            Some(Fault::CutAt { at, heal_after }) if at == name => {
                tracing::info!(node = %self.shared.name, at = name, "fault: link cut");
                self.faults.fault = None;
                self.faults
                    .cut
                    .insert(msg.migration, heal_after.map(|d| Instant::now() + d));
            }
            Some(Fault::DieAt(at)) if at == name => {
                tracing::info!(node = %self.shared.name, at = name, "fault: node dies");
                self.faults.fault = None;
                self.faults.dead = true;
                let sched = self.scheduler.clone();
                let mesh = self.shared.mesh.clone();
                actix::spawn(async move {
                    let _ = sched.send(super::scheduler::KillAll).await;
                    let _ = mesh.shutdown().await;
                });
            }
            _ => {}
        }
        self.faults.lost(msg.migration)
    }

    fn incoming(&mut self, from: PeerId, msg: Message, home: Vec<u8>, ctx: &mut Context<Self>) {
        let id = msg.migration;
        let now = self.shared.now_ms();
        if self.fault_on_receive(&msg) {
            return;
        }
        tracing::debug!(node = %self.shared.name, %id, body = msg.body.name(), "migration message in");
        let majority = self.majority_in_sight();
        if let Some(run) = self.sources.get_mut(&id) {
            if run.peer != from {
                tracing::warn!(%from, "migration message from a peer that is not the destination");
                return;
            }
            match (&msg.body, &mut run.copy) {
                (migrate::Body::Progress { round, bytes }, Some((r, total, done)))
                    if r == round =>
                {
                    *done = (*bytes).min(*total);
                }
                (migrate::Body::RoundAck { round }, Some((r, total, done))) if r == round => {
                    *done = *total;
                }
                _ => {}
            }
            run.core.set_majority_in_sight(majority);
            if let Err(e) = run.core.handle_message(now, msg) {
                tracing::debug!(%e, "source refused a message");
            }
            self.drive_source(id, ctx);
            return;
        }
        if let Some(run) = self.dests.get_mut(&id) {
            if run.peer != from {
                tracing::warn!(%from, "migration message from a peer that is not the source");
                return;
            }
            if let Err(e) = run.core.handle_message(now, msg) {
                tracing::debug!(%e, "destination refused a message");
            }
            self.drive_dest(id, ctx);
            return;
        }
        if !matches!(msg.body, migrate::Body::Offer(_)) {
            tracing::debug!(%id, "message of an unknown migration dropped");
            return;
        }
        let Ok(home) = PeerId::from_bytes(&home) else {
            tracing::warn!(%from, "offer without a valid home");
            return;
        };
        let job = match &msg.body {
            migrate::Body::Offer(o) => o.job.clone(),
            _ => return,
        };
        let store = self.shared.store.clone();
        let local = self.owned.get(&job).copied();
        match Destination::accept(
            DestConfig {
                idle_timeout_ms: self.shared.config.migration.reply_timeout_ms * 4,
                lazy_restore: postcopy_available(),
            },
            now,
            &msg,
            local,
            |c| store.contains(c),
        ) {
            Ok(core) => {
                tracing::info!(%job, %from, node = %self.shared.name, "accepting a move");
                let offered = match &msg.body {
                    migrate::Body::Offer(o) => Some(o.state.clone()),
                    _ => None,
                };
                self.dests.insert(
                    id,
                    DestRun {
                        core,
                        peer: from,
                        home,
                        finished_at: None,
                        offered,
                        deferred: Vec::new(),
                        deferred_compression: Compression::None,
                        lazy: None,
                    },
                );
                self.drive_dest(id, ctx);
            }
            Err(migrate::MigrateError::Fenced { .. }) => {
                tracing::warn!(%job, "offer of an older generation dropped");
            }
            Err(e) => {
                tracing::warn!(%job, %e, "offer refused");
                self.send_msg(from, Destination::refusal(&msg), None);
            }
        }
    }
}

/// A zstd level's profile: the table's, or the nearest one below it.
fn profile_of(level: i32) -> LevelProfile {
    let mut best = ZSTD_PROFILES[0];
    for p in ZSTD_PROFILES {
        if p.level <= level {
            best = *p;
        }
    }
    LevelProfile { level, ..best }
}

/// Fetches one round's chunks from `peer` into the store. Returns success and the
/// bytes that crossed the wire.
#[allow(clippy::too_many_arguments)]
pub(super) async fn fetch_round(
    mesh: mesh::MeshHandle,
    shared_store: Arc<store::Store>,
    cp: Addr<CheckpointActor>,
    peer: PeerId,
    ids: Vec<mesh::ChunkId>,
    compression: Compression,
    progress: impl Fn(u64),
) -> (bool, u64) {
    let ids: Vec<mesh::ChunkId> = {
        let store = &shared_store;
        ids.into_iter()
            .filter(|id| !store.contains(&super::checkpoint::to_store_id(id)))
            .collect()
    };
    if ids.is_empty() {
        return (true, 0);
    }
    let options = FetchOptions {
        zstd_level: match compression {
            Compression::None => None,
            Compression::Zstd(l) => Some(l),
        },
    };
    let mut fetch = match mesh
        .fetch_with(ids, Sources::HoldingAll(vec![peer]), options)
        .await
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(%e, "fetch could not start");
            return (false, 0);
        }
    };
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    let mut bytes = 0u64;
    loop {
        let item = tokio::select! {
            item = fetch.next() => item,
            _ = tick.tick() => {
                progress(bytes);
                continue;
            }
        };
        let Some(item) = item else { break };
        match item {
            FetchItem::Chunks { chunks, .. } => {
                bytes += chunks.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
                match cp.send(StoreChunksMsg(chunks)).await {
                    Ok(Ok(())) => {}
                    other => {
                        tracing::warn!(?other, "storing fetched chunks failed");
                        return (false, 0);
                    }
                }
            }
            FetchItem::Done(outcome) => {
                return (outcome.missing.is_empty(), outcome.wire_bytes);
            }
        }
    }
    (false, 0)
}

impl Actor for Migrator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(TICK, |act, ctx| {
            let now = act.shared.now_ms();
            let ids: Vec<MigrationId> = act.sources.keys().copied().collect();
            for id in ids {
                if let Some(run) = act.sources.get_mut(&id) {
                    run.core.handle_timeout(now);
                }
                act.drive_source(id, ctx);
            }
            let ids: Vec<MigrationId> = act.dests.keys().copied().collect();
            for id in ids {
                if let Some(run) = act.dests.get_mut(&id) {
                    run.core.handle_timeout(now);
                }
                act.drive_dest(id, ctx);
            }
            act.dests
                .retain(|_, d| d.finished_at.is_none_or(|t| t.elapsed() < LINGER));
        });
    }
}

/// Move `job` (running here) to `to`.
#[derive(Message)]
#[rtype(result = "Result<MoveReport, String>")]
pub struct StartMove {
    pub job: String,
    pub to: PeerId,
    pub to_name: String,
    pub policy: MovePolicy,
}

impl Handler<StartMove> for Migrator {
    type Result = ResponseFuture<Result<MoveReport, String>>;

    fn handle(&mut self, m: StartMove, ctx: &mut Context<Self>) -> Self::Result {
        if m.to == self.shared.peer_id {
            return Box::pin(async { Err("the job already runs on that node".to_string()) });
        }
        if self.sources.values().any(|s| s.job == m.job) {
            let job = m.job;
            return Box::pin(async move { Err(format!("{job} is already moving")) });
        }
        let (tx, rx) = oneshot::channel();
        let me = ctx.address();
        let sched = self.scheduler.clone();
        let links = self.links.clone();
        actix::spawn(async move {
            let r = async {
                let (generation, home, state) = sched
                    .send(Lookup(m.job.clone()))
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("no job {} here", m.job))?;
                if state != JobState::Running {
                    return Err(format!("job {} is {state:?}, not running", m.job));
                }
                let est = links
                    .send(Estimate(m.to))
                    .await
                    .map_err(|e| e.to_string())?;
                let t = sched
                    .send(Control {
                        job: m.job.clone(),
                        op: Op::Checkpoint,
                    })
                    .await
                    .map_err(|e| e.to_string())??
                    .ok_or("no checkpoint")?;
                Ok((generation, home, est, t))
            }
            .await;
            match r {
                Ok((generation, home, est, t)) => me.do_send(BeginSource {
                    m,
                    generation,
                    home,
                    bandwidth: est.bandwidth,
                    rtt: est.rtt,
                    state: StateMap::from_manifest(&t.checkpoint.manifest),
                    waiter: tx,
                }),
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        Box::pin(async move { rx.await.map_err(|_| "the migrator stopped".to_string())? })
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct BeginSource {
    m: StartMove,
    generation: u64,
    home: PeerId,
    bandwidth: Option<u64>,
    rtt: Option<Duration>,
    state: StateMap,
    waiter: oneshot::Sender<Result<MoveReport, String>>,
}

impl Handler<BeginSource> for Migrator {
    type Result = ();

    fn handle(&mut self, b: BeginSource, ctx: &mut Context<Self>) {
        // Without a measurement, a sub-millisecond RTT means a LAN or loopback.
        let bandwidth = b.bandwidth.unwrap_or(match b.rtt {
            Some(r) if r < Duration::from_millis(1) => 1_000_000_000,
            _ => 12_500_000,
        });
        let cfg = match self.source_config(&b.m.policy, bandwidth) {
            Ok(c) => c,
            Err(e) => {
                let _ = b.waiter.send(Err(e));
                return;
            }
        };
        let id = MigrationId(rand::random());
        let now = self.shared.now_ms();
        match Source::new(cfg, id, b.m.job.clone(), b.generation, b.state, now) {
            Ok(core) => {
                tracing::info!(job = %b.m.job, to = %b.m.to_name, %id, "move started");
                self.sources.insert(
                    id,
                    SourceRun {
                        core,
                        job: b.m.job,
                        peer: b.m.to,
                        to_name: b.m.to_name,
                        home: b.home,
                        started: Instant::now(),
                        started_ms: now,
                        pause_at: None,
                        go_at: None,
                        pause_ms: 0.0,
                        waiter: Some(b.waiter),
                        copy: None,
                    },
                );
                self.drive_source(id, ctx);
            }
            Err(e) => {
                let _ = b.waiter.send(Err(e.to_string()));
            }
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct SourceFeed(MigrationId, SourceEvent);

impl Handler<SourceFeed> for Migrator {
    type Result = ();
    fn handle(&mut self, m: SourceFeed, ctx: &mut Context<Self>) {
        let now = self.shared.now_ms();
        let majority = self.majority_in_sight();
        if let Some(run) = self.sources.get_mut(&m.0) {
            run.core.set_majority_in_sight(majority);
            if let Err(e) = run.core.handle_event(now, m.1) {
                tracing::warn!(%e, "source core refused an event");
            }
        }
        self.drive_source(m.0, ctx);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct PauseCost(MigrationId, Duration);

impl Handler<PauseCost> for Migrator {
    type Result = ();
    fn handle(&mut self, m: PauseCost, _: &mut Context<Self>) {
        if let Some(run) = self.sources.get_mut(&m.0) {
            run.pause_ms = m.1.as_secs_f64() * 1e3;
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct DestFeed(MigrationId, DestEvent);

impl Handler<DestFeed> for Migrator {
    type Result = ();
    fn handle(&mut self, m: DestFeed, ctx: &mut Context<Self>) {
        let now = self.shared.now_ms();
        if let Some(run) = self.dests.get_mut(&m.0) {
            // Round 1 brought the offered state: build the job from it before
            // acknowledging the round (the job still runs at the source), so the
            // stop-and-copy only applies what changed since.
            let precopy_round_1 = run.core.phase() == DestPhase::Fetching { round: 1 };
            if precopy_round_1 && m.1 == (DestEvent::Fetched { round: 1 }) {
                if let Some(state) = run.offered.take() {
                    let staged = self.checkpoint.send(Stage {
                        migration: m.0,
                        job: run.core.job().to_string(),
                        home: run.home,
                        module: state.module,
                        memory: state.memory,
                    });
                    let me = ctx.address();
                    let id = m.0;
                    actix::spawn(async move {
                        let _ = staged.await;
                        me.do_send(DestFeed(id, DestEvent::Fetched { round: 1 }));
                    });
                    return;
                }
            }
            if let Err(e) = run.core.handle_event(now, m.1) {
                tracing::warn!(%e, "destination core refused an event");
            }
        }
        self.drive_dest(m.0, ctx);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct WireBytes(MigrationId, u64);

impl Handler<WireBytes> for Migrator {
    type Result = ();
    fn handle(&mut self, m: WireBytes, _: &mut Context<Self>) {
        *self.wire_bytes.entry(m.0).or_default() += m.1;
    }
}

/// A migration message from a peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Incoming {
    pub from: PeerId,
    pub msg: Message,
    pub home: Vec<u8>,
    /// Chunks sent along (hashes already checked by the decoder).
    pub inline: Vec<InlineChunk>,
}

impl Handler<Incoming> for Migrator {
    type Result = ();
    fn handle(&mut self, m: Incoming, ctx: &mut Context<Self>) {
        if m.inline.is_empty() {
            self.incoming(m.from, m.msg, m.home, ctx);
            return;
        }
        // Store the chunks first, so the fetch the message causes finds them here.
        let chunks = m
            .inline
            .into_iter()
            .map(|c| (to_mesh_id(&c.id), bytes::Bytes::from(c.data)))
            .collect();
        let stored = self.checkpoint.send(StoreChunksMsg(chunks));
        let me = ctx.address();
        let (from, msg, home) = (m.from, m.msg, m.home);
        actix::spawn(async move {
            if !matches!(stored.await, Ok(Ok(()))) {
                tracing::warn!("storing inline chunks failed; they will be fetched");
            }
            me.do_send(Incoming {
                from,
                msg,
                home,
                inline: Vec::new(),
            });
        });
    }
}

/// Moves this node took part in as the source, oldest first.
#[derive(Message)]
#[rtype(result = "Vec<MoveReport>")]
pub struct Moves;

impl Handler<Moves> for Migrator {
    type Result = MessageResult<Moves>;
    fn handle(&mut self, _: Moves, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.moves.clone())
    }
}

/// Whether a move is in progress here (either side): its chunks may not be listed in
/// any checkpoint yet, so the store must not be collected meanwhile.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Busy;

impl Handler<Busy> for Migrator {
    type Result = bool;
    fn handle(&mut self, _: Busy, _: &mut Context<Self>) -> bool {
        !self.sources.is_empty() || self.dests.values().any(|d| d.finished_at.is_none())
    }
}

/// The moves this node is making as the source, while they run.
#[derive(Message)]
#[rtype(result = "Vec<MoveProgress>")]
pub struct ActiveMoves;

impl Handler<ActiveMoves> for Migrator {
    type Result = MessageResult<ActiveMoves>;
    fn handle(&mut self, _: ActiveMoves, _: &mut Context<Self>) -> Self::Result {
        let mut v: Vec<MoveProgress> = self
            .sources
            .iter()
            .map(|(id, run)| {
                let r = run.core.report();
                let phase = match run.core.phase() {
                    migrate::SourcePhase::Offering => "offer",
                    migrate::SourcePhase::PreCopy { .. } => "pre-copy",
                    migrate::SourcePhase::Checkpointing { .. } => "checkpoint",
                    migrate::SourcePhase::Pausing => "pause",
                    migrate::SourcePhase::AwaitReady => "final copy",
                    migrate::SourcePhase::HandedOver | migrate::SourcePhase::Committed => {
                        "handover"
                    }
                    migrate::SourcePhase::Escalated => "escalated",
                    migrate::SourcePhase::Aborted => "aborted",
                };
                let (round, copy_bytes, copy_done_bytes) = run.copy.unwrap_or_default();
                MoveProgress {
                    migration: id.to_string(),
                    job: run.job.clone(),
                    to: run.to_name.clone(),
                    phase: phase.into(),
                    round,
                    copy_bytes,
                    copy_done_bytes,
                    acked_bytes: r.rounds.iter().map(|x| x.bytes).sum(),
                    state_bytes: r.offered_bytes,
                    elapsed_ms: run.started.elapsed().as_millis() as u64,
                }
            })
            .collect();
        v.sort_by_key(|m| std::cmp::Reverse(m.elapsed_ms));
        MessageResult(v)
    }
}

/// Bytes that crossed the wire for an incoming migration (destination side).
#[derive(Message)]
#[rtype(result = "Option<u64>")]
pub struct IncomingWireBytes(pub String);

impl Handler<IncomingWireBytes> for Migrator {
    type Result = Option<u64>;
    fn handle(&mut self, m: IncomingWireBytes, _: &mut Context<Self>) -> Self::Result {
        self.wire_bytes
            .iter()
            .find(|(id, _)| id.to_string() == m.0)
            .map(|(_, b)| *b)
    }
}

/// Installs (or clears) a fault; see [`Fault`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct Inject(pub Option<Fault>);

impl Handler<Inject> for Migrator {
    type Result = ();
    fn handle(&mut self, m: Inject, _: &mut Context<Self>) {
        self.faults.fault = m.0;
    }
}

/// Cancel the moves of `job` that have not handed over yet.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelMoves(pub String);

impl Handler<CancelMoves> for Migrator {
    type Result = ();
    fn handle(&mut self, m: CancelMoves, ctx: &mut Context<Self>) {
        let now = self.shared.now_ms();
        let ids: Vec<MigrationId> = self
            .sources
            .iter()
            .filter(|(_, r)| r.job == m.0)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(run) = self.sources.get_mut(&id) {
                let _ = run.core.handle_event(now, SourceEvent::Cancel);
            }
            self.drive_source(id, ctx);
        }
    }
}

/// Whether this node can restore a job lazily (post-copy): userfaultfd works here.
/// Checked once.
pub fn postcopy_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(wasm_host::lazy::available)
}

/// The lazy memory of a post-copy restore, kept until Go starts its pull.
#[derive(Message)]
#[rtype(result = "()")]
struct LazyReady(MigrationId, super::checkpoint::LazyFill);

impl Handler<LazyReady> for Migrator {
    type Result = ();
    fn handle(&mut self, m: LazyReady, _: &mut Context<Self>) {
        if let Some(run) = self.dests.get_mut(&m.0) {
            run.lazy = Some(m.1);
        }
    }
}

/// The post-copy pulls this node ran as a destination (newest last).
#[derive(Message)]
#[rtype(result = "Vec<super::postcopy::PullStatus>")]
pub struct Pulls;

impl Handler<Pulls> for Migrator {
    type Result = MessageResult<Pulls>;
    fn handle(&mut self, _: Pulls, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.pulls
                .lock()
                .map(|p| p.clone())
                .unwrap_or_else(|e| e.into_inner().clone()),
        )
    }
}
