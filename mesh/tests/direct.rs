//! Direct messages (`MeshHandle::send_direct`): delivered to exactly the peers named,
//! with the sender as author, in order on one connection, over one long-lived stream
//! (the second batch reuses it); oversized payloads are refused before the network,
//! peers without a connection are skipped, and a blocked peer gets nothing.

mod common;

use std::sync::Arc;

use common::{init_tracing, node, wait_for};
use mesh::{MeshError, MeshEvent, NoChunks, PeerId, SwarmKey, Topic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_reach_exactly_the_named_peers_in_order() {
    init_tracing();
    let key = SwarmKey::generate();
    let a = node(key, Arc::new(NoChunks), |_| {}).await;
    let mut b = node(key, Arc::new(NoChunks), |_| {}).await;
    let mut c = node(key, Arc::new(NoChunks), |_| {}).await;
    let (aid, bid, cid) = (
        a.handle.local_peer_id(),
        b.handle.local_peer_id(),
        c.handle.local_peer_id(),
    );
    a.handle.dial(b.addr.clone()).await.expect("dial b");
    a.handle.dial(c.addr.clone()).await.expect("dial c");

    // 200 frames to b and c (and one peer a is not connected to: skipped, no error).
    let stranger = PeerId::random();
    const FRAMES: usize = 200;
    for k in 0..FRAMES {
        a.handle
            .send_direct(
                vec![bid, cid, stranger],
                Topic::Placement,
                format!("frame {k}").into_bytes(),
            )
            .await
            .expect("send");
    }
    for (who, events) in [("b", &mut b.events), ("c", &mut c.events)] {
        let mut next = 0;
        wait_for(events, 20, "every frame", |e| {
            if let MeshEvent::Direct { peer, topic, data } = e {
                assert_eq!(*peer, aid, "{who}: author");
                assert_eq!(*topic, Topic::Placement);
                assert_eq!(
                    std::str::from_utf8(data).expect("utf-8"),
                    format!("frame {next}"),
                    "{who}: frames out of order or lost"
                );
                next += 1;
            }
            (next == FRAMES).then_some(())
        })
        .await;
    }

    // Only the named peer gets a frame: c does not see one sent to b alone.
    a.handle
        .send_direct(vec![bid], Topic::JobEvents, b"b only".to_vec())
        .await
        .expect("send");
    a.handle
        .send_direct(vec![cid], Topic::JobEvents, b"c only".to_vec())
        .await
        .expect("send");
    for (events, want) in [(&mut b.events, "b only"), (&mut c.events, "c only")] {
        let got = wait_for(events, 10, "the single frame", |e| match e {
            MeshEvent::Direct {
                topic: Topic::JobEvents,
                data,
                ..
            } => Some(data.clone()),
            _ => None,
        })
        .await;
        assert_eq!(got, want.as_bytes());
    }

    // Oversized: refused before the network.
    assert!(matches!(
        a.handle
            .send_direct(vec![bid], Topic::Placement, vec![0; 256 * 1024 + 1])
            .await,
        Err(MeshError::TooLarge { .. })
    ));

    // Blocked: nothing reaches c, while b still gets frames sent after the block.
    a.handle.set_blocked(vec![cid]).await.expect("block");
    a.handle
        .send_direct(vec![bid, cid], Topic::Placement, b"after block".to_vec())
        .await
        .expect("send");
    wait_for(
        &mut b.events,
        10,
        "the frame after the block",
        |e| match e {
            MeshEvent::Direct { data, .. } if data == b"after block" => Some(()),
            _ => None,
        },
    )
    .await;
    // Unblocked and redialled, c gets the next frame; the first direct frame c sees
    // after the block must be that one, not the one sent while it was blocked.
    a.handle.set_blocked(vec![]).await.expect("unblock");
    a.handle.dial(c.addr.clone()).await.expect("redial c");
    a.handle
        .send_direct(vec![cid], Topic::Placement, b"after unblock".to_vec())
        .await
        .expect("send");
    let first = wait_for(
        &mut c.events,
        10,
        "a frame after the unblock",
        |e| match e {
            MeshEvent::Direct { data, .. } => Some(data.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(first, b"after unblock", "a blocked peer got a direct frame");
}

/// `send_direct_else_gossip`: a connected recipient gets the frame directly; one this
/// node has no connection to gets it by gossip, relayed by a common neighbour, with the
/// sender as its verified author.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconnected_recipients_get_the_message_by_gossip() {
    init_tracing();
    let key = SwarmKey::generate();
    let mut a = node(key, Arc::new(NoChunks), |c| c.target_peers = 1).await;
    let mut b = node(key, Arc::new(NoChunks), |_| {}).await;
    let mut c = node(key, Arc::new(NoChunks), |c| c.target_peers = 1).await;
    let (aid, bid, cid) = (
        a.handle.local_peer_id(),
        b.handle.local_peer_id(),
        c.handle.local_peer_id(),
    );
    // a — b — c: a and c never dial each other (each is content with one peer).
    a.handle.dial(b.addr.clone()).await.expect("dial b");
    c.handle.dial(b.addr.clone()).await.expect("c dials b");
    for (events, want) in [(&mut a.events, bid), (&mut c.events, bid)] {
        wait_for(events, 20, "b's subscription", |e| match e {
            MeshEvent::Subscribed {
                peer,
                topic: Topic::Placement,
            } if *peer == want => Some(()),
            _ => None,
        })
        .await;
    }
    // b forwards to c once c is in its gossipsub mesh (after a heartbeat or two): send
    // until c hears one, each message distinct.
    let mut heard = None;
    for k in 0..20 {
        let body = format!("to b and c #{k}").into_bytes();
        a.handle
            .send_direct_else_gossip(vec![bid, cid], Topic::Placement, body)
            .await
            .expect("send");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, c.events.recv()).await {
            match e {
                MeshEvent::Gossip {
                    topic: Topic::Placement,
                    source,
                    data,
                    ..
                } => {
                    heard = Some((source, data));
                    break;
                }
                MeshEvent::Direct { .. } => panic!("c has no connection to a"),
                _ => {}
            }
        }
        if heard.is_some() {
            break;
        }
    }
    assert!(
        !a.handle
            .connected_peers()
            .await
            .expect("peers")
            .contains(&cid),
        "a connected to c: the test needs them apart"
    );
    let (source, data) = heard.expect("c heard a's message by gossip");
    assert_eq!(source, aid, "author");
    assert!(data.starts_with(b"to b and c #"), "{data:?}");
    // b, connected, got the first one directly.
    let first = wait_for(&mut b.events, 10, "the direct frame", |e| match e {
        MeshEvent::Direct { peer, data, .. } if *peer == aid => Some(data.clone()),
        _ => None,
    })
    .await;
    assert_eq!(first, b"to b and c #0");
    drop(a.events);
}
