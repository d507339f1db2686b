//! `roam exec` and `roam resume`: run, pause, capture and resume a job in this process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use wasm_host::drive::{run_and_capture, run_with_pauses, PausePlan};
use wasm_host::{Host, HostConfig, Job, JobSpec, Limits, Outcome, Preopen, Snapshot, StdioSink};

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The module to run (.wasm binary or .wat text).
    pub module: PathBuf,
    /// Arguments passed to the guest (after `--`).
    #[arg(last = true)]
    pub args: Vec<String>,
    /// Make a host directory visible to the guest: HOST::GUEST (e.g. ./data::/data).
    #[arg(long = "dir", value_name = "HOST::GUEST")]
    pub dirs: Vec<String>,
    /// Set an environment variable for the guest: KEY=VALUE.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// File whose bytes the guest reads as stdin (default: empty stdin).
    #[arg(long)]
    pub stdin: Option<PathBuf>,
    /// Seed of the guest's deterministic random stream (random_get).
    #[arg(long, default_value_t = 0)]
    pub random_seed: u64,
    /// Pause the job at N random moments; each time capture it to bytes, drop the
    /// instance and resume from the bytes in a fresh one.
    #[arg(long, value_name = "N")]
    pub pause_at_random: Option<u32>,
    /// Seed for the moments of --pause-at-random.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Running time between pauses for --pause-at-random: MIN..MAX milliseconds.
    #[arg(long, default_value = "1..40", value_name = "MIN..MAX")]
    pub pause_interval_ms: String,
    /// Pause the job after this many milliseconds and write its snapshot to --out.
    #[arg(long, value_name = "MS", requires = "out")]
    pub capture_after: Option<u64>,
    /// Snapshot file written by --capture-after.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Largest linear memory the guest may use, in MiB.
    #[arg(long, value_name = "MIB")]
    pub memory_limit_mib: Option<u64>,
    /// Time limit for the guest, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub cpu_limit_ms: Option<u64>,
    /// Define imports roam does not know as functions that return zeros.
    #[arg(long)]
    pub allow_unknown_imports: bool,
    /// Run the module as given, without instrumentation (cannot pause; for baselines).
    #[arg(long, conflicts_with_all = ["pause_at_random", "capture_after", "checkpoint_every"])]
    pub plain: bool,
    /// Pause the job every MS milliseconds of running time, write a checkpoint into
    /// --store (incremental: only the chunks written since the last one are hashed) and
    /// run on. Resume one later with `roam resume --store DIR`.
    #[arg(long, value_name = "MS", requires = "store", conflicts_with_all = ["pause_at_random", "capture_after"])]
    pub checkpoint_every: Option<u64>,
    /// Checkpoint store directory for --checkpoint-every (created if missing).
    #[arg(long, value_name = "DIR", requires = "checkpoint_every")]
    pub store: Option<PathBuf>,
    /// Job id of the checkpoints (default: the module's file name without extension).
    #[arg(long, value_name = "ID", requires = "checkpoint_every")]
    pub job: Option<String>,
    /// Print pause statistics to stderr at the end.
    #[arg(long)]
    pub stats: bool,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Snapshot file written by `roam exec --capture-after MS --out FILE`.
    #[arg(required_unless_present = "store", conflicts_with = "store")]
    pub snapshot: Option<PathBuf>,
    /// Resume from a checkpoint store (written by `roam exec --checkpoint-every`) instead
    /// of a snapshot file: the newest checkpoint of the store's job unless --checkpoint
    /// or --job says otherwise.
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// The checkpoint to resume: its id, or a unique prefix of at least 8 hex digits.
    #[arg(long, value_name = "ID", requires = "store", conflicts_with = "job")]
    pub checkpoint: Option<String>,
    /// Resume the newest checkpoint of this job.
    #[arg(long, value_name = "JOB", requires = "store")]
    pub job: Option<String>,
    /// Keep checkpointing the resumed job into the store every MS milliseconds (as the
    /// next generation, incremental from the restored checkpoint).
    #[arg(long, value_name = "MS", requires = "store")]
    pub checkpoint_every: Option<u64>,
    /// Host directories for the guest's preopens, as when it was captured: HOST::GUEST.
    #[arg(long = "dir", value_name = "HOST::GUEST")]
    pub dirs: Vec<String>,
    /// Largest linear memory the guest may use, in MiB.
    #[arg(long, value_name = "MIB")]
    pub memory_limit_mib: Option<u64>,
}

