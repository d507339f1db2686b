//! The network shell: one tokio task owns the libp2p `Swarm`; everything else talks to it
//! through a cloneable [`MeshHandle`] (commands in over a bounded channel, answers through
//! oneshots) and reads [`MeshEvent`]s from a bounded channel.
//!
//! Policies live in the sans-IO parts ([`crate::sched`], [`crate::link`], [`crate::wire`]);
//! this module moves messages between them and libp2p. Blocking work (reading chunks from
//! the provider, and zstd-compressing them when a fetch asked for it, see [`FetchOptions`])
//! runs on tokio's blocking pool, decompression and hashing of received chunks on
//! connection tasks, so the swarm task stays responsive.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use libp2p::gossipsub::{self, MessageAcceptance, MessageAuthenticity, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::request_response::{
    self, InboundFailure, Message, OutboundFailure, OutboundRequestId, ProtocolSupport,
    ResponseChannel,
};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{allow_block_list, identify, mdns, ping, Multiaddr, PeerId, Swarm};
use rand::seq::IteratorRandom;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{debug, info, trace, warn};

use crate::config::{Identity, MeshConfig};
use crate::link::{LinkReport, LinkStats};
use crate::provider::{ChunkProvider, UploadLimiter};
use crate::sched::{Action, FetchScheduler, ItemOutcome, Outcome, Token};
use crate::types::{ChunkId, MeshError, Topic};
use crate::wire::{
    clamp_zstd_level, compress_items, ChunkCodec, ChunkRequest, ChunkResponse, CtlCodec,
    CtlRequest, CtlResponse, GetItem, ItemBody, PeerRecord, WireLimits, CHUNK_PROTOCOL,
    CTL_PROTOCOL, MAX_ADDR_LEN, MAX_PEX_ADDRS, MAX_PEX_PEERS,
};

/// Concurrent chunk-serving jobs (provider reads) per node.
const SERVE_CONCURRENCY: usize = 32;
/// Fetch batches buffered for a slow consumer before the fetch stops asking for more.
const FETCH_OUTBOX: usize = 2;
/// Peers remembered from discovery and peer exchange.
const MAX_KNOWN_PEERS: usize = 1024;
const TICK: Duration = Duration::from_millis(250);

#[derive(NetworkBehaviour)]
struct Behaviour {
    block: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    gossip: gossipsub::Behaviour,
    chunks: request_response::Behaviour<ChunkCodec>,
    ctl: request_response::Behaviour<CtlCodec>,
    direct: crate::direct::Behaviour,
}

/// Something that happened on the mesh.
#[derive(Debug)]
pub enum MeshEvent {
    /// The node listens on a new address.
    Listening {
        addr: Multiaddr,
    },
    /// First connection to a peer established.
    PeerConnected {
        peer: PeerId,
        addr: Multiaddr,
    },
    /// Last connection to a peer closed.
    PeerDisconnected {
        peer: PeerId,
    },
    /// A peer subscribed to one of our gossip topics.
    Subscribed {
        peer: PeerId,
        topic: Topic,
    },
    Unsubscribed {
        peer: PeerId,
        topic: Topic,
    },
    /// A gossip message. `source` is its (signature-verified) author, `via` the neighbour
    /// that forwarded it.
    Gossip {
        topic: Topic,
        source: PeerId,
        via: PeerId,
        data: Vec<u8>,
    },
    /// A direct message (see [`MeshHandle::send_direct`]); `peer` is its author, the
    /// authenticated remote of the connection it came on.
    Direct {
        peer: PeerId,
        topic: Topic,
        data: Vec<u8>,
    },
    /// A peer sent an application control request; answer it with `reply`.
    ControlRequest {
        peer: PeerId,
        data: Vec<u8>,
        reply: ControlReply,
    },
    /// New link measurements for a peer.
    Link {
        peer: PeerId,
        report: LinkReport,
    },
    /// A peer misbehaved (corrupt chunk, malformed message). `banned` once it crossed the
    /// configured number of offences: it is disconnected and refused from then on.
    PeerPenalised {
        peer: PeerId,
        offences: u64,
        banned: bool,
        reason: String,
    },
}

/// The answer slot of a [`MeshEvent::ControlRequest`]. Dropping it without answering
/// sends a refusal.
#[derive(Debug)]
pub struct ControlReply(oneshot::Sender<Vec<u8>>);

impl ControlReply {
    pub fn send(self, data: Vec<u8>) {
        let _ = self.0.send(data);
    }
}

/// Where a fetch looks for chunks.
#[derive(Clone, Debug)]
pub enum Sources {
    /// Every connected peer, and peers that connect while the fetch runs.
    Connected,
    /// These peers only, asked with HAVE first.
    Peers(Vec<PeerId>),
    /// These peers only, assumed to hold every chunk (no HAVE round trip).
    HoldingAll(Vec<PeerId>),
}

/// How a fetch asks its sources to send chunks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchOptions {
    /// `Some(level)`: sources send each chunk as a zstd frame at `level` (clamped to
    /// 1..=19, see [`crate::wire::clamp_zstd_level`]) when that is smaller than the chunk.
    /// Costs the source CPU (much of it at high levels, on its blocking pool) to save
    /// bandwidth: worth it on slow links, not on loopback. `None` (the default): raw chunks.
    pub zstd_level: Option<i32>,
}

/// Output of a running fetch.
#[derive(Debug)]
pub enum FetchItem {
    /// Verified chunks, first copies only.
    Chunks {
        from: PeerId,
        chunks: Vec<(ChunkId, Bytes)>,
    },
    /// The fetch ended; `missing` lists chunks no source delivered.
    Done(Outcome<PeerId>),
}

/// A running fetch. Chunks arrive in batches; dropping it cancels the fetch.
pub struct Fetch {
    rx: mpsc::Receiver<FetchItem>,
}

impl Fetch {
    pub async fn next(&mut self) -> Option<FetchItem> {
        self.rx.recv().await
    }

    /// Waits for the whole fetch and returns every chunk with the outcome.
    pub async fn collect(
        mut self,
    ) -> Result<(HashMap<ChunkId, Bytes>, Outcome<PeerId>), MeshError> {
        let mut out = HashMap::new();
        while let Some(item) = self.rx.recv().await {
            match item {
                FetchItem::Chunks { chunks, .. } => out.extend(chunks),
                FetchItem::Done(o) => return Ok((out, o)),
            }
        }
        Err(MeshError::Stopped)
    }
}

type Reply<T> = oneshot::Sender<Result<T, MeshError>>;

/// Where the answer to [`MeshHandle::control_request_now`] arrives.
pub type ControlAnswer = oneshot::Receiver<Result<Vec<u8>, MeshError>>;

