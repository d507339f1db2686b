//! `roam node` (run a node), the commands that talk to a node's control API
//! (`run`, `ps`, `peers`, `migrate`, `drain`, `logs`; `top` is in [`super::top`]),
//! and `roam demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use actors::http::{self, ClientResponse};
use actors::node::api::{RunRequest, MAX_RUN_BODY, MOVE_TIMEOUT};
use actors::node::migrator::MoveProgress;
use actors::node::{JobRow, MoveReport, NodeConfig, PeerRow};
use actors::progress::{Progress, Unit};
use anyhow::{bail, Context as _};
use clap::Args;

/// Where the control API of the node to talk to listens.
#[derive(Debug, Args, Clone)]
pub struct ApiArgs {
    /// Control API of the node to talk to (or ROAM_API).
    #[arg(long, env = "ROAM_API", default_value = "127.0.0.1:7070")]
    pub api: SocketAddr,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Node config (TOML). Without it: defaults (see configs/README.md).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Override the config's node name.
    #[arg(long)]
    pub name: Option<String>,
    /// Override the config's control API address.
    #[arg(long)]
    pub api: Option<String>,
    /// Add a mesh listen address (replaces the config's).
    #[arg(long)]
    pub listen: Vec<String>,
    /// Add a bootstrap peer address.
    #[arg(long)]
    pub bootstrap: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The wasm32-wasip1 module.
    pub module: PathBuf,
    /// Run it on this node (name or peer id) instead of the one the API belongs to.
    #[arg(long)]
    pub node: Option<String>,
    /// Job name (argv[0], and the job id's prefix); default: the module's file name.
    #[arg(long)]
    pub name: Option<String>,
    /// Exact job id (default NAME-XXXX).
    #[arg(long)]
    pub id: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// File whose bytes are the job's stdin.
    #[arg(long)]
    pub stdin: Option<PathBuf>,
    /// Seed of the job's deterministic random stream.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the job's output as it comes and exit with its exit code.
    #[arg(long, short)]
    pub follow: bool,
    /// Arguments for the job.
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The job id (as `roam ps` lists it).
    pub job: String,
    /// Destination node (name or peer id).
    pub node: String,
    /// How memory moves: auto, pre-copy, post-copy or hybrid (default: the node's
    /// `[migration] mode`).
    #[arg(long)]
    pub mode: Option<String>,
    /// Print the full report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The node to drain (default: the one the API belongs to).
    pub node: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The job id (as `roam run` printed it).
    pub job: String,
    /// Keep following until the job ends.
    #[arg(long, short)]
    pub follow: bool,
    /// Read stderr instead of stdout.
    #[arg(long)]
    pub stderr: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory holding autopilot.wasm and tracker.wasm.
    #[arg(long)]
    pub guests: Option<PathBuf>,
    /// Autopilot ticks (its length).
    #[arg(long, default_value_t = 3_000_000)]
    pub autopilot_ticks: u64,
    /// Tracker frames (its length).
    #[arg(long, default_value_t = 30_000)]
    pub tracker_frames: u64,
    /// Where to write the SVG timeline (jobs on nodes over time, every move).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "target/roam-demo-timeline.svg"
    )]
    pub timeline: PathBuf,
}

