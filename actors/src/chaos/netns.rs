//! The network of `roam chaos --level 3`: a network namespace per node, and a veth
//! pair between every two nodes, so each direction of each pair of nodes is a real
//! link of its own that can be cut and shaped.
//!
//! Everything is created by the harness and lives only inside the namespaces it
//! creates (`roam-PID-NODE`): each veth pair is created directly in its two
//! namespaces, so no interface, address or route of the host is touched, and the
//! addresses (10.213.0.0/16, a /30 per pair) exist only there. No namespace forwards
//! packets, so a node reaches exactly the nodes it has a link to. Dropping the
//! [`Fabric`] deletes the namespaces (and with them the pairs); the node processes
//! must be gone first.
//!
//! - a **partition** sets down, in both namespaces, the links the cut separates;
//! - **rate** is a `tbf` on the sending end of the link, **delay** and **loss** a
//!   `netem` (with the `tbf` as its child when both are set) if the kernel has
//!   `sch_netem`; without it, and only when the scenario delays or drops packets,
//!   every link is built through a userspace wire instead ([`super::wire`]: two veth
//!   pairs per link meeting in a namespace of the harness, `roam-PID-wire`, where a
//!   thread per direction delays and drops frames), and `tbf` still rates the
//!   node's end.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::process::Command;

use anyhow::Context as _;

use super::wire;
use std::sync::Arc;

/// One end of a link: the interface in a node's namespace, and its address.
#[derive(Clone, Debug)]
struct End {
    ifname: String,
    addr: Ipv4Addr,
}

/// How one direction of a link is shaped (0 = not).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Shape {
    pub delay_ms: f64,
    pub loss_pct: f64,
    pub rate_kbit: f64,
}

/// The namespaces and links (see the module doc).
pub struct Fabric {
    /// Namespace name and an open handle of it, per node.
    ns: BTreeMap<String, (String, File)>,
    /// (from, to) → the end of their link in `from`'s namespace.
    ends: BTreeMap<(String, String), End>,
    shapes: BTreeMap<(String, String), Shape>,
    netem: bool,
    /// Without netem, for delay and loss: the wire namespace, each direction's
    /// impairment, and the threads (stopped before the namespaces go).
    wire: Option<WireNet>,
}

struct WireNet {
    ns: String,
    handle: File,
    directions: BTreeMap<(String, String), Arc<wire::Direction>>,
    threads: wire::Wires,
}

