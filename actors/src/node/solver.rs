//! The Solver actor: where jobs run.
//!
//! Two modes (`[placement] mode` in the node config):
//! - **rule** (default), evaluated every heartbeat period: a **draining** node moves
//!   each of its jobs to the live, non-draining peer with the fewest jobs (then the
//!   lowest load); an **overloaded** node (load above 0.8) moves one job at a time to a
//!   peer whose load is lower by more than a margin of 0.3 (hysteresis: no ping-pong).
//! - **admm**: the swarm solves the placement together (see [`super::admm`]): the live
//!   member with the smallest placement id proposes a round when the jobs change or
//!   `round_every_ms` passed, every member runs it over gossip, and each node moves the
//!   jobs it runs that the agreed placement puts elsewhere. Draining uses the rule.
//!
//! It also admits jobs (`roam run`), here or on the node the user named, and
//! publishes this node's heartbeat.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use mesh::{PeerId, Sources, Topic};
use store::BlobRef;

use std::collections::HashMap;
use std::time::Instant;

use placement::NodeId;
use tokio::sync::mpsc;

use super::admm::{node_id, AdmmTally, Member, Proposal, ProposedJob};
use super::api::RunRequest;
use super::checkpoint::{to_mesh_id, CheckpointActor, StoreChunksMsg};
use super::link::{LinkMonitor, PeerView, Query, Resolve};
use super::migrator::{Migrator, MovePolicy, MoveReport, StartMove};
use super::proto::{encode, valid_job_id, Heartbeat, JobLaunch, NodeMsg, NodeReply};
use super::scheduler::{List, Lookup, Scheduler, Start};
use super::Shared;
use crate::placement_shell::{Input, Shell, ShellConfig, ShellError};

const OVERLOADED: f64 = 0.8;
const LOAD_MARGIN: f64 = 0.3;
/// Load one running job adds to a node's reported load.
const LOAD_PER_JOB: f64 = 0.25;

pub struct Solver {
    shared: Arc<Shared>,
    scheduler: Addr<Scheduler>,
    migrator: Addr<Migrator>,
    links: Addr<LinkMonitor>,
    checkpoint: Addr<CheckpointActor>,
    draining: bool,
    injected_load: f64,
    /// Jobs this solver is moving (one decision per job at a time).
    moving: HashSet<String>,
    running_jobs: usize,
    admm: AdmmState,
}

/// Where this node is in the ADMM rounds (`[placement] mode = "admm"`).
#[derive(Default)]
struct AdmmState {
    /// The round being solved, and where its gossip goes.
    active: Option<(u64, mpsc::Sender<Input>)>,
    /// Highest round started or seen proposed.
    last_round: u64,
    last_round_at: Option<Instant>,
    /// What the last proposal of this node held: (job, current node).
    last_jobs: Vec<(String, Option<NodeId>)>,
    /// Names of peers, for move reports.
    names: HashMap<PeerId, String>,
    /// Measured links from peers to this node (the source side of a move here).
    links: std::collections::BTreeMap<NodeId, placement::Link>,
    /// What the rounds did, for `/metrics`.
    tally: AdmmTally,
}

impl Solver {
    pub fn new(
        shared: Arc<Shared>,
        scheduler: Addr<Scheduler>,
        migrator: Addr<Migrator>,
        links: Addr<LinkMonitor>,
        checkpoint: Addr<CheckpointActor>,
    ) -> Solver {
        Solver {
            shared,
            scheduler,
            migrator,
            links,
            checkpoint,
            draining: false,
            injected_load: 0.0,
            moving: HashSet::new(),
            running_jobs: 0,
            admm: AdmmState::default(),
        }
    }

    fn load(&self) -> f64 {
        let per_job = LOAD_PER_JOB * self.shared.config.placement.capacity / self.capacity();
        (self.injected_load + per_job * self.running_jobs as f64).min(1.0)
    }

