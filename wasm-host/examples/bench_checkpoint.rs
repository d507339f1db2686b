//! `scripts/bench store` (second half): checkpoints of real, running guests.
//!
//! - incremental checkpoint of a guest with 256 MiB of memory after it rewrote 1 % of its
//!   64 KiB pages: time from paused to new checkpoint id, with dirty tracking, into the
//!   memory tier (and the disk tier; and without tracking, which hashes every chunk);
//! - what tracking costs the guest: run time (pauses excluded) of sieve and imgproc,
//!   checkpointed every 20 ms, with tracking on ÷ off, runs interleaved, median of 3;
//!   with the default 64 KiB fault granule, and with 4 KiB (one fault per page).
//!
//! Prints a table and, as its last line, one JSON object.
//! `cargo run --release -q -p wasm-host --example bench_checkpoint [steps]`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use store::{Checkpoint, Store, StoreConfig};
use wasm_host::{BufferSink, Host, HostConfig, Job, JobSpec, Outcome, Preopen};

/// Wasm pages (64 KiB) of the big guest, and how many each step rewrites (1 %).
const PAGES: u32 = 4096;
const PER_STEP: u32 = 41;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// 256 MiB guest: every page made distinct, then endless steps that each rewrite
/// `PER_STEP` whole pages (`memory.fill` + a stamp). The step is straight-line code and
/// its loop has a call, so a pause requested before `run` resumes, runs exactly one step
/// and stops at the loop header. (Not so in the call-free fill loop, which yields before
/// its body: the first pause comes from a timer, long after the fill.)
fn big_guest_wat() -> String {
    let mut step = String::new();
    for k in 0..PER_STEP {
        step.push_str(&format!(
            "(local.set $a (i32.shl (i32.and (i32.add (i32.mul (local.get $s) (i32.const 2731)) (i32.const {})) (i32.const {})) (i32.const 16)))
             (memory.fill (local.get $a) (local.get $s) (i32.const 65536))
             (i32.store (local.get $a) (local.get $a))
             (i32.store offset=4 (local.get $a) (local.get $s))\n",
            k * 101,
            PAGES - 1
        ));
    }
    format!(
        "(module
          (memory (export \"memory\") {PAGES})
          (func $step (param $s i32) (local $a i32) {step})
          (func (export \"_start\") (local $s i32) (local $p i32)
            (memory.fill (i32.const 0) (i32.const 0xAB) (i32.const {bytes}))
            (loop $fill
              (i32.store (i32.shl (local.get $p) (i32.const 16)) (local.get $p))
              (local.set $p (i32.add (local.get $p) (i32.const 1)))
              (br_if $fill (i32.lt_u (local.get $p) (i32.const {PAGES}))))
            (loop $l
              (call $step (local.get $s))
              (local.set $s (i32.add (local.get $s) (i32.const 1)))
              (br $l))))",
        bytes = u64::from(PAGES) * 65536,
    )
}

/// Median time from paused to checkpoint id over `steps` incremental checkpoints, and
/// the median number of chunks hashed.
fn incremental(host: &Arc<Host>, store: &Store, steps: usize) -> (f64, f64) {
    let module = host.load(big_guest_wat().as_bytes()).expect("load");
    let mut job = Job::start(
        host,
        module,
        JobSpec::new(vec!["big".into()]),
        Box::new(BufferSink::default()),
    )
    .expect("start");
    let mut parent: Option<Checkpoint> = None;
    let (mut times, mut hashed) = (Vec::new(), Vec::new());
    let handle = job.pause_handle();
    let timer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        handle.request();
    });
    assert_eq!(job.run().expect("run"), Outcome::Paused);
    let _ = timer.join();
    // One extra step: the first checkpoint is full.
    for k in 0..=steps {
        if k > 0 {
            job.pause_handle().request();
            assert_eq!(job.run().expect("run"), Outcome::Paused);
        }
        let t = Instant::now();
        let info = job
            .checkpoint(store, parent.as_ref(), "big", 1)
            .expect("checkpoint");
        let dt = t.elapsed().as_secs_f64() * 1e3;
        if k >= 1 {
            times.push(dt);
            hashed.push(info.chunks_hashed as f64);
        }
        parent = Some(info.checkpoint);
    }
    (median(times), median(hashed))
}

fn guest(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../guests/out/{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-guests)", path.display()))
}

/// Guest run time (pauses and checkpoints excluded) with a checkpoint every `every`.
fn checkpointed_run(
    host: &Arc<Host>,
    wasm: &[u8],
    args: &[&str],
    data: &std::path::Path,
    every: Duration,
) -> (f64, usize) {
    let store = Store::in_memory(StoreConfig {
        cache_bytes: 4 << 30,
        ..StoreConfig::default()
    })
    .expect("store");
    let module = host.load(wasm).expect("load");
    let mut spec = JobSpec::new(args.iter().map(|s| s.to_string()).collect());
    spec.preopens = vec![Preopen {
        host: data.to_path_buf(),
        guest: "/data".into(),
    }];
    let mut job = Job::start(host, module, spec, Box::new(BufferSink::default())).expect("start");
    let mut parent: Option<Checkpoint> = None;
    let mut running = Duration::ZERO;
    let mut checkpoints = 0;
    loop {
        let handle = job.pause_handle();
        let timer = std::thread::spawn(move || {
            std::thread::sleep(every);
            handle.request();
        });
        let t = Instant::now();
        let out = job.run().expect("run");
        running += t.elapsed();
        let _ = timer.join();
        match out {
            Outcome::Exited(code) => {
                assert_eq!(code, 0, "{args:?}");
                return (running.as_secs_f64() * 1e3, checkpoints);
            }
            Outcome::Paused => {
                let info = job
                    .checkpoint(&store, parent.as_ref(), "g", 1)
                    .expect("checkpoint");
                parent = Some(info.checkpoint);
                checkpoints += 1;
            }
        }
    }
}

