//! Post-copy in the node, when it goes wrong: the source dies right after the handover,
//! with most of the job's memory not yet at the destination. The destination cannot
//! complete the job's memory, so it gives the job up (poisoned: no output from a memory
//! image with holes) and crash recovery resumes it from its newest replicated
//! checkpoint, with the next generation. The output at the job's home is bit-identical
//! to a straight run, every byte once. (Post-copy moves that succeed are in
//! `node_migrate.rs`, mixed with the other modes.)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::demo::straight_run_of;
use actors::node::api::RunRequest;
use actors::node::migrator::{self, Fault, Inject, MovePolicy};
use actors::node::proto::StreamKind;
use actors::node::{self, scheduler, NodeConfig, NodeHandle};
use wasm_host::{Host, HostConfig};

fn guest(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../guests/out")
        .join(format!("{name}.wasm"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-guests)", p.display()))
}

async fn running(n: &NodeHandle, job: &str) -> Option<u64> {
    n.scheduler
        .send(scheduler::List)
        .await
        .ok()?
        .into_iter()
        .find(|j| j.job == job && j.state == "running")
        .map(|j| j.generation)
}

#[test]
fn a_source_dead_mid_post_copy_is_recovered_from_a_replicated_checkpoint() {
    if !migrator::postcopy_available() {
        eprintln!("SKIP: userfaultfd is not available here, so post-copy is not either");
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    node::actix_system().block_on(async {
        let host: Arc<Host> = Host::new(HostConfig::default()).expect("host");
        let nodes = node::local_swarm(&host, &["home", "src", "dst"], |cfg: &mut NodeConfig| {
            cfg.migration.heartbeat_ms = 100;
            cfg.recovery.suspect_after_ms = 600;
            cfg.recovery.dead_after_ms = 1500;
            cfg.recovery.min_period_ms = 150;
            cfg.recovery.max_period_ms = 600;
        })
        .await
        .expect("swarm");
        let wasm = guest("bigstate");
        // 24 MiB of state, ~10 s of steps: the pull cannot be over before the source dies.
        let args: Vec<String> = ["--mib", "24", "--steps", "7000", "--print-every", "50"]
            .map(String::from)
            .to_vec();
        nodes[0]
            .run(RunRequest {
                module: wasm.clone(),
                name: Some("big".into()),
                id: Some("big".into()),
                args: args.clone(),
                seed: 5,
                node: Some("src".into()),
                ..RunRequest::default()
            })
            .await
            .expect("the job starts");

        // Both other nodes hold an acknowledged replica of the job before it moves.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let acks = nodes[1].recovery_facts().await.expect("acks").acks;
            let holders: std::collections::BTreeSet<&str> =
                acks.iter().map(|(_, h, _)| h.as_str()).collect();
            if holders.contains("home") && holders.contains("dst") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no replicas acknowledged: {acks:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The source dies as soon as the destination acknowledges the handover.
        nodes[1]
            .migrator
            .send(Inject(Some(Fault::DieAt("GoAck".into()))))
            .await
            .expect("inject");
        let policy = MovePolicy {
            mode: Some("post-copy".into()),
            ..MovePolicy::default()
        };
        // The source may die before it can answer: the outcome is read from the nodes.
        let _ = nodes[1].migrate_with("big", "dst", policy).await;

        // The destination's pull fails and it gives the job up.
        let deadline = Instant::now() + Duration::from_secs(60);
        let pull = loop {
            let pulls = nodes[2]
                .migrator
                .send(migrator::Pulls)
                .await
                .expect("pulls");
            if let Some(p) = pulls.into_iter().rev().find(|p| p.job == "big") {
                if p.finished_ms.is_some() {
                    break p;
                }
            }
            assert!(Instant::now() < deadline, "no post-copy pull ended at dst");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        eprintln!("pull: {pull:?}");
        assert!(
            pull.failed.is_some(),
            "the pull completed before the source died ({} of {} chunks): nothing was tested",
            pull.installed,
            pull.chunks
        );

        // Recovery resumes it (generation 2: 1 was the destination's) and it ends.
        let survivors = [&nodes[0], &nodes[2]];
        let mut resumed = None;
        let code = loop {
            let mut on = Vec::new();
            for n in survivors {
                if let Some(g) = running(n, "big").await {
                    on.push((n.name().to_string(), g));
                }
            }
            assert!(on.len() <= 1, "the job runs on two nodes: {on:?}");
            if let Some((_, g)) = on.first() {
                if *g >= 2 {
                    resumed.get_or_insert(*g);
                }
            }
            if let Some(c) = nodes[0]
                .logs("big", StreamKind::Stdout, u64::MAX, 0)
                .await
                .ok()
                .and_then(|s| s.exit_code)
            {
                break c;
            }
            assert!(
                Instant::now() < deadline + Duration::from_secs(120),
                "the job did not finish after its post-copy failed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(code, 0);
        assert_eq!(resumed, Some(2), "not resumed with generation 2");
        let (out, _, _) = straight_run_of(&host, &wasm, "big", &args, 5).expect("straight run");
        let got = nodes[0]
            .local_log("big", StreamKind::Stdout)
            .unwrap_or_default();
        assert!(
            got == out,
            "output differs from a straight run ({} vs {} bytes)",
            got.len(),
            out.len()
        );
        for n in &nodes {
            n.shutdown().await;
        }
    });
}
