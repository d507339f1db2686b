//! The whole swarm in one thread: every [`Node`] fed through a simulated bus that drops,
//! duplicates and delays messages from a seed, plus scheduled crashes and membership
//! changes. Used by the tests and the benchmark; deterministic for a given seed.
//! Time is counted in steps (one step: deliver what is due, maybe tick), never read
//! from a clock.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::PlacementError;
use crate::model::{Job, Link, LoadPenalty, NodeEnv, NodeId};
use crate::msg::Msg;
use crate::node::{Config, Event, Node, Outcome, To, Transmit};

/// SplitMix64: small, seedable, good enough for simulations.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }
    /// Log-uniform in [lo, hi].
    pub fn log_range(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + (hi.ln() - lo.ln()) * self.f64()).exp()
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// How random instances look.
#[derive(Clone, Debug)]
pub struct InstanceOpts {
    /// Total demand ÷ total capacity.
    pub load_factor: f64,
    /// Share of jobs already running somewhere (the rest are new).
    pub placed_fraction: f64,
    /// Share of jobs restricted by locality, and the share of nodes each may use.
    pub restricted_fraction: f64,
    pub restricted_nodes: f64,
    /// Knee of the load term, and its slope relative to (mean work ÷ mean demand).
    pub knee: f64,
    pub slope_rel: f64,
}

impl Default for InstanceOpts {
    fn default() -> Self {
        InstanceOpts {
            load_factor: 0.7,
            placed_fraction: 0.7,
            restricted_fraction: 0.15,
            restricted_nodes: 0.25,
            knee: 0.8,
            slope_rel: 0.5,
        }
    }
}

/// Jobs and every node's environment.
#[derive(Clone, Debug)]
pub struct Instance {
    pub jobs: Vec<Job>,
    pub envs: BTreeMap<NodeId, NodeEnv>,
}

/// A random instance: heterogeneous speeds and capacities, log-uniform work and state
/// sizes, measured links, some locality, a feasible current placement for the jobs
/// already running.
pub fn random_instance(seed: u64, nodes: usize, jobs: usize, o: &InstanceOpts) -> Instance {
    let mut rng = Rng::new(seed);
    let ids: Vec<NodeId> = (0..nodes as u32).map(|i| 10 + 3 * i).collect();
    let caps: Vec<f64> = ids.iter().map(|_| rng.range(0.5, 1.0)).collect();
    let speeds: Vec<f64> = ids.iter().map(|_| rng.range(0.5, 2.0)).collect();
    let total_cap: f64 = caps.iter().sum();
    let min_cap = caps.iter().copied().fold(f64::INFINITY, f64::min);
    let raw: Vec<f64> = (0..jobs).map(|_| rng.range(0.2, 1.0)).collect();
    let raw_sum: f64 = raw.iter().sum::<f64>().max(1e-9);
    let mut job_list = Vec::with_capacity(jobs);
    let mut load = vec![0.0; nodes];
    for (j, &r) in raw.iter().enumerate() {
        // Few jobs: no job above half the smallest node.
        let demand = (r / raw_sum * o.load_factor * total_cap).min(0.5 * min_cap * r);
        let allowed = if rng.f64() < o.restricted_fraction && nodes > 1 {
            let k = ((nodes as f64 * o.restricted_nodes).ceil() as usize).clamp(1, nodes);
            let mut set = BTreeSet::new();
            while set.len() < k {
                set.insert(ids[rng.below(nodes as u64) as usize]);
            }
            Some(set.into_iter().collect::<Vec<_>>())
        } else {
            None
        };
        let mut current = None;
        if rng.f64() < o.placed_fraction {
            let start = rng.below(nodes as u64) as usize;
            for t in 0..nodes {
                let n = (start + t) % nodes;
                let ok = allowed
                    .as_ref()
                    .is_none_or(|a: &Vec<NodeId>| a.contains(&ids[n]));
                if ok && load[n] + demand <= caps[n] * 0.95 {
                    load[n] += demand;
                    current = Some(ids[n]);
                    break;
                }
            }
        }
        job_list.push(Job {
            id: 1000 + j as u64 * 7,
            demand,
            work: rng.log_range(10.0, 600.0),
            state_bytes: rng.log_range(1e6, 5e8) as u64,
            current,
            allowed,
        });
    }
    let mean_work = job_list.iter().map(|j| j.work).sum::<f64>() / jobs.max(1) as f64;
    let mean_demand = job_list.iter().map(|j| j.demand).sum::<f64>() / jobs.max(1) as f64;
    let slope = o.slope_rel * mean_work / mean_demand.max(1e-12);
    let mut envs = BTreeMap::new();
    for (n, &id) in ids.iter().enumerate() {
        let links = ids
            .iter()
            .filter(|&&p| p != id)
            .map(|&p| {
                (
                    p,
                    Link {
                        bandwidth: rng.range(20e6, 125e6),
                        rtt: rng.range(0.5e-3, 20e-3),
                    },
                )
            })
            .collect();
        envs.insert(
            id,
            NodeEnv {
                capacity: caps[n],
                speed: speeds[n],
                load: LoadPenalty {
                    knee: o.knee,
                    slope,
                },
                links,
                fallback_link: Link {
                    bandwidth: 50e6,
                    rtt: 5e-3,
                },
            },
        );
    }
    Instance {
        jobs: job_list,
        envs,
    }
}

