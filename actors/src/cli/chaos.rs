//! `roam chaos SCENARIO`: a scripted chaos run against an in-process swarm
//! ([`actors::chaos`]), its invariants as a ✓/✗ table, an SVG timeline, and the
//! figures as one JSON object on the last line.

use std::path::PathBuf;
use std::time::Duration;

use actors::chaos::{self, ChaosOptions, HomeChoice};
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
    /// (kill, restart, pause, partition; delay, loss and rate are skipped). 2 (one
    /// process per node in network namespaces) is not implemented yet.
    #[arg(long, default_value_t = 1)]
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
    if a.level != 1 {
        anyhow::bail!(
            "--level {}: only level 1 (in-process nodes, faults in the mesh) is implemented; \
             level 2 (a process per node in network namespaces, netem for delay/loss/rate) \
             is not yet",
            a.level
        );
    }
    let mut scenario = Scenario::load(&a.scenario)?;
    if let Some(seed) = a.seed {
        scenario = scenario.reseeded(seed)?;
    }
    println!(
        "scenario {} (seed {}): {} nodes, {} jobs, {} events over {} ms{}",
        scenario.name,
        scenario.seed,
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
    let sys = actors::node::actix_system();
    let result = sys.block_on(chaos::run(opts))?;
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
