//! From the fractional ADMM solution to one integer placement, the same on every node:
//! rounding, capacity/locality repair, a local-search polish and the hysteresis pass.
//! Everything here is a deterministic function of data every node holds (the assembled
//! [`Problem`] and the final columns): fixed iteration orders, ties broken by index.

use crate::error::PlacementError;
use crate::model::Problem;

/// Relative improvement below which a move is not worth making (numerical noise).
const MOVE_TOL: f64 = 1e-9;

struct State<'a> {
    p: &'a Problem,
    assign: Vec<Option<usize>>,
    load: Vec<f64>,
    tol: f64,
}

impl<'a> State<'a> {
    fn fits(&self, n: usize, j: usize) -> bool {
        self.p.allowed(n, j)
            && self.load[n] + self.p.jobs[j].demand <= self.p.capacity[n] * (1.0 + 1e-12)
    }
    /// Objective change of adding job `j` to node `n` (effective costs).
    fn add_delta(&self, n: usize, j: usize) -> f64 {
        let d = self.p.jobs[j].demand;
        self.p.c(n, j) + self.p.load_term(n, self.load[n] + d) - self.p.load_term(n, self.load[n])
    }
    fn remove_delta(&self, n: usize, j: usize) -> f64 {
        let d = self.p.jobs[j].demand;
        -self.p.c(n, j) + self.p.load_term(n, self.load[n] - d) - self.p.load_term(n, self.load[n])
    }
    fn put(&mut self, j: usize, n: usize) {
        self.assign[j] = Some(n);
        self.load[n] += self.p.jobs[j].demand;
    }
    fn take(&mut self, j: usize) {
        if let Some(n) = self.assign[j].take() {
            self.load[n] -= self.p.jobs[j].demand;
        }
    }
    /// Cheapest node with room for `j`, by objective change, ties to the lower index.
    fn best_fit(&self, j: usize, except: Option<usize>) -> Option<(usize, f64)> {
        let mut best: Option<(usize, f64)> = None;
        for n in 0..self.p.n_nodes() {
            if Some(n) == except || !self.fits(n, j) {
                continue;
            }
            let d = self.add_delta(n, j);
            if best.is_none_or(|(_, b)| d < b) {
                best = Some((n, d));
            }
        }
        best
    }
}

/// The rounding is split into this many tasks, each an independent part of the search
/// that one member can run alone (see [`round_task`]); the placement is the cheapest
/// task result, ties to the lower task.
pub const TASKS: usize = 3;

/// Rounds `y` (rows) with the capacity prices `mu` into an integer placement
/// (`assign[j]` = node index): every task of [`round_task`], the cheapest result kept
/// (ties to the lower task).
pub fn round_and_repair(
    p: &Problem,
    y: &[Vec<f64>],
    mu: &[f64],
    polish_passes: u32,
    price_steps: u32,
) -> Result<Vec<usize>, PlacementError> {
    let mut best: Option<(f64, Vec<usize>)> = None;
    let mut err = None;
    for task in 0..TASKS {
        match round_task(p, y, mu, task, polish_passes, price_steps) {
            Ok(a) => {
                let o = p.objective(&a).unwrap_or(f64::INFINITY);
                if best.as_ref().is_none_or(|b| o < b.0) {
                    best = Some((o, a));
                }
            }
            Err(e) => err = Some(e),
        }
    }
    match best {
        Some((_, a)) => Ok(a),
        None => Err(err.unwrap_or(PlacementError::NoIntegerPlacement { job: 0 })),
    }
}

