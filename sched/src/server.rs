//! Budget bookkeeping of the aperiodic servers: the **sporadic server** with the corrected
//! rules, and a **polling server** of the same budget kept for comparison.
//!
//! # Why the corrected rules
//!
//! The POSIX `SCHED_SPORADIC` rules let a sporadic server run more than its budget `Cs` in
//! a window of length `Ts`, so the "a sporadic server interferes like a periodic task
//! `(Cs, Ts)`" premise of admission breaks. Stanovich, Baker, Wang and González Harbour,
//! *Defects of the POSIX Sporadic Server and How to Correct Them*, RTAS 2010
//! (doi:10.1109/RTAS.2010.34), show the defects — notably replenishments dated from the
//! activation time although the budget was consumed later (premature replenishment), and
//! overruns that are never charged — and give corrected rules (their `Budget_Check`,
//! `Split_Check`, `Unblock_Check`), including what to do when the bounded replenishment
//! list is full. The rules below are this crate's formulation of that correction, in units
//! of budget ("tokens"); the code is our own.
//!
//! # The rules implemented (sporadic server)
//!
//! State: a list `R` of replenishments `(at, amount)` sorted by `at`, at most `max_repl`
//! long (the available budget counts as one entry, as in the paper). Invariant: the
//! amounts in `R` plus the budget consumed by the current run ("in flight") sum to `Cs`.
//! The budget **available** at `t` is the sum of the amounts with `at <= t`.
//!
//! 1. **Available budget** (`Unblock_Check`). The server is eligible at its priority iff it
//!    has queued work and available budget `> 0`. Entries that have come due are merged
//!    into one: all of it is usable now, and merging frees list slots without moving any
//!    budget earlier.
//! 2. **Runs and consumption** (`Budget_Check`). A *run* is a maximal stretch during which
//!    the server is continuously the dispatched runnable at its own priority. It ends when
//!    the server is preempted, its queue empties, or its budget is exhausted. Execution
//!    consumes available budget, which goes in flight. A replenishment that comes due during
//!    a run lets the run go on: that budget was available when it was consumed.
//! 3. **Replenishment of a run** (`Split_Check`). When a run that executed `u` ends at `e`,
//!    its in-flight budget is posted as ONE replenishment at `e - u + Ts`: the start of the
//!    run plus `Ts` when it ran continuously, later otherwise. The rest of the available
//!    budget stays available (the remnant of the split). Dating the replenishment from the
//!    start of the run — never from the activation time, which may precede it by a long
//!    preemption — is what removes the premature-replenishment defect; ending runs at
//!    preemption gives each contiguous stretch of execution its own replenishment.
//! 4. **Overrun is charged** (`Budget_Check` with negative capacity). Execution beyond the
//!    available budget (a job stops only at its next yield point) is paid by the earliest
//!    pending replenishments: each pays `m = min(amount, overrun left)`, its amount drops by
//!    `m` and its time slides `m` later; the paid budget joins the run's in-flight budget
//!    and comes back with the run's replenishment. Overrun no replenishment can pay delays
//!    the run's own replenishment by that much. The total stays `Cs`.
//! 5. **Bounded list** (`Split_Check`, list full). When posting makes the list longer than
//!    `max_repl`, the earliest entry (the available remnant, if any) is merged into the
//!    next one and becomes available only at that later time. Merging only ever delays
//!    budget, never advances it.
//! 6. **Exhaustion.** With no available budget the server is **suspended** until the next
//!    replenishment comes due ([`Exhausted::Suspend`](crate::Exhausted), the default). With
//!    [`Exhausted::Background`](crate::Exhausted) its head job may instead run below every
//!    node-bound task when the CPU would otherwise idle; that execution consumes no budget
//!    and is not server execution at its priority.
//!
//! **Guarantee.** With exact stops, in every window `[w, w + Ts)` the server executes at
//! its priority at most `Cs`. Sketch: split the `Cs` tokens at `w` into available `A`,
//! in flight in the current run `F` (`|F| = w - s0` for a run begun at `s0`), pending `P`.
//! A token consumed in a run that starts inside the window is posted at `>= w + Ts`, so it
//! is used at most once in the window; only the current run's budget, posted at
//! `s0 + Ts`, can come back inside, and it can be used there for at most
//! `(w + Ts) - (s0 + Ts) = |F|`. Hence execution in the window `<= |A| + |P| + |F| = Cs`.
//! With overruns, the same holds for the execution *within budget*: the trace minus the
//! overruns the core reports never exceeds `Cs` in a window (tests: a random shell with late
//! callbacks and partial ticks); with one overrun of at most `q` per exhaustion, as the
//! simulator models yield points, no window held more than `Cs + q` in the random scenarios.
//!
//! # Polling server
//!
//! At every multiple of `Ts` (from its creation) the budget becomes `Cs` minus any unpaid
//! overrun — if work is queued at that instant; otherwise the budget of that period is
//! lost. The server runs its queue at its priority until the budget is exhausted or the
//! queue is empty, and the remaining budget is discarded as soon as the queue empties.
//! Work arriving after that waits for the next period. It is a periodic task `(Cs, Ts)`, so
//! admission is the same; its aperiodic response times are worse.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::Time;

