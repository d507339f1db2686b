//! Direct messages: small frames sent straight to chosen connected peers, for traffic
//! whose recipients the sender knows (a placement round's members).
//!
//! Gossip pays per message for what it offers (an envelope signature checked by every
//! receiver, forwarding and its duplicate copies, IHAVE/IWANT): on 32 nodes an all-to-all
//! exchange of small messages costs ~1,000 signature checks and ~5,000 transmissions.
//! Here every connection carries at most one long-lived outbound stream of this protocol,
//! opened on the first frame and kept, with length-prefixed frames on it: no stream set-up,
//! negotiation, acknowledgement or timer per message, no forwarding, and no signature —
//! the author of a frame is the peer at the other end of the connection, which noise
//! authenticated.
//!
//! Frame: `u32` big-endian length, then that many bytes: one byte `L`, a topic name of
//! `L` bytes, the payload. Untrusted input: a length above the limit or an unknown topic
//! ends the stream and is reported ([`Event::Malformed`]); a peer may hold at most
//! [`MAX_INBOUND_STREAMS`] inbound streams per connection. Delivery is best effort: a
//! frame to a peer with no connection, or queued when the stream fails, is dropped
//! ([`Event::Dropped`]) — users recover losses themselves, as with gossip.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::Endpoint;
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId,
    FromSwarm, NetworkBehaviour, NotifyHandler, Stream, StreamProtocol, SubstreamProtocol,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use crate::types::Topic;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/roam/direct/1");

/// Inbound streams of this protocol one connection may hold at once (a peer opens one;
/// a second appears only while it replaces a failed one).
pub const MAX_INBOUND_STREAMS: usize = 2;

/// Settings of the direct protocol.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest payload sent or accepted.
    pub max_payload: usize,
    /// Frames queued per connection while its stream opens or writes; past it the oldest
    /// are dropped.
    pub queue: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_payload: 256 << 10,
            queue: 1024,
        }
    }
}

/// What the behaviour reports.
#[derive(Debug)]
pub enum Event {
    /// A frame from `peer` (the authenticated remote of the connection it came on).
    Received {
        peer: PeerId,
        topic: Topic,
        data: Vec<u8>,
    },
    /// `peer` broke the framing (too large, unknown topic); its stream was closed.
    Malformed { peer: PeerId, reason: String },
    /// Frames to `peer` that were not sent (no connection, queue full, stream failed, or
    /// the peer does not speak the protocol).
    Dropped { peer: PeerId, frames: usize },
}

/// Encodes one frame's body (topic, payload), without the length prefix.
pub fn encode_body(topic: Topic, payload: &[u8]) -> Bytes {
    let name = topic.name().as_bytes();
    let mut v = Vec::with_capacity(1 + name.len() + payload.len());
    v.push(name.len() as u8);
    v.extend_from_slice(name);
    v.extend_from_slice(payload);
    Bytes::from(v)
}

/// Splits a received frame body into its topic and payload.
pub fn decode_body(body: &[u8]) -> Result<(Topic, &[u8]), String> {
    let (&len, rest) = body.split_first().ok_or("empty frame")?;
    let len = len as usize;
    let name = rest.get(..len).ok_or("topic name cut short")?;
    let name = std::str::from_utf8(name).map_err(|_| "topic name is not UTF-8")?;
    let topic = Topic::from_name(name).ok_or_else(|| format!("unknown topic {name:?}"))?;
    Ok((topic, &rest[len..]))
}

/// The direct-message behaviour: one handler per connection; frames go to the oldest
/// connection of a peer.
pub struct Behaviour {
    cfg: Config,
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    events: VecDeque<ToSwarm<Event, Bytes>>,
}

