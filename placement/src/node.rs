//! One node's share of the decentralised solve: a plain state machine fed messages
//! ([`Node::handle`]), membership changes and timer ticks, and polled for messages to
//! gossip ([`Node::poll_transmit`]) and outcomes ([`Node::poll_event`]).
//!
//! Iterations are bulk-synchronous: a node computes `x_n^{k+1}` once it holds every
//! member's `x^k`. That makes every node's dual update, ρ adaptation, stopping decision
//! and final rounding a function of the same data, hence the same on every node; lost
//! messages are recovered by [`Node::tick`] (a node that made no progress since the
//! previous tick re-sends its last four messages straight to every member — peers are
//! never more than one step apart, so its last column, rounding candidate, final digest
//! and verdict are all a peer can be missing). Who a message goes to (everyone, or the
//! next hop of the relay, see [`crate::relay`]) comes with it ([`Transmit`]).

use std::collections::{BTreeMap, VecDeque};

use crate::error::PlacementError;
use crate::integer::{self, Fnv};
use crate::local::Projector;
use crate::model::{Hysteresis, Job, JobId, NodeEnv, NodeId, Problem};
use crate::msg::{quantise, sane, Body, Candidate, Column, Msg, Spec, Start};
use crate::relay::Schedule;

/// Messages kept for re-sending: what a peer that lags by one step can be missing (the
/// last column, the rounding candidate, the final digest and, from a task holder in a
/// relayed view, its verdict).
const LAST_SENT: usize = 4;

/// Solver settings. Must be the same on every node (they are part of the view digest).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Initial penalty ρ (costs are divided by their mean, so ρ is unit-free).
    pub rho0: f64,
    /// Iteration cap: past it the node rounds whatever it has (flagged in the outcome).
    pub max_iters: u32,
    /// Absolute and relative tolerances on the primal and dual residuals.
    pub eps_abs: f64,
    pub eps_rel: f64,
    /// Residual balancing: when one residual (relative to its tolerance) exceeds the
    /// other by `rho_mu`, scale ρ by the square root of their ratio, clamped to
    /// `[1/rho_tau, rho_tau]`.
    pub adaptive_rho: bool,
    pub rho_mu: f64,
    pub rho_tau: f64,
    pub hysteresis: Hysteresis,
    /// Local-search passes after rounding.
    pub polish_passes: u32,
    /// Subgradient steps that sharpen the ADMM prices before the price-guided rounding
    /// (0: round with the ADMM prices as they are).
    pub price_steps: u32,
    /// Bounds on what a round may hold (untrusted input).
    pub max_jobs: usize,
    pub max_members: usize,
    /// Messages kept for views/rounds this node has not entered yet.
    pub max_buffered: usize,
    /// From this many members on, starts and columns go over the log-depth relay
    /// [`Schedule`] (own message to one member, bundles of what a member holds forwarded
    /// at each step) and the final digests to the rounding task holders only, who send
    /// everyone the list; below it (and for candidates and every re-send) straight to
    /// all.
    pub relay_min_members: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rho0: 1.0,
            max_iters: 100,
            // Loose on purpose: the rounding follows the capacity prices, which settle
            // long before the rows do. Against 5e-4 / 5e-3 (seeds 1–9 of bench_admm's
            // instances), 2e-3 / 2e-2 stopped 32×256 after 8 iterations instead of 16
            // with the gap to the LP bound unchanged (median 0.24 %, max 0.28 %). These
            // (seeds 1–15 of 32×256, 1–21 of 8×32, 1–3 of 64×512, against 2e-3 /
            // 2e-2): 32×256 median 6 iterations instead of 8 (max 7 instead of 9), gap
            // median 0.22 % (was 0.24 %), max 0.38 % (0.35 %); 64×512 6 instead of 8
            // (0.21 %, was 0.23 %); 8×32 5 instead of 7 (median 0.63 %, was 0.59 %;
            // max 1.00 %, was 0.97 %). 3.5e-3 / 3.5e-2 took 8×32 to 1.10 %. Every
            // iteration is an all-to-all exchange, the bulk of a round's wall time.
            eps_abs: 3e-3,
            eps_rel: 3e-2,
            adaptive_rho: true,
            rho_mu: 5.0,
            rho_tau: 2.0,
            hysteresis: Hysteresis::default(),
            polish_passes: 4,
            price_steps: 200,
            max_jobs: 1 << 16,
            max_members: 1024,
            max_buffered: 4096,
            relay_min_members: 8,
        }
    }
}

impl Config {
    fn digest(&self) -> u64 {
        let mut h = Fnv::new();
        for v in [
            self.rho0,
            self.eps_abs,
            self.eps_rel,
            self.rho_mu,
            self.rho_tau,
            self.hysteresis.absolute,
            self.hysteresis.relative,
        ] {
            h.f64(v);
        }
        h.u64(self.max_iters as u64);
        h.u64(self.adaptive_rho as u64);
        h.u64(self.polish_passes as u64);
        h.u64(self.price_steps as u64);
        h.u64(self.relay_min_members as u64);
        h.finish()
    }
}

/// The agreed result of a round on this node.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub round: u64,
    pub epoch: u32,
    /// Job → node, sorted by job id.
    pub placement: Vec<(JobId, NodeId)>,
    pub digest: u64,
    /// ADMM iterations of the final view.
    pub iterations: u32,
    /// False if the iteration cap, not the residuals, ended the solve.
    pub converged: bool,
    /// Objective of the placement (effective costs) and of the last fractional iterate.
    pub objective: f64,
    pub fractional_objective: f64,
    /// Jobs that change node.
    pub moves: usize,
    pub primal_residual: f64,
    pub dual_residual: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Every member reported the same placement digest.
    Placed(Outcome),
    /// Members rounded to different placements (e.g. different floating point): the
    /// shell must not act on this round.
    Disagreement {
        round: u64,
        digests: Vec<(NodeId, u64)>,
    },
    /// The instance is infeasible (every member reaches the same verdict).
    Failed { round: u64, error: PlacementError },
}

/// Who a message is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum To {
    /// Every other member of the view.
    All,
    /// These members (never empty, never this node).
    Only(Vec<NodeId>),
}

/// A message to send, and to whom.
#[derive(Clone, Debug, PartialEq)]
pub struct Transmit {
    pub msg: Msg,
    pub to: To,
}

impl Transmit {
    /// How many members it goes to in a view of `members` (this node included).
    pub fn recipients(&self, members: usize) -> usize {
        match &self.to {
            To::All => members.saturating_sub(1),
            To::Only(v) => v.len(),
        }
    }
}

