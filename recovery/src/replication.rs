//! When a job's checkpoints are copied to its replicas, and which copy each
//! replica has acknowledged. The period trades the work a crash can cost
//! (everything since the last acknowledged copy) against the link: copying
//! more often costs a fixed overhead per copy, so the shortest period a link
//! can afford depends on how fast the job dirties memory.
//!
//! # The period
//!
//! With `D` the job's dirty rate (bytes of distinct chunks dirtied per
//! second), `B` the link's bandwidth to the replica (bytes/s), `o` the fixed
//! cost of one copy (`copy_overhead_ms`: capture pause, manifest, round trip)
//! and `f` the share of the link replication may use (`link_share`), a copy
//! every `T` ms carries at most `D·T` bytes and occupies the link for
//! `D·T/B + o` ms. Keeping that within the share, `D·T/B + o <= f·T`, gives
//! the shortest admissible period
//!
//! ```text
//! T = o / (f - D/B)            when D/B < f
//! T = max_period_ms            when D/B >= f or B = 0 (the link cannot keep up)
//! T clamped to [min_period_ms, max_period_ms]
//! ```
//!
//! The shortest admissible period is the right one: it minimises the work at
//! risk for the link budget. `D·T` overestimates the bytes of a long period
//! (a chunk rewritten twice travels once), so a saturated link still gets the
//! longest period, where rewrites coalesce most.
//!
//! # Acknowledgements
//!
//! [`AckBook`] keeps, per job, the newest checkpoint each holder has
//! acknowledged (stored durably). It refuses two different checkpoints with
//! the same generation and sequence number — two histories of one generation
//! mean a job ran twice — and never lets an acknowledgement go backwards: an
//! acknowledged checkpoint is never forgotten while its job is tracked, which
//! is what "no acknowledged checkpoint lost" rests on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::RecoveryConfig;
use crate::ids::{CheckpointRef, NodeId};

/// Most jobs an [`AckBook`] or [`CopySchedule`] tracks.
pub const MAX_JOBS: usize = 65_536;
/// Most holders tracked per job.
pub const MAX_HOLDERS: usize = 64;

/// What limited the period [`copy_period`] chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bound {
    /// `o / (f - D/B)`, inside the configured bounds.
    Formula,
    /// Raised to `min_period_ms`.
    Min,
    /// Lowered to `max_period_ms`.
    Max,
    /// The link cannot carry the dirty rate within its share (or its
    /// bandwidth is unknown): `max_period_ms`.
    Saturated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    pub ms: u64,
    pub bound: Bound,
}

/// The copy period for a job dirtying `dirty_bytes_per_s` over a link of
/// `bandwidth_bytes_per_s` (see the module doc for the formula).
pub fn copy_period(
    cfg: &RecoveryConfig,
    dirty_bytes_per_s: u64,
    bandwidth_bytes_per_s: u64,
) -> Period {
    let (lo, hi) = (cfg.min_period_ms, cfg.max_period_ms.max(cfg.min_period_ms));
    let share = cfg.link_share;
    let used = dirty_bytes_per_s as f64 / bandwidth_bytes_per_s as f64; // inf or NaN when B = 0
    if bandwidth_bytes_per_s == 0 || used.is_nan() || used >= share {
        return Period {
            ms: hi,
            bound: Bound::Saturated,
        };
    }
    let t = (cfg.copy_overhead_ms as f64 / (share - used)).ceil();
    // `as` saturates for f64 -> u64 (and maps NaN to 0, caught by `lo`).
    let t = t as u64;
    if t < lo {
        Period {
            ms: lo,
            bound: Bound::Min,
        }
    } else if t > hi {
        Period {
            ms: hi,
            bound: Bound::Max,
        }
    } else {
        Period {
            ms: t,
            bound: Bound::Formula,
        }
    }
}

