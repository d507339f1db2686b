//! The `roam chaos` scenario: a swarm, its jobs, and what goes wrong when —
//! written as TOML (`configs/chaos/NAME.toml`, every key documented in
//! `configs/chaos/README.md`) so a failure found once can be replayed exactly.
//!
//! Events happen at a given time (`at_ms`) or are drawn from a seeded
//! generator (`random = {count, kinds, between_ms, down_ms}`): each random
//! disruption (kill, pause, partition) comes with its end (restart, resume,
//! heal) after a down time, and random disruptions never overlap each other
//! (each starts at least `gap_ms` after the previous one ended), so a random
//! scenario stays one the swarm is meant to survive. The same file and seed
//! always give the same [`Scenario::timeline`] (the generator is our own,
//! see `rng.rs`), on every machine and every build.
//!
//! Unknown keys are refused, and every error names the file, the line and
//! the key.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::ids::NodeId;
use crate::rng::SplitMix64;

pub const MAX_NODES: u64 = 64;
pub const MAX_JOBS: usize = 1024;
pub const MAX_EVENTS: usize = 10_000;
pub const MAX_DURATION_MS: u64 = 24 * 3600 * 1000;
const MAX_ARGS: usize = 64;
const MAX_ARG_BYTES: usize = 4096;

/// Where an error is: the file and, when known, the line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loc {
    pub path: PathBuf,
    pub line: Option<usize>,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}: line {l}", self.path.display()),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type. `key` is
    /// the key the bad value belongs to, when the message does not name it.
    #[error("{loc}: {}{message}", key_prefix(.key))]
    Syntax {
        loc: Loc,
        key: Option<String>,
        message: String,
    },
    /// Well-formed but wrong.
    #[error("{loc}: `{key}`: {message}")]
    Invalid {
        loc: Loc,
        key: String,
        message: String,
    },
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default()
}

/// The key whose value starts at `pos`: the last `key =` on its line before
/// it (toml's messages for bad values do not name the key).
fn key_before(text: &str, pos: usize) -> Option<String> {
    let line = text.get(..pos)?.rsplit('\n').next()?;
    let before = line[..line.rfind('=')?].trim_end();
    let start = before
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .last()?
        .0;
    let key = &before[start..];
    (!key.is_empty()).then(|| key.to_string())
}

/// One job of the scenario: a guest from `guests/out/` and its arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub guest: String,
    pub args: Vec<String>,
}

/// A concrete chaos event. Nodes are `n1`..`nN`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// SIGKILL the node's process.
    Kill { node: NodeId },
    /// Start a killed node again (same identity, same store directory).
    Restart { node: NodeId },
    /// SIGSTOP the node's process.
    Pause { node: NodeId },
    /// SIGCONT a paused node.
    Resume { node: NodeId },
    /// Only nodes of one group can talk to each other (nodes the file's
    /// groups leave out form one more group, listed last).
    Partition { groups: Vec<Vec<NodeId>> },
    /// End the partition.
    Heal,
    /// Packets from `from` to `to` are delayed (0 removes the delay).
    Delay { from: NodeId, to: NodeId, ms: u64 },
    /// Packets from `from` to `to` are dropped with this probability (0 removes it).
    Loss {
        from: NodeId,
        to: NodeId,
        percent: f64,
    },
    /// Packets from `from` to `to` are limited to this rate (0 removes the limit).
    Rate {
        from: NodeId,
        to: NodeId,
        kbit_per_s: u64,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Kill { node } => write!(f, "kill {node}"),
            Event::Restart { node } => write!(f, "restart {node}"),
            Event::Pause { node } => write!(f, "pause {node}"),
            Event::Resume { node } => write!(f, "resume {node}"),
            Event::Partition { groups } => {
                let g: Vec<String> = groups
                    .iter()
                    .map(|g| {
                        let names: Vec<&str> = g.iter().map(NodeId::as_str).collect();
                        format!("{{{}}}", names.join(","))
                    })
                    .collect();
                write!(f, "partition {}", g.join(" | "))
            }
            Event::Heal => write!(f, "heal"),
            Event::Delay { from, to, ms } => write!(f, "delay {from}->{to} {ms} ms"),
            Event::Loss { from, to, percent } => write!(f, "loss {from}->{to} {percent} %"),
            Event::Rate {
                from,
                to,
                kbit_per_s,
            } => write!(f, "rate {from}->{to} {kbit_per_s} kbit/s"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimedEvent {
    pub at_ms: u64,
    pub event: Event,
}

impl fmt::Display for TimedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>9} ms  {}", self.at_ms, self.event)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<Spanned<String>>,
    nodes: Option<Spanned<u64>>,
    duration_ms: Option<Spanned<u64>>,
    seed: Option<u64>,
    gap_ms: Option<u64>,
    #[serde(default)]
    jobs: Vec<Spanned<RawJob>>,
    #[serde(default)]
    events: Vec<Spanned<RawEvent>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    guest: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default = "one")]
    count: u64,
}