/// Encodes messages for the bus (e.g. CBOR), so tests measure real sizes and exercise
/// the decoder on every delivery.
pub trait Codec {
    fn encode(&self, msg: &Msg) -> Vec<u8>;
    fn decode(&self, bytes: &[u8]) -> Option<Msg>;
}

/// Bus behaviour.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Probability that one delivery (sender → receiver) is lost.
    pub drop: f64,
    /// Probability that one delivery happens twice.
    pub duplicate: f64,
    /// Extra delay, uniform in 0..=max_delay steps (1 step minimum).
    pub max_delay: u32,
    /// Every node is ticked every `tick_every` steps.
    pub tick_every: u32,
    pub max_steps: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            drop: 0.0,
            duplicate: 0.0,
            max_delay: 0,
            tick_every: 4,
            max_steps: 200_000,
        }
    }
}

/// Something that happens at a step.
#[derive(Clone, Debug)]
pub enum Action {
    /// The node stops silently (its messages in flight may still arrive).
    Crash(NodeId),
    /// Tell `at` the membership of the next view.
    SetMembers {
        at: NodeId,
        epoch: u32,
        members: Vec<NodeId>,
    },
    /// A new node starts in the given view.
    Join {
        id: NodeId,
        env: NodeEnv,
        epoch: u32,
        members: Vec<NodeId>,
    },
}

/// Bus counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimStats {
    /// Messages published (first sends) and their encoded bytes.
    pub messages: u64,
    pub bytes: u64,
    /// Re-sends after a tick.
    pub resent: u64,
    pub resent_bytes: u64,
    /// Row bundles forwarded by relays (see [`crate::relay`]) and their encoded bytes.
    pub relayed: u64,
    pub relayed_bytes: u64,
    /// Deliveries attempted (one per recipient of every send: the frames of a real
    /// mesh), and their encoded bytes.
    pub frames: u64,
    pub frame_bytes: u64,
    pub deliveries: u64,
    pub dropped: u64,
    pub duplicated: u64,
    /// Bytes published per node.
    pub bytes_by_node: BTreeMap<NodeId, u64>,
}

enum Payload {
    Msg(Msg),
    Bytes(Vec<u8>),
}

pub struct Swarm {
    pub nodes: BTreeMap<NodeId, Node>,
    pub jobs: Vec<Job>,
    envs: BTreeMap<NodeId, NodeEnv>,
    cfg: Config,
    sim: SimConfig,
    crashed: BTreeSet<NodeId>,
    queue: BTreeMap<(u64, u64), (NodeId, Payload)>,
    actions: BTreeMap<(u64, u64), Action>,
    rng: Rng,
    now: u64,
    seq: u64,
    round: u64,
    epoch: u32,
    codec: Option<Box<dyn Codec>>,
    pub stats: SimStats,
    /// Events per node, in order.
    pub events: BTreeMap<NodeId, Vec<Event>>,
}

/// What a run ended with.
#[derive(Clone, Debug)]
pub struct SimReport {
    pub steps: u64,
    /// Every live node finished the round.
    pub finished: bool,
    /// The last event of every live node.
    pub last_events: BTreeMap<NodeId, Option<Event>>,
}

