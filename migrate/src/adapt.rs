//! Pure decisions that adapt a migration to the link and the job: the
//! compression level for the chunks (after the agile VM handoff work, Ha et
//! al. 2017) and the pre-copy stop rule.
//!
//! # Compression model
//! Compression and transfer run as a pipeline (the sender compresses chunk
//! n+1 while chunk n is on the wire), so the throughput of a level, in
//! uncompressed bytes per second, is that of its slower stage:
//!
//! ```text
//! rate(level) = min(compress_speed(level) × cores, bandwidth / ratio(level))
//! rate(none)  = bandwidth
//! ```
//!
//! and the level with the highest rate (the shortest time for any number of
//! bytes) wins; a tie goes to less CPU. Assumptions, all in [`ZSTD_PROFILES`]:
//! single-thread zstd figures on the Silesia corpus on one ~4 GHz x86 core
//! (zstd's own benchmarks and lzbench report ratios 2.9 at level 1 to 3.8 at
//! level 19; speeds 450 MB/s down to ~4 MB/s). Memory pages of a running job
//! are not Silesia — heaps often compress better, media worse — and an ARM
//! edge core is 2–4× slower: the caller scales `cores` (x86-core equivalents
//! of spare CPU) and may pass its own table measured on the node.
//! Decompression (≥1 GB/s for every level) is assumed never to be the
//! bottleneck. All-zero chunks never travel, so the table need not model
//! them.

use crate::msg::Compression;

/// Expected behaviour of one zstd level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelProfile {
    pub level: i32,
    /// Uncompressed bytes per second one core compresses.
    pub compress_bytes_per_s: u64,
    /// Compressed size per 1000 uncompressed bytes.
    pub ratio_permille: u32,
}

/// Typical zstd levels; see the module doc for where the figures come from.
pub const ZSTD_PROFILES: &[LevelProfile] = &[
    LevelProfile {
        level: 1,
        compress_bytes_per_s: 450_000_000,
        ratio_permille: 347,
    },
    LevelProfile {
        level: 3,
        compress_bytes_per_s: 300_000_000,
        ratio_permille: 316,
    },
    LevelProfile {
        level: 6,
        compress_bytes_per_s: 100_000_000,
        ratio_permille: 300,
    },
    LevelProfile {
        level: 9,
        compress_bytes_per_s: 60_000_000,
        ratio_permille: 290,
    },
    LevelProfile {
        level: 15,
        compress_bytes_per_s: 20_000_000,
        ratio_permille: 280,
    },
    LevelProfile {
        level: 19,
        compress_bytes_per_s: 4_000_000,
        ratio_permille: 265,
    },
];

/// Uncompressed bytes per second moved with `compression` over a link of
/// `bandwidth_bytes_per_s` with `cores` of spare CPU (pipelined model).
/// A level missing from `profiles` is modelled as no compression.
pub fn effective_rate(
    profiles: &[LevelProfile],
    bandwidth_bytes_per_s: u64,
    cores: f64,
    compression: Compression,
) -> u64 {
    let bw = bandwidth_bytes_per_s as f64;
    let rate = match compression {
        Compression::None => bw,
        Compression::Zstd(level) => match profiles.iter().find(|p| p.level == level) {
            None => bw,
            Some(p) => {
                let cpu = p.compress_bytes_per_s as f64 * cores.max(0.0);
                let wire = bw * 1000.0 / (p.ratio_permille.max(1) as f64);
                cpu.min(wire)
            }
        },
    };
    // `as` saturates (and maps NaN to 0) for f64 -> u64.
    rate as u64
}

/// The compression that moves bytes fastest over this link with this much
/// spare CPU, from [`ZSTD_PROFILES`]. `None` on fast links (loopback, GbE on a
/// small core), a strong level on slow ones.
pub fn choose_compression(bandwidth_bytes_per_s: u64, cores: f64) -> Compression {
    choose_compression_with(ZSTD_PROFILES, bandwidth_bytes_per_s, cores)
}

