//! roam's own `wasi_snapshot_preview1`, written so that its whole state can be captured.
//!
//! wasmtime-wasi keeps file descriptors, positions and clocks in opaque host objects, so a
//! job using it could not move. Here every piece of host-side state that the guest can
//! observe lives in [`WasiState`], a plain serialisable struct: args, env, the fd table
//! with each file's preopen-relative path and position, output offsets, the monotonic
//! clock base and the position in the job's deterministic random stream. Open OS file
//! handles are a cache rebuilt from that state after a restore.
//!
//! Files are read and written at explicit offsets (`pread`/`pwrite`), so the OS-level
//! position never matters. Paths are resolved lexically inside their preopen and refused
//! if they escape it or pass through a symlink.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use wasmtime::{Caller, Linker};

use crate::job::JobData;

/// WASI errno values used here.
#[allow(dead_code)]
pub mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const EXIST: i32 = 20;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const IO: i32 = 29;
    pub const ISDIR: i32 = 31;
    pub const LOOP: i32 = 32;
    pub const NAMETOOLONG: i32 = 37;
    pub const NOENT: i32 = 44;
    pub const NOSYS: i32 = 52;
    pub const NOTDIR: i32 = 54;
    pub const NOTEMPTY: i32 = 55;
    pub const NOTSUP: i32 = 58;
    pub const OVERFLOW: i32 = 61;
    pub const PERM: i32 = 63;
    pub const SPIPE: i32 = 70;
    pub const NOTCAPABLE: i32 = 76;
}

const FILETYPE_UNKNOWN: u8 = 0;
const FILETYPE_CHARACTER_DEVICE: u8 = 2;
const FILETYPE_DIRECTORY: u8 = 3;
const FILETYPE_REGULAR_FILE: u8 = 4;
const FILETYPE_SYMLINK: u8 = 7;

const FDFLAGS_APPEND: u16 = 1;
const OFLAGS_CREAT: u16 = 1;
const OFLAGS_DIRECTORY: u16 = 2;
const OFLAGS_EXCL: u16 = 4;
const OFLAGS_TRUNC: u16 = 8;
const RIGHT_FD_READ: u64 = 1 << 1;
const RIGHT_FD_WRITE: u64 = 1 << 6;
const ALL_RIGHTS: u64 = (1 << 30) - 1;

/// Longest path a guest may pass.
const MAX_PATH: u32 = 4096;
/// Largest single read or write a guest may ask for in one call (larger ones are split by
/// returning a short count, as POSIX allows).
const MAX_IO: usize = 16 << 20;

/// Which output stream a byte went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where a job's stdout and stderr go. `offset` is the stream position of `data[0]`,
/// so a sink can drop bytes it already has (exactly-once output across moves).
pub trait OutputSink: Send {
    fn write(&mut self, stream: Stream, offset: u64, data: &[u8]) -> io::Result<()>;
}

/// Writes to this process's stdout/stderr.
pub struct StdioSink;

impl OutputSink for StdioSink {
    fn write(&mut self, stream: Stream, _offset: u64, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        match stream {
            Stream::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(data)?;
                out.flush()
            }
            Stream::Stderr => io::stderr().lock().write_all(data),
        }
    }
}

/// Collects output in memory; clones share the buffers. Bytes at offsets below the
/// current length are dropped, so replays never duplicate output.
#[derive(Clone, Default)]
pub struct BufferSink {
    pub stdout: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl BufferSink {
    pub fn stdout_bytes(&self) -> Vec<u8> {
        self.stdout.lock().map(|b| b.clone()).unwrap_or_default()
    }
    pub fn stderr_bytes(&self) -> Vec<u8> {
        self.stderr.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl OutputSink for BufferSink {
    fn write(&mut self, stream: Stream, offset: u64, data: &[u8]) -> io::Result<()> {
        let buf = match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        };
        let mut buf = buf
            .lock()
            .map_err(|_| io::Error::other("output buffer poisoned"))?;
        let have = buf.len() as u64;
        if offset > have {
            return Err(io::Error::other(format!(
                "output gap: have {have} bytes, got data at offset {offset}"
            )));
        }
        let skip = (have - offset) as usize;
        if skip < data.len() {
            buf.extend_from_slice(&data[skip..]);
        }
        Ok(())
    }
}

/// A directory of the host made visible to the guest under `guest` (e.g. `/data`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
}

/// What an fd refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdKind {
    Stdin,
    Stdout,
    Stderr,
    /// A preopened directory (index into the preopen list).
    Preopen(u32),
    /// A directory opened by path.
    Dir {
        preopen: u32,
        rel: String,
    },
    /// A regular file opened by path.
    File {
        preopen: u32,
        rel: String,
        read: bool,
        write: bool,
        pos: u64,
    },
}

/// One entry of the fd table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdEntry {
    pub kind: FdKind,
    pub flags: u16,
    pub rights_base: u64,
    pub rights_inheriting: u64,
}

/// Everything the guest can observe of the host, as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasiState {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Guest names of the preopens, in fd order; host paths come from the job config.
    pub preopen_names: Vec<String>,
    pub fds: BTreeMap<u32, FdEntry>,
    #[serde(with = "serde_bytes")]
    pub stdin: Vec<u8>,
    pub stdin_offset: u64,
    pub stdout_offset: u64,
    pub stderr_offset: u64,
    /// Monotonic clock reading at capture time; a resumed job continues from here.
    pub monotonic_ns: u64,
    /// Realtime never goes below this, so it cannot run backwards across a move.
    pub realtime_floor_ns: u64,
    pub random_seed: [u8; 32],
    pub random_position: u64,
    /// Preopen-relative paths of every file the job opened, per preopen: their contents
    /// travel with a snapshot.
    pub touched_files: Vec<(u32, String)>,
}

/// A file's content captured with a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileImage {
    pub preopen: u32,
    pub rel: String,
    pub data: ByteBuf,
}

/// The live WASI context of one job: state plus runtime caches.
pub struct WasiCtx {
    pub state: WasiState,
    pub preopens: Vec<Preopen>,
    pub sink: Box<dyn OutputSink>,
    open_files: HashMap<u32, File>,
    started: Instant,
    mono_base_ns: u64,
}

/// The job's exit request (`proc_exit`), carried out of wasm as an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestExit(pub i32);

impl std::fmt::Display for GuestExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "guest exited with code {}", self.0)
    }
}
impl std::error::Error for GuestExit {}

