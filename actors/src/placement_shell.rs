//! The network shell of the ADMM placement core: moves [`placement::Msg`]s between a
//! [`placement::Node`] and the mesh on `Topic::Placement`, ticks the core on a timer and
//! resolves with the core's outcome.
//!
//! Transport ([`ShellTransport`]): by default every message goes straight to the members
//! the core names ([`placement::Transmit`]: all the others, or the next hop of the
//! core's log-depth relay, `placement::relay`) over the mesh's direct protocol
//! (`mesh::direct`: one long-lived stream per connection, authenticated by the
//! connection, no signature, no forwarding by the mesh). The round's
//! members are known, so gossip's flooding, duplicates and per-message signature checks
//! buy nothing here; on 32 in-process nodes they made one all-to-all exchange of 350-byte
//! messages cost ~150–230 ms against a few ms direct. Gossip stays available (a swarm
//! without full connectivity between members).
//!
//! The core does the solving, the loss recovery (re-sends on [`Node::tick`]), the
//! de-duplication and the agreement check; this module only encodes (CBOR), publishes,
//! decodes and authenticates what arrives, and waits. Everything from the network is
//! untrusted: payloads are bounded before decoding, decoding errors are typed and
//! counted, and a message is fed to the core only if its `from` is the node id bound to
//! the mesh peer that sent it (the gossip author the mesh verified, or the authenticated
//! remote of the direct connection), so no peer can speak for another member.
//!
//! Used by the Solver actor, the benchmark (`examples/bench_admm_wall.rs`) and the
//! tests: the caller routes this node's `Topic::Placement` messages, direct and gossip
//! (and membership changes), into an [`Input`] channel, starts a round on the core and calls
//! [`Shell::run`]; after the outcome, [`Shell::linger`] keeps answering peers that lost
//! this node's last messages until the caller moves on.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use mesh::{MeshError, MeshHandle, PeerId, Topic};
use placement::msg::Body;
use placement::{Event, Msg, Node, NodeId, NodeStats, Outcome, PlacementError, To};
use tokio::sync::mpsc;

/// Default shortest tick period. The core re-sends its last messages when a whole
/// period passed without progress (see [`Node::tick`]), so the period must exceed one
/// normal iteration (gossip to the slowest member plus the local step: a few ms to a few
/// tens of ms on loopback or a LAN); shorter only adds spurious re-sends. A lost message
/// then costs one to two periods.
pub const DEFAULT_TICK: Duration = Duration::from_millis(100);

/// Default longest tick period.
pub const DEFAULT_MAX_TICK: Duration = Duration::from_secs(2);

/// Default period until the shell has seen an iteration (like TCP's initial RTO: a
/// re-send is never free, since a peer that receives a copy it already holds re-sends
/// its own on its next tick).
pub const DEFAULT_INITIAL_TICK: Duration = Duration::from_secs(1);

/// The period follows the pace of the round: this many smoothed iteration intervals.
/// When iterations slow down (a loaded host, a slow member) ticks slow down with them:
/// a fixed period shorter than an iteration makes every node re-send every period,
/// which loads the network further (on 32 nodes sharing two cores that collapsed).
const PACE_FACTOR: u32 = 3;

/// Inputs fed to the core per pass of the shell's loop (see [`Shell::run`]).
const BATCH: usize = 256;

/// Largest placement message accepted or sent: the mesh's gossip limit.
pub const MAX_MESSAGE_BYTES: usize = 256 << 10;

/// What the caller feeds the shell.
#[derive(Clone, Debug)]
pub enum Input {
    /// One `Topic::Placement` payload (direct or gossip); `source` is its authenticated
    /// author.
    Message { source: PeerId, data: Vec<u8> },
    /// The membership of the next view (same on every member, from the membership
    /// protocol), with the mesh peer of each member. Replaces the author bindings.
    Members {
        epoch: u32,
        members: Vec<(NodeId, PeerId)>,
    },
}

/// How the shell sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShellTransport {
    /// Straight to every other member (`MeshHandle::send_direct_else_gossip`: members
    /// this node has no connection to get the message by gossip).
    #[default]
    Direct,
    /// Published on the `Topic::Placement` gossip topic.
    Gossip,
}

