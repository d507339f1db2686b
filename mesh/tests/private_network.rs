//! Only nodes holding the swarm key can connect.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{init_tracing, node, wait_for};
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use mesh::{Identity, MeshEvent, NoChunks, SwarmKey};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_the_swarm_key_are_refused() {
    init_tracing();
    let key = SwarmKey::generate();
    let mut a = node(key, Arc::new(NoChunks), |_| {}).await;

    // Another swarm's key: the dial fails and no connection is established.
    let other = node(SwarmKey::generate(), Arc::new(NoChunks), |_| {}).await;
    let res = other.handle.dial(a.addr.clone()).await;
    let err = res.expect_err("wrong key connected");
    assert!(err.to_string().contains("swarm key mismatch"), "{err}");
    assert!(other.handle.connected_peers().await.unwrap().is_empty());

    // No key at all: a plain noise+yamux swarm on the same address.
    let id = Identity::generate();
    let mut plain = mesh::transport::build_swarm(
        &id,
        None,
        Duration::from_secs(30),
        libp2p::ping::Behaviour::default(),
    )
    .expect("swarm");
    plain.dial(a.addr.clone()).expect("dial starts");
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match plain.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => return Ok(()),
                SwarmEvent::OutgoingConnectionError { error, .. } => return Err(error),
                _ => {}
            }
        }
    })
    .await
    .expect("dial outcome");
    assert!(outcome.is_err(), "keyless peer connected");

    // The right key connects: the refusals above were about the key, not the address.
    let good = node(key, Arc::new(NoChunks), |_| {}).await;
    let pid = good
        .handle
        .dial(a.addr.clone())
        .await
        .expect("right key connects");
    assert_eq!(pid, a.handle.local_peer_id());
    let first = wait_for(&mut a.events, 10, "a connection", |e| match e {
        MeshEvent::PeerConnected { peer, .. } => Some(*peer),
        _ => None,
    })
    .await;
    // The first (and only) connection `a` ever saw is the one with the key.
    assert_eq!(first, good.handle.local_peer_id());
    assert_eq!(
        a.handle.connected_peers().await.unwrap(),
        vec![good.handle.local_peer_id()]
    );
}
