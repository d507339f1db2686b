//! Failure detection: turns "when did I last hear from each peer" into the
//! verdicts recovery acts on. Anything from a peer counts as a sign of life
//! (a pong, a gossip heartbeat, a chunk), so the shell calls
//! [`Detector::heard`] with the local receipt time and [`Detector::tick`]
//! periodically (or at [`Detector::poll_timeout`]), and polls
//! [`DetectorEvent`]s.
//!
//! A peer silent for `suspect_after_ms` is **suspected**: it no longer counts
//! towards an owner's majority ([`crate::decide::owner_action`]). Silent for
//! `dead_after_ms` it is **dead**: its jobs may be recovered. The gap between
//! the two is what keeps an isolated owner and the majority from running a
//! job at once: the owner stops counting the majority (and pauses) a margin
//! before the majority declares it dead.
//!
//! Rules for untidy input:
//! - A message older than the newest one heard (a late or reordered message)
//!   never moves the last-heard time backwards.
//! - A dead verdict is sticky: recovery may already have acted on it, so only
//!   a message received *after* the verdict revives the peer; a late message
//!   from before it does not.
//! - Time never runs backwards here: a `tick` or `heard` earlier than the
//!   latest time seen counts as that latest time, and arithmetic saturates.

use std::collections::{BTreeMap, VecDeque};

use crate::config::{ConfigError, RecoveryConfig};
use crate::ids::NodeId;

/// Most peers watched at once; messages from further unknown nodes are
/// ignored (the swarm key keeps strangers out, this bounds the rest).
pub const MAX_PEERS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Suspect,
    Dead,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DetectorEvent {
    /// Newly heard of, or heard again after a suspicion or a dead verdict.
    Alive {
        node: NodeId,
    },
    Suspected {
        node: NodeId,
        last_heard_ms: u64,
    },
    Dead {
        node: NodeId,
        last_heard_ms: u64,
    },
}

#[derive(Clone, Debug)]
struct Peer {
    last_heard: u64,
    state: Liveness,
    /// When the dead verdict was reached (meaningful while `state` is Dead).
    dead_at: u64,
}

#[derive(Clone, Debug)]
pub struct Detector {
    suspect_after: u64,
    dead_after: u64,
    now: u64,
    peers: BTreeMap<NodeId, Peer>,
    events: VecDeque<DetectorEvent>,
}

impl Detector {
    /// Uses `suspect_after_ms` and `dead_after_ms` of a validated config.
    pub fn new(cfg: &RecoveryConfig) -> Result<Detector, ConfigError> {
        cfg.validate()?;
        Ok(Detector {
            suspect_after: cfg.suspect_after_ms,
            dead_after: cfg.dead_after_ms,
            now: 0,
            peers: BTreeMap::new(),
            events: VecDeque::new(),
        })
    }

    /// Start watching `node` as if just heard at `now` (a grace period for a
    /// peer known from the membership but not yet heard). No event.
    pub fn watch(&mut self, node: NodeId, now: u64) {
        self.now = self.now.max(now);
        if self.peers.len() < MAX_PEERS {
            let at = self.now;
            self.peers.entry(node).or_insert(Peer {
                last_heard: at,
                state: Liveness::Alive,
                dead_at: 0,
            });
        }
    }

    /// Stop watching a peer that left gracefully. No event.
    pub fn forget(&mut self, node: &NodeId) {
        self.peers.remove(node);
    }

    /// A sign of life from `node`, received at `at`. Returns false when the
    /// node is new and [`MAX_PEERS`] are watched already.
    pub fn heard(&mut self, node: &NodeId, at: u64) -> bool {
        self.now = self.now.max(at);
        let Some(p) = self.peers.get_mut(node) else {
            if self.peers.len() >= MAX_PEERS {
                return false;
            }
            self.peers.insert(
                node.clone(),
                Peer {
                    last_heard: at,
                    state: Liveness::Alive,
                    dead_at: 0,
                },
            );
            self.events
                .push_back(DetectorEvent::Alive { node: node.clone() });
            return true;
        };
        if at <= p.last_heard {
            return true; // late or duplicate: nothing new
        }
        p.last_heard = at;
        let revive = match p.state {
            Liveness::Alive => false,
            Liveness::Suspect => self.now.saturating_sub(at) < self.suspect_after,
            Liveness::Dead => at > p.dead_at && self.now.saturating_sub(at) < self.suspect_after,
        };
        if revive {
            p.state = Liveness::Alive;
            self.events
                .push_back(DetectorEvent::Alive { node: node.clone() });
        }
        true
    }