fn parse_dirs(dirs: &[String]) -> anyhow::Result<Vec<Preopen>> {
    dirs.iter()
        .map(|d| {
            let (host, guest) = d
                .split_once("::")
                .with_context(|| format!("--dir `{d}` must look like HOST::GUEST"))?;
            let host = PathBuf::from(host);
            if !host.is_dir() {
                bail!("--dir `{d}`: {} is not a directory", host.display());
            }
            Ok(Preopen {
                host,
                guest: guest.to_string(),
            })
        })
        .collect()
}

fn parse_range(s: &str) -> anyhow::Result<(u64, u64)> {
    let (a, b) = s
        .split_once("..")
        .with_context(|| format!("`{s}` must look like MIN..MAX"))?;
    let a: u64 = a
        .trim()
        .parse()
        .with_context(|| format!("bad MIN in `{s}`"))?;
    let b: u64 = b
        .trim()
        .parse()
        .with_context(|| format!("bad MAX in `{s}`"))?;
    if b < a {
        bail!("`{s}`: MAX is below MIN");
    }
    Ok((a, b))
}

fn seed_bytes(seed: u64) -> [u8; 32] {
    *blake3::hash(&seed.to_le_bytes()).as_bytes()
}

fn limits(memory_mib: Option<u64>, cpu_ms: Option<u64>) -> Limits {
    Limits {
        memory_bytes: memory_mib.map(|m| m << 20),
        cpu: cpu_ms.map(Duration::from_millis),
        snapshot_files_bytes: None,
    }
}

/// Runs `f` on a thread with a stack big enough for deep guest recursion.
fn on_job_thread<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    std::thread::Builder::new()
        .name("roam-job".into())
        .stack_size(wasm_host::host::JOB_THREAD_STACK)
        .spawn(f)
        .context("spawning the job thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("job thread panicked"))?
}

pub fn exec(a: ExecArgs) -> anyhow::Result<i32> {
    on_job_thread(move || exec_inner(a))
}

