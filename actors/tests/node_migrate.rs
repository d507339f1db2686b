//! Live migration between nodes of an in-process swarm (loopback): moves at random
//! moments give bit-identical output, and a move cut or killed at every protocol step
//! leaves the job running exactly once — at the source before the handover, at the
//! destination after it — or, where nobody can know (the destination died on Go),
//! paused and kept for crash recovery, never run twice.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::demo::straight_run_of;
use actors::node::api::RunRequest;
use actors::node::migrator::{Fault, Inject, MovePolicy};
use actors::node::proto::StreamKind;
use actors::node::{self, scheduler, NodeHandle};
use wasm_host::{Host, HostConfig};

fn guest(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../guests/out")
        .join(format!("{name}.wasm"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-guests)", p.display()))
}

fn system() -> actix::SystemRunner {
    node::actix_system()
}

fn host() -> Arc<Host> {
    Host::new(HostConfig::default()).expect("host")
}

async fn swarm(host: &Arc<Host>, names: &[&str], reply_timeout_ms: u64) -> Vec<NodeHandle> {
    node::local_swarm(host, names, |cfg| {
        cfg.migration.heartbeat_ms = 100;
        cfg.migration.reply_timeout_ms = reply_timeout_ms;
    })
    .await
    .expect("swarm starts")
}

async fn state_of(n: &NodeHandle, job: &str) -> Option<String> {
    n.scheduler
        .send(scheduler::List)
        .await
        .ok()?
        .into_iter()
        .find(|j| j.job == job)
        .map(|j| format!("{}@{}", j.state, j.generation))
}

async fn running_on(nodes: &[NodeHandle], job: &str) -> Vec<usize> {
    let mut v = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if state_of(n, job)
            .await
            .is_some_and(|s| s.starts_with("running"))
        {
            v.push(i);
        }
    }
    v
}

async fn start(home: &NodeHandle, wasm: &[u8], name: &str, args: &[String], on: &str) -> String {
    home.run(RunRequest {
        module: wasm.to_vec(),
        name: Some(name.into()),
        id: Some(name.into()),
        args: args.to_vec(),
        seed: 5,
        node: Some(on.into()),
        ..RunRequest::default()
    })
    .await
    .expect("job starts")
}

fn assert_output(home: &NodeHandle, host: &Arc<Host>, wasm: &[u8], name: &str, args: &[String]) {
    let (out, err, _) = straight_run_of(host, wasm, name, args, 5).expect("straight run");
    let got_out = home.local_log(name, StreamKind::Stdout).unwrap_or_default();
    let got_err = home.local_log(name, StreamKind::Stderr).unwrap_or_default();
    assert!(!out.is_empty());
    assert!(
        got_out == out,
        "{name}: stdout differs ({} vs {} bytes)",
        got_out.len(),
        out.len()
    );
    assert!(got_err == err, "{name}: stderr differs");
}

/// A job moved back and forth at random moments, every copy mode mixed,
/// gives the same output as a straight run, collected at its home, each byte once.
#[test]
fn random_moves_back_and_forth_keep_output_identical() {
    system().block_on(async {
        let host = host();
        let nodes = swarm(&host, &["a", "b", "c"], 3_000).await;
        let tracker = guest("tracker");
        let autopilot = guest("autopilot");
        let t_args = vec!["12000".to_string()];
        let a_args = vec!["1200000".to_string()];
        start(&nodes[0], &tracker, "tracker", &t_args, "b").await;
        start(&nodes[0], &autopilot, "autopilot", &a_args, "a").await;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut committed = 0;
        let mut post_copied = 0;
        for round in 0..12 {
            tokio::time::sleep(Duration::from_millis(20 + next() % 200)).await;
            let job = if round % 2 == 0 {
                "tracker"
            } else {
                "autopilot"
            };
            let on = running_on(&nodes, job).await;
            let Some(&from) = on.first() else { continue };
            assert_eq!(on.len(), 1, "{job} runs on {on:?}");
            let to = (from + 1 + (next() % 2) as usize) % 3;
            // Pre-copy, stop-and-copy, post-copy and hybrid mixed (post-copy falls
            // back to pre-copy where userfaultfd is missing).
            let mode = ["pre-copy", "post-copy", "hybrid"][(next() % 3) as usize];
            let policy = MovePolicy {
                max_rounds: Some(if next() % 3 == 0 { 0 } else { 8 }),
                compression: None,
                mode: Some(mode.into()),
            };
            let to_name = nodes[to].name().to_string();
            if let Ok(r) = nodes[from].migrate_with(job, &to_name, policy).await {
                assert_eq!(r.outcome, "committed");
                committed += 1;
                if r.mode == "post-copy" && r.deferred_bytes > 0 {
                    post_copied += 1;
                }
            }
        }
        assert!(committed >= 6, "only {committed} moves committed");
        if actors::node::migrator::postcopy_available() {
            assert!(post_copied >= 1, "no post-copy move deferred any memory");
        }
        for job in ["tracker", "autopilot"] {
            let code = nodes[0]
                .wait_job(job, Duration::from_secs(120))
                .await
                .expect("job ends");
            assert_eq!(code, 0);
        }
        assert_output(&nodes[0], &host, &tracker, "tracker", &t_args);
        assert_output(&nodes[0], &host, &autopilot, "autopilot", &a_args);
        for n in &nodes {
            n.shutdown().await;
        }
    });
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// The move aborts; the job finishes at the source.
    AtSource,
    /// The source escalates (Go unanswered), then learns the destination gave up
    /// and resumes; the job finishes at the source.
    EscalatedThenAtSource,
    /// The move committed; the job finishes at the destination.
    AtDestination,
    /// Go was sent and the destination died: the source keeps the job paused for
    /// crash recovery; it runs nowhere.
    PausedAtSource,
}

