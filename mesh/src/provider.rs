//! Where served chunks come from. The mesh never owns a store: the node plugs one in.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::types::ChunkId;

/// The source of chunks this node serves to peers. Called from blocking worker threads
/// (never from the swarm task), so an implementation may read from disk.
pub trait ChunkProvider: Send + Sync + 'static {
    /// Size in bytes of the chunk if this node holds it.
    fn chunk_len(&self, id: &ChunkId) -> Option<usize>;

    /// The bytes of the chunk if this node holds it. They should hash to `id`; the
    /// receiver verifies either way.
    fn get(&self, id: &ChunkId) -> Option<Bytes>;

    fn has(&self, id: &ChunkId) -> bool {
        self.chunk_len(id).is_some()
    }
}

/// A provider that holds nothing.
pub struct NoChunks;

impl ChunkProvider for NoChunks {
    fn chunk_len(&self, _: &ChunkId) -> Option<usize> {
        None
    }
    fn get(&self, _: &ChunkId) -> Option<Bytes> {
        None
    }
}

/// An in-memory provider, for tests, benchmarks and small nodes.
#[derive(Default)]
pub struct MemoryChunks {
    map: RwLock<HashMap<ChunkId, Bytes>>,
}

impl MemoryChunks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `data` under its blake3 id and returns the id.
    pub fn insert(&self, data: Bytes) -> ChunkId {
        let id = ChunkId::of(&data);
        self.insert_as(id, data);
        id
    }

    /// Stores `data` under `id` without checking: lets tests build lying peers.
    pub fn insert_as(&self, id: ChunkId, data: Bytes) {
        if let Ok(mut m) = self.map.write() {
            m.insert(id, data);
        }
    }

    pub fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ChunkProvider for MemoryChunks {
    fn chunk_len(&self, id: &ChunkId) -> Option<usize> {
        self.map.read().ok()?.get(id).map(|b| b.len())
    }
    fn get(&self, id: &ChunkId) -> Option<Bytes> {
        self.map.read().ok()?.get(id).cloned()
    }
}

/// Caps the rate of chunk bytes a node uploads. Each response reserves its bytes on a
/// virtual timeline and is released when the timeline says it has been "sent".
#[derive(Debug)]
pub(crate) struct UploadLimiter {
    bytes_per_sec: f64,
    next_free: Mutex<Option<Instant>>,
}

impl UploadLimiter {
    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        UploadLimiter {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            next_free: Mutex::new(None),
        }
    }

    /// How long the caller must wait before sending `bytes` at `now`.
    pub(crate) fn reserve(&self, bytes: usize, now: Instant) -> Duration {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
        let Ok(mut next) = self.next_free.lock() else {
            return Duration::ZERO;
        };
        let start = match *next {
            Some(t) if t > now => t,
            _ => now,
        };
        let done = start + cost;
        *next = Some(done);
        done - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_provider_serves_by_hash() {
        let m = MemoryChunks::new();
        let id = m.insert(Bytes::from_static(b"abc"));
        assert_eq!(id, ChunkId::of(b"abc"));
        assert_eq!(m.chunk_len(&id), Some(3));
        assert!(m.has(&id));
        assert!(!m.has(&ChunkId::of(b"zzz")));
    }

    #[test]
    fn limiter_spaces_reservations() {
        let l = UploadLimiter::new(1000);
        let t0 = Instant::now();
        assert_eq!(l.reserve(500, t0), Duration::from_millis(500));
        // The second reservation queues behind the first.
        assert_eq!(l.reserve(500, t0), Duration::from_millis(1000));
        // After an idle period the timeline restarts from now.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(l.reserve(100, later), Duration::from_millis(100));
    }
}
