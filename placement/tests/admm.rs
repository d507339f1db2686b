//! The decentralised solve end to end on the simulated swarm: quality against an LP
//! solver and exact integer optima, infeasibility, loss, duplicates, delays, churn,
//! hysteresis, agreement, message sizes.

mod common;

use std::collections::BTreeMap;

use placement::msg::{Body, Candidate, Column, Msg};
use placement::sim::{random_instance, Codec, Instance, InstanceOpts, SimConfig, Swarm};
use placement::{
    Config, Event, Hysteresis, Job, Link, LoadPenalty, Node, NodeEnv, Outcome, PlacementError,
    Problem, To, Transmit,
};

fn problem(inst: &Instance, cfg: &Config) -> Problem {
    Problem::from_envs(&inst.jobs, &inst.envs, &cfg.hysteresis).expect("feasible instance")
}

fn solve(inst: &Instance, cfg: &Config, sim: SimConfig) -> (Outcome, Swarm) {
    let mut swarm = Swarm::new(inst, cfg.clone(), sim).with_codec(Box::new(common::Cbor));
    swarm.start_round(1).expect("start");
    let rep = swarm.run().expect("run");
    assert!(rep.finished, "swarm did not finish in {} steps", rep.steps);
    let out = rep
        .agreed()
        .unwrap_or_else(|| panic!("nodes disagree: {:?}", rep.last_events))
        .clone();
    (out, swarm)
}

fn assignment(p: &Problem, out: &Outcome) -> Vec<usize> {
    out.placement
        .iter()
        .map(|(_, n)| p.node_index(*n).expect("placed on a member"))
        .collect()
}

/// Checks the placement against the problem (capacity, locality, one node per job) and
/// returns its objective.
fn check_feasible(p: &Problem, out: &Outcome) -> f64 {
    assert_eq!(out.placement.len(), p.n_jobs());
    for ((id, _), job) in out.placement.iter().zip(&p.jobs) {
        assert_eq!(*id, job.id);
    }
    let obj = p
        .objective(&assignment(p, out))
        .expect("placement breaks capacity or locality");
    assert!(
        (obj - out.objective).abs() <= 1e-6 * obj.abs().max(1.0),
        "reported objective is not the placement's"
    );
    obj
}

#[test]
fn gap_to_lp_bound_within_one_percent_at_32x256() {
    let cfg = Config::default();
    for seed in 1..=3 {
        let inst = random_instance(seed, 32, 256, &InstanceOpts::default());
        let p = problem(&inst, &cfg);
        let (out, swarm) = solve(&inst, &cfg, SimConfig::default());
        let obj = check_feasible(&p, &out);
        let lb = common::lp_bound(&p);
        let gap = common::gap_pct(obj, lb);
        assert!(out.converged, "seed {seed}: stopped by the iteration cap");
        assert!(gap <= 1.0, "seed {seed}: gap {gap:.3}% to the LP bound");
        assert!(
            gap >= -1e-6,
            "seed {seed}: below the LP bound ({gap}%): the bound or the objective is wrong"
        );
        assert!(
            out.iterations <= 40,
            "seed {seed}: {} iterations",
            out.iterations
        );
        // Gossip stays small: ≤ 2 KiB per node per iteration, CBOR-encoded.
        let per_iter = swarm.stats.bytes as f64 / 32.0 / out.iterations as f64;
        assert!(
            per_iter <= 2048.0,
            "seed {seed}: {per_iter:.0} bytes per node per iteration"
        );
    }
}

#[test]
fn small_sizes_match_exact_optima() {
    let cfg = Config::default();
    // Tiny: brute force, and the MIP solver agrees with it (the ground truth is checked too).
    for (seed, nodes, jobs) in [(1, 3, 1), (2, 3, 4), (3, 4, 5), (4, 2, 7), (5, 3, 6)] {
        let inst = random_instance(seed, nodes, jobs, &InstanceOpts::default());
        let p = problem(&inst, &cfg);
        let (out, _) = solve(&inst, &cfg, SimConfig::default());
        let obj = check_feasible(&p, &out);
        let best = common::brute_force(&p).expect("some placement fits");
        let mip = common::ilp_optimum(&p).expect("MIP optimum");
        assert!(
            (mip - best).abs() <= 1e-6 * best,
            "MIP {mip} vs brute force {best}"
        );
        let lb = common::lp_bound(&p);
        assert!(
            lb <= best + 1e-6 * best,
            "LP bound {lb} above the integer optimum {best}"
        );
        let gap = common::gap_pct(obj, best);
        assert!(
            gap <= 1.0,
            "{nodes}x{jobs}: {gap:.3}% above the integer optimum"
        );
    }
    // Larger: the MIP optimum as ground truth (instances the MIP solves in seconds).
    for (seed, nodes, jobs) in [(1, 8, 32), (1, 6, 24), (2, 6, 24)] {
        let inst = random_instance(seed, nodes, jobs, &InstanceOpts::default());
        let p = problem(&inst, &cfg);
        let (out, _) = solve(&inst, &cfg, SimConfig::default());
        let obj = check_feasible(&p, &out);
        let best = common::ilp_optimum(&p).expect("MIP optimum");
        let lb = common::lp_bound(&p);
        assert!(lb <= best * (1.0 + 1e-9));
        let gap = common::gap_pct(obj, best);
        assert!(
            gap <= 1.0,
            "{nodes}x{jobs} seed {seed}: {gap:.3}% above the integer optimum"
        );
        assert!(
            out.iterations <= 60,
            "{nodes}x{jobs} seed {seed}: {} iterations",
            out.iterations
        );
    }
}

