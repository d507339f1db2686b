//! Post-copy restores: linear memory that fills itself on first touch.
//!
//! Pre-copy converges only when a job dirties memory more slowly than the link carries
//! it. Post-copy resumes the job at the destination before all of its memory is there:
//! the chunks not yet received are left out of the mapping, and a guest (or host) access
//! to one of them blocks the job's thread until the chunk arrives. Only that job waits;
//! the rest of the process runs on.
//!
//! The mechanism is Linux `userfaultfd(2)` in missing-page mode on the memory roam owns
//! anyway ([`crate::memory`]): the range of linear memory is registered, the pages of
//! missing chunks are dropped (`MADV_DONTNEED`), and a handler thread reads the fault
//! events. A fault in a missing chunk is reported once through the [`DemandFn`] the
//! shell gave (it fetches the chunk with priority); a fault anywhere else is a page that
//! is zero in the checkpoint (all-zero chunks never travel) and is filled with zeros at
//! once. [`LazyMemory::install`] copies a chunk in atomically (`UFFDIO_COPY`), which also
//! wakes every thread waiting on it. When the last chunk is in, the range is
//! unregistered and the thread ends.
//!
//! Failure (the source died with chunks not yet sent): [`LazyMemory::fail`] poisons the
//! job — its next host call traps and its next loop check stops it — and only then
//! releases the threads blocked on missing pages with zero pages. Nothing the job
//! computes from such a memory image can leave it (every effect is a host call), and it
//! never checkpoints: the node resumes the job from its newest replicated checkpoint
//! instead (see the README's failure model).
//!
//! Writes by the kernel into guest memory (`read(2)` into a buffer) wait for the page
//! like any other access: the descriptor is not opened in user-mode-only mode.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::job::PauseHandle;

/// Called (on the fault handler's thread) the first time the job touches a missing
/// chunk; the argument is the chunk's slot (offset ÷ chunk size). Must not block.
pub type DemandFn = Arc<dyn Fn(u64) + Send + Sync>;

/// Why a lazy restore could not be set up or fed.
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    #[error("userfaultfd is not available here ({0}); post-copy needs Linux with userfaultfd (root, or vm.unprivileged_userfaultfd = 1)")]
    Unavailable(std::io::Error),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("chunk {slot}: {len} bytes, but its slot holds {expected}")]
    Length {
        slot: u64,
        len: usize,
        expected: usize,
    },
    #[error("chunk size {chunk} is not a multiple of the host page ({page})")]
    ChunkSize { chunk: usize, page: usize },
}

// The userfaultfd ABI (linux/userfaultfd.h); the ioctl numbers are the same on every
// architecture roam builds for (generic `_IOC` encoding).
const UFFD_API: u64 = 0xAA;
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_AA01;
const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xC020_AA04;
const UFFDIO_WAKE: libc::c_ulong = 0x8010_AA02;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// `struct uffd_msg` for a page fault (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct UffdMsg {
    event: u8,
    _reserved1: u8,
    _reserved2: u16,
    _reserved3: u32,
    flags: u64,
    address: u64,
    _feat: u64,
}

