//! The dispatcher: fixed-priority preemptive scheduling of node-bound jobs and of the one
//! aperiodic server, driven by a time the caller passes in.
//!
//! Protocol for a shell (real threads) or the simulator:
//!
//! 1. feed what happened, each with the time it happened: [`Scheduler::aperiodic_arrival`],
//!    [`Scheduler::release`] (sporadic tasks), [`Scheduler::complete`];
//! 2. account the CPU time the dispatched runnable really got with
//!    [`Scheduler::on_tick`] (or [`Scheduler::advance_to`] when it had the CPU all along);
//! 3. call [`Scheduler::decide`] and run `run` until `next_event_at` or until it completes,
//!    then go to 1.
//!
//! Every call first brings the core up to its `now`: periodic releases, replenishments and
//! polls that fell due are processed in time order, and the dispatched runnable is charged
//! for the time in between. Calls with a time earlier than the core's are treated as "now".

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::rta::{self, RtaResult, RtaTask};
use crate::server::{Polling, Replenishment, Sporadic};
use crate::{Activation, Exhausted, SchedError, ServerKind, ServerSpec, TaskSpec, Time};

/// At most this many node-bound tasks per node.
pub const MAX_TASKS: usize = 256;
/// At most this many pending jobs per task; a release beyond it is skipped (and reported).
pub const MAX_BACKLOG: usize = 64;
/// At most this many undrained events; the oldest are dropped (and counted).
pub const MAX_EVENTS: usize = 1 << 16;
/// Longest task name accepted.
pub const MAX_NAME: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId(pub u32);

/// Identity of a migrating (aperiodic) job, chosen by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AperiodicId(pub u64);

/// What should have the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Runnable {
    /// Job number `job` (0, 1, ... in release order) of a node-bound task.
    Periodic { task: TaskId, job: u64 },
    /// The head of the aperiodic FIFO: served by the server at its priority, or
    /// (`background`) below every task without budget ([`Exhausted::Background`]).
    Aperiodic { job: AperiodicId, background: bool },
}

/// The answer of [`Scheduler::decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// `None`: idle.
    pub run: Option<Runnable>,
    /// Call back (`decide`) no later than this, even if nothing is fed in meanwhile.
    pub next_event_at: Option<Time>,
    /// When `run` is the server: the instant its available budget runs out.
    pub budget_exhausts_at: Option<Time>,
    /// The next release, replenishment or poll that may change the decision.
    pub next_timer_at: Option<Time>,
}

/// Things worth telling the shell (and the simulator), drained by
/// [`Scheduler::drain_events`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchedEvent {
    JobReleased {
        task: TaskId,
        job: u64,
        at: Time,
        deadline: Time,
    },
    JobCompleted {
        task: TaskId,
        job: u64,
        release: Time,
        deadline: Time,
        at: Time,
    },
    /// Reported once per job, when its completion is late or when the core notices that
    /// the deadline passed with the job unfinished.
    DeadlineMiss {
        task: TaskId,
        job: u64,
        deadline: Time,
        noticed_at: Time,
    },
    /// A release found the task's backlog full ([`MAX_BACKLOG`]) and was dropped.
    JobSkipped { task: TaskId, at: Time },
    AperiodicCompleted {
        job: AperiodicId,
        arrival: Time,
        at: Time,
    },
    /// A sporadic-server run ended at `at` and posted this replenishment.
    ReplenishmentPosted {
        at: Time,
        replenishment: Replenishment,
    },
    /// The server ran `amount` past its budget (charged, see [`crate::server`]).
    ServerOverrun { at: Time, amount: Time },
}

/// Counters since creation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedStats {
    pub jobs_released: u64,
    pub jobs_completed: u64,
    pub deadline_misses: u64,
    pub jobs_skipped: u64,
    pub aperiodic_completed: u64,
    /// Server execution at its priority (overruns included).
    pub server_executed: Time,
    /// Aperiodic execution in background (no budget).
    pub background_executed: Time,
    pub overrun_total: Time,
    pub overrun_max: Time,
    pub replenishments_posted: u64,
    /// Merges forced by a full replenishment list (rule 5).
    pub list_merges: u64,
    /// Polls that found no work and lost their budget (polling server).
    pub wasted_polls: u64,
    pub events_dropped: u64,
}