fn tiny_env(capacity: f64, speed: f64) -> NodeEnv {
    NodeEnv {
        capacity,
        speed,
        load: LoadPenalty::default(),
        links: BTreeMap::new(),
        fallback_link: Link {
            bandwidth: 100e6,
            rtt: 1e-3,
        },
    }
}

fn job(id: u64, demand: f64, current: Option<u32>, allowed: Option<Vec<u32>>) -> Job {
    Job {
        id,
        demand,
        work: 100.0,
        state_bytes: 1_000_000,
        current,
        allowed,
    }
}

fn expect_failure(inst: &Instance, want: fn(&PlacementError) -> bool) {
    let cfg = Config::default();
    let mut swarm = Swarm::new(inst, cfg, SimConfig::default());
    swarm.start_round(1).expect("start");
    let rep = swarm.run().expect("run");
    assert!(rep.finished);
    assert!(
        rep.steps <= 3,
        "infeasibility took {} steps: it must be detected, not iterated on",
        rep.steps
    );
    let err = rep
        .failed()
        .unwrap_or_else(|| panic!("not every node failed alike: {:?}", rep.last_events));
    assert!(want(err), "unexpected error {err:?}");
}

#[test]
fn infeasible_instances_are_reported() {
    let envs: BTreeMap<u32, NodeEnv> = [(1, tiny_env(1.0, 1.0)), (2, tiny_env(1.0, 1.0))].into();
    // More work than total capacity.
    let jobs = (0..5).map(|i| job(i, 0.5, None, None)).collect();
    expect_failure(
        &Instance {
            jobs,
            envs: envs.clone(),
        },
        |e| matches!(e, PlacementError::OverCapacity { .. }),
    );
    // A job with no allowed member.
    let jobs = vec![job(1, 0.1, None, None), job(2, 0.1, None, Some(vec![7]))];
    expect_failure(
        &Instance {
            jobs,
            envs: envs.clone(),
        },
        |e| matches!(e, PlacementError::NoAllowedNode { job: 2 }),
    );
    // A job larger than every node it may run on.
    let jobs = vec![job(1, 1.5, None, None)];
    expect_failure(
        &Instance {
            jobs,
            envs: envs.clone(),
        },
        |e| matches!(e, PlacementError::JobTooLarge { job: 1, .. }),
    );
    // Totals fit (1.2 ≤ 2) but locality confines 1.2 to node 1 (capacity 1).
    let jobs = vec![
        job(1, 0.6, None, Some(vec![1])),
        job(2, 0.6, None, Some(vec![1])),
    ];
    expect_failure(&Instance { jobs, envs }, |e| {
        matches!(e, PlacementError::LocalityInfeasible { .. })
    });
}

#[test]
fn ten_percent_loss_converges_to_the_same_placement() {
    let cfg = Config::default();
    let inst = random_instance(11, 16, 96, &InstanceOpts::default());
    let (clean, _) = solve(&inst, &cfg, SimConfig::default());
    for seed in 1..=3 {
        let sim = SimConfig {
            seed,
            drop: 0.10,
            tick_every: 3,
            ..SimConfig::default()
        };
        let (lossy, swarm) = solve(&inst, &cfg, sim);
        assert!(
            swarm.stats.dropped > 0 && swarm.stats.resent > 0,
            "the test lost nothing"
        );
        assert_eq!(
            lossy.placement, clean.placement,
            "seed {seed}: loss changed the placement"
        );
        assert_eq!(lossy.digest, clean.digest);
        assert_eq!(lossy.iterations, clean.iterations);
    }
}

#[test]
fn duplicated_and_late_messages_are_harmless() {
    let cfg = Config::default();
    let inst = random_instance(12, 12, 64, &InstanceOpts::default());
    let (clean, _) = solve(&inst, &cfg, SimConfig::default());
    let sim = SimConfig {
        seed: 5,
        duplicate: 0.3,
        max_delay: 6,
        tick_every: 16,
        ..SimConfig::default()
    };
    let (noisy, swarm) = solve(&inst, &cfg, sim);
    assert!(swarm.stats.duplicated > 0);
    let dups: u64 = swarm
        .nodes
        .values()
        .map(|n| n.stats().duplicates + n.stats().stale)
        .sum();
    assert!(dups > 0, "no duplicate or late message reached a node");
    assert_eq!(noisy.placement, clean.placement);
    assert_eq!(noisy.digest, clean.digest);
}

