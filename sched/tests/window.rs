//! The sporadic server's defining property, checked over recorded traces of many random
//! scenarios: in no sliding window of length Ts does the server run (at its priority) more
//! than Cs — plus at most the overrun allowance when jobs stop late.

mod common;

use sched::sim::{self, max_in_window, Rng, SimConfig};
use sched::{AperiodicId, Exhausted, Runnable, Scheduler, ServerSpec, TaskSpec, Time};

#[test]
fn server_never_exceeds_budget_in_any_window_exact_stops() {
    let mut rng = Rng::new(0xC0FFEE);
    let mut saturated = 0;
    let scenarios = 600;
    for i in 0..scenarios {
        let cfg = common::scenario(&mut rng, 0);
        let report = sim::run(&cfg).expect("admitted set runs");
        let (cs, ts) = (cfg.server.budget, cfg.server.period);
        let worst = report.max_server_in_window(ts);
        assert!(
            worst <= cs,
            "scenario {i}: server ran {worst} > Cs {cs} within a window of {ts}\n{cfg:?}"
        );
        assert_eq!(
            report.stats.overrun_total, 0,
            "scenario {i}: exact stops overran"
        );
        if worst == cs {
            saturated += 1;
        }
    }
    // The bound is reached, not trivially respected: most scenarios use the full budget.
    assert!(
        saturated * 2 > scenarios,
        "only {saturated}/{scenarios} scenarios saturated the server"
    );
}

#[test]
fn overruns_are_charged_excess_stays_within_the_allowance() {
    let mut rng = Rng::new(0xBADC0DE);
    let mut overran = 0;
    for i in 0..600 {
        let q = rng.range(1, 10);
        let cfg = common::scenario(&mut rng, q);
        let report = sim::run(&cfg).expect("admitted set runs");
        let (cs, ts) = (cfg.server.budget, cfg.server.period);
        let worst = report.max_server_in_window(ts);
        assert!(
            worst <= cs + q,
            "scenario {i}: server ran {worst} > Cs {cs} + overrun {q} within a window of {ts}\n{cfg:?}"
        );
        // Charged: over the whole run the server gets no more than its share plus one
        // overrun per window it could have started in.
        let total: Time = report.server_intervals().iter().map(|(a, b)| b - a).sum();
        let windows = cfg.horizon.div_ceil(ts) + 1;
        assert!(total <= windows * (cs + q), "scenario {i}: total {total}");
        if report.stats.overrun_total > 0 {
            overran += 1;
        }
    }
    assert!(overran > 300, "only {overran} scenarios exercised overruns");
}

#[test]
fn polling_server_stays_within_budget_per_period() {
    let mut rng = Rng::new(7);
    for i in 0..200 {
        let mut cfg: SimConfig = common::scenario(&mut rng, 0);
        cfg.server = ServerSpec {
            kind: sched::ServerKind::Polling,
            ..cfg.server
        };
        let report = sim::run(&cfg).expect("admitted set runs");
        for (k, used) in report.server_per_period().iter().enumerate() {
            assert!(
                *used <= cfg.server.budget,
                "scenario {i}: polling server used {used} in period {k}"
            );
        }
        assert!(report.deadline_misses.is_empty(), "scenario {i}");
    }
}

