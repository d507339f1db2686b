//! Oversized and malformed bytes on the chunk and control protocols are refused without
//! harm: the node keeps serving well-behaved peers afterwards.

mod common;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use common::{init_tracing, make_chunks, node, provider_with, wait_event, wait_for};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::StreamProtocol;
use mesh::{Identity, MeshEvent, NoChunks, Sources, SwarmKey};

/// Writes its request bytes verbatim and reads whatever comes back (at most 16 MiB).
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut v = Vec::new();
        io.take(1 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut v = Vec::new();
        io.take(16 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&r).await
    }
}

fn cbor<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_are_refused_without_harm() {
    init_tracing();
    let key = SwarmKey::generate();
    let chunks = make_chunks(32, 64 * 1024, 4);
    let server = node(key, provider_with(&chunks), |_| {}).await;
    let ids: Vec<_> = chunks.iter().map(|(id, _)| *id).collect();

    // A raw client on the node's own transport stack (so it holds the key), speaking
    // both of the node's protocols.
    let rr_cfg = request_response::Config::default().with_request_timeout(Duration::from_secs(10));
    let behaviour = Raw {
        chunk: request_response::Behaviour::with_codec(
            RawCodec,
            [(mesh::wire::CHUNK_PROTOCOL, ProtocolSupport::Outbound)],
            rr_cfg.clone(),
        ),
        ctl: request_response::Behaviour::with_codec(
            RawCodec,
            [(mesh::wire::CTL_PROTOCOL, ProtocolSupport::Outbound)],
            rr_cfg,
        ),
    };
    let mut raw = mesh::transport::build_swarm(
        &Identity::generate(),
        Some(&key),
        Duration::from_secs(60),
        behaviour,
    )
    .unwrap();
    let server_id = server.handle.local_peer_id();
    raw.add_peer_address(server_id, server.addr.clone());

    let too_many_ids = mesh::wire::ChunkRequest::Have(vec![ids[0]; 5000]);
    let huge_app = mesh::wire::CtlRequest::App(vec![0u8; (1 << 20) + 1]);
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        ("length prefix of 4 GiB", {
            let mut v = u32::MAX.to_be_bytes().to_vec();
            v.extend_from_slice(&[0xAB; 64]);
            v
        }),
        (
            "garbage CBOR",
            framed(&[0xff, 0x00, 0x13, 0x37, 0x9f, 0x9f, 0x9f]),
        ),
        ("deep nesting", framed(&[0x81; 4000])),
        ("5000 ids in one request", framed(&cbor(&too_many_ids))),
        ("control payload over 1 MiB", framed(&cbor(&huge_app))),
        ("truncated frame", {
            let mut v = 1000u32.to_be_bytes().to_vec();
            v.extend_from_slice(&[0x82; 10]);
            v
        }),
        (
            "array claiming 2^32 entries",
            framed(&[0xa1, 0x63, b'G', b'e', b't', 0x9b, 0, 0, 0, 1, 0, 0, 0, 0]),
        ),
        ("empty", Vec::new()),
    ];
    let n = attacks.len();
    for (_, bytes) in &attacks {
        raw.behaviour_mut()
            .chunk
            .send_request(&server_id, bytes.clone());
        raw.behaviour_mut()
            .ctl
            .send_request(&server_id, bytes.clone());
    }
    let mut refused = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while refused < 2 * n {
        let ev = tokio::time::timeout_at(deadline, raw.select_next_some())
            .await
            .expect("raw client events");
        let SwarmEvent::Behaviour(ev) = ev else {
            continue;
        };
        let (RawEvent::Chunk(ev) | RawEvent::Ctl(ev)) = ev;
        match ev {
            request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            } => {
                // A refusal is a closed stream: nothing comes back.
                assert!(
                    response.is_empty(),
                    "server answered garbage with {} bytes",
                    response.len()
                );
                refused += 1;
            }
            request_response::Event::OutboundFailure { .. } => refused += 1,
            _ => {}
        }
    }

    // The server is unharmed: a well-behaved peer fetches everything...
    let mut good = node(key, Arc::new(NoChunks), |c| {
        c.bootstrap = vec![server.addr.clone()]
    })
    .await;
    wait_for(&mut good.events, 10, "connection to server", |e| match e {
        MeshEvent::PeerConnected { peer, .. } if *peer == server_id => Some(()),
        _ => None,
    })
    .await;
    let (got, outcome) = good
        .handle
        .fetch(ids.clone(), Sources::Peers(vec![server_id]))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(outcome.missing.is_empty());
    assert!(chunks.iter().all(|(id, b)| got.get(id) == Some(b)));

    // ...and still answers control requests.
    let mut server = server;
    let h = good.handle.clone();
    let req = tokio::spawn(async move { h.control_request(server_id, b"ping".to_vec()).await });
    let ev = wait_event(&mut server.events, 10, "control request", |e| {
        matches!(e, MeshEvent::ControlRequest { .. })
    })
    .await;
    let MeshEvent::ControlRequest { data, reply, .. } = ev else {
        unreachable!()
    };
    assert_eq!(data, b"ping");
    reply.send(b"pong".to_vec());
    assert_eq!(req.await.unwrap().unwrap(), b"pong");
}

#[derive(NetworkBehaviour)]
struct Raw {
    chunk: request_response::Behaviour<RawCodec>,
    ctl: request_response::Behaviour<RawCodec>,
}