#[test]
fn node_leaving_mid_solve_the_rest_reconverge_without_it() {
    let cfg = Config::default();
    let inst = random_instance(
        13,
        10,
        60,
        &InstanceOpts {
            load_factor: 0.6,
            ..InstanceOpts::default()
        },
    );
    let gone = *inst.envs.keys().nth(3).expect("node");
    let mut swarm = Swarm::new(
        &inst,
        cfg.clone(),
        SimConfig {
            max_delay: 1,
            tick_every: 6,
            ..SimConfig::default()
        },
    )
    .with_codec(Box::new(common::Cbor));
    swarm.start_round(1).expect("start");
    for _ in 0..6 {
        swarm.step().expect("step");
    }
    assert!(
        swarm.nodes.values().all(|n| !n.is_finished()),
        "leave must happen mid-solve"
    );
    swarm.schedule_leave(swarm.now() + 1, gone, 4);
    let rep = swarm.run().expect("run");
    assert!(rep.finished);
    assert!(!rep.last_events.contains_key(&gone));
    let out = rep.agreed().expect("survivors agree").clone();
    assert!(
        out.placement.iter().all(|&(_, n)| n != gone),
        "a job stays on the node that left"
    );
    assert_eq!(out.epoch, 1);
    // Quality in the reduced swarm.
    let mut envs = inst.envs.clone();
    envs.remove(&gone);
    let reduced = Instance {
        jobs: inst.jobs.clone(),
        envs,
    };
    let p = problem(&reduced, &cfg);
    let obj = check_feasible(&p, &out);
    let gap = common::gap_pct(obj, common::lp_bound(&p));
    assert!(gap <= 1.5, "gap {gap:.3}% after the leave");
}

#[test]
fn node_joining_mid_solve_is_used() {
    let cfg = Config::default();
    let mut inst = random_instance(
        14,
        6,
        40,
        &InstanceOpts {
            load_factor: 0.8,
            ..InstanceOpts::default()
        },
    );
    // The newcomer is the fastest, biggest node: the optimum must use it.
    let newcomer = 999;
    let env = NodeEnv {
        capacity: 2.0,
        speed: 4.0,
        ..inst.envs.values().next().expect("env").clone()
    };
    let mut swarm =
        Swarm::new(&inst, cfg.clone(), SimConfig::default()).with_codec(Box::new(common::Cbor));
    swarm.start_round(1).expect("start");
    for _ in 0..4 {
        swarm.step().expect("step");
    }
    swarm.schedule_join(swarm.now() + 1, newcomer, env.clone(), 2);
    let rep = swarm.run().expect("run");
    let out = rep.agreed().expect("all agree, newcomer included").clone();
    assert!(rep.last_events.contains_key(&newcomer));
    assert!(
        out.placement.iter().any(|&(_, n)| n == newcomer),
        "the newcomer got no job"
    );
    inst.envs.insert(newcomer, env);
    let p = problem(&inst, &cfg);
    let obj = check_feasible(&p, &out);
    let gap = common::gap_pct(obj, common::lp_bound(&p));
    assert!(gap <= 1.5, "gap {gap:.3}% after the join");
}

#[test]
fn hysteresis_blocks_moves_of_negligible_gain() {
    // One job on node 1; node 2 is 0.2 % faster and the state is tiny: moving gains
    // ~0.2 s minus the migration, below the 0.5 s margin. With no margin it moves.
    let envs: BTreeMap<u32, NodeEnv> = [(1, tiny_env(1.0, 1.0)), (2, tiny_env(1.0, 1.002))].into();
    let mut jobs = vec![Job {
        id: 1,
        demand: 0.3,
        work: 100.0,
        state_bytes: 1000,
        current: Some(1),
        allowed: None,
    }];
    // With node 2 much faster, both jobs gain far more than the margin: they must move.
    jobs.push(Job {
        id: 2,
        demand: 0.3,
        work: 100.0,
        state_bytes: 1000,
        current: Some(1),
        allowed: None,
    });
    let mut envs2 = envs.clone();
    envs2.insert(2, tiny_env(1.0, 1.5));
    let cfg = Config::default();
    let (out, _) = solve(
        &Instance {
            jobs: jobs[..1].to_vec(),
            envs: envs.clone(),
        },
        &cfg,
        SimConfig::default(),
    );
    assert_eq!(
        out.placement,
        vec![(1, 1)],
        "a move of negligible gain happened"
    );
    assert_eq!(out.moves, 0);
    let eager = Config {
        hysteresis: Hysteresis {
            absolute: 0.0,
            relative: 0.0,
        },
        ..Config::default()
    };
    let (out, _) = solve(
        &Instance {
            jobs: jobs[..1].to_vec(),
            envs,
        },
        &eager,
        SimConfig::default(),
    );
    assert_eq!(
        out.placement,
        vec![(1, 2)],
        "without a margin the better node wins"
    );
    let (out, _) = solve(&Instance { jobs, envs: envs2 }, &cfg, SimConfig::default());
    assert_eq!(
        out.moves, 2,
        "gains well above the margin must move: {:?}",
        out.placement
    );
}

