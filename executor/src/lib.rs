//! The executor: runs Wasm jobs on real threads under the [`sched`] core.
//!
//! `sched` decides, in a clock-free core, who should have the node's real-time CPU: the
//! node-bound periodic tasks at their fixed priorities, and the migrating jobs through one
//! aperiodic server (sporadic or polling) of budget `Cs` per `Ts`. This crate is the thin
//! shell that makes those decisions happen on real threads and feeds the core what really
//! happened. Nothing here decides anything the core could decide.
//!
//! * One **dispatcher thread** owns the [`sched::Scheduler`] (time in µs from a monotonic
//!   origin, taken when the executor is made) and the one CPU it schedules: at most one job
//!   runs at a time. Every Wasm job lives on its own thread (a stack of
//!   [`wasm_host::host::JOB_THREAD_STACK`]), but only the job the decision selects is told to
//!   run; the others sit paused ([`wasm_host::Outcome::Paused`]) waiting for their turn.
//! * **Preemption** is roam's own pause flag: [`wasm_host::PauseHandle::request`] on the
//!   running job when the decision changes (a higher-priority release, the server's budget
//!   running out at `next_event_at`). The job stops at its next yield point — a loop
//!   header, the entry of a function on a call cycle, a host call — which is also where a
//!   migrating job can be captured. roam does **not** use wasmtime's epoch interruption or
//!   fuel for this: both cost 15–60 % of run time on every job, while the pause flag the
//!   instrumentation already needs for migration costs one load and one branch per check
//!   and stops the job at the same kind of points. The price is that a job stops a little
//!   after the request (tens of µs); the core charges that overrun to the server, and the
//!   server's `overrun_allowance` makes admission count it.
//! * **Accounting**: a job's CPU time is the wall time between the dispatcher's decision to
//!   run it and the instant its thread saw `run()` return. The core charges it to the task
//!   or to the server ([`sched::Scheduler::advance_to`], then `complete`).
//! * **Node-bound tasks** ([`NodeTask`]) are long-running guests whose every release is one
//!   *instance*: the guest does its per-instance work and writes one line to stdout. The
//!   output sink ([`instance_sink`]) sees that line, counts the instance and requests a pause,
//!   so the job stops right after it; the dispatcher then completes the release. Guests need
//!   nothing but ordinary WASI output (see `guests/wat/ticker.wat`).
//! * **Migrating jobs** are submitted with [`Executor::submit_aperiodic`] and served FIFO by
//!   the server; [`Executor::preempt_and_take`] stops one and hands the paused job back, so
//!   that the caller can checkpoint it and move it.
//!
//! The executor guarantees that its jobs never run two at a time. Whether the OS gives
//! that one thread the CPU when the executor says so is the OS's business: by default the
//! threads are ordinary ones, and on a loaded machine a descheduled job shows up as server
//! overrun and as deadline misses. [`ExecOptions::realtime_priority`] asks for `SCHED_FIFO`
//! (the dispatcher one level above the jobs), which is what a node should run with; which
//! core the threads run on is left to the deployment (pinning to one core gives the
//! analysed schedule on that core).

mod dispatch;
mod marker;

use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use marker::{instance_sink, InstanceMarker};
pub use sched::{AperiodicId, ServerSpec, TaskId, TaskSpec, Time};

use sched::{SchedError, SchedStats};
use wasm_host::{HostError, Job};

/// At most this many samples (latencies, responses, server intervals, misses) are kept in
/// [`ExecStats`]; older ones are dropped (and counted) so a long-lived node stays bounded.
pub const MAX_SAMPLES: usize = 1 << 16;

/// Errors of the executor.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Sched(#[from] SchedError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("the executor has stopped")]
    Stopped,
    #[error("aperiodic job {0:?} is not queued here")]
    UnknownJob(AperiodicId),
    #[error("aperiodic job {0:?} finished before it could be paused")]
    AlreadyFinished(AperiodicId),
    #[error("cannot start a job thread: {0}")]
    Spawn(String),
    #[error("aperiodic job {0:?} runs on its owner's thread: its owner checkpoints it")]
    Attached(AperiodicId),
}

/// Tells an attached job's runner to run it (one turn); false when the runner is gone.
pub type Grant = Box<dyn Fn() -> bool + Send>;