#[derive(Clone, Debug)]
struct Slot {
    period_ms: u64,
    last_start: Option<u64>,
    registered: u64,
    in_flight: bool,
    /// The replica targets last seen (name, incarnation), see [`CopySchedule::retarget`].
    targets: Option<Vec<(NodeId, u64)>>,
    /// The targets changed since the last copy started: the next one is due after
    /// `hurry_ms` instead of the period.
    hurry_ms: Option<u64>,
}

impl Slot {
    fn next_due(&self) -> u64 {
        match self.last_start {
            None => self.registered,
            Some(t) => {
                t.saturating_add(self.hurry_ms.unwrap_or(self.period_ms).min(self.period_ms))
            }
        }
    }
}

/// When each job's next copy is due. A job's first copy is due as soon as it
/// is tracked (a job without a replicated base checkpoint is unprotected);
/// then one every period, counted from the start of the previous copy; a
/// copy still in flight postpones the next until it finishes.
#[derive(Clone, Debug, Default)]
pub struct CopySchedule {
    jobs: BTreeMap<String, Slot>,
}

impl CopySchedule {
    pub fn new() -> CopySchedule {
        CopySchedule::default()
    }

    /// Track a job (first copy due at `now`). False when [`MAX_JOBS`] are
    /// tracked already; re-tracking a job only updates its period.
    pub fn track(&mut self, job: &str, now: u64, period_ms: u64) -> bool {
        if let Some(s) = self.jobs.get_mut(job) {
            s.period_ms = period_ms;
            return true;
        }
        if self.jobs.len() >= MAX_JOBS {
            return false;
        }
        self.jobs.insert(
            job.to_string(),
            Slot {
                period_ms,
                last_start: None,
                registered: now,
                in_flight: false,
                targets: None,
                hurry_ms: None,
            },
        );
        true
    }

    /// A new period (e.g. from [`copy_period`] after a new measurement).
    pub fn set_period(&mut self, job: &str, period_ms: u64) {
        if let Some(s) = self.jobs.get_mut(job) {
            s.period_ms = period_ms;
        }
    }

    /// The replica targets of `job` as the owner would pick them now, each with its
    /// incarnation. When they differ from the last ones seen — a holder died and
    /// another takes its place, or a holder restarted and lost what it held — the
    /// job has fewer copies than it should until the next copy, which may be a whole
    /// (long) period away; a crash of the owner then loses the job. So the next copy
    /// falls due `min_gap_ms` after the last one started (or at once) instead.
    /// Returns whether it did.
    pub fn retarget(&mut self, job: &str, targets: &[(NodeId, u64)], min_gap_ms: u64) -> bool {
        let Some(s) = self.jobs.get_mut(job) else {
            return false;
        };
        if s.targets.as_deref() == Some(targets) {
            return false;
        }
        let changed = s.targets.is_some();
        s.targets = Some(targets.to_vec());
        if changed {
            s.hurry_ms = Some(min_gap_ms);
        }
        changed
    }

    pub fn untrack(&mut self, job: &str) {
        self.jobs.remove(job);
    }

    /// Jobs whose copy is due at `now` and not already in flight.
    pub fn due(&self, now: u64) -> Vec<String> {
        self.jobs
            .iter()
            .filter(|(_, s)| !s.in_flight && s.next_due() <= now)
            .map(|(j, _)| j.clone())
            .collect()
    }

    /// A copy of `job` started at `now`.
    pub fn started(&mut self, job: &str, now: u64) {
        if let Some(s) = self.jobs.get_mut(job) {
            s.in_flight = true;
            s.last_start = Some(now);
            s.hurry_ms = None;
        }
    }

    /// The copy of `job` ended (acknowledged or failed).
    pub fn finished(&mut self, job: &str) {
        if let Some(s) = self.jobs.get_mut(job) {
            s.in_flight = false;
        }
    }

    /// The earliest time a copy falls due (`None`: nothing to wait for).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.jobs
            .values()
            .filter(|s| !s.in_flight)
            .map(Slot::next_due)
            .min()
    }
}

