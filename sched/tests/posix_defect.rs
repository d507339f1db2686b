//! The defect the corrected rules remove. A naive implementation of the POSIX
//! `SCHED_SPORADIC` replenishment rules (written here, in the test, on a unit-step
//! simulator) lets the server run more than Cs in a window of length Ts; the core, on the
//! very same scenarios, never does.
//!
//! Naive POSIX rules as implemented below (IEEE Std 1003.1, `SCHED_SPORADIC`):
//! * the server is *activated* when it has work and capacity > 0; `activation_time` = now;
//! * a replenishment that comes due adds its amount to the capacity at once — also while
//!   the server is active (e.g. preempted) — and that capacity is spent in the same
//!   activation;
//! * when the capacity is exhausted or the queue empties, ONE replenishment of everything
//!   consumed since activation is posted at `activation_time + Ts`.
//!
//! The consumed budget is thus dated from the activation, not from when it was consumed:
//! Stanovich et al. (RTAS 2010) call the result premature replenishment.

use sched::sim::{self, max_in_window, Arrival, ExecModel, Rng, SimConfig};
use sched::{Activation, Replenishment, ServerSpec, TaskSpec, Time};

/// Server execution intervals under the naive POSIX rules, one time unit per step.
fn naive_posix(
    server: &ServerSpec,
    tasks: &[TaskSpec],
    arrivals: &[Arrival],
    horizon: Time,
) -> Vec<(Time, Time)> {
    let (cs, ts) = (server.budget, server.period);
    let mut capacity = cs;
    let mut pending: Vec<(Time, Time)> = Vec::new(); // (at, amount)
    let mut active = false;
    let (mut activation, mut consumed) = (0, 0);
    let mut queue: std::collections::VecDeque<Time> = Default::default(); // work left
    let mut jobs: Vec<Time> = vec![0; tasks.len()]; // work left of the current job, per task
    let mut out: Vec<(Time, Time)> = Vec::new();
    for t in 0..horizon {
        pending.retain(|&(at, amount)| {
            if at == t {
                capacity += amount;
            }
            at != t
        });
        for (i, task) in tasks.iter().enumerate() {
            let Activation::Periodic { offset } = task.activation else {
                continue;
            };
            if t >= offset && (t - offset) % task.period == 0 {
                jobs[i] += task.wcet;
            }
        }
        queue.extend(arrivals.iter().filter(|a| a.at == t).map(|a| a.work));
        if !active && !queue.is_empty() && capacity > 0 {
            active = true;
            activation = t;
            consumed = 0;
        }
        let top_task = (0..tasks.len())
            .filter(|&i| jobs[i] > 0)
            .max_by_key(|&i| tasks[i].priority);
        let server_runs = active && top_task.is_none_or(|i| tasks[i].priority < server.priority);
        if server_runs {
            capacity -= 1;
            consumed += 1;
            if let Some(head) = queue.front_mut() {
                *head -= 1;
                if *head == 0 {
                    queue.pop_front();
                }
            }
            match out.last_mut() {
                Some(last) if last.1 == t => last.1 = t + 1,
                _ => out.push((t, t + 1)),
            }
            if capacity == 0 || queue.is_empty() {
                pending.push((activation + ts, consumed));
                active = false;
            }
        } else if let Some(i) = top_task {
            jobs[i] -= 1;
        }
    }
    out
}

fn core(
    server: &ServerSpec,
    tasks: &[TaskSpec],
    arrivals: &[Arrival],
    horizon: Time,
) -> sim::SimReport {
    sim::run(&SimConfig {
        server: server.clone(),
        tasks: tasks.to_vec(),
        arrivals: arrivals.to_vec(),
        horizon,
        exec: ExecModel::Wcet,
        overrun_max: 0,
        seed: 3,
    })
    .expect("admitted")
}

