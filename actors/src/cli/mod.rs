//! Command-line interface: argument parsing and dispatch to the subcommands.

mod exec;
mod store;

use clap::{Parser, Subcommand};

/// roam — a peer-to-peer mesh that live-migrates running WebAssembly jobs.
#[derive(Debug, Parser)]
#[command(name = "roam", version)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a wasm32-wasip1 module here, optionally pausing and resuming it.
    ///
    /// Examples:
    ///   roam exec guests/out/sieve.wasm
    ///   roam exec --dir ./data::/data guests/out/imgproc.wasm -- --input /data/in.pgm --output /data/out.pgm
    ///   roam exec --pause-at-random 20 --seed 7 guests/out/tracker.wasm
    ///   roam exec --capture-after 500 --out job.snap guests/out/autopilot.wasm
    ///   roam exec --checkpoint-every 100 --store ./ckpt guests/out/sieve.wasm
    #[command(verbatim_doc_comment)]
    Exec(exec::ExecArgs),
    /// Resume a job from a snapshot file written by `roam exec --out`, or from a
    /// checkpoint store written by `roam exec --checkpoint-every`.
    ///
    /// Examples:
    ///   roam resume job.snap
    ///   roam resume --store ./ckpt                  # newest checkpoint of the only job
    ///   roam resume --store ./ckpt --job sieve
    ///   roam resume --store ./ckpt --checkpoint 3f2a91c0
    #[command(verbatim_doc_comment)]
    Resume(exec::ResumeArgs),
    /// Inspect and maintain a checkpoint store directory.
    ///
    /// Examples:
    ///   roam store ls ./ckpt
    ///   roam store verify ./ckpt
    ///   roam store gc --keep 2 ./ckpt
    #[command(verbatim_doc_comment)]
    Store(store::StoreArgs),
}

pub fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Exec(a) => exec::exec(a),
        Command::Resume(a) => exec::resume(a),
        Command::Store(a) => store::run(a),
    }
}
