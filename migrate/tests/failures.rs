//! The invariant under failures: a migration aborted at every protocol step,
//! by every kind of failure, leaves the job running at exactly one node (the
//! source) — or, only when Go was sent and unanswered, escalated — and never
//! at two. Plus duplicated, reordered and randomly lost messages.

mod common;

use common::*;
use migrate::{AbortReason, DestPhase, MoveMode, Outcome, RequestedMode};

const LIMIT_MS: u64 = 600_000;

/// Scenarios with different shapes of the happy path.
fn scenarios() -> Vec<(&'static str, Params)> {
    let base = Params::small();
    let mut one_round = Params::small();
    one_round.dirty_rate = 0;
    let mut many = Params::small();
    many.dirty_rate = 3_000_000;
    many.hot = 48;
    many.src.precopy.downtime_target_ms = 5;
    many.src.precopy.max_rounds = 4;
    let mut everything = Params::small();
    everything.preload = Preload::Everything;
    everything.dirty_rate = 0;
    let mut post = Params::small();
    post.src.postcopy.available = true;
    post.src.postcopy.requested = RequestedMode::Fixed(MoveMode::PostCopy);
    let mut hybrid = many.clone();
    hybrid.src.postcopy.available = true;
    hybrid.src.postcopy.requested = RequestedMode::Fixed(MoveMode::Hybrid);
    hybrid.src.postcopy.hybrid_rounds = 2;
    vec![
        ("base", base),
        ("one round", one_round),
        ("round limit", many),
        ("destination has everything", everything),
        ("post-copy", post),
        ("hybrid", hybrid),
    ]
}

/// Pre-copy, post-copy or hybrid by `seed`.
fn with_mode(p: &mut Params, seed: u64) {
    p.src.postcopy.available = true;
    p.src.postcopy.requested = RequestedMode::Fixed(match seed % 3 {
        0 => MoveMode::PreCopy,
        1 => MoveMode::PostCopy,
        _ => MoveMode::Hybrid,
    });
}

/// The message that hands the job over: Go, or the Final of a post-copy or hybrid
/// move (which carries the Go).
fn handover(p: &Params) -> &'static str {
    match p.src.postcopy.requested {
        RequestedMode::Fixed(MoveMode::PostCopy | MoveMode::Hybrid) => "Final",
        _ => "Go",
    }
}

fn happy(p: &Params) -> Sim {
    let mut sim = Sim::new(p.clone());
    sim.run(LIMIT_MS);
    sim.assert_sound("happy path");
    assert_eq!(sim.final_src_outcome(), Some(Outcome::Committed));
    sim
}

/// A source that does not see a majority of the swarm (cut off into a minority)
/// never hands a job over, in every mode: the move aborts at the handover and the job
/// runs at the source only, so the minority never starts a new generation.
#[test]
fn without_a_majority_in_sight_the_source_keeps_the_job() {
    for (name, p) in scenarios() {
        let mut sim = Sim::new(p.clone());
        sim.src
            .as_mut()
            .expect("source")
            .set_majority_in_sight(false);
        sim.run(LIMIT_MS);
        sim.assert_sound(name);
        assert_eq!(
            sim.final_src_outcome(),
            aborted(AbortReason::NoMajority),
            "{name}"
        );
        assert!(sim.s_running && !sim.d_running, "{name}");
        let sent: Vec<&str> = sim.log.iter().map(|e| e.2).collect();
        assert!(
            !sent.contains(&"Go") && !sent.contains(&"GoAck"),
            "{name}: {sent:?}"
        );
    }
}

