//! One running job: start, pause, capture, resume.
//!
//! Pausing works in two hops:
//! 1. [`PauseHandle::request`] (any thread) sets byte 0 of the job's one-page flag memory
//!    (added by the instrumentation, see [`crate::instrument`]).
//! 2. The guest's next yield check reads it and calls `roam.yield`, which starts an Asyncify unwind
//!    into a scratch area at the top of linear memory. When the entry function returns,
//!    the runner stops the unwind, copies the unwound stack out and puts the scratch
//!    bytes back, so linear memory is exactly what the guest had at the yield point.
//!
//! The scratch area is sized from a wasm backtrace (frames × per-function bound), so
//! deep recursion never overflows it. Resuming reverses this: the stack goes back into
//! the scratch area, an Asyncify rewind re-enters every frame, and `roam.yield` ends the
//! rewind and restores the scratch bytes before the guest runs on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::Mutex;

use wasmtime::{
    AsContextMut, Caller, Global, Instance, Linker, Memory, Store, StoreLimits, StoreLimitsBuilder,
    TypedFunc, Val, WasmBacktrace,
};

use crate::error::{HostError, SnapshotError};
use crate::host::{hex, Host, LoadedModule};
use crate::instrument::{
    ASYNCIFY_HEADER, FLAG_MEMORY, FLAG_POLL, FLAG_UNWIND, POLL_NAME, YIELD_MODULE, YIELD_NAME,
};
use crate::memory::{Region, SavedBits};
use crate::snapshot::{GlobalValue, Snapshot};
use crate::wasi::{self, FileImage, GuestExit, OutputSink, Preopen, WasiCtx, WasiState};

const ASYNCIFY_NORMAL: i32 = 0;
const ASYNCIFY_UNWINDING: i32 = 1;
const ASYNCIFY_REWINDING: i32 = 2;

/// Resource limits of one job.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Largest linear memory the job may grow to.
    pub memory_bytes: Option<u64>,
    /// Wall-clock time the job may spend running, summed over all its runs.
    pub cpu: Option<Duration>,
    /// Largest total size of files a snapshot may carry (default 1 GiB).
    pub snapshot_files_bytes: Option<u64>,
}

/// How to start a job.
pub struct JobSpec {
    /// argv, including argv[0].
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub preopens: Vec<Preopen>,
    pub stdin: Vec<u8>,
    /// Seed of the job's deterministic random stream.
    pub seed: [u8; 32],
    pub limits: Limits,
    /// Define imports roam does not know as functions returning zeros.
    pub allow_unknown_imports: bool,
}

impl JobSpec {
    pub fn new(args: Vec<String>) -> JobSpec {
        JobSpec {
            args,
            env: Vec::new(),
            preopens: Vec::new(),
            stdin: Vec::new(),
            seed: [0; 32],
            limits: Limits::default(),
            allow_unknown_imports: false,
        }
    }
}

/// How a call to [`Job::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    /// Stopped at a yield point after a pause request; capture or run again.
    Paused,
}

/// Why the poll byte was set.
const ABORT_CPU: u8 = 1;
const ABORT_KILL: u8 = 2;

/// The address of a job's flag memory, while the job is alive.
struct FlagSlot {
    ptr: Mutex<usize>,
}

impl FlagSlot {
    fn set(&self, index: usize, value: u8) -> bool {
        let Ok(ptr) = self.ptr.lock() else {
            return false;
        };
        if *ptr == 0 {
            return false;
        }
        // SAFETY: `ptr` is the base of the job's flag memory (one page that never grows),
        // valid until `Job::drop` zeroes it under this same lock. The guest reads these
        // bytes with plain loads; a byte store is atomic on every target wasmtime runs on.
        unsafe {
            (*((*ptr + index) as *const std::sync::atomic::AtomicU8)).store(value, Ordering::SeqCst)
        };
        true
    }
}

/// Requests a pause (or an abort) of a running job from any thread.
#[derive(Clone)]
pub struct PauseHandle {
    slot: Arc<FlagSlot>,
    requested: Arc<AtomicBool>,
}

impl PauseHandle {
    /// Asks the job to stop at its next yield point. Returns at once.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.slot.set(FLAG_UNWIND, 1);
    }
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
    /// Stops the job at its next check (loops included) with an error.
    pub fn kill(&self) {
        self.abort(ABORT_KILL);
    }
    fn abort(&self, reason: u8) {
        self.slot.set(FLAG_POLL, reason);
        self.slot.set(FLAG_UNWIND, 1);
    }
}

