//! `roam chaos`: a scripted chaos run (`configs/chaos/NAME.toml`, see
//! [`recovery::scenario`]) against a swarm — at level 1 nodes in this process on
//! 127.0.0.1, at level 2 a `roam node` process per node on 127.0.0.1 ([`procs`]), at
//! level 3 each in a network namespace ([`netns`]) — checked afterwards by
//! [`recovery::invariants`].
//!
//! Killing nodes proves nothing unless something watches what happened to the jobs,
//! so the run is two halves:
//!
//! - **pure parts**, tested without a network: which node may be the *home* (the node
//!   the jobs are submitted to, whose log book collects their output: [`choose_home`]),
//!   who may talk to whom while partitions and pauses are in force ([`Cut`]), turning
//!   what the harness observes into [`Fact`]s ([`Observer`]), recovery times
//!   ([`recovery_times`]), and the SVG [`Timeline`] ([`draw`]);
//! - **the shell** ([`run`]): starts `n1`..`nN` (and a gateway, see [`Home`]), submits
//!   the jobs from the home, plays the timeline, and every [`ChaosOptions::observe_every`]
//!   asks every live node which jobs it holds at which generation and follows each
//!   job's output at the home by offset, as `roam logs --follow` does. One driver
//!   does this for every level; what differs — starting the swarm, injecting each
//!   fault, asking a node — is behind the [`Level`] trait.
//!
//! Level 1 ([`InProcess`]) injects faults where one process can: a **kill** is
//! [`NodeHandle::shutdown`] (its jobs and its mesh stop; the others see it die), a
//! **restart** starts a fresh node with the same name, config and identity on the
//! killed node's store (kept, as an on-disk store survives a real restart: its
//! checkpoints and the records of the replicas it held), a **partition** makes the nodes on either
//! side of the cut block each other in the mesh ([`mesh::MeshHandle::set_blocked`]),
//! and a **pause** blocks the node from every peer and every peer from it — unlike
//! SIGSTOP its jobs keep computing, they just cannot be heard. Delay, loss and rate
//! need network namespaces and are skipped with a line saying so.
//!
//! Level 2 ([`procs::Processes`]) does it to processes: SIGKILL, the same process
//! started again on its on-disk store, SIGSTOP/SIGCONT, and partitions through each
//! node's `POST /chaos/block`; it refuses delay, loss and rate ([`check_level`]).
//! Level 3 is level 2 with every node in a network namespace ([`netns`]): partitions
//! cut links, and links are shaped with tc.
//!
//! The home's log book is not replicated: a home that dies or is cut into a minority
//! loses output, whatever recovery does. So the home must be a node the timeline never
//! disrupts; when every node is disrupted (`bench.toml`), an extra job-less gateway
//! node `gw` is the home (drained from the start, never disrupted, always on the
//! majority side of a partition).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mesh::PeerId;
use recovery::invariants::output_hash;
use recovery::{check, Event, Fact, NodeId, Report, Scenario};
use serde_json::json;
use wasm_host::{Host, HostConfig};

use crate::demo::{straight_run_of, timed_moves, TimedMove};
use crate::node::api::RunRequest;
use crate::node::proto::{JobSummary, LogSlice, StreamKind};
use crate::node::recovery::RecoveryFacts;
use crate::node::{self, scheduler, NodeHandle};
use crate::timeline::{Timeline, What};

pub mod netns;
pub mod procs;
pub mod wire;

/// The name of the extra, job-less home node (see [`Home::Gateway`]).
pub const GATEWAY: &str = "gw";
/// How long the jobs may take to be running before the timeline starts.
const START_WAIT: Duration = Duration::from_secs(30);
/// Most bytes of output one read asks for.
const READ_MAX: u32 = 256 << 10;

/// Which node should be the home (`--home`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HomeChoice {
    /// `n1` if the timeline never disrupts it, else the first node it never
    /// disrupts, else the gateway.
    Auto,
    /// The extra gateway node.
    Gateway,
    /// This node; refused if the timeline disrupts it.
    Node(String),
}

impl FromStr for HomeChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(HomeChoice::Auto),
            "gateway" | GATEWAY => Ok(HomeChoice::Gateway),
            n if n.len() > 1
                && n.starts_with('n')
                && n[1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                Ok(HomeChoice::Node(n.to_string()))
            }
            other => Err(format!(
                "{other:?}: expected auto, gateway or a node name (n1, n2, ...)"
            )),
        }
    }
}

/// The node jobs are submitted to and whose log book collects their output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Home {
    /// One of the scenario's nodes, which the timeline never disrupts.
    Node(String),
    /// An extra node [`GATEWAY`] that runs no jobs (it is drained from the start),
    /// is never killed or paused, and sits on the majority side of every partition.
    Gateway,
}

impl Home {
    pub fn name(&self) -> &str {
        match self {
            Home::Node(n) => n,
            Home::Gateway => GATEWAY,
        }
    }
}

/// For each node the timeline disrupts, the first disruption: killed, paused, or
/// cut into a group without a strict majority of the scenario's nodes.
pub fn disruptions(sc: &Scenario) -> BTreeMap<String, String> {
    let n = sc.nodes as usize;
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for te in sc.timeline() {
        let hit: Vec<(&NodeId, &str)> = match &te.event {
            Event::Kill { node } => vec![(node, "killed")],
            Event::Pause { node } => vec![(node, "paused")],
            Event::Partition { groups } => groups
                .iter()
                .filter(|g| g.len() * 2 <= n)
                .flatten()
                .map(|node| (node, "cut into a minority"))
                .collect(),
            _ => vec![],
        };
        for (node, how) in hit {
            out.entry(node.to_string())
                .or_insert_with(|| format!("{how} at {} ms ({})", te.at_ms, te.event));
        }
    }
    out
}

/// Picks the home for `sc` (see [`HomeChoice`]), or says why none fits.
pub fn choose_home(sc: &Scenario, choice: &HomeChoice) -> anyhow::Result<Home> {
    let hurt = disruptions(sc);
    let names: Vec<String> = sc.node_names().iter().map(|n| n.to_string()).collect();
    let safe: Vec<&String> = names.iter().filter(|n| !hurt.contains_key(*n)).collect();
    let gateway = || -> anyhow::Result<Home> {
        for te in sc.timeline() {
            if let Event::Partition { groups } = &te.event {
                if !groups.iter().any(|g| g.len() * 2 > names.len()) {
                    anyhow::bail!(
                        "the gateway home needs a majority side in every partition, and \
                         `{}` at {} ms has none",
                        te.event,
                        te.at_ms
                    );
                }
            }
        }
        Ok(Home::Gateway)
    };
    match choice {
        HomeChoice::Auto => match safe.first() {
            Some(n) => Ok(Home::Node((*n).clone())),
            None => gateway(),
        },
        HomeChoice::Gateway => gateway(),
        HomeChoice::Node(n) => {
            if !names.contains(n) {
                anyhow::bail!("--home {n}: the scenario's nodes are n1..n{}", names.len());
            }
            if let Some(why) = hurt.get(n) {
                let others = if safe.is_empty() {
                    "no node is left alone by this timeline".to_string()
                } else {
                    let s: Vec<&str> = safe.iter().map(|s| s.as_str()).collect();
                    format!("nodes left alone: {}", s.join(", "))
                };
                anyhow::bail!(
                    "--home {n}: the timeline disrupts it ({why}). The home collects every \
                     job's output in its log book, which is not replicated, so it \
                     must never be killed, paused or cut into a minority ({others}; or use \
                     --home gateway, an extra job-less node)"
                );
            }
            Ok(Home::Node(n.clone()))
        }
    }
}

/// Who can talk to whom: the partition in force and the paused nodes.
#[derive(Clone, Debug, Default)]
pub struct Cut {
    /// Each node's group while a partition is in force.
    group: Option<BTreeMap<String, usize>>,
    paused: BTreeSet<String>,
}

impl Cut {
    /// Puts `groups` in force (replacing any partition). The gateway, if any, joins
    /// the group holding a strict majority of the `nodes` scenario nodes. Returns
    /// the nodes cut off from that majority (every group's, when there is none).
    pub fn partition(
        &mut self,
        groups: &[Vec<NodeId>],
        nodes: usize,
        gateway: bool,
    ) -> Vec<String> {
        let majority = groups.iter().position(|g| g.len() * 2 > nodes);
        let mut map = BTreeMap::new();
        for (i, g) in groups.iter().enumerate() {
            for n in g {
                map.insert(n.to_string(), i);
            }
        }
        if let (true, Some(m)) = (gateway, majority) {
            map.insert(GATEWAY.to_string(), m);
        }
        self.group = Some(map);
        groups
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != majority)
            .flat_map(|(_, g)| g.iter().map(|n| n.to_string()))
            .collect()
    }

    pub fn heal(&mut self) {
        self.group = None;
    }

    pub fn pause(&mut self, node: &str) {
        self.paused.insert(node.to_string());
    }

    pub fn resume(&mut self, node: &str) {
        self.paused.remove(node);
    }

    pub fn is_paused(&self, node: &str) -> bool {
        self.paused.contains(node)
    }

    /// Whether `a` and `b` must not hear each other now.
    pub fn separated(&self, a: &str, b: &str) -> bool {
        if a == b {
            return false;
        }
        if self.paused.contains(a) || self.paused.contains(b) {
            return true;
        }
        match &self.group {
            Some(g) => match (g.get(a), g.get(b)) {
                (Some(x), Some(y)) => x != y,
                // A node in no group (a gateway without a majority) hears nobody.
                _ => true,
            },
            None => false,
        }
    }
}