/// `amount` units of server budget that become available at `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replenishment {
    pub at: Time,
    pub amount: Time,
}

/// The current run of the sporadic server (rule 2).
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    /// Budget taken out of the list by this run.
    tokens: Time,
    /// Execution charged to this run, overruns included.
    executed: Time,
    /// Overrun no pending replenishment could pay (rule 4).
    unpaid: Time,
}

/// Sporadic server state (the rules in the module doc).
#[derive(Clone, Debug)]
pub(crate) struct Sporadic {
    budget: Time,
    period: Time,
    max_repl: usize,
    list: VecDeque<Replenishment>,
    run: Option<Run>,
    /// Unpaid overrun of a run that had no budget to post (cannot happen when the core
    /// dispatches the server only with budget; kept so no overrun is ever forgotten).
    carried: Time,
    pub(crate) merges: u64,
}

impl Sporadic {
    pub(crate) fn new(budget: Time, period: Time, max_repl: usize, now: Time) -> Self {
        let mut list = VecDeque::with_capacity(max_repl + 1);
        list.push_back(Replenishment {
            at: now,
            amount: budget,
        });
        Sporadic {
            budget,
            period,
            max_repl,
            list,
            run: None,
            carried: 0,
            merges: 0,
        }
    }

    /// Budget available at `now` (after what the current run already took).
    pub(crate) fn available(&self, now: Time) -> Time {
        self.list
            .iter()
            .take_while(|r| r.at <= now)
            .map(|r| r.amount)
            .sum()
    }

    /// The earliest replenishment that is not yet due at `now`.
    pub(crate) fn next_due_after(&self, now: Time) -> Option<Time> {
        self.list.iter().map(|r| r.at).find(|&at| at > now)
    }

    pub(crate) fn replenishments(&self) -> Vec<Replenishment> {
        self.list.iter().copied().collect()
    }

    pub(crate) fn in_flight(&self) -> Time {
        self.run.map_or(0, |r| r.tokens)
    }

    /// Rule 1: merges the entries due at `now` into one.
    pub(crate) fn merge_due(&mut self, now: Time) {
        while self.list.len() >= 2 && self.list[1].at <= now {
            if let Some(first) = self.list.pop_front() {
                self.list[0].amount += first.amount;
            }
        }
    }

    /// Rules 2 and 4: charges `executed` of server execution ending at `now`. Returns the
    /// part of it that was overrun (beyond the available budget).
    pub(crate) fn consume(&mut self, executed: Time, now: Time) -> Time {
        if executed == 0 {
            return 0;
        }
        let mut run = self.run.take().unwrap_or_default();
        run.executed += executed;
        let mut need = executed;
        while need > 0 {
            match self.list.front_mut() {
                Some(head) if head.at <= now => {
                    let m = head.amount.min(need);
                    head.amount -= m;
                    run.tokens += m;
                    need -= m;
                    if head.amount == 0 {
                        self.list.pop_front();
                    }
                }
                _ => break,
            }
        }
        let overrun = need;
        // Rule 4: the earliest pending replenishments pay, and slide later by what they pay.
        let mut i = 0;
        while need > 0 && i < self.list.len() {
            let m = self.list[i].amount.min(need);
            self.list[i].amount -= m;
            self.list[i].at += m;
            run.tokens += m;
            need -= m;
            if self.list[i].amount == 0 {
                self.list.remove(i);
            } else {
                i += 1;
            }
        }
        run.unpaid += need;
        if overrun > 0 {
            self.list.make_contiguous().sort_by_key(|r| r.at);
        }
        self.run = Some(run);
        overrun
    }

