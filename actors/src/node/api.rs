//! The node's edges: the local control API (HTTP on 127.0.0.1, what the `roam` CLI
//! talks to) and the router that hands mesh events to the actors.
//!
//! API (JSON answers; errors are `{"error": "..."}` with a 4xx/5xx status):
//!
//! | request | answer |
//! |---|---|
//! | `GET /status` | this node: jobs, moves, peers count, store size, uptime |
//! | `GET /metrics` | Prometheus text exposition (see [`metrics`]) |
//! | `GET /ps` | every job of the swarm (from heartbeats) |
//! | `GET /peers` | peers with RTT, throughput, load |
//! | `GET /moves` | moves this node made as the source |
//! | `GET /moves/active` | moves this node is making as the source, with the progress of the copy in flight |
//! | `POST /run` (CBOR [`RunRequest`]) | `{"job": id}` |
//! | `POST /migrate?job=J&to=NODE` | the move's report, when it finished |
//! | `POST /drain?node=NODE` | `{}` once the drain started |
//! | `POST /load?value=F` | `{}` (inject load, for experiments) |
//! | `GET /logs?job=J&stream=stdout&from=N&max=M` | raw bytes; headers `x-roam-next` (offset after them) and `x-roam-exit` once the job ended and every byte arrived |
//! | `GET /jobs` | [`JobsAnswer`]: the jobs this node's scheduler holds, with their generation and state, and the node's uptime (cheaper than `/status`; what `roam chaos --level 2` polls) |
//! | `POST /chaos/block?peer=P&peer=Q` | `{"blocked": n}` once this node refuses exactly the listed peers (peer ids; none lifts every block), see [`mesh::MeshHandle::set_blocked`]: how `roam chaos --level 2` cuts and heals partitions |
//!
//! `/chaos/block` is authenticated by loopback: it is served only when the API listens
//! on a loopback address (403 otherwise), so only a process on this machine can reach
//! it, and the server refuses requests whose `Host` is not loopback or that carry an
//! `Origin` (a browser's cross-site request).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use mesh::{MeshEvent, Topic};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::link::{HeartbeatSeen, LinkUpdate, PeerAddr, PeerGone};
use super::logbook::Accepted;
use super::migrator::{Incoming, Moves};
use super::output::accept_local;
use super::proto::{encode, Heartbeat, NodeMsg, NodeReply, StreamKind};
use super::solver::{DrainNode, MoveTo, PlacementGossip, ProposalSeen, RemoteStart};
use super::NodeHandle;
use crate::http::{self, Request, Response, ServerLimits};

/// Largest request body the API takes (a module and its stdin).
pub const MAX_RUN_BODY: usize = 256 << 20;

/// `POST /run`: what to run and where.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunRequest {
    #[serde(with = "serde_bytes")]
    pub module: Vec<u8>,
    /// Job name (argv[0] and the id's prefix).
    pub name: Option<String>,
    /// Exact job id (default: NAME-XXXX).
    pub id: Option<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub stdin: Vec<u8>,
    pub seed: u64,
    /// The node to run it on (default: this one).
    pub node: Option<String>,
}

/// `GET /jobs`: the jobs this node holds and how long it has been up (its epoch, on
/// the caller's clock, is the answer's arrival minus `uptime_ms`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobsAnswer {
    pub uptime_ms: u64,
    pub jobs: Vec<super::JobSummaryRow>,
}

pub async fn serve(node: NodeHandle, listener: tokio::net::TcpListener) {
    let limits = ServerLimits {
        max_body_bytes: MAX_RUN_BODY,
        ..ServerLimits::default()
    };
    // The metrics' running totals live with the server: one per node.
    let tally = Rc::new(RefCell::new(metrics::MoveTally::default()));
    let handler: http::Handler = Rc::new(move |req: Request| {
        let (node, tally) = (node.clone(), tally.clone());
        Box::pin(async move {
            if (req.method.as_str(), req.path.as_str()) == ("GET", "/metrics") {
                let admm = node.solver.send(super::solver::AdmmStats).await;
                return match (node.status().await, admm) {
                    (Ok(st), Ok(admm)) => {
                        let mut text = metrics::render(&st, &mut tally.borrow_mut());
                        text.push_str(&metrics::render_admm(&admm));
                        Response::bytes(200, metrics::CONTENT_TYPE, text.into_bytes())
                    }
                    (Err(e), _) => err(500, format!("{e:#}")),
                    (_, Err(e)) => err(500, e),
                };
            }
            handle(node, req).await
        })
    });
    http::serve(listener, limits, handler).await;
}

