//! `roam demo`: an embedded three-node swarm in one process that runs `autopilot`
//! and `tracker`, moves each several times while they run (operator moves, a drained
//! node, an overloaded node), prints a timeline with each move's downtime and bytes
//! (and keeps it as a [`Timeline`] to draw as SVG), and checks that every job's output, as collected at its home node, is
//! bit-identical to a straight run of the same module.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wasm_host::{BufferSink, Host, HostConfig, Job, JobSpec, Outcome};

use crate::node::api::RunRequest;
use crate::node::proto::StreamKind;
use crate::node::{self, MoveReport, NodeHandle};
use crate::progress::{Progress, Unit};
use crate::timeline::{Timeline, What};

/// What to run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Directory with autopilot.wasm and tracker.wasm.
    pub guests: PathBuf,
    /// Autopilot ticks and tracker frames (the jobs' length).
    pub autopilot_ticks: u64,
    pub tracker_frames: u64,
    /// Print progress.
    pub verbose: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            guests: PathBuf::from("guests/out"),
            autopilot_ticks: 3_000_000,
            tracker_frames: 30_000,
            verbose: true,
        }
    }
}

/// What the demo saw.
#[derive(Debug, Default)]
pub struct DemoResult {
    pub moves: Vec<TimedMove>,
    /// (job, identical to the straight run, bytes of stdout)
    pub jobs: Vec<(String, bool, usize)>,
    pub elapsed: Duration,
    /// Starts, moves, drains, load changes and exits on the demo's clock.
    pub timeline: Timeline,
}

/// A move with its start and end on the demo's clock.
#[derive(Clone, Debug)]
pub struct TimedMove {
    pub at: Duration,
    pub end: Duration,
    pub report: MoveReport,
}

impl TimedMove {
    /// Draws this move on `timeline` (whose zero is the clock of `at`).
    pub fn add_to(&self, timeline: &mut Timeline) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let r = &self.report;
        timeline.push(
            ms(self.at),
            What::Move {
                job: r.job.clone(),
                from: r.from.clone(),
                to: r.to.clone(),
                end_ms: ms(self.end),
                outcome: r.outcome.clone(),
                downtime_ms: r.downtime_ms,
                sent_bytes: r.sent_bytes,
                mode: r.mode.clone(),
            },
        );
    }
}

/// Every move the nodes made as the source, oldest first, timed from `t0` (each
/// node's reports count from its own start).
pub async fn timed_moves(nodes: &[NodeHandle], t0: Instant) -> anyhow::Result<Vec<TimedMove>> {
    let mut moves = Vec::new();
    for n in nodes {
        let at =
            |ms: u64| (n.shared.epoch + Duration::from_millis(ms)).saturating_duration_since(t0);
        for r in n.migrator.send(node::migrator::Moves).await? {
            moves.push(TimedMove {
                at: at(r.started_ms),
                end: at(r.ended_ms),
                report: r,
            });
        }
    }
    moves.sort_by_key(|m| m.at);
    Ok(moves)
}

struct Spec {
    name: &'static str,
    args: Vec<String>,
    seed: u64,
}

/// The straight run of a job as a node would start it (argv[0] = `name`, the same
/// arguments and seed), never paused: (stdout, stderr, exit code).
pub fn straight_run_of(
    host: &Arc<Host>,
    wasm: &[u8],
    name: &str,
    args: &[String],
    seed: u64,
) -> anyhow::Result<(Vec<u8>, Vec<u8>, i32)> {
    straight_run_timed(host, wasm, name, args, seed).map(|(o, e, c, _)| (o, e, c))
}

/// [`straight_run_of`] plus how long the run took, on a thread with a job-sized stack.
pub fn straight_run_timed(
    host: &Arc<Host>,
    wasm: &[u8],
    name: &str,
    args: &[String],
    seed: u64,
) -> anyhow::Result<(Vec<u8>, Vec<u8>, i32, Duration)> {
    let (h, w, n, a) = (host.clone(), wasm.to_vec(), name.to_string(), args.to_vec());
    on_big_stack(move || straight_run(&h, &w, &n, &a, seed))
}

