//! A small max-flow (Dinic) on real capacities: the exact feasibility test of the LP
//! relaxation under locality (jobs → allowed nodes → capacity).

use std::collections::VecDeque;

const EPS: f64 = 1e-12;

struct Edge {
    to: usize,
    cap: f64,
}

pub(crate) struct FlowNetwork {
    edges: Vec<Edge>,
    adj: Vec<Vec<usize>>,
}

impl FlowNetwork {
    pub(crate) fn new(n: usize) -> Self {
        FlowNetwork {
            edges: Vec::new(),
            adj: vec![Vec::new(); n],
        }
    }

    pub(crate) fn add_edge(&mut self, from: usize, to: usize, cap: f64) {
        self.adj[from].push(self.edges.len());
        self.edges.push(Edge { to, cap });
        self.adj[to].push(self.edges.len());
        self.edges.push(Edge { to: from, cap: 0.0 });
    }

    pub(crate) fn max_flow(&mut self, s: usize, t: usize) -> f64 {
        let n = self.adj.len();
        let mut total = 0.0;
        loop {
            let mut level = vec![usize::MAX; n];
            level[s] = 0;
            let mut q = VecDeque::from([s]);
            while let Some(v) = q.pop_front() {
                for &e in &self.adj[v] {
                    let to = self.edges[e].to;
                    if self.edges[e].cap > EPS && level[to] == usize::MAX {
                        level[to] = level[v] + 1;
                        q.push_back(to);
                    }
                }
            }
            if level[t] == usize::MAX {
                return total;
            }
            let mut it = vec![0usize; n];
            loop {
                let f = self.push(s, t, f64::INFINITY, &level, &mut it);
                if f <= EPS {
                    break;
                }
                total += f;
            }
        }
    }

    // Iterative DFS would avoid recursion; the graph is three layers deep, so recursion
    // depth is at most 3.
    fn push(&mut self, v: usize, t: usize, f: f64, level: &[usize], it: &mut [usize]) -> f64 {
        if v == t {
            return f;
        }
        while it[v] < self.adj[v].len() {
            let e = self.adj[v][it[v]];
            let to = self.edges[e].to;
            if self.edges[e].cap > EPS && level[to] == level[v] + 1 {
                let d = self.push(to, t, f.min(self.edges[e].cap), level, it);
                if d > EPS {
                    self.edges[e].cap -= d;
                    self.edges[e ^ 1].cap += d;
                    return d;
                }
            }
            it[v] += 1;
        }
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bottleneck() {
        // s → a (3), s → b (2), a → t (1), b → t (5), a → b (inf): max flow 5.
        let mut g = FlowNetwork::new(4);
        g.add_edge(0, 1, 3.0);
        g.add_edge(0, 2, 2.0);
        g.add_edge(1, 3, 1.0);
        g.add_edge(2, 3, 5.0);
        g.add_edge(1, 2, f64::INFINITY);
        assert!((g.max_flow(0, 3) - 5.0).abs() < 1e-9);
    }
}