fn err(status: u16, e: impl std::fmt::Display) -> Response {
    Response::error(status, e.to_string())
}

fn json_or_500<T: Serialize>(r: anyhow::Result<T>) -> Response {
    match r {
        Ok(v) => Response::json(200, &v),
        Err(e) => err(500, format!("{e:#}")),
    }
}

async fn handle(node: NodeHandle, req: Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/status") => json_or_500(node.status().await),
        ("GET", "/ps") => json_or_500(node.ps().await),
        ("GET", "/jobs") => match node.scheduler.send(super::scheduler::List).await {
            Ok(jobs) => Response::json(
                200,
                &JobsAnswer {
                    uptime_ms: node.shared.now_ms(),
                    jobs: jobs.into_iter().map(super::JobSummaryRow::from).collect(),
                },
            ),
            Err(e) => err(500, e),
        },
        ("POST", "/chaos/block") => {
            if !node.api_addr.is_some_and(|a| a.ip().is_loopback()) {
                return err(403, "/chaos/block is served only on a loopback API address");
            }
            let mut peers = Vec::new();
            for p in req.query_values("peer") {
                match p.parse::<mesh::PeerId>() {
                    Ok(id) => peers.push(id),
                    Err(e) => return err(400, format!("peer {p:?}: {e}")),
                }
            }
            let n = peers.len();
            match node.shared.mesh.set_blocked(peers).await {
                Ok(()) => Response::json(200, &serde_json::json!({ "blocked": n })),
                Err(e) => err(500, e),
            }
        }
        ("GET", "/peers") => json_or_500(node.peers().await),
        ("GET", "/recovery") => json_or_500(node.recovery_facts().await),
        ("GET", "/moves") => match node.migrator.send(Moves).await {
            Ok(m) => Response::json(200, &m),
            Err(e) => err(500, e),
        },
        ("GET", "/moves/active") => match node.migrator.send(super::migrator::ActiveMoves).await {
            Ok(m) => Response::json(200, &m),
            Err(e) => err(500, e),
        },
        ("POST", "/run") => {
            let run: RunRequest = match ciborium::from_reader(req.body.as_slice()) {
                Ok(r) => r,
                Err(e) => return err(400, format!("body is not a CBOR run request: {e}")),
            };
            match node.run(run).await {
                Ok(job) => Response::json(200, &serde_json::json!({ "job": job })),
                Err(e) => err(409, format!("{e:#}")),
            }
        }
        ("POST", "/migrate") => {
            let (Some(job), Some(to)) = (req.query_value("job"), req.query_value("to")) else {
                return err(400, "need ?job=JOB&to=NODE");
            };
            let mode = req.query_value("mode").map(str::to_string);
            if let Some(m) = &mode {
                if let Err(e) = super::config::parse_move_mode(m) {
                    return err(400, format!("mode: {e}"));
                }
            }
            match node.migrate_mode(job, to, mode).await {
                Ok(r) => Response::json(200, &r),
                Err(e) => err(409, format!("{e:#}")),
            }
        }
        ("POST", "/drain") => {
            let name = req.query_value("node").unwrap_or(node.name()).to_string();
            match node.drain(&name).await {
                Ok(()) => Response::json(200, &serde_json::json!({})),
                Err(e) => err(409, format!("{e:#}")),
            }
        }
        ("POST", "/load") => match req.query_value("value").and_then(|v| v.parse::<f64>().ok()) {
            Some(v) if v.is_finite() => {
                json_or_500(node.set_load(v).await.map(|()| serde_json::json!({})))
            }
            _ => err(400, "need ?value=F with 0 <= F <= 1"),
        },
        ("GET", "/logs") => {
            let Some(job) = req.query_value("job") else {
                return err(400, "need ?job=JOB");
            };
            let stream = match req.query_value("stream").unwrap_or("stdout") {
                "stdout" => StreamKind::Stdout,
                "stderr" => StreamKind::Stderr,
                s => return err(400, format!("unknown stream {s:?}")),
            };
            let from = req
                .query_value("from")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let max = req
                .query_value("max")
                .and_then(|v| v.parse().ok())
                .unwrap_or(256u32 << 10)
                .min(super::proto::MAX_OUTPUT_PIECE as u32);
            match node.logs(job, stream, from, max).await {
                Ok(s) => {
                    let mut r = Response::bytes(200, "application/octet-stream", s.data)
                        .with_header("x-roam-next", s.next.to_string());
                    if let Some(c) = s.exit_code {
                        r = r.with_header("x-roam-exit", c.to_string());
                    }
                    r
                }
                Err(e) => err(404, format!("{e:#}")),
            }
        }
        _ => err(404, format!("no route {} {}", req.method, req.path)),
    }
}

