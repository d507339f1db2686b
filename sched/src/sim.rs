//! Discrete-event simulator: runs a task set and an aperiodic arrival pattern through the
//! real [`Scheduler`] over simulated time and records what happened.
//!
//! The simulator plays the shell: it feeds arrivals at their instants, runs whatever
//! [`Scheduler::decide`] says until the next event (a timer, an arrival, the job's
//! completion, the budget's exhaustion), charges that time with [`Scheduler::on_tick`] and
//! reports completions. Node-bound jobs execute their WCET (or a random fraction of it),
//! migrating jobs their declared work.
//!
//! Overruns are modelled as roam will see them: a Wasm job stops only at its next yield
//! point, so when the server's budget runs out its job goes on for a random `[0, overrun_max]`
//! before it stops (preemption by a node-bound job stays immediate: that is the OS's job).
//!
//! The report holds the trace (who ran when), deadline misses, the server's execution per
//! window and the aperiodic response times; [`max_in_window`] is the sliding-window check the
//! tests and the benchmark apply to the trace.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{
    AperiodicId, Replenishment, Runnable, SchedError, SchedEvent, SchedStats, Scheduler,
    ServerSpec, TaskId, TaskSpec, Time,
};

/// SplitMix64: a small deterministic generator for scenarios (tests, benchmark).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo + 1;
        if span == 0 {
            return self.next_u64();
        }
        lo + self.next_u64() % span
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponentially distributed with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// One migrating job: arrives at `at`, needs `work` of CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arrival {
    pub at: Time,
    pub work: Time,
}

/// Poisson arrivals of exponentially distributed work, offered load `load` (CPU share) with
/// mean work `mean_work`, over `[0, horizon)`. Work is at least 1.
pub fn poisson_arrivals(rng: &mut Rng, load: f64, mean_work: Time, horizon: Time) -> Vec<Arrival> {
    let mut out = Vec::new();
    if load <= 0.0 || mean_work == 0 {
        return out;
    }
    let mean_gap = mean_work as f64 / load;
    let mut t = rng.exp(mean_gap);
    while (t as Time) < horizon {
        let work = (rng.exp(mean_work as f64).round() as Time).max(1);
        out.push(Arrival {
            at: t as Time,
            work,
        });
        t += rng.exp(mean_gap);
    }
    out
}

/// How long node-bound jobs execute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecModel {
    /// Every job runs its full WCET (the worst case).
    Wcet,
    /// Uniform in `[wcet * min_permille / 1000, wcet]`.
    Uniform { min_permille: u32 },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimConfig {
    pub server: ServerSpec,
    pub tasks: Vec<TaskSpec>,
    pub arrivals: Vec<Arrival>,
    pub horizon: Time,
    pub exec: ExecModel,
    /// When the budget runs out, the server's job stops up to this much later (uniformly
    /// drawn per exhaustion). 0: exact stops.
    pub overrun_max: Time,
    pub seed: u64,
}

/// Who had the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Who {
    Idle,
    Periodic {
        task: TaskId,
        job: u64,
    },
    /// The server at its priority, running this migrating job.
    Server {
        job: AperiodicId,
    },
    /// A migrating job in background (no budget).
    Background {
        job: AperiodicId,
    },
}

/// `[start, end)` during which `who` had the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub start: Time,
    pub end: Time,
    pub who: Who,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AperiodicOutcome {
    pub id: AperiodicId,
    pub arrival: Time,
    pub work: Time,
    /// `None`: still unfinished at the horizon (or refused, see `refused`).
    pub finished: Option<Time>,
    /// The server's queue was full.
    pub refused: bool,
}