impl WasiCtx {
    /// A fresh context: stdio on fds 0–2, preopens from fd 3 on.
    pub fn new(
        args: Vec<String>,
        env: Vec<(String, String)>,
        preopens: Vec<Preopen>,
        stdin: Vec<u8>,
        random_seed: [u8; 32],
        sink: Box<dyn OutputSink>,
    ) -> WasiCtx {
        let mut fds = BTreeMap::new();
        let std_entry = |kind| FdEntry {
            kind,
            flags: 0,
            rights_base: ALL_RIGHTS,
            rights_inheriting: 0,
        };
        fds.insert(0, std_entry(FdKind::Stdin));
        fds.insert(1, std_entry(FdKind::Stdout));
        fds.insert(2, std_entry(FdKind::Stderr));
        for (i, _) in preopens.iter().enumerate() {
            fds.insert(
                3 + i as u32,
                FdEntry {
                    kind: FdKind::Preopen(i as u32),
                    flags: 0,
                    rights_base: ALL_RIGHTS,
                    rights_inheriting: ALL_RIGHTS,
                },
            );
        }
        let state = WasiState {
            args,
            env,
            preopen_names: preopens.iter().map(|p| p.guest.clone()).collect(),
            fds,
            stdin,
            stdin_offset: 0,
            stdout_offset: 0,
            stderr_offset: 0,
            monotonic_ns: 0,
            realtime_floor_ns: 0,
            random_seed,
            random_position: 0,
            touched_files: Vec::new(),
        };
        WasiCtx::from_state(state, preopens, sink)
    }

    /// Rebuilds a context from captured state. `preopens` gives the host directories on
    /// this node; their guest names must match the captured ones.
    pub fn from_state(
        state: WasiState,
        preopens: Vec<Preopen>,
        sink: Box<dyn OutputSink>,
    ) -> WasiCtx {
        let mono_base_ns = state.monotonic_ns;
        WasiCtx {
            state,
            preopens,
            sink,
            open_files: HashMap::new(),
            started: Instant::now(),
            mono_base_ns,
        }
    }

    /// Replaces the state (a restore into an instance made before the state was known):
    /// clocks continue from the state's, files are reopened from its fd table.
    pub(crate) fn set_state(&mut self, state: WasiState) {
        self.mono_base_ns = state.monotonic_ns;
        self.started = Instant::now();
        self.open_files.clear();
        self.state = state;
    }

    /// The monotonic clock as the guest sees it.
    pub fn monotonic_now(&self) -> u64 {
        self.mono_base_ns
            .saturating_add(self.started.elapsed().as_nanos() as u64)
    }

    /// Freezes clocks into the state, before a capture.
    pub fn freeze_clocks(&mut self) {
        self.state.monotonic_ns = self.monotonic_now();
        self.state.realtime_floor_ns = self.state.realtime_floor_ns.max(realtime_ns());
    }

    /// Reads every touched file that still exists, for a snapshot.
    pub fn capture_files(&self, limit_bytes: u64) -> Result<Vec<FileImage>, crate::HostError> {
        let mut out = Vec::new();
        let mut total = 0u64;
        for (preopen, rel) in &self.state.touched_files {
            let Some(p) = self.preopens.get(*preopen as usize) else {
                continue;
            };
            let path = p.host.join(rel);
            match std::fs::read(&path) {
                Ok(data) => {
                    total += data.len() as u64;
                    if total > limit_bytes {
                        return Err(crate::HostError::Config(format!(
                            "files the job touched exceed the snapshot file limit of {limit_bytes} bytes"
                        )));
                    }
                    out.push(FileImage {
                        preopen: *preopen,
                        rel: rel.clone(),
                        data: ByteBuf::from(data),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(crate::HostError::Io {
                        context: format!("reading {} for a snapshot", path.display()),
                        source: e,
                    })
                }
            }
        }
        Ok(out)
    }

    /// Writes captured files into this node's preopens (skipping identical ones).
    pub fn restore_files(&self, files: &[FileImage]) -> Result<(), crate::HostError> {
        for f in files {
            let p = self.preopens.get(f.preopen as usize).ok_or_else(|| {
                crate::HostError::Config(format!(
                    "snapshot names preopen #{} that this job lacks",
                    f.preopen
                ))
            })?;
            let rel = normalize(Path::new(&f.rel)).ok_or_else(|| {
                crate::HostError::Config(format!(
                    "snapshot file path `{}` escapes its preopen",
                    f.rel
                ))
            })?;
            let path = p.host.join(&rel);
            if std::fs::read(&path)
                .map(|d| d == f.data.as_ref())
                .unwrap_or(false)
            {
                continue;
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| crate::HostError::Io {
                    context: format!("creating {}", parent.display()),
                    source: e,
                })?;
            }
            std::fs::write(&path, &f.data).map_err(|e| crate::HostError::Io {
                context: format!("restoring {}", path.display()),
                source: e,
            })?;
        }
        Ok(())
    }

    fn entry(&self, fd: i32) -> Result<&FdEntry, i32> {
        self.state.fds.get(&(fd as u32)).ok_or(errno::BADF)
    }

    fn file(&mut self, fd: u32) -> Result<&File, i32> {
        if !self.open_files.contains_key(&fd) {
            let entry = self.state.fds.get(&fd).ok_or(errno::BADF)?;
            let FdKind::File {
                preopen,
                rel,
                read,
                write,
                ..
            } = &entry.kind
            else {
                return Err(errno::BADF);
            };
            let host = self.host_path(*preopen, rel)?;
            let file = OpenOptions::new()
                .read(*read)
                .write(*write)
                .open(&host)
                .map_err(|e| io_errno(&e))?;
            self.open_files.insert(fd, file);
        }
        self.open_files.get(&fd).ok_or(errno::BADF)
    }

    fn host_path(&self, preopen: u32, rel: &str) -> Result<PathBuf, i32> {
        let p = self.preopens.get(preopen as usize).ok_or(errno::BADF)?;
        Ok(p.host.join(rel))
    }

    fn lowest_free_fd(&self) -> u32 {
        let mut fd = 0;
        for k in self.state.fds.keys() {
            if *k != fd {
                break;
            }
            fd += 1;
        }
        fd
    }

    /// Resolves `path` relative to directory fd `dirfd` into (preopen, relative path).
    fn resolve(&self, dirfd: i32, path: &str) -> Result<(u32, String), i32> {
        let (preopen, base) = match &self.entry(dirfd)?.kind {
            FdKind::Preopen(p) => (*p, PathBuf::new()),
            FdKind::Dir { preopen, rel } => (*preopen, PathBuf::from(rel)),
            _ => return Err(errno::NOTDIR),
        };
        if path.starts_with('/') {
            return Err(errno::NOTCAPABLE);
        }
        let rel = normalize(&base.join(path)).ok_or(errno::NOTCAPABLE)?;
        // Refuse symlinks anywhere on the way, so nothing escapes the preopen.
        let root = &self.preopens.get(preopen as usize).ok_or(errno::BADF)?.host;
        let mut cur = root.clone();
        for c in rel.components() {
            cur.push(c);
            if let Ok(md) = std::fs::symlink_metadata(&cur) {
                if md.file_type().is_symlink() {
                    return Err(errno::LOOP);
                }
            }
        }
        let rel = rel.to_str().ok_or(errno::INVAL)?.to_string();
        Ok((preopen, rel))
    }

    fn touch(&mut self, preopen: u32, rel: &str) {
        if !self
            .state
            .touched_files
            .iter()
            .any(|(p, r)| *p == preopen && r == rel)
        {
            self.state.touched_files.push((preopen, rel.to_string()));
        }
    }

    fn emit(&mut self, stream: Stream, data: &[u8]) -> Result<(), i32> {
        let offset = match stream {
            Stream::Stdout => &mut self.state.stdout_offset,
            Stream::Stderr => &mut self.state.stderr_offset,
        };
        let at = *offset;
        self.sink.write(stream, at, data).map_err(|_| errno::IO)?;
        *offset += data.len() as u64;
        Ok(())
    }
}

/// Lexical normalisation that refuses to climb above the start.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn io_errno(e: &io::Error) -> i32 {
    match e.kind() {
        io::ErrorKind::NotFound => errno::NOENT,
        io::ErrorKind::PermissionDenied => errno::PERM,
        io::ErrorKind::AlreadyExists => errno::EXIST,
        io::ErrorKind::InvalidInput => errno::INVAL,
        io::ErrorKind::IsADirectory => errno::ISDIR,
        io::ErrorKind::NotADirectory => errno::NOTDIR,
        io::ErrorKind::DirectoryNotEmpty => errno::NOTEMPTY,
        _ => match e.raw_os_error() {
            Some(libc::EISDIR) => errno::ISDIR,
            Some(libc::ENOTDIR) => errno::NOTDIR,
            Some(libc::ENOTEMPTY) => errno::NOTEMPTY,
            Some(libc::EEXIST) => errno::EXIST,
            _ => errno::IO,
        },
    }
}