/// What this node can still offer, for the placement solver.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpareCapacity {
    pub server_budget: Time,
    pub server_period: Time,
    /// `Cs / Ts`: the CPU share migrating jobs get when the server is saturated.
    pub server_share: f64,
    /// Sum of `wcet / period` over the node-bound tasks.
    pub periodic_utilisation: f64,
    /// Periodic utilisation plus `(Cs + overrun allowance) / Ts`.
    pub total_utilisation: f64,
    /// `1 - total_utilisation` (not below 0): what RTA might still admit, at best.
    pub headroom: f64,
    /// The largest server budget RTA would admit with the same period and priority.
    pub max_server_budget: Time,
    pub queued_jobs: usize,
    /// Sum of the work hints of the queued aperiodic jobs.
    pub queued_work: Time,
    /// Server budget available now.
    pub server_available: Time,
}

#[derive(Clone, Debug)]
struct Job {
    index: u64,
    release: Time,
    deadline: Time,
    miss_reported: bool,
}

#[derive(Clone, Debug)]
struct TaskState {
    id: TaskId,
    spec: TaskSpec,
    next_release: Option<Time>,
    last_release: Option<Time>,
    next_index: u64,
    backlog: VecDeque<Job>,
}

#[derive(Clone, Debug)]
struct AperiodicJob {
    id: AperiodicId,
    arrival: Time,
    work_hint: Time,
}

#[derive(Clone, Debug)]
enum ServerState {
    Sporadic(Sporadic),
    Polling(Polling),
}

/// Fixed-priority scheduler of one node: node-bound tasks plus one aperiodic server.
#[derive(Clone, Debug)]
pub struct Scheduler {
    now: Time,
    spec: ServerSpec,
    server: ServerState,
    tasks: Vec<TaskState>,
    next_task_id: u32,
    queue: VecDeque<AperiodicJob>,
    dispatched: Option<Runnable>,
    events: VecDeque<SchedEvent>,
    stats: SchedStats,
}

impl Scheduler {
    /// A scheduler with no task yet and the given server, created at `now`.
    pub fn new(spec: ServerSpec, now: Time) -> Result<Self, SchedError> {
        let sched = Self::new_unchecked(spec, now)?;
        rta::check(&sched.rta_tasks(None))?;
        Ok(sched)
    }

    /// [`Scheduler::new`] without the response-time analysis (the parameters are still
    /// validated): for experiments on what admission would refuse.
    pub fn new_unchecked(spec: ServerSpec, now: Time) -> Result<Self, SchedError> {
        if spec.period == 0 || spec.budget == 0 || spec.budget > spec.period {
            return Err(SchedError::InvalidServer(format!(
                "need 0 < budget <= period, got budget {} period {}",
                spec.budget, spec.period
            )));
        }
        if spec.max_queue == 0 {
            return Err(SchedError::InvalidServer("max_queue must be > 0".into()));
        }
        let server = match spec.kind {
            ServerKind::Sporadic { max_repl } => {
                if max_repl == 0 {
                    return Err(SchedError::InvalidServer("max_repl must be > 0".into()));
                }
                ServerState::Sporadic(Sporadic::new(spec.budget, spec.period, max_repl, now))
            }
            ServerKind::Polling => {
                ServerState::Polling(Polling::new(spec.budget, spec.period, now))
            }
        };
        let sched = Scheduler {
            now,
            spec,
            server,
            tasks: Vec::new(),
            next_task_id: 0,
            queue: VecDeque::new(),
            dispatched: None,
            events: VecDeque::new(),
            stats: SchedStats::default(),
        };
        Ok(sched)
    }

    pub fn now(&self) -> Time {
        self.now
    }

    pub fn server_spec(&self) -> &ServerSpec {
        &self.spec
    }

    pub fn stats(&self) -> SchedStats {
        let mut stats = self.stats;
        match &self.server {
            ServerState::Sporadic(s) => stats.list_merges = s.merges,
            ServerState::Polling(p) => stats.wasted_polls = p.wasted_polls,
        }
        stats
    }

    pub fn drain_events(&mut self) -> Vec<SchedEvent> {
        self.events.drain(..).collect()
    }

    /// The admitted tasks.
    pub fn tasks(&self) -> impl Iterator<Item = (TaskId, &TaskSpec)> {
        self.tasks.iter().map(|t| (t.id, &t.spec))
    }

    /// Admits a node-bound task at `now` if RTA finds the set (with the server) still
    /// schedulable; a periodic task's first job is released at `now + offset`.
    pub fn admit(&mut self, now: Time, spec: TaskSpec) -> Result<TaskId, SchedError> {
        self.validate(&spec)?;
        rta::check(&self.rta_tasks(Some(&spec)))?;
        self.admit_unchecked(now, spec)
    }

