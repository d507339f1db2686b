//! An 8-node swarm forms from a bootstrap chain and every node hears every other's gossip.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{init_tracing, node, wait_for, TestNode};
use mesh::{MeshError, MeshEvent, NoChunks, SwarmKey, Topic};
use tokio::sync::Barrier;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_nodes_form_and_gossip_reaches_everyone() {
    init_tracing();
    const N: usize = 8;
    let key = SwarmKey::generate();
    let mut nodes: Vec<TestNode> = Vec::new();
    for i in 0..N {
        // A chain: node i only knows node i-1. Peer exchange must do the rest.
        let boot = nodes.last().map(|n: &TestNode| n.addr.clone());
        nodes.push(
            node(key, Arc::new(NoChunks), |c| {
                c.bootstrap = boot.into_iter().collect();
            })
            .await,
        );
        let _ = i;
    }
    let ids: Vec<_> = nodes.iter().map(|n| n.handle.local_peer_id()).collect();
    let barrier = Arc::new(Barrier::new(N));
    let mut tasks = Vec::new();
    for (i, mut n) in nodes.into_iter().enumerate() {
        let barrier = barrier.clone();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let me = ids[i];
            let mut subs = HashSet::new();
            wait_for(&mut n.events, 30, "subscriptions from all peers", |e| {
                if let MeshEvent::Subscribed {
                    peer,
                    topic: Topic::Placement,
                } = e
                {
                    subs.insert(*peer);
                }
                (subs.len() == N - 1).then_some(())
            })
            .await;
            barrier.wait().await;
            n.handle
                .publish(Topic::Placement, format!("dual from {me}").into_bytes())
                .await
                .expect("publish");
            let mut heard = HashSet::new();
            wait_for(&mut n.events, 30, "gossip from all peers", |e| {
                if let MeshEvent::Gossip {
                    topic: Topic::Placement,
                    source: src,
                    data,
                    ..
                } = e
                {
                    assert_eq!(data, format!("dual from {src}").as_bytes());
                    assert_ne!(*src, me, "own message delivered back");
                    heard.insert(*src);
                }
                (heard.len() == N - 1).then_some(())
            })
            .await;
            // Oversized messages are refused before they reach the network.
            let big = vec![0u8; 256 * 1024 + 1];
            assert!(matches!(
                n.handle.publish(Topic::JobEvents, big).await,
                Err(MeshError::TooLarge { .. })
            ));
            (heard, n)
        }));
    }
    let mut kept = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (heard, n) = t.await.expect("node task");
        let expected: HashSet<_> = ids.iter().copied().filter(|p| *p != ids[i]).collect();
        assert_eq!(heard, expected);
        kept.push(n);
    }
    for n in &kept {
        n.handle.shutdown().await.expect("shutdown");
    }
}
