//! `roam store ls | verify | gc`, and the checkpoint side of `roam exec --checkpoint-every`
//! and `roam resume --store`: a job checkpointed into a store directory as it runs, and
//! resumed from one.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ::store::{Checkpoint, ChunkId, Problem, RetentionPolicy, Store, StoreConfig};
use actors::progress::{Progress, Unit};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use wasm_host::checkpoint::{run_with_checkpoints, CheckpointPlan};
use wasm_host::{Host, Job, Limits, Outcome, Preopen, StdioSink};

#[derive(Debug, Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    pub command: StoreCommand,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// List the checkpoints of a store: job, generation, id, memory, sizes, parent.
    ///
    /// Examples:
    ///   roam store ls ./ckpt
    ///   roam store ls --job sieve ./ckpt
    #[command(verbatim_doc_comment)]
    Ls {
        /// The store directory.
        dir: PathBuf,
        /// Only this job's checkpoints.
        #[arg(long)]
        job: Option<String>,
    },
    /// Read and check every chunk and every checkpoint; exit code 1 if anything is wrong.
    ///
    /// Example:
    ///   roam store verify ./ckpt
    #[command(verbatim_doc_comment)]
    Verify {
        /// The store directory.
        dir: PathBuf,
    },
    /// Delete all but the newest N checkpoints of every job, then every chunk no kept
    /// checkpoint needs.
    ///
    /// Examples:
    ///   roam store gc --keep 1 ./ckpt
    ///   roam store gc --keep 5 ./ckpt
    #[command(verbatim_doc_comment)]
    Gc {
        /// The store directory.
        dir: PathBuf,
        /// Checkpoints kept per job (newest first, by generation then commit order).
        #[arg(long, value_name = "N")]
        keep: usize,
    },
}

/// Opens an existing store directory (`create`: or makes it).
pub fn open_store(dir: &Path, create: bool) -> anyhow::Result<Store> {
    if !create && !dir.join("chunks").is_dir() {
        bail!("{} is not a checkpoint store", dir.display());
    }
    Store::open(dir, StoreConfig::default())
        .with_context(|| format!("opening the checkpoint store {}", dir.display()))
}

/// `println!` that returns write errors (a closed pipe) instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

pub fn run(a: StoreArgs) -> anyhow::Result<i32> {
    let result = match a.command {
        StoreCommand::Ls { dir, job } => ls(&dir, job.as_deref()),
        StoreCommand::Verify { dir } => verify(&dir),
        StoreCommand::Gc { dir, keep } => gc(&dir, keep),
    };
    // `roam store ls DIR | head` closes the pipe early: not an error.
    match result {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(0)
        }
        other => other,
    }
}

