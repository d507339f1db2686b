//! Placement by decentralised ADMM in the node (`[placement] mode = "admm"`).
//!
//! A round needs the same members and the same job list on every member (they are part
//! of the core's view digest). The shell gets that agreement the simple way: the live
//! member with the smallest placement id *proposes* a round — its number, the members
//! (placement id ↔ mesh peer) and the jobs with where each runs — on the job-events
//! gossip topic; every member named in it starts the round with its own private data
//! (capacity, speed, measured links) and runs it through [`crate::placement_shell`].
//! The proposer is a role of the moment, not a coordinator: it holds no state the
//! others lack, and when it leaves the next smallest id proposes. Each node then moves
//! the jobs it runs that the agreed placement puts elsewhere.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh::PeerId;
use placement::{Job, JobId, NodeId, Outcome};
use serde::{Deserialize, Serialize};

use super::api::metrics::{Histogram, DURATION_BUCKETS};
use super::proto::ProtoError;

/// Largest proposal decoded.
pub const MAX_PROPOSAL: usize = 128 << 10;
/// Most jobs one proposal may name.
pub const MAX_PROPOSAL_JOBS: usize = 1024;

/// A node's placement id: the first 4 bytes of blake3(peer id).
pub fn node_id(peer: &PeerId) -> NodeId {
    let h = blake3::hash(&peer.to_bytes());
    let b = h.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A job's placement id: the first 8 bytes of blake3(job id).
pub fn job_id(job: &str) -> JobId {
    let h = blake3::hash(job.as_bytes());
    let b = h.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// One job of a proposal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProposedJob {
    pub job: String,
    pub current: Option<NodeId>,
    pub state_bytes: u64,
}

/// A member of a round: its placement id and its mesh peer id (bytes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member(pub NodeId, #[serde(with = "serde_bytes")] pub Vec<u8>);

/// A round proposal (gossiped on the job-events topic).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub round: u64,
    /// Sorted by id.
    pub members: Vec<Member>,
    pub jobs: Vec<ProposedJob>,
}

impl Proposal {
    pub fn decode(bytes: &[u8]) -> Result<Proposal, ProtoError> {
        if bytes.len() > MAX_PROPOSAL {
            return Err(ProtoError::TooLarge(bytes.len()));
        }
        let p: Proposal =
            ciborium::from_reader(bytes).map_err(|e| ProtoError::Malformed(e.to_string()))?;
        if p.jobs.len() > MAX_PROPOSAL_JOBS || p.members.len() > 1024 || p.members.is_empty() {
            return Err(ProtoError::Invalid("proposal too large or empty".into()));
        }
        for Member(id, peer) in &p.members {
            match PeerId::from_bytes(peer) {
                Ok(peer) if node_id(&peer) == *id => {}
                _ => {
                    return Err(ProtoError::Invalid(
                        "member id does not match its peer".into(),
                    ))
                }
            }
        }
        if p.jobs.iter().any(|j| !super::proto::valid_job_id(&j.job)) {
            return Err(ProtoError::Invalid("job id".into()));
        }
        Ok(p)
    }

    /// The members as (placement id, peer).
    pub fn peers(&self) -> Vec<(NodeId, PeerId)> {
        self.members
            .iter()
            .filter_map(|Member(id, p)| PeerId::from_bytes(p).ok().map(|p| (*id, p)))
            .collect()
    }

    /// The core's job list: every job demands one unit of capacity and has `work`
    /// seconds of work left (roam does not know a job's length; one estimate for all).
    pub fn core_jobs(&self, work: f64) -> Vec<Job> {
        self.jobs
            .iter()
            .map(|j| Job {
                id: job_id(&j.job),
                demand: 1.0,
                work,
                state_bytes: j.state_bytes,
                current: j
                    .current
                    .filter(|c| self.members.iter().any(|Member(m, _)| m == c)),
                allowed: None,
            })
            .collect()
    }
}

/// Upper bounds of the iterations-per-round buckets.
pub const ITERATION_BUCKETS: [f64; 9] = [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0];

/// How a round ended without a placement (the labels of `roam_admm_rounds_total`
/// besides `placed`).
pub const ROUND_FAILURES: [&str; 4] = ["disagreement", "infeasible", "timeout", "error"];

/// The last placed round, as `/metrics` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct LastRound {
    pub round: u64,
    pub iterations: u32,
    pub converged: bool,
    pub primal_residual: f64,
    pub dual_residual: f64,
    /// (objective of the rounded placement − objective of the last fractional
    /// iterate) ÷ |the latter|: what rounding to whole jobs cost (NaN if it is 0).
    pub rounding_gap: f64,
}

