//! The Recovery actor: nodes die, jobs do not.
//!
//! A thin shell around the sans-IO `recovery` crate:
//!
//! - **Replication** (owner side): every job running here is copied to its replica set
//!   ([`recovery::replica_set`] over the live members) as an incremental checkpoint, at a
//!   period [`recovery::copy_period`] adapts to the job's dirty rate and the link. A
//!   replica pulls the chunks it lacks from the owner (the mesh's verified fetch), stores
//!   the manifest and only then answers: that answer is the acknowledgement
//!   ([`recovery::AckBook`]).
//! - **Failure detection**: every heartbeat feeds a [`recovery::Detector`] keyed by node
//!   name (a restarted node keeps its name; its new `incarnation` says its jobs are gone).
//! - **Recovery**: when the node last seen running a job is dead (or came back without
//!   it), every node builds the same [`recovery::View`] from the heartbeats — members,
//!   live nodes, who holds which checkpoint — and [`recovery::decide`] names one live
//!   holder on the majority side; that node restores the job from its replica with the
//!   next generation and runs it. Output offsets travel in the checkpoint, so the home's
//!   log book drops what the job writes again between the checkpoint and the crash.
//! - **Fencing**: a node that sees a newer generation of a job it runs drops its copy
//!   ([`recovery::on_generation`]); a node that no longer sees a strict majority pauses
//!   its jobs and runs them again only when [`recovery::owner_action`] says so.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use mesh::PeerId;
use migrate::MigrationId;
use recovery::{
    held, AckBook, CheckpointId, CheckpointRef, CopySchedule, Decision, Detector, DetectorEvent,
    Fence, HeldNote, Liveness, NodeId, OwnerAction, RecoveryConfig, View,
};
use serde::{Deserialize, Serialize};
use store::ChunkId;

use super::checkpoint::{to_mesh_id, CheckpointActor, Restore};
use super::link::{Estimate, LinkMonitor};
use super::migrator::{Busy, Migrator};
use super::proto::{encode, Heartbeat, JobSummary, NodeMsg, NodeReply};
use super::scheduler::{Control, EndedJobs, List, Op, Scheduler};
use super::Shared;

/// How often the actor looks at its jobs, its peers and what is due.
const TICK: Duration = Duration::from_millis(100);
/// Jobs remembered as ended (never recovered).
const ENDED_KEPT: usize = 4096;
/// Bandwidth assumed towards a replica before the mesh measured it.
const DEFAULT_BANDWIDTH: u64 = 50_000_000;
/// At most one store collection this often.
const GC_EVERY_MS: u64 = 2_000;

/// What this node publishes in its heartbeat for recovery (read by the Solver).
#[derive(Clone, Debug, Default)]
pub struct Published {
    pub holdings: Vec<(String, CheckpointRef)>,
    pub ended: Vec<String>,
    pub abandoned: Vec<(String, u64)>,
    pub members: Vec<String>,
    pub claims: Vec<(String, u64)>,
    pub orphans: Vec<(String, u64, String)>,
    pub moved: Vec<(String, u64, String)>,
}

/// `Placed::incarnation` of a job its node gave up (see `Heartbeat::abandoned`): the
/// node no longer counts as its owner.
const ABANDONED: u64 = u64::MAX;

/// How many heartbeat periods a job placed by a move announcement keeps its place
/// although its destination's heartbeats do not list it (those sent before the move).
const MOVED_IN_GRACE_HEARTBEATS: u64 = 5;

/// How long a node announces a move it made (`Heartbeat::moved`).
fn moved_announced_ms(cfg: &RecoveryConfig) -> u64 {
    cfg.dead_after_ms + cfg.suspect_after_ms
}

/// One peer as its heartbeats describe it.
struct Peer {
    peer: PeerId,
    incarnation: u64,
    /// job → (generation, state).
    jobs: HashMap<String, (u64, String)>,
    holdings: HashMap<String, CheckpointRef>,
    /// Jobs it claims (restored by a recovery, not running yet): job → generation.
    claims: HashMap<String, u64>,
    heard_at: u64,
    draining: bool,
}

/// Where a job was last seen running.
#[derive(Clone, Debug)]
struct Placed {
    node: NodeId,
    generation: u64,
    /// The incarnation of `node` it was seen on.
    incarnation: u64,
}

/// A replica held here.
#[derive(Clone, Debug)]
struct Held {
    cref: CheckpointRef,
    home: PeerId,
}

/// A recovery this node made (for the status and the chaos harness).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Recovered {
    pub job: String,
    pub generation: u64,
    pub from_node: String,
    pub at_ms: u64,
    /// The checkpoint it resumed from: generation and copy number.
    pub checkpoint: String,
    /// The same, whole (for the chaos harness's "no acknowledged checkpoint lost").
    #[serde(default)]
    pub from: Option<CheckpointRef>,
}

/// Replication and recovery figures for `/status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RecoveryStatus {
    pub members: Vec<String>,
    pub alive: Vec<String>,
    /// Replicas held here: (job, checkpoint).
    pub holdings: Vec<(String, String)>,
    /// Copies of jobs here acknowledged by replicas.
    pub copies_acked: u64,
    pub copies_failed: u64,
    pub recovered: Vec<Recovered>,
    /// Jobs paused because this node sees no majority.
    pub quorum_paused: Vec<String>,
}

pub struct Recovery {
    shared: Arc<Shared>,
    scheduler: Addr<Scheduler>,
    checkpoint: Addr<CheckpointActor>,
    links: Addr<LinkMonitor>,
    migrator: Addr<Migrator>,
    cfg: RecoveryConfig,
    me: NodeId,
    detector: Detector,
    members: BTreeSet<NodeId>,
    peers: HashMap<NodeId, Peer>,
    placed: HashMap<String, Placed>,
    ended: HashSet<String>,
    ended_order: VecDeque<String>,
    schedule: CopySchedule,
    acks: AckBook,
    seq: HashMap<String, u64>,
    /// Jobs whose copies the schedule tracks (those running here).
    copying: HashSet<String>,
    /// When the last copy of each job was taken, and its dirty bytes/s since the one before.
    last_copy: HashMap<String, (u64, f64)>,
    held: HashMap<String, Held>,
    quorum_paused: HashMap<String, u64>,
    /// Since when the members out of sight are too few to resume jobs without this
    /// node (`None` while they could): a paused job waits a while after that for the
    /// members still out of sight ([`recovery::OwnerSight::settled_ms`]).
    settled_since: Option<u64>,
    resuming: HashSet<String>,
    /// Jobs found with no checkpoint in sight (warned about once).
    without_checkpoint: HashSet<String>,
    /// Since when this node has seen a strict majority of the members (`None`: it
    /// does not now).
    quorum_since: Option<u64>,
    /// The last recovery decision logged per job (logged when it changes).
    last_decision: HashMap<String, String>,
    /// Jobs this node decides how to recover (their node is gone), with the generation
    /// known to have run: published for holders that know nothing of them.
    orphans: BTreeMap<String, (u64, NodeId)>,
    /// Jobs on this node (running or paused) and their generation, from the scheduler.
    mine: HashMap<String, u64>,
    /// Restored copies this node claims, waiting out the claim period before they run:
    /// job → (generation, claimed at ms).
    claims: HashMap<String, (u64, u64)>,
    /// Replica imports in progress (their chunks are not listed yet).
    importing: usize,
    last_gc_ms: u64,
    copies_acked: u64,
    copies_failed: u64,
    recovered: Vec<Recovered>,
    /// Jobs placed on the destination of a move its source announced (`Heartbeat::moved`),
    /// with when: for a while, a heartbeat of the destination that does not list the job
    /// yet (sent before the move) does not unplace it.
    moved_in: HashMap<String, u64>,
}

