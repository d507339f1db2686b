//! Sets of chunk ids with a fast keyed hash. A move's bookkeeping builds several
//! sets of every chunk of the state (4,000+ for 256 MiB), some of them while the job
//! is paused; std's SipHash made that ~1 ms. foldhash's `quality` hasher is several
//! times faster and still seeded per process, so ids chosen by a hostile peer cannot be
//! aimed at one bucket.

use std::collections::HashSet;

use store::ChunkId;

pub(crate) type Hasher = foldhash::quality::RandomState;

/// A set of chunk ids (or slots) hashed with [`Hasher`].
pub(crate) type FastSet<T = ChunkId> = HashSet<T, Hasher>;

pub(crate) fn with_capacity<T>(n: usize) -> FastSet<T> {
    FastSet::with_capacity_and_hasher(n, Hasher::default())
}
