//! Placement by ADMM in the node: three jobs started on one node of a three-node swarm
//! with room for one job per node are spread one per node by the swarm's agreed
//! placement (rounds over real gossip, moves by live migration), and every job's output
//! is still bit-identical to a straight run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use actors::demo::straight_run_of;
use actors::node::api::RunRequest;
use actors::node::proto::StreamKind;
use actors::node::{self, scheduler};
use wasm_host::{Host, HostConfig};

#[test]
fn admm_spreads_jobs_to_fit_capacity() {
    let wasm = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guests/out/autopilot.wasm"),
    )
    .expect("guests/out/autopilot.wasm (run scripts/build-guests)");
    node::actix_system().block_on(async {
        let host = Host::new(HostConfig::default()).expect("host");
        let nodes = node::local_swarm(&host, &["a", "b", "c"], |cfg| {
            cfg.migration.heartbeat_ms = 100;
            cfg.placement.mode = "admm".into();
            cfg.placement.capacity = 1.0;
            cfg.placement.round_every_ms = 300;
        })
        .await
        .expect("swarm");
        let args = vec!["3000000".to_string()];
        let jobs = ["j1", "j2", "j3"];
        for id in jobs {
            nodes[0]
                .run(RunRequest {
                    module: wasm.clone(),
                    name: Some("autopilot".into()),
                    id: Some(id.into()),
                    args: args.clone(),
                    seed: 3,
                    node: None,
                    ..RunRequest::default()
                })
                .await
                .expect("job starts");
        }
        // Spread: every node runs exactly one job.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut spread = false;
        while Instant::now() < deadline {
            let mut counts = Vec::new();
            for n in &nodes {
                let l = n.scheduler.send(scheduler::List).await.expect("list");
                counts.push(l.iter().filter(|j| j.state == "running").count());
            }
            if counts == [1, 1, 1] {
                spread = true;
                break;
            }
            let done = nodes[0]
                .logs("j1", StreamKind::Stdout, u64::MAX, 0)
                .await
                .is_ok_and(|s| s.exit_code.is_some());
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(spread, "the jobs were not spread one per node");
        // Every member counted the rounds it solved, as /metrics shows them.
        let mut moves = Vec::new();
        for n in &nodes {
            let t = n
                .solver
                .send(node::solver::AdmmStats)
                .await
                .expect("admm stats");
            let placed = t.rounds["placed"];
            assert!(placed >= 1, "{}: {t:?}", n.name());
            assert!(t.iterations_total >= placed && t.iterations.count() == placed);
            assert!(t.sent_bytes > 0, "{}: {t:?}", n.name());
            let last = t.last.clone().expect("a last placed round");
            assert!(last.iterations > 0 && last.round >= 1);
            let text = actors::node::api::metrics::render_admm(&t);
            assert!(
                text.contains(&format!(
                    "roam_admm_rounds_total{{result=\"placed\"}} {placed}\n"
                )),
                "{text}"
            );
            assert!(text.contains(&format!("roam_admm_last_iterations {}\n", last.iterations)));
            moves.push(t.placed_moves);
        }
        // Two of the three jobs had to leave node a.
        assert!(moves.iter().any(|&m| m >= 2), "{moves:?}");
        let (out, err, _) =
            straight_run_of(&host, &wasm, "autopilot", &args, 3).expect("straight run");
        for id in jobs {
            assert_eq!(
                nodes[0]
                    .wait_job(id, Duration::from_secs(120))
                    .await
                    .expect("ends"),
                0
            );
            assert!(
                nodes[0]
                    .local_log(id, StreamKind::Stdout)
                    .unwrap_or_default()
                    == out
            );
            assert!(
                nodes[0]
                    .local_log(id, StreamKind::Stderr)
                    .unwrap_or_default()
                    == err
            );
        }
        for n in &nodes {
            n.shutdown().await;
        }
    });
}
