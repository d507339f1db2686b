//! The node's CPU under `[sched]`: node-bound periodic tasks and the server that migrating
//! jobs run behind.
//!
//! This module only builds the [`executor::Executor`] from the config (loading each task's
//! module and admitting the set by response-time analysis) and turns its figures into the
//! node's status and metrics. The job threads themselves stay in [`super::runner`]; they
//! attach to the executor and run only in the turns it grants.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use executor::{instance_sink, ExecOptions, Executor, NodeTask};
use serde::Serialize;
use wasm_host::{Host, Job, JobSpec, OutputSink, Stream};

use super::config::{SchedConfig, TaskConfig};

/// Output of a node-bound task: counted (each line ends an instance, see
/// [`executor::instance_sink`]), the last line kept for the status, the rest dropped.
struct TaskOutput {
    last_line: Arc<std::sync::Mutex<String>>,
    partial: Vec<u8>,
}

/// Longest task output line kept for the status.
const MAX_LINE: usize = 256;

impl OutputSink for TaskOutput {
    fn write(&mut self, stream: Stream, _offset: u64, data: &[u8]) -> std::io::Result<()> {
        if stream != Stream::Stdout {
            return Ok(());
        }
        for &b in data {
            if b == b'\n' {
                if let Ok(mut l) = self.last_line.lock() {
                    *l = String::from_utf8_lossy(&self.partial).into_owned();
                }
                self.partial.clear();
            } else if self.partial.len() < MAX_LINE {
                self.partial.push(b);
            }
        }
        Ok(())
    }
}

/// A node-bound task as the status shows it.
pub struct TaskInfo {
    pub config: TaskConfig,
    pub last_line: Arc<std::sync::Mutex<String>>,
}

/// The executor and what the status needs to describe it.
pub struct Cpu {
    pub executor: Executor,
    pub tasks: Vec<TaskInfo>,
    pub config: SchedConfig,
}

fn load_task(host: &Arc<Host>, t: &TaskConfig) -> anyhow::Result<(NodeTask, TaskInfo)> {
    let bytes = std::fs::read(Path::new(&t.module))
        .with_context(|| format!("[sched.task] {}: reading module {}", t.name, t.module))?;
    let module = host
        .load(&bytes)
        .with_context(|| format!("[sched.task] {}: loading module {}", t.name, t.module))?;
    let last_line = Arc::new(std::sync::Mutex::new(String::new()));
    let out = TaskOutput {
        last_line: last_line.clone(),
        partial: Vec::new(),
    };
    let (sink, marker) = instance_sink(Box::new(out));
    let mut argv = vec![t.name.clone()];
    argv.extend(t.args.iter().cloned());
    let job = Job::start(host, module, JobSpec::new(argv), sink)
        .with_context(|| format!("[sched.task] {}: starting", t.name))?;
    let task = NodeTask::new(SchedConfig::task_spec(t), job, marker);
    Ok((
        task,
        TaskInfo {
            config: t.clone(),
            last_line,
        },
    ))
}

/// Starts the executor of `[sched]` (`None` when the server is off). A task set that
/// response-time analysis refuses is an error naming the task and by how much it misses.
pub fn start(host: &Arc<Host>, cfg: &SchedConfig) -> anyhow::Result<Option<Cpu>> {
    let Some(server) = cfg.server_spec() else {
        return Ok(None);
    };
    let mut tasks = Vec::new();
    let mut infos = Vec::new();
    for t in &cfg.task {
        let (task, info) = load_task(host, t)?;
        tasks.push(task);
        infos.push(info);
    }
    let options = ExecOptions {
        realtime_priority: (cfg.realtime_priority > 0).then_some(cfg.realtime_priority),
        aperiodic_quantum: Some(Duration::from_micros(super::config::us(cfg.quantum_ms))),
    };
    let executor = Executor::with_options(server, tasks, options)
        .context("[sched]: the node-bound tasks and the server are not schedulable")?;
    Ok(Some(Cpu {
        executor,
        tasks: infos,
        config: cfg.clone(),
    }))
}

/// `[sched]` in `/status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub struct CpuStatus {
    pub server: String,
    pub budget_us: u64,
    pub period_us: u64,
    /// CPU the server ran at its priority so far (µs).
    pub server_executed_us: u64,
    /// Most it ran in any window of one period beyond its budget (µs).
    pub server_overrun_max_us: u64,
    /// Largest budget response-time analysis would admit with these tasks (µs).
    pub max_server_budget_us: u64,
    /// 1 − (tasks' utilisation + server share): CPU nobody has claimed.
    pub headroom: f64,
    pub queued_jobs: usize,
    pub deadline_misses: u64,
    pub jobs_released: u64,
    pub preempt_latency_us_p99: Option<u64>,
    pub realtime_threads: bool,
    pub tasks: Vec<TaskStatus>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub struct TaskStatus {
    pub name: String,
    pub period_us: u64,
    pub wcet_us: u64,
    pub priority: u32,
    pub instances: u64,
    pub last_line: String,
}

impl Cpu {
    /// `Cs / Ts`: the CPU share migrating jobs get (fixed by the config; admission
    /// checked it at start).
    pub fn server_share(&self) -> f64 {
        self.config.budget_ms / self.config.period_ms
    }

    /// The figures for `/status` and `/metrics`.
    pub fn status(&self) -> CpuStatus {
        let stats = self.executor.stats().unwrap_or_default();
        let spare = self.executor.spare_capacity().ok();
        let tasks = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| TaskStatus {
                name: t.config.name.clone(),
                period_us: super::config::us(t.config.period_ms),
                wcet_us: super::config::us(t.config.wcet_ms),
                priority: t.config.priority,
                // Tasks are admitted in config order: ids 0, 1, ...
                instances: stats
                    .instances
                    .iter()
                    .find(|(id, _)| id.0 as usize == i)
                    .map_or(0, |(_, n)| *n),
                last_line: t.last_line.lock().map(|l| l.clone()).unwrap_or_default(),
            })
            .collect();
        CpuStatus {
            server: self.config.server.clone(),
            budget_us: stats.server_budget,
            period_us: stats.server_period,
            server_executed_us: stats.sched.server_executed,
            server_overrun_max_us: stats.server_overrun_max(),
            max_server_budget_us: spare.as_ref().map_or(0, |s| s.max_server_budget),
            headroom: spare.as_ref().map_or(0.0, |s| s.headroom),
            queued_jobs: spare.as_ref().map_or(0, |s| s.queued_jobs),
            deadline_misses: stats.sched.deadline_misses,
            jobs_released: stats.sched.jobs_released,
            preempt_latency_us_p99: stats.preempt_latency_quantile(0.99),
            realtime_threads: stats.realtime,
            tasks,
        }
    }
}