/// # Safety
/// `arg` must point to the struct the request expects, valid for the call.
unsafe fn ioctl<T>(fd: RawFd, request: libc::c_ulong, arg: *mut T) -> std::io::Result<()> {
    // SAFETY: the caller passes the struct the request reads and writes.
    if unsafe { libc::ioctl(fd, request as _, arg) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A restored job's linear memory being filled chunk by chunk; see the module doc.
/// Cheap to clone: the shell holds one to install chunks, the job holds one.
#[derive(Clone)]
pub struct LazyMemory {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LazyMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyMemory")
            .field("len", &self.inner.len)
            .field("chunk", &self.inner.chunk)
            .field("remaining", &self.remaining())
            .finish()
    }
}

struct Inner {
    uffd: OwnedFd,
    /// eventfd that tells the handler thread to end.
    stop: OwnedFd,
    base: usize,
    len: usize,
    chunk: usize,
    page: usize,
    state: Mutex<State>,
    poisoned: Arc<AtomicBool>,
    kill: PauseHandle,
    demand_faults: AtomicU64,
    zero_faults: AtomicU64,
}

struct State {
    missing: BTreeSet<u64>,
    /// Missing slots already reported to the shell.
    demanded: BTreeSet<u64>,
    /// Unregistered: every slot is in (or the job failed).
    closed: bool,
}

impl LazyMemory {
    /// Makes the `len` bytes at `base` (a job's linear memory, page aligned) lazy: the
    /// `missing` slots of `chunk` bytes are dropped and filled on demand. `poisoned` is
    /// the flag the job's host calls check; `kill` stops the job.
    ///
    /// # Safety
    /// `base..base + len` must be a private anonymous mapping owned by the caller that
    /// stays mapped until [`LazyMemory::close`] is called, and nothing may rely on the
    /// contents of the missing slots until they are installed.
    pub(crate) unsafe fn start(
        base: usize,
        len: usize,
        chunk: usize,
        missing: BTreeSet<u64>,
        on_demand: DemandFn,
        poisoned: Arc<AtomicBool>,
        kill: PauseHandle,
    ) -> Result<LazyMemory, LazyError> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        if chunk == 0 || !chunk.is_multiple_of(page) || !len.is_multiple_of(page) {
            return Err(LazyError::ChunkSize { chunk, page });
        }
        let uffd = open_uffd()?;
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API takes a `struct uffdio_api`.
        unsafe { ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api) }.map_err(|source| {
            LazyError::Io {
                what: "UFFDIO_API",
                source,
            }
        })?;
        let missing: BTreeSet<u64> = missing
            .into_iter()
            .filter(|s| (*s as usize).saturating_mul(chunk) < len)
            .collect();
        // One madvise per run of adjacent missing slots (a whole memory when nothing
        // is present): a call per slot costs milliseconds at 256 MiB.
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for &slot in &missing {
            let (start, end) = slot_range(slot, chunk, len);
            match runs.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => runs.push((start, end)),
            }
        }
        for (start, end) in runs {
            // SAFETY: the range is inside the caller's mapping; dropping the pages makes
            // the next access fault (the caller allows it: see the contract).
            if unsafe {
                libc::madvise(
                    (base + start) as *mut libc::c_void,
                    end - start,
                    libc::MADV_DONTNEED,
                )
            } != 0
            {
                return Err(LazyError::Io {
                    what: "madvise(MADV_DONTNEED)",
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: base as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        if len > 0 {
            // SAFETY: UFFDIO_REGISTER takes a `struct uffdio_register`.
            unsafe { ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &mut reg) }.map_err(|source| {
                LazyError::Io {
                    what: "UFFDIO_REGISTER",
                    source,
                }
            })?;
        }
        // SAFETY: eventfd has no memory preconditions.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(LazyError::Io {
                what: "eventfd",
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: a fresh descriptor we own.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let closed = missing.is_empty();
        let lazy = LazyMemory {
            inner: Arc::new(Inner {
                uffd,
                stop,
                base,
                len,
                chunk,
                page,
                state: Mutex::new(State {
                    missing,
                    demanded: BTreeSet::new(),
                    closed: false,
                }),
                poisoned,
                kill,
                demand_faults: AtomicU64::new(0),
                zero_faults: AtomicU64::new(0),
            }),
        };
        if closed {
            lazy.inner.close(&mut lazy.inner.lock());
            return Ok(lazy);
        }
        let inner = lazy.inner.clone();
        std::thread::Builder::new()
            .name("roam-postcopy-faults".into())
            .spawn(move || inner.serve(on_demand))
            .map_err(|source| LazyError::Io {
                what: "spawning the fault handler",
                source,
            })?;
        Ok(lazy)
    }

    /// Copies chunk `slot` in and wakes whoever waits on it. `Ok(false)`: it was not
    /// missing (installed already, or the memory was closed).
    pub fn install(&self, slot: u64, data: &[u8]) -> Result<bool, LazyError> {
        let inner = &self.inner;
        let mut state = inner.lock();
        if state.closed || !state.missing.contains(&slot) {
            return Ok(false);
        }
        let (start, end) = slot_range(slot, inner.chunk, inner.len);
        if data.len() != end - start {
            return Err(LazyError::Length {
                slot,
                len: data.len(),
                expected: end - start,
            });
        }
        inner.copy(start, data)?;
        state.missing.remove(&slot);
        state.demanded.remove(&slot);
        if state.missing.is_empty() {
            inner.close(&mut state);
        }
        Ok(true)
    }

    /// Whether `slot` is still to be installed.
    pub fn is_missing(&self, slot: u64) -> bool {
        self.inner.lock().missing.contains(&slot)
    }

    /// Number of slots not in yet.
    pub fn remaining(&self) -> usize {
        self.inner.lock().missing.len()
    }

    /// Every slot is in (or the job failed and was released).
    pub fn is_complete(&self) -> bool {
        self.inner.lock().closed
    }

    /// True after [`fail`](Self::fail).
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::SeqCst)
    }

    /// Faults that waited for a chunk / faults filled with zeros at once.
    pub fn fault_counts(&self) -> (u64, u64) {
        (
            self.inner.demand_faults.load(Ordering::Relaxed),
            self.inner.zero_faults.load(Ordering::Relaxed),
        )
    }

    /// The chunks cannot all arrive: poison and kill the job, then release the threads
    /// waiting on missing pages (with zero pages, which the poisoned job cannot use: its
    /// next host call traps and its next check stops it). Idempotent.
    pub fn fail(&self) {
        let inner = &self.inner;
        inner.poisoned.store(true, Ordering::SeqCst);
        inner.kill.kill();
        let mut state = inner.lock();
        if state.closed {
            return;
        }
        let missing: Vec<u64> = state.missing.iter().copied().collect();
        for slot in missing {
            let (start, end) = slot_range(slot, inner.chunk, inner.len);
            let mut page = start;
            while page < end {
                inner.zero_page(inner.base + page);
                page += inner.page;
            }
        }
        state.missing.clear();
        inner.close(&mut state);
    }

    /// Ends lazy filling when the memory goes away (the job is dropped). A memory that
    /// is not complete is failed first, so nothing keeps running on it.
    pub(crate) fn close(&self) {
        if !self.is_complete() {
            self.fail();
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `UFFDIO_COPY` of `data` to `start` (offset in memory), retried on partial copies.
    /// One copy must lie inside one mapping, and dirty tracking splits memory into
    /// mappings at page boundaries (`mprotect`), so a chunk that spans two is copied a
    /// page at a time.
    fn copy(&self, start: usize, data: &[u8]) -> Result<(), LazyError> {
        let mut done = 0usize;
        let mut step = data.len();
        while done < data.len() {
            let len = step.min(data.len() - done);
            let mut c = UffdioCopy {
                dst: (self.base + start + done) as u64,
                src: data[done..].as_ptr() as u64,
                len: len as u64,
                mode: 0,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY takes a `struct uffdio_copy`; `src` is valid for `len`
            // bytes and `dst` inside the registered range.
            match unsafe { ioctl(self.uffd.as_raw_fd(), UFFDIO_COPY, &mut c) } {
                Ok(()) => done += len,
                // Partial copy (EAGAIN): go on from where it stopped.
                Err(_) if c.copy > 0 => done += c.copy as usize,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => std::thread::yield_now(),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && step > self.page => {
                    step = self.page;
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    // A page of the slot is present (cannot happen for a missing slot,
                    // whose pages were dropped and are never zero-filled): skip a page.
                    done = (done + self.page.min(len)).min(data.len());
                }
                Err(source) => {
                    return Err(LazyError::Io {
                        what: "UFFDIO_COPY",
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Maps the zero page at `addr` (page aligned) and wakes its waiters.
    fn zero_page(&self, addr: usize) {
        let mut z = UffdioZeropage {
            range: UffdioRange {
                start: addr as u64,
                len: self.page as u64,
            },
            mode: 0,
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE takes a `struct uffdio_zeropage` in the registered range.
        if let Err(e) = unsafe { ioctl(self.uffd.as_raw_fd(), UFFDIO_ZEROPAGE, &mut z) } {
            // EEXIST: the page is there already (a stale fault message); ENOENT: the
            // range was unregistered meanwhile (the last chunk just came in), which
            // wakes the thread by itself. Wake anyway.
            if !matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOENT)) {
                tracing::warn!(%e, "UFFDIO_ZEROPAGE failed");
            }
            let mut r = z.range;
            // SAFETY: UFFDIO_WAKE takes a `struct uffdio_range`.
            let _ = unsafe { ioctl(self.uffd.as_raw_fd(), UFFDIO_WAKE, &mut r) };
        }
    }

    /// Unregisters the range and stops the handler thread.
    fn close(&self, state: &mut State) {
        if state.closed {
            return;
        }
        state.closed = true;
        if self.len > 0 {
            let mut r = UffdioRange {
                start: self.base as u64,
                len: self.len as u64,
            };
            // SAFETY: UFFDIO_UNREGISTER takes a `struct uffdio_range`.
            if let Err(e) = unsafe { ioctl(self.uffd.as_raw_fd(), UFFDIO_UNREGISTER, &mut r) } {
                tracing::debug!(%e, "UFFDIO_UNREGISTER");
            }
        }
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
        let _ = unsafe {
            libc::write(
                self.stop.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// The fault handler thread: until closed, answers each page fault.
    fn serve(&self, on_demand: DemandFn) {
        let mut msgs = [UffdMsg::default(); 16];
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.uffd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::warn!(%e, "poll on userfaultfd failed; post-copy fault handler ends");
                return;
            }
            if fds[1].revents != 0 {
                return;
            }
            // SAFETY: reading into an array of plain 32-byte structs.
            let got = unsafe {
                libc::read(
                    self.uffd.as_raw_fd(),
                    msgs.as_mut_ptr().cast(),
                    std::mem::size_of_val(&msgs),
                )
            };
            if got <= 0 {
                continue;
            }
            let count = got as usize / std::mem::size_of::<UffdMsg>();
            for m in &msgs[..count] {
                if m.event != UFFD_EVENT_PAGEFAULT {
                    continue;
                }
                let addr = (m.address as usize) & !(self.page - 1);
                self.on_fault(addr, &on_demand);
            }
        }
    }

    fn on_fault(&self, addr: usize, on_demand: &DemandFn) {
        let offset = addr.wrapping_sub(self.base);
        let slot = (offset / self.chunk) as u64;
        let mut state = self.lock();
        if offset < self.len && state.missing.contains(&slot) {
            self.demand_faults.fetch_add(1, Ordering::Relaxed);
            let first = state.demanded.insert(slot);
            drop(state);
            if first {
                on_demand(slot);
            }
        } else {
            // Zero in the checkpoint (or a stale message): zeros now. Under the lock, so
            // an install of the same slot cannot race it.
            self.zero_faults.fetch_add(1, Ordering::Relaxed);
            self.zero_page(addr);
        }
    }
}

/// Byte range of `slot` in a memory of `len` bytes cut into `chunk`-byte slots.
fn slot_range(slot: u64, chunk: usize, len: usize) -> (usize, usize) {
    let start = (slot as usize).saturating_mul(chunk).min(len);
    (start, start.saturating_add(chunk).min(len))
}

fn open_uffd() -> Result<OwnedFd, LazyError> {
    // SAFETY: the syscall takes flags only.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd >= 0 {
        // SAFETY: a fresh descriptor we own.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    }
    Err(LazyError::Unavailable(std::io::Error::last_os_error()))
}

/// Whether this process can use userfaultfd (post-copy restores).
pub fn available() -> bool {
    open_uffd().is_ok()
}
