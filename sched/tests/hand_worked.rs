//! Small cases worked out by hand (the computation is in each comment); the core must
//! post exactly these replenishments and finish the jobs exactly then.

use sched::sim::{self, Arrival, ExecModel, SimConfig, SimReport};
use sched::{
    AperiodicId, Decision, Replenishment, Runnable, SchedEvent, Scheduler, ServerSpec, TaskSpec,
    Time,
};

fn r(at: Time, amount: Time) -> Replenishment {
    Replenishment { at, amount }
}

fn simulate(
    server: ServerSpec,
    tasks: Vec<TaskSpec>,
    arrivals: &[(Time, Time)],
    horizon: Time,
) -> SimReport {
    sim::run(&SimConfig {
        server,
        tasks,
        arrivals: arrivals
            .iter()
            .map(|&(at, work)| Arrival { at, work })
            .collect(),
        horizon,
        exec: ExecModel::Wcet,
        overrun_max: 0,
        seed: 1,
    })
    .expect("admitted")
}

fn posted(report: &SimReport) -> Vec<(Time, Replenishment)> {
    report.replenishments.clone()
}

/// Cs = 4, Ts = 10, the server alone. A (work 1) at 2, B (work 5) at 5.
///
/// ```text
/// t=2   A runs [2,3), done            -> run [2,3) posts (2+10, 1) = (12, 1); 3 left
/// t=5   B runs [5,8), budget gone     -> run [5,8) posts (15, 3); B needs 2 more
/// t=12  (12,1) due, B runs [12,13)    -> posts (22, 1); B needs 1 more
/// t=15  (15,3) due, B runs [15,16), done -> posts (25, 1); remnant 2 stays available
/// ```
#[test]
fn splits_post_each_run_from_its_start() {
    let report = simulate(
        ServerSpec::sporadic(4, 10, 1),
        vec![],
        &[(2, 1), (5, 5)],
        30,
    );
    assert_eq!(
        posted(&report),
        vec![(3, r(12, 1)), (8, r(15, 3)), (13, r(22, 1)), (16, r(25, 1))]
    );
    assert_eq!(report.aperiodic[0].finished, Some(3));
    assert_eq!(report.aperiodic[1].finished, Some(16));
}

/// Preemption ends a run. Server Cs = 3, Ts = 10, priority 1; H (C 2, T 10, first release
/// at 1) priority 2. One aperiodic job of work 4 at 0.
///
/// ```text
/// t=0   server runs [0,1)                 H released at 1 preempts
/// t=1   run [0,1) posts (0+10, 1) = (10, 1); H runs [1,3)
/// t=3   server runs [3,5): 2 left, exhausted -> posts (3+10, 2) = (13, 2); job needs 1
/// t=10  (10,1) due: server runs [10,11), job done at 11 -> posts (20, 1)
/// t=11  H runs [11,13); at 13 (13,2) is due, nothing queued
/// ```
/// POSIX would date all 3 units from the activation at 0: one replenishment (10, 3).
#[test]
fn preemption_ends_a_run_and_splits_the_replenishment() {
    let h = TaskSpec::periodic("H", 2, 10, 2).with_offset(1);
    let report = simulate(ServerSpec::sporadic(3, 10, 1), vec![h], &[(0, 4)], 30);
    assert_eq!(
        posted(&report),
        vec![(1, r(10, 1)), (5, r(13, 2)), (11, r(20, 1))]
    );
    assert_eq!(report.aperiodic[0].finished, Some(11));
    assert!(report.deadline_misses.is_empty());
}

/// A full replenishment list (max_repl 2) defers the remnant. Cs = 3, Ts = 10; jobs of
/// work 1 at 0, 2 and 4.
///
/// ```text
/// t=0  A runs [0,1) -> posts (10,1): list [(0,2 available), (10,1)]
/// t=2  B runs [2,3) -> posts (12,1): list would be [(0,1), (10,1), (12,1)], 3 > 2:
///      the remnant merges into the next -> [(10,2), (12,1)], nothing available
/// t=4  C arrives, waits
/// t=10 (10,2) due: C runs [10,11) -> posts (20,1): [(10,1), (12,1), (20,1)], 3 > 2:
///      merge -> [(12,2), (20,1)]
/// ```
/// With room for 8 replenishments C would run at once, [4,5).
#[test]
fn full_list_merges_and_defers_budget() {
    let arrivals = [(0, 1), (2, 1), (4, 1)];
    let tight = simulate(
        ServerSpec::sporadic(3, 10, 1).with_max_repl(2),
        vec![],
        &arrivals,
        12,
    );
    assert_eq!(
        posted(&tight),
        vec![(1, r(10, 1)), (3, r(12, 1)), (11, r(20, 1))]
    );
    assert_eq!(tight.aperiodic[2].finished, Some(11));
    assert_eq!(tight.stats.list_merges, 2);

    let roomy = simulate(
        ServerSpec::sporadic(3, 10, 1).with_max_repl(8),
        vec![],
        &arrivals,
        12,
    );
    assert_eq!(roomy.aperiodic[2].finished, Some(5));
    assert_eq!(roomy.stats.list_merges, 0);
}