fn ls(dir: &Path, job: Option<&str>) -> anyhow::Result<i32> {
    let store = open_store(dir, false)?;
    let sizes = store.checkpoint_sizes(job)?;
    out!(
        "{:<20} {:>4} {:>5}  {:<64}  {:>11} {:>7} {:>11}  parent",
        "job",
        "gen",
        "seq",
        "checkpoint",
        "memory",
        "chunks",
        "unique"
    );
    for s in &sizes {
        let m = store.load_checkpoint(&s.checkpoint.id)?.manifest;
        out!(
            "{:<20} {:>4} {:>5}  {}  {:>11} {:>7} {:>11}  {}",
            s.checkpoint.job,
            s.checkpoint.generation,
            s.checkpoint.seq,
            s.checkpoint.id,
            mib(m.memory.len),
            m.memory.chunks.len(),
            mib(s.unique_bytes),
            m.parent
                .map(|p| p.to_hex()[..16].to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
    let st = store.stats();
    out!(
        "{} checkpoint(s), {} chunk(s), {} stored",
        sizes.len(),
        st.chunk_count,
        mib(st.stored_bytes)
    );
    Ok(0)
}

fn verify(dir: &Path) -> anyhow::Result<i32> {
    let store = open_store(dir, false)?;
    let bar = Progress::spinner("store verify: chunks, then checkpoints");
    let rep = store.verify_with(&mut |done, total| bar.set_done(done, total, Unit::Items));
    bar.finish();
    for p in &rep.problems {
        match p {
            Problem::CorruptChunk { id, path, reason } => out!(
                "corrupt chunk {}{}: {reason}",
                id.map(|i| i.to_string()).unwrap_or_else(|| "?".into()),
                path.as_ref()
                    .map(|p| format!(" ({})", p.display()))
                    .unwrap_or_default()
            ),
            Problem::MissingChunk { checkpoint, chunk } => {
                out!("checkpoint {checkpoint} misses chunk {chunk}")
            }
            Problem::BadCheckpoint {
                checkpoint,
                path,
                reason,
            } => out!(
                "bad checkpoint {}{}: {reason}",
                checkpoint
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "?".into()),
                path.as_ref()
                    .map(|p| format!(" ({})", p.display()))
                    .unwrap_or_default()
            ),
            Problem::Io { path, error } => out!("cannot read {}: {error}", path.display()),
        }
    }
    out!(
        "{} chunk(s) and {} checkpoint(s) checked: {}",
        rep.chunks_checked,
        rep.checkpoints_checked,
        if rep.is_clean() {
            "ok".to_string()
        } else {
            format!("{} problem(s)", rep.problems.len())
        }
    );
    Ok(if rep.is_clean() { 0 } else { 1 })
}

fn gc(dir: &Path, keep: usize) -> anyhow::Result<i32> {
    let store = open_store(dir, false)?;
    let bar = Progress::spinner("store gc: manifests, then chunks");
    let rep = store.gc_with(
        &RetentionPolicy {
            keep_per_job: keep,
            ..RetentionPolicy::default()
        },
        &mut |done, total| bar.set_done(done, total, Unit::Items),
    );
    bar.finish();
    let rep = rep?;
    out!(
        "kept {} checkpoint(s), removed {}; removed {} chunk(s), freed {}",
        rep.checkpoints_kept,
        rep.refs_removed,
        rep.chunks_removed,
        mib(rep.bytes_freed)
    );
    Ok(0)
}

/// The checkpoint `--checkpoint ID` (64 hex digits, or a unique prefix of at least 8)
/// or the newest of `--job JOB` names; with neither, the newest of the store's only job.
pub fn find_checkpoint(
    store: &Store,
    id: Option<&str>,
    job: Option<&str>,
) -> anyhow::Result<ChunkId> {
    if let Some(id) = id {
        let id = id.to_ascii_lowercase();
        if let Ok(full) = id.parse::<ChunkId>() {
            return Ok(full);
        }
        if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("--checkpoint `{id}`: give 64 hex digits or a prefix of at least 8");
        }
        let matches: Vec<ChunkId> = store
            .list_checkpoints(None)
            .into_iter()
            .map(|r| r.id)
            .filter(|c| c.to_hex().starts_with(&id))
            .collect();
        return match matches.as_slice() {
            [one] => Ok(*one),
            [] => bail!("no checkpoint {id}… in the store"),
            _ => bail!(
                "{} checkpoints start with {id}: give more digits",
                matches.len()
            ),
        };
    }
    let job = match job {
        Some(j) => j.to_string(),
        None => {
            let mut jobs: Vec<String> = store
                .list_checkpoints(None)
                .into_iter()
                .map(|r| r.job)
                .collect();
            jobs.dedup();
            match jobs.as_slice() {
                [one] => one.clone(),
                [] => bail!("the store holds no checkpoints"),
                _ => bail!(
                    "the store holds several jobs ({}): choose one with --job",
                    jobs.join(", ")
                ),
            }
        }
    };
    store
        .latest(&job)
        .map(|r| r.id)
        .with_context(|| format!("no checkpoint of job `{job}` in the store"))
}

/// Runs `job` to its end with a checkpoint every `every` of running time; prints a
/// summary (and per-checkpoint figures with `stats`) to stderr.
pub fn run_checkpointed(
    job: &mut Job,
    store: &Store,
    plan: &CheckpointPlan,
    parent: Option<Checkpoint>,
    stats: bool,
) -> anyhow::Result<i32> {
    let mut times = Vec::new();
    let mut hashed = 0u64;
    let mut written = 0u64;
    // The job writes to this terminal too: a spinner only when its stdout goes
    // elsewhere (its stderr rarely carries much).
    let spinner = if std::io::stdout().is_terminal() {
        Progress::hidden()
    } else {
        Progress::spinner(format!("running {} with checkpoints", plan.job_id))
    };
    let result = run_with_checkpoints(job, store, plan, parent, |info, took| {
        spinner.set_message(format!(
            "running {}: checkpoint {} took {:.1} ms, {} chunk(s) written",
            plan.job_id,
            times.len() + 1,
            took.as_secs_f64() * 1e3,
            info.chunks_written
        ));
        tracing::info!(
            id = %info.id(),
            hashed = info.chunks_hashed,
            chunks = info.checkpoint.manifest.memory.chunk_count(),
            written = info.chunks_written,
            ms = took.as_secs_f64() * 1e3,
            "checkpoint"
        );
        times.push(took);
        hashed += info.chunks_hashed;
        written += info.chunks_written;
    });
    spinner.finish();
    let (code, last) = result?;
    match &last {
        Some(cp) if !times.is_empty() => eprintln!(
            "roam: {} checkpoint(s) of job `{}` (generation {}) in {}; last {}",
            times.len(),
            plan.job_id,
            plan.generation,
            store
                .dir()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            cp.id
        ),
        _ => eprintln!("roam: the job ended before its first checkpoint"),
    }
    if stats && !times.is_empty() {
        times.sort_unstable();
        eprintln!(
            "  checkpoint time: median {:.2} ms, max {:.2} ms; {hashed} chunks hashed, {written} written",
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3,
        );
    }
    Ok(code)
}

/// `roam resume --store DIR`: restores a checkpoint and runs it to its end, optionally
/// checkpointing it again (generation + 1, incremental from the restored checkpoint).
pub fn resume_from_store(
    host: &Arc<Host>,
    dir: &Path,
    id: Option<&str>,
    job_id: Option<&str>,
    preopens: Vec<Preopen>,
    limits: &Limits,
    checkpoint_every: Option<u64>,
) -> anyhow::Result<i32> {
    let store = open_store(dir, false)?;
    let id = find_checkpoint(&store, id, job_id)?;
    let (mut job, cp) =
        Job::restore_from_checkpoint(host, &store, &id, preopens, limits, Box::new(StdioSink))
            .with_context(|| format!("restoring checkpoint {id}"))?;
    match checkpoint_every {
        Some(ms) => {
            let plan = CheckpointPlan {
                every: Duration::from_millis(ms.max(1)),
                job_id: cp.manifest.job.clone(),
                generation: cp.manifest.generation + 1,
            };
            run_checkpointed(&mut job, &store, &plan, Some(cp), false)
        }
        None => match job.run()? {
            Outcome::Exited(code) => Ok(code),
            Outcome::Paused => bail!("job paused without a pause request"),
        },
    }
}
