//! The placement problem as every node sees it: jobs, the local environment a node
//! measures (capacity, speed, links), the cost model, and the assembled [`Problem`] with
//! its feasibility check and objective.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::PlacementError;
use crate::flow::FlowNetwork;

/// A node of the swarm.
pub type NodeId = u32;
/// A job (stable across rounds).
pub type JobId = u64;

/// One job to place. The job list of a round is the same on every node (the shell gets it
/// from the gossiped job registry); the view digest covers it, so nodes that disagree
/// never mix their iterates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    /// CPU time per period of the sporadic server (same unit as [`NodeEnv::capacity`]).
    pub demand: f64,
    /// Remaining work, in CPU seconds at speed 1.
    pub work: f64,
    /// Bytes of state a migration moves.
    pub state_bytes: u64,
    /// Where the job runs now (`None`: not placed yet).
    pub current: Option<NodeId>,
    /// Locality: the nodes the job may run on (`None`: anywhere).
    pub allowed: Option<Vec<NodeId>>,
}

impl Job {
    /// Whether the job may run on `node`.
    pub fn allows(&self, node: NodeId) -> bool {
        self.allowed.as_ref().is_none_or(|a| a.contains(&node))
    }
}

/// A measured link from a peer to this node.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Bytes per second.
    pub bandwidth: f64,
    /// Round-trip time, seconds.
    pub rtt: f64,
}

/// The convex load term of a node: `slope · max(0, load − knee · capacity)`, in cost
/// units (seconds) per unit of demand above the knee. It keeps headroom on a node's
/// sporadic server; being piecewise linear it stays exact in the LP ground truth.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadPenalty {
    /// Fraction of capacity where the penalty starts (≥ 1 disables it).
    pub knee: f64,
    /// Cost per unit of demand above the knee (0 disables it).
    pub slope: f64,
}

impl Default for LoadPenalty {
    fn default() -> Self {
        LoadPenalty {
            knee: 1.0,
            slope: 0.0,
        }
    }
}

/// What a node knows about itself: private inputs of its column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeEnv {
    /// Share of the node's sporadic server: CPU time per period available to jobs.
    pub capacity: f64,
    /// Speed relative to the reference machine (work ÷ speed = seconds).
    pub speed: f64,
    pub load: LoadPenalty,
    /// Measured links from peers (the source of a migration) to this node.
    pub links: BTreeMap<NodeId, Link>,
    /// Used for a source with no measurement, and for jobs not placed yet (state fetched
    /// from the checkpoint store).
    pub fallback_link: Link,
}

/// Hysteresis: a job moves only when it gains more than the move costs plus
/// `absolute + relative · work` (seconds).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hysteresis {
    pub absolute: f64,
    pub relative: f64,
}

impl Hysteresis {
    /// The margin a move of `job` away from its current node must beat (0 when the job
    /// is not placed yet).
    pub fn margin(&self, job: &Job) -> f64 {
        if job.current.is_some() {
            self.absolute + self.relative * job.work
        } else {
            0.0
        }
    }
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis {
            absolute: 0.5,
            relative: 0.0,
        }
    }
}

/// Cost of running `job` on node `me` (seconds): migration time (zero where the job
/// already is) plus remaining work ÷ speed. `None` where locality forbids it.
pub fn raw_cost(job: &Job, me: NodeId, env: &NodeEnv) -> Option<f64> {
    if !job.allows(me) {
        return None;
    }
    let migration = match job.current {
        Some(src) if src == me => 0.0,
        Some(src) => {
            let l = env.links.get(&src).copied().unwrap_or(env.fallback_link);
            job.state_bytes as f64 / l.bandwidth.max(1.0) + l.rtt.max(0.0)
        }
        None => {
            let l = env.fallback_link;
            job.state_bytes as f64 / l.bandwidth.max(1.0) + l.rtt.max(0.0)
        }
    };
    Some(migration + job.work.max(0.0) / env.speed.max(1e-9))
}