/// A node-bound periodic task: its timing parameters and the long-running job whose
/// instances serve its releases. Make it with [`NodeTask::new`] from a job whose output
/// sink came from [`instance_sink`].
pub struct NodeTask {
    pub spec: TaskSpec,
    job: Job,
    marker: InstanceMarker,
}

impl NodeTask {
    /// `job` must write to `marker`'s sink: one stdout line ends one instance.
    pub fn new(spec: TaskSpec, job: Job, marker: InstanceMarker) -> NodeTask {
        NodeTask { spec, job, marker }
    }
}

/// A migrating job the executor refused, handed back so that it is not lost.
#[derive(thiserror::Error)]
#[error("aperiodic job refused: {error}")]
pub struct Rejected {
    pub error: ExecError,
    pub job: Option<Box<Job>>,
}

impl std::fmt::Debug for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejected")
            .field("error", &self.error)
            .field("job", &self.job.is_some())
            .finish()
    }
}

impl std::fmt::Debug for NodeTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTask")
            .field("spec", &self.spec)
            .finish()
    }
}

/// A migrating job that ended (exit or failure), with the job itself.
pub struct Finished {
    pub id: AperiodicId,
    pub result: Result<i32, HostError>,
    /// Submission to exit, in µs.
    pub response: Time,
    pub job: Job,
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finished")
            .field("id", &self.id)
            .field("result", &self.result)
            .field("response", &self.response)
            .finish()
    }
}

/// A node-bound job that missed its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Miss {
    pub task: TaskId,
    pub job: u64,
    pub deadline: Time,
    pub noticed_at: Time,
}

/// What the executor measured, on the executor's clock (µs since it was made).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ExecStats {
    /// The core's own counters (its accounting of server execution and overruns).
    pub sched: SchedStats,
    pub elapsed: Time,
    pub server_budget: Time,
    pub server_period: Time,
    /// Released node-bound jobs whose deadline has passed.
    pub jobs_due: u64,
    pub misses: Vec<Miss>,
    /// Pause request → the job's thread saw `run()` return, per preemption (µs).
    pub preempt_latency: Vec<Time>,
    /// Pause request → the guest's yield point saw it, per preemption (µs).
    pub yield_latency: Vec<Time>,
    /// Migrating jobs: submission → exit (µs).
    pub aperiodic_response: Vec<(AperiodicId, Time)>,
    /// Merged `[start, end)` intervals during which a migrating job ran at the server's
    /// priority.
    pub server_intervals: Vec<(Time, Time)>,
    /// Completed instances of each node-bound task.
    pub instances: Vec<(TaskId, u64)>,
    /// Jobs that failed or node-bound jobs that exited, as text.
    pub errors: Vec<String>,
    /// Samples dropped to stay within [`MAX_SAMPLES`].
    pub samples_dropped: u64,
    /// Every thread got the `SCHED_FIFO` priority asked for in [`ExecOptions`].
    pub realtime: bool,
}

impl ExecStats {
    /// Deadline misses over released node-bound jobs whose deadline has passed.
    pub fn deadline_miss_rate(&self) -> f64 {
        if self.jobs_due == 0 {
            return 0.0;
        }
        self.sched.deadline_misses as f64 / self.jobs_due as f64
    }

    /// Most the server ran in any sliding window of length `Ts`.
    pub fn server_max_in_window(&self) -> Time {
        sched::sim::max_in_window(&self.server_intervals, self.server_period)
    }

    /// How far [`ExecStats::server_max_in_window`] exceeds `Cs` (the figure the simulated
    /// benchmark calls `server_overrun_max_us`).
    pub fn server_overrun_max(&self) -> Time {
        self.server_max_in_window()
            .saturating_sub(self.server_budget)
    }

    /// The `p`-quantile (0..=1) of the preemption latencies.
    pub fn preempt_latency_quantile(&self, p: f64) -> Option<Time> {
        quantile(self.preempt_latency.clone(), p)
    }

    /// The `p`-quantile (0..=1) of the migrating jobs' response times.
    pub fn response_quantile(&self, p: f64) -> Option<Time> {
        quantile(self.aperiodic_response.iter().map(|(_, r)| *r).collect(), p)
    }

    /// The most CPU the core's own accounting allows the server over the run: `Cs` per
    /// period it could have started in, plus every overrun it charged.
    pub fn server_bound(&self) -> Time {
        let windows = self.elapsed.div_ceil(self.server_period.max(1)) + 1;
        windows * self.server_budget + self.sched.overrun_total
    }
}

