//! Random scenario generation shared by the property tests.
#![allow(dead_code)]

use sched::sim::{poisson_arrivals, Arrival, ExecModel, Rng, SimConfig};
use sched::{Exhausted, Priority, ServerSpec, TaskSpec, Time};

/// A random server and task set that admission accepts, with no arrivals yet.
pub fn admitted_set(rng: &mut Rng, overrun_allowance: Time) -> (ServerSpec, Vec<TaskSpec>) {
    loop {
        let ts = rng.range(20, 200);
        let cs = rng.range(1, ts / 2);
        let n = rng.range(0, 4) as usize;
        // Distinct priorities 1..=n+1, shuffled; one of them is the server's.
        let mut prios: Vec<u32> = (1..=(n as u32 + 1)).collect();
        for i in (1..prios.len()).rev() {
            let j = rng.range(0, i as u64) as usize;
            prios.swap(i, j);
        }
        let max_repl = rng.range(1, 6) as usize;
        let mut server = ServerSpec::sporadic(cs, ts, prios[0])
            .with_max_repl(max_repl)
            .with_overrun_allowance(overrun_allowance);
        if rng.chance(0.25) {
            server = server.with_exhausted(Exhausted::Background);
        }
        let tasks: Vec<TaskSpec> = (0..n)
            .map(|i| {
                let period = rng.range(10, 300);
                let wcet = rng.range(1, (period / 3).max(1));
                let deadline = rng.range(wcet.max(period * 2 / 3), period);
                TaskSpec {
                    priority: Priority(prios[i + 1]),
                    ..TaskSpec::periodic(&format!("t{i}"), wcet, period, 0)
                }
                .with_deadline(deadline)
                .with_offset(rng.range(0, period))
            })
            .collect();
        let mut probe = match sched::Scheduler::new(server.clone(), 0) {
            Ok(s) => s,
            Err(_) => continue,
        };
        if tasks.iter().all(|t| probe.admit(0, t.clone()).is_ok()) {
            return (server, tasks);
        }
    }
}

/// Aperiodic arrivals mixing Poisson load (from light to heavy overload), bursts, and
/// arrivals at awkward instants: exactly at multiples of Ts, one before and one after,
/// at `k Ts + Cs` (when a budget used from `k Ts` would run out) and at task releases.
pub fn awkward_arrivals(
    rng: &mut Rng,
    server: &ServerSpec,
    tasks: &[TaskSpec],
    horizon: Time,
) -> Vec<Arrival> {
    let (cs, ts) = (server.budget, server.period);
    let share = server.utilisation();
    let load = share * [0.3, 0.9, 1.5, 4.0][rng.range(0, 3) as usize];
    let mean_work = rng.range(1, cs * 2);
    let mut out = poisson_arrivals(rng, load, mean_work, horizon);
    for _ in 0..rng.range(0, 4) {
        let at = rng.range(0, horizon);
        for _ in 0..rng.range(2, 8) {
            out.push(Arrival {
                at,
                work: rng.range(1, cs * 3),
            });
        }
    }
    for k in 0..horizon / ts {
        if rng.chance(0.3) {
            let base = k * ts;
            let at = match rng.range(0, 4) {
                0 => base,
                1 => base.saturating_sub(1),
                2 => base + 1,
                3 => base + cs,
                _ => base + cs + 1,
            };
            out.push(Arrival {
                at,
                work: rng.range(1, cs + 2),
            });
        }
    }
    for t in tasks {
        if let sched::Activation::Periodic { offset } = t.activation {
            if rng.chance(0.5) {
                out.push(Arrival {
                    at: offset + t.period * rng.range(0, 5),
                    work: rng.range(1, cs),
                });
            }
        }
    }
    out.retain(|a| a.at < horizon);
    out
}

pub fn scenario(rng: &mut Rng, overrun_max: Time) -> SimConfig {
    let (server, tasks) = admitted_set(rng, overrun_max);
    let horizon = server.period * 40;
    let arrivals = awkward_arrivals(rng, &server, &tasks, horizon);
    SimConfig {
        server,
        tasks,
        arrivals,
        horizon,
        exec: if rng.chance(0.5) {
            ExecModel::Wcet
        } else {
            ExecModel::Uniform { min_permille: 300 }
        },
        overrun_max,
        seed: rng.next_u64(),
    }
}