impl Fabric {
    /// Creates a namespace per node and a link between every two. `need_netem`:
    /// the scenario delays or drops packets, which needs `sch_netem`.
    pub fn create(names: &[String], need_netem: bool) -> anyhow::Result<Fabric> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            anyhow::bail!(
                "--level 3 needs root: it creates a network namespace per node (run as root, \
                 or use --level 2)"
            );
        }
        let mut f = Fabric {
            ns: BTreeMap::new(),
            ends: BTreeMap::new(),
            shapes: BTreeMap::new(),
            netem: false,
            wire: None,
        };
        let pid = std::process::id();
        for name in names {
            let ns = format!("roam-{pid}-{name}");
            ip(&["netns", "add", &ns]).context("`ip netns add` (is iproute2 installed?)")?;
            let handle = File::open(format!("/var/run/netns/{ns}"))
                .with_context(|| format!("opening namespace {ns}"))?;
            f.ns.insert(name.clone(), (ns.clone(), handle));
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        // Whether this kernel has netem: try it on a loopback of ours.
        if let Some(first) = names.first() {
            let ns = f.ns_name(first)?;
            f.netem = tc(&["-n", &ns, "qdisc", "add", "dev", "lo", "root", "netem"]).is_ok();
            if f.netem {
                tc(&["-n", &ns, "qdisc", "del", "dev", "lo", "root"])?;
            }
        }
        if need_netem && !f.netem {
            let ns = format!("roam-{pid}-wire");
            ip(&["netns", "add", &ns]).context("`ip netns add` for the wire")?;
            let handle = File::open(format!("/var/run/netns/{ns}"))
                .with_context(|| format!("opening namespace {ns}"))?;
            f.wire = Some(WireNet {
                ns,
                handle,
                directions: BTreeMap::new(),
                threads: wire::Wires::new(),
            });
        }
        let mut k = 0u32;
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                let base = [10, 213, (k / 64) as u8, ((k % 64) * 4) as u8];
                let ea = End {
                    ifname: format!("v-{b}"),
                    addr: Ipv4Addr::new(base[0], base[1], base[2], base[3] + 1),
                };
                let eb = End {
                    ifname: format!("v-{a}"),
                    addr: Ipv4Addr::new(base[0], base[1], base[2], base[3] + 2),
                };
                let (na, nb) = (f.ns_name(a)?, f.ns_name(b)?);
                if let Some(w) = f.wire.as_mut() {
                    // Two pairs meeting in the wire namespace (see the module doc).
                    let (wa, wb) = (format!("w{k}a"), format!("w{k}b"));
                    for (end, ns, wend) in [(&ea.ifname, &na, &wa), (&eb.ifname, &nb, &wb)] {
                        ip(&[
                            "link", "add", end, "netns", ns, "type", "veth", "peer", "name", wend,
                            "netns", &w.ns,
                        ])?;
                        ip(&["-n", &w.ns, "link", "set", wend, "promisc", "on", "up"])?;
                    }
                    let ab = Arc::new(wire::Direction::default());
                    let ba = Arc::new(wire::Direction::default());
                    w.directions.insert((a.clone(), b.clone()), ab.clone());
                    w.directions.insert((b.clone(), a.clone()), ba.clone());
                    let fd = w.handle.as_raw_fd();
                    w.threads
                        .add(fd, &wa, &wb, ab, ba, 0x5eed ^ u64::from(k))
                        .with_context(|| format!("the wire between {a} and {b}"))?;
                } else {
                    ip(&[
                        "link", "add", &ea.ifname, "netns", &na, "type", "veth", "peer", "name",
                        &eb.ifname, "netns", &nb,
                    ])?;
                }
                for (ns, e) in [(&na, &ea), (&nb, &eb)] {
                    ip(&[
                        "-n",
                        ns,
                        "addr",
                        "add",
                        &format!("{}/30", e.addr),
                        "dev",
                        &e.ifname,
                    ])?;
                    ip(&["-n", ns, "link", "set", &e.ifname, "up"])?;
                }
                f.ends.insert((a.clone(), b.clone()), ea);
                f.ends.insert((b.clone(), a.clone()), eb);
                k += 1;
            }
        }
        Ok(f)
    }

    fn ns_name(&self, node: &str) -> anyhow::Result<String> {
        Ok(self
            .ns
            .get(node)
            .with_context(|| format!("no namespace for {node}"))?
            .0
            .clone())
    }

    /// The namespace handle of `node` (for `setns`).
    pub fn ns_fd(&self, node: &str) -> Option<i32> {
        self.ns.get(node).map(|(_, f)| f.as_raw_fd())
    }

    /// The address `from` reaches `to` at.
    pub fn addr(&self, from: &str, to: &str) -> Option<Ipv4Addr> {
        self.ends
            .get(&(to.to_string(), from.to_string()))
            .map(|e| e.addr)
    }

    /// Sets the link between `a` and `b` up or down (both ends).
    pub fn set_link(&self, a: &str, b: &str, up: bool) -> anyhow::Result<()> {
        for (x, y) in [(a, b), (b, a)] {
            let e = self
                .ends
                .get(&(x.to_string(), y.to_string()))
                .with_context(|| format!("no link {x}-{y}"))?;
            let ns = self.ns_name(x)?;
            let state = if up { "up" } else { "down" };
            ip(&["-n", &ns, "link", "set", &e.ifname, state])?;
        }
        Ok(())
    }

    /// Changes one part of how packets from `from` to `to` are shaped, and applies
    /// the whole shape; returns it.
    pub fn shape(
        &mut self,
        from: &str,
        to: &str,
        change: impl FnOnce(&mut Shape),
    ) -> anyhow::Result<Shape> {
        let key = (from.to_string(), to.to_string());
        let e = self
            .ends
            .get(&key)
            .with_context(|| format!("no link {from}-{to}"))?
            .clone();
        let mut s = self.shapes.get(&key).copied().unwrap_or_default();
        change(&mut s);
        let wired = self.wire.as_ref().and_then(|w| w.directions.get(&key));
        if (s.delay_ms > 0.0 || s.loss_pct > 0.0) && !self.netem && wired.is_none() {
            anyhow::bail!(
                "this kernel has no netem qdisc and the links were built without the \
                 userspace wire: delay and loss cannot be shaped"
            );
        }
        if let Some(d) = wired {
            d.set(wire::Impairment {
                delay_ms: s.delay_ms,
                loss_pct: s.loss_pct,
            });
        }
        let ns = self.ns_name(from)?;
        let dev = e.ifname.as_str();
        // Start from no qdisc (an error just means there was none).
        let _ = tc(&["-n", &ns, "qdisc", "del", "dev", dev, "root"]);
        let tbf = |parent: &[&str]| -> anyhow::Result<()> {
            let rate = format!("{}kbit", s.rate_kbit.round());
            // A burst of 10 ms at the rate (at least 16 KiB) and 50 ms of queue.
            let burst = format!(
                "{}",
                ((s.rate_kbit * 1000.0 / 8.0 * 0.01) as u64).max(16384)
            );
            let mut args = vec!["-n", &ns, "qdisc", "add", "dev", dev];
            args.extend_from_slice(parent);
            args.extend_from_slice(&["tbf", "rate", &rate, "burst", &burst, "latency", "50ms"]);
            tc(&args)
        };
        if self.netem && (s.delay_ms > 0.0 || s.loss_pct > 0.0) {
            let delay = format!("{}ms", s.delay_ms);
            let loss = format!("{}%", s.loss_pct);
            tc(&[
                "-n", &ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", "delay",
                &delay, "loss", &loss,
            ])?;
            if s.rate_kbit > 0.0 {
                tbf(&["parent", "1:1", "handle", "10:"])?;
            }
        } else if s.rate_kbit > 0.0 {
            tbf(&["root"])?;
        }
        self.shapes.insert(key, s);
        Ok(s)
    }
}