    /// Rules 3 and 5: ends the current run at `now`; returns the replenishment posted.
    pub(crate) fn end_run(&mut self, now: Time) -> Option<Replenishment> {
        let run = self.run.take()?;
        self.merge_due(now);
        let unpaid = run.unpaid + std::mem::take(&mut self.carried);
        if run.tokens == 0 {
            self.carried = unpaid;
            return None;
        }
        let posted = Replenishment {
            at: now.saturating_sub(run.executed) + self.period + unpaid,
            amount: run.tokens,
        };
        let pos = self.list.partition_point(|r| r.at <= posted.at);
        self.list.insert(pos, posted);
        while self.list.len() > self.max_repl.max(1) {
            if let Some(first) = self.list.pop_front() {
                self.list[0].amount += first.amount;
                self.merges += 1;
            }
        }
        Some(posted)
    }

    /// Invariant check used by tests: list amounts + in flight == budget.
    pub(crate) fn conserved(&self) -> bool {
        let listed: Time = self.list.iter().map(|r| r.amount).sum();
        listed + self.in_flight() == self.budget
            && self
                .list
                .iter()
                .zip(self.list.iter().skip(1))
                .all(|(a, b)| a.at <= b.at)
            && self.list.len() <= self.max_repl.max(1)
    }
}

/// Polling server state.
#[derive(Clone, Debug)]
pub(crate) struct Polling {
    budget: Time,
    period: Time,
    /// Budget left in the current period.
    left: Time,
    next_poll: Time,
    debt: Time,
    pub(crate) wasted_polls: u64,
}

impl Polling {
    pub(crate) fn new(budget: Time, period: Time, now: Time) -> Self {
        Polling {
            budget,
            period,
            left: 0,
            next_poll: now,
            debt: 0,
            wasted_polls: 0,
        }
    }

    pub(crate) fn available(&self) -> Time {
        self.left
    }

    pub(crate) fn next_poll(&self) -> Time {
        self.next_poll
    }

    /// The poll at `next_poll`: full budget (less debt) if work is queued, else nothing.
    pub(crate) fn poll(&mut self, work_queued: bool) {
        let pay = self.debt.min(self.budget);
        self.debt -= pay;
        self.left = if work_queued {
            self.budget - pay
        } else {
            self.wasted_polls += 1;
            0
        };
        self.next_poll += self.period;
    }

    /// The queue emptied: the rest of this period's budget is discarded.
    pub(crate) fn queue_empty(&mut self) {
        self.left = 0;
    }

    /// Charges execution; returns the overrun part (carried as debt to the next polls).
    pub(crate) fn consume(&mut self, executed: Time) -> Time {
        let m = self.left.min(executed);
        self.left -= m;
        let overrun = executed - m;
        self.debt += overrun;
        overrun
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_posts_from_run_start_and_keeps_remnant() {
        let mut s = Sporadic::new(4, 10, 4, 0);
        assert_eq!(s.consume(1, 3), 0); // ran [2, 3)
        let posted = s.end_run(3);
        assert_eq!(posted, Some(Replenishment { at: 12, amount: 1 }));
        assert_eq!(s.available(3), 3);
        assert!(s.conserved());
    }

    #[test]
    fn overrun_with_nothing_pending_delays_own_replenishment() {
        let mut s = Sporadic::new(2, 10, 4, 0);
        assert_eq!(s.consume(3, 3), 1);
        assert!(s.conserved());
        assert_eq!(s.end_run(3), Some(Replenishment { at: 11, amount: 2 }));
        assert_eq!(s.available(10), 0);
        assert_eq!(s.available(11), 2);
    }

    #[test]
    fn full_list_defers_the_remnant() {
        let mut s = Sporadic::new(3, 10, 2, 0);
        s.consume(1, 1);
        s.end_run(1); // (0: 2 available), (10, 1)
        s.consume(1, 3);
        s.end_run(3); // would be 3 entries: the remnant 1 merges into (10, 1)
        assert_eq!(
            s.replenishments(),
            vec![
                Replenishment { at: 10, amount: 2 },
                Replenishment { at: 12, amount: 1 }
            ]
        );
        assert_eq!(s.available(9), 0);
        assert_eq!(s.merges, 1);
        assert!(s.conserved());
    }

    #[test]
    fn polling_discards_budget_without_work() {
        let mut p = Polling::new(3, 10, 0);
        p.poll(false);
        assert_eq!(p.available(), 0);
        assert_eq!(p.next_poll(), 10);
        p.poll(true);
        assert_eq!(p.available(), 3);
        assert_eq!(p.consume(4), 1);
        p.poll(true);
        assert_eq!(p.available(), 2);
    }
}
