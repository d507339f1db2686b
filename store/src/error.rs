//! The one error type of the crate. Every failure that comes from untrusted
//! bytes (disk, network, a guest) is a variant here, never a panic.

use std::path::PathBuf;

use crate::ChunkId;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Bytes that claim to be chunk `id` are not: hash mismatch, bad header,
    /// truncated file, undecodable payload. Never returned as data.
    #[error("chunk {id} is corrupt{}: {reason}", path.as_ref().map(|p| format!(" at {}", p.display())).unwrap_or_default())]
    Corrupt {
        id: ChunkId,
        /// The file, when the bytes came from the disk tier.
        path: Option<PathBuf>,
        reason: String,
    },
    /// The chunk is not in the store.
    #[error("chunk {0} is not in the store")]
    NotFound(ChunkId),
    /// A checkpoint references chunks the store does not hold (first few listed).
    #[error("{count} referenced chunk(s) missing, e.g. {first}")]
    MissingChunks { first: ChunkId, count: usize },
    /// An input is bigger than the bound the decoder accepts.
    #[error("{what} is {len} bytes, more than the limit of {limit}")]
    TooLarge {
        what: &'static str,
        len: u64,
        limit: u64,
    },
    /// Decompression would produce more than allowed (e.g. a zstd bomb), or a
    /// different length than declared.
    #[error(
        "chunk {id}: decompressed size exceeds {limit} bytes or differs from the declared length"
    )]
    DecompressLimit { id: ChunkId, limit: u64 },
    /// Undecodable or inconsistent bytes (CBOR, header, manifest invariants).
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    /// A manifest or file of a format version this build does not know.
    #[error("unsupported {what} version {found} (this build reads {supported})")]
    UnsupportedVersion {
        what: &'static str,
        found: u32,
        supported: u32,
    },
    /// Storing would exceed the store's size limit. Run `gc` and retry.
    #[error("store full: {used} of {limit} bytes used, {needed} more needed")]
    Full { needed: u64, used: u64, limit: u64 },
    /// A caller-side mistake (bad chunk size, job id, buffer length...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Another process holds the store directory.
    #[error("store directory {0} is locked by another process")]
    Locked(PathBuf),
    /// An I/O error on `path`.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Result alias of the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.into();
    move |source| StoreError::Io { path, source }
}

pub(crate) fn malformed(what: &'static str, reason: impl ToString) -> StoreError {
    StoreError::Malformed {
        what,
        reason: reason.to_string(),
    }
}