#[derive(Clone)]
struct Asyncify {
    start_unwind: TypedFunc<i32, ()>,
    stop_unwind: TypedFunc<(), ()>,
    start_rewind: TypedFunc<i32, ()>,
    stop_rewind: TypedFunc<(), ()>,
    get_state: TypedFunc<(), i32>,
}

/// Bytes of memory borrowed as the Asyncify data area, what they held before, and
/// their dirty bits before (put back with the bytes, so a pause dirties nothing).
struct Scratch {
    base: u32,
    saved: Vec<u8>,
    bits: Option<SavedBits>,
}

impl Scratch {
    /// Puts the guest's own bytes back over the scratch area, with the dirty bits they
    /// had, so that borrowing the area leaves no trace.
    fn put_back(self, memory: Memory, mut ctx: impl AsContextMut<Data = JobData>) {
        let base = self.base as usize;
        let end = base + self.saved.len();
        let dirty = ctx.as_context().data().dirty.clone();
        // Outside wasm no signal handler sees this write, so un-protect first.
        if let Some(r) = &dirty {
            r.prepare_write(base, end);
        }
        memory.data_mut(&mut ctx)[base..end].copy_from_slice(&self.saved);
        if let (Some(r), Some(bits)) = (&dirty, &self.bits) {
            r.restore_bits(bits);
        }
    }
}

/// Store data of a job.
pub struct JobData {
    pub(crate) wasi: WasiCtx,
    pub(crate) memory: Option<Memory>,
    limits: StoreLimits,
    pause: Arc<AtomicBool>,
    flags: Option<Memory>,
    asyncify: Option<Asyncify>,
    frame_bounds: Arc<Vec<u32>>,
    scratch: Option<Scratch>,
    /// The abort reason a check saw, if any.
    aborted: Option<u8>,
    /// Time the last pause request was seen by the yield point (for latency figures).
    pub(crate) pause_seen: Option<Instant>,
    /// The main memory's dirty tracking, when the host owns memory (see `memory.rs`).
    pub(crate) dirty: Option<Arc<Region>>,
    /// Set while memory is filled lazily (post-copy, see `lazy.rs`).
    lazy: Option<crate::lazy::LazyMemory>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Created, `_start` not called yet.
    Fresh,
    /// Unwound at a yield point; `stack` holds the frames.
    Paused,
    Exited(i32),
    Failed,
}

/// A job bound to one wasmtime store and instance.
pub struct Job {
    store: Store<JobData>,
    instance: Instance,
    module: Arc<LoadedModule>,
    entry: TypedFunc<(), ()>,
    state_globals: Vec<(String, Global)>,
    phase: Phase,
    stack: Vec<u8>,
    pause: PauseHandle,
    snapshot_files_limit: u64,
    cpu_limit: Option<Duration>,
    cpu_used: Duration,
    /// The checkpoint whose memory equals memory at the last dirty-set take: the only
    /// valid parent of an incremental checkpoint built from the next take.
    pub(crate) tracking_base: Option<store::ChunkId>,
}

impl Drop for Job {
    fn drop(&mut self) {
        // Before the memory is unmapped: stop filling it (failing an incomplete one).
        if let Some(lazy) = self.store.data_mut().lazy.take() {
            lazy.close();
        }
        if let Ok(mut p) = self.pause.slot.ptr.lock() {
            *p = 0;
        }
    }
}

impl Job {
    /// Instantiates `module` for a fresh run.
    pub fn start(
        host: &Host,
        module: Arc<LoadedModule>,
        spec: JobSpec,
        sink: Box<dyn OutputSink>,
    ) -> Result<Job, HostError> {
        let wasi = WasiCtx::new(
            spec.args,
            spec.env,
            spec.preopens,
            spec.stdin,
            spec.seed,
            sink,
        );
        Job::instantiate(host, module, wasi, &spec.limits, spec.allow_unknown_imports)
    }

    /// Rebuilds a paused job from a snapshot. `preopens` are this node's host directories;
    /// their guest names must match those in the snapshot.
    pub fn restore(
        host: &Host,
        module: Arc<LoadedModule>,
        snapshot: &Snapshot,
        preopens: Vec<Preopen>,
        limits: &Limits,
        sink: Box<dyn OutputSink>,
    ) -> Result<Job, HostError> {
        if snapshot.module_hash != module.hash {
            return Err(SnapshotError::ModuleMismatch {
                expected: hex(&snapshot.module_hash),
                found: hex(&module.hash),
            }
            .into());
        }
        let mut job = Job::restore_begin(
            host,
            module,
            snapshot.wasi.clone(),
            &snapshot.files,
            preopens,
            limits,
            sink,
        )?;
        job.write_state(snapshot)?;
        job.set_paused(snapshot.stack.clone());
        Ok(job)
    }

