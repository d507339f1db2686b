//! Store benchmark: full and incremental checkpoints of a 256 MiB memory image
//! against single-threaded blake3 over the same bytes, measured in the same
//! run (medians). Prints a table and, as its last line, one JSON object.
//!
//! `cargo run --release -q -p store --example bench_store [reps] [--no-disk]`
//! (`--no-disk`: a single disk repetition instead of three.)

use std::collections::BTreeMap;
use std::time::Instant;

use store::{CheckpointMeta, RetentionPolicy, Store, StoreConfig};

const MIB: usize = 1 << 20;
const LEN: usize = 256 * MIB;
const CS: usize = 64 << 10;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn fill(buf: &mut [u8], rng: &mut XorShift) {
    for c in buf.chunks_mut(8) {
        let x = rng.next().to_le_bytes();
        c.copy_from_slice(&x[..c.len()]);
    }
}

/// Make every chunk of `mem` different from any earlier version (cheap).
fn stamp(mem: &mut [u8], round: u64) {
    for c in mem.chunks_mut(CS) {
        c[..8].copy_from_slice(&round.to_le_bytes());
    }
}

fn meta(store: &Store, generation: u64) -> CheckpointMeta {
    CheckpointMeta {
        job: "bench".into(),
        generation,
        module: store.put_blob(b"\0asm\x01\0\0\0 bench module").unwrap(),
        globals: vec![0; 64],
        host_state: vec![0; 256],
        extra: BTreeMap::new(),
    }
}

/// CPU seconds (user + system) this process has used so far.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn gib_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / secs
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reps: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(7);
    let with_disk = !args.iter().any(|a| a == "--no-disk");
    let cfg = StoreConfig {
        cache_bytes: 4 * LEN as u64,
        ..StoreConfig::default()
    };
    let threads = cfg.threads;
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut mem = vec![0u8; LEN];
    fill(&mut mem, &mut rng);

    // Full checkpoints into the memory tier, interleaved with plain blake3 so
    // that both see the same machine state. After each, GC drops it (not
    // timed), so the next one reuses the freed buffers: the steady state of a
    // node that checkpoints a job over and over. The first one is cold.
    let store = Store::in_memory(cfg.clone()).unwrap();
    let (mut b3, mut full, mut cores) = (Vec::new(), Vec::new(), Vec::new());
    let mut cold = 0.0;
    for r in 0..=reps {
        stamp(&mut mem, r as u64 + 1);
        let t = Instant::now();
        std::hint::black_box(blake3::hash(&mem));
        let tb = t.elapsed().as_secs_f64();
        let m = meta(&store, r as u64);
        let c = cpu_secs();
        let t = Instant::now();
        let info = store.checkpoint_full(m, &mem).unwrap();
        let tf = t.elapsed().as_secs_f64();
        let cf = cpu_secs() - c;
        assert_eq!(info.chunks_hashed, (LEN / CS) as u64);
        assert_eq!(info.chunks_written, (LEN / CS) as u64 + 1);
        if r == 0 {
            cold = tf;
        } else {
            b3.push(tb);
            full.push(tf);
            cores.push(cf / tf);
        }
        store.gc(&RetentionPolicy::default()).unwrap();
    }
    let blake3_s = median(b3);
    let full_s = median(full);
    // Cores the full checkpoint actually got (CPU time / wall time): below
    // `threads` means other processes were competing for the CPUs.
    let full_cores = median(cores);

    // Incremental: 1 % of the chunks dirtied since the parent.
    let store = Store::in_memory(cfg.clone()).unwrap();
    stamp(&mut mem, 1000);
    let mut parent = store
        .checkpoint_full(meta(&store, 0), &mem)
        .unwrap()
        .checkpoint;
    let n = LEN / CS;
    let k = n / 100;
    let mut incr = Vec::new();
    let mut restore = Vec::new();
    for r in 0..(3 * reps).max(10) {
        let mut dirty: Vec<u64> = (0..k).map(|_| rng.next() % n as u64).collect();
        dirty.sort();
        dirty.dedup();
        for &i in &dirty {
            fill(&mut mem[i as usize * CS..][..CS], &mut rng);
        }
        let m = meta(&store, 1);
        let t = Instant::now();
        let info = store
            .checkpoint_incremental(&parent, m, &mem, &dirty)
            .unwrap();
        incr.push(t.elapsed().as_secs_f64());
        assert_eq!(info.chunks_hashed, dirty.len() as u64);
        parent = info.checkpoint;
        if r < 3 {
            let t = Instant::now();
            let back = store.restore_memory(&parent.manifest).unwrap();
            restore.push(t.elapsed().as_secs_f64());
            assert!(back == mem);
        }
    }
    let incr_s = median(incr);
    let restore_s = median(restore);
    drop(store);

    // Full checkpoints into the disk tier (chunks to tmp, one flush, renames,
    // directory flush, manifest, ref), default compression.
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let disk_cfg = StoreConfig {
        cache_bytes: LEN as u64,
        ..StoreConfig::default()
    };
    let store = Store::open(dir.path(), disk_cfg.clone()).unwrap();
    let mut disk = Vec::new();
    for r in 0..if with_disk { reps.clamp(1, 3) } else { 1 } {
        stamp(&mut mem, 2000 + r as u64);
        let m = meta(&store, r as u64);
        let t = Instant::now();
        store.checkpoint_full(m, &mem).unwrap();
        disk.push(t.elapsed().as_secs_f64());
        store.gc(&RetentionPolicy::default()).unwrap();
    }
    let disk_s = median(disk);

    let rows = [
        ("blake3, 1 thread, 256 MiB", blake3_s, gib_s(LEN, blake3_s)),
        (
            "full checkpoint -> memory tier (warm)",
            full_s,
            gib_s(LEN, full_s),
        ),
        (
            "full checkpoint -> memory tier (cold, 1st)",
            cold,
            gib_s(LEN, cold),
        ),
        (
            "incremental, 1% of 64 KiB chunks dirty",
            incr_s,
            gib_s(k * CS, incr_s),
        ),
        (
            "restore 256 MiB from memory tier",
            restore_s,
            gib_s(LEN, restore_s),
        ),
        (
            "full checkpoint -> disk tier (durable)",
            disk_s,
            gib_s(LEN, disk_s),
        ),
    ];
    println!(
        "store benchmark: 256 MiB incompressible image, 64 KiB chunks, {threads} hashing threads, {reps} reps (medians)"
    );
    println!("{:<44} {:>10} {:>10}", "operation", "ms", "GiB/s");
    for (name, s, g) in rows {
        println!("{name:<44} {:>10.2} {:>10.2}", s * 1e3, g);
    }
    println!(
        "disk tier compression: {:?}; full/blake3 ratio: {:.2}; cores used by full checkpoint: {:.2} of {threads}",
        disk_cfg.disk_compression,
        blake3_s / full_s,
        full_cores
    );
    println!(
        "{{\"incremental_ms_256mib_1pct\": {:.3}, \"full_checkpoint_gib_s\": {:.3}, \"blake3_gib_s\": {:.3}, \"full_over_blake3\": {:.3}, \"disk_full_checkpoint_gib_s\": {:.3}, \"full_checkpoint_cold_gib_s\": {:.3}, \"restore_gib_s\": {:.3}, \"hash_threads\": {}, \"full_cores_used\": {:.2}}}",
        incr_s * 1e3,
        gib_s(LEN, full_s),
        gib_s(LEN, blake3_s),
        blake3_s / full_s,
        gib_s(LEN, disk_s),
        gib_s(LEN, cold),
        gib_s(LEN, restore_s),
        threads,
        full_cores
    );
}