/// A refused acknowledgement (the caller knows the job and the holder).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    #[error("{got} conflicts with {have} held by {other}: two histories of one generation")]
    Conflict {
        other: NodeId,
        have: CheckpointRef,
        got: CheckpointRef,
    },
    #[error("too many {0} tracked")]
    TooMany(&'static str),
}

/// What an acknowledgement changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// The holder's newest acknowledged checkpoint is now this one.
    Newer,
    /// The holder had acknowledged this one or a newer one already.
    Stale,
}

/// The newest checkpoint each holder acknowledged, per job.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AckBook {
    jobs: BTreeMap<String, BTreeMap<NodeId, CheckpointRef>>,
}

impl AckBook {
    pub fn new() -> AckBook {
        AckBook::default()
    }

    /// `holder` acknowledged storing `ckpt` of `job`.
    pub fn ack(
        &mut self,
        job: &str,
        holder: &NodeId,
        ckpt: CheckpointRef,
    ) -> Result<AckOutcome, ReplicationError> {
        if !self.jobs.contains_key(job) && self.jobs.len() >= MAX_JOBS {
            return Err(ReplicationError::TooMany("jobs"));
        }
        let holders = self.jobs.entry(job.to_string()).or_default();
        if !holders.contains_key(holder) && holders.len() >= MAX_HOLDERS {
            return Err(ReplicationError::TooMany("holders"));
        }
        if let Some((other, have)) = holders
            .iter()
            .find(|(_, h)| h.generation == ckpt.generation && h.seq == ckpt.seq && h.id != ckpt.id)
        {
            return Err(ReplicationError::Conflict {
                other: other.clone(),
                have: *have,
                got: ckpt,
            });
        }
        match holders.get(holder) {
            Some(have) if *have >= ckpt => Ok(AckOutcome::Stale),
            _ => {
                holders.insert(holder.clone(), ckpt);
                Ok(AckOutcome::Newer)
            }
        }
    }

    /// The newest checkpoint `holder` acknowledged for `job`.
    pub fn held_by(&self, job: &str, holder: &NodeId) -> Option<CheckpointRef> {
        self.jobs.get(job)?.get(holder).copied()
    }

    /// Every holder of `job` with its newest acknowledged checkpoint.
    pub fn holders(&self, job: &str) -> impl Iterator<Item = (&NodeId, &CheckpointRef)> {
        self.jobs.get(job).into_iter().flatten()
    }

    /// The newest acknowledged checkpoint of `job` and who holds it.
    pub fn newest(&self, job: &str) -> Option<(CheckpointRef, Vec<NodeId>)> {
        let newest = *self.holders(job).map(|(_, c)| c).max()?;
        let who = self
            .holders(job)
            .filter(|(_, c)| **c == newest)
            .map(|(n, _)| n.clone())
            .collect();
        Some((newest, who))
    }

    /// How many holders have acknowledged `ckpt` of `job` or a newer one.
    pub fn acked_by(&self, job: &str, ckpt: &CheckpointRef) -> usize {
        self.holders(job).filter(|(_, c)| *c >= ckpt).count()
    }