/// Counters for tests and benchmarks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeStats {
    /// Own messages (first sends; re-sends and relayed bundles not counted).
    pub sent: u64,
    pub resent: u64,
    pub received: u64,
    pub duplicates: u64,
    pub stale: u64,
    pub rejected: u64,
    pub buffered: u64,
    pub views: u64,
    /// Bundles forwarded (see [`Schedule`]), and the messages they carried.
    pub relayed: u64,
    pub relayed_msgs: u64,
    /// Messages taken out of bundles from relays.
    pub unbundled: u64,
}

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    Gathering,
    Iterating,
    /// Stopped; waiting for the rounding candidates of the task holders.
    Candidates,
    Final {
        assign: Vec<usize>,
        digest: u64,
        objective: f64,
    },
    Done,
    Failed,
}

struct Solver {
    problem: Problem,
    /// Index of this node in `problem.nodes`.
    me: usize,
    /// Cost scale `S` (costs are divided by it inside the ADMM).
    scale: f64,
    rho: f64,
    /// Last complete iteration.
    k: u32,
    /// `X^k` (node columns as gossiped, `[node][job]`); `Y^k` (job rows projected on the
    /// simplex) and the scaled duals `U^k` job-major (`[job * nodes + node]`: the row
    /// step walks them in order), and `xt`, `X^k` job-major (scratch of the row step);
    /// `y`, `Y^k` as `[node][job]`, filled only when the solve stops (the rounding's
    /// input).
    x: Vec<Vec<f64>>,
    yt: Vec<f64>,
    ut: Vec<f64>,
    xt: Vec<f64>,
    y: Vec<Vec<f64>>,
    /// Capacity price of every member with its `x^k` (cost units per unit of demand).
    mu: Vec<f64>,
    /// Allowed nodes per job.
    job_nodes: Vec<Vec<usize>>,
    /// This node's own next column and price once computed.
    next: Option<(Vec<f64>, f64)>,
    allowed: Vec<usize>,
    demand: Vec<f64>,
    cost: Vec<f64>,
    w: Vec<f64>,
    out: Vec<f64>,
    row: Vec<f64>,
    sorted: Vec<f64>,
    projector: Projector,
    primal: f64,
    dual: f64,
    converged: bool,
}

struct Round {
    round: u64,
    epoch: u32,
    view: u32,
    members: Vec<NodeId>,
    jobs: Vec<Job>,
    env: NodeEnv,
    /// Own column to start the view from (warm start).
    start_column: Vec<f64>,
    starts: BTreeMap<NodeId, Start>,
    /// Columns of iterations ≥ 1 not yet complete, by iteration then node.
    pending: BTreeMap<u32, BTreeMap<NodeId, (Vec<f64>, f64)>>,
    /// Rounding candidates of the task holders, with the iteration they were sent at.
    candidates: BTreeMap<NodeId, (u32, Candidate)>,
    finals: BTreeMap<NodeId, u64>,
    /// Relayed views: every task holder's list of the members' final digests (its own
    /// included once it sent it).
    verdicts: BTreeMap<NodeId, Vec<(NodeId, u64)>>,
    solver: Option<Solver>,
    phase: Phase,
    last_sent: VecDeque<Msg>,
    progressed: bool,
    peer_lagging: bool,
    /// The exchange schedule of the view (flat below `relay_min_members`).
    sched: Schedule,
    /// Starts/columns of the authors this node forwards (ring offsets below the
    /// schedule's window, its own included) by iteration, until every step went out.
    relay: BTreeMap<u32, BTreeMap<NodeId, Msg>>,
    /// Steps already sent per iteration (bit `k`: step `k`).
    relay_sent: BTreeMap<u32, u64>,
    /// Last iteration whose every step went out (iteration 0: the starts).
    relay_done: Option<u32>,
}