#[test]
fn warm_start_next_round_converges_faster_and_keeps_the_placement() {
    let cfg = Config::default();
    let inst = random_instance(15, 16, 128, &InstanceOpts::default());
    let (first, mut swarm) = solve(&inst, &cfg, SimConfig::default());
    swarm.apply(&first);
    swarm.start_round(2).expect("round 2");
    let rep = swarm.run().expect("run");
    let second = rep.agreed().expect("agreement").clone();
    assert!(
        2 * second.iterations <= first.iterations,
        "warm start took {} iterations vs {} cold",
        second.iterations,
        first.iterations
    );
    // Nothing changed: every move would only add migration and margin.
    assert_eq!(second.moves, 0, "jobs moved with nothing changed");
}

/// Drive `members` by hand over a lossless bus for round 1 of `inst`; `tamper` may change
/// (or drop, returning false) each message in transit. Returns every node's event, the
/// messages sent, and the nodes.
fn drive(
    inst: &Instance,
    members: &[u32],
    mut tamper: impl FnMut(&mut Msg) -> bool,
) -> (BTreeMap<u32, Event>, Vec<Msg>, Vec<Node>) {
    let cfg = Config::default();
    let mut nodes: Vec<Node> = members
        .iter()
        .map(|&id| Node::new(id, cfg.clone()))
        .collect();
    for n in &mut nodes {
        let env = inst.envs[&n.id()].clone();
        n.start_round(1, 0, members.to_vec(), inst.jobs.clone(), env)
            .expect("start");
    }
    let mut events: BTreeMap<u32, Event> = BTreeMap::new();
    let mut sent = Vec::new();
    for _ in 0..400 {
        let mut msgs = Vec::new();
        for n in &mut nodes {
            while let Some(Transmit { msg: mut m, to }) = n.poll_transmit() {
                sent.push(m.clone());
                if tamper(&mut m) {
                    msgs.push((m, to));
                }
            }
            while let Some(e) = n.poll_event() {
                events.insert(n.id(), e);
            }
        }
        if msgs.is_empty() {
            break;
        }
        for (m, to) in &msgs {
            for n in nodes.iter_mut().filter(|n| n.id() != m.from) {
                if let To::Only(v) = to {
                    if !v.contains(&n.id()) {
                        continue;
                    }
                }
                n.handle(m.clone());
            }
        }
    }
    for n in &mut nodes {
        while let Some(e) = n.poll_event() {
            events.insert(n.id(), e);
        }
    }
    (events, sent, nodes)
}

