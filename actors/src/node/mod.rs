//! A roam node: five actix actors on one libp2p mesh.
//!
//! ```text
//!            control API (HTTP, 127.0.0.1)        roam CLI
//!                     │
//!   ┌─────────────────┴──────────────────────────────────────────────┐
//!   │ NodeHandle ── Solver ── Migrator ── Scheduler ── job threads   │
//!   │                 │          │  │         │        (wasm-host)   │
//!   │          LinkMonitor   Checkpoint ──────┘                      │
//!   │                 │          │ store (chunks, checkpoints)       │
//!   │   router task ◀─┴── mesh task (libp2p swarm: gossip, chunks,   │
//!   │   output pump ───▶          control requests)                  │
//!   └────────────────────────────────────────────────────────────────┘
//! ```
//!
//! - **Scheduler** owns the jobs that run here, each on its own thread
//!   ([`runner`]); it starts, checkpoints, pauses, resumes and drops them.
//! - **Checkpoint** owns the store side of a move: it stores fetched chunks and
//!   restores a job from a received manifest, on the blocking pool.
//! - **Migrator** drives the sans-IO migration cores ([`migrate::Source`],
//!   [`migrate::Destination`]): their messages go out as mesh control requests,
//!   their chunk fetches through the mesh's verified chunk exchange.
//! - **LinkMonitor** keeps what the mesh measured about each peer (RTT, throughput)
//!   and what each peer's heartbeat said (name, load, jobs).
//! - **Solver** decides moves: a simple rule until ADMM placement lands — a draining
//!   node moves every job to the least loaded peer; an overloaded node moves one job
//!   at a time to a peer with much less load.
//!
//! Several nodes can live in one process (tests, `roam demo`): each is a set of
//! actors on the current actix system plus its own mesh task.

pub mod admm;
pub mod api;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod link;
pub mod logbook;
pub mod migrator;
pub mod output;
pub mod postcopy;
pub mod proto;
pub mod recovery;
pub mod runner;
pub mod scheduler;
pub mod solver;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use anyhow::Context as _;
use mesh::{Identity, MeshConfig, MeshHandle, PeerId, SwarmKey};
use store::{Store, StoreConfig};
use tokio::sync::mpsc;
use wasm_host::Host;

pub use config::NodeConfig;
use logbook::LogBook;
pub use migrator::MoveReport;
use proto::{JobSummary, LogSlice, StreamKind};

/// What every actor of one node shares.
pub struct Shared {
    pub name: String,
    pub peer_id: PeerId,
    pub config: NodeConfig,
    pub mesh: MeshHandle,
    pub store: Arc<Store>,
    pub host: Arc<Host>,
    pub epoch: Instant,
    pub logs: Arc<Mutex<LogBook>>,
    pub output: mpsc::UnboundedSender<runner::OutputEvent>,
    /// Node-bound tasks and the server migrating jobs run behind (`[sched]`); `None`:
    /// every job on its own ordinary thread.
    pub cpu: Option<Arc<cpu::Cpu>>,
    /// Random per start: peers learn from a new value that this node's jobs are gone.
    pub incarnation: u64,
    /// What recovery publishes in the heartbeat.
    pub published: Mutex<recovery::Published>,
    /// Set once the node drains (it then takes no replica and resumes nothing).
    pub draining: std::sync::atomic::AtomicBool,
    /// Whether a strict majority of the members is in sight, as Recovery last judged it
    /// (true at start); a source without one refuses to hand a job over.
    pub majority_in_sight: std::sync::atomic::AtomicBool,
    /// Jobs lost here without ending (post-copy failed), with their generation; the
    /// Scheduler adds them, Recovery has them resumed elsewhere.
    pub abandoned: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Moves this node made whose handover went unanswered (the job stays paused here):
    /// job → (its generation here, the destination's name, when it escalated, ms). The
    /// Migrator adds and resolves them, Recovery gives the copy up once the destination
    /// is gone without the job (`recovery::after_escalation`).
    pub escalated: Mutex<std::collections::BTreeMap<String, (u64, String, u64)>>,
    /// Moves this node committed as their source: job → (its generation at the
    /// destination, the destination's name, when, ms). The Migrator adds them,
    /// Recovery announces the recent ones (`Heartbeat::moved`) and forgets the old.
    pub moved: Mutex<std::collections::BTreeMap<String, (u64, String, u64)>>,
}

