//! Host-owned linear memory with write-protect dirty tracking.
//!
//! An incremental checkpoint must cost what changed since the last one, not the size of
//! memory, and finding the changes by scanning or hashing all of memory would cost the
//! latter. wasmtime lets the embedder own linear memory (`Config::with_host_memory`), so
//! roam maps every linear memory itself ([`DirtyCreator`]) and, from the first time a job
//! takes its dirty set on, keeps the pages of the job's main memory write-protected
//! except those written since. The first write to a protected page faults; the job's
//! store signal handler ([`Region::on_fault`]) marks the page in a bitmap (one bit per
//! host page), makes it writable and returns, and the write is retried. Taking the dirty
//! set ([`Region::take_dirty`]) re-protects only the pages that were dirty.
//!
//! A fault un-protects a whole *granule* (`HostConfig::dirty_granule`, default 64 KiB =
//! one Wasm page = the store's default chunk): a guest streaming through memory then
//! takes one fault per 64 KiB instead of sixteen, which is most of the tracking cost
//! (measured by `scripts/bench store`), and nothing is lost for 64 KiB chunks. A 4 KiB
//! granule gives page-exact dirty sets for stores with 4 KiB chunks.
//!
//! Mapping of one memory (reserved PROT_NONE, made accessible as it grows):
//!
//! ```text
//! base ─┬─ accessible: RW (dirty or untracked) / R (clean, tracked) ─┬─ capacity ─┬─ guard ─┐
//!       0                                                          len    reserved   +guard
//! ```
//!
//! Who writes guest memory, and how each write is seen:
//! - wasm code and wasmtime's libcalls (`memory.copy`, `memory.fill`, ...): fault, seen
//!   by the handler (wasmtime runs the store's handler before its own trap logic).
//! - roam's host functions called from wasm (`wasi.rs`, `roam.yield`): Rust stores
//!   fault while a wasm call is active on the thread, so the same handler sees them.
//! - the kernel (`read(2)`/`pread(2)` into guest memory) never faults: it returns EFAULT.
//!   `fd_read`/`fd_pread` are therefore wrapped ([`wrap_kernel_writers`]) to un-protect
//!   and mark their iovecs first.
//! - host code outside any wasm call (the job runner's Asyncify scratch area, restores):
//!   no handler is active there, so it calls [`Region::prepare_write`] first.
//!
//! Only the memory a job arms is ever protected: the job finds its main memory's region
//! by base address after instantiation. The flag memory (`__roam_flags`, memory index 1,
//! one page, written by other threads) is mapped here too but never armed, so it is never
//! protected.
//!
//! If protecting fails (e.g. `vm.max_map_count` reached by a very scattered dirty set), the
//! region un-protects everything, reports every chunk dirty at the next take (a full hash,
//! which the store dedups) and tries again from there; this is logged once.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use wasmtime::{Caller, LinearMemory, Linker, MemoryCreator, MemoryType, Store};

use crate::job::JobData;

/// `si_code` of a SIGSEGV caused by an access the page protection forbids (Linux).
const SEGV_ACCERR: libc::c_int = 2;

/// Largest region the dirty bitmap covers (wasm32 addresses at most 4 GiB).
const MAX_TRACKED: usize = 4 << 30;
/// Largest fault granule.
const MAX_GRANULE: usize = 16 << 20;

static PROTECT_WARNED: AtomicBool = AtomicBool::new(false);

fn warn_once(what: &str) {
    if !PROTECT_WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            what,
            error = %std::io::Error::last_os_error(),
            "dirty-page tracking unavailable for a while: the next checkpoint hashes every chunk"
        );
    }
}

/// Creates roam-owned linear memories; see the module doc.
pub struct DirtyCreator {
    page: usize,
    granule: usize,
    regions: Mutex<Vec<Weak<Region>>>,
}

impl std::fmt::Debug for DirtyCreator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyCreator")
            .field("page", &self.page)
            .field("granule", &self.granule)
            .finish()
    }
}

