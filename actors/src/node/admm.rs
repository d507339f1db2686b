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

use mesh::PeerId;
use placement::{Job, JobId, NodeId};
use serde::{Deserialize, Serialize};

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
}
