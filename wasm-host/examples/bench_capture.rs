//! `scripts/bench capture`: what pausability costs.
//!
//! - instrumentation overhead: each guest run straight, instrumented vs plain module, runs
//!   interleaved so machine noise hits both alike; median of 3 each;
//! - stop latency: pause request → job stopped with its stack unwound (its memory is then
//!   frozen in place), over random pauses of every guest;
//! - capture and restore of a 64 MiB job (memory filled with non-zero data);
//! - the same job restored from a checkpoint store, in full (`restore_from_checkpoint`)
//!   and as a migration destination does it: staged from an earlier checkpoint, then
//!   finished with the last one (`StagedRestore::finish`, the part that is downtime):
//!   with one chunk differing, and with most of memory differing (staged mid-fill).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use store::{Checkpoint, Store, StoreConfig};
use wasm_host::drive::{run_with_pauses, PausePlan};
use wasm_host::{
    BufferSink, Host, HostConfig, Job, JobSpec, Limits, LoadedModule, Outcome, Snapshot,
    StagedRestore,
};

const GUESTS: &[(&str, &[&str])] = &[
    ("autopilot", &[]),
    ("tracker", &[]),
    ("sieve", &[]),
    ("imgproc", &[]),
    ("recurse", &[]),
    ("cguest", &[]),
    ("countdown", &[]),
];

fn guest(name: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guests/out");
    std::fs::read(dir.join(format!("{name}.wasm")))
        .or_else(|_| std::fs::read(dir.join(format!("{name}.wat"))))
        .unwrap_or_else(|e| panic!("guest {name}: {e} (run scripts/build-guests)"))
}

fn spec(name: &str, args: &[&str]) -> JobSpec {
    let mut argv = vec![name.to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    JobSpec::new(argv)
}

fn time_run(host: &Host, wasm: &[u8], name: &str, args: &[&str]) -> Duration {
    let module = host.load(wasm).expect("load");
    let mut job = Job::start(
        host,
        module,
        spec(name, args),
        Box::new(BufferSink::default()),
    )
    .expect("start");
    let t = Instant::now();
    let out = job.run().expect("run");
    let d = t.elapsed();
    assert!(matches!(out, Outcome::Exited(_)));
    d
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[idx]
}

/// A module whose 64 MiB memory is all non-zero, spinning in a loop until paused.
const BIG_WAT: &str = r#"(module
  (memory (export "memory") 1024)
  (func (export "_start") (local $i i32) (local $n i32)
    (loop $fill
      (i64.store (local.get $i) (i64.or (i64.extend_i32_u (local.get $i)) (i64.const 0x0101010101010101)))
      (local.set $i (i32.add (local.get $i) (i32.const 8)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 67108864))))
    (loop $spin
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (i32.store (i32.const 0) (local.get $n))
      (br_if $spin (i32.ne (local.get $n) (i32.const -1))))))"#;

/// Checkpoint-store restores of the 64 MiB job, median of 5 each.
struct StagedFigures {
    /// `restore_from_checkpoint` of the last checkpoint.
    full_ms: f64,
    /// Staging from an earlier checkpoint (before the final round: not downtime).
    stage_ms: f64,
    /// `finish` with the last checkpoint after staging from the one before it.
    finish_ms: f64,
    finish_differ: u64,
    /// `finish` after staging from a checkpoint taken while memory was being filled.
    finish_far_ms: f64,
    finish_far_differ: u64,
    chunks: u64,
}

/// Chunks whose id differs between two memory maps of one chunk size.
fn differing(a: &store::ChunkMap, b: &store::ChunkMap) -> u64 {
    (0..a.chunk_count().max(b.chunk_count()))
        .filter(|&i| a.get(i) != b.get(i))
        .count() as u64
}

/// Stages a restore from `from`, updates it to `via` (if any), then finishes it with
/// `last`: (stage ms, finish ms).
fn staged_once(
    host: &Arc<Host>,
    store: &Store,
    from: &store::Manifest,
    via: Option<&store::Manifest>,
    last: &Checkpoint,
) -> (f64, f64) {
    let t0 = Instant::now();
    let mut staged = StagedRestore::stage(
        host,
        store,
        &from.module,
        &from.memory,
        Vec::new(),
        &Limits::default(),
        Box::new(BufferSink::default()),
    )
    .expect("stage");
    let stage_ms = t0.elapsed().as_secs_f64() * 1e3;
    if let Some(via) = via {
        staged.update(store, &via.memory).expect("update");
    }
    let t1 = Instant::now();
    let (job, _) = staged.finish(store, &last.id).expect("finish");
    let finish_ms = t1.elapsed().as_secs_f64() * 1e3;
    assert!(job.is_paused());
    drop(job);
    (stage_ms, finish_ms)
}

