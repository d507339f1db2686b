//! Typed errors of the state machines. A refused message or event never
//! changes the state: the caller may log it, count it against the peer, and
//! carry on.

use crate::msg::{MessageError, MigrationId};
use store::ChunkId;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MigrateError {
    #[error("invalid message: {0}")]
    Invalid(#[from] MessageError),
    #[error("message for migration {found}, this is {expected}")]
    WrongMigration {
        expected: MigrationId,
        found: MigrationId,
    },
    #[error("message for generation {found}, the job is at {expected}")]
    WrongGeneration { expected: u64, found: u64 },
    #[error("{message} is never sent to the {role}")]
    WrongDirection {
        message: &'static str,
        role: &'static str,
    },
    #[error("{what} not expected in phase {phase}")]
    Unexpected {
        what: &'static str,
        phase: &'static str,
    },
    #[error("round {found} out of order (expected {expected})")]
    WrongRound { expected: u32, found: u32 },
    #[error("the have list names chunk {0}, which was not offered")]
    NotOffered(ChunkId),
    #[error(
        "the destination already runs job {job} at generation {local}, offer is for {offered}"
    )]
    Fenced {
        job: String,
        local: u64,
        offered: u64,
    },
    #[error("the job was handed over (Go sent): too late to cancel")]
    TooLateToCancel,
    #[error("bad configuration: {0}")]
    Config(&'static str),
}
