//! Fixed-priority response-time analysis (Joseph & Pandya 1986; Audsley et al. 1993), the
//! admission test of the node.
//!
//! For constrained deadlines (`D <= T`) and independent, fully preemptive tasks released at
//! a critical instant, the worst-case response time of task `i` is the least fixed point of
//!
//! ```text
//! R = C_i + sum over j in hp(i) of ceil(R / T_j) * C_j
//! ```
//!
//! found by iterating from `R = C_i`. The aperiodic server enters the analysis as one more
//! periodic task `(Cs + overrun allowance, Ts)` at its priority: that is what a sporadic
//! server (and a polling server) guarantees about its interference, whatever arrives.
//! When the fixed point exceeds the period, the value reported is that of the job released
//! at the critical instant — already a proof of unschedulability, and a lower bound on the
//! true worst case.

use serde::{Deserialize, Serialize};

use crate::{Priority, SchedError, Time};

/// One task as RTA sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtaTask {
    pub name: String,
    pub wcet: Time,
    pub period: Time,
    pub deadline: Time,
    pub priority: Priority,
}

/// RTA's verdict on one task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtaResult {
    pub name: String,
    pub priority: Priority,
    /// Worst-case response time; `None` when unbounded (higher-priority utilisation >= 1 or
    /// the iteration runs away).
    pub response: Option<Time>,
    pub deadline: Time,
}

impl RtaResult {
    pub fn schedulable(&self) -> bool {
        matches!(self.response, Some(r) if r <= self.deadline)
    }
}

/// Iterations cap of the fixed-point search; it converges far sooner on any real node
/// (each step adds at least one higher-priority job).
const MAX_ITERATIONS: u32 = 1_000_000;

/// Worst-case response time of every task, in the order given. Priorities are expected to
/// be unique (equal priorities are counted as interfering with each other, which is the
/// safe side).
pub fn response_times(tasks: &[RtaTask]) -> Vec<RtaResult> {
    tasks
        .iter()
        .enumerate()
        .map(|(i, task)| {
            let hp: Vec<&RtaTask> = tasks
                .iter()
                .enumerate()
                .filter(|(j, other)| *j != i && other.priority >= task.priority)
                .map(|(_, other)| other)
                .collect();
            RtaResult {
                name: task.name.clone(),
                priority: task.priority,
                response: response_time(task, &hp),
                deadline: task.deadline,
            }
        })
        .collect()
}

fn response_time(task: &RtaTask, hp: &[&RtaTask]) -> Option<Time> {
    if hp.iter().any(|t| t.period == 0) {
        return None;
    }
    let hp_util: f64 = hp.iter().map(|t| t.wcet as f64 / t.period as f64).sum();
    if hp_util >= 1.0 {
        return None;
    }
    // Runs in u128 so that no product overflows. A response a thousand times the deadline
    // is reported as unbounded: that is where rounding hides a utilisation of exactly 1.
    let limit = u128::from(task.deadline.max(task.period).max(1)) * 1000;
    let mut r: u128 = u128::from(task.wcet);
    for _ in 0..MAX_ITERATIONS {
        let next: u128 = u128::from(task.wcet)
            + hp.iter()
                .map(|t| r.div_ceil(u128::from(t.period)) * u128::from(t.wcet))
                .sum::<u128>();
        if next == r {
            return Time::try_from(r).ok();
        }
        if next > limit || next > u128::from(Time::MAX) {
            return None;
        }
        r = next;
    }
    None
}

/// Checks a task set: `Ok` with every result when all tasks meet their deadlines, else the
/// error naming the highest-priority task that misses, with its response time.
pub fn check(tasks: &[RtaTask]) -> Result<Vec<RtaResult>, SchedError> {
    let results = response_times(tasks);
    let worst = results
        .iter()
        .filter(|r| !r.schedulable())
        .max_by_key(|r| r.priority);
    match worst {
        Some(miss) => Err(SchedError::Unschedulable {
            task: miss.name.clone(),
            response: miss.response,
            deadline: miss.deadline,
        }),
        None => Ok(results),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, c: Time, p: Time, prio: u32) -> RtaTask {
        RtaTask {
            name: name.into(),
            wcet: c,
            period: p,
            deadline: p,
            priority: Priority(prio),
        }
    }

    #[test]
    fn saturated_higher_priority_is_unbounded() {
        let r = response_times(&[t("a", 5, 10, 3), t("b", 5, 10, 2), t("c", 1, 100, 1)]);
        assert_eq!(r[1].response, Some(10));
        assert_eq!(r[2].response, None);
        assert!(!r[2].schedulable());
    }
}