/// Hands mesh events to the actors until the mesh stops.
pub async fn route_mesh_events(node: NodeHandle, mut events: mpsc::Receiver<MeshEvent>) {
    while let Some(ev) = events.recv().await {
        match ev {
            MeshEvent::Gossip {
                topic: Topic::Heartbeat,
                source,
                data,
                ..
            } => match Heartbeat::decode(&data) {
                Ok(hb) => {
                    node.recovery
                        .do_send(super::recovery::Seen(source, hb.clone()));
                    node.links.do_send(HeartbeatSeen(source, hb));
                }
                Err(e) => tracing::debug!(%source, %e, "bad heartbeat"),
            },
            MeshEvent::Gossip {
                topic: Topic::JobEvents,
                source,
                data,
                ..
            } => node.solver.do_send(ProposalSeen { source, data }),
            MeshEvent::Gossip {
                topic: Topic::Placement,
                source,
                data,
                ..
            } => node.solver.do_send(PlacementGossip { source, data }),
            MeshEvent::Direct {
                topic: Topic::Placement,
                peer,
                data,
            } => node.solver.do_send(PlacementGossip { source: peer, data }),
            MeshEvent::Link { peer, report } => {
                // A ping answered is a sign of life, like a heartbeat.
                node.recovery.do_send(super::recovery::Pinged(peer));
                node.links.do_send(LinkUpdate(peer, report))
            }
            MeshEvent::PeerDisconnected { peer } => node.links.do_send(PeerGone(peer)),
            MeshEvent::PeerConnected { peer, addr } => node.links.do_send(PeerAddr(peer, addr)),
            MeshEvent::PeerPenalised {
                peer,
                reason,
                banned,
                ..
            } => tracing::warn!(%peer, %reason, banned, "peer penalised"),
            MeshEvent::ControlRequest { peer, data, reply } => {
                let msg = match NodeMsg::decode(&data) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(%peer, %e, "bad control request");
                        reply.send(encode(&NodeReply::Error(e.to_string())));
                        continue;
                    }
                };
                control(&node, peer, msg, reply);
            }
            _ => {}
        }
    }
}