impl Recovery {
    pub fn new(
        shared: Arc<Shared>,
        scheduler: Addr<Scheduler>,
        checkpoint: Addr<CheckpointActor>,
        links: Addr<LinkMonitor>,
        migrator: Addr<Migrator>,
    ) -> Recovery {
        let cfg = shared.config.recovery.clone();
        let me = NodeId(shared.name.clone());
        // The config was validated at start; the defaults are valid by construction.
        let detector = Detector::new(&cfg)
            .or_else(|_| Detector::new(&RecoveryConfig::default()))
            .expect("the default recovery config is valid");
        let mut members = BTreeSet::new();
        members.insert(me.clone());
        Recovery {
            shared,
            scheduler,
            checkpoint,
            links,
            migrator,
            cfg,
            me,
            detector,
            members,
            peers: HashMap::new(),
            placed: HashMap::new(),
            ended: HashSet::new(),
            ended_order: VecDeque::new(),
            schedule: CopySchedule::new(),
            acks: AckBook::new(),
            seq: HashMap::new(),
            copying: HashSet::new(),
            last_copy: HashMap::new(),
            held: HashMap::new(),
            quorum_paused: HashMap::new(),
            settled_since: None,
            resuming: HashSet::new(),
            without_checkpoint: HashSet::new(),
            quorum_since: None,
            last_decision: HashMap::new(),
            orphans: BTreeMap::new(),
            mine: HashMap::new(),
            claims: HashMap::new(),
            importing: 0,
            last_gc_ms: 0,
            copies_acked: 0,
            copies_failed: 0,
            recovered: Vec::new(),
            moved_in: HashMap::new(),
        }
    }

    fn enabled(&self) -> bool {
        self.cfg.replicas > 0
    }

