//! Node-bound jobs of a set admitted by RTA meet every deadline, whatever the migrating
//! jobs do: overload, bursts, arrivals at awkward instants, late stops.

mod common;

use sched::sim::{self, poisson_arrivals, ExecModel, Rng, SimConfig, Who};
use sched::{AperiodicId, Exhausted, Runnable, SchedError, Scheduler, ServerSpec, TaskSpec, Time};

fn overload_scenario(rng: &mut Rng, overrun_max: Time) -> SimConfig {
    let (server, tasks) = common::admitted_set(rng, overrun_max);
    let horizon = server.period * 60;
    let mut arrivals = common::awkward_arrivals(rng, &server, &tasks, horizon);
    // On top: an offered load of 3 to 6 times what the server may serve.
    let load = server.utilisation() * rng.range(3, 6) as f64;
    arrivals.extend(poisson_arrivals(rng, load.min(5.0), server.budget, horizon));
    SimConfig {
        server,
        tasks,
        arrivals,
        horizon,
        exec: ExecModel::Wcet,
        overrun_max,
        seed: rng.next_u64(),
    }
}

#[test]
fn admitted_sets_meet_deadlines_under_aperiodic_overload() {
    let mut rng = Rng::new(0xDEAD11E);
    let mut jobs = 0;
    for i in 0..400 {
        let q = if i % 2 == 0 { 0 } else { rng.range(1, 8) };
        let cfg = overload_scenario(&mut rng, q);
        let report = sim::run(&cfg).expect("admitted");
        assert!(
            report.deadline_misses.is_empty(),
            "scenario {i}: {} misses, first {:?}\n{cfg:?}",
            report.deadline_misses.len(),
            report.deadline_misses.first()
        );
        // The server really was overloaded: work was left at the horizon.
        if cfg.server.exhausted == Exhausted::Suspend {
            assert!(
                report.aperiodic_finished() < report.aperiodic.len(),
                "scenario {i} not overloaded"
            );
        }
        jobs += report.jobs_due;
    }
    assert!(jobs > 10_000, "only {jobs} node-bound jobs checked");
}

/// Control: the same migrating load without a budget (a "server" whose budget is its
/// whole period — what admission refuses) makes the node-bound jobs below it miss. This is
/// the failure the server exists to prevent, and shows the check above can fail.
#[test]
fn without_budget_enforcement_deadlines_are_missed() {
    let tasks = vec![
        TaskSpec::periodic("ctl", 2, 5, 2),
        TaskSpec::periodic("log", 5, 20, 1),
    ];
    let mut rng = Rng::new(5);
    let arrivals = poisson_arrivals(&mut rng, 0.9, 4, 2_000);
    let cfg = |budget| SimConfig {
        server: ServerSpec::sporadic(budget, 10, 3),
        tasks: tasks.clone(),
        arrivals: arrivals.clone(),
        horizon: 2_000,
        exec: ExecModel::Wcet,
        overrun_max: 0,
        seed: 1,
    };
    let bounded = sim::run(&cfg(3)).unwrap();
    assert!(bounded.deadline_misses.is_empty());
    assert!(matches!(
        sim::run(&cfg(10)),
        Err(SchedError::Unschedulable { .. })
    ));
    let unbounded = sim::run_unchecked(&cfg(10)).unwrap();
    assert!(
        unbounded.deadline_misses.len() > 10,
        "{} misses",
        unbounded.deadline_misses.len()
    );
}

