//! Post-copy restores (`Job::restore_lazily`, `LazyMemory`): a job resumed from a
//! checkpoint whose memory chunks are mostly not here yet runs to the same output as a
//! straight run, with chunks arriving on demand (first touch) and in the background;
//! a job whose chunks can never arrive is failed and has no further effect.
//!
//! The Rust guests are built by `scripts/build-guests` (which `scripts/test` runs first).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use store::{Checkpoint, ChunkId, Store, StoreConfig};
use wasm_host::{BufferSink, Host, HostConfig, Job, JobSpec, LazyMemory, Limits, Outcome};

fn guest(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../guests/out/{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|_| {
        panic!(
            "guest {} not found: run scripts/build-guests first",
            path.display()
        )
    })
}

fn host() -> Arc<Host> {
    Host::new(HostConfig::default()).expect("host")
}

fn empty_store() -> Store {
    Store::in_memory(StoreConfig {
        chunk_size: 64 << 10,
        cache_bytes: 1 << 30,
        ..StoreConfig::default()
    })
    .expect("store")
}

fn spec(name: &str, args: &[&str]) -> JobSpec {
    let mut argv = vec![name.to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let mut spec = JobSpec::new(argv);
    spec.seed = [3; 32];
    spec
}

fn straight(host: &Host, name: &str, args: &[&str]) -> (i32, Vec<u8>) {
    let sink = BufferSink::default();
    let module = host.load(&guest(name)).expect("load");
    let mut job =
        Job::start(host, module, spec(name, args), Box::new(sink.clone())).expect("start");
    let Outcome::Exited(code) = job.run().expect("run") else {
        panic!("paused without a request");
    };
    (code, sink.stdout_bytes())
}

/// Runs `name` for `after`, pauses it and checkpoints it into `store`; returns the
/// checkpoint and the output so far.
fn checkpoint_after(
    host: &Host,
    store: &Store,
    name: &str,
    args: &[&str],
    after: Duration,
) -> (Checkpoint, Vec<u8>) {
    let sink = BufferSink::default();
    let module = host.load(&guest(name)).expect("load");
    let mut job =
        Job::start(host, module, spec(name, args), Box::new(sink.clone())).expect("start");
    let handle = job.pause_handle();
    let timer = std::thread::spawn(move || {
        std::thread::sleep(after);
        handle.request();
    });
    let outcome = job.run().expect("run");
    timer.join().expect("timer");
    assert!(
        matches!(outcome, Outcome::Paused),
        "{name} ended before the pause; give it more work"
    );
    let info = job.checkpoint(store, None, name, 1).expect("checkpoint");
    (info.checkpoint, sink.stdout_bytes())
}

/// The destination's store: the module, the files and `keep` of the memory chunks.
fn partial_copy(src: &Store, cp: &Checkpoint, keep: impl Fn(u64) -> bool) -> Store {
    let dst = empty_store();
    let copy = |id: &ChunkId| {
        if !dst.contains(id) {
            let data = src.get_chunk(id).expect("source chunk");
            assert_eq!(dst.put_chunk(&data).expect("put"), *id);
        }
    };
    for (_, id) in &cp.manifest.module.map.chunks {
        copy(id);
    }
    for blob in cp.manifest.extra.values() {
        for (_, id) in &blob.map.chunks {
            copy(id);
        }
    }
    for (slot, id) in &cp.manifest.memory.chunks {
        if keep(*slot) {
            copy(id);
        }
    }
    dst
}

fn sink_with(stdout: &[u8]) -> BufferSink {
    BufferSink {
        stdout: Arc::new(Mutex::new(stdout.to_vec())),
        stderr: Arc::new(Mutex::new(Vec::new())),
    }
}

/// Feeds a lazy memory from `src`: demanded slots first, the rest in the background
/// (one at a time, with a short pause, so the job runs while memory is incomplete).
fn feeder(
    lazy: LazyMemory,
    src: Arc<Store>,
    ids: Vec<(u64, ChunkId)>,
    demands: mpsc::Receiver<u64>,
    chunk: usize,
    mem_len: usize,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let id_of: std::collections::HashMap<u64, ChunkId> = ids.iter().copied().collect();
        let mut background: Vec<u64> = ids.iter().map(|(s, _)| *s).collect();
        background.reverse();
        let mut demanded = 0;
        // A failed install fails the memory, so the job stops instead of waiting forever.
        let install = |slot: u64| {
            let id = id_of[&slot];
            let data = src.get_chunk(&id).expect("chunk at the source");
            let start = slot as usize * chunk;
            assert_eq!(data.len(), chunk.min(mem_len - start));
            if let Err(e) = lazy.install(slot, &data) {
                lazy.fail();
                panic!("install of slot {slot}: {e}");
            }
        };
        while !lazy.is_complete() {
            while let Ok(slot) = demands.try_recv() {
                demanded += 1;
                install(slot);
            }
            match background.pop() {
                Some(slot) => {
                    install(slot);
                    std::thread::sleep(Duration::from_micros(300));
                }
                None => {
                    if let Ok(slot) = demands.recv_timeout(Duration::from_millis(50)) {
                        demanded += 1;
                        install(slot);
                    }
                }
            }
        }
        demanded
    })
}

