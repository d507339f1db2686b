//! A peer that serves wrong bytes for chunk ids is caught by hash verification, penalised
//! and finally banned; the chunks come from an honest peer instead.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{init_tracing, make_chunks, node, provider_with, wait_for};
use mesh::{MemoryChunks, MeshEvent, NoChunks, Sources, SwarmKey};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_peer_is_rejected_and_chunks_come_from_honest_peer() {
    init_tracing();
    let key = SwarmKey::generate();
    let chunks = make_chunks(128, 64 * 1024, 1);
    let honest = node(key, provider_with(&chunks), |_| {}).await;
    // The liar claims every chunk but serves other bytes under each id.
    let lies = MemoryChunks::new();
    for (i, (id, b)) in chunks.iter().enumerate() {
        let mut forged = b.to_vec();
        forged[i % b.len()] ^= 0xff;
        lies.insert_as(*id, Bytes::from(forged));
    }
    let liar = node(key, Arc::new(lies), |_| {}).await;
    let mut fetcher = node(key, Arc::new(NoChunks), |c| {
        c.bootstrap = vec![honest.addr.clone(), liar.addr.clone()];
        c.ban_after_offences = 3;
    })
    .await;
    let (h, l) = (honest.handle.local_peer_id(), liar.handle.local_peer_id());
    let mut seen = std::collections::HashSet::new();
    wait_for(&mut fetcher.events, 10, "connections to both", |e| {
        if let MeshEvent::PeerConnected { peer, .. } = e {
            seen.insert(*peer);
        }
        (seen.contains(&h) && seen.contains(&l)).then_some(())
    })
    .await;

    let ids: Vec<_> = chunks.iter().map(|(id, _)| *id).collect();
    // Both claim every chunk, the liar listed first: it certainly gets work.
    let fetch = fetcher
        .handle
        .fetch(ids.clone(), Sources::HoldingAll(vec![l, h]))
        .await
        .unwrap();
    let (got, outcome) = fetch.collect().await.expect("fetch completes");
    assert!(outcome.missing.is_empty(), "missing {:?}", outcome.missing);
    assert_eq!(got.len(), chunks.len());
    for (id, b) in &chunks {
        assert_eq!(got.get(id), Some(b), "chunk {id} wrong");
    }
    let bytes_from = |p| {
        outcome
            .per_peer_bytes
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, b)| *b)
            .unwrap_or(0)
    };
    assert_eq!(bytes_from(l), 0, "a forged chunk was accepted");
    assert_eq!(bytes_from(h), (128 * 64 * 1024) as u64);

    // The liar is penalised for every corrupt response (possibly after the fetch ended:
    // an honest duplicate may finish first); each new fetch asks it again, until it
    // crosses the ban threshold.
    let mut banned = false;
    let mut liar_gone = false;
    for _ in 0..5 {
        banned = wait_for(&mut fetcher.events, 10, "a penalty", |e| match e {
            MeshEvent::PeerPenalised { peer, banned, .. } => {
                assert_eq!(*peer, l, "the honest peer was penalised");
                Some(*banned)
            }
            MeshEvent::PeerDisconnected { peer } if *peer == l => {
                liar_gone = true;
                None
            }
            _ => None,
        })
        .await;
        if banned {
            break;
        }
        let f = fetcher
            .handle
            .fetch(ids[..8].to_vec(), Sources::HoldingAll(vec![l, h]))
            .await
            .unwrap();
        let (got, o) = f.collect().await.unwrap();
        assert!(o.missing.is_empty());
        assert!(got.iter().all(|(id, b)| id.matches(b)));
    }
    assert!(banned, "liar never banned");
    if !liar_gone {
        wait_for(&mut fetcher.events, 10, "liar disconnected", |e| match e {
            MeshEvent::PeerDisconnected { peer } if *peer == l => Some(()),
            _ => None,
        })
        .await;
    }
    assert!(!fetcher.handle.connected_peers().await.unwrap().contains(&l));
    assert!(fetcher.handle.connected_peers().await.unwrap().contains(&h));
}
