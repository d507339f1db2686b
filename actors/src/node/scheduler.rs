//! The Scheduler actor: the jobs that run on this node.
//!
//! It starts jobs on their own threads ([`super::runner`]) and is the one place that
//! knows whether a job here is running, paused for a move, or restored and waiting
//! for the go of a handover. The migration cores ask it for checkpoints, pauses,
//! resumes and drops. With `[sched]` on, the job threads run only in the turns the
//! node's executor grants (see [`super::cpu`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use actix::prelude::*;
use mesh::PeerId;
use store::Checkpoint;
use wasm_host::{Job, JobSpec, Limits, LoadedModule};

use super::proto::{JobLaunch, JobSummary};
use super::runner::{self, ForwardSink, RunnerCmd, RunnerCtx, RunnerEvent, RunnerHandle, Taken};
use super::Shared;

/// Finished jobs remembered for `roam ps`.
const FINISHED_KEPT: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Running,
    /// Paused by a move (source side) or a command.
    Paused,
    /// Restored from a move, waiting for the go (destination side). Never runs
    /// unless the migration core says so.
    Restored,
}

impl JobState {
    fn name(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Paused => "paused",
            JobState::Restored => "restored",
        }
    }
}

struct Entry {
    generation: u64,
    home: PeerId,
    state: JobState,
    runner: RunnerHandle,
    memory_bytes: u64,
    since: Instant,
    /// The checkpoint taken before the job's first instruction, until recovery asks for
    /// it ([`Op::FirstCheckpoint`]).
    birth: Option<oneshot::Receiver<Result<Taken, String>>>,
}

pub struct Scheduler {
    shared: Arc<Shared>,
    jobs: HashMap<String, Entry>,
    finished: Vec<JobSummary>,
}

impl Scheduler {
    pub fn new(shared: Arc<Shared>) -> Scheduler {
        Scheduler {
            shared,
            jobs: HashMap::new(),
            finished: Vec::new(),
        }
    }

    fn ctx(&self, job: &str, generation: u64, home: PeerId, me: Addr<Scheduler>) -> RunnerCtx {
        RunnerCtx {
            job_id: job.to_string(),
            home,
            generation,
            store: self.shared.store.clone(),
            output: self.shared.output.clone(),
            events: Box::new(move |e| me.do_send(Runner(e))),
            cpu: self.shared.cpu.clone(),
        }
    }

    pub fn limits(shared: &Shared) -> Limits {
        Limits {
            memory_bytes: Some(shared.config.jobs.memory_limit_mib << 20),
            cpu: None,
            snapshot_files_bytes: None,
        }
    }

    fn finish(&mut self, job: &str, state: String) {
        if let Some(e) = self.jobs.remove(job) {
            self.finished.push(JobSummary {
                job: job.to_string(),
                generation: e.generation,
                state,
                home: e.home.to_bytes(),
                memory_bytes: e.memory_bytes,
            });
            if self.finished.len() > FINISHED_KEPT {
                self.finished.remove(0);
            }
        }
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;
}

/// Start a job here from its (loaded, instrumented) module.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Start {
    pub launch: JobLaunch,
    pub module: Arc<LoadedModule>,
}

impl Handler<Start> for Scheduler {
    type Result = Result<(), String>;

    fn handle(&mut self, m: Start, ctx: &mut Context<Self>) -> Self::Result {
        let l = m.launch;
        if self.jobs.contains_key(&l.job) {
            return Err(format!("job {} already runs here", l.job));
        }
        let home = PeerId::from_bytes(&l.home).map_err(|e| format!("home peer id: {e}"))?;
        let mut spec = JobSpec::new(l.args);
        spec.env = l.env;
        spec.stdin = l.stdin;
        spec.seed = *blake3::hash(&l.seed.to_le_bytes()).as_bytes();
        spec.limits = Scheduler::limits(&self.shared);
        let sink = ForwardSink {
            job: l.job.clone(),
            home,
            tx: self.shared.output.clone(),
        };
        let job = Job::start(&self.shared.host, m.module, spec, Box::new(sink))
            .map_err(|e| format!("starting {}: {e}", l.job))?;
        let memory_bytes = job.memory_len() as u64;
        let runner = runner::spawn(job, None, true, self.ctx(&l.job, 0, home, ctx.address()))
            .map_err(|e| format!("spawning the job thread: {e}"))?;
        // With replicas, the job's first copy is its state before its first instruction:
        // memory as instantiated, usually far smaller than a moment later, so the first
        // acknowledged copy (until which a crash here loses the job) comes quickly. The
        // pause is raised before the thread runs the job, so it stops at its first yield
        // point.
        let birth = (self.shared.config.recovery.replicas > 0).then(|| {
            let (tx, rx) = oneshot::channel();
            match runner.send(RunnerCmd::Checkpoint(tx), true) {
                Ok(()) => Some(rx),
                Err(e) => {
                    tracing::debug!(job = %l.job, %e, "no checkpoint before the start");
                    None
                }
            }
        });
        tracing::info!(job = %l.job, node = %self.shared.name, "job started");
        self.jobs.insert(
            l.job,
            Entry {
                generation: 0,
                home,
                state: JobState::Running,
                runner,
                memory_bytes,
                since: Instant::now(),
                birth: birth.flatten(),
            },
        );
        Ok(())
    }
}

