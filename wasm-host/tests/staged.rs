//! Staged restores, as a migration destination does them: stage from an early
//! checkpoint's memory, update to later ones, finish with the last. The job must equal a
//! plain `restore_from_checkpoint` of the last checkpoint (memory, WASI state, dirty
//! tracking, output), and the updates and the finish must touch only the chunks that
//! changed: they are given stores that hold nothing else.
//!
//! The Rust guests are built by `scripts/build-guests` (which `scripts/test` runs first).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use store::{Checkpoint, ChunkId, ChunkMap, Store, StoreConfig, StoreError};
use wasm_host::snapshot::JobState;
use wasm_host::{
    BufferSink, CheckpointError, Host, HostConfig, Job, JobSpec, Limits, Outcome, StagedRestore,
};

fn guest(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../guests/out/{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|_| {
        panic!(
            "guest {} not found: run scripts/build-guests first",
            path.display()
        )
    })
}

/// The node the job runs on.
fn source() -> Arc<Host> {
    static HOST: OnceLock<Arc<Host>> = OnceLock::new();
    HOST.get_or_init(|| Host::new(HostConfig::default()).expect("host"))
        .clone()
}

/// The node it moves to: a host of its own, which gets the module from the store.
fn destination() -> Arc<Host> {
    static HOST: OnceLock<Arc<Host>> = OnceLock::new();
    HOST.get_or_init(|| Host::new(HostConfig::default()).expect("host"))
        .clone()
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
    spec.seed = [7; 32];
    spec
}

#[derive(Debug, PartialEq, Eq)]
struct Outputs {
    code: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

fn straight(name: &str, args: &[&str]) -> Outputs {
    let host = source();
    let sink = BufferSink::default();
    let module = host.load(&guest(name)).expect("load");
    let mut job =
        Job::start(&host, module, spec(name, args), Box::new(sink.clone())).expect("start");
    let Outcome::Exited(code) = job.run().expect("run") else {
        panic!("paused without a request");
    };
    Outputs {
        code,
        stdout: sink.stdout_bytes(),
        stderr: sink.stderr_bytes(),
    }
}

/// A checkpoint and the output the job had written when it was taken.
struct Taken {
    cp: Checkpoint,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Taken {
    /// A sink that already holds the output up to this checkpoint, as the destination's
    /// sink would (it drops replayed bytes and refuses gaps).
    fn sink(&self) -> BufferSink {
        BufferSink {
            stdout: Arc::new(Mutex::new(self.stdout.clone())),
            stderr: Arc::new(Mutex::new(self.stderr.clone())),
        }
    }
}

/// Runs `name` on the source to its end, pausing it after every `delay` of running to
/// write an incremental checkpoint.
fn checkpoints(store: &Store, name: &str, args: &[&str], delay: Duration) -> Vec<Taken> {
    let host = source();
    let sink = BufferSink::default();
    let module = host.load(&guest(name)).expect("load");
    let mut job =
        Job::start(&host, module, spec(name, args), Box::new(sink.clone())).expect("start");
    let mut parent: Option<Checkpoint> = None;
    let mut taken = Vec::new();
    loop {
        let handle = job.pause_handle();
        let timer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            handle.request();
        });
        let outcome = job.run().expect("run");
        timer.join().expect("timer");
        if let Outcome::Exited(_) = outcome {
            return taken;
        }
        let info = job
            .checkpoint(store, parent.as_ref(), name, 1)
            .expect("checkpoint");
        parent = Some(info.checkpoint.clone());
        taken.push(Taken {
            cp: info.checkpoint,
            stdout: sink.stdout_bytes(),
            stderr: sink.stderr_bytes(),
        });
    }
}

/// Slots whose chunk differs between two maps of one chunk size (absent = zero), with
/// the chunk to write.
fn changed(old: &ChunkMap, new: &ChunkMap) -> Vec<(u64, Option<ChunkId>)> {
    assert_eq!(old.chunk_size, new.chunk_size);
    (0..new.chunk_count())
        .filter_map(|i| {
            let was = (i < old.chunk_count()).then(|| old.get(i)).flatten();
            (was != new.get(i)).then(|| (i, new.get(i)))
        })
        .collect()
}

fn copy_chunk(from: &Store, to: &Store, id: &ChunkId) {
    let data = from.get_chunk(id).expect("source chunk");
    assert_eq!(to.put_chunk(&data).expect("put"), *id);
}

/// What the destination has after the first pre-copy round: every chunk of `cp`.
fn first_round(src: &Store, cp: &Checkpoint) -> Store {
    let dst = empty_store();
    for (id, _) in cp.manifest.referenced() {
        if !dst.contains(&id) {
            copy_chunk(src, &dst, &id);
        }
    }
    dst
}

