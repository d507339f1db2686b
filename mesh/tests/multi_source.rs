//! Multi-source fetch: work is split across holders; the part of a peer that leaves
//! mid-fetch is fetched from the others.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use common::{init_tracing, make_chunks, node, provider_with, wait_for, TestNode};
use mesh::{FetchItem, MeshEvent, NoChunks, PeerId, Sources, SwarmKey};

const MIB: usize = 1 << 20;

async fn setup(
    n_servers: usize,
    chunks: &[(mesh::ChunkId, bytes::Bytes)],
    rate: u64,
) -> (Vec<TestNode>, TestNode) {
    let key = SwarmKey::generate();
    let mut servers = Vec::new();
    for _ in 0..n_servers {
        servers.push(
            node(key, provider_with(chunks), |c| {
                c.upload_limit_bps = Some(rate);
            })
            .await,
        );
    }
    let boot: Vec<_> = servers.iter().map(|s| s.addr.clone()).collect();
    let mut fetcher = node(key, Arc::new(NoChunks), |c| c.bootstrap = boot).await;
    let want: HashSet<PeerId> = servers.iter().map(|s| s.handle.local_peer_id()).collect();
    let mut seen = HashSet::new();
    wait_for(&mut fetcher.events, 10, "connections to all servers", |e| {
        if let MeshEvent::PeerConnected { peer, .. } = e {
            seen.insert(*peer);
        }
        want.is_subset(&seen).then_some(())
    })
    .await;
    (servers, fetcher)
}

fn bytes_from(o: &mesh::FetchOutcome, p: PeerId) -> u64 {
    o.per_peer_bytes
        .iter()
        .filter(|(q, _)| *q == p)
        .map(|(_, b)| *b)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_is_split_across_holders() {
    init_tracing();
    let chunks = make_chunks(96, 64 * 1024, 2); // 6 MiB
    let (servers, fetcher) = setup(3, &chunks, 8 * MIB as u64).await;
    let ids: Vec<_> = chunks.iter().map(|(id, _)| *id).collect();
    let peers: Vec<PeerId> = servers.iter().map(|s| s.handle.local_peer_id()).collect();

    // HAVE answers sizes, and None for what a peer does not hold.
    let unknown = mesh::ChunkId::of(b"nobody has this");
    let sizes = fetcher
        .handle
        .have(peers[0], vec![ids[0], unknown])
        .await
        .unwrap();
    assert_eq!(sizes, vec![Some(64 * 1024), None]);

    let fetch = fetcher
        .handle
        .fetch(ids.clone(), Sources::Peers(peers.clone()))
        .await
        .unwrap();
    let (got, outcome) = fetch.collect().await.unwrap();
    assert!(outcome.missing.is_empty());
    assert_eq!(got.len(), chunks.len());
    assert!(chunks.iter().all(|(id, b)| got.get(id) == Some(b)));
    let total: u64 = peers.iter().map(|p| bytes_from(&outcome, *p)).sum();
    assert_eq!(total, (96 * 64 * 1024) as u64);
    for p in &peers {
        assert!(
            bytes_from(&outcome, *p) > 0,
            "peer {p} served nothing: {outcome:?}"
        );
    }
    // Link measurements come from the real transfers.
    let stats: HashMap<_, _> = fetcher
        .handle
        .link_stats()
        .await
        .unwrap()
        .into_iter()
        .collect();
    for p in &peers {
        let r = &stats[p];
        assert!(r.throughput_bps.is_some_and(|t| t > 0.0), "{r:?}");
        assert!(r.bytes_received > 0);
    }
    // A fetch of chunks nobody holds ends with them missing.
    let (_, o) = fetcher
        .handle
        .fetch(vec![unknown], Sources::Connected)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(o.missing, vec![unknown]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn part_of_a_peer_that_leaves_mid_fetch_is_fetched_elsewhere() {
    init_tracing();
    let chunks = make_chunks(192, 64 * 1024, 3); // 12 MiB
    let (servers, mut fetcher) = setup(3, &chunks, 4 * MIB as u64).await;
    let ids: Vec<_> = chunks.iter().map(|(id, _)| *id).collect();
    let peers: Vec<PeerId> = servers.iter().map(|s| s.handle.local_peer_id()).collect();
    let leaver = peers[1];

    let mut fetch = fetcher
        .handle
        .fetch(ids.clone(), Sources::Connected)
        .await
        .unwrap();
    let mut got = HashMap::new();
    let mut shut = false;
    let outcome = loop {
        match fetch.next().await.expect("fetch stream ended early") {
            FetchItem::Chunks { from, chunks: cs } => {
                for (id, b) in cs {
                    assert!(id.matches(&b));
                    got.insert(id, b);
                }
                if from == leaver && !shut {
                    // The leaver has delivered something and still has requests in flight.
                    servers[1].handle.shutdown().await.unwrap();
                    shut = true;
                }
            }
            FetchItem::Done(o) => break o,
        }
    };
    assert!(shut, "the leaving peer never delivered anything");
    assert!(
        outcome.missing.is_empty(),
        "missing {}",
        outcome.missing.len()
    );
    assert_eq!(got.len(), chunks.len());
    let from_leaver = bytes_from(&outcome, leaver);
    let total = (192 * 64 * 1024) as u64;
    assert!(from_leaver > 0);
    assert!(
        from_leaver < total / 3,
        "the leaver delivered {from_leaver} of {total}: its part was not taken over"
    );
    let others = bytes_from(&outcome, peers[0]) + bytes_from(&outcome, peers[2]);
    assert_eq!(others + from_leaver, total);
    wait_for(
        &mut fetcher.events,
        10,
        "leaver disconnected",
        |e| match e {
            MeshEvent::PeerDisconnected { peer } if *peer == leaver => Some(()),
            _ => None,
        },
    )
    .await;
}