/// The rounding runs on the task holders only (the first `TASKS` members), each once;
/// every member still ends with the same placement, the one the whole search gives.
#[test]
fn rounding_runs_once_per_task_on_the_holders_only() {
    let inst = random_instance(21, 8, 40, &InstanceOpts::default());
    let members: Vec<u32> = inst.envs.keys().copied().collect();
    let (events, sent, nodes) = drive(&inst, &members, |_| true);
    let senders: Vec<u32> = sent
        .iter()
        .filter(|m| matches!(m.body, Body::Candidate(_)))
        .map(|m| m.from)
        .collect();
    assert_eq!(
        senders,
        members[..placement::integer::TASKS].to_vec(),
        "candidates from the holders, once each"
    );
    let digests: Vec<u64> = events
        .values()
        .map(|e| match e {
            Event::Placed(o) => o.digest,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(digests.len(), members.len());
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    // The agreed placement is the cheapest of all tasks run in one place.
    let Event::Placed(o) = &events[&members[0]] else {
        unreachable!()
    };
    let p = nodes[0].problem().expect("problem");
    let assign: Vec<usize> = o
        .placement
        .iter()
        .map(|&(_, n)| p.node_index(n).expect("member"))
        .collect();
    assert_eq!(p.objective(&assign), Some(o.objective));
}

/// A task holder's candidate corrupted in transit (an infeasible placement, then one of
/// the wrong length): every receiver rejects it; the holder itself chose from its own
/// copy, so if that changes the choice the final digests expose it (`Disagreement`) —
/// no two nodes may report different placements as agreed.
#[test]
fn corrupted_candidates_are_rejected_and_never_split_the_swarm_silently() {
    let inst = random_instance(22, 5, 30, &InstanceOpts::default());
    let members: Vec<u32> = inst.envs.keys().copied().collect();
    let holder = members[1];
    for corrupt in [
        (|a: &mut Vec<u32>| a.iter_mut().for_each(|n| *n = 0)) as fn(&mut Vec<u32>),
        |a: &mut Vec<u32>| {
            a.pop();
        },
        |a: &mut Vec<u32>| a[0] = 999,
    ] {
        let (events, _, nodes) = drive(&inst, &members, |m| {
            if let (true, Body::Candidate(Candidate::Placement(a))) =
                (m.from == holder, &mut m.body)
            {
                corrupt(a);
            }
            true
        });
        assert_eq!(events.len(), members.len(), "every node ends the round");
        for n in nodes.iter().filter(|n| n.id() != holder) {
            assert!(
                n.stats().rejected >= 1,
                "node {} took the corrupt candidate",
                n.id()
            );
        }
        let placed: Vec<u64> = events
            .values()
            .filter_map(|e| match e {
                Event::Placed(o) => Some(o.digest),
                _ => None,
            })
            .collect();
        let disagreed = events
            .values()
            .filter(|e| matches!(e, Event::Disagreement { .. }))
            .count();
        assert_eq!(placed.len() + disagreed, members.len(), "{events:?}");
        assert!(
            placed.windows(2).all(|w| w[0] == w[1]),
            "nodes placed differently without noticing: {events:?}"
        );
    }
}

/// Drive nodes by hand: forge one node's final digest; every other node must detect it.
#[test]
fn a_diverging_placement_is_detected_by_the_final_digest() {
    let cfg = Config::default();
    let inst = random_instance(16, 3, 6, &InstanceOpts::default());
    let members: Vec<u32> = inst.envs.keys().copied().collect();
    let liar = members[0];
    let mut nodes: Vec<Node> = members
        .iter()
        .map(|&id| Node::new(id, cfg.clone()))
        .collect();
    for n in &mut nodes {
        let env = inst.envs[&n.id()].clone();
        n.start_round(1, 0, members.clone(), inst.jobs.clone(), env)
            .expect("start");
    }
    let mut events: BTreeMap<u32, Event> = BTreeMap::new();
    for _ in 0..200 {
        let mut msgs = Vec::new();
        for n in &mut nodes {
            while let Some(Transmit { msg: mut m, .. }) = n.poll_transmit() {
                if m.from == liar {
                    if let Body::Final(d) = &mut m.body {
                        *d ^= 1;
                    }
                }
                msgs.push(m);
            }
            while let Some(e) = n.poll_event() {
                events.insert(n.id(), e);
            }
        }
        if msgs.is_empty() {
            break;
        }
        for m in &msgs {
            for n in nodes.iter_mut().filter(|n| n.id() != m.from) {
                n.handle(m.clone());
            }
        }
    }
    for n in &mut nodes {
        while let Some(e) = n.poll_event() {
            events.insert(n.id(), e);
        }
    }
    assert_eq!(events.len(), 3);
    for (id, e) in &events {
        if *id == liar {
            // Its own view is consistent: every digest it heard matches its own.
            assert!(matches!(e, Event::Placed(_)), "liar: {e:?}");
        } else {
            assert!(matches!(e, Event::Disagreement { .. }), "node {id}: {e:?}");
        }
    }
}

#[test]
fn untrusted_messages_are_rejected_without_panic() {
    let cfg = Config::default();
    let inst = random_instance(17, 3, 5, &InstanceOpts::default());
    let members: Vec<u32> = inst.envs.keys().copied().collect();
    let mut a = Node::new(members[0], cfg.clone());
    a.start_round(
        1,
        0,
        members.clone(),
        inst.jobs.clone(),
        inst.envs[&members[0]].clone(),
    )
    .expect("start");
    let first = a.poll_transmit().expect("start message").msg;
    let view = first.view;
    let bad = [
        // Job index past the end, value above 1, odd length, repeated index.
        Body::Column(Column(vec![9, 100]), 0.0),
        Body::Column(Column(vec![0, u32::MAX]), 0.0),
        Body::Column(Column(vec![1]), 0.0),
        Body::Column(Column(vec![1, 5, 0, 5]), f32::NAN),
    ];
    for body in bad {
        a.handle(Msg {
            round: 1,
            view,
            iter: 1,
            from: members[1],
            body,
            probe: false,
        });
    }
    // A non-member, and our own id echoed back.
    a.handle(Msg {
        round: 1,
        view,
        iter: 1,
        from: 4242,
        body: Body::Final(1),
        probe: false,
    });
    a.handle(Msg {
        round: 1,
        view,
        iter: 0,
        from: members[0],
        body: first.body.clone(),
        probe: true,
    });
    assert_eq!(a.stats().rejected, 6);
    assert!(!a.is_finished());
    // Garbage bytes never decode into a message.
    let codec = common::Cbor;
    assert!(codec.decode(&[0xff, 0x00, 0x13]).is_none());
    let mut bytes = codec.encode(&first);
    bytes.truncate(bytes.len() / 2);
    assert!(codec.decode(&bytes).is_none());
    assert_eq!(codec.decode(&codec.encode(&first)), Some(first));
}

#[test]
fn every_node_computes_the_identical_integer_placement() {
    let cfg = Config::default();
    let inst = random_instance(18, 20, 120, &InstanceOpts::default());
    let mut swarm = Swarm::new(
        &inst,
        cfg,
        SimConfig {
            seed: 3,
            drop: 0.05,
            duplicate: 0.05,
            max_delay: 2,
            tick_every: 8,
            ..SimConfig::default()
        },
    );
    swarm.start_round(1).expect("start");
    let rep = swarm.run().expect("run");
    let placements: Vec<&Outcome> = rep
        .last_events
        .values()
        .map(|e| match e {
            Some(Event::Placed(o)) => o,
            other => panic!("not placed: {other:?}"),
        })
        .collect();
    assert_eq!(placements.len(), 20);
    for o in &placements[1..] {
        assert_eq!(o.placement, placements[0].placement);
        assert_eq!(o.digest, placements[0].digest);
    }
}

/// Answers to a probe are plain copies, so they never trigger more answers: with
/// duplicated deliveries and no loss, re-sends stay a small fraction of the traffic,
/// and a finished swarm goes quiet instead of re-sending on every tick.
#[test]
fn duplicates_do_not_start_a_resend_storm() {
    let cfg = Config::default();
    let inst = random_instance(21, 16, 128, &InstanceOpts::default());
    let sim = SimConfig {
        seed: 9,
        duplicate: 0.01,
        max_delay: 2,
        tick_every: 8,
        ..SimConfig::default()
    };
    let mut swarm = Swarm::new(&inst, cfg, sim).with_codec(Box::new(common::Cbor));
    swarm.start_round(1).expect("start");
    let report = swarm.run().expect("solves");
    assert!(report.finished);
    assert!(swarm.stats.duplicated > 0);
    assert!(
        swarm.stats.resent * 4 < swarm.stats.messages,
        "{} re-sends for {} messages",
        swarm.stats.resent,
        swarm.stats.messages
    );
    // Finished: 200 more steps (25 ticks each) add no re-sends beyond answers to
    // copies still in flight.
    let before = swarm.stats.resent;
    for _ in 0..200 {
        swarm.step().expect("step");
    }
    assert!(
        swarm.stats.resent - before <= swarm.nodes.len() as u64 * 2,
        "{} re-sends after the round finished",
        swarm.stats.resent - before
    );
}

/// The settings with the two-hop relay off: every message straight to every member.
fn flat_cfg() -> Config {
    Config {
        relay_min_members: usize::MAX,
        ..Config::default()
    }
}

/// The relay changes the routing only: the same iterations and placement as the plain
/// all-to-all, in well under half the frames (32 members: 5 steps of one frame each per
/// member and exchange, against 31).
#[test]
fn relayed_exchange_gives_the_flat_placement_in_fewer_frames() {
    for seed in [3, 4] {
        let inst = random_instance(seed, 32, 256, &InstanceOpts::default());
        let (flat, fs) = solve(&inst, &flat_cfg(), SimConfig::default());
        let (relay, rs) = solve(&inst, &Config::default(), SimConfig::default());
        assert_eq!(relay.placement, flat.placement, "seed {seed}");
        assert_eq!(relay.iterations, flat.iterations, "seed {seed}");
        assert_eq!(relay.objective, flat.objective, "seed {seed}");
        assert_eq!(fs.stats.relayed, 0);
        assert!(rs.stats.relayed > 0);
        assert!(
            rs.stats.frames * 2 < fs.stats.frames,
            "seed {seed}: {} frames relayed against {} flat",
            rs.stats.frames,
            fs.stats.frames
        );
        // Every member's own messages are what it always sent, plus the task holders'
        // verdicts (the final digests go to the holders only); and the bundles.
        assert_eq!(
            rs.stats.messages,
            fs.stats.messages + placement::integer::TASKS as u64,
            "seed {seed}"
        );
        let unbundled: u64 = rs.nodes.values().map(|n| n.stats().unbundled).sum();
        assert!(unbundled > 0);
    }
}

/// Loss, duplicates and delays on a relayed swarm: a lost bundle costs its recipient (and
/// those it forwards to) several members' columns, recovered by the direct re-sends; the
/// placement is the one the lossless run gives.
#[test]
fn relayed_exchange_survives_loss_duplicates_and_delays() {
    let cfg = Config::default();
    let inst = random_instance(31, 24, 160, &InstanceOpts::default());
    let (clean, _) = solve(&inst, &cfg, SimConfig::default());
    for (seed, drop, duplicate, max_delay) in [
        (1, 0.10, 0.0, 0),
        (2, 0.10, 0.0, 0),
        (3, 0.10, 0.05, 2),
        (4, 0.0, 0.3, 6),
    ] {
        let sim = SimConfig {
            seed,
            drop,
            duplicate,
            max_delay,
            tick_every: if max_delay > 2 { 16 } else { 3 },
            ..SimConfig::default()
        };
        let (noisy, swarm) = solve(&inst, &cfg, sim);
        assert!(swarm.stats.relayed > 0);
        if drop > 0.0 {
            assert!(swarm.stats.dropped > 0 && swarm.stats.resent > 0);
        }
        assert_eq!(noisy.placement, clean.placement, "seed {seed}");
        assert_eq!(noisy.digest, clean.digest, "seed {seed}");
        assert_eq!(noisy.iterations, clean.iterations, "seed {seed}");
    }
}

/// Membership changes in relayed views: a node leaving a view of 12, and one joining a
/// view of 9 (the schedule of the new view differs): the members reconverge and agree.
#[test]
fn relayed_views_reconverge_after_a_leave_and_a_join() {
    let cfg = Config::default();
    let opts = InstanceOpts {
        load_factor: 0.6,
        ..InstanceOpts::default()
    };
    // Leave.
    let inst = random_instance(41, 12, 80, &opts);
    let gone = *inst.envs.keys().nth(5).expect("node");
    let mut swarm = Swarm::new(
        &inst,
        cfg.clone(),
        SimConfig {
            drop: 0.05,
            max_delay: 1,
            tick_every: 6,
            ..SimConfig::default()
        },
    )
    .with_codec(Box::new(common::Cbor));
    swarm.start_round(1).expect("start");
    for _ in 0..6 {
        swarm.step().expect("step");
    }
    assert!(swarm.nodes.values().all(|n| !n.is_finished()));
    swarm.schedule_leave(swarm.now() + 1, gone, 4);
    let rep = swarm.run().expect("run");
    assert!(rep.finished);
    let out = rep.agreed().expect("survivors agree").clone();
    assert!(out.placement.iter().all(|&(_, n)| n != gone));
    assert!(swarm.stats.relayed > 0);
    // Join.
    let inst = random_instance(42, 9, 60, &opts);
    let newcomer = 999;
    let env = NodeEnv {
        capacity: 2.0,
        speed: 4.0,
        ..inst.envs.values().next().expect("env").clone()
    };
    let mut swarm = Swarm::new(
        &inst,
        cfg.clone(),
        SimConfig {
            seed: 7,
            drop: 0.05,
            tick_every: 6,
            ..SimConfig::default()
        },
    )
    .with_codec(Box::new(common::Cbor));
    swarm.start_round(1).expect("start");
    for _ in 0..4 {
        swarm.step().expect("step");
    }
    swarm.schedule_join(swarm.now() + 1, newcomer, env, 2);
    let rep = swarm.run().expect("run");
    let out = rep.agreed().expect("all agree, newcomer included").clone();
    assert!(rep.last_events.contains_key(&newcomer));
    assert!(out.placement.iter().any(|&(_, n)| n == newcomer));
}

/// Relays that forge the columns they forward (their recipients compute from other data
/// than the rest): no two nodes may report different placements as agreed. Either the
/// iterates part so far that members stop at different iterations (the round stalls:
/// the shell times out with no outcome), or the task holders' digest lists expose the
/// difference, or the forgery did not change the placement.
#[test]
fn a_forging_relay_never_splits_the_swarm_silently() {
    let inst = random_instance(43, 9, 48, &InstanceOpts::default());
    let members: Vec<u32> = inst.envs.keys().copied().collect();
    let mut forged = 0;
    let (events, sent, nodes) = drive(&inst, &members, |m| {
        if let Body::Relay(inner) = &mut m.body {
            for x in inner.iter_mut() {
                if let (1, Body::Column(col, _)) = (x.iter, &mut x.body) {
                    // Move the author's mass to the first job.
                    *col = Column(vec![0, 65_535]);
                    forged += 1;
                }
            }
        }
        true
    });
    assert!(forged > 0, "no bundle carried a column of iteration 1");
    assert!(sent.iter().any(|m| matches!(m.body, Body::Relay(_))));
    let placed: Vec<u64> = events
        .values()
        .filter_map(|e| match e {
            Event::Placed(o) => Some(o.digest),
            _ => None,
        })
        .collect();
    assert!(
        placed.windows(2).all(|w| w[0] == w[1]),
        "nodes placed differently without noticing: {events:?}"
    );
    // The same run untampered: every node places.
    let (clean, _, _) = drive(&inst, &members, |_| true);
    assert!(clean.values().all(|e| matches!(e, Event::Placed(_))));
    assert_eq!(clean.len(), nodes.len());
}

/// Bundles are checked: only from the member the schedule names (2^k after the
/// receiver on the ring, k ≥ 1), only starts and columns of the round and view by the
/// `size(k)` members from the sender on — anything else rejected (counted), never
/// handled.
#[test]
fn malformed_bundles_are_rejected() {
    let inst = random_instance(44, 9, 20, &InstanceOpts::default());
    let members: Vec<u32> = inst.envs.keys().copied().collect();
    let s = placement::relay::Schedule::new(members.len());
    assert_eq!((s.steps(), s.size(1)), (4, 2));
    let me = members[0];
    let mut a = Node::new(me, Config::default());
    a.start_round(
        1,
        0,
        members.clone(),
        inst.jobs.clone(),
        inst.envs[&me].clone(),
    )
    .expect("start");
    let first = a.poll_transmit().expect("start message");
    // Step 0: the own start to the member before on the ring.
    assert_eq!(first.to, To::Only(vec![members[8]]));
    let view = first.msg.view;
    let col = |from: u32, view: u32| Msg {
        round: 1,
        view,
        iter: 1,
        from,
        body: Body::Column(Column(vec![0, 100]), 0.0),
        probe: false,
    };
    let bundle = |from: u32, inner: Vec<Msg>| Msg {
        round: 1,
        view,
        iter: 1,
        from,
        body: Body::Relay(inner),
        probe: false,
    };
    let q = members[2]; // step 1: itself and the next member
    let before = a.stats().rejected;
    // From the next member (step 0 is a plain message) and from one 3 ahead (no step).
    a.handle(bundle(members[1], vec![col(members[1], view)]));
    a.handle(bundle(members[3], vec![col(members[3], view)]));
    // An author past the sender's step, a final digest, another view's column.
    a.handle(bundle(q, vec![col(members[4], view)]));
    a.handle(bundle(
        q,
        vec![Msg {
            body: Body::Final(7),
            ..col(q, view)
        }],
    ));
    a.handle(bundle(q, vec![col(members[3], view ^ 1)]));
    // More messages than the step carries.
    a.handle(bundle(q, vec![col(q, view); 3]));
    assert_eq!(a.stats().rejected - before, 6);
    assert_eq!(a.stats().unbundled, 0);
    // A valid one is taken apart.
    a.handle(bundle(q, vec![col(q, view), col(members[3], view)]));
    assert_eq!(a.stats().unbundled, 2);
    assert_eq!(a.stats().rejected - before, 6);
}

/// Relayed views send the final digests to the task holders, which send everyone the
/// whole list: one node's forged digest (a holder's, then another member's) makes every
/// other node report a disagreement, as with the digests straight to all.
#[test]
fn a_forged_final_digest_is_exposed_by_the_holders_verdicts() {
    let inst = random_instance(45, 9, 40, &InstanceOpts::default());
    let members: Vec<u32> = inst.envs.keys().copied().collect();
    for liar in [members[1], members[6]] {
        let (events, sent, _) = drive(&inst, &members, |m| {
            if let (true, Body::Final(d)) = (m.from == liar, &mut m.body) {
                *d ^= 1;
            }
            true
        });
        let verdicts = sent
            .iter()
            .filter(|m| matches!(m.body, Body::Verdict(_)))
            .count();
        assert_eq!(
            verdicts,
            placement::integer::TASKS,
            "one verdict per holder"
        );
        assert_eq!(events.len(), members.len(), "every node ends the round");
        for (id, e) in &events {
            if *id != liar {
                assert!(
                    matches!(e, Event::Disagreement { .. }),
                    "liar {liar}, node {id}: {e:?}"
                );
            }
        }
    }
}

/// Verdicts are checked: only from a task holder, only listing every member in order.
#[test]
fn malformed_verdicts_are_rejected() {
    let inst = random_instance(46, 9, 20, &InstanceOpts::default());
    let members: Vec<u32> = inst.envs.keys().copied().collect();
    let me = members[4];
    let mut a = Node::new(me, Config::default());
    a.start_round(
        1,
        0,
        members.clone(),
        inst.jobs.clone(),
        inst.envs[&me].clone(),
    )
    .expect("start");
    let view = a.poll_transmit().expect("start message").msg.view;
    let verdict = |from: u32, list: Vec<(u32, u64)>| Msg {
        round: 1,
        view,
        iter: 3,
        from,
        body: Body::Verdict(list),
        probe: false,
    };
    let full: Vec<(u32, u64)> = members.iter().map(|&m| (m, 5)).collect();
    let before = a.stats().rejected;
    // From a non-holder; missing a member; out of order.
    a.handle(verdict(members[5], full.clone()));
    a.handle(verdict(members[0], full[1..].to_vec()));
    let mut swapped = full.clone();
    swapped.swap(0, 1);
    a.handle(verdict(members[0], swapped));
    assert_eq!(a.stats().rejected - before, 3);
    a.handle(verdict(members[0], full));
    assert_eq!(a.stats().rejected - before, 3);
}