/// Only the memory chunks of `new` that differ from `old`'s, and (with `manifest`) the
/// checkpoint itself and its files: nothing a staged restore may skip.
fn delta(src: &Store, old: &ChunkMap, new: &Checkpoint, manifest: bool) -> Store {
    let dst = empty_store();
    for (_, id) in changed(old, &new.manifest.memory) {
        if let Some(id) = id {
            copy_chunk(src, &dst, &id);
        }
    }
    if manifest {
        for blob in new.manifest.extra.values() {
            for (_, id) in &blob.map.chunks {
                copy_chunk(src, &dst, id);
            }
        }
        let id = dst.put_chunk(&new.manifest.encode()).expect("manifest");
        assert_eq!(id, new.id, "a manifest's id is the hash of its encoding");
    }
    dst
}

/// Runs a paused job to its end.
fn finish_run(mut job: Job, sink: &BufferSink) -> Outputs {
    let Outcome::Exited(code) = job.run().expect("run") else {
        panic!("paused without a request");
    };
    Outputs {
        code,
        stdout: sink.stdout_bytes(),
        stderr: sink.stderr_bytes(),
    }
}

/// Checkpoints k, k + 1, k + 2 of a run (`k` chosen by `pick`) as a migration sees
/// them: stage from the first, update to the second, finish with the third.
fn check_staged(name: &str, args: &[&str], pick: impl Fn(&[Taken]) -> usize) {
    let reference = straight(name, args);
    assert!(!reference.stdout.is_empty());
    let src = empty_store();
    let taken = checkpoints(&src, name, args, Duration::from_millis(5));
    let k = pick(&taken);
    assert!(
        k + 2 < taken.len(),
        "{name}: checkpoint {k} of {} picked",
        taken.len()
    );
    let (cp1, cp2, last) = (&taken[k].cp, &taken[k + 1].cp, &taken[k + 2]);

    let host = destination();
    let sink = last.sink();
    let mut staged = StagedRestore::stage(
        &host,
        &first_round(&src, cp1),
        &cp1.manifest.module,
        &cp1.manifest.memory,
        Vec::new(),
        &Limits::default(),
        Box::new(sink.clone()),
    )
    .expect("stage");
    assert_eq!(staged.memory_map(), &cp1.manifest.memory);
    // A pre-copy round: only the chunks that changed are sent.
    let map = &cp2.manifest.memory;
    let want = changed(&cp1.manifest.memory, map).len();
    let written = staged
        .update(&delta(&src, &cp1.manifest.memory, cp2, false), map)
        .expect("update from the changed chunks alone");
    assert_eq!(
        written, want,
        "{name}: update wrote {written} chunks, {want} differ"
    );
    assert!(
        written < map.chunk_count() as usize,
        "{name}: all {written} chunks changed"
    );
    assert_eq!(staged.memory_map(), map);
    // Stop and copy: the final manifest, its files and the chunks that changed since.
    let last_map = &last.cp.manifest.memory;
    let differ = changed(map, last_map).len() as u64;
    assert!(
        differ < last_map.chunk_count(),
        "{name}: {differ} of {} chunks differ",
        last_map.chunk_count()
    );
    let final_store = delta(&src, map, &last.cp, true);
    let (mut job, cp) = staged
        .finish(&final_store, &last.cp.id)
        .expect("finish from the changed chunks alone");
    assert_eq!(cp, last.cp, "{name}: the checkpoint finished with");

    let plain_sink = last.sink();
    let (mut plain, plain_cp) = Job::restore_from_checkpoint(
        &host,
        &src,
        &last.cp.id,
        Vec::new(),
        &Limits::default(),
        Box::new(plain_sink.clone()),
    )
    .expect("restore from checkpoint");
    assert_eq!(plain_cp, cp);
    assert!(job.is_paused());
    assert!(
        job.memory_data() == plain.memory_data(),
        "{name}: memory differs from a plain restore"
    );
    assert_eq!(job.wasi_state(), plain.wasi_state(), "{name}: WASI state");
    let captured = JobState::decode(&cp.manifest.host_state).expect("host state");
    assert_eq!(
        job.wasi_state(),
        &captured.wasi,
        "{name}: WASI state is not the final checkpoint's"
    );

    // One more yield point on both, then an incremental checkpoint from the finished
    // one: same dirty set (none of the restore's writes in it), same memory.
    for x in [&mut job, &mut plain] {
        x.pause_handle().request();
        assert_eq!(x.run().expect("step"), Outcome::Paused);
    }
    let a = job
        .checkpoint(&src, Some(&cp), name, 2)
        .expect("checkpoint");
    let b = plain
        .checkpoint(&src, Some(&cp), name, 2)
        .expect("checkpoint");
    assert_eq!(
        a.checkpoint.manifest.memory, b.checkpoint.manifest.memory,
        "{name}: next checkpoint's memory"
    );
    assert_eq!(a.chunks_hashed, b.chunks_hashed, "{name}: chunks hashed");
    assert!(
        a.chunks_hashed < last_map.chunk_count(),
        "{name}: the next checkpoint hashed {} of {} chunks: not incremental",
        a.chunks_hashed,
        last_map.chunk_count()
    );
    let restored = src
        .restore_memory(&a.checkpoint.manifest)
        .expect("restore memory");
    assert!(
        restored == job.memory_data(),
        "{name}: incremental checkpoint is wrong"
    );

    let got = finish_run(job, &sink);
    assert_eq!(
        got,
        finish_run(plain, &plain_sink),
        "{name}: staged vs plain restore"
    );
    assert_eq!(got.code, reference.code, "{name}: exit code");
    assert!(
        got.stdout == reference.stdout,
        "{name}: stdout differs from a straight run ({} vs {} bytes)",
        got.stdout.len(),
        reference.stdout.len()
    );
    assert_eq!(got.stderr, reference.stderr, "{name}: stderr");
}