    /// Jobs this node can take at once: `placement.capacity` for a whole CPU; behind a
    /// sporadic server (`[sched]`), the server's share `Cs/Ts` of it.
    fn capacity(&self) -> f64 {
        let jobs = self.shared.config.placement.capacity;
        match &self.shared.cpu {
            None => jobs,
            Some(cpu) => (jobs * cpu.server_share()).max(1e-3),
        }
    }

    /// Heartbeat + rule, every period.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let sched = self.scheduler.clone();
        let links = self.links.clone();
        let me = ctx.address();
        actix::spawn(async move {
            let (Ok(jobs), Ok(peers)) = (sched.send(List).await, links.send(Query).await) else {
                return;
            };
            me.do_send(Observed { jobs, peers });
        });
    }

    fn start_move(&mut self, job: String, to: PeerId, to_name: String, ctx: &mut Context<Self>) {
        if !self.moving.insert(job.clone()) {
            return;
        }
        let migrator = self.migrator.clone();
        let me = ctx.address();
        actix::spawn(async move {
            let r = migrator
                .send(StartMove {
                    job: job.clone(),
                    to,
                    to_name,
                    policy: MovePolicy::default(),
                })
                .await;
            match r {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::info!(%job, %e, "move decided by the solver did not happen"),
                Err(e) => tracing::info!(%job, %e, "move decided by the solver did not happen"),
            }
            me.do_send(MoveDone(job));
        });
    }
}

impl Solver {
    /// The proposer (the live, non-draining member with the smallest placement id)
    /// proposes a round when the jobs changed or `round_every_ms` passed.
    fn maybe_propose(&mut self, m: &Observed, ctx: &mut Context<Self>) {
        let me = self.shared.peer_id;
        let mut members: Vec<(NodeId, PeerId)> = vec![(node_id(&me), me)];
        let mut jobs: Vec<ProposedJob> = m
            .jobs
            .iter()
            .filter(|j| j.state == "running")
            .map(|j| ProposedJob {
                job: j.job.clone(),
                current: Some(node_id(&me)),
                state_bytes: j.memory_bytes,
            })
            .collect();
        for p in &m.peers {
            let Some(h) = p.heartbeat.as_ref().filter(|h| !h.draining) else {
                continue;
            };
            members.push((node_id(&p.peer), p.peer));
            jobs.extend(
                h.jobs
                    .iter()
                    .filter(|j| j.state == "running")
                    .map(|j| ProposedJob {
                        job: j.job.clone(),
                        current: Some(node_id(&p.peer)),
                        state_bytes: j.memory_bytes,
                    }),
            );
        }
        members.sort_by_key(|(id, _)| *id);
        members.dedup_by_key(|(id, _)| *id);
        jobs.sort_by(|a, b| a.job.cmp(&b.job));
        jobs.dedup_by(|a, b| a.job == b.job);
        if members.first().map(|(id, _)| *id) != Some(node_id(&me))
            || self.admm.active.is_some()
            || jobs.is_empty()
            || members.len() < 2
        {
            return;
        }
        let now_jobs: Vec<(String, Option<NodeId>)> =
            jobs.iter().map(|j| (j.job.clone(), j.current)).collect();
        let every = Duration::from_millis(self.shared.config.placement.round_every_ms);
        let due = self.admm.last_round_at.is_none_or(|t| t.elapsed() >= every);
        if now_jobs == self.admm.last_jobs && !due {
            return;
        }
        self.admm.last_jobs = now_jobs;
        let p = Proposal {
            round: self.admm.last_round + 1,
            members: members
                .iter()
                .map(|(id, p)| Member(*id, p.to_bytes()))
                .collect(),
            jobs,
        };
        let mesh = self.shared.mesh.clone();
        let bytes = encode(&p);
        actix::spawn(async move {
            if let Err(e) = mesh.publish(Topic::JobEvents, bytes).await {
                tracing::debug!(%e, "placement proposal not published");
            }
        });
        self.start_round(p, ctx);
    }