fn straight_run(
    host: &Host,
    wasm: &[u8],
    name: &str,
    args: &[String],
    seed: u64,
) -> anyhow::Result<(Vec<u8>, Vec<u8>, i32, Duration)> {
    let module = host.load(wasm)?;
    let mut argv = vec![name.to_string()];
    argv.extend(args.iter().cloned());
    let mut js = JobSpec::new(argv);
    js.seed = *blake3::hash(&seed.to_le_bytes()).as_bytes();
    let sink = BufferSink::default();
    let (out, err) = (sink.stdout.clone(), sink.stderr.clone());
    let started = Instant::now();
    let mut job = Job::start(host, module, js, Box::new(sink))?;
    let code = loop {
        match job.run()? {
            Outcome::Exited(c) => break c,
            Outcome::Paused => continue,
        }
    };
    let took = started.elapsed();
    drop(job);
    let get = |b: &Arc<std::sync::Mutex<Vec<u8>>>| b.lock().map(|v| v.clone()).unwrap_or_default();
    Ok((get(&out), get(&err), code, took))
}

/// The demo's running commentary: timestamped lines on stdout and, on a terminal, a
/// bar of the demo's steps on stderr.
struct Narrator {
    verbose: bool,
    t0: Instant,
    progress: Progress,
}

/// The steps the bar counts.
const STEPS: u64 = 6;

impl Narrator {
    fn new(opts: &DemoOptions, t0: Instant) -> Narrator {
        let progress = if opts.verbose {
            Progress::bar(STEPS, Unit::Items, "demo: starting 3 nodes")
        } else {
            Progress::hidden()
        };
        Narrator {
            verbose: opts.verbose,
            t0,
            progress,
        }
    }

    fn say(&self, msg: impl AsRef<str>) {
        if self.verbose {
            self.progress.println(&format!(
                "[{:6.2}s] {}",
                self.t0.elapsed().as_secs_f64(),
                msg.as_ref()
            ));
        }
    }

    /// Step `n` of [`STEPS`] begins.
    fn step(&self, n: u64, what: &str) {
        self.progress.set_position(n - 1);
        self.progress.set_message(format!("demo: {what}"));
    }
}

/// `roam migrate JOB TO` as an operator would type it, with its outcome printed.
async fn operator_move(narr: &Narrator, home: &NodeHandle, job: &str, to: &str) {
    narr.say(format!("operator: roam migrate {job} {to}"));
    match home.migrate(job, to).await {
        Ok(r) => narr.say(format!("  {}", line(&r))),
        Err(e) => narr.say(format!("  move not made: {e:#}")),
    }
}

/// Where a job runs now, per the nodes' own job lists.
async fn where_is(nodes: &[NodeHandle], job: &str) -> Option<usize> {
    for (i, n) in nodes.iter().enumerate() {
        if let Ok(list) = n.scheduler.send(node::scheduler::List).await {
            if list.iter().any(|j| j.job == job && j.state == "running") {
                return Some(i);
            }
        }
    }
    None
}

async fn finished(home: &NodeHandle, job: &str) -> bool {
    matches!(
        home.logs(job, StreamKind::Stdout, u64::MAX, 0).await,
        Ok(s) if s.exit_code.is_some()
    )
}

