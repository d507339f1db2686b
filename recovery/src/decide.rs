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
//! Timing: both an owner and a would-be resumer count towards a majority only
//! the peers they heard within `suspect_after_ms` ([`crate::Detector::alive`]:
//! [`View::reachable`]); a would-be resumer also needs the owner declared dead
//! after `dead_after_ms`. An owner cut off from the majority therefore pauses
//! `dead_after_ms − suspect_after_ms` before the majority may resume its job
//! (give or take message delays and clock rates, which that margin must cover).
//!
//! Why not count every peer not yet declared dead ([`crate::Detector::not_dead`])?
//! Because that set is stale on a cut-off side: the nodes across the cut are
//! declared dead one by one, each `dead_after_ms` after *its* last message, so
//! for up to a heartbeat period after the first of them (say the job's owner)
//! is declared dead the others still count as "not dead", and a minority that
//! counted them saw a majority and resumed the job (seen in a level-3 chaos run:
//! two generations of a job overlapped after the heal). Two sides' sets of peers
//! heard within `suspect_after_ms` are disjoint as soon as the cut is that old,
//! and a dead owner means the cut is at least `dead_after_ms` old.
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
    /// Nodes this side has not declared dead (including the deciding node):
    /// their holdings count, they may be named to resume.
    pub live: BTreeSet<NodeId>,
    /// Nodes heard within `suspect_after_ms` (and the deciding node): the only
    /// ones counted towards the majority (see the module doc for why not
    /// `live`). The shell keeps it a subset of `live`.
    pub reachable: BTreeSet<NodeId>,
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
    /// Nodes that announce a restored copy of the job they have not run yet (a
    /// recovery's claim, a move's destination), with its generation. Reports of
    /// nodes not in `live` are ignored.
    #[serde(default)]
    pub claims: BTreeMap<NodeId, u64>,
    /// The deciding node regained a strict majority in sight only recently
    /// (`suspect_after_ms`): it was cut off, paused or restarted, and the peers it
    /// declared dead meanwhile — holders among them — are heard again one
    /// heartbeat at a time. It must not decide on that partial view.
    #[serde(default)]
    pub unsettled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// The owner is alive on this side: nothing to recover.
    OwnerAlive,
    /// This side reaches `live` of `members` members: not a strict majority,
    /// so it never resumes.
    NoQuorum { live: usize, members: usize },
    /// Live replicas have not reported what they hold yet.
    Wait { missing: Vec<NodeId> },
    /// A live node already claims the job at a generation newer than the dead
    /// owner's: it resumes it (or withdraws, and the job is decided again).
    Claimed { node: NodeId, generation: u64 },
    /// This node's view is still filling after it regained a majority.
    Unsettled,
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
    // Only nodes both reachable and not dead count (the shell's sets should nest,
    // this keeps a forged or racy view from counting a dead node).
    let counted: BTreeSet<&NodeId> = view.reachable.intersection(&view.live).collect();
    if !has_quorum(&view.members, counted.iter().copied()) {
        return Decision::NoQuorum {
            live: counted
                .iter()
                .filter(|n| view.members.contains(**n))
                .count(),
            members: view.members.len(),
        };
    }
    // A claim running late (its heartbeat saying "running" not heard yet) must not
    // start a second recovery of the same generation: a holder that had caught up
    // with the resumer's checkpoint meanwhile and outranked it resumed the job too
    // (level 1's bench: one generation on two nodes).
    if let Some((node, generation)) = view
        .claims
        .iter()
        .filter(|(n, g)| view.live.contains(*n) && **g > view.generation)
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
    {
        return Decision::Claimed {
            node: node.clone(),
            generation: *generation,
        };
    }
    // A node back from a cut (or a restart) has declared the others dead meanwhile;
    // deciding on the first few it hears again passed over a newer checkpoint held by
    // one not heard yet (level 1's bench: "no acknowledged checkpoint lost" failed).
    if view.unsettled {
        return Decision::Unsettled;
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
    /// A newer generation of the job exists, or another node runs this one: stop
    /// and drop this copy now (`newer` is that generation).
    Stop {
        newer: u64,
    },
}