impl DirtyCreator {
    /// A creator whose memories un-protect `granule` bytes (rounded up to a power of two
    /// of at least one host page) per write fault; or `None` where write-protect tracking
    /// cannot work (not Linux, or a host page size that does not divide a Wasm page).
    pub fn new(granule: usize) -> Option<Arc<DirtyCreator>> {
        if !cfg!(target_os = "linux") {
            return None;
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = usize::try_from(page).ok()?;
        if !page.is_power_of_two() || page > 64 << 10 {
            return None;
        }
        let granule = granule.clamp(page, MAX_GRANULE).next_power_of_two();
        Some(Arc::new(DirtyCreator {
            page,
            granule,
            regions: Mutex::new(Vec::new()),
        }))
    }

    /// Host page size: the unit of the dirty bitmap and of protection.
    pub fn page_size(&self) -> usize {
        self.page
    }

    /// Bytes un-protected and marked dirty together on a write fault.
    pub fn granule(&self) -> usize {
        self.granule
    }

    /// The region whose accessible bytes start at `base`, if this creator made it.
    pub(crate) fn region_at(&self, base: *const u8) -> Option<Arc<Region>> {
        let mut regions = self.regions.lock().ok()?;
        regions.retain(|w| w.strong_count() > 0);
        regions
            .iter()
            .filter_map(Weak::upgrade)
            .find(|r| r.base == base as usize)
    }
}

fn round_up(n: usize, to: usize) -> Option<usize> {
    n.checked_add(to - 1).map(|v| v & !(to - 1))
}

// SAFETY: every memory is a fresh anonymous mapping of `reserved + guard` bytes (zero
// filled), of which only the first `byte_size()` bytes are ever accessible; it never
// moves; growth beyond the reservation is refused.
unsafe impl MemoryCreator for DirtyCreator {
    fn new_memory(
        &self,
        ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        if ty.is_shared() {
            return Err("shared memories are not supported".into());
        }
        let page = self.page;
        let too_big = || format!("memory of {minimum} bytes is too large");
        // Compiled code elides bounds checks for the whole reservation plus guard: map
        // all of it even when the memory's maximum is smaller.
        let reserved = match reserved_size_in_bytes {
            Some(r) => r.max(minimum),
            None => maximum.unwrap_or(MAX_TRACKED).max(minimum),
        };
        let reserved = round_up(reserved, page).ok_or_else(too_big)?;
        let guard = round_up(guard_size_in_bytes, page).ok_or_else(too_big)?;
        let map_len = reserved.checked_add(guard).ok_or_else(too_big)?;
        let capacity = maximum
            .and_then(|m| round_up(m, page))
            .map_or(reserved, |m| m.min(reserved));
        let tracked = capacity.min(MAX_TRACKED);
        // SAFETY: a new private anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(format!(
                "mmap of {map_len} bytes for a linear memory failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        let pages = tracked / page;
        let region = Arc::new(Region {
            base: base as usize,
            map_len,
            capacity,
            page,
            page_shift: page.trailing_zeros(),
            granule_pages: self.granule / page,
            len: AtomicUsize::new(0),
            bits: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            armed: AtomicBool::new(false),
            blind: AtomicBool::new(true),
        });
        region.grow_to(minimum).map_err(|e| e.to_string())?;
        if let Ok(mut regions) = self.regions.lock() {
            regions.push(Arc::downgrade(&region));
        }
        Ok(Box::new(DirtyMemory { region }))
    }
}

/// One roam-owned linear memory, shared by wasmtime's handle, the job and the job's
/// signal handler. Unmapped when the last of them drops it.
pub struct Region {
    base: usize,
    map_len: usize,
    /// Bytes the memory may grow to without moving.
    capacity: usize,
    page: usize,
    page_shift: u32,
    /// Pages un-protected (and marked) together on a fault: a power of two.
    granule_pages: usize,
    /// Accessible bytes.
    len: AtomicUsize,
    /// One bit per page written since the last take (meaningful while armed).
    bits: Box<[AtomicU64]>,
    /// Clean pages are write-protected: writes are seen.
    armed: AtomicBool,
    /// Writes may have gone unseen since the last take: report every chunk.
    blind: AtomicBool,
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: our own mapping; no handle to it survives this drop (wasmtime's memory,
        // the job and the signal handler each held an `Arc` to this region).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.map_len) };
    }
}

/// Dirty bits of a byte range, saved to be put back once the range holds its old bytes.
pub(crate) struct SavedBits {
    first_page: usize,
    bits: Vec<bool>,
}

impl Region {
    fn mprotect(&self, first_page: usize, pages: usize, prot: libc::c_int) -> bool {
        if pages == 0 {
            return true;
        }
        let addr = self.base + (first_page << self.page_shift);
        // SAFETY: the range lies inside our own mapping (callers stay below `len` or
        // the reservation); changing its protection cannot invalidate Rust references
        // because accessible bytes stay readable.
        unsafe { libc::mprotect(addr as *mut libc::c_void, pages << self.page_shift, prot) == 0 }
    }

