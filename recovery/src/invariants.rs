//! The verdict of a chaos run. Killing nodes proves nothing unless something
//! checks afterwards that nothing went wrong, so the harness records what it
//! observed as [`Fact`]s (from node logs, the API and its own actions) and
//! [`check`] tells which promises held:
//!
//! - every job finished (`unfinished`), and none vanished (`jobs_lost`: not
//!   finished and no copy running at the end);
//! - each job's output, as the user read it, is bit-identical to a straight
//!   run of the same guest (`output_mismatch`), with no byte delivered twice
//!   (`duplicate_output_bytes`) and none missing (`missing_output_bytes`);
//! - no generation of a job ran on two nodes at overlapping times
//!   (`duplicate_generations`);
//! - no acknowledged checkpoint was lost: a recovery never resumed a job
//!   from a checkpoint older than one a holder had acknowledged before it,
//!   when that holder stayed up and on the majority side from its
//!   acknowledgement to the resume (`lost_checkpoints`). A holder that was
//!   killed, stopped or cut off meanwhile may rightly be passed over: a
//!   restarted node holds nothing, a cut-off one is out of reach.
//!
//! The facts are the harness's, but they describe a run that may have gone
//! wrong in any way: offsets may overlap or overflow, stops may come without
//! starts. None of it panics, and memory is bounded by the output bytes read.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{CheckpointRef, NodeId};