/// Sporadic node-bound tasks are released by the shell, at least their period apart.
#[test]
fn sporadic_task_release_is_enforced() {
    let mut s = Scheduler::new(ServerSpec::sporadic(2, 10, 1), 0).unwrap();
    let t = s
        .admit(0, TaskSpec::periodic("irq", 1, 5, 2).sporadic())
        .unwrap();
    assert_eq!(s.release(3, t), Ok(0));
    assert_eq!(
        s.decide(3).run,
        Some(Runnable::Periodic { task: t, job: 0 })
    );
    assert!(matches!(
        s.release(7, t),
        Err(SchedError::ReleaseTooEarly { earliest: 8, .. })
    ));
    s.complete(4, Runnable::Periodic { task: t, job: 0 })
        .unwrap();
    assert_eq!(s.release(8, t), Ok(1));
    // A deadline passing with the job unfinished is reported once.
    s.advance_to(20);
    s.advance_to(30);
    let misses = s
        .drain_events()
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                sched::SchedEvent::DeadlineMiss {
                    job: 1,
                    deadline: 13,
                    ..
                }
            )
        })
        .count();
    assert_eq!(misses, 1);
    let periodic = s.admit(30, TaskSpec::periodic("tick", 1, 50, 3)).unwrap();
    assert!(matches!(
        s.release(30, periodic),
        Err(SchedError::NotSporadic(_))
    ));
}

/// Background mode: an exhausted server's job uses idle CPU only, never delaying node-bound
/// jobs, and that execution is not counted against the budget.
#[test]
fn background_mode_uses_only_idle_time() {
    let cfg = SimConfig {
        server: ServerSpec::sporadic(2, 10, 3).with_exhausted(Exhausted::Background),
        tasks: vec![TaskSpec::periodic("ctl", 3, 10, 2)],
        arrivals: vec![sim::Arrival { at: 0, work: 50 }],
        horizon: 100,
        exec: ExecModel::Wcet,
        overrun_max: 0,
        seed: 0,
    };
    let report = sim::run(&cfg).unwrap();
    // Each period of 10: server [0,2) at its priority, ctl [2,5), background [5,10):
    // 7 units of the job per period, 49 by 70; the server's [70,71) finishes it at 71.
    // At its priority: 7 * 2 + 1 = 15; in background: 7 * 5 = 35; idle: 100 - 50 - 30 = 20.
    assert_eq!(report.aperiodic[0].finished, Some(71));
    assert!(report.deadline_misses.is_empty());
    assert!(report.max_server_in_window(10) <= 2);
    let idle: Time = report
        .trace
        .iter()
        .filter(|s| s.who == Who::Idle)
        .map(|s| s.end - s.start)
        .sum();
    let background: Time = report
        .trace
        .iter()
        .filter(|s| matches!(s.who, Who::Background { .. }))
        .map(|s| s.end - s.start)
        .sum();
    assert_eq!(background, report.stats.background_executed);
    assert_eq!(background, 35);
    assert_eq!(report.stats.server_executed, 15);
    assert_eq!(idle, 20);

    // Suspend mode leaves that CPU idle instead.
    let suspended = sim::run(&SimConfig {
        server: ServerSpec::sporadic(2, 10, 3),
        ..cfg
    })
    .unwrap();
    assert_eq!(suspended.stats.background_executed, 0);
    assert!(suspended.aperiodic[0].finished.is_none());
}

#[test]
fn queue_bound_and_duplicates_are_refused() {
    let mut spec = ServerSpec::sporadic(2, 10, 1);
    spec.max_queue = 2;
    let mut s = Scheduler::new(spec, 0).unwrap();
    s.aperiodic_arrival(0, AperiodicId(1), 5).unwrap();
    assert_eq!(
        s.aperiodic_arrival(0, AperiodicId(1), 5),
        Err(SchedError::DuplicateJob(AperiodicId(1)))
    );
    s.aperiodic_arrival(0, AperiodicId(2), 5).unwrap();
    assert_eq!(
        s.aperiodic_arrival(0, AperiodicId(3), 5),
        Err(SchedError::QueueFull(2))
    );
    assert!(s.remove_aperiodic(1, AperiodicId(1)));
    assert!(!s.remove_aperiodic(1, AperiodicId(1)));
    assert_eq!(s.spare_capacity().queued_work, 5);
    let bogus = Runnable::Aperiodic {
        job: AperiodicId(9),
        background: false,
    };
    assert_eq!(s.complete(2, bogus), Err(SchedError::UnknownJob(bogus)));
}
