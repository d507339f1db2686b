//! Wall time of the decentralised ADMM placement on a real mesh: for each size, N mesh
//! nodes on 127.0.0.1 in this process, every node a `placement::Node` driven by the
//! gossip shell (`actors::placement_shell`), one round per seed on the instances of
//! `placement/examples/bench_admm.rs` (`random_instance(seed, …)`, seeds 1..=runs).
//!
//! `wall_ms`: from just before the first node starts the round to the last node's
//! outcome (median over seeds). It is the solve only: the swarm is formed first (every
//! pair dialled, every node has seen every other subscribe, `form_s`) and that set-up,
//! done once before the first round, is not timed. `agree`: every node of every run
//! reported the same integer placement; `same_as_sim`: and it is the one the pure core
//! gives on the simulated bus. Also per size: `core_cpu_ms`, the time spent inside the
//! cores summed over all nodes (every node shares this machine's cores, so
//! `core_cpu_ms ÷ cores` is a floor under `wall_ms` that a real swarm, one node per
//! machine, does not have); `exchange_ms`, one all-to-all exchange of a column-sized
//! message on the same mesh with no solver (what an iteration costs here, compute
//! aside) and `exchange_cpu_us_per_frame`, the process CPU per frame it took; per round
//! `frames` (messages × recipients) and `round_cpu_ms` (process CPU: every node's mesh,
//! shell and core, and the kernel's share); `iter_span_ms`, an iteration from the first
//! member's send of its column to the last member's completion; the re-sends the ticks
//! caused. `bytes_per_node_per_iter` counts first sends' payloads, as bench_admm does.
//!
//! `gap_pct` and `warm_iterations` are null here: the LP bound and the warm re-solve are
//! bench_admm's (`scripts/bench admm` runs both and merges `wall_ms` and `agree` into its
//! objects). Prints a table, then one JSON object (keyed by size) as the last line.
//!
//! Run: `cargo run --release -p actors --example bench_admm_wall -- [--sizes 32x256,…]
//! [--runs N] [--tick-ms N] [--max-tick-ms N] [--topology full|star]
//! [--transport direct|gossip] [--mesh-degree D] [--exchanges N] [--runtimes K]
//! [--relay-min N]`
//! (`--runtimes K`: the nodes on K single-thread runtimes instead of the shared
//! multi-thread one, to see what the work-stealing scheduler's wake-ups cost;
//! `--relay-min N`: the core's `relay_min_members`, from which member count starts and
//! columns take the log-depth relay (`placement::relay`); a large value turns it
//! off, for comparisons).
//! `relay_B`: bytes of row bundles a node forwarded per iteration (others' starts and
//! columns; `B/node/iter` counts only a node's own messages, as bench_admm does).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::placement_shell::{
    Input, Placed, Shell, ShellConfig, ShellError, ShellTransport, DEFAULT_TICK,
};
use anyhow::{bail, Context as _};
use mesh::{
    Identity, MeshConfig, MeshEvent, MeshHandle, Multiaddr, NoChunks, PeerId, SwarmKey, Topic,
};
use placement::sim::{random_instance, InstanceOpts, SimConfig, Swarm};
use placement::{Config, Node, NodeId};
use tokio::sync::{mpsc, watch};

/// The sizes and seed counts of bench_admm.
const SIZES: &[(usize, usize, u64)] = &[(3, 1, 21), (8, 32, 5), (32, 256, 5), (64, 512, 3)];
/// Longest tick period here (the shell's default is 2 s). Loopback TCP loses nothing,
/// but with every node in one process an iteration of 64 nodes takes seconds, and a tick
/// that fires within one re-sends for nothing; a re-send makes every receiver re-send in
/// turn (the core takes a copy it already holds as a sign the sender lags), so one
/// spurious tick keeps the whole swarm re-sending for the rest of the round.
const BENCH_MAX_TICK: Duration = Duration::from_secs(10);
/// All-to-all exchanges measured per size.
const EXCHANGES: u64 = 15;
/// Inputs buffered per node between the mesh event router and the shell.
const INPUT_QUEUE: usize = 1 << 14;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Topology {
    /// Every node dials every other: a published message reaches every member in one hop
    /// (the mesh floods publishes to every connected subscriber).
    Full,
    /// Every node bootstraps to node 0 only; discovery and gossipsub's mesh do the rest
    /// (as a fresh deployment would).
    Star,
}

