//! The output pump: carries what jobs write to their home node's log book.
//!
//! Job threads send every write, tagged with the job, its home and its stream
//! offset. Output of jobs homed here goes straight into the log book; output for a
//! remote home is batched per stream (a batch is sent after 10 ms or 256 KiB) and
//! delivered as control requests, retried with backoff. The home's log book makes
//! delivery exactly-once and in order (see [`super::logbook`]), so retries, a
//! source flushing late after a move, and the destination's first bytes racing it
//! are all harmless.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use mesh::PeerId;
use tokio::sync::mpsc;

use super::link::LinkMonitor;
use super::logbook::Accepted;
use super::proto::{encode, NodeMsg, NodeReply, StreamKind, MAX_OUTPUT_PIECE};
use super::runner::OutputEvent;
use super::Shared;

const FLUSH_EVERY: Duration = Duration::from_millis(10);
const BATCH_BYTES: usize = 256 << 10;
const SEND_TRIES: u32 = 12;

struct Batch {
    home: PeerId,
    offset: u64,
    data: Vec<u8>,
}

pub async fn pump(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<OutputEvent>,
    _links: Addr<LinkMonitor>,
) {
    let mut batches: HashMap<(String, StreamKind), Batch> = HashMap::new();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                None => break,
                Some(OutputEvent::Piece { job, home, stream, offset, data }) => {
                    if home == shared.peer_id {
                        accept_local(&shared, &job, stream, offset, &data);
                        continue;
                    }
                    let key = (job, stream);
                    let joins = batches
                        .get(&key)
                        .is_some_and(|b| b.home == home && b.offset + b.data.len() as u64 == offset);
                    if !joins {
                        if let Some(b) = batches.remove(&key) {
                            send(&shared, &key.0, key.1, b);
                        }
                        batches.insert(key.clone(), Batch { home, offset, data: Vec::new() });
                    }
                    if let Some(b) = batches.get_mut(&key) {
                        b.data.extend_from_slice(&data);
                        if b.data.len() >= BATCH_BYTES {
                            if let Some(b) = batches.remove(&key) {
                                send(&shared, &key.0, key.1, b);
                            }
                        }
                    }
                }
                Some(OutputEvent::Exited { job, home, code, stdout_len, stderr_len }) => {
                    for s in [StreamKind::Stdout, StreamKind::Stderr] {
                        if let Some(b) = batches.remove(&(job.clone(), s)) {
                            send(&shared, &job, s, b);
                        }
                    }
                    if home == shared.peer_id {
                        if let Ok(mut book) = shared.logs.lock() {
                            book.exited(&job, code, stdout_len, stderr_len);
                        }
                    } else {
                        let msg = NodeMsg::Exited { job, code, stdout_len, stderr_len };
                        deliver(shared.clone(), home, msg);
                    }
                }
            },
            _ = tick.tick() => {
                for ((job, s), b) in batches.drain() {
                    send(&shared, &job, s, b);
                }
            }
        }
    }
}

pub fn accept_local(
    shared: &Shared,
    job: &str,
    stream: StreamKind,
    offset: u64,
    data: &[u8],
) -> Accepted {
    match shared.logs.lock() {
        Ok(mut book) => book.accept(job, stream, offset, data),
        Err(_) => Accepted::Refused,
    }
}

fn send(shared: &Arc<Shared>, job: &str, stream: StreamKind, b: Batch) {
    for (i, piece) in b.data.chunks(MAX_OUTPUT_PIECE).enumerate() {
        let msg = NodeMsg::Output {
            job: job.to_string(),
            stream,
            offset: b.offset + (i * MAX_OUTPUT_PIECE) as u64,
            data: piece.to_vec(),
        };
        deliver(shared.clone(), b.home, msg);
    }
}

/// Sends `msg` to `home` until it is acknowledged or the tries run out.
fn deliver(shared: Arc<Shared>, home: PeerId, msg: NodeMsg) {
    let data = encode(&msg);
    actix::spawn(async move {
        let mut wait = Duration::from_millis(50);
        for _ in 0..SEND_TRIES {
            match shared.mesh.control_request(home, data.clone()).await {
                Ok(reply) => match NodeReply::decode(&reply) {
                    Ok(NodeReply::Ok) => return,
                    other => tracing::debug!(?other, "output not taken yet"),
                },
                Err(e) => tracing::debug!(%home, %e, "output delivery failed"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
        tracing::warn!(%home, "output lost: the home node did not take it");
    });
}