#[test]
fn happy_paths_commit() {
    for (name, p) in scenarios() {
        let sim = happy(&p);
        assert_eq!(sim.dst_outcomes, vec![Outcome::Committed], "{name}");
        assert!(sim.d_running && !sim.s_running && !sim.s_holds, "{name}");
        // The order of the protocol, no retransmission needed.
        let names: Vec<&str> = sim.log.iter().map(|e| e.2).collect();
        assert_eq!(names[..2], ["Offer", "Have"], "{name}");
        let tail: &[&str] = if handover(&p) == "Final" {
            &["Final", "GoAck"]
        } else {
            &["Final", "Ready", "Go", "GoAck"]
        };
        assert_eq!(names[names.len() - tail.len()..], *tail, "{name}");
        for pair in names[2..names.len() - tail.len()].chunks(2) {
            assert_eq!(pair, ["Round", "RoundAck"], "{name}: {names:?}");
        }
        assert!(sim.log.iter().all(|e| !e.3), "{name}: nothing dropped");
    }
}

/// Every fault, at every step of the happy path (and one past it).
#[test]
fn abort_at_every_step_keeps_exactly_one_runner() {
    let mut runs = 0;
    let mut outcomes = std::collections::HashMap::new();
    for (name, p) in scenarios() {
        let h = happy(&p);
        let steps = h.log.len();
        let go = h.index_of(handover(&p)).expect("handover sent");
        let rounds = h.src.as_ref().map(|s| s.report().rounds.len()).unwrap_or(0) as u32;
        let mut faults = vec![Fault::VerifyFails, Fault::PauseFails];
        for r in 1..=rounds + 1 {
            faults.push(Fault::FetchFails(r));
        }
        for n in 0..=steps {
            faults.extend([
                Fault::DropOnce(n),
                Fault::CutFrom(n),
                Fault::DestCrash(n),
                Fault::SrcCrash(n),
                Fault::SrcCancel(n),
                Fault::DestCancel(n),
                Fault::Duplicate(n),
                Fault::Delay(n, 2_500),
            ]);
        }
        for fault in faults {
            let what = format!("{name}, {fault:?}");
            let mut q = p.clone();
            q.fault = fault;
            let mut sim = Sim::new(q);
            sim.run(LIMIT_MS);
            sim.assert_sound(&what);
            runs += 1;
            let out = sim.final_src_outcome();
            *outcomes.entry(format!("{out:?}")).or_insert(0) += 1;
            // What each fault must lead to, given where it struck.
            match fault {
                Fault::None => unreachable!(),
                Fault::DropOnce(_) | Fault::Duplicate(_) | Fault::Delay(..) => {
                    // Retransmission and idempotent replies absorb it.
                    assert_eq!(out, Some(Outcome::Committed), "{what}: {:?}", sim.log);
                }
                Fault::CutFrom(n) => {
                    if n < go {
                        assert_eq!(out, aborted(AbortReason::Timeout), "{what}");
                    } else if n < steps {
                        assert_eq!(out, Some(Outcome::Escalated), "{what}");
                        // Go got through iff the cut came after it.
                        assert_eq!(sim.d_running, n > go, "{what}");
                    } else {
                        assert_eq!(out, Some(Outcome::Committed), "{what}");
                    }
                }
                Fault::DestCrash(n) => {
                    if n < go {
                        assert_eq!(out, aborted(AbortReason::Timeout), "{what}");
                        assert!(sim.s_running, "{what}");
                    } else if n < steps {
                        assert_eq!(out, Some(Outcome::Escalated), "{what}");
                    } else {
                        assert_eq!(out, Some(Outcome::Committed), "{what}");
                    }
                }
                Fault::SrcCrash(n) => {
                    // Only the destination is left: it runs iff Go left first.
                    assert_eq!(sim.d_ever_ran, n > go, "{what}");
                    if n <= go {
                        assert_eq!(
                            sim.dst_phase().unwrap_or(DestPhase::Aborted),
                            DestPhase::Aborted,
                            "{what}"
                        );
                    }
                }
                Fault::SrcCancel(n) => {
                    if n < go {
                        assert_eq!(out, aborted(AbortReason::Cancelled), "{what}");
                    } else {
                        assert_eq!(out, Some(Outcome::Committed), "{what}");
                        if n < steps {
                            assert_eq!(sim.expected_errors.len(), 1, "{what}: cancel refused");
                        }
                    }
                }
                Fault::DestCancel(n) => {
                    if n == 0 || n > go {
                        // No destination yet / it already runs the job.
                        assert_eq!(out, Some(Outcome::Committed), "{what}");
                    } else {
                        assert_eq!(out, aborted(AbortReason::Cancelled), "{what}");
                        if n == go {
                            // Go was in flight: the source resumed on the
                            // destination's Abort, after the handover.
                            assert!(sim.handover_recorded, "{what}");
                        }
                    }
                }
                Fault::VerifyFails => {
                    assert_eq!(out, aborted(AbortReason::VerificationFailed), "{what}");
                }
                Fault::FetchFails(r) => {
                    if h.fetch_rounds.contains(&r) {
                        assert_eq!(out, aborted(AbortReason::FetchFailed), "{what}");
                    } else {
                        // Nothing to fetch in that round: nothing can fail.
                        assert_eq!(out, Some(Outcome::Committed), "{what}");
                    }
                }
                Fault::PauseFails => {
                    assert_eq!(out, aborted(AbortReason::PauseFailed), "{what}");
                }
            }
        }
    }
    // Every kind of end was reached somewhere.
    for k in ["Some(Committed)", "Some(Escalated)"] {
        assert!(outcomes.contains_key(k), "{k} never reached: {outcomes:?}");
    }
    assert!(
        outcomes.keys().any(|k| k.contains("Aborted")),
        "{outcomes:?}"
    );
    assert!(runs > 300, "only {runs} runs");
}

