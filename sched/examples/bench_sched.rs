//! Scheduling benchmark on the simulated clock (no threads, no wall time).
//!
//! A node runs node-bound real-time jobs at 50 % utilisation (an autopilot loop, a tracker,
//! telemetry) and one aperiodic server (Cs = 3 ms every Ts = 10 ms, between the autopilot
//! and the tracker in priority) for migrating jobs. Migrating jobs stop only at their next
//! yield point: when the budget runs out they go on for up to 200 µs (the overrun
//! allowance admission counts). The same arrival patterns are served by the sporadic server
//! and by a polling server of the same budget.
//!
//! Headline run: a 30 s wave of migrating jobs offering 130 % of the server's capacity
//! (Poisson arrivals plus bursts of 20 jobs every 2 s), then 30 s to drain — the server is
//! saturated for most of the run. Lighter loads are in the table for comparison.
//!
//! Last line: one JSON object with the figures.

use sched::sim::{self, Arrival, ExecModel, Rng, SimConfig, SimReport};
use sched::{Scheduler, ServerSpec, TaskSpec, Time};

const MS: Time = 1_000; // time unit: µs
const HORIZON: Time = 60_000 * MS;
const WAVE: Time = 30_000 * MS;
const CS: Time = 3 * MS;
const TS: Time = 10 * MS;
const OVERRUN: Time = 200;

fn tasks() -> Vec<TaskSpec> {
    vec![
        TaskSpec::periodic("autopilot", MS, 5 * MS, 5),
        TaskSpec::periodic("tracker", 4 * MS, 20 * MS, 3),
        TaskSpec::periodic("telemetry", 5 * MS, 50 * MS, 2),
    ]
}

fn server(polling: bool) -> ServerSpec {
    let s = if polling {
        ServerSpec::polling(CS, TS, 4)
    } else {
        ServerSpec::sporadic(CS, TS, 4).with_max_repl(8)
    };
    let mut s = s.with_overrun_allowance(OVERRUN);
    s.max_queue = 1 << 20;
    s
}

/// Migrating jobs: mostly short (mean 1 ms), some long (mean 5 ms): mean 1.8 ms.
fn work(rng: &mut Rng) -> Time {
    let mean = if rng.chance(0.8) { 1.0 } else { 5.0 };
    ((rng.exp(mean) * MS as f64) as Time).max(10)
}

/// Arrivals in `[0, WAVE)` offering `factor` times the server's capacity Cs/Ts; with
/// `bursts`, a third of it comes as waves of 20 jobs every 2 s.
fn arrivals(seed: u64, factor: f64, bursts: bool) -> Vec<Arrival> {
    let mut rng = Rng::new(seed);
    let capacity = CS as f64 / TS as f64;
    let mean_work = 1.8 * MS as f64;
    let steady = if bursts { factor * 2.0 / 3.0 } else { factor };
    let mut out = Vec::new();
    let gap = mean_work / (capacity * steady);
    let mut t = rng.exp(gap);
    while (t as Time) < WAVE {
        out.push(Arrival {
            at: t as Time,
            work: work(&mut rng),
        });
        t += rng.exp(gap);
    }
    if bursts {
        // A third of the load: 20 jobs every `period`.
        let per_burst = 20.0 * mean_work;
        let period = per_burst / (capacity * factor / 3.0);
        let mut b = period / 2.0;
        while (b as Time) < WAVE {
            for _ in 0..20 {
                out.push(Arrival {
                    at: b as Time,
                    work: work(&mut rng),
                });
            }
            b += period;
        }
    }
    out.sort_by_key(|a| a.at);
    out
}

fn run(polling: bool, arrivals: &[Arrival]) -> SimReport {
    sim::run(&SimConfig {
        server: server(polling),
        tasks: tasks(),
        arrivals: arrivals.to_vec(),
        horizon: HORIZON,
        exec: ExecModel::Wcet,
        overrun_max: OVERRUN,
        seed: 0x0A11,
    })
    .expect("the benchmark set is admitted")
}

fn ms(t: Option<Time>) -> String {
    t.map_or("-".into(), |t| format!("{:.1}", t as f64 / MS as f64))
}