    /// First half of a restore: a fresh instance whose WASI state is `wasi`, with the
    /// files put back. Memory, globals and stack follow.
    pub(crate) fn restore_begin(
        host: &Host,
        module: Arc<LoadedModule>,
        wasi: WasiState,
        files: &[FileImage],
        preopens: Vec<Preopen>,
        limits: &Limits,
        sink: Box<dyn OutputSink>,
    ) -> Result<Job, HostError> {
        let mut job = Job::instantiate_for_restore(host, module, preopens, limits, sink)?;
        job.install_wasi(wasi, files)?;
        Ok(job)
    }

    /// A fresh instance to restore a job into, with a placeholder WASI state until
    /// [`Job::install_wasi`]: the instance can be built (and its memory filled) before
    /// the state it resumes with is known. Must not run before that.
    pub(crate) fn instantiate_for_restore(
        host: &Host,
        module: Arc<LoadedModule>,
        preopens: Vec<Preopen>,
        limits: &Limits,
        sink: Box<dyn OutputSink>,
    ) -> Result<Job, HostError> {
        let placeholder = WasiCtx::new(Vec::new(), Vec::new(), preopens, Vec::new(), [0; 32], sink);
        Job::instantiate(host, module, placeholder, limits, true)
    }

    /// Gives a job made by [`Job::instantiate_for_restore`] its captured WASI state and
    /// puts the files it touched back into this node's preopens, whose guest names must
    /// match the captured ones.
    pub(crate) fn install_wasi(
        &mut self,
        wasi: WasiState,
        files: &[FileImage],
    ) -> Result<(), HostError> {
        let ctx = &mut self.store.data_mut().wasi;
        let names: Vec<&str> = ctx.preopens.iter().map(|p| p.guest.as_str()).collect();
        let wanted: Vec<&str> = wasi.preopen_names.iter().map(String::as_str).collect();
        if names != wanted {
            return Err(HostError::Config(format!(
                "snapshot was taken with preopens {wanted:?}, but {names:?} were given"
            )));
        }
        ctx.restore_files(files)?;
        ctx.set_state(wasi);
        Ok(())
    }

    /// Last step of a restore: the job is paused with `stack` as its unwound frames.
    pub(crate) fn set_paused(&mut self, stack: Vec<u8>) {
        self.stack = stack;
        self.phase = Phase::Paused;
    }