/// The effective cost the solver minimises: [`raw_cost`] plus the hysteresis margin on
/// every node but the current one, so "move only when it pays more than the margin" is
/// simply optimality.
pub fn effective_cost(job: &Job, me: NodeId, env: &NodeEnv, h: &Hysteresis) -> Option<f64> {
    let c = raw_cost(job, me, env)?;
    Some(if job.current == Some(me) {
        c
    } else {
        c + h.margin(job)
    })
}

/// The whole instance, assembled from the jobs and every member's specification.
/// Costs are effective costs (hysteresis margin included).
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// Sorted by id.
    pub jobs: Vec<Job>,
    /// Sorted.
    pub nodes: Vec<NodeId>,
    pub capacity: Vec<f64>,
    /// Absolute knee (`knee · capacity`) per node.
    pub knee: Vec<f64>,
    pub slope: Vec<f64>,
    /// Hysteresis margin per job (already inside `cost` off the job's current node).
    pub margin: Vec<f64>,
    /// Row-major `[node][job]`; `f64::INFINITY` where the job may not run.
    pub cost: Vec<f64>,
}

impl Problem {
    pub fn n_jobs(&self) -> usize {
        self.jobs.len()
    }
    pub fn n_nodes(&self) -> usize {
        self.nodes.len()
    }
    /// Effective cost of job `j` on node index `n` (∞ if not allowed).
    pub fn c(&self, n: usize, j: usize) -> f64 {
        self.cost[n * self.jobs.len() + j]
    }
    /// Raw cost (without the hysteresis margin) of job `j` on node index `n`.
    pub fn raw(&self, n: usize, j: usize) -> f64 {
        if self.jobs[j].current == Some(self.nodes[n]) {
            self.c(n, j)
        } else {
            self.c(n, j) - self.margin[j]
        }
    }
    pub fn allowed(&self, n: usize, j: usize) -> bool {
        self.c(n, j).is_finite()
    }
    pub fn node_index(&self, id: NodeId) -> Option<usize> {
        self.nodes.binary_search(&id).ok()
    }

    /// Build a problem centrally from every node's environment (tests, benchmarks, the
    /// ground truth); a node builds the same one from the messages it hears.
    pub fn from_envs(
        jobs: &[Job],
        envs: &BTreeMap<NodeId, NodeEnv>,
        h: &Hysteresis,
    ) -> Result<Problem, PlacementError> {
        let mut jobs = jobs.to_vec();
        jobs.sort_by_key(|j| j.id);
        let nodes: Vec<NodeId> = envs.keys().copied().collect();
        let mut p = Problem {
            cost: vec![f64::INFINITY; nodes.len() * jobs.len()],
            capacity: Vec::new(),
            knee: Vec::new(),
            slope: Vec::new(),
            margin: Vec::new(),
            nodes,
            jobs,
        };
        p.margin = p.jobs.iter().map(|j| h.margin(j)).collect();
        for (n, (&id, env)) in envs.iter().enumerate() {
            let spec = crate::msg::Spec::from_env(id, env, &p.jobs, h);
            p.capacity.push(spec.capacity());
            p.knee.push(spec.knee_abs());
            p.slope.push(spec.slope());
            for (j, c) in spec
                .costs(p.jobs.len())
                .map_err(|reason| PlacementError::BadSpec { node: id, reason })?
            {
                p.cost[n * p.jobs.len() + j] = c;
            }
        }
        p.validate()?;
        Ok(p)
    }

