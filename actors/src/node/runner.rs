//! One OS thread per job: the only place Wasm executes.
//!
//! `Job::run` blocks until the job exits or reaches a yield point after a pause
//! request, so it never runs on an actor's event loop. The thread owns the job and
//! obeys [`RunnerCmd`]s: the controller queues a command and then raises the job's
//! pause flag; the thread, back from `run` with `Paused`, takes the command, carries it
//! out (an incremental checkpoint into the node's store, a pause for a handover, ...)
//! and runs on or waits. Output goes to the node's output pump as it is written,
//! through the same channel as the final `Exited`, so the pump sees every byte before
//! it learns the job ended.
//!
//! With a server configured (`[sched]`), the thread still owns its job but runs it only
//! in turns the node's [`executor::Executor`] grants ([`executor::Executor::attach`]):
//! the executor decides when migrating jobs get the CPU (behind the sporadic server, in
//! round robin) and ends a turn by raising the same pause flag commands use.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh::PeerId;
use store::{Checkpoint, Store};
use tokio::sync::{mpsc, oneshot};
use wasm_host::{HostError, Job, Outcome, OutputSink, PauseHandle, Stream};

use super::proto::StreamKind;

/// What the output pump receives from job threads.
#[derive(Debug)]
pub enum OutputEvent {
    Piece {
        job: String,
        home: PeerId,
        stream: StreamKind,
        offset: u64,
        data: Vec<u8>,
    },
    /// Every piece of this job was sent before this.
    Exited {
        job: String,
        home: PeerId,
        code: i32,
        stdout_len: u64,
        stderr_len: u64,
    },
}

/// What the job thread reports to the scheduler.
#[derive(Debug)]
pub enum RunnerEvent {
    Exited { job: String, code: i32 },
    Failed { job: String, error: String },
}

/// A checkpoint the runner took, with what it cost.
#[derive(Debug, Clone)]
pub struct Taken {
    pub checkpoint: Checkpoint,
    /// The manifest bytes as stored (their blake3 is the checkpoint id).
    pub manifest: Vec<u8>,
    /// From the pause request to the job stopped.
    pub stop: Duration,
    /// Writing the checkpoint.
    pub write: Duration,
    pub chunks_hashed: u64,
    pub memory_bytes: u64,
}

pub type Reply<T> = oneshot::Sender<Result<T, String>>;

/// Commands to a job thread.
pub enum RunnerCmd {
    /// Checkpoint (incrementally) and run on.
    Checkpoint(Reply<Taken>),
    /// Checkpoint and stay paused until `Resume` or `Stop`.
    Pause(Reply<Taken>),
    /// Run again (after `Pause`, or a restored job), at this generation.
    Resume { generation: u64 },
    /// End the thread; a running job is killed, a paused one dropped.
    Stop,
    /// The executor gives the job the CPU for one turn.
    Turn,
}

/// Sink that forwards output to the pump, tagged with the job and stream offset.
pub struct ForwardSink {
    pub job: String,
    pub home: PeerId,
    pub tx: mpsc::UnboundedSender<OutputEvent>,
}

impl OutputSink for ForwardSink {
    fn write(&mut self, stream: Stream, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let stream = match stream {
            Stream::Stdout => StreamKind::Stdout,
            Stream::Stderr => StreamKind::Stderr,
        };
        self.tx
            .send(OutputEvent::Piece {
                job: self.job.clone(),
                home: self.home,
                stream,
                offset,
                data: data.to_vec(),
            })
            .map_err(|_| std::io::Error::other("the node is shutting down"))
    }
}