    /// [`Scheduler::admit`] without the response-time analysis (the task is still
    /// validated): for experiments on what admission would refuse.
    pub fn admit_unchecked(&mut self, now: Time, spec: TaskSpec) -> Result<TaskId, SchedError> {
        self.sync(now, None);
        self.validate(&spec)?;
        let id = TaskId(self.next_task_id);
        self.next_task_id += 1;
        let next_release = match spec.activation {
            Activation::Periodic { offset } => Some(self.now.saturating_add(offset)),
            Activation::Sporadic => None,
        };
        self.tasks.push(TaskState {
            id,
            spec,
            next_release,
            last_release: None,
            next_index: 0,
            backlog: VecDeque::new(),
        });
        self.fire_timers(self.now);
        Ok(id)
    }

    /// Removes a task and its pending jobs.
    pub fn remove(&mut self, now: Time, task: TaskId) -> Result<TaskSpec, SchedError> {
        self.sync(now, None);
        let idx = self.task_index(task)?;
        if matches!(self.dispatched, Some(Runnable::Periodic { task: t, .. }) if t == task) {
            self.dispatched = None;
        }
        Ok(self.tasks.remove(idx).spec)
    }

    /// Releases a job of a sporadic task; returns its job number.
    pub fn release(&mut self, now: Time, task: TaskId) -> Result<u64, SchedError> {
        self.sync(now, None);
        let idx = self.task_index(task)?;
        let t = &self.tasks[idx];
        if t.spec.activation != Activation::Sporadic {
            return Err(SchedError::NotSporadic(t.spec.name.clone()));
        }
        if let Some(last) = t.last_release {
            let earliest = last.saturating_add(t.spec.period);
            if self.now < earliest {
                return Err(SchedError::ReleaseTooEarly {
                    task: t.spec.name.clone(),
                    at: self.now,
                    earliest,
                });
            }
        }
        let index = self.tasks[idx].next_index;
        self.release_job(idx, self.now);
        Ok(index)
    }

    /// A migrating job arrives; it joins the FIFO served by the server. `work_hint` is only
    /// reported back through [`Scheduler::spare_capacity`].
    pub fn aperiodic_arrival(
        &mut self,
        now: Time,
        job: AperiodicId,
        work_hint: Time,
    ) -> Result<(), SchedError> {
        self.sync(now, None);
        if self.queue.iter().any(|j| j.id == job) {
            return Err(SchedError::DuplicateJob(job));
        }
        if self.queue.len() >= self.spec.max_queue {
            return Err(SchedError::QueueFull(self.spec.max_queue));
        }
        self.queue.push_back(AperiodicJob {
            id: job,
            arrival: self.now,
            work_hint,
        });
        Ok(())
    }

    /// Takes a queued migrating job out (it migrates away); `false` if it was not queued.
    pub fn remove_aperiodic(&mut self, now: Time, job: AperiodicId) -> bool {
        self.sync(now, None);
        let Some(pos) = self.queue.iter().position(|j| j.id == job) else {
            return false;
        };
        self.queue.remove(pos);
        if matches!(self.dispatched, Some(Runnable::Aperiodic { job: j, .. }) if j == job) {
            self.dispatched = None;
        }
        self.after_queue_change();
        true
    }

    /// Moves a queued migrating job to the back of the FIFO, keeping its arrival time: the
    /// shell's round robin among long-running jobs sharing the server (without it the head
    /// of the queue would hold the server until it exits). `false` if it was not queued.
    pub fn rotate_aperiodic(&mut self, now: Time, job: AperiodicId) -> bool {
        self.sync(now, None);
        let Some(pos) = self.queue.iter().position(|j| j.id == job) else {
            return false;
        };
        // The server keeps serving (the next head): only the order changes.
        if let Some(j) = self.queue.remove(pos) {
            self.queue.push_back(j);
        }
        true
    }

