//! recurse — deep recursion and indirect calls, the hard case for stack capture.
//!
//! 1. Expression trees of `Box<dyn Node>` trait objects, a few thousand levels deep, built
//!    from a seeded PRNG and evaluated recursively (one virtual call per node) under many
//!    variable bindings; also a recursive `fold` that measures depth and size.
//! 2. N-queens by backtracking where every step is dispatched through a table of `fn`
//!    pointers (four column orders, chosen by row and column).
//! 3. Ackermann A(m, n) with the per-m step dispatched through a table of `fn` pointers;
//!    A(3, 7) recurses about 1,000 levels (2,000 frames) deep.
//!
//! The deepest native stack stays well under 5,000 guest frames. Every part prints its
//! results and the maximum recursion depth it reached.
//!
//! Usage: recurse [ROUNDS | --size ROUNDS]

use common::{Args, Fnv, Rng};
use std::io::Write;

const P: i64 = 1_000_000_007;

// ---- 1. trait-object expression trees -------------------------------------------------

struct Env {
    vars: [i64; 8],
}

trait Node {
    fn eval(&self, env: &Env) -> i64;
    /// (depth, node count)
    fn shape(&self) -> (usize, usize);
}

struct Const(i64);
struct Var(usize);
struct Neg(Box<dyn Node>);
struct Add(Box<dyn Node>, Box<dyn Node>);
struct Sub(Box<dyn Node>, Box<dyn Node>);
struct Mul(Box<dyn Node>, Box<dyn Node>);
/// `if c > P/2 { a } else { b }` — both branches are built, one is taken.
struct Select(Box<dyn Node>, Box<dyn Node>, Box<dyn Node>);

impl Node for Const {
    fn eval(&self, _: &Env) -> i64 {
        self.0
    }
    fn shape(&self) -> (usize, usize) {
        (1, 1)
    }
}
impl Node for Var {
    fn eval(&self, env: &Env) -> i64 {
        env.vars[self.0]
    }
    fn shape(&self) -> (usize, usize) {
        (1, 1)
    }
}
impl Node for Neg {
    fn eval(&self, env: &Env) -> i64 {
        (P - self.0.eval(env)) % P
    }
    fn shape(&self) -> (usize, usize) {
        let (d, n) = self.0.shape();
        (d + 1, n + 1)
    }
}
fn shape2(a: &dyn Node, b: &dyn Node) -> (usize, usize) {
    let (da, na) = a.shape();
    let (db, nb) = b.shape();
    (da.max(db) + 1, na + nb + 1)
}
impl Node for Add {
    fn eval(&self, env: &Env) -> i64 {
        (self.0.eval(env) + self.1.eval(env)) % P
    }
    fn shape(&self) -> (usize, usize) {
        shape2(&*self.0, &*self.1)
    }
}
impl Node for Sub {
    fn eval(&self, env: &Env) -> i64 {
        (self.0.eval(env) - self.1.eval(env) + P) % P
    }
    fn shape(&self) -> (usize, usize) {
        shape2(&*self.0, &*self.1)
    }
}
impl Node for Mul {
    fn eval(&self, env: &Env) -> i64 {
        self.0.eval(env) * self.1.eval(env) % P
    }
    fn shape(&self) -> (usize, usize) {
        shape2(&*self.0, &*self.1)
    }
}
impl Node for Select {
    fn eval(&self, env: &Env) -> i64 {
        if self.0.eval(env) > P / 2 {
            self.1.eval(env)
        } else {
            self.2.eval(env)
        }
    }
    fn shape(&self) -> (usize, usize) {
        let (d0, n0) = self.0.shape();
        let (d1, n1) = self.1.shape();
        let (d2, n2) = self.2.shape();
        (d0.max(d1).max(d2) + 1, n0 + n1 + n2 + 1)
    }
}

/// A small random subtree of at most `depth` levels.
fn leafy(rng: &mut Rng, depth: u32) -> Box<dyn Node> {
    if depth == 0 || rng.chance(0.3) {
        return if rng.chance(0.5) {
            Box::new(Const(rng.below(P as u64) as i64))
        } else {
            Box::new(Var(rng.below(8) as usize))
        };
    }
    let a = leafy(rng, depth - 1);
    let b = leafy(rng, depth - 1);
    match rng.below(4) {
        0 => Box::new(Add(a, b)),
        1 => Box::new(Sub(a, b)),
        2 => Box::new(Mul(a, b)),
        _ => Box::new(Neg(a)),
    }
}

/// A tree with a spine `spine` levels deep; each spine node also hangs a small subtree.
/// Built iteratively from the bottom so construction itself does not recurse.
fn build(rng: &mut Rng, spine: usize) -> Box<dyn Node> {
    let mut node = leafy(rng, 3);
    for _ in 0..spine {
        let side = leafy(rng, 4);
        node = match rng.below(5) {
            0 => Box::new(Add(node, side)),
            1 => Box::new(Sub(side, node)),
            2 => Box::new(Mul(node, side)),
            3 => Box::new(Neg(node)),
            _ => {
                // The spine stays on the evaluated path; the choice is among side trees.
                let other = leafy(rng, 2);
                let pick: Box<dyn Node> = Box::new(Select(leafy(rng, 2), side, other));
                Box::new(Add(pick, node))
            }
        };
    }
    node
}

// ---- 2. N-queens through a table of fn pointers --------------------------------------

struct Board {
    n: usize,
    cols: u32,
    diag1: u32,
    diag2: u32,
    depth: usize,
    max_depth: usize,
    nodes: u64,
}