    fn set_bit(&self, page: usize) {
        if let Some(w) = self.bits.get(page / 64) {
            w.fetch_or(1 << (page % 64), Ordering::Relaxed);
        }
    }

    fn bit(&self, page: usize) -> bool {
        self.bits
            .get(page / 64)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (page % 64)) != 0)
    }

    fn clear_bit(&self, page: usize) {
        if let Some(w) = self.bits.get(page / 64) {
            w.fetch_and(!(1 << (page % 64)), Ordering::Relaxed);
        }
    }

    fn pages(&self) -> usize {
        self.len.load(Ordering::Acquire).div_ceil(self.page)
    }

    /// Give up protection: everything writable, every chunk dirty at the next take.
    /// Async-signal-safe (no allocation, no locks, no logging).
    fn disarm(&self) -> bool {
        self.armed.store(false, Ordering::Release);
        self.blind.store(true, Ordering::Release);
        self.mprotect(0, self.pages(), libc::PROT_READ | libc::PROT_WRITE)
    }

    /// Makes `[len, new_len)` accessible (and dirty).
    fn grow_to(&self, new_len: usize) -> std::io::Result<()> {
        let old = self.len.load(Ordering::Acquire);
        if new_len <= old {
            return Ok(());
        }
        if new_len > self.capacity {
            return Err(std::io::Error::other(format!(
                "cannot grow a linear memory to {new_len} bytes: capacity is {}",
                self.capacity
            )));
        }
        let from = old.div_ceil(self.page);
        let to = new_len.div_ceil(self.page);
        if !self.mprotect(from, to - from, libc::PROT_READ | libc::PROT_WRITE) {
            return Err(std::io::Error::last_os_error());
        }
        for p in from..to {
            self.set_bit(p);
        }
        self.len.store(new_len, Ordering::Release);
        Ok(())
    }

    /// The job store's signal handler: a write to a clean, protected page of this memory
    /// marks the page dirty and makes it writable. Anything else is not ours (`false`:
    /// wasmtime goes on with its own handling, e.g. an out-of-bounds trap).
    /// Async-signal-safe.
    pub(crate) fn on_fault(&self, signum: libc::c_int, info: *const libc::siginfo_t) -> bool {
        if signum != libc::SIGSEGV || info.is_null() {
            return false;
        }
        // SAFETY: the kernel passes a valid siginfo for SIGSEGV.
        let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
        if code != SEGV_ACCERR || !self.armed.load(Ordering::Acquire) {
            return false;
        }
        let len = self.len.load(Ordering::Acquire);
        if addr < self.base || addr >= self.base + len {
            return false;
        }
        let page = (addr - self.base) >> self.page_shift;
        let first = page & !(self.granule_pages - 1);
        let n = self.granule_pages.min(len.div_ceil(self.page) - first);
        for p in first..first + n {
            self.set_bit(p);
        }
        if self.mprotect(first, n, libc::PROT_READ | libc::PROT_WRITE) {
            return true;
        }
        // Splitting the mapping failed (too many mappings): stop tracking until the next
        // take, which reports everything.
        self.disarm()
    }

    /// Chunk indices (of `chunk_size` bytes) written since the last take, sorted, then
    /// write-protects them again. The first take, and any after tracking had to give up,
    /// reports every chunk. `None` if `chunk_size` is not a multiple of the page size.
    pub(crate) fn take_dirty(&self, chunk_size: usize) -> Option<Vec<u64>> {
        if chunk_size == 0 || !chunk_size.is_multiple_of(self.page) {
            return None;
        }
        let len = self.len.load(Ordering::Acquire);
        let pages = len.div_ceil(self.page);
        let per_chunk = chunk_size / self.page;
        // A memory beyond the bitmap (not reachable by wasm32) is never tracked.
        let beyond = pages > self.bits.len() * 64;
        let blind = self.blind.swap(false, Ordering::AcqRel)
            || !self.armed.load(Ordering::Acquire)
            || beyond;
        let mut chunks = Vec::new();
        let mut ok = true;
        if blind {
            chunks.extend(0..len.div_ceil(chunk_size) as u64);
            for w in self.bits.iter() {
                w.store(0, Ordering::Relaxed);
            }
            if beyond {
                return Some(chunks);
            }
            ok = self.mprotect(0, pages, libc::PROT_READ);
        } else {
            let mut run: Option<(usize, usize)> = None;
            for (wi, w) in self.bits.iter().enumerate().take(pages.div_ceil(64)) {
                let mut v = w.swap(0, Ordering::Relaxed);
                while v != 0 {
                    let p = wi * 64 + v.trailing_zeros() as usize;
                    v &= v - 1;
                    let c = (p / per_chunk) as u64;
                    if chunks.last() != Some(&c) {
                        chunks.push(c);
                    }
                    run = match run {
                        Some((s, n)) if s + n == p => Some((s, n + 1)),
                        Some((s, n)) => {
                            ok &= self.mprotect(s, n, libc::PROT_READ);
                            Some((p, 1))
                        }
                        None => Some((p, 1)),
                    };
                }
            }
            if let Some((s, n)) = run {
                ok &= self.mprotect(s, n, libc::PROT_READ);
            }
        }
        if ok {
            self.armed.store(true, Ordering::Release);
        } else {
            warn_once("write-protect after a checkpoint");
            if !self.disarm() {
                tracing::error!("could not make linear memory writable again");
            }
        }
        Some(chunks)
    }

    /// Before host code outside a wasm call writes `[start, end)`: mark its pages dirty
    /// and make them writable.
    pub(crate) fn prepare_write(&self, start: usize, end: usize) {
        if !self.armed.load(Ordering::Acquire) || start >= end {
            return;
        }
        let end = end.min(self.len.load(Ordering::Acquire));
        if start >= end {
            return;
        }
        let first = start >> self.page_shift;
        let last = (end - 1) >> self.page_shift;
        let mut run: Option<(usize, usize)> = None;
        let mut ok = true;
        for p in first..=last {
            if self.bit(p) {
                continue;
            }
            self.set_bit(p);
            run = match run {
                Some((s, n)) if s + n == p => Some((s, n + 1)),
                Some((s, n)) => {
                    ok &= self.mprotect(s, n, libc::PROT_READ | libc::PROT_WRITE);
                    Some((p, 1))
                }
                None => Some((p, 1)),
            };
        }
        if let Some((s, n)) = run {
            ok &= self.mprotect(s, n, libc::PROT_READ | libc::PROT_WRITE);
        }
        if !ok {
            warn_once("un-protect before a host write");
            if !self.disarm() {
                tracing::error!("could not make linear memory writable");
            }
        }
    }

    /// The dirty bits of the pages covering `[start, end)`, if tracking is armed.
    pub(crate) fn save_bits(&self, start: usize, end: usize) -> Option<SavedBits> {
        if !self.armed.load(Ordering::Acquire) || start >= end {
            return None;
        }
        let first = start >> self.page_shift;
        let last = (end - 1) >> self.page_shift;
        Some(SavedBits {
            first_page: first,
            bits: (first..=last).map(|p| self.bit(p)).collect(),
        })
    }

    /// After a range saved with [`save_bits`](Self::save_bits) got its old bytes back
    /// (the Asyncify scratch area): pages that were clean then are clean again, and
    /// protected. Sound only if nothing else wrote those pages in between.
    pub(crate) fn restore_bits(&self, saved: &SavedBits) {
        if !self.armed.load(Ordering::Acquire) || self.blind.load(Ordering::Acquire) {
            return;
        }
        for (k, &was_dirty) in saved.bits.iter().enumerate() {
            let p = saved.first_page + k;
            if !was_dirty && self.bit(p) {
                // Protect first: a page left writable with its bit clear would let a
                // write go unseen. A failed protect leaves it dirty, which is safe.
                if self.mprotect(p, 1, libc::PROT_READ) {
                    self.clear_bit(p);
                }
            }
        }
    }
}

