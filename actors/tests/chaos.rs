//! `roam chaos` at level 1, end to end: the smoke scenario (3 in-process nodes, 2 jobs,
//! n2 killed and restarted, n1 partitioned away and healed) is played, its report
//! parses, and the invariants that hold whether or not crash recovery brings jobs back
//! do hold: no generation on two nodes at once, no output byte delivered twice, every
//! finished job's output bit-identical to a straight run. That every job *finished*
//! is asserted only with `ROAM_CHAOS_STRICT=1` (turn it on once crash recovery is in).
//!
//! At level 2 (a `roam node` process per node): `configs/chaos/level2.toml` (seeded:
//! a partition, a SIGKILL and restart, a SIGSTOP and SIGCONT) keeps every invariant,
//! and the node processes and their directories are gone afterwards, also when the
//! run is interrupted. At level 3 (as root; skipped otherwise) the same in network
//! namespaces, with a rate-limited link, and no namespace is left; delay and loss
//! work there too (netem, or the userspace wire on a kernel without it).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use recovery::Report;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn roam() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_roam"));
    c.current_dir(workspace()).env("ROAM_PROGRESS", "0");
    c
}

#[test]
fn smoke_scenario_plays_its_timeline_and_keeps_the_invariants() {
    let guests = workspace().join("guests/out");
    for g in ["autopilot", "tracker"] {
        let p = guests.join(format!("{g}.wasm"));
        assert!(p.exists(), "{}: run scripts/build-guests", p.display());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("smoke.svg");
    let out = roam()
        .arg("chaos")
        .arg("--timeline")
        .arg(&svg)
        .arg("configs/chaos/smoke.toml")
        .output()
        .expect("roam runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = || {
        format!(
            "stdout:\n{stdout}\nstderr (last 3000 bytes):\n{}",
            tail(&stderr)
        )
    };

    // The timeline was played, in order.
    let mut at = 0;
    for ev in [
        "] kill n2",
        "] restart n2",
        "] partition {n1} | {n2,n3}",
        "] heal",
    ] {
        let pos = stdout[at..]
            .find(ev)
            .unwrap_or_else(|| panic!("`{ev}` not played after byte {at}\n{}", ctx()));
        at += pos + ev.len();
    }
    assert!(
        stdout.contains("home n3"),
        "n1 and n2 are disrupted\n{}",
        ctx()
    );
    assert!(
        stdout.contains("no generation on two nodes at once"),
        "{}",
        ctx()
    );

    // The last line is the report.
    let (v, report) = last_line_report(&stdout, &ctx());
    assert_eq!(v["scenario"], "smoke");
    assert_eq!(
        (&v["kills"], &v["restarts"], &v["partitions"], &v["jobs"]),
        (&1.into(), &1.into(), &1.into(), &2.into()),
        "{}",
        ctx()
    );
    assert_eq!(report.jobs, 2);
    assert_eq!(v["jobs_lost"].as_u64(), Some(report.jobs_lost.len() as u64));
    assert_eq!(
        out.status.code(),
        Some(if report.ok() { 0 } else { 1 }),
        "exit code 1 exactly when an invariant fails\n{}",
        ctx()
    );

    // What holds with or without recovery.
    assert!(
        report.duplicate_generations.is_empty(),
        "{:?}\n{}",
        report.duplicate_generations,
        ctx()
    );
    assert_eq!(report.duplicate_output_bytes, 0, "{}", ctx());
    let finished_wrong: Vec<&String> = report
        .output_mismatch
        .iter()
        .chain(&report.output_unverified)
        .filter(|j| !report.unfinished.contains(j))
        .collect();
    assert!(
        finished_wrong.is_empty(),
        "finished jobs whose output differs from a straight run: {finished_wrong:?}\n{}",
        ctx()
    );
    assert_eq!(v["outputs_identical"], true, "{}", ctx());
    assert!(report.finished + report.unfinished.len() == report.jobs);
    // "No acknowledged checkpoint lost" judged something: the recovery of n2's job is
    // recorded with the checkpoint it resumed from.
    assert!(
        report.resumes >= 1,
        "no recovery recorded with its checkpoint
{}",
        ctx()
    );
    assert!(
        report.lost_checkpoints.is_empty(),
        "{:?}
{}",
        report.lost_checkpoints,
        ctx()
    );

    // The timeline was drawn, with the kill and the partition.
    let drawn = std::fs::read_to_string(&svg).expect("the SVG is written");
    assert!(
        drawn.starts_with("<svg") || drawn.contains("<svg"),
        "not SVG"
    );
    assert!(drawn.contains("n2 killed") && drawn.contains("partition"));
    assert!(stdout.contains(&format!("timeline: {}", svg.display())));

    // Every job finished: only once crash recovery is in (ROAM_CHAOS_STRICT=1).
    if std::env::var_os("ROAM_CHAOS_STRICT").is_some() {
        assert!(report.ok(), "ROAM_CHAOS_STRICT: every invariant\n{}", ctx());
    } else if !report.unfinished.is_empty() {
        eprintln!(
            "not asserted: every job finished (unfinished: {:?}, lost: {:?}); a node's jobs \
             survive its death only with crash recovery. Set ROAM_CHAOS_STRICT=1 to assert it.",
            report.unfinished, report.jobs_lost
        );
    }
}

#[test]
fn a_disrupted_home_shaped_links_at_level_2_and_level_4_are_refused_before_anything_starts() {
    let out = roam()
        .args(["chaos", "--home", "n1", "configs/chaos/smoke.toml"])
        .output()
        .expect("roam runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--home n1") && stderr.contains("cut into a minority at 9000 ms"),
        "{stderr}"
    );
    assert!(stderr.contains("not replicated"), "{stderr}");

    // Level 2 cannot shape links: churn.toml's delay, loss and rate are refused,
    // naming level 3; level 3 is not there yet. Nothing starts either way.
    let out = roam()
        .args(["chaos", "--level", "2", "configs/chaos/churn.toml"])
        .output()
        .expect("roam runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--level 2 cannot shape links") && stderr.contains("level 3"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("nodes up"),
        "refused before anything starts"
    );
    let out = roam()
        .args(["chaos", "--level", "4", "configs/chaos/smoke.toml"])
        .output()
        .expect("roam runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--level"), "{stderr}");

    let out = roam()
        .args(["chaos", "configs/chaos/nope.toml"])
        .output()
        .expect("roam runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml"));
}

