//! Wire formats of roam's two request/response protocols and their bounded codecs.
//!
//! Every frame starts with a 4-byte big-endian length followed by a CBOR header. A chunk
//! response is followed by the bodies of its chunks, back to back in header order, so
//! multi-megabyte payloads are read straight into one buffer and sliced without a CBOR pass
//! over them. Every decoder checks the declared length against a limit before it allocates,
//! returns a typed [`WireError`] on bad input and never panics.
//!
//! Chunk protocol `/roam/chunk/2` (v1 had no compression; the version was bumped because
//! the GET request and the item heads changed shape, so a v1 peer fails protocol
//! negotiation cleanly instead of being penalised for "malformed" messages):
//!
//! - request: `Have(ids)` or `Get { ids, zstd_level }`. `zstd_level: None` (or absent)
//!   asks for raw chunks; `Some(l)` lets the server send each chunk as a zstd frame at
//!   level `l` clamped to [`ZSTD_MIN_LEVEL`]`..=`[`ZSTD_MAX_LEVEL`]. Unknown fields are
//!   ignored, so later optional fields stay compatible.
//! - GET response head: one [`ItemHead`] per entry. `Data(n)`: `n` raw chunk bytes follow;
//!   `Zstd(n, raw)`: an `n`-byte zstd frame follows that must decompress to exactly `raw`
//!   bytes. The server compresses only when the frame is smaller than the chunk.
//! - bounds on a GET response: the body bytes (as sent) and the uncompressed bytes (as
//!   delivered) are each at most [`WireLimits::max_response_bytes`], so a frame can never
//!   make the receiver allocate more than a raw response could.
//!
//! On receipt, compressed items are decompressed into a buffer of their declared length
//! (a frame that inflates beyond it is an error, not a reallocation) and every chunk's
//! blake3 hash is verified against its id over the uncompressed bytes. Both happen while
//! the response is read, on the connection's task, not on the swarm task.

use std::io;

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use crate::types::ChunkId;

pub const CHUNK_PROTOCOL: StreamProtocol = StreamProtocol::new("/roam/chunk/2");
pub const CTL_PROTOCOL: StreamProtocol = StreamProtocol::new("/roam/ctl/1");

/// Lowest zstd level a server compresses at (requested levels below are raised to it).
pub const ZSTD_MIN_LEVEL: i32 = 1;
/// Highest zstd level a server compresses at (requested levels above are lowered to it;
/// 20+ need much more memory per compressor).
pub const ZSTD_MAX_LEVEL: i32 = 19;

/// The zstd level actually used for a requested level.
pub fn clamp_zstd_level(level: i32) -> i32 {
    level.clamp(ZSTD_MIN_LEVEL, ZSTD_MAX_LEVEL)
}

/// Size bounds of the wire protocols. Both sides must agree on them only loosely: a
/// receiver refuses what exceeds its own limits.
#[derive(Clone, Debug)]
pub struct WireLimits {
    /// Most ids in one HAVE or GET request (and entries in its response).
    pub max_ids_per_request: usize,
    /// Most chunk bytes in one GET response. Also the largest chunk the mesh carries.
    pub max_response_bytes: usize,
    /// Most bytes of an application control request or response.
    pub max_control_bytes: usize,
}

impl Default for WireLimits {
    fn default() -> Self {
        WireLimits {
            max_ids_per_request: 4096,
            max_response_bytes: 8 << 20,
            max_control_bytes: 1 << 20,
        }
    }
}

impl WireLimits {
    /// Bound on a CBOR header that lists `max_ids_per_request` ids: an entry takes at
    /// most 52 bytes (32-byte id, its framing, a `Zstd` item head with two u32), 64 leaves
    /// a margin; the 256 cover the enum tag and the request's other fields.
    fn max_id_header(&self) -> usize {
        self.max_ids_per_request
            .saturating_mul(64)
            .saturating_add(256)
    }

    fn max_control_frame(&self) -> usize {
        // PEX responses are bounded by MAX_PEX_PEERS * MAX_PEX_ADDRS * MAX_ADDR_LEN.
        let pex = MAX_PEX_PEERS * (64 + MAX_PEX_ADDRS * (MAX_ADDR_LEN + 4)) + 256;
        self.max_control_bytes.saturating_add(256).max(pex)
    }
}

pub const MAX_PEX_PEERS: usize = 64;
pub const MAX_PEX_ADDRS: usize = 8;
pub const MAX_ADDR_LEN: usize = 256;

