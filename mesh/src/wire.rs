//! Wire formats of roam's two request/response protocols and their bounded codecs.
//!
//! Every frame starts with a 4-byte big-endian length followed by a CBOR header. A chunk
//! response is followed by the raw bytes of its chunks, so multi-megabyte payloads are read
//! straight into one buffer and sliced without a CBOR pass over them. Every decoder checks
//! the declared length against a limit before it allocates, returns a typed [`WireError`]
//! on bad input and never panics. Chunk hashes are verified while the response is read
//! (on the connection's task, not on the swarm task).

use std::io;

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use crate::types::ChunkId;

pub const CHUNK_PROTOCOL: StreamProtocol = StreamProtocol::new("/roam/chunk/1");
pub const CTL_PROTOCOL: StreamProtocol = StreamProtocol::new("/roam/ctl/1");

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
    /// most 46 bytes (32-byte id, its framing, an item head), 64 leaves a margin.
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
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("malformed CBOR: {0}")]
    Decode(String),
    #[error("invalid message: {0}")]
    Invalid(&'static str),
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
    /// Send me these chunks (as many as fit in one response).
    Get(Vec<ChunkId>),
}

/// The head of one entry of a GET response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemHead {
    /// `len` bytes of this chunk follow in the body.
    Data(u32),
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

#[derive(Clone, Debug)]
pub enum ItemBody {
    /// Chunk bytes. On the receiving side `valid` says whether blake3(data) == id.
    Data {
        data: Bytes,
        valid: bool,
    },
    Missing,
    Deferred,
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
        ChunkRequest::Have(ids) | ChunkRequest::Get(ids) => ids.len(),
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
            let mut total: usize = 0;
            for (_, h) in items {
                if let ItemHead::Data(len) = h {
                    total = total.saturating_add(*len as usize);
                }
            }
            if total > limits.max_response_bytes {
                return Err(WireError::TooLarge {
                    size: total,
                    max: limits.max_response_bytes,
                });
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
                for (id, h) in items {
                    let body = match h {
                        ItemHead::Data(len) => {
                            let len = len as usize;
                            // In bounds: the lengths summed to body_len above.
                            let data = body.slice(off..off + len);
                            off += len;
                            let valid = id.matches(&data);
                            ItemBody::Data { data, valid }
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
                let head: Vec<(ChunkId, ItemHead)> = items
                    .iter()
                    .map(|it| {
                        let h = match &it.body {
                            ItemBody::Data { data, .. } => ItemHead::Data(data.len() as u32),
                            ItemBody::Missing => ItemHead::Missing,
                            ItemBody::Deferred => ItemHead::Deferred,
                        };
                        (it.id, h)
                    })
                    .collect();
                write_frame(io, &to_cbor(&ChunkResponseHead::Get(head))?).await?;
                for it in &items {
                    if let ItemBody::Data { data, .. } = &it.body {
                        io.write_all(data).await?;
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
        let req = ChunkRequest::Get(vec![ChunkId::of(b"a"), ChunkId::of(b"b")]);
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
                body: ItemBody::Data {
                    data: good.clone(),
                    valid: true,
                },
            },
            GetItem {
                // A lie: the bytes do not hash to this id.
                id: ChunkId::of(b"something else"),
                body: ItemBody::Data {
                    data: Bytes::from_static(b"forged"),
                    valid: true,
                },
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
            ItemBody::Data { data, valid } => {
                assert_eq!(data, &good);
                assert!(*valid);
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
        let head = ChunkResponseHead::Get(vec![(ChunkId([0xff; 32]), ItemHead::Data(u32::MAX)); n]);
        assert!(to_cbor(&head).unwrap().len() <= limits.max_id_header());
        let req = ChunkRequest::Have(vec![ChunkId([0xff; 32]); n]);
        let buf = to_cbor(&req).unwrap();
        assert!(buf.len() <= limits.max_id_header());
        assert!(decode_chunk_request(&buf, &limits).is_ok());
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
        let valid = to_cbor(&ChunkRequest::Get(vec![ChunkId::of(b"a"); 3])).unwrap();
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
}