pub fn node(a: NodeArgs) -> anyhow::Result<i32> {
    let mut cfg = match &a.config {
        Some(p) => super::config::load(p)?,
        None => NodeConfig::default(),
    };
    if let Some(n) = a.name {
        cfg.name = n;
    }
    if let Some(api) = a.api {
        cfg.api = api;
    }
    if !a.listen.is_empty() {
        cfg.listen = a.listen;
    }
    cfg.bootstrap.extend(a.bootstrap);
    let path = a
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("<defaults>"));
    cfg.validate(&path)?;
    let sys = actors::node::actix_system();
    sys.block_on(async move {
        // Dirty tracking must not be coarser than the chunks it reports.
        let mut hc = wasm_host::HostConfig::default();
        hc.dirty_granule = hc.dirty_granule.min((cfg.chunk_kib as usize) << 10);
        let host = wasm_host::Host::new(hc)?;
        let node = actors::node::start(cfg, host).await?;
        let addrs = node.shared.mesh.listen_addrs().await?;
        eprintln!("roam node {} ({})", node.name(), node.peer_id());
        for a in addrs {
            eprintln!("  mesh   {a}/p2p/{}", node.peer_id());
        }
        if let Some(api) = node.api_addr {
            eprintln!("  api    http://{api}");
        }
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        eprintln!("stopping");
        node.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(0)
}

pub(super) fn call(
    api: SocketAddr,
    method: &str,
    path: &str,
    ctype: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<ClientResponse> {
    let r = http::request(api, method, path, ctype, body, timeout, MAX_RUN_BODY).with_context(
        || format!("talking to the node at {api} (is `roam node` running? --api / ROAM_API)"),
    )?;
    // An error answer says why in its `error` field (or its body, bounded).
    match r.error_for_status() {
        Ok(r) => Ok(r),
        Err(http::HttpError::Status { message, .. }) => bail!("{message}"),
        Err(e) => Err(e.into()),
    }
}

const QUICK: Duration = Duration::from_secs(30);

pub fn run(a: RunArgs) -> anyhow::Result<i32> {
    let module =
        std::fs::read(&a.module).with_context(|| format!("reading {}", a.module.display()))?;
    let stdin = match &a.stdin {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => Vec::new(),
    };
    let mut env = Vec::new();
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv:?}: expected KEY=VALUE"))?;
        env.push((k.to_string(), v.to_string()));
    }
    // argv[0] is the module's file name, as with `roam exec`.
    let name = a.name.clone().or_else(|| {
        a.module
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
    });
    let req = RunRequest {
        module,
        name,
        id: a.id,
        args: a.args,
        env,
        stdin,
        seed: a.seed,
        node: a.node,
    };
    let mut body = Vec::new();
    ciborium::into_writer(&req, &mut body).context("encoding the request")?;
    let r = call(
        a.api.api,
        "POST",
        "/run",
        Some("application/cbor"),
        &body,
        QUICK,
    )?;
    let v: serde_json::Value = r.json()?;
    let job = v
        .get("job")
        .and_then(|j| j.as_str())
        .context("the node answered without a job id")?
        .to_string();
    if !a.follow {
        println!("{job}");
        return Ok(0);
    }
    eprintln!("job {job}");
    follow(a.api.api, &job, false, true)
}

