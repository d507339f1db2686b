//! The engine of one process (or node) and its module cache.
//!
//! Instrumenting and compiling a module costs hundreds of milliseconds to seconds, so both
//! results are cached: the instrumented bytes by (hash of the original bytes, instrumenter
//! version, Binaryen version), the compiled code by (hash of the instrumented bytes, engine
//! fingerprint). The fingerprint names the target triple this build runs on
//! ([`TARGET_TRIPLE`]) and hashes it with wasmtime's compatibility hash (the compiler's
//! triple, its flags and ISA features, tunables, wasm features, wasmtime's version), so a
//! node never loads code compiled for another target or CPU feature set: it recompiles
//! from the `.wasm` bytes, which are always kept. An x86_64 and an aarch64 node may share
//! a cache directory; each finds only its own entries (wasmtime also refuses a foreign
//! entry on load, which then costs a recompile, not a crash).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use wasmtime::{Config, Engine, Module};

use crate::error::HostError;
use crate::instrument::{self, InstrumentOptions, InstrumentStats, Instrumented};
use crate::memory::DirtyCreator;

/// A blake3 digest naming a module or a chunk.
pub type Hash32 = [u8; 32];

/// The target triple this crate was built for (cargo's `TARGET`, by `build.rs`), e.g.
/// `x86_64-unknown-linux-gnu` or `aarch64-unknown-linux-gnu`.
pub const TARGET_TRIPLE: &str = env!("ROAM_TARGET_TRIPLE");

/// Lower-case hex of a hash.
pub fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a [`Host`] is set up.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where instrumented and compiled modules are cached on disk (None: memory only).
    pub cache_dir: Option<PathBuf>,
    pub instrument: InstrumentOptions,
    /// Runs instrumented, pausable jobs. `false` runs modules exactly as given (for
    /// baselines): they cannot be paused, killed or limited in time.
    pub pausable: bool,
    /// Native stack available to wasm (deep recursion needs more than wasmtime's 512 KiB).
    pub max_wasm_stack: usize,
    /// Track written pages of pausable jobs (host-owned, write-protected memory; see
    /// [`crate::memory`]) so incremental checkpoints hash only what changed. Default on;
    /// `ROAM_DIRTY_TRACKING=0` turns it off (checkpoints then hash every chunk).
    pub dirty_tracking: bool,
    /// Bytes made writable and marked dirty together on a write fault (a power of two,
    /// at least a host page; default 64 KiB). Smaller: exacter dirty sets for small
    /// chunk sizes; larger: fewer faults for guests that stream through memory.
    pub dirty_granule: usize,
    /// Canonicalise NaNs produced by float arithmetic (wasmtime's
    /// `cranelift_nan_canonicalization`). Wasm lets an operation that makes a NaN pick its
    /// sign and payload, and hardware differs: 0.0/0.0 is 0xfff8… on x86_64 and 0x7ff8… on
    /// aarch64. A job that moves between them and looks at those bits (a checksum over
    /// float bits, a sign test of a NaN) would see the difference; with this on, every
    /// host makes the same canonical NaN. Off by default: it made autopilot 2.2x and
    /// tracker 1.6x slower. `ROAM_CANONICAL_NANS=1` turns it on; a mixed swarm whose
    /// guests inspect NaN bits turns it on on every node (it is part of the fingerprint).
    pub canonical_nans: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            cache_dir: default_cache_dir(),
            instrument: InstrumentOptions::default(),
            pausable: true,
            max_wasm_stack: 2 << 20,
            dirty_tracking: std::env::var_os("ROAM_DIRTY_TRACKING").is_none_or(|v| v != "0"),
            dirty_granule: 64 << 10,
            canonical_nans: std::env::var_os("ROAM_CANONICAL_NANS").is_some_and(|v| v == "1"),
        }
    }
}

/// `$ROAM_CACHE_DIR`, else `$XDG_CACHE_HOME/roam`, else `~/.cache/roam`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("ROAM_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("roam"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("roam"))
}

/// Stack size for threads that run jobs: room for `max_wasm_stack` plus host frames.
pub const JOB_THREAD_STACK: usize = 32 << 20;