/// Shell settings.
#[derive(Clone, Debug)]
pub struct ShellConfig {
    pub transport: ShellTransport,
    /// Shortest period of [`Node::tick`] (see [`DEFAULT_TICK`]); the period is three
    /// smoothed iteration intervals, within `[tick, max_tick]`, and `initial_tick`
    /// (within the same bounds) until the first iteration.
    pub tick: Duration,
    pub max_tick: Duration,
    pub initial_tick: Duration,
    /// [`Shell::run`] gives up after this.
    pub timeout: Duration,
    /// Bound on a payload, in and out.
    pub max_message_bytes: usize,
}

impl Default for ShellConfig {
    fn default() -> Self {
        ShellConfig {
            transport: ShellTransport::default(),
            tick: DEFAULT_TICK,
            max_tick: DEFAULT_MAX_TICK,
            initial_tick: DEFAULT_INITIAL_TICK,
            timeout: Duration::from_secs(30),
            max_message_bytes: MAX_MESSAGE_BYTES,
        }
    }
}

/// Why a payload was not a message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("placement message of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("malformed placement message: {0}")]
    Malformed(String),
    #[error("encoding a placement message failed: {0}")]
    Encode(String),
}

/// Why a round did not produce a placement this node may act on.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("no round started on the placement core")]
    NotStarted,
    #[error("round {round}: members rounded to different placements {digests:?}")]
    Disagreement {
        round: u64,
        digests: Vec<(NodeId, u64)>,
    },
    #[error("round {round}: {error}")]
    Failed { round: u64, error: PlacementError },
    #[error("membership change refused: {0}")]
    Membership(PlacementError),
    #[error("no outcome after {after:?} (iteration {iteration})")]
    Timeout { after: Duration, iteration: u32 },
    #[error("the input channel closed")]
    InputClosed,
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("mesh: {0}")]
    Mesh(MeshError),
}

/// Counters of the shell (the core keeps its own, [`NodeStats`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShellStats {
    /// Messages published, and their encoded bytes (payloads, without the mesh envelope),
    /// re-sends included; and the re-sends alone.
    pub published: u64,
    pub published_bytes: u64,
    pub resent: u64,
    pub resent_bytes: u64,
    /// Publishes the mesh refused for now (e.g. no subscribed peer; with the direct
    /// transport only a stopped mesh): lost, the core's re-sends recover them.
    pub publish_failed: u64,
    /// Messages the outbound test hook dropped.
    pub dropped_by_hook: u64,
    /// Bundles forwarded for the core's log-depth relay (`placement::relay`),
    /// counted in `published` too, and their bytes (also in `published_bytes`).
    pub relayed: u64,
    pub relayed_bytes: u64,
    /// Recipients summed over every message handed to the mesh (direct frames; a
    /// gossip publish counts its members).
    pub frames: u64,
    /// Bundles over the message size limit, sent in parts.
    pub split: u64,
    pub received: u64,
    pub received_bytes: u64,
    pub too_large: u64,
    pub malformed: u64,
    /// Decoded messages whose `from` is not the node bound to the signing peer.
    pub wrong_author: u64,
    pub ticks: u64,
    /// Time spent inside the core (handle, tick, membership): its CPU share.
    pub core_time: Duration,
}

/// A placement every member agreed on.
#[derive(Clone, Debug)]
pub struct Placed {
    pub outcome: Outcome,
    /// From the call of [`Shell::run`] to the outcome.
    pub elapsed: Duration,
    /// From the call of [`Shell::run`] to the completion of each ADMM iteration here
    /// (`[k - 1]`: iteration `k`; iteration 1 needs every member's start). The rest of
    /// `elapsed` after the last is the rounding and the exchange of final digests.
    pub iteration_at: Vec<Duration>,
    pub shell: ShellStats,
    pub core: NodeStats,
}

/// The wire format: CBOR of [`Msg`].
pub fn encode(msg: &Msg, max: usize) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    ciborium::into_writer(msg, &mut out).map_err(|e| WireError::Encode(e.to_string()))?;
    if out.len() > max {
        return Err(WireError::TooLarge {
            size: out.len(),
            max,
        });
    }
    Ok(out)
}

