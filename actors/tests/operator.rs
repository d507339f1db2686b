//! What an operator sees: `GET /status` and `GET /metrics` report a move that just
//! happened (two in-process nodes on 127.0.0.1, read over HTTP), `roam top --once`
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

/// The value of the sample `series` (name with labels, exactly) in a Prometheus text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .parse()
        .expect("a number")
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
        let out = tokio::task::spawn_blocking(move || {
            roam()
                .args(["top", "--api", &api.to_string()])
                .output()
                .expect("roam top runs")
        })
        .await
        .expect("join");
        assert!(out.status.success(), "{out:?}");
        let frame = String::from_utf8_lossy(&out.stdout);
        assert!(!frame.contains('\x1b'), "escapes on a pipe:\n{frame}");
        assert!(frame.contains("node op1"), "{frame}");
        assert!(frame.contains("op2"), "{frame}");
        assert!(frame.contains(&format!("{job} ")), "{frame}");
        assert!(frame.contains("op1→op2"), "{frame}");
        assert!(frame.contains("committed"), "{frame}");

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
