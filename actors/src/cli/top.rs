//! `roam top`: a live view of one node — its jobs, its peers, its recent moves —
//! redrawn every second with plain ANSI escapes (no terminal library). When stdout is
//! not a terminal it prints one frame, without escapes, and exits.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::time::Duration;

use actors::demo::human_bytes;
use actors::node::{NodeStatus, PeerRow};
use clap::Args;

use super::node::{call, ApiArgs};

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print one frame and exit (what happens anyway when stdout is not a terminal).
    #[arg(long)]
    pub once: bool,
    /// Refresh period in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub interval: u64,
    /// Recent moves shown.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub moves: usize,
}

/// One answer of the node.
struct Snapshot {
    status: NodeStatus,
    peers: Vec<PeerRow>,
}

const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

fn fetch(api: SocketAddr) -> anyhow::Result<Snapshot> {
    let status = call(api, "GET", "/status", None, &[], FETCH_TIMEOUT)?.json()?;
    let peers = call(api, "GET", "/peers", None, &[], FETCH_TIMEOUT)?.json()?;
    Ok(Snapshot { status, peers })
}

/// ANSI styling, or none.
#[derive(Clone, Copy)]
struct Style(bool);

impl Style {
    fn paint(self, code: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn bold(self, s: &str) -> String {
        self.paint("1", s)
    }
    fn dim(self, s: &str) -> String {
        self.paint("2", s)
    }
}

fn short_peer(p: &str) -> String {
    let c: Vec<char> = p.chars().collect();
    if c.len() > 14 {
        let head: String = c[..6].iter().collect();
        let tail: String = c[c.len() - 6..].iter().collect();
        format!("{head}…{tail}")
    } else {
        p.to_string()
    }
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{:.1}s", ms as f64 / 1e3)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    }
}

fn frame(snap: &Snapshot, api: SocketAddr, max_moves: usize, st: Style) -> String {
    let s = &snap.status;
    let mut o = String::new();
    let mut line = |l: String| {
        o.push_str(&l);
        o.push('\n');
    };
    let outcome = |m: &str| m.split(':').next().unwrap_or("").trim().to_string();
    let committed = s
        .moves
        .iter()
        .filter(|m| outcome(&m.outcome) == "committed")
        .count();
    line(format!(
        "{}  node {}  peer {}  api {}  up {}",
        st.bold("roam top"),
        st.bold(&s.name),
        short_peer(&s.peer),
        api,
        duration(s.uptime_ms)
    ));
    line(format!(
        "load {:.2}  draining {}  store {}  peers connected {}  moves {} ({} committed)",
        s.load,
        if s.draining {
            st.paint("33", "yes")
        } else {
            "no".into()
        },
        human_bytes(s.store_bytes),
        s.peers_connected,
        s.moves.len(),
        committed
    ));
    line(String::new());
    line(st.bold(&format!("JOBS HERE ({})", s.jobs.len())));
    line(st.dim(&format!(
        "{:<28} {:>4} {:<10} {:>10}",
        "JOB", "GEN", "STATE", "MEMORY"
    )));
    for j in &s.jobs {
        line(format!(
            "{:<28} {:>4} {:<10} {:>10}",
            j.job,
            j.generation,
            j.state,
            human_bytes(j.memory_bytes)
        ));
    }
    line(String::new());
    line(st.bold(&format!("PEERS ({})", snap.peers.len())));
    line(st.dim(&format!(
        "{:<14} {:<5} {:>8} {:>12} {:>5} {:>5}  PEER",
        "NAME", "CONN", "RTT", "THROUGHPUT", "LOAD", "JOBS"
    )));
    for p in &snap.peers {
        let name = if p.name.is_empty() { "?" } else { &p.name };
        let name = if p.draining {
            format!("{name} (drain)")
        } else {
            name.to_string()
        };
        line(format!(
            "{:<14} {:<5} {:>8} {:>12} {:>5} {:>5}  {}",
            name,
            if p.connected { "yes" } else { "no" },
            p.rtt_ms.map_or("-".into(), |r| format!("{r:.2}ms")),
            p.throughput_mbit_s
                .map_or("-".into(), |t| format!("{t:.1}Mb/s")),
            p.load.map_or("-".into(), |l| format!("{l:.2}")),
            p.jobs,
            short_peer(&p.peer)
        ));
    }
    line(String::new());
    line(st.bold(&format!(
        "RECENT MOVES (newest first; {} kept)",
        s.moves.len()
    )));
    line(st.dim(&format!(
        "{:>8} {:<20} {:<13} {:<10} {:>9} {:>6} {:>10} {:>8}",
        "AGO", "JOB", "MOVE", "OUTCOME", "DOWNTIME", "ROUNDS", "SENT", "TOTAL"
    )));
    for m in s.moves.iter().rev().take(max_moves) {
        let o = outcome(&m.outcome);
        let padded = format!("{o:<10}");
        let painted = match o.as_str() {
            "committed" => st.paint("32", &padded),
            "aborted" => st.paint("31", &padded),
            _ => st.paint("33", &padded),
        };
        line(format!(
            "{:>8} {:<20} {:<13} {} {:>7.1}ms {:>6} {:>10} {:>6.0}ms",
            duration(s.uptime_ms.saturating_sub(m.ended_ms)),
            m.job,
            format!("{}→{}", m.from, m.to),
            painted,
            m.downtime_ms,
            m.rounds,
            human_bytes(m.sent_bytes),
            m.total_ms
        ));
    }
    o
}

pub fn top(a: TopArgs) -> anyhow::Result<i32> {
    let api = a.api.api;
    let tty = std::io::stdout().is_terminal();
    if a.once || !tty {
        let snap = fetch(api)?;
        std::io::stdout()
            .lock()
            .write_all(frame(&snap, api, a.moves, Style(tty)).as_bytes())?;
        return Ok(0);
    }
    let every = Duration::from_millis(a.interval.max(100));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            let next = tokio::time::Instant::now() + every;
            let fetched = tokio::task::spawn_blocking(move || fetch(api));
            let snap = tokio::select! {
                _ = &mut ctrl_c => break,
                r = fetched => r?,
            };
            let body = match snap {
                Ok(s) => frame(&s, api, a.moves, Style(true)),
                Err(e) => format!("roam top: {e:#}\nretrying every {} ms\n", every.as_millis()),
            };
            // Home, then each line followed by clear-to-end-of-line, then clear the rest:
            // redraws in place without flicker.
            let mut out = String::from("\x1b[H");
            for l in body.lines() {
                out.push_str(l);
                out.push_str("\x1b[K\n");
            }
            out.push_str(&format!(
                "\x1b[2m{} ms refresh, Ctrl-C quits\x1b[0m\x1b[K\n\x1b[J",
                every.as_millis()
            ));
            {
                let mut so = std::io::stdout().lock();
                so.write_all(out.as_bytes())?;
                so.flush()?;
            }
            tokio::select! {
                _ = &mut ctrl_c => break,
                _ = tokio::time::sleep_until(next) => {}
            }
        }
        anyhow::Ok(())
    });
    // Do not wait for a fetch still in flight when Ctrl-C came.
    rt.shutdown_background();
    r?;
    println!();
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actors::node::{JobSummaryRow, MoveReport};

    #[test]
    fn a_frame_shows_jobs_peers_and_moves_newest_first() {
        let mv = |job: &str, outcome: &str, ended_ms: u64| MoveReport {
            migration: job.into(),
            job: job.into(),
            from: "n1".into(),
            to: "n2".into(),
            outcome: outcome.into(),
            generation: 1,
            started_ms: ended_ms - 10,
            ended_ms,
            rounds: 2,
            stop_reason: String::new(),
            downtime_ms: 3.25,
            downtime_upper_ms: 4.0,
            pause_ms: 1.0,
            total_ms: 10.0,
            offered_bytes: 0,
            present_bytes: 0,
            sent_bytes: 2048,
            final_bytes: 0,
            compression: "none".into(),
            throughput_bytes_per_s: 0,
            mode: "pre-copy".into(),
            deferred_bytes: 0,
            ..Default::default()
        };
        let snap = Snapshot {
            status: NodeStatus {
                name: "n1".into(),
                peer: "12D3KooWAbcdefghijklmnop".into(),
                listen: vec![],
                api: None,
                draining: false,
                load: 0.25,
                jobs: vec![JobSummaryRow {
                    job: "autopilot".into(),
                    generation: 3,
                    state: "running".into(),
                    memory_bytes: 3 << 20,
                }],
                moves: vec![mv("old", "committed", 1000), mv("new", "aborted: x", 5000)],
                store_bytes: 0,
                peers_connected: 1,
                uptime_ms: 65_000,
                sched: None,
                recovery: Default::default(),
                postcopy: Vec::new(),
            },
            peers: vec![PeerRow {
                peer: "12D3KooWzyxwvutsrqponm".into(),
                name: "n2".into(),
                connected: true,
                rtt_ms: Some(0.5),
                throughput_mbit_s: None,
                load: Some(0.0),
                draining: true,
                jobs: 1,
                speed: Some(1.0),
            }],
        };
        let f = frame(&snap, "127.0.0.1:7070".parse().unwrap(), 10, Style(false));
        assert!(!f.contains('\x1b'), "escapes without a terminal");
        assert!(f.contains("up 1m05s"), "{f}");
        assert!(f.contains("autopilot"));
        assert!(f.contains("n2 (drain)"));
        let (new, old) = (f.find(" new ").unwrap(), f.find(" old ").unwrap());
        assert!(new < old, "newest move first:\n{f}");
        assert!(f.contains("aborted"));
        assert!(f.contains("1m04s"), "{f}");
        let colored = frame(&snap, "127.0.0.1:7070".parse().unwrap(), 1, Style(true));
        assert!(colored.contains("\x1b[31m"));
        assert!(!colored.contains(" old "), "only one move asked for");
    }
}