/// Decodes an untrusted payload of at most `max` bytes (exactly one CBOR value). The core
/// validates the contents against its round.
pub fn decode(bytes: &[u8], max: usize) -> Result<Msg, WireError> {
    if bytes.len() > max {
        return Err(WireError::TooLarge {
            size: bytes.len(),
            max,
        });
    }
    let mut rest = bytes;
    let msg: Msg =
        ciborium::from_reader(&mut rest).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(msg)
}

/// An encoded message, or a bundle too large for one message cut into parts that fit.
enum Encoded {
    One(Vec<u8>),
    Split(Vec<Msg>),
}

/// Encodes `msg`; a relay bundle over `max` bytes comes back as bundles of fewer messages
/// each (halving until every part fits), any other message over `max` is an error.
fn encode_bundle(msg: &Msg, max: usize) -> Result<Encoded, WireError> {
    match encode(msg, max) {
        Ok(b) => Ok(Encoded::One(b)),
        Err(WireError::TooLarge { .. }) if matches!(&msg.body, Body::Relay(v) if v.len() > 1) => {
            let mut parts = Vec::new();
            let mut todo = vec![msg.clone()];
            while let Some(m) = todo.pop() {
                let Body::Relay(inner) = &m.body else {
                    continue;
                };
                let fits = encode(&m, max).is_ok();
                if fits || inner.len() < 2 {
                    if !fits {
                        // One message alone is over the limit: the error it gives.
                        encode(&m, max)?;
                    }
                    parts.push(m);
                    continue;
                }
                let (a, b) = inner.split_at(inner.len() / 2);
                for half in [b, a] {
                    todo.push(Msg {
                        body: Body::Relay(half.to_vec()),
                        ..m.clone()
                    });
                }
            }
            Ok(Encoded::Split(parts))
        }
        Err(e) => Err(e),
    }
}

/// The peers of `authors` but `me`, sorted (the same order on every send).
fn recipients(authors: &HashMap<PeerId, NodeId>, me: PeerId) -> Vec<PeerId> {
    let mut v: Vec<PeerId> = authors.keys().copied().filter(|&p| p != me).collect();
    v.sort_unstable();
    v
}

type OutboundFilter = Box<dyn FnMut(&Msg) -> bool + Send>;

/// One node's gossip shell; keep it across rounds (the stats accumulate).
pub struct Shell {
    mesh: MeshHandle,
    cfg: ShellConfig,
    /// Mesh peer → the node id it may speak for.
    authors: HashMap<PeerId, NodeId>,
    /// Every member's peer but this node's: the recipients of direct sends to all.
    recipients: Vec<PeerId>,
    /// Member → its mesh peer (recipients of sends to some members).
    peers: HashMap<NodeId, PeerId>,
    filter: Option<OutboundFilter>,
    stats: ShellStats,
    /// Smoothed interval between iterations (an estimate kept across rounds).
    pace: Option<Duration>,
    /// How many of the messages in the core's outbox are re-sends (queued by a tick).
    resends_queued: u64,
}