impl Shared {
    /// Milliseconds since the node started (the migration cores' clock).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// The development swarm key used when a config names none.
pub fn development_swarm_key() -> SwarmKey {
    SwarmKey(*blake3::hash(b"roam development swarm key; do not use in the field").as_bytes())
}

fn swarm_key(cfg: &NodeConfig) -> anyhow::Result<SwarmKey> {
    let k = cfg.swarm_key.trim();
    if k.is_empty() {
        return Ok(development_swarm_key());
    }
    if let Ok(key) = SwarmKey::parse(k) {
        return Ok(key);
    }
    let text = std::fs::read_to_string(k).with_context(|| format!("reading swarm key file {k}"))?;
    SwarmKey::parse(&text).with_context(|| format!("swarm key file {k}"))
}

fn identity(cfg: &NodeConfig) -> anyhow::Result<Identity> {
    if cfg.identity_file.is_empty() {
        return Ok(Identity::generate());
    }
    let path = Path::new(&cfg.identity_file);
    match std::fs::read(path) {
        Ok(bytes) => Identity::from_protobuf(&bytes)
            .with_context(|| format!("identity file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = Identity::generate();
            let bytes = id.to_protobuf().context("encoding a new identity")?;
            wasm_host::host::write_atomic(path, &bytes)
                .with_context(|| format!("writing identity file {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("reading identity file {}", path.display())),
    }
}

/// A running node, as seen by the API, the demo and tests. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    pub shared: Arc<Shared>,
    pub scheduler: Addr<scheduler::Scheduler>,
    pub migrator: Addr<migrator::Migrator>,
    pub links: Addr<link::LinkMonitor>,
    pub solver: Addr<solver::Solver>,
    pub checkpoint: Addr<checkpoint::CheckpointActor>,
    pub recovery: Addr<recovery::Recovery>,
    pub api_addr: Option<SocketAddr>,
}

/// One row of `roam ps`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct JobRow {
    pub job: String,
    pub node: String,
    pub generation: u64,
    pub state: String,
    pub home: String,
    pub memory_bytes: u64,
}

/// One row of `roam peers`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PeerRow {
    pub peer: String,
    pub name: String,
    pub connected: bool,
    pub rtt_ms: Option<f64>,
    pub throughput_mbit_s: Option<f64>,
    pub load: Option<f64>,
    pub draining: bool,
    pub jobs: usize,
    /// The peer's relative speed (its config; placement divides work by it).
    #[serde(default)]
    pub speed: Option<f64>,
}

/// The node's own status (`GET /status`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub peer: String,
    pub listen: Vec<String>,
    pub api: Option<String>,
    pub draining: bool,
    pub load: f64,
    pub jobs: Vec<JobSummaryRow>,
    pub moves: Vec<MoveReport>,
    pub store_bytes: u64,
    /// Peers with an open mesh connection.
    #[serde(default)]
    pub peers_connected: usize,
    /// Milliseconds since the node started (the clock of its moves' `started_ms`).
    #[serde(default)]
    pub uptime_ms: u64,
    /// The server and node-bound tasks (`[sched]`); absent when the server is off.
    #[serde(default)]
    pub sched: Option<cpu::CpuStatus>,
    /// Replicas held here, copies acknowledged, recoveries made.
    #[serde(default)]
    pub recovery: recovery::RecoveryStatus,
    /// Post-copy pulls this node ran as a destination (memory arriving after resume).
    #[serde(default)]
    pub postcopy: Vec<postcopy::PullStatus>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct JobSummaryRow {
    pub job: String,
    pub generation: u64,
    pub state: String,
    pub memory_bytes: u64,
}

impl From<JobSummary> for JobSummaryRow {
    fn from(j: JobSummary) -> Self {
        JobSummaryRow {
            job: j.job,
            generation: j.generation,
            state: j.state,
            memory_bytes: j.memory_bytes,
        }
    }
}

/// An actix system on a multi-threaded tokio runtime: actors run on the calling
/// thread, the mesh tasks and blocking work on two worker threads.
pub fn actix_system() -> actix::SystemRunner {
    actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("building the tokio runtime")
    })
}