/// Waits until `cond` holds or `timeout` passes.
async fn wait_until<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Runs the demo on the current actix system.
pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoResult> {
    let t0 = Instant::now();
    let narr = Narrator::new(&opts, t0);
    let read = |name: &str| -> anyhow::Result<Vec<u8>> {
        let p = opts.guests.join(format!("{name}.wasm"));
        std::fs::read(&p).with_context(|| {
            format!(
                "reading {} (build the guests with scripts/build-guests)",
                p.display()
            )
        })
    };
    let autopilot = read("autopilot")?;
    let tracker = read("tracker")?;
    let host = Host::new(HostConfig::default())?;

    let nodes = node::local_swarm(&host, &["n1", "n2", "n3"], |_| {}).await?;
    narr.say("swarm of 3 nodes up (n1, n2, n3), every node sees the others");
    narr.step(1, "starting autopilot and tracker");

    let specs = [
        (
            Spec {
                name: "autopilot",
                args: vec![opts.autopilot_ticks.to_string()],
                seed: 1,
            },
            autopilot,
            "n1",
        ),
        (
            Spec {
                name: "tracker",
                args: vec![opts.tracker_frames.to_string()],
                seed: 2,
            },
            tracker,
            "n2",
        ),
    ];
    let home = nodes[0].clone();
    let ms = |at: Duration| at.as_secs_f64() * 1e3;
    let mut timeline = Timeline::new("roam demo: jobs on nodes over time", &["n1", "n2", "n3"]);
    // When each job's exit reached its home (polled, so within a few tens of ms).
    let exits: Rc<RefCell<Vec<(String, Duration)>>> = Rc::default();
    let mut ids = Vec::new();
    for (spec, wasm, on) in &specs {
        let id = home
            .run(RunRequest {
                module: wasm.clone(),
                name: Some(spec.name.into()),
                id: Some(spec.name.into()),
                args: spec.args.clone(),
                seed: spec.seed,
                node: Some((*on).into()),
                ..RunRequest::default()
            })
            .await?;
        timeline.push(
            ms(t0.elapsed()),
            What::Start {
                job: id.clone(),
                node: (*on).into(),
            },
        );
        narr.say(format!(
            "started {id} on {on} (home n1: its output is collected there)"
        ));
        let (home, job, exits) = (home.clone(), id.clone(), exits.clone());
        actix::spawn(async move {
            while !finished(&home, &job).await {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            exits.borrow_mut().push((job, t0.elapsed()));
        });
        ids.push(id);
    }

    let step = |i: usize| nodes[i].clone();
    let names = ["n1", "n2", "n3"];
    // 1. Operator moves.
    narr.step(2, "operator moves");
    for (job, to) in [("autopilot", 1usize), ("tracker", 2), ("autopilot", 2)] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        if finished(&home, job).await {
            narr.say(format!("{job} already finished; skipping its move"));
            continue;
        }
        operator_move(&narr, &home, job, names[to]).await;
    }
    // 2. A node is drained: everything on it moves away.
    narr.step(3, "draining n3");
    tokio::time::sleep(Duration::from_millis(300)).await;
    narr.say("operator: roam drain n3");
    timeline.push(ms(t0.elapsed()), What::Drain { node: "n3".into() });
    home.drain("n3").await?;
    let n3 = step(2);
    let drained = wait_until(Duration::from_secs(30), || {
        let n3 = n3.clone();
        async move {
            n3.scheduler
                .send(node::scheduler::List)
                .await
                .map(|l| l.is_empty())
                .unwrap_or(false)
        }
    })
    .await;
    narr.say(format!("n3 drained: {drained}"));
    // 3. A node gets loaded: its solver moves a job to a lighter peer.
    narr.step(4, "an overloaded node sheds a job");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = match (
        where_is(&nodes, "autopilot").await,
        where_is(&nodes, "tracker").await,
    ) {
        (Some(i), _) | (None, Some(i)) => Some(i),
        _ => None,
    };
    if let Some(b) = busy {
        narr.say(format!("{} gets loaded (load 1.0)", names[b]));
        timeline.push(
            ms(t0.elapsed()),
            What::Load {
                node: names[b].into(),
                load: 1.0,
            },
        );
        nodes[b].set_load(1.0).await?;
        let nb = nodes[b].clone();
        let before = nb.scheduler.send(node::scheduler::List).await?.len();
        let moved = wait_until(Duration::from_secs(20), || {
            let nb = nb.clone();
            async move {
                nb.scheduler
                    .send(node::scheduler::List)
                    .await
                    .map(|l| l.len() < before)
                    .unwrap_or(false)
            }
        })
        .await;
        nodes[b].set_load(0.0).await?;
        timeline.push(
            ms(t0.elapsed()),
            What::Load {
                node: names[b].into(),
                load: 0.0,
            },
        );
        narr.say(format!("{} shed a job: {moved}", names[b]));
    }
    // 4. Back and forth until the jobs end.
    narr.step(5, "moving the jobs back and forth until they end");
    let mut turn = 0usize;
    loop {
        let mut running = false;
        for job in ["autopilot", "tracker"] {
            if finished(&home, job).await {
                continue;
            }
            running = true;
            if turn >= 6 {
                continue;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            // It may have ended while we waited.
            if finished(&home, job).await {
                continue;
            }
            let Some(at) = where_is(&nodes, job).await else {
                continue;
            };
            // Never onto the drained node.
            let to = if at == 0 { 1 } else { 0 };
            turn += 1;
            operator_move(&narr, &home, job, names[to]).await;
        }
        if !running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &ids {
        home.wait_job(id, Duration::from_secs(120)).await?;
        let seen = exits.borrow().iter().find(|(j, _)| j == id).map(|e| e.1);
        let at = seen.unwrap_or_else(|| t0.elapsed());
        timeline.push(ms(at), What::Exit { job: id.clone() });
    }
    narr.say("both jobs finished; running them straight for the reference");
    narr.step(6, "straight runs for the reference");

    let mut result = DemoResult {
        moves: timed_moves(&nodes, t0).await?,
        ..DemoResult::default()
    };
    for m in &result.moves {
        m.add_to(&mut timeline);
    }
    result.timeline = timeline;
    for (spec, wasm, _) in &specs {
        let (h, w, args, seed) = (host.clone(), wasm.clone(), spec.args.clone(), spec.seed);
        let name = spec.name;
        let (out, err, _code) =
            tokio::task::spawn_blocking(move || straight_run_of(&h, &w, name, &args, seed))
                .await??;
        let got_out = home
            .local_log(spec.name, StreamKind::Stdout)
            .unwrap_or_default();
        let got_err = home
            .local_log(spec.name, StreamKind::Stderr)
            .unwrap_or_default();
        let same = got_out == out && got_err == err;
        result
            .jobs
            .push((spec.name.to_string(), same, got_out.len()));
    }
    for n in &nodes {
        n.shutdown().await;
    }
    narr.progress.finish();
    result.elapsed = t0.elapsed();
    Ok(result)
}

fn on_big_stack<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    std::thread::Builder::new()
        .stack_size(wasm_host::host::JOB_THREAD_STACK)
        .spawn(f)?
        .join()
        .map_err(|_| anyhow::anyhow!("reference run panicked"))?
}

/// One line per move.
pub fn line(r: &MoveReport) -> String {
    format!(
        "{} {}→{} gen {} {} ({}): downtime {:.1} ms, {} rounds ({}), {} sent, compression {}, total {:.0} ms",
        r.job,
        r.from,
        r.to,
        r.generation,
        r.outcome,
        if r.mode.is_empty() {
            "pre-copy"
        } else {
            &r.mode
        },
        r.downtime_ms,
        r.rounds,
        if r.stop_reason.is_empty() {
            "-"
        } else {
            &r.stop_reason
        },
        human_bytes(r.sent_bytes),
        r.compression,
        r.total_ms
    )
}

pub fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// Prints the timeline table and the verdict; returns whether all outputs matched.
pub fn print_result(r: &DemoResult) -> bool {
    println!();
    println!("timeline");
    println!(
        "{:>8} {:<10} {:<9} {:<11} {:>10} {:>7} {:>10} {:>9}",
        "t", "job", "move", "outcome", "downtime", "rounds", "sent", "total"
    );
    for m in &r.moves {
        let rep = &m.report;
        println!(
            "{:>7.2}s {:<10} {:<9} {:<11} {:>8.1}ms {:>7} {:>10} {:>7.0}ms",
            m.at.as_secs_f64(),
            rep.job,
            format!("{}→{}", rep.from, rep.to),
            rep.outcome.split(':').next().unwrap_or(""),
            rep.downtime_ms,
            rep.rounds,
            human_bytes(rep.sent_bytes),
            rep.total_ms
        );
    }
    let mut ok = true;
    println!();
    for (job, same, n) in &r.jobs {
        println!(
            "{job}: output at its home ({n} bytes) {} the straight run",
            if *same {
                "is bit-identical to"
            } else {
                "DIFFERS from"
            }
        );
        ok &= *same;
    }
    let committed = r
        .moves
        .iter()
        .filter(|m| m.report.outcome == "committed")
        .count();
    println!(
        "{} moves ({} committed) in {:.1} s",
        r.moves.len(),
        committed,
        r.elapsed.as_secs_f64()
    );
    ok
}

/// Default guest directory: `guests/out` under the current directory or next to the
/// binary's workspace.
pub fn default_guests() -> PathBuf {
    let here = Path::new("guests/out");
    if here.exists() {
        return here.to_path_buf();
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| {
            p.ancestors()
                .map(|a| a.join("guests/out"))
                .find(|c| c.exists())
        })
        .unwrap_or_else(|| here.to_path_buf())
}