/// What went wrong decoding input from the network.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("malformed CBOR: {0}")]
    Decode(String),
    #[error("invalid message: {0}")]
    Invalid(&'static str),
    /// A zstd frame that is corrupt or inflates beyond its declared length.
    #[error("zstd frame does not decode within {declared} bytes: {reason}")]
    Decompress { declared: usize, reason: String },
    /// A zstd frame that decodes to fewer bytes than declared.
    #[error("zstd frame decodes to {actual} bytes, {declared} declared")]
    LengthMismatch { declared: usize, actual: usize },
}

impl From<WireError> for io::Error {
    fn from(e: WireError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// A request on the chunk protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkRequest {
    /// Which of these chunks do you hold, and how big are they?
    Have(Vec<ChunkId>),
    /// Send me these chunks (as many as fit in one response), zstd-compressed at
    /// `zstd_level` (clamped by the server, see [`clamp_zstd_level`]) if it is set.
    Get {
        ids: Vec<ChunkId>,
        #[serde(default)]
        zstd_level: Option<i32>,
    },
}

/// The head of one entry of a GET response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemHead {
    /// `len` bytes of this chunk follow in the body, uncompressed.
    Data(u32),
    /// `(frame_len, raw_len)`: a zstd frame of `frame_len` bytes follows in the body; it
    /// decompresses to the chunk's `raw_len` bytes. A tuple keeps the head small (see
    /// [`WireLimits::max_id_header`]).
    Zstd(u32, u32),
    /// The server does not hold the chunk.
    Missing,
    /// The server holds it but it did not fit in this response; ask again.
    Deferred,
}

#[derive(Debug, Serialize, Deserialize)]
enum ChunkResponseHead {
    Have(Vec<Option<u32>>),
    Get(Vec<(ChunkId, ItemHead)>),
    Refused(String),
}

/// One entry of a decoded GET response.
#[derive(Clone, Debug)]
pub struct GetItem {
    pub id: ChunkId,
    pub body: ItemBody,
}

/// The body of one entry of a GET response. Some variants occur only on one side.
#[derive(Clone, Debug)]
pub enum ItemBody {
    /// The chunk's (uncompressed) bytes. Sending side: sent raw; build it with
    /// [`ItemBody::raw`]. Receiving side: the chunk however it travelled; `valid` says
    /// whether blake3(data) == id and `wire_len` how many body bytes it took on the wire
    /// (the frame's size when it travelled compressed). The writer ignores both.
    Data {
        data: Bytes,
        valid: bool,
        wire_len: usize,
    },
    /// Sending side: the chunk as a zstd frame that decompresses to `raw_len` bytes (see
    /// [`compress_items`]).
    Zstd {
        frame: Bytes,
        raw_len: u32,
    },
    /// Receiving side: a compressed item whose frame did not decode to exactly its
    /// declared length. As much an offence as a hash mismatch.
    Undecodable {
        wire_len: usize,
        error: WireError,
    },
    Missing,
    Deferred,
}

impl ItemBody {
    /// A chunk to send uncompressed.
    pub fn raw(data: Bytes) -> Self {
        let wire_len = data.len();
        ItemBody::Data {
            data,
            valid: true,
            wire_len,
        }
    }

    /// Body bytes this entry takes on the wire.
    pub fn wire_len(&self) -> usize {
        match self {
            ItemBody::Data { wire_len, .. } | ItemBody::Undecodable { wire_len, .. } => *wire_len,
            ItemBody::Zstd { frame, .. } => frame.len(),
            ItemBody::Missing | ItemBody::Deferred => 0,
        }
    }
}

/// Replaces each raw chunk of `items` by its zstd frame at `level` (clamped, see
/// [`clamp_zstd_level`]) where the frame is smaller. CPU-heavy at high levels: call it on a
/// blocking thread. A chunk that fails to compress is left raw.
pub fn compress_items(items: &mut [GetItem], level: i32) {
    let level = clamp_zstd_level(level);
    let mut compressor = match zstd::bulk::Compressor::new(level) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%e, level, "no zstd compressor: sending chunks raw");
            return;
        }
    };
    for it in items.iter_mut() {
        let ItemBody::Data { data, .. } = &it.body else {
            continue;
        };
        let Ok(raw_len) = u32::try_from(data.len()) else {
            continue;
        };
        match compressor.compress(data) {
            Ok(frame) if frame.len() < data.len() => {
                it.body = ItemBody::Zstd {
                    frame: Bytes::from(frame),
                    raw_len,
                };
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(%e, id = %it.id, "zstd compression failed: sent raw"),
        }
    }
}