/// Turns what the harness observes into [`Fact`]s for [`check`]. Times are the
/// harness's milliseconds from the start of the timeline.
#[derive(Debug, Default)]
pub struct Observer {
    facts: Vec<Fact>,
    jobs: Vec<String>,
    /// (job, node) → the generation that node holds, and whether it runs (a
    /// paused copy, e.g. of a node without a majority, holds it but does not run).
    open: BTreeMap<(String, String), (u64, bool)>,
    /// The node and generation last seen holding each job.
    last: BTreeMap<String, (String, u64)>,
    /// When each job was last seen held anywhere (or submitted).
    last_held_ms: BTreeMap<String, u64>,
    /// The next output offset to read of each job.
    offsets: BTreeMap<String, u64>,
    finished: BTreeSet<String>,
}

impl Observer {
    /// `job` was submitted to run on `node`.
    pub fn submitted(&mut self, at_ms: u64, job: &str, node: &str) {
        if self.jobs.iter().any(|j| j == job) {
            return;
        }
        self.jobs.push(job.to_string());
        self.facts.push(Fact::Submitted {
            job: job.to_string(),
        });
        self.last.insert(job.to_string(), (node.to_string(), 0));
        self.last_held_ms.insert(job.to_string(), at_ms);
    }

    /// What an uninterrupted run of `job`'s guest printed.
    pub fn straight_run(&mut self, job: &str, stdout: &[u8]) {
        self.facts.push(Fact::StraightRun {
            job: job.to_string(),
            output_len: stdout.len() as u64,
            output_hash: output_hash(stdout),
        });
    }

    /// `node`'s scheduler listed `jobs` at `at_ms`. A running copy runs its
    /// generation there; a paused one holds it (it may run again) but does not run;
    /// a restored one, waiting for a handover's go, does neither yet. Jobs the
    /// harness did not submit are ignored.
    pub fn saw(&mut self, at_ms: u64, node: &str, jobs: &[JobSummary]) {
        let listed: BTreeMap<&str, (u64, bool)> = jobs
            .iter()
            .filter(|j| matches!(j.state.as_str(), "running" | "paused"))
            .filter(|j| self.jobs.contains(&j.job))
            .map(|j| (j.job.as_str(), (j.generation, j.state == "running")))
            .collect();
        let here = self.open_on(node);
        for (job, generation, running) in here {
            let now = listed.get(job.as_str()).copied();
            let same = now.is_some_and(|(g, _)| g == generation);
            if running && !now.is_some_and(|(g, r)| g == generation && r) {
                self.stop(at_ms, &job, node, generation);
            }
            if !same {
                self.open.remove(&(job, node.to_string()));
            }
        }
        for (job, (generation, running)) in listed {
            let key = (job.to_string(), node.to_string());
            let was_running = self.open.get(&key) == Some(&(generation, true));
            if running && !was_running {
                self.facts.push(Fact::Started {
                    job: job.to_string(),
                    node: NodeId::from(node),
                    generation,
                    at_ms,
                    // Which checkpoint a recovery resumed from comes from the node's
                    // recovery record (`replication_facts`: a Resumed fact).
                    from: None,
                });
            }
            self.open.insert(key, (generation, running));
            self.last
                .insert(job.to_string(), (node.to_string(), generation));
            self.last_held_ms.insert(job.to_string(), at_ms);
        }
    }

    /// The copies `node` was last seen with: (job, generation, running).
    fn open_on(&self, node: &str) -> Vec<(String, u64, bool)> {
        self.open
            .iter()
            .filter(|((_, n), _)| n == node)
            .map(|((job, _), (g, run))| (job.clone(), *g, *run))
            .collect()
    }

    fn stop(&mut self, at_ms: u64, job: &str, node: &str, generation: u64) {
        self.facts.push(Fact::Stopped {
            job: job.to_string(),
            node: NodeId::from(node),
            generation,
            at_ms,
        });
    }

    /// `node` was killed at `at_ms`: every copy it ran stops, every copy it held
    /// is gone.
    pub fn killed(&mut self, at_ms: u64, node: &str) {
        self.down(at_ms, node);
        let here = self.open_on(node);
        for (job, generation, running) in here {
            if running {
                self.stop(at_ms, &job, node, generation);
            }
            self.open.remove(&(job.clone(), node.to_string()));
            self.last_held_ms.insert(job, at_ms);
        }
    }

    /// `node` went down for the others at `at_ms` (killed, stopped, cut off): what it
    /// holds may be gone or out of reach.
    pub fn down(&mut self, at_ms: u64, node: &str) {
        self.facts.push(Fact::NodeDown {
            node: NodeId::from(node),
            at_ms,
        });
    }

    /// `node` is back (restarted, resumed, healed).
    pub fn up(&mut self, at_ms: u64, node: &str) {
        self.facts.push(Fact::NodeUp {
            node: NodeId::from(node),
            at_ms,
        });
    }

    /// `node` was stopped at `at_ms` (SIGSTOP): every copy it ran stops running but
    /// stays held there (it runs again if the node lists it running after a resume).
    pub fn paused(&mut self, at_ms: u64, node: &str) {
        for (job, generation, running) in self.open_on(node) {
            if running {
                self.stop(at_ms, &job, node, generation);
                self.open
                    .insert((job.clone(), node.to_string()), (generation, false));
                self.last_held_ms.insert(job, at_ms);
            }
        }
    }

    /// Where the next read of `job`'s output starts.
    pub fn offset(&self, job: &str) -> u64 {
        self.offsets.get(job).copied().unwrap_or(0)
    }

    /// The harness read `bytes` of `job`'s output at `offset`; `next` is where the
    /// home says the following read starts.
    pub fn output(&mut self, job: &str, offset: u64, bytes: Vec<u8>, next: u64) {
        let o = self.offsets.entry(job.to_string()).or_default();
        *o = (*o).max(next);
        if !bytes.is_empty() {
            self.facts.push(Fact::OutputRead {
                job: job.to_string(),
                offset,
                bytes,
            });
        }
    }

    /// The home reported `job` complete at `at_ms`, its output hashing to `hash`;
    /// it finished on the node last seen holding it.
    pub fn finished(&mut self, at_ms: u64, job: &str, hash: String) {
        if !self.finished.insert(job.to_string()) {
            return;
        }
        let (node, generation) = self.last.get(job).cloned().unwrap_or_default();
        self.facts.push(Fact::Finished {
            job: job.to_string(),
            node: NodeId::from(node),
            generation,
            at_ms,
            output_hash: hash,
        });
    }

    pub fn is_finished(&self, job: &str) -> bool {
        self.finished.contains(job)
    }

    pub fn jobs(&self) -> &[String] {
        &self.jobs
    }

    pub fn all_finished(&self) -> bool {
        self.jobs.iter().all(|j| self.finished.contains(j))
    }

    /// Jobs still in play at `at_ms`: not finished, and either held somewhere or
    /// seen held less than `lost_after_ms` ago (a recovery may bring them back).
    pub fn in_play(&self, at_ms: u64, lost_after_ms: u64) -> Vec<String> {
        self.jobs
            .iter()
            .filter(|j| !self.finished.contains(*j))
            .filter(|j| {
                self.open.keys().any(|(job, _)| job == *j)
                    || self
                        .last_held_ms
                        .get(*j)
                        .is_some_and(|t| at_ms.saturating_sub(*t) < lost_after_ms)
            })
            .cloned()
            .collect()
    }

    pub fn push(&mut self, fact: Fact) {
        self.facts.push(fact);
    }

    pub fn facts(&self) -> &[Fact] {
        &self.facts
    }

    pub fn into_facts(self) -> Vec<Fact> {
        self.facts
    }
}

/// For every job copy a kill stopped, how long until the job ran again elsewhere
/// with a newer generation (ms); copies never resumed elsewhere are left out.
/// `kills` are (time, node) of the kills, as the harness played them.
pub fn recovery_times(facts: &[Fact], kills: &[(u64, String)]) -> Vec<u64> {
    let mut out = Vec::new();
    for f in facts {
        let Fact::Stopped {
            job,
            node,
            generation,
            at_ms,
        } = f
        else {
            continue;
        };
        if !kills.iter().any(|(t, n)| t == at_ms && n == node.as_str()) {
            continue;
        }
        let back = facts
            .iter()
            .filter_map(|g| match g {
                Fact::Started {
                    job: j,
                    node: n,
                    generation: gen,
                    at_ms: t,
                    ..
                } if j == job && n != node && gen > generation && t >= at_ms => Some(*t),
                _ => None,
            })
            .min();
        if let Some(t) = back {
            out.push(t - at_ms);
        }
    }
    out
}