/// One task of the rounding; each tries one or two guides, polishes, and returns its
/// cheapest placement:
/// - 0: the current placement (where nothing changed, moves must pay for themselves
///   against it);
/// - 1: the rows themselves;
/// - 2: each job's cheapest node by reduced cost with the ADMM prices, and the same
///   with the prices sharpened by subgradient steps (Polyak steps towards the first's
///   objective).
///
/// Tasks past [`TASKS`] return an error.
pub fn round_task(
    p: &Problem,
    y: &[Vec<f64>],
    mu: &[f64],
    task: usize,
    polish_passes: u32,
    price_steps: u32,
) -> Result<Vec<usize>, PlacementError> {
    match task {
        0 => round_guided(p, Guide::Current, polish_passes),
        1 => round_guided(p, Guide::Rows(y), polish_passes),
        2 => {
            let first = round_guided(p, Guide::Prices(mu), polish_passes);
            // The Polyak target: the better of this guide's and the current placement's
            // objectives (the current one costs nothing to evaluate, when feasible).
            let current = p
                .jobs
                .iter()
                .map(|j| j.current.and_then(|c| p.node_index(c)))
                .collect::<Option<Vec<usize>>>()
                .and_then(|a| p.objective(&a));
            let upper = first
                .as_ref()
                .ok()
                .and_then(|a| p.objective(a))
                .into_iter()
                .chain(current)
                .filter(|u| u.is_finite())
                .reduce(f64::min);
            let Some(upper) = upper.filter(|_| price_steps > 0) else {
                return first;
            };
            let sharp = refine_prices(p, mu, upper, price_steps);
            match (first, round_guided(p, Guide::Prices(&sharp), polish_passes)) {
                (Ok(a), Ok(b)) => {
                    let (oa, ob) = (p.objective(&a), p.objective(&b));
                    Ok(
                        if ob.unwrap_or(f64::INFINITY) < oa.unwrap_or(f64::INFINITY) {
                            b
                        } else {
                            a
                        },
                    )
                }
                (Ok(a), Err(_)) => Ok(a),
                (Err(_), Ok(b)) => Ok(b),
                (Err(e), Err(_)) => Err(e),
            }
        }
        _ => Err(PlacementError::NoIntegerPlacement { job: 0 }),
    }
}

/// Sharpen the node prices by subgradient ascent on the Lagrangian dual (capacity and
/// load relaxed), started at the ADMM prices, with Polyak steps towards `upper` (the
/// objective of a known placement). Returns the prices with the best dual value.
pub fn refine_prices(p: &Problem, mu0: &[f64], upper: f64, steps: u32) -> Vec<f64> {
    let (nj, nn) = (p.n_jobs(), p.n_nodes());
    let mut mu: Vec<f64> = (0..nn)
        .map(|n| mu0.get(n).copied().unwrap_or(0.0).max(0.0))
        .collect();
    let mut best = (f64::NEG_INFINITY, mu.clone());
    let mut theta = 1.0;
    let mut stall = 0;
    let mut load = vec![0.0; nn];
    let mut g = vec![0.0; nn];
    for _ in 0..steps {
        load.iter_mut().for_each(|l| *l = 0.0);
        let mut dual = 0.0;
        for j in 0..nj {
            let d = p.jobs[j].demand;
            let mut b = (usize::MAX, f64::INFINITY);
            for (n, &m) in mu.iter().enumerate() {
                let rc = p.c(n, j) + m * d;
                if rc < b.1 {
                    b = (n, rc);
                }
            }
            if b.0 < nn {
                load[b.0] += d;
                dual += b.1;
            }
        }
        // Node part: min over 0 ≤ s ≤ C of slope·max(0, s − knee) − μ s, and its
        // minimiser (the load the price asks for).
        let mut g2 = 0.0;
        for n in 0..nn {
            let (cap, knee, lam) = (p.capacity[n], p.knee[n].min(p.capacity[n]), p.slope[n]);
            let m = mu[n];
            let s = if m <= 0.0 {
                load[n].min(knee)
            } else if m < lam {
                knee
            } else if m == lam {
                load[n].clamp(knee, cap)
            } else {
                cap
            };
            dual += lam * (s - knee).max(0.0) - m * s;
            g[n] = load[n] - s;
            g2 += g[n] * g[n];
        }
        if dual > best.0 + 1e-12 * dual.abs() {
            best = (dual, mu.clone());
            stall = 0;
        } else {
            stall += 1;
            if stall >= 5 {
                theta *= 0.5;
                stall = 0;
            }
        }
        if g2 <= 0.0 || upper <= dual {
            break;
        }
        let step = theta * (upper - dual) / g2;
        for (m, gn) in mu.iter_mut().zip(&g) {
            *m = (*m + step * gn).max(0.0);
        }
    }
    best.1
}