    fn start_round(&mut self, p: Proposal, ctx: &mut Context<Self>) {
        let cfg = &self.shared.config;
        let me = node_id(&self.shared.peer_id);
        let peers = p.peers();
        if self.admm.active.is_some()
            || p.round <= self.admm.last_round && self.admm.last_round_at.is_some()
            || !peers.iter().any(|(id, _)| *id == me)
        {
            return;
        }
        let env = placement::NodeEnv {
            capacity: self.capacity(),
            speed: cfg.speed,
            load: placement::LoadPenalty::default(),
            links: self.admm.links.clone(),
            fallback_link: placement::Link {
                bandwidth: 100e6,
                rtt: 0.001,
            },
        };
        let mut core = placement::Node::new(me, placement::Config::default());
        let ids = peers.iter().map(|(id, _)| *id).collect();
        if let Err(e) =
            core.start_round(p.round, 0, ids, p.core_jobs(cfg.placement.job_work_s), env)
        {
            tracing::warn!(%e, round = p.round, "placement round refused");
            return;
        }
        let (tx, mut rx) = mpsc::channel(4096);
        self.admm.active = Some((p.round, tx));
        self.admm.last_round = p.round;
        self.admm.last_round_at = Some(Instant::now());
        let mesh = self.shared.mesh.clone();
        let me_addr = ctx.address();
        let round = p.round;
        actix::spawn(async move {
            let mut shell = Shell::new(mesh, ShellConfig::default(), peers.clone());
            let r = shell.run(&mut core, &mut rx).await;
            // Published bytes so far (the linger below answers stragglers only).
            let sent_bytes = shell.stats().published_bytes;
            // Stay a moment to answer peers that lost this node's last messages.
            let _ = shell
                .linger(
                    &mut core,
                    &mut rx,
                    tokio::time::sleep(Duration::from_millis(300)),
                )
                .await;
            me_addr.do_send(RoundDone {
                round,
                result: r
                    .map(|placed| (placed.outcome, placed.elapsed))
                    .map_err(|e| (failure_kind(&e), e.to_string())),
                sent_bytes,
                proposal: p,
            });
        });
    }
}

/// A placement round ended here: its outcome and how long the shell ran for it, or
/// why it gave none (a label of [`super::admm::ROUND_FAILURES`] and the error).
#[derive(Message)]
#[rtype(result = "()")]
struct RoundDone {
    round: u64,
    result: Result<(placement::Outcome, Duration), (&'static str, String)>,
    /// Placement payload bytes this node published for the round.
    sent_bytes: u64,
    proposal: Proposal,
}

/// The `roam_admm_rounds_total` label of a round that gave no placement.
fn failure_kind(e: &ShellError) -> &'static str {
    match e {
        ShellError::Disagreement { .. } => "disagreement",
        ShellError::Failed { .. } => "infeasible",
        ShellError::Timeout { .. } => "timeout",
        _ => "error",
    }
}

impl Handler<RoundDone> for Solver {
    type Result = ();
    fn handle(&mut self, m: RoundDone, ctx: &mut Context<Self>) {
        if self
            .admm
            .active
            .as_ref()
            .is_some_and(|(r, _)| *r == m.round)
        {
            self.admm.active = None;
        }
        let outcome = match m.result {
            Ok((o, elapsed)) => {
                self.admm.tally.placed(&o, elapsed, m.sent_bytes);
                o
            }
            Err((kind, e)) => {
                self.admm.tally.failed(kind, m.sent_bytes);
                tracing::info!(round = m.round, %e, "placement round gave no placement");
                return;
            }
        };
        let me = node_id(&self.shared.peer_id);
        let peers: HashMap<NodeId, PeerId> = m.proposal.peers().into_iter().collect();
        tracing::info!(
            round = m.round,
            moves = outcome.moves,
            iterations = outcome.iterations,
            "placement agreed"
        );
        for j in &m.proposal.jobs {
            if j.current != Some(me) {
                continue;
            }
            let id = super::admm::job_id(&j.job);
            let Some((_, to)) = outcome.placement.iter().find(|(jid, _)| *jid == id) else {
                continue;
            };
            if *to == me {
                continue;
            }
            if let Some(peer) = peers.get(to) {
                let name = self
                    .admm
                    .names
                    .get(peer)
                    .cloned()
                    .unwrap_or_else(|| peer.to_string());
                self.start_move(j.job.clone(), *peer, name, ctx);
            }
        }
    }
}

