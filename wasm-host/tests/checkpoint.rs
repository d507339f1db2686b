//! Checkpoints of running guests in a content-addressed store: incremental checkpoints
//! hash exactly the chunks the guest wrote (dirty tracking), chains of them restore
//! bit-identically, and tracking on or off gives the same checkpoints and outputs.
//!
//! The Rust guests are built by `scripts/build-guests` (which `scripts/test` runs first).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use store::{Checkpoint, Store, StoreConfig};
use wasm_host::checkpoint::{run_with_checkpoints, CheckpointPlan};
use wasm_host::{BufferSink, Host, HostConfig, Job, JobSpec, Limits, Outcome, Preopen};

fn guest(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../guests/out/{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|_| {
        panic!(
            "guest {} not found: run scripts/build-guests first",
            path.display()
        )
    })
}

/// A host with tracking on (default 64 KiB fault granule) or off.
fn host(tracking: bool) -> Arc<Host> {
    static ON: OnceLock<Arc<Host>> = OnceLock::new();
    static OFF: OnceLock<Arc<Host>> = OnceLock::new();
    let cell = if tracking { &ON } else { &OFF };
    cell.get_or_init(|| {
        Host::new(HostConfig {
            dirty_tracking: tracking,
            ..HostConfig::default()
        })
        .expect("host")
    })
    .clone()
}

/// A host tracking single 4 KiB pages, for page-exact dirty sets with 4 KiB chunks.
fn fine_host() -> Arc<Host> {
    static FINE: OnceLock<Arc<Host>> = OnceLock::new();
    FINE.get_or_init(|| {
        Host::new(HostConfig {
            dirty_granule: 4096,
            ..HostConfig::default()
        })
        .expect("host")
    })
    .clone()
}

fn store(chunk_size: u32) -> Store {
    Store::in_memory(StoreConfig {
        chunk_size,
        cache_bytes: 2 << 30,
        ..StoreConfig::default()
    })
    .expect("store")
}

/// Memory pages (4 KiB) of the dirtying guest, and how many it writes per step (1 %).
const PAGES: u32 = 4096;
const PER_STEP: u32 = 41;
const STEPS: u32 = 12;

/// The 4 KiB pages step `s` of the dirtying guest writes (never page 0, which holds the
/// step counter): `(s * 1237 + k * 97) % 4095 + 1` for `k < PER_STEP`, all distinct.
fn step_pages(s: u32) -> Vec<u32> {
    (0..PER_STEP)
        .map(|k| (s * 1237 + k * 97) % (PAGES - 1) + 1)
        .collect()
}

