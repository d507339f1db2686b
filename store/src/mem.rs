//! The in-memory tier: a sharded `HashMap` of chunks with a byte budget.
//!
//! It is either the whole store (`Store::in_memory`: over budget means
//! [`StoreError::Full`]) or a cache in front of the disk tier (over budget
//! means evicting the oldest entries, FIFO). Buffers of the store's chunk size
//! freed by eviction or GC are kept in a pool (counted in the budget) and
//! reused: copying into already-faulted memory is ~5x faster than into fresh
//! pages on this kind of machine, which is what makes full checkpoints run at
//! hashing speed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use crate::error::{Result, StoreError};
use crate::ChunkId;

const SHARDS: usize = 64;

#[derive(Default)]
struct Shard {
    map: HashMap<ChunkId, Vec<u8>>,
    /// Insertion order for eviction; may hold ids already removed (skipped).
    order: VecDeque<ChunkId>,
}

#[derive(Default)]
struct Pool {
    bufs: Vec<Vec<u8>>,
    bytes: u64,
}

pub(crate) struct MemTier {
    shards: Box<[RwLock<Shard>]>,
    budget: u64,
    evict: bool,
    used: AtomicU64,
    pool: Mutex<Pool>,
    pool_size: usize,
    cursor: AtomicUsize,
}

fn shard_of(id: &ChunkId) -> usize {
    id.0[0] as usize % SHARDS
}

fn corrupt(id: &ChunkId, reason: &str) -> StoreError {
    tracing::warn!(%id, reason, "corrupt chunk in memory tier");
    StoreError::Corrupt {
        id: *id,
        path: None,
        reason: reason.to_string(),
    }
}

impl MemTier {
    pub(crate) fn new(budget: u64, evict: bool, pool_size: usize) -> MemTier {
        MemTier {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            budget,
            evict,
            used: AtomicU64::new(0),
            pool: Mutex::default(),
            pool_size,
            cursor: AtomicUsize::new(0),
        }
    }

    fn shard(&self, id: &ChunkId) -> &RwLock<Shard> {
        &self.shards[shard_of(id)]
    }

    pub(crate) fn contains(&self, id: &ChunkId) -> bool {
        read(self.shard(id)).map.contains_key(id)
    }

    /// Bytes held by entries.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes held by the recycling pool.
    pub(crate) fn pooled(&self) -> u64 {
        lock(&self.pool).bytes
    }

    pub(crate) fn len(&self) -> u64 {
        self.shards.iter().map(|s| read(s).map.len() as u64).sum()
    }

    pub(crate) fn ids(&self) -> Vec<ChunkId> {
        let mut v = Vec::new();
        for s in self.shards.iter() {
            v.extend(read(s).map.keys().copied());
        }
        v
    }

    /// Release the recycling pool's memory.
    pub(crate) fn release_pool(&self) {
        let mut p = lock(&self.pool);
        p.bufs = Vec::new();
        p.bytes = 0;
    }

    /// Copy `data` (whose hash is `id`, checked by the caller) in. Returns
    /// false when it was already there.
    pub(crate) fn insert_copy(&self, id: ChunkId, data: &[u8]) -> Result<bool> {
        if self.contains(&id) {
            return Ok(false);
        }
        let buf = self.take_copy(data)?;
        Ok(self.insert_owned(id, buf))
    }

    /// Insert a buffer obtained from [`take_copy`](Self::take_copy) whose hash
    /// is `id`. Returns false (and recycles the buffer) when already there.
    pub(crate) fn insert_owned(&self, id: ChunkId, buf: Vec<u8>) -> bool {
        let mut s = write(self.shard(&id));
        if s.map.contains_key(&id) {
            drop(s);
            self.recycle(buf);
            return false;
        }
        s.map.insert(id, buf);
        s.order.push_back(id);
        if s.order.len() > 2 * s.map.len() + 64 {
            let Shard { map, order } = &mut *s;
            order.retain(|i| map.contains_key(i));
        }
        true
    }

    /// Copy out and verify.
    pub(crate) fn get(&self, id: &ChunkId) -> Option<Result<Vec<u8>>> {
        let data = read(self.shard(id)).map.get(id)?.clone();
        if ChunkId::of(&data) != *id {
            self.remove(id);
            return Some(Err(corrupt(id, "hash mismatch")));
        }
        Some(Ok(data))
    }

    /// Copy into `dst` (exact length) and verify.
    pub(crate) fn read_into(&self, id: &ChunkId, dst: &mut [u8]) -> Option<Result<()>> {
        {
            let s = read(self.shard(id));
            let data = s.map.get(id)?;
            if data.len() != dst.len() {
                drop(s);
                self.remove(id);
                return Some(Err(corrupt(id, "length differs from the manifest")));
            }
            dst.copy_from_slice(data);
        }
        if ChunkId::of(dst) != *id {
            self.remove(id);
            return Some(Err(corrupt(id, "hash mismatch")));
        }
        Some(Ok(()))
    }

    /// Remove an entry; returns its length.
    pub(crate) fn remove(&self, id: &ChunkId) -> Option<u64> {
        let buf = write(self.shard(id)).map.remove(id)?;
        let n = buf.len() as u64;
        self.recycle(buf);
        Some(n)
    }