fn exec_inner(a: ExecArgs) -> anyhow::Result<i32> {
    let bytes =
        std::fs::read(&a.module).with_context(|| format!("reading {}", a.module.display()))?;
    let host = Host::new(HostConfig {
        pausable: !a.plain,
        ..HostConfig::default()
    })?;
    let module = host
        .load(&bytes)
        .with_context(|| format!("loading {}", a.module.display()))?;
    let mut argv = vec![a
        .module
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "guest".into())];
    argv.extend(a.args.iter().cloned());
    let mut spec = JobSpec::new(argv);
    spec.preopens = parse_dirs(&a.dirs)?;
    spec.env = a
        .env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--env `{kv}` must look like KEY=VALUE"))
        })
        .collect::<anyhow::Result<_>>()?;
    if let Some(p) = &a.stdin {
        spec.stdin = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    }
    spec.seed = seed_bytes(a.random_seed);
    spec.limits = limits(a.memory_limit_mib, a.cpu_limit_ms);
    spec.allow_unknown_imports = a.allow_unknown_imports;

    if let Some(ms) = a.checkpoint_every {
        let dir = a
            .store
            .clone()
            .context("--checkpoint-every needs --store")?;
        let store = super::store::open_store(&dir, true)?;
        let job_id = match &a.job {
            Some(j) => j.clone(),
            None => a
                .module
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "job".into()),
        };
        let plan = wasm_host::checkpoint::CheckpointPlan {
            every: Duration::from_millis(ms.max(1)),
            job_id,
            generation: 0,
        };
        let mut job = Job::start(&host, module, spec, Box::new(StdioSink))?;
        super::store::run_checkpointed(&mut job, &store, &plan, None, a.stats)
    } else if let Some(ms) = a.capture_after {
        let out = a.out.clone().context("--capture-after needs --out")?;
        match run_and_capture(
            &host,
            module.clone(),
            spec,
            Box::new(StdioSink),
            Duration::from_millis(ms),
        )? {
            Err(code) => {
                eprintln!("roam: the job exited (code {code}) before {ms} ms; no snapshot written");
                Ok(code)
            }
            Ok(mut snap) => {
                snap.module = Some(module.bytes.as_ref().clone());
                let encoded = snap.encode();
                wasm_host::host::write_atomic(&out, &encoded)
                    .with_context(|| format!("writing {}", out.display()))?;
                eprintln!(
                    "roam: captured after {ms} ms: {} bytes of memory, {} bytes of stack -> {} ({} bytes)",
                    snap.memory.len(),
                    snap.stack.len(),
                    out.display(),
                    encoded.len()
                );
                Ok(0)
            }
        }
    } else if let Some(n) = a.pause_at_random {
        let (lo, hi) = parse_range(&a.pause_interval_ms)?;
        let plan = PausePlan {
            count: n,
            seed: a.seed,
            min_delay: Duration::from_millis(lo),
            max_delay: Duration::from_millis(hi),
            fresh_instance: true,
        };
        let (code, report) = run_with_pauses(&host, module, spec, || Box::new(StdioSink), &plan)?;
        if a.stats || report.pauses < n {
            eprintln!(
                "roam: {} of {} pauses made (each captured, encoded, decoded and resumed in a fresh instance)",
                report.pauses, n
            );
        }
        if a.stats {
            print_stats(&report);
        }
        Ok(code)
    } else {
        let mut job = Job::start(&host, module, spec, Box::new(StdioSink))?;
        match job.run()? {
            Outcome::Exited(code) => Ok(code),
            Outcome::Paused => bail!("job paused without a pause request"),
        }
    }
}

fn print_stats(r: &wasm_host::drive::PauseReport) {
    let us = |v: &[Duration]| -> String {
        if v.is_empty() {
            return "-".into();
        }
        let mut s: Vec<u128> = v.iter().map(|d| d.as_micros()).collect();
        s.sort_unstable();
        format!("median {} us, max {} us", s[s.len() / 2], s[s.len() - 1])
    };
    eprintln!(
        "  stop latency  : {}  (request -> stopped, stack unwound)",
        us(&r.stop_latency)
    );
    eprintln!(
        "  pause latency : {}  (request -> snapshot in memory)",
        us(&r.pause_latency)
    );
    eprintln!("  capture       : {}", us(&r.capture_time));
    eprintln!("  restore       : {}", us(&r.restore_time));
    if let Some(max) = r.snapshot_bytes.iter().max() {
        eprintln!("  snapshot size : up to {max} bytes");
    }
}

pub fn resume(a: ResumeArgs) -> anyhow::Result<i32> {
    on_job_thread(move || resume_inner(a))
}

fn resume_inner(a: ResumeArgs) -> anyhow::Result<i32> {
    let host = Host::new(HostConfig::default())?;
    if let Some(dir) = &a.store {
        return super::store::resume_from_store(
            &host,
            dir,
            a.checkpoint.as_deref(),
            a.job.as_deref(),
            parse_dirs(&a.dirs)?,
            &limits(a.memory_limit_mib, None),
            a.checkpoint_every,
        );
    }
    let path = a.snapshot.context("give a snapshot file or --store DIR")?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let snap = Snapshot::decode(&bytes)
        .with_context(|| format!("{} is not a usable snapshot", path.display()))?;
    let module_bytes = snap
        .module
        .as_ref()
        .context("snapshot does not carry its module")?;
    let module = host.load_instrumented(module_bytes)?;
    let preopens = parse_dirs(&a.dirs)?;
    let mut job = Job::restore(
        &host,
        Arc::clone(&module),
        &snap,
        preopens,
        &limits(a.memory_limit_mib, None),
        Box::new(StdioSink),
    )?;
    match job.run()? {
        Outcome::Exited(code) => Ok(code),
        Outcome::Paused => bail!("job paused without a pause request"),
    }
}