impl Behaviour {
    pub fn new(cfg: Config) -> Behaviour {
        Behaviour {
            cfg,
            connections: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    /// Largest payload this behaviour sends or accepts.
    pub fn max_payload(&self) -> usize {
        self.cfg.max_payload
    }

    /// Queues `payload` on `topic` to `peer`. False (and nothing queued) if `peer` has no
    /// connection or the payload is too large.
    pub fn send(&mut self, peer: &PeerId, topic: Topic, payload: &[u8]) -> bool {
        self.send_body(peer, encode_body(topic, payload), payload.len())
    }

    /// Queues one frame to each of `peers` (the body encoded once); returns how many were
    /// queued (peers without a connection are skipped).
    pub fn send_many<'a>(
        &mut self,
        peers: impl IntoIterator<Item = &'a PeerId>,
        topic: Topic,
        payload: &[u8],
    ) -> usize {
        let body = encode_body(topic, payload);
        peers
            .into_iter()
            .filter(|p| self.send_body(p, body.clone(), payload.len()))
            .count()
    }

    fn send_body(&mut self, peer: &PeerId, body: Bytes, payload_len: usize) -> bool {
        if payload_len > self.cfg.max_payload {
            return false;
        }
        let Some(&conn) = self.connections.get(peer).and_then(|c| c.first()) else {
            return false;
        };
        self.events.push_back(ToSwarm::NotifyHandler {
            peer_id: *peer,
            handler: NotifyHandler::One(conn),
            event: body,
        });
        true
    }

    fn handler(&self) -> Handler {
        Handler::new(&self.cfg)
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler())
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.connections
                    .entry(e.peer_id)
                    .or_default()
                    .push(e.connection_id);
            }
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => {
                if let Some(c) = self.connections.get_mut(&peer_id) {
                    c.retain(|&id| id != connection_id);
                    if c.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        let ev = match event {
            HandlerEvent::Received(body) => match decode_body(&body) {
                Ok((topic, payload)) => Event::Received {
                    peer,
                    topic,
                    data: payload.to_vec(),
                },
                Err(reason) => Event::Malformed { peer, reason },
            },
            HandlerEvent::Malformed(reason) => Event::Malformed { peer, reason },
            HandlerEvent::Dropped(frames) => Event::Dropped { peer, frames },
        };
        self.events.push_back(ToSwarm::GenerateEvent(ev));
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.events.pop_front() {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
        }
    }
}

/// What a handler tells the behaviour.
#[derive(Debug)]
pub enum HandlerEvent {
    /// A frame body (topic and payload, not yet split).
    Received(Vec<u8>),
    Malformed(String),
    Dropped(usize),
}

type WriteFuture = BoxFuture<'static, Result<Stream, (io::Error, usize)>>;
type ReadFuture = BoxFuture<'static, (Inbound, Result<Option<Vec<u8>>, ReadError>)>;

enum Outbound {
    /// No stream (none needed yet, or the last one failed).
    Idle,
    /// Asked the connection for a stream.
    Opening,
    Ready(Stream),
    /// Writing a batch; gives the stream back.
    Writing(WriteFuture),
    /// The peer does not speak the protocol: frames are dropped.
    Unsupported,
}

#[derive(Debug)]
enum ReadError {
    Io(io::Error),
    TooLarge(usize),
}

/// One connection's end of the protocol.
pub struct Handler {
    max_frame: usize,
    queue_cap: usize,
    queue: VecDeque<Bytes>,
    out: Outbound,
    inbound: FuturesUnordered<ReadFuture>,
    events: VecDeque<HandlerEvent>,
    /// Frames dropped since last reported.
    dropped: usize,
}

impl Handler {
    fn new(cfg: &Config) -> Handler {
        Handler {
            // The body's topic prefix on top of the payload.
            max_frame: cfg.max_payload + 256,
            queue_cap: cfg.queue.max(1),
            queue: VecDeque::new(),
            out: Outbound::Idle,
            inbound: FuturesUnordered::new(),
            events: VecDeque::new(),
            dropped: 0,
        }
    }
}

async fn write_frames(mut s: Stream, frames: Vec<Bytes>) -> Result<Stream, (io::Error, usize)> {
    let n = frames.len();
    let mut buf = Vec::with_capacity(frames.iter().map(|f| f.len() + 4).sum());
    for f in &frames {
        buf.extend_from_slice(&(f.len() as u32).to_be_bytes());
        buf.extend_from_slice(f);
    }
    match async {
        s.write_all(&buf).await?;
        s.flush().await
    }
    .await
    {
        Ok(()) => Ok(s),
        Err(e) => Err((e, n)),
    }
}

/// Bytes asked of the stream per read: frames that arrived together come out of one
/// read (a stream read costs a yamux lock and window check each; the old length-then-body
/// reads took three per frame).
const READ_CHUNK: usize = 8 << 10;

/// An inbound stream and the bytes read from it past the last frame returned.
struct Inbound {
    stream: Stream,
    buf: Vec<u8>,
}

/// Takes the first whole frame out of `buf` (a length prefix and that many bytes):
/// `Ok(None)` if `buf` does not hold one yet, `Err(len)` if the prefix announces more
/// than `max` bytes (nothing is allocated for it). What the inbound side of a stream
/// runs on the bytes it read (public for the fuzz target).
pub fn take_frame(buf: &mut Vec<u8>, max: usize) -> Result<Option<Vec<u8>>, usize> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let mut len = [0u8; 4];
    len.copy_from_slice(head);
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(len);
    }
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let body = body.to_vec();
    buf.drain(..4 + len);
    Ok(Some(body))
}

