//! Who resumes a job whose owner died, decided by every node on its own. With
//! no coordinator, safety comes from two rules every node applies to the view
//! it has, and from the decision being a pure function of that view:
//!
//! 1. **Only a strict majority resumes.** A side of a partition must see more
//!    than half of the membership (the last agreed one, e.g. the configured
//!    swarm) alive before any of its nodes may resume a job. Two disjoint
//!    sides cannot both hold a strict majority, so two sides never resume the
//!    same job. An even split resumes nothing: safety over liveness.
//! 2. **Newest generation wins.** A resume starts generation
//!    `max(known) + 1` from the newest checkpoint any live holder reported; a
//!    copy that learns of a newer generation stops at once
//!    ([`on_generation`]), and an owner pauses as soon as the members it no
//!    longer sees could form a majority without it ([`owner_action`]). (An owner
//!    that just lacks a majority — the survivor of a two-node swarm — runs on:
//!    no other side can resume its jobs.)
//!
//! Timing: an owner counts only peers heard within `suspect_after_ms`
//! ([`crate::Detector::alive`]), a would-be resumer needs the owner declared
//! dead after `dead_after_ms` ([`crate::Detector::not_dead`]). An owner cut
//! off from the majority therefore pauses `dead_after_ms − suspect_after_ms`
//! before the majority may resume its job (give or take message delays and
//! clock rates, which that margin must cover).
//!
//! Every node of a side that has the same view reaches the same [`Decision`]
//! (ties go to the rendezvous ranking of [`crate::replicas::rank`]), so exactly
//! one node — the one the decision names — acts, and the others know who.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{CheckpointRef, NodeId};
use crate::replicas::rank;

/// What one side knows about one job whose owner may have died.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub job: String,
    /// The last agreed membership: the majority is counted against it.
    pub members: BTreeSet<NodeId>,
    /// Nodes this side has not declared dead (including the deciding node).
    pub live: BTreeSet<NodeId>,
    /// The node running the newest known generation, if known and still
    /// running it: a node that restarted (quicker than `dead_after_ms`) and
    /// no longer lists the job in its heartbeat is not its owner any more,
    /// so the shell passes `None` and the job is recovered like any other.
    pub owner: Option<NodeId>,
    /// The newest generation known to have run anywhere.
    pub generation: u64,
    /// The job's replica set ([`crate::replicas::replica_set`]). Each live
    /// one must have reported before a decision is made.
    pub replicas: Vec<NodeId>,
    /// What nodes reported holding for the job: the newest checkpoint they
    /// acknowledged, or `None` for nothing. Reports of nodes not in `live`
    /// are ignored (they cannot resume).
    pub holdings: BTreeMap<NodeId, Option<CheckpointRef>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// The owner is alive on this side: nothing to recover.
    OwnerAlive,
    /// This side sees `live` of `members` members: not a strict majority, so
    /// it never resumes.
    NoQuorum { live: usize, members: usize },
    /// Live replicas have not reported what they hold yet.
    Wait { missing: Vec<NodeId> },
    /// No live node holds a checkpoint of the job: only the owner's return
    /// can save it.
    NoCheckpoint,
    /// The generation counter is exhausted (only forged input gets here).
    Overflow,
    /// `node` resumes the job from `from` as `generation`.
    Resume {
        node: NodeId,
        from: CheckpointRef,
        generation: u64,
    },
}

/// Whether `live` holds a strict majority of `members` (members only count).
pub fn has_quorum<'a>(
    members: &BTreeSet<NodeId>,
    live: impl IntoIterator<Item = &'a NodeId>,
) -> bool {
    let seen: BTreeSet<&NodeId> = live.into_iter().filter(|n| members.contains(n)).collect();
    seen.len() * 2 > members.len()
}