/// Bounds-checked views of guest memory for the host functions.
struct Mem<'a>(&'a mut [u8]);

impl Mem<'_> {
    fn slice(&self, ptr: i32, len: u32) -> Result<&[u8], i32> {
        let start = ptr as u32 as usize;
        let end = start.checked_add(len as usize).ok_or(errno::FAULT)?;
        self.0.get(start..end).ok_or(errno::FAULT)
    }
    fn slice_mut(&mut self, ptr: i32, len: u32) -> Result<&mut [u8], i32> {
        let start = ptr as u32 as usize;
        let end = start.checked_add(len as usize).ok_or(errno::FAULT)?;
        self.0.get_mut(start..end).ok_or(errno::FAULT)
    }
    fn u32_at(&self, ptr: i32) -> Result<u32, i32> {
        let b = self.slice(ptr, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn put_u8(&mut self, ptr: i32, v: u8) -> Result<(), i32> {
        self.slice_mut(ptr, 1)?[0] = v;
        Ok(())
    }
    fn put_u16(&mut self, ptr: i32, v: u16) -> Result<(), i32> {
        self.slice_mut(ptr, 2)?.copy_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn put_u32(&mut self, ptr: i32, v: u32) -> Result<(), i32> {
        self.slice_mut(ptr, 4)?.copy_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn put_u64(&mut self, ptr: i32, v: u64) -> Result<(), i32> {
        self.slice_mut(ptr, 8)?.copy_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn string(&self, ptr: i32, len: i32) -> Result<String, i32> {
        let len = len as u32;
        if len > MAX_PATH {
            return Err(errno::NAMETOOLONG);
        }
        let b = self.slice(ptr, len)?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| errno::INVAL)
    }
    /// Reads an iovec array into (ptr, len) pairs.
    fn iovecs(&self, iovs: i32, count: i32) -> Result<Vec<(i32, u32)>, i32> {
        let count = count as u32;
        if count > 1024 {
            return Err(errno::INVAL);
        }
        let mut out = Vec::with_capacity(count as usize);
        for i in 0..count {
            let at = (iovs as u32).checked_add(i * 8).ok_or(errno::FAULT)? as i32;
            let ptr = self.u32_at(at)? as i32;
            let len = self.u32_at(at.wrapping_add(4))?;
            out.push((ptr, len));
        }
        Ok(out)
    }
}

type HostResult = wasmtime::Result<i32>;

/// Runs `f` with guest memory and the WASI context, turning errno errors into returns.
fn with_ctx(
    caller: &mut Caller<'_, JobData>,
    f: impl FnOnce(&mut Mem<'_>, &mut WasiCtx) -> Result<(), i32>,
) -> HostResult {
    let Some(memory) = caller.data().memory else {
        return Ok(errno::FAULT);
    };
    let (data, job) = memory.data_and_store_mut(caller);
    let mut mem = Mem(data);
    Ok(match f(&mut mem, &mut job.wasi) {
        Ok(()) => errno::SUCCESS,
        Err(e) => e,
    })
}

fn write_list(mem: &mut Mem<'_>, items: &[String], ptrs: i32, buf: i32) -> Result<(), i32> {
    let mut at = buf as u32;
    for (i, s) in items.iter().enumerate() {
        mem.put_u32(ptrs.wrapping_add(i as i32 * 4), at)?;
        let bytes = s.as_bytes();
        let len = bytes.len() as u32;
        mem.slice_mut(at as i32, len + 1)?[..bytes.len()].copy_from_slice(bytes);
        mem.put_u8((at + len) as i32, 0)?;
        at = at.checked_add(len + 1).ok_or(errno::FAULT)?;
    }
    Ok(())
}

fn env_strings(ctx: &WasiCtx) -> Vec<String> {
    ctx.state
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

fn sizes(mem: &mut Mem<'_>, items: &[String], count_ptr: i32, size_ptr: i32) -> Result<(), i32> {
    mem.put_u32(count_ptr, items.len() as u32)?;
    let total: usize = items.iter().map(|s| s.len() + 1).sum();
    mem.put_u32(size_ptr, total as u32)
}

fn filestat(mem: &mut Mem<'_>, buf: i32, md: &std::fs::Metadata) -> Result<(), i32> {
    let ft = md.file_type();
    let filetype = if ft.is_dir() {
        FILETYPE_DIRECTORY
    } else if ft.is_file() {
        FILETYPE_REGULAR_FILE
    } else if ft.is_symlink() {
        FILETYPE_SYMLINK
    } else {
        FILETYPE_UNKNOWN
    };
    mem.slice_mut(buf, 64)?.fill(0);
    mem.put_u64(buf, md.dev())?;
    mem.put_u64(buf + 8, md.ino())?;
    mem.put_u8(buf + 16, filetype)?;
    mem.put_u64(buf + 24, md.nlink())?;
    mem.put_u64(buf + 32, md.len())?;
    let ns = |s: i64, n: i64| (s.max(0) as u64) * 1_000_000_000 + n.max(0) as u64;
    mem.put_u64(buf + 40, ns(md.atime(), md.atime_nsec()))?;
    mem.put_u64(buf + 48, ns(md.mtime(), md.mtime_nsec()))?;
    mem.put_u64(buf + 56, ns(md.ctime(), md.ctime_nsec()))
}

/// Reads from `fd` into the iovecs, at `at` (None = current position, advancing it).
fn do_read(
    mem: &mut Mem<'_>,
    ctx: &mut WasiCtx,
    fd: i32,
    iovs: &[(i32, u32)],
    at: Option<u64>,
) -> Result<u32, i32> {
    let entry = ctx.entry(fd)?.clone();
    match entry.kind {
        FdKind::Stdin => {
            let mut total = 0u32;
            for (ptr, len) in iovs {
                // From a snapshot: never past the end, and never truncated to a narrower
                // usize (an offset beyond the input reads nothing).
                let start = usize::try_from(ctx.state.stdin_offset)
                    .unwrap_or(usize::MAX)
                    .min(ctx.state.stdin.len());
                let avail = ctx.state.stdin.len() - start;
                let n = (*len as usize).min(avail);
                let src = ctx.state.stdin[start..start + n].to_vec();
                mem.slice_mut(*ptr, n as u32)?.copy_from_slice(&src);
                ctx.state.stdin_offset += n as u64;
                total += n as u32;
                if n < *len as usize {
                    break;
                }
            }
            Ok(total)
        }
        FdKind::File {
            read: true, pos, ..
        } => {
            let mut offset = at.unwrap_or(pos);
            let mut total = 0u32;
            for (ptr, len) in iovs {
                let len = (*len as usize).min(MAX_IO - total as usize);
                let dst = mem.slice_mut(*ptr, len as u32)?;
                let file = ctx.file(fd as u32)?;
                let n = file.read_at(dst, offset).map_err(|e| io_errno(&e))?;
                offset += n as u64;
                total += n as u32;
                if n < len || total as usize >= MAX_IO {
                    break;
                }
            }
            if at.is_none() {
                set_pos(ctx, fd, offset);
            }
            Ok(total)
        }
        FdKind::Preopen(_) | FdKind::Dir { .. } => Err(errno::ISDIR),
        _ => Err(errno::BADF),
    }
}

fn set_pos(ctx: &mut WasiCtx, fd: i32, new_pos: u64) {
    if let Some(FdEntry {
        kind: FdKind::File { pos, .. },
        ..
    }) = ctx.state.fds.get_mut(&(fd as u32))
    {
        *pos = new_pos;
    }
}

fn do_write(
    mem: &mut Mem<'_>,
    ctx: &mut WasiCtx,
    fd: i32,
    iovs: &[(i32, u32)],
    at: Option<u64>,
) -> Result<u32, i32> {
    let entry = ctx.entry(fd)?.clone();
    let mut total = 0u32;
    match entry.kind {
        FdKind::Stdout | FdKind::Stderr => {
            let stream = if entry.kind == FdKind::Stdout {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            let mut data = Vec::new();
            for (ptr, len) in iovs {
                data.extend_from_slice(mem.slice(*ptr, *len)?);
                if data.len() >= MAX_IO {
                    break;
                }
            }
            ctx.emit(stream, &data)?;
            Ok(data.len() as u32)
        }
        FdKind::File {
            write: true, pos, ..
        } => {
            let append = entry.flags & FDFLAGS_APPEND != 0 && at.is_none();
            let mut offset = match at {
                Some(o) => o,
                None if append => ctx
                    .file(fd as u32)?
                    .metadata()
                    .map_err(|e| io_errno(&e))?
                    .len(),
                None => pos,
            };
            for (ptr, len) in iovs {
                let src = mem.slice(*ptr, *len)?.to_vec();
                let file = ctx.file(fd as u32)?;
                file.write_all_at(&src, offset).map_err(|e| io_errno(&e))?;
                offset += src.len() as u64;
                total += src.len() as u32;
                if total as usize >= MAX_IO {
                    break;
                }
            }
            if at.is_none() {
                set_pos(ctx, fd, offset);
            }
            Ok(total)
        }
        FdKind::Stdin => Err(errno::BADF),
        FdKind::Preopen(_) | FdKind::Dir { .. } => Err(errno::ISDIR),
        FdKind::File { .. } => Err(errno::BADF),
    }
}

const P: &str = "wasi_snapshot_preview1";

/// Defines every `wasi_snapshot_preview1` function in `linker`.
pub fn add_to_linker(linker: &mut Linker<JobData>) -> wasmtime::Result<()> {
    linker.func_wrap(
        P,
        "args_get",
        |mut c: Caller<'_, JobData>, argv: i32, buf: i32| {
            with_ctx(&mut c, |m, ctx| {
                write_list(m, &ctx.state.args.clone(), argv, buf)
            })
        },
    )?;
    linker.func_wrap(
        P,
        "args_sizes_get",
        |mut c: Caller<'_, JobData>, n: i32, s: i32| {
            with_ctx(&mut c, |m, ctx| sizes(m, &ctx.state.args.clone(), n, s))
        },
    )?;
    linker.func_wrap(
        P,
        "environ_get",
        |mut c: Caller<'_, JobData>, envp: i32, buf: i32| {
            with_ctx(&mut c, |m, ctx| write_list(m, &env_strings(ctx), envp, buf))
        },
    )?;
    linker.func_wrap(
        P,
        "environ_sizes_get",
        |mut c: Caller<'_, JobData>, n: i32, s: i32| {
            with_ctx(&mut c, |m, ctx| sizes(m, &env_strings(ctx), n, s))
        },
    )?;
    linker.func_wrap(
        P,
        "clock_res_get",
        |mut c: Caller<'_, JobData>, id: i32, out: i32| {
            with_ctx(&mut c, |m, _| {
                if !(0..=3).contains(&id) {
                    return Err(errno::INVAL);
                }
                m.put_u64(out, 1)
            })
        },
    )?;
    linker.func_wrap(
        P,
        "clock_time_get",
        |mut c: Caller<'_, JobData>, id: i32, _precision: i64, out: i32| {
            with_ctx(&mut c, |m, ctx| {
                let t = match id {
                    0 => {
                        let now = realtime_ns().max(ctx.state.realtime_floor_ns);
                        ctx.state.realtime_floor_ns = now;
                        now
                    }
                    1..=3 => ctx.monotonic_now(),
                    _ => return Err(errno::INVAL),
                };
                m.put_u64(out, t)
            })
        },
    )?;
    linker.func_wrap(
        P,
        "fd_advise",
        |mut c: Caller<'_, JobData>, fd: i32, _o: i64, _l: i64, _a: i32| {
            with_ctx(&mut c, |_, ctx| ctx.entry(fd).map(|_| ()))
        },
    )?;
    linker.func_wrap(
        P,
        "fd_allocate",
        |mut c: Caller<'_, JobData>, fd: i32, off: i64, len: i64| {
            with_ctx(&mut c, |_, ctx| {
                let end = (off as u64).checked_add(len as u64).ok_or(errno::INVAL)?;
                let file = ctx.file(fd as u32)?;
                let cur = file.metadata().map_err(|e| io_errno(&e))?.len();
                if end > cur {
                    file.set_len(end).map_err(|e| io_errno(&e))?;
                }
                Ok(())
            })
        },
    )?;
    linker.func_wrap(P, "fd_close", |mut c: Caller<'_, JobData>, fd: i32| {
        with_ctx(&mut c, |_, ctx| {
            match ctx.entry(fd)?.kind {
                FdKind::Preopen(_) => return Err(errno::NOTSUP),
                FdKind::Stdin | FdKind::Stdout | FdKind::Stderr => {}
                _ => {}
            }
            ctx.state.fds.remove(&(fd as u32));
            ctx.open_files.remove(&(fd as u32));
            Ok(())
        })
    })?;
    for name in ["fd_datasync", "fd_sync"] {
        linker.func_wrap(P, name, |mut c: Caller<'_, JobData>, fd: i32| {
            with_ctx(&mut c, |_, ctx| match ctx.entry(fd)?.kind {
                FdKind::File { .. } => ctx.file(fd as u32)?.sync_data().map_err(|e| io_errno(&e)),
                _ => Ok(()),
            })
        })?;
    }
    linker.func_wrap(
        P,
        "fd_fdstat_get",
        |mut c: Caller<'_, JobData>, fd: i32, buf: i32| {
            with_ctx(&mut c, |m, ctx| {
                let e = ctx.entry(fd)?;
                let filetype = match e.kind {
                    FdKind::Stdin | FdKind::Stdout | FdKind::Stderr => FILETYPE_CHARACTER_DEVICE,
                    FdKind::Preopen(_) | FdKind::Dir { .. } => FILETYPE_DIRECTORY,
                    FdKind::File { .. } => FILETYPE_REGULAR_FILE,
                };
                let (flags, base, inh) = (e.flags, e.rights_base, e.rights_inheriting);
                m.slice_mut(buf, 24)?.fill(0);
                m.put_u8(buf, filetype)?;
                m.put_u16(buf + 2, flags)?;
                m.put_u64(buf + 8, base)?;
                m.put_u64(buf + 16, inh)
            })
        },
    )?;
    linker.func_wrap(
        P,
        "fd_fdstat_set_flags",
        |mut c: Caller<'_, JobData>, fd: i32, flags: i32| {
            with_ctx(&mut c, |_, ctx| {
                let e = ctx.state.fds.get_mut(&(fd as u32)).ok_or(errno::BADF)?;
                e.flags = flags as u16;
                Ok(())
            })
        },
    )?;
    linker.func_wrap(
        P,
        "fd_fdstat_set_rights",
        |mut c: Caller<'_, JobData>, fd: i32, base: i64, inh: i64| {
            with_ctx(&mut c, |_, ctx| {
                let e = ctx.state.fds.get_mut(&(fd as u32)).ok_or(errno::BADF)?;
                // Rights may only shrink.
                e.rights_base &= base as u64;
                e.rights_inheriting &= inh as u64;
                Ok(())
            })
        },
    )?;
    linker.func_wrap(
        P,
        "fd_filestat_get",
        |mut c: Caller<'_, JobData>, fd: i32, buf: i32| {
            with_ctx(&mut c, |m, ctx| {
                let md = match ctx.entry(fd)?.kind.clone() {
                    FdKind::File { .. } => ctx.file(fd as u32)?.metadata(),
                    FdKind::Preopen(p) => std::fs::metadata(ctx.host_path(p, "")?),
                    FdKind::Dir { preopen, rel } => {
                        std::fs::metadata(ctx.host_path(preopen, &rel)?)
                    }
                    FdKind::Stdin | FdKind::Stdout | FdKind::Stderr => {
                        m.slice_mut(buf, 64)?.fill(0);
                        return m.put_u8(buf + 16, FILETYPE_CHARACTER_DEVICE);
                    }
                }
                .map_err(|e| io_errno(&e))?;
                filestat(m, buf, &md)
            })
        },
    )?;
    linker.func_wrap(
        P,
        "fd_filestat_set_size",
        |mut c: Caller<'_, JobData>, fd: i32, size: i64| {
            with_ctx(&mut c, |_, ctx| {
                if !matches!(ctx.entry(fd)?.kind, FdKind::File { write: true, .. }) {
                    return Err(errno::BADF);
                }
                ctx.file(fd as u32)?
                    .set_len(size as u64)
                    .map_err(|e| io_errno(&e))
            })
        },
    )?;
    linker.func_wrap(
        P,
        "fd_filestat_set_times",
        |mut c: Caller<'_, JobData>, fd: i32, _a: i64, _m: i64, _f: i32| {
            with_ctx(&mut c, |_, ctx| {
                ctx.entry(fd).map(|_| ()).and(Err(errno::NOTSUP))
            })
        },
    )?;
    linker.func_wrap(
        P,
        "fd_pread",
        |mut c: Caller<'_, JobData>, fd: i32, iovs: i32, n: i32, off: i64, out: i32| {
            with_ctx(&mut c, |m, ctx| {
                let iovs = m.iovecs(iovs, n)?;
                let got = do_read(m, ctx, fd, &iovs, Some(off as u64))?;
                m.put_u32(out, got)
            })
        },
    )?;
    linker.func_wrap(
        P,
        "fd_pwrite",
        |mut c: Caller<'_, JobData>, fd: i32, iovs: i32, n: i32, off: i64, out: i32| {
            with_ctx(&mut c, |m, ctx| {
                let iovs = m.iovecs(iovs, n)?;
                let put = do_write(m, ctx, fd, &iovs, Some(off as u64))?;
                m.put_u32(out, put)
            })
        },
    )?;
    linker.func_wrap(
        P,
        "fd_prestat_get",
        |mut c: Caller<'_, JobData>, fd: i32, buf: i32| {
            with_ctx(&mut c, |m, ctx| match ctx.entry(fd)?.kind {
                FdKind::Preopen(p) => {
                    let len = ctx
                        .state
                        .preopen_names
                        .get(p as usize)
                        .map(|s| s.len())
                        .ok_or(errno::BADF)?;
                    m.put_u32(buf, 0)?;
                    m.put_u32(buf + 4, len as u32)
                }
                _ => Err(errno::BADF),
            })
        },
    )?;
    linker.func_wrap(
        P,
        "fd_prestat_dir_name",
        |mut c: Caller<'_, JobData>, fd: i32, path: i32, len: i32| {
            with_ctx(&mut c, |m, ctx| match ctx.entry(fd)?.kind {
                FdKind::Preopen(p) => {
                    let name = ctx.state.preopen_names.get(p as usize).ok_or(errno::BADF)?;
                    let b = name.as_bytes();
                    if (len as u32 as usize) < b.len() {
                        return Err(errno::NAMETOOLONG);
                    }
                    m.slice_mut(path, b.len() as u32)?.copy_from_slice(b);
                    Ok(())
                }
                _ => Err(errno::BADF),
            })
        },
    )?;
    linker.func_wrap(
        P,
        "fd_read",
        |mut c: Caller<'_, JobData>, fd: i32, iovs: i32, n: i32, out: i32| {
            with_ctx(&mut c, |m, ctx| {
                let iovs = m.iovecs(iovs, n)?;
                let got = do_read(m, ctx, fd, &iovs, None)?;
                m.put_u32(out, got)
            })
        },
    )?;
    linker.func_wrap(
        P,
        "fd_readdir",
        |mut c: Caller<'_, JobData>, fd: i32, buf: i32, buf_len: i32, cookie: i64, out: i32| {
            with_ctx(&mut c, |m, ctx| {
                let host = match ctx.entry(fd)?.kind.clone() {
                    FdKind::Preopen(p) => ctx.host_path(p, "")?,
                    FdKind::Dir { preopen, rel } => ctx.host_path(preopen, &rel)?,
                    _ => return Err(errno::NOTDIR),
                };
                // Sorted, with . and .., so listings are deterministic across nodes.
                let mut names: Vec<(String, u8, u64)> = vec![
                    (".".into(), FILETYPE_DIRECTORY, 0),
                    ("..".into(), FILETYPE_DIRECTORY, 0),
                ];
                let mut rest = Vec::new();
                for e in std::fs::read_dir(&host).map_err(|e| io_errno(&e))? {
                    let e = e.map_err(|e| io_errno(&e))?;
                    let Some(name) = e.file_name().to_str().map(str::to_string) else {
                        continue;
                    };
                    let md = e.metadata().map_err(|e| io_errno(&e))?;
                    let ft = if md.is_dir() {
                        FILETYPE_DIRECTORY
                    } else if md.is_file() {
                        FILETYPE_REGULAR_FILE
                    } else {
                        FILETYPE_UNKNOWN
                    };
                    rest.push((name, ft, md.ino()));
                }
                rest.sort();
                names.extend(rest);
                let cap = buf_len as u32 as usize;
                let mut bytes = Vec::new();
                for (i, (name, ft, ino)) in names.iter().enumerate().skip(cookie as u64 as usize) {
                    let mut ent = [0u8; 24];
                    ent[0..8].copy_from_slice(&((i + 1) as u64).to_le_bytes());
                    ent[8..16].copy_from_slice(&ino.to_le_bytes());
                    ent[16..20].copy_from_slice(&(name.len() as u32).to_le_bytes());
                    ent[20] = *ft;
                    bytes.extend_from_slice(&ent);
                    bytes.extend_from_slice(name.as_bytes());
                    if bytes.len() >= cap {
                        break;
                    }
                }
                let n = bytes.len().min(cap);
                m.slice_mut(buf, n as u32)?.copy_from_slice(&bytes[..n]);
                m.put_u32(out, n as u32)
            })
        },
    )?;
    linker.func_wrap(
        P,
        "fd_renumber",
        |mut c: Caller<'_, JobData>, from: i32, to: i32| {
            with_ctx(&mut c, |_, ctx| {
                let e = ctx.entry(from)?.clone();
                ctx.entry(to)?;
                if matches!(e.kind, FdKind::Preopen(_)) {
                    return Err(errno::NOTSUP);
                }
                ctx.state.fds.remove(&(from as u32));
                ctx.state.fds.insert(to as u32, e);
                ctx.open_files.remove(&(to as u32));
                if let Some(f) = ctx.open_files.remove(&(from as u32)) {
                    ctx.open_files.insert(to as u32, f);
                }
                Ok(())
            })
        },
    )?;
    linker.func_wrap(
        P,
        "fd_seek",
        |mut c: Caller<'_, JobData>, fd: i32, offset: i64, whence: i32, out: i32| {
            with_ctx(&mut c, |m, ctx| {
                let FdKind::File { pos, .. } = ctx.entry(fd)?.kind else {
                    return Err(match ctx.entry(fd)?.kind {
                        FdKind::Preopen(_) | FdKind::Dir { .. } => errno::BADF,
                        _ => errno::SPIPE,
                    });
                };
                let base: i128 = match whence {
                    0 => 0,
                    1 => pos as i128,
                    2 => ctx
                        .file(fd as u32)?
                        .metadata()
                        .map_err(|e| io_errno(&e))?
                        .len() as i128,
                    _ => return Err(errno::INVAL),
                };
                let new = base + offset as i128;
                if new < 0 || new > i64::MAX as i128 {
                    return Err(errno::INVAL);
                }
                set_pos(ctx, fd, new as u64);
                m.put_u64(out, new as u64)
            })
        },
    )?;
    linker.func_wrap(
        P,
        "fd_tell",
        |mut c: Caller<'_, JobData>, fd: i32, out: i32| {
            with_ctx(&mut c, |m, ctx| match ctx.entry(fd)?.kind {
                FdKind::File { pos, .. } => m.put_u64(out, pos),
                _ => Err(errno::SPIPE),
            })
        },
    )?;
    linker.func_wrap(
        P,
        "fd_write",
        |mut c: Caller<'_, JobData>, fd: i32, iovs: i32, n: i32, out: i32| {
            with_ctx(&mut c, |m, ctx| {
                let iovs = m.iovecs(iovs, n)?;
                let put = do_write(m, ctx, fd, &iovs, None)?;
                m.put_u32(out, put)
            })
        },
    )?;
    linker.func_wrap(
        P,
        "path_create_directory",
        |mut c: Caller<'_, JobData>, fd: i32, path: i32, len: i32| {
            with_ctx(&mut c, |m, ctx| {
                let (p, rel) = ctx.resolve(fd, &m.string(path, len)?)?;
                std::fs::create_dir(ctx.host_path(p, &rel)?).map_err(|e| io_errno(&e))
            })
        },
    )?;
    linker.func_wrap(
        P,
        "path_filestat_get",
        |mut c: Caller<'_, JobData>, fd: i32, _flags: i32, path: i32, len: i32, buf: i32| {
            with_ctx(&mut c, |m, ctx| {
                let (p, rel) = ctx.resolve(fd, &m.string(path, len)?)?;
                let md = std::fs::metadata(ctx.host_path(p, &rel)?).map_err(|e| io_errno(&e))?;
                filestat(m, buf, &md)
            })
        },
    )?;
    linker.func_wrap(
        P,
        "path_filestat_set_times",
        |mut c: Caller<'_, JobData>,
         fd: i32,
         _fl: i32,
         _p: i32,
         _l: i32,
         _a: i64,
         _m: i64,
         _f: i32| {
            with_ctx(&mut c, |_, ctx| {
                ctx.entry(fd).map(|_| ()).and(Err(errno::NOTSUP))
            })
        },
    )?;
    linker.func_wrap(
        P,
        "path_link",
        |_c: Caller<'_, JobData>,
         _a: i32,
         _b: i32,
         _p: i32,
         _l: i32,
         _d: i32,
         _q: i32,
         _m: i32|
         -> HostResult { Ok(errno::NOTSUP) },
    )?;
    linker.func_wrap(
        P,
        "path_open",
        |mut c: Caller<'_, JobData>,
         dirfd: i32,
         _dirflags: i32,
         path: i32,
         len: i32,
         oflags: i32,
         base: i64,
         inh: i64,
         fdflags: i32,
         out: i32| {
            with_ctx(&mut c, |m, ctx| {
                let (p, rel) = ctx.resolve(dirfd, &m.string(path, len)?)?;
                let host = ctx.host_path(p, &rel)?;
                let oflags = oflags as u16;
                let fdflags = fdflags as u16;
                let base = base as u64;
                let md = std::fs::metadata(&host);
                let is_dir = md.as_ref().map(|md| md.is_dir()).unwrap_or(false);
                let kind =
                    if oflags & OFLAGS_DIRECTORY != 0 || (is_dir && oflags & OFLAGS_CREAT == 0) {
                        if !is_dir {
                            return Err(if md.is_ok() {
                                errno::NOTDIR
                            } else {
                                errno::NOENT
                            });
                        }
                        FdKind::Dir { preopen: p, rel }
                    } else {
                        if is_dir {
                            return Err(errno::ISDIR);
                        }
                        let write = base & RIGHT_FD_WRITE != 0
                            || fdflags & FDFLAGS_APPEND != 0
                            || oflags & OFLAGS_TRUNC != 0;
                        let read = base & RIGHT_FD_READ != 0 || !write;
                        let mut opts = OpenOptions::new();
                        opts.read(read).write(write);
                        if oflags & OFLAGS_CREAT != 0 {
                            if oflags & OFLAGS_EXCL != 0 {
                                opts.create_new(true);
                            } else {
                                opts.create(true);
                            }
                            opts.write(true);
                        }
                        if oflags & OFLAGS_TRUNC != 0 {
                            opts.truncate(true);
                        }
                        let file = opts.open(&host).map_err(|e| io_errno(&e))?;
                        let write = write || oflags & OFLAGS_CREAT != 0;
                        let fd = ctx.lowest_free_fd();
                        ctx.open_files.insert(fd, file);
                        ctx.touch(p, &rel);
                        ctx.state.fds.insert(
                            fd,
                            FdEntry {
                                kind: FdKind::File {
                                    preopen: p,
                                    rel,
                                    read,
                                    write,
                                    pos: 0,
                                },
                                flags: fdflags,
                                rights_base: base,
                                rights_inheriting: inh as u64,
                            },
                        );
                        return m.put_u32(out, fd);
                    };
                let fd = ctx.lowest_free_fd();
                ctx.state.fds.insert(
                    fd,
                    FdEntry {
                        kind,
                        flags: fdflags,
                        rights_base: base,
                        rights_inheriting: inh as u64,
                    },
                );
                m.put_u32(out, fd)
            })
        },
    )?;
    linker.func_wrap(
        P,
        "path_readlink",
        |_c: Caller<'_, JobData>,
         _fd: i32,
         _p: i32,
         _l: i32,
         _b: i32,
         _bl: i32,
         _o: i32|
         -> HostResult { Ok(errno::INVAL) },
    )?;
    linker.func_wrap(
        P,
        "path_remove_directory",
        |mut c: Caller<'_, JobData>, fd: i32, path: i32, len: i32| {
            with_ctx(&mut c, |m, ctx| {
                let (p, rel) = ctx.resolve(fd, &m.string(path, len)?)?;
                if rel.is_empty() {
                    return Err(errno::PERM);
                }
                std::fs::remove_dir(ctx.host_path(p, &rel)?).map_err(|e| io_errno(&e))
            })
        },
    )?;
    linker.func_wrap(
        P,
        "path_rename",
        |mut c: Caller<'_, JobData>,
         fd: i32,
         old: i32,
         old_len: i32,
         new_fd: i32,
         new: i32,
         new_len: i32| {
            with_ctx(&mut c, |m, ctx| {
                let (p1, r1) = ctx.resolve(fd, &m.string(old, old_len)?)?;
                let (p2, r2) = ctx.resolve(new_fd, &m.string(new, new_len)?)?;
                std::fs::rename(ctx.host_path(p1, &r1)?, ctx.host_path(p2, &r2)?)
                    .map_err(|e| io_errno(&e))?;
                ctx.touch(p2, &r2);
                Ok(())
            })
        },
    )?;
    linker.func_wrap(
        P,
        "path_symlink",
        |_c: Caller<'_, JobData>, _a: i32, _b: i32, _fd: i32, _p: i32, _l: i32| -> HostResult {
            Ok(errno::NOTSUP)
        },
    )?;
    linker.func_wrap(
        P,
        "path_unlink_file",
        |mut c: Caller<'_, JobData>, fd: i32, path: i32, len: i32| {
            with_ctx(&mut c, |m, ctx| {
                let (p, rel) = ctx.resolve(fd, &m.string(path, len)?)?;
                std::fs::remove_file(ctx.host_path(p, &rel)?).map_err(|e| io_errno(&e))
            })
        },
    )?;
    linker.func_wrap(
        P,
        "poll_oneoff",
        |mut c: Caller<'_, JobData>, subs: i32, events: i32, n: i32, out: i32| {
            with_ctx(&mut c, |m, ctx| {
                let n = n as u32;
                if n == 0 || n > 256 {
                    return Err(errno::INVAL);
                }
                // Clock subscriptions sleep until the earliest one; fd subscriptions are
                // always ready (files and stdio never block here).
                let mut sleep: Option<u64> = None;
                let mut ready = Vec::new();
                for i in 0..n {
                    let s = subs.wrapping_add((i * 48) as i32);
                    let b = m.slice(s, 48)?;
                    let userdata =
                        u64::from_le_bytes(b[0..8].try_into().map_err(|_| errno::FAULT)?);
                    let tag = b[8];
                    match tag {
                        0 => {
                            let id =
                                u32::from_le_bytes(b[16..20].try_into().map_err(|_| errno::FAULT)?);
                            let timeout =
                                u64::from_le_bytes(b[24..32].try_into().map_err(|_| errno::FAULT)?);
                            let flags =
                                u16::from_le_bytes(b[40..42].try_into().map_err(|_| errno::FAULT)?);
                            let now = if id == 0 {
                                realtime_ns()
                            } else {
                                ctx.monotonic_now()
                            };
                            let rel = if flags & 1 != 0 {
                                timeout.saturating_sub(now)
                            } else {
                                timeout
                            };
                            sleep = Some(sleep.map_or(rel, |s| s.min(rel)));
                            ready.push((userdata, 0u8, true));
                        }
                        1 | 2 => ready.push((userdata, tag, false)),
                        _ => return Err(errno::INVAL),
                    }
                }
                let any_fd = ready.iter().any(|(_, _, clock)| !clock);
                if !any_fd {
                    if let Some(ns) = sleep {
                        std::thread::sleep(Duration::from_nanos(ns.min(10_000_000_000)));
                    }
                }
                let mut count = 0u32;
                for (userdata, tag, clock) in ready {
                    if any_fd && clock {
                        continue;
                    }
                    let e = events.wrapping_add((count * 32) as i32);
                    m.slice_mut(e, 32)?.fill(0);
                    m.put_u64(e, userdata)?;
                    m.put_u8(e + 10, tag)?;
                    count += 1;
                }
                m.put_u32(out, count)
            })
        },
    )?;
    linker.func_wrap(
        P,
        "proc_exit",
        |_c: Caller<'_, JobData>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::new(GuestExit(code)))
        },
    )?;
    linker.func_wrap(
        P,
        "proc_raise",
        |_c: Caller<'_, JobData>, _sig: i32| -> HostResult { Ok(errno::NOSYS) },
    )?;
    linker.func_wrap(
        P,
        "random_get",
        |mut c: Caller<'_, JobData>, buf: i32, len: i32| {
            with_ctx(&mut c, |m, ctx| {
                let dst = m.slice_mut(buf, len as u32)?;
                let mut xof = blake3::Hasher::new_keyed(&ctx.state.random_seed).finalize_xof();
                xof.set_position(ctx.state.random_position);
                xof.fill(dst);
                ctx.state.random_position += dst.len() as u64;
                Ok(())
            })
        },
    )?;
    linker.func_wrap(P, "sched_yield", |_c: Caller<'_, JobData>| -> HostResult {
        Ok(errno::SUCCESS)
    })?;
    linker.func_wrap(
        P,
        "sock_accept",
        |_c: Caller<'_, JobData>, _a: i32, _b: i32, _o: i32| -> HostResult { Ok(errno::NOSYS) },
    )?;
    linker.func_wrap(
        P,
        "sock_recv",
        |_c: Caller<'_, JobData>,
         _a: i32,
         _b: i32,
         _l: i32,
         _f: i32,
         _o: i32,
         _p: i32|
         -> HostResult { Ok(errno::NOSYS) },
    )?;
    linker.func_wrap(
        P,
        "sock_send",
        |_c: Caller<'_, JobData>, _a: i32, _b: i32, _l: i32, _f: i32, _o: i32| -> HostResult {
            Ok(errno::NOSYS)
        },
    )?;
    linker.func_wrap(
        P,
        "sock_shutdown",
        |_c: Caller<'_, JobData>, _a: i32, _b: i32| -> HostResult { Ok(errno::NOSYS) },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_refuses_escape() {
        assert_eq!(
            normalize(Path::new("a/./b/../c")),
            Some(PathBuf::from("a/c"))
        );
        assert_eq!(normalize(Path::new("a/../..")), None);
        assert_eq!(normalize(Path::new("/etc")), None);
    }

    #[test]
    fn buffer_sink_drops_replayed_bytes() {
        let mut s = BufferSink::default();
        s.write(Stream::Stdout, 0, b"hello").expect("write");
        s.write(Stream::Stdout, 3, b"lo world").expect("overlap");
        assert_eq!(s.stdout_bytes(), b"hello world");
        assert!(
            s.write(Stream::Stdout, 100, b"x").is_err(),
            "gap is an error"
        );
    }
}
