//! The executor on real threads with real Wasm jobs: node-bound periodic guests at ~50 %
//! utilisation while migrating jobs flood the server.
//!
//! Wall-time figures (misses, overruns, latencies) are only reported; what is asserted is
//! structural: every migrating job ends, with exactly the output of a straight run; the
//! node-bound guests' output is a prefix of theirs; the server got no more CPU than the
//! core's own accounting allows; a job taken out mid-run resumes elsewhere to the same end.
//!
//! Guests come from `guests/out` (`scripts/build-guests`).

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use executor::{instance_sink, ExecError, Executor, NodeTask, ServerSpec, TaskSpec, Time};
use wasm_host::host::JOB_THREAD_STACK;
use wasm_host::{
    BufferSink, Host, HostConfig, Job, JobSpec, LoadedModule, Outcome, OutputSink, Stream,
};

const MS: Time = 1_000;

fn guest(name: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guests/out");
    for candidate in [format!("{name}.wasm"), format!("{name}.wat")] {
        if let Ok(b) = std::fs::read(dir.join(&candidate)) {
            return b;
        }
    }
    panic!(
        "guest `{name}` not found in {}: run scripts/build-guests first",
        dir.display()
    );
}

fn host() -> Arc<Host> {
    static HOST: OnceLock<Arc<Host>> = OnceLock::new();
    HOST.get_or_init(|| Host::new(HostConfig::default()).expect("host"))
        .clone()
}

fn module(name: &str) -> Arc<LoadedModule> {
    host().load(&guest(name)).expect("guest loads")
}

fn start(m: &Arc<LoadedModule>, args: &[String], sink: Box<dyn OutputSink>) -> Job {
    let mut argv = vec!["guest".to_string()];
    argv.extend(args.iter().cloned());
    Job::start(&host(), m.clone(), JobSpec::new(argv), sink).expect("job starts")
}

/// Runs `job` to its end on a thread with a job-sized stack.
fn run_to_end(mut job: Job) -> i32 {
    std::thread::Builder::new()
        .stack_size(JOB_THREAD_STACK)
        .spawn(move || loop {
            match job.run().expect("job runs") {
                Outcome::Exited(code) => return code,
                Outcome::Paused => continue,
            }
        })
        .expect("thread")
        .join()
        .expect("job thread")
}

/// Exit code and stdout of a straight run.
fn straight(m: &Arc<LoadedModule>, args: &[String]) -> (i32, Vec<u8>) {
    let sink = BufferSink::default();
    let code = run_to_end(start(m, args, Box::new(sink.clone())));
    (code, sink.stdout_bytes())
}

fn args(v: &[u64]) -> Vec<String> {
    v.iter().map(u64::to_string).collect()
}

/// Nanoseconds per xorshift step of the ticker guest, measured on this machine.
fn ns_per_spin(ticker: &Arc<LoadedModule>) -> f64 {
    let spins = 4_000_000;
    let t0 = Instant::now();
    let (code, _) = straight(ticker, &args(&[spins, 1]));
    assert_eq!(code, 0);
    (t0.elapsed().as_nanos() as f64 / spins as f64).max(0.05)
}

fn spins_for(work: Time, ns: f64) -> u64 {
    ((work as f64 * 1000.0 / ns) as u64).max(1)
}

/// A node-bound ticker task whose instances do `work` µs of the declared `wcet`.
fn node_task(ticker: &Arc<LoadedModule>, spec: TaskSpec, spins: u64) -> (NodeTask, BufferSink) {
    let out = BufferSink::default();
    let (sink, marker) = instance_sink(Box::new(out.clone()));
    let job = start(ticker, &args(&[spins]), sink);
    (NodeTask::new(spec, job, marker), out)
}

fn server() -> ServerSpec {
    ServerSpec::sporadic(3 * MS, 10 * MS, 4).with_overrun_allowance(500)
}

