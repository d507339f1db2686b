//! Timelines of a swarm — which job ran on which node when, each move with its
//! downtime, drains and load changes — and an SVG picture of one.
//!
//! The SVG is written by hand: it is a few hundred elements of one fixed layout, and
//! a plotting crate would cost more build time than the layout code it saves. The
//! model is plain data (events with times), so a demo, a benchmark or a test fills it
//! from whatever it observed and [`render_svg`] draws it:
//!
//! - one horizontal lane per node, one row per job inside every lane; a job's bar
//!   lies in the lane of the node it ran on;
//! - a move is an arrow from the job's row on the source to its row on the
//!   destination at the handover, labelled with the downtime; the pre-copy before it
//!   is a thin bracket on the source bar; an aborted move is a red cross;
//! - a drain is a dashed line and a hatched rest of the lane; load is an orange band;
//! - a kill (of a node, or of one job on it) is a dark red bar where the jobs stop;
//!   a partition is a purple band over the lanes of the nodes cut off, while it lasts.
//!
//! A lane has a row for each job that ever ran on that node, so a swarm of many
//! nodes that each saw one job stays compact.

use std::fmt::Write as _;

/// What happened, when (milliseconds from the timeline's zero).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub t_ms: f64,
    pub what: What,
}

#[derive(Clone, Debug, PartialEq)]
pub enum What {
    /// `job` started running on `node`.
    Start { job: String, node: String },
    /// A move of `job`, begun at the event's time and finished at `end_ms`.
    Move {
        job: String,
        from: String,
        to: String,
        end_ms: f64,
        /// "committed", "aborted: ..." or "escalated" (as in a move report).
        outcome: String,
        downtime_ms: f64,
        sent_bytes: u64,
        /// "pre-copy", "post-copy" or "hybrid" (labelled when not pre-copy).
        mode: String,
    },
    /// `job` ended (wherever it ran).
    Exit { job: String },
    /// `node` started draining.
    Drain { node: String },
    /// `node`'s load became `load` (0 ends a band).
    Load { node: String, load: f64 },
    /// `node` was killed (a crash, a chaos run): every job running there stops. With
    /// `job`, only that job was killed on `node`.
    Kill { node: String, job: Option<String> },
    /// `nodes` were cut off from the rest of the swarm from the event's time until
    /// `end_ms`.
    Partition { nodes: Vec<String>, end_ms: f64 },
    /// `node` was frozen (SIGSTOP; at level 1 of a chaos run, cut off from every
    /// peer while its jobs compute) from the event's time until `end_ms`.
    Pause { node: String, end_ms: f64 },
    /// `node` came back after a kill (its jobs are not restarted by this).
    Restart { node: String },
}

/// A swarm's history, to draw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    pub title: String,
    /// Node lanes, top to bottom; nodes named only by events are added after them.
    pub nodes: Vec<String>,
    pub events: Vec<Event>,
    /// Right edge of the picture (ms); default: the last event.
    pub end_ms: Option<f64>,
}

/// A stretch of time a job ran on one node.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub job: String,
    pub node: String,
    pub from_ms: f64,
    pub to_ms: f64,
}

