//! What an operator sees: `GET /status` and `GET /metrics` report a move that just
//! happened (two in-process nodes on 127.0.0.1, read over HTTP), `GET /jobs` lists a
//! node's jobs and `POST /chaos/block` cuts a node off its peers and lets it back,
//! `roam top --once`
//! shows it, `roam config --default` is the documented default config, `roam config
//! --check` names file, line and key of a bad one, and every command's `--help` has an
//! example.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use actors::http;
use actors::node::api::RunRequest;
use actors::node::{self, NodeConfig, NodeHandle, NodeStatus};
use wasm_host::{Host, HostConfig};

fn roam() -> Command {
    Command::new(env!("CARGO_BIN_EXE_roam"))
}

fn guest(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../guests/out")
        .join(format!("{name}.wasm"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-guests)", p.display()))
}

fn system() -> actix::SystemRunner {
    node::actix_system()
}

/// GET `path` from a node's API, off the actix thread (the client blocks; the node
/// answers on this thread's event loop).
async fn get(api: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let r = http::request(
            api,
            "GET",
            &path,
            None,
            &[],
            Duration::from_secs(20),
            1 << 24,
        )
        .expect("the API answers");
        let ctype = r.header("content-type").unwrap_or("").to_string();
        (r.status, ctype, r.body)
    })
    .await
    .expect("join")
}

/// POST `path` (no body) to a node's API, off the actix thread.
async fn post(api: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let r = http::request(
            api,
            "POST",
            &path,
            None,
            &[],
            Duration::from_secs(20),
            1 << 20,
        )
        .expect("the API answers");
        (r.status, r.body)
    })
    .await
    .expect("join")
}