type Step = fn(&mut Board, usize) -> u64;
const STEPS: [Step; 4] = [step_ltr, step_rtl, step_even_odd, step_middle_out];

fn try_col(b: &mut Board, row: usize, col: usize) -> u64 {
    let d1 = 1 << (row + col);
    let d2 = 1 << (row + b.n - 1 - col);
    if b.cols & (1 << col) != 0 || b.diag1 & d1 != 0 || b.diag2 & d2 != 0 {
        return 0;
    }
    b.cols |= 1 << col;
    b.diag1 |= d1;
    b.diag2 |= d2;
    b.depth += 1;
    b.max_depth = b.max_depth.max(b.depth);
    let found = place(b, row + 1, col);
    b.depth -= 1;
    b.cols &= !(1 << col);
    b.diag1 &= !d1;
    b.diag2 &= !d2;
    found
}

/// Dispatch the next row through the table, by index.
fn place(b: &mut Board, row: usize, prev_col: usize) -> u64 {
    b.nodes += 1;
    if row == b.n {
        return 1;
    }
    STEPS[(row + prev_col) % STEPS.len()](b, row)
}

fn step_ltr(b: &mut Board, row: usize) -> u64 {
    (0..b.n).map(|c| try_col(b, row, c)).sum()
}
fn step_rtl(b: &mut Board, row: usize) -> u64 {
    (0..b.n).rev().map(|c| try_col(b, row, c)).sum()
}
fn step_even_odd(b: &mut Board, row: usize) -> u64 {
    let n = b.n;
    (0..n)
        .step_by(2)
        .chain((1..n).step_by(2))
        .map(|c| try_col(b, row, c))
        .sum()
}
fn step_middle_out(b: &mut Board, row: usize) -> u64 {
    let n = b.n;
    let mid = n / 2;
    let mut total = 0;
    for k in 0..n {
        let c = if k % 2 == 0 {
            mid + k / 2
        } else {
            mid - 1 - k / 2
        };
        if c < n {
            total += try_col(b, row, c);
        }
    }
    total
}

// ---- 3. Ackermann through a table of fn pointers -------------------------------------

struct Ack {
    calls: u64,
    depth: usize,
    max_depth: usize,
}

type AckStep = fn(&mut Ack, u64, u64) -> u64;
const ACK: [AckStep; 4] = [ack0, ack_general, ack_general, ack_general];

fn ack(a: &mut Ack, m: u64, n: u64) -> u64 {
    a.calls += 1;
    a.depth += 1;
    a.max_depth = a.max_depth.max(a.depth);
    let r = ACK[m as usize](a, m, n);
    a.depth -= 1;
    r
}
fn ack0(_: &mut Ack, _m: u64, n: u64) -> u64 {
    n + 1
}
fn ack_general(a: &mut Ack, m: u64, n: u64) -> u64 {
    if n == 0 {
        ack(a, m - 1, 1)
    } else {
        let inner = ack(a, m, n - 1);
        ack(a, m - 1, inner)
    }
}

fn main() {
    let args = Args::from_env();
    let rounds = args.size(8).max(1);
    let mut out = common::stdout();
    let mut sum = Fnv::new();
    writeln!(out, "recurse: rounds={rounds}").unwrap();

    let mut rng = Rng::new(0x5EC0_12CE);
    for round in 0..rounds {
        // 1. Trees with spines from 1,500 to 3,000 levels.
        let spine = 1500 + (round as usize * 300) % 1600;
        let tree = build(&mut rng, spine);
        let (depth, nodes) = tree.shape();
        let mut acc = 0i64;
        let evals = 500;
        for e in 0..evals {
            let mut env = Env { vars: [0; 8] };
            for (i, v) in env.vars.iter_mut().enumerate() {
                *v = ((e * 8 + i as u64 + 1) * 2_654_435_761 % P as u64) as i64;
            }
            let r = tree.eval(&env);
            acc = (acc * 31 + r) % P;
            sum.u64(r as u64);
        }
        writeln!(
            out,
            "round {round} tree: spine={spine} depth={depth} nodes={nodes} evals={evals} result={acc}"
        )
        .unwrap();
        drop(tree);

        // 2. N-queens, n cycling 8..=12.
        let n = 8 + (round as usize % 5);
        let mut b = Board {
            n,
            cols: 0,
            diag1: 0,
            diag2: 0,
            depth: 0,
            max_depth: 0,
            nodes: 0,
        };
        let solutions: u64 = (0..n).map(|c| try_col(&mut b, 0, c)).sum();
        writeln!(
            out,
            "round {round} queens: n={n} solutions={solutions} nodes={} max_depth={}",
            b.nodes, b.max_depth
        )
        .unwrap();
        sum.u64(solutions);
        sum.u64(b.nodes);

        // 3. Ackermann A(2, k) and A(3, k), k growing with the round, capped at A(3, 7).
        let mut a = Ack {
            calls: 0,
            depth: 0,
            max_depth: 0,
        };
        let k = 5 + (round % 3);
        let r2 = ack(&mut a, 2, 100 + 50 * k);
        let r3 = ack(&mut a, 3, k);
        writeln!(
            out,
            "round {round} ackermann: A(2,{})={r2} A(3,{k})={r3} calls={} max_depth={}",
            100 + 50 * k,
            a.calls,
            a.max_depth
        )
        .unwrap();
        sum.u64(r2);
        sum.u64(r3);
        sum.u64(a.calls);
    }
    writeln!(out, "checksum {:016x}", sum.value()).unwrap();
    out.flush().unwrap();
}