/// One node's placement core.
pub struct Node {
    id: NodeId,
    cfg: Config,
    cfg_digest: u64,
    round: Option<Round>,
    buffered: VecDeque<Msg>,
    outbox: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Own capacity price and ρ the last solve ended with (warm start of the next).
    memory: Option<(f32, f32)>,
    stats: NodeStats,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Node {
    pub fn new(id: NodeId, cfg: Config) -> Node {
        let cfg_digest = cfg.digest();
        Node {
            id,
            cfg,
            cfg_digest,
            round: None,
            buffered: VecDeque::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            memory: None,
            stats: NodeStats::default(),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }
    /// Members of the current view.
    pub fn members(&self) -> &[NodeId] {
        self.round.as_ref().map_or(&[], |r| &r.members)
    }
    pub fn epoch(&self) -> u32 {
        self.round.as_ref().map_or(0, |r| r.epoch)
    }
    /// True once the round has ended here (placed, failed or disagreed).
    pub fn is_finished(&self) -> bool {
        self.round
            .as_ref()
            .is_some_and(|r| matches!(r.phase, Phase::Done | Phase::Failed))
    }
    /// Iteration this node is at (the last complete one).
    pub fn iteration(&self) -> u32 {
        self.round
            .as_ref()
            .and_then(|r| r.solver.as_ref())
            .map_or(0, |s| s.k)
    }
    /// Current ρ (for diagnostics).
    pub fn rho(&self) -> Option<f64> {
        self.round
            .as_ref()
            .and_then(|r| r.solver.as_ref())
            .map(|s| s.rho)
    }
    /// The assembled problem of the current view, once every member's spec is in.
    pub fn problem(&self) -> Option<&Problem> {
        self.round
            .as_ref()
            .and_then(|r| r.solver.as_ref())
            .map(|s| &s.problem)
    }
    /// The current fractional iterate `x[n][j]` (node index of [`Node::problem`]).
    pub fn fractional(&self) -> Option<&[Vec<f64>]> {
        self.round
            .as_ref()
            .and_then(|r| r.solver.as_ref())
            .map(|s| s.x.as_slice())
    }

    /// The next message to send and its recipients.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Start a solve. `members` and `jobs` must be the same on every node for the round
    /// (they are part of the view digest); `env` is this node's own data.
    pub fn start_round(
        &mut self,
        round: u64,
        epoch: u32,
        members: Vec<NodeId>,
        jobs: Vec<Job>,
        env: NodeEnv,
    ) -> Result<(), PlacementError> {
        if !members.contains(&self.id) {
            return Err(PlacementError::NotAMember(self.id));
        }
        if members.len() > self.cfg.max_members {
            return Err(PlacementError::TooManyMembers(members.len()));
        }
        let mut jobs = jobs;
        if jobs.len() > self.cfg.max_jobs {
            return Err(PlacementError::TooManyJobs(jobs.len()));
        }
        jobs.sort_by_key(|j| j.id);
        if let Some(w) = jobs.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(PlacementError::DuplicateJob(w[0].id));
        }
        let start_column: Vec<f64> = jobs
            .iter()
            .map(|j| {
                if j.current == Some(self.id) && j.allows(self.id) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        self.round = Some(Round {
            round,
            epoch,
            view: 0,
            members: Vec::new(),
            jobs,
            env,
            start_column,
            starts: BTreeMap::new(),
            pending: BTreeMap::new(),
            candidates: BTreeMap::new(),
            finals: BTreeMap::new(),
            verdicts: BTreeMap::new(),
            solver: None,
            phase: Phase::Gathering,
            last_sent: VecDeque::new(),
            progressed: true,
            peer_lagging: false,
            sched: Schedule::flat(1),
            relay: BTreeMap::new(),
            relay_sent: BTreeMap::new(),
            relay_done: None,
        });
        self.enter_view(epoch, members)
    }

    /// A membership change mid-solve (same `epoch`/`members` on every node, from the
    /// shell's membership protocol): restart the ADMM in the new view, warm-started from
    /// the current iterate and prices.
    pub fn set_members(&mut self, epoch: u32, members: Vec<NodeId>) -> Result<(), PlacementError> {
        let Some(r) = self.round.as_mut() else {
            return Ok(());
        };
        let mut sorted = members.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if epoch == r.epoch && sorted == r.members {
            return Ok(());
        }
        // Warm start: own latest column, own price and ρ.
        if let Some(sv) = &r.solver {
            let (col, mu) = sv
                .next
                .clone()
                .unwrap_or_else(|| (sv.x[sv.me].clone(), sv.mu[sv.me]));
            r.start_column = col;
            self.memory = Some((mu as f32, sv.rho as f32));
        }
        self.enter_view(epoch, sorted)
    }

    /// Convenience: `id` left (the next epoch, without it).
    pub fn remove_member(&mut self, id: NodeId) -> Result<(), PlacementError> {
        let (epoch, mut members) = match &self.round {
            Some(r) => (r.epoch, r.members.clone()),
            None => return Ok(()),
        };
        members.retain(|&m| m != id);
        self.set_members(epoch.wrapping_add(1), members)
    }

    /// Convenience: `id` joined (the next epoch, with it).
    pub fn add_member(&mut self, id: NodeId) -> Result<(), PlacementError> {
        let (epoch, mut members) = match &self.round {
            Some(r) => (r.epoch, r.members.clone()),
            None => return Ok(()),
        };
        members.push(id);
        self.set_members(epoch.wrapping_add(1), members)
    }

    fn enter_view(&mut self, epoch: u32, members: Vec<NodeId>) -> Result<(), PlacementError> {
        let id = self.id;
        let cfg_digest = self.cfg_digest;
        let max_members = self.cfg.max_members;
        let h = self.cfg.hysteresis;
        let memory = self.memory;
        let Some(r) = self.round.as_mut() else {
            return Ok(());
        };
        let mut members = members;
        members.sort_unstable();
        members.dedup();
        if members.len() > max_members {
            return Err(PlacementError::TooManyMembers(members.len()));
        }
        if !members.contains(&id) {
            return Err(PlacementError::NotAMember(id));
        }
        r.epoch = epoch;
        r.members = members;
        r.view = view_digest(r.round, epoch, &r.members, &r.jobs, cfg_digest);
        r.starts.clear();
        r.pending.clear();
        r.candidates.clear();
        r.finals.clear();
        r.verdicts.clear();
        r.solver = None;
        r.phase = Phase::Gathering;
        r.last_sent.clear();
        r.progressed = true;
        r.sched = if r.members.len() >= self.cfg.relay_min_members.max(2) {
            Schedule::new(r.members.len())
        } else {
            Schedule::flat(r.members.len())
        };
        r.relay.clear();
        r.relay_sent.clear();
        r.relay_done = None;
        self.stats.views += 1;
        tracing::debug!(
            node = id,
            round = r.round,
            epoch,
            view = r.view,
            members = r.members.len(),
            "placement view"
        );

        let spec = Spec::from_env(id, &r.env, &r.jobs, &h);
        // Own column restricted to the allowed jobs, on the wire grid.
        let allowed: Vec<bool> = r.jobs.iter().map(|j| j.allows(id)).collect();
        let col: Vec<f64> = r
            .start_column
            .iter()
            .zip(&allowed)
            .map(|(&x, &a)| if a { quantise(x) } else { 0.0 })
            .collect();
        let (mu, rho) = memory.unwrap_or((0.0, 0.0));
        let start = Start {
            spec,
            column: Column::from_dense(&col),
            mu,
            rho,
        };
        let msg = Msg {
            round: r.round,
            view: r.view,
            iter: 0,
            from: id,
            body: Body::Start(start.clone()),
            probe: false,
        };
        r.starts.insert(id, start);
        let (round, view) = (r.round, r.view);
        self.send(msg);
        // Replay what arrived early for this view.
        let early: Vec<Msg> = {
            let (keep, take): (VecDeque<Msg>, VecDeque<Msg>) = std::mem::take(&mut self.buffered)
                .into_iter()
                .partition(|m| !(m.round == round && m.view == view));
            self.buffered = keep;
            take.into_iter().collect()
        };
        for m in early {
            self.handle_inner(m);
        }
        self.try_assemble();
        Ok(())
    }

    /// Sends one of this node's own messages: starts and columns to the row-mates when
    /// the view relays (and into the row's bundle), everything else to all.
    fn send(&mut self, msg: Msg) {
        self.stats.sent += 1;
        let id = self.id;
        let mut to = To::All;
        let mut bundle_iter = None;
        if let Some(r) = self.round.as_mut() {
            if r.last_sent.len() == LAST_SENT {
                r.last_sent.pop_front();
            }
            r.last_sent.push_back(msg.clone());
            if !r.sched.is_flat() && matches!(msg.body, Body::Start(_) | Body::Column(..)) {
                if let Ok(me) = r.members.binary_search(&id) {
                    // Step 0: the own message alone, to the member before on the ring.
                    to = To::Only(vec![r.members[r.sched.target(me, 0)]]);
                    *r.relay_sent.entry(msg.iter).or_default() |= 1;
                    bundle_iter = relay_store(r, me, &msg).then_some(msg.iter);
                }
            } else if !r.sched.is_flat() && matches!(msg.body, Body::Final(_)) {
                // Relayed view: the final digest goes to the task holders only.
                let holders = &r.members[..task_holders(r.members.len())];
                to = To::Only(holders.iter().copied().filter(|&h| h != id).collect());
            }
        }
        match &to {
            To::Only(v) if v.is_empty() => {}
            _ => self.outbox.push_back(Transmit { msg, to }),
        }
        if let Some(k) = bundle_iter {
            self.relay_check(k);
        }
    }

    /// Sends every step of iteration `k` whose authors this node now holds all of (step
    /// `j ≥ 1`: the members at ring offsets `0 .. size(j)`, to the member `2^j` before).
    fn relay_check(&mut self, k: u32) {
        let id = self.id;
        let Some(r) = self.round.as_mut() else { return };
        let s = r.sched;
        if s.is_flat() || r.relay_done.is_some_and(|d| k <= d) {
            return;
        }
        let Ok(me) = r.members.binary_search(&id) else {
            return;
        };
        let n = r.members.len();
        let Some(store) = r.relay.get(&k) else { return };
        let mut sent = r.relay_sent.get(&k).copied().unwrap_or(0);
        let mut out = Vec::new();
        for step in 1..s.steps() {
            if sent & (1 << step) != 0 {
                continue;
            }
            let msgs: Vec<Msg> = (0..s.size(step))
                .map_while(|off| store.get(&r.members[(me + off) % n]).cloned())
                .collect();
            if msgs.len() < s.size(step) {
                continue;
            }
            sent |= 1 << step;
            self.stats.relayed += 1;
            self.stats.relayed_msgs += msgs.len() as u64;
            let msg = Msg {
                round: r.round,
                view: r.view,
                iter: k,
                from: id,
                body: Body::Relay(msgs),
                probe: false,
            };
            out.push(Transmit {
                msg,
                to: To::Only(vec![r.members[s.target(me, step)]]),
            });
        }
        if sent == (1u64 << s.steps()) - 1 {
            r.relay_done = Some(k);
            r.relay.retain(|&i, _| i > k);
            r.relay_sent.retain(|&i, _| i > k);
        } else {
            r.relay_sent.insert(k, sent);
        }
        self.outbox.extend(out);
    }

    /// Timer: if nothing moved since the last tick (no step completed, no new message
    /// taken) or a peer showed it lags, re-send the last messages (see [`LAST_SENT`]).
    /// Idempotent on the receiving side.
    pub fn tick(&mut self) {
        let Some(r) = self.round.as_mut() else { return };
        let finished = matches!(r.phase, Phase::Done | Phase::Failed);
        let resend = if finished {
            r.peer_lagging
        } else {
            !r.progressed || r.peer_lagging
        };
        // Stuck: probe (peers answer). Only answering a probe: plain copies.
        let probe = !finished && !r.progressed;
        r.progressed = false;
        r.peer_lagging = false;
        if resend {
            let msgs: Vec<Msg> = r
                .last_sent
                .iter()
                .cloned()
                .map(|mut m| {
                    m.probe = probe;
                    m
                })
                .collect();
            self.stats.resent += msgs.len() as u64;
            // Re-sends go straight to every member (no relay in the way of a recovery).
            self.outbox
                .extend(msgs.into_iter().map(|msg| Transmit { msg, to: To::All }));
        }
    }

    /// Feed one message from the network (untrusted; invalid ones are dropped and
    /// counted).
    pub fn handle(&mut self, msg: Msg) {
        self.stats.received += 1;
        self.handle_inner(msg);
        self.try_assemble();
    }

    fn buffer(&mut self, msg: Msg) {
        self.stats.buffered += 1;
        if self.buffered.len() >= self.cfg.max_buffered {
            self.buffered.pop_front();
        }
        self.buffered.push_back(msg);
    }

    fn handle_inner(&mut self, msg: Msg) {
        let id = self.id;
        let Some(r) = self.round.as_mut() else {
            self.buffer(msg);
            return;
        };
        if msg.round < r.round {
            self.stats.stale += 1;
            return;
        }
        if msg.round > r.round || msg.view != r.view {
            self.buffer(msg);
            return;
        }
        if msg.from == id || r.members.binary_search(&msg.from).is_err() {
            self.stats.rejected += 1;
            return;
        }
        let nj = r.jobs.len();
        // A start or column of an author this node forwards: kept for its bundles (if
        // accepted).
        let me = r.members.binary_search(&id).ok();
        let keep = match (me, &msg.body) {
            (Some(me), Body::Start(_) | Body::Column(..)) if !r.sched.is_flat() => r
                .members
                .binary_search(&msg.from)
                .ok()
                .filter(|&a| r.sched.offset(me, a) < r.sched.window())
                .map(|_| (me, msg.clone())),
            _ => None,
        };
        let (mut accepted, mut unbundle) = (false, Vec::new());
        let iter = msg.iter;
        match msg.body {
            Body::Start(start) => {
                if msg.iter != 0
                    || start.column.to_dense(nj).is_none()
                    || start.spec.costs(nj).is_err()
                {
                    self.stats.rejected += 1;
                    return;
                }
                match r.starts.entry(msg.from) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        self.stats.duplicates += 1;
                        r.peer_lagging |= msg.probe;
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(start);
                        accepted = true;
                    }
                }
            }
            Body::Column(col, mu) => {
                let Some(x) = col.to_dense(nj) else {
                    self.stats.rejected += 1;
                    return;
                };
                let next = r.solver.as_ref().map_or(0, |s| s.k + 1);
                let solving = matches!(r.phase, Phase::Gathering | Phase::Iterating);
                if msg.iter == 0 {
                    self.stats.rejected += 1;
                } else if msg.iter < next || !solving {
                    self.stats.stale += 1;
                    r.peer_lagging |= msg.probe;
                } else if msg.iter > next + 1 {
                    // Not possible from an honest member of this view; drop.
                    self.stats.rejected += 1;
                } else {
                    let slot = r.pending.entry(msg.iter).or_default();
                    match slot.entry(msg.from) {
                        std::collections::btree_map::Entry::Occupied(_) => {
                            self.stats.duplicates += 1;
                            r.peer_lagging |= msg.probe;
                        }
                        std::collections::btree_map::Entry::Vacant(v) => {
                            v.insert((x, sane(mu)));
                            accepted = true;
                        }
                    }
                }
            }
            Body::Candidate(c) => {
                // Only a task holder sends one (validated against the problem once the
                // decision is due).
                let holder = r
                    .members
                    .binary_search(&msg.from)
                    .is_ok_and(|i| i < task_holders(r.members.len()));
                if !holder {
                    self.stats.rejected += 1;
                    return;
                }
                match r.candidates.entry(msg.from) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        self.stats.duplicates += 1;
                        r.peer_lagging |= msg.probe;
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert((msg.iter, c));
                        accepted = true;
                    }
                }
            }
            Body::Final(d) => {
                if r.finals.insert(msg.from, d).is_some() {
                    self.stats.duplicates += 1;
                    r.peer_lagging |= msg.probe;
                } else {
                    accepted = true;
                }
            }
            Body::Verdict(list) => {
                // Relayed views only, from a task holder: every member's digest, in member
                // order.
                let holder = r
                    .members
                    .binary_search(&msg.from)
                    .is_ok_and(|i| i < task_holders(r.members.len()));
                let complete = list.len() == r.members.len()
                    && list.iter().zip(&r.members).all(|(&(n, _), &m)| n == m);
                if r.sched.is_flat() || !holder || !complete {
                    self.stats.rejected += 1;
                    return;
                }
                match r.verdicts.entry(msg.from) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        self.stats.duplicates += 1;
                        r.peer_lagging |= msg.probe;
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(list);
                        accepted = true;
                    }
                }
            }
            Body::Relay(inner) => {
                // Only the member 2^k after this one on the ring sends it a bundle (step
                // k ≥ 1), with starts and columns of this round and view by the `size(k)`
                // members from the sender on.
                let (Some(me), Ok(q)) = (me, r.members.binary_search(&msg.from)) else {
                    self.stats.rejected += 1;
                    return;
                };
                let Some(size) = r
                    .sched
                    .step_from(q, me)
                    .filter(|&k| k >= 1)
                    .map(|k| r.sched.size(k))
                else {
                    self.stats.rejected += 1;
                    return;
                };
                if inner.len() > size {
                    self.stats.rejected += 1;
                    return;
                }
                for m in inner {
                    let ok = m.round == msg.round
                        && m.view == msg.view
                        && matches!(m.body, Body::Start(_) | Body::Column(..))
                        && r.members
                            .binary_search(&m.from)
                            .is_ok_and(|a| r.sched.offset(q, a) < size);
                    if ok {
                        unbundle.push(Msg { probe: false, ..m });
                    } else {
                        self.stats.rejected += 1;
                    }
                }
            }
        }
        if accepted {
            // New data is progress: with the relay an iteration takes several hops, and a
            // node still hearing new messages is not stuck (if one is lost for good, the
            // node probes one tick after the last new one).
            r.progressed = true;
            if let Some((me, raw)) = keep {
                let raw = Msg {
                    probe: false,
                    ..raw
                };
                if relay_store(r, me, &raw) {
                    self.relay_check(iter);
                }
            }
        }
        self.stats.unbundled += unbundle.len() as u64;
        for m in unbundle {
            self.handle_inner(m);
        }
    }

    /// Drive the state machine as far as the data it holds allows.
    fn try_assemble(&mut self) {
        loop {
            let Some(r) = self.round.as_mut() else { return };
            match r.phase {
                Phase::Gathering => {
                    if r.members.iter().any(|m| !r.starts.contains_key(m)) {
                        return;
                    }
                    match build_solver(r, self.id, &self.cfg) {
                        Ok(s) => {
                            r.solver = Some(s);
                            r.phase = Phase::Iterating;
                            r.progressed = true;
                            self.complete_iteration();
                        }
                        Err(error) => {
                            tracing::warn!(node = self.id, round = r.round, %error, "placement infeasible");
                            r.phase = Phase::Failed;
                            r.progressed = true;
                            let round = r.round;
                            self.events.push_back(Event::Failed { round, error });
                            return;
                        }
                    }
                }
                Phase::Iterating => {
                    let Some(s) = r.solver.as_ref() else { return };
                    let k1 = s.k + 1;
                    let complete = r
                        .pending
                        .get(&k1)
                        .is_some_and(|m| r.members.iter().all(|id| m.contains_key(id)));
                    if !complete {
                        return;
                    }
                    let cols = r.pending.remove(&k1).unwrap_or_default();
                    if let Some(s) = r.solver.as_mut() {
                        let (mut x, mu): (Vec<_>, Vec<_>) = cols.into_values().unzip();
                        sanitise_columns(&s.problem, &mut x);
                        s.x = x;
                        s.mu = mu;
                        s.k = k1;
                        s.next = None;
                    }
                    r.progressed = true;
                    self.complete_iteration();
                }
                Phase::Candidates => {
                    let holders = &r.members[..task_holders(r.members.len())];
                    if holders.iter().any(|m| !r.candidates.contains_key(m)) {
                        return;
                    }
                    let Some(s) = r.solver.as_ref() else { return };
                    // The cheapest valid candidate, ties to the lower holder (every member
                    // validates and compares the same messages the same way).
                    let mut best: Option<(f64, Vec<usize>)> = None;
                    let mut failed = None;
                    for m in holders {
                        match r.candidates.get(m) {
                            Some((iter, Candidate::Placement(a))) if *iter == s.k => {
                                let a: Vec<usize> = a.iter().map(|&n| n as usize).collect();
                                let o = (a.len() == s.problem.n_jobs())
                                    .then(|| s.problem.objective(&a))
                                    .flatten();
                                match o {
                                    Some(o) if best.as_ref().is_none_or(|b| o < b.0) => {
                                        best = Some((o, a))
                                    }
                                    Some(_) => {}
                                    None => {
                                        tracing::warn!(
                                            node = self.id,
                                            from = m,
                                            "invalid rounding candidate"
                                        );
                                        self.stats.rejected += 1;
                                    }
                                }
                            }
                            Some((_, Candidate::Failed(job))) => {
                                failed.get_or_insert(*job);
                            }
                            _ => {
                                tracing::warn!(
                                    node = self.id,
                                    from = m,
                                    "rounding candidate from another iteration"
                                );
                                self.stats.rejected += 1;
                            }
                        }
                    }
                    r.progressed = true;
                    let Some((objective, assign)) = best else {
                        r.phase = Phase::Failed;
                        let round = r.round;
                        let job = failed.unwrap_or(0);
                        self.events.push_back(Event::Failed {
                            round,
                            error: PlacementError::NoIntegerPlacement { job },
                        });
                        return;
                    };
                    let digest = integer::digest(r.round, &s.problem, &assign);
                    let msg = Msg {
                        round: r.round,
                        view: r.view,
                        iter: s.k,
                        from: self.id,
                        body: Body::Final(digest),
                        probe: false,
                    };
                    r.phase = Phase::Final {
                        assign,
                        digest,
                        objective,
                    };
                    self.send(msg);
                }
                Phase::Final {
                    ref assign,
                    digest,
                    objective,
                } => {
                    let holders = &r.members[..task_holders(r.members.len())];
                    let all_finals = r
                        .members
                        .iter()
                        .all(|m| *m == self.id || r.finals.contains_key(m));
                    let (agree, mut digests) = if r.sched.is_flat() {
                        // Every member's digest came straight to every member.
                        if !all_finals {
                            return;
                        }
                        let agree = r.finals.values().all(|&d| d == digest);
                        (agree, r.finals.iter().map(|(&n, &d)| (n, d)).collect())
                    } else {
                        // Relayed view: the digests went to the task holders, which send
                        // everyone the whole list; placed only if every holder's list
                        // shows this node's digest for every member (one honest holder
                        // exposes any divergence to all).
                        if holders.contains(&self.id) && !r.verdicts.contains_key(&self.id) {
                            if !all_finals {
                                return;
                            }
                            let list: Vec<(NodeId, u64)> = r
                                .members
                                .iter()
                                .map(|&m| (m, r.finals.get(&m).copied().unwrap_or(digest)))
                                .collect();
                            r.verdicts.insert(self.id, list.clone());
                            let msg = Msg {
                                round: r.round,
                                view: r.view,
                                iter: r.solver.as_ref().map_or(0, |s| s.k),
                                from: self.id,
                                body: Body::Verdict(list),
                                probe: false,
                            };
                            r.progressed = true;
                            self.send(msg);
                            continue;
                        }
                        if holders.iter().any(|h| !r.verdicts.contains_key(h)) {
                            return;
                        }
                        let agree = r
                            .verdicts
                            .values()
                            .all(|l| l.iter().all(|&(_, d)| d == digest));
                        let mut digests: Vec<(NodeId, u64)> = Vec::new();
                        for l in r.verdicts.values() {
                            for &(n, d) in l {
                                if n != self.id && !digests.contains(&(n, d)) {
                                    digests.push((n, d));
                                }
                            }
                        }
                        (agree, digests)
                    };
                    let assign = assign.clone();
                    r.progressed = true;
                    r.phase = Phase::Done;
                    let Some(s) = r.solver.as_ref() else { return };
                    let p = &s.problem;
                    if agree {
                        let placement: Vec<(JobId, NodeId)> = assign
                            .iter()
                            .enumerate()
                            .map(|(j, &n)| (p.jobs[j].id, p.nodes[n]))
                            .collect();
                        let moves = p
                            .jobs
                            .iter()
                            .zip(&assign)
                            .filter(|(job, &n)| job.current != Some(p.nodes[n]))
                            .count();
                        let frac = p.fractional_objective(&s.y);
                        let outcome = Outcome {
                            round: r.round,
                            epoch: r.epoch,
                            placement,
                            digest,
                            iterations: s.k,
                            converged: s.converged,
                            objective,
                            fractional_objective: frac,
                            moves,
                            primal_residual: s.primal,
                            dual_residual: s.dual,
                        };
                        // Remember price and ρ for the next round's warm start.
                        self.memory = Some((s.mu[s.me] as f32, s.rho as f32));
                        self.events.push_back(Event::Placed(outcome));
                    } else {
                        digests.push((self.id, digest));
                        digests.sort_unstable();
                        tracing::warn!(
                            node = self.id,
                            round = r.round,
                            ?digests,
                            "placement digests disagree"
                        );
                        self.events.push_back(Event::Disagreement {
                            round: r.round,
                            digests,
                        });
                    }
                    return;
                }
                Phase::Done | Phase::Failed => return,
            }
        }
    }

    /// Iteration `k` is complete (every member's `x^k` is in): job-row projection, dual
    /// update, residuals, ρ adaptation, stopping test; then either the next local step or
    /// the rounding.
    fn complete_iteration(&mut self) {
        let cfg = self.cfg.clone();
        let id = self.id;
        let Some(r) = self.round.as_mut() else { return };
        let Some(s) = r.solver.as_mut() else { return };
        let nj = s.problem.n_jobs();
        let nn = s.x.len();
        let (mut dy2, mut r2, mut xx, mut yy, mut uu) = (0.0, 0.0, 0.0, 0.0, 0.0);
        {
            // X^k job-major, one pass over each column.
            for (n, col) in s.x.iter().enumerate() {
                for (j, &v) in col.iter().enumerate() {
                    s.xt[j * nn + n] = v;
                }
            }
            // Y^k = Π_rows(X^k + U^{k-1}); U^k = U^{k-1} + X^k − Y^k.
            for (j, nodes) in s.job_nodes.iter().enumerate() {
                let base = j * nn;
                let (xt, yt, ut) = (
                    &s.xt[base..base + nn],
                    &mut s.yt[base..base + nn],
                    &mut s.ut[base..base + nn],
                );
                s.row.clear();
                s.row.extend(nodes.iter().map(|&n| xt[n] + ut[n]));
                project_simplex(&mut s.row, &mut s.sorted);
                for (t, &n) in nodes.iter().enumerate() {
                    let (xv, yv) = (xt[n], s.row[t]);
                    dy2 += (yv - yt[n]).powi(2);
                    r2 += (xv - yv).powi(2);
                    xx += xv * xv;
                    yy += yv * yv;
                    yt[n] = yv;
                    let u = ut[n] + xv - yv;
                    ut[n] = u;
                    uu += u * u;
                }
            }
        }
        let nnz = s.job_nodes.iter().map(Vec::len).sum::<usize>().max(1) as f64;
        // Only allowed pairs have a non-zero dual.
        let unorm = uu.sqrt();
        let primal = r2.sqrt();
        let dual = s.rho * dy2.sqrt();
        let eps_pri = nnz.sqrt() * cfg.eps_abs + cfg.eps_rel * xx.sqrt().max(yy.sqrt());
        let eps_dual = nnz.sqrt() * cfg.eps_abs + cfg.eps_rel * s.rho * unorm;
        s.primal = primal;
        s.dual = dual;
        let stop = s.k >= 1 && primal <= eps_pri && dual <= eps_dual;
        if stop || s.k >= cfg.max_iters {
            s.converged = stop;
            tracing::debug!(
                node = id,
                round = r.round,
                iterations = s.k,
                converged = stop,
                primal,
                dual,
                rho = s.rho,
                "placement stopped"
            );
            r.phase = Phase::Candidates;
            // Y^k as [node][job]: the rounding's and the outcome's input.
            s.y = (0..nn)
                .map(|n| (0..nj).map(|j| s.yt[j * nn + n]).collect())
                .collect();
            // This member's share of the rounding (none for most members).
            let mut best: Option<(f64, Vec<usize>)> = None;
            let mut failed = None;
            for task in (0..integer::TASKS).filter(|t| t % nn == s.me) {
                match integer::round_task(
                    &s.problem,
                    &s.y,
                    &s.mu,
                    task,
                    cfg.polish_passes,
                    cfg.price_steps,
                ) {
                    Ok(a) => {
                        let o = s.problem.objective(&a).unwrap_or(f64::INFINITY);
                        if best.as_ref().is_none_or(|b| o < b.0) {
                            best = Some((o, a));
                        }
                    }
                    Err(e) => {
                        failed.get_or_insert(match e {
                            PlacementError::NoIntegerPlacement { job } => job,
                            _ => 0,
                        });
                    }
                }
            }
            let cand = match (best, failed) {
                (Some((_, a)), _) => Some(Candidate::Placement(
                    a.into_iter().map(|n| n as u32).collect(),
                )),
                (None, Some(job)) => Some(Candidate::Failed(job)),
                (None, None) => None,
            };
            if let Some(c) = cand {
                r.candidates.insert(id, (s.k, c.clone()));
                let msg = Msg {
                    round: r.round,
                    view: r.view,
                    iter: s.k,
                    from: id,
                    body: Body::Candidate(c),
                    probe: false,
                };
                self.send(msg);
            }
            // The decision follows in `try_assemble` once every holder's candidate is in.
            return;
        }
        if cfg.adaptive_rho && s.k >= 1 && eps_pri > 0.0 && eps_dual > 0.0 {
            let (rp, rd) = (primal / eps_pri, dual / eps_dual);
            let old = s.rho;
            if rp > cfg.rho_mu * rd || rd > cfg.rho_mu * rp {
                let f = if rd > 0.0 {
                    (rp / rd).sqrt()
                } else {
                    cfg.rho_tau
                };
                s.rho *= f.clamp(1.0 / cfg.rho_tau, cfg.rho_tau);
            }
            if s.rho != old {
                let f = old / s.rho;
                s.ut.iter_mut().for_each(|u| *u *= f);
            }
        }
        // Local step: x_me ← Π_{X_me}(y_me − u_me − ĉ_me/ρ).
        let me = s.me;
        for (t, &j) in s.allowed.iter().enumerate() {
            s.w[t] = s.yt[j * nn + me] - s.ut[j * nn + me] - s.cost[t] / s.rho;
        }
        let p = &s.problem;
        let penalty = if p.slope[me] > 0.0 {
            Some((p.knee[me], p.slope[me] / s.scale / s.rho))
        } else {
            None
        };
        let t = s
            .projector
            .project(&s.w, &s.demand, p.capacity[me], penalty, &mut s.out);
        let mut next = vec![0.0; nj];
        for (q, &j) in s.allowed.iter().enumerate() {
            next[j] = quantise(s.out[q]);
        }
        // The price as every peer will read it (wire precision).
        let mu_wire = (t * s.rho * s.scale).clamp(0.0, crate::msg::MAX_VALUE as f64) as f32;
        let body = Body::Column(Column::from_dense(&next), mu_wire);
        let msg = Msg {
            round: r.round,
            view: r.view,
            iter: s.k + 1,
            from: id,
            body,
            probe: false,
        };
        r.pending
            .entry(s.k + 1)
            .or_default()
            .insert(id, (next.clone(), sane(mu_wire)));
        s.next = Some((next, sane(mu_wire)));
        self.send(msg);
    }
}

