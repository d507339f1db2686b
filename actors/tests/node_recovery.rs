//! Crash recovery in the node: a job whose node dies resumes on a replica holder from its
//! newest replicated checkpoint, with the next generation; its output at the home is
//! bit-identical to a straight run with every byte once; at no moment do two nodes run
//! it. Three nodes in one process; "dies" = the node's mesh and jobs stop at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::demo::straight_run_of;
use actors::node::api::RunRequest;
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

/// Polls `nodes` until the home (`home`) has `job`'s exit code, asserting every round
/// that at most one of them runs it and handing `each_round` the running copy (node,
/// generation), if any. Fails with `what` once `limit` has passed.
async fn exit_code_with_one_copy(
    home: &NodeHandle,
    nodes: &[&NodeHandle],
    job: &str,
    limit: Instant,
    what: &str,
    mut each_round: impl FnMut(Option<&(String, u64)>),
) -> i32 {
    loop {
        let mut on = Vec::new();
        for n in nodes {
            if let Some(g) = running(n, job).await {
                on.push((n.name().to_string(), g));
            }
        }
        assert!(on.len() <= 1, "{job} runs on two nodes: {on:?}");
        each_round(on.first());
        if let Some(c) = home
            .logs(job, StreamKind::Stdout, u64::MAX, 0)
            .await
            .ok()
            .and_then(|s| s.exit_code)
        {
            return c;
        }
        assert!(Instant::now() < limit, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts that what `home` collected of `job` (stdout, and stderr unless `None`) and
/// its exit `code` are a straight run's of `module` with `args` and `seed`.
fn assert_straight_run(
    host: &Arc<Host>,
    home: &NodeHandle,
    job: &str,
    (module, args, seed): (&[u8], &[String], u64),
    code: i32,
    check_stderr: bool,
) {
    let (out, err, want) = straight_run_of(host, module, job, args, seed).expect("straight");
    assert_eq!(code, want);
    assert!(!out.is_empty());
    let got = home.local_log(job, StreamKind::Stdout).unwrap_or_default();
    assert!(
        got == out,
        "stdout differs: {} vs {} bytes",
        got.len(),
        out.len()
    );
    if check_stderr {
        let got = home.local_log(job, StreamKind::Stderr).unwrap_or_default();
        assert!(got == err, "stderr differs");
    }
}

/// After `dead` died: `job` finishes at the home (`survivors[0]`) before `limit` with
/// at most one copy running at a time and a straight run's output, recovered exactly
/// once, from `dead`; then the survivors shut down.
async fn recovered_once(
    host: &Arc<Host>,
    survivors: &[&NodeHandle],
    job: &str,
    run: (&[u8], &[String], u64),
    limit: Instant,
    dead: &str,
) {
    let code = exit_code_with_one_copy(
        survivors[0],
        survivors,
        job,
        limit,
        &format!("{job} was not recovered after {dead} died"),
        |_| {},
    )
    .await;
    assert_straight_run(host, survivors[0], job, run, code, false);
    let recovered = recoveries(survivors).await;
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert_eq!(recovered[0].from_node, dead);
    for n in survivors {
        n.shutdown().await;
    }
}

/// The recoveries `nodes` made, all together.
async fn recoveries(nodes: &[&NodeHandle]) -> Vec<node::recovery::Recovered> {
    let mut all = Vec::new();
    for n in nodes {
        all.extend(n.status().await.expect("status").recovery.recovered);
    }
    all
}

/// A swarm of `names` in one process with quick failure detection (suspected after
/// `suspect_after_ms`, dead after 1.5 s) and copies every 150–600 ms.
async fn quick_swarm(host: &Arc<Host>, names: &[&str], suspect_after_ms: u64) -> Vec<NodeHandle> {
    node::local_swarm(host, names, |cfg: &mut NodeConfig| {
        cfg.migration.heartbeat_ms = 100;
        cfg.recovery.suspect_after_ms = suspect_after_ms;
        cfg.recovery.dead_after_ms = 1500;
        cfg.recovery.min_period_ms = 150;
        cfg.recovery.max_period_ms = 600;
    })
    .await
    .expect("swarm")
}

/// Starts `job` (the guest `name`'s `module` with `args` and `seed`) on `on`, submitted
/// from `home`.
async fn start(
    home: &NodeHandle,
    job: &str,
    (name, module, args, seed): (&str, &[u8], &[String], u64),
    on: &str,
) {
    home.run(RunRequest {
        module: module.to_vec(),
        name: Some(name.into()),
        id: Some(job.into()),
        args: args.to_vec(),
        seed,
        node: Some(on.into()),
        ..RunRequest::default()
    })
    .await
    .expect("the job starts");
}

/// Three nodes with quick failure detection and copies; a long tracker started on `on`
/// from the first (its home). Returns the host, the nodes, the module and its args.
async fn swarm_with_tracker(
    names: [&str; 3],
    suspect_after_ms: u64,
    on: &str,
) -> (Arc<Host>, Vec<NodeHandle>, Vec<u8>, Vec<String>) {
    let host = Host::new(HostConfig::default()).expect("host");
    let nodes = quick_swarm(&host, &names, suspect_after_ms).await;
    let tracker = guest("tracker");
    let args = vec!["30000".to_string()];
    start(&nodes[0], "tracker", ("tracker", &tracker, &args, 5), on).await;
    (host, nodes, tracker, args)
}

#[test]
fn a_job_whose_node_dies_resumes_on_a_replica_exactly_once() {
    node::actix_system().block_on(async {
        let (host, nodes, tracker, args) = swarm_with_tracker(["r1", "r2", "r3"], 600, "r2").await;

        // Wait until both other nodes hold a replica the owner saw acknowledged.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let acks = nodes[1].recovery_facts().await.expect("acks").acks;
            let holders: std::collections::BTreeSet<&str> =
                acks.iter().map(|(_, h, _)| h.as_str()).collect();
            if holders.contains("r1") && holders.contains("r3") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no replicas acknowledged: {acks:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(running(&nodes[1], "tracker").await, Some(0));

        // r2 dies.
        let killed_at = Instant::now();
        nodes[1].shutdown().await;
        let survivors = [&nodes[0], &nodes[2]];
        let mut recovered_at = None;
        let code = exit_code_with_one_copy(
            &nodes[0],
            &survivors,
            "tracker",
            killed_at + Duration::from_secs(90),
            "the job did not finish after its node died",
            |on| {
                if let Some((_, g)) = on {
                    assert_eq!(*g, 1, "recovered with the next generation");
                    recovered_at.get_or_insert_with(|| killed_at.elapsed());
                }
            },
        )
        .await;
        let recovered_after = recovered_at.expect("the job ran again somewhere");
        eprintln!("node death → job running again: {recovered_after:?}");
        assert_straight_run(
            &host,
            &nodes[0],
            "tracker",
            (&tracker, &args, 5),
            code,
            true,
        );
        let recoveries = recoveries(&survivors).await;
        assert_eq!(recoveries.len(), 1, "{recoveries:?}");
        assert_eq!(recoveries[0].from_node, "r2");
        for n in survivors {
            n.shutdown().await;
        }
    });
}

async fn block(nodes: &[&NodeHandle], peers: &[&NodeHandle]) {
    for n in nodes {
        let ids = peers.iter().map(|p| p.peer_id()).collect();
        n.shared.mesh.set_blocked(ids).await.expect("block");
    }
}

/// A partition cuts the job's node off: it pauses (the other side could resume without
/// it), the majority resumes the job with the next generation, and after the heal the
/// old copy is dropped. Output at the home stays bit-identical, each byte once, and at no
/// moment do two nodes run the job.
#[test]
fn the_cut_off_owner_pauses_the_majority_resumes_the_heal_drops_the_old_copy() {
    node::actix_system().block_on(async {
        let (host, nodes, tracker, args) = swarm_with_tracker(["p1", "p2", "p3"], 500, "p3").await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while nodes[2].recovery_facts().await.expect("acks").acks.len() < 2 {
            assert!(Instant::now() < deadline, "no replicas acknowledged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Cut p3 off from p1 and p2.
        block(&[&nodes[2]], &[&nodes[0], &nodes[1]]).await;
        block(&[&nodes[0], &nodes[1]], &[&nodes[2]]).await;
        let cut_at = Instant::now();
        let mut p3_paused = false;
        let mut resumed_on = None;
        while resumed_on.is_none() {
            let mut on = Vec::new();
            for n in &nodes {
                if let Some(g) = running(n, "tracker").await {
                    on.push((n.name().to_string(), g));
                }
            }
            assert!(on.len() <= 1, "the job runs on two nodes: {on:?}");
            p3_paused |= running(&nodes[2], "tracker").await.is_none();
            if let Some((name, g)) = on.first().filter(|(n, _)| n != "p3") {
                assert_eq!(*g, 1);
                resumed_on = Some(name.clone());
            }
            assert!(
                cut_at.elapsed() < Duration::from_secs(30),
                "nobody resumed the job"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(p3_paused, "the cut-off owner kept running");
        eprintln!(
            "cut → resumed on {resumed_on:?} after {:?}",
            cut_at.elapsed()
        );

        // Heal: p3 learns of generation 1 and drops its paused copy.
        block(&[&nodes[0], &nodes[1], &nodes[2]], &[]).await;
        nodes[2].connect(&nodes[0]).await.expect("reconnect");
        let healed_at = Instant::now();
        loop {
            let st = nodes[2].ps().await.expect("ps");
            let still = st.iter().any(|j| j.job == "tracker" && j.node == "p3");
            let listed = nodes[2]
                .scheduler
                .send(scheduler::List)
                .await
                .expect("list")
                .into_iter()
                .any(|j| j.job == "tracker");
            if !still && !listed {
                break;
            }
            assert!(
                healed_at.elapsed() < Duration::from_secs(30),
                "p3 kept its old copy"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let code = nodes[0]
            .wait_job("tracker", Duration::from_secs(120))
            .await
            .expect("the job finishes");
        assert_straight_run(
            &host,
            &nodes[0],
            "tracker",
            (&tracker, &args, 5),
            code,
            false,
        );
        for n in &nodes {
            n.shutdown().await;
        }
    });
}

/// Both holders of a job's replicas are killed and restarted (their stores kept, as on
/// disk) just after its node dies, before anyone declared it dead. A restarted holder
/// reads back which replicas it held (`recovery::held`), so the job resumes from one
/// of them; before, a restarted holder came back holding nothing and the job was lost
/// (level 1's `bench.toml`).
#[test]
fn holders_restarted_with_their_store_still_recover_the_job() {
    node::actix_system().block_on(async {
        let host = Host::new(HostConfig::default()).expect("host");
        let names = ["h1", "h2", "h3", "h4"];
        let members: Vec<recovery::NodeId> =
            names.iter().map(|n| recovery::NodeId::from(*n)).collect();
        // A job, and an owner, whose two holders are neither the home (h1) nor the owner.
        let (job, owner, holders) = (0..64)
            .flat_map(|i| names[1..].iter().map(move |o| (format!("tracker-{i}"), *o)))
            .find_map(|(job, owner)| {
                let set =
                    recovery::replica_set(&job, &members, Some(&recovery::NodeId::from(owner)), 2);
                (!set.contains(&recovery::NodeId::from("h1")))
                    .then(|| (job, owner, [set[0].0.clone(), set[1].0.clone()]))
            })
            .expect("some job's replicas avoid the home");
        let nodes = quick_swarm(&host, &names, 600).await;
        let by_name = |n: &str| {
            nodes
                .iter()
                .find(|h| h.name() == n)
                .cloned()
                .expect("a node of the swarm")
        };
        let tracker = guest("tracker");
        let args = vec!["30000".to_string()];
        start(&nodes[0], &job, ("tracker", &tracker, &args, 5), owner).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let acks = by_name(owner).recovery_facts().await.expect("acks").acks;
            let acked: std::collections::BTreeSet<&str> =
                acks.iter().map(|(_, h, _)| h.as_str()).collect();
            if holders.iter().all(|h| acked.contains(h.as_str())) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no replicas acknowledged: {acks:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The owner dies; both holders are killed and restarted with their stores.
        by_name(owner).shutdown().await;
        let mut live = vec![nodes[0].clone()];
        for h in &holders {
            let old = by_name(h);
            old.shutdown().await;
            let again = node::start_with_store(
                old.shared.config.clone(),
                host.clone(),
                Some(old.shared.store.clone()),
            )
            .await
            .expect("restart");
            live.push(again);
        }
        for (i, a) in live.iter().enumerate() {
            for b in &live[..i] {
                a.connect(b).await.expect("dial");
            }
        }
        for n in &live {
            n.wait_for_peers(2, Duration::from_secs(20))
                .await
                .expect("peers");
        }
        let everyone: Vec<&NodeHandle> = live.iter().collect();
        let code = exit_code_with_one_copy(
            &live[0],
            &everyone,
            &job,
            deadline + Duration::from_secs(90),
            "the job was not recovered from the restarted holders",
            |_| {},
        )
        .await;
        assert_straight_run(&host, &live[0], &job, (&tracker, &args, 5), code, false);
        let recoveries = recoveries(&everyone[1..]).await;
        assert_eq!(recoveries.len(), 1, "{recoveries:?}");
        assert_eq!(recoveries[0].from_node, owner);
        for n in &live {
            n.shutdown().await;
        }
    });
}

/// A job's first replicated copy is its state before its first instruction: a node that
/// dies right after starting a job (before a copy of its grown state could reach
/// anyone) does not lose it; the job starts over from that copy elsewhere, and the home
/// still reads each byte once.
#[test]
fn a_job_whose_node_dies_at_its_first_copy_starts_over_from_its_beginning() {
    node::actix_system().block_on(async {
        let host = Host::new(HostConfig::default()).expect("host");
        let nodes = quick_swarm(&host, &["b1", "b2", "b3"], 600).await;
        // 64 MiB of state, allocated and filled as soon as the job starts.
        const STATE: u64 = 64 << 20;
        let bigstate = guest("bigstate");
        let args: Vec<String> = ["--mib", "64", "--steps", "1500", "--print-every", "100"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        start(
            &nodes[0],
            "bigstate",
            ("bigstate", &bigstate, &args, 3),
            "b2",
        )
        .await;

        // The first acknowledged copy.
        let deadline = Instant::now() + Duration::from_secs(30);
        let first = loop {
            let acks = nodes[1].recovery_facts().await.expect("acks").acks;
            if let Some((_, _, cref)) = acks.iter().find(|(j, _, _)| j == "bigstate") {
                break *cref;
            }
            assert!(Instant::now() < deadline, "no copy acknowledged");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        nodes[1].shutdown().await;
        assert_eq!((first.generation, first.seq), (0, 1), "{first}");
        let manifest = nodes[1]
            .shared
            .store
            .get_chunk(&store::ChunkId(first.id.0))
            .and_then(|bytes| store::Manifest::decode(&bytes))
            .expect("the first copy's manifest");
        assert!(
            manifest.memory.len < STATE,
            "the first copy holds {} bytes of memory: taken after the job grew",
            manifest.memory.len
        );

        recovered_once(
            &host,
            &[&nodes[0], &nodes[2]],
            "bigstate",
            (&bigstate, &args, 3),
            deadline + Duration::from_secs(90),
            "b2",
        )
        .await;
    });
}

/// A job moved to a node that dies right after the move, before any heartbeat of its
/// listed the job, is still recovered: the source announces the move
/// (`Heartbeat::moved`), so the others place the job on the destination and see it
/// die. Before, they only saw the source stop listing the job, took it for moved or
/// ended, and nobody recovered it (level 1's bench, seed 5: autopilot-7).
#[test]
fn a_job_whose_destination_dies_right_after_the_move_is_recovered() {
    node::actix_system().block_on(async {
        let host = Host::new(HostConfig::default()).expect("host");
        let nodes = quick_swarm(&host, &["d1", "d2", "d3", "d4"], 600).await;
        let tracker = guest("tracker");
        let args = vec!["30000".to_string()];
        start(&nodes[0], "tracker", ("tracker", &tracker, &args, 5), "d2").await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while nodes[1].recovery_facts().await.expect("acks").acks.len() < 2 {
            assert!(Instant::now() < deadline, "no replicas acknowledged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let report = nodes[0].migrate("tracker", "d3").await.expect("the move");
        assert_eq!(report.outcome, "committed");
        nodes[2].shutdown().await;
        let killed_at = Instant::now();

        recovered_once(
            &host,
            &[&nodes[0], &nodes[1], &nodes[3]],
            "tracker",
            (&tracker, &args, 5),
            killed_at + Duration::from_secs(90),
            "d3",
        )
        .await;
    });
}