impl SimReport {
    /// The placement, if every live node placed and all agree.
    pub fn agreed(&self) -> Option<&Outcome> {
        let mut out: Option<&Outcome> = None;
        for e in self.last_events.values() {
            match e {
                Some(Event::Placed(o)) => {
                    if out.is_some_and(|p| p.digest != o.digest || p.placement != o.placement) {
                        return None;
                    }
                    out = Some(o);
                }
                _ => return None,
            }
        }
        out
    }
    /// The error every live node failed with, if they all failed the same way.
    pub fn failed(&self) -> Option<&PlacementError> {
        let mut out = None;
        for e in self.last_events.values() {
            match e {
                Some(Event::Failed { error, .. }) => {
                    if out.is_some_and(|p| p != error) {
                        return None;
                    }
                    out = Some(error);
                }
                _ => return None,
            }
        }
        out
    }
}

impl Swarm {
    pub fn new(inst: &Instance, cfg: Config, sim: SimConfig) -> Swarm {
        let nodes = inst
            .envs
            .keys()
            .map(|&id| (id, Node::new(id, cfg.clone())))
            .collect();
        Swarm {
            nodes,
            jobs: inst.jobs.clone(),
            envs: inst.envs.clone(),
            cfg,
            rng: Rng::new(sim.seed),
            sim,
            crashed: BTreeSet::new(),
            queue: BTreeMap::new(),
            actions: BTreeMap::new(),
            now: 0,
            seq: 0,
            round: 0,
            epoch: 0,
            codec: None,
            stats: SimStats::default(),
            events: BTreeMap::new(),
        }
    }