/// Copies of jobs that kills stopped.
pub fn killed_copies(facts: &[Fact], kills: &[(u64, String)]) -> usize {
    facts
        .iter()
        .filter(|f| {
            matches!(f, Fact::Stopped { node, at_ms, .. }
                if kills.iter().any(|(t, n)| t == at_ms && n == node.as_str()))
        })
        .count()
}

/// The `p`-th percentile (0..=100, nearest rank) of `v`.
pub fn percentile(v: &[u64], p: f64) -> Option<u64> {
    let mut s = v.to_vec();
    s.sort_unstable();
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s.get(rank.clamp(1, s.len().max(1)) - 1).copied()
}

/// A disruption to draw.
#[derive(Clone, Debug, PartialEq)]
pub enum Mark {
    Kill {
        at_ms: u64,
        node: String,
    },
    /// `nodes` were cut off (a partition's minority).
    Cut {
        at_ms: u64,
        end_ms: Option<u64>,
        nodes: Vec<String>,
    },
    /// `node` was paused (SIGSTOP, or cut off from every peer at level 1).
    Pause {
        at_ms: u64,
        end_ms: Option<u64>,
        node: String,
    },
    Restart {
        at_ms: u64,
        node: String,
    },
}

/// The run as a [`Timeline`]: a bar per job where it ran (from the observed starts
/// and stops), committed moves as arrows, recoveries as a job's bar starting on
/// another node, kills and cuts marked, exits at the end of a bar.
pub fn draw(
    title: &str,
    lanes: &[String],
    facts: &[Fact],
    marks: &[Mark],
    moves: &[TimedMove],
    end_ms: u64,
) -> Timeline {
    let lane_refs: Vec<&str> = lanes.iter().map(String::as_str).collect();
    let mut t = Timeline::new(title, &lane_refs);
    t.end_ms = Some(end_ms as f64);
    for m in moves {
        m.add_to(&mut t);
    }
    // A start a committed move explains is drawn by its arrow.
    let by_move = |job: &str, node: &str, generation: u64, at: u64| {
        moves.iter().any(|m| {
            let r = &m.report;
            r.outcome == "committed"
                && r.job == job
                && r.to == node
                && r.generation == generation
                && (m.end.as_millis() as i128 - at as i128).abs() < 5_000
        })
    };
    // A job moved away (e.g. off a draining node) before the harness saw it start
    // there started before that move did.
    let seen_late = |job: &str, node: &str, at: u64| {
        moves
            .iter()
            .filter(|m| m.report.outcome == "committed" && m.report.job == job)
            .filter(|m| m.report.from == node)
            .map(|m| m.at.as_millis() as u64)
            .filter(|t| *t <= at && at - t < 5_000)
            .min()
            .map_or(at, |t| t.saturating_sub(1))
    };
    for f in facts {
        match f {
            Fact::Started {
                job,
                node,
                generation,
                at_ms,
                ..
            } if !by_move(job, node.as_str(), *generation, *at_ms) => t.push(
                seen_late(job, node.as_str(), *at_ms) as f64,
                What::Start {
                    job: job.clone(),
                    node: node.to_string(),
                },
            ),
            Fact::Finished { job, at_ms, .. } => {
                t.push(*at_ms as f64, What::Exit { job: job.clone() })
            }
            _ => {}
        }
    }
    for m in marks {
        match m {
            Mark::Kill { at_ms, node } => t.push(
                *at_ms as f64,
                What::Kill {
                    node: node.clone(),
                    job: None,
                },
            ),
            Mark::Cut {
                at_ms,
                end_ms: end,
                nodes,
            } => t.push(
                *at_ms as f64,
                What::Partition {
                    nodes: nodes.clone(),
                    end_ms: end.unwrap_or(end_ms) as f64,
                },
            ),
            Mark::Pause {
                at_ms,
                end_ms: end,
                node,
            } => t.push(
                *at_ms as f64,
                What::Pause {
                    node: node.clone(),
                    end_ms: end.unwrap_or(end_ms) as f64,
                },
            ),
            Mark::Restart { at_ms, node } => {
                t.push(*at_ms as f64, What::Restart { node: node.clone() })
            }
        }
    }
    t
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    pub scenario: Scenario,
    /// Directory with the guests (`NAME.wasm`).
    pub guests: PathBuf,
    pub home: HomeChoice,
    /// Multiplies every event's time and the duration (not the jobs' lengths).
    pub time_scale: f64,
    /// How often every live node is asked what it runs.
    pub observe_every: Duration,
    /// A job no node has held for this long counts as lost (it may still come back
    /// while the timeline runs).
    pub lost_after: Duration,
    /// How long to wait for unfinished jobs after the timeline's duration.
    pub wait_after: Duration,
    /// Print each event as it is played.
    pub verbose: bool,
    /// 1: every node in this process, faults in the mesh; 2: every node a `roam
    /// node` process, faults by signals and the nodes' API ([`check_level`]).
    pub level: u8,
}

impl ChaosOptions {
    pub fn new(scenario: Scenario) -> ChaosOptions {
        ChaosOptions {
            scenario,
            guests: crate::demo::default_guests(),
            home: HomeChoice::Auto,
            time_scale: 1.0,
            observe_every: Duration::from_millis(30),
            lost_after: Duration::from_secs(10),
            wait_after: Duration::from_secs(120),
            verbose: true,
            level: 1,
        }
    }
}

/// What a chaos run saw.
#[derive(Debug)]
pub struct ChaosRun {
    pub scenario: String,
    pub seed: u64,
    /// 1: in-process nodes; 2: a process per node.
    pub level: u8,
    pub nodes: u64,
    pub home: String,
    pub facts: Vec<Fact>,
    pub report: Report,
    pub timeline: Timeline,
    pub kills: Vec<(u64, String)>,
    pub restarts: usize,
    pub pauses: usize,
    pub partitions: usize,
    /// Links shaped (delay, loss, rate; level 3).
    pub shaped: usize,
    /// Events the level skipped (delay, loss, rate at level 1).
    pub skipped: Vec<String>,
    /// Events not played because every job had finished.
    pub not_played: usize,
    /// Jobs still unfinished and held somewhere when the wait ran out.
    pub timed_out: Vec<String>,
    pub recovery_ms: Vec<u64>,
    pub elapsed: Duration,
}

impl ChaosRun {
    /// Every finished job's output is bit-identical to its straight run.
    pub fn finished_outputs_identical(&self) -> bool {
        self.facts.iter().all(|f| match f {
            Fact::Finished { job, .. } => {
                !self.report.output_mismatch.contains(job)
                    && !self.report.output_unverified.contains(job)
            }
            _ => true,
        })
    }

    /// The figures, as the JSON object the last line of `roam chaos` prints.
    pub fn summary(&self, timeline_path: Option<&Path>) -> serde_json::Value {
        let r = &self.report;
        json!({
            "scenario": self.scenario,
            "seed": self.seed,
            "level": self.level,
            "nodes": self.nodes,
            "home": self.home,
            "jobs": r.jobs,
            "finished": r.finished,
            "jobs_lost": r.jobs_lost.len(),
            "unfinished": r.unfinished.len(),
            "duplicate_generations": r.duplicate_generations.len(),
            "outputs_identical": self.finished_outputs_identical(),
            "output_mismatch": r.output_mismatch.len(),
            "duplicate_output_bytes": r.duplicate_output_bytes,
            "missing_output_bytes": r.missing_output_bytes,
            "lost_checkpoints": r.lost_checkpoints.len(),
            "recovery_ms_p50": percentile(&self.recovery_ms, 50.0),
            "recovery_ms_p90": percentile(&self.recovery_ms, 90.0),
            "recoveries": self.recovery_ms.len(),
            "killed_copies": killed_copies(&self.facts, &self.kills),
            "kills": self.kills.len(),
            "restarts": self.restarts,
            "pauses": self.pauses,
            "partitions": self.partitions,
            "shaped": self.shaped,
            "skipped": self.skipped.len(),
            "not_played": self.not_played,
            "ok": r.ok(),
            "elapsed_s": (self.elapsed.as_secs_f64() * 10.0).round() / 10.0,
            "timeline": timeline_path.map(|p| p.display().to_string()),
            "report": r,
        })
    }
}

