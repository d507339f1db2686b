//! The dispatcher thread and the job threads it drives.
//!
//! The dispatcher is an event loop over one channel: requests from the [`crate::Executor`]
//! handle and reports from job threads ("my `run()` returned"). Between events it sleeps
//! until the core's `next_event_at`. At every wake-up it asks a *copy* of the core what
//! should run: `decide` moves the core's notion of who has the CPU, and the running job
//! keeps the CPU until its thread reports that it stopped, so the real core is charged up
//! to that instant first and only then asked to decide.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use sched::{Runnable, SchedEvent, Scheduler};
use wasm_host::host::JOB_THREAD_STACK;
use wasm_host::{HostError, Job, Outcome, PauseHandle};

use crate::{
    AperiodicId, ExecError, ExecStats, Finished, InstanceMarker, Miss, Msg, NodeTask, Rejected,
    ServerSpec, TaskId, Time, MAX_SAMPLES,
};

/// Whose thread a report comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    Task(TaskId),
    Aperiodic(AperiodicId),
}

/// A job thread's `run()` returned.
pub(crate) struct Report {
    key: Key,
    stopped_at: Instant,
    pause_seen: Option<Instant>,
    result: Result<Outcome, HostError>,
    /// Instances finished so far (node-bound jobs).
    marks: u64,
    /// The job, when it ended (exit or failure): its thread is gone.
    job: Option<Box<Job>>,
}

enum Cmd {
    Run,
    Give(mpsc::Sender<Result<Job, crate::ExecError>>),
}

/// What runs a job when the dispatcher says so.
enum Driver {
    /// The executor's own thread, parked between runs.
    Thread {
        cmd: mpsc::Sender<Cmd>,
        thread: thread::JoinHandle<()>,
    },
    /// The caller's thread ([`crate::Executor::attach`]): told to run by `grant`, reports
    /// back through [`crate::AttachedJob::turn_ended`].
    External(crate::Grant),
}

/// A job's runner and the flag that preempts it.
struct Worker {
    driver: Driver,
    pause: PauseHandle,
}

impl Worker {
    /// Gives the job the CPU; false when its runner is gone.
    fn run(&self) -> bool {
        match &self.driver {
            Driver::Thread { cmd, .. } => cmd.send(Cmd::Run).is_ok(),
            Driver::External(grant) => grant(),
        }
    }

    fn into_thread(self) -> Option<thread::JoinHandle<()>> {
        match self.driver {
            Driver::Thread { thread, .. } => Some(thread),
            Driver::External(_) => None,
        }
    }
}

/// Puts the calling thread under `SCHED_FIFO` at `priority`; false if refused.
pub(crate) fn set_realtime(priority: i32) -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param {
            sched_priority: priority.clamp(1, 99),
        };
        // SAFETY: plain syscall wrapper on the calling thread with a valid parameter.
        let rc =
            unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
        if rc != 0 {
            tracing::warn!(
                priority,
                rc,
                "SCHED_FIFO refused; running as an ordinary thread"
            );
        }
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = priority;
        false
    }
}

fn spawn_worker(
    key: Key,
    job: Job,
    marker: Option<InstanceMarker>,
    tx: mpsc::Sender<Msg>,
    realtime: Option<i32>,
) -> Result<Worker, ExecError> {
    let pause = job.pause_handle();
    let (cmd, rx) = mpsc::channel::<Cmd>();
    let name = match key {
        Key::Task(t) => format!("roam-task-{}", t.0),
        Key::Aperiodic(a) => format!("roam-job-{}", a.0),
    };
    let thread = thread::Builder::new()
        .name(name)
        .stack_size(JOB_THREAD_STACK)
        .spawn(move || {
            if let Some(p) = realtime {
                if !set_realtime(p) {
                    let _ = tx.send(Msg::NotRealtime);
                }
            }
            let mut job = job;
            while let Ok(c) = rx.recv() {
                match c {
                    Cmd::Run => {
                        let result = job.run();
                        let stopped_at = Instant::now();
                        let ended = !matches!(result, Ok(Outcome::Paused));
                        let mut report = Report {
                            key,
                            stopped_at,
                            pause_seen: job.pause_seen_at(),
                            result,
                            marks: marker.as_ref().map_or(0, InstanceMarker::count),
                            job: None,
                        };
                        if ended {
                            report.job = Some(Box::new(job));
                            let _ = tx.send(Msg::Report(report));
                            return;
                        }
                        if tx.send(Msg::Report(report)).is_err() {
                            return;
                        }
                    }
                    Cmd::Give(reply) => {
                        let _ = reply.send(Ok(job));
                        return;
                    }
                }
            }
        })
        .map_err(|e| ExecError::Spawn(e.to_string()))?;
    Ok(Worker {
        driver: Driver::Thread { cmd, thread },
        pause,
    })
}

