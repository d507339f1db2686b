//! Typed errors: infeasible instances are reported, never looped on.

use crate::model::{JobId, NodeId};

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PlacementError {
    #[error("no member node in the view")]
    NoNodes,
    #[error("this node ({0}) is not a member of the view")]
    NotAMember(NodeId),
    #[error("job {job}: {reason}")]
    BadJob { job: JobId, reason: &'static str },
    #[error("duplicate job id {0}")]
    DuplicateJob(JobId),
    #[error("node {node}: bad specification ({reason})")]
    BadSpec { node: NodeId, reason: &'static str },
    #[error("job {job} may run on no member node")]
    NoAllowedNode { job: JobId },
    #[error("job {job} (demand {demand}) fits on none of the nodes it may run on")]
    JobTooLarge { job: JobId, demand: f64 },
    #[error("total demand {demand} exceeds total capacity {capacity}")]
    OverCapacity { demand: f64, capacity: f64 },
    #[error("locality confines demand: only {placeable} of {demand} can be placed")]
    LocalityInfeasible { demand: f64, placeable: f64 },
    #[error("no integer placement found by rounding and repair (job {job} fits nowhere)")]
    NoIntegerPlacement { job: JobId },
    #[error("too many jobs ({0}) for one round")]
    TooManyJobs(usize),
    #[error("too many members ({0}) for one round")]
    TooManyMembers(usize),
}