/// Starts one node per name on the current actix system, all on 127.0.0.1 with
/// `NodeConfig::local` (no API, 200 ms heartbeats) changed by `tweak`, connects every
/// pair and waits until each node has seen every other's heartbeat. For tests, the
/// demo and benchmarks.
pub async fn local_swarm(
    host: &Arc<Host>,
    names: &[&str],
    tweak: impl Fn(&mut NodeConfig),
) -> anyhow::Result<Vec<NodeHandle>> {
    let mut nodes = Vec::new();
    for name in names {
        let mut cfg = NodeConfig::local(name);
        cfg.api = String::new();
        cfg.migration.heartbeat_ms = 200;
        tweak(&mut cfg);
        nodes.push(start(cfg, host.clone()).await?);
    }
    for i in 0..nodes.len() {
        for j in i + 1..nodes.len() {
            nodes[j].connect(&nodes[i]).await?;
        }
    }
    for n in &nodes {
        n.wait_for_peers(nodes.len() - 1, Duration::from_secs(20))
            .await?;
    }
    Ok(nodes)
}

/// Starts a node on the current actix system: its mesh, its actors, its API.
pub async fn start(config: NodeConfig, host: Arc<Host>) -> anyhow::Result<NodeHandle> {
    start_with_store(config, host, None).await
}