enum Guide<'a> {
    Current,
    Rows(&'a [Vec<f64>]),
    Prices(&'a [f64]),
}

fn round_guided(
    p: &Problem,
    guide: Guide<'_>,
    polish_passes: u32,
) -> Result<Vec<usize>, PlacementError> {
    let (nj, nn) = (p.n_jobs(), p.n_nodes());
    let mut st = State {
        p,
        assign: vec![None; nj],
        load: vec![0.0; nn],
        tol: MOVE_TOL * p.cost_scale(),
    };

    // 1. Every job's preferred node and how sure the guide is about it; the surest first.
    let mut pref: Vec<(usize, f64)> = Vec::with_capacity(nj);
    for j in 0..nj {
        let mut first = (usize::MAX, f64::INFINITY);
        let mut second = f64::INFINITY;
        for n in (0..nn).filter(|&n| p.allowed(n, j)) {
            // Lower is better for both guides.
            let score = match guide {
                Guide::Current => {
                    if p.jobs[j].current == Some(p.nodes[n]) {
                        0.0
                    } else {
                        1.0
                    }
                }
                Guide::Rows(y) => -y[n][j],
                Guide::Prices(mu) => {
                    p.c(n, j) + mu.get(n).copied().unwrap_or(0.0) * p.jobs[j].demand
                }
            };
            if score < first.1 {
                second = first.1;
                first = (n, score);
            } else if score < second {
                second = score;
            }
        }
        let sure = match guide {
            Guide::Current => second - first.1,
            Guide::Rows(_) => -first.1,
            Guide::Prices(_) => second - first.1,
        };
        pref.push((first.0, sure));
    }
    let mut order: Vec<usize> = match guide {
        Guide::Rows(_) => (0..nj).filter(|&j| pref[j].1 > 0.5).collect(),
        Guide::Current => (0..nj).filter(|&j| pref[j].1 > 0.5).collect(),
        Guide::Prices(_) => (0..nj).collect(),
    };
    order.sort_by(|&a, &b| pref[b].1.total_cmp(&pref[a].1).then(a.cmp(&b)));
    for &j in &order {
        if pref[j].0 < nn && st.fits(pref[j].0, j) {
            st.put(j, pref[j].0);
        }
    }

    // 2. The rest, largest first (bin-packing friendly), to their cheapest node with room;
    //    where none has room, make room by moving one job off a node.
    let mut rest: Vec<usize> = (0..nj).filter(|&j| st.assign[j].is_none()).collect();
    rest.sort_by(|&a, &b| {
        p.jobs[b]
            .demand
            .total_cmp(&p.jobs[a].demand)
            .then(a.cmp(&b))
    });
    for j in rest {
        if let Some((n, _)) = st.best_fit(j, None) {
            st.put(j, n);
        } else if !evict_for(&mut st, j) {
            return Err(PlacementError::NoIntegerPlacement { job: p.jobs[j].id });
        }
    }

    // 3. Polish: moves, swaps and two-job ejection chains that lower the objective.
    for _ in 0..polish_passes {
        if !polish_pass(&mut st) {
            break;
        }
    }

    // 4. Hysteresis: undo any move whose own gain (raw costs, load term included) stays
    //    below the job's margin, where the current node still has room.
    for j in 0..nj {
        let Some(cur) = p.jobs[j].current.and_then(|c| p.node_index(c)) else {
            continue;
        };
        let Some(a) = st.assign[j] else { continue };
        if a == cur || !st.fits(cur, j) {
            continue;
        }
        let d = p.jobs[j].demand;
        let moved_out = p.raw(a, j) + p.load_term(a, st.load[a]) - p.load_term(a, st.load[a] - d);
        let back_in =
            p.raw(cur, j) + p.load_term(cur, st.load[cur] + d) - p.load_term(cur, st.load[cur]);
        if back_in - moved_out < p.margin[j] {
            st.take(j);
            st.put(j, cur);
        }
    }

    st.assign
        .iter()
        .enumerate()
        .map(|(j, a)| a.ok_or(PlacementError::NoIntegerPlacement { job: p.jobs[j].id }))
        .collect()
}

/// Place `j` by moving one job `i` off some node `n` to another node with room.
fn evict_for(st: &mut State<'_>, j: usize) -> bool {
    let p = st.p;
    let mut best: Option<(f64, usize, usize, usize)> = None; // (delta, n, i, m)
    for n in 0..p.n_nodes() {
        if !p.allowed(n, j) {
            continue;
        }
        for i in 0..p.n_jobs() {
            if st.assign[i] != Some(n) {
                continue;
            }
            let freed = st.load[n] - p.jobs[i].demand;
            if freed + p.jobs[j].demand > p.capacity[n] * (1.0 + 1e-12) {
                continue;
            }
            let remove_i = st.remove_delta(n, i);
            st.take(i);
            let add_j = st.add_delta(n, j);
            st.put(j, n);
            if let Some((m, add_i)) = st.best_fit(i, Some(n)) {
                let delta = remove_i + add_j + add_i;
                if best.is_none_or(|b| delta < b.0) {
                    best = Some((delta, n, i, m));
                }
            }
            st.take(j);
            st.put(i, n);
        }
    }
    match best {
        Some((_, n, i, m)) => {
            st.take(i);
            st.put(j, n);
            st.put(i, m);
            true
        }
        None => false,
    }
}

fn polish_pass(st: &mut State<'_>) -> bool {
    let p = st.p;
    let mut improved = false;
    for j in 0..p.n_jobs() {
        let Some(n) = st.assign[j] else { continue };
        let out = st.remove_delta(n, j);
        st.take(j);
        match st.best_fit(j, None) {
            Some((m, add)) if m != n && out + add < -st.tol => {
                st.put(j, m);
                improved = true;
            }
            _ => st.put(j, n),
        }
    }
    // Swaps: j on a, i on b exchange nodes (helps when capacity is tight).
    for j in 0..p.n_jobs() {
        let Some(a) = st.assign[j] else { continue };
        let mut best: Option<(f64, usize)> = None;
        for i in (j + 1)..p.n_jobs() {
            let Some(b) = st.assign[i] else { continue };
            if a == b || !p.allowed(b, j) || !p.allowed(a, i) {
                continue;
            }
            let (dj, di) = (p.jobs[j].demand, p.jobs[i].demand);
            let la = st.load[a] - dj + di;
            let lb = st.load[b] - di + dj;
            if la > p.capacity[a] * (1.0 + 1e-12) || lb > p.capacity[b] * (1.0 + 1e-12) {
                continue;
            }
            let delta = p.c(a, i) + p.c(b, j) - p.c(a, j) - p.c(b, i)
                + p.load_term(a, la)
                + p.load_term(b, lb)
                - p.load_term(a, st.load[a])
                - p.load_term(b, st.load[b]);
            if delta < -st.tol && best.is_none_or(|(d, _)| delta < d) {
                best = Some((delta, i));
            }
        }
        if let Some((_, i)) = best {
            let b = st.assign[i].unwrap_or(a);
            st.take(j);
            st.take(i);
            st.put(j, b);
            st.put(i, a);
            improved = true;
        }
    }
    // Ejection chains of length two: j moves a → b, making room by moving i off b to
    // its best node with room (j's old node included).
    let mut on: Vec<Vec<usize>> = vec![Vec::new(); p.n_nodes()];
    for j in 0..p.n_jobs() {
        if let Some(n) = st.assign[j] {
            on[n].push(j);
        }
    }
    for j in 0..p.n_jobs() {
        let Some(a) = st.assign[j] else { continue };
        let out_j = st.remove_delta(a, j);
        st.take(j);
        let mut best: Option<(f64, usize, usize, usize)> = None; // (delta, b, i, m)
        for (b, on_b) in on.iter().enumerate() {
            if b == a || !p.allowed(b, j) || st.fits(b, j) {
                continue; // plain moves were tried above
            }
            for &i in on_b {
                if st.assign[i] != Some(b)
                    || st.load[b] - p.jobs[i].demand + p.jobs[j].demand
                        > p.capacity[b] * (1.0 + 1e-12)
                {
                    continue;
                }
                let out_i = st.remove_delta(b, i);
                st.take(i);
                let in_j = st.add_delta(b, j);
                st.put(j, b);
                if let Some((m, in_i)) = st.best_fit(i, Some(b)) {
                    let delta = out_j + out_i + in_j + in_i;
                    if delta < -st.tol && best.is_none_or(|x| delta < x.0) {
                        best = Some((delta, b, i, m));
                    }
                }
                st.take(j);
                st.put(i, b);
            }
        }
        match best {
            Some((_, b, i, m)) => {
                st.take(i);
                st.put(j, b);
                st.put(i, m);
                on[b].retain(|&x| x != i);
                on[b].push(j);
                on[a].retain(|&x| x != j);
                on[m].push(i);
                improved = true;
            }
            None => st.put(j, a),
        }
    }
    improved
}

/// FNV-1a digest of a placement (job id → node id) for a round: what nodes compare in
/// their final message.
pub fn digest(round: u64, p: &Problem, assign: &[usize]) -> u64 {
    let mut h = Fnv::new();
    h.u64(round);
    for (j, &n) in assign.iter().enumerate() {
        h.u64(p.jobs[j].id);
        h.u64(p.nodes.get(n).copied().unwrap_or(u32::MAX) as u64);
    }
    h.finish()
}

/// FNV-1a, 64 bit: a consistency check between honest nodes, not a MAC.
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    pub(crate) fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}