impl Timeline {
    pub fn new(title: impl Into<String>, nodes: &[&str]) -> Timeline {
        Timeline {
            title: title.into(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            ..Timeline::default()
        }
    }

    pub fn push(&mut self, t_ms: f64, what: What) {
        self.events.push(Event { t_ms, what });
    }

    /// Events in time order (equal times keep their insertion order).
    fn sorted(&self) -> Vec<&Event> {
        let mut v: Vec<&Event> = self.events.iter().collect();
        v.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
        v
    }

    /// Jobs in the order they first appear.
    pub fn jobs(&self) -> Vec<String> {
        let mut jobs: Vec<String> = Vec::new();
        for e in self.sorted() {
            let job = match &e.what {
                What::Start { job, .. } | What::Move { job, .. } | What::Exit { job } => job,
                What::Kill { job: Some(job), .. } => job,
                _ => continue,
            };
            if !jobs.contains(job) {
                jobs.push(job.clone());
            }
        }
        jobs
    }

    /// Lanes: the configured nodes, then any other node an event names.
    pub fn lanes(&self) -> Vec<String> {
        let mut lanes = self.nodes.clone();
        for e in self.sorted() {
            let names: Vec<&String> = match &e.what {
                What::Start { node, .. }
                | What::Drain { node }
                | What::Load { node, .. }
                | What::Kill { node, .. }
                | What::Pause { node, .. }
                | What::Restart { node } => vec![node],
                What::Move { from, to, .. } => vec![from, to],
                What::Partition { nodes, .. } => nodes.iter().collect(),
                What::Exit { .. } => vec![],
            };
            for n in names {
                if !lanes.contains(n) {
                    lanes.push(n.clone());
                }
            }
        }
        lanes
    }

    /// Right edge: `end_ms`, or the last time any event mentions.
    pub fn end(&self) -> f64 {
        self.end_ms.unwrap_or_else(|| {
            self.events
                .iter()
                .map(|e| match &e.what {
                    What::Move { end_ms, .. }
                    | What::Partition { end_ms, .. }
                    | What::Pause { end_ms, .. } => end_ms.max(e.t_ms),
                    _ => e.t_ms,
                })
                .fold(0.0, f64::max)
        })
    }

    /// Where each job ran when. A committed move ends the source's stretch when the
    /// job paused (its end minus the downtime) and starts the destination's at its
    /// end; other moves change nothing. A job with no start begins at 0 on the
    /// source of its first move. A kill ends the stretches on its node (or its one
    /// job's).
    pub fn segments(&self) -> Vec<Segment> {
        let end = self.end();
        let mut open: Vec<(String, String, f64)> = Vec::new(); // job, node, since
        let mut out = Vec::new();
        let mut close = |open: &mut Vec<(String, String, f64)>, job: &str, at: f64| {
            if let Some(i) = open.iter().position(|(j, _, _)| j == job) {
                let (job, node, since) = open.remove(i);
                out.push(Segment {
                    job,
                    node,
                    from_ms: since,
                    to_ms: at.max(since),
                });
            }
        };
        for e in self.sorted() {
            match &e.what {
                What::Start { job, node } => {
                    close(&mut open, job, e.t_ms);
                    open.push((job.clone(), node.clone(), e.t_ms));
                }
                What::Move {
                    job,
                    from,
                    to,
                    end_ms,
                    outcome,
                    downtime_ms,
                    ..
                } if outcome == "committed" => {
                    if !open.iter().any(|(j, _, _)| j == job) {
                        open.push((job.clone(), from.clone(), 0.0));
                    }
                    close(&mut open, job, end_ms - downtime_ms.max(0.0));
                    open.push((job.clone(), to.clone(), *end_ms));
                }
                What::Exit { job } => close(&mut open, job, e.t_ms),
                What::Kill { node, job } => {
                    let hit: Vec<String> = open
                        .iter()
                        .filter(|(j, n, _)| n == node && job.as_ref().is_none_or(|k| k == j))
                        .map(|(j, _, _)| j.clone())
                        .collect();
                    for j in hit {
                        close(&mut open, &j, e.t_ms);
                    }
                }
                _ => {}
            }
        }
        let rest: Vec<String> = open.iter().map(|(j, _, _)| j.clone()).collect();
        for job in rest {
            close(&mut open, &job, end);
        }
        out.sort_by(|a, b| a.from_ms.total_cmp(&b.from_ms));
        out
    }

    /// The job rows of each lane (in [`Timeline::lanes`] order): the jobs that ran on
    /// that node, were moved to or from it, or were killed there, in [`Timeline::jobs`]
    /// order.
    pub fn lane_rows(&self) -> Vec<Vec<String>> {
        let lanes = self.lanes();
        let mut on: Vec<std::collections::HashSet<String>> = vec![Default::default(); lanes.len()];
        let mut mark = |node: &str, job: &str| {
            if let Some(i) = lanes.iter().position(|n| n == node) {
                on[i].insert(job.to_string());
            }
        };
        for g in self.segments() {
            mark(&g.node, &g.job);
        }
        for e in &self.events {
            match &e.what {
                What::Move { job, from, to, .. } => {
                    mark(from, job);
                    mark(to, job);
                }
                What::Start { job, node }
                | What::Kill {
                    node,
                    job: Some(job),
                } => mark(node, job),
                _ => {}
            }
        }
        let jobs = self.jobs();
        on.iter()
            .map(|set| jobs.iter().filter(|j| set.contains(*j)).cloned().collect())
            .collect()
    }
}

const WIDTH: f64 = 1200.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 50.0;
const TOP: f64 = 74.0;
const ROW: f64 = 26.0;
const BAR: f64 = 14.0;
/// Room above and below a lane's job rows (drain and load labels, move labels).
const PAD: f64 = 24.0;
const FONT: f64 = 12.0;
/// Estimated advance of one character at `FONT` (for label collision checks).
const CHAR_W: f64 = 6.6;
const PALETTE: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f",
];

/// Escapes text for an SVG text node or attribute value.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.0} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// A tick step (ms) giving roughly 8-16 ticks over `span_ms`.
fn tick_step(span_ms: f64) -> f64 {
    let steps = [
        10.0, 20.0, 50.0, 100.0, 200.0, 250.0, 500.0, 1e3, 2e3, 5e3, 10e3, 15e3, 30e3, 60e3, 120e3,
        300e3, 600e3, 1200e3, 1800e3, 3600e3,
    ];
    steps
        .iter()
        .copied()
        .find(|s| span_ms / s <= 16.0)
        .unwrap_or(3600e3 * (span_ms / 3600e3 / 16.0).ceil())
}

fn tick_label(ms: f64, step: f64) -> String {
    if step < 1000.0 {
        format!("{:.1} s", ms / 1e3)
    } else if step < 60e3 {
        format!("{:.0} s", ms / 1e3)
    } else {
        format!("{:.0} min", ms / 60e3)
    }
}

/// How bad it is for a label to cover something: text over text is unreadable, over
/// a bar it hides the bar, across an arrow (haloed) it is only untidy.
const OVER_LABEL: u32 = 100;
const OVER_BAR: u32 = 10;
const OVER_ARROW: u32 = 1;

/// Boxes already taken (labels, bars, arrows), each with the cost of covering it, so
/// later labels move out of their way.
#[derive(Default)]
struct Placed(Vec<(f64, f64, f64, f64, u32)>);

impl Placed {
    /// Marks a rectangle labels should keep off, at `cost` ([`OVER_BAR`], ...).
    fn block(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, cost: u32) {
        self.0.push((x0, y0, x1, y1, cost));
    }

    /// Places a label of `chars` characters whose left end is near `x` at the first of
    /// `ys` (baselines) that covers nothing or, where every one covers something, at
    /// the first of the cheapest; returns the chosen baseline (`ys[0]` if empty).
    fn place(&mut self, x: f64, chars: usize, ys: &[f64]) -> f64 {
        // Labels are often bold: a little wider than plain text.
        let w = chars as f64 * CHAR_W * 1.1;
        let h = FONT;
        let cost = |y: f64, placed: &Placed| -> u32 {
            placed
                .0
                .iter()
                .filter(|&&(x0, y0, x1, y1, _)| {
                    !(x + w <= x0 || x >= x1 || y + 2.0 <= y0 || y - h >= y1)
                })
                .map(|b| b.4)
                .sum()
        };
        let mut best: Option<(u32, f64)> = None;
        for &y in ys {
            let c = cost(y, self);
            if best.is_none_or(|(b, _)| c < b) {
                best = Some((c, y));
            }
            if c == 0 {
                break;
            }
        }
        let y = best.map_or(ys.first().copied().unwrap_or(0.0), |b| b.1);
        self.block(x - 1.0, y - h, x + w + 1.0, y + 2.0, OVER_LABEL);
        y
    }
}