/// [`choose_compression`] with the caller's own level table.
pub fn choose_compression_with(
    profiles: &[LevelProfile],
    bandwidth_bytes_per_s: u64,
    cores: f64,
) -> Compression {
    let mut best = Compression::None;
    let mut best_rate = effective_rate(profiles, bandwidth_bytes_per_s, cores, best);
    // Profiles are tried from the fastest compressor to the slowest; a level
    // must be strictly better to win, so ties go to less CPU.
    let mut sorted: Vec<&LevelProfile> = profiles.iter().collect();
    sorted.sort_by_key(|p| std::cmp::Reverse(p.compress_bytes_per_s));
    for p in sorted {
        let c = Compression::Zstd(p.level);
        let r = effective_rate(profiles, bandwidth_bytes_per_s, cores, c);
        if r > best_rate {
            best = c;
            best_rate = r;
        }
    }
    best
}

/// Milliseconds to move `bytes` at `rate` uncompressed bytes per second
/// (rounded up; a zero rate counts as 1 B/s).
pub fn transfer_ms(bytes: u64, rate: u64) -> u64 {
    let ms = (bytes as u128 * 1000).div_ceil(rate.max(1) as u128);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// Why pre-copy stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The dirty set fits the downtime target.
    Converged,
    /// `max_rounds` rounds done.
    RoundLimit,
    /// The last round did not shrink the dirty set enough.
    NotShrinking,
    /// The job dirties memory about as fast as the link moves it: another
    /// round would not shrink the dirty set.
    DirtyRateTooHigh,
    /// Post-copy or hybrid: the rounds it wanted are done (none for post-copy).
    PostCopy,
}

/// The stop rule's knobs (part of `SourceConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrecopyPolicy {
    /// Most pre-copy rounds (round 1 is the initial copy); 0 = pure
    /// stop-and-copy (everything moves while the job is paused).
    pub max_rounds: u32,
    /// Downtime the stop-and-copy should fit in.
    pub downtime_target_ms: u64,
    /// A round is an improvement only if the dirty set it leaves is below
    /// this fraction (per mille) of what the round sent.
    pub min_shrink_permille: u32,
}

/// What pre-copy knows after round `round` was acknowledged and the job
/// checkpointed again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundFacts {
    /// Rounds done so far (≥ 1).
    pub round: u32,
    /// Bytes round `round` sent.
    pub sent_bytes: u64,
    /// Bytes the destination still lacks for the new checkpoint.
    pub dirty_bytes: u64,
    /// Effective throughput estimate (uncompressed bytes/s).
    pub throughput: u64,
    /// Dirty-rate estimate (distinct bytes/s the job dirties).
    pub dirty_rate: u64,
}

/// Bytes that fit in the downtime target at this throughput.
pub fn downtime_budget_bytes(throughput: u64, downtime_target_ms: u64) -> u64 {
    let b = throughput as u128 * downtime_target_ms as u128 / 1000;
    u64::try_from(b).unwrap_or(u64::MAX)
}