fn lazy_run(name: &str, args: &[&str], after: Duration, keep: impl Fn(u64) -> bool) {
    let host = host();
    let (code, reference) = straight(&host, name, args);
    assert!(!reference.is_empty());
    let src = Arc::new(empty_store());
    let (cp, out_so_far) = checkpoint_after(&host, &src, name, args, after);
    let dst = partial_copy(&src, &cp, keep);
    let manifest = cp.manifest.encode();
    let dst_host = Host::new(HostConfig::default()).expect("destination host");
    let sink = sink_with(&out_so_far);
    let wasm_host::LazyRestore {
        mut job,
        checkpoint: restored,
        missing: lazy_slots,
    } = Job::restore_lazily(
        &dst_host,
        &dst,
        &manifest,
        &cp.id,
        Vec::new(),
        &Limits::default(),
        Box::new(sink.clone()),
    )
    .expect("lazy restore");
    assert_eq!(restored.id, cp.id);
    assert!(!lazy_slots.is_empty(), "nothing left to fill lazily");
    assert!(
        !dst.list_checkpoints(Some(name))
            .iter()
            .any(|r| r.id == cp.id),
        "an incomplete checkpoint must not be listed"
    );
    let (tx, rx) = mpsc::channel();
    let slots: BTreeSet<u64> = lazy_slots.iter().map(|(s, _)| *s).collect();
    let lazy = job
        .make_lazy(
            slots,
            cp.manifest.memory.chunk_size,
            Arc::new(move |slot| {
                let _ = tx.send(slot);
            }),
        )
        .expect("make lazy");
    let feed = feeder(
        lazy.clone(),
        src.clone(),
        lazy_slots,
        rx,
        cp.manifest.memory.chunk_size as usize,
        cp.manifest.memory.len as usize,
    );
    let outcome = job.run().expect("run");
    let demanded = feed.join().expect("feeder");
    assert!(matches!(outcome, Outcome::Exited(c) if c == code));
    assert!(lazy.is_complete() && !lazy.is_poisoned());
    assert!(
        sink.stdout_bytes() == reference,
        "{name}: output differs after a lazy restore ({} vs {} bytes)",
        sink.stdout_bytes().len(),
        reference.len()
    );
    let (waits, zeros) = lazy.fault_counts();
    eprintln!("{name}: {demanded} chunks demanded, {waits} waiting faults, {zeros} zero faults");
}

#[test]
fn bigstate_resumes_with_most_memory_missing() {
    // Keep only every 8th chunk: the job starts with ~1/8 of its state.
    lazy_run(
        "bigstate",
        &["--mib", "16", "--steps", "20000"],
        Duration::from_millis(150),
        |s| s % 8 == 0,
    );
}

#[test]
fn tracker_resumes_with_no_memory_chunk_present() {
    lazy_run("tracker", &["4000"], Duration::from_millis(60), |_| false);
}

#[test]
fn a_failed_lazy_memory_stops_the_job_without_output() {
    let host = host();
    let src = empty_store();
    let (cp, out_so_far) =
        checkpoint_after(&host, &src, "tracker", &["4000"], Duration::from_millis(60));
    let dst = partial_copy(&src, &cp, |_| false);
    let sink = sink_with(&out_so_far);
    let wasm_host::LazyRestore {
        mut job,
        missing: lazy_slots,
        ..
    } = Job::restore_lazily(
        &host,
        &dst,
        &cp.manifest.encode(),
        &cp.id,
        Vec::new(),
        &Limits::default(),
        Box::new(sink.clone()),
    )
    .expect("lazy restore");
    let (tx, rx) = mpsc::channel();
    let lazy = job
        .make_lazy(
            lazy_slots.iter().map(|(s, _)| *s).collect(),
            cp.manifest.memory.chunk_size,
            Arc::new(move |slot| {
                let _ = tx.send(slot);
            }),
        )
        .expect("make lazy");
    // The source "dies" on the first demand: nothing ever arrives.
    let failer = {
        let lazy = lazy.clone();
        std::thread::spawn(move || {
            let first = rx.recv_timeout(Duration::from_secs(30));
            lazy.fail();
            first.is_ok()
        })
    };
    let outcome = job.run();
    assert!(
        failer.join().expect("failer"),
        "the job never touched a missing chunk"
    );
    assert!(
        !matches!(outcome, Ok(Outcome::Exited(_))),
        "a job on an incomplete memory ran to its end: {outcome:?}"
    );
    assert!(lazy.is_poisoned());
    assert_eq!(
        sink.stdout_bytes(),
        out_so_far,
        "a poisoned job must not emit anything"
    );
}