    fn draining(&self) -> bool {
        self.shared
            .draining
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How long a resumer announces its restored copy before running it: two heartbeat
    /// periods, so that every other node's claim (or a move's destination) is heard.
    fn claim_ms(&self) -> u64 {
        2 * self.shared.config.migration.heartbeat_ms
    }

    /// Members heard within `suspect_after_ms`, and this node.
    fn alive(&self) -> BTreeSet<NodeId> {
        let mut a: BTreeSet<NodeId> = self.detector.alive().cloned().collect();
        a.insert(self.me.clone());
        a
    }

    /// Members not declared dead, and this node: they may hold and resume a job, but
    /// only [`Self::alive`] counts towards a majority (see `recovery::decide`).
    fn live(&self) -> BTreeSet<NodeId> {
        let mut a: BTreeSet<NodeId> = self.detector.not_dead().cloned().collect();
        a.insert(self.me.clone());
        a
    }

    fn remember_ended(&mut self, job: &str) {
        if self.ended.insert(job.to_string()) {
            self.ended_order.push_back(job.to_string());
            if self.ended_order.len() > ENDED_KEPT {
                if let Some(old) = self.ended_order.pop_front() {
                    self.ended.remove(&old);
                }
            }
        }
        self.placed.remove(job);
        self.without_checkpoint.remove(job);
        self.last_decision.remove(job);
        if self.held.remove(job).is_some() {
            let store = self.shared.store.clone();
            let name = held::note_name(job);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = store.remove_note(&name) {
                    tracing::debug!(%e, "forgetting a replica record");
                }
            });
        }
        self.acks.forget_job(job);
    }

    fn publish(&self, ended_here: &[String]) {
        let mut holdings: Vec<(String, CheckpointRef)> =
            self.held.iter().map(|(j, h)| (j.clone(), h.cref)).collect();
        holdings.sort();
        holdings.truncate(super::proto::MAX_HEARTBEAT_JOBS);
        let mut ended: Vec<String> = ended_here.to_vec();
        ended.truncate(super::proto::MAX_HEARTBEAT_ENDED);
        let abandoned = self.abandoned_here();
        let members = self
            .members
            .iter()
            .take(super::proto::MAX_HEARTBEAT_MEMBERS)
            .map(|m| m.0.clone())
            .collect();
        let mut claims: Vec<(String, u64)> = self
            .claims
            .iter()
            .map(|(j, (g, _))| (j.clone(), *g))
            .collect();
        claims.sort();
        claims.truncate(super::proto::MAX_HEARTBEAT_JOBS);
        let mut orphans: Vec<(String, u64, String)> = self
            .orphans
            .iter()
            .map(|(j, (g, n))| (j.clone(), *g, n.0.clone()))
            .collect();
        orphans.truncate(super::proto::MAX_HEARTBEAT_JOBS);
        let mut moved: Vec<(String, u64, String)> = self
            .shared
            .moved
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(j, (g, to, _))| (j.clone(), *g, to.clone()))
                    .collect()
            })
            .unwrap_or_default();
        moved.truncate(super::proto::MAX_HEARTBEAT_JOBS);
        if let Ok(mut p) = self.shared.published.lock() {
            *p = Published {
                holdings,
                ended,
                abandoned,
                members,
                claims,
                orphans,
                moved,
            };
        }
    }

    fn control(&self, job: &str, op: Op) {
        let sched = self.scheduler.clone();
        let job = job.to_string();
        actix::spawn(async move {
            if let Ok(Err(e)) = sched
                .send(Control {
                    job: job.clone(),
                    op,
                })
                .await
            {
                tracing::debug!(%job, %e, "recovery control");
            }
        });
    }

    /// Copies due checkpoints of jobs running here to their replicas.
    fn replicate(&mut self, running: &[&JobSummary], now: u64, ctx: &mut Context<Self>) {
        let here: HashSet<&str> = running.iter().map(|j| j.job.as_str()).collect();
        let tracked: Vec<String> = self.copying.iter().cloned().collect();
        for job in tracked {
            if !here.contains(job.as_str()) {
                self.schedule.untrack(&job);
                self.copying.remove(&job);
                self.last_copy.remove(&job);
            }
        }
        // A job paused here keeps its copy numbers: numbering its next copies from 1
        // again gave two checkpoints of one generation the same number, which every
        // holder refuses ("two histories of one generation").
        self.seq
            .retain(|job, _| here.contains(job.as_str()) || self.mine.contains_key(job));
        for j in running {
            if self.copying.insert(j.job.clone()) {
                self.seq.entry(j.job.clone()).or_insert(0);
                self.schedule.track(&j.job, now, self.cfg.min_period_ms);
            }
        }
        for j in running {
            let targets: Vec<(NodeId, u64)> = self
                .replica_candidates(&j.job)
                .into_iter()
                .filter_map(|n| self.peers.get(&n).map(|p| (n, p.incarnation)))
                .collect();
            // At most one extra copy per `suspect_after_ms`: under load the live set
            // flaps, and each change must not cost a copy.
            if self
                .schedule
                .retarget(&j.job, &targets, self.cfg.suspect_after_ms)
            {
                tracing::debug!(job = %j.job, "replica targets changed: copying again soon");
            }
        }
        for job in self.schedule.due(now) {
            let Some(summary) = running.iter().find(|j| j.job == job) else {
                continue;
            };
            let targets = self.replica_targets(&job);
            if targets.is_empty() {
                continue;
            }
            self.schedule.started(&job, now);
            let seq = self.seq.get(&job).copied().unwrap_or(0) + 1;
            self.seq.insert(job.clone(), seq);
            let copy = copy_once(
                self.shared.clone(),
                self.scheduler.clone(),
                job.clone(),
                summary.generation,
                summary.home.clone(),
                seq,
                targets,
            );
            let links = self.links.clone();
            ctx.spawn(copy.into_actor(self).then(move |r, act, _| {
                let first_peer = r.acked.first().map(|(_, p)| *p);
                act.copy_done(r);
                async move {
                    match first_peer {
                        Some(p) => links.send(Estimate(p)).await.ok().and_then(|e| e.bandwidth),
                        None => None,
                    }
                }
                .into_actor(act)
                .map(move |bw, act, _| act.adapt_period(&job, bw))
            }));
        }
    }

    fn copy_done(&mut self, r: CopyResult) {
        self.schedule.finished(&r.job);
        let now = self.shared.now_ms();
        let Some(cref) = r.cref else {
            self.copies_failed += 1;
            return;
        };
        if r.acked.is_empty() {
            self.copies_failed += 1;
        }
        for (holder, _) in &r.acked {
            self.copies_acked += 1;
            if let Err(e) = self.acks.ack(&r.job, holder, cref) {
                tracing::warn!(job = %r.job, %e, "acknowledgement refused");
            }
        }
        let rate = match self.last_copy.get(&r.job) {
            Some((at, _)) if now > *at => r.dirty_bytes as f64 * 1000.0 / (now - at) as f64,
            _ => 0.0,
        };
        self.last_copy.insert(r.job.clone(), (now, rate));
    }

    /// Copies the checkpoint a recovery resumes from to the job's replica targets
    /// around this node, during the claim period, before the new generation runs.
    /// Without it the job's only copy for a while is the one here: the other holders
    /// of that checkpoint are often gone (that is why it is being recovered), and the
    /// first copy of the new generation takes a while for a large job — a kill of this
    /// node in that window lost the job (level 2's `bench.toml`, twice a run).
    fn protect(
        &mut self,
        job: &str,
        from: CheckpointRef,
        claimed: u64,
        home: PeerId,
        manifest: Vec<u8>,
        ctx: &mut Context<Self>,
    ) {
        let targets = self.replica_targets(job);
        if targets.is_empty() {
            return;
        }
        let msg = encode(&NodeMsg::Replicate {
            job: job.to_string(),
            generation: from.generation,
            seq: from.seq,
            home: home.to_bytes(),
            manifest,
            claim: Some(claimed),
        });
        let shared = self.shared.clone();
        let job = job.to_string();
        ctx.spawn(
            async move { offer(&shared, msg, targets).await }
                .into_actor(self)
                .map(move |acked, act, _| {
                    for (holder, _) in &acked {
                        act.copies_acked += 1;
                        if let Err(e) = act.acks.ack(&job, holder, from) {
                            tracing::warn!(%job, %e, "acknowledgement refused");
                        }
                    }
                    tracing::info!(%job, from = %from, holders = ?acked.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                        node = %act.me.as_str(), "the recovered checkpoint is replicated again");
                }),
        );
    }

    /// The peers that should hold copies of `job` running here: `replicas` of the live
    /// members by rendezvous ranking, leaving out draining peers *before* ranking, so a
    /// job that ranks a gateway first still gets `replicas` real copies.
    fn replica_targets(&self, job: &str) -> Vec<(NodeId, PeerId)> {
        self.replica_candidates(job)
            .into_iter()
            .filter_map(|n| self.peers.get(&n).map(|p| (n, p.peer)))
            .collect()
    }

    fn replica_candidates(&self, job: &str) -> Vec<NodeId> {
        let candidates: BTreeSet<NodeId> = self
            .alive()
            .into_iter()
            .filter(|n| *n == self.me || self.peers.get(n).is_some_and(|p| !p.draining))
            .collect();
        recovery::replica_set(job, &candidates, Some(&self.me), self.cfg.replicas)
    }

    /// A new copy period from the job's dirty rate and the link to its replicas.
    fn adapt_period(&mut self, job: &str, bandwidth: Option<u64>) {
        let Some((_, rate)) = self.last_copy.get(job) else {
            return;
        };
        let bw = bandwidth.unwrap_or(DEFAULT_BANDWIDTH) as f64;
        let p = recovery::copy_period(&self.cfg, *rate as u64, bw as u64);
        self.schedule.set_period(job, p.ms);
    }

    /// Pauses jobs here while no strict majority is in sight, and runs them again (or
    /// drops them) when the owner rule says so.
    fn guard_quorum(&mut self, running: &[&JobSummary], now: u64) {
        let alive = self.alive();
        // Pause when the members out of sight could resume our jobs without us (the
        // same rule `owner_action` applies before running them again).
        let out_of_sight = self.members.difference(&alive).count();
        let cut_off = out_of_sight * 2 > self.members.len();
        self.shared
            .majority_in_sight
            .store(!cut_off, std::sync::atomic::Ordering::Relaxed);
        if cut_off {
            self.settled_since = None;
            for j in running {
                if self.quorum_paused.insert(j.job.clone(), now).is_none() {
                    tracing::warn!(job = %j.job, node = %self.me.as_str(),
                        "the nodes out of sight could resume this job: pausing it");
                    self.control(&j.job, Op::Pause);
                }
            }
        }
        let settled_since = *self.settled_since.get_or_insert(now);
        let paused: Vec<(String, u64)> = self
            .quorum_paused
            .iter()
            .map(|(j, t)| (j.clone(), *t))
            .collect();
        for (job, since) in paused {
            let generation = self.placed.get(&job).map_or(0, |p| p.generation);
            // Copies that ran (running or paused) count as reported generations; a
            // restored copy not run yet (a recovery's claim, a move's destination) is a
            // claim, which may still fail.
            let heard: Vec<(&NodeId, &Peer)> = self
                .peers
                .iter()
                .filter(|(_, p)| p.heard_at > since)
                .collect();
            let reported: BTreeMap<NodeId, u64> = heard
                .iter()
                .map(|(n, p)| {
                    let ran = p.jobs.get(&job).filter(|(_, state)| state != "restored");
                    ((*n).clone(), ran.map_or(0, |(g, _)| *g))
                })
                .collect();
            let claimed: BTreeMap<NodeId, u64> = heard
                .iter()
                .filter_map(|(n, p)| {
                    let restored = p
                        .jobs
                        .get(&job)
                        .filter(|(_, state)| state == "restored")
                        .map(|(g, _)| *g);
                    let g = restored.max(p.claims.get(&job).copied())?;
                    Some(((*n).clone(), g))
                })
                .collect();
            let running: BTreeMap<NodeId, u64> = heard
                .iter()
                .filter_map(|(n, p)| {
                    let (g, state) = p.jobs.get(&job)?;
                    (state == "running").then(|| ((*n).clone(), *g))
                })
                .collect();
            let sight = recovery::OwnerSight {
                members: &self.members,
                alive: &alive,
                generation,
                reported: &reported,
                claimed: &claimed,
                running: &running,
                settled_ms: now.saturating_sub(settled_since),
                settle_ms: self.cfg.suspect_after_ms,
            };
            match recovery::owner_action(&sight) {
                OwnerAction::Run => {
                    tracing::info!(%job, "majority back: the job runs again");
                    self.quorum_paused.remove(&job);
                    self.control(&job, Op::Resume);
                }
                OwnerAction::Stop { newer } => {
                    tracing::info!(%job, newer, "recovered elsewhere meanwhile (this generation or newer): dropping this copy");
                    self.quorum_paused.remove(&job);
                    self.control(&job, Op::Drop);
                }
                OwnerAction::Pause => {}
            }
        }
    }

    /// Replicas and moves leave old checkpoints behind: when the store is three quarters
    /// full, and no move or replica import has chunks in flight, everything but the two
    /// newest checkpoints of each job goes.
    fn collect_garbage(&mut self, now: u64, ctx: &mut Context<Self>) {
        if now < self.last_gc_ms + GC_EVERY_MS || self.importing > 0 {
            return;
        }
        let stats = self.shared.store.stats();
        if stats.limit_bytes == 0 || stats.stored_bytes * 4 < stats.limit_bytes * 3 {
            return;
        }
        self.last_gc_ms = now;
        let store = self.shared.store.clone();
        let migrator = self.migrator.clone();
        let fut = async move {
            if migrator.send(Busy).await.unwrap_or(true) {
                return None;
            }
            let policy = store::RetentionPolicy {
                keep_per_job: 2,
                ..store::RetentionPolicy::default()
            };
            tokio::task::spawn_blocking(move || store.gc(&policy))
                .await
                .ok()
        };
        ctx.spawn(fut.into_actor(self).map(|r, _, _| match r {
            Some(Ok(report)) => tracing::info!(?report, "store collected"),
            Some(Err(e)) => tracing::warn!(%e, "store collection failed"),
            None => {}
        }));
    }

    /// Resumes the jobs this node must recover.
    fn recover(&mut self, here: &HashSet<String>, now: u64, ctx: &mut Context<Self>) {
        let live = self.live();
        let reachable = self.alive();
        // Since when this node has had a strict majority in sight (see `View::unsettled`).
        if recovery::decide::has_quorum(&self.members, reachable.iter()) {
            self.quorum_since.get_or_insert(now);
        } else {
            self.quorum_since = None;
        }
        let unsettled = self
            .quorum_since
            .is_none_or(|t| now.saturating_sub(t) < self.cfg.suspect_after_ms);
        let jobs: Vec<(String, Placed)> = self
            .placed
            .iter()
            .filter(|(j, p)| {
                (p.node != self.me || p.incarnation == ABANDONED) && !here.contains(*j)
            })
            .filter(|(j, _)| !self.ended.contains(*j) && !self.resuming.contains(*j))
            .map(|(j, p)| (j.clone(), p.clone()))
            .collect();
        self.orphans.clear();
        for (job, placed) in jobs {
            let owner_peer = self.peers.get(&placed.node);
            let still_owner = match owner_peer {
                // Gave the job up (its post-copy failed): not the owner, unless it
                // runs the job again (listed).
                Some(p) if placed.incarnation == ABANDONED => p.jobs.contains_key(&job),
                _ if placed.incarnation == ABANDONED => false,
                // Restarted since (new incarnation) and no longer lists the job: gone.
                Some(p) => p.incarnation == placed.incarnation || p.jobs.contains_key(&job),
                None => true,
            };
            let owner_dead = self.detector.state(&placed.node) == Some(Liveness::Dead);
            if still_owner && !owner_dead {
                continue;
            }
            let mut holdings: BTreeMap<NodeId, Option<CheckpointRef>> = BTreeMap::new();
            for n in &live {
                if *n == self.me {
                    // A draining node reports nothing: it must not resume jobs.
                    let held = self.held.get(&job).map(|h| h.cref);
                    holdings.insert(n.clone(), held.filter(|_| !self.draining()));
                } else if let Some(p) = self.peers.get(n) {
                    let held = p.holdings.get(&job).copied();
                    holdings.insert(n.clone(), held.filter(|_| !p.draining));
                }
            }
            let claims: BTreeMap<NodeId, u64> = live
                .iter()
                .filter_map(|n| {
                    let g = self.peers.get(n)?.claims.get(&job)?;
                    Some((n.clone(), *g))
                })
                .collect();
            let view = View {
                job: job.clone(),
                claims,
                unsettled,
                members: self.members.clone(),
                live: live.clone(),
                reachable: reachable.clone(),
                owner: still_owner.then(|| placed.node.clone()),
                generation: placed.generation,
                replicas: recovery::replica_set(
                    &job,
                    &self.members,
                    Some(&placed.node),
                    self.cfg.replicas,
                ),
                holdings,
            };
            let decision = recovery::decide(&view);
            if !matches!(
                decision,
                Decision::OwnerAlive | Decision::NoQuorum { .. } | Decision::Unsettled
            ) {
                self.orphans
                    .insert(job.clone(), (placed.generation, placed.node.clone()));
            }
            match decision {
                Decision::Resume {
                    node,
                    from,
                    generation,
                } if node == self.me => self.resume(job, from, generation, placed.node, ctx),
                // Not final: a holder that is restarting (its replica records not read
                // back yet) or reconnecting reports its checkpoint later, and the job is
                // recovered then. Forgetting the job here lost it for good.
                Decision::NoCheckpoint => {
                    if self.without_checkpoint.insert(job.clone()) {
                        tracing::warn!(%job, owner = %placed.node.as_str(), node = %self.me.as_str(),
                            "its node is gone and no live node holds a checkpoint (yet)");
                    }
                }
                d => {
                    let kind = format!("{d:?}");
                    if self.last_decision.get(&job) != Some(&kind) {
                        tracing::debug!(%job, decision = %kind, owner = %placed.node.as_str(),
                            node = %self.me.as_str(), "recovery decision");
                        self.last_decision.insert(job.clone(), kind);
                    }
                }
            }
        }
    }

    fn resume(
        &mut self,
        job: String,
        from: CheckpointRef,
        generation: u64,
        owner: NodeId,
        ctx: &mut Context<Self>,
    ) {
        let Some(held) = self.held.get(&job).filter(|h| h.cref == from).cloned() else {
            return;
        };
        self.resuming.insert(job.clone());
        tracing::warn!(%job, generation, from = %from, dead = %owner.as_str(),
            node = %self.me.as_str(), "recovering a job from its replicated checkpoint");
        let shared = self.shared.clone();
        let cp = self.checkpoint.clone();
        let j = job.clone();
        let home = held.home;
        let fut = async move {
            let id = ChunkId(from.id.0);
            let manifest = shared
                .store
                .get_chunk(&id)
                .map_err(|e| format!("reading the replica's manifest: {e}"))?;
            cp.send(Restore {
                migration: MigrationId(rand::random()),
                job: j.clone(),
                generation,
                home: held.home,
                manifest: manifest.clone(),
                manifest_id: id,
                decoded: None,
                deferred: None,
            })
            .await
            .map_err(|e| e.to_string())??;
            Ok::<Vec<u8>, String>(manifest)
        };
        ctx.spawn(fut.into_actor(self).map(move |r, act, ctx| {
            act.resuming.remove(&job);
            match r {
                Ok(manifest) => {
                    act.protect(&job, from, generation, home, manifest, ctx);
                    // Restored, not running: announced in the heartbeat as a claim; it
                    // runs once the claim period passed without a conflict.
                    let now = act.shared.now_ms();
                    act.claims.insert(job.clone(), (generation, now));
                    act.placed.insert(
                        job.clone(),
                        Placed {
                            node: act.me.clone(),
                            generation,
                            incarnation: act.shared.incarnation,
                        },
                    );
                    act.recovered.push(Recovered {
                        job,
                        generation,
                        from_node: owner.0,
                        at_ms: now,
                        checkpoint: from.to_string(),
                        from: Some(from),
                    });
                }
                Err(e) => tracing::warn!(%job, %e, "recovery failed"),
            }
        }));
    }
}