/// What the migration layer asks of a job.
pub enum Op {
    /// Incremental checkpoint; the job runs on.
    Checkpoint,
    /// The checkpoint taken before the job's first instruction (once; recovery's first
    /// copy of a job started here), else as `Checkpoint`.
    FirstCheckpoint,
    /// Checkpoint and stay paused.
    Pause,
    /// Run again (after Pause): the move aborted.
    Resume,
    /// Run the restored job at this generation: the move committed here.
    Go { generation: u64 },
    /// Forget the job here (it runs elsewhere now).
    Drop,
    /// Throw away a restored copy that never ran; anything else is left alone.
    DiscardRestored,
}

#[derive(Message)]
#[rtype(result = "Result<Option<Taken>, String>")]
pub struct Control {
    pub job: String,
    pub op: Op,
}

impl Handler<Control> for Scheduler {
    type Result = ResponseFuture<Result<Option<Taken>, String>>;

    fn handle(&mut self, m: Control, _: &mut Context<Self>) -> Self::Result {
        let Some(e) = self.jobs.get_mut(&m.job) else {
            let job = m.job;
            return Box::pin(async move { Err(format!("no job {job} here")) });
        };
        let running = e.state == JobState::Running;
        if matches!(m.op, Op::FirstCheckpoint) {
            if let Some(rx) = e.birth.take() {
                return Box::pin(async move {
                    let taken = rx
                        .await
                        .map_err(|_| "the job's thread ended".to_string())??;
                    Ok(Some(taken))
                });
            }
        }
        match m.op {
            Op::Checkpoint | Op::FirstCheckpoint | Op::Pause => {
                let pause = matches!(m.op, Op::Pause);
                let (tx, rx) = tokio::sync::oneshot::channel();
                let cmd = if pause {
                    RunnerCmd::Pause(tx)
                } else {
                    RunnerCmd::Checkpoint(tx)
                };
                if let Err(err) = e.runner.send(cmd, running) {
                    return Box::pin(async move { Err(err) });
                }
                if pause {
                    // Counted as paused from now: nothing else may resume it meanwhile.
                    e.state = JobState::Paused;
                    e.since = Instant::now();
                }
                Box::pin(async move {
                    let taken = rx
                        .await
                        .map_err(|_| "the job's thread ended".to_string())??;
                    Ok(Some(taken))
                })
            }
            Op::Resume | Op::Go { .. } => {
                let generation = match m.op {
                    Op::Go { generation } => generation,
                    _ => e.generation,
                };
                if e.state == JobState::Running {
                    return Box::pin(async { Ok(None) });
                }
                let r = e.runner.send(RunnerCmd::Resume { generation }, false);
                if r.is_ok() {
                    e.state = JobState::Running;
                    e.generation = generation;
                    e.since = Instant::now();
                }
                Box::pin(async move { r.map(|()| None) })
            }
            Op::DiscardRestored => {
                if e.state == JobState::Restored {
                    if let Some(e) = self.jobs.remove(&m.job) {
                        e.runner.kill();
                    }
                }
                Box::pin(async { Ok(None) })
            }
            Op::Drop => {
                if let Some(e) = self.jobs.remove(&m.job) {
                    e.runner.kill();
                }
                Box::pin(async { Ok(None) })
            }
        }
    }
}

/// A job restored by a move, paused until its go.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct InstallRestored {
    pub job_id: String,
    /// The generation it will run at.
    pub generation: u64,
    pub home: PeerId,
    pub job: Job,
    pub checkpoint: Checkpoint,
}

impl Handler<InstallRestored> for Scheduler {
    type Result = Result<(), String>;