/// Keeps a start or column of an author member index `me` forwards (ring offset below
/// the schedule's window, its own included) for its bundles; true if it was new and its
/// iteration still has steps to send.
fn relay_store(r: &mut Round, me: usize, msg: &Msg) -> bool {
    if r.sched.is_flat() || r.relay_done.is_some_and(|d| msg.iter <= d) {
        return false;
    }
    let forwarded = r
        .members
        .binary_search(&msg.from)
        .is_ok_and(|a| r.sched.offset(me, a) < r.sched.window());
    if !forwarded {
        return false;
    }
    // Starts are iteration 0; a column is at most one ahead of this node (the same
    // window `handle_inner` accepts), so the store stays within two windows of messages.
    let entry = r.relay.entry(msg.iter).or_default();
    if entry.contains_key(&msg.from) {
        return false;
    }
    entry.insert(msg.from, msg.clone());
    true
}

/// Members (the first of the sorted member list) that run a rounding task: member `m`
/// runs the tasks `t` with `t mod members = m`.
fn task_holders(members: usize) -> usize {
    members.min(integer::TASKS)
}

/// Zero the entries of columns (from the network) on pairs locality forbids.
fn sanitise_columns(p: &Problem, x: &mut [Vec<f64>]) {
    for (n, col) in x.iter_mut().enumerate() {
        for (j, v) in col.iter_mut().enumerate() {
            if !p.allowed(n, j) {
                *v = 0.0;
            }
        }
    }
}

