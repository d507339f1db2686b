//! The pure core of node scheduling in roam.
//!
//! A roam node runs two kinds of work on one CPU:
//!
//! * **node-bound real-time jobs** (an autopilot loop, a sensor filter): periodic or
//!   sporadic tasks with a period, a relative deadline, a worst-case execution time and a
//!   fixed priority;
//! * **migrating jobs** that arrive from the swarm at any time and must never hurt the
//!   node-bound jobs. They are queued FIFO and served by ONE aperiodic server — a
//!   [sporadic server](server) with the corrected rules of Stanovich et al. (RTAS 2010), or
//!   for comparison a polling server of the same budget — so that, whatever arrives, their
//!   interference is that of a periodic task of budget `Cs` per period `Ts`.
//!
//! Everything here is sans-IO: no clock, no threads, no actix. [`Scheduler`] is a plain
//! struct that is told the time (a [`Time`] passed into every call), fed events
//! ([`Scheduler::aperiodic_arrival`], [`Scheduler::complete`], [`Scheduler::on_tick`]) and
//! polled for decisions ([`Scheduler::decide`]). A shell that owns real worker threads runs
//! what the decision says until `next_event_at` or until the job completes, and calls back.
//! The same struct is driven by the discrete-event simulator in [`sim`], which the tests and
//! the benchmark use.
//!
//! Admission is by fixed-priority response-time analysis ([`rta`]), with the server modelled
//! as a periodic task `(Cs + overrun allowance, Ts)` at its priority: a task set RTA finds
//! unschedulable is refused with an error that names the task that misses and by how much.
//!
//! Time is a `u64` in one unit throughout; the core does not care which. roam uses
//! microseconds (the benchmark and the shell), the hand-worked tests use small integers.

pub mod rta;
mod scheduler;
pub mod server;
pub mod sim;

use serde::{Deserialize, Serialize};

pub use scheduler::{
    AperiodicId, Decision, Runnable, SchedEvent, SchedStats, Scheduler, SpareCapacity, TaskId,
    MAX_BACKLOG, MAX_EVENTS, MAX_NAME, MAX_TASKS,
};
pub use server::Replenishment;

/// A point in (or a span of) time, in the unit the caller uses everywhere (roam: µs).
pub type Time = u64;

/// A fixed priority. **Higher value = more urgent.** Priorities are unique per scheduler
/// (tasks and the server), so that dispatch and response-time analysis are unambiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Priority(pub u32);

/// How the jobs of a node-bound task are released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// Released by the core every `period`, the first time `offset` after admission.
    Periodic { offset: Time },
    /// Released by the shell through [`Scheduler::release`], at least `period` apart.
    Sporadic,
}

/// A node-bound real-time task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub name: String,
    /// Period (periodic) or minimum inter-arrival time (sporadic).
    pub period: Time,
    /// Relative deadline, `wcet <= deadline <= period` (constrained deadlines).
    pub deadline: Time,
    /// Worst-case execution time of one job.
    pub wcet: Time,
    pub priority: Priority,
    pub activation: Activation,
}

impl TaskSpec {
    /// A periodic task with implicit deadline (`deadline == period`) released at admission.
    pub fn periodic(name: &str, wcet: Time, period: Time, priority: u32) -> Self {
        TaskSpec {
            name: name.to_string(),
            period,
            deadline: period,
            wcet,
            priority: Priority(priority),
            activation: Activation::Periodic { offset: 0 },
        }
    }

    pub fn with_deadline(mut self, deadline: Time) -> Self {
        self.deadline = deadline;
        self
    }

    pub fn with_offset(mut self, offset: Time) -> Self {
        self.activation = Activation::Periodic { offset };
        self
    }

    pub fn sporadic(mut self) -> Self {
        self.activation = Activation::Sporadic;
        self
    }

    /// `wcet / period`.
    pub fn utilisation(&self) -> f64 {
        self.wcet as f64 / self.period as f64
    }
}

/// Which aperiodic server serves the migrating jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerKind {
    /// Sporadic server with the corrected rules (see [`server`]); at most `max_repl`
    /// replenishments are kept (the available budget counts as one).
    Sporadic { max_repl: usize },
    /// Polling server: full budget at every multiple of `Ts` if work is queued then,
    /// budget discarded as soon as the queue is empty.
    Polling,
}