impl fmt::Display for ChaosRun {
    /// The ✓/✗ table and the recovery figures.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.report)?;
        let p = |q| percentile(&self.recovery_ms, q).map_or("-".into(), |v| format!("{v} ms"));
        writeln!(
            f,
            "recovery (node killed → job running elsewhere): {} of {} killed copies, p50 {}, p90 {}",
            self.recovery_ms.len(),
            killed_copies(&self.facts, &self.kills),
            p(50.0),
            p(90.0)
        )?;
        if !self.timed_out.is_empty() {
            writeln!(
                f,
                "still running when the wait ran out: {}",
                self.timed_out.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Every node's jobs share the machine's cores with every node's control plane: at
/// level 1 in one process, at level 2 in one process per node, but on the same two
/// cores either way. 32 CPU-bound job threads on two cores would leave eight nodes'
/// heartbeats, gossip and failure detectors a thirty-third of the CPU each, so nodes
/// would be declared dead because the *machine* is busy, which separate machines
/// never see. Job threads (named `job-…` by the node) are therefore run at a lower
/// priority (`nice`): they still get every idle cycle. Linux only; elsewhere this
/// does nothing.
#[derive(Default)]
pub(crate) struct JobNice {
    done: BTreeSet<(u32, String)>,
}

/// The `nice` value job threads get.
const JOB_NICE: i32 = 10;

impl JobNice {
    /// Lowers the priority of the job threads listed in `task_dirs`
    /// (`/proc/self/task`, `/proc/PID/task`) not seen before.
    #[cfg(target_os = "linux")]
    pub(crate) fn sweep(&mut self, task_dirs: &[PathBuf]) {
        let mut present = BTreeSet::new();
        for dir in task_dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else {
                    continue;
                };
                let key = (tid, comm.trim_end().to_string());
                if key.1.starts_with("job-") && !self.done.contains(&key) {
                    // SAFETY: setpriority on one thread of this process or of a child
                    // of it; lowering a thread's priority needs no privilege and
                    // touches no memory.
                    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, JOB_NICE) };
                    if rc != 0 {
                        tracing::debug!(tid, "setpriority failed");
                    }
                }
                present.insert(key);
            }
        }
        // Thread ids are reused: forget the ones that are gone.
        self.done = present;
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn sweep(&mut self, _task_dirs: &[PathBuf]) {}
}

