//! mDNS discovery between two hosts, which loopback cannot show (mDNS skips it): two
//! network namespaces joined by a veth pair, created and removed by this test. Each runs
//! one node of this test binary (child mode) with mDNS on and no bootstrap address; both
//! must discover and dial each other. Needs root and iproute2; otherwise it says why it
//! skips.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh::{Identity, MeshConfig, MeshEvent, NoChunks, SwarmKey};

const CHILD_ENV: &str = "ROAM_MDNS_CHILD_KEY";
const MARKER: &str = "MDNS-PEER-CONNECTED";

/// Runs only as a child inside a namespace (the parent sets the env var).
#[test]
fn mdns_child_process() {
    let Ok(key) = std::env::var(CHILD_ENV) else {
        return;
    };
    let key = SwarmKey::parse(&key).expect("key from parent");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let cfg = MeshConfig::new(key);
        assert!(cfg.mdns, "LAN defaults have mDNS on");
        let (_handle, mut events) = mesh::start(Identity::generate(), cfg, Arc::new(NoChunks))
            .await
            .expect("node starts");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(MeshEvent::PeerConnected { peer, addr })) => {
                    println!("{MARKER} {peer} {addr}");
                    // Let the other side see its own event before this node goes away.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    return;
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("event channel closed"),
                Err(_) => panic!("no peer discovered within 30 s"),
            }
        }
    });
}

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

#[test]
fn mdns_discovers_and_dials_across_namespaces() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP mdns_discovers_and_dials_across_namespaces: needs root for ip netns");
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("SKIP mdns_discovers_and_dials_across_namespaces: iproute2 (ip) missing");
        return;
    }
    let tag = std::process::id() % 100_000;
    let (a, b) = (format!("roam-mdns-{tag}-a"), format!("roam-mdns-{tag}-b"));
    let (va, vb) = (format!("rmd{tag}a"), format!("rmd{tag}b"));
    ip(&["netns", "add", &a]);
    let _guard_a = Namespaces(vec![a.clone()]);
    ip(&["netns", "add", &b]);
    let _guard_b = Namespaces(vec![b.clone()]);
    ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
    ip(&["link", "set", &va, "netns", &a]);
    ip(&["link", "set", &vb, "netns", &b]);
    // Addresses exist only inside these two namespaces.
    for (ns, dev, addr) in [(&a, &va, "10.237.0.1/24"), (&b, &vb, "10.237.0.2/24")] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", dev]);
    }

    let key = SwarmKey::generate();
    let hex: String = key.0.iter().map(|b| format!("{b:02x}")).collect();
    let exe = std::env::current_exe().expect("test binary path");
    let spawn = |ns: &str| {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&exe)
            .args([
                "--exact",
                "mdns_child_process",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, &hex)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child node")
    };
    let children = [spawn(&a), spawn(&b)];
    let started = Instant::now();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("child finished");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(MARKER),
            "node {i} did not discover its peer over mDNS (after {:?}):\n{stdout}\n{}",
            started.elapsed(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
