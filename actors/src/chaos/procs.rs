//! `roam chaos --level 2`: every scenario node is a `roam node` child process on
//! 127.0.0.1, and faults are what an operating system does to processes.
//!
//! Each node gets its own directory under one scratch directory (`node.toml`, its
//! identity key, its on-disk store `store/`, its log `node.log`), a mesh port and an
//! API port chosen free on 127.0.0.1, and every other node's mesh address as a
//! bootstrap address. The harness waits until every node answers on its API and has
//! seen every other's heartbeat, then drives the swarm only through the nodes' APIs
//! and signals:
//!
//! - **kill** = SIGKILL (its jobs, replicas in memory and log book die with it);
//! - **restart** = the same `roam node --config node.toml` again: same name, ports,
//!   identity (peer id) and on-disk store;
//! - **pause** = SIGSTOP (its jobs stop computing too, and it answers nobody),
//!   **resume** = SIGCONT;
//! - **partition** / **heal** = `POST /chaos/block?peer=…` on every node with the
//!   peers the cut separates it from (none on a heal), which calls
//!   [`mesh::MeshHandle::set_blocked`]; a node that cannot answer (stopped, not up
//!   yet after a restart) gets its list as soon as it answers again;
//! - delay, loss and rate cannot be set per pair of nodes on one loopback interface:
//!   a scenario with them is refused ([`super::check_level`]).
//!
//! Observation polls `GET /jobs` of every running node (a stopped one is skipped: its
//! jobs do not run), and `GET /logs` at the home. Moves come from `GET /moves`, read
//! from a node just before it is killed and from every node at the end; each
//! process's clock is placed on the harness's from the `uptime_ms` of its `/jobs`.
//!
//! Every child is in its own process group (a terminal's Ctrl-C reaches only the
//! harness), dies with the harness thread that started it (`PR_SET_PDEATHSIG`,
//! Linux), and is SIGKILLed and reaped when [`Processes`] is dropped — after a run,
//! on an error, and when the run's future is dropped on Ctrl-C — before the scratch
//! directory is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use recovery::{Event, NodeId};

use super::netns::{self, Fabric};
use super::{scratch_dir, Cut, JobNice, Level, GATEWAY};
use crate::demo::TimedMove;
use crate::http::{self, ClientResponse};
use crate::node::api::{JobsAnswer, RunRequest, MAX_RUN_BODY};
use crate::node::migrator::MoveReport;
use crate::node::proto::{JobSummary, LogSlice, MAX_OUTPUT_PIECE};
use crate::node::recovery::RecoveryFacts;
use crate::node::{NodeConfig, NodeStatus, PeerRow};

/// How long a node may take to answer on its API after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the nodes may take to see each other's heartbeats at the start.
const MEET_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one observation request (a busy node answers in milliseconds).
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on submitting a job (the module travels in the request).
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Heartbeat period of the nodes, as at level 1.
const HEARTBEAT_MS: u64 = 200;

/// One node: its files, addresses, and its current process if it runs.
struct Proc {
    config: PathBuf,
    log: PathBuf,
    /// Its API, on 127.0.0.1 of its network namespace at level 3.
    api: SocketAddr,
    /// Its network namespace (level 3).
    ns: Option<i32>,
    /// Its peer id (the identity file keeps it across restarts).
    peer: String,
    child: Option<Child>,
    /// The current process's clock and moves.
    now: Incarnation,
}

impl Proc {
    /// One request to its API (from inside its namespace at level 3).
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
        timeout: Duration,
    ) -> anyhow::Result<ClientResponse> {
        match self.ns {
            Some(fd) => netns::within(fd, || call(self.api, method, path, body, timeout)),
            None => call(self.api, method, path, body, timeout),
        }
    }

    fn get(&self, path: &str) -> anyhow::Result<ClientResponse> {
        self.call("GET", path, None, ASK_TIMEOUT)
    }
}

/// What one process of a node leaves behind: its moves, on its own clock.
#[derive(Default)]
struct Incarnation {
    /// When the process's node started, on the harness's clock.
    epoch: Option<Instant>,
    moves: Vec<MoveReport>,
}