    fn handle(&mut self, m: InstallRestored, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(old) = self.jobs.get(&m.job_id) {
            if old.state != JobState::Restored {
                return Err(format!("job {} already runs here", m.job_id));
            }
            old.runner.kill();
        }
        let memory_bytes = m.job.memory_len() as u64;
        let runner = runner::spawn(
            m.job,
            Some(m.checkpoint),
            false,
            self.ctx(&m.job_id, m.generation, m.home, ctx.address()),
        )
        .map_err(|e| format!("spawning the job thread: {e}"))?;
        self.jobs.insert(
            m.job_id,
            Entry {
                generation: m.generation,
                home: m.home,
                state: JobState::Restored,
                runner,
                memory_bytes,
                since: Instant::now(),
                birth: None,
            },
        );
        Ok(())
    }
}

/// From a job thread.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Runner(pub RunnerEvent);

impl Handler<Runner> for Scheduler {
    type Result = ();

    fn handle(&mut self, m: Runner, _: &mut Context<Self>) {
        match m.0 {
            RunnerEvent::Exited { job, code } => {
                tracing::info!(%job, code, node = %self.shared.name, "job exited");
                self.finish(&job, format!("exited({code})"));
            }
            RunnerEvent::Failed { job, error } => {
                tracing::warn!(%job, %error, node = %self.shared.name, "job failed");
                self.finish(&job, format!("failed: {error}"));
            }
        }
    }
}

/// Give a job up without ending it: its memory could not be completed after a
/// post-copy move (the job is poisoned and stops by itself). It is not reported as
/// ended; crash recovery resumes it elsewhere from its newest replicated checkpoint.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Abandon {
    pub job: String,
    /// The generation of the copy here (nothing happens if it differs).
    pub generation: u64,
    /// The newest generation that may have run anywhere, published as abandoned (so
    /// recovery starts above it): `generation`, or the destination's `generation + 1`
    /// when the copy is the paused source of a move that escalated.
    pub published: u64,
    /// Stop its runner too (a paused copy; a failed post-copy job stops by itself).
    pub kill: bool,
}

impl Handler<Abandon> for Scheduler {
    type Result = ();

    fn handle(&mut self, m: Abandon, _: &mut Context<Self>) {
        if self
            .jobs
            .get(&m.job)
            .is_some_and(|e| e.generation == m.generation)
        {
            if let Some(e) = self.jobs.remove(&m.job) {
                if m.kill {
                    e.runner.kill();
                }
            }
            tracing::warn!(job = %m.job, generation = m.generation, node = %self.shared.name,
                "job abandoned here: recovery resumes it from a replicated checkpoint");
            if let Ok(mut a) = self.shared.abandoned.lock() {
                a.insert(m.job, m.published.max(m.generation));
                while a.len() > 16 {
                    a.pop_first();
                }
            }
        }
    }
}

/// The jobs here (running, paused, restored), newest state.
#[derive(Message)]
#[rtype(result = "Vec<JobSummary>")]
pub struct List;

impl Handler<List> for Scheduler {
    type Result = MessageResult<List>;

    fn handle(&mut self, _: List, _: &mut Context<Self>) -> Self::Result {
        let mut v: Vec<JobSummary> = self
            .jobs
            .iter()
            .map(|(id, e)| JobSummary {
                job: id.clone(),
                generation: e.generation,
                state: e.state.name().to_string(),
                home: e.home.to_bytes(),
                memory_bytes: e.memory_bytes,
            })
            .collect();
        v.sort_by(|a, b| a.job.cmp(&b.job));
        MessageResult(v)
    }
}

/// Facts about one job here, for the migration layer.
#[derive(Message)]
#[rtype(result = "Option<(u64, PeerId, JobState)>")]
pub struct Lookup(pub String);

impl Handler<Lookup> for Scheduler {
    type Result = Option<(u64, PeerId, JobState)>;

    fn handle(&mut self, m: Lookup, _: &mut Context<Self>) -> Self::Result {
        self.jobs.get(&m.0).map(|e| (e.generation, e.home, e.state))
    }
}

/// Jobs that ended here (exited or failed), newest last: nobody must recover them.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct EndedJobs;

impl Handler<EndedJobs> for Scheduler {
    type Result = MessageResult<EndedJobs>;

    fn handle(&mut self, _: EndedJobs, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.finished.iter().map(|j| j.job.clone()).collect())
    }
}

/// Kill every job (node shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct KillAll;

impl Handler<KillAll> for Scheduler {
    type Result = ();

    fn handle(&mut self, _: KillAll, _: &mut Context<Self>) {
        for (_, e) in self.jobs.drain() {
            e.runner.kill();
        }
    }
}