/// One faulty move in `mode` (pre-copy, post-copy...): `fault` installed at the source
/// (`at_source`) or destination.
async fn faulty_move(fault: Fault, at_source: bool, expect: Expect, mode: &str) {
    let host = host();
    // Short timeouts keep the test quick; the protocol does not depend on them.
    let nodes = swarm(&host, &["src", "dst"], 1_000).await;
    let wasm = guest("autopilot");
    // Long enough (about 3 s) to outlast a move that times out after 1 s.
    let args = vec!["4000000".to_string()];
    start(&nodes[0], &wasm, "autopilot", &args, "src").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let victim = if at_source { &nodes[0] } else { &nodes[1] };
    victim
        .migrator
        .send(Inject(Some(fault.clone())))
        .await
        .expect("inject");
    let policy = MovePolicy {
        mode: Some(mode.into()),
        ..MovePolicy::default()
    };
    let r = nodes[0].migrate_with("autopilot", "dst", policy).await;
    let what = format!(
        "{mode}: {fault:?} at {}",
        if at_source { "source" } else { "destination" }
    );
    match expect {
        Expect::AtSource => {
            let e = r.expect_err("the move must not commit");
            assert!(e.to_string().contains("aborted"), "{what}: {e:#}");
            // Still running at the source, or (on a fast machine) already ended there.
            let on = running_on(&nodes, "autopilot").await;
            let ended = nodes[0]
                .logs("autopilot", StreamKind::Stdout, u64::MAX, 0)
                .await
                .is_ok_and(|s| s.exit_code.is_some());
            assert!(
                on == vec![0] || (on.is_empty() && ended),
                "{what}: runs on {on:?}, ended {ended}"
            );
        }
        Expect::AtDestination | Expect::PausedAtSource | Expect::EscalatedThenAtSource => {
            let e = r.expect_err("the source cannot know the move committed");
            assert!(e.to_string().contains("escalated"), "{what}: {e:#}");
        }
    }
    match expect {
        Expect::AtSource | Expect::AtDestination | Expect::EscalatedThenAtSource => {
            // Never on two nodes at once, while it runs to its end.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let on = running_on(&nodes, "autopilot").await;
                assert!(on.len() <= 1, "{what}: runs on {on:?}");
                if let Ok(s) = nodes[0]
                    .logs("autopilot", StreamKind::Stdout, u64::MAX, 0)
                    .await
                {
                    if s.exit_code.is_some() {
                        break;
                    }
                }
                assert!(Instant::now() < deadline, "{what}: the job did not finish");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_output(&nodes[0], &host, &wasm, "autopilot", &args);
            if expect == Expect::AtDestination {
                // The escalated copy at the source is fenced by the newer generation.
                let src = nodes[0].clone();
                let deadline = Instant::now() + Duration::from_secs(10);
                while state_of(&src, "autopilot").await.is_some() {
                    assert!(
                        Instant::now() < deadline,
                        "{what}: stale copy kept at the source"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Expect::PausedAtSource => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(
                state_of(&nodes[0], "autopilot").await.as_deref(),
                Some("paused@0"),
                "{what}"
            );
            assert!(running_on(&nodes, "autopilot").await.is_empty(), "{what}");
            // Its final checkpoint is in the source's store for recovery.
            assert!(nodes[0].shared.store.latest("autopilot").is_some());
        }
    }
    for n in &nodes {
        n.shutdown().await;
    }
}

fn cut(at: &str, heal_ms: u64) -> Fault {
    Fault::CutAt {
        at: at.into(),
        heal_after: Some(Duration::from_millis(heal_ms)),
    }
}

#[test]
fn destination_killed_at_each_step() {
    system().block_on(async {
        for (at, expect) in [
            ("Offer", Expect::AtSource),
            ("Round", Expect::AtSource),
            ("Final", Expect::AtSource),
            ("Go", Expect::PausedAtSource),
        ] {
            faulty_move(Fault::DieAt(at.into()), false, expect, "pre-copy").await;
        }
    });
}

#[test]
fn link_cut_at_each_step_seen_by_the_destination() {
    system().block_on(async {
        for (at, expect) in [
            ("Offer", Expect::AtSource),
            ("Round", Expect::AtSource),
            ("Final", Expect::AtSource),
            // Go lost: the source escalates; once the link heals, the destination's
            // give-up Abort reaches it and it resumes the job.
            ("Go", Expect::EscalatedThenAtSource),
        ] {
            faulty_move(cut(at, 1_500), false, expect, "pre-copy").await;
        }
    });
}

#[test]
fn link_cut_at_each_step_seen_by_the_source() {
    system().block_on(async {
        for (at, expect) in [
            ("Have", Expect::AtSource),
            ("RoundAck", Expect::AtSource),
            ("Ready", Expect::AtSource),
            // The destination runs it; only the ack is lost.
            ("GoAck", Expect::AtDestination),
        ] {
            faulty_move(cut(at, 1_500), true, expect, "pre-copy").await;
        }
    });
}

/// A post-copy Final carries the Go: from the moment it leaves, the source never
/// resumes on a timeout. A destination that dies on it leaves the job paused at the
/// source for crash recovery (never running twice); a lost GoAck leaves it running at
/// the destination, and the source's copy is fenced.
#[test]
fn post_copy_faults_escalate_from_the_final() {
    system().block_on(async {
        for (fault, at_source, expect) in [
            (Fault::DieAt("Offer".into()), false, Expect::AtSource),
            (Fault::DieAt("Final".into()), false, Expect::PausedAtSource),
            (cut("GoAck", 1_500), true, Expect::AtDestination),
        ] {
            faulty_move(fault, at_source, expect, "post-copy").await;
        }
    });
}
