//! Scheduling benchmark on real threads: the `sched` benchmark's node, run by the executor
//! with real Wasm jobs and wall time.
//!
//! Node-bound tasks at 50 % declared utilisation (autopilot 1/5 ms, tracker 4/20 ms,
//! telemetry 5/50 ms; each instance does `--work` of its WCET, default 70 %) are `ticker`
//! guests (`guests/wat/ticker.wat`); the server has Cs = 3 ms every Ts = 10 ms and an
//! overrun allowance of 500 µs. Migrating jobs are `ticker` guests too, sized like the
//! simulated benchmark's (mean 1.8 ms), arriving for `--wave` seconds at 1.3x the server's
//! capacity (Poisson plus bursts of 20), then drained. The same arrivals are served by the
//! sporadic server and by a polling server of the same budget.
//!
//! The executor's threads ask for `SCHED_FIFO` (priority 10, dispatcher 11) as a node
//! would run them; `--no-rt` runs them as ordinary threads, which on a loaded machine the
//! OS deschedules at will (that shows up as overruns and misses). Last line: one JSON
//! object (`real_realtime` says whether the priority was granted).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use executor::{
    instance_sink, quantile, ExecOptions, ExecStats, Executor, NodeTask, ServerSpec, TaskSpec, Time,
};
use sched::sim::Rng;
use wasm_host::host::JOB_THREAD_STACK;
use wasm_host::{BufferSink, Host, HostConfig, Job, JobSpec, LoadedModule, Outcome, OutputSink};

const MS: Time = 1_000;
const CS: Time = 3 * MS;
const TS: Time = 10 * MS;
const OVERRUN: Time = 500;

fn tasks() -> Vec<TaskSpec> {
    vec![
        TaskSpec::periodic("autopilot", MS, 5 * MS, 5),
        TaskSpec::periodic("tracker", 4 * MS, 20 * MS, 3),
        TaskSpec::periodic("telemetry", 5 * MS, 50 * MS, 2),
    ]
}

fn server(polling: bool) -> ServerSpec {
    let s = if polling {
        ServerSpec::polling(CS, TS, 4)
    } else {
        ServerSpec::sporadic(CS, TS, 4).with_max_repl(8)
    };
    let mut s = s.with_overrun_allowance(OVERRUN);
    s.max_queue = 1 << 16;
    s
}

struct Arrival {
    at: Time,
    work: Time,
}

/// As in `sched/examples/bench_sched.rs`: mostly short jobs (mean 1 ms), some long
/// (mean 5 ms); a third of the load in bursts of 20.
fn arrivals(seed: u64, factor: f64, wave: Time) -> Vec<Arrival> {
    let mut rng = Rng::new(seed);
    let work = |rng: &mut Rng| {
        let mean = if rng.chance(0.8) { 1.0 } else { 5.0 };
        ((rng.exp(mean) * MS as f64) as Time).max(10)
    };
    let capacity = CS as f64 / TS as f64;
    let mean_work = 1.8 * MS as f64;
    let mut out = Vec::new();
    let gap = mean_work / (capacity * factor * 2.0 / 3.0);
    let mut t = rng.exp(gap);
    while (t as Time) < wave {
        out.push(Arrival {
            at: t as Time,
            work: work(&mut rng),
        });
        t += rng.exp(gap);
    }
    let period = 20.0 * mean_work / (capacity * factor / 3.0);
    let mut b = period / 2.0;
    while (b as Time) < wave {
        for _ in 0..20 {
            out.push(Arrival {
                at: b as Time,
                work: work(&mut rng),
            });
        }
        b += period;
    }
    out.sort_by_key(|a| a.at);
    out
}

fn guest(name: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guests/out");
    for candidate in [format!("{name}.wasm"), format!("{name}.wat")] {
        if let Ok(b) = std::fs::read(dir.join(&candidate)) {
            return b;
        }
    }
    eprintln!(
        "guest `{name}` not found in {}: run scripts/build-guests",
        dir.display()
    );
    std::process::exit(2);
}

fn start(host: &Host, m: &Arc<LoadedModule>, args: &[u64], sink: Box<dyn OutputSink>) -> Job {
    let mut argv = vec!["ticker".to_string()];
    argv.extend(args.iter().map(u64::to_string));
    Job::start(host, m.clone(), JobSpec::new(argv), sink).expect("job starts")
}

