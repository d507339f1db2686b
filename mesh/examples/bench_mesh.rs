//! Mesh benchmark: swarm formation, chunk throughput against plain TCP, multi-source
//! speedup under capped uploads, gossip latency. Everything runs in one process on
//! 127.0.0.1. Prints a table and, as its last line, one JSON object.
//!
//! Run: `cargo run --release -q -p mesh --example bench_mesh`

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh::{
    ChunkId, FetchItem, Identity, MemoryChunks, MeshConfig, MeshEvent, MeshHandle, Multiaddr,
    NoChunks, PeerId, Sources, SwarmKey, Topic,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

const MIB: usize = 1 << 20;
const CHUNK: usize = 64 * 1024;

fn chunks(total: usize, seed: u64) -> Vec<(ChunkId, Bytes)> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..total / CHUNK)
        .map(|_| {
            let mut v = Vec::with_capacity(CHUNK);
            for _ in 0..CHUNK / 8 {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
            }
            let b = Bytes::from(v);
            (ChunkId::of(&b), b)
        })
        .collect()
}

fn provider(cs: &[(ChunkId, Bytes)]) -> Arc<MemoryChunks> {
    let m = MemoryChunks::new();
    for (_, b) in cs {
        m.insert(b.clone());
    }
    Arc::new(m)
}

struct Node {
    handle: MeshHandle,
    events: Option<mpsc::Receiver<MeshEvent>>,
    addr: Multiaddr,
}

async fn start(
    key: SwarmKey,
    p: Arc<dyn mesh::ChunkProvider>,
    tweak: impl FnOnce(&mut MeshConfig),
) -> Node {
    let mut cfg = MeshConfig::local(key);
    tweak(&mut cfg);
    let (handle, events) = mesh::start(Identity::generate(), cfg, p)
        .await
        .expect("start node");
    let addr = handle.listen_addrs().await.expect("addrs")[0].clone();
    Node {
        handle,
        events: Some(events),
        addr,
    }
}

/// Gossip receipts: message sequence number -> receive instants.
type Receipts = Arc<Mutex<HashMap<u64, Vec<Instant>>>>;

/// Starts `n` nodes bootstrapping to node 0 and returns them once every node sees at
/// least `min_subscribed` peers subscribed to the placement topic, with the time taken.
/// Each node's events are consumed by a task that records gossip receipts.
async fn swarm(n: usize, min_subscribed: usize, receipts: Receipts) -> (Vec<Node>, Duration) {
    let key = SwarmKey::generate();
    let t0 = Instant::now();
    let formed = Arc::new(Mutex::new(0usize));
    let notify = Arc::new(Notify::new());
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    for i in 0..n {
        let boot = if i == 0 {
            vec![]
        } else {
            vec![nodes[0].addr.clone()]
        };
        let mut node = start(key, Arc::new(NoChunks), |c| c.bootstrap = boot).await;
        let mut events = node.events.take().expect("events");
        let (formed, notify, receipts) = (formed.clone(), notify.clone(), receipts.clone());
        tokio::spawn(async move {
            let mut subs = HashSet::new();
            let mut done = false;
            while let Some(ev) = events.recv().await {
                match ev {
                    MeshEvent::Subscribed {
                        peer,
                        topic: Topic::Placement,
                    } => {
                        subs.insert(peer);
                        if !done && subs.len() >= min_subscribed {
                            done = true;
                            *formed.lock().unwrap() += 1;
                            notify.notify_one();
                        }
                    }
                    MeshEvent::Gossip { data, .. } if data.len() >= 8 => {
                        let now = Instant::now();
                        let seq = u64::from_le_bytes(data[..8].try_into().unwrap());
                        receipts.lock().unwrap().entry(seq).or_default().push(now);
                    }
                    _ => {}
                }
            }
        });
        nodes.push(node);
    }
    loop {
        if *formed.lock().unwrap() >= n {
            break;
        }
        if tokio::time::timeout(Duration::from_secs(60), notify.notified())
            .await
            .is_err()
        {
            panic!("swarm of {n} did not form");
        }
    }
    (nodes, t0.elapsed())
}

async fn shutdown(nodes: Vec<Node>) {
    for n in nodes {
        let _ = n.handle.shutdown().await;
    }
}

