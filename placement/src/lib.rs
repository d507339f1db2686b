//! Decentralised job placement by ADMM: the pure core.
//!
//! No network, no clock, no async: a [`Node`] is fed messages, membership changes and
//! timer ticks, and polled for the messages it wants gossiped and for its outcome. The
//! [`sim`] module runs a whole swarm in one thread over a seeded lossy bus, for tests and
//! the benchmark. Wiring to the real gossip is the shell's job.
//!
//! # The problem
//!
//! `x[j][n] ∈ [0, 1]`: job `j` on node `n`, with `Σ_n x[j][n] = 1` for every job. Node `n`
//! owns its column `x_n = x[·][n]` and its constraints
//!
//! ```text
//!   X_n = { 0 ≤ x_n ≤ 1,  x_n[j] = 0 where locality forbids j on n,  d·x_n ≤ C_n }
//! ```
//!
//! (`d_j` the job's demand on the sporadic server, `C_n` the node's share, both CPU time
//! per period) and its cost
//!
//! ```text
//!   f_n(x_n) = c_n·x_n + λ_n·max(0, d·x_n − κ_n)
//!   c[j][n]  = migration (state bytes ÷ bandwidth + RTT; 0 where j runs now)
//!            + remaining work ÷ speed_n  (+ hysteresis margin off j's current node)
//! ```
//!
//! The load term is convex and piecewise linear (headroom above a knee `κ_n`), so the
//! LP relaxation used as ground truth is exact for it. The hysteresis margin makes "move
//! only when the gain beats the move's cost plus a margin" plain optimality.
//!
//! # ADMM: node columns against job rows
//!
//! Split the constraints in two blocks with one copy each: `X` (node columns, in `X_n`)
//! and `Y` (job rows, each in the simplex `Δ_j = {y ≥ 0, Σ_n y[j][n] = 1, 0 off the
//! allowed nodes}`), coupled by `X = Y`; costs divided by their mean `S` so ρ is
//! unit-free; one scaled dual `U[j][n]` per allowed pair:
//!
//! ```text
//!   minimise Σ_n f_n(X_n)/S + ι_{X_n}(X_n) + Σ_j ι_{Δ_j}(Y_j)   s.t.  X = Y
//!
//!   X_n^{k+1} = argmin_{x ∈ X_n} f_n(x)/S + (ρ/2)‖x − Y_n^k + U_n^k‖²   node n, local
//!   Y_j^{k+1} = Π_{Δ_j}(X_j^{k+1} + U_j^k)                         every job row
//!   U^{k+1}   = U^k + X^{k+1} − Y^{k+1}
//! ```
//!
//! The local step is the projection of `w = Y_n − U_n − c_n/(Sρ)` onto the capacitated
//! box with the load term, solved exactly in O(J log J) by sorting the breakpoints of the
//! capacity multiplier ([`local`]); the row step is a sort-based simplex projection,
//! O(N log N) per job. A node gossips only its own column `X_n` (sparse, 16-bit fixed
//! point) and the multiplier of its local step, its capacity price `μ_n` (cost per unit
//! of demand). `Y` and `U` are computed by every node from the columns it holds; the
//! iterations are bulk-synchronous, so every node holds the same columns, hence the same
//! `Y`, `U`, ρ and stopping decision.
//!
//! (The exchange form, `x_n ← Π(x_n − r̄ − u − c_n/ρ)` with one dual per job moved by the
//! mean residual `(Σ_n x_n − 1)/N`, moves each price by 1/N of the imbalance per
//! iteration; on 32×256 it was still far from the optimum after 60 iterations. With one
//! dual per pair and the row projection doing the job-side choice, the split above gets
//! within a fraction of a percent in ~25.)
//!
//! Residuals and stopping (`nnz` = allowed pairs):
//!
//! ```text
//!   primal  r = ‖X − Y‖,   dual  s = ρ ‖Y^{k+1} − Y^k‖
//!   stop when  r ≤ √nnz ε_abs + ε_rel max(‖X‖, ‖Y‖)  and  s ≤ √nnz ε_abs + ε_rel ρ ‖U‖
//! ```
//!
//! ρ is adapted by residual balancing: when `r/ε_pri` and `s/ε_dual` differ by more than
//! a factor μ, ρ is scaled by `√((r/ε_pri)/(s/ε_dual))` clamped to `[1/τ, τ]`, and `U` by
//! the inverse factor.
//!
//! Warm start: `X^0` is the current placement (a new round) or the latest columns (a
//! view change mid-solve, when a node joins or leaves); `U^{-1}[j][n] = −(c[j][n] +
//! μ_n d_j)/(Sρ)`, the reduced cost of every pair with each node's last capacity price
//! (0 cold), so the first row projection already leans to the cheap nodes; ρ is the one
//! the last solve ended with.
//!
//! # Integer placement
//!
//! Every member's costs and capacity come once per view in its first message, so at the
//! stop every node holds the same problem, `Y` and prices `μ`. The rounding ([`integer`])
//! is split into [`integer::TASKS`] independent tasks, each run by one member (the
//! lowest ids; member `m` runs tasks `t ≡ m mod N`), which sends its cheapest result as a
//! candidate; every member validates the candidates (length, member indices, locality,
//! capacity) against its own problem, recomputes their objectives and keeps the cheapest
//! (ties to the lower task) — the same choice everywhere, at the cost of one more
//! exchange, instead of every member repeating the whole search (with all members on one
//! machine that repetition was most of the CPU). Four guides are tried across the tasks: the
//! current placement (where nothing changed, a move must pay for itself against it); the
//! rows themselves (`y > ½`); each job's cheapest node by reduced cost `c[j][n] + μ_n d_j`
//! with the ADMM prices (they settle long before the rows stop spreading mass over
//! near-equal nodes); and the same with the prices sharpened by a few hundred
//! subgradient steps on the Lagrangian dual (capacity and load relaxed, Polyak steps
//! towards the best placement so far, O(J·N) each). Each guide: preferred nodes, surest
//! first, where they fit; the rest largest first to the cheapest node with room (evicting
//! one job elsewhere if none has room); a local search of moves, swaps and two-job
//! ejection chains; then a hysteresis pass that undoes any move whose own gain is below
//! its margin. Ties go to the lower index. (The sharpened prices take their Polyak
//! target from the better of the ADMM-price guide and the current placement, both known
//! within the task.) Each node then sends a digest of the placement it chose in its
//! final message; the round is `Placed` only when every member's digest matches,
//! `Disagreement` otherwise (a candidate corrupted on its way to some members, or
//! members that diverged).
//!
//! # The exchange
//!
//! Below [`Config::relay_min_members`] members every message goes straight to every
//! member. From it on (8 by default), starts and columns take the log-depth relay of
//! [`relay`]: a member sends its own message to one member and forwards, at each of
//! `⌈log₂ N⌉` steps, what it holds of the next `2^k` members in one frame — every
//! member still gets every column once, in `N ⌈log₂ N⌉` frames instead of `N(N−1)` (160
//! instead of 992 at 32), for `⌈log₂ N⌉` hops per iteration. A relay could alter what it
//! forwards; that makes the members compute from different data, which the digests
//! expose (or the members stop at different iterations and the round never ends: no
//! outcome). The final digests go to the task holders only, and each holder sends every
//! member the list of all members' digests; a member places only if every holder's list
//! shows its own digest for every member, so one honest holder exposes any divergence to
//! everyone (≈ 3N frames each way instead of N(N−1)). Candidates and every re-send go
//! straight to all members.
//!
//! # Robustness
//!
//! Messages carry `(round, view, iteration, node)` and are idempotent; early ones are
//! buffered (bounded), late and duplicated ones ignored, lost ones re-sent on
//! [`Node::tick`] (a node that took no new message and completed no step since the last
//! tick re-sends its last four messages, straight to every member: a peer one step
//! behind can miss at most its last column, its candidate, its final digest and a
//! holder's verdict). A lost relay frame withholds several members' columns from its
//! receiver and those it forwards to; their probes make the authors re-send straight to
//! all. The view digest covers the round, membership epoch and set, the jobs
//! and the solver settings, so nodes that disagree on any of these never mix iterates.
//! Infeasible instances (no allowed node, a job too large for every node it may run on,
//! more demand than capacity, demand that locality confines to too little capacity —
//! the latter exactly, by max-flow) are reported as [`PlacementError`]s by every node.

pub mod error;
mod flow;
pub mod integer;
pub mod local;
pub mod model;
pub mod msg;
pub mod node;
pub mod relay;
pub mod sim;

pub use error::PlacementError;
pub use model::{
    effective_cost, raw_cost, Hysteresis, Job, JobId, Link, LoadPenalty, NodeEnv, NodeId, Problem,
};
pub use msg::Msg;
pub use node::{Config, Event, Node, NodeStats, Outcome, To, Transmit};