/// `None` = do another round; `Some(reason)` = stop and copy now.
///
/// The rule adapts to the link and the job: the size target follows the
/// measured throughput, and the predicted next dirty set
/// (`dirty_rate × time to send the current one`) stops pre-copy early when
/// the job dirties memory almost as fast as the link moves it, before a
/// useless round is paid for.
pub fn precopy_stop(policy: &PrecopyPolicy, f: &RoundFacts) -> Option<StopReason> {
    if f.dirty_bytes <= downtime_budget_bytes(f.throughput, policy.downtime_target_ms) {
        return Some(StopReason::Converged);
    }
    if f.round >= policy.max_rounds {
        return Some(StopReason::RoundLimit);
    }
    let shrink = policy.min_shrink_permille as u128;
    if f.dirty_bytes as u128 * 1000 >= f.sent_bytes as u128 * shrink {
        return Some(StopReason::NotShrinking);
    }
    // predicted next = dirty × dirty_rate / throughput; stop if it would not
    // be below `shrink` of the current dirty set.
    if f.dirty_rate as u128 * 1000 >= f.throughput.max(1) as u128 * shrink {
        return Some(StopReason::DirtyRateTooHigh);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    #[test]
    fn no_compression_on_fast_links() {
        // Loopback-ish 2 GB/s, 1 GbE 125 MB/s with a quarter core spare.
        assert_eq!(choose_compression(2_000 * MB, 1.0), Compression::None);
        assert_eq!(choose_compression(125 * MB, 0.25), Compression::None);
    }

    #[test]
    fn light_compression_on_medium_links_strong_on_slow() {
        // 100 Mbit/s with a core: a middle level, CPU and wire roughly balanced.
        let medium = choose_compression(12 * MB + 500_000, 1.0);
        let slow = choose_compression(625_000, 1.0); // 5 Mbit/s
        let (Compression::Zstd(lm), Compression::Zstd(ls)) = (medium, slow) else {
            panic!("expected compression, got {medium:?} / {slow:?}");
        };
        assert!(ls > lm, "slow link level {ls} not above medium {lm}");
        assert_eq!(ls, 19);
        // Without spare CPU nothing is worth compressing.
        assert_eq!(choose_compression(625_000, 0.0), Compression::None);
    }

    #[test]
    fn chosen_level_is_never_slower_than_any_other() {
        for bw in [100_000u64, MB, 10 * MB, 50 * MB, 200 * MB, 5_000 * MB] {
            for cores in [0.1, 0.5, 1.0, 2.0] {
                let best = choose_compression(bw, cores);
                let rb = effective_rate(ZSTD_PROFILES, bw, cores, best);
                let others = std::iter::once(Compression::None)
                    .chain(ZSTD_PROFILES.iter().map(|p| Compression::Zstd(p.level)));
                for c in others {
                    assert!(rb >= effective_rate(ZSTD_PROFILES, bw, cores, c));
                }
            }
        }
    }

    #[test]
    fn stop_rule() {
        let p = PrecopyPolicy {
            max_rounds: 5,
            downtime_target_ms: 50,
            min_shrink_permille: 900,
        };
        let base = RoundFacts {
            round: 1,
            sent_bytes: 100 * MB,
            dirty_bytes: 10 * MB,
            throughput: 10 * MB,
            dirty_rate: MB,
        };
        assert_eq!(precopy_stop(&p, &base), None);
        let small = RoundFacts {
            dirty_bytes: 500_000,
            ..base
        };
        assert_eq!(precopy_stop(&p, &small), Some(StopReason::Converged));
        let last = RoundFacts { round: 5, ..base };
        assert_eq!(precopy_stop(&p, &last), Some(StopReason::RoundLimit));
        let grew = RoundFacts {
            sent_bytes: 10 * MB,
            dirty_bytes: 9_500_000,
            ..base
        };
        assert_eq!(precopy_stop(&p, &grew), Some(StopReason::NotShrinking));
        let hot = RoundFacts {
            dirty_rate: 9 * MB,
            ..base
        };
        assert_eq!(precopy_stop(&p, &hot), Some(StopReason::DirtyRateTooHigh));
        // A faster link turns the same job into a converging one.
        let fast = RoundFacts {
            throughput: 300 * MB,
            ..hot
        };
        assert_eq!(precopy_stop(&p, &fast), Some(StopReason::Converged));
    }

    #[test]
    fn transfer_time_rounds_up_and_survives_zero_rate() {
        assert_eq!(transfer_ms(1, 1000), 1);
        assert_eq!(transfer_ms(1000, 1000), 1000);
        assert_eq!(transfer_ms(1, 0), 1000);
        assert_eq!(transfer_ms(u64::MAX, 1), u64::MAX);
    }
}

/// How a move copies memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MoveMode {
    /// Rounds while the job runs, then the rest while it is paused.
    #[default]
    PreCopy,
    /// The job resumes at the destination after its hottest chunks; the rest follow
    /// on demand (first touch) and in the background.
    PostCopy,
    /// Up to `hybrid_rounds` pre-copy rounds (the cold bulk), then post-copy.
    Hybrid,
}

impl MoveMode {
    pub fn name(self) -> &'static str {
        match self {
            MoveMode::PreCopy => "pre-copy",
            MoveMode::PostCopy => "post-copy",
            MoveMode::Hybrid => "hybrid",
        }
    }
}