/// Random latency (reordering), duplicates and no loss: always commits.
#[test]
fn duplicated_and_reordered_messages_are_harmless() {
    for seed in 0..300 {
        let mut p = Params::small();
        p.seed = seed;
        with_mode(&mut p, seed);
        p.chaos = Chaos {
            loss: 0,
            dup: 400,
            jitter_ms: 150,
        };
        let mut sim = Sim::new(p);
        sim.run(LIMIT_MS);
        sim.assert_sound(&format!("seed {seed}"));
        assert_eq!(
            sim.final_src_outcome(),
            Some(Outcome::Committed),
            "seed {seed}"
        );
        // Every chunk moved at most once despite the duplicates.
        let mut seen = std::collections::HashSet::new();
        assert!(sim.fetched.iter().all(|id| seen.insert(*id)), "seed {seed}");
    }
}

/// Loss as well: any outcome may happen, the invariant always holds, and a
/// run with no Go ever sent never escalates.
#[test]
fn random_loss_never_runs_the_job_twice() {
    let mut committed = 0;
    for seed in 0..400 {
        let mut p = Params::small();
        p.seed = seed;
        with_mode(&mut p, seed);
        p.chaos = Chaos {
            loss: 250,
            dup: 200,
            jitter_ms: 400,
        };
        let mut sim = Sim::new(p);
        sim.run(LIMIT_MS);
        sim.assert_sound(&format!("seed {seed}"));
        let go_sent = sim.index_of(handover(&sim.p)).is_some();
        match sim.final_src_outcome() {
            Some(Outcome::Escalated) => assert!(go_sent, "seed {seed}"),
            Some(Outcome::Committed) => committed += 1,
            _ => {}
        }
    }
    // Retransmission makes most runs survive a 25 % loss.
    assert!(committed > 200, "only {committed}/400 committed");
}