    /// A job finished at `now` (after being charged up to `now`).
    pub fn complete(&mut self, now: Time, runnable: Runnable) -> Result<(), SchedError> {
        self.sync(now, None);
        match runnable {
            Runnable::Periodic { task, job } => {
                let idx = self
                    .task_index(task)
                    .map_err(|_| SchedError::UnknownJob(runnable))?;
                let state = &mut self.tasks[idx];
                let pos = state
                    .backlog
                    .iter()
                    .position(|j| j.index == job)
                    .ok_or(SchedError::UnknownJob(runnable))?;
                let Some(done) = state.backlog.remove(pos) else {
                    return Err(SchedError::UnknownJob(runnable));
                };
                self.stats.jobs_completed += 1;
                if self.now > done.deadline && !done.miss_reported {
                    self.stats.deadline_misses += 1;
                    self.push_event(SchedEvent::DeadlineMiss {
                        task,
                        job,
                        deadline: done.deadline,
                        noticed_at: self.now,
                    });
                }
                self.push_event(SchedEvent::JobCompleted {
                    task,
                    job,
                    release: done.release,
                    deadline: done.deadline,
                    at: self.now,
                });
            }
            Runnable::Aperiodic { job, .. } => {
                let pos = self
                    .queue
                    .iter()
                    .position(|j| j.id == job)
                    .ok_or(SchedError::UnknownJob(runnable))?;
                let Some(done) = self.queue.remove(pos) else {
                    return Err(SchedError::UnknownJob(runnable));
                };
                self.stats.aperiodic_completed += 1;
                self.push_event(SchedEvent::AperiodicCompleted {
                    job,
                    arrival: done.arrival,
                    at: self.now,
                });
                self.after_queue_change();
            }
        }
        if self.dispatched == Some(runnable) {
            self.dispatched = None;
        }
        Ok(())
    }

    /// Accounts `ran_for` of CPU time to the dispatched runnable since the previous call
    /// (at most the time elapsed; taken to be the end of the interval), then processes
    /// what fell due up to `now`.
    pub fn on_tick(&mut self, now: Time, ran_for: Time) {
        self.sync(now, Some(ran_for));
    }

    /// `on_tick` when the dispatched runnable had the CPU the whole time.
    pub fn advance_to(&mut self, now: Time) {
        self.sync(now, None);
    }

    /// What runs now, and until when at the latest.
    pub fn decide(&mut self, now: Time) -> Decision {
        self.sync(now, None);
        let now = self.now;
        let periodic = self
            .tasks
            .iter()
            .filter_map(|t| t.backlog.front().map(|j| (t.spec.priority, t.id, j.index)))
            .max_by_key(|(p, _, _)| *p);
        let head = self.queue.front().map(|j| j.id);
        let server_ready = head.is_some() && self.server_available(now) > 0;
        let server_wins = server_ready && periodic.is_none_or(|(p, _, _)| self.spec.priority > p);
        let mut run = if server_wins {
            head.map(|job| Runnable::Aperiodic {
                job,
                background: false,
            })
        } else {
            periodic.map(|(_, task, job)| Runnable::Periodic { task, job })
        };
        if run.is_none() && self.spec.exhausted == Exhausted::Background {
            run = head.map(|job| Runnable::Aperiodic {
                job,
                background: true,
            });
        }
        let serving = matches!(
            run,
            Some(Runnable::Aperiodic {
                background: false,
                ..
            })
        );
        if !serving {
            self.end_server_run();
        }
        self.dispatched = run;

        let budget_exhausts_at = serving.then(|| now + self.server_available(now));
        let releases = self.tasks.iter().filter_map(|t| t.next_release).min();
        let server_timer = if self.queue.is_empty() {
            None
        } else {
            match &self.server {
                ServerState::Sporadic(s) => s.next_due_after(now),
                ServerState::Polling(p) => Some(p.next_poll()),
            }
        };
        let next_timer_at = min_opt(releases, server_timer);
        Decision {
            run,
            next_event_at: min_opt(next_timer_at, budget_exhausts_at),
            budget_exhausts_at,
            next_timer_at,
        }
    }

    /// Server budget available at `now` (taken no earlier than the core's time).
    pub fn server_available(&self, now: Time) -> Time {
        match &self.server {
            ServerState::Sporadic(s) => s.available(now.max(self.now)),
            ServerState::Polling(p) => p.available(),
        }
    }

    /// The sporadic server's replenishment list (empty for a polling server).
    pub fn replenishments(&self) -> Vec<Replenishment> {
        match &self.server {
            ServerState::Sporadic(s) => s.replenishments(),
            ServerState::Polling(_) => Vec::new(),
        }
    }

    /// Whether this migrating job is in the server's queue.
    pub fn queue_contains(&self, job: AperiodicId) -> bool {
        self.queue.iter().any(|j| j.id == job)
    }

