//! Command-line interface: argument parsing and dispatch to the subcommands.

mod chaos;
mod config;
mod exec;
mod node;
mod relay;
mod store;
mod top;

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
    /// Run a roam node: join the swarm, run and move jobs, serve the control API.
    ///
    /// Examples:
    ///   roam node --config configs/node.toml
    ///   roam node --name n2 --api 127.0.0.1:7071 --bootstrap /ip4/10.0.0.1/tcp/4001
    #[command(verbatim_doc_comment)]
    Node(node::NodeArgs),
    /// Start a job on the swarm (on the node behind --api, or on --node).
    ///
    /// Examples:
    ///   roam run guests/out/autopilot.wasm
    ///   roam run --node n2 --follow guests/out/tracker.wasm -- 20000
    #[command(verbatim_doc_comment)]
    Run(node::RunArgs),
    /// List the swarm's jobs: where each runs, its generation and state.
    ///
    /// Example:
    ///   roam ps --api 127.0.0.1:7071
    #[command(verbatim_doc_comment)]
    Ps(node::ListArgs),
    /// List the peers the node knows, with RTT, throughput and load.
    ///
    /// Example:
    ///   roam peers
    #[command(verbatim_doc_comment)]
    Peers(node::ListArgs),
    /// Live-migrate a running job to another node; prints the move's downtime and bytes.
    ///
    /// Example:
    ///   roam migrate autopilot-1a2b n3
    #[command(verbatim_doc_comment)]
    Migrate(node::MigrateArgs),
    /// Move every job away from a node and stop it taking new ones.
    ///
    /// Example:
    ///   roam drain n2
    #[command(verbatim_doc_comment)]
    Drain(node::DrainArgs),
    /// Print a job's output (collected at its home node, across moves, each byte once).
    ///
    /// Examples:
    ///   roam logs autopilot-1a2b
    ///   roam logs --follow --stderr tracker-99f0
    #[command(verbatim_doc_comment)]
    Logs(node::LogsArgs),
    /// A live view of a node: its jobs, its peers and its recent moves, redrawn every
    /// second (Ctrl-C quits). Prints one frame when stdout is not a terminal.
    ///
    /// Examples:
    ///   roam top
    ///   roam top --api 127.0.0.1:7072 --interval 500
    ///   roam top --once > snapshot.txt
    #[command(verbatim_doc_comment)]
    Top(top::TopArgs),
    /// Print the default node config (every key, commented) or check a config file.
    ///
    /// Examples:
    ///   roam config --default > node.toml
    ///   roam config --check node.toml        # exit 1 naming file, line and key if bad
    #[command(verbatim_doc_comment)]
    Config(config::ConfigArgs),
    /// Run the embedded demo: a 3-node swarm in this process moves autopilot and
    /// tracker while they run, then checks their output against straight runs. Writes
    /// an SVG timeline of the jobs on the nodes and every move (with its downtime).
    ///
    /// Examples:
    ///   roam demo
    ///   roam demo --timeline /tmp/moves.svg --tracker-frames 60000
    #[command(verbatim_doc_comment)]
    Demo(node::DemoArgs),
    /// Play a chaos scenario against a swarm, then check that every job finished with
    /// the output of a straight run, each byte once, no generation on two nodes.
    /// Level 1 (default): every node in this process, kills, restarts, pauses and
    /// partitions injected in the mesh. Level 2: every node a `roam node` process on
    /// 127.0.0.1 (SIGKILL, restart with the same store, SIGSTOP/SIGCONT, partitions
    /// through each node's POST /chaos/block). Level 3 (root): level 2 with each node
    /// in a network namespace, partitions as links set down, rate/delay/loss with tc.
    /// Prints a ✓/✗ table and, as the last line, the figures as JSON; exits 1 if an
    /// invariant fails, 2 on an error, 130 on Ctrl-C (node processes are killed and
    /// their directories removed). Writes an SVG timeline of jobs, moves, kills and
    /// partitions.
    ///
    /// Examples:
    ///   roam chaos configs/chaos/smoke.toml
    ///   roam chaos --level 2 configs/chaos/smoke.toml
    ///   roam chaos --level 3 configs/chaos/smoke.toml     (as root)
    ///   roam chaos --seed 7 --timeline /tmp/bench.svg configs/chaos/bench.toml
    ///   roam chaos --time-scale 0.5 --home gateway configs/chaos/churn.toml
    #[command(verbatim_doc_comment)]
    Chaos(chaos::ChaosArgs),
    /// Forward TCP connections, holding every chunk for a fixed delay each way (an RTT
    /// for shaped links on kernels without netem; see scripts/shaped-move).
    ///
    /// Example:
    ///   roam relay --listen 10.0.0.2:4002 --to 10.0.0.1:4001 --delay-ms 10
    #[command(hide = true, verbatim_doc_comment)]
    Relay(relay::RelayArgs),
}

/// Logs go to stderr through `tracing`: warnings and errors by default, `-v` info,
/// `-vv` debug, `-vvv` trace; `RUST_LOG` (an `EnvFilter`, e.g. `roam=debug,mesh=info`)
/// replaces the level when it is set and valid.
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
        .with_writer(|| actors::progress::LogWriter)
        .try_init();
}

impl Command {
    /// The subcommand's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Exec(_) => "exec",
            Command::Resume(_) => "resume",
            Command::Store(_) => "store",
            Command::Node(_) => "node",
            Command::Run(_) => "run",
            Command::Ps(_) => "ps",
            Command::Peers(_) => "peers",
            Command::Migrate(_) => "migrate",
            Command::Drain(_) => "drain",
            Command::Logs(_) => "logs",
            Command::Top(_) => "top",
            Command::Config(_) => "config",
            Command::Demo(_) => "demo",
            Command::Chaos(_) => "chaos",
            Command::Relay(_) => "relay",
        }
    }
}

/// Runs a command; returns the process exit code. Logging is set up before (by
/// [`init_logging`], for every command alike).
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    tracing::debug!(
        command = cli.command.name(),
        version = env!("CARGO_PKG_VERSION"),
        "roam {} starting",
        cli.command.name()
    );
    match cli.command {
        Command::Exec(a) => exec::exec(a),
        Command::Resume(a) => exec::resume(a),
        Command::Store(a) => store::run(a),
        Command::Node(a) => node::node(a),
        Command::Run(a) => node::run(a),
        Command::Ps(a) => node::ps(a),
        Command::Peers(a) => node::peers(a),
        Command::Migrate(a) => node::migrate(a),
        Command::Drain(a) => node::drain(a),
        Command::Logs(a) => node::logs(a),
        Command::Top(a) => top::top(a),
        Command::Config(a) => config::run(a),
        Command::Demo(a) => node::demo(a),
        Command::Chaos(a) => chaos::run(a),
        Command::Relay(a) => relay::relay(a),
    }
}