/// The 64 MiB job checkpointed into an in-memory store while it fills its memory, then
/// three times 1 ms of spinning apart (each rewrites one chunk), then restored from the
/// last checkpoint: in full, and staged from earlier ones.
fn staged_vs_full(host: &Arc<Host>, module: &Arc<LoadedModule>) -> StagedFigures {
    let store = Store::in_memory(StoreConfig {
        cache_bytes: 1 << 30,
        ..StoreConfig::default()
    })
    .expect("store");
    let mut job = Job::start(
        host,
        Arc::clone(module),
        spec("big", &[]),
        Box::new(BufferSink::default()),
    )
    .expect("start");
    let mut cps: Vec<Checkpoint> = Vec::new();
    for delay in [5, 150, 1, 1] {
        let handle = job.pause_handle();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay));
            handle.request();
        });
        assert_eq!(job.run().expect("run"), Outcome::Paused);
        t.join().expect("timer");
        let info = job
            .checkpoint(&store, cps.last(), "big", 1)
            .expect("checkpoint");
        cps.push(info.checkpoint);
    }
    drop(job);
    let (filling, first, second, last) = (
        &cps[0].manifest,
        &cps[1].manifest,
        &cps[2].manifest,
        &cps[3],
    );
    let (mut full, mut stage, mut finish, mut far) = (Vec::new(), Vec::new(), Vec::new(), vec![]);
    for _ in 0..5 {
        let t0 = Instant::now();
        let (job, _) = Job::restore_from_checkpoint(
            host,
            &store,
            &last.id,
            Vec::new(),
            &Limits::default(),
            Box::new(BufferSink::default()),
        )
        .expect("restore from checkpoint");
        full.push(t0.elapsed().as_secs_f64() * 1e3);
        drop(job);
        let (s, f) = staged_once(host, &store, first, Some(second), last);
        stage.push(s);
        finish.push(f);
        far.push(staged_once(host, &store, filling, None, last).1);
    }
    StagedFigures {
        full_ms: median(full),
        stage_ms: median(stage),
        finish_ms: median(finish),
        finish_differ: differing(&second.memory, &last.manifest.memory),
        finish_far_ms: median(far),
        finish_far_differ: differing(&filling.memory, &last.manifest.memory),
        chunks: last.manifest.memory.chunk_count(),
    }
}

fn per_guest(pausable: &Host, plain: &Host, ratios: &mut Vec<f64>, stops: &mut Vec<f64>) {
    println!("instrumentation overhead (straight runs, median of 3, interleaved)");
    println!(
        "{:<10} {:>10} {:>13} {:>7}",
        "guest", "plain ms", "pausable ms", "ratio"
    );
    for (name, args) in GUESTS {
        let wasm = guest(name);
        // Warm the caches (instrumentation, compilation) outside the timing.
        pausable.load(&wasm).expect("load");
        plain.load(&wasm).expect("load");
        let (mut p, mut i) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            p.push(time_run(plain, &wasm, name, args).as_secs_f64() * 1e3);
            i.push(time_run(pausable, &wasm, name, args).as_secs_f64() * 1e3);
        }
        let (pm, im) = (median(p), median(i));
        ratios.push(im / pm);
        println!("{:<10} {:>10.1} {:>13.1} {:>7.3}", name, pm, im, im / pm);
    }

    println!();
    println!("random pauses (20 per guest, resumed in a fresh instance each time)");
    println!(
        "{:<10} {:>7} {:>14} {:>14}",
        "guest", "pauses", "stop p50 us", "stop p99 us"
    );
    for (name, args) in GUESTS {
        let wasm = guest(name);
        let module = pausable.load(&wasm).expect("load");
        let plan = PausePlan {
            count: 20,
            seed: 11,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
            fresh_instance: true,
        };
        let sink = BufferSink::default();
        let (_code, report) = run_with_pauses(
            pausable,
            module,
            spec(name, args),
            move || Box::new(sink.clone()),
            &plan,
        )
        .expect("paused run");
        let us: Vec<f64> = report
            .stop_latency
            .iter()
            .map(|d| d.as_secs_f64() * 1e6)
            .collect();
        println!(
            "{:<10} {:>7} {:>14.0} {:>14.0}",
            name,
            report.pauses,
            percentile(us.clone(), 0.5),
            percentile(us.clone(), 0.99)
        );
        stops.extend(us);
    }
}

