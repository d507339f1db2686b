//! Helpers shared by the mesh integration tests: start nodes on 127.0.0.1, wait for
//! events with timeouts (never sleep to synchronise).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mesh::{
    ChunkId, ChunkProvider, Identity, MeshConfig, MeshEvent, MeshHandle, Multiaddr, SwarmKey,
};
use tokio::sync::mpsc;

pub struct TestNode {
    pub handle: MeshHandle,
    pub events: mpsc::Receiver<MeshEvent>,
    pub addr: Multiaddr,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub async fn node(
    key: SwarmKey,
    provider: Arc<dyn ChunkProvider>,
    tweak: impl FnOnce(&mut MeshConfig),
) -> TestNode {
    let mut cfg = MeshConfig::local(key);
    tweak(&mut cfg);
    let (handle, events) = mesh::start(Identity::generate(), cfg, provider)
        .await
        .expect("node starts");
    let addr = handle.listen_addrs().await.expect("addrs")[0].clone();
    TestNode {
        handle,
        events,
        addr,
    }
}

/// Waits until `pick` returns Some for an event, or panics after `secs` seconds.
pub async fn wait_for<T>(
    events: &mut mpsc::Receiver<MeshEvent>,
    secs: u64,
    what: &str,
    mut pick: impl FnMut(&MeshEvent) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) => {
                if let Some(t) = pick(&ev) {
                    return t;
                }
            }
            Ok(None) => panic!("event channel closed while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

/// `n` pseudo-random chunks of `len` bytes (distinct per `seed`).
pub fn make_chunks(n: usize, len: usize, seed: u64) -> Vec<(ChunkId, Bytes)> {
    (0..n)
        .map(|i| {
            let mut x = seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(i as u64 + 1);
            let mut v = Vec::with_capacity(len);
            while v.len() < len {
                // xorshift64*
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
            }
            v.truncate(len);
            let b = Bytes::from(v);
            (ChunkId::of(&b), b)
        })
        .collect()
}

pub fn provider_with(chunks: &[(ChunkId, Bytes)]) -> Arc<mesh::MemoryChunks> {
    let m = mesh::MemoryChunks::new();
    for (_, b) in chunks {
        m.insert(b.clone());
    }
    Arc::new(m)
}

/// Waits for the first event matching `pred` and returns it (owned), or panics after
/// `secs` seconds.
pub async fn wait_event(
    events: &mut mpsc::Receiver<MeshEvent>,
    secs: u64,
    what: &str,
    pred: impl Fn(&MeshEvent) -> bool,
) -> MeshEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return ev,
            Ok(Some(_)) => {}
            Ok(None) => panic!("event channel closed while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}