/// Colours of the markers that are not jobs.
const KILL: &str = "#8b0000";
const PARTITION: &str = "#7b3294";
const PAUSE: &str = "#5f6b7a";
const RESTART: &str = "#2a7d2a";

/// One entry of the legend under the plot.
enum Key {
    Job(String, &'static str),
    Move,
    PreCopy,
    Aborted,
    Drain,
    Load,
    Kill,
    Restart,
    Partition,
    Pause,
}

impl Key {
    fn label(&self) -> &str {
        match self {
            Key::Job(name, _) => name,
            Key::Move => "move (label: downtime)",
            Key::PreCopy => "pre-copy",
            Key::Aborted => "aborted move",
            Key::Drain => "drain",
            Key::Load => "load",
            Key::Kill => "kill",
            Key::Restart => "restart",
            Key::Partition => "partition",
            Key::Pause => "paused",
        }
    }

    /// The swatch (22 × 14 px at `x`, baseline `y`) and the label after it.
    fn draw(&self, s: &mut String, x: f64, y: f64) {
        let (y0, y1) = (y - 11.0, y + 3.0);
        let _ = match self {
            Key::Job(_, c) => write!(
                s,
                r#"<rect x="{x:.1}" y="{y0:.1}" width="22" height="{BAR}" rx="2" fill="{c}"/>"#
            ),
            Key::Move => write!(
                s,
                r##"<line x1="{a:.1}" y1="{y0:.1}" x2="{a:.1}" y2="{y1:.1}" stroke="#222" stroke-width="1.6" marker-end="url(#arrow)"/>"##,
                a = x + 11.0
            ),
            Key::PreCopy => write!(
                s,
                r##"<path d="M{x:.1},{y1:.1} V{y0:.1} H{b:.1}" fill="none" stroke="#222" stroke-width="1.2"/>"##,
                b = x + 22.0
            ),
            Key::Aborted => write!(
                s,
                r##"<path d="M{a:.1},{c:.1} L{b:.1},{d:.1} M{a:.1},{d:.1} L{b:.1},{c:.1}" stroke="#d00" stroke-width="2.5"/>"##,
                a = x + 6.0,
                b = x + 16.0,
                c = y - 9.0,
                d = y + 1.0
            ),
            Key::Drain => write!(
                s,
                r##"<line x1="{a:.1}" y1="{y0:.1}" x2="{a:.1}" y2="{y1:.1}" stroke="#c00" stroke-width="2" stroke-dasharray="5,3"/>"##,
                a = x + 11.0
            ),
            Key::Load => write!(
                s,
                r##"<rect x="{x:.1}" y="{y0:.1}" width="22" height="{BAR}" fill="#ff9f1c" fill-opacity="0.32"/>"##
            ),
            Key::Kill => write!(
                s,
                r#"<rect x="{a:.1}" y="{y0:.1}" width="3" height="{BAR}" fill="{KILL}"/>"#,
                a = x + 9.5
            ),
            Key::Partition => write!(
                s,
                r#"<rect x="{x:.1}" y="{y0:.1}" width="22" height="{BAR}" fill="{PARTITION}" fill-opacity="0.15" stroke="{PARTITION}" stroke-dasharray="4,2"/>"#
            ),
            Key::Restart => write!(
                s,
                r#"<rect x="{a:.1}" y="{y0:.1}" width="3" height="{BAR}" fill="{RESTART}"/>"#,
                a = x + 9.5
            ),
            Key::Pause => write!(
                s,
                r#"<rect x="{x:.1}" y="{y0:.1}" width="22" height="{BAR}" fill="{PAUSE}" fill-opacity="0.25" stroke="{PAUSE}"/>"#
            ),
        };
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{y:.1}">{}</text>"#,
            x + 28.0,
            escape(self.label())
        );
    }

    fn width(&self) -> f64 {
        28.0 + self.label().chars().count() as f64 * CHAR_W + 18.0
    }
}