struct Opts {
    sizes: Vec<(usize, usize, u64)>,
    runs: Option<u64>,
    tick: Duration,
    max_tick: Duration,
    topology: Topology,
    transport: ShellTransport,
    /// Gossipsub mesh degree (target, low, high); the mesh's default if None.
    degree: Option<(usize, usize, usize)>,
    /// All-to-all exchanges measured per size.
    exchanges: u64,
    /// 0: every node on the process's shared multi-thread runtime (like `roam node`'s);
    /// K > 0: the nodes spread over K single-thread runtimes, one OS thread each (node i
    /// on runtime i mod K: its mesh, connections and shell).
    runtimes: usize,
    /// The core's `relay_min_members`.
    relay_min: usize,
}

fn parse_args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        sizes: SIZES.to_vec(),
        runs: None,
        tick: DEFAULT_TICK,
        max_tick: BENCH_MAX_TICK,
        topology: Topology::Full,
        transport: ShellTransport::default(),
        degree: None,
        exchanges: EXCHANGES,
        runtimes: 0,
        relay_min: Config::default().relay_min_members,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--sizes" => {
                let v = val("--sizes")?;
                let mut sizes = Vec::new();
                for s in v.split(',') {
                    let (n, j) = s.split_once('x').context("--sizes: NODESxJOBS,…")?;
                    let (n, j): (usize, usize) = (n.parse()?, j.parse()?);
                    let runs = SIZES
                        .iter()
                        .find(|&&(a, b, _)| (a, b) == (n, j))
                        .map_or(3, |s| s.2);
                    if n < 2 {
                        bail!("--sizes: at least 2 nodes");
                    }
                    sizes.push((n, j, runs));
                }
                o.sizes = sizes;
            }
            "--exchanges" => o.exchanges = val("--exchanges")?.parse().context("--exchanges")?,
            "--runtimes" => o.runtimes = val("--runtimes")?.parse().context("--runtimes")?,
            "--relay-min" => o.relay_min = val("--relay-min")?.parse().context("--relay-min")?,
            "--runs" => o.runs = Some(val("--runs")?.parse().context("--runs")?),
            "--tick-ms" => {
                o.tick = Duration::from_millis(val("--tick-ms")?.parse().context("--tick-ms")?)
            }
            "--max-tick-ms" => {
                o.max_tick =
                    Duration::from_millis(val("--max-tick-ms")?.parse().context("--max-tick-ms")?)
            }
            "--topology" => {
                o.topology = match val("--topology")?.as_str() {
                    "full" => Topology::Full,
                    "star" => Topology::Star,
                    t => bail!("--topology: full or star, not {t:?}"),
                }
            }
            "--transport" => {
                o.transport = match val("--transport")?.as_str() {
                    "direct" => ShellTransport::Direct,
                    "gossip" => ShellTransport::Gossip,
                    t => bail!("--transport: direct or gossip, not {t:?}"),
                }
            }
            "--mesh-degree" => {
                let d: usize = val("--mesh-degree")?.parse().context("--mesh-degree")?;
                if d == 0 {
                    bail!("--mesh-degree: at least 1");
                }
                o.degree = Some((d, d.div_ceil(2).max(1), 2 * d));
            }
            "-h" | "--help" => {
                println!("bench_admm_wall [--sizes 3x1,8x32,32x256,64x512] [--runs N] [--tick-ms N] [--max-tick-ms N] [--topology full|star] [--transport direct|gossip] [--mesh-degree D] [--exchanges N] [--runtimes K] [--relay-min N]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(o)
}

struct MeshNode {
    /// The runtime the node's tasks run on.
    rt: tokio::runtime::Handle,
    handle: MeshHandle,
    peer: PeerId,
    inputs: Option<mpsc::Receiver<Input>>,
}

/// What the event routers saw, per node: peers subscribed to `Topic::Placement`, peers
/// heard probes from; and per probe id, how many deliveries.
#[derive(Default)]
struct Seen {
    subs: Vec<usize>,
    heard: Vec<usize>,
    probes: HashMap<u64, usize>,
}

struct Mesh {
    nodes: Vec<MeshNode>,
    seen: watch::Receiver<Seen>,
}

/// Placement gossip that is not a placement message: probes (readiness of the star
/// topology, and the exchange measurement); the router keeps them from the shell.
const PROBE: &[u8] = b"bench-probe:";

fn probe(id: u64, size: usize) -> Vec<u8> {
    let mut p = PROBE.to_vec();
    p.extend_from_slice(&id.to_le_bytes());
    p.resize(size.max(p.len()), 0x5a);
    p
}

/// Starts `n` nodes, connects them, and returns once every node hears every other on
/// `Topic::Placement`: with `Full`, once each saw every other subscribe (a publish then
/// reaches everyone directly); with `Star`, once each received a probe from every other
/// (gossipsub's mesh carries them).
async fn swarm(
    n: usize,
    topology: Topology,
    degree: Option<(usize, usize, usize)>,
    rts: &[tokio::runtime::Handle],
) -> anyhow::Result<(Mesh, Duration)> {
    let t0 = Instant::now();
    let key = SwarmKey::generate();
    let (seen_tx, mut seen) = watch::channel(Seen {
        subs: vec![0; n],
        heard: vec![0; n],
        probes: HashMap::new(),
    });
    let seen_tx = Arc::new(seen_tx);
    let mut nodes = Vec::with_capacity(n);
    let mut addrs: Vec<Multiaddr> = Vec::with_capacity(n);
    for i in 0..n {
        let mut cfg = MeshConfig::local(key);
        if let Some(d) = degree {
            cfg.gossip_mesh = d;
        }
        if topology == Topology::Star && i > 0 {
            cfg.bootstrap = vec![addrs[0].clone()];
        }
        let rt = rts[i % rts.len()].clone();
        let (handle, mut events) = rt
            .spawn(mesh::start(Identity::generate(), cfg, Arc::new(NoChunks)))
            .await
            .context("mesh start task")?
            .context("start mesh node")?;
        addrs.push(
            handle
                .listen_addrs()
                .await?
                .first()
                .cloned()
                .context("no listen address")?,
        );
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let seen_tx = seen_tx.clone();
        rt.spawn(async move {
            let (mut subs, mut heard) = (HashSet::new(), HashSet::new());
            while let Some(ev) = events.recv().await {
                match ev {
                    MeshEvent::Subscribed {
                        peer,
                        topic: Topic::Placement,
                    } => {
                        subs.insert(peer);
                        seen_tx.send_modify(|s| s.subs[i] = subs.len());
                    }
                    MeshEvent::Gossip {
                        topic: Topic::Placement,
                        source,
                        data,
                        ..
                    }
                    | MeshEvent::Direct {
                        topic: Topic::Placement,
                        peer: source,
                        data,
                    } => {
                        if let Some(rest) = data.strip_prefix(PROBE) {
                            let id = rest
                                .get(..8)
                                .and_then(|b| b.try_into().ok())
                                .map_or(u64::MAX, u64::from_le_bytes);
                            heard.insert(source);
                            seen_tx.send_modify(|s| {
                                s.heard[i] = heard.len();
                                *s.probes.entry(id).or_default() += 1;
                            });
                        } else if tx.send(Input::Message { source, data }).await.is_err() {
                            return;
                        }
                    }
                    _ => {}
                }
            }
        });
        let peer = handle.local_peer_id();
        nodes.push(MeshNode {
            rt,
            handle,
            peer,
            inputs: Some(rx),
        });
    }
    match topology {
        Topology::Full => {
            let dials = nodes.iter().enumerate().map(|(i, node)| {
                let (h, targets) = (node.handle.clone(), addrs[..i].to_vec());
                async move {
                    for a in targets {
                        h.dial(a).await?;
                    }
                    Ok::<_, mesh::MeshError>(())
                }
            });
            for r in futures::future::join_all(dials).await {
                r.context("dial")?;
            }
            tokio::time::timeout(
                Duration::from_secs(120),
                seen.wait_for(|s| s.subs.iter().all(|&c| c >= n - 1)),
            )
            .await
            .context("subscriptions did not come up")??;
        }
        Topology::Star => {
            // Probe until every node heard every other (gossipsub's mesh forms over
            // heartbeats; a probe published before that may reach only direct peers).
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut k = 1u64 << 63;
            while !seen.borrow().heard.iter().all(|&h| h >= n - 1) {
                if Instant::now() > deadline {
                    bail!("star swarm of {n}: gossip did not reach everyone");
                }
                for node in &nodes {
                    let _ = node.handle.publish(Topic::Placement, probe(k, 0)).await;
                }
                k += 1;
                let _ = tokio::time::timeout(Duration::from_millis(200), seen.changed()).await;
            }
        }
    }
    Ok((Mesh { nodes, seen }, t0.elapsed()))
}

/// One all-to-all exchange with no solver: every node publishes one probe of `size`
/// bytes at once; the time until every node received every other's (what one
/// bulk-synchronous iteration costs on this mesh, compute aside).
async fn exchange(
    mesh: &mut Mesh,
    id_base: u64,
    size: usize,
    transport: ShellTransport,
) -> anyhow::Result<f64> {
    let n = mesh.nodes.len();
    let peers: Vec<PeerId> = mesh.nodes.iter().map(|m| m.peer).collect();
    let t = Instant::now();
    let publishes = mesh.nodes.iter().enumerate().map(|(i, node)| {
        let h = node.handle.clone();
        let others: Vec<PeerId> = peers.iter().copied().filter(|&p| p != node.peer).collect();
        async move {
            let p = probe(id_base + i as u64, size);
            match transport {
                ShellTransport::Direct => h.send_direct(others, Topic::Placement, p).await,
                ShellTransport::Gossip => h.publish(Topic::Placement, p).await,
            }
        }
    });
    for r in futures::future::join_all(publishes).await {
        r.context("probe publish")?;
    }
    let ids = id_base..id_base + n as u64;
    tokio::time::timeout(
        Duration::from_secs(30),
        mesh.seen.wait_for(|s| {
            ids.clone()
                .all(|id| s.probes.get(&id).copied().unwrap_or(0) >= n - 1)
        }),
    )
    .await
    .context("probes did not reach everyone")??;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

struct Run {
    wall_ms: f64,
    agree: bool,
    same_as_sim: bool,
    iterations: u32,
    converged: bool,
    bytes_per_node_per_iter: f64,
    relay_bytes_per_node_per_iter: f64,
    core_cpu_ms: f64,
    sim_core_ms: f64,
    resent: u64,
    errors: Vec<String>,
    /// Medians over nodes: until iteration 1 (the starts), per later iteration, and from
    /// the last iteration to the outcome (rounding and final digests).
    start_ms: f64,
    iter_ms: f64,
    finish_ms: f64,
    /// Frames the round put on the mesh (each message × its recipients, re-sends
    /// included) and the process CPU it took.
    frames: u64,
    cpu_ms: f64,
    /// Median over iterations k ≥ 2 of the first member's send of its column k (its
    /// completion of k − 1) → the last member's completion of k (every column in).
    iter_span_ms: f64,
}

/// One round on every node of `nodes` for the instance of `seed`.
async fn run_round(
    nodes: &mut [MeshNode],
    n_jobs: usize,
    seed: u64,
    round: u64,
    shell_cfg: &ShellConfig,
    cfg: &Config,
) -> anyhow::Result<Run> {
    let n = nodes.len();
    let inst = random_instance(seed, n, n_jobs, &InstanceOpts::default());
    // The pure core on the simulated bus: the reference placement and bench_admm's
    // core_ms.
    let t = Instant::now();
    let mut sim = Swarm::new(&inst, cfg.clone(), SimConfig::default());
    sim.start_round(round)?;
    let rep = sim.run()?;
    let sim_core_ms = t.elapsed().as_secs_f64() * 1e3 / n as f64;
    let reference = rep.agreed().context("simulated swarm disagrees")?.clone();

    let ids: Vec<NodeId> = inst.envs.keys().copied().collect();
    let members: Vec<(NodeId, PeerId)> = ids
        .iter()
        .copied()
        .zip(nodes.iter().map(|m| m.peer))
        .collect();
    let (done_tx, done_rx) = watch::channel(0usize);
    let done_tx = Arc::new(done_tx);
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (i, node) in nodes.iter_mut().enumerate() {
        let id = ids[i];
        let env = inst.envs[&id].clone();
        let jobs = inst.jobs.clone();
        let member_ids = ids.clone();
        let mut inputs = node.inputs.take().context("inputs in use")?;
        let mut shell = Shell::new(node.handle.clone(), shell_cfg.clone(), members.clone());
        let (done_tx, mut done_rx) = (done_tx.clone(), done_rx.clone());
        let cfg = cfg.clone();
        tasks.push(node.rt.spawn(async move {
            let mut core = Node::new(id, cfg);
            let began = Instant::now();
            let res: Result<Placed, ShellError> =
                match core.start_round(round, 0, member_ids, jobs, env) {
                    Ok(()) => shell.run(&mut core, &mut inputs).await,
                    Err(e) => Err(ShellError::Failed { round, error: e }),
                };
            let at = Instant::now();
            done_tx.send_modify(|c| *c += 1);
            // Answer peers that lost this node's final message until all are done.
            let all_done = async move {
                let _ = done_rx.wait_for(|&c| c >= n).await;
            };
            let _ = shell.linger(&mut core, &mut inputs, all_done).await;
            (
                inputs,
                res,
                began,
                at,
                shell.stats().clone(),
                core.stats().clone(),
            )
        }));
    }
    let mut outcomes = Vec::with_capacity(n);
    let (mut starts, mut iters, mut finishes) = (Vec::new(), Vec::new(), Vec::new());
    let mut errors = Vec::new();
    let (mut last, mut bytes, mut core_cpu, mut resent) = (t0, 0u64, Duration::ZERO, 0u64);
    let mut relay_bytes = 0u64;
    let mut frames = 0u64;
    // Per node, the instant each iteration completed there.
    let mut done_at: Vec<Vec<Instant>> = Vec::with_capacity(n);
    for (i, t) in tasks.into_iter().enumerate() {
        let (inputs, res, began, at, shell_stats, core_stats) = t.await.context("node task")?;
        nodes[i].inputs = Some(inputs);
        last = last.max(at);
        frames += shell_stats.frames;
        bytes += shell_stats.published_bytes - shell_stats.resent_bytes - shell_stats.relayed_bytes;
        relay_bytes += shell_stats.relayed_bytes;
        core_cpu += shell_stats.core_time;
        resent += core_stats.resent;
        match res {
            Ok(p) => {
                done_at.push(p.iteration_at.iter().map(|&d| began + d).collect());
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                if let (Some(&first), Some(&last)) = (p.iteration_at.first(), p.iteration_at.last())
                {
                    starts.push(ms(first));
                    if p.iteration_at.len() > 1 {
                        iters.push(ms(last - first) / (p.iteration_at.len() - 1) as f64);
                    }
                    finishes.push(ms(p.elapsed.saturating_sub(last)));
                }
                outcomes.push(p.outcome)
            }
            Err(e) => errors.push(format!("node {}: {e}", ids[i])),
        }
    }
    let wall_ms = last.duration_since(t0).as_secs_f64() * 1e3;
    let cpu_ms = process_cpu().saturating_sub(cpu0).as_secs_f64() * 1e3;
    let k_max = done_at.iter().map(Vec::len).min().unwrap_or(0);
    let spans: Vec<f64> = (1..k_max)
        .filter_map(|k| {
            let first = done_at.iter().map(|d| d[k - 1]).min()?;
            let last = done_at.iter().map(|d| d[k]).max()?;
            Some(last.duration_since(first).as_secs_f64() * 1e3)
        })
        .collect();
    let agree = errors.is_empty()
        && outcomes
            .windows(2)
            .all(|w| w[0].digest == w[1].digest && w[0].placement == w[1].placement);
    let same_as_sim = agree
        && outcomes
            .first()
            .is_some_and(|o| o.digest == reference.digest && o.placement == reference.placement);
    let iterations = outcomes.first().map_or(0, |o| o.iterations);
    Ok(Run {
        wall_ms,
        agree,
        same_as_sim,
        iterations,
        converged: outcomes.first().is_some_and(|o| o.converged),
        bytes_per_node_per_iter: bytes as f64 / n as f64 / iterations.max(1) as f64,
        relay_bytes_per_node_per_iter: relay_bytes as f64 / n as f64 / iterations.max(1) as f64,
        core_cpu_ms: core_cpu.as_secs_f64() * 1e3,
        sim_core_ms,
        resent,
        errors,
        start_ms: median(starts),
        iter_ms: median(iters),
        finish_ms: median(finishes),
        frames,
        cpu_ms,
        iter_span_ms: median(spans),
    })
}

/// CPU time of this process so far (user + system, every thread): every node's mesh,
/// shell and core.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        l if l % 2 == 1 => v[l / 2],
        l => 0.5 * (v[l / 2 - 1] + v[l / 2]),
    }
}

