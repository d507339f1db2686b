//! The typed errors of `wasm-host`: what callers can match on, never a panic.

use std::path::PathBuf;

/// Everything that can go wrong while loading, running, capturing or restoring a job.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("invalid module: {0}")]
    InvalidModule(String),
    #[error(
        "wasm-opt (Binaryen) not found at `{0}`: install Debian's `binaryen` package or set ROAM_WASM_OPT"
    )]
    WasmOptMissing(PathBuf),
    #[error("module imports functions roam does not provide: {0} (pass --allow-unknown-imports to stub them with zeros)")]
    UnknownImports(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("wasmtime: {0}")]
    Engine(String),
    #[error("job trapped: {0}")]
    Trap(String),
    #[error("job exceeded its CPU limit")]
    CpuLimit,
    #[error("job was killed")]
    Killed,
    #[error("job exceeded its memory limit of {0} bytes")]
    MemoryLimit(u64),
    #[error("invalid snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("job is not in a state that allows this: {0}")]
    State(&'static str),
    #[error("bad job configuration: {0}")]
    Config(String),
}

/// Why a snapshot was refused. Each case names what was checked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("not a roam snapshot (bad magic)")]
    BadMagic,
    #[error("unsupported snapshot format version {found} (this build reads {supported})")]
    Version { found: u32, supported: u32 },
    #[error("snapshot truncated: needed {needed} bytes, have {have}")]
    Truncated { needed: u64, have: u64 },
    #[error("snapshot checksum mismatch: the file is corrupt")]
    Checksum,
    #[error("snapshot manifest is malformed: {0}")]
    Manifest(String),
    #[error("snapshot is for module {expected}, but module {found} was given")]
    ModuleMismatch { expected: String, found: String },
    #[error("snapshot field `{field}` is out of bounds: {detail}")]
    Bounds { field: &'static str, detail: String },
    #[error("memory chunk {index} does not match its hash")]
    ChunkHash { index: u32 },
}