/// Euclidean projection of `v` onto the simplex `{v ≥ 0, Σ v = 1}`; `s` is scratch
/// space. Michelot's algorithm: the threshold `θ = (Σ_A v − 1) / |A|` over the active set
/// `A`, then drop from `A` what is not above `θ`, until nothing drops (θ only grows, and
/// the largest entry never drops since `θ ≤ max − 1/|A|`). Exact like the sort-based
/// method, without the sort: a row has a few entries above θ, so two or three linear
/// passes (the row step did a sort per job and iteration on every node: a quarter of
/// the core's time on 32×256).
fn project_simplex(v: &mut [f64], s: &mut Vec<f64>) {
    if v.is_empty() {
        return;
    }
    s.clear();
    s.extend_from_slice(v);
    let mut theta = (s.iter().sum::<f64>() - 1.0) / s.len() as f64;
    loop {
        let before = s.len();
        s.retain(|&x| x > theta);
        // Empty only if `v` held a NaN: keep the last threshold.
        if s.len() == before || s.is_empty() {
            break;
        }
        theta = (s.iter().sum::<f64>() - 1.0) / s.len() as f64;
    }
    v.iter_mut().for_each(|x| *x = (*x - theta).max(0.0));
}

fn view_digest(round: u64, epoch: u32, members: &[NodeId], jobs: &[Job], cfg: u64) -> u32 {
    let mut h = Fnv::new();
    h.u64(round);
    h.u64(epoch as u64);
    h.u64(cfg);
    h.u64(members.len() as u64);
    for &m in members {
        h.u64(m as u64);
    }
    for j in jobs {
        h.u64(j.id);
        h.f64(j.demand);
        h.f64(j.work);
        h.u64(j.state_bytes);
        h.u64(j.current.map_or(u64::MAX, |c| c as u64));
        match &j.allowed {
            None => h.u64(u64::MAX),
            Some(a) => {
                h.u64(a.len() as u64);
                for &n in a {
                    h.u64(n as u64);
                }
            }
        }
    }
    let d = h.finish();
    (d ^ (d >> 32)) as u32
}

