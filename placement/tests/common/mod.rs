//! Ground truth and wire sizes for the tests and the benchmark (dev-dependencies only):
//! the LP relaxation and small integer programs by `microlp`, brute force for tiny
//! instances, and a CBOR codec (`ciborium`) for the simulated bus.
#![allow(dead_code)]

use microlp::{ComparisonOp, OptimizationDirection, Problem as Lp, Variable};
use placement::msg::Msg;
use placement::sim::Codec;
use placement::Problem;

/// Largest message the codec accepts (untrusted input is bounded).
const MAX_MSG: usize = 1 << 20;

pub struct Cbor;

impl Codec for Cbor {
    fn encode(&self, msg: &Msg) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(msg, &mut out).expect("encoding into a Vec cannot fail");
        out
    }
    fn decode(&self, bytes: &[u8]) -> Option<Msg> {
        if bytes.len() > MAX_MSG {
            return None;
        }
        ciborium::from_reader(bytes).ok()
    }
}

/// Builds the LP (or MIP) of a problem: x[j][n] for allowed pairs, one excess variable
/// per node with a load term.
fn build(p: &Problem, integer: bool) -> (Lp, Vec<Vec<Option<Variable>>>) {
    let mut lp = Lp::new(OptimizationDirection::Minimize);
    let (nj, nn) = (p.n_jobs(), p.n_nodes());
    let mut x = vec![vec![None; nj]; nn];
    for (n, row) in x.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            if p.allowed(n, j) {
                *v = Some(if integer {
                    lp.add_binary_var(p.c(n, j))
                } else {
                    lp.add_var(p.c(n, j), (0.0, 1.0))
                });
            }
        }
    }
    for j in 0..nj {
        let terms: Vec<(Variable, f64)> = x
            .iter()
            .filter_map(|row| row[j].map(|v| (v, 1.0)))
            .collect();
        lp.add_constraint(&terms[..], ComparisonOp::Eq, 1.0);
    }
    for (n, row) in x.iter().enumerate() {
        let mut terms: Vec<(Variable, f64)> = (0..nj)
            .filter_map(|j| row[j].map(|v| (v, p.jobs[j].demand)))
            .collect();
        lp.add_constraint(&terms[..], ComparisonOp::Le, p.capacity[n]);
        if p.slope[n] > 0.0 && p.knee[n] < p.capacity[n] {
            // t ≥ load − knee, t ≥ 0, cost slope · t.
            let t = lp.add_var(p.slope[n], (0.0, f64::INFINITY));
            terms.push((t, -1.0));
            lp.add_constraint(&terms[..], ComparisonOp::Le, p.knee[n]);
        }
    }
    (lp, x)
}

/// Optimum of the LP relaxation: a lower bound on any placement.
pub fn lp_bound(p: &Problem) -> f64 {
    let (lp, _) = build(p, false);
    let sol = lp
        .solve()
        .expect("LP solve")
        .into_solution()
        .expect("LP solution");
    sol.objective()
}

/// Optimum of the integer program (small instances only).
pub fn ilp_optimum(p: &Problem) -> Option<f64> {
    let (lp, _) = build(p, true);
    let sol = lp.solve().ok()?.into_solution().ok()?;
    Some(sol.objective())
}

/// Optimum by enumeration (tiny instances only).
pub fn brute_force(p: &Problem) -> Option<f64> {
    let (nj, nn) = (p.n_jobs(), p.n_nodes());
    let mut assign = vec![0usize; nj];
    let mut best: Option<f64> = None;
    loop {
        if let Some(v) = p.objective(&assign) {
            if best.is_none_or(|b| v < b) {
                best = Some(v);
            }
        }
        let mut k = 0;
        loop {
            if k == nj {
                return best;
            }
            assign[k] += 1;
            if assign[k] < nn {
                break;
            }
            assign[k] = 0;
            k += 1;
        }
    }
}

/// Relative gap (percent) of `value` over the bound.
pub fn gap_pct(value: f64, bound: f64) -> f64 {
    100.0 * (value - bound) / bound.abs().max(1e-12)
}

/// The LP optimum's x[n][j] (for diagnostics).
pub fn lp_solution(p: &Problem) -> Vec<Vec<f64>> {
    let (lp, x) = build(p, false);
    let sol = lp
        .solve()
        .expect("LP solve")
        .into_solution()
        .expect("LP solution");
    x.iter()
        .map(|row| {
            row.iter()
                .map(|v| v.map_or(0.0, |v| sol.var_value(v)))
                .collect()
        })
        .collect()
}