/// The level-2 swarm (see the module doc).
pub struct Processes {
    /// 2: on loopback; 3: in network namespaces.
    level: u8,
    exe: PathBuf,
    dir: PathBuf,
    nodes: BTreeMap<String, Proc>,
    home: String,
    gateway: bool,
    cut: Cut,
    /// Stopped nodes.
    paused: BTreeSet<String>,
    /// Nodes whose block list must be sent again once they answer.
    stale: BTreeSet<String>,
    /// Nodes that died on their own, not yet reported.
    died: Vec<(String, String)>,
    /// Ended processes.
    past: Vec<Incarnation>,
    nice: JobNice,
    /// Level 3's namespaces and links (dropped after the processes are gone).
    net: Option<Fabric>,
    /// Links set down by the cut (level 3).
    down: BTreeSet<(String, String)>,
}

impl Processes {
    /// Starts one `roam node` process per name (the gateway, if any, last) and
    /// waits until they all answer and know each other: at level 2 on 127.0.0.1, at
    /// level 3 each in a network namespace of its own ([`netns`]; `need_netem`: the
    /// scenario delays or drops packets).
    pub async fn start(
        level: u8,
        names: &[String],
        home: &str,
        gateway: bool,
        need_netem: bool,
    ) -> anyhow::Result<Processes> {
        let exe = std::env::current_exe().context("finding the roam binary")?;
        let net = if level == 3 {
            Some(Fabric::create(names, need_netem)?)
        } else {
            None
        };
        let mut swarm = Processes {
            level,
            exe,
            dir: scratch_dir(&format!("chaos{level}"))?,
            nodes: BTreeMap::new(),
            home: home.to_string(),
            gateway,
            cut: Cut::default(),
            paused: BTreeSet::new(),
            stale: BTreeSet::new(),
            died: Vec::new(),
            past: Vec::new(),
            nice: JobNice::default(),
            net,
            down: BTreeSet::new(),
        };
        // Level 2: every port is held until all are chosen, so no two nodes get the
        // same one. Level 3: every node has its namespace to itself.
        let mut held = Vec::new();
        let mut ports = Vec::new();
        for _ in names {
            if swarm.net.is_some() {
                ports.push((4001, 7070));
                continue;
            }
            let (mesh, api) = (free_port()?, free_port()?);
            ports.push((mesh.local_addr()?.port(), api.local_addr()?.port()));
            held.push((mesh, api));
        }
        drop(held);
        for (i, name) in names.iter().enumerate() {
            let dir = swarm.dir.join(name);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let (mesh, api) = ports[i];
            let mut cfg = NodeConfig::local(name);
            cfg.api = format!("127.0.0.1:{api}");
            let mut bootstrap = Vec::new();
            for (j, other) in names.iter().enumerate() {
                if j == i {
                    continue;
                }
                let at = match &swarm.net {
                    Some(net) => net
                        .addr(name, other)
                        .with_context(|| format!("no link {name}-{other}"))?,
                    None => std::net::Ipv4Addr::LOCALHOST,
                };
                bootstrap.push(format!("/ip4/{at}/tcp/{}", ports[j].0));
            }
            cfg.bootstrap = bootstrap;
            cfg.listen = vec![match swarm.net {
                Some(_) => format!("/ip4/0.0.0.0/tcp/{mesh}"),
                None => format!("/ip4/127.0.0.1/tcp/{mesh}"),
            }];
            cfg.identity_file = dir.join("identity.key").display().to_string();
            cfg.store_dir = dir.join("store").display().to_string();
            cfg.migration.heartbeat_ms = HEARTBEAT_MS;
            let config = dir.join("node.toml");
            let text = toml::to_string(&cfg).context("writing a node config")?;
            std::fs::write(&config, text)
                .with_context(|| format!("writing {}", config.display()))?;
            let api = cfg.api_addr().context("the API address")?;
            let mut p = Proc {
                config,
                log: dir.join("node.log"),
                api,
                ns: swarm.net.as_ref().and_then(|n| n.ns_fd(name)),
                peer: String::new(),
                child: None,
                now: Incarnation::default(),
            };
            p.child = Some(spawn(&swarm.exe, &p.config, &p.log, p.ns)?);
            swarm.nodes.insert(name.clone(), p);
        }
        // Every node answers: its peer id.
        let deadline = Instant::now() + START_TIMEOUT;
        for name in names {
            let status: NodeStatus = swarm
                .until(name, deadline, "answering on its API", |p| {
                    Ok(p.get("/status")?.json()?)
                })
                .await?;
            if let Some(p) = swarm.nodes.get_mut(name) {
                p.peer = status.peer;
            }
        }
        // Every node has seen every other's heartbeat.
        let deadline = Instant::now() + MEET_TIMEOUT;
        let others = names.len() - 1;
        for name in names {
            swarm
                .until(name, deadline, "seeing every other node", |p| {
                    let peers: Vec<PeerRow> = p.get("/peers")?.json()?;
                    let seen = peers
                        .iter()
                        .filter(|r| r.connected && !r.name.is_empty())
                        .count();
                    if seen < others {
                        anyhow::bail!("sees {seen} of {others} peers");
                    }
                    Ok(())
                })
                .await?;
        }
        if gateway {
            let q = http::encode_query(&[("node", GATEWAY)]);
            swarm
                .proc(home)?
                .call("POST", &format!("/drain?{q}"), None, ASK_TIMEOUT)
                .context("draining the gateway")?;
        }
        Ok(swarm)
    }