/// A module compiled for this engine, with what the runner needs to drive it.
pub struct LoadedModule {
    /// blake3 of the bytes the job runs (the instrumented bytes when pausable). Snapshots
    /// are tied to this hash.
    pub hash: Hash32,
    /// The bytes the job runs; a node that receives a job receives these.
    pub bytes: Arc<Vec<u8>>,
    pub module: Module,
    /// None for plain (non-pausable) modules.
    pub instrumented: Option<Instrumented>,
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("hash", &hex(&self.hash))
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// One wasmtime engine plus caches. Cheap to share (`Arc`) between threads.
pub struct Host {
    pub(crate) engine: Engine,
    pub(crate) config: HostConfig,
    /// Owner of every linear memory when dirty tracking is on.
    pub(crate) dirty: Option<Arc<DirtyCreator>>,
    fingerprint: String,
    loaded: Mutex<HashMap<Hash32, Arc<LoadedModule>>>,
    instrumented_by_original: Mutex<HashMap<Hash32, Hash32>>,
    /// `wasm-opt --version`, asked once per host (it is part of the cache key).
    wasm_opt_version: std::sync::OnceLock<String>,
}

struct Blake3Hasher(blake3::Hasher);
impl Hasher for Blake3Hasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl Host {
    pub fn new(config: HostConfig) -> Result<Arc<Host>, HostError> {
        let mut c = Config::new();
        c.max_wasm_stack(config.max_wasm_stack)
            // Enough for any stack within max_wasm_stack (a frame is at least 16 bytes);
            // the backtrace sizes the unwind area, and allocates this many slots.
            .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(1 << 17))
            .wasm_multi_value(true)
            .wasm_bulk_memory(true)
            .wasm_simd(true)
            // Relaxed-SIMD results may differ between x86_64 and aarch64; a job that moves
            // between them must compute the same bytes on both.
            .relaxed_simd_deterministic(true)
            .cranelift_nan_canonicalization(config.canonical_nans)
            .wasm_multi_memory(true);
        let dirty = if config.pausable && config.dirty_tracking {
            let creator = DirtyCreator::new(config.dirty_granule);
            match &creator {
                Some(creator) => {
                    c.with_host_memory(creator.clone())
                        // Copy-on-write images need wasmtime's own mmap-backed memories.
                        .memory_init_cow(false);
                }
                // Checkpoints say so (once) when they hash everything.
                None => tracing::info!("dirty-page tracking is not available on this host"),
            }
            creator
        } else {
            None
        };
        let engine = Engine::new(&c).map_err(|e| HostError::Engine(e.to_string()))?;
        let fingerprint = engine_fingerprint(&engine);
        Ok(Arc::new(Host {
            engine,
            dirty,
            config,
            fingerprint,
            loaded: Mutex::new(HashMap::new()),
            instrumented_by_original: Mutex::new(HashMap::new()),
            wasm_opt_version: std::sync::OnceLock::new(),
        }))
    }