/// The next frame body of `r`: `None` at a clean end (EOF between frames). Holds at most
/// `4 + max + READ_CHUNK` bytes.
async fn read_frame(mut r: Inbound, max: usize) -> (Inbound, Result<Option<Vec<u8>>, ReadError>) {
    loop {
        match take_frame(&mut r.buf, max) {
            Ok(Some(body)) => return (r, Ok(Some(body))),
            Ok(None) => {}
            Err(len) => return (r, Err(ReadError::TooLarge(len))),
        }
        let old = r.buf.len();
        r.buf.resize(old + READ_CHUNK, 0);
        let res = r.stream.read(&mut r.buf[old..]).await;
        let n = *res.as_ref().unwrap_or(&0);
        r.buf.truncate(old + n);
        match res {
            Ok(0) if old == 0 => return (r, Ok(None)),
            Ok(0) => {
                let e = io::Error::from(io::ErrorKind::UnexpectedEof);
                return (r, Err(ReadError::Io(e)));
            }
            Ok(_) => {}
            Err(e) => return (r, Err(ReadError::Io(e))),
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Bytes;
    type ToBehaviour = HandlerEvent;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    fn on_behaviour_event(&mut self, frame: Bytes) {
        if matches!(self.out, Outbound::Unsupported) {
            self.dropped += 1;
            return;
        }
        if self.queue.len() >= self.queue_cap {
            self.queue.pop_front();
            self.dropped += 1;
        }
        self.queue.push_back(frame);
    }

    fn connection_keep_alive(&self) -> bool {
        !self.queue.is_empty() || matches!(self.out, Outbound::Opening | Outbound::Writing(_))
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        // Outbound: write what is queued, in one batch per flush.
        loop {
            match std::mem::replace(&mut self.out, Outbound::Idle) {
                Outbound::Idle if !self.queue.is_empty() => {
                    self.out = Outbound::Opening;
                    return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                        protocol: SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ()),
                    });
                }
                Outbound::Ready(s) if !self.queue.is_empty() => {
                    let frames: Vec<Bytes> = self.queue.drain(..).collect();
                    self.out = Outbound::Writing(write_frames(s, frames).boxed());
                }
                Outbound::Writing(mut f) => match f.poll_unpin(cx) {
                    Poll::Ready(Ok(s)) => self.out = Outbound::Ready(s),
                    Poll::Ready(Err((e, n))) => {
                        tracing::debug!(%e, frames = n, "direct stream write failed");
                        self.dropped += n;
                        // Idle: the next frame opens a new stream.
                    }
                    Poll::Pending => {
                        self.out = Outbound::Writing(f);
                        break;
                    }
                },
                other => {
                    self.out = other;
                    break;
                }
            }
        }
        // Inbound: frames from the peer's streams.
        while let Poll::Ready(Some((r, res))) = self.inbound.poll_next_unpin(cx) {
            match res {
                Ok(Some(body)) => {
                    self.inbound.push(read_frame(r, self.max_frame).boxed());
                    self.events.push_back(HandlerEvent::Received(body));
                }
                // Closed between frames, or broken: the stream is dropped.
                Ok(None) => {}
                Err(ReadError::Io(e)) => tracing::debug!(%e, "direct stream read failed"),
                Err(ReadError::TooLarge(n)) => self.events.push_back(HandlerEvent::Malformed(
                    format!("direct frame of {n} bytes exceeds {}", self.max_frame),
                )),
            }
        }
        if self.dropped > 0 {
            let n = std::mem::take(&mut self.dropped);
            self.events.push_back(HandlerEvent::Dropped(n));
        }
        match self.events.pop_front() {
            Some(e) => Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(e)),
            None => Poll::Pending,
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: mut stream,
                ..
            }) => {
                if self.inbound.len() >= MAX_INBOUND_STREAMS {
                    tracing::debug!("direct: too many inbound streams, one refused");
                    return;
                }
                stream.ignore_for_keep_alive();
                let r = Inbound {
                    stream,
                    buf: Vec::new(),
                };
                self.inbound.push(read_frame(r, self.max_frame).boxed());
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: mut stream,
                ..
            }) => {
                stream.ignore_for_keep_alive();
                self.out = Outbound::Ready(stream);
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                tracing::debug!(%error, "direct stream could not be opened");
                self.dropped += self.queue.len();
                self.queue.clear();
                self.out = match error {
                    libp2p::swarm::StreamUpgradeError::NegotiationFailed => Outbound::Unsupported,
                    _ => Outbound::Idle,
                };
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trip_and_rejects() {
        let b = encode_body(Topic::Placement, b"abc");
        let (t, p) = decode_body(&b).unwrap();
        assert_eq!((t, p), (Topic::Placement, &b"abc"[..]));
        assert!(decode_body(&[]).is_err());
        assert!(decode_body(&[5, b'a']).is_err(), "name cut short");
        assert!(
            decode_body(&[3, b'x', b'y', b'z', 1]).is_err(),
            "unknown topic"
        );
        assert!(decode_body(&[2, 0xff, 0xfe]).is_err(), "not UTF-8");
    }

    #[test]
    fn frames_come_out_whole_whatever_the_read_boundaries() {
        let bodies: Vec<Vec<u8>> = (0..20u8).map(|k| vec![k; k as usize * 7]).collect();
        let mut wire = Vec::new();
        for b in &bodies {
            wire.extend_from_slice(&(b.len() as u32).to_be_bytes());
            wire.extend_from_slice(b);
        }
        // Fed in pieces of every size from 1 byte to the whole stream at once.
        for piece in 1..=wire.len() {
            let (mut buf, mut got) = (Vec::new(), Vec::new());
            for chunk in wire.chunks(piece) {
                buf.extend_from_slice(chunk);
                while let Some(b) = take_frame(&mut buf, 1000).expect("within the limit") {
                    got.push(b);
                }
            }
            assert_eq!(got, bodies, "pieces of {piece}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_its_body() {
        let mut buf = 1001u32.to_be_bytes().to_vec();
        assert_eq!(take_frame(&mut buf, 1000), Err(1001));
        let mut buf = u32::MAX.to_be_bytes().to_vec();
        assert_eq!(take_frame(&mut buf, 1000), Err(u32::MAX as usize));
        // A short prefix is no frame yet; an exact-limit frame is fine.
        let mut buf = vec![0, 0, 3];
        assert_eq!(take_frame(&mut buf, 1000), Ok(None));
        let mut buf = 1000u32.to_be_bytes().to_vec();
        buf.resize(1004, 9);
        assert_eq!(take_frame(&mut buf, 1000), Ok(Some(vec![9; 1000])));
    }
}
