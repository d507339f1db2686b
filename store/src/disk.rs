//! The on-disk tier: one file per chunk, crash-safe.
//!
//! Layout under the store directory:
//! ```text
//! LOCK                              flock'ed while a Store has the directory open
//! chunks/ab/<64 hex>                a chunk file: 24-byte header + payload
//! checkpoints/<job>/<gen>-<seq>-<id> an empty ref file: "checkpoint <id> is listed"
//! notes/<name>                      a small named record (see `Store::put_note_if`)
//! tmp/                              files being written; emptied on open
//! ```
//! Every file is written to `tmp/` and renamed into place only once its bytes are
//! durable, so a file under its final name is never torn, even after a power cut.
//! Chunk files are made durable in batches: a chunk waits in `tmp/` (readable,
//! listed) until the next [`DiskTier::sync`], which flushes every waiting file at
//! once (one `syncfs` on Linux instead of an fsync per chunk: a 16 MiB checkpoint
//! is 256 chunks), renames them, and makes the directories that changed durable.
//! Notes and refs are small and written one by one (fsync, rename). A checkpoint's
//! manifest is written after a `sync` of its chunks, and its ref after the
//! manifest, so a crash at any moment leaves either a fully listed checkpoint or
//! none; what is left over is unreferenced chunks, which GC removes, and `tmp/`,
//! emptied on open.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::encoded::{self, Compression, FILE_HEADER_LEN};
use crate::error::{io_err, Result, StoreError};
use crate::manifest::CheckpointRef;
use crate::mem::lock;
use crate::util::{escape_job, unescape_job};
use crate::ChunkId;

const SHARDS: usize = 64;

/// Up to this many files (or directories) a [`DiskTier::sync`] fsyncs one by one;
/// above it, one `syncfs` of the whole file system is cheaper (Linux).
const FSYNC_EACH_MAX: usize = 8;

pub(crate) struct DiskTier {
    root: PathBuf,
    /// id -> size of its file.
    index: Box<[Mutex<HashMap<ChunkId, u64>>]>,
    bytes: AtomicU64,
    limit: u64,
    compression: Compression,
    tmp_counter: AtomicU64,
    /// Directories that received a rename and still need an fsync. The lock
    /// is held while syncing, so whoever returns from `sync` knows every
    /// rename made before the call is durable.
    pending_dirs: Mutex<BTreeSet<PathBuf>>,
    /// Chunk files written to `tmp/` and not yet durable: id -> temporary path.
    /// The lock is held while [`sync`](Self::sync) flushes and renames them, so a
    /// reader finds a chunk either here or under its final name.
    pending_chunks: Mutex<HashMap<ChunkId, PathBuf>>,
    _lock: File,
}

/// What `open` found besides the chunks.
pub(crate) struct Scan {
    pub refs: Vec<CheckpointRef>,
    /// `notes/`: (name, bytes) of every well-named note.
    pub notes: Vec<(String, Vec<u8>)>,
}

fn shard_of(id: &ChunkId) -> usize {
    id.0[1] as usize % SHARDS
}

/// fsync a file or a directory.
fn fsync_path(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

/// Make every write to the file system holding `root` durable (one device flush).
#[cfg(target_os = "linux")]
fn syncfs(root: &Path) -> Result<()> {
    let f = File::open(root).map_err(io_err(root))?;
    // SAFETY: syncfs on a valid, owned file descriptor.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io_err(root)(std::io::Error::last_os_error()));
    }
    Ok(())
}

pub(crate) fn ref_name(r: &CheckpointRef) -> String {
    format!("{:020}-{:020}-{}", r.generation, r.seq, r.id)
}