struct TaskSlot {
    name: String,
    worker: Option<Worker>,
    marks: u64,
    instances: u64,
}

struct ApSlot {
    /// The job until its thread is started (at its first dispatch).
    job: Option<Box<Job>>,
    worker: Option<Worker>,
    arrival: Time,
    work_hint: Time,
    /// Out of the server's queue until resumed (an attached job held by its owner).
    held: bool,
    /// Its owner is done with it: forget it once it stops.
    detached: bool,
}

struct Running {
    runnable: Runnable,
    key: Key,
    since: Time,
    marks_before: u64,
    preempt_at: Option<Instant>,
    /// Preempted because its quantum ran out: goes to the back of the server's queue.
    rotate: bool,
}

pub(crate) struct Dispatcher {
    sched: Scheduler,
    origin: Instant,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    finished: mpsc::Sender<Finished>,
    tasks: HashMap<TaskId, TaskSlot>,
    aperiodic: HashMap<AperiodicId, ApSlot>,
    next_aperiodic: u64,
    running: Option<Running>,
    /// Deadlines of released node-bound jobs that have not passed yet.
    due: BinaryHeap<Reverse<Time>>,
    stats: ExecStats,
    takes: Vec<(AperiodicId, mpsc::Sender<Result<Job, ExecError>>)>,
    shutdown: Option<mpsc::Sender<ExecStats>>,
    realtime: Option<i32>,
    quantum: Option<Time>,
}

impl ApSlot {
    fn new(job: Option<Box<Job>>, arrival: Time, work_hint: Time) -> ApSlot {
        ApSlot {
            job,
            worker: None,
            arrival,
            work_hint,
            held: false,
            detached: false,
        }
    }
}

fn push_bounded<T>(v: &mut Vec<T>, x: T, dropped: &mut u64) {
    if v.len() >= MAX_SAMPLES {
        let half = MAX_SAMPLES / 2;
        v.drain(..half);
        *dropped += half as u64;
    }
    v.push(x);
}

impl Dispatcher {
    pub(crate) fn new(
        server: ServerSpec,
        origin: Instant,
        tx: mpsc::Sender<Msg>,
        rx: mpsc::Receiver<Msg>,
        finished: mpsc::Sender<Finished>,
        options: crate::ExecOptions,
    ) -> Result<Dispatcher, ExecError> {
        let stats = ExecStats {
            server_budget: server.budget,
            server_period: server.period,
            realtime: options.realtime_priority.is_some(),
            ..ExecStats::default()
        };
        Ok(Dispatcher {
            sched: Scheduler::new(server, 0)?,
            origin,
            tx,
            rx,
            finished,
            tasks: HashMap::new(),
            aperiodic: HashMap::new(),
            next_aperiodic: 0,
            running: None,
            due: BinaryHeap::new(),
            stats,
            takes: Vec::new(),
            shutdown: None,
            realtime: options.realtime_priority.map(|p| p.clamp(1, 98)),
            quantum: options
                .aperiodic_quantum
                .map(|q| (q.as_micros() as Time).max(100)),
        })
    }

    fn us(&self, t: Instant) -> Time {
        t.saturating_duration_since(self.origin).as_micros() as Time
    }

    fn now(&self) -> Time {
        self.us(Instant::now())
    }

    pub(crate) fn admit(&mut self, task: NodeTask, now: Time) -> Result<TaskId, ExecError> {
        let NodeTask { spec, job, marker } = task;
        let name = spec.name.clone();
        let id = self.sched.admit(now, spec)?;
        marker.arm(job.pause_handle());
        let marks = marker.count();
        match spawn_worker(
            Key::Task(id),
            job,
            Some(marker),
            self.tx.clone(),
            self.realtime,
        ) {
            Ok(worker) => {
                self.tasks.insert(
                    id,
                    TaskSlot {
                        name,
                        worker: Some(worker),
                        marks,
                        instances: 0,
                    },
                );
                self.absorb();
                Ok(id)
            }
            Err(e) => {
                let _ = self.sched.remove(now, id);
                self.sched.drain_events();
                Err(e)
            }
        }
    }