impl Fabric {
    /// Delay and loss go through the userspace wire (no netem here).
    pub fn wired(&self) -> bool {
        self.wire.is_some()
    }

    /// Frames the wire carried and dropped from `from` to `to` (None: not wired).
    pub fn wire_counts(&self, from: &str, to: &str) -> Option<(u64, u64)> {
        let d = self
            .wire
            .as_ref()?
            .directions
            .get(&(from.to_string(), to.to_string()))?;
        Some((
            d.carried.load(std::sync::atomic::Ordering::Relaxed),
            d.dropped.load(std::sync::atomic::Ordering::Relaxed),
        ))
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        // The wire's threads first: their sockets keep the wire namespace alive.
        if let Some(w) = self.wire.take() {
            drop(w.threads);
            if let Err(e) = ip(&["netns", "del", &w.ns]) {
                tracing::warn!(ns = w.ns, "deleting the wire namespace: {e:#}");
            }
        }
        for (ns, _) in self.ns.values() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                tracing::warn!(ns, "deleting the namespace: {e:#}");
            }
        }
    }
}

fn run(prog: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("running {prog}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

fn tc(args: &[&str]) -> anyhow::Result<()> {
    run("tc", args)
}

/// Runs `f` on a thread that entered the network namespace `fd`: the sockets it
/// opens belong to that namespace (e.g. to reach a node's API on its 127.0.0.1).
pub fn within<T: Send>(fd: i32, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only (a thread of its own, which ends
            // with the scope), with a namespace handle the Fabric keeps open.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("entering the namespace");
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
    })
}
