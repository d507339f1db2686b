//! Sans-IO core of roam's crash recovery, so that "nodes die, jobs do not" can
//! be tested exhaustively with no network, no clock, no Wasm and no actix.
//!
//! A job's owner copies its incremental checkpoints to `k` peers (its
//! [`replicas`]) at a period adapted to the job and the link
//! ([`replication`]); every node watches the others with a [`detector`]; when
//! the owner is declared dead, the nodes that still see a strict majority of
//! the membership compute the same [`decide::decide`] from the same view and
//! exactly one live holder resumes the newest replicated checkpoint with the
//! next generation. A copy that learns of a newer generation stops at once
//! ([`decide::on_generation`]), and an owner that loses its majority pauses
//! ([`decide::owner_action`]) before the majority can declare it dead.
//!
//! The two remaining modules serve the `roam chaos` harness: [`scenario`]
//! reads a scripted chaos run (TOML) and expands it into a timeline, and
//! [`invariants`] checks the facts observed during the run (every job
//! finished, outputs bit-identical and emitted once, no generation on two
//! nodes, no acknowledged checkpoint lost).
//!
//! Times are plain `u64` milliseconds from any monotonic origin, passed in by
//! the caller; nothing here reads a clock or spawns anything.

pub mod config;
pub mod decide;
pub mod detector;
pub mod held;
mod ids;
pub mod invariants;
pub mod replicas;
pub mod replication;
mod rng;
pub mod scenario;

pub use config::{ConfigError, RecoveryConfig};
pub use decide::{
    after_escalation, decide, on_generation, owner_action, Decision, Fence, Handover, OwnerAction,
    OwnerSight, View,
};
pub use detector::{Detector, DetectorEvent, Liveness};
pub use held::HeldNote;
pub use ids::{CheckpointId, CheckpointRef, NodeId};
pub use invariants::{check, Fact, Report};
pub use replicas::{rank, replica_set, DEFAULT_REPLICAS};
pub use replication::{copy_period, AckBook, AckOutcome, CopySchedule, Period, ReplicationError};
pub use scenario::{Event, Scenario, ScenarioError, TimedEvent};