/// Assemble the problem from every member's start and set up the ADMM state.
fn build_solver(r: &Round, me_id: NodeId, cfg: &Config) -> Result<Solver, PlacementError> {
    let nj = r.jobs.len();
    let nn = r.members.len();
    let mut p = Problem {
        jobs: r.jobs.clone(),
        nodes: r.members.clone(),
        capacity: Vec::with_capacity(nn),
        knee: Vec::with_capacity(nn),
        slope: Vec::with_capacity(nn),
        margin: r.jobs.iter().map(|j| cfg.hysteresis.margin(j)).collect(),
        cost: vec![f64::INFINITY; nn * nj],
    };
    let mut x = Vec::with_capacity(nn);
    for (n, id) in r.members.iter().enumerate() {
        let st = r.starts.get(id).ok_or(PlacementError::BadSpec {
            node: *id,
            reason: "missing",
        })?;
        p.capacity.push(st.spec.capacity());
        p.knee.push(st.spec.knee_abs());
        p.slope.push(st.spec.slope());
        for (j, c) in st
            .spec
            .costs(nj)
            .map_err(|reason| PlacementError::BadSpec { node: *id, reason })?
        {
            // Locality is job data: a spec offering a job that forbids the node is ignored
            // there.
            if r.jobs[j].allows(*id) {
                p.cost[n * nj + j] = c;
            }
        }
        let col = st.column.to_dense(nj).ok_or(PlacementError::BadSpec {
            node: *id,
            reason: "column",
        })?;
        x.push(col);
    }
    p.validate()?;
    sanitise_columns(&p, &mut x);
    let me = p
        .node_index(me_id)
        .ok_or(PlacementError::NotAMember(me_id))?;
    let scale = p.cost_scale();
    // Warm start: ρ of the lowest-id member that has one; every member's own price.
    let rho = r
        .members
        .iter()
        .filter_map(|m| r.starts.get(m))
        .map(|s| sane(s.rho))
        .find(|&v| v > 0.0)
        .map_or(cfg.rho0, |v| v.clamp(1e-6, 1e6));
    let mu: Vec<f64> = r
        .members
        .iter()
        .map(|m| r.starts.get(m).map_or(0.0, |s| sane(s.mu)))
        .collect();
    let job_nodes: Vec<Vec<usize>> = (0..nj)
        .map(|j| (0..nn).filter(|&n| p.allowed(n, j)).collect())
        .collect();
    // U^{-1} = −(ĉ + μ̂ d)/ρ: the reduced cost of every pair, so the first row projection
    // already leans to the cheap nodes.
    let yt = vec![0.0; nj * nn];
    let mut ut = vec![0.0; nj * nn];
    for (j, row) in ut.chunks_exact_mut(nn.max(1)).enumerate() {
        for (n, v) in row.iter_mut().enumerate() {
            if p.allowed(n, j) {
                *v = -(p.c(n, j) + mu[n] * p.jobs[j].demand) / scale / rho;
            }
        }
    }
    let allowed: Vec<usize> = (0..nj).filter(|&j| p.allowed(me, j)).collect();
    let demand = allowed.iter().map(|&j| p.jobs[j].demand).collect();
    let cost = allowed.iter().map(|&j| p.c(me, j) / scale).collect();
    let na = allowed.len();
    Ok(Solver {
        problem: p,
        me,
        scale,
        rho,
        k: 0,
        x,
        yt,
        ut,
        xt: vec![0.0; nj * nn],
        y: Vec::new(),
        mu,
        job_nodes,
        next: None,
        allowed,
        demand,
        cost,
        w: vec![0.0; na],
        out: vec![0.0; na],
        row: Vec::with_capacity(nn),
        sorted: Vec::with_capacity(nn),
        projector: Projector::default(),
        primal: f64::INFINITY,
        dual: f64::INFINITY,
        converged: false,
    })
}