/// Decompresses one item's zstd frame to exactly `declared` bytes. Refuses a declared
/// length over `max` before allocating, and never allocates more than `declared`: a frame
/// that would inflate beyond it fails instead.
pub fn decompress_item(
    decompressor: &mut zstd::bulk::Decompressor<'_>,
    frame: &[u8],
    declared: usize,
    max: usize,
) -> Result<Vec<u8>, WireError> {
    if declared > max {
        return Err(WireError::TooLarge {
            size: declared,
            max,
        });
    }
    let data = decompressor
        .decompress(frame, declared)
        .map_err(|e| WireError::Decompress {
            declared,
            reason: e.to_string(),
        })?;
    if data.len() != declared {
        return Err(WireError::LengthMismatch {
            declared,
            actual: data.len(),
        });
    }
    Ok(data)
}

/// A response on the chunk protocol.
#[derive(Clone, Debug)]
pub enum ChunkResponse {
    /// Sizes of the asked chunks, in request order; `None` for chunks not held.
    Have(Vec<Option<u32>>),
    Get(Vec<GetItem>),
    /// The server would not serve the request (too large, overloaded...).
    Refused(String),
}

/// A request on the control protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtlRequest {
    /// Opaque application request (for example a migration offer).
    App(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Peer exchange: which peers do you know?
    Peers,
}

/// A peer and its listen addresses, as exchanged by peer exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    #[serde(with = "serde_bytes")]
    pub peer: Vec<u8>,
    pub addrs: Vec<serde_bytes::ByteBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtlResponse {
    App(#[serde(with = "serde_bytes")] Vec<u8>),
    Peers(Vec<PeerRecord>),
    Refused(String),
}

fn to_cbor<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(out)
}

fn from_cbor<T: serde::de::DeserializeOwned>(buf: &[u8]) -> Result<T, WireError> {
    ciborium::from_reader(buf).map_err(|e| WireError::Decode(e.to_string()))
}

/// Decodes a chunk request frame body and checks its bounds.
pub fn decode_chunk_request(buf: &[u8], limits: &WireLimits) -> Result<ChunkRequest, WireError> {
    let max = limits.max_id_header();
    if buf.len() > max {
        return Err(WireError::TooLarge {
            size: buf.len(),
            max,
        });
    }
    let req: ChunkRequest = from_cbor(buf)?;
    let n = match &req {
        ChunkRequest::Have(ids) | ChunkRequest::Get { ids, .. } => ids.len(),
    };
    if n > limits.max_ids_per_request {
        return Err(WireError::Invalid("too many ids in request"));
    }
    Ok(req)
}

/// Decodes a control request frame body and checks its bounds.
pub fn decode_ctl_request(buf: &[u8], limits: &WireLimits) -> Result<CtlRequest, WireError> {
    let req: CtlRequest = from_cbor(buf)?;
    if let CtlRequest::App(b) = &req {
        if b.len() > limits.max_control_bytes {
            return Err(WireError::TooLarge {
                size: b.len(),
                max: limits.max_control_bytes,
            });
        }
    }
    Ok(req)
}

/// Decodes a control response frame body and checks its bounds.
pub fn decode_ctl_response(buf: &[u8], limits: &WireLimits) -> Result<CtlResponse, WireError> {
    let resp: CtlResponse = from_cbor(buf)?;
    match &resp {
        CtlResponse::App(b) if b.len() > limits.max_control_bytes => Err(WireError::TooLarge {
            size: b.len(),
            max: limits.max_control_bytes,
        }),
        CtlResponse::Peers(p) if p.len() > MAX_PEX_PEERS => {
            Err(WireError::Invalid("too many peer records"))
        }
        CtlResponse::Peers(p)
            if p.iter().any(|r| {
                r.addrs.len() > MAX_PEX_ADDRS || r.addrs.iter().any(|a| a.len() > MAX_ADDR_LEN)
            }) =>
        {
            Err(WireError::Invalid("peer record too large"))
        }
        _ => Ok(resp),
    }
}