fn run_of(d: &Decision) -> Runnable {
    d.run.expect("something runs")
}

/// An overrun with nothing pending delays the run's own replenishment. Cs = 2, Ts = 10.
///
/// ```text
/// t=0  job arrives, server runs; budget runs out at 2, but the job stops only at 3
///      -> overrun 1, nothing pending to pay it: unpaid 1
/// t=3  run of 3 ends: posts (3 - 3 + 10 + 1, 2) = (11, 2)
/// ```
#[test]
fn overrun_without_pending_budget_delays_the_replenishment() {
    let mut s = Scheduler::new(ServerSpec::sporadic(2, 10, 1), 0).unwrap();
    s.aperiodic_arrival(0, AperiodicId(0), 100).unwrap();
    let d = s.decide(0);
    assert_eq!(d.budget_exhausts_at, Some(2));
    assert_eq!(d.next_event_at, Some(2));
    s.on_tick(3, 3);
    let d = s.decide(3);
    assert_eq!(d.run, None);
    assert_eq!(d.next_event_at, Some(11));
    let events = s.drain_events();
    assert!(events.contains(&SchedEvent::ServerOverrun { at: 3, amount: 1 }));
    assert!(events.contains(&SchedEvent::ReplenishmentPosted {
        at: 3,
        replenishment: r(11, 2)
    }));
    assert_eq!(s.replenishments(), vec![r(11, 2)]);
    assert_eq!(s.decide(10).run, None);
    assert!(matches!(
        s.decide(11).run,
        Some(Runnable::Aperiodic {
            background: false,
            ..
        })
    ));
}

/// An overrun is paid by the earliest pending replenishment, which shrinks and slides.
/// Cs = 4, Ts = 10.
///
/// ```text
/// t=0  A (work 2) runs [0,2) -> posts (10, 2); 2 available
/// t=5  B runs; budget out at 7, B stops at 8: overrun 1
///      paid by (10,2): it becomes (10+1, 2-1) = (11, 1); the run holds 3 units
/// t=8  run [5,8) posts (8 - 3 + 10, 3) = (15, 3)       list [(11,1), (15,3)] = 4 units
/// ```
/// Window check: [5,15) holds [5,8) and [11,12) = 4 = Cs.
#[test]
fn overrun_is_paid_by_the_next_replenishment() {
    let mut s = Scheduler::new(ServerSpec::sporadic(4, 10, 1), 0).unwrap();
    s.aperiodic_arrival(0, AperiodicId(0), 2).unwrap();
    let a = run_of(&s.decide(0));
    s.advance_to(2);
    s.complete(2, a).unwrap();
    assert_eq!(s.decide(2).run, None);
    assert_eq!(s.replenishments(), vec![r(0, 2), r(10, 2)]);

    s.aperiodic_arrival(5, AperiodicId(1), 100).unwrap();
    let d = s.decide(5);
    assert_eq!(d.budget_exhausts_at, Some(7));
    s.on_tick(8, 3);
    assert!(s.server_invariants_hold());
    assert_eq!(s.decide(8).run, None);
    assert_eq!(s.replenishments(), vec![r(11, 1), r(15, 3)]);
    assert_eq!(s.decide(11).budget_exhausts_at, Some(12));
}

/// A shell that reports less CPU than elapsed (`ran_for < elapsed`) gets its replenishment
/// dated from the latest possible start. Cs = 4, Ts = 10.
///
/// ```text
/// t=0  server dispatched; at t=5 the shell reports it ran only 2 (preempted by the OS)
/// t=5  run ends: posts (5 - 2 + 10, 2) = (13, 2)
/// ```
#[test]
fn partial_ticks_date_the_replenishment_conservatively() {
    let mut s = Scheduler::new(ServerSpec::sporadic(4, 10, 1), 0).unwrap();
    s.aperiodic_arrival(0, AperiodicId(7), 2).unwrap();
    let job = run_of(&s.decide(0));
    s.on_tick(5, 2);
    s.complete(5, job).unwrap();
    s.decide(5);
    assert_eq!(s.replenishments(), vec![r(0, 2), r(13, 2)]);
}

/// Polling server, Cs = 2, Ts = 10: a job arriving just after a poll waits for the next.
///
/// ```text
/// t=0   poll: queue empty, budget lost
/// t=1   job (work 3) arrives, waits
/// t=10  poll: budget 2, runs [10,12); t=20 poll: runs [20,21), done at 21
/// ```
/// The sporadic server of the same budget serves it [1,3) then [11,12): done at 12.
#[test]
fn polling_versus_sporadic_on_one_job() {
    let polling = simulate(ServerSpec::polling(2, 10, 1), vec![], &[(1, 3)], 35);
    assert_eq!(polling.aperiodic[0].finished, Some(21));
    assert_eq!(polling.stats.wasted_polls, 2); // t=0 and t=30
    let sporadic = simulate(ServerSpec::sporadic(2, 10, 1), vec![], &[(1, 3)], 35);
    assert_eq!(sporadic.aperiodic[0].finished, Some(12));
}