/// [`start`], with `store` instead of the one the config describes when given: a node
/// restarted in the same process (the chaos harness's level 1) keeps what its previous
/// incarnation stored, as a node with an on-disk store keeps it across a restart.
pub async fn start_with_store(
    config: NodeConfig,
    host: Arc<Host>,
    store: Option<Arc<Store>>,
) -> anyhow::Result<NodeHandle> {
    config.validate(Path::new("<config>"))?;
    let key = swarm_key(&config)?;
    if config.swarm_key.trim().is_empty() && !config.mdns {
        tracing::debug!("using the development swarm key");
    } else if config.swarm_key.trim().is_empty() {
        tracing::warn!("no swarm_key configured: using the public development key");
    }
    let id = identity(&config)?;
    let peer_id = id.peer_id();
    let store_cfg = if config.store_dir.is_empty() {
        StoreConfig {
            cache_bytes: config.store_mib << 20,
            chunk_size: config.chunk_kib << 10,
            ..StoreConfig::default()
        }
    } else {
        StoreConfig {
            disk_limit_bytes: config.store_mib << 20,
            chunk_size: config.chunk_kib << 10,
            ..StoreConfig::default()
        }
    };
    let store = match store {
        Some(s) => s,
        None => Arc::new(if config.store_dir.is_empty() {
            Store::in_memory(store_cfg).context("creating the in-memory store")?
        } else {
            Store::open(&config.store_dir, store_cfg)
                .with_context(|| format!("opening the store at {}", config.store_dir))?
        }),
    };
    let mut mcfg = MeshConfig::new(key);
    mcfg.listen = config
        .listen
        .iter()
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .context("listen address")?;
    mcfg.bootstrap = config
        .bootstrap
        .iter()
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .context("bootstrap address")?;
    mcfg.mdns = config.mdns;
    mcfg.ping_interval = Duration::from_millis(1000);
    let provider = Arc::new(checkpoint::StoreChunks(store.clone()));
    let (mesh, events) = mesh::start(id, mcfg, provider)
        .await
        .context("starting the mesh")?;
    let cpu = cpu::start(&host, &config.sched)?.map(Arc::new);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        name: config.name.clone(),
        peer_id,
        config: config.clone(),
        mesh,
        store,
        host,
        epoch: Instant::now(),
        logs: Arc::new(Mutex::new(LogBook::default())),
        output: out_tx,
        cpu,
        incarnation: rand::random(),
        published: Mutex::new(recovery::Published::default()),
        draining: std::sync::atomic::AtomicBool::new(false),
        majority_in_sight: std::sync::atomic::AtomicBool::new(true),
        abandoned: Mutex::new(Default::default()),
        escalated: Mutex::new(Default::default()),
        moved: Mutex::new(Default::default()),
    });
    let links = link::LinkMonitor::new(shared.clone()).start();
    let scheduler = scheduler::Scheduler::new(shared.clone()).start();
    let checkpoint = checkpoint::CheckpointActor::new(shared.clone(), scheduler.clone()).start();
    let migrator = migrator::Migrator::new(
        shared.clone(),
        scheduler.clone(),
        checkpoint.clone(),
        links.clone(),
    )
    .start();
    let solver = solver::Solver::new(
        shared.clone(),
        scheduler.clone(),
        migrator.clone(),
        links.clone(),
        checkpoint.clone(),
    )
    .start();
    let recovery = recovery::Recovery::new(
        shared.clone(),
        scheduler.clone(),
        checkpoint.clone(),
        links.clone(),
        migrator.clone(),
    )
    .start();
    let mut handle = NodeHandle {
        shared: shared.clone(),
        scheduler,
        migrator,
        links,
        solver,
        checkpoint,
        recovery,
        api_addr: None,
    };
    actix::spawn(output::pump(shared.clone(), out_rx, handle.links.clone()));
    actix::spawn(api::route_mesh_events(handle.clone(), events));
    if let Some(addr) = config.api_addr() {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the control API on {addr}"))?;
        handle.api_addr = listener.local_addr().ok();
        actix::spawn(api::serve(handle.clone(), listener));
    }
    tracing::info!(name = %shared.name, peer = %peer_id, api = ?handle.api_addr, "node started");
    Ok(handle)
}

impl NodeHandle {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn peer_id(&self) -> PeerId {
        self.shared.peer_id
    }

    /// Dials another node (for swarms without mDNS or bootstrap).
    pub async fn connect(&self, other: &NodeHandle) -> anyhow::Result<()> {
        let addrs = other.shared.mesh.listen_addrs().await?;
        let addr = addrs
            .into_iter()
            .next()
            .context("the other node listens nowhere")?;
        self.shared.mesh.dial(addr).await?;
        Ok(())
    }