/// A round proposal from the gossip.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ProposalSeen {
    pub source: PeerId,
    pub data: Vec<u8>,
}

impl Handler<ProposalSeen> for Solver {
    type Result = ();
    fn handle(&mut self, m: ProposalSeen, ctx: &mut Context<Self>) {
        if self.shared.config.placement.mode != "admm" || self.draining {
            return;
        }
        match Proposal::decode(&m.data) {
            // Only a member may propose (its id is the smallest, by the rule).
            Ok(p) if p.members.first().map(|m| m.0) == Some(node_id(&m.source)) => {
                self.start_round(p, ctx)
            }
            Ok(_) => tracing::debug!(source = %m.source, "proposal from a non-proposer ignored"),
            Err(e) => tracing::debug!(source = %m.source, %e, "bad proposal"),
        }
    }
}

/// A placement message (direct or gossip) for the running round.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PlacementGossip {
    pub source: PeerId,
    pub data: Vec<u8>,
}

impl Handler<PlacementGossip> for Solver {
    type Result = ();
    fn handle(&mut self, m: PlacementGossip, _: &mut Context<Self>) {
        if let Some((_, tx)) = &self.admm.active {
            // A full queue drops the message; the core's probes recover it.
            let _ = tx.try_send(Input::Message {
                source: m.source,
                data: m.data,
            });
        }
    }
}

impl Actor for Solver {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let period = Duration::from_millis(self.shared.config.migration.heartbeat_ms);
        ctx.run_interval(period, |act, ctx| act.tick(ctx));
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Observed {
    jobs: Vec<super::proto::JobSummary>,
    peers: Vec<PeerView>,
}

impl Handler<Observed> for Solver {
    type Result = ();