    /// The engine fingerprint: compiled code is only ever loaded under the same one.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn is_pausable(&self) -> bool {
        self.config.pausable
    }

    /// Whether jobs of this host track written pages (see [`HostConfig::dirty_tracking`]).
    pub fn dirty_tracking(&self) -> bool {
        self.dirty.is_some()
    }

    /// Loads an original (uninstrumented) module: WAT or binary. On a pausable host it is
    /// instrumented first. Results are cached in memory and on disk.
    pub fn load(&self, wasm: &[u8]) -> Result<Arc<LoadedModule>, HostError> {
        let original_hash = *blake3::hash(wasm).as_bytes();
        if let Some(h) = lock(&self.instrumented_by_original)?
            .get(&original_hash)
            .copied()
        {
            if let Some(m) = lock(&self.loaded)?.get(&h) {
                return Ok(m.clone());
            }
        }
        let binary = instrument::parse_module_bytes(wasm)?;
        if !self.config.pausable {
            return self.compile(binary, None);
        }
        let cache_key = self.instrument_cache_key(&original_hash)?;
        let cached = self.read_cache(&format!("instrumented/{cache_key}.wasm"));
        let info = match cached {
            Some(bytes) => match instrument::describe(bytes, InstrumentStats::default()) {
                Ok(info) => info,
                Err(e) => {
                    tracing::warn!(error = %e, "cached instrumented module unusable; instrumenting again");
                    instrument::instrument(&binary, &self.config.instrument)?
                }
            },
            None => {
                let started = std::time::Instant::now();
                let info = instrument::instrument(&binary, &self.config.instrument)?;
                tracing::info!(
                    ms = started.elapsed().as_millis() as u64,
                    loops = info.stats.loop_checks,
                    import_calls = info.stats.import_call_checks,
                    recursive_entries = info.stats.entry_checks,
                    "instrumented module"
                );
                self.write_cache(&format!("instrumented/{cache_key}.wasm"), &info.bytes);
                info
            }
        };
        let bytes = info.bytes.clone();
        let loaded = self.compile(bytes, Some(info))?;
        lock(&self.instrumented_by_original)?.insert(original_hash, loaded.hash);
        Ok(loaded)
    }

    /// Loads a module that is already instrumented (from a snapshot or a peer).
    pub fn load_instrumented(&self, bytes: &[u8]) -> Result<Arc<LoadedModule>, HostError> {
        let hash = *blake3::hash(bytes).as_bytes();
        if let Some(m) = lock(&self.loaded)?.get(&hash) {
            return Ok(m.clone());
        }
        if !self.config.pausable {
            return Err(HostError::State("this host runs plain modules only"));
        }
        let info = instrument::describe(bytes.to_vec(), InstrumentStats::default())?;
        self.compile(bytes.to_vec(), Some(info))
    }

    /// Looks a module up by the hash of the bytes it runs.
    pub fn loaded(&self, hash: &Hash32) -> Option<Arc<LoadedModule>> {
        lock(&self.loaded).ok()?.get(hash).cloned()
    }

    fn compile(
        &self,
        bytes: Vec<u8>,
        instrumented: Option<Instrumented>,
    ) -> Result<Arc<LoadedModule>, HostError> {
        let hash = *blake3::hash(&bytes).as_bytes();
        if let Some(m) = lock(&self.loaded)?.get(&hash) {
            return Ok(m.clone());
        }
        let rel = format!("compiled/{}-{}.cwasm", hex(&hash), self.fingerprint);
        let mut module = None;
        if let Some(path) = self.cache_path(&rel) {
            if path.exists() {
                // SAFETY: the file was written by `Module::serialize` of an engine with the
                // same fingerprint (version, target, settings), into our own cache dir.
                match unsafe { Module::deserialize_file(&self.engine, &path) } {
                    Ok(m) => module = Some(m),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "compiled cache entry unusable; recompiling")
                    }
                }
            }
        }
        let module = match module {
            Some(m) => m,
            None => {
                let started = std::time::Instant::now();
                let m = Module::new(&self.engine, &bytes)
                    .map_err(|e| HostError::InvalidModule(e.to_string()))?;
                tracing::info!(ms = started.elapsed().as_millis() as u64, "compiled module");
                if let Ok(ser) = m.serialize() {
                    self.write_cache(&rel, &ser);
                }
                m
            }
        };
        let loaded = Arc::new(LoadedModule {
            hash,
            bytes: Arc::new(bytes),
            module,
            instrumented,
        });
        lock(&self.loaded)?.insert(hash, loaded.clone());
        Ok(loaded)
    }

    fn instrument_cache_key(&self, original: &Hash32) -> Result<String, HostError> {
        let version = match self.wasm_opt_version.get() {
            Some(v) => v.clone(),
            None => {
                let v = instrument::wasm_opt_version(&self.config.instrument.wasm_opt)?;
                self.wasm_opt_version.get_or_init(|| v).clone()
            }
        };
        let mut h = blake3::Hasher::new();
        h.update(original);
        h.update(&instrument::INSTRUMENT_VERSION.to_le_bytes());
        h.update(&[self.config.instrument.opt_level]);
        h.update(version.as_bytes());
        Ok(hex(&h.finalize().as_bytes()[..16]))
    }

    fn cache_path(&self, rel: &str) -> Option<PathBuf> {
        self.config.cache_dir.as_ref().map(|d| d.join(rel))
    }

    fn read_cache(&self, rel: &str) -> Option<Vec<u8>> {
        std::fs::read(self.cache_path(rel)?).ok()
    }

    /// Best effort: a cache that cannot be written only costs time.
    fn write_cache(&self, rel: &str, bytes: &[u8]) {
        let Some(path) = self.cache_path(rel) else {
            return;
        };
        if let Err(e) = write_atomic(&path, bytes) {
            tracing::warn!(path = %path.display(), error = %e, "could not write module cache");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, HostError> {
    m.lock()
        .map_err(|_| HostError::State("module cache lock poisoned"))
}

/// Writes a file via a temporary name and a rename, so readers never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn engine_fingerprint(engine: &Engine) -> String {
    fingerprint_of(TARGET_TRIPLE, engine.precompile_compatibility_hash())
}

/// The compiled-code cache key of an engine for `target` whose wasmtime compatibility
/// hash is `compat`: `TARGET-HEX`, the hex covering both.
pub fn fingerprint_of(target: &str, compat: impl Hash) -> String {
    let mut h = Blake3Hasher(blake3::Hasher::new());
    compat.hash(&mut h);
    h.0.update(b"\0target\0");
    h.0.update(target.as_bytes());
    format!("{target}-{}", hex(&h.0.finalize().as_bytes()[..12]))
}
