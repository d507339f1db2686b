//! Benchmark of the decentralised ADMM placement on the simulated swarm: gap to the LP
//! bound (microlp), iterations, gossip bytes per node per iteration (CBOR), core time
//! (the whole swarm runs in one thread: wall time of the solve ÷ nodes, message
//! encoding excluded), and a warm re-solve with nothing changed.
//! Prints a table, then one JSON object as the last line. `wall_ms` (over a real mesh)
//! comes from the shell later: null here.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use placement::sim::{random_instance, InstanceOpts, SimConfig, Swarm};
use placement::{Config, Problem};

struct Row {
    name: String,
    gap_pct: f64,
    lp_gap_frac: f64,
    iterations: f64,
    bytes_per_node_per_iter: f64,
    core_ms: f64,
    lp_ms: f64,
    moves: f64,
    converged: usize,
    runs: usize,
    max_iterations: u32,
    warm_iterations: f64,
    warm_moves: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

fn bench(nodes: usize, jobs: usize, seeds: u64) -> Row {
    let cfg = Config::default();
    let (mut gaps, mut fgaps, mut iters, mut bpi, mut core, mut lpms, mut moves) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut converged = 0;
    let mut max_iterations = 0;
    let (mut warm_iters, mut warm_moves) = (vec![], vec![]);
    for seed in 0..seeds {
        let inst = random_instance(seed + 1, nodes, jobs, &InstanceOpts::default());
        let problem =
            Problem::from_envs(&inst.jobs, &inst.envs, &cfg.hysteresis).expect("feasible instance");
        // Timed run without encoding (pure core + bus), then the same run through CBOR for
        // the sizes: same seed, same result.
        let mut swarm = Swarm::new(&inst, cfg.clone(), SimConfig::default());
        let t = Instant::now();
        swarm.start_round(1).expect("start");
        let rep = swarm.run().expect("run");
        let elapsed = t.elapsed().as_secs_f64() * 1e3;
        let out = rep.agreed().expect("agreement").clone();
        let mut swarm2 =
            Swarm::new(&inst, cfg.clone(), SimConfig::default()).with_codec(Box::new(common::Cbor));
        swarm2.start_round(1).expect("start");
        let rep2 = swarm2.run().expect("run");
        assert_eq!(rep2.agreed().map(|o| o.digest), Some(out.digest));
        let t = Instant::now();
        let lb = common::lp_bound(&problem);
        lpms.push(t.elapsed().as_secs_f64() * 1e3);
        gaps.push(common::gap_pct(out.objective, lb));
        fgaps.push(common::gap_pct(out.fractional_objective, lb));
        iters.push(out.iterations as f64);
        let per_node = swarm2.stats.bytes as f64 / nodes as f64;
        bpi.push(per_node / (out.iterations.max(1) as f64));
        core.push(elapsed / nodes as f64);
        moves.push(out.moves as f64);
        converged += out.converged as usize;
        max_iterations = max_iterations.max(out.iterations);
        // Next round with nothing changed: warm start from this placement and its prices.
        swarm2.apply(&out);
        swarm2.start_round(2).expect("round 2");
        let again = swarm2
            .run()
            .expect("run")
            .agreed()
            .expect("agreement")
            .clone();
        warm_iters.push(again.iterations as f64);
        warm_moves.push(again.moves as f64);
    }
    Row {
        name: format!("{nodes}x{jobs}"),
        gap_pct: median(gaps),
        lp_gap_frac: median(fgaps),
        iterations: median(iters),
        bytes_per_node_per_iter: median(bpi),
        core_ms: median(core),
        lp_ms: median(lpms),
        moves: median(moves),
        converged,
        runs: seeds as usize,
        max_iterations,
        warm_iterations: median(warm_iters),
        warm_moves: median(warm_moves),
    }
}

fn main() {
    let sizes: &[(usize, usize, u64)] = &[(3, 1, 21), (8, 32, 5), (32, 256, 5), (64, 512, 3)];
    let rows: Vec<Row> = sizes.iter().map(|&(n, j, s)| bench(n, j, s)).collect();
    println!("ADMM placement on the simulated swarm (medians over seeds; gap vs the LP bound by microlp)");
    println!(
        "{:>8} {:>5} {:>7} {:>10} {:>6} {:>5} {:>6} {:>12} {:>9} {:>8} {:>6} {:>10} {:>10}",
        "size",
        "runs",
        "gap_%",
        "frac_gap_%",
        "iters",
        "max",
        "conv",
        "B/node/iter",
        "core_ms",
        "lp_ms",
        "moves",
        "warm_iters",
        "warm_moves"
    );
    for r in &rows {
        println!(
            "{:>8} {:>5} {:>7.3} {:>10.3} {:>6.0} {:>5} {:>3}/{:<2} {:>12.0} {:>9.2} {:>8.1} {:>6.0} {:>10.0} {:>10.0}",
            r.name,
            r.runs,
            r.gap_pct,
            r.lp_gap_frac,
            r.iterations,
            r.max_iterations,
            r.converged,
            r.runs,
            r.bytes_per_node_per_iter,
            r.core_ms,
            r.lp_ms,
            r.moves,
            r.warm_iterations,
            r.warm_moves
        );
    }
    println!(
        "seed system (3 nodes, one request at a time): median 5 iterations, 30 % of runs at its cap, median 2.8 s"
    );
    let body: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "\"{}\": {{\"gap_pct\": {:.4}, \"iterations\": {}, \"max_iterations\": {}, \"at_cap_pct\": {:.1}, \"bytes_per_node_per_iter\": {:.0}, \"core_ms\": {:.3}, \"warm_iterations\": {}, \"wall_ms\": null}}",
                r.name,
                r.gap_pct,
                r.iterations,
                r.max_iterations,
                100.0 * (r.runs - r.converged) as f64 / r.runs as f64,
                r.bytes_per_node_per_iter,
                r.core_ms,
                r.warm_iterations
            )
        })
        .collect();
    println!("{{{}}}", body.join(", "));
}