    fn handle(&mut self, m: Observed, ctx: &mut Context<Self>) {
        self.running_jobs = m.jobs.iter().filter(|j| j.state == "running").count();
        let published = self
            .shared
            .published
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        let hb = Heartbeat {
            name: self.shared.name.clone(),
            draining: self.draining,
            load: self.load(),
            speed: self.shared.config.speed,
            incarnation: self.shared.incarnation,
            holdings: published.holdings,
            ended: published.ended,
            abandoned: published.abandoned,
            members: published.members,
            claims: published.claims,
            orphans: published.orphans,
            moved: published.moved,
            jobs: m
                .jobs
                .iter()
                .take(super::proto::MAX_HEARTBEAT_JOBS)
                .cloned()
                .collect(),
        };
        let mesh = self.shared.mesh.clone();
        actix::spawn(async move {
            // Fails while no peer subscribed yet; the next period tries again.
            let _ = mesh.publish(Topic::Heartbeat, encode(&hb)).await;
        });
        // Live candidates, best first: fewest jobs, then lowest load, then id.
        let mut live: Vec<(usize, f64, PeerId, String)> = m
            .peers
            .iter()
            .filter_map(|p| {
                let h = p.heartbeat.as_ref()?;
                (!h.draining).then(|| (h.jobs.len(), h.load, p.peer, h.name.clone()))
            })
            .collect();
        live.sort_by(|a, b| {
            (a.0, a.1)
                .partial_cmp(&(b.0, b.1))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.2.to_bytes().cmp(&b.2.to_bytes()))
        });
        // Fencing: a copy paused here (a move that escalated) whose job runs at a
        // newer generation elsewhere is stale; it must never run again.
        for j in m.jobs.iter().filter(|j| j.state == "paused") {
            let newer = m.peers.iter().any(|p| {
                p.heartbeat.as_ref().is_some_and(|h| {
                    h.jobs.iter().any(|o| {
                        o.job == j.job && o.generation > j.generation && o.state == "running"
                    })
                })
            });
            if newer {
                tracing::info!(job = %j.job, generation = j.generation, "fenced: a newer generation runs elsewhere; dropping the paused copy");
                let sched = self.scheduler.clone();
                let job = j.job.clone();
                actix::spawn(async move {
                    let _ = sched
                        .send(super::scheduler::Control {
                            job,
                            op: super::scheduler::Op::Drop,
                        })
                        .await;
                });
            }
        }
        let running: Vec<String> = m
            .jobs
            .iter()
            .filter(|j| j.state == "running" && !self.moving.contains(&j.job))
            .map(|j| j.job.clone())
            .collect();
        if self.shared.config.placement.mode == "admm" {
            for p in &m.peers {
                if let Some(h) = &p.heartbeat {
                    self.admm.names.insert(p.peer, h.name.clone());
                }
                let bandwidth = if p.loopback {
                    Some(super::link::LOOPBACK_BYTES_PER_S as f64)
                } else {
                    p.link.as_ref().and_then(|l| l.throughput_bps)
                };
                if let (Some(bandwidth), Some(rtt)) =
                    (bandwidth, p.link.as_ref().and_then(|l| l.rtt))
                {
                    self.admm.links.insert(
                        node_id(&p.peer),
                        placement::Link {
                            bandwidth,
                            rtt: rtt.as_secs_f64(),
                        },
                    );
                }
            }
            if !self.draining {
                self.maybe_propose(&m, ctx);
                return;
            }
        }
        if self.draining {
            for (i, job) in running.into_iter().enumerate() {
                if live.is_empty() {
                    tracing::warn!(%job, "draining, but no live peer can take the job");
                    break;
                }
                let (_, _, peer, name) = live[i % live.len()].clone();
                self.start_move(job, peer, name, ctx);
            }
        } else if self.load() > OVERLOADED && self.moving.is_empty() {
            let mine = self.load();
            let target = live
                .iter()
                .filter(|(_, load, ..)| load + LOAD_PER_JOB + LOAD_MARGIN < mine)
                .min_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal));
            if let (Some(job), Some((_, _, peer, name))) = (running.first(), target) {
                tracing::info!(%job, to = %name, load = mine, "overloaded: moving a job");
                self.start_move(job.clone(), *peer, name.clone(), ctx);
            }
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct MoveDone(String);

impl Handler<MoveDone> for Solver {
    type Result = ();
    fn handle(&mut self, m: MoveDone, _: &mut Context<Self>) {
        self.moving.remove(&m.0);
    }
}

/// Admit a job submitted here (`roam run`).
#[derive(Message)]
#[rtype(result = "Result<String, String>")]
pub struct Launch(pub RunRequest);

impl Handler<Launch> for Solver {
    type Result = ResponseFuture<Result<String, String>>;

    fn handle(&mut self, m: Launch, _: &mut Context<Self>) -> Self::Result {
        let req = m.0;
        let shared = self.shared.clone();
        let sched = self.scheduler.clone();
        let links = self.links.clone();
        let draining = self.draining;
        Box::pin(async move {
            let max = shared.config.jobs.max_module_mib << 20;
            if req.module.len() as u64 > max {
                return Err(format!(
                    "module of {} bytes exceeds the node's limit of {max}",
                    req.module.len()
                ));
            }
            let job = match &req.id {
                Some(id) if valid_job_id(id) => id.clone(),
                Some(id) => {
                    return Err(format!(
                        "invalid job id {id:?} (a-z, 0-9, '-', '_', '.', ≤64)"
                    ))
                }
                None => format!(
                    "{}-{:04x}",
                    req.name
                        .as_deref()
                        .map(|n| n.trim_end_matches(".wasm"))
                        .filter(|n| valid_job_id(n) && n.len() < 48)
                        .unwrap_or("job"),
                    rand::random::<u16>()
                ),
            };
            let mut args = vec![req.name.clone().unwrap_or_else(|| job.clone())];
            args.extend(req.args.iter().cloned());
            let launch = JobLaunch {
                job: job.clone(),
                args,
                env: req.env.clone(),
                stdin: req.stdin.clone(),
                seed: req.seed,
                home: shared.peer_id.to_bytes(),
            };
            let target = req.node.clone().filter(|n| *n != shared.name);
            match target {
                None => {
                    if draining {
                        return Err(format!("{} is draining and takes no new jobs", shared.name));
                    }
                    if let Ok(mut book) = shared.logs.lock() {
                        book.open(&job);
                    }
                    start_local(&shared, &sched, launch, req.module).await?;
                }
                Some(name) => {
                    let peer = links
                        .send(Resolve(name.clone()))
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| format!("no node called {name:?} is known here"))?;
                    let store = shared.store.clone();
                    let module = req.module;
                    let blob = tokio::task::spawn_blocking(move || store.put_blob(&module))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| format!("storing the module: {e}"))?;
                    if let Ok(mut book) = shared.logs.lock() {
                        book.open(&job);
                    }
                    let msg = NodeMsg::Start {
                        launch,
                        module: blob,
                    };
                    let reply = shared
                        .mesh
                        .control_request(peer, encode(&msg))
                        .await
                        .map_err(|e| format!("asking {name}: {e}"))?;
                    match NodeReply::decode(&reply).map_err(|e| e.to_string())? {
                        NodeReply::Ok => {}
                        NodeReply::Error(e) => return Err(format!("{name}: {e}")),
                        other => return Err(format!("{name}: unexpected answer {other:?}")),
                    }
                }
            }
            Ok(job)
        })
    }
}