    /// Re-hash every entry; returns the ids of corrupt ones (removed).
    pub(crate) fn verify_all(&self) -> (u64, Vec<ChunkId>) {
        let mut bad = Vec::new();
        let mut n = 0;
        for s in self.shards.iter() {
            let s = read(s);
            for (id, data) in &s.map {
                n += 1;
                if ChunkId::of(data) != *id {
                    bad.push(*id);
                }
            }
        }
        for id in &bad {
            tracing::warn!(%id, "corrupt chunk in memory tier");
            self.remove(id);
        }
        (n, bad)
    }

    #[cfg(test)]
    pub(crate) fn corrupt_for_test(&self, id: &ChunkId) {
        if let Some(d) = write(self.shard(id)).map.get_mut(id) {
            d[0] ^= 1;
        }
    }

    /// Give back a buffer from [`take_copy`](Self::take_copy) that was not inserted.
    pub(crate) fn recycle(&self, buf: Vec<u8>) {
        let n = buf.len() as u64;
        if buf.len() == self.pool_size && buf.capacity() == self.pool_size {
            let mut p = lock(&self.pool);
            p.bufs.push(buf);
            p.bytes += n;
            self.used.fetch_sub(n, Ordering::Relaxed);
        } else {
            self.used.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// A buffer holding a copy of `data`, accounted in `used` (reused from the
    /// pool when possible). Goes back with `insert_owned` or `recycle`.
    pub(crate) fn take_copy(&self, data: &[u8]) -> Result<Vec<u8>> {
        let len = data.len() as u64;
        loop {
            let mut p = lock(&self.pool);
            if data.len() == self.pool_size {
                if let Some(mut b) = p.bufs.pop() {
                    p.bytes -= len;
                    self.used.fetch_add(len, Ordering::Relaxed);
                    drop(p);
                    b.copy_from_slice(data);
                    return Ok(b);
                }
            }
            let used = self.used.load(Ordering::Relaxed);
            if used + p.bytes + len <= self.budget {
                self.used.fetch_add(len, Ordering::Relaxed);
                drop(p);
                return Ok(data.to_vec());
            }
            if let Some(b) = p.bufs.pop() {
                p.bytes -= b.len() as u64;
                continue;
            }
            drop(p);
            if !(self.evict && self.evict_one()) {
                return Err(StoreError::Full {
                    needed: len,
                    used,
                    limit: self.budget,
                });
            }
        }
    }

    /// Evict the oldest entry of the next non-empty shard (its buffer goes to
    /// the pool). False when the tier is empty.
    fn evict_one(&self) -> bool {
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        for k in 0..SHARDS {
            let mut s = write(&self.shards[(start + k) % SHARDS]);
            while let Some(id) = s.order.pop_front() {
                if let Some(buf) = s.map.remove(&id) {
                    drop(s);
                    self.recycle(buf);
                    return true;
                }
            }
        }
        false
    }
}

// A panic while holding one of these locks cannot leave the maps inconsistent
// (every mutation is a single insert/remove), so poisoning is ignored.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
pub(crate) fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seed: u8, n: usize) -> (ChunkId, Vec<u8>) {
        let d: Vec<u8> = (0..n).map(|i| seed.wrapping_add(i as u8) | 1).collect();
        (ChunkId::of(&d), d)
    }

    #[test]
    fn budget_is_a_hard_limit_without_eviction() {
        let m = MemTier::new(3 * 4096, false, 4096);
        for s in 0..3 {
            let (id, d) = chunk(s, 4096);
            assert!(m.insert_copy(id, &d).unwrap());
            assert!(!m.insert_copy(id, &d).unwrap());
        }
        let (id, d) = chunk(9, 4096);
        assert!(matches!(
            m.insert_copy(id, &d),
            Err(StoreError::Full { .. })
        ));
        assert_eq!(m.len(), 3);
        assert_eq!(m.used(), 3 * 4096);
    }

    #[test]
    fn cache_evicts_fifo_and_recycles() {
        let m = MemTier::new(3 * 4096, true, 4096);
        let chunks: Vec<_> = (0..5).map(|s| chunk(s, 4096)).collect();
        for (id, d) in &chunks {
            m.insert_copy(*id, d).unwrap();
        }
        assert_eq!(m.len(), 3);
        assert!(m.used() + m.pooled() <= 3 * 4096);
        // The newest entry is there and verifies.
        let (id, d) = &chunks[4];
        assert_eq!(m.get(id).unwrap().unwrap(), *d);
        // Removing puts the buffer in the pool; the next insert reuses it.
        m.remove(id).unwrap();
        assert_eq!(m.pooled(), 4096);
        m.insert_copy(*id, d).unwrap();
        assert_eq!(m.pooled(), 0);
    }

    #[test]
    fn corruption_is_detected_and_dropped() {
        let m = MemTier::new(1 << 20, false, 4096);
        let (id, d) = chunk(1, 4096);
        m.insert_copy(id, &d).unwrap();
        m.corrupt_for_test(&id);
        let mut dst = vec![0u8; 4096];
        assert!(matches!(
            m.read_into(&id, &mut dst),
            Some(Err(StoreError::Corrupt { .. }))
        ));
        assert!(!m.contains(&id));
        m.insert_copy(id, &d).unwrap();
        m.corrupt_for_test(&id);
        let (n, bad) = m.verify_all();
        assert_eq!((n, bad), (1, vec![id]));
    }
}