/// A shell on real threads does not get the CPU exactly when told: it reports how much the
/// runnable really ran (`on_tick(now, ran_for)` with `ran_for <= elapsed`), may call back
/// late, and jobs finish or migrate away at any time. The core must keep its bookkeeping
/// consistent and the window bound must hold for the execution it was told about.
#[test]
fn random_shell_keeps_invariants_and_window_bound() {
    let mut rng = Rng::new(42);
    let mut overran = 0;
    for case in 0..600 {
        let late = case % 2 == 1;
        let ts = rng.range(10, 100);
        let cs = rng.range(1, ts / 2);
        let prio_server = rng.range(1, 3) as u32;
        let mut server =
            ServerSpec::sporadic(cs, ts, prio_server).with_max_repl(rng.range(1, 5) as usize);
        if rng.chance(0.3) {
            server = server.with_exhausted(Exhausted::Background);
        }
        let Ok(mut s) = Scheduler::new(server, 0) else {
            continue;
        };
        let other = if prio_server == 1 { 2 } else { 1 };
        let period = rng.range(ts / 2 + 1, ts * 3);
        let _ = s.admit(
            0,
            TaskSpec::periodic("rt", rng.range(1, period / 4 + 1), period, other),
        );
        let mut now: Time = 0;
        let mut server_exec: Vec<(Time, Time)> = Vec::new();
        let mut next_job = 0u64;
        let mut dispatched: Option<Runnable> = None;
        for _ in 0..400 {
            assert!(s.server_invariants_hold(), "case {case} at {now}");
            match rng.range(0, 9) {
                0 | 1 => {
                    let _ = s.aperiodic_arrival(now, AperiodicId(next_job), rng.range(1, 20));
                    next_job += 1;
                }
                2 => {
                    if let Some(r) = dispatched {
                        let _ = s.complete(now, r);
                    }
                }
                3 => {
                    let victim = AperiodicId(rng.range(0, next_job.max(1)));
                    s.remove_aperiodic(now, victim);
                }
                _ => {}
            }
            let d = s.decide(now);
            dispatched = d.run;
            let step = rng.range(0, 2 * ts / 3 + 1);
            let mut until = now + step;
            if let Some(t) = d.next_event_at {
                if !late || rng.chance(0.8) {
                    until = until.min(t); // mostly on time, sometimes late
                }
            }
            let elapsed = until - now;
            let ran = if rng.chance(0.5) {
                elapsed
            } else {
                rng.range(0, elapsed)
            };
            s.on_tick(until, ran);
            if ran > 0
                && matches!(
                    d.run,
                    Some(Runnable::Aperiodic {
                        background: false,
                        ..
                    })
                )
            {
                server_exec.push((until - ran, until));
            }
            now = until;
        }
        assert!(s.server_invariants_hold(), "case {case}");
        // Late callbacks are overruns: charged, and reported with where they ended. The
        // execution that was within budget (the trace minus the overruns) never exceeds Cs
        // in a window; the overruns are the only excess.
        let overruns: Vec<(Time, Time)> = s
            .drain_events()
            .iter()
            .filter_map(|e| match e {
                sched::SchedEvent::ServerOverrun { at, amount } => Some((at - amount, *at)),
                _ => None,
            })
            .collect();
        if !late {
            assert!(
                overruns.is_empty(),
                "case {case}: on-time callbacks never overrun"
            );
        } else if !overruns.is_empty() {
            overran += 1;
        }
        let budgeted = subtract(&server_exec, &overruns);
        let worst = max_in_window(&budgeted, ts);
        assert!(
            worst <= cs,
            "case {case}: budgeted execution {worst} > Cs {cs} in a window of {ts}"
        );
        if !late {
            assert!(max_in_window(&server_exec, ts) <= cs, "case {case}");
        }
    }
    assert!(overran > 100, "only {overran} cases overran");
}

/// `a` minus `b`, both sorted lists of disjoint intervals.
fn subtract(a: &[(Time, Time)], b: &[(Time, Time)]) -> Vec<(Time, Time)> {
    let mut out = Vec::new();
    for &(mut s, e) in a {
        let start = s;
        for &(bs, be) in b.iter().filter(|(bs, be)| *be > start && *bs < e) {
            if bs > s {
                out.push((s, bs));
            }
            s = s.max(be);
        }
        if s < e {
            out.push((s, e));
        }
    }
    out
}

/// Round robin among migrating jobs (the executor rotates the head every quantum) changes
/// who is served, never how much: the server still runs at most Cs in every window, and
/// every job gets a turn instead of the head holding the server until it exits.
#[test]
fn rotating_the_queue_keeps_the_budget_and_shares_the_server() {
    let (cs, ts, quantum) = (3_000, 10_000, 1_000);
    let mut s = Scheduler::new(ServerSpec::sporadic(cs, ts, 10), 0).expect("server alone fits");
    for id in 0..3 {
        s.aperiodic_arrival(0, AperiodicId(id), 0)
            .expect("queue has room");
    }
    let mut served = [0 as Time; 3];
    let mut intervals: Vec<(Time, Time)> = Vec::new();
    let mut now = 0;
    while now < 20 * ts {
        let d = s.decide(now);
        match d.run {
            Some(Runnable::Aperiodic { job, .. }) => {
                let until = d
                    .budget_exhausts_at
                    .unwrap_or(now + quantum)
                    .min(now + quantum);
                s.advance_to(until);
                served[job.0 as usize] += until - now;
                intervals.push((now, until));
                assert!(s.rotate_aperiodic(until, job), "job {job:?} is queued");
                now = until;
            }
            _ => {
                now = d
                    .next_event_at
                    .expect("a queued server has a next replenishment")
            }
        }
    }
    assert!(!s.rotate_aperiodic(now, AperiodicId(99)), "unknown job");
    assert!(max_in_window(&intervals, ts) <= cs);
    let total: Time = served.iter().sum();
    assert!(total >= 19 * cs, "server under-used: {total}");
    for (i, got) in served.iter().enumerate() {
        assert!(
            got * 4 >= total,
            "job {i} got {got} of {total}: not shared round robin"
        );
    }
}