struct DirtyMemory {
    region: Arc<Region>,
}

// SAFETY: `as_ptr` is the base of a mapping that never moves and stays mapped while
// this value (and so the region) lives; `byte_size` bytes from it are accessible.
unsafe impl LinearMemory for DirtyMemory {
    fn byte_size(&self) -> usize {
        self.region.len.load(Ordering::Acquire)
    }

    fn byte_capacity(&self) -> usize {
        self.region.capacity
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        self.region.grow_to(new_size).map_err(wasmtime::Error::from)
    }

    fn as_ptr(&self) -> *mut u8 {
        self.region.base as *mut u8
    }
}

const WASI: &str = "wasi_snapshot_preview1";

/// Un-protects and marks the buffers an iovec array names (bounded like `wasi.rs`).
fn prepare_iovecs(caller: &mut Caller<'_, JobData>, iovs: i32, count: i32) {
    let (Some(region), Some(memory)) = (caller.data().dirty.clone(), caller.data().memory) else {
        return;
    };
    let data = memory.data(&*caller);
    let count = (count as u32).min(1024) as usize;
    let u32_at = |at: usize| -> Option<u32> {
        let b = data.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut ranges = Vec::with_capacity(count);
    for i in 0..count {
        let at = (iovs as u32 as usize).saturating_add(i * 8);
        let (Some(ptr), Some(len)) = (u32_at(at), u32_at(at.saturating_add(4))) else {
            break;
        };
        ranges.push((ptr as usize, ptr as usize + len as usize));
    }
    for (start, end) in ranges {
        region.prepare_write(start, end);
    }
}

/// Re-defines `fd_read` and `fd_pread` (already in `linker`) so that, on a tracked
/// memory, their buffers are un-protected and marked dirty before the kernel writes
/// into them (a protected buffer would make `read(2)` fail with EFAULT, not fault).
pub(crate) fn wrap_kernel_writers(
    linker: &mut Linker<JobData>,
    store: &mut Store<JobData>,
) -> wasmtime::Result<()> {
    let original = |linker: &Linker<JobData>, store: &mut Store<JobData>, name: &str| {
        linker
            .get(&mut *store, WASI, name)?
            .into_func()
            .ok_or_else(|| wasmtime::Error::msg(format!("{WASI}::{name} is not a function")))
    };
    let fd_read =
        original(linker, store, "fd_read")?.typed::<(i32, i32, i32, i32), i32>(&*store)?;
    let fd_pread =
        original(linker, store, "fd_pread")?.typed::<(i32, i32, i32, i64, i32), i32>(&*store)?;
    linker.allow_shadowing(true);
    linker.func_wrap(
        WASI,
        "fd_read",
        move |mut c: Caller<'_, JobData>, fd: i32, iovs: i32, n: i32, out: i32| {
            prepare_iovecs(&mut c, iovs, n);
            fd_read.call(&mut c, (fd, iovs, n, out))
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_pread",
        move |mut c: Caller<'_, JobData>, fd: i32, iovs: i32, n: i32, off: i64, out: i32| {
            prepare_iovecs(&mut c, iovs, n);
            fd_pread.call(&mut c, (fd, iovs, n, off, out))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
