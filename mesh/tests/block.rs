//! `MeshHandle::set_blocked`: a reversible cut between two peers (what the chaos
//! harness uses for partitions). Blocked: disconnected, no request passes either way,
//! dials refused, and the redial loop does not reconnect behind the block's back.
//! Unblocked: a dial reconnects at once and requests pass again.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{init_tracing, node, wait_event, wait_for, TestNode};
use mesh::{MeshError, MeshEvent, NoChunks, PeerId, SwarmKey};

/// `from` asks `to` (whose events the test reads) and `to` answers: the request passed.
async fn request_passes(from: &TestNode, to: &mut TestNode, body: &[u8]) {
    let (h, peer) = (from.handle.clone(), to.handle.local_peer_id());
    let body = body.to_vec();
    let call = tokio::spawn(async move { h.control_request(peer, body).await });
    let MeshEvent::ControlRequest { data, reply, .. } =
        wait_event(&mut to.events, 10, "the request", |e| {
            matches!(e, MeshEvent::ControlRequest { .. })
        })
        .await
    else {
        unreachable!()
    };
    reply.send([b"re: ".as_slice(), &data].concat());
    let answer = call.await.expect("request task").expect("answered");
    assert!(answer.starts_with(b"re: "), "{answer:?}");
}

async fn disconnected(events: &mut tokio::sync::mpsc::Receiver<MeshEvent>, who: PeerId) {
    wait_for(events, 10, "the disconnection", |e| match e {
        MeshEvent::PeerDisconnected { peer } if *peer == who => Some(()),
        _ => None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_peer_is_cut_off_until_unblocked() {
    init_tracing();
    let key = SwarmKey::generate();
    let mut a = node(key, Arc::new(NoChunks), |_| {}).await;
    let mut b = node(key, Arc::new(NoChunks), |_| {}).await;
    let (aid, bid) = (a.handle.local_peer_id(), b.handle.local_peer_id());
    assert_eq!(a.handle.dial(b.addr.clone()).await.expect("dial"), bid);
    request_passes(&a, &mut b, b"before").await;
    request_passes(&b, &mut a, b"before").await;

    // Only a blocks: its block list alone must cut both directions.
    a.handle.set_blocked(vec![bid]).await.expect("block");
    disconnected(&mut a.events, bid).await;
    disconnected(&mut b.events, aid).await;
    assert!(a.handle.connected_peers().await.expect("peers").is_empty());

    match a.handle.control_request(bid, b"through".to_vec()).await {
        Err(MeshError::Request(why)) => assert!(why.contains("blocked"), "{why}"),
        other => panic!("a request to a blocked peer: {other:?}"),
    }
    assert!(
        a.handle.have(bid, vec![]).await.is_err(),
        "HAVE to a blocked peer"
    );
    assert!(
        a.handle.dial(b.addr.clone()).await.is_err(),
        "a dial to a blocked peer is refused"
    );
    // b still knows a and tries: a refuses the connection, so the request fails.
    assert!(
        b.handle
            .control_request(aid, b"sneak".to_vec())
            .await
            .is_err(),
        "a request from a blocked peer"
    );
    // Nothing reached a, and for several mesh ticks (250 ms) nothing reconnected,
    // although a knows b's address and b keeps dialing (absence needs a window).
    let quiet = tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            match a.events.recv().await {
                Some(e @ MeshEvent::ControlRequest { .. })
                | Some(e @ MeshEvent::PeerConnected { .. }) => return Some(format!("{e:?}")),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "while blocked, a saw {quiet:?}");
    assert!(a.handle.connected_peers().await.expect("peers").is_empty());

    // Unblocked: a dial connects at once (no backoff left from the refused ones).
    a.handle.set_blocked(vec![]).await.expect("unblock");
    assert_eq!(a.handle.dial(b.addr.clone()).await.expect("redial"), bid);
    request_passes(&a, &mut b, b"after").await;
    request_passes(&b, &mut a, b"after").await;

    // Replacing the set: blocking b again and then an unrelated set lifts b's block.
    a.handle.set_blocked(vec![bid]).await.expect("block");
    disconnected(&mut a.events, bid).await;
    a.handle
        .set_blocked(vec![PeerId::random()])
        .await
        .expect("another set");
    assert_eq!(a.handle.dial(b.addr.clone()).await.expect("redial"), bid);
    request_passes(&a, &mut b, b"replaced").await;
}