struct CopyResult {
    job: String,
    cref: Option<CheckpointRef>,
    acked: Vec<(NodeId, PeerId)>,
    dirty_bytes: u64,
}

/// One copy: an incremental checkpoint here, offered to every target.
async fn copy_once(
    shared: Arc<Shared>,
    scheduler: Addr<Scheduler>,
    job: String,
    generation: u64,
    home: Vec<u8>,
    seq: u64,
    targets: Vec<(NodeId, PeerId)>,
) -> CopyResult {
    let mut result = CopyResult {
        job: job.clone(),
        cref: None,
        acked: Vec::new(),
        dirty_bytes: 0,
    };
    // The first copy of a job started here is the state it started from.
    let op = if generation == 0 && seq == 1 {
        Op::FirstCheckpoint
    } else {
        Op::Checkpoint
    };
    let taken = match scheduler
        .send(Control {
            job: job.clone(),
            op,
        })
        .await
    {
        Ok(Ok(Some(t))) => t,
        other => {
            tracing::debug!(%job, ?other, "no checkpoint to replicate");
            return result;
        }
    };
    let cref = CheckpointRef {
        generation,
        seq,
        id: CheckpointId(taken.checkpoint.id.0),
    };
    result.cref = Some(cref);
    result.dirty_bytes = taken.chunks_hashed * u64::from(shared.config.chunk_kib) * 1024;
    let msg = encode(&NodeMsg::Replicate {
        job: job.clone(),
        generation,
        seq,
        home,
        manifest: taken.manifest,
        claim: None,
    });
    result.acked = offer(&shared, msg, targets).await;
    result
}