/// Cs = 2, Ts = 10. H (C 3, first release at 9, period 100) outranks the server.
/// A1 (work 1) at 0, A2 (work 10) at 9.
///
/// Naive POSIX, worked by hand:
/// ```text
/// t=0   activation 0, A1 runs [0,1), queue empty -> post (0+10, 1); capacity 1
/// t=9   A2: activation 9 (capacity 1); H runs [9,12)
/// t=10  (10,1) due: capacity 2, still in the activation of 9
/// t=12  server runs [12,14), exhausted -> post (9+10, 2) = (19, 2)
/// t=19  runs [19,21)   => window [12,22) holds 2 + 2 = 4 > Cs = 2
/// ```
/// Corrected core, worked by hand:
/// ```text
/// t=0   run [0,1) posts (10,1)
/// t=12  run [12,14) (1 remnant + 1 due at 10) posts (12+10, 2) = (22, 2)
/// t=22  run [22,24) posts (32,2); ... A2 runs 2 per 10: [12,14) [22,24) [32,34)
///       [42,44) [52,54), done at 54; no window of 10 holds more than 2
/// ```
#[test]
fn premature_replenishment_hand_worked() {
    let server = ServerSpec::sporadic(2, 10, 1);
    let h = TaskSpec::periodic("H", 3, 100, 2).with_offset(9);
    let arrivals = [Arrival { at: 0, work: 1 }, Arrival { at: 9, work: 10 }];

    let posix = naive_posix(&server, std::slice::from_ref(&h), &arrivals, 60);
    assert_eq!(&posix[..3], &[(0, 1), (12, 14), (19, 21)]);
    assert_eq!(
        max_in_window(&posix, 10),
        4,
        "naive POSIX overruns its budget"
    );

    let report = core(&server, &[h], &arrivals, 60);
    assert_eq!(max_in_window(&report.server_intervals(), 10), 2);
    assert_eq!(
        report.server_intervals(),
        vec![(0, 1), (12, 14), (22, 24), (32, 34), (42, 44), (52, 54)]
    );
    let posted: Vec<Replenishment> = report.replenishments.iter().map(|(_, r)| *r).collect();
    assert_eq!(
        posted[..3],
        [
            Replenishment { at: 10, amount: 1 },
            Replenishment { at: 22, amount: 2 },
            Replenishment { at: 32, amount: 2 }
        ]
    );
    assert_eq!(report.aperiodic[1].finished, Some(54));
}

/// Random small scenarios: the naive rules exceed Cs in a window in many of them, the core
/// in none of the same scenarios.
#[test]
fn naive_posix_overruns_where_the_core_does_not() {
    let mut rng = Rng::new(2010);
    let (mut naive_violations, mut runs) = (0, 0);
    for _ in 0..300 {
        let ts = rng.range(5, 30);
        let cs = rng.range(1, ts / 2);
        let server = ServerSpec::sporadic(cs, ts, 1);
        let period = rng.range(ts / 2 + 1, 3 * ts);
        let h = TaskSpec::periodic("H", rng.range(1, period / 2), period, 2)
            .with_offset(rng.range(0, period));
        let horizon = ts * 30;
        let mut arrivals = sim::poisson_arrivals(&mut rng, server.utilisation() * 1.2, cs, horizon);
        arrivals.sort_by_key(|a| a.at);
        let Ok(report) = sim::run(&SimConfig {
            server: server.clone(),
            tasks: vec![h.clone()],
            arrivals: arrivals.clone(),
            horizon,
            exec: ExecModel::Wcet,
            overrun_max: 0,
            seed: 0,
        }) else {
            continue; // not admitted
        };
        runs += 1;
        assert!(report.max_server_in_window(ts) <= cs);
        if max_in_window(&naive_posix(&server, &[h], &arrivals, horizon), ts) > cs {
            naive_violations += 1;
        }
    }
    eprintln!("naive POSIX exceeded Cs in {naive_violations} of {runs} scenarios");
    assert!(runs > 200, "{runs}");
    assert!(
        naive_violations * 2 > runs,
        "naive POSIX exceeded Cs in only {naive_violations} of {runs} scenarios"
    );
}