/// The recovery decision for `view` (see the module doc).
pub fn decide(view: &View) -> Decision {
    if let Some(owner) = &view.owner {
        if view.live.contains(owner) {
            return Decision::OwnerAlive;
        }
    }
    if !has_quorum(&view.members, &view.live) {
        return Decision::NoQuorum {
            live: view.live.intersection(&view.members).count(),
            members: view.members.len(),
        };
    }
    let missing: Vec<NodeId> = view
        .replicas
        .iter()
        .filter(|r| view.live.contains(*r) && !view.holdings.contains_key(*r))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Decision::Wait { missing };
    }
    let held: Vec<(&NodeId, CheckpointRef)> = view
        .holdings
        .iter()
        .filter(|(n, _)| view.live.contains(*n))
        .filter_map(|(n, c)| c.map(|c| (n, c)))
        .collect();
    let Some(newest) = held.iter().map(|(_, c)| *c).max() else {
        return Decision::NoCheckpoint;
    };
    let holders = held.iter().filter(|(_, c)| *c == newest).map(|(n, _)| *n);
    let Some(node) = rank(&view.job, holders).into_iter().next() else {
        return Decision::NoCheckpoint;
    };
    match view.generation.max(newest.generation).checked_add(1) {
        Some(generation) => Decision::Resume {
            node,
            from: newest,
            generation,
        },
        None => Decision::Overflow,
    }
}

/// What a node running a job must do with its copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OwnerAction {
    Run,
    /// No strict majority in sight (or not every peer in sight has reported
    /// its generations yet): pause, keep the copy, decide again later.
    Pause,
    /// A newer generation of the job exists: stop and drop this copy now.
    Stop {
        newer: u64,
    },
}

/// The owner's rule, re-evaluated whenever its view changes. `alive`: the
/// peers heard within `suspect_after_ms` plus the owner itself;
/// `reported`: the newest generation of the job each peer reported (in its
/// heartbeat) since the owner last lost sight of it.
///
/// After a heal the owner waits for a report of every member in sight before
/// it runs again, so it learns of a resume by the majority from the resumer
/// itself or from any node that heard of it. A resume that nobody in sight
/// has heard of yet can still let the old copy run briefly; it is a lower
/// generation and stops on the first report, and the output offsets keep
/// the user from seeing anything twice.
pub fn owner_action<'a>(
    members: &BTreeSet<NodeId>,
    alive: impl IntoIterator<Item = &'a NodeId>,
    generation: u64,
    reported: &BTreeMap<NodeId, u64>,
) -> OwnerAction {
    if let Some(newer) = reported.values().copied().filter(|g| *g > generation).max() {
        return OwnerAction::Stop { newer };
    }
    let alive: BTreeSet<&NodeId> = alive.into_iter().filter(|n| members.contains(n)).collect();
    // Pause only if the members out of sight could be a strict majority, i.e. could
    // resume the job: an owner that merely lacks a majority itself (one node of two, two
    // of four) keeps running, because no other side can resume it either.
    let out_of_sight = members.len().saturating_sub(alive.len());
    if out_of_sight * 2 > members.len() {
        return OwnerAction::Pause;
    }
    // The owner itself never reports to itself: one unreported member is fine.
    let unreported = alive.iter().filter(|n| !reported.contains_key(**n)).count();
    if unreported > 1 {
        return OwnerAction::Pause;
    }
    OwnerAction::Run
}

/// Why a copy must stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fence {
    Keep,
    /// Another node runs a newer generation.
    StopNewer,
    /// Another node runs the *same* generation — an invariant broken
    /// somewhere; the copy ranked lower for the job stops (both sides agree
    /// which), and the shell reports it loudly.
    StopDuplicate,
}