    pub(crate) fn run(mut self) {
        if let Some(p) = self.realtime {
            if !set_realtime(p + 1) {
                self.stats.realtime = false;
            }
        }
        loop {
            if self.shutdown.is_some() && self.running.is_none() {
                break;
            }
            let now = self.now();
            let wake = self.step(now);
            let msg = match wake {
                Some(t) if t <= now => match self.rx.try_recv() {
                    Ok(m) => m,
                    Err(mpsc::TryRecvError::Empty) => continue,
                    Err(mpsc::TryRecvError::Disconnected) => break,
                },
                Some(t) => match self.rx.recv_timeout(Duration::from_micros(t - now)) {
                    Ok(m) => m,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
                None => match self.rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                },
            };
            self.handle(msg);
        }
        self.finish();
    }

    /// Makes the core's decision happen; returns when to wake up (`None`: on a message).
    fn step(&mut self, now: Time) -> Option<Time> {
        match &self.running {
            None if self.shutdown.is_some() => None,
            None => {
                let d = self.sched.decide(now);
                self.absorb();
                if let Some(r) = d.run {
                    self.dispatch(r, now);
                }
                if self.running.is_none() && d.run.is_some() {
                    // Dispatch failed and completed the runnable: decide again at once.
                    return Some(now);
                }
                d.next_event_at
            }
            Some(r) if r.preempt_at.is_none() => {
                let mut peek = self.sched.clone();
                let d = peek.decide(now);
                // Round robin among migrating jobs: the one running yields after a quantum
                // when another waits.
                let quantum_end = match (r.runnable, self.quantum) {
                    (Runnable::Aperiodic { .. }, Some(q)) if peek.queued() > 1 => Some(r.since + q),
                    _ => None,
                };
                if d.run == Some(r.runnable)
                    && self.shutdown.is_none()
                    && quantum_end.is_none_or(|end| end > now)
                {
                    self.sched = peek;
                    self.absorb();
                    match (d.next_event_at, quantum_end) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    }
                } else {
                    if d.run == Some(r.runnable) && self.shutdown.is_none() {
                        if let Some(r) = self.running.as_mut() {
                            r.rotate = true;
                        }
                    }
                    self.preempt();
                    None
                }
            }
            Some(_) => None,
        }
    }

    fn preempt(&mut self) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        if r.preempt_at.is_some() {
            return;
        }
        let worker = match r.key {
            Key::Task(t) => self.tasks.get(&t).and_then(|s| s.worker.as_ref()),
            Key::Aperiodic(a) => self.aperiodic.get(&a).and_then(|s| s.worker.as_ref()),
        };
        if let Some(w) = worker {
            r.preempt_at = Some(Instant::now());
            w.pause.request();
        }
    }

    fn dispatch(&mut self, runnable: Runnable, now: Time) {
        let (key, marks_before) = match runnable {
            Runnable::Periodic { task, .. } => (
                Key::Task(task),
                self.tasks.get(&task).map_or(0, |s| s.marks),
            ),
            Runnable::Aperiodic { job, .. } => (Key::Aperiodic(job), 0),
        };
        let sent = match key {
            Key::Task(t) => self
                .tasks
                .get(&t)
                .and_then(|s| s.worker.as_ref())
                .is_some_and(Worker::run),
            Key::Aperiodic(a) => self.start_aperiodic(a),
        };
        if sent {
            self.running = Some(Running {
                runnable,
                key,
                since: now,
                marks_before,
                preempt_at: None,
                rotate: false,
            });
            return;
        }
        // The job is gone (a node-bound job that exited, a thread that could not start):
        // its release is completed at once so that the others go on.
        if let Err(e) = self.sched.complete(now, runnable) {
            tracing::warn!(error = %e, "completing an undispatchable job");
        }
        if let Key::Aperiodic(a) = key {
            self.aperiodic.remove(&a);
        }
        self.absorb();
    }

    fn start_aperiodic(&mut self, id: AperiodicId) -> bool {
        let tx = self.tx.clone();
        let Some(slot) = self.aperiodic.get_mut(&id) else {
            return false;
        };
        if slot.worker.is_none() {
            let Some(job) = slot.job.take() else {
                return false;
            };
            match spawn_worker(Key::Aperiodic(id), *job, None, tx, self.realtime) {
                Ok(w) => slot.worker = Some(w),
                Err(e) => {
                    push_bounded(
                        &mut self.stats.errors,
                        format!("job {}: {e}", id.0),
                        &mut self.stats.samples_dropped,
                    );
                    return false;
                }
            }
        }
        slot.worker.as_ref().is_some_and(Worker::run)
    }

    fn handle(&mut self, msg: Msg) {
        let now = self.now();
        match msg {
            Msg::Report(rep) => self.on_report(rep),
            Msg::NotRealtime => self.stats.realtime = false,
            Msg::Admit(task, reply) => {
                let r = self.admit(*task, now);
                let _ = reply.send(r);
            }
            Msg::Attach {
                pause,
                grant,
                hint,
                reply,
            } => {
                let id = AperiodicId(self.next_aperiodic);
                let r = self.sched.aperiodic_arrival(now, id, hint).map(|()| {
                    self.next_aperiodic += 1;
                    let mut slot = ApSlot::new(None, now, hint);
                    slot.worker = Some(Worker {
                        driver: Driver::External(grant),
                        pause,
                    });
                    self.aperiodic.insert(id, slot);
                    id
                });
                let _ = reply.send(r.map_err(ExecError::from));
                self.absorb();
            }
            Msg::TurnEnded {
                id,
                stopped_at,
                pause_seen,
                result,
            } => self.on_report(Report {
                key: Key::Aperiodic(id),
                stopped_at,
                pause_seen,
                result,
                marks: 0,
                job: None,
            }),
            Msg::Hold(id, hold) => self.hold(id, hold, now),
            Msg::Detach(id) => {
                let running = self
                    .running
                    .as_ref()
                    .is_some_and(|r| r.key == Key::Aperiodic(id));
                if running {
                    if let Some(slot) = self.aperiodic.get_mut(&id) {
                        slot.detached = true;
                    }
                    self.preempt();
                } else if self.aperiodic.remove(&id).is_some() {
                    self.sched.remove_aperiodic(now, id);
                    self.absorb();
                }
            }
            Msg::Submit(job, hint, reply) => {
                let id = AperiodicId(self.next_aperiodic);
                match self.sched.aperiodic_arrival(now, id, hint) {
                    Ok(()) => {
                        self.next_aperiodic += 1;
                        self.aperiodic.insert(id, ApSlot::new(Some(job), now, hint));
                        let _ = reply.send(Ok(id));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Rejected {
                            error: e.into(),
                            job: Some(job),
                        }));
                    }
                }
                self.absorb();
            }
            Msg::Take(id, reply) => {
                if !self.aperiodic.contains_key(&id) {
                    let _ = reply.send(Err(ExecError::UnknownJob(id)));
                    return;
                }
                let running = self
                    .running
                    .as_ref()
                    .is_some_and(|r| r.key == Key::Aperiodic(id));
                if running {
                    self.takes.push((id, reply));
                    self.preempt();
                } else {
                    self.take(id, now, reply);
                }
            }
            Msg::Stats(reply) => {
                let _ = reply.send(self.snapshot(now));
            }
            Msg::Spare(reply) => {
                let _ = reply.send(self.sched.spare_capacity());
            }
            Msg::Shutdown(reply) => {
                self.shutdown = Some(reply);
                self.preempt();
            }
        }
    }

    /// Takes an attached job out of the server's queue (`hold`) or puts it back. A running
    /// one is stopped first; it leaves the queue when its turn ends.
    fn hold(&mut self, id: AperiodicId, hold: bool, now: Time) {
        let running = self
            .running
            .as_ref()
            .is_some_and(|r| r.key == Key::Aperiodic(id));
        let Some(slot) = self.aperiodic.get_mut(&id) else {
            return;
        };
        if slot.held == hold {
            return;
        }
        slot.held = hold;
        if hold {
            if running {
                self.preempt();
            } else {
                self.sched.remove_aperiodic(now, id);
            }
        } else if !self.sched.queue_contains(id) {
            let hint = slot.work_hint;
            if let Err(e) = self.sched.aperiodic_arrival(now, id, hint) {
                tracing::warn!(error = %e, job = id.0, "cannot put a held job back");
            }
        }
        self.absorb();
    }

    /// Hands a paused (or never started) migrating job to the caller.
    fn take(&mut self, id: AperiodicId, now: Time, reply: mpsc::Sender<Result<Job, ExecError>>) {
        let Some(slot) = self.aperiodic.remove(&id) else {
            let _ = reply.send(Err(ExecError::UnknownJob(id)));
            return;
        };
        self.sched.remove_aperiodic(now, id);
        self.absorb();
        if let Some(job) = slot.job {
            let _ = reply.send(Ok(*job));
        } else if let Some(w) = slot.worker {
            match w.driver {
                Driver::Thread { cmd, thread } => {
                    if let Err(mpsc::SendError(Cmd::Give(reply))) = cmd.send(Cmd::Give(reply)) {
                        let _ = reply.send(Err(ExecError::Stopped));
                    }
                    // The thread ends by itself once it has handed the job over: detached.
                    drop(thread);
                }
                Driver::External(_) => {
                    let _ = reply.send(Err(ExecError::Attached(id)));
                }
            }
        }
    }

    fn on_report(&mut self, rep: Report) {
        let Some(run) = self.running.take_if(|r| r.key == rep.key) else {
            tracing::warn!(key = ?rep.key, "report from a job that was not running");
            return;
        };
        let stop = self.us(rep.stopped_at).max(run.since);
        self.sched.advance_to(stop);
        if matches!(
            run.runnable,
            Runnable::Aperiodic {
                background: false,
                ..
            }
        ) && stop > run.since
        {
            match self.stats.server_intervals.last_mut() {
                Some(last) if last.1 >= run.since => last.1 = last.1.max(stop),
                _ => push_bounded(
                    &mut self.stats.server_intervals,
                    (run.since, stop),
                    &mut self.stats.samples_dropped,
                ),
            }
        }
        // A request that crossed a stop the job made on its own measures nothing.
        if let Some(req) = run.preempt_at.filter(|&req| rep.stopped_at >= req) {
            let d = &mut self.stats.samples_dropped;
            let lat = rep.stopped_at.saturating_duration_since(req).as_micros() as Time;
            push_bounded(&mut self.stats.preempt_latency, lat, d);
            if let Some(seen) = rep.pause_seen.filter(|&s| s >= req) {
                let lat = seen.saturating_duration_since(req).as_micros() as Time;
                push_bounded(&mut self.stats.yield_latency, lat, d);
            }
        }
        match rep.result {
            Ok(Outcome::Paused) => match rep.key {
                Key::Task(t) => {
                    if let Some(slot) = self.tasks.get_mut(&t) {
                        slot.marks = rep.marks;
                    }
                    if rep.marks > run.marks_before {
                        if let Some(slot) = self.tasks.get_mut(&t) {
                            slot.instances += 1;
                        }
                        self.complete(stop, run.runnable);
                    }
                }
                Key::Aperiodic(a) => {
                    let now = self.now();
                    let (held, detached) = self
                        .aperiodic
                        .get(&a)
                        .map_or((false, false), |s| (s.held, s.detached));
                    if detached {
                        self.aperiodic.remove(&a);
                        self.sched.remove_aperiodic(stop, a);
                    } else if held {
                        self.sched.remove_aperiodic(stop, a);
                    } else if run.rotate {
                        self.sched.rotate_aperiodic(stop, a);
                    }
                    let mut i = 0;
                    while i < self.takes.len() {
                        if self.takes[i].0 == a {
                            let (_, reply) = self.takes.swap_remove(i);
                            self.take(a, now, reply);
                        } else {
                            i += 1;
                        }
                    }
                }
            },
            result => {
                self.complete(stop, run.runnable);
                let result = result.map(|o| match o {
                    Outcome::Exited(code) => code,
                    Outcome::Paused => 0, // not reached: matched above
                });
                match rep.key {
                    Key::Task(t) => {
                        let slot = self.tasks.get_mut(&t);
                        let name = slot.as_ref().map_or(String::new(), |s| s.name.clone());
                        // Ended with its job: the thread is left detached.
                        drop(slot.and_then(|s| s.worker.take()).map(Worker::into_thread));
                        let what = match &result {
                            Ok(code) => format!("node-bound task `{name}` exited with {code}"),
                            Err(e) => format!("node-bound task `{name}` failed: {e}"),
                        };
                        tracing::warn!("{what}");
                        push_bounded(
                            &mut self.stats.errors,
                            what,
                            &mut self.stats.samples_dropped,
                        );
                    }
                    Key::Aperiodic(a) => self.aperiodic_ended(a, stop, result, rep.job),
                }
            }
        }
        // Nothing ran between the stop and now: the core must not charge that gap.
        let now = self.now();
        self.sched.on_tick(now, 0);
        self.absorb();
    }

    fn aperiodic_ended(
        &mut self,
        id: AperiodicId,
        stop: Time,
        result: Result<i32, HostError>,
        job: Option<Box<Job>>,
    ) {
        let Some(slot) = self.aperiodic.remove(&id) else {
            return;
        };
        // Ended with its job: the thread is left detached.
        drop(slot.worker.map(Worker::into_thread));
        let response = stop.saturating_sub(slot.arrival);
        let d = &mut self.stats.samples_dropped;
        push_bounded(&mut self.stats.aperiodic_response, (id, response), d);
        if let Err(e) = &result {
            push_bounded(&mut self.stats.errors, format!("job {}: {e}", id.0), d);
        }
        let mut i = 0;
        while i < self.takes.len() {
            if self.takes[i].0 == id {
                let (_, reply) = self.takes.swap_remove(i);
                let _ = reply.send(Err(ExecError::AlreadyFinished(id)));
            } else {
                i += 1;
            }
        }
        if let Some(job) = job {
            let _ = self.finished.send(Finished {
                id,
                result,
                response,
                job: *job,
            });
        }
    }

    fn complete(&mut self, at: Time, runnable: Runnable) {
        if let Err(e) = self.sched.complete(at, runnable) {
            tracing::warn!(error = %e, "core refused a completion");
        }
        self.absorb();
    }

    /// Takes the core's events into the figures.
    fn absorb(&mut self) {
        for e in self.sched.drain_events() {
            match e {
                SchedEvent::JobReleased { deadline, .. } => self.due.push(Reverse(deadline)),
                SchedEvent::DeadlineMiss {
                    task,
                    job,
                    deadline,
                    noticed_at,
                } => {
                    tracing::debug!(task = task.0, job, deadline, noticed_at, "deadline miss");
                    push_bounded(
                        &mut self.stats.misses,
                        Miss {
                            task,
                            job,
                            deadline,
                            noticed_at,
                        },
                        &mut self.stats.samples_dropped,
                    );
                }
                _ => {}
            }
        }
    }

    fn snapshot(&mut self, now: Time) -> ExecStats {
        while self.due.peek().is_some_and(|Reverse(d)| *d < now) {
            self.due.pop();
            self.stats.jobs_due += 1;
        }
        let mut s = self.stats.clone();
        s.sched = self.sched.stats();
        s.elapsed = now;
        let mut instances: Vec<(TaskId, u64)> = self
            .tasks
            .iter()
            .map(|(id, t)| (*id, t.instances))
            .collect();
        instances.sort_unstable();
        s.instances = instances;
        s
    }

    fn finish(mut self) {
        let now = self.now();
        self.sched.advance_to(now);
        self.absorb();
        let stats = self.snapshot(now);
        for (_, reply) in self.takes.drain(..) {
            let _ = reply.send(Err(ExecError::Stopped));
        }
        let mut threads: Vec<thread::JoinHandle<()>> = Vec::new();
        let workers = self.tasks.drain().filter_map(|(_, s)| s.worker);
        let workers = workers.chain(self.aperiodic.drain().filter_map(|(_, s)| s.worker));
        threads.extend(workers.filter_map(Worker::into_thread));
        // Every job is paused (the running one was stopped first); dropping the command
        // channels ends their threads.
        for t in threads {
            let _ = t.join();
        }
        if let Some(reply) = self.shutdown.take() {
            let _ = reply.send(stats);
        }
    }
}
