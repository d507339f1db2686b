//! Drivers that pause a job at chosen or random moments: the CLI's `--pause-at-random`
//! and `--capture-after`, the tests and the capture benchmark all use them.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::HostError;
use crate::host::{Host, LoadedModule};
use crate::job::{Job, JobSpec, Limits, Outcome, PauseHandle};
use crate::snapshot::Snapshot;
use crate::wasi::{OutputSink, Preopen};

/// A tiny deterministic generator (splitmix64) for pause timing.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// When and how to pause.
#[derive(Debug, Clone)]
pub struct PausePlan {
    /// Pauses to make at most (fewer if the job ends first).
    pub count: u32,
    pub seed: u64,
    /// Running time between a (re)start and the next pause request, drawn uniformly.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Resume each time from the encoded bytes in a fresh instance (true), or capture
    /// and continue in the same instance (false).
    pub fresh_instance: bool,
}

/// What happened during a paused run.
#[derive(Debug, Clone, Default)]
pub struct PauseReport {
    pub pauses: u32,
    /// Pause request → job stopped at a yield point with its stack unwound.
    pub stop_latency: Vec<Duration>,
    /// Pause request → snapshot captured (stop plus a copy of memory).
    pub pause_latency: Vec<Duration>,
    /// Capture only (state copied out of the instance).
    pub capture_time: Vec<Duration>,
    /// Fresh instance → ready to run (includes decode when fresh_instance).
    pub restore_time: Vec<Duration>,
    pub snapshot_bytes: Vec<usize>,
}

/// Requests pauses on a timer thread; the running side tells it about each new handle.
pub(crate) struct PauseTimer {
    tx: Option<mpsc::Sender<PauseHandle>>,
    requested_at: Arc<Mutex<Option<Instant>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl PauseTimer {
    pub(crate) fn new(plan: &PausePlan) -> PauseTimer {
        let (tx, rx) = mpsc::channel::<PauseHandle>();
        let requested_at = Arc::new(Mutex::new(None));
        let at = requested_at.clone();
        let mut rng = SplitMix(plan.seed);
        let (lo, hi) = (
            plan.min_delay.as_micros() as u64,
            plan.max_delay.as_micros() as u64,
        );
        let thread = thread::spawn(move || {
            while let Ok(handle) = rx.recv() {
                let delay = Duration::from_micros(rng.between(lo, hi));
                match rx.recv_timeout(delay) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Ok(mut g) = at.lock() {
                            *g = Some(Instant::now());
                        }
                        handle.request();
                    }
                    // A new handle before the timer fired cannot happen (one pause at a
                    // time); disconnection means the job is over.
                    Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        });
        PauseTimer {
            tx: Some(tx),
            requested_at,
            thread: Some(thread),
        }
    }

    pub(crate) fn arm(&self, handle: PauseHandle) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(handle);
        }
    }

    fn take_request_time(&self) -> Option<Instant> {
        self.requested_at.lock().ok()?.take()
    }
}

impl Drop for PauseTimer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs a job to the end, pausing it per `plan`. `make_sink` gives the output sink of
/// each (re)started instance; sinks should share their buffer.
pub fn run_with_pauses(
    host: &Host,
    module: Arc<LoadedModule>,
    spec: JobSpec,
    mut make_sink: impl FnMut() -> Box<dyn OutputSink>,
    plan: &PausePlan,
) -> Result<(i32, PauseReport), HostError> {
    let preopens: Vec<Preopen> = spec.preopens.clone();
    let limits: Limits = spec.limits.clone();
    let mut job = Job::start(host, module.clone(), spec, make_sink())?;
    let timer = PauseTimer::new(plan);
    let mut report = PauseReport::default();
    loop {
        if report.pauses < plan.count {
            timer.arm(job.pause_handle());
        }
        match job.run()? {
            Outcome::Exited(code) => return Ok((code, report)),
            Outcome::Paused => {
                let t0 = Instant::now();
                let snap = job.capture()?;
                let captured = Instant::now();
                report.capture_time.push(captured - t0);
                if let Some(req) = timer.take_request_time() {
                    report.stop_latency.push(t0.saturating_duration_since(req));
                    report
                        .pause_latency
                        .push(captured.saturating_duration_since(req));
                }
                report.pauses += 1;
                if plan.fresh_instance {
                    let bytes = snap.encode();
                    report.snapshot_bytes.push(bytes.len());
                    drop(job);
                    let t1 = Instant::now();
                    let snap = Snapshot::decode(&bytes)?;
                    job = Job::restore(
                        host,
                        module.clone(),
                        &snap,
                        preopens.clone(),
                        &limits,
                        make_sink(),
                    )?;
                    report.restore_time.push(t1.elapsed());
                }
            }
        }
    }
}

/// Runs a job until `after` has passed, then pauses and captures it. Returns the exit
/// code instead if the job ends first.
pub fn run_and_capture(
    host: &Host,
    module: Arc<LoadedModule>,
    spec: JobSpec,
    sink: Box<dyn OutputSink>,
    after: Duration,
) -> Result<Result<Snapshot, i32>, HostError> {
    let mut job = Job::start(host, module, spec, sink)?;
    let handle = job.pause_handle();
    let (tx, rx) = mpsc::channel::<()>();
    let timer = thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(after) {
            handle.request();
        }
    });
    let outcome = job.run();
    drop(tx);
    let _ = timer.join();
    match outcome? {
        Outcome::Exited(code) => Ok(Err(code)),
        Outcome::Paused => Ok(Ok(job.capture()?)),
    }
}
