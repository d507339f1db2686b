//! `wasm-host`: run, pause, capture and restore unmodified WebAssembly jobs.
//!
//! A module is instrumented when it is loaded ([`instrument`]) so that a running job can
//! stop at its next loop iteration or host call, unwind its own stack into linear memory
//! and be resumed later in a fresh instance, in this process or another one
//! ([`Job`], [`Snapshot`]). Host state the guest can observe is roam's own WASI
//! implementation ([`wasi`]), kept as plain data so it travels with the job.
//!
//! This crate knows nothing of the network.

pub mod drive;
pub mod error;
pub mod host;
pub mod instrument;
pub mod job;
pub mod snapshot;
pub mod wasi;

pub use error::{HostError, SnapshotError};
pub use host::{Host, HostConfig, LoadedModule};
pub use job::{Job, JobSpec, Limits, Outcome, PauseHandle};
pub use snapshot::Snapshot;
pub use wasi::{BufferSink, OutputSink, Preopen, StdioSink, Stream};