/// A fresh scratch directory for a run (`roam-chaos-PID-NANOS` in the temp dir).
pub(crate) fn scratch_dir(what: &str) -> anyhow::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("roam-{what}-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Removes the run's scratch directory (identity files) when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What differs between the levels: how the swarm starts, how each fault is
/// injected and how the nodes are asked what they hold. [`run`] plays the timeline
/// and keeps the books ([`Observer`], marks, counts) the same way at every level.
pub(crate) trait Level {
    /// Whether a paused node's jobs stop computing (SIGSTOP) rather than keep
    /// computing unheard (level 1's cut).
    const PAUSE_FREEZES: bool;

    /// The level's number, for the report.
    fn level(&self) -> u8;
    /// What the level is, for the first line ("level 1: one process", ...).
    fn what(&self) -> &'static str;
    /// Whether `node` is running (started and not killed; it may be paused).
    fn is_live(&self, node: &str) -> bool;
    /// Starts a job from the home; returns its id.
    async fn submit(&mut self, req: RunRequest) -> anyhow::Result<String>;
    /// What every live node that answers holds.
    async fn lists(&mut self) -> Vec<(String, Vec<JobSummary>)>;
    /// What `node` holds, if it answers.
    async fn list(&mut self, node: &str) -> Option<Vec<JobSummary>>;
    /// A piece of `job`'s stdout from the home's log book.
    async fn read_log(&mut self, job: &str, from: u64, max: u32) -> Option<LogSlice>;
    /// All of `job`'s stdout in the home's log book.
    async fn whole_log(&mut self, job: &str) -> Option<Vec<u8>>;
    /// Nodes that died without being killed (a crashed process), since last asked.
    fn exited(&mut self) -> Vec<(String, String)>;
    /// Kills a live node; returns the line to print.
    async fn kill(&mut self, node: &str) -> anyhow::Result<String>;
    /// Starts a killed node again; returns the line to print, or `None` when the
    /// node was not killed.
    async fn restart(&mut self, node: &str) -> anyhow::Result<Option<String>>;
    /// Pauses a live node; returns the line to print.
    async fn pause(&mut self, node: &str) -> anyhow::Result<String>;
    async fn resume(&mut self, node: &str) -> anyhow::Result<()>;
    /// Puts `groups` in force (see [`Cut::partition`]); returns the nodes cut off
    /// from the majority.
    async fn partition(
        &mut self,
        groups: &[Vec<NodeId>],
        nodes: usize,
    ) -> anyhow::Result<Vec<String>>;
    async fn heal(&mut self) -> anyhow::Result<()>;
    /// Shapes a link (delay, loss, rate); returns the line to print, or `None` when
    /// the level skips it.
    async fn shape(&mut self, e: &Event) -> anyhow::Result<Option<String>>;
    /// Every live node's acknowledged copies and recoveries, by node name.
    async fn recovery_facts(&mut self) -> Vec<(String, RecoveryFacts)>;
    /// Housekeeping between observations (the job threads' priority).
    fn tick(&mut self);
    /// Every move every incarnation of every node made as the source, timed from
    /// `t0`, oldest first.
    async fn moves(&mut self, t0: Instant) -> Vec<TimedMove>;
    /// Stops every node.
    async fn shutdown(&mut self);
}

/// Level 1: every node in this process (see the module doc).
pub(crate) struct InProcess {
    host: Arc<Host>,
    home: NodeHandle,
    gateway: bool,
    live: BTreeMap<String, NodeHandle>,
    /// The last incarnation of each killed node (its config starts the next one).
    dead: BTreeMap<String, NodeHandle>,
    /// Every incarnation, for their move reports.
    all: Vec<NodeHandle>,
    peers: BTreeMap<String, PeerId>,
    cut: Cut,
    nice: JobNice,
    _scratch: Scratch,
}

impl InProcess {
    /// Starts `names` (the last one the gateway when `gateway`) in this process; the
    /// home is `home`.
    async fn start(
        host: &Arc<Host>,
        names: &[String],
        home: &str,
        gateway: bool,
    ) -> anyhow::Result<InProcess> {
        let scratch = Scratch(scratch_dir("chaos")?);
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let dir = scratch.0.clone();
        let handles = node::local_swarm(host, &name_refs, |cfg| {
            // A restart keeps the node's identity (same peer id), as a real one would.
            cfg.identity_file = dir.join(format!("{}.key", cfg.name)).display().to_string();
        })
        .await?;
        let live: BTreeMap<String, NodeHandle> = handles
            .iter()
            .map(|h| (h.name().to_string(), h.clone()))
            .collect();
        let home = live
            .get(home)
            .cloned()
            .context("the home node did not start")?;
        if gateway {
            home.drain(GATEWAY).await.context("draining the gateway")?;
        }
        Ok(InProcess {
            host: host.clone(),
            home,
            gateway,
            peers: handles
                .iter()
                .map(|h| (h.name().to_string(), h.peer_id()))
                .collect(),
            all: handles,
            live,
            dead: BTreeMap::new(),
            cut: Cut::default(),
            nice: JobNice::default(),
            _scratch: scratch,
        })
    }

    /// Gives every live node the block list the cut asks for.
    async fn apply_cut(&self) -> anyhow::Result<()> {
        let calls = self.live.iter().map(|(name, h)| {
            let blocked: Vec<PeerId> = self
                .peers
                .iter()
                .filter(|(other, _)| self.cut.separated(name, other))
                .map(|(_, p)| *p)
                .collect();
            async move {
                h.shared
                    .mesh
                    .set_blocked(blocked)
                    .await
                    .with_context(|| format!("blocking peers of {name}"))
            }
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<()>>>()?;
        Ok(())
    }

    /// Dials, all at once, every pair of live nodes the cut allows that is not
    /// connected.
    async fn reconnect(&self) {
        let live: Vec<(&String, &NodeHandle)> = self.live.iter().collect();
        let mut dials = Vec::new();
        for (i, (a, ha)) in live.iter().enumerate() {
            let connected = ha.shared.mesh.connected_peers().await.unwrap_or_default();
            for (b, hb) in &live[i + 1..] {
                if !self.cut.separated(a, b) && !connected.contains(&hb.peer_id()) {
                    dials.push(async move {
                        if let Err(e) = ha.connect(hb).await {
                            tracing::warn!(%a, %b, "reconnecting: {e:#}");
                        }
                    });
                }
            }
        }
        futures::future::join_all(dials).await;
    }
}

impl Level for InProcess {
    const PAUSE_FREEZES: bool = false;

    fn level(&self) -> u8 {
        1
    }

    fn what(&self) -> &'static str {
        "level 1: one process, on 127.0.0.1"
    }

    fn is_live(&self, node: &str) -> bool {
        self.live.contains_key(node)
    }

    async fn submit(&mut self, req: RunRequest) -> anyhow::Result<String> {
        self.home.run(req).await
    }

    async fn lists(&mut self) -> Vec<(String, Vec<JobSummary>)> {
        // All asked at once: the nodes' actors share this thread, so asking one by
        // one would wait behind their backlog once per node.
        let lists = futures::future::join_all(self.live.iter().map(|(name, h)| async move {
            (name.clone(), h.scheduler.send(scheduler::List).await)
        }))
        .await;
        lists
            .into_iter()
            .filter_map(|(name, l)| l.ok().map(|l| (name, l)))
            .collect()
    }

    async fn list(&mut self, node: &str) -> Option<Vec<JobSummary>> {
        self.live
            .get(node)?
            .scheduler
            .send(scheduler::List)
            .await
            .ok()
    }

    async fn read_log(&mut self, job: &str, from: u64, max: u32) -> Option<LogSlice> {
        self.home
            .logs(job, StreamKind::Stdout, from, max)
            .await
            .ok()
    }

    async fn whole_log(&mut self, job: &str) -> Option<Vec<u8>> {
        self.home.local_log(job, StreamKind::Stdout)
    }

    fn exited(&mut self) -> Vec<(String, String)> {
        Vec::new()
    }

    async fn kill(&mut self, node: &str) -> anyhow::Result<String> {
        let h = self
            .live
            .remove(node)
            .with_context(|| format!("{node} is not running"))?;
        h.shutdown().await;
        // A paused node that is killed comes back running.
        self.cut.resume(node);
        self.dead.insert(node.to_string(), h);
        Ok(format!("kill {node}"))
    }

    async fn restart(&mut self, node: &str) -> anyhow::Result<Option<String>> {
        let Some(old) = self.dead.remove(node) else {
            return Ok(None);
        };
        // The store survives, as an on-disk store survives a real restart (level 2's
        // nodes have one): its chunks, checkpoints and replica records.
        let h = node::start_with_store(
            old.shared.config.clone(),
            self.host.clone(),
            Some(old.shared.store.clone()),
        )
        .await
        .with_context(|| format!("restarting {node}"))?;
        self.peers.insert(node.to_string(), h.peer_id());
        self.all.push(h.clone());
        self.live.insert(node.to_string(), h);
        self.apply_cut().await?;
        self.reconnect().await;
        Ok(Some(format!(
            "restart {node} (same identity, its store kept)"
        )))
    }

    async fn pause(&mut self, node: &str) -> anyhow::Result<String> {
        self.cut.pause(node);
        self.apply_cut().await?;
        Ok(format!(
            "pause {node} (level 1: cut off from every peer; its jobs keep computing)"
        ))
    }

    async fn resume(&mut self, node: &str) -> anyhow::Result<()> {
        self.cut.resume(node);
        self.apply_cut().await?;
        self.reconnect().await;
        Ok(())
    }

    async fn partition(
        &mut self,
        groups: &[Vec<NodeId>],
        nodes: usize,
    ) -> anyhow::Result<Vec<String>> {
        let cut_off = self.cut.partition(groups, nodes, self.gateway);
        self.apply_cut().await?;
        Ok(cut_off)
    }

    async fn heal(&mut self) -> anyhow::Result<()> {
        self.cut.heal();
        self.apply_cut().await?;
        self.reconnect().await;
        Ok(())
    }

    async fn shape(&mut self, _e: &Event) -> anyhow::Result<Option<String>> {
        Ok(None)
    }

    async fn recovery_facts(&mut self) -> Vec<(String, RecoveryFacts)> {
        let mut out = Vec::new();
        for (name, h) in &self.live {
            match h.recovery_facts().await {
                Ok(f) => out.push((name.clone(), f)),
                Err(e) => tracing::debug!(node = %name, "reading recovery facts: {e:#}"),
            }
        }
        out
    }

    fn tick(&mut self) {
        self.nice.sweep(&[PathBuf::from("/proc/self/task")]);
    }

    async fn moves(&mut self, t0: Instant) -> Vec<TimedMove> {
        let mut moves = Vec::new();
        for h in &self.all {
            moves.extend(
                timed_moves(std::slice::from_ref(h), t0)
                    .await
                    .unwrap_or_default(),
            );
        }
        moves.sort_by_key(|m| m.at);
        moves
    }

    async fn shutdown(&mut self) {
        for h in self.live.values() {
            h.shutdown().await;
        }
    }
}

/// Prints timestamped lines when verbose.
struct Say {
    verbose: bool,
    t0: Instant,
}

impl Say {
    fn line(&self, msg: impl AsRef<str>) {
        if self.verbose {
            println!(
                "[{:7.2}s] {}",
                self.t0.elapsed().as_secs_f64(),
                msg.as_ref()
            );
        }
    }
}

/// What the run has recorded of replication already (each fact once).
#[derive(Default)]
struct ReplicationSeen {
    acks: BTreeSet<(String, String, recovery::CheckpointRef)>,
    resumes: BTreeSet<(String, String, u64)>,
}

/// How many observation rounds between two reads of the nodes' replication facts (an
/// HTTP request per node at levels 2 and 3).
const REPLICATION_EVERY: u32 = 5;

/// Collects [`Fact::CheckpointAcked`] (the owners' acknowledged copies) and
/// [`Fact::Resumed`] (each recovery and the checkpoint it resumed from) facts: the
/// single place replication enters the run, for "no acknowledged checkpoint lost".
/// Each is timed when the harness first sees it: an acknowledgement seen late only
/// weakens the check, and a resume is judged at its `Started` when that came first.
async fn replication_facts<L: Level>(
    level: &mut L,
    at_ms: u64,
    seen: &mut ReplicationSeen,
    obs: &mut Observer,
) {
    for (node, facts) in level.recovery_facts().await {
        for (job, holder, checkpoint) in facts.acks {
            if seen.acks.insert((job.clone(), holder.clone(), checkpoint)) {
                obs.push(Fact::CheckpointAcked {
                    job,
                    holder: NodeId::from(holder),
                    checkpoint,
                    at_ms,
                });
            }
        }
        for r in facts.recovered {
            let Some(from) = r.from else { continue };
            if seen
                .resumes
                .insert((r.job.clone(), node.clone(), r.generation))
            {
                obs.push(Fact::Resumed {
                    job: r.job,
                    node: NodeId::from(node.as_str()),
                    generation: r.generation,
                    from,
                    at_ms,
                });
            }
        }
    }
}

/// Asks every live node what it holds, and follows every unfinished job's output at
/// the home.
async fn observe<L: Level>(level: &mut L, obs: &mut Observer, at_ms: u64) {
    for (name, list) in level.lists().await {
        obs.saw(at_ms, &name, &list);
    }
    let jobs: Vec<String> = obs
        .jobs()
        .iter()
        .filter(|j| !obs.is_finished(j))
        .cloned()
        .collect();
    for job in jobs {
        loop {
            let from = obs.offset(&job);
            let Some(s) = level.read_log(&job, from, READ_MAX).await else {
                break;
            };
            let full = s.data.len() as u32 >= READ_MAX;
            obs.output(&job, from, s.data, s.next);
            if full {
                continue;
            }
            // The exit code is there once the job ended and every byte arrived, so
            // this read reached the end.
            if s.exit_code.is_some() {
                let out = level.whole_log(&job).await.unwrap_or_default();
                obs.finished(at_ms, &job, output_hash(&out));
            }
            break;
        }
    }
}

/// Refuses what `level` cannot play, before anything starts.
pub fn check_level(sc: &Scenario, level: u8) -> anyhow::Result<()> {
    match level {
        1 => Ok(()),
        2 => {
            let shaped: Vec<String> = sc
                .timeline()
                .iter()
                .filter(|te| {
                    matches!(
                        te.event,
                        Event::Delay { .. } | Event::Loss { .. } | Event::Rate { .. }
                    )
                })
                .map(|te| format!("`{}` at {} ms", te.event, te.at_ms))
                .collect();
            if let Some(first) = shaped.first() {
                anyhow::bail!(
                    "--level 2 cannot shape links: {} shaped-link event(s) ({first}{}). Level 2 \
                     runs every node as a process on 127.0.0.1, where delay, loss and rate \
                     cannot be set per pair of nodes; they need level 3 (network namespaces \
                     with tc, --level 3). Remove those events or use --level 1 (which skips \
                     them)",
                    shaped.len(),
                    if shaped.len() > 1 { ", ..." } else { "" }
                );
            }
            Ok(())
        }
        // Root, iproute2 and (for delay and loss) netem are checked when the
        // namespaces are made, before any node starts.
        3 => Ok(()),
        n => anyhow::bail!(
            "--level {n}: the levels are 1 (one process), 2 (a process per node) and 3 (a \
             process per node in a network namespace)"
        ),
    }
}

/// Runs the scenario on the current actix system at `opts.level` (see the module
/// doc and [`procs`]).
pub async fn run(opts: ChaosOptions) -> anyhow::Result<ChaosRun> {
    let started = Instant::now();
    let sc = &opts.scenario;
    if !(opts.time_scale > 0.0 && opts.time_scale.is_finite()) {
        anyhow::bail!("the time scale must be a positive number");
    }
    check_level(sc, opts.level)?;
    let home_at = choose_home(sc, &opts.home)?;
    // The guests, read once each.
    let mut modules: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for spec in &sc.jobs {
        if !modules.contains_key(&spec.guest) {
            let p = opts.guests.join(format!("{}.wasm", spec.guest));
            let wasm = std::fs::read(&p).with_context(|| {
                format!(
                    "reading {} (build the guests with scripts/build-guests)",
                    p.display()
                )
            })?;
            modules.insert(spec.guest.clone(), wasm);
        }
    }
    let host = Host::new(HostConfig::default())?;
    let mut names: Vec<String> = sc.node_names().iter().map(|n| n.to_string()).collect();
    let gateway = home_at == Home::Gateway;
    if gateway {
        names.push(GATEWAY.to_string());
    }
    let run = Run {
        opts: &opts,
        home: &home_at,
        names: &names,
        modules: &modules,
        host: &host,
        started,
    };
    if opts.level >= 2 {
        let need_netem = sc
            .timeline()
            .iter()
            .any(|te| matches!(te.event, Event::Delay { .. } | Event::Loss { .. }));
        // Its drop ends every node process and removes their directories (and
        // namespaces), also when the run fails or is dropped (Ctrl-C).
        let mut level =
            procs::Processes::start(opts.level, &names, home_at.name(), gateway, need_netem)
                .await?;
        run.drive(&mut level).await
    } else {
        let mut level = InProcess::start(&host, &names, home_at.name(), gateway).await?;
        run.drive(&mut level).await
    }
}

/// What [`Run::drive`] needs besides the level.
struct Run<'a> {
    opts: &'a ChaosOptions,
    home: &'a Home,
    /// Lanes: n1..nN, then the gateway if there is one.
    names: &'a [String],
    modules: &'a BTreeMap<String, Vec<u8>>,
    host: &'a Arc<Host>,
    started: Instant,
}

impl Run<'_> {
    /// Submits the jobs, plays the timeline while observing, then checks.
    async fn drive<L: Level>(&self, level: &mut L) -> anyhow::Result<ChaosRun> {
        let (opts, sc, home_at) = (self.opts, &self.opts.scenario, self.home);
        let gateway = *home_at == Home::Gateway;
        let say = Say {
            verbose: opts.verbose,
            t0: self.started,
        };
        say.line(format!(
            "{}: {} nodes up ({}), home {}{}",
            sc.name,
            sc.nodes,
            level.what(),
            home_at.name(),
            if gateway {
                " (an extra job-less gateway: every node is disrupted by this timeline)"
            } else {
                ""
            }
        ));

        // Jobs, round-robin over n1..nN, all submitted from the home.
        let mut submitted = Vec::new();
        for (i, spec) in sc.jobs.iter().enumerate() {
            let on = format!("n{}", (i as u64 % sc.nodes) + 1);
            let id = format!("{}-{}", spec.guest, i + 1);
            let wasm = self.modules.get(&spec.guest).cloned().unwrap_or_default();
            let got = level
                .submit(RunRequest {
                    module: wasm,
                    name: Some(spec.guest.clone()),
                    id: Some(id.clone()),
                    args: spec.args.clone(),
                    seed: sc.seed,
                    node: Some(on.clone()),
                    ..RunRequest::default()
                })
                .await
                .with_context(|| format!("starting {id} on {on}"))?;
            submitted.push((got, on, spec.clone()));
            level.tick();
        }
        // The clock starts once every job ran: a node process compiles a module it
        // has not seen first (a second or more on a busy machine), and a job killed
        // before it ran has nothing to recover from, whatever the level.
        let waited = Instant::now();
        let mut seen_running: BTreeSet<String> = BTreeSet::new();
        while submitted.iter().any(|(j, ..)| !seen_running.contains(j)) {
            if waited.elapsed() > START_WAIT {
                say.line(format!(
                    "not every job runs after {} s; the timeline starts anyway",
                    START_WAIT.as_secs()
                ));
                break;
            }
            for (_, list) in level.lists().await {
                seen_running.extend(
                    list.into_iter()
                        .filter(|j| j.state == "running")
                        .map(|j| j.job),
                );
            }
            tokio::time::sleep(opts.observe_every).await;
        }
        let t0 = Instant::now();
        let now = |t0: Instant| t0.elapsed().as_millis() as u64;
        let mut obs = Observer::default();
        let mut job_specs = Vec::new();
        for (job, on, spec) in submitted {
            obs.submitted(0, &job, &on);
            job_specs.push((job, spec));
        }
        let mut swept = Instant::now();
        say.line(format!(
            "{} jobs started (output collected at {}), all running after {} ms",
            job_specs.len(),
            home_at.name(),
            waited.elapsed().as_millis()
        ));

        // Play the timeline while observing.
        let scale = |ms: u64| (ms as f64 * opts.time_scale).round() as u64;
        let timeline = sc.timeline();
        let duration = scale(sc.duration_ms);
        let wait_until = duration + opts.wait_after.as_millis() as u64;
        let lost_after = opts.lost_after.as_millis() as u64;
        let mut next = 0usize;
        let mut kills: Vec<(u64, String)> = Vec::new();
        let mut marks: Vec<Mark> = Vec::new();
        // Open cuts: the partition's mark and each paused node's, by index in `marks`.
        let mut open_partition: Option<usize> = None;
        let mut open_pauses: BTreeMap<String, usize> = BTreeMap::new();
        let (mut restarts, mut pauses, mut partitions, mut shaped) = (0usize, 0, 0, 0);
        let mut skipped = Vec::new();
        let mut replicated = ReplicationSeen::default();
        let mut rounds = 0u32;
        // The nodes cut off by the partition in force (down until the heal).
        let mut cut_off_now: Vec<String> = Vec::new();
        let mut not_played = 0usize;
        loop {
            while next < timeline.len() && scale(timeline[next].at_ms) <= now(t0) {
                let te = &timeline[next];
                next += 1;
                let at = now(t0);
                let took = Instant::now();
                // Events are played when due; a busy process plays them late (restarts
                // and kills take time too), and the facts carry the real times.
                let late = at.saturating_sub(scale(te.at_ms));
                if late > 250 {
                    say.line(format!(
                        "{} due at {} ms, played {late} ms late",
                        te.event,
                        scale(te.at_ms)
                    ));
                }
                match &te.event {
                    Event::Kill { node } => {
                        let name = node.to_string();
                        if !level.is_live(&name) {
                            say.line(format!("kill {name}: not running, nothing to do"));
                            continue;
                        }
                        // What it held at its death, then its death.
                        if let Some(list) = level.list(&name).await {
                            obs.saw(at, &name, &list);
                        }
                        obs.killed(at, &name);
                        let line = level.kill(&name).await?;
                        end_mark(&mut marks, open_pauses.remove(&name), at);
                        say.line(line);
                        kills.push((at, name.clone()));
                        marks.push(Mark::Kill {
                            at_ms: at,
                            node: name,
                        });
                    }
                    Event::Restart { node } => {
                        let name = node.to_string();
                        match level.restart(&name).await? {
                            Some(line) => {
                                obs.up(at, &name);
                                restarts += 1;
                                marks.push(Mark::Restart {
                                    at_ms: at,
                                    node: name.clone(),
                                });
                                say.line(line);
                            }
                            None => say.line(format!("restart {name}: not killed, nothing to do")),
                        }
                    }
                    Event::Pause { node } => {
                        let name = node.to_string();
                        if L::PAUSE_FREEZES {
                            // What it ran when it stopped: none of it runs while paused.
                            if let Some(list) = level.list(&name).await {
                                obs.saw(at, &name, &list);
                            }
                            obs.paused(at, &name);
                        }
                        obs.down(at, &name);
                        let line = level.pause(&name).await?;
                        pauses += 1;
                        open_pauses.insert(name.clone(), marks.len());
                        marks.push(Mark::Pause {
                            at_ms: at,
                            end_ms: None,
                            node: name,
                        });
                        say.line(line);
                    }
                    Event::Resume { node } => {
                        let name = node.to_string();
                        level.resume(&name).await?;
                        obs.up(at, &name);
                        end_mark(&mut marks, open_pauses.remove(&name), at);
                        say.line(format!("resume {name}"));
                    }
                    Event::Partition { groups } => {
                        end_mark(&mut marks, open_partition.take(), at);
                        let cut_off = level.partition(groups, sc.nodes as usize).await?;
                        for n in cut_off_now.drain(..) {
                            obs.up(at, &n);
                        }
                        for n in &cut_off {
                            obs.down(at, n);
                        }
                        cut_off_now = cut_off.clone();
                        partitions += 1;
                        open_partition = Some(marks.len());
                        marks.push(Mark::Cut {
                            at_ms: at,
                            end_ms: None,
                            nodes: cut_off,
                        });
                        say.line(te.event.to_string());
                    }
                    Event::Heal => {
                        level.heal().await?;
                        for n in cut_off_now.drain(..) {
                            obs.up(at, &n);
                        }
                        end_mark(&mut marks, open_partition.take(), at);
                        say.line("heal");
                    }
                    e @ (Event::Delay { .. } | Event::Loss { .. } | Event::Rate { .. }) => {
                        match level.shape(e).await? {
                            Some(line) => {
                                shaped += 1;
                                say.line(line);
                            }
                            None => {
                                say.line(format!(
                                    "{e}: skipped at level {}: needs namespaces",
                                    level.level()
                                ));
                                skipped.push(e.to_string());
                            }
                        }
                    }
                }
                slow(took, || te.event.to_string());
            }
            let at = now(t0);
            for (name, how) in level.exited() {
                say.line(format!("{name} died on its own ({how})"));
                obs.killed(at, &name);
                end_mark(&mut marks, open_pauses.remove(&name), at);
                marks.push(Mark::Kill {
                    at_ms: at,
                    node: name,
                });
            }
            if swept.elapsed() >= Duration::from_millis(200) {
                level.tick();
                swept = Instant::now();
            }
            let took = Instant::now();
            observe(level, &mut obs, at).await;
            slow(took, || "observing the nodes".into());
            rounds = rounds.wrapping_add(1);
            if rounds.is_multiple_of(REPLICATION_EVERY) {
                replication_facts(level, at, &mut replicated, &mut obs).await;
            }
            if obs.all_finished() {
                not_played = timeline.len() - next;
                if not_played > 0 {
                    say.line(format!(
                        "every job finished; the last {not_played} events are not played"
                    ));
                }
                break;
            }
            if at >= duration && next >= timeline.len() && obs.in_play(at, lost_after).is_empty() {
                break;
            }
            if at >= wait_until {
                break;
            }
            let until_event = timeline
                .get(next)
                .map(|e| scale(e.at_ms).saturating_sub(at))
                .unwrap_or(u64::MAX);
            let wait = opts
                .observe_every
                .min(Duration::from_millis(until_event.max(1)));
            tokio::time::sleep(wait).await;
        }
        let end = now(t0);
        let timed_out = if end >= wait_until {
            obs.in_play(end, lost_after)
        } else {
            Vec::new()
        };
        say.line(format!(
            "timeline done: {} of {} jobs finished",
            obs.jobs().iter().filter(|j| obs.is_finished(j)).count(),
            obs.jobs().len()
        ));

        // Moves made by every incarnation, on the timeline's clock.
        let moves = level.moves(t0).await;
        level.shutdown().await;

        // Straight runs, one per distinct (guest, args), side by side.
        say.line("straight runs of the jobs for reference");
        // A job that did not finish cannot match its straight run whatever it is, so
        // specs with no finished job are left unverified (they cost minutes in a bench).
        let distinct: BTreeSet<(String, Vec<String>)> = job_specs
            .iter()
            .filter(|(job, _)| obs.is_finished(job))
            .map(|(_, s)| (s.guest.clone(), s.args.clone()))
            .collect();
        let runs = distinct.into_iter().map(|(guest, args)| {
            let (h, w) = (
                self.host.clone(),
                self.modules.get(&guest).cloned().unwrap_or_default(),
            );
            let seed = sc.seed;
            async move {
                let (g, a) = (guest.clone(), args.clone());
                let out =
                    tokio::task::spawn_blocking(move || straight_run_of(&h, &w, &g, &a, seed))
                        .await
                        .map_err(anyhow::Error::from)
                        .and_then(|r| r)
                        .with_context(|| format!("straight run of {guest} {}", args.join(" ")))?;
                anyhow::Ok(((guest, args), out.0))
            }
        });
        let straight: BTreeMap<(String, Vec<String>), Vec<u8>> = futures::future::join_all(runs)
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        for (job, spec) in &job_specs {
            if let Some(out) = straight.get(&(spec.guest.clone(), spec.args.clone())) {
                obs.straight_run(job, out);
            }
        }

        let facts = obs.into_facts();
        let report = check(&facts);
        let recovery_ms = recovery_times(&facts, &kills);
        let title = format!(
            "roam chaos {} (seed {}, level {}): jobs on nodes over time",
            sc.name,
            sc.seed,
            level.level()
        );
        let timeline = draw(&title, self.names, &facts, &marks, &moves, end);
        Ok(ChaosRun {
            scenario: sc.name.clone(),
            seed: sc.seed,
            level: level.level(),
            shaped,
            nodes: sc.nodes,
            home: home_at.name().to_string(),
            facts,
            report,
            timeline,
            kills,
            restarts,
            pauses,
            partitions,
            skipped,
            not_played,
            timed_out,
            recovery_ms,
            elapsed: self.started.elapsed(),
        })
    }
}