    fn instantiate(
        host: &Host,
        module: Arc<LoadedModule>,
        wasi: WasiCtx,
        limits: &Limits,
        allow_unknown_imports: bool,
    ) -> Result<Job, HostError> {
        let engine = &host.engine;
        let pause_flag = Arc::new(AtomicBool::new(false));
        let mut store_limits = StoreLimitsBuilder::new();
        if let Some(m) = limits.memory_bytes {
            store_limits = store_limits.memory_size(usize::try_from(m).unwrap_or(usize::MAX));
        }
        let data = JobData {
            wasi,
            memory: None,
            limits: store_limits.build(),
            pause: pause_flag.clone(),
            flags: None,
            asyncify: None,
            frame_bounds: Arc::new(
                module
                    .instrumented
                    .as_ref()
                    .map(|i| i.frame_bounds.clone())
                    .unwrap_or_default(),
            ),
            scratch: None,
            aborted: None,
            pause_seen: None,
            dirty: None,
            lazy: None,
        };
        let mut store = Store::new(engine, data);
        store.limiter(|d| &mut d.limits);

        let mut linker: Linker<JobData> = Linker::new(engine);
        wasi::add_to_linker(&mut linker).map_err(|e| HostError::Engine(e.to_string()))?;
        if host.dirty.is_some() {
            crate::memory::wrap_kernel_writers(&mut linker, &mut store)
                .map_err(|e| HostError::Engine(e.to_string()))?;
        }
        linker
            .func_wrap(YIELD_MODULE, YIELD_NAME, yield_point)
            .map_err(|e| HostError::Engine(e.to_string()))?;
        linker
            .func_wrap(YIELD_MODULE, POLL_NAME, poll_point)
            .map_err(|e| HostError::Engine(e.to_string()))?;
        let unknown: Vec<String> = module
            .module
            .imports()
            .filter(|i| linker.get_by_import(&mut store, i).is_none())
            .map(|i| format!("{}::{}", i.module(), i.name()))
            .collect();
        if !unknown.is_empty() {
            if !allow_unknown_imports {
                return Err(HostError::UnknownImports(unknown.join(", ")));
            }
            tracing::warn!(imports = %unknown.join(", "), "stubbing unknown imports with zeros");
            linker
                .define_unknown_imports_as_default_values(&mut store, &module.module)
                .map_err(|e| HostError::Engine(e.to_string()))?;
        }
        let instance = linker
            .instantiate(&mut store, &module.module)
            .map_err(|e| trap_error(&store, e))?;
        let entry = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .map_err(|_| {
                HostError::InvalidModule(
                    "module exports no `_start: [] -> []` (not a WASI command)".into(),
                )
            })?;

        let mut state_globals = Vec::new();
        let memory_name = match &module.instrumented {
            Some(info) => {
                for name in &info.state_globals {
                    let g = instance.get_global(&mut store, name).ok_or_else(|| {
                        HostError::InvalidModule(format!("global export `{name}` missing"))
                    })?;
                    state_globals.push((name.clone(), g));
                }
                let asyncify = Asyncify {
                    start_unwind: typed_export(&instance, &mut store, "asyncify_start_unwind")?,
                    stop_unwind: typed_export(&instance, &mut store, "asyncify_stop_unwind")?,
                    start_rewind: typed_export(&instance, &mut store, "asyncify_start_rewind")?,
                    stop_rewind: typed_export(&instance, &mut store, "asyncify_stop_rewind")?,
                    get_state: typed_export(&instance, &mut store, "asyncify_get_state")?,
                };
                let flags = instance
                    .get_memory(&mut store, FLAG_MEMORY)
                    .ok_or_else(|| {
                        HostError::InvalidModule(format!("export `{FLAG_MEMORY}` missing"))
                    })?;
                let data = store.data_mut();
                data.asyncify = Some(asyncify);
                data.flags = Some(flags);
                info.memory_export.clone()
            }
            None => "memory".to_string(),
        };
        let memory = instance
            .get_memory(&mut store, &memory_name)
            .ok_or_else(|| HostError::InvalidModule("module exports no memory".into()))?;
        store.data_mut().memory = Some(memory);
        // The main memory is found by its base address; other memories (the flag
        // memory) are never armed, so never write-protected.
        let region = host
            .dirty
            .as_ref()
            .and_then(|c| c.region_at(memory.data_ptr(&store)));
        #[cfg(unix)]
        if let Some(region) = &region {
            use wasmtime::unix::StoreExt;
            let r = region.clone();
            // SAFETY: `on_fault` is async-signal-safe: atomics and mprotect only.
            unsafe { store.set_signal_handler(move |signum, info, _| r.on_fault(signum, info)) };
        }
        store.data_mut().dirty = region;
        let flag_ptr = store
            .data()
            .flags
            .map(|m| m.data_ptr(&store) as usize)
            .unwrap_or(0);
        let pause = PauseHandle {
            slot: Arc::new(FlagSlot {
                ptr: Mutex::new(flag_ptr),
            }),
            requested: pause_flag,
        };
        Ok(Job {
            store,
            instance,
            module,
            entry,
            state_globals,
            phase: Phase::Fresh,
            stack: Vec::new(),
            pause,
            snapshot_files_limit: limits.snapshot_files_bytes.unwrap_or(1 << 30),
            cpu_limit: limits.cpu,
            cpu_used: Duration::ZERO,
            tracking_base: None,
        })
    }

    /// A handle to request a pause from another thread.
    pub fn pause_handle(&self) -> PauseHandle {
        self.pause.clone()
    }

    /// The module this job runs.
    pub fn module(&self) -> &Arc<LoadedModule> {
        &self.module
    }

    /// Bytes of linear memory.
    pub fn memory_len(&self) -> usize {
        self.store
            .data()
            .memory
            .map(|m| m.data_size(&self.store))
            .unwrap_or(0)
    }