    /// Retries `f` on `name`'s node every 100 ms until it succeeds or `deadline`
    /// passes (`what` it was waiting for); fails at once if the process exits.
    async fn until<T>(
        &mut self,
        name: &str,
        deadline: Instant,
        what: &str,
        f: impl Fn(&Proc) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        loop {
            let p = self
                .nodes
                .get_mut(name)
                .with_context(|| format!("no node {name}"))?;
            let result = f(p);
            match result {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if let Some(c) = p.child.as_mut() {
                        if let Ok(Some(status)) = c.try_wait() {
                            anyhow::bail!(
                                "node {name} exited at start ({status}); the end of {}:\n{}",
                                p.log.display(),
                                tail(&p.log)
                            );
                        }
                    }
                    if Instant::now() > deadline {
                        return Err(e.context(format!(
                            "node {name} not {what} in time; the end of {}:\n{}",
                            p.log.display(),
                            tail(&p.log)
                        )));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn proc(&self, name: &str) -> anyhow::Result<&Proc> {
        self.nodes
            .get(name)
            .with_context(|| format!("no node {name}"))
    }

    /// Whether `name`'s process can answer now (running and not stopped).
    fn answers(&self, name: &str) -> bool {
        self.nodes.get(name).is_some_and(|p| p.child.is_some()) && !self.paused.contains(name)
    }

    /// Sends `name` its block list; on failure, it is sent again once it answers.
    fn send_cut(&mut self, name: &str) {
        if !self.answers(name) {
            self.stale.insert(name.to_string());
            return;
        }
        let peers: Vec<(&str, &str)> = self
            .nodes
            .iter()
            .filter(|(other, _)| self.cut.separated(name, other))
            .map(|(_, p)| ("peer", p.peer.as_str()))
            .collect();
        let sent = self.proc(name).and_then(|p| {
            let path = format!("/chaos/block?{}", http::encode_query(&peers));
            p.call("POST", &path, None, ASK_TIMEOUT)
        });
        match sent {
            Ok(_) => {
                self.stale.remove(name);
            }
            Err(e) => {
                tracing::warn!(node = name, "sending the block list: {e:#}");
                self.stale.insert(name.to_string());
            }
        }
    }

    /// Puts the cut in force: level 2 sends every node its block list, level 3 sets
    /// the links the cut separates down and the others up.
    fn apply_cut(&mut self) -> anyhow::Result<()> {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        let Some(net) = &self.net else {
            for n in names {
                self.send_cut(&n);
            }
            return Ok(());
        };
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                let key = (a.clone(), b.clone());
                let cut = self.cut.separated(a, b);
                if cut != self.down.contains(&key) {
                    net.set_link(a, b, !cut)?;
                    if cut {
                        self.down.insert(key);
                    } else {
                        self.down.remove(&key);
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads `name`'s moves into its current incarnation.
    fn fetch_moves(&mut self, name: &str) {
        if !self.answers(name) {
            return;
        }
        let Some(p) = self.nodes.get_mut(name) else {
            return;
        };
        match p.get("/moves").and_then(|r| Ok(r.json()?)) {
            Ok(m) => p.now.moves = m,
            Err(e) => tracing::debug!(node = name, "reading moves: {e:#}"),
        }
    }

    /// Sends `sig` to `name`'s process.
    fn signal(&self, name: &str, sig: libc::c_int) -> anyhow::Result<()> {
        let child = self
            .nodes
            .get(name)
            .and_then(|p| p.child.as_ref())
            .with_context(|| format!("{name} is not running"))?;
        let pid = libc::pid_t::try_from(child.id()).context("process id")?;
        // SAFETY: kill(2) on our own child, which is not reaped yet (we hold its
        // `Child` and only wait for it after killing it), so the pid is still its.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("signalling {name} (pid {pid})"));
        }
        Ok(())
    }

    /// SIGKILLs and reaps every process.
    fn kill_all(&mut self) {
        for p in self.nodes.values_mut() {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
                self.past.push(std::mem::take(&mut p.now));
            }
        }
    }
}

impl Level for Processes {
    const PAUSE_FREEZES: bool = true;

    fn level(&self) -> u8 {
        self.level
    }

    fn what(&self) -> &'static str {
        match &self.net {
            Some(f) if f.wired() => {
                "level 3: a process per node, each in a network namespace, linked by veth \
                 pairs through a userspace wire (delay and loss; this kernel has no netem)"
            }
            Some(_) => {
                "level 3: a process per node, each in a network namespace, linked by veth pairs"
            }
            None => "level 2: a process per node, on 127.0.0.1",
        }
    }

    fn is_live(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|p| p.child.is_some())
    }

    async fn submit(&mut self, req: RunRequest) -> anyhow::Result<String> {
        let mut body = Vec::new();
        ciborium::into_writer(&req, &mut body).context("encoding the run request")?;
        let r = self.proc(&self.home)?.call(
            "POST",
            "/run",
            Some(("application/cbor", &body)),
            SUBMIT_TIMEOUT,
        )?;
        let v: serde_json::Value = r.json()?;
        v["job"]
            .as_str()
            .map(str::to_string)
            .context("the node's answer to /run has no job id")
    }

    async fn lists(&mut self) -> Vec<(String, Vec<JobSummary>)> {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        let mut out = Vec::new();
        for n in names {
            if let Some(l) = self.list(&n).await {
                // It answers (again): it gets the block list it missed.
                if self.stale.contains(&n) {
                    self.send_cut(&n);
                }
                out.push((n, l));
            }
        }
        out
    }

    async fn list(&mut self, node: &str) -> Option<Vec<JobSummary>> {
        if !self.answers(node) {
            return None;
        }
        let p = self.nodes.get_mut(node)?;
        let answer: JobsAnswer = match p.get("/jobs").and_then(|r| Ok(r.json()?)) {
            Ok(a) => a,
            Err(e) => {
                // A restarted node is not up yet, or a busy one was slow.
                tracing::debug!(node, "asking for jobs: {e:#}");
                return None;
            }
        };
        if p.now.epoch.is_none() {
            p.now.epoch = Instant::now().checked_sub(Duration::from_millis(answer.uptime_ms));
        }
        Some(
            answer
                .jobs
                .into_iter()
                .map(|j| JobSummary {
                    job: j.job,
                    generation: j.generation,
                    state: j.state,
                    home: Vec::new(),
                    memory_bytes: j.memory_bytes,
                })
                .collect(),
        )
    }

    async fn read_log(&mut self, job: &str, from: u64, max: u32) -> Option<LogSlice> {
        let from = from.to_string();
        let max = max.min(MAX_OUTPUT_PIECE as u32).to_string();
        let q = http::encode_query(&[
            ("job", job),
            ("stream", "stdout"),
            ("from", &from),
            ("max", &max),
        ]);
        let r = self
            .proc(&self.home)
            .and_then(|p| p.get(&format!("/logs?{q}")))
            .map_err(|e| tracing::debug!(job, "reading output: {e:#}"))
            .ok()?;
        let next = r.header("x-roam-next")?.parse().ok()?;
        let exit_code = r.header("x-roam-exit").and_then(|c| c.parse().ok());
        Some(LogSlice {
            data: r.body,
            next,
            exit_code,
            known: true,
        })
    }

    async fn whole_log(&mut self, job: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let max = MAX_OUTPUT_PIECE as u32;
        loop {
            let s = self.read_log(job, out.len() as u64, max).await?;
            let n = s.data.len();
            out.extend_from_slice(&s.data);
            if n < max as usize {
                return Some(out);
            }
        }
    }

    fn exited(&mut self) -> Vec<(String, String)> {
        for (name, p) in self.nodes.iter_mut() {
            let Some(c) = p.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = c.try_wait() {
                tracing::warn!(node = %name, %status, log = %p.log.display(), "node exited");
                p.child = None;
                self.past.push(std::mem::take(&mut p.now));
                self.paused.remove(name);
                self.died.push((name.clone(), status.to_string()));
            }
        }
        std::mem::take(&mut self.died)
    }

    async fn kill(&mut self, node: &str) -> anyhow::Result<String> {
        // Its moves die with it: read them first.
        self.fetch_moves(node);
        self.signal(node, libc::SIGKILL)?;
        if let Some(p) = self.nodes.get_mut(node) {
            if let Some(mut c) = p.child.take() {
                c.wait().with_context(|| format!("reaping {node}"))?;
            }
            self.past.push(std::mem::take(&mut p.now));
        }
        let was_paused = self.paused.remove(node);
        self.stale.remove(node);
        Ok(format!(
            "kill {node} (SIGKILL{})",
            if was_paused { ", while stopped" } else { "" }
        ))
    }

    async fn restart(&mut self, node: &str) -> anyhow::Result<Option<String>> {
        let exe = self.exe.clone();
        let Some(p) = self.nodes.get_mut(node) else {
            return Ok(None);
        };
        if p.child.is_some() {
            return Ok(None);
        }
        p.child = Some(spawn(&exe, &p.config, &p.log, p.ns)?);
        // Not waited for: it answers when it is up; its block list is sent then.
        self.stale.insert(node.to_string());
        Ok(Some(format!(
            "restart {node} (a new process: same config, identity and on-disk store)"
        )))
    }

    async fn pause(&mut self, node: &str) -> anyhow::Result<String> {
        self.signal(node, libc::SIGSTOP)?;
        self.paused.insert(node.to_string());
        Ok(format!("pause {node} (SIGSTOP: its jobs stop too)"))
    }

    async fn resume(&mut self, node: &str) -> anyhow::Result<()> {
        self.signal(node, libc::SIGCONT)?;
        self.paused.remove(node);
        // A partition may have begun or ended while it was stopped (level 2; at level
        // 3 the links were cut whether it ran or not).
        if self.net.is_none() {
            self.send_cut(node);
        }
        Ok(())
    }

    async fn partition(
        &mut self,
        groups: &[Vec<NodeId>],
        nodes: usize,
    ) -> anyhow::Result<Vec<String>> {
        let cut_off = self.cut.partition(groups, nodes, self.gateway);
        self.apply_cut()?;
        Ok(cut_off)
    }

    async fn heal(&mut self) -> anyhow::Result<()> {
        self.cut.heal();
        self.apply_cut()
    }

    async fn shape(&mut self, e: &Event) -> anyhow::Result<Option<String>> {
        let Some(net) = self.net.as_mut() else {
            // Refused before the run (`check_level`).
            anyhow::bail!("{e}: level 2 cannot shape links");
        };
        let s = match e {
            Event::Delay { from, to, ms } => {
                net.shape(from.as_str(), to.as_str(), |s| s.delay_ms = *ms as f64)?
            }
            Event::Loss { from, to, percent } => {
                net.shape(from.as_str(), to.as_str(), |s| s.loss_pct = *percent)?
            }
            Event::Rate {
                from,
                to,
                kbit_per_s,
            } => net.shape(from.as_str(), to.as_str(), |s| {
                s.rate_kbit = *kbit_per_s as f64
            })?,
            _ => return Ok(None),
        };
        Ok(Some(format!(
            "{e} (now {} ms, {} % loss, {} kbit/s)",
            s.delay_ms, s.loss_pct, s.rate_kbit
        )))
    }

    async fn recovery_facts(&mut self) -> Vec<(String, RecoveryFacts)> {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        let mut out = Vec::new();
        for name in names {
            if !self.answers(&name) {
                continue;
            }
            let Some(p) = self.nodes.get_mut(&name) else {
                continue;
            };
            match p.get("/recovery").and_then(|r| Ok(r.json()?)) {
                Ok(f) => out.push((name, f)),
                Err(e) => tracing::debug!(node = %name, "reading recovery facts: {e:#}"),
            }
        }
        out
    }

    fn tick(&mut self) {
        let dirs: Vec<PathBuf> = self
            .nodes
            .values()
            .filter_map(|p| p.child.as_ref())
            .map(|c| PathBuf::from(format!("/proc/{}/task", c.id())))
            .collect();
        self.nice.sweep(&dirs);
    }

    async fn moves(&mut self, t0: Instant) -> Vec<TimedMove> {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for n in &names {
            self.fetch_moves(n);
        }
        let mut out = Vec::new();
        let current = self.nodes.values().map(|p| &p.now);
        for inc in self.past.iter().chain(current) {
            let Some(epoch) = inc.epoch else {
                continue;
            };
            let at = |ms: u64| (epoch + Duration::from_millis(ms)).saturating_duration_since(t0);
            out.extend(inc.moves.iter().map(|r| TimedMove {
                at: at(r.started_ms),
                end: at(r.ended_ms),
                report: r.clone(),
            }));
        }
        out.sort_by_key(|m| m.at);
        out
    }

    async fn shutdown(&mut self) {
        self.kill_all();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.kill_all();
        // `ROAM_CHAOS_KEEP_LOGS=DIR`: the nodes' logs outlive the run, as DIR/NODE.log.
        if let Some(keep) = std::env::var_os("ROAM_CHAOS_KEEP_LOGS") {
            let keep = PathBuf::from(keep);
            let kept = std::fs::create_dir_all(&keep).and_then(|()| {
                for (name, p) in &self.nodes {
                    std::fs::copy(&p.log, keep.join(format!("{name}.log")))?;
                }
                Ok(())
            });
            match kept {
                Ok(()) => eprintln!("node logs kept in {}", keep.display()),
                Err(e) => tracing::warn!(dir = %keep.display(), "keeping the node logs: {e}"),
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), "removing the scratch directory: {e}");
        }
    }
}

/// A listener on a free port of 127.0.0.1 (dropped to hand the port to a node).
fn free_port() -> anyhow::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")
}

/// Starts `roam node --config CONFIG`, its output appended to `log`.
/// `ns`: the network namespace to start it in (level 3).
fn spawn(exe: &Path, config: &Path, log: &Path, ns: Option<i32>) -> anyhow::Result<Child> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone().context("duplicating the log file")?;
    let mut cmd = Command::new(exe);
    cmd.arg("node")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env("ROAM_PROGRESS", "0")
        // Its own process group: a terminal's Ctrl-C reaches only the harness,
        // which ends the nodes itself.
        .process_group(0);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent; the
    // closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Dies with the harness even if the harness is SIGKILLed.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = ns {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| {
        format!(
            "starting {} node --config {}",
            exe.display(),
            config.display()
        )
    })
}

/// One request to a node's API; a non-2xx answer is an error carrying its message.
fn call(
    api: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> anyhow::Result<ClientResponse> {
    let (ctype, bytes) = match body {
        Some((c, b)) => (Some(c), b),
        None => (None, &[][..]),
    };
    let r = http::request(api, method, path, ctype, bytes, timeout, MAX_RUN_BODY)
        .with_context(|| format!("{method} {path} at {api}"))?;
    r.error_for_status()
        .with_context(|| format!("{method} {path} at {api}"))
}

/// The last 2 KiB of a node's log.
fn tail(log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let start = text.len().saturating_sub(2048);
    String::from_utf8_lossy(&text[start..]).into_owned()
}
