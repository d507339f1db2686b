//! The LinkMonitor actor: what this node knows about each peer.
//!
//! Two sources: the mesh's link measurements (ping RTT, chunk throughput) and each
//! peer's heartbeat gossip (its name, load, speed, jobs). Peers whose heartbeat is
//! older than a few periods count as gone for placement, though the mesh may still
//! hold a connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use mesh::{LinkReport, PeerId};

use super::proto::Heartbeat;
use super::Shared;

/// Heartbeats older than this many periods mean the peer is gone.
const STALE_PERIODS: u32 = 6;

#[derive(Clone, Debug)]
pub struct PeerView {
    pub peer: PeerId,
    pub name: Option<String>,
    pub link: Option<LinkReport>,
    pub heartbeat: Option<Heartbeat>,
    pub seen: Option<Instant>,
    /// Connected over a loopback address (same host: bandwidth is memory speed).
    pub loopback: bool,
}

pub struct LinkMonitor {
    shared: Arc<Shared>,
    peers: HashMap<PeerId, PeerView>,
}

impl LinkMonitor {
    pub fn new(shared: Arc<Shared>) -> LinkMonitor {
        LinkMonitor {
            shared,
            peers: HashMap::new(),
        }
    }

    fn view(&mut self, peer: PeerId) -> &mut PeerView {
        self.peers.entry(peer).or_insert_with(|| PeerView {
            peer,
            name: None,
            link: None,
            heartbeat: None,
            seen: None,
            loopback: false,
        })
    }

    fn stale_after(&self) -> Duration {
        Duration::from_millis(self.shared.config.migration.heartbeat_ms) * STALE_PERIODS
    }
}

impl Actor for LinkMonitor {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkUpdate(pub PeerId, pub LinkReport);

impl Handler<LinkUpdate> for LinkMonitor {
    type Result = ();
    fn handle(&mut self, m: LinkUpdate, _: &mut Context<Self>) {
        self.view(m.0).link = Some(m.1);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct HeartbeatSeen(pub PeerId, pub Heartbeat);

impl Handler<HeartbeatSeen> for LinkMonitor {
    type Result = ();
    fn handle(&mut self, m: HeartbeatSeen, _: &mut Context<Self>) {
        let v = self.view(m.0);
        v.name = Some(m.1.name.clone());
        v.heartbeat = Some(m.1);
        v.seen = Some(Instant::now());
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerGone(pub PeerId);

impl Handler<PeerGone> for LinkMonitor {
    type Result = ();
    fn handle(&mut self, m: PeerGone, _: &mut Context<Self>) {
        if let Some(v) = self.peers.get_mut(&m.0) {
            v.heartbeat = None;
            v.seen = None;
        }
    }
}

/// A connection to a peer was established at this address.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerAddr(pub PeerId, pub mesh::Multiaddr);

impl Handler<PeerAddr> for LinkMonitor {
    type Result = ();
    fn handle(&mut self, m: PeerAddr, _: &mut Context<Self>) {
        use mesh::multiaddr::Protocol;
        let loopback = m.1.iter().any(|p| match p {
            Protocol::Ip4(a) => a.is_loopback(),
            Protocol::Ip6(a) => a.is_loopback(),
            _ => false,
        });
        self.view(m.0).loopback = loopback;
    }
}

/// Every peer ever seen; those with a fresh heartbeat carry it.
#[derive(Message)]
#[rtype(result = "Vec<PeerView>")]
pub struct Query;

impl Handler<Query> for LinkMonitor {
    type Result = MessageResult<Query>;
    fn handle(&mut self, _: Query, _: &mut Context<Self>) -> Self::Result {
        let stale = self.stale_after();
        let mut v: Vec<PeerView> = self
            .peers
            .values()
            .cloned()
            .map(|mut p| {
                if p.seen.is_none_or(|s| s.elapsed() > stale) {
                    p.heartbeat = None;
                }
                p
            })
            .collect();
        v.sort_by_key(|p| p.peer.to_bytes());
        MessageResult(v)
    }
}

/// The peer called `name` (by heartbeat), or whose id prints as `name`.
#[derive(Message)]
#[rtype(result = "Option<PeerId>")]
pub struct Resolve(pub String);

impl Handler<Resolve> for LinkMonitor {
    type Result = Option<PeerId>;
    fn handle(&mut self, m: Resolve, _: &mut Context<Self>) -> Self::Result {
        if let Ok(p) = m.0.parse::<PeerId>() {
            return Some(p);
        }
        self.peers
            .values()
            .find(|p| p.name.as_deref() == Some(m.0.as_str()))
            .map(|p| p.peer)
    }
}

/// Bandwidth assumed for a peer on the same host (loopback runs at memory speed;
/// measured chunk throughput there says more about request latency than the link).
pub const LOOPBACK_BYTES_PER_S: u64 = 4_000_000_000;

/// What is known of the link towards a peer.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkEstimate {
    /// Bytes/s: measured, or the loopback figure.
    pub bandwidth: Option<u64>,
    pub rtt: Option<Duration>,
    pub loopback: bool,
}

#[derive(Message)]
#[rtype(result = "LinkEstimate")]
pub struct Estimate(pub PeerId);

impl Handler<Estimate> for LinkMonitor {
    type Result = MessageResult<Estimate>;
    fn handle(&mut self, m: Estimate, _: &mut Context<Self>) -> Self::Result {
        let Some(p) = self.peers.get(&m.0) else {
            return MessageResult(LinkEstimate::default());
        };
        let link = p.link.as_ref();
        let measured = link.and_then(|l| l.throughput_bps).map(|b| b as u64);
        MessageResult(LinkEstimate {
            bandwidth: if p.loopback {
                Some(LOOPBACK_BYTES_PER_S)
            } else {
                measured
            },
            rtt: link.and_then(|l| l.rtt),
            loopback: p.loopback,
        })
    }
}