fn main() {
    let mut probe = Scheduler::new(server(false), 0).expect("server admitted");
    for t in tasks() {
        probe.admit(0, t).expect("task admitted");
    }
    let spare = probe.spare_capacity();
    println!(
        "roam sched benchmark — simulated clock, {} s; node-bound U = {:.2}; server Cs {} ms / Ts {} ms ({:.0} %), overrun <= {} µs charged",
        HORIZON / 1_000_000,
        spare.periodic_utilisation,
        CS / MS,
        TS / MS,
        100.0 * spare.server_share,
        OVERRUN
    );
    println!();
    println!(
        "{:<16} {:>8} {:>8} {:>8} {:>5} {:>10}",
        "task (RTA)", "C ms", "T ms", "D ms", "prio", "R ms"
    );
    let specs: Vec<(Time, Time, Time, u32)> = tasks()
        .iter()
        .map(|t| (t.wcet, t.period, t.deadline, t.priority.0))
        .chain(std::iter::once((CS + OVERRUN, TS, TS, 4)))
        .collect();
    for (r, (c, t, d, p)) in probe.response_times().iter().zip(specs) {
        println!(
            "{:<16} {:>8.1} {:>8.1} {:>8.1} {:>5} {:>10}",
            r.name,
            c as f64 / MS as f64,
            t as f64 / MS as f64,
            d as f64 / MS as f64,
            p,
            ms(r.response)
        );
    }
    println!(
        "spare: headroom {:.3}, largest admissible server budget {:.2} ms",
        spare.headroom,
        spare.max_server_budget as f64 / MS as f64
    );
    println!();
    println!(
        "{:<22} {:<9} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>11} {:>12} {:>8}",
        "migrating load",
        "server",
        "jobs",
        "done",
        "p50 ms",
        "p95 ms",
        "server %",
        "drained s",
        "max win ms",
        "over Cs µs",
        "misses"
    );

    let scenarios: [(&str, f64, bool, u64); 4] = [
        ("0.3x capacity", 0.3, false, 11),
        ("0.7x capacity", 0.7, false, 12),
        ("0.7x + bursts", 0.7, true, 13),
        ("1.3x + bursts (head)", 1.3, true, 14),
    ];
    let (mut misses, mut due) = (0usize, 0u64);
    let mut overrun_max: Time = 0;
    let mut head = (None, None);
    let mut moderate = (None, None);
    for (name, factor, bursts, seed) in scenarios {
        let pattern = arrivals(seed, factor, bursts);
        for polling in [false, true] {
            let report = run(polling, &pattern);
            misses += report.deadline_misses.len();
            due += report.jobs_due;
            let worst = report.max_server_in_window(TS);
            let over = worst.saturating_sub(CS);
            if !polling {
                overrun_max = overrun_max.max(over);
            }
            let drained = report.aperiodic.iter().filter_map(|a| a.finished).max();
            let p50 = report.response_quantile(0.5);
            if seed == 14 {
                if polling {
                    head.1 = p50
                } else {
                    head.0 = p50
                }
            }
            if seed == 12 {
                if polling {
                    moderate.1 = p50
                } else {
                    moderate.0 = p50
                }
            }
            println!(
                "{:<22} {:<9} {:>7} {:>7} {:>9} {:>9} {:>9.1} {:>9} {:>11.3} {:>12} {:>8}",
                name,
                if polling { "polling" } else { "sporadic" },
                report.aperiodic.len(),
                report.aperiodic_finished(),
                ms(p50),
                ms(report.response_quantile(0.95)),
                100.0 * report.stats.server_executed as f64 / HORIZON as f64,
                drained.map_or("-".into(), |t| format!("{:.1}", t as f64 / 1e6)),
                worst as f64 / MS as f64,
                over,
                format!("{}/{}", report.deadline_misses.len(), report.jobs_due),
            );
        }
    }
    println!();
    println!("server %: CPU the server used at its priority over the 60 s (arrivals only in the first 30 s; capacity 30 %)");
    println!("drained: last completion of a migrating job");
    println!(
        "max win: most server execution in any sliding window of length Ts; over Cs: that minus Cs"
    );
    println!("(for the polling server a sliding window may hold the end of one period and the start of the next)");

    let json_ms = |t: Option<Time>| {
        t.map_or("null".to_string(), |t| {
            format!("{:.3}", t as f64 / MS as f64)
        })
    };
    println!(
        "{{\"deadline_miss_rate\": {}, \"server_overrun_max_us\": {}, \"aperiodic_response_ms_p50_sporadic\": {}, \"aperiodic_response_ms_p50_polling\": {}, \"aperiodic_response_ms_p50_sporadic_0_7x\": {}, \"aperiodic_response_ms_p50_polling_0_7x\": {}, \"node_bound_jobs\": {}, \"preempt_latency_us_p99\": null}}",
        if due == 0 { 0.0 } else { misses as f64 / due as f64 },
        overrun_max,
        json_ms(head.0),
        json_ms(head.1),
        json_ms(moderate.0),
        json_ms(moderate.1),
        due
    );
}