/// Running totals of this node's placement rounds (the Solver keeps one; `/metrics`
/// renders it).
#[derive(Clone, Debug)]
pub struct AdmmTally {
    /// Rounds this node took part in, by result: `placed` or one of [`ROUND_FAILURES`].
    pub rounds: BTreeMap<String, u64>,
    /// ADMM iterations of each placed round.
    pub iterations: Histogram,
    pub iterations_total: u64,
    /// Wall time of each placed round (the shell's run until the outcome).
    pub round_seconds: Histogram,
    /// Jobs the agreed placements move (the whole swarm's, as every member sees them).
    pub placed_moves: u64,
    /// Placement payload bytes this node published (re-sends included).
    pub sent_bytes: u64,
    pub last: Option<LastRound>,
}

impl Default for AdmmTally {
    fn default() -> Self {
        AdmmTally {
            rounds: std::iter::once("placed")
                .chain(ROUND_FAILURES)
                .map(|r| (r.to_string(), 0))
                .collect(),
            iterations: Histogram::new(&ITERATION_BUCKETS),
            iterations_total: 0,
            round_seconds: Histogram::new(&DURATION_BUCKETS),
            placed_moves: 0,
            sent_bytes: 0,
            last: None,
        }
    }
}

impl AdmmTally {
    /// A round ended with an agreed placement after `elapsed`, this node having
    /// published `sent_bytes` for it.
    pub fn placed(&mut self, o: &Outcome, elapsed: Duration, sent_bytes: u64) {
        *self.rounds.entry("placed".into()).or_default() += 1;
        self.iterations.observe(f64::from(o.iterations));
        self.iterations_total += u64::from(o.iterations);
        self.round_seconds.observe(elapsed.as_secs_f64());
        self.placed_moves += o.moves as u64;
        self.sent_bytes += sent_bytes;
        let gap = if o.fractional_objective.abs() > f64::EPSILON {
            (o.objective - o.fractional_objective) / o.fractional_objective.abs()
        } else {
            f64::NAN
        };
        self.last = Some(LastRound {
            round: o.round,
            iterations: o.iterations,
            converged: o.converged,
            primal_residual: o.primal_residual,
            dual_residual: o.dual_residual,
            rounding_gap: gap,
        });
    }

    /// A round ended without a placement; `kind` is one of [`ROUND_FAILURES`].
    pub fn failed(&mut self, kind: &str, sent_bytes: u64) {
        *self.rounds.entry(kind.to_string()).or_default() += 1;
        self.sent_bytes += sent_bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposals_round_trip_and_lies_are_refused() {
        let peer = mesh::Identity::generate().peer_id();
        let p = Proposal {
            round: 3,
            members: vec![Member(node_id(&peer), peer.to_bytes())],
            jobs: vec![ProposedJob {
                job: "a-1".into(),
                current: Some(node_id(&peer)),
                state_bytes: 10,
            }],
        };
        let bytes = super::super::proto::encode(&p);
        assert_eq!(Proposal::decode(&bytes).unwrap(), p);
        let mut lie = p.clone();
        lie.members[0].0 ^= 1;
        assert!(Proposal::decode(&super::super::proto::encode(&lie)).is_err());
        for cut in 0..bytes.len() {
            assert!(Proposal::decode(&bytes[..cut]).is_err());
        }
        assert_eq!(p.core_jobs(5.0)[0].id, job_id("a-1"));
    }

    #[test]
    fn the_tally_counts_rounds_iterations_and_the_last_round() {
        let mut t = AdmmTally::default();
        assert_eq!(t.rounds["placed"], 0);
        let o = Outcome {
            round: 7,
            epoch: 0,
            placement: vec![],
            digest: 1,
            iterations: 16,
            converged: true,
            objective: 10.5,
            fractional_objective: 10.0,
            moves: 2,
            primal_residual: 0.001,
            dual_residual: 0.002,
        };
        t.placed(&o, Duration::from_millis(40), 300);
        t.placed(
            &Outcome {
                round: 8,
                iterations: 30,
                fractional_objective: 0.0,
                ..o.clone()
            },
            Duration::from_millis(60),
            500,
        );
        t.failed("timeout", 20);
        assert_eq!(t.rounds["placed"], 2);
        assert_eq!(t.rounds["timeout"], 1);
        assert_eq!(t.iterations_total, 46);
        assert_eq!(t.iterations.count(), 2);
        assert_eq!(t.placed_moves, 4);
        assert_eq!(t.sent_bytes, 820);
        let last = t.last.clone().expect("a last round");
        assert_eq!((last.round, last.iterations), (8, 30));
        assert!(last.rounding_gap.is_nan());
        t.placed(&o, Duration::from_millis(40), 0);
        let gap = t.last.expect("last").rounding_gap;
        assert!((gap - 0.05).abs() < 1e-12, "{gap}");
    }
}