async fn fetch_all(h: &MeshHandle, ids: Vec<ChunkId>, sources: Sources) -> (Duration, usize) {
    let t = Instant::now();
    let mut f = h.fetch(ids, sources).await.expect("fetch");
    let mut n = 0;
    while let Some(item) = f.next().await {
        match item {
            FetchItem::Chunks { chunks, .. } => n += chunks.len(),
            FetchItem::Done(o) => {
                assert!(
                    o.missing.is_empty(),
                    "fetch missed {} chunks",
                    o.missing.len()
                );
                break;
            }
        }
    }
    (t.elapsed(), n)
}

/// The same bytes over one plain TCP connection on loopback.
async fn tcp_baseline(data: &[(ChunkId, Bytes)]) -> Duration {
    let total: usize = data.iter().map(|(_, b)| b.len()).sum();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let payload: Vec<Bytes> = data.iter().map(|(_, b)| b.clone()).collect();
    let t = Instant::now();
    let writer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        for b in payload {
            s.write_all(&b).await.unwrap();
        }
        s.flush().await.unwrap();
    });
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0;
    while got < total {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "tcp baseline: early EOF");
        got += n;
    }
    writer.await.unwrap();
    t.elapsed()
}

/// User + system CPU seconds of this process so far (Linux, from /proc).
fn cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime, in clock ticks of 1/100 s.
    (tick(11) + tick(12)) / 100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

type Rows = Vec<(String, String)>;

async fn bench_formation(rows: &mut Rows) -> f64 {
    let (nodes, formation) = swarm(64, 4, Arc::default()).await;
    let mut c = Vec::new();
    for n in &nodes {
        c.push(n.handle.connected_peers().await.unwrap().len());
    }
    c.sort();
    rows.push((
        "formation, 64 nodes (s)".into(),
        format!("{:.3}", formation.as_secs_f64()),
    ));
    rows.push((
        "  connections per node (min/median/max)".into(),
        format!("{}/{}/{}", c[0], c[c.len() / 2], c[c.len() - 1]),
    ));
    shutdown(nodes).await;
    formation.as_secs_f64()
}

async fn bench_throughput(rows: &mut Rows) -> f64 {
    let data = chunks(256 * MIB, 1);
    let ids: Vec<ChunkId> = data.iter().map(|(id, _)| *id).collect();
    let key = SwarmKey::generate();
    let server = start(key, provider(&data), |_| {}).await;
    let client = start(key, Arc::new(NoChunks), |_| {}).await;
    let sid = client.handle.dial(server.addr.clone()).await.expect("dial");
    let mut mesh_best = Duration::MAX;
    let mut mesh_cpu = 0.0;
    let mut tcp_best = Duration::MAX;
    for _ in 0..2 {
        let c0 = cpu_secs();
        let (t, n) = fetch_all(&client.handle, ids.clone(), Sources::HoldingAll(vec![sid])).await;
        if t < mesh_best {
            mesh_cpu = cpu_secs() - c0;
        }
        assert_eq!(n, ids.len());
        mesh_best = mesh_best.min(t);
        tcp_best = tcp_best.min(tcp_baseline(&data).await);
    }
    let mib_s = |d: Duration| 256.0 / d.as_secs_f64();
    let ratio = tcp_best.as_secs_f64() / mesh_best.as_secs_f64();
    rows.push((
        "chunk fetch, 256 MiB, mesh (MiB/s)".into(),
        format!("{:.0}", mib_s(mesh_best)),
    ));
    rows.push((
        "  process CPU during that fetch (s / s of wall)".into(),
        format!("{:.2}", mesh_cpu / mesh_best.as_secs_f64()),
    ));
    rows.push((
        "same bytes, plain TCP (MiB/s)".into(),
        format!("{:.0}", mib_s(tcp_best)),
    ));
    rows.push(("chunk_throughput_ratio".into(), format!("{ratio:.3}")));
    let _ = client.handle.shutdown().await;
    let _ = server.handle.shutdown().await;
    ratio
}