#[cfg(test)]
mod tests {
    use super::project_simplex;

    /// The sort-based projection (what the row step used before).
    fn by_sort(v: &[f64]) -> Vec<f64> {
        let mut s = v.to_vec();
        s.sort_unstable_by(|a, b| b.total_cmp(a));
        let (mut cum, mut theta) = (0.0, 0.0);
        for (i, &x) in s.iter().enumerate() {
            cum += x;
            let t = (cum - 1.0) / (i + 1) as f64;
            if x - t > 0.0 {
                theta = t;
            }
        }
        v.iter().map(|x| (x - theta).max(0.0)).collect()
    }

    #[test]
    fn simplex_projection_matches_the_sort_based_one() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut scratch = Vec::new();
        for case in 0..2000 {
            let n = 1 + case % 40;
            // Rows like the row step's: columns in [0, 1] plus duals of either sign,
            // sometimes far off the simplex.
            let spread = [0.1, 1.0, 10.0][case % 3];
            let v: Vec<f64> = (0..n).map(|_| next() + spread * (next() - 0.5)).collect();
            let mut got = v.clone();
            project_simplex(&mut got, &mut scratch);
            let want = by_sort(&v);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-12, "case {case}: {got:?} vs {want:?}");
            }
            assert!(got.iter().all(|&x| x >= 0.0));
            assert!((got.iter().sum::<f64>() - 1.0).abs() < 1e-9, "case {case}");
        }
        // Ties and a single entry.
        let mut v = vec![0.5, 0.5, 0.5, 0.5];
        project_simplex(&mut v, &mut scratch);
        assert_eq!(v, vec![0.25; 4]);
        let mut v = vec![-3.0];
        project_simplex(&mut v, &mut scratch);
        assert_eq!(v, vec![1.0]);
    }
}
