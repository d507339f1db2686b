//! Which peers hold a job's replicated checkpoints. There is no coordinator to
//! assign them, so every node must compute the same set from what it already
//! knows — the job id and the live membership — and a membership change must
//! move as few replicas as possible (each moved replica is a full state copy).
//!
//! Rendezvous (highest-random-weight) hashing gives both: each (job, node)
//! pair gets a pseudo-random score, `blake3` in derive-key mode over the job
//! and the node; the job's ranking is the members by descending score, and its
//! replicas are the first `k` members of the ranking other than the owner. A
//! joining node enters a job's set only where it outranks the set's last
//! member (displacing exactly that one); a leaving node is replaced by the
//! next in the ranking; every other job's set is untouched. The ranking is
//! also the tie-break of [`crate::decide`]: among equal candidates the one
//! ranked first resumes, which spreads recoveries over the swarm.

use std::collections::BTreeSet;

use crate::ids::NodeId;

/// Replicas per job unless configured otherwise.
pub const DEFAULT_REPLICAS: usize = 2;

const CONTEXT: &str = "roam 2026 replica rendezvous v1";

/// The rendezvous score of `node` for `job`. Lengths are hashed too, so
/// ("ab", "c") and ("a", "bc") score independently.
pub fn score(job: &str, node: &NodeId) -> u64 {
    let mut h = blake3::Hasher::new_derive_key(CONTEXT);
    h.update(&(job.len() as u64).to_le_bytes());
    h.update(job.as_bytes());
    h.update(&(node.0.len() as u64).to_le_bytes());
    h.update(node.0.as_bytes());
    let b = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&b.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// Every distinct member, best first: descending score, ties (astronomically
/// rare) by node id. Independent of the order and duplicates of `members`.
pub fn rank<'a>(job: &str, members: impl IntoIterator<Item = &'a NodeId>) -> Vec<NodeId> {
    let distinct: BTreeSet<&NodeId> = members.into_iter().collect();
    let mut scored: Vec<(u64, &NodeId)> =
        distinct.into_iter().map(|n| (score(job, n), n)).collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, n)| n.clone()).collect()
}

/// The job's `k` replica holders among `members`, best first, never the
/// owner (it has its checkpoints already). Fewer than `k` when there are not
/// enough members.
pub fn replica_set<'a>(
    job: &str,
    members: impl IntoIterator<Item = &'a NodeId>,
    owner: Option<&NodeId>,
    k: usize,
) -> Vec<NodeId> {
    rank(job, members)
        .into_iter()
        .filter(|n| Some(n) != owner)
        .take(k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn nodes(n: usize) -> Vec<NodeId> {
        (1..=n).map(|i| NodeId(format!("n{i}"))).collect()
    }

    fn jobs(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("job-{i}.wasm-{:04x}", i * 7919))
            .collect()
    }

    #[test]
    fn same_set_whatever_the_order_or_duplicates() {
        let mut m = nodes(7);
        let want = replica_set("tracker", &m, Some(&m[0].clone()), 2);
        let mut rng = SplitMix64::new(3);
        for _ in 0..20 {
            rng.shuffle(&mut m);
            let mut with_dups = m.clone();
            with_dups.extend(m.iter().take(3).cloned());
            assert_eq!(
                replica_set("tracker", &with_dups, Some(&NodeId::from("n1")), 2),
                want
            );
        }
        assert_eq!(want.len(), 2);
        assert!(!want.contains(&NodeId::from("n1")));
    }

    #[test]
    fn small_swarms_and_owner_exclusion() {
        let m = nodes(3);
        let all = rank("j", &m);
        assert_eq!(all.len(), 3);
        let set = replica_set("j", &m, Some(&all[0]), 5);
        assert_eq!(set, all[1..].to_vec(), "owner left out, the rest in order");
        assert_eq!(replica_set("j", &m, None, 2), all[..2].to_vec());
        assert!(replica_set("j", &[], None, 2).is_empty());
        assert!(replica_set("j", &m, None, 0).is_empty());
    }

    #[test]
    fn job_and_node_boundaries_do_not_collide() {
        assert_ne!(
            score("ab", &NodeId::from("c")),
            score("a", &NodeId::from("bc"))
        );
    }

    #[test]
    fn load_is_spread_evenly() {
        let m = nodes(8);
        let mut held = std::collections::BTreeMap::<NodeId, usize>::new();
        for j in jobs(2000) {
            for n in replica_set(&j, &m, None, 2) {
                *held.entry(n).or_default() += 1;
            }
        }
        // 4000 copies over 8 nodes: 500 each expected, sd ~20.
        for (n, c) in &held {
            assert!((400..=600).contains(c), "{n} holds {c}");
        }
        assert_eq!(held.len(), 8);
    }

    #[test]
    fn a_joining_node_only_displaces_the_last_replica() {
        let old = nodes(6);
        let mut new = old.clone();
        let joiner = NodeId::from("n7");
        new.push(joiner.clone());
        let owner = NodeId::from("n2");
        let mut changed = 0;
        let all = jobs(3000);
        for j in &all {
            let a = replica_set(j, &old, Some(&owner), 2);
            let b = replica_set(j, &new, Some(&owner), 2);
            if a != b {
                changed += 1;
                assert!(b.contains(&joiner), "{j}: {a:?} -> {b:?}");
                let kept: Vec<_> = b.iter().filter(|n| **n != joiner).collect();
                assert_eq!(kept.len(), 1);
                assert_eq!(kept[0], &a[0], "{j}: the best old replica stays");
            }
        }
        // The joiner is in the top 2 of the 6 non-owners in ~2/6 of the jobs.
        let share = changed as f64 / all.len() as f64;
        assert!((0.25..=0.42).contains(&share), "{share}");
    }

    #[test]
    fn a_leaving_node_moves_only_its_own_replicas() {
        let old = nodes(8);
        let gone = NodeId::from("n5");
        let new: Vec<NodeId> = old.iter().filter(|n| **n != gone).cloned().collect();
        for j in jobs(2000) {
            let a = replica_set(&j, &old, None, 2);
            let b = replica_set(&j, &new, None, 2);
            if a.contains(&gone) {
                let survivor: Vec<_> = a.iter().filter(|n| **n != gone).collect();
                assert!(b.contains(survivor[0]), "{j}: {a:?} -> {b:?}");
                assert!(!b.contains(&gone));
            } else {
                assert_eq!(a, b, "{j}: untouched set moved");
            }
        }
    }
}