    /// Waits until the heartbeats of `n` other nodes were seen.
    pub async fn wait_for_peers(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self
                .links
                .send(link::Query)
                .await?
                .into_iter()
                .filter(|p| p.name.is_some())
                .count();
            if seen >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("{}: saw {seen} of {n} peers", self.name());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a job here or on the node named `on`.
    pub async fn run(&self, req: api::RunRequest) -> anyhow::Result<String> {
        self.solver
            .send(solver::Launch(req))
            .await?
            .map_err(anyhow::Error::msg)
    }

    /// Moves `job` (wherever it runs) to the node named `to`.
    pub async fn migrate(&self, job: &str, to: &str) -> anyhow::Result<MoveReport> {
        self.migrate_mode(job, to, None).await
    }

    /// [`migrate`](Self::migrate) with a `[migration] mode` for this move.
    pub async fn migrate_mode(
        &self,
        job: &str,
        to: &str,
        mode: Option<String>,
    ) -> anyhow::Result<MoveReport> {
        self.solver
            .send(solver::MoveTo {
                job: job.to_string(),
                to: to.to_string(),
                mode,
            })
            .await?
            .map_err(anyhow::Error::msg)
    }

    /// Moves `job`, which runs on this node, to the node named `to` with `policy`
    /// (e.g. `max_rounds: Some(0)` for pure stop-and-copy).
    pub async fn migrate_with(
        &self,
        job: &str,
        to: &str,
        policy: migrator::MovePolicy,
    ) -> anyhow::Result<MoveReport> {
        let peer = self
            .links
            .send(link::Resolve(to.to_string()))
            .await?
            .with_context(|| format!("no node called {to:?} is known here"))?;
        self.migrator
            .send(migrator::StartMove {
                job: job.to_string(),
                to: peer,
                to_name: to.to_string(),
                policy,
            })
            .await?
            .map_err(anyhow::Error::msg)
    }

    /// Kills a job running on this node (its output so far stays in its log).
    pub async fn kill(&self, job: &str) -> anyhow::Result<()> {
        self.scheduler
            .send(scheduler::Control {
                job: job.to_string(),
                op: scheduler::Op::Drop,
            })
            .await?
            .map(|_| ())
            .map_err(anyhow::Error::msg)
    }

    /// Drains the node named `node` (this one if it is ours).
    pub async fn drain(&self, node: &str) -> anyhow::Result<()> {
        self.solver
            .send(solver::DrainNode(node.to_string()))
            .await?
            .map_err(anyhow::Error::msg)
    }

    /// Sets the load this node reports (what an operator or the demo injects).
    pub async fn set_load(&self, load: f64) -> anyhow::Result<()> {
        self.solver.send(solver::SetLoad(load)).await?;
        Ok(())
    }

    /// Jobs of the whole swarm as the heartbeats describe them, plus ours.
    pub async fn ps(&self) -> anyhow::Result<Vec<JobRow>> {
        let me = self.name().to_string();
        let mut rows: Vec<JobRow> = self
            .scheduler
            .send(scheduler::List)
            .await?
            .into_iter()
            .map(|j| row(&me, j))
            .collect();
        for p in self.links.send(link::Query).await? {
            if let (Some(name), Some(hb)) = (&p.name, &p.heartbeat) {
                rows.extend(hb.jobs.iter().cloned().map(|j| row(name, j)));
            }
        }
        rows.sort_by(|a, b| (&a.job, &a.node).cmp(&(&b.job, &b.node)));
        Ok(rows)
    }

    pub async fn peers(&self) -> anyhow::Result<Vec<PeerRow>> {
        let connected = self.shared.mesh.connected_peers().await?;
        let mut rows: Vec<PeerRow> = self
            .links
            .send(link::Query)
            .await?
            .into_iter()
            .map(|p| PeerRow {
                peer: p.peer.to_string(),
                name: p.name.clone().unwrap_or_default(),
                connected: connected.contains(&p.peer),
                rtt_ms: p
                    .link
                    .as_ref()
                    .and_then(|l| l.rtt)
                    .map(|r| r.as_secs_f64() * 1e3),
                throughput_mbit_s: p
                    .link
                    .as_ref()
                    .and_then(|l| l.throughput_bps)
                    .map(|b| b * 8.0 / 1e6),
                load: p.heartbeat.as_ref().map(|h| h.load),
                speed: p.heartbeat.as_ref().map(|h| h.speed),
                draining: p.heartbeat.as_ref().is_some_and(|h| h.draining),
                jobs: p.heartbeat.as_ref().map_or(0, |h| h.jobs.len()),
            })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rows)
    }

    /// Copies of jobs running here that replicas acknowledged, and the recoveries this
    /// node made with the checkpoint each resumed from (`GET /recovery`; the chaos
    /// harness's "no acknowledged checkpoint lost").
    pub async fn recovery_facts(&self) -> anyhow::Result<recovery::RecoveryFacts> {
        let acks = self.recovery.send(recovery::Acks).await?;
        let recovered = self.recovery.send(recovery::Status).await?.recovered;
        Ok(recovery::RecoveryFacts {
            uptime_ms: self.shared.now_ms(),
            acks,
            recovered,
        })
    }