struct Row {
    name: String,
    runs: usize,
    formation_s: f64,
    wall_ms: f64,
    wall_ms_max: f64,
    agree: bool,
    same_as_sim: bool,
    iterations: f64,
    max_iterations: u32,
    at_cap_pct: f64,
    bytes_per_node_per_iter: f64,
    relay_bytes_per_node_per_iter: f64,
    core_ms: f64,
    core_cpu_ms: f64,
    resent: f64,
    errors: Vec<String>,
    exchange_ms: f64,
    /// Process CPU per frame of the exchanges (mesh, channels, kernel; no solver).
    exchange_cpu_us_per_frame: f64,
    /// Process CPU of the idle swarm, % of one core.
    idle_cpu_pct: f64,
    frames: f64,
    round_cpu_ms: f64,
    iter_span_ms: f64,
    start_ms: f64,
    iter_ms: f64,
    finish_ms: f64,
}

async fn bench(
    nodes: usize,
    jobs: usize,
    runs: u64,
    o: &Opts,
    rts: &[tokio::runtime::Handle],
) -> anyhow::Result<Row> {
    let (mut mesh, formation) = swarm(nodes, o.topology, o.degree, rts).await?;
    // What the formed, idle swarm burns (heartbeats, pings, timers): process CPU over
    // half a second with nothing sent. A measurement window, not a synchronisation.
    let cpu0 = process_cpu();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_cpu_pct = process_cpu().saturating_sub(cpu0).as_secs_f64() / 0.5 * 100.0;
    let shell_cfg = ShellConfig {
        transport: o.transport,
        tick: o.tick,
        max_tick: o.max_tick,
        // Until the first iteration sets the pace: the start messages of 64 nodes take
        // seconds to go round here.
        initial_tick: o.max_tick,
        timeout: Duration::from_secs(300),
        ..ShellConfig::default()
    };
    let cfg = Config {
        relay_min_members: o.relay_min,
        ..Config::default()
    };
    let mut rs = Vec::new();
    for seed in 1..=runs {
        rs.push(run_round(&mut mesh.nodes, jobs, seed, seed, &shell_cfg, &cfg).await?);
    }
    // The same mesh with no solver: all-to-all exchanges of column-sized messages.
    let size = median(rs.iter().map(|r| r.bytes_per_node_per_iter).collect());
    let mut ex = Vec::new();
    let cpu0 = process_cpu();
    for k in 0..o.exchanges {
        ex.push(exchange(&mut mesh, k * nodes as u64, size as usize, o.transport).await?);
    }
    let ex_frames = (o.exchanges * (nodes * (nodes - 1)) as u64).max(1);
    let ex_cpu_us = process_cpu().saturating_sub(cpu0).as_secs_f64() * 1e6 / ex_frames as f64;
    for m in &mesh.nodes {
        let _ = m.handle.shutdown().await;
    }
    let f = |g: fn(&Run) -> f64| median(rs.iter().map(g).collect());
    Ok(Row {
        name: format!("{nodes}x{jobs}"),
        runs: rs.len(),
        formation_s: formation.as_secs_f64(),
        wall_ms: f(|r| r.wall_ms),
        wall_ms_max: rs.iter().map(|r| r.wall_ms).fold(0.0, f64::max),
        agree: rs.iter().all(|r| r.agree),
        same_as_sim: rs.iter().all(|r| r.same_as_sim),
        iterations: f(|r| r.iterations as f64),
        max_iterations: rs.iter().map(|r| r.iterations).max().unwrap_or(0),
        at_cap_pct: 100.0 * rs.iter().filter(|r| !r.converged).count() as f64
            / rs.len().max(1) as f64,
        bytes_per_node_per_iter: f(|r| r.bytes_per_node_per_iter),
        relay_bytes_per_node_per_iter: f(|r| r.relay_bytes_per_node_per_iter),
        core_ms: f(|r| r.sim_core_ms),
        core_cpu_ms: f(|r| r.core_cpu_ms),
        resent: f(|r| r.resent as f64),
        errors: rs.iter().flat_map(|r| r.errors.iter().cloned()).collect(),
        exchange_ms: median(ex),
        exchange_cpu_us_per_frame: if o.exchanges > 0 { ex_cpu_us } else { f64::NAN },
        idle_cpu_pct,
        frames: f(|r| r.frames as f64),
        round_cpu_ms: f(|r| r.cpu_ms),
        iter_span_ms: f(|r| r.iter_span_ms),
        start_ms: f(|r| r.start_ms),
        iter_ms: f(|r| r.iter_ms),
        finish_ms: f(|r| r.finish_ms),
    })
}

