//! Migration benchmark: live moves of a large, low-dirty-rate job (`bigstate`) between
//! in-process nodes on 127.0.0.1, pre-copy against pure stop-and-copy, the bytes a move
//! puts on the wire against the state it carries, and what a live move saves over a
//! restart when a node is drained. Prints a table and, as its last line, one JSON object.
//!
//! - One job of `--mib` MiB runs on node `a` (its home). Once it has filled its state
//!   it moves to `b` (the first move: `b` holds none of its chunks), then back and forth
//!   between `a` and `b` `2 × --moves` times, pre-copy and stop-and-copy interleaved
//!   (ABBA, so both go both ways), then by stop-and-copy to `c`, which again holds none
//!   of its chunks. Its output at `a` must equal a straight run.
//! - Drain: a ~4 s `bigstate` (another seed, so no node holds its state) is stopped at
//!   60 % of its straight run time, either live-migrated or killed and started afresh
//!   on another node; completion times from submission to exit are compared.
//!
//! - It draws the run as an SVG timeline (every job on the nodes over time, each move
//!   with its downtime, the kill before the restart): `--timeline FILE`, by default
//!   `target/roam-bench-migrate-timeline.svg`.
//!
//! Run: `scripts/bench migrate [--mib N] [--moves N] [--quick] [--fill text|random]`

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::node::api::RunRequest;
use actors::node::migrator::{IncomingWireBytes, MovePolicy};
use actors::node::proto::StreamKind;
use actors::node::{self, MoveReport, NodeHandle};
use actors::timeline::{Timeline, What};
use anyhow::{bail, Context as _};
use store::{ChunkMap, Compression, Manifest, Store};
use wasm_host::{Host, HostConfig};

struct Opts {
    mib: u64,
    moves: usize,
    fill: String,
    /// The big job's hot region (bigstate's --hot-kib; its default is 1024).
    hot_kib: Option<u64>,
    /// Steps of the drain job (bigstate's default is 4000, ~4 s).
    drain_steps: u64,
    /// Pause between two moves, for the job to dirty its hot region again.
    gap: Duration,
    guests: PathBuf,
    /// Where the SVG timeline goes.
    timeline: PathBuf,
}