    pub async fn status(&self) -> anyhow::Result<NodeStatus> {
        let jobs = self.scheduler.send(scheduler::List).await?;
        let (draining, load) = self.solver.send(solver::State).await?;
        let moves = self.migrator.send(migrator::Moves).await?;
        let peers_connected = self.shared.mesh.connected_peers().await?.len();
        let listen = self
            .shared
            .mesh
            .listen_addrs()
            .await?
            .into_iter()
            .map(|a| a.to_string())
            .collect();
        Ok(NodeStatus {
            name: self.shared.name.clone(),
            peer: self.shared.peer_id.to_string(),
            listen,
            api: self.api_addr.map(|a| a.to_string()),
            draining,
            load,
            jobs: jobs.into_iter().map(JobSummaryRow::from).collect(),
            moves,
            store_bytes: self.shared.store.stats().stored_bytes,
            peers_connected,
            sched: self.shared.cpu.as_ref().map(|c| c.status()),
            recovery: self.recovery.send(recovery::Status).await?,
            postcopy: self.migrator.send(migrator::Pulls).await?,
            uptime_ms: self.shared.now_ms(),
        })
    }

    /// Reads a job's log: from this node's book if the job is homed here, else from
    /// its home (found in the heartbeats).
    pub async fn logs(
        &self,
        job: &str,
        stream: StreamKind,
        from: u64,
        max: u32,
    ) -> anyhow::Result<LogSlice> {
        let local = self
            .shared
            .logs
            .lock()
            .map_err(|_| anyhow::anyhow!("log book poisoned"))?
            .read(job, stream, from, max as usize);
        if local.known {
            return Ok(local);
        }
        let home = self
            .ps()
            .await?
            .into_iter()
            .find(|r| r.job == job)
            .map(|r| r.home);
        let Some(home) = home else {
            anyhow::bail!("no node knows job {job:?}");
        };
        let peer: PeerId = home.parse().context("home peer id")?;
        let msg = proto::NodeMsg::ReadLog {
            job: job.to_string(),
            stream,
            from,
            max,
        };
        let reply = self
            .shared
            .mesh
            .control_request(peer, proto::encode(&msg))
            .await?;
        match proto::NodeReply::decode(&reply)? {
            proto::NodeReply::Log(s) => Ok(s),
            proto::NodeReply::Error(e) => anyhow::bail!("{e}"),
            other => anyhow::bail!("unexpected reply {other:?}"),
        }
    }

    /// Waits until `job`'s log at its home is complete; returns its exit code.
    pub async fn wait_job(&self, job: &str, timeout: Duration) -> anyhow::Result<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.logs(job, StreamKind::Stdout, u64::MAX, 0).await;
            if let Ok(LogSlice {
                exit_code: Some(c), ..
            }) = s
            {
                return Ok(c);
            }
            if Instant::now() > deadline {
                anyhow::bail!("job {job} did not finish within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The whole of a job's stream from this node's log book (the job's home).
    pub fn local_log(&self, job: &str, stream: StreamKind) -> Option<Vec<u8>> {
        let book = self.shared.logs.lock().ok()?;
        book.get(job).map(|l| l.stream(stream).data().to_vec())
    }

    /// Stops the mesh (other nodes see this node disappear); jobs are killed.
    pub async fn shutdown(&self) {
        // First: a stopped node must not go on deciding recoveries, copying, or
        // collecting the store (a node restarted in this process may be using it).
        let _ = self.recovery.send(recovery::Halt).await;
        let _ = self.scheduler.send(scheduler::KillAll).await;
        if let Some(cpu) = &self.shared.cpu {
            let _ = cpu.executor.stop();
        }
        let _ = self.shared.mesh.shutdown().await;
    }
}

fn row(node: &str, j: JobSummary) -> JobRow {
    let home = PeerId::from_bytes(&j.home)
        .map(|p| p.to_string())
        .unwrap_or_default();
    JobRow {
        job: j.job,
        node: node.to_string(),
        generation: j.generation,
        state: j.state,
        home,
        memory_bytes: j.memory_bytes,
    }
}