/// Prints a job's stream from the start; with `until_end`, until it ended. Returns
/// the job's exit code (0 when not waiting for the end).
fn follow(api: SocketAddr, job: &str, stderr: bool, until_end: bool) -> anyhow::Result<i32> {
    use std::io::Write;
    let mut from = 0u64;
    let stream = if stderr { "stderr" } else { "stdout" };
    let mut out = std::io::stdout().lock();
    loop {
        let q = http::encode_query(&[
            ("job", job),
            ("stream", stream),
            ("from", &from.to_string()),
        ]);
        let r = call(api, "GET", &format!("/logs?{q}"), None, &[], QUICK)?;
        out.write_all(&r.body)?;
        from = r
            .header("x-roam-next")
            .and_then(|n| n.parse().ok())
            .context("log answer without x-roam-next")?;
        let exit = r.header("x-roam-exit").and_then(|c| c.parse::<i32>().ok());
        if r.body.is_empty() {
            out.flush()?;
            if let Some(code) = exit {
                return Ok(code);
            }
            if !until_end {
                return Ok(0);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn logs(a: LogsArgs) -> anyhow::Result<i32> {
    follow(a.api.api, &a.job, a.stderr, a.follow)?;
    Ok(0)
}

pub fn ps(a: ListArgs) -> anyhow::Result<i32> {
    let r = call(a.api.api, "GET", "/ps", None, &[], QUICK)?;
    if a.json {
        println!("{}", String::from_utf8_lossy(&r.body));
        return Ok(0);
    }
    let rows: Vec<JobRow> = r.json()?;
    println!(
        "{:<24} {:<12} {:>4} {:<12} {:>10}",
        "JOB", "NODE", "GEN", "STATE", "MEMORY"
    );
    for j in rows {
        println!(
            "{:<24} {:<12} {:>4} {:<12} {:>10}",
            j.job,
            j.node,
            j.generation,
            j.state,
            actors::demo::human_bytes(j.memory_bytes)
        );
    }
    Ok(0)
}

pub fn peers(a: ListArgs) -> anyhow::Result<i32> {
    let r = call(a.api.api, "GET", "/peers", None, &[], QUICK)?;
    if a.json {
        println!("{}", String::from_utf8_lossy(&r.body));
        return Ok(0);
    }
    let rows: Vec<PeerRow> = r.json()?;
    println!(
        "{:<12} {:<10} {:>8} {:>12} {:>5} {:>5} {:>5} PEER",
        "NAME", "CONNECTED", "RTT", "THROUGHPUT", "LOAD", "SPEED", "JOBS"
    );
    for p in rows {
        println!(
            "{:<12} {:<10} {:>8} {:>12} {:>5} {:>5} {:>5} {}",
            if p.name.is_empty() { "?" } else { &p.name },
            if p.connected { "yes" } else { "no" },
            p.rtt_ms.map_or("-".into(), |r| format!("{r:.2}ms")),
            p.throughput_mbit_s
                .map_or("-".into(), |t| format!("{t:.1}Mbit/s")),
            p.load.map_or("-".into(), |l| format!("{l:.2}")),
            p.speed.map_or("-".into(), |s| format!("{s:.2}")),
            p.jobs,
            p.peer
        );
    }
    Ok(0)
}

pub fn migrate(a: MigrateArgs) -> anyhow::Result<i32> {
    let mut query = vec![("job", a.job.as_str()), ("to", a.node.as_str())];
    if let Some(mode) = &a.mode {
        query.push(("mode", mode.as_str()));
    }
    let q = http::encode_query(&query);
    let started = Instant::now();
    let (api, path) = (a.api.api, format!("/migrate?{q}"));
    let progress = Progress::spinner(format!("moving {} → {}", a.job, a.node));
    let r = if progress.is_drawn() {
        // The move is one request; while it runs, the node's active moves feed the bar.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(call(api, "POST", &path, None, &[], MOVE_TIMEOUT));
        });
        loop {
            match rx.recv_timeout(Duration::from_millis(150)) {
                Ok(r) => break r,
                Err(RecvTimeoutError::Timeout) => show_move(api, &a.job, &a.node, &progress),
                Err(RecvTimeoutError::Disconnected) => bail!("the move's request ended unanswered"),
            }
        }
    } else {
        call(api, "POST", &path, None, &[], MOVE_TIMEOUT)
    };
    progress.finish();
    let r = r?;
    if a.json {
        println!("{}", String::from_utf8_lossy(&r.body));
        return Ok(0);
    }
    let rep: MoveReport = r.json()?;
    println!("{}", actors::demo::line(&rep));
    tracing::debug!(elapsed = ?started.elapsed(), "migrate answered");
    Ok(0)
}

/// Draws the progress of the move of `job` from the node's `GET /moves/active`: the
/// phase, and a bar of the copy in flight. Says nothing when the node does not make
/// the move itself (the job runs on another node) or cannot tell.
fn show_move(api: SocketAddr, job: &str, to: &str, p: &Progress) {
    let active = call(
        api,
        "GET",
        "/moves/active",
        None,
        &[],
        Duration::from_secs(2),
    )
    .and_then(|r| Ok(r.json::<Vec<MoveProgress>>()?));
    let Ok(active) = active else {
        return;
    };
    let Some(m) = active.iter().find(|m| m.job == job) else {
        return;
    };
    let phase = match m.phase.as_str() {
        "pre-copy" => format!("pre-copy round {}", m.round),
        other => other.to_string(),
    };
    p.set_message(format!("moving {job} → {to}: {phase}"));
    if m.copy_bytes > 0 && matches!(m.phase.as_str(), "pre-copy" | "final copy") {
        p.set_done(m.copy_done_bytes, m.copy_bytes, Unit::Bytes);
    } else {
        p.set_spinner();
    }
}

pub fn drain(a: DrainArgs) -> anyhow::Result<i32> {
    let path = match &a.node {
        Some(n) => format!("/drain?{}", http::encode_query(&[("node", n)])),
        None => "/drain".into(),
    };
    call(a.api.api, "POST", &path, None, &[], QUICK)?;
    println!("draining {}", a.node.as_deref().unwrap_or("the node"));
    Ok(0)
}

pub fn demo(a: DemoArgs) -> anyhow::Result<i32> {
    let opts = actors::demo::DemoOptions {
        guests: a.guests.unwrap_or_else(actors::demo::default_guests),
        autopilot_ticks: a.autopilot_ticks,
        tracker_frames: a.tracker_frames,
        verbose: true,
    };
    let sys = actors::node::actix_system();
    let result = sys.block_on(actors::demo::run(opts))?;
    let ok = actors::demo::print_result(&result);
    if let Some(dir) = a.timeline.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&a.timeline, actors::timeline::render_svg(&result.timeline))
        .with_context(|| format!("writing the timeline {}", a.timeline.display()))?;
    println!("timeline: {}", a.timeline.display());
    if ok {
        println!("demo: OK");
        Ok(0)
    } else {
        println!("demo: FAILED (outputs differ)");
        Ok(1)
    }
}
