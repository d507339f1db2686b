//! Pre-copy adapts to the job and the link: it converges for a quiet job,
//! stops when rounds stop paying off for a busy one, never exceeds its round
//! bound, and never sends a chunk the destination already has.

mod common;

use std::collections::HashSet;

use common::*;
use migrate::{MoveMode, Outcome, RequestedMode, SourceEvent, SourceReport, StopReason};

const LIMIT_MS: u64 = 3_600_000;

/// 64 MiB of memory (1024 chunks of 64 KiB, a seventh of them zero) on a
/// 100 Mbit/s link, 50 ms downtime target.
fn big() -> Params {
    let mut p = Params::small();
    p.mem_chunks = 1024;
    p.latency_ms = 1;
    p
}

fn run(p: Params) -> (Sim, SourceReport) {
    let mut sim = Sim::new(p);
    sim.run(LIMIT_MS);
    sim.assert_sound("precopy");
    assert_eq!(sim.final_src_outcome(), Some(Outcome::Committed));
    let r = sim.src.as_ref().expect("source alive").report();
    (sim, r)
}

fn downtime(sim: &Sim) -> u64 {
    sim.started_at.unwrap() - sim.paused_at.unwrap()
}

#[test]
fn low_dirty_rate_converges_within_the_downtime_target() {
    let mut p = big();
    p.hot = 256;
    p.dirty_rate = 500_000;
    let target = p.src.precopy.downtime_target_ms;
    let (sim, r) = run(p);
    assert_eq!(r.stop, Some(StopReason::Converged), "{r:?}");
    assert!(
        r.rounds.len() >= 2,
        "the first round's dirt needs a second round: {r:?}"
    );
    assert!(r.rounds.len() < 8);
    // Each round moved less than the one before.
    for w in r.rounds.windows(2) {
        assert!(w[1].bytes < w[0].bytes, "{r:?}");
    }
    // What is left for the pause fits the budget at the measured throughput.
    assert!(r.final_bytes <= r.throughput * target / 1000, "{r:?}");
    // The pause is short compared with the copy that ran alongside the job.
    let first = r.rounds[0].duration_ms;
    assert!(
        downtime(&sim) * 20 < first,
        "downtime {} vs round 1 {first}",
        downtime(&sim)
    );
}

#[test]
fn high_dirty_rate_stops_when_rounds_stop_shrinking() {
    let mut p = big();
    p.hot = 512;
    p.dirty_rate = 20_000_000; // faster than the link
    let max = p.src.precopy.max_rounds as usize;
    let (_, r) = run(p);
    assert!(
        matches!(
            r.stop,
            Some(StopReason::NotShrinking | StopReason::DirtyRateTooHigh)
        ),
        "{r:?}"
    );
    assert!(
        r.rounds.len() < max,
        "stopped by the rule, not the bound: {r:?}"
    );
    // It stopped because the dirty set stayed large: a quarter of the hot set
    // or more still had to move while paused.
    assert!(r.final_bytes >= 128 * CS as u64, "{r:?}");

    // The same job over a link ten times faster converges.
    let mut p = big();
    p.hot = 512;
    p.dirty_rate = 20_000_000;
    p.bandwidth = 125_000_000;
    p.src.link_bandwidth_bytes_per_s = 125_000_000;
    let (_, fast) = run(p);
    assert_eq!(fast.stop, Some(StopReason::Converged), "{fast:?}");
}

#[test]
fn a_reported_dirty_rate_stops_pre_copy_before_a_useless_round() {
    let mut p = big();
    p.hot = 512;
    p.dirty_rate = 20_000_000;
    // Dirty tracking tells the source the job writes 40 MB/s.
    p.shell_dirty_estimate = Some(40_000_000);
    let (_, r) = run(p);
    assert_eq!(r.stop, Some(StopReason::DirtyRateTooHigh), "{r:?}");
    assert_eq!(r.rounds.len(), 1, "{r:?}");
}

#[test]
fn rounds_are_bounded() {
    let mut p = big();
    p.hot = 1024;
    p.dirty_rate = 6_000_000; // each round leaves about half of what it sent
    p.src.precopy.max_rounds = 4;
    p.src.precopy.downtime_target_ms = 1; // never reachable
    let (_, r) = run(p);
    assert_eq!(r.stop, Some(StopReason::RoundLimit), "{r:?}");
    assert_eq!(r.rounds.len(), 4, "{r:?}");
    for w in r.rounds.windows(2) {
        assert!(w[1].bytes < w[0].bytes, "{r:?}");
    }
}