/// The fencing rule: `me`, running `job` at `mine`, learns that `other` runs
/// (or ran) it at `theirs`.
pub fn on_generation(job: &str, me: &NodeId, mine: u64, other: &NodeId, theirs: u64) -> Fence {
    if theirs > mine {
        Fence::StopNewer
    } else if theirs == mine && other != me && rank(job, [me, other]).first() != Some(me) {
        Fence::StopDuplicate
    } else {
        Fence::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::CheckpointId;
    use crate::replicas::replica_set;
    use crate::rng::SplitMix64;

    fn n(s: &str) -> NodeId {
        NodeId::from(s)
    }

    fn set(v: &[&str]) -> BTreeSet<NodeId> {
        v.iter().map(|s| n(s)).collect()
    }

    fn ck(generation: u64, seq: u64) -> CheckpointRef {
        CheckpointRef {
            generation,
            seq,
            id: CheckpointId([(generation * 16 + seq) as u8; 32]),
        }
    }

    /// 5 members, owner n1 dead, replicas n2 and n3.
    fn base() -> View {
        View {
            job: "tracker".into(),
            members: set(&["n1", "n2", "n3", "n4", "n5"]),
            live: set(&["n2", "n3", "n4"]),
            owner: Some(n("n1")),
            generation: 3,
            replicas: vec![n("n2"), n("n3")],
            holdings: [(n("n2"), Some(ck(3, 4))), (n("n3"), Some(ck(3, 6)))]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn newest_checkpoint_resumes_with_next_generation() {
        assert_eq!(
            decide(&base()),
            Decision::Resume {
                node: n("n3"),
                from: ck(3, 6),
                generation: 4
            }
        );
        // The generation is above everything known, not just the checkpoint's.
        let mut v = base();
        v.generation = 7;
        assert!(matches!(decide(&v), Decision::Resume { generation: 8, .. }));
        v.holdings.insert(n("n4"), Some(ck(9, 0)));
        assert!(
            matches!(decide(&v), Decision::Resume { generation: 10, ref node, .. } if *node == n("n4"))
        );
    }

    #[test]
    fn minorities_even_splits_and_live_owners_never_resume() {
        let mut v = base();
        v.owner = Some(n("n2"));
        assert_eq!(decide(&v), Decision::OwnerAlive);
        let mut v = base();
        v.live = set(&["n2", "n3"]);
        assert_eq!(
            decide(&v),
            Decision::NoQuorum {
                live: 2,
                members: 5
            }
        );
        // Live non-members do not make a majority.
        v.live = set(&["n2", "n3", "x", "y"]);
        assert!(matches!(decide(&v), Decision::NoQuorum { .. }));
        let mut v = base();
        v.members = set(&["n1", "n2", "n3", "n4", "n5", "n6"]);
        assert!(matches!(
            decide(&v),
            Decision::NoQuorum {
                live: 3,
                members: 6
            }
        ));
    }

    #[test]
    fn waits_for_live_replicas_ignores_dead_ones_and_stale_reports() {
        let mut v = base();
        v.holdings.remove(&n("n3"));
        assert_eq!(
            decide(&v),
            Decision::Wait {
                missing: vec![n("n3")]
            }
        );
        v.live = set(&["n2", "n4", "n5"]);
        // n3 is dead now: no waiting for it, and a report from it is ignored.
        v.holdings.insert(n("n3"), Some(ck(3, 9)));
        assert!(matches!(decide(&v), Decision::Resume { from, .. } if from == ck(3, 4)));
        v.holdings.clear();
        v.holdings.insert(n("n2"), None);
        assert_eq!(decide(&v), Decision::NoCheckpoint);
        v.generation = u64::MAX;
        v.holdings.insert(n("n2"), Some(ck(1, 1)));
        assert_eq!(decide(&v), Decision::Overflow);
    }

    #[test]
    fn ties_go_to_the_rendezvous_ranking() {
        let mut v = base();
        v.holdings.insert(n("n2"), Some(ck(3, 6)));
        v.holdings.insert(n("n4"), Some(ck(3, 6)));
        let first = rank("tracker", [&n("n2"), &n("n3"), &n("n4")])[0].clone();
        assert!(matches!(decide(&v), Decision::Resume { ref node, .. } if *node == first));
    }

    #[test]
    fn owner_pauses_without_majority_and_stops_on_newer_generation() {
        let m = set(&["a", "b", "c", "d", "e"]);
        let all: BTreeMap<NodeId, u64> = m.iter().map(|x| (x.clone(), 2)).collect();
        let alive = set(&["a", "b", "c"]);
        assert_eq!(owner_action(&m, &alive, 2, &all), OwnerAction::Run);
        assert_eq!(
            owner_action(&m, &set(&["a", "b"]), 2, &all),
            OwnerAction::Pause
        );
        let mut r = all.clone();
        r.insert(n("e"), 3);
        assert_eq!(
            owner_action(&m, &alive, 2, &r),
            OwnerAction::Stop { newer: 3 }
        );
        // Back from isolation: wait for the reports of those in sight.
        let few: BTreeMap<NodeId, u64> = [(n("b"), 2)].into_iter().collect();
        assert_eq!(owner_action(&m, &alive, 2, &few), OwnerAction::Pause);
    }

    #[test]
    fn owner_without_a_majority_runs_on_when_nobody_else_can_resume() {
        // Two nodes, one gone: the survivor keeps running (the other side, one node of
        // two, can never resume).
        let m = set(&["a", "b"]);
        let none = BTreeMap::new();
        assert_eq!(owner_action(&m, &set(&["a"]), 0, &none), OwnerAction::Run);
        // Four nodes split two and two: neither side can resume, both owners run on.
        let m4 = set(&["a", "b", "c", "d"]);
        let b: BTreeMap<NodeId, u64> = [(n("b"), 1)].into_iter().collect();
        assert_eq!(
            owner_action(&m4, &set(&["a", "b"]), 1, &b),
            OwnerAction::Run
        );
        // Three nodes, alone: the other two can resume: pause.
        let m3 = set(&["a", "b", "c"]);
        assert_eq!(
            owner_action(&m3, &set(&["a"]), 1, &none),
            OwnerAction::Pause
        );
    }

    #[test]
    fn fencing_is_symmetric() {
        let (a, b) = (n("a"), n("b"));
        assert_eq!(on_generation("j", &a, 2, &b, 3), Fence::StopNewer);
        assert_eq!(on_generation("j", &a, 3, &b, 2), Fence::Keep);
        assert_eq!(on_generation("j", &a, 3, &a, 3), Fence::Keep);
        for job in ["j", "k", "l", "m"] {
            let fa = on_generation(job, &a, 5, &b, 5);
            let fb = on_generation(job, &b, 5, &a, 5);
            assert!(
                (fa == Fence::Keep) != (fb == Fence::Keep),
                "{job}: exactly one keeps ({fa:?}, {fb:?})"
            );
        }
    }

    /// A random world: members, an owner, who holds what, a partition into
    /// sides (plus crashed nodes), and the view each side has.
    struct World {
        members: BTreeSet<NodeId>,
        owner: Option<NodeId>,
        generation: u64,
        replicas: Vec<NodeId>,
        truth: BTreeMap<NodeId, Option<CheckpointRef>>,
        sides: Vec<BTreeSet<NodeId>>,
        job: String,
    }

    fn world(r: &mut SplitMix64, i: usize) -> World {
        let size = r.between(1, 9) as usize;
        let members: BTreeSet<NodeId> = (1..=size).map(|k| NodeId(format!("n{k}"))).collect();
        let list: Vec<NodeId> = members.iter().cloned().collect();
        let job = format!("job-{i}");
        let owner = (r.below(10) > 0).then(|| list[r.below(size as u64) as usize].clone());
        let generation = r.below(5);
        let replicas = replica_set(&job, &members, owner.as_ref(), 2);
        let truth = members
            .iter()
            .map(|m| {
                let p = if Some(m) == owner.as_ref() {
                    9
                } else if replicas.contains(m) {
                    8
                } else {
                    2
                };
                let c = (r.below(10) < p).then(|| ck(r.below(generation + 1), r.below(6)));
                (m.clone(), c)
            })
            .collect();
        let groups = r.between(1, 3) as usize;
        let mut sides = vec![BTreeSet::new(); groups];
        for m in &members {
            if r.below(5) > 0 {
                sides[r.below(groups as u64) as usize].insert(m.clone());
            } // else crashed
        }
        World {
            members,
            owner,
            generation,
            replicas,
            truth,
            sides,
            job,
        }
    }

    fn view_of(w: &World, side: &BTreeSet<NodeId>, r: &mut SplitMix64) -> View {
        let mut holdings = BTreeMap::new();
        for m in &w.members {
            // Live nodes report (one in ten not yet); dead ones' old reports linger.
            if (side.contains(m) && r.below(10) > 0) || r.below(4) == 0 {
                holdings.insert(m.clone(), w.truth[m]);
            }
        }
        View {
            job: w.job.clone(),
            members: w.members.clone(),
            live: side.clone(),
            owner: w.owner.clone(),
            generation: w.generation,
            replicas: w.replicas.clone(),
            holdings,
        }
    }

    #[test]
    fn property_at_most_one_side_resumes_and_only_from_the_newest() {
        let mut r = SplitMix64::new(0x5eed);
        let mut resumes = 0;
        for i in 0..20_000 {
            let w = world(&mut r, i);
            let mut resuming_sides = 0;
            for side in &w.sides {
                let v = view_of(&w, side, &mut r);
                let d = decide(&v);
                // Determinism: the same view, built in another order, decides the same.
                let mut v2 = v.clone();
                v2.replicas.reverse();
                let rebuilt: BTreeMap<_, _> = v.holdings.clone().into_iter().rev().collect();
                v2.holdings = rebuilt;
                if v.replicas
                    .iter()
                    .all(|x| !v.live.contains(x) || v.holdings.contains_key(x))
                {
                    assert_eq!(decide(&v2), d);
                }
                let Decision::Resume {
                    node,
                    from,
                    generation,
                } = &d
                else {
                    // Liveness: a majority side with everything reported
                    // and a checkpoint in sight must resume.
                    let owner_here = w.owner.as_ref().is_some_and(|o| side.contains(o));
                    let all_in = w
                        .replicas
                        .iter()
                        .all(|x| !side.contains(x) || v.holdings.contains_key(x));
                    let any = side
                        .iter()
                        .any(|m| v.holdings.get(m).copied().flatten().is_some());
                    if has_quorum(&w.members, side) && !owner_here && all_in && any {
                        panic!("world {i}: majority side stuck with {d:?}");
                    }
                    continue;
                };
                resumes += 1;
                resuming_sides += 1;
                assert!(
                    side.len() * 2 > w.members.len(),
                    "world {i}: minority resumed"
                );
                assert!(side.contains(node), "world {i}: resumer not live");
                assert!(w.owner.as_ref().is_none_or(|o| !side.contains(o)));
                assert_eq!(
                    w.truth[node],
                    Some(*from),
                    "world {i}: resumer lacks the checkpoint"
                );
                let newest = side
                    .iter()
                    .filter_map(|m| v.holdings.get(m).copied().flatten())
                    .max();
                assert_eq!(newest, Some(*from), "world {i}: not the newest in sight");
                assert!(*generation > w.generation && *generation > from.generation);
                // The owner, alive on another side, must not keep running.
                if let Some(o) = &w.owner {
                    if let Some(other) = w.sides.iter().find(|s| s.contains(o)) {
                        let reports = other.iter().map(|m| (m.clone(), w.generation)).collect();
                        assert_ne!(
                            owner_action(&w.members, other, w.generation, &reports),
                            OwnerAction::Run,
                            "world {i}: owner runs on while the majority resumes"
                        );
                    }
                }
            }
            assert!(
                resuming_sides <= 1,
                "world {i}: {resuming_sides} sides resumed"
            );
        }
        assert!(
            resumes > 2000,
            "the worlds must exercise resumes: {resumes}"
        );
    }
}