/// What a paused owner knows when it asks whether to run its copy again.
#[derive(Clone, Debug)]
pub struct OwnerSight<'a> {
    pub members: &'a BTreeSet<NodeId>,
    /// The peers heard within `suspect_after_ms` plus the owner itself.
    pub alive: &'a BTreeSet<NodeId>,
    /// The generation of the owner's copy.
    pub generation: u64,
    /// The newest generation of the job each peer reported (in its heartbeat,
    /// running or paused; 0 for none) since the owner paused it.
    pub reported: &'a BTreeMap<NodeId, u64>,
    /// Peers in sight that announce a restored copy of the job they have not run
    /// yet (a recovery's claim), with its generation.
    pub claimed: &'a BTreeMap<NodeId, u64>,
    /// Peers in sight whose heartbeat says they run the job now (not paused), with
    /// the generation (a subset of `reported`).
    pub running: &'a BTreeMap<NodeId, u64>,
    /// How long the members out of sight have been too few to resume the job
    /// without the owner (0 while they could).
    pub settled_ms: u64,
    /// How long to wait after that for members still out of sight before
    /// running (the shell passes `suspect_after_ms`).
    pub settle_ms: u64,
}

/// The owner's rule, re-evaluated whenever its view changes.
///
/// After a heal the owner waits for a report of every member in sight before
/// it runs again, so it learns of a resume by the majority from the resumer
/// itself. Members come back in sight one heartbeat at a time, though: the
/// first one heard after a heal already gives the owner a majority, while the
/// resumer may be the next one. So while some member is still out of sight the
/// owner also waits `settle_ms` (a node reachable again is heard well within
/// it). A resume that nobody reachable has reported by then can still let the
/// old copy run briefly; it is a lower generation and stops on the first
/// report, and the output offsets keep the user from seeing anything twice.
pub fn owner_action(sight: &OwnerSight<'_>) -> OwnerAction {
    let OwnerSight {
        members,
        alive,
        generation,
        reported,
        claimed,
        running,
        settled_ms,
        settle_ms,
    } = *sight;
    if let Some(newer) = reported.values().copied().filter(|g| *g > generation).max() {
        return OwnerAction::Stop { newer };
    }
    // Another node runs this very generation: the majority recovered the job while
    // this copy was cut off, and its recovery took the same number this copy's had
    // (generation numbers are the newest known + 1, not unique per history). Running
    // here too would put one generation on two nodes (level 1's bench, seed 5:
    // autopilot-2 generation 11 on n6 and n7 for 260 ms after a heal): the running
    // copy wins. (Two paused copies of one generation are left to the fencing rank.)
    if running.values().any(|g| *g == generation) {
        return OwnerAction::Stop { newer: generation };
    }
    // A newer generation only claimed may never run (its claimer can die first):
    // dropping this copy for it lost the job (level 1's bench, bigstate-19). Wait
    // until it runs (then stop) or its claimer is gone (then decide again).
    if claimed
        .iter()
        .any(|(n, g)| *g > generation && alive.contains(n))
    {
        return OwnerAction::Pause;
    }
    let alive: BTreeSet<&NodeId> = alive.iter().filter(|n| members.contains(n)).collect();
    // Pause only if the members out of sight could be a strict majority, i.e. could
    // resume the job: an owner that merely lacks a majority itself (one node of two, two
    // of four) keeps running, because no other side can resume it either.
    let out_of_sight = members.len().saturating_sub(alive.len());
    if out_of_sight * 2 > members.len() {
        return OwnerAction::Pause;
    }
    // The owner itself never reports to itself: one unreported member is fine.
    let unreported = alive
        .iter()
        .filter(|n| !reported.contains_key(**n) && !claimed.contains_key(**n))
        .count();
    if unreported > 1 {
        return OwnerAction::Pause;
    }
    if out_of_sight > 0 && settled_ms < settle_ms {
        return OwnerAction::Pause;
    }
    OwnerAction::Run
}

/// What the source of a move does with its paused copy after the handover went
/// unanswered (Go sent, no GoAck: the move "escalated"). It cannot tell "the
/// destination never got Go" from "it got Go and runs", so it keeps the copy paused
/// and never resumes it on a guess; but nobody else recovers the job while the
/// source lists it (to the others it is alive and owns it). A destination that died
/// or restarted after Go left the job paused there for good (level 1's bench: lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Handover {
    /// The destination may still answer (or runs the job): keep the copy paused.
    Wait,
    /// The destination is gone without the job: give the copy up (publishing the
    /// destination's generation as abandoned), so the majority recovers the job from
    /// its newest replicated checkpoint with a generation above anything the
    /// destination may have run.
    GiveUp,
}