#[test]
fn chunks_the_destination_has_are_never_sent() {
    for preload in [Preload::Module, Preload::ModuleAndHalf, Preload::Everything] {
        let mut p = big();
        p.hot = 256;
        p.dirty_rate = 2_000_000;
        p.preload = preload;
        let (sim, r) = run(p);
        let what = format!("{preload:?}");
        // Never fetched something the store had at the start...
        assert!(
            sim.fetched
                .iter()
                .all(|id| !sim.initial_dest_store.contains(id)),
            "{what}"
        );
        // ...nor anything twice (the harness also flags a fetch of a chunk
        // already stored as a violation, checked by `run`).
        let mut seen = HashSet::new();
        assert!(sim.fetched.iter().all(|id| seen.insert(*id)), "{what}");
        // No Round message listed a present chunk either.
        for (round, ids) in &sim.rounds_in_messages {
            assert!(
                ids.iter().all(|id| !sim.initial_dest_store.contains(id)),
                "{what}: round {round}"
            );
        }
        // The accounting agrees: round 1 moved exactly what was missing.
        assert_eq!(
            r.rounds[0].bytes,
            r.offered_bytes - r.present_bytes,
            "{what}"
        );
        match preload {
            Preload::Everything => {
                assert_eq!(r.present_bytes, r.offered_bytes, "{what}");
                assert_eq!(r.rounds[0].bytes, 0, "{what}");
            }
            _ => assert!(r.present_bytes > 0, "{what}"),
        }
        if preload == Preload::ModuleAndHalf {
            assert!(r.present_bytes * 3 > r.offered_bytes, "{what}: {r:?}");
        }
    }
}

/// The source picks the compression of each round from the link it is told
/// about: none on a fast link, strong zstd on a slow one, and it follows a
/// new estimate between rounds.
#[test]
fn compression_follows_the_link_estimate() {
    use migrate::*;
    let p = Params::small();
    let state = JobModel::new(&p).state();
    let m = |body| Message {
        migration: MIG,
        generation: GENERATION,
        body,
    };
    let round_compression = |s: &mut Source| {
        std::iter::from_fn(|| s.poll_action())
            .find_map(|a| match a {
                SourceAction::Send(Message {
                    body: Body::Round { compression, .. },
                    ..
                }) => Some(compression),
                _ => None,
            })
            .expect("a round")
    };
    let cfg = SourceConfig {
        link_bandwidth_bytes_per_s: 625_000, // 5 Mbit/s
        compression_cores: 1.0,
        ..SourceConfig::default()
    };
    let mut s = Source::new(cfg, MIG, "job-a".into(), GENERATION, state.clone(), 0).unwrap();
    s.handle_message(
        1,
        m(Body::Have {
            have: vec![],
            lazy: true,
        }),
    )
    .unwrap();
    assert_eq!(round_compression(&mut s), Compression::Zstd(19));
    // The link turns out to be as fast as loopback (faster than a core
    // compresses): the next round goes uncompressed.
    s.handle_event(
        2,
        SourceEvent::Estimates {
            link_bandwidth_bytes_per_s: Some(2_000_000_000),
            dirty_bytes_per_s: None,
        },
    )
    .unwrap();
    s.handle_message(10_000, m(Body::RoundAck { round: 1 }))
        .unwrap();
    // A third of the memory changed meanwhile: another round is worth it.
    let mut job = JobModel::new(&p);
    for v in job.slots.iter_mut().take(20) {
        *v = Some(9);
    }
    let mut s2 = s;
    let _ = std::iter::from_fn(|| s2.poll_action()).count();
    s2.handle_event(
        10_001,
        SourceEvent::Checkpointed {
            round: 1,
            state: job.state(),
        },
    )
    .unwrap();
    assert_eq!(s2.phase(), SourcePhase::PreCopy { round: 2 });
    assert_eq!(round_compression(&mut s2), Compression::None);
}

#[test]
fn zero_rounds_is_pure_stop_and_copy() {
    let mut p = big();
    p.hot = 256;
    p.dirty_rate = 500_000;
    p.src.precopy.max_rounds = 0;
    let (sim, r) = run(p);
    assert!(r.rounds.is_empty(), "no pre-copy round: {r:?}");
    assert_eq!(r.stop, Some(StopReason::RoundLimit));
    // Everything the destination lacked moved while the job was paused.
    assert_eq!(r.final_bytes, r.offered_bytes - r.present_bytes, "{r:?}");
    assert!(downtime(&sim) > 0);
}

/// A link ten times slower than the source believes: without progress reports the
/// first round outlives its deadline and the move aborts (the job stays); with them
/// the source waits as long as chunks keep arriving, and the move commits.
#[test]
fn progress_reports_keep_a_slow_first_round_alive() {
    let slow = || {
        let mut p = big();
        p.hot = 64;
        p.dirty_rate = 100_000;
        p.bandwidth = 1_250_000; // the source assumes 12.5 MB/s
        p
    };
    let mut sim = Sim::new(slow());
    sim.run(LIMIT_MS);
    sim.assert_sound("no progress");
    assert_eq!(
        sim.final_src_outcome(),
        Some(Outcome::Aborted(migrate::AbortReason::Timeout))
    );

    let mut p = slow();
    p.progress_every_ms = Some(500);
    let (_, r) = run(p);
    assert!(r.rounds[0].duration_ms > 40_000, "{r:?}");
}