    /// The job finished or was dropped everywhere.
    pub fn forget_job(&mut self, job: &str) {
        self.jobs.remove(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::CheckpointId;

    fn cfg() -> RecoveryConfig {
        RecoveryConfig::default() // 250..=10_000 ms, share 0.2, overhead 20 ms
    }

    fn ck(generation: u64, seq: u64, b: u8) -> CheckpointRef {
        CheckpointRef {
            generation,
            seq,
            id: CheckpointId([b; 32]),
        }
    }

    const MB: u64 = 1_000_000;

    #[test]
    fn formula_in_range_uses_exactly_the_link_share() {
        // u = 0.19: T = 20 / 0.01 = 2000 ms.
        let p = copy_period(&cfg(), 19 * MB / 10, 10 * MB);
        assert_eq!(
            p,
            Period {
                ms: 2000,
                bound: Bound::Formula
            }
        );
        // Over a sweep: a Formula period keeps within the share, one ms less
        // would not.
        let c = cfg();
        let share = |d: u64, b: u64, t: u64| (d as f64 * t as f64 / b as f64 + 20.0) / t as f64;
        let mut formula = 0;
        for d in (0..200).map(|i| i * MB / 100) {
            let p = copy_period(&c, d, 10 * MB);
            if p.bound == Bound::Formula {
                formula += 1;
                assert!(share(d, 10 * MB, p.ms) <= 0.2 + 1e-9, "{d}: {p:?}");
                assert!(share(d, 10 * MB, p.ms - 1) > 0.2, "{d}: {p:?} not minimal");
            }
        }
        assert!(formula > 5, "the sweep must exercise the formula");
    }

    #[test]
    fn bounds_and_saturation() {
        let c = cfg();
        // Idle job: 20 / 0.2 = 100 ms, raised to the minimum.
        assert_eq!(copy_period(&c, 0, 10 * MB).bound, Bound::Min);
        assert_eq!(copy_period(&c, 0, 10 * MB).ms, 250);
        // u = 0.1999: 200 s, lowered to the maximum.
        let p = copy_period(&c, 1999 * MB / 1000, 10 * MB);
        assert_eq!((p.ms, p.bound), (10_000, Bound::Max));
        // The link cannot keep up, or is unknown.
        for (d, b) in [(2 * MB, 10 * MB), (u64::MAX, 1), (1, 0), (0, 0)] {
            let p = copy_period(&c, d, b);
            assert_eq!((p.ms, p.bound), (10_000, Bound::Saturated), "{d} {b}");
        }
        let p = copy_period(&c, 0, u64::MAX);
        assert_eq!(p.ms, 250);
    }

    #[test]
    fn period_grows_with_dirty_rate_and_shrinks_with_bandwidth() {
        let c = cfg();
        let mut last = 0;
        for d in (0..100).map(|i| i * 30_000) {
            let p = copy_period(&c, d, 10 * MB).ms;
            assert!(p >= last, "dirty {d}: {p} < {last}");
            assert!((250..=10_000).contains(&p));
            last = p;
        }
        let mut last = u64::MAX;
        for b in (1..100).map(|i| i * 200_000) {
            let p = copy_period(&c, MB, b).ms;
            assert!(p <= last, "bandwidth {b}: {p} > {last}");
            last = p;
        }
    }

    #[test]
    fn schedule_first_copy_at_once_then_each_period() {
        let mut s = CopySchedule::new();
        s.track("j", 1000, 500);
        assert_eq!(s.due(999), Vec::<String>::new());
        assert_eq!(s.due(1000), ["j"]);
        s.started("j", 1000);
        assert!(s.due(5000).is_empty(), "in flight");
        assert_eq!(s.poll_timeout(), None);
        s.finished("j");
        assert_eq!(s.poll_timeout(), Some(1500));
        assert!(s.due(1499).is_empty());
        assert_eq!(s.due(1500), ["j"]);
        // A slow copy: due again as soon as it ends.
        s.started("j", 1500);
        s.finished("j");
        assert_eq!(s.due(2600), ["j"]);
        s.set_period("j", 2000);
        assert_eq!(s.poll_timeout(), Some(3500));
        s.untrack("j");
        assert_eq!(s.poll_timeout(), None);
        s.track("k", u64::MAX, u64::MAX);
        s.started("k", u64::MAX);
        s.finished("k");
        assert_eq!(s.poll_timeout(), Some(u64::MAX));
    }

    /// The level-2 loss: B held the job's only replica (the other target was the
    /// draining gateway), B was killed and restarted with nothing, and the owner's next
    /// copy was a 10 s period away when the owner was killed too.
    #[test]
    fn a_changed_or_restarted_target_gets_a_copy_without_waiting_the_period() {
        let (b, c) = (NodeId::from("b"), NodeId::from("c"));
        let mut s = CopySchedule::new();
        s.track("j", 0, 10_000);
        assert!(!s.retarget("j", &[(b.clone(), 1), (c.clone(), 1)], 250));
        s.started("j", 0);
        s.finished("j");
        assert!(s.due(5_000).is_empty());
        // Same targets: nothing changes.
        assert!(!s.retarget("j", &[(b.clone(), 1), (c.clone(), 1)], 250));
        assert!(s.due(5_000).is_empty());
        // b restarted (new incarnation): its replica is gone.
        assert!(s.retarget("j", &[(b.clone(), 2), (c.clone(), 1)], 250));
        assert_eq!(s.due(5_000), ["j"]);
        s.started("j", 5_000);
        s.finished("j");
        // Back to the period once copied to the new targets, but never sooner than
        // the gap after the last copy when they change again.
        assert!(s.due(5_200).is_empty());
        assert!(s.retarget("j", &[(c.clone(), 1)], 250));
        assert!(s.due(5_200).is_empty());
        assert_eq!(s.due(5_250), ["j"]);
        s.started("j", 5_250);
        s.finished("j");
        assert!(s.due(15_000).is_empty());
        assert_eq!(s.due(15_250), ["j"]);
        assert!(!s.retarget("other", &[(c, 1)], 250));
    }

    #[test]
    fn acks_move_forward_only() {
        let mut b = AckBook::new();
        let (r1, r2) = (NodeId::from("r1"), NodeId::from("r2"));
        assert_eq!(b.ack("j", &r1, ck(1, 3, 3)), Ok(AckOutcome::Newer));
        assert_eq!(b.ack("j", &r1, ck(1, 2, 2)), Ok(AckOutcome::Stale));
        assert_eq!(b.ack("j", &r1, ck(1, 3, 3)), Ok(AckOutcome::Stale));
        assert_eq!(b.held_by("j", &r1), Some(ck(1, 3, 3)));
        assert_eq!(b.ack("j", &r2, ck(1, 2, 2)), Ok(AckOutcome::Newer));
        assert_eq!(b.newest("j"), Some((ck(1, 3, 3), vec![r1.clone()])));
        assert_eq!(b.acked_by("j", &ck(1, 2, 2)), 2);
        assert_eq!(b.acked_by("j", &ck(1, 3, 3)), 1);
        // A new generation beats any sequence number of the old one.
        assert_eq!(b.ack("j", &r2, ck(2, 0, 9)), Ok(AckOutcome::Newer));
        assert_eq!(b.newest("j"), Some((ck(2, 0, 9), vec![r2.clone()])));
        b.forget_job("j");
        assert_eq!(b.newest("j"), None);
    }

    #[test]
    fn two_histories_of_one_generation_are_refused() {
        let mut b = AckBook::new();
        let (r1, r2) = (NodeId::from("r1"), NodeId::from("r2"));
        b.ack("j", &r1, ck(2, 5, 1)).unwrap();
        let e = b.ack("j", &r2, ck(2, 5, 7)).unwrap_err();
        assert!(matches!(e, ReplicationError::Conflict { ref other, .. } if *other == r1));
        assert!(e.to_string().contains("two histories"), "{e}");
        assert_eq!(b.held_by("j", &r2), None, "a refused ack changes nothing");
        assert!(b.ack("j", &r1, ck(2, 5, 8)).is_err());
    }

    #[test]
    fn holder_count_is_bounded() {
        let mut b = AckBook::new();
        for i in 0..MAX_HOLDERS {
            b.ack("j", &NodeId(format!("h{i}")), ck(1, 1, 1)).unwrap();
        }
        assert_eq!(
            b.ack("j", &NodeId::from("extra"), ck(1, 1, 1)),
            Err(ReplicationError::TooMany("holders"))
        );
        assert_eq!(
            b.ack("j", &NodeId::from("h0"), ck(1, 2, 2)),
            Ok(AckOutcome::Newer)
        );
    }
}