fn main() {
    let steps: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);
    let on = Host::new(HostConfig {
        dirty_tracking: true,
        ..HostConfig::default()
    })
    .expect("host");
    let off = Host::new(HostConfig {
        dirty_tracking: false,
        ..HostConfig::default()
    })
    .expect("host");
    let fine = Host::new(HostConfig {
        dirty_granule: 4096,
        ..HostConfig::default()
    })
    .expect("host");
    assert!(
        on.dirty_tracking(),
        "dirty tracking unavailable on this host"
    );

    let mem_store = || {
        Store::in_memory(StoreConfig {
            cache_bytes: 2 << 30,
            ..StoreConfig::default()
        })
        .expect("store")
    };
    let (incr_ms, incr_hashed) = incremental(&on, &mem_store(), steps);
    assert_eq!(
        incr_hashed,
        f64::from(PER_STEP),
        "tracked checkpoints hash the rewritten pages"
    );
    let (untracked_ms, untracked_hashed) = incremental(&off, &mem_store(), 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = Store::open(
        dir.path().join("store"),
        StoreConfig {
            cache_bytes: 512 << 20,
            ..StoreConfig::default()
        },
    )
    .expect("disk store");
    let (disk_ms, _) = incremental(&on, &disk, 10);
    drop(disk);

    // Tracking overhead on real guests.
    let data = tempfile::tempdir().expect("tempdir");
    let imgproc = guest("imgproc");
    {
        let mut job = Job::start(
            &on,
            on.load(&imgproc).expect("load"),
            {
                let mut s = JobSpec::new(vec![
                    "imgproc".into(),
                    "--make-input".into(),
                    "/data/in.pgm".into(),
                ]);
                s.preopens = vec![Preopen {
                    host: data.path().to_path_buf(),
                    guest: "/data".into(),
                }];
                s
            },
            Box::new(BufferSink::default()),
        )
        .expect("start");
        assert_eq!(job.run().expect("make input"), Outcome::Exited(0));
    }
    let every = Duration::from_millis(20);
    let cases: [(&str, Vec<u8>, Vec<&str>); 2] = [
        ("sieve", guest("sieve"), vec!["sieve"]),
        (
            "imgproc",
            imgproc,
            vec![
                "imgproc",
                "--input",
                "/data/in.pgm",
                "--output",
                "/data/out.pgm",
            ],
        ),
    ];
    let mut rows = Vec::new();
    let (mut ratios, mut fine_ratios) = (Vec::new(), Vec::new());
    for (name, wasm, args) in &cases {
        // Warm the caches (instrumentation, compilation) outside the timing.
        for h in [&on, &off, &fine] {
            h.load(wasm).expect("load");
        }
        let (mut t_on, mut t_off, mut t_fine, mut n_on) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            let (ms, n) = checkpointed_run(&on, wasm, args, data.path(), every);
            t_on.push(ms);
            n_on.push(n as f64);
            t_off.push(checkpointed_run(&off, wasm, args, data.path(), every).0);
            t_fine.push(checkpointed_run(&fine, wasm, args, data.path(), every).0);
        }
        let (a, b, c) = (median(t_on), median(t_off), median(t_fine));
        ratios.push(a / b);
        fine_ratios.push(c / b);
        rows.push((*name, a, c, b, median(n_on)));
    }
    let ratio = median(ratios.clone());
    let fine_ratio = median(fine_ratios.clone());

    println!(
        "checkpoint benchmark: guest with 256 MiB of memory, {PER_STEP} of {PAGES} 64 KiB pages (1 %) rewritten between checkpoints, medians"
    );
    println!("{:<52} {:>10} {:>14}", "operation", "ms", "chunks hashed");
    println!(
        "{:<52} {:>10.2} {:>14.0}",
        "incremental checkpoint, tracking on (memory tier)", incr_ms, incr_hashed
    );
    println!(
        "{:<52} {:>10.2} {:>14}",
        "incremental checkpoint, tracking on (disk tier, fsync)", disk_ms, "-"
    );
    println!(
        "{:<52} {:>10.2} {:>14.0}",
        "same, tracking off: every chunk hashed (memory tier)", untracked_ms, untracked_hashed
    );
    println!();
    println!(
        "tracking overhead: guest run time (pauses excluded), checkpoint every {} ms, median of 3",
        every.as_millis()
    );
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>8} {:>9} {:>12}",
        "guest", "on ms", "on 4K ms", "off ms", "ratio", "ratio 4K", "checkpoints"
    );
    for (((name, a, c, b, n), r), f) in rows.iter().zip(&ratios).zip(&fine_ratios) {
        println!("{name:<10} {a:>10.1} {c:>10.1} {b:>10.1} {r:>8.3} {f:>9.3} {n:>12.0}");
    }
    println!(
        "{{\"incremental_ms_256mib_1pct\": {incr_ms:.3}, \"incremental_chunks_hashed\": {incr_hashed:.0}, \"incremental_ms_256mib_1pct_disk\": {disk_ms:.3}, \"incremental_ms_256mib_1pct_untracked\": {untracked_ms:.3}, \"dirty_track_overhead_ratio\": {ratio:.3}, \"dirty_track_overhead_sieve\": {:.3}, \"dirty_track_overhead_imgproc\": {:.3}, \"dirty_track_overhead_ratio_4k_granule\": {fine_ratio:.3}}}",
        ratios[0], ratios[1]
    );
}
