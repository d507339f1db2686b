//! A wire in userspace, for `roam chaos --level 3` on a kernel without `sch_netem`
//! (like this project's development machine): delay and loss made by a thread that
//! carries a link's Ethernet frames itself.
//!
//! Each link between two nodes is then two veth pairs instead of one: node A's end
//! pairs with an interface in a namespace of the harness's own (the *wire*
//! namespace), and so does node B's; the two wire ends are not connected by the
//! kernel. For each direction a thread reads the frames that arrive on one wire end
//! (an `AF_PACKET` socket), drops each with the direction's loss probability, holds
//! the others for its delay and writes them, in order, to the other wire end. The
//! nodes see one Ethernet segment (ARP included), so addresses, routes and the
//! `tbf` that rates a link on the node's end stay as they are without the wire.
//!
//! Frames are read and written with a virtio-net header (`PACKET_VNET_HDR`), so a
//! TCP segment the kernel left for offloading (one "frame" of up to 64 KiB with a
//! checksum still to fill in) crosses as it is: the kernel finishes it on the far
//! side. Loss therefore applies per frame as the kernel hands it over, where a burst
//! of segments can be one frame — netem does the same with such packets. A
//! direction holds at most [`QUEUE_LIMIT`] frames (netem's default limit); beyond it
//! frames are dropped, as a full qdisc would.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Most frames one direction holds (netem's default `limit`).
pub const QUEUE_LIMIT: usize = 1000;

/// Largest frame read: a 64 KiB offloaded segment, its Ethernet header and the
/// virtio-net header, with room to spare.
const FRAME_BUF: usize = 70 * 1024;

/// `SOL_PACKET` option: do not hand back the frames this socket's device sends.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// How one direction of a wire impairs its frames.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairment {
    pub delay_ms: f64,
    pub loss_pct: f64,
}

/// One direction: its impairment (changed while it runs) and what it did.
#[derive(Default)]
pub struct Direction {
    impairment: Mutex<Impairment>,
    /// Frames carried to the far end, and frames dropped (loss, a full queue, or a
    /// far end that is down).
    pub carried: AtomicU64,
    pub dropped: AtomicU64,
}

impl Direction {
    pub fn set(&self, i: Impairment) {
        if let Ok(mut g) = self.impairment.lock() {
            *g = i;
        }
    }

    fn get(&self) -> Impairment {
        self.impairment.lock().map(|g| *g).unwrap_or_default()
    }
}

/// The forwarding threads of every wired link; dropping it stops them.
pub struct Wires {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Wires {
    pub fn new() -> Wires {
        Wires {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    /// Starts carrying frames between the wire-namespace interfaces `a` and `b`:
    /// `ab` shapes what arrives on `a` (from node A) on its way out of `b` (to node
    /// B), `ba` the other way. The sockets are opened inside the wire namespace
    /// (`wire_ns`, a handle for `setns`); the threads need not be in it.
    pub fn add(
        &mut self,
        wire_ns: i32,
        a: &str,
        b: &str,
        ab: Arc<Direction>,
        ba: Arc<Direction>,
        seed: u64,
    ) -> anyhow::Result<()> {
        let (sa, sb) = super::netns::within(wire_ns, || Ok((open(a)?, open(b)?)))?;
        let (sa, sb) = (Arc::new(sa), Arc::new(sb));
        for (from, to, dir, seed) in [
            (sa.clone(), sb.clone(), ab, seed),
            (sb, sa, ba, seed ^ 0x9e37_79b9_7f4a_7c15),
        ] {
            let stop = self.stop.clone();
            let t = std::thread::Builder::new()
                .name(format!("wire-{a}"))
                .spawn(move || carry(&from, &to, &dir, seed, &stop))
                .context("starting a wire thread")?;
            self.threads.push(t);
        }
        Ok(())
    }
}

impl Default for Wires {
    fn default() -> Self {
        Wires::new()
    }
}

impl Drop for Wires {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A raw socket bound to interface `ifname` (of the calling thread's namespace)
/// that reads what arrives there and writes frames out of it.
fn open(ifname: &str) -> anyhow::Result<OwnedFd> {
    let name = std::ffi::CString::new(ifname).context("interface name")?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("no {ifname}"));
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            proto as libc::c_int,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
    }
    // SAFETY: raw is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    for opt in [libc::PACKET_VNET_HDR, PACKET_IGNORE_OUTGOING] {
        // SAFETY: an int option of the size given.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setsockopt SOL_PACKET {opt} on {ifname}"));
        }
    }
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: the address and its size match.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("bind to {ifname}"));
    }
    Ok(fd)
}

/// A small seeded generator for the loss draws (xorshift64*).
struct Draws(u64);

impl Draws {
    /// Uniform in [0, 100).
    fn percent(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64 * 100.0
    }
}

/// One direction's loop: read from `from`, drop or hold, write to `to` when due.
fn carry(from: &OwnedFd, to: &OwnedFd, dir: &Direction, seed: u64, stop: &AtomicBool) {
    let mut draws = Draws(seed | 1);
    let mut held: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; FRAME_BUF];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        // Wake for the next frame due, and at least every 100 ms to see `stop`.
        let wait = held
            .front()
            .map(|(due, _)| due.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        let mut pfd = libc::pollfd {
            fd: from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Round up so a frame due in 0.4 ms does not spin.
        let ms = wait.as_micros().div_ceil(1000) as libc::c_int;
        // SAFETY: one pollfd, its count given.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready > 0 && pfd.revents & libc::POLLIN != 0 {
            // Everything waiting, in one go (bounded, so sending is not starved).
            for _ in 0..256 {
                // SAFETY: the buffer and its length match.
                let n = unsafe {
                    libc::recv(
                        from.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                let Ok(n) = usize::try_from(n) else {
                    break; // EAGAIN or an error: nothing more now
                };
                let i = dir.get();
                if i.loss_pct > 0.0 && draws.percent() < i.loss_pct {
                    dir.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if held.len() >= QUEUE_LIMIT {
                    dir.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let now = Instant::now();
                let mut due = now + Duration::from_secs_f64(i.delay_ms.max(0.0) / 1000.0);
                // In order, even when the delay was just lowered.
                if let Some((last, _)) = held.back() {
                    due = due.max(*last);
                }
                held.push_back((due, buf[..n].to_vec()));
            }
        } else if ready > 0 && pfd.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            // The interface went away (the namespaces are being deleted).
            std::thread::sleep(Duration::from_millis(10));
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, frame)) = held.pop_front() else {
                break;
            };
            // SAFETY: the frame and its length match.
            let sent = unsafe {
                libc::send(
                    to.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            // A far end that is down (a partition) or full loses the frame.
            if sent < 0 {
                dir.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                dir.carried.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_draws_are_uniform_enough_and_seeded() {
        let mut d = Draws(7 | 1);
        let n = 100_000;
        let below = (0..n).filter(|_| d.percent() < 10.0).count();
        // 10 % ± 1 % of 100k draws (the standard deviation is ~0.1 %).
        assert!((9_000..11_000).contains(&below), "{below}");
        let (mut a, mut b) = (Draws(3), Draws(3));
        assert!((0..100).all(|_| a.percent() == b.percent()));
        let mut c = Draws(5);
        assert!((0..1000).all(|_| (0.0..100.0).contains(&c.percent())));
    }
}