/// A guest with 16 MiB of memory: fills all of it (0xAB), then runs `STEPS` steps, each
/// stamping `PER_STEP` pages (an `i32.store` of the step and the page number, and a
/// `memory.fill`, which wasmtime runs as a libcall) and counting at address 0. The step
/// function is straight-line code, so the only yield point is the loop header in `_start`.
fn dirtier_wat() -> String {
    let mut step = String::new();
    for k in 0..PER_STEP {
        step.push_str(&format!(
            "(local.set $a (i32.shl (i32.add (i32.rem_u (i32.add (i32.mul (local.get $s) (i32.const 1237)) (i32.const {})) (i32.const {})) (i32.const 1)) (i32.const 12)))
             (i32.store offset=4 (local.get $a) (i32.add (local.get $s) (i32.const 1)))
             (i32.store offset=8 (local.get $a) (local.get $a))
             (memory.fill (i32.add (local.get $a) (i32.const 64)) (local.get $s) (i32.const 32))\n",
            k * 97,
            PAGES - 1
        ));
    }
    format!(
        "(module
          (memory (export \"memory\") {wasm_pages})
          (func $step (param $s i32) (local $a i32)
            {step}
            (i32.store (i32.const 0) (i32.add (local.get $s) (i32.const 1))))
          (func (export \"_start\") (local $s i32)
            (memory.fill (i32.const 0) (i32.const 0xAB) (i32.const {bytes}))
            (i32.store (i32.const 0) (i32.const 0))
            (loop $l
              (call $step (local.get $s))
              (local.set $s (i32.add (local.get $s) (i32.const 1)))
              (br_if $l (i32.lt_u (local.get $s) (i32.const {STEPS}))))))",
        wasm_pages = PAGES / 16,
        bytes = PAGES * 4096,
    )
}

fn counter(cp: &Checkpoint, store: &Store) -> u32 {
    let mem = store.restore_memory(&cp.manifest).expect("restore memory");
    u32::from_le_bytes(mem[..4].try_into().expect("4 bytes"))
}

/// Pauses at every yield point reached and checkpoints there; returns the checkpoints
/// with their (hashed, written) counts and the steps each one covered.
fn dirtier_run(tracking: bool) -> Vec<(Checkpoint, u64, u64, u32, u32)> {
    let host = if tracking { fine_host() } else { host(false) };
    let store = store(4096);
    let module = host.load(dirtier_wat().as_bytes()).expect("load");
    let mut job = Job::start(
        &host,
        module,
        JobSpec::new(vec!["dirtier".into()]),
        Box::new(BufferSink::default()),
    )
    .expect("start");
    assert_eq!(job.dirty_tracking(), tracking);
    let mut out = Vec::new();
    let mut parent: Option<Checkpoint> = None;
    let mut done = 0u32;
    loop {
        job.pause_handle().request();
        match job.run().expect("run") {
            Outcome::Exited(code) => {
                assert_eq!(code, 0);
                done = u32::from_le_bytes(job.memory_data()[..4].try_into().expect("4 bytes"));
                break;
            }
            Outcome::Paused => {}
        }
        let info = job
            .checkpoint(&store, parent.as_ref(), "dirtier", 1)
            .expect("checkpoint");
        // The checkpoint holds exactly the live memory: no write went unseen.
        let restored = store
            .restore_memory(&info.checkpoint.manifest)
            .expect("restore memory");
        assert!(
            restored == job.memory_data(),
            "checkpoint {} differs from live memory (tracking {tracking})",
            out.len()
        );
        let now = counter(&info.checkpoint, &store);
        out.push((
            info.checkpoint.clone(),
            info.chunks_hashed,
            info.chunks_written,
            done,
            now,
        ));
        done = now;
        parent = Some(info.checkpoint);
    }
    assert_eq!(done, STEPS, "every step ran");
    out
}

#[test]
fn one_percent_dirty_writes_only_those_chunks() {
    let runs = dirtier_run(true);
    assert!(
        runs.len() > STEPS as usize / 2,
        "{} checkpoints",
        runs.len()
    );
    let total = u64::from(PAGES);
    // The first checkpoint is full.
    assert_eq!(runs[0].1, total);
    let mut incremental = 0;
    for (k, (_, hashed, written, from, to)) in runs.iter().enumerate().skip(1) {
        let mut expected: BTreeSet<u32> = (*from..*to).flat_map(step_pages).collect();
        if to > from {
            expected.insert(0);
            incremental += 1;
        }
        let n = expected.len() as u64;
        assert_eq!(
            *hashed, n,
            "checkpoint {k} (steps {from}..{to}) hashed {hashed} chunks, {n} were written"
        );
        assert_eq!(
            *written,
            n + 1,
            "checkpoint {k}: stored {written} chunks, expected {n} + the manifest"
        );
        assert!(n * 100 <= 2 * total * u64::from((to - from).max(1)));
    }
    assert!(
        incremental >= STEPS as usize - 1,
        "{incremental} incremental checkpoints"
    );
}

#[test]
fn tracking_on_and_off_give_identical_checkpoints() {
    let on = dirtier_run(true);
    let off = dirtier_run(false);
    assert_eq!(on.len(), off.len(), "same pauses");
    for (k, (a, b)) in on.iter().zip(&off).enumerate() {
        assert_eq!(
            a.0.manifest.memory, b.0.manifest.memory,
            "checkpoint {k}: memory"
        );
        assert_eq!(
            a.0.manifest.globals, b.0.manifest.globals,
            "checkpoint {k}: globals"
        );
        assert_eq!((a.3, a.4), (b.3, b.4), "checkpoint {k}: steps");
        // Without tracking every chunk is hashed; the store writes the same new ones.
        assert_eq!(
            b.1,
            u64::from(PAGES),
            "checkpoint {k}: untracked hashes all"
        );
        assert_eq!(a.2, b.2, "checkpoint {k}: chunks written");
    }
}

/// Host functions write guest memory too: the kernel (`pread`/`read` into a
/// write-protected buffer would fail with EFAULT) and roam's own Rust code
/// (`random_get`, result pointers). The guest traps if any call fails.
#[test]
fn host_writes_into_protected_pages() {
    const WAT: &str = r#"(module
      (import "wasi_snapshot_preview1" "path_open"
        (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_pread" (func $fd_pread (param i32 i32 i32 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 8)
      (data (i32.const 0) "in.bin")
      (func (export "_start") (local $s i32)
        ;; fd at 16 (written by the host)
        (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 6) (i32.const 0)
              (i64.const -1) (i64.const -1) (i32.const 0) (i32.const 16))
          (then unreachable))
        (loop $l
          ;; read 8 KiB into 0x10000 (pread at s * 8 KiB on even steps, read on odd ones)
          (i32.store (i32.const 32) (i32.const 0x10000))
          (i32.store (i32.const 36) (i32.const 8192))
          (if (i32.and (local.get $s) (i32.const 1))
            (then (if (call $fd_read (i32.load (i32.const 16)) (i32.const 32) (i32.const 1) (i32.const 0x3f000))
                    (then unreachable)))
            (else (if (call $fd_pread (i32.load (i32.const 16)) (i32.const 32) (i32.const 1)
                        (i64.extend_i32_u (i32.mul (local.get $s) (i32.const 8192))) (i32.const 0x3f000))
                    (then unreachable))))
          (if (i32.ne (i32.load (i32.const 0x3f000)) (i32.const 8192)) (then unreachable))
          ;; 32 random bytes right after the data
          (if (call $random_get (i32.const 0x12000) (i32.const 32)) (then unreachable))
          ;; write both to stdout
          (i32.store (i32.const 48) (i32.const 0x10000))
          (i32.store (i32.const 52) (i32.const 8224))
          (if (call $fd_write (i32.const 1) (i32.const 48) (i32.const 1) (i32.const 0x3e000))
            (then unreachable))
          (local.set $s (i32.add (local.get $s) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $s) (i32.const 8))))))"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let input: Vec<u8> = (0..8 * 8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("in.bin"), &input).expect("input");
    for host in [host(true), fine_host()] {
        let module = host.load(WAT.as_bytes()).expect("load");
        let spec = || {
            let mut spec = JobSpec::new(vec!["reader".into()]);
            spec.preopens = vec![Preopen {
                host: dir.path().to_path_buf(),
                guest: "/data".into(),
            }];
            spec.seed = [9; 32];
            spec
        };
        let straight_sink = BufferSink::default();
        let mut job = Job::start(
            &host,
            module.clone(),
            spec(),
            Box::new(straight_sink.clone()),
        )
        .expect("start");
        assert_eq!(job.run().expect("straight run"), Outcome::Exited(0));

        let store = store(4096);
        let sink = BufferSink::default();
        let mut job = Job::start(&host, module, spec(), Box::new(sink.clone())).expect("start");
        let mut parent: Option<Checkpoint> = None;
        let mut checkpoints = 0;
        let mut buffer_dirty = 0;
        loop {
            job.pause_handle().request();
            if job.run().expect("run") == Outcome::Exited(0) {
                break;
            }
            let info = job
                .checkpoint(&store, parent.as_ref(), "reader", 1)
                .expect("checkpoint");
            let restored = store
                .restore_memory(&info.checkpoint.manifest)
                .expect("restore");
            assert!(
                restored == job.memory_data(),
                "checkpoint {checkpoints} differs"
            );
            // Was the read buffer (page 16) among the chunks of this checkpoint's changes?
            if let Some(p) = &parent {
                if p.manifest.memory.get(16) != info.checkpoint.manifest.memory.get(16) {
                    buffer_dirty += 1;
                }
            }
            checkpoints += 1;
            parent = Some(info.checkpoint);
        }
        assert!(checkpoints >= 16, "{checkpoints} checkpoints");
        assert!(
            buffer_dirty >= 6,
            "the read buffer changed in {buffer_dirty} checkpoints"
        );
        let out = sink.stdout_bytes();
        assert!(
            out == straight_sink.stdout_bytes(),
            "stdout differs from a straight run"
        );
        assert_eq!(out.len(), 8 * 8224);
        assert_eq!(&out[..8192], &input[..8192], "first pread");
        assert_eq!(
            &out[8224..8224 + 8192],
            &input[..8192],
            "first read (position 0)"
        );
    }
}