/// The controller's end of a job thread.
pub struct RunnerHandle {
    tx: std_mpsc::Sender<RunnerCmd>,
    pause: PauseHandle,
    /// Raised while a command waits for the job to stop.
    requested_at: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl RunnerHandle {
    /// Queues `cmd`; if the job is running, asks it to stop so the thread sees it.
    pub fn send(&self, cmd: RunnerCmd, running: bool) -> Result<(), String> {
        let wake = running && matches!(cmd, RunnerCmd::Checkpoint(_) | RunnerCmd::Pause(_));
        self.tx
            .send(cmd)
            .map_err(|_| "the job's thread has ended".to_string())?;
        if wake {
            if let Ok(mut t) = self.requested_at.lock() {
                t.get_or_insert_with(Instant::now);
            }
            self.pause.request();
        }
        Ok(())
    }

    pub fn kill(&self) {
        self.pause.kill();
        let _ = self.tx.send(RunnerCmd::Stop);
    }
}

/// Everything a job thread needs besides the job.
pub struct RunnerCtx {
    pub job_id: String,
    pub home: PeerId,
    pub generation: u64,
    pub store: Arc<Store>,
    pub output: mpsc::UnboundedSender<OutputEvent>,
    pub events: Box<dyn Fn(RunnerEvent) + Send>,
    /// The node's executor, when a server decides when migrating jobs run.
    pub cpu: Option<Arc<super::cpu::Cpu>>,
}

/// Starts the thread. `running` = start executing at once; otherwise the job is
/// paused (restored) and waits for `Resume`. `parent` is the checkpoint the job's
/// memory equals, if any (the base of the next incremental checkpoint).
pub fn spawn(
    job: Job,
    parent: Option<Checkpoint>,
    running: bool,
    ctx: RunnerCtx,
) -> std::io::Result<RunnerHandle> {
    let (tx, rx) = std_mpsc::channel();
    let pause = job.pause_handle();
    let requested_at = Arc::new(std::sync::Mutex::new(None));
    let gate = ctx.cpu.clone().map(|cpu| Gate {
        cpu,
        turns: tx.clone(),
        attached: None,
        turn: false,
    });
    let handle = RunnerHandle {
        tx,
        pause,
        requested_at: requested_at.clone(),
    };
    std::thread::Builder::new()
        .name(format!("job-{}", ctx.job_id))
        .stack_size(wasm_host::host::JOB_THREAD_STACK)
        .spawn(move || {
            let mut r = Runner {
                job,
                parent,
                ctx,
                rx,
                requested_at,
                gate,
            };
            r.main(running)
        })?;
    Ok(handle)
}

struct Runner {
    job: Job,
    parent: Option<Checkpoint>,
    ctx: RunnerCtx,
    rx: std_mpsc::Receiver<RunnerCmd>,
    requested_at: Arc<std::sync::Mutex<Option<Instant>>>,
    gate: Option<Gate>,
}

/// The job's place behind the node's server: it runs only during a granted turn.
struct Gate {
    cpu: Arc<super::cpu::Cpu>,
    /// The runner's own command channel, where grants arrive as [`RunnerCmd::Turn`].
    turns: std_mpsc::Sender<RunnerCmd>,
    attached: Option<executor::AttachedJob>,
    turn: bool,
}

impl Gate {
    /// The job wants the CPU (`true`) or waits for a handover (`false`).
    fn want(&mut self, run: bool, pause: PauseHandle, job_id: &str) {
        if !run && self.turn {
            // A turn granted meanwhile goes back before the job leaves the queue.
            self.ended(Instant::now(), None, &Ok(Outcome::Paused));
        }
        match (&self.attached, run) {
            (Some(a), _) => a.hold(!run),
            (None, false) => {}
            (None, true) => {
                let turns = self.turns.clone();
                let grant: executor::Grant = Box::new(move || turns.send(RunnerCmd::Turn).is_ok());
                match self.cpu.executor.attach(pause, 0, grant) {
                    Ok(a) => self.attached = Some(a),
                    // Only when the server's queue is full or the executor stopped: the
                    // job still runs, outside the schedule, rather than never.
                    Err(e) => {
                        tracing::warn!(job = job_id, error = %e, "job runs outside the server");
                    }
                }
            }
        }
    }

    /// May the job run now?
    fn open(&self) -> bool {
        self.turn || self.attached.is_none()
    }

    /// `run()` returned: the turn is over.
    fn ended(
        &mut self,
        stopped_at: Instant,
        seen: Option<Instant>,
        r: &Result<Outcome, HostError>,
    ) {
        self.turn = false;
        let Some(a) = &self.attached else {
            return;
        };
        let echo = match r {
            Ok(o) => Ok(*o),
            Err(HostError::Killed) => Err(HostError::Killed),
            Err(e) => Err(HostError::Trap(e.to_string())),
        };
        a.turn_ended(stopped_at, seen, echo);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // The executor waits for every granted turn to end; the job is gone.
        if self.turn {
            self.ended(Instant::now(), None, &Ok(Outcome::Paused));
        }
    }
}

enum Next {
    Run,
    Wait,
    End,
}

impl Runner {
    /// Tells the gate (if any) whether the job wants the CPU.
    fn want(&mut self, run: bool) {
        let pause = self.job.pause_handle();
        if let Some(g) = self.gate.as_mut() {
            g.want(run, pause, &self.ctx.job_id);
        }
    }