    /// Runs until the job exits or pauses. A paused job resumes where it stopped.
    pub fn run(&mut self) -> Result<Outcome, HostError> {
        match self.phase {
            Phase::Fresh => {}
            Phase::Paused => self.begin_rewind()?,
            Phase::Exited(code) => return Ok(Outcome::Exited(code)),
            Phase::Failed => return Err(HostError::State("job failed earlier")),
        }
        let watchdog = self.cpu_limit.map(|limit| {
            let left = limit.saturating_sub(self.cpu_used);
            let handle = self.pause.clone();
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(left) {
                    handle.abort(ABORT_CPU);
                }
            });
            (tx, thread)
        });
        let started = Instant::now();
        let result = self.entry.call(&mut self.store, ());
        self.cpu_used += started.elapsed();
        if let Some((tx, thread)) = watchdog {
            drop(tx);
            let _ = thread.join();
        }
        match result {
            Ok(()) => {
                let unwinding = match self.store.data().asyncify.clone() {
                    Some(a) => {
                        a.get_state
                            .call(&mut self.store, ())
                            .map_err(|e| trap_error(&self.store, e))?
                            == ASYNCIFY_UNWINDING
                    }
                    None => false,
                };
                if unwinding {
                    self.finish_unwind()?;
                    self.phase = Phase::Paused;
                    Ok(Outcome::Paused)
                } else {
                    self.phase = Phase::Exited(0);
                    Ok(Outcome::Exited(0))
                }
            }
            Err(e) => {
                if let Some(exit) = e.downcast_ref::<GuestExit>() {
                    self.phase = Phase::Exited(exit.0);
                    return Ok(Outcome::Exited(exit.0));
                }
                self.phase = Phase::Failed;
                Err(trap_error(&self.store, e))
            }
        }
    }

    /// The Asyncify entry points (only instrumented modules have them).
    fn asyncify(&self) -> Result<Asyncify, HostError> {
        self.store
            .data()
            .asyncify
            .clone()
            .ok_or(HostError::State("not instrumented"))
    }

    /// After the entry function returned while unwinding: end the unwind, take the
    /// frames out of the scratch area and put the guest's bytes back.
    fn finish_unwind(&mut self) -> Result<(), HostError> {
        let asyncify = self.asyncify()?;
        asyncify
            .stop_unwind
            .call(&mut self.store, ())
            .map_err(|e| trap_error(&self.store, e))?;
        let scratch = self
            .store
            .data_mut()
            .scratch
            .take()
            .ok_or(HostError::State("unwind without scratch area"))?;
        let memory = self.memory()?;
        let data = memory.data_mut(&mut self.store);
        let base = scratch.base as usize;
        let current = u32::from_le_bytes(
            data.get(base..base + 4)
                .and_then(|b| b.try_into().ok())
                .ok_or(HostError::State("scratch area out of bounds"))?,
        ) as usize;
        let start = base + ASYNCIFY_HEADER as usize;
        if current < start || current > base + scratch.saved.len() {
            return Err(HostError::Trap(format!(
                "unwound stack pointer {current} outside scratch area {start}..{}",
                base + scratch.saved.len()
            )));
        }
        self.stack = data[start..current].to_vec();
        scratch.put_back(memory, &mut self.store);
        self.pause.requested.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Puts the saved frames into a scratch area and starts an Asyncify rewind.
    fn begin_rewind(&mut self) -> Result<(), HostError> {
        let asyncify = self.asyncify()?;
        let memory = self.memory()?;
        let mem_len = memory.data_size(&self.store) as u64;
        let need = u64::from(ASYNCIFY_HEADER) + self.stack.len() as u64;
        if need > mem_len {
            return Err(HostError::Trap(format!(
                "unwound stack of {} bytes does not fit in {} bytes of memory",
                self.stack.len(),
                mem_len
            )));
        }
        let base = ((mem_len - need) & !7) as usize;
        let end = mem_len as usize;
        // Outside wasm: no signal handler sees these writes, so un-protect first.
        let bits = self.store.data().dirty.as_ref().and_then(|r| {
            let bits = r.save_bits(base, end);
            r.prepare_write(base, end);
            bits
        });
        let data = memory.data_mut(&mut self.store);
        let saved = data[base..end].to_vec();
        let start = base + ASYNCIFY_HEADER as usize;
        let current = start + self.stack.len();
        data[base..base + 4].copy_from_slice(&(current as u32).to_le_bytes());
        data[base + 4..base + 8].copy_from_slice(&asyncify_end(end).to_le_bytes());
        data[start..current].copy_from_slice(&self.stack);
        self.store.data_mut().scratch = Some(Scratch {
            base: base as u32,
            saved,
            bits,
        });
        asyncify
            .start_rewind
            .call(&mut self.store, base as i32)
            .map_err(|e| trap_error(&self.store, e))?;
        self.phase = Phase::Fresh;
        Ok(())
    }

    fn memory(&self) -> Result<Memory, HostError> {
        self.store
            .data()
            .memory
            .ok_or(HostError::State("job has no memory"))
    }

    /// Makes the `missing` slots (of `chunk_size` bytes) of linear memory lazy: their
    /// bytes are dropped, and the first access to one blocks the job until the chunk is
    /// installed through the returned handle; `on_demand` hears of each such slot once.
    /// From now on every host call of the job checks the handle's poison flag, so a job
    /// whose memory could not be completed ([`LazyMemory::fail`]) has no further effect.
    /// See [`crate::lazy`]. Call it on a paused job, before it runs.
    ///
    /// [`LazyMemory::fail`]: crate::lazy::LazyMemory::fail
    pub fn make_lazy(
        &mut self,
        missing: std::collections::BTreeSet<u64>,
        chunk_size: u32,
        on_demand: crate::lazy::DemandFn,
    ) -> Result<crate::lazy::LazyMemory, crate::lazy::LazyError> {
        if self.store.data().lazy.is_some() {
            return Err(crate::lazy::LazyError::Io {
                what: "making memory lazy",
                source: std::io::Error::other("it is lazy already"),
            });
        }
        let memory = self.memory().map_err(|e| crate::lazy::LazyError::Io {
            what: "making memory lazy",
            source: std::io::Error::other(e.to_string()),
        })?;
        let base = memory.data_ptr(&self.store) as usize;
        let len = memory.data_size(&self.store);
        let poisoned = Arc::new(AtomicBool::new(false));
        // SAFETY: the job's main memory is a private anonymous mapping the host owns
        // (`memory.rs`), mapped until the store drops, and `Job::drop` closes the lazy
        // memory before that. The job is paused: nothing reads the dropped slots until
        // they are installed (or the job is poisoned).
        let lazy = unsafe {
            crate::lazy::LazyMemory::start(
                base,
                len,
                chunk_size as usize,
                missing,
                on_demand,
                poisoned.clone(),
                self.pause.clone(),
            )?
        };
        self.store.call_hook(move |_, hook| {
            if matches!(hook, wasmtime::CallHook::CallingHost) && poisoned.load(Ordering::SeqCst) {
                return Err(wasmtime::Error::msg(
                    "the job's memory could not be completed after its move (post-copy failed)",
                ));
            }
            Ok(())
        });
        self.store.data_mut().lazy = Some(lazy.clone());
        Ok(lazy)
    }

    /// Captures the state of a paused job. The job stays paused and can run on.
    pub fn capture(&mut self) -> Result<Snapshot, HostError> {
        let (globals, wasi, files) = self.capture_state()?;
        let memory = self.memory()?;
        Ok(Snapshot {
            module_hash: self.module.hash,
            module: None,
            memory: memory.data(&self.store).to_vec(),
            globals,
            stack: self.stack.clone(),
            wasi,
            files,
        })
    }

    /// Everything of a paused job's state but memory and stack: globals, WASI state
    /// (clocks frozen) and the files it touched.
    #[allow(clippy::type_complexity)]
    pub(crate) fn capture_state(
        &mut self,
    ) -> Result<(Vec<(String, GlobalValue)>, WasiState, Vec<FileImage>), HostError> {
        if self.phase != Phase::Paused {
            return Err(HostError::State("capture needs a paused job"));
        }
        let mut globals = Vec::with_capacity(self.state_globals.len());
        for (name, g) in &self.state_globals {
            let v = match g.get(&mut self.store) {
                Val::I32(v) => GlobalValue::I32(v),
                Val::I64(v) => GlobalValue::I64(v),
                Val::F32(v) => GlobalValue::F32(v),
                Val::F64(v) => GlobalValue::F64(v),
                Val::V128(v) => GlobalValue::V128(v.as_u128()),
                _ => {
                    return Err(HostError::InvalidModule(format!(
                        "global `{name}` holds a reference; roam cannot capture it"
                    )))
                }
            };
            globals.push((name.clone(), v));
        }
        self.store.data_mut().wasi.freeze_clocks();
        let files = self
            .store
            .data()
            .wasi
            .capture_files(self.snapshot_files_limit)?;
        Ok((globals, self.store.data().wasi.state.clone(), files))
    }

    /// The unwound stack of a paused job.
    pub(crate) fn stack(&self) -> &[u8] {
        &self.stack
    }

    /// Writes memory and globals of a snapshot into this (fresh) instance.
    fn write_state(&mut self, snap: &Snapshot) -> Result<(), HostError> {
        self.resize_memory(snap.memory.len() as u64)?
            .copy_from_slice(&snap.memory);
        self.set_globals(&snap.globals)
    }

    /// Grows a fresh instance's memory to `want` bytes (never shrinks) and returns it
    /// for writing (un-protected).
    pub(crate) fn resize_memory(&mut self, want: u64) -> Result<&mut [u8], HostError> {
        self.grow_memory(want)?;
        let len = self.memory_len();
        self.memory_for_write(0, len)
    }

    /// Grows a job's memory to `want` bytes, which must be whole Wasm pages and no
    /// fewer than it has. New bytes are zero.
    pub(crate) fn grow_memory(&mut self, want: u64) -> Result<(), HostError> {
        let memory = self.memory()?;
        let have = memory.data_size(&self.store) as u64;
        if want < have || !want.is_multiple_of(crate::snapshot::CHUNK as u64) {
            return Err(SnapshotError::Bounds {
                field: "memory",
                detail: format!(
                    "{want} bytes: not whole 64 KiB pages, or less than the module's initial {have}"
                ),
            }
            .into());
        }
        if want > have {
            let pages = (want - have) / crate::snapshot::CHUNK as u64;
            memory
                .grow(&mut self.store, pages)
                .map_err(|e| HostError::MemoryLimit(want).with_context(e))?;
        }
        Ok(())
    }

    /// Bytes `start..end` of memory for host code outside any wasm call to write:
    /// their pages are marked dirty and un-protected first (see [`crate::memory`]).
    pub(crate) fn memory_for_write(
        &mut self,
        start: usize,
        end: usize,
    ) -> Result<&mut [u8], HostError> {
        let memory = self.memory()?;
        if let Some(r) = &self.store.data().dirty {
            r.prepare_write(start, end);
        }
        memory
            .data_mut(&mut self.store)
            .get_mut(start..end)
            .ok_or(HostError::State("write outside linear memory"))
    }

    /// Sets every captured mutable global; the set must match the module's exactly.
    pub(crate) fn set_globals(
        &mut self,
        globals: &[(String, GlobalValue)],
    ) -> Result<(), HostError> {
        for (name, value) in globals {
            let g = self
                .state_globals
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, g)| *g)
                .ok_or_else(|| SnapshotError::Bounds {
                    field: "globals",
                    detail: format!("module has no global `{name}`"),
                })?;
            let v = match *value {
                GlobalValue::I32(v) => Val::I32(v),
                GlobalValue::I64(v) => Val::I64(v),
                GlobalValue::F32(v) => Val::F32(v),
                GlobalValue::F64(v) => Val::F64(v),
                GlobalValue::V128(v) => Val::V128(v.into()),
            };
            g.set(&mut self.store, v).map_err(|e| {
                HostError::from(SnapshotError::Bounds {
                    field: "globals",
                    detail: format!("`{name}`: {e}"),
                })
            })?;
        }
        if globals.len() != self.state_globals.len() {
            return Err(SnapshotError::Bounds {
                field: "globals",
                detail: format!(
                    "snapshot has {} globals, module {}",
                    globals.len(),
                    self.state_globals.len()
                ),
            }
            .into());
        }
        Ok(())
    }

    /// The WASI state (output offsets etc.).
    pub fn wasi_state(&self) -> &crate::wasi::WasiState {
        &self.store.data().wasi.state
    }

    /// Linear memory as it is now (read-only; a paused job's memory is its state).
    pub fn memory_data(&self) -> &[u8] {
        match self.store.data().memory {
            Some(m) => m.data(&self.store),
            None => &[],
        }
    }

    /// Whether the job is paused (can be captured, checkpointed or run on).
    pub fn is_paused(&self) -> bool {
        self.phase == Phase::Paused
    }

    /// Whether writes to this job's memory are tracked (see [`crate::memory`]).
    pub fn dirty_tracking(&self) -> bool {
        self.store.data().dirty.is_some()
    }

    /// Indices of the `chunk_size`-byte chunks of memory written since the last call
    /// (the first call: every chunk), sorted; the pages are write-protected again so the
    /// next call sees only new writes. `None` when tracking is unavailable (host
    /// without it, or a `chunk_size` that is not a multiple of the host page size):
    /// hash every chunk instead. Calling this detaches the job from its last
    /// checkpoint, so the next [`Job::checkpoint`] hashes everything.
    pub fn take_dirty_chunks(&mut self, chunk_size: u32) -> Option<Vec<u64>> {
        self.tracking_base = None;
        self.take_dirty_raw(chunk_size)
    }

    pub(crate) fn take_dirty_raw(&mut self, chunk_size: u32) -> Option<Vec<u64>> {
        self.store
            .data()
            .dirty
            .as_ref()?
            .take_dirty(chunk_size as usize)
    }

    /// Exported instance, for tests and tools.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// When the yield point saw the last pause request.
    pub fn pause_seen_at(&self) -> Option<Instant> {
        self.store.data().pause_seen
    }
}

