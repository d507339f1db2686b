//! Typed control requests between nodes (e.g. migration offers), answered by the
//! application through the event stream.

mod common;

use std::sync::Arc;

use common::{init_tracing, node, wait_event, wait_for};
use mesh::{MeshError, MeshEvent, NoChunks, SwarmKey};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_requests_are_answered_refused_and_bounded() {
    init_tracing();
    let key = SwarmKey::generate();
    let mut b = node(key, Arc::new(NoChunks), |c| {
        c.limits.max_control_bytes = 4096
    })
    .await;
    let mut a = node(key, Arc::new(NoChunks), |c| {
        c.bootstrap = vec![b.addr.clone()];
        c.limits.max_control_bytes = 4096;
    })
    .await;
    let bid = b.handle.local_peer_id();
    wait_for(&mut a.events, 10, "connection", |e| match e {
        MeshEvent::PeerConnected { peer, .. } if *peer == bid => Some(()),
        _ => None,
    })
    .await;

    // Answered.
    let h = a.handle.clone();
    let call = tokio::spawn(async move { h.control_request(bid, b"offer job 7".to_vec()).await });
    let MeshEvent::ControlRequest { peer, data, reply } =
        wait_event(&mut b.events, 10, "request", |e| {
            matches!(e, MeshEvent::ControlRequest { .. })
        })
        .await
    else {
        unreachable!()
    };
    assert_eq!(peer, a.handle.local_peer_id());
    assert_eq!(data, b"offer job 7");
    reply.send(b"accept".to_vec());
    assert_eq!(call.await.unwrap().unwrap(), b"accept");

    // Dropped without an answer: the caller gets a refusal, not a hang.
    let h = a.handle.clone();
    let call = tokio::spawn(async move { h.control_request(bid, b"offer job 8".to_vec()).await });
    let ev = wait_event(&mut b.events, 10, "request", |e| {
        matches!(e, MeshEvent::ControlRequest { .. })
    })
    .await;
    drop(ev);
    assert!(matches!(call.await.unwrap(), Err(MeshError::Request(_))));

    // An answer over the limit is refused by the answering node.
    let h = a.handle.clone();
    let call = tokio::spawn(async move { h.control_request(bid, b"offer job 9".to_vec()).await });
    let MeshEvent::ControlRequest { reply, .. } = wait_event(&mut b.events, 10, "request", |e| {
        matches!(e, MeshEvent::ControlRequest { .. })
    })
    .await
    else {
        unreachable!()
    };
    reply.send(vec![0; 4097]);
    assert!(matches!(call.await.unwrap(), Err(MeshError::Request(_))));

    // A request over the limit never leaves the caller.
    assert!(matches!(
        a.handle.control_request(bid, vec![0; 4097]).await,
        Err(MeshError::TooLarge {
            size: 4097,
            max: 4096
        })
    ));
}
