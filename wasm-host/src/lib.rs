//! `wasm-host`: run, pause, capture and restore unmodified WebAssembly jobs.
//!
//! A module is instrumented when it is loaded ([`instrument`]) so that a running job can
//! stop at its next loop iteration or host call, unwind its own stack into linear memory
//! and be resumed later in a fresh instance, in this process or another one
//! ([`Job`], [`Snapshot`]). Host state the guest can observe is roam's own WASI
//! implementation ([`wasi`]), kept as plain data so it travels with the job.
//!
//! A paused job can also be checkpointed into a content-addressed [`store::Store`] and
//! restored from it ([`checkpoint`]); host-owned, write-protected linear memory
//! ([`memory`]) makes each incremental checkpoint cost what the job wrote since the last.
//! A restore can be staged ahead of the checkpoint it finishes with ([`staged`]), so a
//! migration's downtime pays only for the chunks that changed since. A post-copy restore
//! resumes before all of memory is there and fills it on first touch ([`lazy`]).
//!
//! This crate knows nothing of the network.

pub mod checkpoint;
pub mod drive;
pub mod error;
pub mod host;
pub mod instrument;
pub mod job;
pub mod lazy;
pub mod memory;
pub mod snapshot;
pub mod staged;
pub mod wasi;

pub use checkpoint::CheckpointError;
pub use error::{HostError, SnapshotError};
pub use host::{Host, HostConfig, LoadedModule};
pub use job::{Job, JobSpec, Limits, Outcome, PauseHandle};
pub use lazy::{DemandFn, LazyError, LazyMemory};
pub use snapshot::Snapshot;
pub use staged::{LazyRestore, StagedRestore};
pub use wasi::{BufferSink, OutputSink, Preopen, StdioSink, Stream};