/// Logs what held up the harness's loop (events play late after it).
fn slow(since: Instant, what: impl FnOnce() -> String) {
    let ms = since.elapsed().as_millis();
    if ms >= 250 {
        tracing::info!(ms, "chaos harness: {} took {ms} ms", what());
    }
}

/// Ends the open cut or pause at index `i` of `marks`.
fn end_mark(marks: &mut [Mark], i: Option<usize>, at_ms: u64) {
    if let Some(Mark::Cut { end_ms, .. } | Mark::Pause { end_ms, .. }) =
        i.and_then(|i| marks.get_mut(i))
    {
        end_ms.get_or_insert(at_ms);
    }
}

/// Writes `t` as SVG to `path` (creating its directory).
pub fn write_timeline(path: &Path, t: &Timeline) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, crate::timeline::render_svg(t))
        .with_context(|| format!("writing the timeline {}", path.display()))
}

/// Writes `facts` to `path`, one JSON object a line; output reads carry their
/// length instead of their bytes.
pub fn write_facts(path: &Path, facts: &[Fact]) -> anyhow::Result<()> {
    let mut text = String::new();
    for f in facts {
        let line = match f {
            Fact::OutputRead { job, offset, bytes } => json!({
                "fact": "output_read", "job": job, "offset": offset, "len": bytes.len()
            })
            .to_string(),
            other => serde_json::to_string(other)?,
        };
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(text: &str) -> Scenario {
        Scenario::parse(text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn shipped(name: &str) -> Scenario {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../configs/chaos")
            .join(name);
        Scenario::load(&p).unwrap_or_else(|e| panic!("{e}"))
    }

    fn job(job: &str, generation: u64, state: &str) -> JobSummary {
        JobSummary {
            job: job.into(),
            generation,
            state: state.into(),
            home: vec![],
            memory_bytes: 0,
        }
    }

    #[test]
    fn the_home_is_a_node_the_timeline_leaves_alone_or_the_gateway() {
        // smoke: n1 is cut into a minority, n2 killed, n3 left alone.
        let smoke = shipped("smoke.toml");
        assert_eq!(
            choose_home(&smoke, &HomeChoice::Auto).unwrap(),
            Home::Node("n3".into())
        );
        let e = choose_home(&smoke, &HomeChoice::Node("n1".into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cut into a minority at 9000 ms") && e.contains("nodes left alone: n3"),
            "{e}"
        );
        let e = choose_home(&smoke, &HomeChoice::Node("n2".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("killed at 2000 ms (kill n2)"), "{e}");
        assert!(choose_home(&smoke, &HomeChoice::Node("n9".into())).is_err());
        assert_eq!(
            choose_home(&smoke, &HomeChoice::Gateway).unwrap(),
            Home::Gateway
        );
        // bench: 20 kills and 3 partitions leave no node alone.
        let bench = shipped("bench.toml");
        assert_eq!(disruptions(&bench).len(), 8);
        assert_eq!(
            choose_home(&bench, &HomeChoice::Auto).unwrap(),
            Home::Gateway
        );
        // A scenario that leaves n1 alone keeps it.
        let calm = scenario(
            "nodes = 3\n[[jobs]]\nguest = \"sieve\"\n[[events]]\nat_ms = 5\nkind = \"kill\"\nnode = \"n2\"\n",
        );
        assert_eq!(
            choose_home(&calm, &HomeChoice::Auto).unwrap(),
            Home::Node("n1".into())
        );
        // Every node disrupted and a 2|2 split: nowhere to put the gateway.
        let split = scenario(
            "nodes = 4\n[[jobs]]\nguest = \"sieve\"\n\
             [[events]]\nat_ms = 5\nkind = \"partition\"\ngroups = [[\"n1\", \"n2\"]]\n\
             [[events]]\nat_ms = 9\nkind = \"heal\"\n",
        );
        let e = choose_home(&split, &HomeChoice::Auto)
            .unwrap_err()
            .to_string();
        assert!(e.contains("majority side"), "{e}");
    }

    #[test]
    fn cuts_follow_partitions_and_pauses() {
        let mut c = Cut::default();
        assert!(!c.separated("n1", "n2"));
        let groups = vec![
            vec![NodeId::from("n1")],
            vec![NodeId::from("n2"), NodeId::from("n3")],
        ];
        assert_eq!(c.partition(&groups, 3, true), ["n1"]);
        assert!(c.separated("n1", "n2") && c.separated("n3", "n1"));
        assert!(!c.separated("n2", "n3"));
        assert!(
            !c.separated("gw", "n2"),
            "the gateway is on the majority side"
        );
        assert!(c.separated("gw", "n1"));
        assert!(!c.separated("n1", "n1"));
        c.pause("n3");
        assert!(c.separated("n3", "n2") && c.separated("gw", "n3"));
        c.heal();
        assert!(!c.separated("n1", "n2"));
        assert!(c.separated("n1", "n3"), "still paused after the heal");
        c.resume("n3");
        assert!(!c.separated("n1", "n3"));
    }

    #[test]
    fn observations_become_facts_the_invariants_understand() {
        let mut o = Observer::default();
        o.submitted(0, "j", "n1");
        o.saw(
            10,
            "n1",
            &[job("j", 0, "running"), job("other", 0, "running")],
        );
        // A move that aborts (paused, then running again), then one that commits.
        o.saw(20, "n1", &[job("j", 0, "paused")]);
        o.saw(30, "n1", &[job("j", 0, "running")]);
        o.saw(40, "n1", &[job("j", 0, "paused")]);
        o.saw(40, "n2", &[job("j", 1, "restored")]);
        o.output("j", 0, b"hello ".to_vec(), 6);
        assert_eq!(
            o.in_play(1000, 10),
            ["j"],
            "a paused copy still holds the job"
        );
        o.saw(70, "n2", &[job("j", 1, "running")]);
        o.saw(70, "n1", &[]);
        assert_eq!(o.offset("j"), 6);
        o.output("j", 6, b"world".to_vec(), 11);
        o.output("j", 11, vec![], 11);
        assert_eq!(o.in_play(100, 10), ["j"]);
        o.finished(120, "j", output_hash(b"hello world"));
        o.finished(150, "j", output_hash(b"again"));
        o.straight_run("j", b"hello world");
        assert!(o.all_finished());
        let runs: Vec<(&str, &str, u64, u64)> = o
            .facts()
            .iter()
            .filter_map(|f| match f {
                Fact::Started {
                    node,
                    generation,
                    at_ms,
                    ..
                } => Some(("start", node.as_str(), *generation, *at_ms)),
                Fact::Stopped {
                    node,
                    generation,
                    at_ms,
                    ..
                } => Some(("stop", node.as_str(), *generation, *at_ms)),
                _ => None,
            })
            .collect();
        assert_eq!(
            runs,
            [
                ("start", "n1", 0, 10),
                ("stop", "n1", 0, 20),
                ("start", "n1", 0, 30),
                ("stop", "n1", 0, 40),
                ("start", "n2", 1, 70),
            ],
            "a paused or restored copy does not run; dropping a paused one stops nothing"
        );
        let r = check(o.facts());
        assert!(r.ok(), "{r}");
        assert_eq!(
            (r.jobs, r.finished),
            (1, 1),
            "jobs nobody submitted are ignored"
        );
        assert!(o.facts().iter().any(|f| matches!(f,
            Fact::Finished { node, generation: 1, .. } if node.as_str() == "n2")));
    }

    #[test]
    fn a_stopped_node_runs_nothing_until_it_lists_its_jobs_running_again() {
        let mut o = Observer::default();
        o.submitted(0, "a", "n1");
        o.submitted(0, "b", "n1");
        o.saw(10, "n1", &[job("a", 0, "running"), job("b", 0, "paused")]);
        o.paused(100, "n1");
        o.paused(150, "n1");
        assert_eq!(
            o.in_play(5000, 10),
            ["a", "b"],
            "a stopped node holds its jobs"
        );
        // Meanwhile a runs elsewhere at a newer generation: no overlap.
        o.saw(4000, "n2", &[job("a", 1, "running")]);
        // Back (SIGCONT): n1 dropped a, and b runs again.
        o.saw(6000, "n1", &[job("b", 0, "running")]);
        let runs: Vec<(&str, &str, u64, u64)> = o
            .facts()
            .iter()
            .filter_map(|f| match f {
                Fact::Started { job, at_ms, .. } => Some(("start", job.as_str(), *at_ms, 0)),
                Fact::Stopped {
                    job,
                    node,
                    at_ms,
                    generation,
                } if node.as_str() == "n1" => Some(("stop", job.as_str(), *at_ms, *generation)),
                _ => None,
            })
            .collect();
        assert_eq!(
            runs,
            [
                ("start", "a", 10, 0),
                ("stop", "a", 100, 0),
                ("start", "a", 4000, 0),
                ("start", "b", 6000, 0),
            ],
            "stopping stops a running copy once; dropping it later stops nothing more"
        );
        assert!(check(o.facts()).duplicate_generations.is_empty());
    }

    #[test]
    fn level_2_refuses_shaped_links_and_levels_end_at_3() {
        assert!(check_level(&shipped("smoke.toml"), 2).is_ok());
        assert!(check_level(&shipped("level2.toml"), 2).is_ok());
        assert!(check_level(&shipped("churn.toml"), 1).is_ok());
        let e = check_level(&shipped("churn.toml"), 2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot shape links")
                && e.contains("4 shaped-link event(s)")
                && e.contains("level 3"),
            "{e}"
        );
        // Level 3 shapes them (whether this kernel can is known once the
        // namespaces exist).
        assert!(check_level(&shipped("churn.toml"), 3).is_ok());
        let e = check_level(&shipped("smoke.toml"), 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the levels are 1"), "{e}");
        assert!(check_level(&shipped("smoke.toml"), 0).is_err());
    }

    #[test]
    fn a_generation_on_two_nodes_and_a_lost_job_are_reported() {
        let mut o = Observer::default();
        o.submitted(0, "a", "n1");
        o.submitted(0, "b", "n2");
        o.saw(10, "n1", &[job("a", 0, "running")]);
        o.saw(10, "n2", &[job("a", 0, "running"), job("b", 0, "running")]);
        o.saw(50, "n2", &[]);
        o.killed(60, "n1");
        o.killed(60, "n1");
        assert!(o.in_play(65, 10).contains(&"a".to_string()));
        assert!(
            o.in_play(100, 10).is_empty(),
            "nobody held a or b for 10 ms"
        );
        let r = check(o.facts());
        assert_eq!(r.duplicate_generations.len(), 1, "{r}");
        let d = &r.duplicate_generations[0];
        assert_eq!((d.from_ms, d.to_ms), (10, 50));
        assert_eq!(r.jobs_lost, ["a", "b"]);
        let stops = o
            .facts()
            .iter()
            .filter(|f| matches!(f, Fact::Stopped { at_ms: 60, .. }))
            .count();
        assert_eq!(stops, 1, "a second kill of a dead node stops nothing");
    }

    #[test]
    fn recovery_time_runs_from_the_kill_to_a_newer_generation_elsewhere() {
        let mut o = Observer::default();
        for j in ["a", "b", "c"] {
            o.submitted(0, j, "n1");
        }
        o.saw(10, "n1", &[job("a", 0, "running"), job("b", 0, "running")]);
        o.saw(10, "n2", &[job("c", 3, "running")]);
        o.killed(100, "n1");
        o.saw(2000, "n1", &[job("b", 1, "running")]); // same node (restarted): not counted
        o.saw(4300, "n3", &[job("a", 1, "running")]);
        o.saw(5000, "n2", &[]);
        o.saw(
            5100,
            "n3",
            &[job("a", 1, "running"), job("c", 4, "running")],
        );
        let kills = vec![(100, "n1".to_string())];
        assert_eq!(recovery_times(o.facts(), &kills), [4200]);
        assert_eq!(killed_copies(o.facts(), &kills), 2);
        assert!(recovery_times(o.facts(), &[]).is_empty());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 50.0), Some(7));
        let v: Vec<u64> = (1..=10).rev().collect();
        assert_eq!(percentile(&v, 50.0), Some(5));
        assert_eq!(percentile(&v, 90.0), Some(9));
        assert_eq!(percentile(&v, 100.0), Some(10));
        assert_eq!(percentile(&v, 0.0), Some(1));
    }

    #[test]
    fn home_choices_parse() {
        assert_eq!("auto".parse::<HomeChoice>(), Ok(HomeChoice::Auto));
        assert_eq!("gw".parse::<HomeChoice>(), Ok(HomeChoice::Gateway));
        assert_eq!("gateway".parse::<HomeChoice>(), Ok(HomeChoice::Gateway));
        assert_eq!(
            "n12".parse::<HomeChoice>(),
            Ok(HomeChoice::Node("n12".into()))
        );
        for bad in ["n", "x1", "n1a", ""] {
            assert!(bad.parse::<HomeChoice>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_drawing_marks_kills_restarts_cuts_pauses_and_starts_not_explained_by_moves() {
        let mut o = Observer::default();
        o.submitted(0, "a", "n1");
        o.saw(10, "n1", &[job("a", 0, "running")]);
        o.killed(100, "n1");
        o.saw(4300, "n2", &[job("a", 1, "running")]);
        o.finished(6000, "a", output_hash(b""));
        let marks = vec![
            Mark::Kill {
                at_ms: 100,
                node: "n1".into(),
            },
            Mark::Cut {
                at_ms: 200,
                end_ms: None,
                nodes: vec!["n3".into()],
            },
            Mark::Restart {
                at_ms: 2000,
                node: "n1".into(),
            },
            Mark::Pause {
                at_ms: 3000,
                end_ms: Some(3500),
                node: "n2".into(),
            },
        ];
        let lanes: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
        let t = draw("t", &lanes, o.facts(), &marks, &[], 7000);
        let segs = t.segments();
        assert_eq!(segs.len(), 2, "{segs:?}");
        assert_eq!((segs[0].node.as_str(), segs[0].to_ms), ("n1", 100.0));
        assert_eq!((segs[1].node.as_str(), segs[1].from_ms), ("n2", 4300.0));
        assert!(t.events.iter().any(|e| matches!(&e.what,
            What::Partition { nodes, end_ms } if nodes == &["n3"] && *end_ms == 7000.0)));
        assert!(t.events.iter().any(|e| matches!(&e.what,
            What::Pause { node, end_ms } if node == "n2" && *end_ms == 3500.0)));
        assert!(
            t.events
                .iter()
                .any(|e| e.t_ms == 2000.0
                    && matches!(&e.what, What::Restart { node } if node == "n1"))
        );
        let svg = crate::timeline::render_svg(&t);
        assert!(svg.contains("n1 killed") && svg.contains("n1 restarted"));
        assert!(svg.contains(">paused</text>"));
    }
}
