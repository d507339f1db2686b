//! Optional zstd compression of a fetch: chunks arrive identical whatever the option, the
//! outcome tells what they cost on the wire, and a source whose compressed items do not
//! decode is treated like one serving corrupt chunks.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{init_tracing, make_chunks, node, provider_with, wait_for, TestNode};
use futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use mesh::wire::{ChunkCodec, ChunkRequest, ChunkResponse, GetItem, ItemBody, CHUNK_PROTOCOL};
use mesh::{
    ChunkId, FetchOptions, FetchOutcome, Identity, MeshEvent, NoChunks, PeerId, Sources, SwarmKey,
};

const CHUNK: usize = 64 * 1024;

/// `n` distinct chunks of text-like, well compressible bytes.
fn compressible_chunks(n: usize) -> Vec<(ChunkId, Bytes)> {
    (0..n)
        .map(|i| {
            let mut v = Vec::with_capacity(CHUNK);
            let mut k = 0usize;
            while v.len() < CHUNK {
                v.extend_from_slice(
                    format!("chunk {i} line {k}: the quick brown fox\n").as_bytes(),
                );
                k += 1;
            }
            v.truncate(CHUNK);
            let b = Bytes::from(v);
            (ChunkId::of(&b), b)
        })
        .collect()
}

async fn connected_pair(chunks: &[(ChunkId, Bytes)]) -> (TestNode, TestNode) {
    let key = SwarmKey::generate();
    let server = node(key, provider_with(chunks), |_| {}).await;
    let sid = server.handle.local_peer_id();
    let mut fetcher = node(key, Arc::new(NoChunks), |c| {
        c.bootstrap = vec![server.addr.clone()]
    })
    .await;
    wait_for(
        &mut fetcher.events,
        10,
        "connection to server",
        |e| match e {
            MeshEvent::PeerConnected { peer, .. } if *peer == sid => Some(()),
            _ => None,
        },
    )
    .await;
    (server, fetcher)
}

async fn bytes_received_from(f: &TestNode, p: PeerId) -> u64 {
    f.handle
        .link_stats()
        .await
        .unwrap()
        .into_iter()
        .find(|(q, _)| *q == p)
        .map(|(_, r)| r.bytes_received)
        .unwrap_or(0)
}

