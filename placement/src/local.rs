//! The local step of a node, solved exactly: the projection of a point onto its
//! capacitated box, with the piecewise-linear load term.
//!
//! ```text
//!   minimise  ½‖x − w‖² + G(d·x)     over 0 ≤ x ≤ 1 (the node's allowed jobs)
//!   G(s) = (λ/ρ)·max(0, s − κ) + ι{s ≤ C}
//! ```
//!
//! KKT: `x(t) = clamp(w − t·d, 0, 1)` for a scalar `t = μ/ρ ≥ 0` with `t ∈ ∂G(s(t))`,
//! `s(t) = d·x(t)`. `s` is continuous, piecewise linear and non-increasing in `t`, with
//! breakpoints `(w_j − 1)/d_j` and `w_j/d_j`; `∂G` is monotone, so the crossing is found by
//! sorting the breakpoints and a binary search over them (each probe O(J)), then solving
//! the linear piece exactly: O(J log J).

/// Scratch space reused across calls (no allocation per iteration once warmed up).
#[derive(Debug, Default, Clone)]
pub struct Projector {
    bps: Vec<f64>,
}

impl Projector {
    /// Writes the minimiser into `out` (same length as `w` and `d`); returns `t`.
    ///
    /// `d` must be > 0 and finite, `cap` ≥ 0, `w` finite. `penalty` is `(κ, λ/ρ)`.
    pub fn project(
        &mut self,
        w: &[f64],
        d: &[f64],
        cap: f64,
        penalty: Option<(f64, f64)>,
        out: &mut [f64],
    ) -> f64 {
        let s = |t: f64| -> f64 {
            w.iter()
                .zip(d)
                .map(|(&w, &d)| d * (w - t * d).clamp(0.0, 1.0))
                .sum()
        };
        let t = match penalty {
            Some((knee, lam)) if knee < cap && lam > 0.0 => {
                let s0 = s(0.0);
                if s0 <= knee {
                    0.0
                } else {
                    let sl = s(lam);
                    if sl <= knee {
                        self.solve(w, d, 0.0, s0, knee)
                    } else if sl <= cap {
                        lam
                    } else {
                        self.solve(w, d, lam, sl, cap)
                    }
                }
            }
            _ => {
                let s0 = s(0.0);
                if s0 <= cap {
                    0.0
                } else {
                    self.solve(w, d, 0.0, s0, cap)
                }
            }
        };
        for ((o, &w), &d) in out.iter_mut().zip(w).zip(d) {
            *o = (w - t * d).clamp(0.0, 1.0);
        }
        t
    }

    /// The `t ≥ lo` where `s(t) = target`, given `s(lo) = s_lo > target ≥ 0`.
    fn solve(&mut self, w: &[f64], d: &[f64], lo: f64, s_lo: f64, target: f64) -> f64 {
        let s = |t: f64| -> f64 {
            w.iter()
                .zip(d)
                .map(|(&w, &d)| d * (w - t * d).clamp(0.0, 1.0))
                .sum()
        };
        self.bps.clear();
        for (&w, &d) in w.iter().zip(d) {
            for b in [(w - 1.0) / d, w / d] {
                if b > lo {
                    self.bps.push(b);
                }
            }
        }
        self.bps.sort_by(f64::total_cmp);
        self.bps.dedup();
        // Find the first breakpoint where s ≤ target (s is 0 ≤ target past the last one).
        let (mut a, mut b) = (0usize, self.bps.len());
        while a < b {
            let m = (a + b) / 2;
            if s(self.bps[m]) <= target {
                b = m;
            } else {
                a = m + 1;
            }
        }
        let (t0, s0) = if a == 0 {
            (lo, s_lo)
        } else {
            (self.bps[a - 1], s(self.bps[a - 1]))
        };
        let (t1, s1) = if a < self.bps.len() {
            (self.bps[a], s(self.bps[a]))
        } else {
            // Past every breakpoint all x are 0 (d > 0): s = 0.
            return t0.max(lo);
        };
        if s0 - s1 <= 0.0 {
            return t1;
        }
        // s is linear on [t0, t1].
        (t0 + (s0 - target) / (s0 - s1) * (t1 - t0)).clamp(t0, t1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(state: &mut u64) -> f64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    fn objective(x: &[f64], w: &[f64], d: &[f64], pen: Option<(f64, f64)>) -> f64 {
        let q: f64 = x.iter().zip(w).map(|(x, w)| 0.5 * (x - w) * (x - w)).sum();
        let s: f64 = x.iter().zip(d).map(|(x, d)| x * d).sum();
        q + pen.map_or(0.0, |(k, l)| l * (s - k).max(0.0))
    }

    /// The projection beats every feasible perturbation of itself (convexity: local
    /// optimality along many random feasible directions is a strong check).
    #[test]
    fn projection_is_optimal_against_perturbations() {
        let mut st = 7u64;
        let mut p = Projector::default();
        for case in 0..300 {
            let n = 1 + (lcg(&mut st) * 12.0) as usize;
            let w: Vec<f64> = (0..n).map(|_| lcg(&mut st) * 3.0 - 1.0).collect();
            let d: Vec<f64> = (0..n).map(|_| 0.05 + lcg(&mut st)).collect();
            let total: f64 = d.iter().sum();
            let cap = lcg(&mut st) * total;
            let pen = if case % 2 == 0 {
                Some((cap * lcg(&mut st), lcg(&mut st) * 2.0))
            } else {
                None
            };
            let mut x = vec![0.0; n];
            p.project(&w, &d, cap, pen, &mut x);
            let s: f64 = x.iter().zip(&d).map(|(x, d)| x * d).sum();
            assert!(s <= cap + 1e-9, "capacity broken: {s} > {cap}");
            assert!(x.iter().all(|&v| (0.0..=1.0).contains(&v)));
            let f = objective(&x, &w, &d, pen);
            for _ in 0..200 {
                let mut y: Vec<f64> = x
                    .iter()
                    .map(|&v| (v + (lcg(&mut st) - 0.5) * 0.2).clamp(0.0, 1.0))
                    .collect();
                let sy: f64 = y.iter().zip(&d).map(|(x, d)| x * d).sum();
                if sy > cap {
                    let k = cap / sy;
                    y.iter_mut().for_each(|v| *v *= k);
                }
                assert!(
                    objective(&y, &w, &d, pen) >= f - 1e-9,
                    "case {case}: perturbation improved"
                );
            }
        }
    }

    #[test]
    fn loose_capacity_is_a_clamp() {
        let mut p = Projector::default();
        let w = [1.5, 0.3, -2.0];
        let mut x = [0.0; 3];
        let t = p.project(&w, &[1.0, 1.0, 1.0], 10.0, None, &mut x);
        assert_eq!(t, 0.0);
        assert_eq!(x, [1.0, 0.3, 0.0]);
    }

    #[test]
    fn tight_capacity_is_met_exactly() {
        let mut p = Projector::default();
        let w = [1.0, 1.0, 1.0, 1.0];
        let d = [1.0, 2.0, 0.5, 1.0];
        let mut x = [0.0; 4];
        p.project(&w, &d, 1.5, None, &mut x);
        let s: f64 = x.iter().zip(&d).map(|(x, d)| x * d).sum();
        assert!((s - 1.5).abs() < 1e-12, "{s}");
    }
}