/// The rule for an escalated move: `dest_dead` when the source declared the
/// destination dead; `dest_lists_job` is what the destination's newest heartbeat
/// heard *after* the escalation says (`None`: not heard since). A destination that
/// got Go lists the job (restored or running) until it ends or moves it; one that
/// lists nothing gave up (its Abort still on the way) or restarted (forgetting it).
pub fn after_escalation(dest_dead: bool, dest_lists_job: Option<bool>) -> Handover {
    if dest_dead || dest_lists_job == Some(false) {
        Handover::GiveUp
    } else {
        Handover::Wait
    }
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
            reachable: set(&["n2", "n3", "n4"]),
            owner: Some(n("n1")),
            generation: 3,
            replicas: vec![n("n2"), n("n3")],
            holdings: [(n("n2"), Some(ck(3, 4))), (n("n3"), Some(ck(3, 6)))]
                .into_iter()
                .collect(),
            ..View::default()
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
        v.reachable = v.live.clone();
        assert_eq!(
            decide(&v),
            Decision::NoQuorum {
                live: 2,
                members: 5
            }
        );
        // Live non-members do not make a majority.
        v.live = set(&["n2", "n3", "x", "y"]);
        v.reachable = v.live.clone();
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
        v.reachable = v.live.clone();
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

    /// The level-3 split brain: n1 is cut off from {n2, n3}; n3 runs the job and n1
    /// holds its newest replica. n1 last heard n3 at 9.0 s and n2 at 9.4 s (n2's
    /// heartbeat falls later in the period), so when n1 declares n3 dead, n2 is only
    /// suspected: "not dead" still counts n2, and a majority counted on it let n1
    /// resume the job while n3 ran on.
    #[test]
    fn a_cut_off_node_counts_only_the_peers_it_still_hears() {
        let mut d = crate::Detector::new(&crate::RecoveryConfig::default()).unwrap();
        d.watch(n("n2"), 0);
        d.watch(n("n3"), 0);
        for t in (0..=9000).step_by(500) {
            d.heard(&n("n3"), t);
            d.heard(&n("n2"), t + 400);
        }
        let mut now = 9400;
        while d.state(&n("n3")) != Some(crate::Liveness::Dead) {
            now += 100;
            d.tick(now);
        }
        assert_eq!(now, 13_000);
        assert_eq!(d.state(&n("n2")), Some(crate::Liveness::Suspect));
        let me = n("n1");
        let members = set(&["n1", "n2", "n3"]);
        let job = "autopilot-0";
        let view = View {
            job: job.into(),
            members: members.clone(),
            live: d.not_dead().cloned().chain([me.clone()]).collect(),
            reachable: d.alive().cloned().chain([me.clone()]).collect(),
            owner: Some(n("n3")),
            generation: 1,
            replicas: replica_set(job, &members, Some(&n("n3")), 2),
            holdings: [(me.clone(), Some(ck(1, 5))), (n("n2"), Some(ck(1, 4)))]
                .into_iter()
                .collect(),
            ..View::default()
        };
        assert_eq!(view.live, set(&["n1", "n2"]), "the stale view n1 has");
        assert_eq!(
            decide(&view),
            Decision::NoQuorum {
                live: 1,
                members: 3
            }
        );
        // The majority side, whose owner n1 is cut off, still resumes.
        let majority = View {
            live: set(&["n2", "n3"]),
            reachable: set(&["n2", "n3"]),
            owner: Some(me.clone()),
            replicas: replica_set(job, &members, Some(&me), 2),
            holdings: [(n("n2"), Some(ck(1, 4))), (n("n3"), Some(ck(1, 3)))]
                .into_iter()
                .collect(),
            ..view
        };
        assert_eq!(
            decide(&majority),
            Decision::Resume {
                node: n("n2"),
                from: ck(1, 4),
                generation: 2
            }
        );
    }

    /// Level 1's bench (autopilot-5): n2 resumed generation 2 from g1#13 while n8
    /// still held g1#12; n8 then received g1#13 too, outranked n2 among its holders,
    /// and — not having heard n2 run yet, only claim — resumed generation 2 as well.
    #[test]
    fn a_live_claim_of_a_newer_generation_is_not_recovered_twice() {
        let mut v = base();
        v.claims.insert(n("n2"), 4);
        assert_eq!(
            decide(&v),
            Decision::Claimed {
                node: n("n2"),
                generation: 4
            }
        );
        // A claim of a dead node, or of no newer generation, does not hold it up.
        v.claims.insert(n("n2"), 3);
        v.claims.insert(n("n5"), 4);
        assert!(matches!(decide(&v), Decision::Resume { generation: 4, .. }));
    }

    /// Level 1's bench (autopilot-6): n3 was cut off while n1 ran the job with copies
    /// on n3 (up to g2#4) and n7 (g2#5). 10 ms after the heal n3 had heard a majority
    /// again but not n7 yet (still dead to it) and resumed from g2#4.
    #[test]
    fn a_node_back_from_a_cut_waits_for_its_view_to_fill() {
        let members = set(&["n1", "n2", "n3", "n4", "n5", "n6", "n7"]);
        let heard_first = set(&["n2", "n3", "n4", "n5"]);
        let early = View {
            job: "autopilot-6".into(),
            members: members.clone(),
            live: heard_first.clone(),
            reachable: heard_first,
            owner: None,
            generation: 3,
            replicas: vec![n("n3"), n("n7")],
            holdings: [(n("n3"), Some(ck(2, 4)))].into_iter().collect(),
            claims: BTreeMap::new(),
            unsettled: true,
        };
        assert_eq!(decide(&early), Decision::Unsettled);
        let mut later = early.clone();
        later.unsettled = false;
        later.live.insert(n("n7"));
        later.reachable.insert(n("n7"));
        later.holdings.insert(n("n7"), Some(ck(2, 5)));
        assert_eq!(
            decide(&later),
            Decision::Resume {
                node: n("n7"),
                from: ck(2, 5),
                generation: 4
            }
        );
    }

    #[test]
    fn ties_go_to_the_rendezvous_ranking() {
        let mut v = base();
        v.holdings.insert(n("n2"), Some(ck(3, 6)));
        v.holdings.insert(n("n4"), Some(ck(3, 6)));
        let first = rank("tracker", [&n("n2"), &n("n3"), &n("n4")])[0].clone();
        assert!(matches!(decide(&v), Decision::Resume { ref node, .. } if *node == first));
    }

    /// `owner_action` for a sight settled long ago.
    fn act(
        members: &BTreeSet<NodeId>,
        alive: &BTreeSet<NodeId>,
        generation: u64,
        reported: &BTreeMap<NodeId, u64>,
    ) -> OwnerAction {
        owner_action(&OwnerSight {
            members,
            alive,
            generation,
            reported,
            claimed: &BTreeMap::new(),
            running: &BTreeMap::new(),
            settled_ms: 10_000,
            settle_ms: 1500,
        })
    }

    #[test]
    fn owner_pauses_without_majority_and_stops_on_newer_generation() {
        let m = set(&["a", "b", "c", "d", "e"]);
        let all: BTreeMap<NodeId, u64> = m.iter().map(|x| (x.clone(), 2)).collect();
        let alive = set(&["a", "b", "c"]);
        assert_eq!(act(&m, &alive, 2, &all), OwnerAction::Run);
        assert_eq!(act(&m, &set(&["a", "b"]), 2, &all), OwnerAction::Pause);
        let mut r = all.clone();
        r.insert(n("e"), 3);
        assert_eq!(act(&m, &alive, 2, &r), OwnerAction::Stop { newer: 3 });
        // Back from isolation: wait for the reports of those in sight.
        let few: BTreeMap<NodeId, u64> = [(n("b"), 2)].into_iter().collect();
        assert_eq!(act(&m, &alive, 2, &few), OwnerAction::Pause);
    }

    /// The heal of the level-3 run: n1 was cut off from {n2, n3}, paused its job at
    /// generation 1, and n3 resumed it as generation 2. After the heal n1 hears n2
    /// first (n2 does not run the job): n1 already has a majority in sight and every
    /// member in sight reported, but n3 — the resumer — has not been heard yet.
    #[test]
    fn after_a_heal_the_owner_waits_for_the_members_still_out_of_sight() {
        let m = set(&["n1", "n2", "n3"]);
        let alive = set(&["n1", "n2"]);
        let n2_only: BTreeMap<NodeId, u64> = [(n("n2"), 0)].into_iter().collect();
        let none = BTreeMap::new();
        let sight = |settled_ms, reported| OwnerSight {
            members: &m,
            alive: &alive,
            generation: 1,
            reported,
            claimed: &none,
            running: &none,
            settled_ms,
            settle_ms: 1500,
        };
        assert_eq!(owner_action(&sight(200, &n2_only)), OwnerAction::Pause);
        // n3's heartbeat (its claimed or running generation 2) arrives meanwhile.
        let both: BTreeMap<NodeId, u64> = [(n("n2"), 0), (n("n3"), 2)].into_iter().collect();
        assert_eq!(
            owner_action(&OwnerSight {
                alive: &m,
                ..sight(600, &both)
            }),
            OwnerAction::Stop { newer: 2 }
        );
        // Nobody resumed and n3 stays silent: the owner runs once the wait is over,
        // and at once when every member reported.
        assert_eq!(owner_action(&sight(1500, &n2_only)), OwnerAction::Run);
        let all_old: BTreeMap<NodeId, u64> = [(n("n2"), 0), (n("n3"), 1)].into_iter().collect();
        assert_eq!(
            owner_action(&OwnerSight {
                alive: &m,
                ..sight(0, &all_old)
            }),
            OwnerAction::Run
        );
    }

    /// Level 1's bench (bigstate-19): n3, cut off, paused its copy (generation 3);
    /// n7 restored generation 4 to recover it but was killed before running it. n3,
    /// back, had dropped its copy on seeing the claim: nobody held the job any more.
    #[test]
    fn a_claimed_generation_pauses_the_owner_only_a_running_one_stops_it() {
        let m = set(&["n3", "n7", "n8"]);
        let alive = m.clone();
        let reported: BTreeMap<NodeId, u64> = [(n("n7"), 0), (n("n8"), 0)].into_iter().collect();
        let claimed: BTreeMap<NodeId, u64> = [(n("n7"), 4)].into_iter().collect();
        let none = BTreeMap::new();
        let sight = |alive, reported, claimed| OwnerSight {
            members: &m,
            alive,
            generation: 3,
            reported,
            claimed,
            running: &none,
            settled_ms: 10_000,
            settle_ms: 1500,
        };
        assert_eq!(
            owner_action(&sight(&alive, &reported, &claimed)),
            OwnerAction::Pause
        );
        // The claim runs: stop.
        let running: BTreeMap<NodeId, u64> = [(n("n7"), 4), (n("n8"), 0)].into_iter().collect();
        assert_eq!(
            owner_action(&sight(&alive, &running, &claimed)),
            OwnerAction::Stop { newer: 4 }
        );
        // The claimer is gone (out of sight): the owner decides without it.
        let without_n7 = set(&["n3", "n8"]);
        let fewer = BTreeMap::new();
        assert_eq!(
            owner_action(&sight(&without_n7, &reported, &fewer)),
            OwnerAction::Run
        );
        assert_ne!(
            owner_action(&sight(&without_n7, &reported, &claimed)),
            OwnerAction::Stop { newer: 4 }
        );
    }

    /// Level 1's bench, seed 5: n6 resumed autopilot-2 as generation 11 and was cut
    /// off at once (paused it); the majority, which never heard of n6's generation 11,
    /// resumed the job as generation 11 too on n7. After the heal n6 saw nothing newer
    /// than its own 11 and ran it again: generation 11 on two nodes for 260 ms.
    #[test]
    fn a_paused_owner_yields_to_its_own_generation_running_elsewhere() {
        let m = set(&["n6", "n7", "n8"]);
        let reported: BTreeMap<NodeId, u64> = [(n("n7"), 11), (n("n8"), 0)].into_iter().collect();
        let claimed = BTreeMap::new();
        let nobody = BTreeMap::new();
        let n7_runs: BTreeMap<NodeId, u64> = [(n("n7"), 11)].into_iter().collect();
        let stale: BTreeMap<NodeId, u64> = [(n("n7"), 10)].into_iter().collect();
        let sight = |running| OwnerSight {
            members: &m,
            alive: &m,
            generation: 11,
            reported: &reported,
            claimed: &claimed,
            running,
            settled_ms: 10_000,
            settle_ms: 1500,
        };
        assert_eq!(
            owner_action(&sight(&n7_runs)),
            OwnerAction::Stop { newer: 11 }
        );
        // n7's copy is paused too (both were cut off): not this rule's call, the
        // fencing rank decides once they run.
        assert_eq!(owner_action(&sight(&nobody)), OwnerAction::Run);
        // An older generation running elsewhere (a stale copy) does not stop it.
        assert_eq!(owner_action(&sight(&stale)), OwnerAction::Run);
    }

    #[test]
    fn owner_without_a_majority_runs_on_when_nobody_else_can_resume() {
        // Two nodes, one gone: the survivor keeps running (the other side, one node of
        // two, can never resume).
        let m = set(&["a", "b"]);
        let none = BTreeMap::new();
        assert_eq!(act(&m, &set(&["a"]), 0, &none), OwnerAction::Run);
        // Four nodes split two and two: neither side can resume, both owners run on.
        let m4 = set(&["a", "b", "c", "d"]);
        let b: BTreeMap<NodeId, u64> = [(n("b"), 1)].into_iter().collect();
        assert_eq!(act(&m4, &set(&["a", "b"]), 1, &b), OwnerAction::Run);
        // Three nodes, alone: the other two can resume: pause.
        let m3 = set(&["a", "b", "c"]);
        assert_eq!(act(&m3, &set(&["a"]), 1, &none), OwnerAction::Pause);
    }

    /// Level 1's bench: a move n3 -> n4 escalated (n4 killed after Go), and n3 kept
    /// the job paused while every other node saw n3 alive listing it: nobody ever
    /// recovered it.
    #[test]
    fn an_escalated_source_gives_up_only_when_the_destination_is_gone_without_the_job() {
        assert_eq!(after_escalation(false, None), Handover::Wait);
        assert_eq!(after_escalation(false, Some(true)), Handover::Wait);
        assert_eq!(after_escalation(true, None), Handover::GiveUp);
        assert_eq!(after_escalation(false, Some(false)), Handover::GiveUp);
        assert_eq!(after_escalation(true, Some(true)), Handover::GiveUp);
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

    /// The view of one side: it hears its own nodes; its detector has declared the
    /// owner dead but not yet (one in three) some nodes across the cut or crashed —
    /// a stale "not dead" set that overlaps other sides.
    fn view_of(w: &World, side: &BTreeSet<NodeId>, r: &mut SplitMix64) -> View {
        let mut holdings = BTreeMap::new();
        for m in &w.members {
            // Live nodes report (one in ten not yet); dead ones' old reports linger.
            if (side.contains(m) && r.below(10) > 0) || r.below(4) == 0 {
                holdings.insert(m.clone(), w.truth[m]);
            }
        }
        let stale = w
            .members
            .iter()
            .filter(|m| !side.contains(*m) && Some(*m) != w.owner.as_ref())
            .filter(|_| r.below(3) == 0)
            .cloned();
        View {
            job: w.job.clone(),
            members: w.members.clone(),
            live: side.iter().cloned().chain(stale).collect(),
            reachable: side.clone(),
            owner: w.owner.clone(),
            generation: w.generation,
            replicas: w.replicas.clone(),
            holdings,
            ..View::default()
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
                        .all(|x| !v.live.contains(x) || v.holdings.contains_key(x));
                    let any = v
                        .live
                        .iter()
                        .any(|m| v.holdings.get(m).copied().flatten().is_some());
                    if has_quorum(&w.members, side) && !owner_here && all_in && any {
                        panic!("world {i}: majority side stuck with {d:?}");
                    }
                    continue;
                };
                resumes += 1;
                assert!(
                    side.len() * 2 > w.members.len(),
                    "world {i}: minority resumed"
                );
                // A node across the cut that this side has not declared dead yet may be
                // named: it does not act (its own side has no majority), and this side
                // decides again once it is declared dead.
                assert!(v.live.contains(node), "world {i}: resumer not live");
                resuming_sides += usize::from(side.contains(node));
                assert!(w.owner.as_ref().is_none_or(|o| !side.contains(o)));
                assert_eq!(
                    w.truth[node],
                    Some(*from),
                    "world {i}: resumer lacks the checkpoint"
                );
                let newest = v
                    .live
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
                            act(&w.members, other, w.generation, &reports),
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