/// Fetches every chunk from `server` and checks they arrived intact; returns the outcome
/// and the growth of the link's received-bytes counter during the fetch.
async fn fetch_checked(
    fetcher: &TestNode,
    server: PeerId,
    chunks: &[(ChunkId, Bytes)],
    options: FetchOptions,
) -> (FetchOutcome, u64) {
    let before = bytes_received_from(fetcher, server).await;
    let ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
    let (got, outcome) = fetcher
        .handle
        .fetch_with(ids, Sources::HoldingAll(vec![server]), options)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(outcome.missing.is_empty(), "{options:?}: {outcome:?}");
    assert_eq!(got.len(), chunks.len());
    for (id, b) in chunks {
        assert_eq!(got.get(id), Some(b), "{options:?}: chunk {id} differs");
    }
    let raw: u64 = outcome.per_peer_bytes.iter().map(|(_, b)| b).sum();
    assert_eq!(raw, (chunks.len() * CHUNK) as u64);
    // One source: no endgame duplicates, so every received byte was a first copy, and the
    // link counted exactly the bytes on the wire.
    assert_eq!(outcome.wire_bytes_received, outcome.wire_bytes);
    let after = bytes_received_from(fetcher, server).await;
    (outcome, after - before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_fetch_delivers_identical_chunks_in_fewer_wire_bytes() {
    init_tracing();
    let chunks = compressible_chunks(48); // 3 MiB
    let raw_total = (chunks.len() * CHUNK) as u64;
    let (server, fetcher) = connected_pair(&chunks).await;
    let sid = server.handle.local_peer_id();

    let zstd = FetchOptions {
        zstd_level: Some(3),
    };
    let (o, link) = fetch_checked(&fetcher, sid, &chunks, zstd).await;
    assert!(
        o.wire_bytes * 4 < raw_total,
        "compressed fetch took {} wire bytes for {raw_total}",
        o.wire_bytes
    );
    assert_eq!(link, o.wire_bytes);

    // Without compression (the default and `fetch`): the wire carries the chunks as they are.
    let (o, link) = fetch_checked(&fetcher, sid, &chunks, FetchOptions::default()).await;
    assert_eq!(o.wire_bytes, raw_total);
    assert_eq!(link, raw_total);
    let ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
    let (_, o) = fetcher
        .handle
        .fetch(ids, Sources::HoldingAll(vec![sid]))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(o.wire_bytes, raw_total);

    // Out-of-range levels are clamped, not refused.
    let (o, _) = fetch_checked(
        &fetcher,
        sid,
        &chunks,
        FetchOptions {
            zstd_level: Some(1000),
        },
    )
    .await;
    assert!(o.wire_bytes * 4 < raw_total, "{}", o.wire_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompressible_chunks_travel_raw_even_when_compression_is_asked() {
    init_tracing();
    let chunks = make_chunks(16, CHUNK, 11);
    let (server, fetcher) = connected_pair(&chunks).await;
    let sid = server.handle.local_peer_id();
    let (o, _) = fetch_checked(
        &fetcher,
        sid,
        &chunks,
        FetchOptions {
            zstd_level: Some(19),
        },
    )
    .await;
    assert_eq!(o.wire_bytes, (16 * CHUNK) as u64);
}

#[derive(NetworkBehaviour)]
struct Fake {
    chunk: request_response::Behaviour<ChunkCodec>,
}

/// A zstd frame of `len` zero bytes.
fn zeros_frame(len: u64) -> Bytes {
    let mut out = Vec::new();
    let src = std::io::Read::take(std::io::repeat(0), len);
    zstd::stream::copy_encode(src, &mut out, 3).unwrap();
    Bytes::from(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_of_undecodable_frames_is_penalised_and_chunks_come_from_honest_peer() {
    init_tracing();
    let key = SwarmKey::generate();
    let chunks = compressible_chunks(32);
    let honest = node(key, provider_with(&chunks), |_| {}).await;
    let h = honest.handle.local_peer_id();

    // A fake source on the node's own transport stack and codec: it answers every GET with
    // zstd "bombs" (a frame of 64 MiB of zeros declared as one 64 KiB chunk).
    let rr_cfg = request_response::Config::default().with_request_timeout(Duration::from_secs(10));
    let mut fake = mesh::transport::build_swarm(
        &Identity::generate(),
        Some(&key),
        Duration::from_secs(60),
        Fake {
            chunk: request_response::Behaviour::with_codec(
                ChunkCodec::default(),
                [(CHUNK_PROTOCOL, ProtocolSupport::Full)],
                rr_cfg,
            ),
        },
    )
    .unwrap();
    let f = *fake.local_peer_id();
    fake.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let fake_addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = fake.select_next_some().await {
            break address;
        }
    };
    let bomb = zeros_frame(64 << 20);
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let served_by_fake = served.clone();
    let fake_task = tokio::spawn(async move {
        loop {
            let ev = fake.select_next_some().await;
            let SwarmEvent::Behaviour(FakeEvent::Chunk(request_response::Event::Message {
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            })) = ev
            else {
                continue;
            };
            let ChunkRequest::Get { ids, zstd_level } = request else {
                continue;
            };
            assert_eq!(
                zstd_level,
                Some(3),
                "the fetch's level travels in the request"
            );
            let items = ids
                .into_iter()
                .map(|id| GetItem {
                    id,
                    body: ItemBody::Zstd {
                        frame: bomb.clone(),
                        raw_len: CHUNK as u32,
                    },
                })
                .collect();
            served_by_fake.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = fake
                .behaviour_mut()
                .chunk
                .send_response(channel, ChunkResponse::Get(items));
        }
    });

    let mut fetcher = node(key, Arc::new(NoChunks), |c| {
        c.bootstrap = vec![honest.addr.clone()]
    })
    .await;
    wait_for(
        &mut fetcher.events,
        10,
        "connection to honest",
        |e| match e {
            MeshEvent::PeerConnected { peer, .. } if *peer == h => Some(()),
            _ => None,
        },
    )
    .await;
    assert_eq!(fetcher.handle.dial(fake_addr).await.unwrap(), f);

    let ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
    // The fake is listed first: it certainly gets work.
    let (got, outcome) = fetcher
        .handle
        .fetch_with(
            ids,
            Sources::HoldingAll(vec![f, h]),
            FetchOptions {
                zstd_level: Some(3),
            },
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(outcome.missing.is_empty(), "{outcome:?}");
    for (id, b) in &chunks {
        assert_eq!(got.get(id), Some(b));
    }
    assert!(served.load(std::sync::atomic::Ordering::SeqCst) > 0);
    let from = |p| {
        outcome
            .per_peer_bytes
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, b)| *b)
            .unwrap_or(0)
    };
    assert_eq!(from(f), 0, "a bomb was accepted");
    assert_eq!(from(h), (32 * CHUNK) as u64);
    // The bombs were received (and counted) but are no first copies.
    assert!(outcome.wire_bytes_received > outcome.wire_bytes);
    let reason = wait_for(
        &mut fetcher.events,
        10,
        "penalty of the fake",
        |e| match e {
            MeshEvent::PeerPenalised { peer, reason, .. } => {
                assert_eq!(*peer, f, "the honest peer was penalised");
                Some(reason.clone())
            }
            _ => None,
        },
    )
    .await;
    assert!(reason.contains("undecodable"), "{reason}");
    fake_task.abort();
}