async fn start_local(
    shared: &Arc<Shared>,
    sched: &Addr<Scheduler>,
    launch: JobLaunch,
    module: Vec<u8>,
) -> Result<(), String> {
    let host = shared.host.clone();
    let loaded = tokio::task::spawn_blocking(move || host.load(&module))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("loading the module: {e}"))?;
    sched
        .send(Start {
            launch,
            module: loaded,
        })
        .await
        .map_err(|e| e.to_string())?
}

/// Another node asks this one to start a job whose module it holds.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct RemoteStart {
    pub from: PeerId,
    pub launch: JobLaunch,
    pub module: BlobRef,
}

impl Handler<RemoteStart> for Solver {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, m: RemoteStart, _: &mut Context<Self>) -> Self::Result {
        let shared = self.shared.clone();
        let sched = self.scheduler.clone();
        let cp = self.checkpoint.clone();
        let draining = self.draining;
        Box::pin(async move {
            if draining {
                return Err(format!("{} is draining", shared.name));
            }
            let max = shared.config.jobs.max_module_mib << 20;
            if m.module.map.len > max {
                return Err(format!(
                    "module of {} bytes exceeds {max}",
                    m.module.map.len
                ));
            }
            let ids: Vec<mesh::ChunkId> = {
                let mut ids: Vec<_> = m.module.map.chunks.iter().map(|(_, id)| *id).collect();
                ids.sort();
                ids.dedup();
                shared
                    .store
                    .missing(ids.iter())
                    .iter()
                    .map(to_mesh_id)
                    .collect()
            };
            if !ids.is_empty() {
                let fetch = shared
                    .mesh
                    .fetch(ids, Sources::HoldingAll(vec![m.from]))
                    .await
                    .map_err(|e| e.to_string())?;
                let (chunks, outcome) = fetch.collect().await.map_err(|e| e.to_string())?;
                if !outcome.missing.is_empty() {
                    return Err(format!(
                        "{} module chunks could not be fetched",
                        outcome.missing.len()
                    ));
                }
                cp.send(StoreChunksMsg(chunks.into_iter().collect()))
                    .await
                    .map_err(|e| e.to_string())??;
            }
            let store = shared.store.clone();
            let blob = m.module.clone();
            let bytes = tokio::task::spawn_blocking(move || store.get_blob(&blob, max))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("reading the module: {e}"))?;
            start_local(&shared, &sched, m.launch, bytes).await
        })
    }
}

/// Move `job`, wherever it runs, to the node named `to`.
#[derive(Message)]
#[rtype(result = "Result<MoveReport, String>")]
pub struct MoveTo {
    pub job: String,
    pub to: String,
    /// `[migration] mode` for this move (None: the config's).
    pub mode: Option<String>,
}

impl Handler<MoveTo> for Solver {
    type Result = ResponseFuture<Result<MoveReport, String>>;