/// ns per xorshift step of the ticker guest (best of three straight runs).
fn calibrate(host: &Arc<Host>, m: &Arc<LoadedModule>) -> f64 {
    let spins = 4_000_000u64;
    (0..3)
        .map(|_| {
            let mut job = start(host, m, &[spins, 1], Box::new(BufferSink::default()));
            std::thread::Builder::new()
                .stack_size(JOB_THREAD_STACK)
                .spawn(move || {
                    let t0 = Instant::now();
                    while let Ok(Outcome::Paused) = job.run() {}
                    t0.elapsed().as_nanos() as f64 / spins as f64
                })
                .expect("thread")
                .join()
                .expect("calibration run")
        })
        .fold(f64::INFINITY, f64::min)
        .max(0.05)
}

struct Run {
    stats: ExecStats,
    failed: usize,
}

fn run(
    host: &Arc<Host>,
    m: &Arc<LoadedModule>,
    polling: bool,
    pattern: &[Arrival],
    ns: f64,
    work_share: f64,
    rt: bool,
) -> Run {
    let spins = |work: Time| ((work as f64 * 1000.0 / ns) as u64).max(1);
    let node: Vec<NodeTask> = tasks()
        .into_iter()
        .map(|spec| {
            let (sink, marker) = instance_sink(Box::new(BufferSink::default()));
            let job = start(
                host,
                m,
                &[spins((spec.wcet as f64 * work_share) as Time)],
                sink,
            );
            NodeTask::new(spec, job, marker)
        })
        .collect();
    // Instantiated ahead, so that the feeder only submits.
    let jobs: Vec<(Time, Time, Job)> = pattern
        .iter()
        .map(|a| {
            let job = start(
                host,
                m,
                &[spins(a.work), 1],
                Box::new(BufferSink::default()),
            );
            (a.at, a.work, job)
        })
        .collect();
    let n = jobs.len();
    let options = ExecOptions {
        realtime_priority: rt.then_some(10),
        ..ExecOptions::default()
    };
    let exec = Executor::with_options(server(polling), node, options)
        .expect("the benchmark set is admitted");
    let origin = Instant::now();
    let mut failed = 0;
    // Finished jobs are dropped after the run: dropping a store takes wasmtime's global
    // locks, which an ordinary thread could hold while descheduled (and stall a job).
    let mut ended = Vec::with_capacity(n);
    std::thread::scope(|s| {
        let exec = &exec;
        s.spawn(move || {
            for (at, work, job) in jobs {
                let due = origin + Duration::from_micros(at);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if exec.submit_aperiodic(job, work).is_err() {
                    eprintln!("a migrating job was refused");
                }
            }
        });
        for _ in 0..n {
            match exec.next_finished(Duration::from_secs(300)) {
                Some(f) => {
                    if !f.result.as_ref().is_ok_and(|c| *c == 0) {
                        failed += 1;
                    }
                    ended.push(f);
                }
                None => {
                    failed += 1;
                    break;
                }
            }
        }
    });
    let stats = exec.shutdown().expect("stats");
    drop(ended);
    Run { stats, failed }
}

fn ms(t: Option<Time>) -> String {
    t.map_or("-".into(), |t| format!("{:.1}", t as f64 / MS as f64))
}