/// What happens to queued aperiodic work while the server has no budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exhausted {
    /// The server is suspended until budget comes back (the default: strict isolation).
    Suspend,
    /// The head aperiodic job may run below every node-bound task, only when the CPU would
    /// otherwise idle, without consuming budget (POSIX `sched_ss_low_priority` behaviour).
    Background,
}

/// The aperiodic server: budget `Cs` every `Ts` at a fixed priority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSpec {
    pub budget: Time,
    pub period: Time,
    pub priority: Priority,
    pub kind: ServerKind,
    pub exhausted: Exhausted,
    /// The most a job may run past the end of the budget before it stops (a Wasm job stops
    /// at its next yield point). The core charges every overrun to the server; admission
    /// counts the server as `budget + overrun_allowance` per `period`. 0 for exact stops.
    pub overrun_allowance: Time,
    /// Bound on the FIFO of queued aperiodic jobs.
    pub max_queue: usize,
}

impl ServerSpec {
    /// A sporadic server (`max_repl` 8, suspended when exhausted, exact stops).
    pub fn sporadic(budget: Time, period: Time, priority: u32) -> Self {
        ServerSpec {
            budget,
            period,
            priority: Priority(priority),
            kind: ServerKind::Sporadic { max_repl: 8 },
            exhausted: Exhausted::Suspend,
            overrun_allowance: 0,
            max_queue: 4096,
        }
    }

    /// A polling server with the same budget rules otherwise.
    pub fn polling(budget: Time, period: Time, priority: u32) -> Self {
        ServerSpec {
            kind: ServerKind::Polling,
            ..ServerSpec::sporadic(budget, period, priority)
        }
    }

    pub fn with_max_repl(mut self, max_repl: usize) -> Self {
        self.kind = ServerKind::Sporadic { max_repl };
        self
    }

    pub fn with_exhausted(mut self, exhausted: Exhausted) -> Self {
        self.exhausted = exhausted;
        self
    }

    pub fn with_overrun_allowance(mut self, allowance: Time) -> Self {
        self.overrun_allowance = allowance;
        self
    }

    /// `budget / period`: the share of the CPU the migrating jobs get at most.
    pub fn utilisation(&self) -> f64 {
        self.budget as f64 / self.period as f64
    }

    /// Name of the server in RTA results and errors.
    pub fn name(&self) -> &'static str {
        match self.kind {
            ServerKind::Sporadic { .. } => "sporadic server",
            ServerKind::Polling => "polling server",
        }
    }
}

/// Errors of the scheduling core. Every input comes from a shell that may be buggy, so
/// nothing here panics: bad input is refused with one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    /// Response-time analysis finds a task (or the server) that can miss its deadline.
    /// `response` is the worst-case response time found (`None`: unbounded, the
    /// higher-priority load alone saturates the CPU).
    #[error("{}", unschedulable_message(.task, .response, .deadline))]
    Unschedulable {
        task: String,
        response: Option<Time>,
        deadline: Time,
    },
    #[error("invalid task `{task}`: {reason}")]
    InvalidTask { task: String, reason: String },
    #[error("invalid server: {0}")]
    InvalidServer(String),
    #[error("priority {} is already used by `{}`", .priority.0, .holder)]
    PriorityTaken { priority: Priority, holder: String },
    #[error("at most {0} tasks per node")]
    TooManyTasks(usize),
    #[error("unknown task {0:?}")]
    UnknownTask(TaskId),
    #[error("task `{task}` released at {at}, earlier than its minimum inter-arrival allows ({earliest})")]
    ReleaseTooEarly {
        task: String,
        at: Time,
        earliest: Time,
    },
    #[error("task `{0}` is periodic: the core releases its jobs")]
    NotSporadic(String),
    #[error("aperiodic queue full ({0} jobs)")]
    QueueFull(usize),
    #[error("aperiodic job {0:?} is already queued")]
    DuplicateJob(AperiodicId),
    #[error("{0:?} is not a job the scheduler knows")]
    UnknownJob(Runnable),
}

fn unschedulable_message(task: &str, response: &Option<Time>, deadline: &Time) -> String {
    match response {
        Some(r) => format!(
            "`{task}` misses its deadline: worst-case response time {r} > deadline {deadline} (by {})",
            r.saturating_sub(*deadline)
        ),
        None => format!(
            "`{task}` misses its deadline {deadline}: response time unbounded (higher-priority load saturates the CPU)"
        ),
    }
}