/// Checks a decoded response head and returns the body length it announces.
fn check_response_head(head: &ChunkResponseHead, limits: &WireLimits) -> Result<usize, WireError> {
    match head {
        ChunkResponseHead::Have(sizes) => {
            if sizes.len() > limits.max_ids_per_request {
                return Err(WireError::Invalid("too many entries in response"));
            }
            Ok(0)
        }
        ChunkResponseHead::Get(items) => {
            if items.len() > limits.max_ids_per_request {
                return Err(WireError::Invalid("too many entries in response"));
            }
            // Body bytes as sent, and chunk bytes once decompressed: both bounded, so
            // compression can never make a response cost more memory than a raw one.
            let mut total: usize = 0;
            let mut raw_total: usize = 0;
            for (_, h) in items {
                let (wire, raw) = match *h {
                    ItemHead::Data(len) => (len as usize, len as usize),
                    ItemHead::Zstd(len, raw) => (len as usize, raw as usize),
                    ItemHead::Missing | ItemHead::Deferred => (0, 0),
                };
                total = total.saturating_add(wire);
                raw_total = raw_total.saturating_add(raw);
            }
            for size in [total, raw_total] {
                if size > limits.max_response_bytes {
                    return Err(WireError::TooLarge {
                        size,
                        max: limits.max_response_bytes,
                    });
                }
            }
            Ok(total)
        }
        ChunkResponseHead::Refused(r) => {
            if r.len() > 1024 {
                return Err(WireError::Invalid("refusal reason too long"));
            }
            Ok(0)
        }
    }
}

/// Reads one length-prefixed frame of at most `max` bytes.
pub async fn read_frame<T: AsyncRead + Unpin>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let n = u32::from_be_bytes(len) as usize;
    if n > max {
        return Err(WireError::TooLarge { size: n, max }.into());
    }
    let mut buf = vec![0u8; n];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin>(io: &mut T, body: &[u8]) -> io::Result<()> {
    let n = u32::try_from(body.len()).map_err(|_| io::Error::other("frame too large"))?;
    io.write_all(&n.to_be_bytes()).await?;
    io.write_all(body).await
}

/// Codec of the chunk protocol (HAVE / GET).
#[derive(Clone, Debug, Default)]
pub struct ChunkCodec {
    pub limits: WireLimits,
}

impl libp2p::request_response::Codec for ChunkCodec {
    type Protocol = StreamProtocol;
    type Request = ChunkRequest;
    type Response = ChunkResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<ChunkRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_frame(io, self.limits.max_id_header()).await?;
        Ok(decode_chunk_request(&buf, &self.limits)?)
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ChunkResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_frame(io, self.limits.max_id_header()).await?;
        let head: ChunkResponseHead = from_cbor(&buf)?;
        let body_len = check_response_head(&head, &self.limits)?;
        match head {
            ChunkResponseHead::Have(sizes) => Ok(ChunkResponse::Have(sizes)),
            ChunkResponseHead::Refused(r) => Ok(ChunkResponse::Refused(r)),
            ChunkResponseHead::Get(items) => {
                let mut body = vec![0u8; body_len];
                io.read_exact(&mut body).await?;
                let body = Bytes::from(body);
                let mut off = 0usize;
                let mut out = Vec::with_capacity(items.len());
                let mut decompressor = None;
                for (id, h) in items {
                    let body = match h {
                        ItemHead::Data(len) => {
                            let len = len as usize;
                            // In bounds: the lengths summed to body_len above.
                            let data = body.slice(off..off + len);
                            off += len;
                            let valid = id.matches(&data);
                            ItemBody::Data {
                                data,
                                valid,
                                wire_len: len,
                            }
                        }
                        ItemHead::Zstd(len, raw_len) => {
                            let len = len as usize;
                            // In bounds, as above.
                            let frame = &body[off..off + len];
                            off += len;
                            let d = match &mut decompressor {
                                Some(d) => d,
                                None => decompressor.insert(zstd::bulk::Decompressor::new()?),
                            };
                            match decompress_item(
                                d,
                                frame,
                                raw_len as usize,
                                self.limits.max_response_bytes,
                            ) {
                                Ok(data) => {
                                    let valid = id.matches(&data);
                                    ItemBody::Data {
                                        data: Bytes::from(data),
                                        valid,
                                        wire_len: len,
                                    }
                                }
                                Err(error) => ItemBody::Undecodable {
                                    wire_len: len,
                                    error,
                                },
                            }
                        }
                        ItemHead::Missing => ItemBody::Missing,
                        ItemHead::Deferred => ItemBody::Deferred,
                    };
                    out.push(GetItem { id, body });
                }
                Ok(ChunkResponse::Get(out))
            }
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: ChunkRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &to_cbor(&req)?).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: ChunkResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match resp {
            ChunkResponse::Have(s) => write_frame(io, &to_cbor(&ChunkResponseHead::Have(s))?).await,
            ChunkResponse::Refused(r) => {
                write_frame(io, &to_cbor(&ChunkResponseHead::Refused(r))?).await
            }
            ChunkResponse::Get(items) => {
                let len32 =
                    |n: usize| u32::try_from(n).map_err(|_| io::Error::other("chunk too large"));
                let mut head: Vec<(ChunkId, ItemHead)> = Vec::with_capacity(items.len());
                for it in &items {
                    let h = match &it.body {
                        ItemBody::Data { data, .. } => ItemHead::Data(len32(data.len())?),
                        ItemBody::Zstd { frame, raw_len } => {
                            ItemHead::Zstd(len32(frame.len())?, *raw_len)
                        }
                        ItemBody::Missing => ItemHead::Missing,
                        ItemBody::Deferred => ItemHead::Deferred,
                        ItemBody::Undecodable { .. } => {
                            return Err(io::Error::other("cannot send an undecodable item"))
                        }
                    };
                    head.push((it.id, h));
                }
                write_frame(io, &to_cbor(&ChunkResponseHead::Get(head))?).await?;
                for it in &items {
                    match &it.body {
                        ItemBody::Data { data, .. } => io.write_all(data).await?,
                        ItemBody::Zstd { frame, .. } => io.write_all(frame).await?,
                        _ => {}
                    }
                }
                Ok(())
            }
        }
    }
}