enum Command {
    Dial(Multiaddr, Reply<PeerId>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Peers(oneshot::Sender<Vec<PeerId>>),
    TopicPeers(Topic, oneshot::Sender<Vec<PeerId>>),
    Publish(Topic, Vec<u8>, Reply<()>),
    /// Recipients, topic, payload, and whether peers without a connection get it by
    /// gossip instead.
    Direct(Vec<PeerId>, Topic, Vec<u8>, bool),
    Have(PeerId, Vec<ChunkId>, Reply<Vec<Option<u32>>>),
    Fetch(Vec<ChunkId>, Sources, FetchOptions, mpsc::Sender<FetchItem>),
    Control(PeerId, Vec<u8>, Reply<Vec<u8>>),
    LinkStats(oneshot::Sender<Vec<(PeerId, LinkReport)>>),
    Ban(PeerId),
    SetBlocked(Vec<PeerId>, oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// A cloneable handle to a running mesh node.
#[derive(Clone)]
pub struct MeshHandle {
    tx: mpsc::Sender<Command>,
    peer_id: PeerId,
    limits: WireLimits,
    max_gossip: usize,
}

impl MeshHandle {
    pub fn local_peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn call<T>(&self, f: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(f(tx)).await.map_err(|_| MeshError::Stopped)?;
        rx.await.map_err(|_| MeshError::Stopped)
    }

    /// Dials an address; resolves when connected (with the peer's id) or when it failed.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, MeshError> {
        self.call(|r| Command::Dial(addr, r)).await?
    }

    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, MeshError> {
        self.call(Command::ListenAddrs).await
    }

    /// Peers with at least one open connection.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, MeshError> {
        self.call(Command::Peers).await
    }

    /// Peers known to be subscribed to `topic`.
    pub async fn topic_peers(&self, topic: Topic) -> Result<Vec<PeerId>, MeshError> {
        self.call(|r| Command::TopicPeers(topic, r)).await
    }

    /// Publishes on a gossip topic. Fails if the message is too large or no peer is
    /// subscribed yet.
    pub async fn publish(&self, topic: Topic, data: Vec<u8>) -> Result<(), MeshError> {
        if data.len() > self.max_gossip {
            return Err(MeshError::TooLarge {
                size: data.len(),
                max: self.max_gossip,
            });
        }
        self.call(|r| Command::Publish(topic, data, r)).await?
    }

    /// Sends `data` on `topic` straight to each of `peers` (see [`crate::direct`]): no
    /// signature, no forwarding; the receiver learns the author from the connection.
    /// Best effort: peers without a connection, or blocked, are skipped, and frames are
    /// lost if a stream fails — the caller recovers losses. Returns once the mesh task
    /// has the message (it does not wait for the sends).
    pub async fn send_direct(
        &self,
        peers: Vec<PeerId>,
        topic: Topic,
        data: Vec<u8>,
    ) -> Result<(), MeshError> {
        self.direct(peers, topic, data, false).await
    }

    /// Like [`Self::send_direct`], but if any of `peers` has no connection (a swarm
    /// larger than the connection target, a link being re-established), the message is
    /// also published once on `topic`'s gossip (signed, reaching everyone subscribed):
    /// receivers must tolerate duplicates.
    pub async fn send_direct_else_gossip(
        &self,
        peers: Vec<PeerId>,
        topic: Topic,
        data: Vec<u8>,
    ) -> Result<(), MeshError> {
        self.direct(peers, topic, data, true).await
    }

    async fn direct(
        &self,
        peers: Vec<PeerId>,
        topic: Topic,
        data: Vec<u8>,
        gossip: bool,
    ) -> Result<(), MeshError> {
        if data.len() > self.max_gossip {
            return Err(MeshError::TooLarge {
                size: data.len(),
                max: self.max_gossip,
            });
        }
        self.tx
            .send(Command::Direct(peers, topic, data, gossip))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Asks one peer which of `ids` it holds; returns each chunk's size or `None`.
    pub async fn have(
        &self,
        peer: PeerId,
        ids: Vec<ChunkId>,
    ) -> Result<Vec<Option<u32>>, MeshError> {
        if ids.len() > self.limits.max_ids_per_request {
            return Err(MeshError::TooLarge {
                size: ids.len(),
                max: self.limits.max_ids_per_request,
            });
        }
        self.call(|r| Command::Have(peer, ids, r)).await?
    }

    /// Starts fetching `ids` from `sources`, uncompressed; see [`Fetch`].
    pub async fn fetch(&self, ids: Vec<ChunkId>, sources: Sources) -> Result<Fetch, MeshError> {
        self.fetch_with(ids, sources, FetchOptions::default()).await
    }

    /// Starts fetching `ids` from `sources` with `options` (compression); see [`Fetch`].
    /// Chunks are delivered uncompressed and verified either way; the outcome's
    /// `wire_bytes` tells what they cost on the wire.
    pub async fn fetch_with(
        &self,
        ids: Vec<ChunkId>,
        sources: Sources,
        options: FetchOptions,
    ) -> Result<Fetch, MeshError> {
        let (tx, rx) = mpsc::channel(4);
        self.tx
            .send(Command::Fetch(ids, sources, options, tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        Ok(Fetch { rx })
    }

    /// Sends an application control request and waits for the peer's answer.
    pub async fn control_request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, MeshError> {
        if data.len() > self.limits.max_control_bytes {
            return Err(MeshError::TooLarge {
                size: data.len(),
                max: self.limits.max_control_bytes,
            });
        }
        self.call(|r| Command::Control(peer, data, r)).await?
    }

    /// [`Self::control_request`] without waiting: the request is queued for the
    /// swarm before this returns (no task switch between the caller and the wire,
    /// which matters for a message inside a migration's downtime); the answer comes
    /// on the returned receiver. Fails at once if the mesh's command queue is full,
    /// handing `data` back (for [`Self::control_request`], which waits for room).
    pub fn control_request_now(
        &self,
        peer: PeerId,
        data: Vec<u8>,
    ) -> Result<ControlAnswer, (MeshError, Vec<u8>)> {
        if data.len() > self.limits.max_control_bytes {
            let size = data.len();
            let max = self.limits.max_control_bytes;
            return Err((MeshError::TooLarge { size, max }, data));
        }
        let (tx, rx) = oneshot::channel();
        match self.tx.try_send(Command::Control(peer, data, tx)) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(Command::Control(_, data, _))) => Err((
                MeshError::Request("the mesh's command queue is full".into()),
                data,
            )),
            Err(mpsc::error::TrySendError::Closed(Command::Control(_, data, _))) => {
                Err((MeshError::Stopped, data))
            }
            // try_send hands back the command it was given.
            Err(_) => Err((MeshError::Stopped, Vec::new())),
        }
    }

    /// The current link measurements of every peer seen.
    pub async fn link_stats(&self) -> Result<Vec<(PeerId, LinkReport)>, MeshError> {
        self.call(Command::LinkStats).await
    }

    /// Bans a peer: disconnects it and refuses it from now on.
    pub async fn ban(&self, peer: PeerId) -> Result<(), MeshError> {
        self.tx
            .send(Command::Ban(peer))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Cuts this node off from `peers`, replacing the previous set (an empty list
    /// lifts every block): their connections are closed, dials to and from them are
    /// refused, and control, HAVE and fetch requests for them fail at once. Gossip a
    /// blocked peer wrote can still arrive relayed by others. Unlike [`Self::ban`]
    /// this is reversible and carries no blame (a chaos run's partition, an operator
    /// cutting a link); peers it unblocks are dialed again when their addresses are
    /// known, and [`Self::dial`] works on them at once. Resolves once the new set is
    /// in force.
    pub async fn set_blocked(&self, peers: Vec<PeerId>) -> Result<(), MeshError> {
        self.call(|r| Command::SetBlocked(peers, r)).await
    }

    /// Stops the node and closes its connections.
    pub async fn shutdown(&self) -> Result<(), MeshError> {
        self.call(Command::Shutdown).await
    }
}

/// Starts a mesh node on the current tokio runtime. Returns once it listens on every
/// configured address.
pub async fn start(
    identity: Identity,
    config: MeshConfig,
    provider: Arc<dyn ChunkProvider>,
) -> Result<(MeshHandle, mpsc::Receiver<MeshEvent>), MeshError> {
    let behaviour = build_behaviour(&identity, &config)?;
    let mut swarm = crate::transport::build_swarm(
        &identity,
        Some(&config.swarm_key),
        config.idle_connection_timeout,
        behaviour,
    )?;
    for t in Topic::ALL {
        swarm
            .behaviour_mut()
            .gossip
            .subscribe(&t.ident())
            .map_err(|e| MeshError::Config(format!("subscribe: {e}")))?;
    }
    let mut listen_addrs = Vec::new();
    let mut waiting = HashSet::new();
    for a in &config.listen {
        let id = swarm
            .listen_on(a.clone())
            .map_err(|e| MeshError::Transport(format!("listen on {a}: {e}")))?;
        waiting.insert(id);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !waiting.is_empty() {
        let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| MeshError::Transport("listening timed out".into()))?;
        match ev {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                waiting.remove(&listener_id);
                listen_addrs.push(address);
            }
            SwarmEvent::ListenerClosed { reason, .. } => {
                return Err(MeshError::Transport(format!("listener closed: {reason:?}")))
            }
            SwarmEvent::ListenerError { error, .. } => {
                return Err(MeshError::Transport(format!("listener error: {error}")))
            }
            other => trace!(?other, "event before listening"),
        }
    }
    let peer_id = identity.peer_id();
    let cap = config.channel_capacity.max(1);
    let (cmd_tx, cmd_rx) = mpsc::channel(cap);
    let (ev_tx, ev_rx) = mpsc::channel(cap);
    let (served_tx, served_rx) = mpsc::unbounded_channel();
    let handle = MeshHandle {
        tx: cmd_tx,
        peer_id,
        limits: config.limits.clone(),
        max_gossip: config.max_gossip_bytes,
    };
    let limiter = config
        .upload_limit_bps
        .map(|b| Arc::new(UploadLimiter::new(b)));
    let mut node = Node {
        keypair: identity.0.clone(),
        gossip_seq: gossip_seq_start(),
        opener: crate::gossip::Opener::default(),
        swarm,
        cfg: config,
        provider,
        limiter,
        serve_slots: Arc::new(Semaphore::new(SERVE_CONCURRENCY)),
        events: ev_tx,
        dropped_events: 0,
        served_tx,
        listen_addrs,
        pending_dials: HashMap::new(),
        chunk_reqs: HashMap::new(),
        peer_outbound: HashMap::new(),
        fetches: HashMap::new(),
        next_fetch: 1,
        reservations: FuturesUnordered::new(),
        ctl_out: HashMap::new(),
        ctl_replies: FuturesUnordered::new(),
        pex_out: HashMap::new(),
        pex_asked: HashSet::new(),
        next_pex: Instant::now(),
        remote_addrs: HashMap::new(),
        links: HashMap::new(),
        offences: HashMap::new(),
        banned: HashSet::new(),
        blocked: HashSet::new(),
        known: HashMap::new(),
        identified: HashMap::new(),
        dialing: HashMap::new(),
        dial_backoff: HashMap::new(),
        last_bootstrap: None,
    };
    node.bootstrap();
    tokio::spawn(node.run(cmd_rx, served_rx));
    Ok((handle, ev_rx))
}

fn build_behaviour(identity: &Identity, cfg: &MeshConfig) -> Result<Behaviour, MeshError> {
    let key = &identity.0;
    let peer_id = identity.peer_id();
    let (n, lo, hi) = cfg.gossip_mesh;
    let gossip_cfg = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(cfg.gossip_heartbeat)
        .heartbeat_initial_delay(Duration::from_millis(10))
        .mesh_n(n)
        .mesh_n_low(lo)
        .mesh_n_high(hi)
        .mesh_outbound_min((n / 2).min(lo).min(2))
        .gossip_lazy(n.max(1))
        .flood_publish(cfg.gossip_flood_publish)
        .max_transmit_size(cfg.max_gossip_bytes + 4096)
        // Signed envelopes are checked by the node once per message (see `gossip`);
        // gossipsub itself runs anonymous and forwards only what the node accepted.
        .validation_mode(ValidationMode::Anonymous)
        .validate_messages()
        .message_id_fn(|m| gossipsub::MessageId::new(&blake3::hash(&m.data).as_bytes()[..20]))
        .build()
        .map_err(|e| MeshError::Config(format!("gossipsub: {e}")))?;
    let gossip = gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, gossip_cfg)
        .map_err(|e| MeshError::Config(format!("gossipsub: {e}")))?;
    let rr_cfg = request_response::Config::default()
        .with_request_timeout(cfg.request_timeout)
        .with_max_concurrent_streams(cfg.max_streams_per_connection);
    let chunks = request_response::Behaviour::with_codec(
        ChunkCodec {
            limits: cfg.limits.clone(),
        },
        [(CHUNK_PROTOCOL, ProtocolSupport::Full)],
        rr_cfg.clone(),
    );
    let ctl = request_response::Behaviour::with_codec(
        CtlCodec {
            limits: cfg.limits.clone(),
        },
        [(CTL_PROTOCOL, ProtocolSupport::Full)],
        rr_cfg,
    );
    let mdns = if cfg.mdns {
        Some(
            mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                .map_err(|e| MeshError::Transport(format!("mdns: {e}")))?,
        )
    } else {
        None
    };
    Ok(Behaviour {
        block: Default::default(),
        identify: identify::Behaviour::new(
            identify::Config::new("/roam/1.0.0".into(), key.public())
                .with_agent_version(format!("roam-mesh/{}", env!("CARGO_PKG_VERSION"))),
        ),
        ping: ping::Behaviour::new(ping::Config::new().with_interval(cfg.ping_interval)),
        mdns: mdns.into(),
        gossip,
        chunks,
        ctl,
        direct: crate::direct::Behaviour::new(crate::direct::Config {
            max_payload: cfg.max_gossip_bytes,
            ..Default::default()
        }),
    })
}

enum ChunkReqKind {
    /// Part of fetch `fetch`, scheduler token `token`.
    Fetch { fetch: u64, token: Token, get: bool },
    /// A standalone HAVE asked through the handle.
    Have(Reply<Vec<Option<u32>>>),
}

struct ChunkReq {
    peer: PeerId,
    kind: ChunkReqKind,
}

struct FetchTask {
    sched: FetchScheduler<PeerId>,
    options: FetchOptions,
    tx: mpsc::Sender<FetchItem>,
    outbox: VecDeque<FetchItem>,
    reserving: bool,
    open_sources: bool,
    finished: bool,
}

type Reservation = BoxFuture<'static, (u64, Option<mpsc::OwnedPermit<FetchItem>>)>;
type CtlReplyFut = BoxFuture<'static, (ResponseChannel<CtlResponse>, Option<Vec<u8>>)>;

struct Node {
    keypair: Keypair,
    gossip_seq: u64,
    opener: crate::gossip::Opener,
    swarm: Swarm<Behaviour>,
    cfg: MeshConfig,
    provider: Arc<dyn ChunkProvider>,
    limiter: Option<Arc<UploadLimiter>>,
    serve_slots: Arc<Semaphore>,
    events: mpsc::Sender<MeshEvent>,
    dropped_events: u64,
    served_tx: mpsc::UnboundedSender<(ResponseChannel<ChunkResponse>, ChunkResponse)>,
    listen_addrs: Vec<Multiaddr>,
    pending_dials: HashMap<ConnectionId, Reply<PeerId>>,
    chunk_reqs: HashMap<OutboundRequestId, ChunkReq>,
    peer_outbound: HashMap<PeerId, usize>,
    fetches: HashMap<u64, FetchTask>,
    next_fetch: u64,
    reservations: FuturesUnordered<Reservation>,
    ctl_out: HashMap<OutboundRequestId, Reply<Vec<u8>>>,
    ctl_replies: FuturesUnordered<CtlReplyFut>,
    pex_out: HashMap<OutboundRequestId, PeerId>,
    pex_asked: HashSet<PeerId>,
    next_pex: Instant,
    /// Remote address of the first connection to each connected peer.
    remote_addrs: HashMap<PeerId, Multiaddr>,
    links: HashMap<PeerId, LinkStats>,
    offences: HashMap<PeerId, u64>,
    banned: HashSet<PeerId>,
    /// Peers cut off by [`MeshHandle::set_blocked`] (reversible, unlike `banned`).
    blocked: HashSet<PeerId>,
    /// Addresses of peers learnt from mDNS and peer exchange.
    known: HashMap<PeerId, Vec<Multiaddr>>,
    /// Listen addresses of connected peers, from identify.
    identified: HashMap<PeerId, Vec<Multiaddr>>,
    dialing: HashMap<PeerId, Instant>,
    dial_backoff: HashMap<PeerId, Instant>,
    last_bootstrap: Option<Instant>,
}

impl Node {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Command>,
        mut served: mpsc::UnboundedReceiver<(ResponseChannel<ChunkResponse>, ChunkResponse)>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                cmd = cmds.recv() => match cmd {
                    Some(Command::Shutdown(done)) => {
                        let _ = done.send(());
                        break;
                    }
                    Some(c) => self.on_command(c),
                    None => break,
                },
                Some((ch, resp)) = served.recv() => {
                    if self.swarm.behaviour_mut().chunks.send_response(ch, resp).is_err() {
                        debug!("chunk response dropped: requester gone");
                    }
                }
                Some((fid, permit)) = self.reservations.next(), if !self.reservations.is_empty() => {
                    self.on_reserved(fid, permit);
                }
                Some((ch, data)) = self.ctl_replies.next(), if !self.ctl_replies.is_empty() => {
                    self.on_ctl_reply(ch, data);
                }
                _ = tick.tick() => self.on_tick(),
            }
            self.drive_fetches();
        }
        info!(peer = %self.swarm.local_peer_id(), "mesh node stopped");
    }

    fn emit(&mut self, ev: MeshEvent) {
        match self.events.try_send(ev) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(ev)) => {
                self.dropped_events += 1;
                if self.dropped_events.is_power_of_two() {
                    warn!(
                        dropped = self.dropped_events,
                        ?ev,
                        "event channel full, dropping events"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn connected(&self) -> usize {
        self.swarm.connected_peers().count()
    }

    // ---- discovery -------------------------------------------------------------------

    fn bootstrap(&mut self) {
        self.last_bootstrap = Some(Instant::now());
        for a in self.cfg.bootstrap.clone() {
            let opts = DialOpts::unknown_peer_id().address(a.clone()).build();
            if let Err(e) = self.swarm.dial(opts) {
                warn!(%a, %e, "bootstrap dial failed");
            }
        }
    }

    fn remember(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == *self.swarm.local_peer_id() || self.banned.contains(&peer) {
            return;
        }
        if !self.known.contains_key(&peer) && self.known.len() >= MAX_KNOWN_PEERS {
            return;
        }
        let entry = self.known.entry(peer).or_default();
        for a in addrs {
            if !entry.contains(&a) && entry.len() < MAX_PEX_ADDRS {
                entry.push(a);
            }
        }
    }

    /// Dials remembered peers while below the target number of connections.
    fn dial_more(&mut self) {
        let now = Instant::now();
        self.dialing
            .retain(|_, t| now.duration_since(*t) < Duration::from_secs(20));
        self.dial_backoff.retain(|_, t| *t > now);
        let mut budget = self
            .cfg
            .target_peers
            .saturating_sub(self.connected() + self.dialing.len());
        if budget == 0 {
            return;
        }
        let candidates: Vec<(PeerId, Vec<Multiaddr>)> = self
            .known
            .iter()
            .filter(|(p, a)| {
                !a.is_empty()
                    && !self.swarm.is_connected(p)
                    && !self.dialing.contains_key(p)
                    && !self.dial_backoff.contains_key(p)
                    && !self.banned.contains(p)
                    && !self.blocked.contains(p)
            })
            .map(|(p, a)| (*p, a.clone()))
            .choose_multiple(&mut rand::rng(), budget);
        for (peer, addrs) in candidates {
            if budget == 0 {
                break;
            }
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    self.dialing.insert(peer, now);
                    budget -= 1;
                }
                Err(e) => debug!(%peer, %e, "dial not started"),
            }
        }
    }

    fn ask_peers(&mut self, peer: PeerId) {
        if self.pex_out.values().any(|p| *p == peer) {
            return;
        }
        let id = self
            .swarm
            .behaviour_mut()
            .ctl
            .send_request(&peer, CtlRequest::Peers);
        self.pex_out.insert(id, peer);
    }

    fn pex_records(&self, requester: &PeerId) -> Vec<PeerRecord> {
        // Loopback addresses mean something only to peers on this host.
        let local_requester = self.remote_addrs.get(requester).is_some_and(is_loopback);
        self.identified
            .iter()
            .filter(|(p, a)| *p != requester && !a.is_empty() && self.swarm.is_connected(p))
            .choose_multiple(&mut rand::rng(), MAX_PEX_PEERS)
            .into_iter()
            .map(|(p, addrs)| PeerRecord {
                peer: p.to_bytes(),
                addrs: addrs
                    .iter()
                    .filter(|a| local_requester || !is_loopback(a))
                    .map(|a| a.to_vec())
                    .filter(|a| a.len() <= MAX_ADDR_LEN)
                    .take(MAX_PEX_ADDRS)
                    .map(serde_bytes::ByteBuf::from)
                    .collect(),
            })
            .collect()
    }

    fn on_pex_records(&mut self, records: Vec<PeerRecord>) {
        let before = self.known.len();
        for r in records {
            let Ok(peer) = PeerId::from_bytes(&r.peer) else {
                continue;
            };
            let addrs: Vec<Multiaddr> = r
                .addrs
                .into_iter()
                .filter_map(|a| Multiaddr::try_from(a.into_vec()).ok())
                .collect();
            self.remember(peer, addrs);
        }
        // Ask again soon while peer exchange keeps teaching us new peers, rarely otherwise.
        let wait = if self.known.len() > before {
            TICK
        } else {
            Duration::from_secs(10)
        };
        self.next_pex = Instant::now() + wait;
        self.dial_more();
    }

    fn on_tick(&mut self) {
        let connected = self.connected();
        if connected == 0
            && !self.cfg.bootstrap.is_empty()
            && self
                .last_bootstrap
                .is_none_or(|t| t.elapsed() > Duration::from_secs(5))
        {
            self.bootstrap();
        }
        if connected > 0
            && connected < self.cfg.target_peers
            && self.pex_out.is_empty()
            && Instant::now() >= self.next_pex
        {
            let peer = self
                .swarm
                .connected_peers()
                .copied()
                .choose(&mut rand::rng());
            if let Some(p) = peer {
                self.ask_peers(p);
            }
        }
        self.dial_more();
        // Fetches whose consumer went away are cancelled.
        let gone: Vec<u64> = self
            .fetches
            .iter()
            .filter(|(_, f)| f.tx.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.fetches.remove(&id);
        }
    }

    // ---- penalties and links ------------------------------------------------------------

    fn link(&mut self, peer: PeerId) -> &mut LinkStats {
        self.links.entry(peer).or_default()
    }

    fn report_link(&mut self, peer: PeerId) {
        let report = self.link(peer).report().clone();
        self.emit(MeshEvent::Link { peer, report });
    }

    fn penalise(&mut self, peer: PeerId, reason: &str) {
        let n = {
            let o = self.offences.entry(peer).or_default();
            *o += 1;
            *o
        };
        self.link(peer).on_offence();
        let banned = n >= self.cfg.ban_after_offences;
        warn!(%peer, offences = n, banned, reason, "peer penalised");
        if banned {
            self.ban(peer);
        }
        self.emit(MeshEvent::PeerPenalised {
            peer,
            offences: n,
            banned,
            reason: reason.to_string(),
        });
    }

    fn ban(&mut self, peer: PeerId) {
        self.banned.insert(peer);
        self.known.remove(&peer);
        let b = self.swarm.behaviour_mut();
        b.block.block_peer(peer);
        b.gossip.blacklist_peer(&peer);
    }

    /// Replaces the set of blocked peers (see [`MeshHandle::set_blocked`]).
    fn set_blocked(&mut self, peers: Vec<PeerId>) {
        let me = *self.swarm.local_peer_id();
        let new: HashSet<PeerId> = peers.into_iter().filter(|p| *p != me).collect();
        let lifted: Vec<PeerId> = self.blocked.difference(&new).copied().collect();
        let added: Vec<PeerId> = new.difference(&self.blocked).copied().collect();
        for p in &lifted {
            // A banned peer stays refused.
            if !self.banned.contains(p) {
                self.swarm.behaviour_mut().block.unblock_peer(*p);
            }
            // Dials refused while it was blocked must not delay the reconnection.
            self.dial_backoff.remove(p);
        }
        for p in &added {
            // Closes its connections; the swarm reports them closed as usual.
            self.swarm.behaviour_mut().block.block_peer(*p);
            self.dialing.remove(p);
        }
        if !lifted.is_empty() || !added.is_empty() {
            info!(
                blocked = new.len(),
                lifted = lifted.len(),
                added = added.len(),
                "block list changed"
            );
        }
        self.blocked = new;
        self.dial_more();
    }

    /// Whether requests to `peer` must fail at once (blocked or banned).
    fn refused(&self, peer: &PeerId) -> bool {
        self.blocked.contains(peer) || self.banned.contains(peer)
    }

    // ---- commands -----------------------------------------------------------------------

    fn publish(&mut self, t: Topic, data: Vec<u8>) -> Result<(), MeshError> {
        self.gossip_seq += 1;
        let env = crate::gossip::seal(&self.keypair, t, self.gossip_seq, data)
            .map_err(|e| MeshError::Publish(e.to_string()))?;
        self.swarm
            .behaviour_mut()
            .gossip
            .publish(t.ident(), env)
            .map(|_| ())
            .map_err(|e| MeshError::Publish(e.to_string()))
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial(addr, reply) => {
                let opts = DialOpts::unknown_peer_id().address(addr).build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.pending_dials.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(MeshError::Dial(e.to_string())));
                    }
                }
            }
            Command::ListenAddrs(r) => {
                let _ = r.send(self.listen_addrs.clone());
            }
            Command::Peers(r) => {
                let _ = r.send(self.swarm.connected_peers().copied().collect());
            }
            Command::TopicPeers(t, r) => {
                let hash = t.ident().hash();
                let peers = self
                    .swarm
                    .behaviour()
                    .gossip
                    .all_peers()
                    .filter(|(_, ts)| ts.contains(&&hash))
                    .map(|(p, _)| *p)
                    .collect();
                let _ = r.send(peers);
            }
            Command::Publish(t, data, r) => {
                let res = self.publish(t, data);
                let _ = r.send(res);
            }
            Command::Direct(peers, topic, data, gossip) => {
                let peers: Vec<PeerId> = peers.into_iter().filter(|p| !self.refused(p)).collect();
                let sent = self
                    .swarm
                    .behaviour_mut()
                    .direct
                    .send_many(&peers, topic, &data);
                if sent < peers.len() {
                    trace!(unsent = peers.len() - sent, %topic, gossip, "direct message: peers not connected");
                    if gossip {
                        self.publish(topic, data).unwrap_or_else(
                            |e| debug!(%e, %topic, "direct message: gossip fallback failed"),
                        );
                    }
                }
            }
            Command::Have(peer, _, r) if self.refused(&peer) => {
                let _ = r.send(Err(MeshError::Request(format!("{peer} is blocked"))));
            }
            Command::Have(peer, ids, r) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .chunks
                    .send_request(&peer, ChunkRequest::Have(ids));
                *self.peer_outbound.entry(peer).or_default() += 1;
                self.chunk_reqs.insert(
                    id,
                    ChunkReq {
                        peer,
                        kind: ChunkReqKind::Have(r),
                    },
                );
            }
            Command::Fetch(ids, sources, options, tx) => {
                self.start_fetch(ids, sources, options, tx)
            }
            Command::Control(peer, _, r) if self.refused(&peer) => {
                let _ = r.send(Err(MeshError::Request(format!("{peer} is blocked"))));
            }
            Command::Control(peer, data, r) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .ctl
                    .send_request(&peer, CtlRequest::App(data));
                self.ctl_out.insert(id, r);
            }
            Command::LinkStats(r) => {
                let _ = r.send(
                    self.links
                        .iter()
                        .map(|(p, l)| (*p, l.report().clone()))
                        .collect(),
                );
            }
            Command::Ban(peer) => self.ban(peer),
            Command::SetBlocked(peers, r) => {
                self.set_blocked(peers);
                let _ = r.send(());
            }
            Command::Shutdown(_) => {}
        }
    }

    // ---- fetches ------------------------------------------------------------------------

    fn start_fetch(
        &mut self,
        ids: Vec<ChunkId>,
        sources: Sources,
        options: FetchOptions,
        tx: mpsc::Sender<FetchItem>,
    ) {
        let mut sched = FetchScheduler::new(ids, self.cfg.fetch.clone());
        let open = matches!(sources, Sources::Connected);
        match sources {
            Sources::Connected => {
                let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                for p in peers {
                    sched.add_peer(p);
                }
            }
            Sources::Peers(ps) => {
                for p in ps.into_iter().filter(|p| !self.refused(p)) {
                    sched.add_peer(p);
                }
            }
            Sources::HoldingAll(ps) => {
                for p in ps.into_iter().filter(|p| !self.refused(p)) {
                    sched.add_peer_holding_all(p);
                }
            }
        }
        let id = self.next_fetch;
        self.next_fetch += 1;
        debug!(
            fetch = id,
            chunks = sched.total(),
            ?options,
            "fetch started"
        );
        self.fetches.insert(
            id,
            FetchTask {
                sched,
                options,
                tx,
                outbox: VecDeque::new(),
                reserving: false,
                open_sources: open,
                finished: false,
            },
        );
    }

    fn drive_fetches(&mut self) {
        let ids: Vec<u64> = self.fetches.keys().copied().collect();
        for fid in ids {
            self.drive_fetch(fid);
        }
    }

    fn drive_fetch(&mut self, fid: u64) {
        let max_per_peer = self.cfg.max_requests_per_peer;
        loop {
            let Some(f) = self.fetches.get_mut(&fid) else {
                return;
            };
            if f.finished || f.outbox.len() >= FETCH_OUTBOX {
                break;
            }
            let outbound = &self.peer_outbound;
            let Some(action) = f
                .sched
                .poll_action(|p| outbound.get(p).copied().unwrap_or(0) < max_per_peer)
            else {
                break;
            };
            let zstd_level = f.options.zstd_level.map(clamp_zstd_level);
            let (peer, token, req, get) = match action {
                Action::Have { token, peer, ids } => (peer, token, ChunkRequest::Have(ids), false),
                Action::Get { token, peer, ids } => {
                    (peer, token, ChunkRequest::Get { ids, zstd_level }, true)
                }
            };
            let id = self.swarm.behaviour_mut().chunks.send_request(&peer, req);
            *self.peer_outbound.entry(peer).or_default() += 1;
            if get {
                self.link(peer).on_request_sent(Instant::now());
            }
            self.chunk_reqs.insert(
                id,
                ChunkReq {
                    peer,
                    kind: ChunkReqKind::Fetch {
                        fetch: fid,
                        token,
                        get,
                    },
                },
            );
        }
        let Some(f) = self.fetches.get_mut(&fid) else {
            return;
        };
        if !f.finished && f.sched.is_finished() {
            f.finished = true;
            let outcome = f.sched.outcome();
            debug!(
                fetch = fid,
                fetched = outcome.fetched,
                missing = outcome.missing.len(),
                wire_bytes = outcome.wire_bytes,
                "fetch done"
            );
            self.deliver(fid, FetchItem::Done(outcome));
        }
        if let Some(f) = self.fetches.get(&fid) {
            if f.finished && f.outbox.is_empty() && !f.reserving {
                self.fetches.remove(&fid);
            }
        }
    }

    /// Hands an item to the fetch's consumer, buffering it while the consumer is behind.
    fn deliver(&mut self, fid: u64, item: FetchItem) {
        let Some(f) = self.fetches.get_mut(&fid) else {
            return;
        };
        if f.outbox.is_empty() && !f.reserving {
            match f.tx.try_send(item) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.fetches.remove(&fid);
                    return;
                }
                Err(mpsc::error::TrySendError::Full(item)) => f.outbox.push_back(item),
            }
        } else {
            f.outbox.push_back(item);
        }
        if !f.reserving {
            f.reserving = true;
            let tx = f.tx.clone();
            self.reservations
                .push(async move { (fid, tx.reserve_owned().await.ok()) }.boxed());
        }
    }

    fn on_reserved(&mut self, fid: u64, permit: Option<mpsc::OwnedPermit<FetchItem>>) {
        let Some(f) = self.fetches.get_mut(&fid) else {
            return;
        };
        f.reserving = false;
        let Some(permit) = permit else {
            self.fetches.remove(&fid);
            return;
        };
        if let Some(item) = f.outbox.pop_front() {
            permit.send(item);
        }
        if !f.outbox.is_empty() {
            f.reserving = true;
            let tx = f.tx.clone();
            self.reservations
                .push(async move { (fid, tx.reserve_owned().await.ok()) }.boxed());
        }
    }

    fn on_chunk_response(&mut self, peer: PeerId, rid: OutboundRequestId, resp: ChunkResponse) {
        let Some(req) = self.chunk_reqs.remove(&rid) else {
            return;
        };
        if let Some(n) = self.peer_outbound.get_mut(&req.peer) {
            *n = n.saturating_sub(1);
        }
        match (req.kind, resp) {
            (ChunkReqKind::Have(reply), ChunkResponse::Have(sizes)) => {
                let _ = reply.send(Ok(sizes));
            }
            (ChunkReqKind::Have(reply), ChunkResponse::Refused(r)) => {
                let _ = reply.send(Err(MeshError::Request(r)));
            }
            (ChunkReqKind::Have(reply), ChunkResponse::Get(_)) => {
                let _ = reply.send(Err(MeshError::BadResponse("GET answer to HAVE".into())));
                self.penalise(peer, "GET answer to a HAVE request");
            }
            (ChunkReqKind::Fetch { fetch, token, get }, resp) => {
                self.on_fetch_response(peer, fetch, token, get, resp)
            }
        }
    }

    fn on_fetch_response(
        &mut self,
        peer: PeerId,
        fid: u64,
        token: Token,
        get: bool,
        resp: ChunkResponse,
    ) {
        let now = Instant::now();
        match (get, resp) {
            (false, ChunkResponse::Have(sizes)) => {
                let ok = self
                    .fetches
                    .get_mut(&fid)
                    .is_none_or(|f| f.sched.on_have_response(token, &sizes));
                if !ok {
                    self.penalise(peer, "HAVE answer does not match the request");
                }
            }
            (true, ChunkResponse::Get(items)) => {
                // Link measurements count bytes as they travelled (compressed or not).
                let mut bytes = 0u64;
                let mut data: HashMap<ChunkId, Bytes> = HashMap::with_capacity(items.len());
                let mut outcomes = Vec::with_capacity(items.len());
                let mut undecodable = None;
                for GetItem { id, body } in items {
                    let wire_len = body.wire_len() as u64;
                    bytes += wire_len;
                    let o = match body {
                        ItemBody::Data {
                            data: d,
                            valid: true,
                            ..
                        } => {
                            let len = d.len() as u64;
                            data.insert(id, d);
                            ItemOutcome::Delivered { len, wire_len }
                        }
                        ItemBody::Data { valid: false, .. } => ItemOutcome::Corrupt { wire_len },
                        ItemBody::Undecodable { error, .. } => {
                            undecodable.get_or_insert(error);
                            ItemOutcome::Corrupt { wire_len }
                        }
                        // The codec never yields a still-compressed item; be safe anyway.
                        ItemBody::Zstd { .. } => ItemOutcome::Corrupt { wire_len },
                        ItemBody::Missing => ItemOutcome::Missing,
                        ItemBody::Deferred => ItemOutcome::Deferred,
                    };
                    outcomes.push((id, o));
                }
                if self.link(peer).on_response(bytes, now) {
                    self.report_link(peer);
                }
                let corrupt = outcomes
                    .iter()
                    .filter(|(_, o)| matches!(o, ItemOutcome::Corrupt { .. }))
                    .count();
                if corrupt > 0 {
                    // Penalised even when the fetch has already finished elsewhere.
                    let reason = match undecodable {
                        Some(e) => format!("{corrupt} corrupt chunk(s), first undecodable: {e}"),
                        None => format!("{corrupt} corrupt chunk(s)"),
                    };
                    self.penalise(peer, &reason);
                }
                let Some(f) = self.fetches.get_mut(&fid) else {
                    return;
                };
                let report = f.sched.on_get_response(token, outcomes);
                if !report.accepted.is_empty() {
                    let chunks: Vec<(ChunkId, Bytes)> = report
                        .accepted
                        .iter()
                        .filter_map(|id| data.remove(id).map(|d| (*id, d)))
                        .collect();
                    self.deliver(fid, FetchItem::Chunks { from: peer, chunks });
                }
                if report.corrupt == 0 && report.unexpected > 0 {
                    self.penalise(peer, "chunks that were not asked for");
                }
            }
            (_, ChunkResponse::Refused(r)) => {
                debug!(%peer, reason = %r, "chunk request refused");
                if get {
                    self.link(peer).on_request_ended();
                }
                if let Some(f) = self.fetches.get_mut(&fid) {
                    f.sched.on_failure(token);
                }
            }
            (_, _) => {
                if get {
                    self.link(peer).on_request_ended();
                }
                if let Some(f) = self.fetches.get_mut(&fid) {
                    f.sched.on_failure(token);
                }
                self.penalise(peer, "answer of the wrong kind");
            }
        }
    }

    fn on_chunk_failure(&mut self, peer: PeerId, rid: OutboundRequestId, error: OutboundFailure) {
        let Some(req) = self.chunk_reqs.remove(&rid) else {
            return;
        };
        if let Some(n) = self.peer_outbound.get_mut(&req.peer) {
            *n = n.saturating_sub(1);
        }
        debug!(%peer, %error, "chunk request failed");
        let malformed =
            matches!(&error, OutboundFailure::Io(e) if e.kind() == std::io::ErrorKind::InvalidData);
        let link = self.link(peer);
        link.on_failure();
        match req.kind {
            ChunkReqKind::Have(reply) => {
                let _ = reply.send(Err(MeshError::Request(error.to_string())));
            }
            ChunkReqKind::Fetch { fetch, token, get } => {
                if get {
                    self.link(peer).on_request_ended();
                }
                if let Some(f) = self.fetches.get_mut(&fetch) {
                    f.sched.on_failure(token);
                }
            }
        }
        if malformed {
            self.penalise(peer, "malformed chunk response");
        }
        self.report_link(peer);
    }

    // ---- serving --------------------------------------------------------------------------

    fn serve_chunks(
        &mut self,
        peer: PeerId,
        req: ChunkRequest,
        channel: ResponseChannel<ChunkResponse>,
    ) {
        trace!(%peer, "serving chunk request");
        let provider = self.provider.clone();
        let limiter = self.limiter.clone();
        let slots = self.serve_slots.clone();
        let tx = self.served_tx.clone();
        let max = self.cfg.limits.max_response_bytes;
        tokio::spawn(async move {
            let Ok(_permit) = slots.acquire_owned().await else {
                return;
            };
            let resp =
                tokio::task::spawn_blocking(move || answer_chunk_request(&*provider, req, max))
                    .await
                    .unwrap_or_else(|_| ChunkResponse::Refused("internal error".into()));
            if let Some(l) = limiter {
                let bytes = response_bytes(&resp);
                let wait = l.reserve(bytes, Instant::now());
                tokio::time::sleep(wait).await;
            }
            let _ = tx.send((channel, resp));
        });
    }

    fn on_ctl_reply(&mut self, ch: ResponseChannel<CtlResponse>, data: Option<Vec<u8>>) {
        let resp = match data {
            Some(d) if d.len() <= self.cfg.limits.max_control_bytes => CtlResponse::App(d),
            Some(_) => CtlResponse::Refused("answer too large".into()),
            None => CtlResponse::Refused("not answered".into()),
        };
        let _ = self.swarm.behaviour_mut().ctl.send_response(ch, resp);
    }

    // ---- swarm events -------------------------------------------------------------------

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(b) => self.on_behaviour(b),
            SwarmEvent::NewListenAddr { address, .. } => {
                self.listen_addrs.push(address.clone());
                self.emit(MeshEvent::Listening { addr: address });
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| *a != address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                self.dialing.remove(&peer_id);
                self.dial_backoff.remove(&peer_id);
                if let Some(r) = self.pending_dials.remove(&connection_id) {
                    let _ = r.send(Ok(peer_id));
                }
                if num_established.get() == 1 {
                    debug!(peer = %peer_id, "connected");
                    let addr = endpoint.get_remote_address().clone();
                    self.remote_addrs.insert(peer_id, addr.clone());
                    self.emit(MeshEvent::PeerConnected {
                        peer: peer_id,
                        addr,
                    });
                    for f in self.fetches.values_mut() {
                        if f.open_sources && !f.finished {
                            f.sched.add_peer(peer_id);
                        }
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                cause,
                ..
            } => {
                debug!(peer = %peer_id, ?cause, "disconnected");
                self.identified.remove(&peer_id);
                self.pex_asked.remove(&peer_id);
                self.remote_addrs.remove(&peer_id);
                for f in self.fetches.values_mut() {
                    f.sched.on_peer_gone(&peer_id);
                }
                self.emit(MeshEvent::PeerDisconnected { peer: peer_id });
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                debug!(?peer_id, %error, "outgoing connection failed");
                if let Some(r) = self.pending_dials.remove(&connection_id) {
                    let _ = r.send(Err(MeshError::Dial(error.to_string())));
                }
                if let Some(p) = peer_id {
                    self.dialing.remove(&p);
                    self.dial_backoff
                        .insert(p, Instant::now() + Duration::from_secs(5));
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                debug!(%send_back_addr, %error, "incoming connection failed");
            }
            _ => {}
        }
    }

    fn on_behaviour(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Block(never) => match never {},
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let addrs: Vec<Multiaddr> = info
                    .listen_addrs
                    .into_iter()
                    .filter(|a| a.len() <= MAX_ADDR_LEN)
                    .take(MAX_PEX_ADDRS)
                    .collect();
                for a in &addrs {
                    self.swarm.add_peer_address(peer_id, a.clone());
                }
                self.remember(peer_id, addrs.clone());
                self.identified.insert(peer_id, addrs);
                if self.connected() < self.cfg.target_peers && self.pex_asked.insert(peer_id) {
                    self.ask_peers(peer_id);
                }
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Ping(ping::Event { peer, result, .. }) => {
                match result {
                    Ok(rtt) => self.link(peer).on_rtt(rtt),
                    Err(e) => {
                        debug!(%peer, %e, "ping failed");
                        self.link(peer).on_failure();
                    }
                }
                self.report_link(peer);
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(list)) => {
                for (peer, addr) in list {
                    self.remember(peer, vec![addr]);
                }
                self.dial_more();
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(list)) => {
                for (peer, addr) in list {
                    if let Some(a) = self.known.get_mut(&peer) {
                        a.retain(|x| *x != addr);
                    }
                }
            }
            BehaviourEvent::Gossip(g) => self.on_gossip(g),
            BehaviourEvent::Chunks(e) => self.on_chunks_event(e),
            BehaviourEvent::Ctl(e) => self.on_ctl_event(e),
            BehaviourEvent::Direct(e) => self.on_direct_event(e),
        }
    }

    fn on_direct_event(&mut self, ev: crate::direct::Event) {
        match ev {
            crate::direct::Event::Received { peer, topic, data } => {
                if !self.refused(&peer) {
                    self.emit(MeshEvent::Direct { peer, topic, data });
                }
            }
            crate::direct::Event::Malformed { peer, reason } => self.penalise(peer, &reason),
            crate::direct::Event::Dropped { peer, frames } => {
                debug!(%peer, frames, "direct frames dropped");
            }
        }
    }

    fn on_gossip(&mut self, ev: gossipsub::Event) {
        match ev {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let opened = Topic::from_name(message.topic.as_str())
                    .map(|topic| (topic, self.opener.open(topic, &message.data)));
                let acceptance = match &opened {
                    Some((_, Ok(_))) => MessageAcceptance::Accept,
                    Some((_, Err(_))) => MessageAcceptance::Reject,
                    None => MessageAcceptance::Ignore,
                };
                self.swarm
                    .behaviour_mut()
                    .gossip
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
                match opened {
                    Some((topic, Ok((author, data)))) => self.emit(MeshEvent::Gossip {
                        topic,
                        source: author,
                        via: propagation_source,
                        data,
                    }),
                    Some((topic, Err(e))) => {
                        warn!(via = %propagation_source, %topic, %e, "gossip message rejected");
                    }
                    None => {}
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic, .. } => {
                if let Some(topic) = Topic::from_name(topic.as_str()) {
                    self.emit(MeshEvent::Subscribed {
                        peer: peer_id,
                        topic,
                    });
                }
            }
            gossipsub::Event::Unsubscribed { peer_id, topic } => {
                if let Some(topic) = Topic::from_name(topic.as_str()) {
                    self.emit(MeshEvent::Unsubscribed {
                        peer: peer_id,
                        topic,
                    });
                }
            }
            other => trace!(?other, "gossipsub"),
        }
    }

    fn on_chunks_event(&mut self, ev: request_response::Event<ChunkRequest, ChunkResponse>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                Message::Request {
                    request, channel, ..
                } => self.serve_chunks(peer, request, channel),
                Message::Response {
                    request_id,
                    response,
                } => self.on_chunk_response(peer, request_id, response),
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => self.on_chunk_failure(peer, request_id, error),
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.on_inbound_failure(peer, error, "chunk")
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_inbound_failure(&mut self, peer: PeerId, error: InboundFailure, proto: &str) {
        debug!(%peer, %error, proto, "inbound request failed");
        if matches!(&error, InboundFailure::Io(e) if e.kind() == std::io::ErrorKind::InvalidData) {
            self.penalise(peer, &format!("malformed {proto} request: {error}"));
        }
    }

    fn on_ctl_event(&mut self, ev: request_response::Event<CtlRequest, CtlResponse>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                Message::Request {
                    request, channel, ..
                } => match request {
                    CtlRequest::Peers => {
                        let records = self.pex_records(&peer);
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .ctl
                            .send_response(channel, CtlResponse::Peers(records));
                    }
                    CtlRequest::App(data) => {
                        let (tx, rx) = oneshot::channel();
                        self.emit(MeshEvent::ControlRequest {
                            peer,
                            data,
                            reply: ControlReply(tx),
                        });
                        // If the event was dropped, rx resolves at once with an error.
                        self.ctl_replies
                            .push(async move { (channel, rx.await.ok()) }.boxed());
                    }
                },
                Message::Response {
                    request_id,
                    response,
                } => {
                    if self.pex_out.remove(&request_id).is_some() {
                        match response {
                            CtlResponse::Peers(records) => self.on_pex_records(records),
                            CtlResponse::Refused(_) => {}
                            CtlResponse::App(_) => self.penalise(peer, "answer of the wrong kind"),
                        }
                    } else if let Some(r) = self.ctl_out.remove(&request_id) {
                        let res = match response {
                            CtlResponse::App(d) => Ok(d),
                            CtlResponse::Refused(why) => Err(MeshError::Request(why)),
                            CtlResponse::Peers(_) => Err(MeshError::BadResponse(
                                "peer list instead of an answer".into(),
                            )),
                        };
                        let _ = r.send(res);
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.pex_out.remove(&request_id);
                if let Some(r) = self.ctl_out.remove(&request_id) {
                    let _ = r.send(Err(MeshError::Request(error.to_string())));
                }
                if matches!(&error, OutboundFailure::Io(e) if e.kind() == std::io::ErrorKind::InvalidData)
                {
                    self.penalise(peer, "malformed control response");
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.on_inbound_failure(peer, error, "control")
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

fn is_loopback(a: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// Gossip sequence numbers start at the wall clock (ns) so they keep growing across
/// restarts of a node.
fn gossip_seq_start() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Body bytes a response puts on the wire (what the upload limiter charges).
fn response_bytes(r: &ChunkResponse) -> usize {
    match r {
        ChunkResponse::Get(items) => items.iter().map(|it| it.body.wire_len()).sum(),
        _ => 0,
    }
}

/// Answers a chunk request from the provider, within the response byte budget (counted
/// on uncompressed bytes, so the receiver's bound on them holds), compressing the chunks
/// if asked. Blocking: runs on the blocking pool.
pub(crate) fn answer_chunk_request(
    provider: &dyn ChunkProvider,
    req: ChunkRequest,
    max_bytes: usize,
) -> ChunkResponse {
    match req {
        ChunkRequest::Have(ids) => ChunkResponse::Have(
            ids.iter()
                .map(|id| {
                    provider
                        .chunk_len(id)
                        .filter(|&l| l <= max_bytes)
                        .and_then(|l| u32::try_from(l).ok())
                })
                .collect(),
        ),
        ChunkRequest::Get { ids, zstd_level } => {
            let mut total = 0usize;
            let mut items = Vec::with_capacity(ids.len());
            for id in ids {
                let body = match provider.chunk_len(&id) {
                    None => ItemBody::Missing,
                    Some(len) if len > max_bytes => ItemBody::Missing,
                    Some(len) if total + len > max_bytes => ItemBody::Deferred,
                    Some(_) => match provider.get(&id) {
                        None => ItemBody::Missing,
                        Some(d) if d.len() > max_bytes => ItemBody::Missing,
                        Some(d) if total + d.len() > max_bytes => ItemBody::Deferred,
                        Some(d) => {
                            total += d.len();
                            ItemBody::raw(d)
                        }
                    },
                };
                items.push(GetItem { id, body });
            }
            if let Some(level) = zstd_level {
                compress_items(&mut items, level);
            }
            ChunkResponse::Get(items)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::MemoryChunks;

    #[test]
    fn loopback_addresses_are_recognised() {
        assert!(is_loopback(&"/ip4/127.0.0.1/tcp/1".parse().unwrap()));
        assert!(is_loopback(&"/ip6/::1/tcp/1".parse().unwrap()));
        assert!(!is_loopback(&"/ip4/192.0.2.7/tcp/1".parse().unwrap()));
    }

    #[test]
    fn answers_respect_the_byte_budget() {
        let m = MemoryChunks::new();
        let a = m.insert(Bytes::from(vec![1u8; 600]));
        let b = m.insert(Bytes::from(vec![2u8; 600]));
        let big = m.insert(Bytes::from(vec![3u8; 2000]));
        let none = ChunkId::of(b"absent");
        let get = |ids| ChunkRequest::Get {
            ids,
            zstd_level: None,
        };
        let ChunkResponse::Get(items) = answer_chunk_request(&m, get(vec![a, none, b, big]), 1000)
        else {
            panic!()
        };
        assert!(matches!(items[0].body, ItemBody::Data { .. }));
        assert!(matches!(items[1].body, ItemBody::Missing));
        assert!(matches!(items[2].body, ItemBody::Deferred));
        assert!(
            matches!(items[3].body, ItemBody::Missing),
            "larger than any response"
        );
        let ChunkResponse::Have(sizes) =
            answer_chunk_request(&m, ChunkRequest::Have(vec![a, none, big]), 1000)
        else {
            panic!()
        };
        assert_eq!(sizes, vec![Some(600), None, None]);
    }

    #[test]
    fn answers_compress_when_asked_and_budget_uncompressed_bytes() {
        let m = MemoryChunks::new();
        let a = m.insert(Bytes::from(vec![1u8; 600]));
        let b = m.insert(Bytes::from(vec![2u8; 600]));
        let get = |zstd_level| ChunkRequest::Get {
            ids: vec![a, b],
            zstd_level,
        };
        let ChunkResponse::Get(items) = answer_chunk_request(&m, get(Some(3)), 1000) else {
            panic!()
        };
        match &items[0].body {
            ItemBody::Zstd { frame, raw_len } => {
                assert_eq!(*raw_len, 600);
                assert!(frame.len() < 600);
            }
            other => panic!("{other:?}"),
        }
        // 600 + 600 uncompressed exceeds the budget even though the frames are tiny.
        assert!(matches!(items[1].body, ItemBody::Deferred));
        let resp = ChunkResponse::Get(items);
        assert!(
            response_bytes(&resp) < 600,
            "limiter charges the frame size"
        );
        let ChunkResponse::Get(items) = answer_chunk_request(&m, get(None), 1000) else {
            panic!()
        };
        assert!(matches!(items[0].body, ItemBody::Data { .. }));
        assert_eq!(response_bytes(&ChunkResponse::Get(items)), 600);
    }
}