fn parse_args() -> anyhow::Result<Opts> {
    let mut mib = None;
    let mut moves = None;
    let mut quick = false;
    let mut fill = "text".to_string();
    let mut hot_kib = None;
    let mut guests = PathBuf::from("guests/out");
    let mut timeline = PathBuf::from("target/roam-bench-migrate-timeline.svg");
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--mib" => mib = Some(val("--mib")?.parse::<u64>().context("--mib")?),
            "--moves" => moves = Some(val("--moves")?.parse::<usize>().context("--moves")?),
            "--fill" => fill = val("--fill")?,
            "--hot-kib" => hot_kib = Some(val("--hot-kib")?.parse::<u64>().context("--hot-kib")?),
            "--guests" => guests = PathBuf::from(val("--guests")?),
            "--timeline" => timeline = PathBuf::from(val("--timeline")?),
            "--quick" => quick = true,
            "-h" | "--help" => {
                println!(
                    "usage: bench_migrate [--mib N] [--moves N] [--quick] [--fill text|random] \
                     [--hot-kib K] [--guests DIR] [--timeline FILE]\n  --quick = --mib 16 --moves 3 and a shorter drain job"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let mib = mib.unwrap_or(if quick { 16 } else { 64 });
    let moves = moves.unwrap_or(if quick { 3 } else { 7 });
    if !(1..=1024).contains(&mib) || moves == 0 || moves > 50 {
        bail!("--mib must be in 1..=1024 and --moves in 1..=50");
    }
    if fill != "text" && fill != "random" {
        bail!("--fill must be text or random");
    }
    Ok(Opts {
        mib,
        moves,
        fill,
        hot_kib,
        drain_steps: if quick { 2000 } else { 4000 },
        gap: Duration::from_millis(250),
        guests,
        timeline,
    })
}

/// The straight run (as `roam demo` does it), off the actix thread: (stdout, stderr,
/// run time).
async fn reference(
    host: &Arc<Host>,
    wasm: &[u8],
    args: Vec<String>,
    seed: u64,
) -> anyhow::Result<(Vec<u8>, Vec<u8>, Duration)> {
    let (h, w) = (host.clone(), wasm.to_vec());
    let (out, err, _, took) = tokio::task::spawn_blocking(move || {
        actors::demo::straight_run_timed(&h, &w, "bigstate", &args, seed)
    })
    .await??;
    Ok((out, err, took))
}

async fn runs_here(node: &NodeHandle, job: &str) -> bool {
    matches!(node.scheduler.send(node::scheduler::List).await,
        Ok(l) if l.iter().any(|j| j.job == job && j.state == "running"))
}

/// Waits until `job` runs on `node` (a destination resumes a moved job asynchronously).
async fn wait_running(node: &NodeHandle, job: &str, timeout: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + timeout;
    while !runs_here(node, job).await {
        if Instant::now() > end {
            bail!("{job} does not run on {} after {timeout:?}", node.name());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Waits until `job` (running on `node`) has filled `mib` MiB of memory: its stdout is
/// buffered by the guest and arrives in bulk, so the job's own checkpoints tell.
async fn wait_filled(node: &NodeHandle, job: &str, mib: u64) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let t = node
            .scheduler
            .send(node::scheduler::Control {
                job: job.to_string(),
                op: node::scheduler::Op::Checkpoint,
            })
            .await?
            .map_err(anyhow::Error::msg)?
            .context("no checkpoint")?;
        let m = &t.checkpoint.manifest.memory;
        if m.chunks.len() as u64 * u64::from(m.chunk_size) >= mib << 20 {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("{job} did not fill {mib} MiB within a minute");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn finished(home: &NodeHandle, job: &str) -> bool {
    matches!(home.logs(job, StreamKind::Stdout, u64::MAX, 0).await,
        Ok(s) if s.exit_code.is_some())
}

/// The newest checkpoint of `job` in `node`'s store: right after a move, on the source,
/// the one it paused at (the state the destination got).
fn latest_manifest(node: &NodeHandle, job: &str) -> anyhow::Result<Manifest> {
    let r = node
        .shared
        .store
        .latest(job)
        .with_context(|| format!("{} has no checkpoint of {job}", node.name()))?;
    Ok(node.shared.store.load_checkpoint(&r.id)?.manifest)
}

fn compression_of(s: &str) -> anyhow::Result<Compression> {
    match s {
        "none" | "" => Ok(Compression::None),
        z => {
            let l = z
                .strip_prefix("zstd:")
                .and_then(|l| l.parse().ok())
                .with_context(|| format!("unknown compression {z:?}"))?;
            Ok(Compression::Zstd(l))
        }
    }
}

/// Bytes of the distinct non-zero chunks of a checkpoint (module, memory, extra blobs),
/// uncompressed and each encoded with `compression`.
fn unique_state(
    store: &Store,
    m: &Manifest,
    compression: Compression,
) -> anyhow::Result<(u64, u64)> {
    let mut seen = HashSet::new();
    let (mut raw, mut enc) = (0u64, 0u64);
    for (id, len) in m.referenced() {
        if !seen.insert(id) {
            continue;
        }
        raw += len;
        enc += match compression {
            Compression::None => len,
            c => store.get_encoded(&id, c)?.bytes.len() as u64,
        };
    }
    Ok((raw, enc))
}

/// Bytes of the memory chunks of `new` that differ from `old` (and are not zero).
fn dirtied(old: &ChunkMap, new: &ChunkMap) -> u64 {
    new.chunks
        .iter()
        .filter(|(i, id)| old.get(*i) != Some(*id))
        .map(|(i, _)| new.chunk_len(*i))
        .sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Policy {
    PreCopy,
    StopCopy,
}

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Policy::PreCopy => "pre-copy",
            Policy::StopCopy => "stop-copy",
        }
    }
    fn policy(self) -> MovePolicy {
        match self {
            Policy::PreCopy => MovePolicy::default(),
            Policy::StopCopy => MovePolicy {
                max_rounds: Some(0),
                ..MovePolicy::default()
            },
        }
    }
}

struct Rec {
    policy: Policy,
    /// The destination held none of the job's chunks.
    cold: bool,
    report: MoveReport,
    /// Bytes the destination's fetches received.
    wire: Option<u64>,
    /// Memory bytes dirtied since the job last left the destination (warm moves).
    dirtied: Option<u64>,
}

/// Moves `job` from `from` to `to` once it runs on `from`.
async fn move_job(
    from: &NodeHandle,
    to: &NodeHandle,
    job: &str,
    policy: Policy,
) -> anyhow::Result<(MoveReport, Option<u64>)> {
    wait_running(from, job, Duration::from_secs(10)).await?;
    let r = from
        .migrate_with(job, to.name(), policy.policy())
        .await
        .with_context(|| format!("moving {job} {}→{}", from.name(), to.name()))?;
    if r.outcome != "committed" {
        bail!("move of {job} {}", r.outcome);
    }
    let wire = to
        .migrator
        .send(IncomingWireBytes(r.migration.clone()))
        .await?;
    Ok((r, wire))
}

async fn start_nodes(host: &Arc<Host>, names: &[&str]) -> anyhow::Result<Vec<NodeHandle>> {
    let chunk_kib = match std::env::var("ROAM_CHUNK_KIB") {
        Ok(k) => Some(k.parse::<u32>()?),
        Err(_) => None,
    };
    node::local_swarm(host, names, |cfg| {
        // Moves alone: replicas would pre-fill destinations (and fill the stores).
        cfg.recovery.replicas = 0;
        if let Some(k) = chunk_kib {
            cfg.chunk_kib = k;
        }
    })
    .await
}

fn hb(b: u64) -> String {
    actors::demo::human_bytes(b)
}

async fn bench(o: Opts) -> anyhow::Result<bool> {
    let t0 = Instant::now();
    let wasm_path = o.guests.join("bigstate.wasm");
    let wasm = std::fs::read(&wasm_path).with_context(|| {
        format!(
            "reading {} (build the guests with scripts/build-guests)",
            wasm_path.display()
        )
    })?;
    let mut hc = HostConfig::default();
    if let Ok(k) = std::env::var("ROAM_CHUNK_KIB") {
        hc.dirty_granule = hc.dirty_granule.min(k.parse::<usize>()? << 10);
    }
    let host = Host::new(hc)?;
    // a, b, c, plus one fresh node per cold move (a cold destination holds nothing
    // of the job: the classic setting, where stop-and-copy moves all of it paused).
    let cold_names: Vec<String> = (1..=2 * o.moves).map(|i| format!("d{i}")).collect();
    let mut names: Vec<&str> = vec!["a", "b", "c"];
    names.extend(cold_names.iter().map(String::as_str));
    let nodes = start_nodes(&host, &names).await?;
    let (a, c) = (nodes[0].clone(), nodes[2].clone());
    let mut timeline = Timeline::new(
        format!(
            "bench migrate: bigstate {} MiB, pre-copy and stop-and-copy moves, then a drain by live move and by kill + restart",
            o.mib
        ),
        &["a", "b", "c"],
    );
    // The timeline's zero: the nodes are up.
    let tz = Instant::now();
    let now_ms = || tz.elapsed().as_secs_f64() * 1e3;
    println!(
        "migrate: 3 nodes on 127.0.0.1 up in {:.1} s; bigstate --mib {} --fill {}, {} moves each way",
        t0.elapsed().as_secs_f64(),
        o.mib,
        o.fill,
        o.moves
    );

    // ---- the big job: cold first move, warm back and forth, cold stop-and-copy ----
    let job = "big";
    let steps = 3000 + 1000 * o.moves as u64 + 40 * o.mib;
    let big_args: Vec<String> = [
        "--mib".to_string(),
        o.mib.to_string(),
        "--fill".into(),
        o.fill.clone(),
        "--steps".into(),
        steps.to_string(),
    ]
    .into();
    let mut big_args = big_args;
    if let Some(h) = o.hot_kib {
        big_args.extend(["--hot-kib".to_string(), h.to_string()]);
    }
    timeline.push(
        now_ms(),
        What::Start {
            job: job.into(),
            node: "a".into(),
        },
    );
    a.run(RunRequest {
        module: wasm.clone(),
        name: Some("bigstate".into()),
        id: Some(job.into()),
        args: big_args.clone(),
        seed: 1,
        node: None,
        ..RunRequest::default()
    })
    .await?;
    wait_filled(&a, job, o.mib).await?;
    tokio::time::sleep(o.gap).await;

    let mut recs: Vec<Rec> = Vec::new();
    // The state each node had of the job when the job last left it.
    let mut left: Vec<Option<Manifest>> = vec![None; nodes.len()];
    let mut at = 0usize;
    let mut prev = 0usize;
    // Cold moves a→d1→d2→… (pre-copy and stop-and-copy interleaved ABBA), then warm
    // moves back and forth between the last cold node and the one before it.
    let abba = |i: usize| {
        if i.is_multiple_of(4) || i % 4 == 3 {
            Policy::PreCopy
        } else {
            Policy::StopCopy
        }
    };
    let mut plan: Vec<(usize, Policy, bool)> = Vec::new();
    for i in 0..2 * o.moves {
        plan.push((3 + i, abba(i), true));
    }
    for i in 0..2 * o.moves {
        plan.push((usize::MAX, abba(i), false));
    }
    let mut first_state: Option<(u64, u64)> = None;
    let mut skipped = 0usize;
    for (k, (dest, policy, cold)) in plan.into_iter().enumerate() {
        // A warm move goes back to where the job was before.
        let to = if dest == usize::MAX { prev } else { dest };
        if k > 0 {
            tokio::time::sleep(o.gap).await;
        }
        if finished(&a, job).await {
            skipped += 1;
            continue;
        }
        let (r, wire) = match move_job(&nodes[at], &nodes[to], job, policy).await {
            Ok(x) => x,
            Err(_) if finished(&a, job).await => {
                skipped += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        let m = latest_manifest(&nodes[at], job)?;
        if k == 0 {
            let comp = compression_of(&r.compression)?;
            first_state = Some(unique_state(&nodes[at].shared.store, &m, comp)?);
        }
        let dirtied = match (&left[to], cold) {
            (Some(old), false) => Some(dirtied(&old.memory, &m.memory)),
            _ => None,
        };
        left[at] = Some(m);
        prev = at;
        at = to;
        recs.push(Rec {
            policy,
            cold,
            report: r,
            wire,
            dirtied,
        });
    }
    let code = a.wait_job(job, Duration::from_secs(300)).await?;
    let job_done = t0.elapsed();
    timeline.push(now_ms(), What::Exit { job: job.into() });

    // ---- the drain: restart elsewhere against a live move, at 60 % of the run ----
    let drain_args: Vec<String> = [
        "--mib".to_string(),
        o.mib.to_string(),
        "--fill".into(),
        o.fill.clone(),
        "--steps".into(),
        o.drain_steps.to_string(),
        "--seed".into(),
        "7".into(),
    ]
    .into();
    let (d_out, d_err, d0) = reference(&host, &wasm, drain_args.clone(), 2).await?;
    let at_t = d0.mul_f64(0.6);
    let launch = |id: &str, on: Option<&str>| RunRequest {
        module: wasm.clone(),
        name: Some("bigstate".into()),
        id: Some(id.into()),
        args: drain_args.clone(),
        seed: 2,
        node: on.map(str::to_string),
        ..RunRequest::default()
    };
    // Live: drained at T, moved (pre-copy) to c, which has none of this state.
    let s = Instant::now();
    let start = |tl: &mut Timeline, job: &str, node: &str| {
        tl.push(
            now_ms(),
            What::Start {
                job: job.into(),
                node: node.into(),
            },
        )
    };
    start(&mut timeline, "drain-live", "a");
    a.run(launch("drain-live", None)).await?;
    tokio::time::sleep_until((s + at_t).into()).await;
    let (live_move, _) = move_job(&a, &c, "drain-live", Policy::PreCopy).await?;
    a.wait_job("drain-live", Duration::from_secs(120)).await?;
    let live_s = s.elapsed().as_secs_f64();
    timeline.push(
        now_ms(),
        What::Exit {
            job: "drain-live".into(),
        },
    );
    // Restart: killed on a at T, started afresh on b.
    let s = Instant::now();
    start(&mut timeline, "drain-killed", "a");
    a.run(launch("drain-killed", None)).await?;
    tokio::time::sleep_until((s + at_t).into()).await;
    a.kill("drain-killed").await?;
    timeline.push(
        now_ms(),
        What::Kill {
            node: "a".into(),
            job: Some("drain-killed".into()),
        },
    );
    start(&mut timeline, "drain-restarted", nodes[1].name());
    a.run(launch("drain-restarted", Some(nodes[1].name())))
        .await?;
    a.wait_job("drain-restarted", Duration::from_secs(120))
        .await?;
    let restart_s = s.elapsed().as_secs_f64();
    timeline.push(
        now_ms(),
        What::Exit {
            job: "drain-restarted".into(),
        },
    );

    // ---- output checks against straight runs ----
    let (big_out, big_err, big_straight) = reference(&host, &wasm, big_args.clone(), 1).await?;
    let same = |id: &str, out: &[u8], err: &[u8]| {
        a.local_log(id, StreamKind::Stdout).unwrap_or_default() == out
            && a.local_log(id, StreamKind::Stderr).unwrap_or_default() == err
    };
    let checks = [
        ("big", same(job, &big_out, &big_err) && code == 0),
        ("drain-live", same("drain-live", &d_out, &d_err)),
        ("drain-restarted", same("drain-restarted", &d_out, &d_err)),
    ];
    for m in actors::demo::timed_moves(&nodes, tz).await? {
        m.add_to(&mut timeline);
    }
    for n in &nodes {
        n.shutdown().await;
    }
    if let Some(dir) = o.timeline.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&o.timeline, actors::timeline::render_svg(&timeline))
        .with_context(|| format!("writing the timeline {}", o.timeline.display()))?;

    // ---- table ----
    println!();
    println!(
        "{:>2} {:<9} {:<5} {:<4} {:>9} {:>8} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "#",
        "policy",
        "move",
        "dest",
        "downtime",
        "pause",
        "rounds",
        "sent",
        "final",
        "wire",
        "dirtied",
        "total"
    );
    for (i, r) in recs.iter().enumerate() {
        let p = &r.report;
        println!(
            "{:>2} {:<9} {:<5} {:<4} {:>7.1}ms {:>6.1}ms {:>6} {:>10} {:>10} {:>10} {:>10} {:>6.0}ms",
            i + 1,
            r.policy.name(),
            format!("{}→{}", p.from, p.to),
            if r.cold { "cold" } else { "warm" },
            p.downtime_ms,
            p.pause_ms,
            p.rounds,
            hb(p.sent_bytes),
            hb(p.final_bytes),
            r.wire.map(hb).unwrap_or_else(|| "-".into()),
            r.dirtied.map(hb).unwrap_or_else(|| "-".into()),
            p.total_ms
        );
    }
    if skipped > 0 {
        println!("({skipped} planned moves skipped: the job had ended)");
    }
    println!(
        "timeline (jobs on nodes over time, each move with its downtime): {}",
        o.timeline.display()
    );

    let warm = |pol: Policy| recs.iter().filter(move |r| !r.cold && r.policy == pol);
    let colds = |pol: Policy| recs.iter().filter(move |r| r.cold && r.policy == pol);
    // Headline figures: cold moves. Warm ones are reported beside them.
    let p50 =
        |pol: Policy, f: fn(&MoveReport) -> f64| median(colds(pol).map(|r| f(&r.report)).collect());
    let p50_warm =
        |pol: Policy, f: fn(&MoveReport) -> f64| median(warm(pol).map(|r| f(&r.report)).collect());
    let down_pre = p50(Policy::PreCopy, |r| r.downtime_ms);
    let down_stop = p50(Policy::StopCopy, |r| r.downtime_ms);
    let upper_pre = p50(Policy::PreCopy, |r| r.downtime_upper_ms);
    let upper_stop = p50(Policy::StopCopy, |r| r.downtime_upper_ms);
    let pause_pre = p50(Policy::PreCopy, |r| r.pause_ms);
    let pause_stop = p50(Policy::StopCopy, |r| r.pause_ms);
    let rounds_pre = p50(Policy::PreCopy, |r| r.rounds as f64);
    let total_pre = p50(Policy::PreCopy, |r| r.total_ms);
    let total_stop = p50(Policy::StopCopy, |r| r.total_ms);
    let final_pre = p50(Policy::PreCopy, |r| r.final_bytes as f64);
    let final_stop = p50(Policy::StopCopy, |r| r.final_bytes as f64);
    let repeat = |pol: Option<Policy>| {
        median(
            recs.iter()
                .filter(|r| pol.is_none_or(|p| p == r.policy))
                .filter_map(|r| Some(r.report.sent_bytes as f64 / r.dirtied? as f64))
                .collect(),
        )
    };
    let first = recs.first();
    let (state_raw, state_enc) = first_state.unwrap_or((0, 0));
    let bytes_ratio = first
        .and_then(|r| r.wire)
        .map(|w| w as f64 / state_enc.max(1) as f64)
        .unwrap_or(f64::NAN);
    let warm_pre = p50_warm(Policy::PreCopy, |r| r.downtime_ms);
    let warm_stop = p50_warm(Policy::StopCopy, |r| r.downtime_ms);
    let outputs_identical = checks.iter().all(|c| c.1);

    println!();
    println!(
        "cold moves (destination holds nothing), p50: pre-copy downtime {down_pre:.1} ms \
         (pause {pause_pre:.1} ms, final copy {}, {rounds_pre} rounds, total {total_pre:.0} ms); \
         stop-copy downtime {down_stop:.1} ms (pause {pause_stop:.1} ms, final copy {}, total \
         {total_stop:.0} ms); ratio {:.3}",
        hb(final_pre as u64),
        hb(final_stop as u64),
        down_pre / down_stop
    );
    println!(
        "warm moves (destination holds the state the job had when it left), p50: pre-copy \
         downtime {warm_pre:.1} ms, stop-copy downtime {warm_stop:.1} ms",
    );
    println!(
        "first move: {} on the wire for {} of unique non-zero state ({} as sent, {}): ratio {bytes_ratio:.4}",
        first.and_then(|r| r.wire).map(hb).unwrap_or_default(),
        hb(state_raw),
        hb(state_enc),
        first.map(|r| r.report.compression.as_str()).unwrap_or("-"),
    );
    println!(
        "repeat moves: sent ÷ dirtied since the job left the destination, p50 {:.3} (pre-copy {:.3}, stop-copy {:.3})",
        repeat(None),
        repeat(Some(Policy::PreCopy)),
        repeat(Some(Policy::StopCopy))
    );
    println!(
        "drain at {:.2} s of a {:.2} s run: live move {:.2} s (downtime {:.1} ms, {} sent), \
         kill + restart on b {:.2} s: ratio {:.3}",
        at_t.as_secs_f64(),
        d0.as_secs_f64(),
        live_s,
        live_move.downtime_ms,
        hb(live_move.sent_bytes),
        restart_s,
        restart_s / live_s
    );
    for (name, ok) in &checks {
        println!(
            "{name}: output at its home {} the straight run",
            if *ok {
                "is bit-identical to"
            } else {
                "DIFFERS from"
            }
        );
    }
    println!(
        "big job: {steps} steps, done at {:.1} s (straight run {:.1} s); whole bench {:.1} s",
        job_done.as_secs_f64(),
        big_straight.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let j = serde_json::json!({
        "downtime_ms_p50_precopy": r3(down_pre),
        "downtime_ms_p50_stopcopy": r3(down_stop),
        "downtime_ratio": r3(down_pre / down_stop),
        "downtime_upper_ms_p50_precopy": r3(upper_pre),
        "downtime_upper_ms_p50_stopcopy": r3(upper_stop),
        "bytes_moved_ratio": r3(bytes_ratio),
        "repeat_move_bytes_ratio": r3(repeat(None)),
        "completion_ratio_restart": r3(restart_s / live_s),
        "moves": recs.len(),
        "precopy_rounds_p50": rounds_pre,
        "precopy_total_ms_p50": r3(total_pre),
        "stopcopy_total_ms_p50": r3(total_stop),
        "pause_ms_p50_precopy": r3(pause_pre),
        "pause_ms_p50_stopcopy": r3(pause_stop),
        "final_bytes_p50_precopy": final_pre,
        "final_bytes_p50_stopcopy": final_stop,
        "warm_downtime_ms_p50_precopy": r3(warm_pre),
        "warm_downtime_ms_p50_stopcopy": r3(warm_stop),
        "warm_downtime_ratio": r3(warm_pre / warm_stop),
        "repeat_move_bytes_ratio_precopy": r3(repeat(Some(Policy::PreCopy))),
        "repeat_move_bytes_ratio_stopcopy": r3(repeat(Some(Policy::StopCopy))),
        "first_move_wire_bytes": first.and_then(|r| r.wire),
        "unique_state_bytes": state_enc,
        "compression": first.map(|r| r.report.compression.clone()),
        "drain_at_s": r3(at_t.as_secs_f64()),
        "completion_s_live": r3(live_s),
        "completion_s_restart": r3(restart_s),
        "mib": o.mib,
        "outputs_identical": outputs_identical,
        "timeline": o.timeline.display().to_string(),
    });
    println!("{j}");
    Ok(outputs_identical)
}

fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let opts = parse_args()?;
    let sys = node::actix_system();
    let ok = sys.block_on(bench(opts))?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