/// Post-copy on the job pre-copy cannot move well: the job pauses right after the
/// offer, the final message carries no memory (only what the destination needs to
/// restore), every memory chunk it lacks is deferred, and nothing is sent twice.
#[test]
fn post_copy_defers_memory_and_sends_nothing_twice() {
    let mut p = big();
    p.hot = 512;
    p.dirty_rate = 20_000_000;
    p.src.postcopy.available = true;
    p.src.postcopy.requested = RequestedMode::Fixed(MoveMode::PostCopy);
    let (sim, r) = run(p);
    assert_eq!(r.mode, MoveMode::PostCopy);
    assert_eq!(r.stop, Some(StopReason::PostCopy));
    // At most one round while the job runs, with what is not memory (the module).
    assert!(r.rounds.len() <= 1, "{r:?}");
    assert!(r.deferred_chunks > 0 && r.deferred_bytes > 0, "{r:?}");
    let fetched: HashSet<_> = sim.fetched.iter().collect();
    assert_eq!(
        fetched.len(),
        sim.fetched.len(),
        "a chunk was fetched twice"
    );
    assert!(
        sim.deferred.iter().all(|id| !fetched.contains(id)),
        "a deferred chunk was also sent before the resume"
    );
    // The Final carries the manifest as a patch of the offer: only the slots the
    // job rewrote since, not the whole map.
    let full = match paused_event(&sim.job.state(), 0) {
        SourceEvent::Paused { manifest, .. } => manifest.encode().len(),
        _ => unreachable!(),
    };
    assert!(
        r.manifest_patch_bytes * 4 < full,
        "patch {} bytes, full manifest {full}",
        r.manifest_patch_bytes
    );
    // The Final carried the Go: no Ready, no Go.
    assert!(sim.index_of("Ready").is_none() && sim.index_of("Go").is_none());
    // Downtime no longer grows with the dirty set: compare with pre-copy.
    let mut pre = big();
    pre.hot = 512;
    pre.dirty_rate = 20_000_000;
    let (pre_sim, _) = run(pre);
    assert!(
        downtime(&sim) * 10 <= downtime(&pre_sim),
        "post-copy downtime {} vs pre-copy {}",
        downtime(&sim),
        downtime(&pre_sim)
    );
}

/// Hybrid: the configured pre-copy rounds first, then the rest deferred.
#[test]
fn hybrid_does_its_rounds_then_defers() {
    let mut p = big();
    p.hot = 512;
    p.dirty_rate = 20_000_000;
    p.src.postcopy.available = true;
    p.src.postcopy.requested = RequestedMode::Fixed(MoveMode::Hybrid);
    p.src.postcopy.hybrid_rounds = 2;
    let (_, r) = run(p);
    assert_eq!(r.mode, MoveMode::Hybrid);
    assert_eq!(r.rounds.len(), 2, "{r:?}");
    assert_eq!(r.stop, Some(StopReason::PostCopy));
    assert!(r.deferred_chunks > 0, "{r:?}");
}

/// Auto with post-copy available: a job dirtying faster than the link moves it
/// switches after round 1 measured its dirty rate.
#[test]
fn auto_switches_from_pre_copy_when_the_dirty_rate_outruns_the_link() {
    let mut p = big();
    p.hot = 512;
    p.dirty_rate = 20_000_000;
    p.src.postcopy.available = true;
    let (_, r) = run(p);
    assert_ne!(r.mode, MoveMode::PreCopy, "{r:?}");
    assert!(r.deferred_chunks > 0, "{r:?}");
    let mut quiet = big();
    quiet.hot = 256;
    quiet.dirty_rate = 500_000;
    quiet.src.postcopy.available = true;
    let (_, r) = run(quiet);
    assert_eq!(r.mode, MoveMode::PreCopy, "{r:?}");
    assert_eq!(r.deferred_chunks, 0);
}

/// A destination that cannot restore lazily (no userfaultfd, e.g. a node under
/// qemu-user) says so in `Have`: a post-copy, hybrid or automatic move to it is made
/// as pre-copy, and nothing is deferred.
#[test]
fn a_destination_without_lazy_restore_gets_pre_copy() {
    for requested in [
        RequestedMode::Fixed(MoveMode::PostCopy),
        RequestedMode::Fixed(MoveMode::Hybrid),
        RequestedMode::Auto,
    ] {
        let mut p = big();
        p.hot = 512;
        p.dirty_rate = 20_000_000;
        p.src.postcopy.available = true;
        p.src.postcopy.requested = requested;
        p.dst.lazy_restore = false;
        let (_, r) = run(p);
        assert_eq!(r.mode, MoveMode::PreCopy, "{requested:?}: {r:?}");
        assert_eq!(r.deferred_chunks, 0, "{requested:?}: {r:?}");
        assert_ne!(r.stop, Some(StopReason::PostCopy), "{requested:?}: {r:?}");
    }
}