    /// Number of queued migrating jobs.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// RTA of the admitted set with the server, in admission order then the server last.
    pub fn response_times(&self) -> Vec<RtaResult> {
        rta::response_times(&self.rta_tasks(None))
    }

    pub fn spare_capacity(&self) -> SpareCapacity {
        let periodic_utilisation: f64 = self.tasks.iter().map(|t| t.spec.utilisation()).sum();
        let server_load =
            (self.spec.budget + self.spec.overrun_allowance) as f64 / self.spec.period as f64;
        let total_utilisation = periodic_utilisation + server_load;
        SpareCapacity {
            server_budget: self.spec.budget,
            server_period: self.spec.period,
            server_share: self.spec.utilisation(),
            periodic_utilisation,
            total_utilisation,
            headroom: (1.0 - total_utilisation).max(0.0),
            max_server_budget: self.max_server_budget(),
            queued_jobs: self.queue.len(),
            queued_work: self.queue.iter().map(|j| j.work_hint).sum(),
            server_available: self.server_available(self.now),
        }
    }

    /// Largest budget (same period, priority, allowance) RTA admits with the current tasks.
    fn max_server_budget(&self) -> Time {
        let fits = |budget: Time| rta::check(&self.rta_tasks_with_budget(budget)).is_ok();
        let (mut lo, mut hi) = (0, self.spec.period);
        if fits(hi) {
            return hi;
        }
        // fits(lo) may be false when the tasks alone fail; then 0 is the honest answer.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn rta_tasks_with_budget(&self, budget: Time) -> Vec<RtaTask> {
        let mut tasks = self.rta_tasks(None);
        if let Some(server) = tasks.last_mut() {
            server.wcet = budget + self.spec.overrun_allowance;
        }
        tasks
    }

    /// Test hook: the sporadic server's bookkeeping invariants (budget conserved, list
    /// sorted and bounded).
    #[doc(hidden)]
    pub fn server_invariants_hold(&self) -> bool {
        match &self.server {
            ServerState::Sporadic(s) => s.conserved(),
            ServerState::Polling(_) => true,
        }
    }

    // ---- internals ----

    fn rta_tasks(&self, extra: Option<&TaskSpec>) -> Vec<RtaTask> {
        let mut out: Vec<RtaTask> = self
            .tasks
            .iter()
            .map(|t| &t.spec)
            .chain(extra)
            .map(|s| RtaTask {
                name: s.name.clone(),
                wcet: s.wcet,
                period: s.period,
                deadline: s.deadline,
                priority: s.priority,
            })
            .collect();
        out.push(RtaTask {
            name: self.spec.name().to_string(),
            wcet: self.spec.budget.saturating_add(self.spec.overrun_allowance),
            period: self.spec.period,
            deadline: self.spec.period,
            priority: self.spec.priority,
        });
        out
    }

    fn validate(&self, spec: &TaskSpec) -> Result<(), SchedError> {
        let invalid = |reason: &str| SchedError::InvalidTask {
            task: spec.name.chars().take(MAX_NAME).collect(),
            reason: reason.to_string(),
        };
        if spec.name.is_empty() || spec.name.len() > MAX_NAME {
            return Err(invalid("name must be 1..=128 bytes"));
        }
        if spec.period == 0 || spec.wcet == 0 {
            return Err(invalid("period and wcet must be > 0"));
        }
        if spec.wcet > spec.deadline || spec.deadline > spec.period {
            return Err(invalid("need wcet <= deadline <= period"));
        }
        if self.tasks.len() >= MAX_TASKS {
            return Err(SchedError::TooManyTasks(MAX_TASKS));
        }
        if spec.priority == self.spec.priority {
            return Err(SchedError::PriorityTaken {
                priority: spec.priority,
                holder: self.spec.name().to_string(),
            });
        }
        if let Some(t) = self.tasks.iter().find(|t| t.spec.priority == spec.priority) {
            return Err(SchedError::PriorityTaken {
                priority: spec.priority,
                holder: t.spec.name.clone(),
            });
        }
        Ok(())
    }

    fn task_index(&self, task: TaskId) -> Result<usize, SchedError> {
        self.tasks
            .iter()
            .position(|t| t.id == task)
            .ok_or(SchedError::UnknownTask(task))
    }