#[test]
fn admitted_set_keeps_running_while_migrating_jobs_flood_the_server() {
    let ticker = module("ticker");
    let countdown = module("countdown");
    let ns = ns_per_spin(&ticker);

    // ~50 % declared utilisation; each instance does 70 % of its WCET.
    let specs = [
        TaskSpec::periodic("autopilot", MS, 5 * MS, 5),
        TaskSpec::periodic("tracker", 4 * MS, 20 * MS, 3),
        TaskSpec::periodic("telemetry", 5 * MS, 50 * MS, 2),
    ];
    let mut tasks = Vec::new();
    let mut outputs = Vec::new();
    for spec in specs {
        let spins = spins_for(spec.wcet * 7 / 10, ns);
        let (task, out) = node_task(&ticker, spec, spins);
        tasks.push(task);
        outputs.push((spins, out));
    }
    let exec = Executor::new(server(), tasks).expect("the set is admitted");

    // The flood: 40 ticker jobs of 0.5..4 ms and one countdown, all at once.
    let mut rng = sched::sim::Rng::new(42);
    let mut expected = std::collections::HashMap::new();
    let mut sinks = std::collections::HashMap::new();
    let mut cases: Vec<(Arc<LoadedModule>, Vec<String>, Time)> = (0..40)
        .map(|_| {
            let work = rng.range(500, 4 * MS);
            let per = rng.range(1, 4);
            (
                ticker.clone(),
                args(&[spins_for(work, ns) / per, per]),
                work,
            )
        })
        .collect();
    cases.push((countdown.clone(), Vec::new(), 300 * MS));
    for (m, a, work) in &cases {
        let out = BufferSink::default();
        let id = exec
            .submit_aperiodic(start(m, a, Box::new(out.clone())), *work)
            .expect("queued");
        expected.insert(id, straight(m, a));
        sinks.insert(id, out);
    }
    for _ in 0..cases.len() {
        let f = exec
            .next_finished(Duration::from_secs(120))
            .expect("every migrating job ends");
        assert_eq!(
            f.result.as_ref().ok(),
            Some(&0),
            "job {:?}: {:?}",
            f.id,
            f.result
        );
        let (code, stdout) = &expected[&f.id];
        assert_eq!(*code, 0);
        assert!(
            sinks[&f.id].stdout_bytes() == *stdout,
            "job {:?}: output differs from a straight run",
            f.id
        );
    }
    let stats = exec.shutdown().expect("stats");

    assert_eq!(stats.aperiodic_response.len(), cases.len());
    assert_eq!(stats.sched.aperiodic_completed, cases.len() as u64);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    // The flood needs far more than one budget: the server was stopped at its budget's end.
    assert!(
        !stats.preempt_latency.is_empty(),
        "the server was never preempted"
    );
    assert!(
        stats.sched.server_executed <= stats.server_bound(),
        "server ran {} µs, the core's bound is {}",
        stats.sched.server_executed,
        stats.server_bound()
    );
    for ((spins, out), (_, done)) in outputs.iter().zip(&stats.instances) {
        let got = out.stdout_bytes();
        let lines = got.iter().filter(|&&b| b == b'\n').count() as u64;
        assert!(lines >= 1, "a node-bound task never completed an instance");
        assert!(
            *done >= lines.saturating_sub(1),
            "instances {done}, lines {lines}"
        );
        let (_, reference) = straight(&ticker, &args(&[*spins, lines]));
        assert!(
            reference.starts_with(&got),
            "node-bound output is not a prefix of a straight run"
        );
    }

    eprintln!(
        "real threads: {} node-bound jobs due, {} missed ({:.4}); server overrun max {} µs \
         (window), {} µs (core); preempt latency p50 {:?} p99 {:?} µs (yield p99 {:?}); \
         aperiodic response p50 {:?} ms; server ran {} µs of bound {}",
        stats.jobs_due,
        stats.sched.deadline_misses,
        stats.deadline_miss_rate(),
        stats.server_overrun_max(),
        stats.sched.overrun_max,
        stats.preempt_latency_quantile(0.5),
        stats.preempt_latency_quantile(0.99),
        executor::quantile(stats.yield_latency.clone(), 0.99),
        stats.response_quantile(0.5).map(|r| r / MS),
        stats.sched.server_executed,
        stats.server_bound(),
    );
}

/// Tells a channel about the first stdout write.
struct FirstWrite {
    inner: BufferSink,
    tx: Mutex<Option<mpsc::Sender<()>>>,
}

impl OutputSink for FirstWrite {
    fn write(&mut self, stream: Stream, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.inner.write(stream, offset, data)?;
        if let Ok(mut tx) = self.tx.lock() {
            if let Some(tx) = tx.take() {
                let _ = tx.send(());
            }
        }
        Ok(())
    }
}

#[test]
fn a_taken_job_is_paused_and_resumes_elsewhere_to_the_same_end() {
    let ticker = module("ticker");
    let ns = ns_per_spin(&ticker);
    // ~40 instances of 5 ms: far more than one budget of the server.
    let a = args(&[spins_for(5 * MS, ns), 40]);
    let exec = Executor::new(server(), Vec::new()).expect("server admitted");
    let out = BufferSink::default();
    let (tx, rx) = mpsc::channel();
    let sink = FirstWrite {
        inner: out.clone(),
        tx: Mutex::new(Some(tx)),
    };
    let id = exec
        .submit_aperiodic(start(&ticker, &a, Box::new(sink)), 200 * MS)
        .expect("queued");
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the job runs");
    let mut job = exec.preempt_and_take(id).expect("taken");
    assert!(job.is_paused());
    assert!(matches!(
        exec.preempt_and_take(id),
        Err(ExecError::UnknownJob(_))
    ));
    let snap = job.capture().expect("capture");
    drop(job);
    let restored = Job::restore(
        &host(),
        ticker.clone(),
        &snap,
        Vec::new(),
        &Default::default(),
        Box::new(out.clone()),
    )
    .expect("restore");
    assert_eq!(run_to_end(restored), 0);
    let (code, reference) = straight(&ticker, &a);
    assert_eq!(code, 0);
    assert!(
        out.stdout_bytes() == reference,
        "output differs after the move"
    );
    let stats = exec.shutdown().expect("stats");
    assert!(
        stats.aperiodic_response.is_empty(),
        "the taken job did not finish here"
    );
    assert_eq!(stats.sched.aperiodic_completed, 0);
}

#[test]
fn an_unschedulable_set_is_refused() {
    let ticker = module("ticker");
    let (a, _) = node_task(&ticker, TaskSpec::periodic("a", 4 * MS, 5 * MS, 5), 10);
    let (b, _) = node_task(&ticker, TaskSpec::periodic("b", 4 * MS, 10 * MS, 3), 10);
    match Executor::new(server(), vec![a, b]) {
        Err(ExecError::Sched(sched::SchedError::Unschedulable { .. })) => {}
        other => panic!("expected Unschedulable, got {:?}", other.err()),
    }
}