fn num(x: f64, prec: usize) -> String {
    if x.is_finite() {
        format!("{x:.prec$}")
    } else {
        "null".into()
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let o = parse_args()?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The runtimes the nodes run on (see `Opts::runtimes`); each extra one is driven by
    // its own thread until `_stop` drops.
    let mut rts = Vec::new();
    let mut _stop = Vec::new();
    for k in 0..o.runtimes {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("node runtime")?;
        rts.push(rt.handle().clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        _stop.push(tx);
        std::thread::Builder::new()
            .name(format!("nodes-{k}"))
            .spawn(move || rt.block_on(async move { drop(rx.await) }))
            .context("node runtime thread")?;
    }
    if rts.is_empty() {
        rts.push(tokio::runtime::Handle::current());
    }
    let mut rows = Vec::new();
    for &(n, j, runs) in &o.sizes {
        rows.push(bench(n, j, o.runs.unwrap_or(runs), &o, &rts).await?);
    }
    println!(
        "ADMM placement on a real mesh, all nodes in this process on 127.0.0.1 ({:?} topology, {:?} transport, tick {}–{} ms, {threads} cores, {}; medians over seeds)",
        o.topology,
        o.transport,
        o.tick.as_millis(),
        o.max_tick.as_millis(),
        if o.runtimes == 0 {
            "one shared multi-thread runtime".to_string()
        } else {
            format!("nodes on {} single-thread runtimes", o.runtimes)
        }
    );
    println!(
        "{:>8} {:>5} {:>8} {:>9} {:>9} {:>8} {:>7} {:>8} {:>8} {:>6} {:>5} {:>12} {:>8} {:>8} {:>12} {:>10} {:>8} {:>11} {:>7} {:>7} {:>8} {:>7} {:>7} {:>6} {:>6}",
        "size",
        "runs",
        "form_s",
        "wall_ms",
        "wall_max",
        "start_ms",
        "iter_ms",
        "span_ms",
        "final_ms",
        "iters",
        "max",
        "B/node/iter",
        "relay_B",
        "core_ms",
        "core_cpu_ms",
        "cpu_floor",
        "exch_ms",
        "iters×exch",
        "µs/frm",
        "frames",
        "cpu_ms",
        "idle_%",
        "resent",
        "agree",
        "=sim"
    );
    for r in &rows {
        println!(
            "{:>8} {:>5} {:>8.2} {:>9.1} {:>9.1} {:>8.1} {:>7.2} {:>8.2} {:>8.1} {:>6.0} {:>5} {:>12.0} {:>8.0} {:>8.2} {:>12.1} {:>10.1} {:>8.2} {:>11.1} {:>7.1} {:>7.0} {:>8.1} {:>7.1} {:>7.0} {:>6} {:>6}",
            r.name,
            r.runs,
            r.formation_s,
            r.wall_ms,
            r.wall_ms_max,
            r.start_ms,
            r.iter_ms,
            r.iter_span_ms,
            r.finish_ms,
            r.iterations,
            r.max_iterations,
            r.bytes_per_node_per_iter,
            r.relay_bytes_per_node_per_iter,
            r.core_ms,
            r.core_cpu_ms,
            r.core_cpu_ms / threads as f64,
            r.exchange_ms,
            r.exchange_ms * r.iterations,
            r.exchange_cpu_us_per_frame,
            r.frames,
            r.round_cpu_ms,
            r.idle_cpu_pct,
            r.resent,
            r.agree,
            r.same_as_sim
        );
        for e in r.errors.iter().take(5) {
            println!("    {e}");
        }
    }
    println!("cpu_floor = core_cpu_ms ÷ cores: every node's core shares this machine (one node per machine has no such floor)");
    println!("start_ms / iter_ms / final_ms (medians over nodes): until iteration 1 (every member's start in), per later iteration, last iteration to the outcome (rounding, final digests)");
    println!("span_ms = an iteration from the first member's send of its column to the last member's completion (median over iterations ≥ 2)");
    println!("µs/frm = process CPU per frame of the exchanges; frames / cpu_ms = frames on the mesh and process CPU per round (every node, mesh and kernel included); idle_% = process CPU of the formed swarm with nothing sent (% of one core)");
    println!("exch_ms = one all-to-all exchange of a column-sized message with no solver: what an iteration costs on this mesh, compute aside");
    let body: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "\"{}\": {{\"gap_pct\": null, \"iterations\": {}, \"max_iterations\": {}, \"at_cap_pct\": {:.1}, \"bytes_per_node_per_iter\": {:.0}, \"relay_bytes_per_node_per_iter\": {:.0}, \"core_ms\": {:.3}, \"warm_iterations\": null, \"wall_ms\": {}, \"agree\": {}, \"same_as_sim\": {}, \"wall_ms_max\": {}, \"core_cpu_ms\": {}, \"cpu_floor_ms\": {}, \"exchange_ms\": {}, \"exchange_cpu_us_per_frame\": {}, \"frames\": {}, \"round_cpu_ms\": {}, \"idle_cpu_pct\": {}, \"start_ms\": {}, \"iter_ms\": {}, \"iter_span_ms\": {}, \"final_ms\": {}, \"resent\": {}, \"formation_s\": {}, \"runs\": {}}}",
                r.name,
                r.iterations,
                r.max_iterations,
                r.at_cap_pct,
                r.bytes_per_node_per_iter,
                r.relay_bytes_per_node_per_iter,
                r.core_ms,
                num(r.wall_ms, 1),
                r.agree,
                r.same_as_sim,
                num(r.wall_ms_max, 1),
                num(r.core_cpu_ms, 1),
                num(r.core_cpu_ms / threads as f64, 1),
                num(r.exchange_ms, 2),
                num(r.exchange_cpu_us_per_frame, 1),
                num(r.frames, 0),
                num(r.round_cpu_ms, 1),
                num(r.idle_cpu_pct, 1),
                num(r.start_ms, 1),
                num(r.iter_ms, 2),
                num(r.iter_span_ms, 2),
                num(r.finish_ms, 1),
                num(r.resent, 0),
                num(r.formation_s, 3),
                r.runs
            )
        })
        .collect();
    println!("{{{}}}", body.join(", "));
    Ok(())
}