#[test]
fn autopilot_staged_restore_equals_a_plain_one() {
    check_staged("autopilot", &["--exit-code", "7"], |t| t.len() / 2);
}

#[test]
fn tracker_staged_restore_equals_a_plain_one() {
    check_staged("tracker", &[], |t| t.len() / 2);
}

/// Sieve grows its memory as it goes: the update and the finish must grow it too.
#[test]
fn sieve_staged_restore_grows_memory() {
    check_staged("sieve", &["24"], |t| {
        let len = |k: usize| t[k].cp.manifest.memory.len;
        (1..t.len().saturating_sub(2))
            .find(|&k| len(k) < len(k + 1) && len(k + 1) < len(k + 2))
            .expect("sieve memory grew over three checkpoints in a row")
    });
}

/// The first pause of `name`, checkpointed into `store`.
fn first_checkpoint(store: &Store, name: &str, args: &[&str]) -> Checkpoint {
    let host = source();
    let module = host.load(&guest(name)).expect("load");
    let mut job = Job::start(
        &host,
        module,
        spec(name, args),
        Box::new(BufferSink::default()),
    )
    .expect("start");
    let handle = job.pause_handle();
    let timer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2));
        handle.request();
    });
    assert_eq!(job.run().expect("run"), Outcome::Paused);
    timer.join().expect("timer");
    job.checkpoint(store, None, name, 1)
        .expect("checkpoint")
        .checkpoint
}

#[test]
fn finishing_with_another_modules_checkpoint_is_refused() {
    let store = empty_store();
    let sieve = first_checkpoint(&store, "sieve", &["24"]);
    let autopilot = first_checkpoint(&store, "autopilot", &[]);
    let staged = StagedRestore::stage(
        &destination(),
        &store,
        &sieve.manifest.module,
        &sieve.manifest.memory,
        Vec::new(),
        &Limits::default(),
        Box::new(BufferSink::default()),
    )
    .expect("stage");
    match staged.finish(&store, &autopilot.id) {
        Err(CheckpointError::Invalid { id, reason }) => {
            assert_eq!(id, autopilot.id);
            assert!(reason.contains("module"), "{reason}");
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("finished a sieve job with an autopilot checkpoint"),
    }
}

#[test]
fn shrinking_and_missing_chunks_are_refused() {
    let src = empty_store();
    let cp = first_checkpoint(&src, "sieve", &["24"]);
    let map = &cp.manifest.memory;
    let mut staged = StagedRestore::stage(
        &destination(),
        &src,
        &cp.manifest.module,
        map,
        Vec::new(),
        &Limits::default(),
        Box::new(BufferSink::default()),
    )
    .expect("stage");
    let shorter = ChunkMap {
        len: map.len - u64::from(map.chunk_size),
        chunk_size: map.chunk_size,
        chunks: map
            .chunks
            .iter()
            .filter(|(i, _)| *i + 1 < map.chunk_count())
            .copied()
            .collect(),
    };
    assert!(matches!(
        staged.update(&src, &shorter),
        Err(CheckpointError::Staged(_))
    ));
    // A map whose new chunks the store lacks: refused before anything is written.
    let mut other = map.clone();
    let unknown = ChunkId([0x5a; 32]);
    match other.chunks.first_mut() {
        Some(first) => first.1 = unknown,
        None => other.chunks.push((0, unknown)),
    }
    match staged.update(&src, &other) {
        Err(CheckpointError::Store(StoreError::MissingChunks { first, count })) => {
            assert_eq!((first, count), (unknown, 1));
        }
        got => panic!("expected missing chunks, got {got:?}"),
    }
    assert_eq!(staged.memory_map(), map, "a refused update changes nothing");
    assert_eq!(staged.update(&src, map).expect("same map"), 0);
    // The staged job still finishes into the checkpoint it was staged from.
    let (job, got) = staged.finish(&src, &cp.id).expect("finish");
    assert_eq!(got, cp);
    assert!(src.restore_memory(&cp.manifest).expect("memory") == job.memory_data());
}