struct Outputs {
    code: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

fn straight(host: &Host, name: &str, args: &[&str]) -> Outputs {
    let module = host.load(&guest(name)).expect("load");
    let sink = BufferSink::default();
    let mut argv = vec![name.to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let mut spec = JobSpec::new(argv);
    spec.seed = [7; 32];
    let mut job = Job::start(host, module, spec, Box::new(sink.clone())).expect("start");
    let Outcome::Exited(code) = job.run().expect("run") else {
        panic!("paused without a request");
    };
    Outputs {
        code,
        stdout: sink.stdout_bytes(),
        stderr: sink.stderr_bytes(),
    }
}

/// Runs `name` pausing every few milliseconds; each pause writes an incremental
/// checkpoint, checked against live memory; every third one the job is dropped and
/// restored from the store into a fresh instance.
fn through_checkpoints(tracking: bool, name: &str, args: &[&str]) -> (Outputs, usize, usize) {
    let host = host(tracking);
    let store = store(64 << 10);
    let module = host.load(&guest(name)).expect("load");
    let sink = BufferSink::default();
    let mut argv = vec![name.to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let mut spec = JobSpec::new(argv);
    spec.seed = [7; 32];
    let mut job = Job::start(&host, module, spec, Box::new(sink.clone())).expect("start");
    let handle_delay = [3u64, 7, 5, 11, 2];
    let mut parent: Option<Checkpoint> = None;
    let (mut count, mut incremental) = (0usize, 0usize);
    let code = loop {
        let handle = job.pause_handle();
        let delay = Duration::from_millis(handle_delay[count % handle_delay.len()]);
        let timer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            handle.request();
        });
        let outcome = job.run().expect("run");
        timer.join().expect("timer");
        match outcome {
            Outcome::Exited(code) => break code,
            Outcome::Paused => {}
        }
        let info = job
            .checkpoint(&store, parent.as_ref(), name, 1)
            .expect("checkpoint");
        let chunks = info.checkpoint.manifest.memory.chunk_count();
        if parent.is_some() && info.chunks_hashed < chunks {
            incremental += 1;
        }
        let restored = store
            .restore_memory(&info.checkpoint.manifest)
            .expect("restore memory");
        assert!(
            restored == job.memory_data(),
            "{name}: checkpoint {count} differs from live memory"
        );
        count += 1;
        parent = Some(info.checkpoint);
        if count % 3 == 0 {
            drop(job);
            let (restored, cp) = Job::restore_from_checkpoint(
                &host,
                &store,
                &parent.as_ref().expect("parent").id,
                Vec::new(),
                &Limits::default(),
                Box::new(sink.clone()),
            )
            .expect("restore from checkpoint");
            assert_eq!(Some(&cp), parent.as_ref());
            job = restored;
        }
    };
    (
        Outputs {
            code,
            stdout: sink.stdout_bytes(),
            stderr: sink.stderr_bytes(),
        },
        count,
        incremental,
    )
}

fn check_round_trip(name: &str, args: &[&str]) {
    let reference = straight(&host(true), name, args);
    assert!(!reference.stdout.is_empty());
    for tracking in [true, false] {
        let (got, count, incremental) = through_checkpoints(tracking, name, args);
        assert!(count >= 4, "{name}: only {count} checkpoints");
        if tracking {
            assert!(
                incremental * 2 >= count,
                "{name}: only {incremental} of {count} checkpoints were incremental"
            );
        } else {
            assert_eq!(
                incremental, 0,
                "{name}: untracked checkpoints hash everything"
            );
        }
        assert_eq!(got.code, reference.code, "{name}: exit code");
        assert!(
            got.stdout == reference.stdout,
            "{name} (tracking {tracking}): stdout differs ({} vs {} bytes)",
            got.stdout.len(),
            reference.stdout.len()
        );
        assert_eq!(got.stderr, reference.stderr, "{name}: stderr");
    }
}

#[test]
fn sieve_through_incremental_checkpoints_resumes_bit_identically() {
    check_round_trip("sieve", &["16"]);
}

#[test]
fn tracker_through_incremental_checkpoints_resumes_bit_identically() {
    check_round_trip("tracker", &["4000"]);
}

#[test]
fn run_with_checkpoints_chains_parents() {
    let host = host(true);
    let store = store(64 << 10);
    let module = host.load(&guest("sieve")).expect("load");
    let sink = BufferSink::default();
    let mut job = Job::start(
        &host,
        module,
        JobSpec::new(vec!["sieve".into(), "16".into()]),
        Box::new(sink.clone()),
    )
    .expect("start");
    let plan = CheckpointPlan {
        every: Duration::from_millis(5),
        job_id: "sieve-1".into(),
        generation: 3,
    };
    let mut seen = Vec::new();
    let (code, last) = run_with_checkpoints(&mut job, &store, &plan, None, |info, _| {
        seen.push(info.checkpoint.clone())
    })
    .expect("run");
    assert_eq!(code, straight(&host, "sieve", &["16"]).code);
    assert!(seen.len() >= 3, "{} checkpoints", seen.len());
    assert_eq!(last.as_ref(), seen.last());
    assert_eq!(seen[0].manifest.parent, None);
    for w in seen.windows(2) {
        assert_eq!(w[1].manifest.parent, Some(w[0].id));
        assert_eq!(w[1].manifest.generation, 3);
    }
    let listed = store.list_checkpoints(Some("sieve-1"));
    assert_eq!(listed.len(), seen.len());
    assert_eq!(store.latest("sieve-1").map(|r| r.id), last.map(|c| c.id));
    assert!(store.verify().is_clean());
}

/// With memory write-protected, a real out-of-bounds access is still the guest's trap
/// (the tracking handler only claims writes to clean pages inside memory).
#[test]
fn out_of_bounds_still_traps_while_tracking() {
    let wat = r#"(module
      (memory (export "memory") 2)
      (func $tick (param $i i32) (i32.store (i32.const 64) (local.get $i)))
      (func (export "_start") (local $i i32)
        (loop $l
          (call $tick (local.get $i))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 4))))
        (i32.store (i32.const 0x30000) (i32.const 1))))"#;
    let host = fine_host();
    let store = store(4096);
    let module = host.load(wat.as_bytes()).expect("load");
    let mut job = Job::start(
        &host,
        module,
        JobSpec::new(vec!["oob".into()]),
        Box::new(BufferSink::default()),
    )
    .expect("start");
    let mut parent: Option<Checkpoint> = None;
    let err = loop {
        job.pause_handle().request();
        match job.run() {
            Ok(Outcome::Paused) => {}
            Ok(Outcome::Exited(c)) => panic!("exited with {c} instead of trapping"),
            Err(e) => break e,
        }
        let info = job
            .checkpoint(&store, parent.as_ref(), "oob", 1)
            .expect("checkpoint");
        parent = Some(info.checkpoint);
    };
    assert!(parent.is_some(), "no checkpoint before the trap");
    assert!(
        err.to_string().contains("out of bounds"),
        "unexpected error: {err}"
    );
}