/// Offers one encoded `Replicate` to every target at once; returns those that
/// acknowledged it (stored every chunk and the manifest).
async fn offer(
    shared: &Shared,
    msg: Vec<u8>,
    targets: Vec<(NodeId, PeerId)>,
) -> Vec<(NodeId, PeerId)> {
    let asks = targets.into_iter().map(|(node, peer)| {
        let mesh = shared.mesh.clone();
        let msg = msg.clone();
        async move {
            match mesh.control_request(peer, msg).await {
                Ok(reply) => match NodeReply::decode(&reply) {
                    Ok(NodeReply::Ok) => Some((node, peer)),
                    other => {
                        tracing::debug!(node = %node.as_str(), ?other, "replica refused");
                        None
                    }
                },
                Err(e) => {
                    tracing::debug!(node = %node.as_str(), %e, "replica unreachable");
                    None
                }
            }
        }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The replicas recorded in the store (see `recovery::held`) whose checkpoint is still
/// complete there; records that are damaged or whose checkpoint is gone are deleted.
fn reload_held(store: &store::Store) -> Vec<(String, Held)> {
    let mut out = Vec::new();
    for (name, bytes) in store.notes(held::NOTE_PREFIX) {
        let usable = HeldNote::decode(&bytes).and_then(|note| {
            if held::note_name(&note.job) != name {
                return None;
            }
            let home = PeerId::from_bytes(&note.home).ok()?;
            let cp = store.load_checkpoint(&ChunkId(note.checkpoint.id.0)).ok()?;
            if cp.manifest.job != note.job || cp.manifest.generation != note.checkpoint.generation {
                return None;
            }
            let ids: Vec<ChunkId> = cp.manifest.referenced().map(|(id, _)| id).collect();
            if !store.missing(ids.iter()).is_empty() {
                return None;
            }
            Some((
                note.job,
                Held {
                    cref: note.checkpoint,
                    home,
                },
            ))
        });
        match usable {
            Some(h) => out.push(h),
            None => {
                tracing::info!(%name, "a replica record without its checkpoint: dropped");
                if let Err(e) = store.remove_note(&name) {
                    tracing::debug!(%e, "dropping a replica record");
                }
            }
        }
    }
    out
}

impl Actor for Recovery {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Replicas held before a restart (their records and chunks survived with the
        // store): held, and announced, again.
        let store = self.shared.store.clone();
        let reload = async move {
            tokio::task::spawn_blocking(move || reload_held(&store))
                .await
                .unwrap_or_default()
        };
        ctx.spawn(reload.into_actor(self).map(|found, act, _| {
            let n = found.len();
            for (job, h) in found {
                if act.ended.contains(&job) {
                    continue;
                }
                if act.held.get(&job).is_none_or(|old| old.cref < h.cref) {
                    act.held.insert(job, h);
                }
            }
            if n > 0 {
                tracing::info!(node = %act.me.as_str(), replicas = n,
                    "replicas held before the restart are held again");
            }
        }));
        ctx.run_interval(TICK, |act, ctx| {
            let sched = act.scheduler.clone();
            let me = ctx.address();
            actix::spawn(async move {
                if let (Ok(jobs), Ok(ended)) = (sched.send(List).await, sched.send(EndedJobs).await)
                {
                    me.do_send(Observed { jobs, ended });
                }
            });
        });
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Observed {
    jobs: Vec<JobSummary>,
    ended: Vec<String>,
}

impl Handler<Observed> for Recovery {
    type Result = ();

    fn handle(&mut self, m: Observed, ctx: &mut Context<Self>) {
        let now = self.shared.now_ms();
        self.detector.tick(now);
        while let Some(ev) = self.detector.poll_event() {
            match ev {
                DetectorEvent::Dead { node, .. } => {
                    tracing::warn!(node = %node.as_str(), by = %self.me.as_str(), "peer declared dead")
                }
                DetectorEvent::Suspected { node, .. } => {
                    tracing::info!(node = %node.as_str(), "peer suspected")
                }
                DetectorEvent::Alive { node } => {
                    tracing::info!(node = %node.as_str(), "peer alive")
                }
            }
        }
        for job in &m.ended {
            self.remember_ended(job);
        }
        let abandoned = self.abandoned_here();
        for (job, generation) in abandoned {
            let me = self.me.clone();
            self.mark_abandoned(&job, &me, generation);
        }
        self.mine = m
            .jobs
            .iter()
            .filter(|j| j.state != "restored")
            .map(|j| (j.job.clone(), j.generation))
            .collect();
        self.settle_claims(&m.jobs, now);
        self.settle_escalations();
        // Moves made here are announced for a while, long enough for the destination
        // to be declared dead if it died before saying it runs the job.
        let keep = moved_announced_ms(&self.cfg);
        if let Ok(mut moved) = self.shared.moved.lock() {
            moved.retain(|_, (_, _, at)| now.saturating_sub(*at) < keep);
        }
        for j in m.jobs.iter().filter(|j| j.state == "running") {
            let me = self.me.clone();
            self.place(&j.job, me, j.generation, self.shared.incarnation);
        }
        self.publish(&m.ended);
        self.collect_garbage(now, ctx);
        if !self.enabled() {
            return;
        }
        let running: Vec<&JobSummary> = m.jobs.iter().filter(|j| j.state == "running").collect();
        self.replicate(&running, now, ctx);
        self.guard_quorum(&running, now);
        let here: HashSet<String> = m.jobs.iter().map(|j| j.job.clone()).collect();
        self.recover(&here, now, ctx);
    }
}

/// The node shuts down: the actor stops (no more decisions, copies or collections).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Halt;

impl Handler<Halt> for Recovery {
    type Result = ();

    fn handle(&mut self, _: Halt, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// A heartbeat from a peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Seen(pub PeerId, pub Heartbeat);

impl Handler<Seen> for Recovery {
    type Result = ();

    fn handle(&mut self, m: Seen, _: &mut Context<Self>) {
        let Seen(peer, hb) = m;
        let node = NodeId(hb.name.clone());
        if node == self.me {
            return;
        }
        let now = self.shared.now_ms();
        if self.detector.state(&node).is_none() {
            self.detector.watch(node.clone(), now);
        }
        self.detector.heard(&node, now);
        self.members.insert(node.clone());
        // Members the peer knows count too (only against a majority: they are not
        // watched until heard). Bounded like the detector.
        for name in &hb.members {
            if self.members.len() >= recovery::detector::MAX_PEERS {
                break;
            }
            self.members.insert(NodeId(name.clone()));
        }
        for job in &hb.ended {
            self.remember_ended(job);
        }
        for (job, generation) in &hb.abandoned {
            self.mark_abandoned(job, &node, *generation);
        }
        // A job this node holds a replica of but knows nothing of (it restarted after
        // the job's node was last heard): the peer sees its node gone. Taken like a job
        // the peer gave up, so this node decides too — everyone else may be naming it
        // to resume the job (level 1's bench: a restarted holder named by every node
        // never resumed, the job was lost).
        for (job, generation, owner) in &hb.orphans {
            if self.held.contains_key(job) && !self.placed.contains_key(job) {
                self.mark_abandoned(job, &NodeId(owner.clone()), *generation);
            }
        }
        // The peer moved a job away: it now belongs to the destination (at the
        // destination's incarnation as last heard), so the destination's death before
        // it ever listed the job still gets the job recovered.
        for (job, generation, to) in &hb.moved {
            let to = NodeId(to.clone());
            if self.ended.contains(job) || to == self.me {
                continue;
            }
            let Some(incarnation) = self.peers.get(&to).map(|p| p.incarnation) else {
                continue;
            };
            let before = self.placed.get(job).map(|p| (p.node.clone(), p.generation));
            self.place(job, to.clone(), *generation, incarnation);
            if before != Some((to, *generation)) {
                self.moved_in.insert(job.clone(), now);
            }
        }
        let jobs: HashMap<String, (u64, String)> = hb
            .jobs
            .iter()
            .map(|j| (j.job.clone(), (j.generation, j.state.clone())))
            .collect();
        for j in hb.jobs.iter().filter(|j| j.state == "running") {
            if self.ended.contains(&j.job) {
                continue;
            }
            self.place(&j.job, node.clone(), j.generation, hb.incarnation);
            // Fencing: a copy here that is older (or the same generation, ranked
            // lower) stops at once.
            if let Some(mine) = self
                .mine
                .get(&j.job)
                .copied()
                .filter(|_| !self.claims.contains_key(&j.job))
            {
                match recovery::on_generation(&j.job, &self.me, mine, &node, j.generation) {
                    Fence::Keep => {}
                    f => {
                        tracing::warn!(job = %j.job, mine, theirs = j.generation, ?f,
                            other = %node.as_str(), node = %self.me.as_str(),
                            "another node runs this job: dropping this copy");
                        self.quorum_paused.remove(&j.job);
                        self.control(&j.job, Op::Drop);
                    }
                }
            }
        }
        // A claim of ours meets another node's copy of the same job at our generation or
        // newer: the newer one, a running one, or the one ranked first for the job wins;
        // both sides apply the same rule.
        for j in &hb.jobs {
            let Some((claimed, _)) = self.claims.get(&j.job).copied() else {
                continue;
            };
            let outranked = recovery::rank(&j.job, [&self.me, &node]).first() != Some(&self.me);
            let yield_to_it = j.generation > claimed
                || (j.generation == claimed && (j.state == "running" || outranked));
            if yield_to_it {
                tracing::warn!(job = %j.job, claimed, theirs = j.generation,
                    other = %node.as_str(), node = %self.me.as_str(),
                    "another node claims this job: withdrawing");
                self.claims.remove(&j.job);
                self.control(&j.job, Op::DiscardRestored);
            }
        }
        // A job its owner (same incarnation) stopped listing was moved, ended or killed
        // on purpose: nothing to recover. A job just moved here is not listed by a
        // heartbeat sent before the move: it keeps its place for a while.
        let grace = MOVED_IN_GRACE_HEARTBEATS * self.shared.config.migration.heartbeat_ms;
        self.moved_in
            .retain(|_, at| now.saturating_sub(*at) < grace);
        let moved_in = &self.moved_in;
        self.placed.retain(|job, p| {
            p.node != node
                || p.incarnation != hb.incarnation
                || jobs.contains_key(job)
                || moved_in.contains_key(job)
        });
        self.peers.insert(
            node,
            Peer {
                peer,
                incarnation: hb.incarnation,
                jobs,
                holdings: hb.holdings.into_iter().collect(),
                claims: hb.claims.into_iter().collect(),
                heard_at: now,
                draining: hb.draining,
            },
        );
    }
}

impl Recovery {
    /// Jobs this node gave up (post-copy failed), with their generation.
    fn abandoned_here(&self) -> Vec<(String, u64)> {
        self.shared
            .abandoned
            .lock()
            .map(|a| a.iter().map(|(j, g)| (j.clone(), *g)).collect())
            .unwrap_or_default()
    }

    /// `node` gave `job` up at `generation`: it no longer owns it (if nobody runs a
    /// newer generation), so `recover` treats it like a dead owner.
    fn mark_abandoned(&mut self, job: &str, node: &NodeId, generation: u64) {
        if self.ended.contains(job) {
            return;
        }
        // Possibly before any heartbeat showed it running there: the abandoned
        // generation is known now, and the recovered copy must come after it.
        if self
            .placed
            .get(job)
            .is_none_or(|p| p.generation <= generation)
        {
            self.placed.insert(
                job.to_string(),
                Placed {
                    node: node.clone(),
                    generation,
                    incarnation: ABANDONED,
                },
            );
        }
    }

    /// `node` (in `incarnation`) runs `job` at `generation`: remembered unless a newer
    /// generation is known to run elsewhere.
    fn place(&mut self, job: &str, node: NodeId, generation: u64, incarnation: u64) {
        // A stale heartbeat of an abandoned copy does not make its node the owner again.
        // Another node running the generation a node gave up (the destination of a
        // move whose source gave its paused copy up) does own it.
        let newer = self.placed.get(job).is_none_or(|p| {
            p.generation < generation
                || (p.generation == generation && (p.incarnation != ABANDONED || p.node != node))
        });
        if newer {
            self.placed.insert(
                job.to_string(),
                Placed {
                    node,
                    generation,
                    incarnation,
                },
            );
        }
    }

    /// Gives up the paused copy of a move whose handover went unanswered once its
    /// destination is gone without the job ([`recovery::after_escalation`]): published
    /// as abandoned at the destination's generation, it is recovered by the majority
    /// from its newest replicated checkpoint, above anything the destination ran.
    fn settle_escalations(&mut self) {
        let escalated: Vec<(String, (u64, String, u64))> = match self.shared.escalated.lock() {
            Ok(e) => e.iter().map(|(j, v)| (j.clone(), v.clone())).collect(),
            Err(_) => return,
        };
        for (job, (generation, to, at)) in escalated {
            if self.mine.get(&job) != Some(&generation) {
                // Resolved meanwhile (dropped, fenced, or running again).
                if !self.mine.contains_key(&job) {
                    if let Ok(mut e) = self.shared.escalated.lock() {
                        e.remove(&job);
                    }
                }
                continue;
            }
            let dest = NodeId(to);
            let dead = self.detector.state(&dest) == Some(Liveness::Dead);
            let lists = self
                .peers
                .get(&dest)
                .filter(|p| p.heard_at > at)
                .map(|p| p.jobs.get(&job).is_some_and(|(g, _)| *g > generation));
            if recovery::after_escalation(dead, lists) == recovery::Handover::GiveUp {
                tracing::warn!(%job, generation, dest = %dest.as_str(), dead, node = %self.me.as_str(),
                    "the move's destination is gone without the job: giving the paused copy up for recovery");
                if let Ok(mut e) = self.shared.escalated.lock() {
                    e.remove(&job);
                }
                self.scheduler.do_send(super::scheduler::Abandon {
                    job,
                    generation,
                    published: generation.saturating_add(1),
                    kill: true,
                });
            }
        }
    }

    /// Claims whose period passed without a conflict run now; claims whose restored copy
    /// is gone (discarded, or the node lost it) are forgotten.
    fn settle_claims(&mut self, jobs: &[JobSummary], now: u64) {
        let wait = self.claim_ms();
        let claims: Vec<(String, u64, u64)> = self
            .claims
            .iter()
            .map(|(j, (g, t))| (j.clone(), *g, *t))
            .collect();
        for (job, generation, at) in claims {
            let restored = jobs
                .iter()
                .any(|j| j.job == job && j.state == "restored" && j.generation == generation);
            if !restored {
                self.claims.remove(&job);
            } else if now >= at + wait {
                tracing::info!(%job, generation, node = %self.me.as_str(),
                    "claim uncontested: the recovered job runs");
                self.claims.remove(&job);
                self.control(&job, Op::Go { generation });
            }
        }
    }
}

/// The mesh measured a link to `peer` (a ping answered): the node is alive.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Pinged(pub PeerId);

impl Handler<Pinged> for Recovery {
    type Result = ();

    fn handle(&mut self, m: Pinged, _: &mut Context<Self>) {
        let now = self.shared.now_ms();
        let node = self
            .peers
            .iter()
            .find(|(_, p)| p.peer == m.0)
            .map(|(n, _)| n.clone());
        if let Some(node) = node {
            self.detector.heard(&node, now);
        }
    }
}

/// A checkpoint offered by a job's owner for this node to keep.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Replica {
    pub from: PeerId,
    pub job: String,
    pub generation: u64,
    pub seq: u64,
    pub home: Vec<u8>,
    pub manifest: Vec<u8>,
    /// The generation the sender claims (a recovery copying its starting point).
    pub claim: Option<u64>,
}

impl Handler<Replica> for Recovery {
    type Result = ResponseActFuture<Self, Result<(), String>>;

    fn handle(&mut self, m: Replica, _: &mut Context<Self>) -> Self::Result {
        if let Some(theirs) = m.claim {
            // The sender claims the job: taken as if its heartbeat said so (the next
            // one will), before the import makes this node an equal holder; a claim of
            // ours it beats is withdrawn now, by the rule both sides apply.
            let sender = self
                .peers
                .iter_mut()
                .find(|(_, p)| p.peer == m.from)
                .map(|(n, p)| {
                    p.claims.insert(m.job.clone(), theirs);
                    n.clone()
                });
            if let (Some(node), Some((mine, _))) = (sender, self.claims.get(&m.job).copied()) {
                let outranked = recovery::rank(&m.job, [&self.me, &node]).first() != Some(&self.me);
                if theirs > mine || (theirs == mine && outranked) {
                    tracing::warn!(job = %m.job, claimed = mine, theirs, other = %node.as_str(),
                        node = %self.me.as_str(), "another node claims this job: withdrawing");
                    self.claims.remove(&m.job);
                    self.control(&m.job, Op::DiscardRestored);
                }
            }
        }
        let shared = self.shared.clone();
        let cp = self.checkpoint.clone();
        let job = m.job.clone();
        let from = m.from;
        self.importing += 1;
        let fut = async move {
            let home = PeerId::from_bytes(&m.home).map_err(|e| format!("home: {e}"))?;
            let manifest = store::Manifest::decode(&m.manifest).map_err(|e| e.to_string())?;
            if manifest.job != m.job || manifest.generation != m.generation {
                return Err("the manifest is of another job or generation".to_string());
            }
            let ids: Vec<ChunkId> = manifest.referenced().map(|(id, _)| id).collect();
            let missing: Vec<mesh::ChunkId> = shared
                .store
                .missing(ids.iter())
                .iter()
                .map(to_mesh_id)
                .collect();
            let (ok, _) = super::migrator::fetch_round(
                shared.mesh.clone(),
                shared.store.clone(),
                cp,
                m.from,
                missing,
                migrate::Compression::None,
                |_| {},
            )
            .await;
            if !ok {
                return Err("fetching the checkpoint's chunks failed".into());
            }
            let store = shared.store.clone();
            let bytes = m.manifest;
            let (generation, seq, job, home_bytes) = (m.generation, m.seq, m.job, m.home);
            // The manifest, then the record saying it is this node's replica (so a
            // restart finds it again, see `recovery::held`), both before the answer
            // that acknowledges the copy.
            let cref = tokio::task::spawn_blocking(move || {
                let cp = store
                    .import_manifest(&bytes)
                    .map_err(|e| format!("storing the manifest: {e}"))?;
                let note = HeldNote {
                    job,
                    checkpoint: CheckpointRef {
                        generation,
                        seq,
                        id: CheckpointId(cp.id.0),
                    },
                    home: home_bytes,
                };
                store
                    .put_note_if(&held::note_name(&note.job), &note.encode(), |old| {
                        held::supersedes(&note, old)
                    })
                    .map_err(|e| format!("recording the replica: {e}"))?;
                Ok::<CheckpointRef, String>(note.checkpoint)
            })
            .await
            .map_err(|e| e.to_string())??;
            Ok((cref, home))
        };
        Box::pin(fut.into_actor(self).map(move |r, act, _| {
            act.importing = act.importing.saturating_sub(1);
            let (cref, home) = r?;
            if act.ended.contains(&job) {
                if !act.held.contains_key(&job) {
                    let store = act.shared.store.clone();
                    let name = held::note_name(&job);
                    tokio::task::spawn_blocking(move || store.remove_note(&name));
                }
                return Ok(());
            }
            // Only the node running a generation copies it: if that generation is newer
            // than the one this node knows of, its sender owns the job now, though its
            // heartbeat saying so may still be on the way. Without this, a node that
            // held the new generation's first copy before hearing that heartbeat saw
            // the old owner dead and a newer checkpoint in hand, and started a needless
            // second recovery (seen in level 1's bench). (A recovery's own copy of the
            // checkpoint it resumes from carries the old generation: no effect.)
            let sender = act
                .peers
                .iter()
                .find(|(_, p)| p.peer == from)
                .map(|(n, p)| (n.clone(), p.incarnation));
            if let Some((node, incarnation)) = sender {
                // Unknown here (e.g. this node restarted and has not heard the sender
                // run it): the sender runs or claims it. Without this, a holder that
                // everyone else named to resume a job never did, not knowing of it.
                if act
                    .placed
                    .get(&job)
                    .is_none_or(|p| p.generation < cref.generation)
                {
                    act.place(&job, node, cref.generation, incarnation);
                }
            }
            let newer = act.held.get(&job).is_none_or(|h| h.cref < cref);
            if newer {
                act.held.insert(job, Held { cref, home });
            }
            Ok(())
        }))
    }
}

/// Replication and recovery figures.
#[derive(Message)]
#[rtype(result = "RecoveryStatus")]
pub struct Status;

impl Handler<Status> for Recovery {
    type Result = MessageResult<Status>;

    fn handle(&mut self, _: Status, _: &mut Context<Self>) -> Self::Result {
        let mut holdings: Vec<(String, String)> = self
            .held
            .iter()
            .map(|(j, h)| (j.clone(), h.cref.to_string()))
            .collect();
        holdings.sort();
        let mut quorum_paused: Vec<String> = self.quorum_paused.keys().cloned().collect();
        quorum_paused.sort();
        MessageResult(RecoveryStatus {
            members: self.members.iter().map(|n| n.0.clone()).collect(),
            alive: self.alive().into_iter().map(|n| n.0).collect(),
            holdings,
            copies_acked: self.copies_acked,
            copies_failed: self.copies_failed,
            recovered: self.recovered.clone(),
            quorum_paused,
        })
    }
}

/// What `GET /recovery` answers: acknowledged copies of jobs running here (job, holder,
/// checkpoint) and the recoveries this node made, timed by its `uptime_ms`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RecoveryFacts {
    pub uptime_ms: u64,
    pub acks: Vec<(String, String, CheckpointRef)>,
    pub recovered: Vec<Recovered>,
}

/// Acknowledged copies of jobs that ran here: (job, holder, checkpoint) — facts for the
/// chaos harness ("no acknowledged checkpoint lost").
#[derive(Message)]
#[rtype(result = "Vec<(String, String, CheckpointRef)>")]
pub struct Acks;

impl Handler<Acks> for Recovery {
    type Result = MessageResult<Acks>;

    fn handle(&mut self, _: Acks, _: &mut Context<Self>) -> Self::Result {
        let mut v = Vec::new();
        for job in self.seq.keys() {
            for (holder, cref) in self.acks.holders(job) {
                v.push((job.clone(), holder.0.clone(), *cref));
            }
        }
        v.sort();
        MessageResult(v)
    }
}