#[test]
fn jobs_lists_a_nodes_jobs_and_chaos_block_cuts_it_off_and_lets_it_back() {
    system().block_on(async {
        let host = Host::new(HostConfig::default()).expect("host");
        let mut nodes = Vec::new();
        for name in ["bl1", "bl2"] {
            let mut cfg = NodeConfig::local(name);
            cfg.migration.heartbeat_ms = 100;
            nodes.push(node::start(cfg, Arc::clone(&host)).await.expect("node"));
        }
        nodes[1].connect(&nodes[0]).await.expect("connect");
        for n in &nodes {
            n.wait_for_peers(1, Duration::from_secs(20))
                .await
                .expect("peers");
        }
        let api = nodes[0].api_addr.expect("bl1 serves its API");
        let job = nodes[0]
            .run(RunRequest {
                module: guest("autopilot"),
                name: Some("autopilot".into()),
                id: Some("ap".into()),
                args: vec!["50000000".into()],
                node: Some("bl1".into()),
                ..RunRequest::default()
            })
            .await
            .expect("job starts");

        let (code, _, body) = get(api, "/jobs").await;
        assert_eq!(code, 200);
        let jobs: actors::node::api::JobsAnswer =
            serde_json::from_slice(&body).expect("a JobsAnswer");
        assert!(jobs.uptime_ms > 0);
        assert_eq!(jobs.jobs.len(), 1, "{jobs:?}");
        assert_eq!(
            (jobs.jobs[0].job.as_str(), jobs.jobs[0].generation),
            (job.as_str(), 0)
        );

        let connected = |n: usize| {
            let node = nodes[0].clone();
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                loop {
                    let now = node.status().await.expect("status").peers_connected;
                    if now == n {
                        return;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{now} peers connected, waiting for {n}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let other = nodes[1].peer_id().to_string();
        let (code, body) = post(api, &format!("/chaos/block?peer={other}")).await;
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(v["blocked"], 1);
        connected(0).await;
        // An empty list lifts every block: the peer is dialed again.
        let (code, _) = post(api, "/chaos/block").await;
        assert_eq!(code, 200);
        connected(1).await;
        let (code, body) = post(api, "/chaos/block?peer=nonsense").await;
        assert_eq!(code, 400);
        assert!(String::from_utf8_lossy(&body).contains("nonsense"));
        for n in &nodes {
            n.shutdown().await;
        }
    });
}

/// The value of the sample `series` (name with labels, exactly) in a Prometheus text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .parse()
        .expect("a number")
}

/// Runs `roam ARGS` to its end off the actix thread (the nodes it talks to answer on
/// this thread).
async fn roam_off_thread(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || roam().args(&args).output().expect("roam runs"))
        .await
        .expect("join")
}

async fn running_here(n: &NodeHandle, job: &str) -> bool {
    n.scheduler
        .send(node::scheduler::List)
        .await
        .map(|l| l.iter().any(|j| j.job == job && j.state == "running"))
        .unwrap_or(false)
}

#[test]
fn status_metrics_and_top_report_a_move_that_just_happened() {
    system().block_on(async {
        let host = Host::new(HostConfig::default()).expect("host");
        let mut nodes = Vec::new();
        for name in ["op1", "op2"] {
            let mut cfg = NodeConfig::local(name);
            cfg.migration.heartbeat_ms = 100;
            nodes.push(node::start(cfg, Arc::clone(&host)).await.expect("node"));
        }
        nodes[1].connect(&nodes[0]).await.expect("connect");
        for n in &nodes {
            n.wait_for_peers(1, Duration::from_secs(20))
                .await
                .expect("peers");
        }
        let api = nodes[0].api_addr.expect("op1 serves its API");
        let api2 = nodes[1].api_addr.expect("op2 serves its API");

        // Before any move: the families exist, with zero moves.
        let (status, ctype, body) = get(api, "/metrics").await;
        assert_eq!(status, 200);
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        let before = String::from_utf8(body).expect("utf-8");
        assert_eq!(
            sample(&before, "roam_moves_total{outcome=\"committed\"}"),
            0.0
        );
        assert_eq!(sample(&before, "roam_move_downtime_seconds_count"), 0.0);

        // A long job on op1, moved to op2.
        let job = nodes[0]
            .run(RunRequest {
                module: guest("autopilot"),
                name: Some("autopilot".into()),
                id: Some("autopilot".into()),
                args: vec!["50000000".into()],
                seed: 3,
                node: Some("op1".into()),
                ..RunRequest::default()
            })
            .await
            .expect("job starts");
        assert!(running_here(&nodes[0], &job).await);
        let report = nodes[0].migrate(&job, "op2").await.expect("the move");
        assert_eq!(report.outcome, "committed");
        assert!(running_here(&nodes[1], &job).await);

        // /status on the source lists the move; on both, the peer count.
        let (code, _, body) = get(api, "/status").await;
        assert_eq!(code, 200);
        let st: NodeStatus = serde_json::from_slice(&body).expect("status JSON");
        let seen = st
            .moves
            .iter()
            .find(|m| m.migration == report.migration)
            .expect("the move in /status");
        assert_eq!((seen.job.as_str(), seen.to.as_str()), (job.as_str(), "op2"));
        // Through JSON: equal up to float printing.
        assert!(
            (seen.downtime_ms - report.downtime_ms).abs() < 1e-9,
            "{} vs {}",
            seen.downtime_ms,
            report.downtime_ms
        );
        assert_eq!(st.peers_connected, 1);
        assert!(st.jobs.is_empty(), "the job left op1: {:?}", st.jobs);
        assert!(st.uptime_ms >= seen.ended_ms);

        // /metrics on the source counts it: outcome, downtime, bytes.
        let (_, _, body) = get(api, "/metrics").await;
        let m = String::from_utf8(body).expect("utf-8");
        assert_eq!(sample(&m, "roam_moves_total{outcome=\"committed\"}"), 1.0);
        assert_eq!(sample(&m, "roam_moves_total{outcome=\"aborted\"}"), 0.0);
        assert_eq!(sample(&m, "roam_move_downtime_seconds_count"), 1.0);
        assert_eq!(
            sample(&m, "roam_move_downtime_seconds_bucket{le=\"+Inf\"}"),
            1.0
        );
        let sum = sample(&m, "roam_move_downtime_seconds_sum");
        assert!(
            (sum - report.downtime_ms / 1e3).abs() < 1e-9,
            "{sum} vs {} ms",
            report.downtime_ms
        );
        assert_eq!(
            sample(&m, "roam_move_sent_bytes_total"),
            report.sent_bytes as f64
        );
        assert!(report.sent_bytes > 0);
        assert_eq!(sample(&m, "roam_jobs{state=\"running\"}"), 0.0);
        assert_eq!(sample(&m, "roam_peers_connected"), 1.0);
        assert!(sample(&m, "roam_store_bytes") > 0.0);
        // A second scrape counts the same move once.
        let (_, _, body) = get(api, "/metrics").await;
        let again = String::from_utf8(body).expect("utf-8");
        assert_eq!(
            sample(&again, "roam_moves_total{outcome=\"committed\"}"),
            1.0
        );
        // The destination runs it.
        let (_, _, body) = get(api2, "/metrics").await;
        let m2 = String::from_utf8(body).expect("utf-8");
        assert_eq!(sample(&m2, "roam_jobs{state=\"running\"}"), 1.0);

        // `roam top` without a terminal prints one frame with the move in it.
        let out = roam_off_thread(&["top", "--api", &api.to_string()]).await;
        assert!(out.status.success(), "{out:?}");
        let frame = String::from_utf8_lossy(&out.stdout);
        assert!(!frame.contains('\x1b'), "escapes on a pipe:\n{frame}");
        assert!(frame.contains("node op1"), "{frame}");
        assert!(frame.contains("op2"), "{frame}");
        assert!(frame.contains(&format!("{job} ")), "{frame}");
        assert!(frame.contains("op1→op2"), "{frame}");
        assert!(frame.contains("committed"), "{frame}");

        // `roam migrate` through op1's API moves it back (op2 makes the move); piped,
        // it prints the report and draws no progress.
        // (op1 learns from op2's heartbeat that op2 runs it.)
        let mut known = false;
        for _ in 0..500 {
            let rows = nodes[0].ps().await.expect("ps");
            if rows.iter().any(|r| r.job == job && r.node == "op2") {
                known = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(known, "op1 never saw op2 run {job}");
        let out = roam_off_thread(&["migrate", "--api", &api.to_string(), &job, "op1"]).await;
        assert!(out.status.success(), "{out:?}");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains(&format!("{job} op2→op1")), "{said}");
        assert!(said.contains("committed"), "{said}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
        assert!(running_here(&nodes[0], &job).await);

        // While a move runs, GET /moves/active shows it: a cut link (healed after
        // 800 ms) holds the third move in its offer long enough to look.
        nodes[0]
            .migrator
            .send(node::migrator::Inject(Some(node::migrator::Fault::CutAt {
                at: "Have".into(),
                heal_after: Some(Duration::from_millis(800)),
            })))
            .await
            .expect("inject");
        let (n0, j) = (nodes[0].clone(), job.clone());
        let third = actix::spawn(async move { n0.migrate(&j, "op2").await });
        let mut seen = None;
        for _ in 0..200 {
            let (code, _, body) = get(api, "/moves/active").await;
            assert_eq!(code, 200);
            let active: Vec<node::migrator::MoveProgress> =
                serde_json::from_slice(&body).expect("active moves JSON");
            if let Some(m) = active.into_iter().find(|m| m.job == job) {
                seen = Some(m);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let m = seen.expect("the move in /moves/active");
        assert_eq!((m.to.as_str(), m.phase.as_str()), ("op2", "offer"));
        assert!(m.state_bytes > 0, "{m:?}");
        let third = third.await.expect("join").expect("the third move");
        assert_eq!(third.outcome, "committed");
        nodes[0]
            .migrator
            .send(node::migrator::Inject(None))
            .await
            .expect("clear");
        let (_, _, body) = get(api, "/moves/active").await;
        assert_eq!(body, b"[]", "{}", String::from_utf8_lossy(&body));
        let (_, _, body) = get(api, "/metrics").await;
        let m = String::from_utf8(body).expect("utf-8");
        assert_eq!(sample(&m, "roam_moves_total{outcome=\"committed\"}"), 2.0);
        assert_eq!(sample(&m, "roam_move_downtime_seconds_count"), 2.0);
        // A rule-mode node took part in no placement round.
        assert_eq!(sample(&m, "roam_admm_rounds_total{result=\"placed\"}"), 0.0);
        assert_eq!(sample(&m, "roam_admm_iterations_count"), 0.0);

        nodes[1].kill(&job).await.expect("kill");
        for n in &nodes {
            n.shutdown().await;
        }
    });
}

#[test]
fn config_default_is_the_documented_default() {
    let out = roam()
        .args(["config", "--default"])
        .output()
        .expect("roam config");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let parsed = NodeConfig::parse(&text, std::path::Path::new("<stdout>")).expect("parses");
    assert_eq!(parsed, NodeConfig::default());
    let example = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/node.toml"),
    )
    .expect("configs/node.toml");
    let differ: Vec<(&str, &str)> = text
        .lines()
        .zip(example.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(text.lines().count(), example.lines().count());
    assert!(
        differ
            .iter()
            .all(|(a, b)| a.starts_with("name = ") && b.starts_with("name = ")),
        "only the name may differ: {differ:?}"
    );
}

#[test]
fn config_check_names_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        check_file(&p)
    };
    let (code, out, _) = check("good.toml", "name = \"a\"\n[migration]\nmax_rounds = 3\n");
    assert_eq!(code, Some(0));
    assert!(out.contains("good.toml: ok"), "{out}");

    // A key that does not exist (a TOML error).
    let (code, _, err) = check("typo.toml", "name = \"a\"\n[migration]\nmax_roundz = 3\n");
    assert_eq!(code, Some(1));
    for want in ["typo.toml", "line 3", "max_roundz"] {
        assert!(err.contains(want), "{want:?} missing from {err}");
    }
    // A value out of range (a validation error).
    let (code, _, err) = check(
        "range.toml",
        "name = \"a\"\n\n[migration]\n# comment\nmax_rounds = 1000\n",
    );
    assert_eq!(code, Some(1));
    for want in ["range.toml", "line 5", "migration.max_rounds"] {
        assert!(err.contains(want), "{want:?} missing from {err}");
    }
    // A value of the wrong type.
    let (code, _, err) = check("type.toml", "name = \"a\"\nspeed = \"fast\"\n");
    assert_eq!(code, Some(1));
    for want in ["type.toml", "line 2", "speed"] {
        assert!(err.contains(want), "{want:?} missing from {err}");
    }
    // No file.
    let (code, _, err) = check_file(&dir.path().join("absent.toml"));
    assert_eq!(code, Some(1));
    assert!(err.contains("absent.toml"), "{err}");
}

/// `roam config --check FILE`: exit code, stdout, stderr.
fn check_file(p: &std::path::Path) -> (Option<i32>, String, String) {
    let out = roam()
        .args(["config", "--check"])
        .arg(p)
        .output()
        .expect("roam config --check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Subcommand names listed under "Commands:" in a help text.
fn commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // Wrapped descriptions are indented further.
        .filter(|l| !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

#[test]
fn every_command_says_what_it_does_with_an_example() {
    let help = |args: &[&str]| {
        let out = roam()
            .args(args)
            .arg("--help")
            .output()
            .expect("roam --help");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let top = help(&[]);
    let mut cmds: Vec<Vec<String>> = commands(&top).into_iter().map(|c| vec![c]).collect();
    assert!(cmds.len() >= 12, "{top}");
    for c in ["top", "config", "demo", "node"] {
        assert!(cmds.iter().any(|v| v[0] == c), "{c} missing from\n{top}");
    }
    // Hidden commands too, and nested ones.
    cmds.push(vec!["relay".into()]);
    let mut i = 0;
    while i < cmds.len() {
        let args: Vec<&str> = cmds[i].iter().map(String::as_str).collect();
        let text = help(&args);
        let first = text.lines().next().unwrap_or("");
        assert!(first.len() > 20, "{args:?}: no description:\n{text}");
        let nested = commands(&text);
        if nested.is_empty() {
            assert!(text.contains("Example"), "{args:?}: no example:\n{text}");
            assert!(
                text.contains(&format!("roam {}", args.join(" "))),
                "{args:?}: the example does not run it:\n{text}"
            );
        }
        for n in nested {
            let mut v = cmds[i].clone();
            v.push(n);
            cmds.push(v);
        }
        i += 1;
    }
}

/// Every command logs through `tracing` to stderr at the level `-v` asks for, and
/// `RUST_LOG` replaces it. Each runs with arguments that end it at once (a missing
/// file, an API on 127.0.0.1 port 1 where nothing listens, a refused option): the
/// logging is set up before any of that, for every command alike.
#[test]
fn every_command_logs_at_the_level_asked() {
    let dead = "127.0.0.1:1";
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("exec", vec!["exec", "/nonexistent/x.wasm"]),
        ("resume", vec!["resume", "/nonexistent/x.snap"]),
        ("store", vec!["store", "ls", "/nonexistent/store"]),
        ("node", vec!["node", "--config", "/nonexistent/node.toml"]),
        ("run", vec!["run", "--api", dead, "/nonexistent/x.wasm"]),
        ("ps", vec!["ps", "--api", dead]),
        ("peers", vec!["peers", "--api", dead]),
        ("migrate", vec!["migrate", "--api", dead, "j", "n2"]),
        ("drain", vec!["drain", "--api", dead]),
        ("logs", vec!["logs", "--api", dead, "j"]),
        ("top", vec!["top", "--once", "--api", dead]),
        ("config", vec!["config", "--default"]),
        (
            "demo",
            vec![
                "demo",
                "--guests",
                "/nonexistent",
                "--timeline",
                "/nonexistent/t.svg",
            ],
        ),
        (
            "relay",
            vec![
                "relay",
                "--listen",
                dead,
                "--to",
                dead,
                "--delay-ms",
                "999999",
            ],
        ),
        ("chaos", vec!["chaos", "/nonexistent/scenario.toml"]),
    ];
    // Every subcommand the help lists (and the hidden relay) is covered.
    let help = roam().arg("--help").output().expect("roam --help");
    let listed = commands(&String::from_utf8_lossy(&help.stdout));
    for c in &listed {
        assert!(cases.iter().any(|(n, _)| n == c), "{c} has no logging case");
    }
    let stderr = |args: &[&str], verbose: &[&str], rust_log: Option<&str>| {
        let mut cmd = roam();
        cmd.args(verbose).args(args).env_remove("RUST_LOG");
        if let Some(l) = rust_log {
            cmd.env("RUST_LOG", l);
        }
        let out = cmd.output().expect("roam runs");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for (name, args) in &cases {
        let line = format!("roam {name} starting");
        let quiet = stderr(args, &[], None);
        assert!(
            !quiet.contains(&line),
            "{name}: debug line without -v:\n{quiet}"
        );
        let debug = stderr(args, &["-vv"], None);
        assert!(
            debug.contains("DEBUG") && debug.contains(&line),
            "{name}: no debug line with -vv:\n{debug}"
        );
        // RUST_LOG replaces the level -v asks for, both ways.
        let env_debug = stderr(args, &[], Some("debug"));
        assert!(
            env_debug.contains(&line),
            "{name}: RUST_LOG=debug:\n{env_debug}"
        );
        let env_warn = stderr(args, &["-vv"], Some("warn"));
        assert!(
            !env_warn.contains(&line),
            "{name}: RUST_LOG=warn:\n{env_warn}"
        );
    }
    // `-v` after the subcommand works too (the flag is global).
    let after = stderr(&["config", "-vv", "--default"], &[], None);
    assert!(after.contains("roam config starting"), "{after}");
}