impl AperiodicOutcome {
    pub fn response(&self) -> Option<Time> {
        self.finished.map(|f| f - self.arrival)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Miss {
    pub task: TaskId,
    pub job: u64,
    pub deadline: Time,
    pub noticed_at: Time,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimReport {
    pub horizon: Time,
    pub server_budget: Time,
    pub server_period: Time,
    pub trace: Vec<Segment>,
    pub deadline_misses: Vec<Miss>,
    /// Released node-bound jobs whose deadline is within the horizon.
    pub jobs_due: u64,
    pub aperiodic: Vec<AperiodicOutcome>,
    /// Each sporadic replenishment, with the instant it was posted.
    pub replenishments: Vec<(Time, Replenishment)>,
    pub stats: SchedStats,
}

impl SimReport {
    /// The server's execution at its priority, as merged `[start, end)` intervals.
    pub fn server_intervals(&self) -> Vec<(Time, Time)> {
        let mut out: Vec<(Time, Time)> = Vec::new();
        for s in self
            .trace
            .iter()
            .filter(|s| matches!(s.who, Who::Server { .. }))
        {
            match out.last_mut() {
                Some(last) if last.1 == s.start => last.1 = s.end,
                _ => out.push((s.start, s.end)),
            }
        }
        out
    }

    /// Most the server executed at its priority in any window `[w, w + window)`.
    pub fn max_server_in_window(&self, window: Time) -> Time {
        max_in_window(&self.server_intervals(), window)
    }

    /// Server execution in each period `[k Ts, (k + 1) Ts)`.
    pub fn server_per_period(&self) -> Vec<Time> {
        let ts = self.server_period.max(1);
        let mut out = vec![0; self.horizon.div_ceil(ts) as usize];
        for (mut a, b) in self.server_intervals() {
            while a < b {
                let k = a / ts;
                let end = b.min((k + 1) * ts);
                if let Some(slot) = out.get_mut(k as usize) {
                    *slot += end - a;
                }
                a = end;
            }
        }
        out
    }

    pub fn deadline_miss_rate(&self) -> f64 {
        if self.jobs_due == 0 {
            return 0.0;
        }
        self.deadline_misses.len() as f64 / self.jobs_due as f64
    }

    /// The `p`-quantile (0..=1) of aperiodic response times, unfinished jobs counted as
    /// infinitely late; `None` if the quantile falls on an unfinished job or no job came.
    pub fn response_quantile(&self, p: f64) -> Option<Time> {
        let mut r: Vec<Time> = self
            .aperiodic
            .iter()
            .map(|a| a.response().unwrap_or(Time::MAX))
            .collect();
        if r.is_empty() {
            return None;
        }
        r.sort_unstable();
        let idx = ((r.len() - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize;
        r.get(idx).copied().filter(|&v| v != Time::MAX)
    }

    pub fn aperiodic_finished(&self) -> usize {
        self.aperiodic
            .iter()
            .filter(|a| a.finished.is_some())
            .count()
    }
}

/// Most execution in any window of length `window`, over sorted, disjoint intervals.
/// The maximum is reached with a window that starts at an interval's start or ends at an
/// interval's end, so only those are tried (prefix sums + binary search).
pub fn max_in_window(intervals: &[(Time, Time)], window: Time) -> Time {
    let mut prefix = Vec::with_capacity(intervals.len() + 1);
    prefix.push(0);
    for &(a, b) in intervals {
        let last = prefix.last().copied().unwrap_or(0);
        prefix.push(last + (b - a));
    }
    let in_range = |a: Time, b: Time| -> Time {
        let i = intervals.partition_point(|&(_, e)| e <= a);
        let j = intervals.partition_point(|&(s, _)| s < b);
        if i >= j {
            return 0;
        }
        let mut total = prefix[j] - prefix[i];
        total -= a.saturating_sub(intervals[i].0);
        total -= intervals[j - 1].1.saturating_sub(b);
        total
    };
    let mut best = 0;
    for &(s, e) in intervals {
        best = best.max(in_range(s, s.saturating_add(window)));
        best = best.max(in_range(e.saturating_sub(window), e));
    }
    best
}

/// Runs one scenario. Fails only if the task set is refused by admission.
pub fn run(cfg: &SimConfig) -> Result<SimReport, SchedError> {
    run_with(cfg, true)
}

/// Runs a scenario without admission (parameters are still validated): what happens to a
/// set RTA would refuse.
pub fn run_unchecked(cfg: &SimConfig) -> Result<SimReport, SchedError> {
    run_with(cfg, false)
}

fn run_with(cfg: &SimConfig, admission: bool) -> Result<SimReport, SchedError> {
    let mut sched = if admission {
        Scheduler::new(cfg.server.clone(), 0)?
    } else {
        Scheduler::new_unchecked(cfg.server.clone(), 0)?
    };
    for t in &cfg.tasks {
        if admission {
            sched.admit(0, t.clone())?;
        } else {
            sched.admit_unchecked(0, t.clone())?;
        }
    }
    let mut rng = Rng::new(cfg.seed);
    let mut arrivals: Vec<(usize, Arrival)> = cfg.arrivals.iter().copied().enumerate().collect();
    arrivals.sort_by_key(|(i, a)| (a.at, *i));
    let mut outcomes: Vec<AperiodicOutcome> = cfg
        .arrivals
        .iter()
        .enumerate()
        .map(|(i, a)| AperiodicOutcome {
            id: AperiodicId(i as u64),
            arrival: a.at,
            work: a.work,
            finished: None,
            refused: false,
        })
        .collect();

    let mut st = State {
        rng_exec: Rng::new(cfg.seed ^ 0x5EED),
        exec: cfg.exec,
        wcet: HashMap::new(),
        job_left: HashMap::new(),
        misses: Vec::new(),
        jobs_due: 0,
        horizon: cfg.horizon,
        replenishments: Vec::new(),
    };
    for (id, spec) in sched.tasks() {
        st.wcet.insert(id, spec.wcet);
    }
    let mut aper_left: HashMap<AperiodicId, Time> = HashMap::new();
    let mut trace: Vec<Segment> = Vec::new();
    let mut next_arrival = 0;
    let mut now: Time = 0;

    loop {
        while let Some(&(i, a)) = arrivals.get(next_arrival).filter(|(_, a)| a.at <= now) {
            next_arrival += 1;
            let id = AperiodicId(i as u64);
            match sched.aperiodic_arrival(now, id, a.work) {
                Ok(()) => {
                    aper_left.insert(id, a.work);
                }
                Err(_) => outcomes[i].refused = true,
            }
        }
        st.absorb(sched.drain_events(), &mut outcomes);
        if now >= cfg.horizon {
            break;
        }
        let d = sched.decide(now);
        st.absorb(sched.drain_events(), &mut outcomes);

        let mut until = cfg.horizon;
        if let Some(&(_, a)) = arrivals.get(next_arrival) {
            until = until.min(a.at);
        }
        if let Some(t) = d.next_timer_at {
            until = until.min(t);
        }
        let left = match d.run {
            Some(Runnable::Periodic { task, job }) => st.job_left.get(&(task, job)).copied(),
            Some(Runnable::Aperiodic { job, .. }) => aper_left.get(&job).copied(),
            None => None,
        };
        if let Some(left) = left {
            until = until.min(now + left);
        }
        if let Some(exhaust) = d.budget_exhausts_at {
            let stop = exhaust + rng.range(0, cfg.overrun_max);
            until = until.min(stop);
        }
        let until = until.max(now);
        let ran = until - now;
        sched.on_tick(until, ran);
        if ran > 0 {
            let who = match d.run {
                None => Who::Idle,
                Some(Runnable::Periodic { task, job }) => Who::Periodic { task, job },
                Some(Runnable::Aperiodic {
                    job,
                    background: false,
                }) => Who::Server { job },
                Some(Runnable::Aperiodic {
                    job,
                    background: true,
                }) => Who::Background { job },
            };
            match trace.last_mut() {
                Some(last) if last.who == who && last.end == now => last.end = until,
                _ => trace.push(Segment {
                    start: now,
                    end: until,
                    who,
                }),
            }
        }
        if let Some(r) = d.run {
            let slot = match r {
                Runnable::Periodic { task, job } => st.job_left.get_mut(&(task, job)),
                Runnable::Aperiodic { job, .. } => aper_left.get_mut(&job),
            };
            let finished = match slot {
                Some(left) => {
                    *left = left.saturating_sub(ran);
                    *left == 0
                }
                None => true,
            };
            if finished {
                match r {
                    Runnable::Periodic { task, job } => {
                        st.job_left.remove(&(task, job));
                    }
                    Runnable::Aperiodic { job, .. } => {
                        aper_left.remove(&job);
                    }
                }
                sched.complete(until, r)?;
            }
        }
        now = until;
    }
    sched.advance_to(cfg.horizon);
    // Closes a server run that ends at the horizon, so that its replenishment is recorded.
    sched.decide(cfg.horizon);
    st.absorb(sched.drain_events(), &mut outcomes);
    Ok(SimReport {
        horizon: cfg.horizon,
        server_budget: cfg.server.budget,
        server_period: cfg.server.period,
        trace,
        deadline_misses: st.misses,
        jobs_due: st.jobs_due,
        aperiodic: outcomes,
        replenishments: st.replenishments,
        stats: sched.stats(),
    })
}

/// What the simulator tracks from the scheduler's events.
struct State {
    rng_exec: Rng,
    exec: ExecModel,
    wcet: HashMap<TaskId, Time>,
    job_left: HashMap<(TaskId, u64), Time>,
    misses: Vec<Miss>,
    jobs_due: u64,
    horizon: Time,
    replenishments: Vec<(Time, Replenishment)>,
}

impl State {
    fn absorb(&mut self, events: Vec<SchedEvent>, outcomes: &mut [AperiodicOutcome]) {
        for e in events {
            match e {
                SchedEvent::JobReleased {
                    task,
                    job,
                    deadline,
                    ..
                } => {
                    let wcet = self.wcet.get(&task).copied().unwrap_or(0);
                    let exec = match self.exec {
                        ExecModel::Wcet => wcet,
                        ExecModel::Uniform { min_permille } => {
                            let lo = wcet * Time::from(min_permille.min(1000)) / 1000;
                            self.rng_exec.range(lo.max(1), wcet)
                        }
                    };
                    self.job_left.insert((task, job), exec);
                    if deadline <= self.horizon {
                        self.jobs_due += 1;
                    }
                }
                SchedEvent::DeadlineMiss {
                    task,
                    job,
                    deadline,
                    noticed_at,
                } => self.misses.push(Miss {
                    task,
                    job,
                    deadline,
                    noticed_at,
                }),
                SchedEvent::AperiodicCompleted { job, at, .. } => {
                    if let Some(o) = outcomes.get_mut(job.0 as usize) {
                        o.finished = Some(at);
                    }
                }
                SchedEvent::ReplenishmentPosted { at, replenishment } => {
                    self.replenishments.push((at, replenishment))
                }
                SchedEvent::JobCompleted { .. }
                | SchedEvent::JobSkipped { .. }
                | SchedEvent::ServerOverrun { .. } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_maximum_over_intervals() {
        let iv = [(0, 2), (5, 6), (9, 12)];
        assert_eq!(max_in_window(&iv, 10), 4); // [0, 10) and [2, 12) both hold 4
        assert_eq!(max_in_window(&iv, 3), 3);
        assert_eq!(max_in_window(&iv, 100), 6);
        assert_eq!(max_in_window(&[], 10), 0);
    }
}