/// Drive a Source and a Destination by hand up to the handover, with Go
/// (and every retransmission of it) lost, until the source escalates.
fn escalated_pair() -> (migrate::Source, migrate::Destination, u64) {
    use migrate::*;
    let p = Params::small();
    let state = JobModel::new(&p).state();
    let mut s = Source::new(
        SourceConfig {
            compression_cores: 0.0,
            ..SourceConfig::default()
        },
        MIG,
        "job-a".into(),
        GENERATION,
        state.clone(),
        0,
    )
    .unwrap();
    let offer = match s.poll_action() {
        Some(SourceAction::Send(m)) => m,
        a => panic!("{a:?}"),
    };
    let mut d = Destination::accept(DestConfig::default(), 0, &offer, None, |_| false).unwrap();
    let now = 1;
    // Shuttle messages, answer the shells at once, lose every Go.
    loop {
        let mut moved = false;
        while let Some(a) = s.poll_action() {
            moved = true;
            match a {
                SourceAction::Send(m) if m.body == Body::Go => {}
                SourceAction::Send(m) => d.handle_message(now, m).unwrap(),
                SourceAction::Checkpoint { round } => s
                    .handle_event(
                        now,
                        SourceEvent::Checkpointed {
                            round,
                            state: state.clone(),
                        },
                    )
                    .unwrap(),
                SourceAction::PauseJob => s.handle_event(now, paused_event(&state, now)).unwrap(),
                SourceAction::ResumeJob => panic!("resumed"),
                _ => {}
            }
        }
        while let Some(a) = d.poll_action() {
            moved = true;
            match a {
                DestAction::Send(m) => s.handle_message(now, m).unwrap(),
                DestAction::Fetch { round, .. } => {
                    d.handle_event(now, DestEvent::Fetched { round }).unwrap()
                }
                DestAction::VerifyAndRestore { .. } => {
                    d.handle_event(now, DestEvent::Restored).unwrap()
                }
                DestAction::ResumeJob { .. } => panic!("started without Go"),
                _ => {}
            }
        }
        if !moved {
            break;
        }
    }
    assert_eq!(s.phase(), SourcePhase::HandedOver);
    assert_eq!(d.phase(), DestPhase::Ready);
    let mut now = now;
    let mut gos = 0;
    while s.phase() == SourcePhase::HandedOver {
        now = s.poll_timeout().unwrap();
        s.handle_timeout(now);
        while let Some(a) = s.poll_action() {
            match a {
                SourceAction::Send(m) => {
                    assert_eq!(m.body, Body::Go);
                    gos += 1;
                }
                SourceAction::ResumeJob | SourceAction::DropJob => panic!("{a:?} after Go"),
                _ => {}
            }
        }
    }
    assert!(gos >= 3, "Go retransmitted only {gos} times");
    assert_eq!(s.phase(), SourcePhase::Escalated);
    // Escalated: no timer left, crash recovery owns the job now.
    assert_eq!(s.poll_timeout(), None);
    (s, d, now)
}

/// An escalated source still resolves when an answer comes late: a GoAck
/// makes it drop the job, an Abort from the destination makes it resume.
#[test]
fn escalated_source_resolves_on_late_answers() {
    use migrate::*;
    // Late Go gets through: the destination starts and acks.
    let (mut s, mut d, now) = escalated_pair();
    d.handle_message(
        now,
        Message {
            migration: MIG,
            generation: GENERATION,
            body: Body::Go,
        },
    )
    .unwrap();
    let da: Vec<_> = std::iter::from_fn(|| d.poll_action()).collect();
    assert!(da.iter().any(
        |a| matches!(a, DestAction::ResumeJob { generation, .. } if *generation == GENERATION + 1)
    ));
    let ack = da
        .into_iter()
        .find_map(|a| match a {
            DestAction::Send(m) => Some(m),
            _ => None,
        })
        .unwrap();
    assert_eq!(ack.body, Body::GoAck { held_ms: 0 });
    s.handle_message(now, ack).unwrap();
    let sa: Vec<_> = std::iter::from_fn(|| s.poll_action()).collect();
    assert_eq!(
        sa,
        vec![
            SourceAction::DropJob,
            SourceAction::Finished(Outcome::Committed)
        ]
    );
    assert_eq!(s.phase(), SourcePhase::Committed);

    // The destination gives up waiting for Go instead: its Abort proves it
    // never started (Aborted is final there), so the source may resume.
    let (mut s, mut d, now) = escalated_pair();
    let now = now + DestConfig::default().idle_timeout_ms;
    d.handle_timeout(now);
    let da: Vec<_> = std::iter::from_fn(|| d.poll_action()).collect();
    assert!(da.contains(&DestAction::DiscardRestored), "{da:?}");
    let abort = da
        .into_iter()
        .find_map(|a| match a {
            DestAction::Send(m) => Some(m),
            _ => None,
        })
        .unwrap();
    // A Go arriving now is refused with another Abort, never started.
    d.handle_message(
        now,
        Message {
            migration: MIG,
            generation: GENERATION,
            body: Body::Go,
        },
    )
    .unwrap();
    let da: Vec<_> = std::iter::from_fn(|| d.poll_action()).collect();
    assert!(
        matches!(
            &da[..],
            [DestAction::Send(Message {
                body: Body::Abort { .. },
                ..
            })]
        ),
        "{da:?}"
    );
    s.handle_message(now, abort).unwrap();
    let sa: Vec<_> = std::iter::from_fn(|| s.poll_action()).collect();
    assert_eq!(
        sa,
        vec![
            SourceAction::ResumeJob,
            SourceAction::Finished(Outcome::Aborted(AbortReason::Timeout))
        ]
    );
}