/// Draws `t` as a standalone SVG document.
pub fn render_svg(t: &Timeline) -> String {
    let lanes = t.lanes();
    let jobs = t.jobs();
    let rows = t.lane_rows();
    let end = t.end().max(1.0);
    // Room for the longest node name left of the lanes (bold 14 px).
    let left = lanes
        .iter()
        .map(|n| 24.0 + n.chars().count() as f64 * 9.0)
        .fold(LEFT, f64::max);
    let plot_w = WIDTH - left - RIGHT;
    let x = |ms: f64| left + (ms.clamp(0.0, end) / end) * plot_w;
    let lane_h = |lane: usize| PAD * 2.0 + ROW * rows[lane].len().max(1) as f64;
    let mut tops = vec![TOP];
    for i in 0..lanes.len() {
        tops.push(tops[i] + lane_h(i));
    }
    let lane_top = |lane: usize| tops[lane];
    let lane_of = |node: &str| lanes.iter().position(|n| n == node).unwrap_or(0);
    let job_idx = |job: &str| jobs.iter().position(|j| j == job).unwrap_or(0);
    // Middle of `job`'s row in `node`'s lane.
    let row_y = |node: &str, job: &str| {
        let l = lane_of(node);
        let k = rows[l].iter().position(|j| j == job).unwrap_or(0);
        lane_top(l) + PAD + ROW * k as f64 + ROW / 2.0
    };
    let color = |job: &str| PALETTE[job_idx(job) % PALETTE.len()];
    let plot_bottom = lane_top(lanes.len());
    let sorted = t.sorted();
    let has = |f: &dyn Fn(&What) -> bool| sorted.iter().any(|e| f(&e.what));

    // The legend: every job, then the marks this picture uses, flowed into lines.
    let mut keys: Vec<Key> = jobs.iter().map(|j| Key::Job(j.clone(), color(j))).collect();
    keys.extend([Key::Move, Key::PreCopy]);
    let aborted = |w: &What| matches!(w, What::Move { outcome, .. } if outcome != "committed");
    for (present, key) in [
        (has(&aborted), Key::Aborted),
        (has(&|w| matches!(w, What::Drain { .. })), Key::Drain),
        (has(&|w| matches!(w, What::Load { .. })), Key::Load),
        (has(&|w| matches!(w, What::Kill { .. })), Key::Kill),
        (has(&|w| matches!(w, What::Restart { .. })), Key::Restart),
        (
            has(&|w| matches!(w, What::Partition { .. })),
            Key::Partition,
        ),
        (has(&|w| matches!(w, What::Pause { .. })), Key::Pause),
    ] {
        if present {
            keys.push(key);
        }
    }
    let mut legend: Vec<Vec<&Key>> = vec![Vec::new()];
    let mut used = 0.0;
    for k in &keys {
        if used + k.width() > WIDTH - left - RIGHT && used > 0.0 {
            legend.push(Vec::new());
            used = 0.0;
        }
        used += k.width();
        if let Some(line) = legend.last_mut() {
            line.push(k);
        }
    }
    let height = plot_bottom + 46.0 + 22.0 * legend.len() as f64 + 8.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="{FONT}">
<defs>
<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#222"/></marker>
<pattern id="hatch" width="8" height="8" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="8" stroke="#999" stroke-width="2"/></pattern>
</defs>
<rect width="100%" height="100%" fill="white"/>"##
    );
    let count = |f: &dyn Fn(&What) -> bool| t.events.iter().filter(|e| f(&e.what)).count();
    let moves = count(&|w| matches!(w, What::Move { .. }));
    let committed = count(&|w| matches!(w, What::Move { outcome, .. } if outcome == "committed"));
    let kills = count(&|w| matches!(w, What::Kill { .. }));
    let partitions = count(&|w| matches!(w, What::Partition { .. }));
    let pauses = count(&|w| matches!(w, What::Pause { .. }));
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let mut summary = format!(
        "{}, {}, {} ({} committed)",
        plural(lanes.len(), "node"),
        plural(jobs.len(), "job"),
        plural(moves, "move"),
        committed
    );
    if kills > 0 {
        let _ = write!(summary, ", {}", plural(kills, "kill"));
    }
    if partitions > 0 {
        let _ = write!(summary, ", {}", plural(partitions, "partition"));
    }
    if pauses > 0 {
        let _ = write!(summary, ", {}", plural(pauses, "pause"));
    }
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="24" font-size="16" font-weight="bold">{}</text>
<text x="{left}" y="44" fill="#444">{summary} over {:.1} s. Arrow: a move at its handover, labelled with the job's downtime.</text>"##,
        escape(&t.title),
        end / 1e3
    );

    // Lanes.
    for (i, node) in lanes.iter().enumerate() {
        let y0 = lane_top(i);
        let fill = if i % 2 == 0 { "#f4f6f8" } else { "#ffffff" };
        let _ = writeln!(
            s,
            r##"<g class="lane" data-node="{n}"><rect x="{left}" y="{y0}" width="{plot_w}" height="{h}" fill="{fill}" stroke="#d0d4d8"/><text x="{lx}" y="{ty}" text-anchor="end" font-size="14" font-weight="bold">{n}</text></g>"##,
            n = escape(node),
            h = lane_h(i),
            lx = left - 10.0,
            ty = y0 + lane_h(i) / 2.0 + 5.0,
        );
    }

    // Time axis and grid.
    let step = tick_step(end);
    let mut tick = 0.0;
    while tick <= end + 1e-9 {
        let tx = x(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{tx:.1}" y1="{TOP}" x2="{tx:.1}" y2="{plot_bottom}" stroke="#000" stroke-opacity="0.08"/><line x1="{tx:.1}" y1="{plot_bottom}" x2="{tx:.1}" y2="{yb}" stroke="#444"/><text x="{tx:.1}" y="{yl}" text-anchor="middle" fill="#444">{}</text>"##,
            tick_label(tick, step),
            yb = plot_bottom + 5.0,
            yl = plot_bottom + 19.0,
        );
        tick += step;
    }

    // Labels placed so far; move labels keep out of their way.
    let mut placed = Placed::default();
    // Load bands, drains and partitions (under the bars).
    for (i, node) in lanes.iter().enumerate() {
        let (y0, h) = (lane_top(i), lane_h(i));
        let loads: Vec<(f64, f64)> = sorted
            .iter()
            .filter_map(|e| match &e.what {
                What::Load { node: n, load } if n == node => Some((e.t_ms, *load)),
                _ => None,
            })
            .collect();
        for (k, &(at, load)) in loads.iter().enumerate() {
            if load <= 0.0 {
                continue;
            }
            let until = loads.get(k + 1).map_or(end, |l| l.0);
            let (bx, bw) = (x(at), (x(until) - x(at)).max(3.0));
            placed.place(bx + 3.0, 8, &[y0 + 14.0]);
            let _ = writeln!(
                s,
                r##"<g class="load" data-node="{n}"><title>{n}: load {load:.2} from {:.2} s</title><rect x="{bx:.1}" y="{y0}" width="{bw:.1}" height="{h}" fill="#ff9f1c" fill-opacity="{op:.2}"/><text x="{tx:.1}" y="{ty}" fill="#b35c00">load {load:.1}</text></g>"##,
                at / 1e3,
                n = escape(node),
                op = 0.12 + 0.2 * load.min(1.0),
                tx = bx + 3.0,
                ty = y0 + 14.0,
            );
        }
        for e in &sorted {
            match &e.what {
                What::Drain { node: n } if n == node => {
                    let dx = x(e.t_ms);
                    placed.place(dx + 4.0, 6 + n.chars().count(), &[y0 + 14.0]);
                    let _ = writeln!(
                        s,
                        r##"<g class="drain" data-node="{n}"><title>drain {n} at {:.2} s</title><rect x="{dx:.1}" y="{y0}" width="{w:.1}" height="{h}" fill="url(#hatch)" fill-opacity="0.35"/><line x1="{dx:.1}" y1="{y0}" x2="{dx:.1}" y2="{y1}" stroke="#c00" stroke-width="2" stroke-dasharray="5,3"/><text x="{tx:.1}" y="{ty}" fill="#c00" font-weight="bold">drain {n}</text></g>"##,
                        e.t_ms / 1e3,
                        n = escape(n),
                        w = (x(end) - dx).max(0.0),
                        y1 = y0 + h,
                        tx = dx + 4.0,
                        ty = y0 + 14.0,
                    );
                }
                What::Pause { node: p, end_ms } if p == node => {
                    let (px, pw) = (x(e.t_ms), (x(*end_ms) - x(e.t_ms)).max(3.0));
                    let ty = placed.place(px + 4.0, 6, &[y0 + 14.0, y0 + h - 6.0]);
                    let _ = writeln!(
                        s,
                        r##"<g class="pause" data-node="{n}"><title>{n} paused, {:.2}–{:.2} s</title><rect x="{px:.1}" y="{y0}" width="{pw:.1}" height="{h}" fill="{PAUSE}" fill-opacity="0.18" stroke="{PAUSE}"/><text x="{tx:.1}" y="{ty}" fill="{PAUSE}" font-weight="bold">paused</text></g>"##,
                        e.t_ms / 1e3,
                        end_ms / 1e3,
                        n = escape(node),
                        tx = px + 4.0,
                    );
                }
                What::Partition { nodes, end_ms } if nodes.contains(node) => {
                    let (px, pw) = (x(e.t_ms), (x(*end_ms) - x(e.t_ms)).max(3.0));
                    let ty = placed.place(px + 4.0, 9, &[y0 + 14.0, y0 + h - 6.0]);
                    let _ = writeln!(
                        s,
                        r##"<g class="partition" data-node="{n}" data-nodes="{all}"><title>{all} cut off from the others, {:.2}–{:.2} s</title><rect x="{px:.1}" y="{y0}" width="{pw:.1}" height="{h}" fill="{PARTITION}" fill-opacity="0.13" stroke="{PARTITION}" stroke-dasharray="4,2"/><text x="{tx:.1}" y="{ty}" fill="{PARTITION}" font-weight="bold">partition</text></g>"##,
                        e.t_ms / 1e3,
                        end_ms / 1e3,
                        n = escape(node),
                        all = escape(&nodes.join(" ")),
                        tx = px + 4.0,
                    );
                }
                _ => {}
            }
        }
    }

    // Job bars.
    let segments = t.segments();
    for job in &jobs {
        let _ = writeln!(s, r#"<g class="job" data-job="{}">"#, escape(job));
        for seg in segments.iter().filter(|g| &g.job == job) {
            let (bx, bw) = (x(seg.from_ms), (x(seg.to_ms) - x(seg.from_ms)).max(1.5));
            let by = row_y(&seg.node, job) - BAR / 2.0;
            // Move labels keep off bars where they can.
            placed.block(bx, by, bx + bw, by + BAR, OVER_BAR);
            let _ = writeln!(
                s,
                r#"<rect x="{bx:.1}" y="{by:.1}" width="{bw:.1}" height="{BAR}" rx="2" fill="{c}"><title>{j} on {n}: {:.2}–{:.2} s</title></rect>"#,
                seg.from_ms / 1e3,
                seg.to_ms / 1e3,
                c = color(job),
                j = escape(job),
                n = escape(&seg.node),
            );
            let label_w = job.chars().count() as f64 * CHAR_W + 8.0;
            if bw > label_w {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" fill="white" font-size="11">{}</text>"#,
                    bx + 3.0,
                    by + BAR - 3.0,
                    escape(job)
                );
            }
        }
        for e in &sorted {
            if let What::Exit { job: j } = &e.what {
                if j == job {
                    let last = segments.iter().rfind(|g| &g.job == job);
                    if let Some(seg) = last {
                        let (ex, ey) = (x(e.t_ms), row_y(&seg.node, job));
                        let right = ex + 3.0 + 4.0 * CHAR_W;
                        placed.block(ex, ey - BAR / 2.0, right, ey + BAR / 2.0, OVER_LABEL);
                        let _ = writeln!(
                            s,
                            r##"<line x1="{ex:.1}" y1="{:.1}" x2="{ex:.1}" y2="{:.1}" stroke="#222" stroke-width="2"/><text x="{:.1}" y="{:.1}" fill="#222">exit</text>"##,
                            ey - BAR / 2.0 - 2.0,
                            ey + BAR / 2.0 + 2.0,
                            ex + 3.0,
                            ey + 4.0
                        );
                    }
                }
            }
        }
        let _ = writeln!(s, "</g>");
    }

    // Restarts: a green mark across the lane.
    for e in &sorted {
        let What::Restart { node } = &e.what else {
            continue;
        };
        let (rx, l) = (x(e.t_ms), lane_of(node));
        let (y0, y1) = (lane_top(l), lane_top(l) + lane_h(l));
        let label = format!("{node} restarted");
        let ly = placed.place(rx + 5.0, label.chars().count(), &[y1 - 6.0, y0 + 12.0]);
        let _ = writeln!(
            s,
            r##"<g class="restart" data-node="{n}"><title>{n} restarted at {:.2} s</title><rect x="{:.1}" y="{y0:.1}" width="3" height="{:.1}" fill="{RESTART}"/><text x="{:.1}" y="{ly:.1}" fill="{RESTART}" font-weight="bold" stroke="#fff" stroke-width="3" paint-order="stroke">{}</text></g>"##,
            e.t_ms / 1e3,
            rx - 1.5,
            y1 - y0,
            rx + 5.0,
            escape(&label),
            n = escape(node),
        );
    }

    // Kills, over the bars they end.
    for e in &sorted {
        let What::Kill { node, job } = &e.what else {
            continue;
        };
        let kx = x(e.t_ms);
        let l = lane_of(node);
        let (y0, y1, label) = match job {
            Some(j) => {
                let y = row_y(node, j);
                (
                    y - BAR / 2.0 - 4.0,
                    y + BAR / 2.0 + 4.0,
                    "killed".to_string(),
                )
            }
            None => (
                lane_top(l),
                lane_top(l) + lane_h(l),
                format!("{node} killed"),
            ),
        };
        let mid = (y0 + y1) / 2.0 + 4.0;
        let ly = placed.place(kx + 5.0, label.chars().count(), &[mid, y0 + 12.0, y1 - 2.0]);
        let _ = writeln!(
            s,
            r##"<g class="kill" data-node="{n}" data-job="{j}"><title>{what} at {:.2} s</title><rect x="{:.1}" y="{y0:.1}" width="3" height="{:.1}" fill="{KILL}"/><text x="{:.1}" y="{ly:.1}" fill="{KILL}" font-weight="bold" stroke="#fff" stroke-width="3" paint-order="stroke">{}</text></g>"##,
            e.t_ms / 1e3,
            kx - 1.5,
            y1 - y0,
            kx + 5.0,
            escape(&label),
            n = escape(node),
            j = escape(job.as_deref().unwrap_or("")),
            what = escape(&match job {
                Some(j) => format!("{j} killed on {node}"),
                None => format!("{node} killed"),
            }),
        );
    }

    // Moves, on top; their labels stay beside their arrow and keep off other arrows
    // and labels where they can (over a bar they are haloed).
    for e in &sorted {
        if let What::Move {
            job,
            from,
            to,
            end_ms,
            outcome,
            ..
        } = &e.what
        {
            if outcome == "committed" {
                let (a, b) = (row_y(from, job), row_y(to, job));
                placed.block(
                    x(*end_ms) - 3.0,
                    a.min(b),
                    x(*end_ms) + 3.0,
                    a.max(b),
                    OVER_ARROW,
                );
            }
        }
    }
    for e in &sorted {
        let What::Move {
            job,
            from,
            to,
            end_ms,
            outcome,
            downtime_ms,
            sent_bytes,
            mode,
        } = &e.what
        else {
            continue;
        };
        let (y_from, y_to) = (row_y(from, job), row_y(to, job));
        let (x_start, x_end) = (x(e.t_ms), x(*end_ms));
        let committed = outcome == "committed";
        let kind = outcome.split(':').next().unwrap_or("");
        let title = format!(
            "{job} {from}→{to} {outcome} ({mode}): downtime {downtime_ms:.1} ms, {} sent, {:.2}–{:.2} s",
            human_bytes(*sent_bytes),
            e.t_ms / 1e3,
            end_ms / 1e3
        );
        let _ = write!(
            s,
            r#"<g class="move" data-job="{}" data-from="{}" data-to="{}" data-outcome="{}"><title>{}</title>"#,
            escape(job),
            escape(from),
            escape(to),
            escape(kind),
            escape(&title)
        );
        // Pre-copy: a bracket above the source bar from the move's start to the pause.
        let yb = y_from - BAR / 2.0 - 2.5;
        if x_end - x_start >= 2.0 {
            let _ = write!(
                s,
                r##"<path d="M{x_start:.1},{:.1} V{yb:.1} H{x_end:.1}" fill="none" stroke="#222" stroke-width="1.2"/>"##,
                yb + 3.0
            );
        }
        let label = if committed && !mode.is_empty() && mode != "pre-copy" {
            format!("{downtime_ms:.1} ms {mode}")
        } else if committed {
            format!("{downtime_ms:.1} ms")
        } else {
            kind.to_string()
        };
        if committed {
            // The arrow starts and ends just off the bars so its head stays visible.
            let dir = if y_to > y_from { 1.0 } else { -1.0 };
            let _ = write!(
                s,
                r##"<line x1="{x_end:.1}" y1="{:.1}" x2="{x_end:.1}" y2="{:.1}" stroke="#fff" stroke-width="4" stroke-opacity="0.8"/><line x1="{x_end:.1}" y1="{:.1}" x2="{x_end:.1}" y2="{:.1}" stroke="#222" stroke-width="1.6" marker-end="url(#arrow)"/>"##,
                y_from + dir * BAR / 2.0,
                y_to - dir * BAR / 2.0,
                y_from + dir * BAR / 2.0,
                y_to - dir * (BAR / 2.0 + 1.0),
            );
        } else {
            let (cx, cy, r) = (x_end, y_from, 5.0);
            let _ = write!(
                s,
                r##"<path d="M{:.1},{:.1} L{:.1},{:.1} M{:.1},{:.1} L{:.1},{:.1}" stroke="#d00" stroke-width="2.5"/>"##,
                cx - r,
                cy - r,
                cx + r,
                cy + r,
                cx - r,
                cy + r,
                cx + r,
                cy - r
            );
        }
        // The label: beside the arrow's middle (or the cross), moved out of the way of
        // labels, bars and arrows already placed (see `Placed::place`).
        let mid = if committed {
            (y_from + y_to) / 2.0 + 4.0
        } else {
            y_from + 4.0
        };
        let (lo, hi) = if committed {
            (y_from.min(y_to) + FONT, y_from.max(y_to))
        } else {
            (y_from - ROW, y_from + ROW)
        };
        // Nearest the middle first; beside the arrow before beyond its ends.
        let near: Vec<f64> = (0..24)
            .map(|k| {
                let d = (k / 2 + k % 2) as f64 * (FONT / 2.0);
                if k % 2 == 0 {
                    mid + d
                } else {
                    mid - d
                }
            })
            .collect();
        let (beside, beyond): (Vec<f64>, Vec<f64>) =
            near.into_iter().partition(|y| (lo..=hi).contains(y));
        let ys: Vec<f64> = beside
            .into_iter()
            .chain([mid])
            .chain(
                beyond
                    .into_iter()
                    .filter(|y| (lo - ROW..=hi + ROW).contains(y)),
            )
            .collect();
        let ly = placed.place(x_end + 4.0, label.chars().count(), &ys);
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{ly:.1}" fill="{}" font-weight="bold" stroke="#fff" stroke-width="3" paint-order="stroke">{}</text></g>"##,
            x_end + 4.0,
            if committed { "#222" } else { "#d00" },
            escape(&label)
        );
    }

    // Legend.
    let _ = writeln!(s, r#"<g class="legend">"#);
    for (i, line) in legend.iter().enumerate() {
        let ly = plot_bottom + 46.0 + 22.0 * i as f64;
        let mut lx = left;
        for k in line {
            k.draw(&mut s, lx, ly);
            lx += k.width();
        }
        s.push('\n');
    }
    let _ = writeln!(s, "</g>");
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(job: &str, from: &str, to: &str, t: f64, outcome: &str) -> (f64, What) {
        (
            t,
            What::Move {
                job: job.into(),
                from: from.into(),
                to: to.into(),
                end_ms: t + 20.0,
                outcome: outcome.into(),
                downtime_ms: 4.5,
                sent_bytes: 300 << 10,
                mode: if job == "tracker" {
                    "post-copy"
                } else {
                    "pre-copy"
                }
                .into(),
            },
        )
    }

    fn sample() -> Timeline {
        let mut t = Timeline::new("a <demo> & more", &["n1", "n2", "n3"]);
        t.push(
            0.0,
            What::Start {
                job: "autopilot".into(),
                node: "n1".into(),
            },
        );
        t.push(
            10.0,
            What::Start {
                job: "tracker".into(),
                node: "n2".into(),
            },
        );
        for (at, w) in [
            mv("autopilot", "n1", "n2", 500.0, "committed"),
            mv("tracker", "n2", "n3", 900.0, "committed"),
            mv("tracker", "n3", "n1", 1500.0, "aborted: destination gone"),
            mv("tracker", "n3", "n1", 1510.0, "committed"),
            mv("autopilot", "n2", "n1", 1510.0, "committed"),
        ] {
            t.push(at, w);
        }
        t.push(1490.0, What::Drain { node: "n3".into() });
        t.push(
            1600.0,
            What::Load {
                node: "n1".into(),
                load: 1.0,
            },
        );
        t.push(
            1800.0,
            What::Load {
                node: "n1".into(),
                load: 0.0,
            },
        );
        t.push(
            2500.0,
            What::Exit {
                job: "autopilot".into(),
            },
        );
        t.end_ms = Some(3000.0);
        t
    }

    /// Checks that tags nest and close (a small XML well-formedness check: no
    /// `quick-xml` in the lock file), and returns the start tags in order.
    fn tags(svg: &str) -> Vec<String> {
        let mut stack: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        let mut rest = svg;
        while let Some(i) = rest.find('<') {
            rest = &rest[i + 1..];
            let j = rest.find('>').expect("unclosed tag");
            let tag = &rest[..j];
            rest = &rest[j + 1..];
            if tag.starts_with('?') || tag.starts_with('!') {
                continue;
            }
            assert!(!tag.contains('<'), "stray < in {tag:?}");
            let q = tag.matches('"').count();
            assert!(q.is_multiple_of(2), "unbalanced quotes in {tag:?}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(
                    stack.pop().as_deref(),
                    Some(name.trim()),
                    "mismatched </{name}>"
                );
            } else {
                let name = tag
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .trim_end_matches('/');
                seen.push(tag.to_string());
                if !tag.ends_with('/') {
                    stack.push(name.to_string());
                }
            }
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        seen
    }

    #[test]
    fn segments_follow_committed_moves_only() {
        let t = sample();
        let segs = t.segments();
        let of = |job: &str| -> Vec<(String, f64, f64)> {
            segs.iter()
                .filter(|s| s.job == job)
                .map(|s| (s.node.clone(), s.from_ms, s.to_ms))
                .collect()
        };
        assert_eq!(
            of("autopilot"),
            vec![
                ("n1".into(), 0.0, 515.5),
                ("n2".into(), 520.0, 1525.5),
                ("n1".into(), 1530.0, 2500.0)
            ]
        );
        // The aborted move leaves tracker on n3 until the committed one.
        assert_eq!(
            of("tracker"),
            vec![
                ("n2".into(), 10.0, 915.5),
                ("n3".into(), 920.0, 1525.5),
                ("n1".into(), 1530.0, 3000.0)
            ]
        );
    }

    /// Parses `svg` and checks it draws every job of `t` and every move, with their
    /// nodes; returns the start tags.
    fn assert_shows_every_job_and_move(t: &Timeline, svg: &str) -> Vec<String> {
        let tags = tags(svg);
        assert!(tags[0].starts_with("svg "), "{}", tags[0]);
        for job in t.jobs() {
            assert!(
                tags.iter().any(|g| g.starts_with("g ")
                    && g.contains(&format!("data-job=\"{job}\""))
                    && g.contains("class=\"job\"")),
                "no bars for {job}"
            );
        }
        let moves: Vec<&String> = tags
            .iter()
            .filter(|g| g.contains("class=\"move\""))
            .collect();
        let expected: Vec<(String, String, String)> = t
            .events
            .iter()
            .filter_map(|e| match &e.what {
                What::Move { job, from, to, .. } => Some((job.clone(), from.clone(), to.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(moves.len(), expected.len());
        for (job, from, to) in &expected {
            assert!(
                moves.iter().any(|g| g.contains(&format!(
                    "data-job=\"{job}\" data-from=\"{from}\" data-to=\"{to}\""
                ))),
                "move {job} {from}→{to} missing"
            );
        }
        // Every stretch a job ran somewhere is a bar in that node's lane.
        let bars = svg.matches("<rect x=").count();
        assert!(bars >= t.segments().len(), "{bars} rects");
        for g in t.segments() {
            let title = format!("<title>{} on {}: ", escape(&g.job), escape(&g.node));
            assert!(svg.contains(&title), "no bar {title}");
        }
        tags
    }

    #[test]
    fn svg_is_well_formed_and_shows_every_job_and_move() {
        let t = sample();
        let svg = render_svg(&t);
        assert_shows_every_job_and_move(&t, &svg);
        assert!(svg.contains("a &lt;demo&gt; &amp; more"));
        // Each committed move's downtime is written out, with the mode unless it is
        // pre-copy; the aborted one says so.
        assert_eq!(svg.matches(">4.5 ms</text>").count(), 2);
        assert_eq!(svg.matches(">4.5 ms post-copy</text>").count(), 2);
        assert!(svg.contains(">aborted</text>"));
        for lane in ["n1", "n2", "n3"] {
            assert!(svg.contains(&format!("class=\"lane\" data-node=\"{lane}\"")));
        }
        assert!(svg.contains("class=\"drain\" data-node=\"n3\""));
        assert!(svg.contains("class=\"load\" data-node=\"n1\""));
    }

    #[test]
    fn kills_and_partitions_end_bars_and_are_drawn() {
        let mut t = sample();
        t.push(
            100.0,
            What::Start {
                job: "lone".into(),
                node: "n3".into(),
            },
        );
        t.push(
            1200.0,
            What::Kill {
                node: "n3".into(),
                job: Some("lone".into()),
            },
        );
        t.push(
            2000.0,
            What::Kill {
                node: "n1".into(),
                job: None,
            },
        );
        t.push(
            2100.0,
            What::Partition {
                nodes: vec!["n2".into(), "n3".into()],
                end_ms: 2600.0,
            },
        );
        t.push(
            2200.0,
            What::Start {
                job: "tracker".into(),
                node: "n2".into(),
            },
        );
        let segs = t.segments();
        let on = |job: &str, node: &str| -> Vec<(f64, f64)> {
            segs.iter()
                .filter(|s| s.job == job && s.node == node)
                .map(|s| (s.from_ms, s.to_ms))
                .collect()
        };
        // The node kill ends both jobs on n1; tracker starts again on n2.
        assert_eq!(on("autopilot", "n1").last(), Some(&(1530.0, 2000.0)));
        assert_eq!(on("tracker", "n1"), vec![(1530.0, 2000.0)]);
        assert_eq!(on("tracker", "n2").last(), Some(&(2200.0, 3000.0)));
        assert_eq!(on("lone", "n3"), vec![(100.0, 1200.0)]);
        // Rows: only the jobs that were on a node.
        let rows = t.lane_rows();
        assert_eq!(rows[2], vec!["tracker".to_string(), "lone".to_string()]);
        assert_eq!(
            rows[0],
            vec!["autopilot".to_string(), "tracker".to_string()]
        );

        let svg = render_svg(&t);
        let tags = assert_shows_every_job_and_move(&t, &svg);
        let kills: Vec<&String> = tags
            .iter()
            .filter(|g| g.contains("class=\"kill\""))
            .collect();
        assert_eq!(kills.len(), 2, "{kills:?}");
        assert!(kills
            .iter()
            .any(|g| g.contains("data-node=\"n3\" data-job=\"lone\"")));
        assert!(kills
            .iter()
            .any(|g| g.contains("data-node=\"n1\" data-job=\"\"")));
        assert!(svg.contains(">n1 killed</text>"));
        for n in ["n2", "n3"] {
            assert!(
                svg.contains(&format!(
                    "class=\"partition\" data-node=\"{n}\" data-nodes=\"n2 n3\""
                )),
                "no partition band on {n}"
            );
        }
        assert!(!svg.contains("class=\"partition\" data-node=\"n1\""));
        assert!(svg.contains("2 kills, 1 partition over"), "summary");
        // The legend names the marks used (and only those).
        for key in ["kill", "partition", "drain", "load", "aborted move", "lone"] {
            assert!(svg.contains(&format!(">{key}</text>")), "legend: {key}");
        }
        let plain = render_svg(&Timeline::new("x", &["a"]));
        assert!(!plain.contains(">kill</text>") && !plain.contains(">partition</text>"));
    }

    #[test]
    fn pauses_and_restarts_are_drawn_as_such_not_as_partitions() {
        let mut t = sample();
        t.push(
            500.0,
            What::Kill {
                node: "n3".into(),
                job: None,
            },
        );
        t.push(900.0, What::Restart { node: "n3".into() });
        t.push(
            1000.0,
            What::Pause {
                node: "n2".into(),
                end_ms: 1400.0,
            },
        );
        let svg = render_svg(&t);
        assert_shows_every_job_and_move(&t, &svg);
        assert!(
            svg.contains("class=\"pause\" data-node=\"n2\""),
            "pause band"
        );
        assert!(svg.contains(">paused</text>"));
        assert!(!svg.contains("class=\"pause\" data-node=\"n1\""));
        assert!(
            !svg.contains("class=\"partition\""),
            "a pause is no partition"
        );
        assert!(svg.contains("class=\"restart\" data-node=\"n3\""));
        assert!(svg.contains(">n3 restarted</text>"));
        assert!(svg.contains("1 kill, 1 pause over"), "summary");
        // The legend names both.
        assert!(svg.contains(">restart</text>") && svg.contains(">paused</text>"));
    }

    #[test]
    fn labels_at_the_same_time_do_not_overlap() {
        let mut p = Placed::default();
        let ys = [100.0, 86.0, 114.0];
        let a = p.place(50.0, 6, &ys);
        let b = p.place(52.0, 6, &ys);
        let c = p.place(500.0, 6, &ys);
        assert_ne!(a, b);
        assert_eq!(c, 100.0);
    }

    #[test]
    fn empty_timeline_renders() {
        let svg = render_svg(&Timeline::new("nothing", &[]));
        tags(&svg);
        assert!(svg.contains("0 nodes, 0 jobs, 0 moves"));
    }
}