fn control(node: &NodeHandle, peer: mesh::PeerId, msg: NodeMsg, reply: mesh::ControlReply) {
    let answer = |r: Result<(), String>| match r {
        Ok(()) => encode(&NodeReply::Ok),
        Err(e) => encode(&NodeReply::Error(e)),
    };
    match msg {
        NodeMsg::Migrate { msg, home, inline } => {
            node.migrator.do_send(Incoming {
                from: peer,
                msg,
                home,
                inline,
            });
            reply.send(encode(&NodeReply::Ok));
        }
        NodeMsg::Output {
            job,
            stream,
            offset,
            data,
        } => {
            let r = match accept_local(&node.shared, &job, stream, offset, &data) {
                Accepted::Refused => NodeReply::Error("log book full, retry later".into()),
                _ => NodeReply::Ok,
            };
            reply.send(encode(&r));
        }
        NodeMsg::Exited {
            job,
            code,
            stdout_len,
            stderr_len,
        } => {
            if let Ok(mut book) = node.shared.logs.lock() {
                book.exited(&job, code, stdout_len, stderr_len);
            }
            reply.send(encode(&NodeReply::Ok));
        }
        NodeMsg::ReadLog {
            job,
            stream,
            from,
            max,
        } => {
            let r = match node.shared.logs.lock() {
                Ok(book) => NodeReply::Log(book.read(
                    &job,
                    stream,
                    from,
                    (max as usize).min(super::proto::MAX_OUTPUT_PIECE),
                )),
                Err(_) => NodeReply::Error("log book unavailable".into()),
            };
            reply.send(encode(&r));
        }
        NodeMsg::Replicate {
            job,
            generation,
            seq,
            home,
            manifest,
            claim,
        } => {
            let recovery = node.recovery.clone();
            actix::spawn(async move {
                let r = recovery
                    .send(super::recovery::Replica {
                        from: peer,
                        job,
                        generation,
                        seq,
                        home,
                        manifest,
                        claim,
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
                reply.send(answer(r));
            });
        }
        NodeMsg::Start { launch, module } => {
            let solver = node.solver.clone();
            actix::spawn(async move {
                let r = solver
                    .send(RemoteStart {
                        from: peer,
                        launch,
                        module,
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
                reply.send(answer(r));
            });
        }
        NodeMsg::MoveJob { job, to, mode } => {
            let solver = node.solver.clone();
            actix::spawn(async move {
                let r = match solver.send(MoveTo { job, to, mode }).await {
                    Ok(Ok(report)) => match serde_json::to_string(&report) {
                        Ok(j) => NodeReply::Moved(j),
                        Err(e) => NodeReply::Error(e.to_string()),
                    },
                    Ok(Err(e)) => NodeReply::Error(e),
                    Err(e) => NodeReply::Error(e.to_string()),
                };
                reply.send(encode(&r));
            });
        }
        NodeMsg::Drain => {
            let solver = node.solver.clone();
            let name = node.shared.name.clone();
            actix::spawn(async move {
                let r = solver
                    .send(DrainNode(name))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
                reply.send(answer(r));
            });
        }
    }
}

/// How long the CLI waits for an answer that involves a move.
pub const MOVE_TIMEOUT: Duration = Duration::from_secs(600);

/// `GET /metrics`: the node's figures in the Prometheus text format (0.0.4).
///
/// | metric | type | what |
/// |---|---|---|
/// | `roam_node_info{name,peer}` | gauge | always 1; the node's name and peer id |
/// | `roam_moves_total{outcome}` | counter | moves this node made as the source, by outcome (`committed`, `aborted`, `escalated`) |
/// | `roam_move_downtime_seconds` | histogram | committed moves: pause → the job runs at the destination |
/// | `roam_move_pause_seconds` | histogram | committed moves: stopping the job and writing its last checkpoint |
/// | `roam_move_duration_seconds` | histogram | every move: offer → handover (or abort) |
/// | `roam_move_sent_bytes_total` | counter | chunk bytes sent for moves (uncompressed, rounds and final copy) |
/// | `roam_move_state_bytes_total` | counter | job state the moves carried (offered chunk maps) |
/// | `roam_jobs{state}` | gauge | jobs on this node: `running`, `paused`, `restored` |
/// | `roam_peers_connected` | gauge | peers with an open mesh connection |
/// | `roam_store_bytes` | gauge | bytes in the checkpoint store |
/// | `roam_load` / `roam_draining` | gauge | the load this node reports; 1 while draining |
/// | `roam_uptime_seconds` | gauge | since the node started |
/// | `roam_sched_deadline_misses_total`, `roam_sched_jobs_released_total` | counter | node-bound task instances (`[sched]` only, as every `roam_sched_*`) |
/// | `roam_sched_server_executed_seconds_total` | counter | CPU migrating jobs got at the server's priority |
/// | `roam_sched_server_overrun_max_seconds` | gauge | most the server ran past its budget in one period window |
/// | `roam_sched_server_budget_seconds`, `roam_sched_server_period_seconds` | gauge | Cs and Ts |
/// | `roam_sched_headroom`, `roam_sched_queued_jobs` | gauge | unclaimed CPU share; migrating jobs behind the server |
/// | `roam_sched_task_instances_total{task}` | counter | completed instances per node-bound task |
/// | `roam_admm_rounds_total{result}` | counter | placement rounds this node took part in: `placed`, `disagreement`, `infeasible`, `timeout`, `error` |
/// | `roam_admm_iterations` / `roam_admm_iterations_total` | histogram / counter | ADMM iterations of each placed round |
/// | `roam_admm_round_seconds` | histogram | placed rounds: wall time to the agreed placement |
/// | `roam_admm_placed_moves_total` | counter | jobs the agreed placements moved (whole swarm) |
/// | `roam_admm_sent_bytes_total` | counter | placement payload bytes this node published |
/// | `roam_admm_last_round`, `roam_admm_last_iterations`, `roam_admm_last_converged`, `roam_admm_last_primal_residual`, `roam_admm_last_dual_residual`, `roam_admm_last_rounding_gap` | gauge | the last placed round (absent before one) |
///
/// The move figures are totals folded from the migrator's move list ([`super::migrator::Moves`])
/// at each scrape, so they only grow. That list keeps the newest 1024 moves: moves
/// made and forgotten between two scrapes are not counted.
///
/// A new figure is one call on [`Exposition`] in [`render`] (and, for move figures, a
/// field of [`MoveTally`] folded in [`MoveTally::fold`]).
pub mod metrics {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;

    use crate::node::{MoveReport, NodeStatus};

    pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

    /// Upper bounds (seconds) of the downtime and pause buckets: 0.5 ms to 5 s.
    pub const DOWNTIME_BUCKETS: [f64; 13] = [
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
    ];
    /// Upper bounds (seconds) of the move duration buckets: 10 ms to 10 min.
    pub const DURATION_BUCKETS: [f64; 11] = [
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0,
    ];

    /// A Prometheus histogram: counts per upper bound (not cumulative), sum, count.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Histogram {
        bounds: Vec<f64>,
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    }

    impl Histogram {
        pub fn new(bounds: &[f64]) -> Histogram {
            Histogram {
                bounds: bounds.to_vec(),
                counts: vec![0; bounds.len()],
                sum: 0.0,
                count: 0,
            }
        }

        pub fn observe(&mut self, v: f64) {
            if !v.is_finite() {
                return;
            }
            if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
                self.counts[i] += 1;
            }
            self.sum += v;
            self.count += 1;
        }

        pub fn count(&self) -> u64 {
            self.count
        }
    }

    /// Running totals of the moves this node made (see the module's note on the
    /// migrator's window).
    #[derive(Clone, Debug)]
    pub struct MoveTally {
        /// The newest move folded in (its migration id).
        last: Option<String>,
        pub by_outcome: BTreeMap<String, u64>,
        pub downtime: Histogram,
        pub pause: Histogram,
        pub duration: Histogram,
        pub sent_bytes: u64,
        pub state_bytes: u64,
    }

    impl Default for MoveTally {
        fn default() -> Self {
            MoveTally {
                last: None,
                by_outcome: ["committed", "aborted", "escalated"]
                    .into_iter()
                    .map(|o| (o.to_string(), 0))
                    .collect(),
                downtime: Histogram::new(&DOWNTIME_BUCKETS),
                pause: Histogram::new(&DOWNTIME_BUCKETS),
                duration: Histogram::new(&DURATION_BUCKETS),
                sent_bytes: 0,
                state_bytes: 0,
            }
        }
    }

    impl MoveTally {
        /// Folds in the moves of `moves` (oldest first, as the migrator keeps them)
        /// that come after the last one folded before.
        pub fn fold(&mut self, moves: &[MoveReport]) {
            let new = match &self.last {
                Some(id) => match moves.iter().rposition(|m| &m.migration == id) {
                    Some(i) => &moves[i + 1..],
                    None => moves,
                },
                None => moves,
            };
            for m in new {
                let outcome = m.outcome.split(':').next().unwrap_or("").trim();
                *self.by_outcome.entry(outcome.to_string()).or_default() += 1;
                if outcome == "committed" {
                    self.downtime.observe(m.downtime_ms / 1e3);
                    self.pause.observe(m.pause_ms / 1e3);
                }
                self.duration.observe(m.total_ms / 1e3);
                self.sent_bytes += m.sent_bytes;
                self.state_bytes += m.offered_bytes;
            }
            if let Some(m) = moves.last() {
                self.last = Some(m.migration.clone());
            }
        }
    }

    /// Writes metric families in the text format.
    #[derive(Default)]
    pub struct Exposition {
        out: String,
    }

    /// Escapes a label value (backslash, double quote, newline).
    fn label_value(v: &str) -> String {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    }

    fn labels(ls: &[(&str, &str)]) -> String {
        if ls.is_empty() {
            return String::new();
        }
        let inner: Vec<String> = ls
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label_value(v)))
            .collect();
        format!("{{{}}}", inner.join(","))
    }

    fn num(v: f64) -> String {
        if v.is_nan() {
            "NaN".into()
        } else if v.is_infinite() {
            if v > 0.0 { "+Inf" } else { "-Inf" }.into()
        } else {
            format!("{v}")
        }
    }

    impl Exposition {
        fn head(&mut self, name: &str, kind: &str, help: &str) {
            let help = help.replace('\\', "\\\\").replace('\n', "\\n");
            let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        }

        fn samples(&mut self, name: &str, samples: &[(&[(&str, &str)], f64)]) {
            for (ls, v) in samples {
                let _ = writeln!(self.out, "{name}{} {}", labels(ls), num(*v));
            }
        }

        pub fn gauge(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) {
            self.head(name, "gauge", help);
            self.samples(name, samples);
        }

        /// `name` must end in `_total`.
        pub fn counter(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) {
            self.head(name, "counter", help);
            self.samples(name, samples);
        }

        pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
            self.head(name, "histogram", help);
            let mut cum = 0;
            for (b, c) in h.bounds.iter().zip(&h.counts) {
                cum += c;
                let _ = writeln!(self.out, "{name}_bucket{{le=\"{}\"}} {cum}", num(*b));
            }
            let _ = writeln!(self.out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(self.out, "{name}_sum {}", num(h.sum));
            let _ = writeln!(self.out, "{name}_count {}", h.count);
        }

        pub fn finish(self) -> String {
            self.out
        }
    }

    /// The `[sched]` figures: the server and the node-bound tasks.
    fn sched_metrics(e: &mut Exposition, c: &crate::node::cpu::CpuStatus) {
        let us = |v: u64| v as f64 / 1e6;
        e.counter(
            "roam_sched_deadline_misses_total",
            "Node-bound task instances that missed their deadline.",
            &[(&[], c.deadline_misses as f64)],
        );
        e.counter(
            "roam_sched_jobs_released_total",
            "Node-bound task instances released.",
            &[(&[], c.jobs_released as f64)],
        );
        e.counter(
            "roam_sched_server_executed_seconds_total",
            "CPU the migrating jobs got at the server's priority.",
            &[(&[], us(c.server_executed_us))],
        );
        e.gauge(
            "roam_sched_server_overrun_max_seconds",
            "Most the server ran beyond its budget in any window of one period.",
            &[(&[], us(c.server_overrun_max_us))],
        );
        e.gauge(
            "roam_sched_server_budget_seconds",
            "The server's budget Cs (per period roam_sched_server_period_seconds).",
            &[(&[], us(c.budget_us))],
        );
        e.gauge(
            "roam_sched_server_period_seconds",
            "The server's period Ts.",
            &[(&[], us(c.period_us))],
        );
        e.gauge(
            "roam_sched_headroom",
            "CPU share neither the node-bound tasks nor the server claim.",
            &[(&[], c.headroom)],
        );
        e.gauge(
            "roam_sched_queued_jobs",
            "Migrating jobs waiting for or holding the server.",
            &[(&[], c.queued_jobs as f64)],
        );
        let labels: Vec<[(&str, &str); 1]> = c
            .tasks
            .iter()
            .map(|t| [("task", t.name.as_str())])
            .collect();
        let samples: Vec<(&[(&str, &str)], f64)> = labels
            .iter()
            .zip(&c.tasks)
            .map(|(l, t)| (&l[..], t.instances as f64))
            .collect();
        e.counter(
            "roam_sched_task_instances_total",
            "Completed instances of each node-bound task.",
            &samples,
        );
    }

    /// Folds `st`'s moves into `tally` and renders every metric.
    pub fn render(st: &NodeStatus, tally: &mut MoveTally) -> String {
        tally.fold(&st.moves);
        let mut e = Exposition::default();
        e.gauge(
            "roam_node_info",
            "This node's name and peer id (always 1).",
            &[(&[("name", &st.name), ("peer", &st.peer)], 1.0)],
        );
        let outcomes: Vec<(String, f64)> = tally
            .by_outcome
            .iter()
            .map(|(o, n)| (o.clone(), *n as f64))
            .collect();
        let samples: Vec<([(&str, &str); 1], f64)> = outcomes
            .iter()
            .map(|(o, n)| ([("outcome", o.as_str())], *n))
            .collect();
        let samples: Vec<(&[(&str, &str)], f64)> =
            samples.iter().map(|(l, n)| (&l[..], *n)).collect();
        e.counter(
            "roam_moves_total",
            "Moves this node made as the source, by outcome.",
            &samples,
        );
        e.histogram(
            "roam_move_downtime_seconds",
            "Downtime of committed moves: pause until the job runs at the destination.",
            &tally.downtime,
        );
        e.histogram(
            "roam_move_pause_seconds",
            "Committed moves: stopping the job and writing its last checkpoint.",
            &tally.pause,
        );
        e.histogram(
            "roam_move_duration_seconds",
            "Moves from offer to handover or abort.",
            &tally.duration,
        );
        e.counter(
            "roam_move_sent_bytes_total",
            "Chunk bytes sent for moves (uncompressed; pre-copy rounds and final copy).",
            &[(&[], tally.sent_bytes as f64)],
        );
        e.counter(
            "roam_move_state_bytes_total",
            "Job state the moves carried (the offered chunk maps).",
            &[(&[], tally.state_bytes as f64)],
        );
        let count = |s: &str| st.jobs.iter().filter(|j| j.state == s).count() as f64;
        e.gauge(
            "roam_jobs",
            "Jobs on this node by state.",
            &[
                (&[("state", "running")], count("running")),
                (&[("state", "paused")], count("paused")),
                (&[("state", "restored")], count("restored")),
            ],
        );
        e.gauge(
            "roam_peers_connected",
            "Peers with an open mesh connection.",
            &[(&[], st.peers_connected as f64)],
        );
        e.gauge(
            "roam_store_bytes",
            "Bytes in the checkpoint store.",
            &[(&[], st.store_bytes as f64)],
        );
        e.gauge(
            "roam_load",
            "The load this node reports.",
            &[(&[], st.load)],
        );
        e.gauge(
            "roam_draining",
            "1 while this node drains.",
            &[(&[], if st.draining { 1.0 } else { 0.0 })],
        );
        e.gauge(
            "roam_uptime_seconds",
            "Seconds since the node started.",
            &[(&[], st.uptime_ms as f64 / 1e3)],
        );
        if let Some(c) = &st.sched {
            sched_metrics(&mut e, c);
        }
        e.finish()
    }

    /// The placement figures ([`crate::node::admm::AdmmTally`], the Solver's): every
    /// `roam_admm_*` family.
    pub fn render_admm(t: &crate::node::admm::AdmmTally) -> String {
        let mut e = Exposition::default();
        let labels: Vec<([(&str, &str); 1], f64)> = t
            .rounds
            .iter()
            .map(|(r, n)| ([("result", r.as_str())], *n as f64))
            .collect();
        let samples: Vec<(&[(&str, &str)], f64)> =
            labels.iter().map(|(l, n)| (&l[..], *n)).collect();
        e.counter(
            "roam_admm_rounds_total",
            "Placement rounds this node took part in, by result.",
            &samples,
        );
        e.histogram(
            "roam_admm_iterations",
            "ADMM iterations of each placed round.",
            &t.iterations,
        );
        e.counter(
            "roam_admm_iterations_total",
            "ADMM iterations of all placed rounds.",
            &[(&[], t.iterations_total as f64)],
        );
        e.histogram(
            "roam_admm_round_seconds",
            "Placed rounds: wall time until the agreed placement.",
            &t.round_seconds,
        );
        e.counter(
            "roam_admm_placed_moves_total",
            "Jobs the agreed placements moved (the whole swarm's).",
            &[(&[], t.placed_moves as f64)],
        );
        e.counter(
            "roam_admm_sent_bytes_total",
            "Placement payload bytes this node published (re-sends included).",
            &[(&[], t.sent_bytes as f64)],
        );
        if let Some(l) = &t.last {
            let last: [(&str, &str, f64); 6] = [
                ("roam_admm_last_round", "Number of the last placed round.", l.round as f64),
                (
                    "roam_admm_last_iterations",
                    "ADMM iterations of the last placed round.",
                    f64::from(l.iterations),
                ),
                (
                    "roam_admm_last_converged",
                    "1 if the residuals (not the iteration cap) ended the last placed round.",
                    if l.converged { 1.0 } else { 0.0 },
                ),
                (
                    "roam_admm_last_primal_residual",
                    "Primal residual at the end of the last placed round.",
                    l.primal_residual,
                ),
                (
                    "roam_admm_last_dual_residual",
                    "Dual residual at the end of the last placed round.",
                    l.dual_residual,
                ),
                (
                    "roam_admm_last_rounding_gap",
                    "Last placed round: (rounded objective - fractional objective) / |fractional objective|.",
                    l.rounding_gap,
                ),
            ];
            for (name, help, v) in last {
                e.gauge(name, help, &[(&[], v)]);
            }
        }
        e.finish()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn report(id: &str, outcome: &str, downtime_ms: f64) -> MoveReport {
            MoveReport {
                migration: id.into(),
                job: "j".into(),
                from: "a".into(),
                to: "b".into(),
                outcome: outcome.into(),
                generation: 1,
                started_ms: 0,
                ended_ms: 10,
                rounds: 1,
                stop_reason: String::new(),
                downtime_ms,
                downtime_upper_ms: downtime_ms,
                pause_ms: 1.0,
                total_ms: 30.0,
                offered_bytes: 1000,
                present_bytes: 0,
                sent_bytes: 700,
                final_bytes: 100,
                compression: "none".into(),
                throughput_bytes_per_s: 0,
                mode: "pre-copy".into(),
                deferred_bytes: 0,
                ..Default::default()
            }
        }

        fn status(moves: Vec<MoveReport>) -> NodeStatus {
            NodeStatus {
                name: "n\"1".into(),
                peer: "12D3".into(),
                listen: vec![],
                api: None,
                draining: false,
                load: 0.5,
                jobs: vec![],
                moves,
                store_bytes: 42,
                peers_connected: 2,
                uptime_ms: 1500,
                sched: None,
                recovery: Default::default(),
                postcopy: Vec::new(),
            }
        }

        #[test]
        fn totals_only_grow_across_the_migrators_window() {
            let mut t = MoveTally::default();
            let a = report("a", "committed", 3.0);
            let b = report("b", "aborted: gone", 0.0);
            let c = report("c", "committed", 30.0);
            render(&status(vec![a.clone(), b.clone()]), &mut t);
            // The same list again adds nothing; a list whose head fell off the window
            // adds only what is new.
            render(&status(vec![a.clone(), b.clone()]), &mut t);
            let text = render(&status(vec![b, c]), &mut t);
            assert_eq!(t.by_outcome["committed"], 2);
            assert_eq!(t.by_outcome["aborted"], 1);
            assert!(
                text.contains("roam_moves_total{outcome=\"committed\"} 2\n"),
                "{text}"
            );
            assert!(text.contains("roam_moves_total{outcome=\"aborted\"} 1\n"));
            assert!(text.contains("roam_moves_total{outcome=\"escalated\"} 0\n"));
            // 3 ms lies in le=0.005, 30 ms in le=0.05; buckets are cumulative.
            assert!(text.contains("roam_move_downtime_seconds_bucket{le=\"0.002\"} 0\n"));
            assert!(text.contains("roam_move_downtime_seconds_bucket{le=\"0.005\"} 1\n"));
            assert!(text.contains("roam_move_downtime_seconds_bucket{le=\"0.05\"} 2\n"));
            assert!(text.contains("roam_move_downtime_seconds_bucket{le=\"+Inf\"} 2\n"));
            let sum: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix("roam_move_downtime_seconds_sum "))
                .and_then(|v| v.parse().ok())
                .expect("a downtime sum");
            assert!((sum - 0.033).abs() < 1e-9, "{sum}");
            assert!(text.contains("roam_move_duration_seconds_count 3\n"));
            assert!(text.contains("roam_move_sent_bytes_total 2100\n"));
            assert!(text.contains("roam_node_info{name=\"n\\\"1\",peer=\"12D3\"} 1\n"));
            assert!(text.contains("roam_peers_connected 2\n"));
            assert!(text.contains("roam_store_bytes 42\n"));
            assert!(text.contains("# TYPE roam_move_downtime_seconds histogram\n"));
        }

        #[test]
        fn admm_families_render_from_the_tally() {
            let mut t = crate::node::admm::AdmmTally::default();
            let before = render_admm(&t);
            assert!(before.contains("roam_admm_rounds_total{result=\"placed\"} 0\n"));
            assert!(before.contains("roam_admm_iterations_count 0\n"));
            assert!(!before.contains("roam_admm_last_"), "{before}");
            let o = placement::Outcome {
                round: 4,
                epoch: 0,
                placement: vec![],
                digest: 0,
                iterations: 12,
                converged: true,
                objective: 2.5,
                fractional_objective: 2.0,
                moves: 1,
                primal_residual: 0.5,
                dual_residual: 0.25,
            };
            t.placed(&o, std::time::Duration::from_millis(30), 1000);
            t.failed("timeout", 0);
            let text = render_admm(&t);
            assert!(text.contains("roam_admm_rounds_total{result=\"placed\"} 1\n"));
            assert!(text.contains("roam_admm_rounds_total{result=\"timeout\"} 1\n"));
            // 12 iterations: in le=20, not in le=10.
            assert!(text.contains("roam_admm_iterations_bucket{le=\"10\"} 0\n"));
            assert!(text.contains("roam_admm_iterations_bucket{le=\"20\"} 1\n"));
            assert!(text.contains("roam_admm_iterations_total 12\n"));
            assert!(text.contains("roam_admm_round_seconds_count 1\n"));
            assert!(text.contains("roam_admm_last_round 4\n"));
            assert!(text.contains("roam_admm_last_dual_residual 0.25\n"));
            assert!(
                text.contains("roam_admm_last_rounding_gap 0.25\n"),
                "{text}"
            );
            assert!(text.contains("# TYPE roam_admm_iterations histogram\n"));
        }
    }
}