async fn bench_multi_source(rows: &mut Rows) -> f64 {
    let rate = 32 * MIB as u64;
    let data = chunks(64 * MIB, 2);
    let ids: Vec<ChunkId> = data.iter().map(|(id, _)| *id).collect();
    let key = SwarmKey::generate();
    let p = provider(&data);
    let mut servers = Vec::new();
    for _ in 0..4 {
        servers.push(start(key, p.clone(), |c| c.upload_limit_bps = Some(rate)).await);
    }
    let client = start(key, Arc::new(NoChunks), |_| {}).await;
    let mut sids: Vec<PeerId> = Vec::new();
    for s in &servers {
        sids.push(client.handle.dial(s.addr.clone()).await.expect("dial"));
    }
    let (t1, _) = fetch_all(&client.handle, ids.clone(), Sources::Peers(vec![sids[0]])).await;
    let (t4, _) = fetch_all(&client.handle, ids.clone(), Sources::Peers(sids.clone())).await;
    let speedup = t1.as_secs_f64() / t4.as_secs_f64();
    rows.push((
        "64 MiB from 1 peer capped at 32 MiB/s (s)".into(),
        format!("{:.3}", t1.as_secs_f64()),
    ));
    rows.push((
        "64 MiB from 4 peers capped at 32 MiB/s each (s)".into(),
        format!("{:.3}", t4.as_secs_f64()),
    ));
    rows.push(("multi_source_speedup".into(), format!("{speedup:.2}")));
    let _ = client.handle.shutdown().await;
    shutdown(servers).await;
    speedup
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn bench_gossip(rows: &mut Rows) -> f64 {
    let n = 32;
    let messages = env_u64("BENCH_GOSSIP_MESSAGES", 400);
    let interval = Duration::from_millis(env_u64("BENCH_GOSSIP_INTERVAL_MS", 10));
    let receipts: Receipts = Arc::default();
    let (nodes, _) = swarm(n, 4, receipts.clone()).await;
    // Let the gossip meshes settle through a few heartbeats before measuring.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    for seq in 0..messages {
        let from = &nodes[(seq as usize * 7) % n];
        let mut payload = seq.to_le_bytes().to_vec();
        payload.extend_from_slice(&[0u8; 120]);
        sent.insert(seq, Instant::now());
        from.handle
            .publish(Topic::Placement, payload)
            .await
            .expect("publish");
        tokio::time::sleep(interval).await;
    }
    // Wait (bounded) for every message to reach all other nodes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let complete = receipts
            .lock()
            .unwrap()
            .values()
            .filter(|v| v.len() >= n - 1)
            .count();
        if complete as u64 >= messages || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut lat: Vec<f64> = Vec::new();
    let mut incomplete = 0;
    {
        let r = receipts.lock().unwrap();
        for (seq, t) in &sent {
            match r.get(seq) {
                Some(v) if v.len() >= n - 1 => {
                    let last = v.iter().max().copied().unwrap_or(*t);
                    lat.push(last.duration_since(*t).as_secs_f64() * 1e3);
                }
                _ => incomplete += 1,
            }
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let p99 = if incomplete > 0 {
        f64::INFINITY
    } else {
        percentile(&lat, 99.0)
    };
    rows.push((
        format!(
            "gossip: {messages} msgs, 1 per {} ms, rotating publishers",
            interval.as_millis()
        ),
        String::new(),
    ));
    rows.push((
        format!("gossip to all {} peers, p50 (ms)", n - 1),
        format!("{:.2}", percentile(&lat, 50.0)),
    ));
    rows.push(("gossip_p99_ms_32".into(), format!("{p99:.2}")));
    rows.push((
        "  messages not delivered everywhere".into(),
        format!("{incomplete} of {messages}"),
    ));
    shutdown(nodes).await;
    p99
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // BENCH_ONLY=formation,throughput,multi,gossip runs a subset (for development).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only.split(',').any(|s| s == name);
    let total_t = Instant::now();
    let mut rows: Rows = Vec::new();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    rows.push((
        "machine load average at start (1 min)".into(),
        load.split_whitespace().next().unwrap_or("?").to_string(),
    ));
    let formation = if run("formation") {
        bench_formation(&mut rows).await
    } else {
        f64::NAN
    };
    let ratio = if run("throughput") {
        bench_throughput(&mut rows).await
    } else {
        f64::NAN
    };
    let speedup = if run("multi") {
        bench_multi_source(&mut rows).await
    } else {
        f64::NAN
    };
    let p99 = if run("gossip") {
        bench_gossip(&mut rows).await
    } else {
        f64::NAN
    };
    rows.push((
        "bench wall time (s)".into(),
        format!("{:.1}", total_t.elapsed().as_secs_f64()),
    ));
    println!("{:<50} {:>14}", "mesh benchmark", "value");
    println!("{}", "-".repeat(65));
    for (k, v) in &rows {
        println!("{k:<50} {v:>14}");
    }
    let num = |x: f64| {
        if x.is_finite() {
            format!("{x:.3}")
        } else {
            "null".into()
        }
    };
    println!(
        "{{\"mesh_formation_s_64\": {}, \"chunk_throughput_ratio\": {}, \"multi_source_speedup\": {}, \"gossip_p99_ms_32\": {}}}",
        num(formation),
        num(ratio),
        num(speedup),
        num(p99)
    );
}