fn main() {
    let pausable = Host::new(HostConfig::default()).expect("host");
    let plain = Host::new(HostConfig {
        pausable: false,
        ..HostConfig::default()
    })
    .expect("plain host");

    // `--only-64mib` skips the per-guest parts (quick iteration on capture/restore).
    let only_big = std::env::args().any(|a| a == "--only-64mib");
    let mut ratios = Vec::new();
    let mut stops = Vec::new();
    if !only_big {
        per_guest(&pausable, &plain, &mut ratios, &mut stops);
    }
    println!();
    let module = pausable.load(BIG_WAT.as_bytes()).expect("load big");
    let (mut cap, mut res, mut enc, mut dec) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let mut job = Job::start(
            &pausable,
            Arc::clone(&module),
            spec("big", &[]),
            Box::new(BufferSink::default()),
        )
        .expect("start");
        let handle = job.pause_handle();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            handle.request();
        });
        assert_eq!(job.run().expect("run"), Outcome::Paused);
        t.join().expect("timer");
        let t0 = Instant::now();
        let snap = job.capture().expect("capture");
        cap.push(t0.elapsed().as_secs_f64() * 1e3);
        assert_eq!(snap.memory.len(), 64 << 20);
        drop(job);
        let t1 = Instant::now();
        let bytes = snap.encode();
        enc.push(t1.elapsed().as_secs_f64() * 1e3);
        let t2 = Instant::now();
        let decoded = Snapshot::decode(&bytes).expect("decode");
        dec.push(t2.elapsed().as_secs_f64() * 1e3);
        let t3 = Instant::now();
        let restored = Job::restore(
            &pausable,
            Arc::clone(&module),
            &decoded,
            Vec::new(),
            &Limits::default(),
            Box::new(BufferSink::default()),
        )
        .expect("restore");
        res.push(t3.elapsed().as_secs_f64() * 1e3);
        drop(restored);
    }
    let (capture_ms, restore_ms) = (median(cap), median(res));
    let (encode_ms, decode_ms) = (median(enc), median(dec));
    println!("64 MiB job (median of 5)");
    println!("  capture (stopped job -> snapshot in memory) {capture_ms:>8.2} ms");
    println!("  restore (snapshot -> fresh instance ready)  {restore_ms:>8.2} ms   goal <= 15");
    println!("  encode to file format                       {encode_ms:>8.2} ms");
    println!("  decode + verify from file format            {decode_ms:>8.2} ms");
    let st = staged_vs_full(&pausable, &module);
    let chunks = st.chunks;
    println!(
        "  restore from a checkpoint store (full)      {:>8.2} ms",
        st.full_ms
    );
    println!(
        "  staged restore: stage (before final round)  {:>8.2} ms",
        st.stage_ms
    );
    println!(
        "  staged restore: finish, {:>4} of {chunks} chunks differ {:>6.2} ms   goal <= 5 (downtime)",
        st.finish_differ, st.finish_ms
    );
    println!(
        "  staged restore: finish, {:>4} of {chunks} chunks differ {:>6.2} ms   (staged mid-fill)",
        st.finish_far_differ, st.finish_far_ms
    );

    let json = |v: f64| {
        if v.is_finite() {
            format!("{v:.4}")
        } else {
            "null".to_string()
        }
    };
    let overhead_median = median(ratios.clone());
    let overhead_max = ratios.iter().cloned().fold(f64::NAN, f64::max);
    let p99 = percentile(stops, 0.99);
    println!();
    println!("overhead ratio median {overhead_median:.3} (goal <= 1.15), max {overhead_max:.3}");
    println!("stop latency p99 {p99:.0} us (goal <= 1000)");
    println!(
        "{{\"overhead_ratio_median\":{},\"overhead_ratio_max\":{},\"pause_latency_us_p99\":{},\"capture_ms_64mib\":{},\"restore_ms_64mib\":{},\"encode_ms_64mib\":{},\"decode_ms_64mib\":{},\"checkpoint_restore_ms_64mib\":{},\"staged_stage_ms_64mib\":{},\"staged_finish_ms_64mib\":{},\"staged_finish_chunks_differ\":{},\"staged_finish_far_ms_64mib\":{},\"staged_finish_far_chunks_differ\":{}}}",
        json(overhead_median),
        json(overhead_max),
        json(p99),
        json(capture_ms),
        json(restore_ms),
        json(encode_ms),
        json(decode_ms),
        json(st.full_ms),
        json(st.stage_ms),
        json(st.finish_ms),
        st.finish_differ,
        json(st.finish_far_ms),
        st.finish_far_differ
    );
}