    fn push_event(&mut self, event: SchedEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    fn after_queue_change(&mut self) {
        if self.queue.is_empty() {
            if let ServerState::Polling(p) = &mut self.server {
                p.queue_empty();
            }
        }
    }

    fn end_server_run(&mut self) {
        if let ServerState::Sporadic(s) = &mut self.server {
            if let Some(replenishment) = s.end_run(self.now) {
                self.stats.replenishments_posted += 1;
                self.push_event(SchedEvent::ReplenishmentPosted {
                    at: self.now,
                    replenishment,
                });
            }
        }
    }

    /// The earliest release, replenishment or poll at or after the core's time.
    fn next_timer(&self) -> Option<Time> {
        let releases = self.tasks.iter().filter_map(|t| t.next_release).min();
        let server = match &self.server {
            ServerState::Sporadic(s) => s.next_due_after(self.now),
            ServerState::Polling(p) => Some(p.next_poll()),
        };
        min_opt(releases, server)
    }

    /// Brings the core to `now`, charging the dispatched runnable for `ran_for` (default:
    /// all the elapsed time), taken as the end of the interval.
    fn sync(&mut self, now: Time, ran_for: Option<Time>) {
        if now < self.now {
            return;
        }
        let elapsed = now - self.now;
        let ran = ran_for.map_or(elapsed, |r| r.min(elapsed));
        let exec_start = now - ran;
        while let Some(t) = self.next_timer().filter(|&t| t <= now) {
            self.charge(exec_start, t);
            self.now = self.now.max(t);
            self.fire_timers(t);
        }
        self.charge(exec_start, now);
        self.now = now;
        self.notice_misses();
    }

    /// Charges the dispatched runnable for its execution in `[max(core time, exec_start), until)`.
    fn charge(&mut self, exec_start: Time, until: Time) {
        let from = self.now.max(exec_start);
        if until <= from {
            return;
        }
        let executed = until - from;
        match self.dispatched {
            Some(Runnable::Aperiodic {
                background: false, ..
            }) => {
                self.stats.server_executed += executed;
                let overrun = match &mut self.server {
                    ServerState::Sporadic(s) => s.consume(executed, from),
                    ServerState::Polling(p) => p.consume(executed),
                };
                if overrun > 0 {
                    self.stats.overrun_total += overrun;
                    self.stats.overrun_max = self.stats.overrun_max.max(overrun);
                    self.push_event(SchedEvent::ServerOverrun {
                        at: until,
                        amount: overrun,
                    });
                }
            }
            Some(Runnable::Aperiodic {
                background: true, ..
            }) => self.stats.background_executed += executed,
            Some(Runnable::Periodic { .. }) | None => {}
        }
    }

    fn fire_timers(&mut self, t: Time) {
        for idx in 0..self.tasks.len() {
            while let Some(at) = self.tasks[idx].next_release.filter(|&at| at <= t) {
                self.release_job(idx, at);
                let period = self.tasks[idx].spec.period;
                self.tasks[idx].next_release = at.checked_add(period);
            }
        }
        let work_queued = !self.queue.is_empty();
        match &mut self.server {
            ServerState::Sporadic(s) => s.merge_due(t),
            ServerState::Polling(p) => {
                while p.next_poll() <= t {
                    p.poll(work_queued);
                }
            }
        }
    }

    fn release_job(&mut self, idx: usize, at: Time) {
        let state = &mut self.tasks[idx];
        state.last_release = Some(at);
        let task = state.id;
        if state.backlog.len() >= MAX_BACKLOG {
            self.stats.jobs_skipped += 1;
            self.push_event(SchedEvent::JobSkipped { task, at });
            return;
        }
        let job = state.next_index;
        state.next_index += 1;
        let deadline = at.saturating_add(state.spec.deadline);
        state.backlog.push_back(Job {
            index: job,
            release: at,
            deadline,
            miss_reported: false,
        });
        self.stats.jobs_released += 1;
        self.push_event(SchedEvent::JobReleased {
            task,
            job,
            at,
            deadline,
        });
    }

    fn notice_misses(&mut self) {
        let now = self.now;
        let mut missed = Vec::new();
        for t in &mut self.tasks {
            for j in t.backlog.iter_mut() {
                if j.deadline < now && !j.miss_reported {
                    j.miss_reported = true;
                    missed.push(SchedEvent::DeadlineMiss {
                        task: t.id,
                        job: j.index,
                        deadline: j.deadline,
                        noticed_at: now,
                    });
                }
            }
        }
        self.stats.deadline_misses += missed.len() as u64;
        for e in missed {
            self.push_event(e);
        }
    }
}

fn min_opt(a: Option<Time>, b: Option<Time>) -> Option<Time> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}