/// Codec of the control protocol (application requests and peer exchange).
#[derive(Clone, Debug, Default)]
pub struct CtlCodec {
    pub limits: WireLimits,
}

impl libp2p::request_response::Codec for CtlCodec {
    type Protocol = StreamProtocol;
    type Request = CtlRequest;
    type Response = CtlResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<CtlRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_frame(io, self.limits.max_control_frame()).await?;
        Ok(decode_ctl_request(&buf, &self.limits)?)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<CtlResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_frame(io, self.limits.max_control_frame()).await?;
        Ok(decode_ctl_response(&buf, &self.limits)?)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: CtlRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &to_cbor(&req)?).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: CtlResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &to_cbor(&resp)?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn chunk_request_roundtrip() {
        let mut c = ChunkCodec::default();
        let req = ChunkRequest::Get {
            ids: vec![ChunkId::of(b"a"), ChunkId::of(b"b")],
            zstd_level: Some(3),
        };
        let mut buf = Vec::new();
        block_on(c.write_request(&CHUNK_PROTOCOL, &mut buf, req.clone())).unwrap();
        let mut rd = &buf[..];
        let back = block_on(c.read_request(&CHUNK_PROTOCOL, &mut rd)).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn get_response_roundtrip_verifies_hashes() {
        let mut c = ChunkCodec::default();
        let good = Bytes::from_static(b"hello chunk");
        let resp = ChunkResponse::Get(vec![
            GetItem {
                id: ChunkId::of(&good),
                body: ItemBody::raw(good.clone()),
            },
            GetItem {
                // A lie: the bytes do not hash to this id.
                id: ChunkId::of(b"something else"),
                body: ItemBody::raw(Bytes::from_static(b"forged")),
            },
            GetItem {
                id: ChunkId::of(b"x"),
                body: ItemBody::Missing,
            },
            GetItem {
                id: ChunkId::of(b"y"),
                body: ItemBody::Deferred,
            },
        ]);
        let mut buf = Vec::new();
        block_on(c.write_response(&CHUNK_PROTOCOL, &mut buf, resp)).unwrap();
        let mut rd = &buf[..];
        let ChunkResponse::Get(items) =
            block_on(c.read_response(&CHUNK_PROTOCOL, &mut rd)).unwrap()
        else {
            panic!("wrong variant")
        };
        assert_eq!(items.len(), 4);
        match &items[0].body {
            ItemBody::Data {
                data,
                valid,
                wire_len,
            } => {
                assert_eq!(data, &good);
                assert!(*valid);
                assert_eq!(*wire_len, good.len());
            }
            other => panic!("{other:?}"),
        }
        match &items[1].body {
            ItemBody::Data { valid, .. } => assert!(!*valid),
            other => panic!("{other:?}"),
        }
        assert!(matches!(items[2].body, ItemBody::Missing));
        assert!(matches!(items[3].body, ItemBody::Deferred));
    }

    #[test]
    fn oversized_frame_is_refused_before_allocation() {
        let mut c = ChunkCodec::default();
        let mut buf = u32::MAX.to_be_bytes().to_vec();
        buf.extend_from_slice(&[0u8; 16]);
        let mut rd = &buf[..];
        let err = block_on(c.read_request(&CHUNK_PROTOCOL, &mut rd)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn response_announcing_too_much_body_is_refused() {
        let limits = WireLimits::default();
        let head = ChunkResponseHead::Get(vec![
            (ChunkId::of(b"a"), ItemHead::Data(u32::MAX)),
            (ChunkId::of(b"b"), ItemHead::Data(u32::MAX)),
        ]);
        assert!(matches!(
            check_response_head(&head, &limits),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn largest_legal_headers_fit_the_frame_bound() {
        let limits = WireLimits::default();
        let n = limits.max_ids_per_request;
        for h in [ItemHead::Data(u32::MAX), ItemHead::Zstd(u32::MAX, u32::MAX)] {
            let head = ChunkResponseHead::Get(vec![(ChunkId([0xff; 32]), h); n]);
            assert!(to_cbor(&head).unwrap().len() <= limits.max_id_header());
        }
        let reqs = [
            ChunkRequest::Have(vec![ChunkId([0xff; 32]); n]),
            ChunkRequest::Get {
                ids: vec![ChunkId([0xff; 32]); n],
                zstd_level: Some(i32::MIN),
            },
        ];
        for req in reqs {
            let buf = to_cbor(&req).unwrap();
            assert!(buf.len() <= limits.max_id_header());
            assert_eq!(decode_chunk_request(&buf, &limits), Ok(req));
        }
    }

    #[test]
    fn too_many_ids_are_refused() {
        let limits = WireLimits {
            max_ids_per_request: 4,
            ..Default::default()
        };
        let req = ChunkRequest::Have(vec![ChunkId::of(b"a"); 5]);
        let buf = to_cbor(&req).unwrap();
        assert_eq!(
            decode_chunk_request(&buf, &limits),
            Err(WireError::Invalid("too many ids in request"))
        );
    }

    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let limits = WireLimits::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let valid = to_cbor(&ChunkRequest::Get {
            ids: vec![ChunkId::of(b"a"); 3],
            zstd_level: Some(3),
        })
        .unwrap();
        for i in 0..5000 {
            let buf: Vec<u8> = if i % 2 == 0 {
                let n = rng.random_range(0..200);
                (0..n).map(|_| rng.random()).collect()
            } else {
                // Mutate a valid message: the interesting inputs are near-valid ones.
                let mut b = valid.clone();
                let k = rng.random_range(0..b.len());
                b[k] = rng.random();
                b.truncate(rng.random_range(0..=b.len()));
                b
            };
            let _ = decode_chunk_request(&buf, &limits);
            let _ = decode_ctl_request(&buf, &limits);
            let _ = decode_ctl_response(&buf, &limits);
            let _ = from_cbor::<ChunkResponseHead>(&buf).map(|h| check_response_head(&h, &limits));
        }
    }

    #[test]
    fn ctl_roundtrip_and_bounds() {
        let limits = WireLimits {
            max_control_bytes: 8,
            ..Default::default()
        };
        let ok = to_cbor(&CtlRequest::App(vec![1, 2, 3])).unwrap();
        assert_eq!(
            decode_ctl_request(&ok, &limits),
            Ok(CtlRequest::App(vec![1, 2, 3]))
        );
        let big = to_cbor(&CtlRequest::App(vec![0; 9])).unwrap();
        assert!(matches!(
            decode_ctl_request(&big, &limits),
            Err(WireError::TooLarge { size: 9, max: 8 })
        ));
    }

    /// Compressible bytes: a short pattern repeated.
    fn compressible(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| seed.wrapping_add((i % 7) as u8))
            .collect::<Vec<u8>>()
            .into()
    }

    fn roundtrip(resp: ChunkResponse, limits: &WireLimits) -> io::Result<ChunkResponse> {
        let mut c = ChunkCodec {
            limits: limits.clone(),
        };
        let mut buf = Vec::new();
        block_on(c.write_response(&CHUNK_PROTOCOL, &mut buf, resp))?;
        let mut rd = &buf[..];
        block_on(c.read_response(&CHUNK_PROTOCOL, &mut rd))
    }

    fn get_items(resp: ChunkResponse) -> Vec<GetItem> {
        match resp {
            ChunkResponse::Get(items) => items,
            other => panic!("not a GET answer: {other:?}"),
        }
    }

    #[test]
    fn request_without_compression_field_decodes_as_uncompressed() {
        #[derive(Serialize)]
        enum OldGet {
            Get { ids: Vec<ChunkId> },
        }
        let ids = vec![ChunkId::of(b"a")];
        let buf = to_cbor(&OldGet::Get { ids: ids.clone() }).unwrap();
        assert_eq!(
            decode_chunk_request(&buf, &WireLimits::default()),
            Ok(ChunkRequest::Get {
                ids,
                zstd_level: None
            })
        );
    }

    #[test]
    fn compressed_items_roundtrip_and_verify() {
        let limits = WireLimits::default();
        let squeezable = compressible(64 * 1024, 1);
        let noise: Bytes = {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(1);
            (0..4096)
                .map(|_| rng.random::<u8>())
                .collect::<Vec<u8>>()
                .into()
        };
        let forged = compressible(1000, 9);
        let mut items = vec![
            GetItem {
                id: ChunkId::of(&squeezable),
                body: ItemBody::raw(squeezable.clone()),
            },
            GetItem {
                id: ChunkId::of(&noise),
                body: ItemBody::raw(noise.clone()),
            },
            GetItem {
                // Decompresses fine but is not the chunk named.
                id: ChunkId::of(b"another chunk"),
                body: ItemBody::raw(forged.clone()),
            },
            GetItem {
                id: ChunkId::of(b"m"),
                body: ItemBody::Missing,
            },
        ];
        compress_items(&mut items, 3);
        let ItemBody::Zstd { frame, raw_len } = &items[0].body else {
            panic!("compressible chunk sent raw: {:?}", items[0].body)
        };
        assert_eq!(*raw_len as usize, squeezable.len());
        let frame_len = frame.len();
        assert!(frame_len < squeezable.len() / 10, "{frame_len}");
        assert!(
            matches!(items[1].body, ItemBody::Data { .. }),
            "incompressible chunk must go raw"
        );
        assert!(matches!(items[2].body, ItemBody::Zstd { .. }));

        let back = get_items(roundtrip(ChunkResponse::Get(items), &limits).unwrap());
        assert_eq!(back.len(), 4);
        match &back[0].body {
            ItemBody::Data {
                data,
                valid,
                wire_len,
            } => {
                assert_eq!(data, &squeezable);
                assert!(*valid);
                assert_eq!(*wire_len, frame_len);
            }
            other => panic!("{other:?}"),
        }
        match &back[1].body {
            ItemBody::Data {
                data,
                valid,
                wire_len,
            } => {
                assert_eq!(data, &noise);
                assert!(*valid);
                assert_eq!(*wire_len, noise.len());
            }
            other => panic!("{other:?}"),
        }
        match &back[2].body {
            ItemBody::Data { data, valid, .. } => {
                assert_eq!(data, &forged);
                assert!(!*valid, "hash is checked on the uncompressed bytes");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(back[3].body, ItemBody::Missing));
    }

    /// A zstd frame of `len` zero bytes, written by the streaming encoder so the frame
    /// header does not announce its size.
    fn zeros_frame(len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        zstd::stream::copy_encode(io::Read::take(io::repeat(0), len), &mut out, 3).unwrap();
        out
    }

    #[test]
    fn zstd_bomb_is_refused() {
        let bomb = zeros_frame(256 << 20);
        assert!(bomb.len() < 1 << 20, "bomb frame is {} bytes", bomb.len());
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        // Declared within bounds: decoding stops at the declared length.
        let err = decompress_item(&mut d, &bomb, 1 << 20, 8 << 20).unwrap_err();
        assert!(
            matches!(err, WireError::Decompress { declared, .. } if declared == 1 << 20),
            "{err:?}"
        );
        // Declared beyond the limit: refused before decoding.
        assert_eq!(
            decompress_item(&mut d, &bomb, 1 << 30, 8 << 20),
            Err(WireError::TooLarge {
                size: 1 << 30,
                max: 8 << 20
            })
        );
        // In a response: the item is undecodable, the rest of the response still reads.
        let good = compressible(1000, 3);
        let resp = ChunkResponse::Get(vec![
            GetItem {
                id: ChunkId::of(b"bomb"),
                body: ItemBody::Zstd {
                    frame: Bytes::from(bomb),
                    raw_len: 4096,
                },
            },
            GetItem {
                id: ChunkId::of(&good),
                body: ItemBody::raw(good.clone()),
            },
        ]);
        let back = get_items(roundtrip(resp, &WireLimits::default()).unwrap());
        assert!(
            matches!(
                &back[0].body,
                ItemBody::Undecodable {
                    error: WireError::Decompress { declared: 4096, .. },
                    ..
                }
            ),
            "{:?}",
            back[0].body
        );
        assert!(matches!(&back[1].body, ItemBody::Data { valid: true, .. }));
    }

    #[test]
    fn lying_uncompressed_length_is_refused() {
        let chunk = compressible(1000, 5);
        let frame = zstd::bulk::compress(&chunk, 3).unwrap();
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        assert_eq!(
            decompress_item(&mut d, &frame, 1000, 1 << 20).unwrap(),
            chunk.to_vec()
        );
        // Claims more than the frame holds.
        assert!(matches!(
            decompress_item(&mut d, &frame, 2000, 1 << 20),
            Err(WireError::LengthMismatch { declared: 2000, .. } | WireError::Decompress { .. })
        ));
        // Same with a frame whose header does not announce its size.
        let unsized_frame = zeros_frame(1000);
        assert_eq!(
            decompress_item(&mut d, &unsized_frame, 2000, 1 << 20),
            Err(WireError::LengthMismatch {
                declared: 2000,
                actual: 1000
            })
        );
        // Claims less: decoding stops at the claim.
        assert!(matches!(
            decompress_item(&mut d, &frame, 999, 1 << 20),
            Err(WireError::Decompress { declared: 999, .. })
        ));
        assert!(matches!(
            decompress_item(&mut d, &unsized_frame, 999, 1 << 20),
            Err(WireError::Decompress { declared: 999, .. })
        ));
        // Garbage is no frame at all.
        assert!(matches!(
            decompress_item(&mut d, b"not zstd", 10, 1 << 20),
            Err(WireError::Decompress { .. })
        ));
        // Through the codec: an offence for that item only.
        let resp = ChunkResponse::Get(vec![GetItem {
            id: ChunkId::of(&chunk),
            body: ItemBody::Zstd {
                frame: Bytes::from(frame),
                raw_len: 999,
            },
        }]);
        let back = get_items(roundtrip(resp, &WireLimits::default()).unwrap());
        assert!(matches!(back[0].body, ItemBody::Undecodable { .. }));
    }

    #[test]
    fn uncompressed_total_is_bounded_like_a_raw_response() {
        let limits = WireLimits {
            max_response_bytes: 10_000,
            ..Default::default()
        };
        // Tiny frames that declare more than a whole response may hold.
        let head = ChunkResponseHead::Get(vec![
            (ChunkId::of(b"a"), ItemHead::Zstd(100, 6_000)),
            (ChunkId::of(b"b"), ItemHead::Zstd(100, 6_000)),
        ]);
        assert_eq!(
            check_response_head(&head, &limits),
            Err(WireError::TooLarge {
                size: 12_000,
                max: 10_000
            })
        );
        let head = ChunkResponseHead::Get(vec![
            (ChunkId::of(b"a"), ItemHead::Zstd(100, 6_000)),
            (ChunkId::of(b"b"), ItemHead::Data(4_000)),
        ]);
        assert_eq!(check_response_head(&head, &limits), Ok(4_100));
        // The reader refuses such a response as malformed before reading its body.
        let chunk = compressible(6_000, 1);
        let item = || GetItem {
            id: ChunkId::of(&chunk),
            body: ItemBody::raw(chunk.clone()),
        };
        let mut items = vec![item(), item()];
        compress_items(&mut items, 3);
        let err = roundtrip(ChunkResponse::Get(items), &limits).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn zstd_levels_are_clamped() {
        assert_eq!(clamp_zstd_level(i32::MIN), ZSTD_MIN_LEVEL);
        assert_eq!(clamp_zstd_level(-5), 1);
        assert_eq!(clamp_zstd_level(0), 1);
        assert_eq!(clamp_zstd_level(3), 3);
        assert_eq!(clamp_zstd_level(19), 19);
        assert_eq!(clamp_zstd_level(22), 19);
        assert_eq!(clamp_zstd_level(i32::MAX), ZSTD_MAX_LEVEL);
        // Out-of-range requests still compress (at the clamped level) instead of failing.
        let chunk = compressible(8192, 2);
        for level in [i32::MIN, 0, 1000, i32::MAX] {
            let mut items = vec![GetItem {
                id: ChunkId::of(&chunk),
                body: ItemBody::raw(chunk.clone()),
            }];
            compress_items(&mut items, level);
            assert!(
                matches!(items[0].body, ItemBody::Zstd { .. }),
                "level {level}"
            );
        }
    }
}