#[test]
fn level_2_plays_a_seeded_scenario_on_node_processes_and_keeps_every_invariant() {
    let guests = workspace().join("guests/out");
    for g in ["autopilot", "tracker"] {
        let p = guests.join(format!("{g}.wasm"));
        assert!(p.exists(), "{}: run scripts/build-guests", p.display());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("level2.svg");
    let child = roam()
        .args(["chaos", "--level", "2", "--wait-ms", "60000", "--timeline"])
        .arg(&svg)
        .arg("configs/chaos/level2.toml")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("roam runs");
    let harness = child.id();
    let out = child.wait_with_output().expect("roam ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = || {
        format!(
            "stdout:\n{stdout}\nstderr (last 3000 bytes):\n{}",
            tail(&stderr)
        )
    };
    assert!(
        stdout.contains("nodes up (level 2: a process per node, on 127.0.0.1), home n1"),
        "{}",
        ctx()
    );

    let (v, report) = last_line_report(&stdout, &ctx());
    assert_eq!((&v["scenario"], &v["level"]), (&"level2".into(), &2.into()));

    // The seed's timeline, in order, as far as it was played (it stops early when
    // every job finished first).
    let events = [
        "] partition {n2} | {n1,n3}",
        "] heal",
        "] kill n3 (SIGKILL)",
        "] restart n3 (a new process: same config, identity and on-disk store)",
        "] pause n3 (SIGSTOP",
        "] resume n3",
    ];
    let not_played = v["not_played"].as_u64().unwrap_or(u64::MAX) as usize;
    assert!(not_played <= 2, "the kill is always played\n{}", ctx());
    let mut at = 0;
    for ev in &events[..events.len() - not_played] {
        let pos = stdout[at..]
            .find(ev)
            .unwrap_or_else(|| panic!("`{ev}` not played after byte {at}\n{}", ctx()));
        at += pos + ev.len();
    }
    assert_eq!(v["kills"], 1, "{}", ctx());
    assert_eq!(v["partitions"], 1, "{}", ctx());

    // Every invariant: recovery is in, so every job finishes too; the recoveries were
    // read from the node processes (`GET /recovery`) with their checkpoints.
    assert_eq!(report.jobs, 3);
    assert!(report.ok(), "{report}\n{}", ctx());
    assert!(report.resumes >= 1, "{report:?}\n{}", ctx());
    assert_eq!(v["outputs_identical"], true, "{}", ctx());
    assert_eq!(out.status.code(), Some(0), "{}", ctx());

    let drawn = std::fs::read_to_string(&svg).expect("the SVG is written");
    assert!(drawn.contains("n3 killed"), "the kill is drawn");

    // Nothing is left behind: no node process, no scratch directory.
    assert_eq!(leftovers(harness), (Vec::new(), Vec::new()));
}

#[test]
fn level_2_interrupted_kills_its_node_processes_and_removes_their_directories() {
    let mut child = roam()
        .args(["chaos", "--level", "2", "configs/chaos/smoke.toml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("roam runs");
    let harness = child.id();
    let stdout = child.stdout.take().expect("piped stdout");
    let mut seen = String::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("jobs started") {
            break;
        }
    }
    assert!(seen.contains("jobs started"), "{seen}");
    let (procs, dirs) = leftovers(harness);
    assert_eq!(procs.len(), 3, "a process per node: {procs:?}");
    assert_eq!(dirs.len(), 1, "{dirs:?}");

    let pid = i32::try_from(harness).expect("pid");
    // SAFETY: kill(2) on our own child, not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let out = child.wait_with_output().expect("roam ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(leftovers(harness), (Vec::new(), Vec::new()), "{stderr}");
}

#[test]
fn level_3_plays_in_network_namespaces_shapes_a_rate_and_leaves_nothing_behind() {
    if !level_3_possible() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // smoke.toml with the link n1 -> n3 limited to 8 Mbit/s from the start.
    let smoke =
        std::fs::read_to_string(workspace().join("configs/chaos/smoke.toml")).expect("smoke.toml");
    let file = dir.path().join("l3.toml");
    let text = format!(
        "{}\n[[events]]\nat_ms = 0\nkind = \"rate\"\nfrom = \"n1\"\nto = \"n3\"\nvalue = 8000\n",
        smoke.replace("name = \"smoke\"", "name = \"l3\"")
    );
    std::fs::write(&file, text).expect("scenario written");
    let child = roam()
        .args(["chaos", "--level", "3", "--wait-ms", "60000", "--timeline"])
        .arg(dir.path().join("l3.svg"))
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("roam runs");
    let harness = child.id();
    let out = child.wait_with_output().expect("roam ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = || {
        format!(
            "stdout:\n{stdout}\nstderr (last 3000 bytes):\n{}",
            tail(&stderr)
        )
    };
    assert!(
        stdout.contains("(level 3: a process per node, each in a network namespace"),
        "{}",
        ctx()
    );
    assert!(
        stdout.contains("] rate n1->n3 8000 kbit/s (now 0 ms, 0 % loss, 8000 kbit/s)"),
        "{}",
        ctx()
    );
    let (v, report) = last_line_report(&stdout, &ctx());
    assert_eq!(
        (&v["level"], &v["shaped"], &v["kills"], &v["partitions"]),
        (&3.into(), &1.into(), &1.into(), &1.into()),
        "{}",
        ctx()
    );
    assert!(report.ok(), "{report}\n{}", ctx());
    assert_eq!(out.status.code(), Some(0), "{}", ctx());
    assert_eq!(leftovers(harness), (Vec::new(), Vec::new()));
    assert!(namespaces(harness).is_empty(), "{:?}", namespaces(harness));

    // Delay and loss: netem, or the userspace wire where the kernel has none. A job
    // runs to the end over a link with both, and nothing is left behind.
    let file = dir.path().join("delay.toml");
    std::fs::write(
        &file,
        "name = \"impaired\"\nnodes = 2\nduration_ms = 3000\n\
         [[jobs]]\nguest = \"autopilot\"\nargs = [\"200000\"]\n\
         [[events]]\nat_ms = 0\nkind = \"delay\"\nfrom = \"n1\"\nto = \"n2\"\nvalue = 20\n\
         [[events]]\nat_ms = 0\nkind = \"loss\"\nfrom = \"n2\"\nto = \"n1\"\nvalue = 2\n",
    )
    .expect("scenario written");
    let child = roam()
        .args(["chaos", "--level", "3", "--wait-ms", "60000"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("roam runs");
    let harness = child.id();
    let out = child.wait_with_output().expect("roam ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = || format!("stdout:\n{stdout}\nstderr:\n{}", tail(&stderr));
    assert!(
        stdout.contains("] delay n1->n2 20 ms") && stdout.contains("] loss n2->n1 2 %"),
        "{}",
        ctx()
    );
    let (v, report) = last_line_report(&stdout, &ctx());
    assert_eq!(v["shaped"], serde_json::Value::from(2), "{}", ctx());
    assert!(report.ok(), "{report}\n{}", ctx());
    assert_eq!(out.status.code(), Some(0), "{}", ctx());
    assert_eq!(leftovers(harness), (Vec::new(), Vec::new()));
    assert!(namespaces(harness).is_empty());
}

/// The run's JSON summary (stdout's last line) and the report in it; `ctx` explains
/// a failure.
fn last_line_report(stdout: &str, ctx: &str) -> (serde_json::Value, Report) {
    let last = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("last line: {e}\n{ctx}"));
    let report: Report = serde_json::from_value(v["report"].clone())
        .unwrap_or_else(|e| panic!("report: {e}\n{ctx}"));
    (v, report)
}

/// Root and iproute2 are there (level 3 makes namespaces); says so when not.
fn level_3_possible() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !root || !ip {
        eprintln!("SKIPPED: level 3 needs root and iproute2 (root {root}, ip netns {ip})");
    }
    root && ip
}

/// The network namespaces a level-3 run by `harness` made (`roam-PID-NODE`).
fn namespaces(harness: u32) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let prefix = format!("roam-{harness}-");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// The node processes and scratch directories a level-2 or level-3 run by `harness`
/// has (the directory is `roam-chaos2-PID-…` or `roam-chaos3-PID-…` in the temp dir,
/// and every node's command line names its config there).
fn leftovers(harness: u32) -> (Vec<u32>, Vec<PathBuf>) {
    let marks = [2, 3].map(|l| format!("roam-chaos{l}-{harness}-"));
    let mut procs = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if marks.iter().any(|m| cmdline.contains(m)) {
            procs.push(pid);
        }
    }
    let dirs = std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            marks.iter().any(|m| name.starts_with(m))
        })
        .map(|e| e.path())
        .collect();
    (procs, dirs)
}

fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(3000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Level 3's delay and loss, below the harness: two namespaces linked by the fabric
/// (netem where the kernel has it, the userspace wire otherwise) carry TCP with the
/// delay set (each round trip takes at least both directions' delay) and drop about
/// the share of UDP datagrams set; the namespaces go with the fabric.
#[test]
fn level_3_links_delay_and_drop_packets_with_or_without_netem() {
    use std::io::{Read as _, Write as _};
    use std::time::{Duration, Instant};

    use actors::chaos::netns::{within, Fabric};

    if !level_3_possible() {
        return;
    }
    let names = ["n1".to_string(), "n2".to_string()];
    let mut fabric = Fabric::create(&names, true).expect("fabric");
    let (n1, n2) = (
        fabric.ns_fd("n1").expect("n1"),
        fabric.ns_fd("n2").expect("n2"),
    );
    let at_n2 = fabric.addr("n1", "n2").expect("n2's address");
    for (from, to) in [("n1", "n2"), ("n2", "n1")] {
        fabric
            .shape(from, to, |s| s.delay_ms = 30.0)
            .expect("delay set");
    }
    // TCP: an echo server in n2, a client in n1.
    let listener = within(n2, || Ok(std::net::TcpListener::bind((at_n2, 0))?)).expect("listen");
    let port = listener.local_addr().expect("port").port();
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() {
            s.write_all(&b)?;
        }
        Ok(())
    });
    let mut client = within(n1, || {
        Ok(std::net::TcpStream::connect_timeout(
            &(at_n2, port).into(),
            Duration::from_secs(10),
        )?)
    })
    .expect("connect");
    client.set_nodelay(true).expect("nodelay");
    let mut fastest = Duration::MAX;
    for i in 0..5u8 {
        let t = Instant::now();
        client.write_all(&[i]).expect("write");
        let mut b = [0u8; 1];
        client.read_exact(&mut b).expect("echo");
        assert_eq!(b[0], i);
        fastest = fastest.min(t.elapsed());
    }
    assert!(
        fastest >= Duration::from_millis(60),
        "round trip {fastest:?} with 30 ms each way ({})",
        if fabric.wired() {
            "userspace wire"
        } else {
            "netem"
        }
    );
    drop(client);
    server.join().expect("server thread").expect("echo server");

    // UDP: 40 % of 500 datagrams n1 -> n2 dropped (binomial: ±11 is one sd).
    fabric
        .shape("n1", "n2", |s| {
            s.delay_ms = 0.0;
            s.loss_pct = 40.0;
        })
        .expect("loss set");
    let rx = within(n2, || Ok(std::net::UdpSocket::bind((at_n2, 0))?)).expect("udp bind");
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let rx_port = rx.local_addr().expect("port").port();
    // Read while they arrive, so no socket buffer overflows.
    let reader = std::thread::spawn(move || {
        let (mut got, mut b) = (0u32, [0u8; 16]);
        while rx.recv(&mut b).is_ok() {
            got += 1;
        }
        got
    });
    let before = fabric.wire_counts("n1", "n2");
    let tx = within(n1, || Ok(std::net::UdpSocket::bind(("0.0.0.0", 0))?)).expect("udp");
    let sent = 500u32;
    for i in 0..sent {
        tx.send_to(&i.to_be_bytes(), (at_n2, rx_port))
            .expect("send");
        if i % 50 == 49 {
            // Paced, so no queue on the way overflows.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let got = reader.join().expect("reader");
    // 60 % of 500 arrive: 300, one standard deviation 11.
    assert!(
        (250..350).contains(&got),
        "{got} of {sent} arrived with 40 % loss ({})",
        if fabric.wired() {
            "userspace wire"
        } else {
            "netem"
        }
    );
    if let (Some((c0, d0)), Some((c1, d1))) = (before, fabric.wire_counts("n1", "n2")) {
        // The wire itself dropped them (a few other frames, ARP or the TCP close,
        // may have crossed too).
        let (carried, dropped) = (c1 - c0, d1 - d0);
        assert!(
            carried >= u64::from(got) && dropped >= u64::from(sent - got),
            "wire carried {carried} dropped {dropped}; {got} of {sent} arrived"
        );
    }
    let harness = std::process::id();
    drop(fabric);
    assert!(namespaces(harness).is_empty(), "{:?}", namespaces(harness));
}
