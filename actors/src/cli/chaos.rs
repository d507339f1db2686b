//! `roam chaos SCENARIO`: a scripted chaos run against a swarm of in-process nodes
//! (level 1) or of `roam node` processes (level 2) ([`actors::chaos`]), its
//! invariants as a ✓/✗ table, an SVG timeline, and the figures as one JSON object on
//! the last line. Ctrl-C (or SIGTERM) ends the run: the node processes are killed and
//! their directories removed before `roam` exits (130).

use std::path::PathBuf;
use std::time::Duration;

use actors::chaos::{self, ChaosOptions, HomeChoice};
use anyhow::Context as _;
use clap::Args;
use recovery::Scenario;

#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// The scenario (configs/chaos/NAME.toml; configs/chaos/README.md has every key).
    pub scenario: PathBuf,
    /// Draw the random events from this seed instead of the file's.
    #[arg(long)]
    pub seed: Option<u64>,
    /// How faults are injected. 1: every node in this process, faults in the mesh
    /// (kill, restart, pause, partition; delay, loss and rate are skipped). 2: every
    /// node a `roam node` process on 127.0.0.1 with its own directory and on-disk
    /// store: kill = SIGKILL, restart = the same process again, pause/resume =
    /// SIGSTOP/SIGCONT, partition/heal = the nodes' POST /chaos/block; a scenario
    /// with delay, loss or rate is refused. 3 (root): as 2, each node in a network
    /// namespace with a veth link to every other; partition = links set down; rate =
    /// tbf; delay and loss = netem, or a userspace wire where the kernel has no
    /// sch_netem.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    pub level: u8,
    /// The node jobs are submitted to, whose log book collects their output: auto
    /// (n1 if the timeline leaves it alone, else the first node it leaves alone, else
    /// an extra job-less gateway), gateway, or a node name (refused if the timeline
    /// kills, pauses or cuts it into a minority).
    #[arg(long, default_value = "auto", value_parser = parse_home)]
    pub home: HomeChoice,
    /// Multiply every event's time and the duration by this (e.g. 0.5 plays the
    /// timeline twice as fast; the jobs' lengths do not change).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Directory with the guests (default: guests/out).
    #[arg(long)]
    pub guests: Option<PathBuf>,
    /// How long to wait for unfinished jobs after the timeline's duration (ms).
    #[arg(long, default_value_t = 120_000)]
    pub wait_ms: u64,
    /// A job no node has held for this long counts as lost (ms).
    #[arg(long, default_value_t = 10_000)]
    pub lost_after_ms: u64,
    /// How often every node is asked what it runs (ms).
    #[arg(long, default_value_t = 30)]
    pub observe_ms: u64,
    /// Where to write the SVG timeline (jobs on nodes over time, moves, recoveries,
    /// kills and partitions).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "target/roam-chaos-timeline.svg"
    )]
    pub timeline: PathBuf,
    /// Also write every observed fact (starts, stops, finishes, output reads without
    /// their bytes) to FILE, one JSON object a line.
    #[arg(long, value_name = "FILE")]
    pub facts: Option<PathBuf>,
}

fn parse_home(s: &str) -> Result<HomeChoice, String> {
    s.parse()
}

pub fn run(a: ChaosArgs) -> anyhow::Result<i32> {
    let mut scenario = Scenario::load(&a.scenario)?;
    if let Some(seed) = a.seed {
        scenario = scenario.reseeded(seed)?;
    }
    chaos::check_level(&scenario, a.level)?;
    println!(
        "scenario {} (seed {}, level {}): {} nodes, {} jobs, {} events over {} ms{}",
        scenario.name,
        scenario.seed,
        a.level,
        scenario.nodes,
        scenario.jobs.len(),
        scenario.timeline().len(),
        scenario.duration_ms,
        if a.time_scale == 1.0 {
            String::new()
        } else {
            format!(" (times × {})", a.time_scale)
        }
    );
    let mut opts = ChaosOptions::new(scenario);
    if let Some(g) = a.guests {
        opts.guests = g;
    }
    opts.home = a.home;
    opts.time_scale = a.time_scale;
    opts.wait_after = Duration::from_millis(a.wait_ms);
    opts.lost_after = Duration::from_millis(a.lost_after_ms);
    opts.observe_every = Duration::from_millis(a.observe_ms.max(1));
    opts.level = a.level;
    let sys = actors::node::actix_system();
    // On Ctrl-C or SIGTERM the run's future is dropped, and with it the swarm: node
    // processes are killed and reaped, scratch directories removed.
    let result = sys.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        tokio::select! {
            r = chaos::run(opts) => r.map(Some),
            _ = tokio::signal::ctrl_c() => Ok(None),
            _ = term.recv() => Ok(None),
        }
    })?;
    let Some(result) = result else {
        eprintln!("roam chaos: interrupted; every node stopped, scratch directories removed");
        return Ok(130);
    };
    println!();
    print!("{result}");
    chaos::write_timeline(&a.timeline, &result.timeline)?;
    println!("timeline: {}", a.timeline.display());
    if let Some(path) = &a.facts {
        chaos::write_facts(path, &result.facts)?;
        println!("facts: {}", path.display());
    }
    println!("{}", result.summary(Some(&a.timeline)));
    Ok(if result.report.ok() { 0 } else { 1 })
}