    fn main(&mut self, mut running: bool) {
        self.want(running);
        loop {
            let open = self.gate.as_ref().is_none_or(Gate::open);
            if !running || !open {
                match self.rx.recv() {
                    Ok(RunnerCmd::Turn) => {
                        if let Some(g) = self.gate.as_mut() {
                            g.turn = true;
                            if !running {
                                // Granted before the hold arrived: hand the turn back.
                                g.ended(Instant::now(), None, &Ok(Outcome::Paused));
                            }
                        }
                    }
                    Ok(cmd) => match self.obey(cmd, running) {
                        Next::Run => {
                            if !running {
                                running = true;
                                self.want(true);
                            }
                        }
                        Next::Wait => {
                            if running {
                                running = false;
                                self.want(false);
                            }
                        }
                        Next::End => return,
                    },
                    Err(_) => return,
                }
                continue;
            }
            let result = self.job.run();
            if let Some(g) = self.gate.as_mut() {
                g.ended(Instant::now(), self.job.pause_seen_at(), &result);
            }
            match result {
                Ok(Outcome::Exited(code)) => {
                    let w = self.job.wasi_state();
                    let _ = self.ctx.output.send(OutputEvent::Exited {
                        job: self.ctx.job_id.clone(),
                        home: self.ctx.home,
                        code,
                        stdout_len: w.stdout_offset,
                        stderr_len: w.stderr_offset,
                    });
                    (self.ctx.events)(RunnerEvent::Exited {
                        job: self.ctx.job_id.clone(),
                        code,
                    });
                    self.refuse_pending("the job ended");
                    return;
                }
                Ok(Outcome::Paused) => {
                    // A command is queued before every pause request; there may be more.
                    let mut next = Next::Run;
                    loop {
                        let cmd = match self.rx.try_recv() {
                            Ok(c) => c,
                            Err(std_mpsc::TryRecvError::Empty) => break,
                            Err(std_mpsc::TryRecvError::Disconnected) => return,
                        };
                        next = match cmd {
                            RunnerCmd::Turn => {
                                if let Some(g) = self.gate.as_mut() {
                                    g.turn = true;
                                }
                                Next::Run
                            }
                            cmd => self.obey(cmd, true),
                        };
                        if !matches!(next, Next::Run) {
                            break;
                        }
                    }
                    match next {
                        Next::Run => {}
                        Next::Wait => {
                            running = false;
                            self.want(false);
                        }
                        Next::End => return,
                    }
                }
                Err(e) => {
                    let killed = matches!(e, wasm_host::HostError::Killed);
                    if !killed {
                        (self.ctx.events)(RunnerEvent::Failed {
                            job: self.ctx.job_id.clone(),
                            error: e.to_string(),
                        });
                    }
                    self.refuse_pending("the job failed");
                    return;
                }
            }
        }
    }

    fn refuse_pending(&mut self, why: &str) {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                RunnerCmd::Checkpoint(r) | RunnerCmd::Pause(r) => {
                    let _ = r.send(Err(why.to_string()));
                }
                RunnerCmd::Resume { .. } | RunnerCmd::Stop | RunnerCmd::Turn => {}
            }
        }
    }

    fn obey(&mut self, cmd: RunnerCmd, was_running: bool) -> Next {
        match cmd {
            RunnerCmd::Checkpoint(reply) => {
                let r = self.checkpoint();
                let _ = reply.send(r);
                if was_running {
                    Next::Run
                } else {
                    Next::Wait
                }
            }
            RunnerCmd::Pause(reply) => {
                let r = self.checkpoint();
                let ok = r.is_ok();
                let _ = reply.send(r);
                if ok || !was_running {
                    Next::Wait
                } else {
                    Next::Run
                }
            }
            RunnerCmd::Resume { generation } => {
                self.ctx.generation = generation;
                Next::Run
            }
            RunnerCmd::Stop => Next::End,
            // Handled by the main loop; a stray grant changes nothing.
            RunnerCmd::Turn => {
                if was_running {
                    Next::Run
                } else {
                    Next::Wait
                }
            }
        }
    }

    fn checkpoint(&mut self) -> Result<Taken, String> {
        if !self.job.is_paused() {
            // A job behind the server may not have had its first turn yet: with the pause
            // raised it stops at its first yield point (microseconds, outside the
            // schedule), where it can be captured.
            self.job.pause_handle().request();
            match self.job.run() {
                Ok(Outcome::Paused) => {}
                Ok(Outcome::Exited(_)) => return Err("the job ended".into()),
                Err(e) => return Err(format!("starting {}: {e}", self.ctx.job_id)),
            }
        }
        let stop = self
            .requested_at
            .lock()
            .ok()
            .and_then(|mut t| t.take())
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let started = Instant::now();
        let info = self
            .job
            .checkpoint(
                &self.ctx.store,
                self.parent.as_ref(),
                &self.ctx.job_id,
                self.ctx.generation,
            )
            .map_err(|e| format!("checkpoint of {}: {e}", self.ctx.job_id))?;
        let write = started.elapsed();
        let manifest = self
            .ctx
            .store
            .get_chunk(&info.id())
            .map_err(|e| format!("reading back the manifest: {e}"))?;
        let memory_bytes = info.checkpoint.manifest.memory.len;
        let chunks_hashed = info.chunks_hashed;
        self.parent = Some(info.checkpoint.clone());
        Ok(Taken {
            checkpoint: info.checkpoint,
            manifest,
            stop,
            write,
            chunks_hashed,
            memory_bytes,
        })
    }
}