fn main() {
    let mut wave_s = 3.0f64;
    let mut work_share = 0.7f64;
    let mut factor = 1.3f64;
    let mut rt = true;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().and_then(|v| v.parse::<f64>().ok());
        match a.as_str() {
            "--wave" => wave_s = val().unwrap_or(wave_s),
            "--work" => work_share = val().unwrap_or(work_share).clamp(0.05, 1.0),
            "--load" => factor = val().unwrap_or(factor),
            "--quick" => wave_s = 1.0,
            "--no-rt" => rt = false,
            other => {
                eprintln!("bench_executor: unknown argument {other} (--wave S, --work F, --load X, --quick, --no-rt)");
                std::process::exit(2);
            }
        }
    }
    let host = Host::new(HostConfig::default()).expect("host");
    let ticker = host.load(&guest("ticker")).expect("ticker loads");
    let ns = calibrate(&host, &ticker);
    let wave = (wave_s * 1e6) as Time;
    let pattern = arrivals(14, factor, wave);
    let offered: Time = pattern.iter().map(|a| a.work).sum();
    println!(
        "roam executor benchmark — real threads, wall clock; node-bound U = 0.50 declared, \
         instances do {:.0} % of WCET; server Cs {} ms / Ts {} ms, overrun allowance {} µs",
        100.0 * work_share,
        CS / MS,
        TS / MS,
        OVERRUN
    );
    println!(
        "ticker: {ns:.2} ns per step; {} migrating jobs, {:.0} ms of work over {wave_s} s ({factor}x the server's capacity)",
        pattern.len(),
        offered as f64 / MS as f64
    );
    println!();
    println!(
        "{:<9} {:>6} {:>7} {:>9} {:>9} {:>11} {:>11} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "server",
        "jobs",
        "failed",
        "p50 ms",
        "p95 ms",
        "max win ms",
        "over Cs µs",
        "core µs",
        "pre p50",
        "pre p99",
        "pre max",
        "misses"
    );
    let mut runs = Vec::new();
    for polling in [false, true] {
        let r = run(&host, &ticker, polling, &pattern, ns, work_share, rt);
        let s = &r.stats;
        println!(
            "{:<9} {:>6} {:>7} {:>9} {:>9} {:>11.3} {:>11} {:>9} {:>9} {:>9} {:>9} {:>8}",
            if polling { "polling" } else { "sporadic" },
            s.aperiodic_response.len(),
            r.failed,
            ms(s.response_quantile(0.5)),
            ms(s.response_quantile(0.95)),
            s.server_max_in_window() as f64 / MS as f64,
            s.server_overrun_max(),
            s.sched.overrun_max,
            s.preempt_latency_quantile(0.5)
                .map_or("-".into(), |v| v.to_string()),
            s.preempt_latency_quantile(0.99)
                .map_or("-".into(), |v| v.to_string()),
            s.preempt_latency
                .iter()
                .max()
                .map_or("-".into(), |v| v.to_string()),
            format!("{}/{}", s.sched.deadline_misses, s.jobs_due),
        );
        runs.push(r);
    }
    println!();
    println!("max win: most server execution in any sliding window of Ts; over Cs: that minus Cs");
    println!("core µs: the largest overrun the core charged at one budget exhaustion");
    println!("pre: preemption latency, pause request -> job thread stopped (µs)");
    let realtime = runs.iter().all(|r| r.stats.realtime);
    println!(
        "threads: {}",
        if realtime {
            "SCHED_FIFO (jobs 10, dispatcher 11)"
        } else {
            "ordinary (SCHED_FIFO not asked for or refused)"
        }
    );

    let (sporadic, polling) = (&runs[0].stats, &runs[1].stats);
    let latencies: Vec<Time> = runs
        .iter()
        .flat_map(|r| r.stats.preempt_latency.iter().copied())
        .collect();
    let yields: Vec<Time> = runs
        .iter()
        .flat_map(|r| r.stats.yield_latency.iter().copied())
        .collect();
    let misses: u64 = runs.iter().map(|r| r.stats.sched.deadline_misses).sum();
    let due: u64 = runs.iter().map(|r| r.stats.jobs_due).sum();
    let json_ms = |t: Option<Time>| {
        t.map_or("null".to_string(), |t| {
            format!("{:.3}", t as f64 / MS as f64)
        })
    };
    let json_us = |t: Option<Time>| t.map_or("null".to_string(), |t| t.to_string());
    println!(
        "{{\"preempt_latency_us_p99\": {}, \"real_deadline_miss_rate\": {}, \"real_server_overrun_max_us\": {}, \"real_aperiodic_response_ms_p50_sporadic\": {}, \"real_aperiodic_response_ms_p50_polling\": {}, \"real_preempt_latency_us_p50\": {}, \"real_yield_latency_us_p99\": {}, \"real_core_overrun_max_us\": {}, \"real_node_bound_jobs\": {}, \"real_failed_jobs\": {}, \"real_realtime\": {}}}",
        json_us(quantile(latencies.clone(), 0.99)),
        if due == 0 { 0.0 } else { misses as f64 / due as f64 },
        sporadic.server_overrun_max(),
        json_ms(sporadic.response_quantile(0.5)),
        json_ms(polling.response_quantile(0.5)),
        json_us(quantile(latencies, 0.5)),
        json_us(quantile(yields, 0.99)),
        sporadic.sched.overrun_max,
        due,
        runs.iter().map(|r| r.failed).sum::<usize>(),
        realtime,
    );
}