/// A Source driven by hand to `Pausing` (PauseJob asked, not yet answered).
fn pausing_source() -> migrate::Source {
    use migrate::*;
    let p = Params::small();
    let state = JobModel::new(&p).state();
    let mut s = Source::new(
        SourceConfig {
            compression_cores: 0.0,
            ..SourceConfig::default()
        },
        MIG,
        "job-a".into(),
        GENERATION,
        state.clone(),
        0,
    )
    .unwrap();
    let m = |body| Message {
        migration: MIG,
        generation: GENERATION,
        body,
    };
    s.handle_message(
        1,
        m(Body::Have {
            have: vec![],
            lazy: true,
        }),
    )
    .unwrap();
    s.handle_message(50, m(Body::RoundAck { round: 1 }))
        .unwrap();
    // The job did not change: converged at once.
    s.handle_event(51, SourceEvent::Checkpointed { round: 1, state })
        .unwrap();
    let actions: Vec<_> = std::iter::from_fn(|| s.poll_action()).collect();
    assert_eq!(actions.last(), Some(&SourceAction::PauseJob));
    assert_eq!(s.phase(), SourcePhase::Pausing);
    s
}

/// An abort that lands while the pause is in progress resumes the job once
/// the pause completes, exactly once; a failed pause resumes nothing.
#[test]
fn abort_while_pausing_resumes_after_the_pause() {
    use migrate::*;
    let state = JobModel::new(&Params::small()).state();
    let paused = paused_event(&state, 1);

    let mut s = pausing_source();
    s.handle_message(
        60,
        Message {
            migration: MIG,
            generation: GENERATION,
            body: Body::Abort {
                reason: AbortReason::Cancelled,
            },
        },
    )
    .unwrap();
    let a: Vec<_> = std::iter::from_fn(|| s.poll_action()).collect();
    assert_eq!(
        a,
        vec![SourceAction::Finished(Outcome::Aborted(
            AbortReason::Cancelled
        ))]
    );
    s.handle_event(61, paused.clone()).unwrap();
    let a: Vec<_> = std::iter::from_fn(|| s.poll_action()).collect();
    assert_eq!(a, vec![SourceAction::ResumeJob]);
    // A second report changes nothing.
    assert!(s.handle_event(62, paused.clone()).is_err());
    assert_eq!(s.poll_action(), None);

    // Cancelled locally while pausing, and the pause then fails: the job
    // never stopped, nothing to resume.
    let mut s = pausing_source();
    s.handle_event(60, SourceEvent::Cancel).unwrap();
    let a: Vec<_> = std::iter::from_fn(|| s.poll_action()).collect();
    assert!(
        matches!(
            &a[..],
            [
                SourceAction::Send(Message {
                    body: Body::Abort {
                        reason: AbortReason::Cancelled
                    },
                    ..
                }),
                SourceAction::Finished(_)
            ]
        ),
        "{a:?}"
    );
    s.handle_event(61, SourceEvent::PauseFailed).unwrap();
    assert_eq!(s.poll_action(), None);
    assert_eq!(s.phase(), SourcePhase::Aborted);
}