    /// Advance to `now` and reach the verdicts that are due.
    pub fn tick(&mut self, now: u64) {
        self.now = self.now.max(now);
        let now = self.now;
        for (node, p) in &mut self.peers {
            let silent = now.saturating_sub(p.last_heard);
            if p.state == Liveness::Alive && silent >= self.suspect_after {
                p.state = Liveness::Suspect;
                self.events.push_back(DetectorEvent::Suspected {
                    node: node.clone(),
                    last_heard_ms: p.last_heard,
                });
            }
            if p.state == Liveness::Suspect && silent >= self.dead_after {
                p.state = Liveness::Dead;
                p.dead_at = now;
                self.events.push_back(DetectorEvent::Dead {
                    node: node.clone(),
                    last_heard_ms: p.last_heard,
                });
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<DetectorEvent> {
        self.events.pop_front()
    }

    /// When the next verdict falls due (tick then), if any peer can get one.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.peers
            .values()
            .filter_map(|p| match p.state {
                Liveness::Alive => Some(p.last_heard.saturating_add(self.suspect_after)),
                Liveness::Suspect => Some(p.last_heard.saturating_add(self.dead_after)),
                Liveness::Dead => None,
            })
            .min()
    }

    pub fn state(&self, node: &NodeId) -> Option<Liveness> {
        self.peers.get(node).map(|p| p.state)
    }

    /// Peers heard within `suspect_after_ms`: what an owner counts.
    pub fn alive(&self) -> impl Iterator<Item = &NodeId> {
        self.in_state(|s| s == Liveness::Alive)
    }

    /// Peers not declared dead: what a would-be resumer counts.
    pub fn not_dead(&self) -> impl Iterator<Item = &NodeId> {
        self.in_state(|s| s != Liveness::Dead)
    }

    fn in_state(&self, f: impl Fn(Liveness) -> bool) -> impl Iterator<Item = &NodeId> {
        self.peers
            .iter()
            .filter(move |(_, p)| f(p.state))
            .map(|(n, _)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DetectorEvent::*;

    fn det() -> Detector {
        // suspect 1500, dead 4000
        Detector::new(&RecoveryConfig::default()).unwrap()
    }

    fn drain(d: &mut Detector) -> Vec<DetectorEvent> {
        std::iter::from_fn(|| d.poll_event()).collect()
    }

    fn n(s: &str) -> NodeId {
        NodeId::from(s)
    }

    #[test]
    fn verdicts_fall_exactly_at_the_timeouts() {
        let mut d = det();
        d.watch(n("a"), 1000);
        d.tick(2499);
        assert!(drain(&mut d).is_empty());
        assert_eq!(d.poll_timeout(), Some(2500));
        d.tick(2500);
        assert_eq!(
            drain(&mut d),
            [Suspected {
                node: n("a"),
                last_heard_ms: 1000
            }]
        );
        assert_eq!(d.alive().count(), 0);
        assert_eq!(d.not_dead().count(), 1);
        assert_eq!(d.poll_timeout(), Some(5000));
        d.tick(4999);
        assert!(drain(&mut d).is_empty());
        d.tick(5000);
        assert_eq!(
            drain(&mut d),
            [Dead {
                node: n("a"),
                last_heard_ms: 1000
            }]
        );
        assert_eq!(d.not_dead().count(), 0);
        assert_eq!(d.poll_timeout(), None);
    }

    #[test]
    fn a_peer_heard_in_time_is_never_suspected() {
        let mut d = det();
        d.watch(n("a"), 0);
        for t in (0..100_000).step_by(1400) {
            d.heard(&n("a"), t);
            d.tick(t + 1399);
        }
        assert!(drain(&mut d).is_empty());
        assert_eq!(d.state(&n("a")), Some(Liveness::Alive));
    }

    #[test]
    fn flapping_alternates_and_never_dies() {
        let mut d = det();
        d.watch(n("a"), 0);
        let mut t = 0;
        for i in 0..50 {
            t += if i % 2 == 0 { 1000 } else { 3000 };
            d.tick(t);
            d.heard(&n("a"), t);
        }
        let ev = drain(&mut d);
        assert!(ev.len() >= 40, "{ev:?}");
        assert!(ev.iter().all(|e| !matches!(e, Dead { .. })));
        for w in ev.windows(2) {
            assert_ne!(
                std::mem::discriminant(&w[0]),
                std::mem::discriminant(&w[1]),
                "two verdicts of one kind in a row: {w:?}"
            );
        }
    }

    #[test]
    fn a_late_message_does_not_undo_a_dead_verdict() {
        let mut d = det();
        d.watch(n("a"), 0);
        d.tick(4000);
        assert!(matches!(drain(&mut d)[..], [Suspected { .. }, Dead { .. }]));
        // Received at 3000, handled after the verdict at 4000.
        d.heard(&n("a"), 3000);
        d.tick(4100);
        assert!(drain(&mut d).is_empty());
        assert_eq!(d.state(&n("a")), Some(Liveness::Dead));
        // Heard after the verdict: back.
        d.heard(&n("a"), 4200);
        assert_eq!(drain(&mut d), [Alive { node: n("a") }]);
        assert_eq!(d.state(&n("a")), Some(Liveness::Alive));
        // And it is timed from the new message, not the late one.
        d.tick(5699);
        assert!(drain(&mut d).is_empty());
        d.tick(5700);
        assert_eq!(drain(&mut d).len(), 1);
    }

    #[test]
    fn an_older_message_never_moves_last_heard_back() {
        let mut d = det();
        d.watch(n("a"), 0);
        d.heard(&n("a"), 1000);
        d.heard(&n("a"), 200); // reordered
        d.tick(2499);
        assert!(drain(&mut d).is_empty(), "timed from 1000, not 200");
        d.tick(2500);
        assert_eq!(drain(&mut d).len(), 1);
        // A stale message while suspected does not clear the suspicion.
        d.heard(&n("a"), 900);
        assert!(drain(&mut d).is_empty());
        assert_eq!(d.state(&n("a")), Some(Liveness::Suspect));
    }

    #[test]
    fn time_running_backwards_changes_nothing() {
        let mut d = det();
        d.watch(n("a"), 10_000);
        d.tick(5_000); // earlier than anything seen
        d.tick(0);
        assert!(drain(&mut d).is_empty());
        d.tick(11_499);
        assert!(drain(&mut d).is_empty());
        d.tick(11_500);
        assert_eq!(drain(&mut d).len(), 1);
        // A heard stamped before the latest tick revives a suspect only if
        // it is recent enough at the detector's own "now".
        d.heard(&n("a"), 9_000 + 1);
        assert!(drain(&mut d).is_empty());
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let mut d = det();
        d.watch(n("a"), 0);
        d.heard(&n("b"), u64::MAX - 10);
        assert_eq!(drain(&mut d), [Alive { node: n("b") }]);
        d.tick(u64::MAX);
        let ev = drain(&mut d);
        // a jumps straight through suspicion to death, in order; b is fine.
        assert!(
            matches!(&ev[..], [Suspected { node: a1, .. }, Dead { node: a2, .. }] if *a1 == n("a") && *a2 == n("a")),
            "{ev:?}"
        );
        assert_eq!(d.state(&n("b")), Some(Liveness::Alive));
        assert_eq!(d.poll_timeout(), Some(u64::MAX));
        d.tick(u64::MAX);
    }

    #[test]
    fn ticking_at_poll_timeout_always_yields_an_event() {
        let mut d = det();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            d.watch(n(name), i as u64 * 700);
        }
        let mut deaths = 0;
        while let Some(t) = d.poll_timeout() {
            d.tick(t);
            let ev = drain(&mut d);
            assert!(!ev.is_empty(), "tick at {t} produced nothing");
            deaths += ev.iter().filter(|e| matches!(e, Dead { .. })).count();
        }
        assert_eq!(deaths, 3);
    }

    #[test]
    fn forget_and_peer_cap() {
        let mut d = det();
        d.heard(&n("a"), 0);
        d.forget(&n("a"));
        assert_eq!(d.state(&n("a")), None);
        for i in 0..MAX_PEERS {
            assert!(d.heard(&NodeId(format!("p{i}")), 1));
        }
        assert!(!d.heard(&n("one-too-many"), 1));
        assert_eq!(d.not_dead().count(), MAX_PEERS);
    }
}