fn one() -> u64 {
    1
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    at_ms: Option<u64>,
    random: Option<RawRandom>,
    kind: Option<String>,
    node: Option<String>,
    groups: Option<Vec<Vec<String>>>,
    from: Option<String>,
    to: Option<String>,
    value: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRandom {
    count: u64,
    kinds: Vec<String>,
    between_ms: [u64; 2],
    #[serde(default = "default_down")]
    down_ms: [u64; 2],
}

fn default_down() -> [u64; 2] {
    [1000, 3000]
}

/// A parsed, validated scenario with its timeline expanded.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub nodes: u64,
    pub duration_ms: u64,
    pub seed: u64,
    pub gap_ms: u64,
    /// One entry per job to start (`count` expanded), in file order.
    pub jobs: Vec<JobSpec>,
    timeline: Vec<TimedEvent>,
    raw: RawScenario,
    path: PathBuf,
    text: String,
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn invalid(&self, line: usize, key: &str, message: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            loc: Loc {
                path: self.path.to_path_buf(),
                line: Some(line),
            },
            key: key.to_string(),
            message: message.into(),
        }
    }
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Scenario::parse(&text, path)
    }

    /// Parses, validates and expands `text` (read from `path`, named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
        let raw: RawScenario = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end().to_string();
            let span = e.span();
            ScenarioError::Syntax {
                loc: Loc {
                    path: path.to_path_buf(),
                    line: span.as_ref().map(|s| Ctx { path, text }.line(s)),
                },
                key: span
                    .and_then(|s| key_before(text, s.start))
                    .filter(|k| !message.contains(&format!("`{k}`"))),
                message,
            }
        })?;
        let seed = raw.seed.unwrap_or(0);
        Scenario::build(raw, text, path, seed)
    }

    /// The same scenario with another seed (e.g. `roam chaos --seed N`).
    pub fn reseeded(&self, seed: u64) -> Result<Scenario, ScenarioError> {
        Scenario::build(self.raw.clone(), &self.text, &self.path, seed)
    }

    /// Every event, in time order (file order for equal times, random
    /// events after explicit ones).
    pub fn timeline(&self) -> &[TimedEvent] {
        &self.timeline
    }

    /// `n1`..`nN`.
    pub fn node_names(&self) -> Vec<NodeId> {
        (1..=self.nodes).map(|i| NodeId(format!("n{i}"))).collect()
    }

    fn build(
        raw: RawScenario,
        text: &str,
        path: &Path,
        seed: u64,
    ) -> Result<Scenario, ScenarioError> {
        let cx = Ctx { path, text };
        let top = |s: &Option<Spanned<u64>>, default: u64| {
            s.as_ref()
                .map_or((default, 1), |s| (*s.get_ref(), cx.line(&s.span())))
        };
        let (nodes, nodes_line) = top(&raw.nodes, 3);
        if !(1..=MAX_NODES).contains(&nodes) {
            return Err(cx.invalid(
                nodes_line,
                "nodes",
                format!("{nodes} is not in 1..={MAX_NODES}"),
            ));
        }
        let (duration_ms, d_line) = top(&raw.duration_ms, 60_000);
        if !(1..=MAX_DURATION_MS).contains(&duration_ms) {
            return Err(cx.invalid(
                d_line,
                "duration_ms",
                format!("{duration_ms} is not in 1..={MAX_DURATION_MS}"),
            ));
        }
        let name = match &raw.name {
            Some(n) => {
                if !valid_name(n.get_ref()) {
                    return Err(cx.invalid(
                        cx.line(&n.span()),
                        "name",
                        "1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'",
                    ));
                }
                n.get_ref().clone()
            }
            None => path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("chaos")
                .to_string(),
        };
        let jobs = build_jobs(&raw.jobs, &cx)?;
        let mut sc = Scenario {
            name,
            nodes,
            duration_ms,
            seed,
            gap_ms: raw.gap_ms.unwrap_or(1000),
            jobs,
            timeline: Vec::new(),
            raw: raw.clone(),
            path: path.to_path_buf(),
            text: text.to_string(),
        };
        if raw.events.len() > MAX_EVENTS {
            return Err(cx.invalid(1, "events", format!("more than {MAX_EVENTS}")));
        }
        // (at, line, event): explicit ones first, then random ones.
        let mut all: Vec<(u64, usize, Event)> = Vec::new();
        let mut randoms = Vec::new();
        for ev in &raw.events {
            let line = cx.line(&ev.span());
            let e = ev.get_ref();
            match (&e.at_ms, &e.random) {
                (Some(_), Some(_)) => {
                    return Err(cx.invalid(
                        line,
                        "random",
                        "an event has `at_ms` or `random`, not both",
                    ))
                }
                (None, None) => {
                    return Err(cx.invalid(line, "at_ms", "missing: give `at_ms` or `random`"))
                }
                (Some(at), None) => all.push((*at, line, explicit_event(e, line, &cx, nodes)?)),
                (None, Some(r)) => {
                    for key in [
                        ("kind", e.kind.is_some()),
                        ("node", e.node.is_some()),
                        ("groups", e.groups.is_some()),
                        ("from", e.from.is_some()),
                        ("to", e.to.is_some()),
                        ("value", e.value.is_some()),
                    ] {
                        if key.1 {
                            return Err(cx.invalid(
                                line,
                                key.0,
                                "not a key of a random event (its targets are drawn)",
                            ));
                        }
                    }
                    randoms.push((line, r));
                }
            }
        }
        let mut rng = SplitMix64::new(seed);
        let mut draws = Vec::new();
        for (line, r) in randoms {
            draw(r, line, nodes, &cx, &mut rng, &mut draws)?;
            if draws.len() > MAX_EVENTS {
                return Err(cx.invalid(
                    line,
                    "random.count",
                    format!("more than {MAX_EVENTS} random events in all"),
                ));
            }
        }
        draws.sort_by_key(|d| d.start);
        let mut free_from = 0u64;
        for d in draws {
            let start = d.start.max(free_from);
            let end = start.saturating_add(d.down);
            if end > duration_ms {
                return Err(cx.invalid(
                    d.line,
                    "random",
                    format!(
                        "random events do not fit in duration_ms ({duration_ms}): a {} would end at {end} ms \
                         (disruptions never overlap and are {} ms apart); widen between_ms, shorten down_ms or gap_ms, or lengthen duration_ms",
                        d.kind, sc.gap_ms
                    ),
                ));
            }
            free_from = end.saturating_add(sc.gap_ms);
            let (begin, finish) = match d.target {
                Target::Node(node) if d.kind == "kill" => {
                    (Event::Kill { node: node.clone() }, Event::Restart { node })
                }
                Target::Node(node) => (Event::Pause { node: node.clone() }, Event::Resume { node }),
                Target::Groups(groups) => (Event::Partition { groups }, Event::Heal),
            };
            all.push((start, d.line, begin));
            all.push((end, d.line, finish));
        }
        all.sort_by_key(|(at, _, _)| *at); // stable: file order, then random
        check_sequence(&all, duration_ms, &cx)?;
        sc.timeline = all
            .into_iter()
            .map(|(at_ms, _, event)| TimedEvent { at_ms, event })
            .collect();
        Ok(sc)
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

fn parse_node(s: &str, nodes: u64) -> Option<NodeId> {
    let i: u64 = s.strip_prefix('n')?.parse().ok()?;
    (format!("n{i}") == s && (1..=nodes).contains(&i)).then(|| NodeId(s.to_string()))
}

fn build_jobs(raw: &[Spanned<RawJob>], cx: &Ctx) -> Result<Vec<JobSpec>, ScenarioError> {
    let mut jobs = Vec::new();
    for j in raw {
        let line = cx.line(&j.span());
        let r = j.get_ref();
        if !valid_name(&r.guest) {
            return Err(cx.invalid(line, "guest", format!("{:?}: a guest name (guests/out/NAME.wasm), 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'", r.guest)));
        }
        if r.args.len() > MAX_ARGS || r.args.iter().any(|a| a.len() > MAX_ARG_BYTES) {
            return Err(cx.invalid(
                line,
                "args",
                format!("at most {MAX_ARGS} arguments of {MAX_ARG_BYTES} bytes"),
            ));
        }
        if r.count == 0 || jobs.len() as u64 + r.count > MAX_JOBS as u64 {
            return Err(cx.invalid(
                line,
                "count",
                format!(
                    "{}: each job at least once, at most {MAX_JOBS} jobs in all",
                    r.count
                ),
            ));
        }
        for _ in 0..r.count {
            jobs.push(JobSpec {
                guest: r.guest.clone(),
                args: r.args.clone(),
            });
        }
    }
    if jobs.is_empty() {
        return Err(cx.invalid(1, "jobs", "a scenario needs at least one [[jobs]] entry"));
    }
    Ok(jobs)
}

fn explicit_event(e: &RawEvent, line: usize, cx: &Ctx, nodes: u64) -> Result<Event, ScenarioError> {
    let names = |s: &str| parse_node(s, nodes);
    let kind = e.kind.as_deref().ok_or_else(|| {
        cx.invalid(
            line,
            "kind",
            "missing (kill, restart, pause, resume, partition, heal, delay, loss or rate)",
        )
    })?;
    let wants: &[&str] = match kind {
        "kill" | "restart" | "pause" | "resume" => &["node"],
        "partition" => &["groups"],
        "heal" => &[],
        "delay" | "loss" | "rate" => &["from", "to", "value"],
        other => return Err(cx.invalid(line, "kind", format!("{other:?}: expected kill, restart, pause, resume, partition, heal, delay, loss or rate"))),
    };
    let present = [
        ("node", e.node.is_some()),
        ("groups", e.groups.is_some()),
        ("from", e.from.is_some()),
        ("to", e.to.is_some()),
        ("value", e.value.is_some()),
    ];
    for (key, is) in present {
        if is != wants.contains(&key) {
            let msg = if is {
                format!("not a key of a {kind} event")
            } else {
                format!("missing in a {kind} event")
            };
            return Err(cx.invalid(line, key, msg));
        }
    }
    let node = |key: &str, v: &Option<String>| {
        let s = v.as_deref().unwrap_or_default();
        names(s).ok_or_else(|| {
            cx.invalid(
                line,
                key,
                format!("{s:?} is not a node of this scenario (n1..nN)"),
            )
        })
    };
    let value = e.value.unwrap_or_default();
    let whole = |max: f64| -> Result<u64, ScenarioError> {
        if value.fract() == 0.0 && (0.0..=max).contains(&value) {
            Ok(value as u64)
        } else {
            Err(cx.invalid(
                line,
                "value",
                format!("{value} is not a whole number in 0..={max}"),
            ))
        }
    };
    Ok(match kind {
        "kill" => Event::Kill {
            node: node("node", &e.node)?,
        },
        "restart" => Event::Restart {
            node: node("node", &e.node)?,
        },
        "pause" => Event::Pause {
            node: node("node", &e.node)?,
        },
        "resume" => Event::Resume {
            node: node("node", &e.node)?,
        },
        "heal" => Event::Heal,
        "partition" => {
            let mut seen = BTreeSet::new();
            let mut groups = Vec::new();
            for g in e.groups.iter().flatten() {
                let mut group = Vec::new();
                for s in g {
                    let n = names(s).ok_or_else(|| {
                        cx.invalid(
                            line,
                            "groups",
                            format!("{s:?} is not a node of this scenario"),
                        )
                    })?;
                    if !seen.insert(n.clone()) {
                        return Err(cx.invalid(line, "groups", format!("{s} is in two groups")));
                    }
                    group.push(n);
                }
                if group.is_empty() {
                    return Err(cx.invalid(line, "groups", "a group is empty"));
                }
                groups.push(group);
            }
            let rest: Vec<NodeId> = (1..=nodes)
                .map(|i| NodeId(format!("n{i}")))
                .filter(|n| !seen.contains(n))
                .collect();
            if !rest.is_empty() {
                groups.push(rest);
            }
            if groups.len() < 2 {
                return Err(cx.invalid(line, "groups", "a partition needs at least two groups"));
            }
            Event::Partition { groups }
        }
        link => {
            let (from, to) = (node("from", &e.from)?, node("to", &e.to)?);
            if from == to {
                return Err(cx.invalid(line, "to", "a link joins two different nodes"));
            }
            match link {
                "delay" => Event::Delay {
                    from,
                    to,
                    ms: whole(60_000.0)?,
                },
                "rate" => Event::Rate {
                    from,
                    to,
                    kbit_per_s: whole(10_000_000.0)?,
                },
                _ if (0.0..=100.0).contains(&value) => Event::Loss {
                    from,
                    to,
                    percent: value,
                },
                _ => {
                    return Err(cx.invalid(
                        line,
                        "value",
                        format!("{value} is not a percentage in 0..=100"),
                    ))
                }
            }
        }
    })
}

enum Target {
    Node(NodeId),
    Groups(Vec<Vec<NodeId>>),
}

struct Draw {
    start: u64,
    down: u64,
    kind: &'static str,
    target: Target,
    line: usize,
}

fn draw(
    r: &RawRandom,
    line: usize,
    nodes: u64,
    cx: &Ctx,
    rng: &mut SplitMix64,
    out: &mut Vec<Draw>,
) -> Result<(), ScenarioError> {
    if r.count == 0 || r.count > MAX_EVENTS as u64 {
        return Err(cx.invalid(
            line,
            "random.count",
            format!("{} is not in 1..={MAX_EVENTS}", r.count),
        ));
    }
    let mut kinds = Vec::new();
    for k in &r.kinds {
        kinds.push(match k.as_str() {
            "kill" => "kill",
            "pause" => "pause",
            "partition" if nodes >= 2 => "partition",
            "partition" => {
                return Err(cx.invalid(line, "random.kinds", "a partition needs at least 2 nodes"))
            }
            other => {
                return Err(cx.invalid(
                    line,
                    "random.kinds",
                    format!("{other:?}: random events are kill, pause or partition"),
                ))
            }
        });
    }
    if kinds.is_empty() {
        return Err(cx.invalid(line, "random.kinds", "empty"));
    }
    let ([lo, hi], [dlo, dhi]) = (r.between_ms, r.down_ms);
    if lo > hi {
        return Err(cx.invalid(line, "random.between_ms", format!("[{lo}, {hi}] is empty")));
    }
    if dlo == 0 || dlo > dhi {
        return Err(cx.invalid(
            line,
            "random.down_ms",
            format!("[{dlo}, {dhi}] must be a non-empty range of positive times"),
        ));
    }
    let all: Vec<NodeId> = (1..=nodes).map(|i| NodeId(format!("n{i}"))).collect();
    for _ in 0..r.count {
        let kind = kinds[rng.below(kinds.len() as u64) as usize];
        let start = rng.between(lo, hi);
        let down = rng.between(dlo, dhi);
        let target = if kind == "partition" {
            let mut v = all.clone();
            rng.shuffle(&mut v);
            let minority = rng.between(1, ((nodes - 1) / 2).max(1)) as usize;
            let mut a = v[..minority].to_vec();
            let mut b = v[minority..].to_vec();
            a.sort();
            b.sort();
            Target::Groups(vec![a, b])
        } else {
            Target::Node(all[rng.below(nodes) as usize].clone())
        };
        out.push(Draw {
            start,
            down,
            kind,
            target,
            line,
        });
    }
    Ok(())
}

/// Each event must make sense where it falls: no restart of a running node,
/// no resume of a node not paused, no heal without a partition, nothing
/// after the end.
fn check_sequence(
    all: &[(u64, usize, Event)],
    duration_ms: u64,
    cx: &Ctx,
) -> Result<(), ScenarioError> {
    let mut killed = BTreeSet::new();
    let mut paused = BTreeSet::new();
    let mut partitioned = false;
    for (at, line, e) in all {
        if *at > duration_ms {
            return Err(cx.invalid(
                *line,
                "at_ms",
                format!("{e} at {at} ms is after the end ({duration_ms} ms)"),
            ));
        }
        let wrong = |why: &str| Err(cx.invalid(*line, "kind", format!("{e} at {at} ms: {why}")));
        match e {
            Event::Kill { node } => {
                if !killed.insert(node.clone()) {
                    return wrong("the node is already down");
                }
                paused.remove(node);
            }
            Event::Restart { node } => {
                if !killed.remove(node) {
                    return wrong("the node is not down");
                }
            }
            Event::Pause { node } => {
                if killed.contains(node) || !paused.insert(node.clone()) {
                    return wrong("the node is down or paused already");
                }
            }
            Event::Resume { node } => {
                if !paused.remove(node) {
                    return wrong("the node is not paused");
                }
            }
            Event::Partition { .. } => partitioned = true,
            Event::Heal => {
                if !std::mem::take(&mut partitioned) {
                    return wrong("there is no partition to heal");
                }
            }
            Event::Delay { .. } | Event::Loss { .. } | Event::Rate { .. } => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(s, Path::new("t.toml"))
    }

    const JOB: &str = "[[jobs]]\nguest = \"sieve\"\n";

    fn events(sc: &Scenario) -> Vec<String> {
        sc.timeline()
            .iter()
            .map(|t| format!("{} {}", t.at_ms, t.event))
            .collect()
    }

    #[test]
    fn defaults_and_explicit_events_in_time_order() {
        let sc = parse(&format!(
            "{JOB}args = [\"100\"]\ncount = 2\n\
             [[events]]\nat_ms = 5000\nkind = \"restart\"\nnode = \"n2\"\n\
             [[events]]\nat_ms = 1000\nkind = \"kill\"\nnode = \"n2\"\n\
             [[events]]\nat_ms = 1000\nkind = \"delay\"\nfrom = \"n1\"\nto = \"n3\"\nvalue = 40\n\
             [[events]]\nat_ms = 2000\nkind = \"partition\"\ngroups = [[\"n1\"]]\n\
             [[events]]\nat_ms = 3000\nkind = \"heal\"\n"
        ))
        .unwrap();
        assert_eq!(
            (sc.name.as_str(), sc.nodes, sc.duration_ms, sc.seed),
            ("t", 3, 60_000, 0)
        );
        assert_eq!(sc.jobs.len(), 2);
        assert_eq!(sc.jobs[1].args, ["100"]);
        assert_eq!(
            events(&sc),
            [
                "1000 kill n2",
                "1000 delay n1->n3 40 ms",
                "2000 partition {n1} | {n2,n3}",
                "3000 heal",
                "5000 restart n2"
            ]
        );
    }

    #[test]
    fn unknown_keys_name_file_line_and_key() {
        let e = parse(&format!(
            "{JOB}[[events]]\nat_ms = 1\nkind = \"heal\"\nnod = \"n1\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("t.toml: line 6"), "{e}");
        assert!(e.contains("nod"), "{e}");
        let e = parse("nodez = 3\n").unwrap_err().to_string();
        assert!(
            e.starts_with("t.toml: line 1") && e.contains("nodez"),
            "{e}"
        );
        let e = parse(&format!("nodes = 3\n{JOB}[[events]]\nrandom = {{ count = 1, kinds = [\"kill\"], between_ms = [0, 1], downms = [1, 2] }}\n")).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("downms"), "{e}");
    }

    #[test]
    fn type_errors_name_the_key_too() {
        for (text, want) in [
            ("nodes = \"x\"\n", "t.toml: line 1: `nodes`: invalid type"),
            (
                "\n[[events]]\nat_ms = -1\n",
                "t.toml: line 3: `at_ms`: invalid value",
            ),
            (
                "[[events]]\nrandom = { count = \"a\" }\n",
                "t.toml: line 2: `count`: invalid type",
            ),
            (
                "[[events]]\nrandom = { count = 1, kinds = [\"kill\", 5] }\n",
                "t.toml: line 2: `kinds`: invalid type",
            ),
            (
                "nodes = 1\nnodes = 2\n",
                "t.toml: line 2: duplicate key `nodes`",
            ),
            ("nodes = [", "t.toml: line 1: "),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
        assert_eq!(key_before("a = 1", 0), None);
        assert_eq!(key_before("é = [\"x\", ", 9).as_deref(), None);
    }

    #[test]
    fn bad_values_name_line_and_key() {
        for (text, line, key) in [
            ("nodes = 0\n", 1, "nodes"),
            ("\nnodes = 65\n", 2, "nodes"),
            ("duration_ms = 0\n", 1, "duration_ms"),
            ("name = \"../x\"\n", 1, "name"),
            ("[[jobs]]\nguest = \"../../etc/passwd\"\n", 1, "guest"),
            ("[[jobs]]\nguest = \"a\"\ncount = 0\n", 1, "count"),
            ("\n\n[[jobs]]\nguest = \"a\"\ncount = 2000\n", 3, "count"),
        ] {
            match parse(text) {
                Err(ScenarioError::Invalid { loc, key: k, .. }) => {
                    assert_eq!((loc.line, k.as_str()), (Some(line), key), "{text}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        let ev = |body: &str| parse(&format!("{JOB}[[events]]\n{body}\n"));
        for (body, key) in [
            ("kind = \"kill\"\nnode = \"n1\"", "at_ms"),
            ("at_ms = 1\nkind = \"explode\"", "kind"),
            ("at_ms = 1\nkind = \"kill\"", "node"),
            ("at_ms = 1\nkind = \"kill\"\nnode = \"n4\"", "node"),
            ("at_ms = 1\nkind = \"kill\"\nnode = \"n01\"", "node"),
            ("at_ms = 1\nkind = \"heal\"\nnode = \"n1\"", "node"),
            (
                "at_ms = 1\nkind = \"partition\"\ngroups = [[\"n1\", \"n2\", \"n3\"]]",
                "groups",
            ),
            (
                "at_ms = 1\nkind = \"partition\"\ngroups = [[\"n1\"], [\"n1\"]]",
                "groups",
            ),
            (
                "at_ms = 1\nkind = \"loss\"\nfrom = \"n1\"\nto = \"n2\"\nvalue = 101",
                "value",
            ),
            (
                "at_ms = 1\nkind = \"delay\"\nfrom = \"n1\"\nto = \"n2\"\nvalue = 1.5",
                "value",
            ),
            (
                "at_ms = 1\nkind = \"rate\"\nfrom = \"n1\"\nto = \"n1\"\nvalue = 1",
                "to",
            ),
            ("at_ms = 1\nkind = \"restart\"\nnode = \"n1\"", "kind"),
            ("at_ms = 1\nkind = \"heal\"", "kind"),
            ("at_ms = 1\nkind = \"resume\"\nnode = \"n1\"", "kind"),
            ("at_ms = 60001\nkind = \"pause\"\nnode = \"n1\"", "at_ms"),
            (
                "at_ms = 1\nrandom = { count = 1, kinds = [\"kill\"], between_ms = [0, 9] }",
                "random",
            ),
            (
                "random = { count = 1, kinds = [\"kill\"], between_ms = [0, 9] }\nnode = \"n1\"",
                "node",
            ),
            (
                "random = { count = 1, kinds = [\"restart\"], between_ms = [0, 9] }",
                "random.kinds",
            ),
            (
                "random = { count = 1, kinds = [], between_ms = [0, 9] }",
                "random.kinds",
            ),
            (
                "random = { count = 0, kinds = [\"kill\"], between_ms = [0, 9] }",
                "random.count",
            ),
            (
                "random = { count = 1, kinds = [\"kill\"], between_ms = [9, 0] }",
                "random.between_ms",
            ),
            (
                "random = { count = 1, kinds = [\"kill\"], between_ms = [0, 9], down_ms = [0, 5] }",
                "random.down_ms",
            ),
        ] {
            match ev(body) {
                Err(ScenarioError::Invalid {
                    loc,
                    key: k,
                    message,
                }) => {
                    assert_eq!(k, key, "{body}: {message}");
                    assert_eq!(loc.line, Some(3), "{body}: events start on line 3");
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    const RANDOM: &str = "nodes = 5\nduration_ms = 100000\nseed = 11\ngap_ms = 500\n[[jobs]]\nguest = \"sieve\"\n\
        [[events]]\nrandom = { count = 6, kinds = [\"kill\", \"pause\"], between_ms = [1000, 60000], down_ms = [500, 2000] }\n\
        [[events]]\nrandom = { count = 2, kinds = [\"partition\"], between_ms = [1000, 60000] }\n";

    #[test]
    fn random_events_are_seeded_paired_and_never_overlap() {
        let a = parse(RANDOM).unwrap();
        let b = parse(RANDOM).unwrap();
        assert_eq!(a.timeline(), b.timeline(), "same seed, same timeline");
        let c = a.reseeded(12).unwrap();
        assert_ne!(a.timeline(), c.timeline(), "another seed, another timeline");
        for sc in [&a, &c] {
            let t = sc.timeline();
            assert_eq!(t.len(), 16);
            let starts = t
                .iter()
                .filter(|e| {
                    matches!(
                        e.event,
                        Event::Kill { .. } | Event::Pause { .. } | Event::Partition { .. }
                    )
                })
                .count();
            assert_eq!(starts, 8);
            // Disruptions alternate with their ends, gap_ms apart.
            for pair in t.chunks(2) {
                let (s, e) = (&pair[0], &pair[1]);
                let ok = match (&s.event, &e.event) {
                    (Event::Kill { node: a }, Event::Restart { node: b })
                    | (Event::Pause { node: a }, Event::Resume { node: b }) => a == b,
                    (Event::Partition { groups }, Event::Heal) => {
                        groups.len() == 2
                            && groups[0].len() * 2 < 5
                            && groups.iter().map(Vec::len).sum::<usize>() == 5
                    }
                    _ => false,
                };
                assert!(ok, "{s} then {e}");
                assert!(e.at_ms > s.at_ms && e.at_ms <= sc.duration_ms);
            }
            for w in t.windows(3).step_by(2) {
                assert!(
                    w[2].at_ms >= w[1].at_ms + 500,
                    "{} too close to {}",
                    w[2],
                    w[1]
                );
            }
        }
    }

    #[test]
    fn random_events_that_cannot_fit_are_refused() {
        let text = format!("duration_ms = 10000\n{JOB}[[events]]\nrandom = {{ count = 5, kinds = [\"kill\"], between_ms = [0, 1000], down_ms = [2000, 2000] }}\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("do not fit"), "{e}");
    }

    #[test]
    fn shipped_scenarios_parse_and_match_their_promises() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/chaos");
        let load = |n: &str| Scenario::load(&dir.join(n)).unwrap_or_else(|e| panic!("{e}"));
        let count = |sc: &Scenario, f: fn(&Event) -> bool| {
            sc.timeline().iter().filter(|t| f(&t.event)).count()
        };
        let smoke = load("smoke.toml");
        assert_eq!((smoke.nodes, smoke.jobs.len()), (3, 2));
        assert!(smoke.duration_ms <= 20_000);
        assert_eq!(count(&smoke, |e| matches!(e, Event::Kill { .. })), 1);
        assert_eq!(count(&smoke, |e| matches!(e, Event::Restart { .. })), 1);
        assert_eq!(count(&smoke, |e| matches!(e, Event::Partition { .. })), 1);
        assert_eq!(count(&smoke, |e| matches!(e, Event::Heal)), 1);
        let bench = load("bench.toml");
        assert_eq!((bench.nodes, bench.jobs.len()), (8, 32));
        assert_eq!(count(&bench, |e| matches!(e, Event::Kill { .. })), 20);
        assert_eq!(count(&bench, |e| matches!(e, Event::Restart { .. })), 20);
        assert_eq!(count(&bench, |e| matches!(e, Event::Partition { .. })), 3);
        // The benchmark must expand for other seeds too (roam chaos --seed N).
        for seed in 0..50 {
            bench
                .reseeded(seed)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
        let churn = load("churn.toml");
        assert!(churn.timeline().len() >= 10);
        // The README documents every key the parser knows.
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        for key in [
            "name",
            "nodes",
            "duration_ms",
            "seed",
            "gap_ms",
            "guest",
            "args",
            "count",
            "at_ms",
            "kind",
            "node",
            "groups",
            "from",
            "to",
            "value",
            "random",
            "kinds",
            "between_ms",
            "down_ms",
        ] {
            assert!(readme.contains(&format!("`{key}`")), "README lacks `{key}`");
        }
    }

    #[test]
    fn timeline_serialises_for_the_harness() {
        let sc = parse(RANDOM).unwrap();
        let json = serde_json::to_string(sc.timeline()).unwrap();
        let back: Vec<TimedEvent> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sc.timeline());
        assert!(
            json.contains("\"kind\":\"kill\"") || json.contains("\"kind\":\"pause\""),
            "{json}"
        );
    }
}