    /// Structural checks and the typed infeasibility errors: a job no member may run, more
    /// demand than capacity in total, a job larger than every node it may run on, and —
    /// exactly, by a max-flow — demand that locality confines to too little capacity.
    pub fn validate(&self) -> Result<(), PlacementError> {
        let (nj, nn) = (self.n_jobs(), self.n_nodes());
        if nn == 0 {
            return Err(PlacementError::NoNodes);
        }
        for job in &self.jobs {
            if !(job.demand.is_finite() && job.demand > 0.0) {
                return Err(PlacementError::BadJob {
                    job: job.id,
                    reason: "demand must be finite and > 0",
                });
            }
        }
        for n in 0..nn {
            if !(self.capacity[n].is_finite() && self.capacity[n] >= 0.0) {
                return Err(PlacementError::BadSpec {
                    node: self.nodes[n],
                    reason: "capacity",
                });
            }
        }
        let mut total_demand = 0.0;
        for (j, job) in self.jobs.iter().enumerate() {
            total_demand += job.demand;
            let mut any = false;
            let mut fits = false;
            for n in 0..nn {
                if self.allowed(n, j) {
                    any = true;
                    fits |= job.demand <= self.capacity[n] * (1.0 + 1e-9);
                }
            }
            if !any {
                return Err(PlacementError::NoAllowedNode { job: job.id });
            }
            if !fits {
                return Err(PlacementError::JobTooLarge {
                    job: job.id,
                    demand: job.demand,
                });
            }
        }
        let total_capacity: f64 = self.capacity.iter().sum();
        if total_demand > total_capacity * (1.0 + 1e-9) {
            return Err(PlacementError::OverCapacity {
                demand: total_demand,
                capacity: total_capacity,
            });
        }
        // Locality can confine demand to too few nodes even when the totals fit: the LP
        // is feasible iff the flow source → jobs (demand) → allowed nodes → sink
        // (capacity) saturates every job.
        if nj > 0 {
            let (src, sink) = (nj + nn, nj + nn + 1);
            let mut g = FlowNetwork::new(nj + nn + 2);
            for (j, job) in self.jobs.iter().enumerate() {
                g.add_edge(src, j, job.demand);
                for n in 0..nn {
                    if self.allowed(n, j) {
                        g.add_edge(j, nj + n, f64::INFINITY);
                    }
                }
            }
            for n in 0..nn {
                g.add_edge(nj + n, sink, self.capacity[n]);
            }
            let flow = g.max_flow(src, sink);
            if flow < total_demand * (1.0 - 1e-9) - 1e-12 {
                return Err(PlacementError::LocalityInfeasible {
                    demand: total_demand,
                    placeable: flow,
                });
            }
        }
        Ok(())
    }

    /// Load term of node `n` at load `s`.
    pub fn load_term(&self, n: usize, s: f64) -> f64 {
        self.slope[n] * (s - self.knee[n]).max(0.0)
    }

    /// Objective of an integer placement (`assign[j]` = node index), `None` if it breaks
    /// locality or capacity.
    pub fn objective(&self, assign: &[usize]) -> Option<f64> {
        let mut load = vec![0.0; self.n_nodes()];
        let mut total = 0.0;
        for (j, &n) in assign.iter().enumerate() {
            if n >= self.n_nodes() || !self.allowed(n, j) {
                return None;
            }
            total += self.c(n, j);
            load[n] += self.jobs[j].demand;
        }
        for (n, &s) in load.iter().enumerate() {
            if s > self.capacity[n] * (1.0 + 1e-9) + 1e-12 {
                return None;
            }
            total += self.load_term(n, s);
        }
        Some(total)
    }

    /// Objective of a fractional placement `x[n][j]` (no feasibility check).
    pub fn fractional_objective(&self, x: &[Vec<f64>]) -> f64 {
        let mut total = 0.0;
        for (n, col) in x.iter().enumerate() {
            let mut s = 0.0;
            for (j, &v) in col.iter().enumerate() {
                if v != 0.0 {
                    total += self.c(n, j) * v;
                    s += self.jobs[j].demand * v;
                }
            }
            total += self.load_term(n, s);
        }
        total
    }

    /// A cost scale (mean finite cost) that makes ρ and the tolerances unit-free.
    pub fn cost_scale(&self) -> f64 {
        let (mut sum, mut k) = (0.0, 0usize);
        for &c in &self.cost {
            if c.is_finite() {
                sum += c.abs();
                k += 1;
            }
        }
        if k == 0 || sum <= 0.0 {
            1.0
        } else {
            sum / k as f64
        }
    }
}