impl HostError {
    fn with_context(self, e: wasmtime::Error) -> HostError {
        match self {
            HostError::MemoryLimit(n) => {
                tracing::debug!(error = %e, "memory grow failed");
                HostError::MemoryLimit(n)
            }
            other => other,
        }
    }
}

/// An exported function of the instrumented module with the signature roam expects.
fn typed_export<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
    instance: &Instance,
    store: &mut Store<JobData>,
    name: &str,
) -> Result<TypedFunc<P, R>, HostError> {
    instance
        .get_typed_func::<P, R>(&mut *store, name)
        .map_err(|e| HostError::InvalidModule(format!("export `{name}`: {e}")))
}

fn trap_error(store: &Store<JobData>, e: wasmtime::Error) -> HostError {
    match store.data().aborted {
        Some(ABORT_CPU) => HostError::CpuLimit,
        Some(_) => HostError::Killed,
        None => HostError::Trap(format!("{e:#}")),
    }
}

/// Turns a set abort byte into a trap; records why.
fn check_abort(caller: &mut Caller<'_, JobData>) -> wasmtime::Result<()> {
    let Some(flags) = caller.data().flags else {
        return Ok(());
    };
    let reason = flags.data(&*caller)[FLAG_POLL];
    if reason != 0 {
        caller.data_mut().aborted = Some(reason);
        return Err(wasmtime::Error::msg(if reason == ABORT_CPU {
            "CPU limit exceeded"
        } else {
            "job killed"
        }));
    }
    Ok(())
}