/// What the shell asks for: a fixed mode, or a choice by [`choose_mode`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RequestedMode {
    #[default]
    Auto,
    Fixed(MoveMode),
}

/// Post-copy knobs (part of `SourceConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PostcopyPolicy {
    pub requested: RequestedMode,
    /// The destination can restore lazily (the shell knows: userfaultfd). Without it
    /// every move is pre-copy, whatever was requested.
    pub available: bool,
    /// Pre-copy rounds of a hybrid move.
    pub hybrid_rounds: u32,
}

impl Default for PostcopyPolicy {
    fn default() -> Self {
        PostcopyPolicy {
            requested: RequestedMode::Auto,
            available: false,
            hybrid_rounds: 2,
        }
    }
}

/// Dirty rate ÷ link rate (per mille) from which pre-copy rounds stop paying: each
/// round re-sends at least this share of what it sent.
pub const HYBRID_FROM_PERMILLE: u64 = 300;
/// Dirty rate ÷ link rate (per mille) from which no round can shrink the dirty set.
pub const POSTCOPY_FROM_PERMILLE: u64 = 1_000;

/// The mode for a move of `state_bytes` that the job dirties at `dirty_rate` (bytes/s)
/// over a link of `throughput` (bytes/s).
///
/// - Everything fits in the downtime target at the link rate: pre-copy (its final
///   stop-and-copy is short anyway, and nothing depends on the source afterwards).
/// - dirty < 30 % of the link: pre-copy converges in a few rounds.
/// - dirty ≥ the link: no round shrinks the dirty set; post-copy moves each chunk once.
/// - between: hybrid — the first rounds move the cold bulk cheaply, then post-copy
///   avoids re-sending the hot set round after round.
pub fn choose_mode(
    policy: &PostcopyPolicy,
    state_bytes: u64,
    dirty_rate: u64,
    throughput: u64,
    downtime_target_ms: u64,
) -> MoveMode {
    if !policy.available {
        return MoveMode::PreCopy;
    }
    if let RequestedMode::Fixed(m) = policy.requested {
        return m;
    }
    if state_bytes <= downtime_budget_bytes(throughput, downtime_target_ms) {
        return MoveMode::PreCopy;
    }
    let permille = (dirty_rate as u128 * 1000 / throughput.max(1) as u128) as u64;
    if permille >= POSTCOPY_FROM_PERMILLE {
        MoveMode::PostCopy
    } else if permille >= HYBRID_FROM_PERMILLE {
        MoveMode::Hybrid
    } else {
        MoveMode::PreCopy
    }
}

#[cfg(test)]
mod mode_tests {
    use super::*;

    const MB: u64 = 1_000_000;

    fn auto() -> PostcopyPolicy {
        PostcopyPolicy {
            available: true,
            ..PostcopyPolicy::default()
        }
    }

    #[test]
    fn the_mode_follows_dirty_rate_over_link_rate() {
        let p = auto();
        let link = 12 * MB + 500_000; // 100 Mbit/s
        let big = 256 << 20;
        assert_eq!(choose_mode(&p, big, MB, link, 50), MoveMode::PreCopy);
        assert_eq!(choose_mode(&p, big, 6 * MB, link, 50), MoveMode::Hybrid);
        assert_eq!(choose_mode(&p, big, 40 * MB, link, 50), MoveMode::PostCopy);
        // A small job moves in the downtime target whatever it dirties.
        assert_eq!(
            choose_mode(&p, 256 << 10, 40 * MB, link, 50),
            MoveMode::PreCopy
        );
    }

    #[test]
    fn unavailable_post_copy_or_a_fixed_mode_wins() {
        let mut p = auto();
        p.requested = RequestedMode::Fixed(MoveMode::Hybrid);
        assert_eq!(choose_mode(&p, 1 << 30, 0, MB, 50), MoveMode::Hybrid);
        p.available = false;
        assert_eq!(
            choose_mode(&p, 1 << 30, 100 * MB, MB, 50),
            MoveMode::PreCopy
        );
    }
}