/// blake3 of `bytes`, as the 64 hex digits the facts carry.
pub fn output_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Something observed during a chaos run. Times are the harness's
/// milliseconds since the start of the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fact", rename_all = "snake_case")]
pub enum Fact {
    /// The job was submitted: it must finish.
    Submitted { job: String },
    /// What an uninterrupted run of the job's guest printed.
    StraightRun {
        job: String,
        output_len: u64,
        output_hash: String,
    },
    /// `node` started running `generation` of the job, from a checkpoint or
    /// (`from: None`) from the beginning.
    Started {
        job: String,
        node: NodeId,
        generation: u64,
        at_ms: u64,
        from: Option<CheckpointRef>,
    },
    /// `node`'s copy of `generation` stopped (moved away, fenced, paused
    /// for good, or its node was killed: the harness records a stop for
    /// every job of a node it kills).
    Stopped {
        job: String,
        node: NodeId,
        generation: u64,
        at_ms: u64,
    },
    /// A recovery on `node` resumed `generation` of the job from
    /// `from`, a replicated checkpoint (seen by the harness at `at_ms`).
    Resumed {
        job: String,
        node: NodeId,
        generation: u64,
        from: CheckpointRef,
        at_ms: u64,
    },
    /// `node` went down for the others: killed, stopped, or cut off from the
    /// majority by a partition. A replica it held may be gone (a restart holds
    /// nothing) or out of reach.
    NodeDown { node: NodeId, at_ms: u64 },
    /// `node` is back after a [`Fact::NodeDown`] (restarted, resumed, healed).
    NodeUp { node: NodeId, at_ms: u64 },
    /// `holder` acknowledged storing `checkpoint` of the job.
    CheckpointAcked {
        job: String,
        holder: NodeId,
        checkpoint: CheckpointRef,
        at_ms: u64,
    },
    /// Output bytes the user read, at their offset in the job's output.
    OutputRead {
        job: String,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// The job finished on `node`; `output_hash` is what the node reports.
    Finished {
        job: String,
        node: NodeId,
        generation: u64,
        at_ms: u64,
        output_hash: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicateGeneration {
    pub job: String,
    pub generation: u64,
    pub nodes: [NodeId; 2],
    /// The overlap; `u64::MAX` as `to_ms` means "until the end of the run".
    pub from_ms: u64,
    pub to_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostCheckpoint {
    pub job: String,
    /// The newest checkpoint acknowledged before the start, and by whom.
    pub acked: CheckpointRef,
    pub acked_by: NodeId,
    /// The generation that started from something older, and from what.
    pub generation: u64,
    pub started_from: Option<CheckpointRef>,
    pub at_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub jobs: usize,
    pub finished: usize,
    pub unfinished: Vec<String>,
    pub jobs_lost: Vec<String>,
    /// Output differs from the straight run (content, length, a gap, or the
    /// hash the finishing node reported).
    pub output_mismatch: Vec<String>,
    /// Jobs without a straight run to compare with.
    pub output_unverified: Vec<String>,
    pub duplicate_output_bytes: u64,
    pub missing_output_bytes: u64,
    pub duplicate_generations: Vec<DuplicateGeneration>,
    pub lost_checkpoints: Vec<LostCheckpoint>,
    /// Generations started from a checkpoint (moves and recoveries).
    pub resumes: u64,
}

impl Report {
    /// Every invariant held.
    pub fn ok(&self) -> bool {
        self.unfinished.is_empty()
            && self.jobs_lost.is_empty()
            && self.output_mismatch.is_empty()
            && self.output_unverified.is_empty()
            && self.duplicate_output_bytes == 0
            && self.missing_output_bytes == 0
            && self.duplicate_generations.is_empty()
            && self.lost_checkpoints.is_empty()
    }
}

/// The output of one job as read, as non-overlapping segments by offset.
#[derive(Default)]
struct Output {
    segments: BTreeMap<u64, Vec<u8>>,
    duplicate: u64,
    conflict: bool,
}

impl Output {
    fn read(&mut self, offset: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let Some(end) = offset.checked_add(bytes.len() as u64) else {
            self.conflict = true;
            return;
        };
        // Segments that may overlap [offset, end): the one starting at or
        // before `offset`, and every one starting inside.
        let first = self.segments.range(..=offset).next_back().map(|(s, _)| *s);
        let starts: Vec<u64> = first
            .into_iter()
            .chain(self.segments.range(offset + 1..end).map(|(s, _)| *s))
            .collect();
        let mut fresh = Vec::new();
        let mut pos = offset;
        for s in starts {
            let seg = &self.segments[&s];
            let seg_end = s + seg.len() as u64;
            if seg_end <= pos {
                continue;
            }
            if s > pos {
                fresh.push(pos);
            }
            let (a, b) = (pos.max(s), seg_end.min(end));
            if a < b {
                self.duplicate += b - a;
                let old = &seg[(a - s) as usize..(b - s) as usize];
                let new = &bytes[(a - offset) as usize..(b - offset) as usize];
                self.conflict |= old != new;
            }
            pos = pos.max(seg_end);
            if pos >= end {
                break;
            }
        }
        if pos < end {
            fresh.push(pos);
        }
        // Each fresh start runs to the next segment (or the end).
        for p in fresh {
            let stop = self
                .segments
                .range(p + 1..)
                .next()
                .map_or(end, |(s, _)| (*s).min(end));
            let slice = bytes[(p - offset) as usize..(stop - offset) as usize].to_vec();
            if !slice.is_empty() {
                self.segments.insert(p, slice);
            }
        }
    }

    /// (hash of the bytes if contiguous from 0, missing bytes before `len`,
    /// bytes beyond `len`).
    fn finish(&self, len: u64) -> (Option<String>, u64, u64) {
        let mut h = blake3::Hasher::new();
        let (mut pos, mut missing, mut gap) = (0u64, 0u64, false);
        for (s, b) in &self.segments {
            if *s > pos {
                missing += s.min(&len).saturating_sub(pos);
                gap = true;
            }
            h.update(b);
            pos = s + b.len() as u64;
        }
        missing += len.saturating_sub(pos);
        let extra = pos.saturating_sub(len);
        let hash = (!gap).then(|| h.finalize().to_hex().to_string());
        (hash, missing, extra)
    }
}

/// A copy of a generation on a node: [start, end).
struct Run {
    node: NodeId,
    start: u64,
    end: u64,
}

/// Ends the open run of `node` for (job, generation), if any.
fn close<'a>(
    runs: &mut BTreeMap<(&'a str, u64), Vec<Run>>,
    job: &'a str,
    generation: u64,
    node: &NodeId,
    at: u64,
) {
    if let Some(r) = runs.get_mut(&(job, generation)).and_then(|v| {
        v.iter_mut()
            .rev()
            .find(|r| r.node == *node && r.end == u64::MAX)
    }) {
        r.end = at.max(r.start);
    }
}

/// Checks the facts of a chaos run (see the module doc).
pub fn check<'a>(facts: impl IntoIterator<Item = &'a Fact>) -> Report {
    let mut jobs = BTreeSet::new();
    let mut straight: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
    let mut runs: BTreeMap<(&str, u64), Vec<Run>> = BTreeMap::new();
    let mut acks: BTreeMap<&str, Vec<(u64, &NodeId, CheckpointRef)>> = BTreeMap::new();
    // Resumes from a known checkpoint: (job, node, generation, at, from).
    let mut starts: Vec<(&str, &NodeId, u64, u64, CheckpointRef)> = Vec::new();
    // Each node's spells down: [from, to), `to` u64::MAX while still down.
    let mut down: BTreeMap<&NodeId, Vec<(u64, u64)>> = BTreeMap::new();
    let mut outputs: BTreeMap<&str, Output> = BTreeMap::new();
    let mut finished: BTreeMap<&str, &str> = BTreeMap::new();
    let mut report = Report::default();

    for f in facts {
        match f {
            Fact::Submitted { job } => {
                jobs.insert(job.as_str());
            }
            Fact::StraightRun {
                job,
                output_len,
                output_hash,
            } => {
                jobs.insert(job);
                straight.insert(job, (*output_len, output_hash));
            }
            Fact::Started {
                job,
                node,
                generation,
                at_ms,
                from,
            } => {
                jobs.insert(job);
                let v = runs.entry((job, *generation)).or_default();
                if !v.iter().any(|r| r.node == *node && r.end == u64::MAX) {
                    v.push(Run {
                        node: node.clone(),
                        start: *at_ms,
                        end: u64::MAX,
                    });
                }
                report.resumes += u64::from(from.is_some());
                if let Some(from) = from {
                    starts.push((job.as_str(), node, *generation, *at_ms, *from));
                }
            }
            Fact::Resumed {
                job,
                node,
                generation,
                from,
                at_ms,
            } => {
                jobs.insert(job);
                report.resumes += 1;
                starts.push((job.as_str(), node, *generation, *at_ms, *from));
            }
            Fact::NodeDown { node, at_ms } => {
                let spells = down.entry(node).or_default();
                if spells.last().is_none_or(|(_, to)| *to != u64::MAX) {
                    spells.push((*at_ms, u64::MAX));
                }
            }
            Fact::NodeUp { node, at_ms } => {
                if let Some(last) = down.get_mut(node).and_then(|v| v.last_mut()) {
                    if last.1 == u64::MAX {
                        last.1 = (*at_ms).max(last.0);
                    }
                }
            }
            Fact::Stopped {
                job,
                node,
                generation,
                at_ms,
            } => close(&mut runs, job, *generation, node, *at_ms),
            Fact::CheckpointAcked {
                job,
                holder,
                checkpoint,
                at_ms,
            } => acks
                .entry(job)
                .or_default()
                .push((*at_ms, holder, *checkpoint)),
            Fact::OutputRead { job, offset, bytes } => {
                outputs.entry(job).or_default().read(*offset, bytes);
            }
            Fact::Finished {
                job,
                node,
                generation,
                at_ms,
                output_hash,
            } => {
                jobs.insert(job);
                close(&mut runs, job, *generation, node, *at_ms);
                finished.insert(job, output_hash);
            }
        }
    }

    report.jobs = jobs.len();
    report.finished = jobs.iter().filter(|j| finished.contains_key(*j)).count();
    for job in &jobs {
        if !finished.contains_key(job) {
            report.unfinished.push(job.to_string());
            let running = runs
                .range((*job, 0)..=(*job, u64::MAX))
                .any(|(_, v)| v.iter().any(|r| r.end == u64::MAX));
            if !running {
                report.jobs_lost.push(job.to_string());
            }
        }
        let out = outputs.remove(job).unwrap_or_default();
        report.duplicate_output_bytes += out.duplicate;
        let Some((len, want)) = straight.get(job) else {
            report.output_unverified.push(job.to_string());
            continue;
        };
        let (got, missing, extra) = out.finish(*len);
        report.missing_output_bytes += missing;
        let node_hash_wrong = finished
            .get(job)
            .is_some_and(|h| !h.eq_ignore_ascii_case(want));
        if out.conflict || extra > 0 || got.as_deref() != Some(*want) || node_hash_wrong {
            report.output_mismatch.push(job.to_string());
        }
    }

    for ((job, generation), v) in &runs {
        for (i, a) in v.iter().enumerate() {
            for b in &v[i + 1..] {
                let (from, to) = (a.start.max(b.start), a.end.min(b.end));
                if a.node != b.node && from < to {
                    report.duplicate_generations.push(DuplicateGeneration {
                        job: job.to_string(),
                        generation: *generation,
                        nodes: [a.node.clone(), b.node.clone()],
                        from_ms: from,
                        to_ms: to,
                    });
                }
            }
        }
    }

    // A resume seen twice (its Started and its Resumed fact) is judged at the
    // earlier time: acknowledgements after it do not count against it.
    let mut first: BTreeMap<(&str, &NodeId, u64), (u64, CheckpointRef)> = BTreeMap::new();
    for (job, node, generation, at, from) in starts {
        let e = first.entry((job, node, generation)).or_insert((at, from));
        if at < e.0 {
            *e = (at, from);
        }
    }
    for ((job, node, generation), e) in first.iter_mut() {
        if let Some(v) = runs.get(&(*job, *generation)) {
            if let Some(start) = v.iter().filter(|r| r.node == **node).map(|r| r.start).min() {
                e.0 = e.0.min(start);
            }
        }
    }
    // Down at any moment from the acknowledgement to the resume.
    let went_down = |holder: &NodeId, ack: u64, resume: u64| {
        down.get(holder)
            .is_some_and(|v| v.iter().any(|(d, u)| *d <= resume && *u >= ack))
    };
    for ((job, _, generation), (at, from)) in first {
        let worst = acks
            .get(job)
            .into_iter()
            .flatten()
            .filter(|(t, _, c)| *t < at && c.generation < generation && *c > from)
            .filter(|(t, holder, _)| !went_down(holder, *t, at))
            .max_by_key(|(_, _, c)| *c);
        if let Some((_, holder, c)) = worst {
            report.lost_checkpoints.push(LostCheckpoint {
                job: job.to_string(),
                acked: *c,
                acked_by: (*holder).clone(),
                generation,
                started_from: Some(from),
                at_ms: at,
            });
        }
    }
    report
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "✓"
    } else {
        "✗"
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verified = self.jobs - self.output_unverified.len();
        let rows = [
            (
                "every job finished",
                self.unfinished.is_empty(),
                format!("{}/{}", self.finished, self.jobs),
            ),
            (
                "outputs identical to straight runs",
                self.output_mismatch.is_empty() && self.output_unverified.is_empty(),
                format!(
                    "{}/{} ({} unverified)",
                    verified - self.output_mismatch.len(),
                    self.jobs,
                    self.output_unverified.len()
                ),
            ),
            (
                "each output byte emitted once",
                self.duplicate_output_bytes == 0 && self.missing_output_bytes == 0,
                format!(
                    "{} duplicate, {} missing bytes",
                    self.duplicate_output_bytes, self.missing_output_bytes
                ),
            ),
            (
                "no generation on two nodes at once",
                self.duplicate_generations.is_empty(),
                format!("{} overlaps", self.duplicate_generations.len()),
            ),
            (
                "no acknowledged checkpoint lost",
                self.lost_checkpoints.is_empty(),
                format!(
                    "{} lost ({} resumes)",
                    self.lost_checkpoints.len(),
                    self.resumes
                ),
            ),
            (
                "no job lost",
                self.jobs_lost.is_empty(),
                format!("{} lost", self.jobs_lost.len()),
            ),
        ];
        writeln!(f, "{:<38} result", "invariant")?;
        for (name, ok, detail) in rows {
            writeln!(f, "{name:<38} {}  {detail}", mark(ok))?;
        }
        const SHOWN: usize = 5;
        let list = |f: &mut fmt::Formatter<'_>, what: &str, v: &[String]| {
            if v.is_empty() {
                return Ok(());
            }
            let more = v.len().saturating_sub(SHOWN);
            let names = v[..v.len().min(SHOWN)].join(", ");
            match more {
                0 => writeln!(f, "  {what}: {names}"),
                m => writeln!(f, "  {what}: {names} and {m} more"),
            }
        };
        list(f, "unfinished", &self.unfinished)?;
        list(f, "lost", &self.jobs_lost)?;
        list(f, "output differs", &self.output_mismatch)?;
        for d in self.duplicate_generations.iter().take(SHOWN) {
            let to = if d.to_ms == u64::MAX {
                "end".to_string()
            } else {
                format!("{} ms", d.to_ms)
            };
            writeln!(
                f,
                "  {} generation {} ran on {} and {} from {} ms to {to}",
                d.job, d.generation, d.nodes[0], d.nodes[1], d.from_ms
            )?;
        }
        for l in self.lost_checkpoints.iter().take(SHOWN) {
            let from = l
                .started_from
                .map_or("the beginning".to_string(), |c| c.to_string());
            writeln!(
                f,
                "  {} generation {} started at {} ms from {from}; {} had acknowledged {}",
                l.job, l.generation, l.at_ms, l.acked_by, l.acked
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::CheckpointId;

    fn n(s: &str) -> NodeId {
        NodeId::from(s)
    }

    fn ck(generation: u64, seq: u64) -> CheckpointRef {
        CheckpointRef {
            generation,
            seq,
            id: CheckpointId([(generation * 16 + seq) as u8; 32]),
        }
    }

    const OUT: &[u8] = b"0123456789abcdefghij";

    fn straight(job: &str) -> Fact {
        Fact::StraightRun {
            job: job.into(),
            output_len: OUT.len() as u64,
            output_hash: output_hash(OUT),
        }
    }

    fn read(job: &str, offset: usize, len: usize) -> Fact {
        Fact::OutputRead {
            job: job.into(),
            offset: offset as u64,
            bytes: OUT[offset..offset + len].to_vec(),
        }
    }

    fn started(
        job: &str,
        node: &str,
        generation: u64,
        at_ms: u64,
        from: Option<CheckpointRef>,
    ) -> Fact {
        Fact::Started {
            job: job.into(),
            node: n(node),
            generation,
            at_ms,
            from,
        }
    }

    fn stopped(job: &str, node: &str, generation: u64, at_ms: u64) -> Fact {
        Fact::Stopped {
            job: job.into(),
            node: n(node),
            generation,
            at_ms,
        }
    }

    fn acked(job: &str, holder: &str, c: CheckpointRef, at_ms: u64) -> Fact {
        Fact::CheckpointAcked {
            job: job.into(),
            holder: n(holder),
            checkpoint: c,
            at_ms,
        }
    }

    fn resumed(job: &str, node: &str, generation: u64, at_ms: u64, from: CheckpointRef) -> Fact {
        Fact::Resumed {
            job: job.into(),
            node: n(node),
            generation,
            from,
            at_ms,
        }
    }

    fn finished(job: &str, node: &str, generation: u64, at_ms: u64) -> Fact {
        Fact::Finished {
            job: job.into(),
            node: n(node),
            generation,
            at_ms,
            output_hash: output_hash(OUT),
        }
    }

    /// A job killed with its node and recovered elsewhere from the newest
    /// acknowledged checkpoint; output read in pieces across the move.
    fn clean_run() -> Vec<Fact> {
        vec![
            Fact::Submitted { job: "j".into() },
            straight("j"),
            started("j", "n1", 0, 0, None),
            acked("j", "n2", ck(0, 1), 100),
            acked("j", "n3", ck(0, 2), 200),
            acked("j", "n2", ck(0, 2), 210),
            read("j", 0, 8),
            stopped("j", "n1", 0, 300), // n1 killed
            started("j", "n3", 1, 4300, Some(ck(0, 2))),
            read("j", 8, 12),
            finished("j", "n3", 1, 6000),
        ]
    }

    #[test]
    fn a_clean_recovery_passes_every_invariant() {
        let r = check(&clean_run());
        assert!(r.ok(), "{r}\n{r:?}");
        assert_eq!((r.jobs, r.finished, r.resumes), (1, 1, 1));
        let table = r.to_string();
        assert_eq!(table.matches('✓').count(), 6, "{table}");
        assert!(!table.contains('✗'));
    }

    #[test]
    fn duplicate_and_missing_output_bytes_are_counted() {
        let mut f = clean_run();
        f.push(read("j", 5, 10)); // re-delivered after a resume
        let r = check(&f);
        assert_eq!(r.duplicate_output_bytes, 10);
        assert!(
            r.output_mismatch.is_empty(),
            "same bytes twice: content still right"
        );
        assert!(!r.ok());
        assert!(r.to_string().contains("✗  10 duplicate"), "{r}");

        let mut f = clean_run();
        f.retain(|x| !matches!(x, Fact::OutputRead { offset: 8, .. }));
        f.push(read("j", 10, 5));
        let r = check(&f);
        assert_eq!(r.missing_output_bytes, 2 + 5);
        assert_eq!(r.output_mismatch, ["j"]);
    }

    #[test]
    fn different_bytes_or_a_wrong_node_hash_are_mismatches() {
        let mut f = clean_run();
        f.push(Fact::OutputRead {
            job: "j".into(),
            offset: 3,
            bytes: b"X".to_vec(),
        });
        assert_eq!(check(&f).output_mismatch, ["j"]);
        let mut f = clean_run();
        f.push(Fact::OutputRead {
            job: "j".into(),
            offset: 20,
            bytes: b"more".to_vec(),
        });
        assert_eq!(
            check(&f).output_mismatch,
            ["j"],
            "longer than the straight run"
        );
        let mut f = clean_run();
        if let Some(Fact::Finished { output_hash, .. }) = f.last_mut() {
            *output_hash = super::output_hash(b"other");
        }
        assert_eq!(check(&f).output_mismatch, ["j"]);
        let f: Vec<Fact> = clean_run()
            .into_iter()
            .filter(|x| !matches!(x, Fact::StraightRun { .. }))
            .collect();
        assert_eq!(check(&f).output_unverified, ["j"]);
    }

    #[test]
    fn overlapping_reads_in_any_order_reconstruct_the_output() {
        let mut out = Output::default();
        for (o, l) in [(10, 5), (0, 3), (2, 10), (14, 6), (0, 20)] {
            out.read(o, &OUT[o as usize..(o + l) as usize]);
        }
        let (hash, missing, extra) = out.finish(20);
        assert_eq!(hash.as_deref(), Some(output_hash(OUT).as_str()));
        assert_eq!((missing, extra, out.conflict), (0, 0, false));
        // 5+3+10+6+20 read, 20 distinct.
        assert_eq!(out.duplicate, 24);
        out.read(u64::MAX - 1, b"abc");
        assert!(
            out.conflict,
            "an offset overflow is a conflict, not a panic"
        );
        let mut out = Output::default();
        out.read(1 << 60, b"far away");
        assert_eq!(out.finish(4).1, 4, "a read far beyond allocates nothing");
    }

    #[test]
    fn a_generation_on_two_nodes_at_once_is_caught() {
        let mut f = clean_run();
        // n1 was only paused, came back and ran generation 0 again while a
        // move had already started generation 1 on n3... and n2 also ran 1.
        f.push(started("j", "n2", 1, 5000, Some(ck(0, 2))));
        let r = check(&f);
        assert_eq!(r.duplicate_generations.len(), 1, "{r:?}");
        let d = &r.duplicate_generations[0];
        assert_eq!((d.generation, d.from_ms, d.to_ms), (1, 5000, 6000));
        assert!(
            r.to_string()
                .contains("generation 1 ran on n3 and n2 from 5000 ms to 6000 ms"),
            "{r}"
        );
        // Back to back is fine; so is the same node twice.
        let mut f = clean_run();
        f.push(started("j", "n2", 1, 6000, Some(ck(0, 2))));
        assert!(check(&f).duplicate_generations.is_empty());
        let mut f = clean_run();
        f.insert(9, started("j", "n3", 1, 5000, Some(ck(0, 2))));
        assert!(check(&f).duplicate_generations.is_empty());
    }

    #[test]
    fn resuming_from_an_older_checkpoint_loses_an_acknowledged_one() {
        let mut f = clean_run();
        f[8] = started("j", "n2", 1, 4300, Some(ck(0, 1)));
        let r = check(&f);
        assert_eq!(r.lost_checkpoints.len(), 1);
        assert_eq!(r.lost_checkpoints[0].acked, ck(0, 2));
        // A start whose checkpoint the harness cannot see (a move, a first start) is
        // not judged...
        f[8] = started("j", "n2", 1, 4300, None);
        assert!(check(&f).lost_checkpoints.is_empty());
        // ...unless the node's recovery record says where it resumed from.
        f.push(resumed("j", "n2", 1, 4500, ck(0, 1)));
        let r = check(&f);
        assert_eq!(r.lost_checkpoints.len(), 1);
        assert_eq!(r.lost_checkpoints[0].at_ms, 4300, "judged when it started");
        // An acknowledgement after the start does not count against it.
        let mut f = clean_run();
        f.push(acked("j", "n2", ck(0, 9), 9000));
        assert!(check(&f).lost_checkpoints.is_empty());
    }

    /// What the harness records: the owner's acknowledgements, kills and cuts, and
    /// each recovery's checkpoint from the resumer's record. Here ck(0, 2) was
    /// acknowledged by n3 alone, and n2 resumed from ck(0, 1).
    #[test]
    fn only_a_holder_that_went_down_may_be_passed_over() {
        let run = |down: Option<(u64, Option<u64>)>| {
            let mut f = clean_run();
            f.retain(|x| {
                !matches!(x, Fact::CheckpointAcked { holder, checkpoint, .. }
                    if *holder == n("n2") && *checkpoint == ck(0, 2))
            });
            f[7] = started("j", "n2", 1, 4300, None);
            f.push(resumed("j", "n2", 1, 4400, ck(0, 1)));
            if let Some((at_ms, up)) = down {
                f.push(Fact::NodeDown {
                    node: n("n3"),
                    at_ms,
                });
                if let Some(at_ms) = up {
                    f.push(Fact::NodeUp {
                        node: n("n3"),
                        at_ms,
                    });
                }
            }
            check(&f)
        };
        // n3 stayed up and reachable: its copy was there to resume from.
        let r = run(None);
        assert_eq!(r.lost_checkpoints.len(), 1, "{r:?}");
        assert_eq!(r.lost_checkpoints[0].acked_by, n("n3"));
        assert_eq!(r.lost_checkpoints[0].started_from, Some(ck(0, 1)));
        assert!(!r.ok());
        assert!(r.to_string().contains('✗'));
        // Down and back before its acknowledgement, or down after the resume: no
        // excuse.
        assert_eq!(run(Some((50, Some(150)))).lost_checkpoints.len(), 1);
        assert_eq!(run(Some((5000, None))).lost_checkpoints.len(), 1);
        // Killed or cut off in between, back or not: its copy may be gone or out of
        // reach; down since before its acknowledgement and still down at the resume
        // (acknowledged across the cut, to an owner on its side) too.
        for spell in [(2500, None), (2500, Some(3000)), (100, Some(9000))] {
            let r = run(Some(spell));
            assert!(r.lost_checkpoints.is_empty(), "{spell:?}: {r:?}");
            assert_eq!(r.resumes, 1);
        }
    }

    #[test]
    fn unfinished_and_lost_jobs() {
        let mut f = clean_run();
        f.pop(); // never finished, still running on n3
        f.push(Fact::Submitted { job: "k".into() });
        f.push(started("k", "n2", 0, 0, None));
        f.push(stopped("k", "n2", 0, 50)); // killed, never recovered
        let r = check(&f);
        assert_eq!(r.unfinished, ["j", "k"]);
        assert_eq!(r.jobs_lost, ["k"]);
        let t = r.to_string();
        let line = t
            .lines()
            .find(|l| l.starts_with("every job finished"))
            .unwrap();
        assert!(line.ends_with("✗  0/2"), "{t}");
        assert!(t.contains("lost: k"), "{t}");
    }

    #[test]
    fn facts_and_report_round_trip_through_json() {
        let f = clean_run();
        let json = serde_json::to_string(&f).unwrap();
        assert!(json.contains("\"fact\":\"started\""), "{json}");
        let back: Vec<Fact> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f);
        let mut f = clean_run();
        f.push(started("j", "n2", 1, 5000, Some(ck(0, 1))));
        let r = check(&f);
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(!back.ok());
    }

    #[test]
    fn stray_facts_do_not_panic() {
        let f = vec![
            stopped("x", "n1", 3, 10),
            finished("y", "n9", 7, 0),
            started("z", "n1", 0, 50, None),
            stopped("z", "n1", 0, 10), // stop before start
            Fact::OutputRead {
                job: "z".into(),
                offset: 0,
                bytes: vec![],
            },
        ];
        let r = check(&f);
        assert_eq!(r.jobs, 2, "y (finished) and z (started): {r:?}");
        assert_eq!(r.unfinished, ["z"]);
        assert_eq!(r.jobs_lost, ["z"], "its only copy stopped");
    }
}