impl std::fmt::Debug for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shell")
            .field("cfg", &self.cfg)
            .field("authors", &self.authors.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Shell {
    /// `members`: the node id of every member and the mesh peer that speaks for it.
    pub fn new(
        mesh: MeshHandle,
        cfg: ShellConfig,
        members: impl IntoIterator<Item = (NodeId, PeerId)>,
    ) -> Shell {
        let authors: HashMap<PeerId, NodeId> = members.into_iter().map(|(n, p)| (p, n)).collect();
        let recipients = recipients(&authors, mesh.local_peer_id());
        let peers = authors.iter().map(|(&p, &n)| (n, p)).collect();
        Shell {
            mesh,
            cfg,
            authors,
            recipients,
            peers,
            filter: None,
            stats: ShellStats::default(),
            pace: None,
            resends_queued: 0,
        }
    }

    /// Test hook: a message is published only if `keep` returns true (loss injection on
    /// this node's outbound side, the mesh untouched).
    pub fn with_outbound_filter(
        mut self,
        keep: impl FnMut(&Msg) -> bool + Send + 'static,
    ) -> Shell {
        self.filter = Some(Box::new(keep));
        self
    }

    pub fn stats(&self) -> &ShellStats {
        &self.stats
    }

    /// Drives `core` (already started on a round) until its outcome: publishes what it
    /// emits, feeds it `inputs`, ticks it (see [`ShellConfig::tick`]).
    pub async fn run(
        &mut self,
        core: &mut Node,
        inputs: &mut mpsc::Receiver<Input>,
    ) -> Result<Placed, ShellError> {
        if core.members().is_empty() {
            return Err(ShellError::NotStarted);
        }
        let started = Instant::now();
        self.resends_queued = 0;
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        let mut next_tick = tokio::time::Instant::now() + self.period();
        let (mut iteration, mut advanced) = (core.iteration(), Instant::now());
        let mut iteration_at = Vec::new();
        loop {
            self.flush(core).await?;
            if core.iteration() != iteration {
                iteration = core.iteration();
                iteration_at.push(started.elapsed());
                self.sample_pace(advanced.elapsed());
                advanced = Instant::now();
            }
            if let Some(ev) = core.poll_event() {
                return match ev {
                    Event::Placed(outcome) => Ok(Placed {
                        outcome,
                        elapsed: started.elapsed(),
                        iteration_at,
                        shell: self.stats.clone(),
                        core: core.stats().clone(),
                    }),
                    Event::Disagreement { round, digests } => {
                        Err(ShellError::Disagreement { round, digests })
                    }
                    Event::Failed { round, error } => Err(ShellError::Failed { round, error }),
                };
            }
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(input) => self.feed_batch(core, input, inputs)?,
                    None => return Err(ShellError::InputClosed),
                },
                _ = tokio::time::sleep_until(next_tick) => {
                    self.tick(core);
                    next_tick = tokio::time::Instant::now() + self.period();
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ShellError::Timeout {
                        after: self.cfg.timeout,
                        iteration: core.iteration(),
                    });
                }
            }
        }
    }

    /// After the outcome: keeps feeding, ticking and publishing (a peer that lost this
    /// node's final message gets it again) until `until` resolves or `inputs` closes.
    /// Returns an event if the core produced one meanwhile (a membership change restarts
    /// the solve).
    pub async fn linger<F: Future>(
        &mut self,
        core: &mut Node,
        inputs: &mut mpsc::Receiver<Input>,
        until: F,
    ) -> Result<Option<Event>, ShellError> {
        let mut next_tick = tokio::time::Instant::now() + self.period();
        let mut until = std::pin::pin!(until);
        loop {
            self.flush(core).await?;
            if let Some(ev) = core.poll_event() {
                return Ok(Some(ev));
            }
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(input) => self.feed_batch(core, input, inputs)?,
                    None => return Ok(None),
                },
                _ = tokio::time::sleep_until(next_tick) => {
                    self.tick(core);
                    next_tick = tokio::time::Instant::now() + self.period();
                }
                _ = &mut until => return Ok(None),
            }
        }
    }

    /// The current tick period.
    pub fn period(&self) -> Duration {
        let lo = self.cfg.tick.max(Duration::from_millis(1));
        let hi = self.cfg.max_tick.max(lo);
        self.pace
            .map_or(self.cfg.initial_tick, |p| p.saturating_mul(PACE_FACTOR))
            .clamp(lo, hi)
    }

    /// One iteration interval (EWMA, weight 1/4; a stall counts too, so the ticks back
    /// off while a round is stuck, up to `max_tick`).
    fn sample_pace(&mut self, d: Duration) {
        self.pace = Some(match self.pace {
            None => d,
            Some(p) => (p * 3 + d) / 4,
        });
    }

    /// Called with the core's outbox empty (after a flush), so what the tick queues
    /// are the re-sends.
    fn tick(&mut self, core: &mut Node) {
        self.stats.ticks += 1;
        let before = core.stats().resent;
        let t = Instant::now();
        core.tick();
        self.stats.core_time += t.elapsed();
        self.resends_queued += core.stats().resent.saturating_sub(before);
    }

    /// Feeds `first` and whatever else is already queued (at most [`BATCH`] inputs), so a
    /// burst of frames costs one pass of the select loop (its timers, the flush) instead
    /// of one per frame.
    fn feed_batch(
        &mut self,
        core: &mut Node,
        first: Input,
        inputs: &mut mpsc::Receiver<Input>,
    ) -> Result<(), ShellError> {
        self.feed(core, first)?;
        for _ in 1..BATCH {
            match inputs.try_recv() {
                Ok(input) => self.feed(core, input)?,
                Err(_) => break,
            }
        }
        Ok(())
    }

    fn feed(&mut self, core: &mut Node, input: Input) -> Result<(), ShellError> {
        match input {
            Input::Message { source, data } => {
                self.stats.received += 1;
                self.stats.received_bytes += data.len() as u64;
                let msg = match decode(&data, self.cfg.max_message_bytes) {
                    Ok(m) => m,
                    Err(e) => {
                        match e {
                            WireError::TooLarge { .. } => self.stats.too_large += 1,
                            _ => self.stats.malformed += 1,
                        }
                        tracing::debug!(%source, %e, "placement message dropped");
                        return Ok(());
                    }
                };
                if self.authors.get(&source) != Some(&msg.from) {
                    self.stats.wrong_author += 1;
                    tracing::debug!(%source, from = msg.from, "placement message from the wrong peer");
                    return Ok(());
                }
                let t = Instant::now();
                core.handle(msg);
                self.stats.core_time += t.elapsed();
            }
            Input::Members { epoch, members } => {
                self.authors = members.iter().map(|&(n, p)| (p, n)).collect();
                self.recipients = recipients(&self.authors, self.mesh.local_peer_id());
                self.peers = members.iter().copied().collect();
                let ids = members.into_iter().map(|(n, _)| n).collect();
                let t = Instant::now();
                let res = core.set_members(epoch, ids);
                self.stats.core_time += t.elapsed();
                res.map_err(ShellError::Membership)?;
            }
        }
        Ok(())
    }

    /// Puts `bytes` on the mesh for `to`, counting the frames: direct messages, or
    /// gossip, which reaches every member anyway (everything to all).
    async fn put_on_mesh(&mut self, to: &To, bytes: Vec<u8>) -> Result<(), MeshError> {
        match self.cfg.transport {
            ShellTransport::Direct => {
                let to: Vec<PeerId> = match to {
                    To::All => self.recipients.clone(),
                    To::Only(ids) => ids
                        .iter()
                        .filter_map(|n| self.peers.get(n).copied())
                        .collect(),
                };
                self.stats.frames += to.len() as u64;
                self.mesh
                    .send_direct_else_gossip(to, Topic::Placement, bytes)
                    .await
            }
            ShellTransport::Gossip => {
                self.stats.frames += self.recipients.len() as u64;
                self.mesh.publish(Topic::Placement, bytes).await
            }
        }
    }

    /// Sends one part of a split bundle (direct; over gossip it reaches everyone).
    async fn send_part(&mut self, to: &To, part: &Msg, bytes: Vec<u8>) -> Result<(), ShellError> {
        let len = bytes.len() as u64;
        match self.put_on_mesh(to, bytes).await {
            Ok(()) => {
                self.stats.published += 1;
                self.stats.published_bytes += len;
                self.stats.relayed += 1;
                self.stats.relayed_bytes += len;
                Ok(())
            }
            Err(MeshError::Publish(e)) => {
                self.stats.publish_failed += 1;
                tracing::debug!(%e, round = part.round, iter = part.iter, "placement publish failed");
                Ok(())
            }
            Err(e) => Err(ShellError::Mesh(e)),
        }
    }

    /// Publishes everything the core wants sent.
    async fn flush(&mut self, core: &mut Node) -> Result<(), ShellError> {
        while let Some(t) = core.poll_transmit() {
            let msg = t.msg;
            let relayed = matches!(msg.body, Body::Relay(_));
            // Bundles are never queued by a tick, so they do not count as re-sends.
            let resend = !relayed && self.resends_queued > 0;
            if !relayed {
                self.resends_queued = self.resends_queued.saturating_sub(1);
            }
            if let Some(keep) = self.filter.as_mut() {
                if !keep(&msg) {
                    self.stats.dropped_by_hook += 1;
                    continue;
                }
            }
            let bytes = match encode_bundle(&msg, self.cfg.max_message_bytes)? {
                Encoded::One(b) => b,
                Encoded::Split(parts) => {
                    // A bundle over the size limit (many members' starts): its halves go
                    // out as bundles of their own (a receiver takes any part of a step).
                    self.stats.split += 1;
                    for part in parts {
                        let bytes = encode(&part, self.cfg.max_message_bytes)?;
                        self.send_part(&t.to, &part, bytes).await?;
                    }
                    continue;
                }
            };
            let len = bytes.len() as u64;
            match self.put_on_mesh(&t.to, bytes).await {
                Ok(()) => {
                    self.stats.published += 1;
                    self.stats.published_bytes += len;
                    if relayed {
                        self.stats.relayed += 1;
                        self.stats.relayed_bytes += len;
                    }
                    if resend {
                        self.stats.resent += 1;
                        self.stats.resent_bytes += len;
                    }
                }
                // Transient (no subscribed peer yet, queue full): the message is lost and
                // the core's re-sends recover it.
                Err(MeshError::Publish(e)) => {
                    self.stats.publish_failed += 1;
                    tracing::debug!(%e, round = msg.round, iter = msg.iter, "placement publish failed");
                }
                Err(e) => return Err(ShellError::Mesh(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use placement::msg::{Body, Column};

    fn msg() -> Msg {
        Msg {
            round: 3,
            view: 0xdead_beef,
            iter: 7,
            from: 13,
            body: Body::Column(Column(vec![0, 65_535, 4, 12]), 0.25),
            probe: true,
        }
    }

    #[test]
    fn an_oversized_bundle_is_split_into_parts_that_fit() {
        let col = |from| Msg {
            from,
            probe: false,
            ..msg()
        };
        let inner: Vec<Msg> = (0..9).map(col).collect();
        let bundle = Msg {
            body: Body::Relay(inner.clone()),
            ..col(1)
        };
        let whole = encode(&bundle, MAX_MESSAGE_BYTES).unwrap().len();
        assert!(matches!(
            encode_bundle(&bundle, MAX_MESSAGE_BYTES),
            Ok(Encoded::One(_))
        ));
        let max = whole / 3;
        let Ok(Encoded::Split(parts)) = encode_bundle(&bundle, max) else {
            panic!("not split");
        };
        assert!(parts.len() >= 3);
        let mut got = Vec::new();
        for p in &parts {
            assert!(encode(p, max).is_ok());
            assert_eq!((p.round, p.view, p.iter, p.from), (3, 0xdead_beef, 7, 1));
            let Body::Relay(v) = &p.body else { panic!() };
            got.extend(v.iter().cloned());
        }
        assert_eq!(got, inner, "every message once, in order");
        // A single message over the limit stays an error.
        let one = Msg {
            body: Body::Relay(vec![col(0)]),
            ..col(1)
        };
        assert!(encode_bundle(&one, 10).is_err());
        assert!(encode_bundle(&msg(), 10).is_err());
    }

    #[test]
    fn round_trip() {
        let m = msg();
        let b = encode(&m, MAX_MESSAGE_BYTES).unwrap();
        assert_eq!(decode(&b, MAX_MESSAGE_BYTES).unwrap(), m);
    }

    #[test]
    fn bounds_and_garbage_are_typed_errors() {
        let b = encode(&msg(), MAX_MESSAGE_BYTES).unwrap();
        assert!(matches!(
            decode(&b, b.len() - 1),
            Err(WireError::TooLarge { .. })
        ));
        assert!(matches!(
            encode(&msg(), b.len() - 1),
            Err(WireError::TooLarge { .. })
        ));
        let mut trailing = b.clone();
        trailing.push(0);
        assert!(matches!(
            decode(&trailing, MAX_MESSAGE_BYTES),
            Err(WireError::Malformed(_))
        ));
        for cut in 0..b.len() {
            assert!(
                decode(&b[..cut], MAX_MESSAGE_BYTES).is_err(),
                "truncated at {cut}"
            );
        }
        // Arbitrary bytes never panic, and a huge declared length allocates nothing
        // close to it.
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..2000 {
            let v: Vec<u8> = (0..len % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode(&v, MAX_MESSAGE_BYTES);
        }
        // {"b": {"C": [[2^64 - 1 entries follow…
        let mut huge = vec![0xa1, 0x61, b'b', 0xa1, 0x61, b'C', 0x82, 0x9b];
        huge.extend([0xff; 8]);
        huge.extend([0x01; 64]);
        assert!(matches!(
            decode(&huge, MAX_MESSAGE_BYTES),
            Err(WireError::Malformed(_))
        ));
    }
}