/// The `roam.poll` import, called from call-free loops when the poll byte is set.
fn poll_point(mut caller: Caller<'_, JobData>) -> wasmtime::Result<()> {
    check_abort(&mut caller)
}

/// The `roam.yield` import: starts an unwind when a pause was requested, and ends a
/// rewind when the job is being resumed.
fn yield_point(mut caller: Caller<'_, JobData>) -> wasmtime::Result<()> {
    let Some(asyncify) = caller.data().asyncify.clone() else {
        return Ok(());
    };
    let Some(memory) = caller.data().memory else {
        return Ok(());
    };
    let state = asyncify.get_state.call(&mut caller, ())?;
    if state == ASYNCIFY_REWINDING {
        asyncify.stop_rewind.call(&mut caller, ())?;
        if let Some(scratch) = caller.data_mut().scratch.take() {
            scratch.put_back(memory, &mut caller);
        }
        return Ok(());
    }
    if state != ASYNCIFY_NORMAL {
        return Err(wasmtime::Error::msg("roam.yield called while unwinding"));
    }
    check_abort(&mut caller)?;
    if let Some(flags) = caller.data().flags {
        flags.data_mut(&mut caller)[FLAG_UNWIND] = 0;
    }
    if !caller.data().pause.load(Ordering::SeqCst) {
        return Ok(());
    }
    caller.data_mut().pause_seen = Some(Instant::now());
    // Size the scratch area from the frames actually on the stack.
    let bounds = caller.data().frame_bounds.clone();
    let trace = WasmBacktrace::force_capture(&caller);
    let mut need = u64::from(ASYNCIFY_HEADER) + 64;
    for frame in trace.frames() {
        need += u64::from(
            bounds
                .get(frame.func_index() as usize)
                .copied()
                .unwrap_or(1024),
        );
    }
    let mem_len = memory.data_size(&caller) as u64;
    if need > mem_len {
        return Err(wasmtime::Error::msg(format!(
            "call stack needs {need} bytes to unwind, more than the {mem_len} bytes of memory"
        )));
    }
    let base = ((mem_len - need) & !7) as usize;
    let end = mem_len as usize;
    // The unwind writes the scratch area; its bytes and dirty bits are put back when it ends.
    let bits = caller.data().dirty.as_ref().and_then(|r| {
        let bits = r.save_bits(base, end);
        r.prepare_write(base, end);
        bits
    });
    let data = memory.data_mut(&mut caller);
    let saved = data[base..end].to_vec();
    data[base..base + 4].copy_from_slice(&((base + ASYNCIFY_HEADER as usize) as u32).to_le_bytes());
    data[base + 4..base + 8].copy_from_slice(&asyncify_end(end).to_le_bytes());
    caller.data_mut().scratch = Some(Scratch {
        base: base as u32,
        saved,
        bits,
    });
    asyncify.start_unwind.call(&mut caller, base as i32)?;
    Ok(())
}

/// The Asyncify data end pointer for a scratch area ending at `end`: a wasm32 address, so
/// a full 4 GiB memory ends at the last representable one.
fn asyncify_end(end: usize) -> u32 {
    u32::try_from(end).unwrap_or(u32::MAX)
}