/// Nearest-rank quantile.
pub fn quantile(mut v: Vec<Time>, p: f64) -> Option<Time> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let idx = ((v.len() - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize;
    v.get(idx).copied()
}

/// Requests to the dispatcher, and reports from job threads.
pub(crate) enum Msg {
    Admit(Box<NodeTask>, mpsc::Sender<Result<TaskId, ExecError>>),
    Submit(Box<Job>, Time, mpsc::Sender<Result<AperiodicId, Rejected>>),
    Take(AperiodicId, mpsc::Sender<Result<Job, ExecError>>),
    Stats(mpsc::Sender<ExecStats>),
    Spare(mpsc::Sender<sched::SpareCapacity>),
    Shutdown(mpsc::Sender<ExecStats>),
    Report(dispatch::Report),
    /// A job thread could not get its `SCHED_FIFO` priority.
    NotRealtime,
    Attach {
        pause: wasm_host::PauseHandle,
        grant: Grant,
        hint: Time,
        reply: mpsc::Sender<Result<AperiodicId, ExecError>>,
    },
    TurnEnded {
        id: AperiodicId,
        stopped_at: Instant,
        pause_seen: Option<Instant>,
        result: Result<wasm_host::Outcome, HostError>,
    },
    /// `true`: out of the server's queue; `false`: back in.
    Hold(AperiodicId, bool),
    Detach(AperiodicId),
}

/// How the executor's threads are set up.
#[derive(Clone, Debug, Default)]
pub struct ExecOptions {
    /// Run the job threads at this `SCHED_FIFO` priority and the dispatcher one above
    /// (1..=98). Needs `CAP_SYS_NICE` or an `RLIMIT_RTPRIO`; when refused the threads stay
    /// ordinary and [`ExecStats::realtime`] says so.
    pub realtime_priority: Option<i32>,
    /// Round robin among migrating jobs: the running one yields to the next queued one
    /// after this much CPU (at least 100 µs). `None`: first come, first served to the end
    /// (the right thing for short requests; long-running jobs would starve the others).
    pub aperiodic_quantum: Option<Duration>,
}

/// Runs node-bound tasks and migrating jobs on real threads; see the crate documentation.
/// `Sync`: one thread may submit while another collects what finished.
pub struct Executor {
    tx: mpsc::Sender<Msg>,
    finished: Mutex<mpsc::Receiver<Finished>>,
    thread: Option<thread::JoinHandle<()>>,
    origin: Instant,
}

impl Executor {
    /// An executor with the given server and node-bound tasks, admitted in order (response
    /// time analysis; the first refused task is an error). Starts the dispatcher.
    pub fn new(server: ServerSpec, tasks: Vec<NodeTask>) -> Result<Executor, ExecError> {
        Executor::with_options(server, tasks, ExecOptions::default())
    }

    /// [`Executor::new`] with thread options.
    pub fn with_options(
        server: ServerSpec,
        tasks: Vec<NodeTask>,
        options: ExecOptions,
    ) -> Result<Executor, ExecError> {
        let origin = Instant::now();
        let (tx, rx) = mpsc::channel();
        let (done_tx, finished) = mpsc::channel();
        let mut d = dispatch::Dispatcher::new(server, origin, tx.clone(), rx, done_tx, options)?;
        for task in tasks {
            d.admit(task, 0)?;
        }
        let thread = thread::Builder::new()
            .name("roam-executor".into())
            .spawn(move || d.run())
            .map_err(|e| ExecError::Spawn(e.to_string()))?;
        Ok(Executor {
            tx,
            finished: Mutex::new(finished),
            thread: Some(thread),
            origin,
        })
    }

    /// The executor's clock: µs since it was made.
    pub fn now(&self) -> Time {
        self.origin.elapsed().as_micros() as Time
    }

    fn ask<T>(&self, msg: impl FnOnce(mpsc::Sender<T>) -> Msg) -> Result<T, ExecError> {
        let (reply, rx) = mpsc::channel();
        self.tx.send(msg(reply)).map_err(|_| ExecError::Stopped)?;
        rx.recv().map_err(|_| ExecError::Stopped)
    }

    /// Admits a node-bound task now (its first release at `now + offset`).
    pub fn admit(&self, task: NodeTask) -> Result<TaskId, ExecError> {
        self.ask(|r| Msg::Admit(Box::new(task), r))?
    }

    /// Queues a migrating job (fresh or paused) behind the server. `work_hint` (µs) is only
    /// reported in the core's spare-capacity figures.
    pub fn submit_aperiodic(&self, job: Job, work_hint: Time) -> Result<AperiodicId, Rejected> {
        let (reply, rx) = mpsc::channel();
        if let Err(mpsc::SendError(msg)) =
            self.tx.send(Msg::Submit(Box::new(job), work_hint, reply))
        {
            let job = match msg {
                Msg::Submit(job, _, _) => Some(job),
                _ => None,
            };
            return Err(Rejected {
                error: ExecError::Stopped,
                job,
            });
        }
        rx.recv().map_err(|_| Rejected {
            error: ExecError::Stopped,
            job: None,
        })?
    }

    /// Puts a migrating job whose thread the caller owns behind the server. The executor
    /// calls `grant` when the job may run one turn and raises `pause` to end the turn; the
    /// runner runs the job and reports every stop with [`AttachedJob::turn_ended`]. This
    /// is how a node keeps its own job threads (which also checkpoint and hand jobs over)
    /// while the executor decides when they get the CPU.
    pub fn attach(
        &self,
        pause: wasm_host::PauseHandle,
        work_hint: Time,
        grant: Grant,
    ) -> Result<AttachedJob, ExecError> {
        let id = self.ask(|reply| Msg::Attach {
            pause,
            grant,
            hint: work_hint,
            reply,
        })??;
        Ok(AttachedJob {
            id,
            tx: self.tx.clone(),
        })
    }

    /// Stops a migrating job (at its next yield point if it is running), takes it out of
    /// the server's queue and returns it, paused, for a checkpoint. A job that never ran
    /// comes back as it was given (not paused).
    pub fn preempt_and_take(&self, id: AperiodicId) -> Result<Job, ExecError> {
        self.ask(|r| Msg::Take(id, r))?
    }

    /// What was measured so far.
    pub fn stats(&self) -> Result<ExecStats, ExecError> {
        self.ask(Msg::Stats)
    }

    /// The server's share and what admission could still give it (the Solver's view of
    /// this node's capacity for migrating jobs).
    pub fn spare_capacity(&self) -> Result<sched::SpareCapacity, ExecError> {
        self.ask(Msg::Spare)
    }

    /// Stops the dispatcher and every job at its next yield point (node shutdown) and
    /// returns the figures; the executor only answers `Stopped` afterwards.
    pub fn stop(&self) -> Result<ExecStats, ExecError> {
        self.ask(Msg::Shutdown)
    }

    /// The next migrating job to end, waiting up to `timeout`.
    pub fn next_finished(&self, timeout: Duration) -> Option<Finished> {
        self.finished.lock().ok()?.recv_timeout(timeout).ok()
    }

    /// Stops every job at its next yield point, ends the threads and returns the figures.
    /// Paused jobs still queued are dropped.
    pub fn shutdown(mut self) -> Result<ExecStats, ExecError> {
        let stats = self.ask(Msg::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        stats
    }
}

/// The runner's end of an attached job ([`Executor::attach`]). Dropping it takes the job
/// out of the executor.
pub struct AttachedJob {
    id: AperiodicId,
    tx: mpsc::Sender<Msg>,
}

impl AttachedJob {
    pub fn id(&self) -> AperiodicId {
        self.id
    }

    /// The job's `run()` returned at `stopped_at` with `result` (a turn ends with every
    /// return, paused or ended). After an exit or a failure the job leaves the server.
    pub fn turn_ended(
        &self,
        stopped_at: Instant,
        pause_seen: Option<Instant>,
        result: Result<wasm_host::Outcome, HostError>,
    ) {
        let _ = self.tx.send(Msg::TurnEnded {
            id: self.id,
            stopped_at,
            pause_seen,
            result,
        });
    }

    /// Takes the job out of the server's queue (it waits for a handover) or, with
    /// `false`, puts it back at the end.
    pub fn hold(&self, hold: bool) {
        let _ = self.tx.send(Msg::Hold(self.id, hold));
    }
}

impl Drop for AttachedJob {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Detach(self.id));
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let (reply, rx) = mpsc::channel();
            if self.tx.send(Msg::Shutdown(reply)).is_ok() {
                let _ = rx.recv();
            }
            let _ = t.join();
        }
    }
}