pub(crate) fn parse_ref_name(job: &str, name: &str) -> Option<CheckpointRef> {
    let mut parts = name.split('-');
    let (g, s, h) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || g.len() != 20 || s.len() != 20 {
        return None;
    }
    if !g.bytes().chain(s.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let id = ChunkId::from_hex(h)?;
    if id.to_hex() != h {
        return None;
    }
    Some(CheckpointRef {
        job: job.to_string(),
        generation: g.parse().ok()?,
        seq: s.parse().ok()?,
        id,
    })
}

/// Parse `chunks/ab/<hex>` entries: the id, if the name is canonical and in the
/// right subdirectory.
fn parse_chunk_name(sub: &str, name: &str) -> Option<ChunkId> {
    let id = ChunkId::from_hex(name)?;
    (id.to_hex() == name && &name[..2] == sub).then_some(id)
}

impl DiskTier {
    pub(crate) fn open(
        root: &Path,
        limit: u64,
        compression: Compression,
    ) -> Result<(DiskTier, Scan)> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        let lock_path = root.join("LOCK");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::WouldBlock {
                return Err(StoreError::Locked(root.to_path_buf()));
            }
            return Err(io_err(&lock_path)(e));
        }
        let mut created = false;
        for d in ["chunks", "checkpoints", "notes", "tmp"] {
            let p = root.join(d);
            if !p.is_dir() {
                fs::create_dir(&p).map_err(io_err(&p))?;
                created = true;
            }
        }
        if created {
            fsync_path(root)?;
        }
        // Stale temporaries of a crashed writer (we hold the lock: no live one).
        let tmp = root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let e = e.map_err(io_err(&tmp))?;
            let p = e.path();
            if let Err(err) = fs::remove_file(&p) {
                tracing::warn!(path = %p.display(), %err, "cannot remove stale temporary file");
            }
        }
        let disk = DiskTier {
            root: root.to_path_buf(),
            index: (0..SHARDS).map(|_| Mutex::default()).collect(),
            bytes: AtomicU64::new(0),
            limit,
            compression,
            tmp_counter: AtomicU64::new(0),
            pending_dirs: Mutex::default(),
            pending_chunks: Mutex::default(),
            _lock: lock_file,
        };
        let mut total = 0;
        for (id, _path, size) in disk
            .walk_chunks()?
            .into_iter()
            .filter_map(|(p, id, s)| Some((id?, p, s)))
        {
            lock(&disk.index[shard_of(&id)]).insert(id, size);
            total += size;
        }
        disk.bytes.store(total, Ordering::Relaxed);
        let mut refs = Vec::new();
        for (path, r) in disk.walk_refs()? {
            match r {
                Some(r) if disk.contains(&r.id) => refs.push(r),
                Some(r) => {
                    tracing::warn!(path = %path.display(), id = %r.id, "ref without manifest: not listed")
                }
                None => tracing::warn!(path = %path.display(), "unrecognised file in checkpoints/"),
            }
        }
        let notes = disk.read_notes()?;
        Ok((disk, Scan { refs, notes }))
    }

    /// Every file under `notes/` with a valid name (others are left alone).
    fn read_notes(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let dir = self.root.join("notes");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if crate::store::check_note_name(&name).is_err() {
                tracing::warn!(path = %e.path().display(), "unrecognised file in notes/");
                continue;
            }
            let path = e.path();
            let len = e.metadata().map_err(io_err(&path))?.len();
            if len > crate::store::MAX_NOTE_BYTES as u64 {
                tracing::warn!(path = %path.display(), len, "note too large: ignored");
                continue;
            }
            out.push((name, fs::read(&path).map_err(io_err(&path))?));
        }
        Ok(out)
    }

    /// Replace (or create) the note `name`, durably.
    pub(crate) fn write_note(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.write_atomic(&self.root.join("notes").join(name), bytes)?;
        self.sync_dirs()
    }

    /// Delete the note `name` (durable after the next `sync_dirs`).
    pub(crate) fn remove_note(&self, name: &str) -> Result<()> {
        let path = self.root.join("notes").join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        lock(&self.pending_dirs).insert(self.root.join("notes"));
        Ok(())
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join("chunks").join(&hex[..2]).join(hex)
    }

    fn job_dir(&self, job: &str) -> PathBuf {
        self.root.join("checkpoints").join(escape_job(job))
    }

    pub(crate) fn ref_path(&self, r: &CheckpointRef) -> PathBuf {
        self.job_dir(&r.job).join(ref_name(r))
    }

    pub(crate) fn contains(&self, id: &ChunkId) -> bool {
        lock(&self.index[shard_of(id)]).contains_key(id)
    }

    pub(crate) fn ids(&self) -> Vec<ChunkId> {
        let mut v = Vec::new();
        for s in self.index.iter() {
            v.extend(lock(s).keys().copied());
        }
        v
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    pub(crate) fn len(&self) -> u64 {
        self.index.iter().map(|s| lock(s).len() as u64).sum()
    }

    /// Write `bytes` to a new file in `tmp/` (fsynced when `durable`); returns its path.
    fn write_tmp(&self, bytes: &[u8], durable: bool) -> Result<PathBuf> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()));
        let res = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            f.write_all(bytes).map_err(io_err(&tmp))?;
            if durable {
                f.sync_all().map_err(io_err(&tmp))?;
            }
            Ok(())
        })();
        match res {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Rename a durable temporary file to `dest`, creating `dest`'s directory if it
    /// is a `chunks/ab/` seen for the first time; the directories that changed are
    /// queued for the next [`sync`](Self::sync).
    fn rename_into_place(&self, tmp: &Path, dest: &Path) -> Result<()> {
        match fs::rename(tmp, dest) {
            Err(e) if e.kind() == ErrorKind::NotFound && tmp.exists() => {
                let dir = dest.parent().ok_or_else(|| io_err(dest)(e))?;
                match fs::create_dir(dir) {
                    Ok(()) => {
                        if let Some(parent) = dir.parent() {
                            lock(&self.pending_dirs).insert(parent.to_path_buf());
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(dir)(e)),
                }
                fs::rename(tmp, dest).map_err(io_err(dest))?;
            }
            r => r.map_err(io_err(dest))?,
        }
        if let Some(dir) = dest.parent() {
            lock(&self.pending_dirs).insert(dir.to_path_buf());
        }
        Ok(())
    }

    /// Write `bytes` to `dest` via tmp + fsync + rename; `dest`'s directory is
    /// queued for [`sync`](Self::sync).
    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.write_tmp(bytes, true)?;
        self.rename_into_place(&tmp, dest).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }

    /// Make every chunk written and every rename or removal made before this call
    /// durable: flush the waiting chunk files (one `syncfs`, or an fsync each when
    /// there are few), rename them into place, then make the changed directories
    /// durable the same way. Concurrent callers each return only once all of it,
    /// as of their call, is durable (the locks are held while flushing).
    pub(crate) fn sync(&self) -> Result<()> {
        let mut chunks = lock(&self.pending_chunks);
        if !chunks.is_empty() {
            self.make_durable(chunks.values().map(PathBuf::as_path))?;
            let mut failed = None;
            chunks.retain(
                |id, tmp| match self.rename_into_place(tmp, &self.chunk_path(id)) {
                    Ok(()) => false,
                    Err(e) => {
                        failed.get_or_insert(e);
                        true
                    }
                },
            );
            if let Some(e) = failed {
                return Err(e);
            }
        }
        // The directory lock is taken before the chunk lock is released: a concurrent
        // caller cannot return before these renames are durable.
        let dirs = lock(&self.pending_dirs);
        drop(chunks);
        self.sync_dirs_locked(dirs)
    }

    /// Make every rename or removal made before this call durable (not the chunks
    /// still waiting: see [`sync`](Self::sync)). Notes and refs need only this.
    pub(crate) fn sync_dirs(&self) -> Result<()> {
        self.sync_dirs_locked(lock(&self.pending_dirs))
    }

    fn sync_dirs_locked(&self, mut dirs: MutexGuard<'_, BTreeSet<PathBuf>>) -> Result<()> {
        self.make_durable(dirs.iter().map(PathBuf::as_path))?;
        dirs.clear();
        Ok(())
    }

    /// Make `paths` (files or directories) durable: an fsync each when there are few,
    /// one `syncfs` of the whole file system when there are many (Linux).
    fn make_durable<'a>(&self, paths: impl ExactSizeIterator<Item = &'a Path>) -> Result<()> {
        #[cfg(target_os = "linux")]
        if paths.len() > FSYNC_EACH_MAX {
            return syncfs(&self.root);
        }
        for p in paths {
            fsync_path(p)?;
        }
        Ok(())
    }

    /// Store a chunk whose hash the caller has checked. Returns the file size
    /// when it was written, `None` when already present. The chunk is readable at
    /// once and durable after the next [`sync`](Self::sync).
    pub(crate) fn write_chunk(&self, id: &ChunkId, data: &[u8]) -> Result<Option<u64>> {
        if self.contains(id) {
            return Ok(None);
        }
        let file = encoded::encode_file(data, self.compression);
        let size = file.len() as u64;
        let before = self.bytes.fetch_add(size, Ordering::Relaxed);
        if before + size > self.limit {
            self.bytes.fetch_sub(size, Ordering::Relaxed);
            return Err(StoreError::Full {
                needed: size,
                used: before,
                limit: self.limit,
            });
        }
        let tmp = match self.write_tmp(&file, false) {
            Ok(tmp) => tmp,
            Err(e) => {
                self.bytes.fetch_sub(size, Ordering::Relaxed);
                return Err(e);
            }
        };
        // Waiting before listed, so a reader that sees it listed finds its file.
        let raced = {
            let mut chunks = lock(&self.pending_chunks);
            // Another thread wrote the same chunk at the same time (or before).
            let raced = chunks.contains_key(id) || self.contains(id);
            if !raced {
                chunks.insert(*id, tmp.clone());
                lock(&self.index[shard_of(id)]).insert(*id, size);
            }
            raced
        };
        if raced {
            let _ = fs::remove_file(&tmp);
            self.bytes.fetch_sub(size, Ordering::Relaxed);
            return Ok(None);
        }
        Ok(Some(size))
    }

    fn read_file(&self, id: &ChunkId, max_len: usize) -> Result<(PathBuf, Vec<u8>)> {
        let waiting = {
            let chunks = lock(&self.pending_chunks);
            // Opened under the lock: a `sync` cannot rename it meanwhile (an open
            // file stays readable after a rename anyway).
            chunks
                .get(id)
                .map(|tmp| {
                    File::open(tmp)
                        .map(|f| (tmp.clone(), f))
                        .map_err(io_err(tmp))
                })
                .transpose()?
        };
        let (path, mut f) = match waiting {
            Some(w) => w,
            None => {
                let path = self.chunk_path(id);
                match File::open(&path) {
                    Ok(f) => (path, f),
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        return Err(StoreError::NotFound(*id))
                    }
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
        };
        let bound = (FILE_HEADER_LEN + zstd::zstd_safe::compress_bound(max_len) + 64) as u64;
        let len = f.metadata().map_err(io_err(&path))?.len();
        if len > bound {
            return Err(self.corrupt(id, &path, format!("file is {len} bytes, over {bound}")));
        }
        let mut buf = Vec::with_capacity(len as usize);
        Read::by_ref(&mut f)
            .take(bound)
            .read_to_end(&mut buf)
            .map_err(io_err(&path))?;
        Ok((path, buf))
    }

    fn corrupt(&self, id: &ChunkId, path: &Path, reason: String) -> StoreError {
        tracing::warn!(%id, path = %path.display(), %reason, "corrupt chunk file");
        StoreError::Corrupt {
            id: *id,
            path: Some(path.to_path_buf()),
            reason,
        }
    }

    /// Read, decode and verify a chunk of at most `max_len` bytes.
    pub(crate) fn read(&self, id: &ChunkId, max_len: usize) -> Result<Vec<u8>> {
        let (path, buf) = self.read_file(id, max_len)?;
        encoded::decode_file(id, &buf, max_len).map_err(|r| self.corrupt(id, &path, r))
    }

    /// Read, decode and verify a chunk into `dst` (its exact length).
    pub(crate) fn read_into(&self, id: &ChunkId, dst: &mut [u8]) -> Result<()> {
        let (path, buf) = self.read_file(id, dst.len())?;
        encoded::decode_file_into(id, &buf, dst).map_err(|r| self.corrupt(id, &path, r))
    }

    /// Delete a chunk file; returns the bytes freed.
    pub(crate) fn remove_chunk(&self, id: &ChunkId) -> Result<u64> {
        let waiting = lock(&self.pending_chunks).remove(id);
        let path = waiting.unwrap_or_else(|| self.chunk_path(id));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        if let Some(dir) = path.parent() {
            lock(&self.pending_dirs).insert(dir.to_path_buf());
        }
        let size = lock(&self.index[shard_of(id)]).remove(id).unwrap_or(0);
        self.bytes.fetch_sub(size, Ordering::Relaxed);
        Ok(size)
    }

    /// Create the (empty) ref file of `r` and make it durable.
    pub(crate) fn write_ref(&self, r: &CheckpointRef) -> Result<()> {
        let dir = self.job_dir(&r.job);
        if !dir.is_dir() {
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&dir)(e)),
            }
            lock(&self.pending_dirs).insert(self.root.join("checkpoints"));
        }
        self.write_atomic(&dir.join(ref_name(r)), &[])?;
        self.sync_dirs()
    }

    /// Delete the ref file of `r` (durable after the next `sync_dirs`).
    pub(crate) fn remove_ref(&self, r: &CheckpointRef) -> Result<()> {
        let path = self.ref_path(r);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        lock(&self.pending_dirs).insert(self.job_dir(&r.job));
        Ok(())
    }

    /// Every file under `chunks/` with its parsed id (None: not a chunk name)
    /// and size. Reads the directory, not the index.
    pub(crate) fn walk_chunks(&self) -> Result<Vec<(PathBuf, Option<ChunkId>, u64)>> {
        let chunks = self.root.join("chunks");
        let mut out = Vec::new();
        for sub in fs::read_dir(&chunks).map_err(io_err(&chunks))? {
            let sub = sub.map_err(io_err(&chunks))?;
            let sub_path = sub.path();
            let sub_name = sub.file_name().to_string_lossy().into_owned();
            if !sub_path.is_dir() {
                out.push((sub_path, None, 0));
                continue;
            }
            for e in fs::read_dir(&sub_path).map_err(io_err(&sub_path))? {
                let e = e.map_err(io_err(&sub_path))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((e.path(), parse_chunk_name(&sub_name, &name), size));
            }
        }
        Ok(out)
    }

    /// Every entry under `checkpoints/` with its parsed ref (None: not a ref).
    pub(crate) fn walk_refs(&self) -> Result<Vec<(PathBuf, Option<CheckpointRef>)>> {
        let dir = self.root.join("checkpoints");
        let mut out = Vec::new();
        for jd in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let jd = jd.map_err(io_err(&dir))?;
            let jp = jd.path();
            let job = unescape_job(&jd.file_name().to_string_lossy());
            let (Some(job), true) = (job, jp.is_dir()) else {
                out.push((jp, None));
                continue;
            };
            for e in fs::read_dir(&jp).map_err(io_err(&jp))? {
                let e = e.map_err(io_err(&jp))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let empty = e
                    .metadata()
                    .map(|m| m.is_file() && m.len() == 0)
                    .unwrap_or(false);
                let r = parse_ref_name(&job, &name).filter(|_| empty);
                out.push((e.path(), r));
            }
        }
        Ok(out)
    }

    /// Remove job directories left empty by GC (best effort).
    pub(crate) fn remove_empty_job_dirs(&self) {
        let dir = self.root.join("checkpoints");
        let Ok(rd) = fs::read_dir(&dir) else { return };
        for jd in rd.flatten() {
            if fs::remove_dir(jd.path()).is_ok() {
                lock(&self.pending_dirs).insert(dir.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names_roundtrip_and_reject_junk() {
        let r = CheckpointRef {
            job: "j".into(),
            generation: 7,
            seq: 42,
            id: ChunkId::of(b"m"),
        };
        assert_eq!(parse_ref_name("j", &ref_name(&r)), Some(r.clone()));
        let n = ref_name(&r);
        assert_eq!(parse_ref_name("j", &n[1..]), None);
        assert_eq!(parse_ref_name("j", &format!("{n}-x")), None);
        assert_eq!(parse_ref_name("j", &n.to_uppercase()), None);
    }

    #[test]
    fn second_open_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let (_a, _) = DiskTier::open(dir.path(), u64::MAX, Compression::None).unwrap();
        assert!(matches!(
            DiskTier::open(dir.path(), u64::MAX, Compression::None),
            Err(StoreError::Locked(_))
        ));
    }

    #[test]
    fn stale_tmp_files_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(DiskTier::open(dir.path(), u64::MAX, Compression::None).unwrap());
        let stale = dir.path().join("tmp").join("123-0");
        fs::write(&stale, b"half a chunk").unwrap();
        let (_d, _) = DiskTier::open(dir.path(), u64::MAX, Compression::None).unwrap();
        assert!(!stale.exists());
    }
}
