//! Small helpers shared by the tiers: zero detection, fallible allocation,
//! splitting work over a few threads, and file-name-safe job ids.

use crate::error::{Result, StoreError};

/// True when every byte is zero. Checks 256-byte blocks with a branch-free OR
/// (vectorised) and exits at the first non-zero block, so non-zero chunks cost
/// almost nothing and zero chunks cost one pass at memory speed.
pub(crate) fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(256);
    for b in &mut blocks {
        if b.iter().fold(0u8, |a, &x| a | x) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&x| x == 0)
}

/// A zero-filled `Vec` of `len` bytes, or a typed error instead of an abort
/// when the allocator refuses (lengths come from untrusted manifests).
/// Uses `alloc_zeroed`, so untouched pages of a big buffer stay unmapped.
pub(crate) fn try_zeroed_vec(len: usize) -> Result<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u8>(len)
        .map_err(|_| StoreError::InvalidArgument(format!("cannot allocate {len} bytes")))?;
    // SAFETY: layout has non-zero size (len > 0) and alignment 1.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(StoreError::TooLarge {
            what: "allocation",
            len: len as u64,
            limit: 0,
        });
    }
    // SAFETY: ptr was allocated by the global allocator with the layout of
    // `[u8; len]`; all `len` bytes are initialised (zeroed); capacity == len.
    Ok(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

/// Run `f` over `items` on up to `threads` threads (the calling thread is
/// one of them). Workers pull items from a shared queue, so a thread that is
/// preempted (busy machine) does not hold back the others. Results keep the
/// input order; the first error wins (remaining items may still run).
pub(crate) fn par_queue<T: Send, R: Send>(
    items: Vec<T>,
    threads: usize,
    f: impl Fn(T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.into_iter().map(&f).collect();
    }
    let n = items.len();
    let queue = std::sync::Mutex::new(items.into_iter().enumerate());
    let work = || -> Result<Vec<(usize, R)>> {
        let mut out = Vec::new();
        loop {
            let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
            let Some((i, item)) = next else { break };
            out.push((i, f(item)?));
        }
        Ok(out)
    };
    let work = &work;
    let parts: Vec<Result<Vec<(usize, R)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut parts = vec![work()];
        for h in handles {
            parts.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        parts
    });
    let mut all = Vec::with_capacity(n);
    for p in parts {
        all.extend(p?);
    }
    all.sort_unstable_by_key(|e| e.0);
    Ok(all.into_iter().map(|e| e.1).collect())
}

/// Longest job id accepted (bytes). Keeps the escaped directory name under
/// the usual 255-byte file name limit.
pub const MAX_JOB_ID_LEN: usize = 80;

/// Check a job id: 1..=80 bytes.
pub(crate) fn check_job_id(job: &str) -> Result<()> {
    if job.is_empty() || job.len() > MAX_JOB_ID_LEN {
        return Err(StoreError::InvalidArgument(format!(
            "job id must be 1..={MAX_JOB_ID_LEN} bytes, got {}",
            job.len()
        )));
    }
    Ok(())
}

fn keep(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// File-name-safe, reversible form of a job id: `[A-Za-z0-9_-]` kept, every
/// other byte as `%XX` (so no `.`/`..`/`/`).
pub(crate) fn escape_job(job: &str) -> String {
    let mut s = String::with_capacity(job.len());
    for &b in job.as_bytes() {
        if keep(b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Inverse of [`escape_job`]; `None` for anything `escape_job` cannot produce.
pub(crate) fn unescape_job(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = name.get(i + 1..i + 3)?;
            if h.bytes()
                .any(|c| !(c.is_ascii_digit() || (b'A'..=b'F').contains(&c)))
            {
                return None;
            }
            let v = u8::from_str_radix(h, 16).ok()?;
            if keep(v) {
                return None;
            }
            out.push(v);
            i += 3;
        } else if keep(b[i]) {
            out.push(b[i]);
            i += 1;
        } else {
            return None;
        }
    }
    let s = String::from_utf8(out).ok()?;
    check_job_id(&s).ok()?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 65536 + 17];
        assert!(is_zero(&v));
        assert!(is_zero(&[]));
        for pos in [0, 255, 256, 65535, 65536 + 16] {
            v[pos] = 1;
            assert!(!is_zero(&v), "byte {pos}");
            v[pos] = 0;
        }
    }

    #[test]
    fn job_escaping_roundtrips() {
        for job in ["a", "job-1_x", "../etc", ".", "ü/ß %41", "A%41"] {
            let e = escape_job(job);
            assert!(!e.contains('/') && !e.contains('.'), "{e}");
            assert_eq!(unescape_job(&e).as_deref(), Some(job));
        }
        assert_eq!(unescape_job("%41"), None); // 'A' must not be escaped
        assert_eq!(unescape_job("%4"), None);
        assert_eq!(unescape_job("a.b"), None);
        assert_eq!(unescape_job("%2f"), None); // lowercase hex is not canonical
        assert_eq!(unescape_job(""), None);
    }

    #[test]
    fn par_queue_keeps_order_and_errors() {
        let v: Vec<u32> = (0..1000).collect();
        let r = par_queue(v.clone(), 3, |x| Ok(x * 2)).unwrap();
        assert_eq!(r, v.iter().map(|x| x * 2).collect::<Vec<_>>());
        let e = par_queue(v, 2, |x| {
            if x == 700 {
                Err(StoreError::InvalidArgument("x".into()))
            } else {
                Ok(x)
            }
        });
        assert!(e.is_err());
    }
}
