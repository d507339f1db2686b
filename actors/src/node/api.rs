//! The node's edges: the local control API (HTTP on 127.0.0.1, what the `roam` CLI
//! talks to) and the router that hands mesh events to the actors.
//!
//! API (JSON answers; errors are `{"error": "..."}` with a 4xx/5xx status):
//!
//! | request | answer |
//! |---|---|
//! | `GET /status` | this node: jobs, moves, peers count, store size |
//! | `GET /ps` | every job of the swarm (from heartbeats) |
//! | `GET /peers` | peers with RTT, throughput, load |
//! | `GET /moves` | moves this node made as the source |
//! | `POST /run` (CBOR [`RunRequest`]) | `{"job": id}` |
//! | `POST /migrate?job=J&to=NODE` | the move's report, when it finished |
//! | `POST /drain?node=NODE` | `{}` once the drain started |
//! | `POST /load?value=F` | `{}` (inject load, for experiments) |
//! | `GET /logs?job=J&stream=stdout&from=N&max=M` | raw bytes; headers `x-roam-next` (offset after them) and `x-roam-exit` once the job ended and every byte arrived |

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
use super::solver::{DrainNode, MoveTo, RemoteStart};
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

pub async fn serve(node: NodeHandle, listener: tokio::net::TcpListener) {
    let limits = ServerLimits {
        max_body_bytes: MAX_RUN_BODY,
        ..ServerLimits::default()
    };
    let handler: http::Handler = Rc::new(move |req: Request| {
        let node = node.clone();
        Box::pin(async move { handle(node, req).await })
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
        ("GET", "/peers") => json_or_500(node.peers().await),
        ("GET", "/moves") => match node.migrator.send(Moves).await {
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
            match node.migrate(job, to).await {
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
                Ok(hb) => node.links.do_send(HeartbeatSeen(source, hb)),
                Err(e) => tracing::debug!(%source, %e, "bad heartbeat"),
            },
            MeshEvent::Link { peer, report } => node.links.do_send(LinkUpdate(peer, report)),
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
        NodeMsg::MoveJob { job, to } => {
            let solver = node.solver.clone();
            actix::spawn(async move {
                let r = match solver.send(MoveTo { job, to }).await {
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