    pub fn with_codec(mut self, codec: Box<dyn Codec>) -> Swarm {
        self.codec = Some(codec);
        self
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn live(&self) -> Vec<NodeId> {
        self.nodes
            .keys()
            .copied()
            .filter(|id| !self.crashed.contains(id))
            .collect()
    }

    /// Start round `round` on every live node (epoch 0 of the round: all live nodes).
    pub fn start_round(&mut self, round: u64) -> Result<(), PlacementError> {
        self.round = round;
        self.epoch = 0;
        let members = self.live();
        for id in members.clone() {
            let env = self.envs[&id].clone();
            if let Some(node) = self.nodes.get_mut(&id) {
                node.start_round(round, 0, members.clone(), self.jobs.clone(), env)?;
            }
            self.flush(id, false);
        }
        Ok(())
    }

    /// Adopt an outcome: every job now runs where it was placed (for the next round).
    pub fn apply(&mut self, outcome: &Outcome) {
        let map: BTreeMap<_, _> = outcome.placement.iter().copied().collect();
        for j in &mut self.jobs {
            if let Some(&n) = map.get(&j.id) {
                j.current = Some(n);
            }
        }
    }

    pub fn schedule(&mut self, at: u64, action: Action) {
        self.seq += 1;
        self.actions.insert((at, self.seq), action);
    }

    /// `id` crashes at step `at`; each survivor learns it within `spread` steps after.
    pub fn schedule_leave(&mut self, at: u64, id: NodeId, spread: u64) {
        self.epoch += 1;
        let members: Vec<NodeId> = self.live().into_iter().filter(|&m| m != id).collect();
        self.schedule(at, Action::Crash(id));
        for &m in &members {
            let t = at + self.rng.below(spread + 1);
            self.schedule(
                t,
                Action::SetMembers {
                    at: m,
                    epoch: self.epoch,
                    members: members.clone(),
                },
            );
        }
    }

    /// A new node `id` joins at step `at`; each member learns it within `spread` steps.
    pub fn schedule_join(&mut self, at: u64, id: NodeId, env: NodeEnv, spread: u64) {
        self.epoch += 1;
        let mut members = self.live();
        members.push(id);
        members.sort_unstable();
        self.envs.insert(id, env.clone());
        self.schedule(
            at,
            Action::Join {
                id,
                env,
                epoch: self.epoch,
                members: members.clone(),
            },
        );
        for &m in &members {
            if m != id {
                let t = at + self.rng.below(spread + 1);
                self.schedule(
                    t,
                    Action::SetMembers {
                        at: m,
                        epoch: self.epoch,
                        members: members.clone(),
                    },
                );
            }
        }
    }

    fn flush(&mut self, id: NodeId, resends: bool) {
        loop {
            let Some(node) = self.nodes.get_mut(&id) else {
                return;
            };
            if let Some(ev) = node.poll_event() {
                self.events.entry(id).or_default().push(ev);
                continue;
            }
            let Some(t) = node.poll_transmit() else {
                return;
            };
            self.publish(id, t, resends);
        }
    }

    fn publish(&mut self, from: NodeId, t: Transmit, resend: bool) {
        let Transmit { msg, to } = t;
        let bytes = self.codec.as_ref().map(|c| c.encode(&msg));
        let size = bytes.as_ref().map_or(0, |b| b.len() as u64);
        if matches!(msg.body, crate::msg::Body::Relay(_)) {
            self.stats.relayed += 1;
            self.stats.relayed_bytes += size;
        } else if resend {
            self.stats.resent += 1;
            self.stats.resent_bytes += size;
        } else {
            self.stats.messages += 1;
            self.stats.bytes += size;
            *self.stats.bytes_by_node.entry(from).or_default() += size;
        }
        let targets: Vec<NodeId> = match to {
            To::All => self.nodes.keys().copied().filter(|&t| t != from).collect(),
            To::Only(v) => v.into_iter().filter(|&t| t != from).collect(),
        };
        self.stats.frames += targets.len() as u64;
        self.stats.frame_bytes += size * targets.len() as u64;
        for to in targets {
            if self.rng.f64() < self.sim.drop {
                self.stats.dropped += 1;
                continue;
            }
            let copies = if self.rng.f64() < self.sim.duplicate {
                2
            } else {
                1
            };
            if copies == 2 {
                self.stats.duplicated += 1;
            }
            for _ in 0..copies {
                let delay = 1 + self.rng.below(self.sim.max_delay as u64 + 1);
                self.seq += 1;
                let payload = match &bytes {
                    Some(b) => Payload::Bytes(b.clone()),
                    None => Payload::Msg(msg.clone()),
                };
                self.queue
                    .insert((self.now + delay, self.seq), (to, payload));
            }
        }
    }

    /// One step: scheduled actions, deliveries due, periodic ticks.
    pub fn step(&mut self) -> Result<(), PlacementError> {
        self.now += 1;
        while let Some(entry) = self.actions.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let action = entry.remove();
            match action {
                Action::Crash(id) => {
                    self.crashed.insert(id);
                }
                Action::SetMembers { at, epoch, members } => {
                    if !self.crashed.contains(&at) {
                        if let Some(n) = self.nodes.get_mut(&at) {
                            n.set_members(epoch, members)?;
                        }
                        self.flush(at, false);
                    }
                }
                Action::Join {
                    id,
                    env,
                    epoch,
                    members,
                } => {
                    let mut node = Node::new(id, self.cfg.clone());
                    node.start_round(self.round, epoch, members, self.jobs.clone(), env)?;
                    self.nodes.insert(id, node);
                    self.flush(id, false);
                }
            }
        }
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (to, payload) = entry.remove();
            if self.crashed.contains(&to) {
                continue;
            }
            let msg = match payload {
                Payload::Msg(m) => Some(m),
                Payload::Bytes(b) => self.codec.as_ref().and_then(|c| c.decode(&b)),
            };
            let Some(msg) = msg else { continue };
            self.stats.deliveries += 1;
            if let Some(n) = self.nodes.get_mut(&to) {
                n.handle(msg);
            }
            self.flush(to, false);
        }
        if self.sim.tick_every > 0 && self.now.is_multiple_of(self.sim.tick_every as u64) {
            for id in self.live() {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.tick();
                }
                self.flush(id, true);
            }
        }
        Ok(())
    }

    /// Step until every live node finished the round (or `max_steps`).
    pub fn run(&mut self) -> Result<SimReport, PlacementError> {
        let start = self.now;
        let mut finished = false;
        while self.now - start < self.sim.max_steps {
            let live = self.live();
            if self.actions.is_empty() && live.iter().all(|id| self.nodes[id].is_finished()) {
                finished = true;
                break;
            }
            self.step()?;
        }
        let last_events = self
            .live()
            .into_iter()
            .map(|id| (id, self.events.get(&id).and_then(|v| v.last().cloned())))
            .collect();
        Ok(SimReport {
            steps: self.now - start,
            finished,
            last_events,
        })
    }
}