    fn handle(&mut self, m: MoveTo, _: &mut Context<Self>) -> Self::Result {
        let shared = self.shared.clone();
        let sched = self.scheduler.clone();
        let links = self.links.clone();
        let migrator = self.migrator.clone();
        Box::pin(async move {
            let here = sched
                .send(Lookup(m.job.clone()))
                .await
                .map_err(|e| e.to_string())?
                .is_some();
            if here {
                if m.to == shared.name {
                    return Err(format!("{} already runs on {}", m.job, m.to));
                }
                let to = links
                    .send(Resolve(m.to.clone()))
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("no node called {:?} is known here", m.to))?;
                return migrator
                    .send(StartMove {
                        job: m.job,
                        to,
                        to_name: m.to,
                        policy: MovePolicy {
                            mode: m.mode,
                            ..MovePolicy::default()
                        },
                    })
                    .await
                    .map_err(|e| e.to_string())?;
            }
            // Ask the node that runs it.
            let peers = links.send(Query).await.map_err(|e| e.to_string())?;
            let runner = peers
                .iter()
                .find(|p| {
                    p.heartbeat
                        .as_ref()
                        .is_some_and(|h| h.jobs.iter().any(|j| j.job == m.job))
                })
                .map(|p| p.peer)
                .ok_or_else(|| format!("no node is known to run {}", m.job))?;
            let msg = NodeMsg::MoveJob {
                job: m.job.clone(),
                to: m.to.clone(),
                mode: m.mode.clone(),
            };
            let reply = shared
                .mesh
                .control_request(runner, encode(&msg))
                .await
                .map_err(|e| e.to_string())?;
            match NodeReply::decode(&reply).map_err(|e| e.to_string())? {
                NodeReply::Moved(json) => serde_json::from_str(&json).map_err(|e| e.to_string()),
                NodeReply::Error(e) => Err(e),
                other => Err(format!("unexpected answer {other:?}")),
            }
        })
    }
}

/// Drain the node called `.0` (this one, or ask the peer).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct DrainNode(pub String);

impl Handler<DrainNode> for Solver {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, m: DrainNode, ctx: &mut Context<Self>) -> Self::Result {
        if m.0 == self.shared.name || m.0 == self.shared.peer_id.to_string() {
            self.draining = true;
            self.shared
                .draining
                .store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::info!(node = %self.shared.name, "draining");
            self.tick(ctx);
            return Box::pin(async { Ok(()) });
        }
        let shared = self.shared.clone();
        let links = self.links.clone();
        Box::pin(async move {
            let peer = links
                .send(Resolve(m.0.clone()))
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no node called {:?} is known here", m.0))?;
            let reply = shared
                .mesh
                .control_request(peer, encode(&NodeMsg::Drain))
                .await
                .map_err(|e| e.to_string())?;
            match NodeReply::decode(&reply).map_err(|e| e.to_string())? {
                NodeReply::Ok => Ok(()),
                NodeReply::Error(e) => Err(e),
                other => Err(format!("unexpected answer {other:?}")),
            }
        })
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct SetLoad(pub f64);

impl Handler<SetLoad> for Solver {
    type Result = ();
    fn handle(&mut self, m: SetLoad, ctx: &mut Context<Self>) {
        self.injected_load = if m.0.is_finite() {
            m.0.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.tick(ctx);
    }
}

/// The running totals of this node's placement rounds (`/metrics`).
#[derive(Message)]
#[rtype(result = "AdmmTally")]
pub struct AdmmStats;

impl Handler<AdmmStats> for Solver {
    type Result = MessageResult<AdmmStats>;
    fn handle(&mut self, _: AdmmStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.admm.tally.clone())
    }
}

/// (draining, load)
#[derive(Message)]
#[rtype(result = "(bool, f64)")]
pub struct State;

impl Handler<State> for Solver {
    type Result = MessageResult<State>;
    fn handle(&mut self, _: State, _: &mut Context<Self>) -> Self::Result {
        MessageResult((self.draining, self.load()))
    }
}
