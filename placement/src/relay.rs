//! Log-depth all-to-all for the per-iteration exchange (Bruck et al.'s concatenation
//! algorithm): members of a view by index `0..n` on a ring; at step `k` (`2^k < n`),
//! member `i` forwards what it holds of the members `i, i+1, …, i+s_k−1` (`s_k =
//! min(2^k, n−2^k)`, indices mod `n`) to member `i − 2^k`, in one frame. Step 0 is a
//! member's own message alone; after step `k` member `i` holds `i … i+2^(k+1)−1`, so
//! after `⌈log₂ n⌉` steps every member holds every member's message of the iteration,
//! each exactly once. Frames per exchange: `n·⌈log₂ n⌉` instead of `n(n−1)` — 160
//! instead of 992 at 32 members, 24 instead of 56 at 8; the bytes on the wire stay those
//! of the all-to-all (every message still reaches every member once, only bundled);
//! the price is `⌈log₂ n⌉` hops per iteration instead of one.
//!
//! Everything here is a function of the member count, so every member of a view computes
//! the same schedule, and a receiver can check that a bundle comes from the member that
//! may send it (`2^k` after it on the ring) and carries only the authors it may.

/// The exchange schedule of a view of `n` members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    n: usize,
    flat: bool,
}

impl Schedule {
    /// The log-depth schedule (flat for `n ≤ 2`).
    pub fn new(n: usize) -> Schedule {
        let n = n.max(1);
        Schedule { n, flat: n <= 2 }
    }

    /// Every message straight to every member.
    pub fn flat(n: usize) -> Schedule {
        Schedule {
            n: n.max(1),
            flat: true,
        }
    }

    pub fn members(&self) -> usize {
        self.n
    }
    pub fn is_flat(&self) -> bool {
        self.flat
    }

    /// Steps per exchange: `⌈log₂ n⌉` (0 when flat).
    pub fn steps(&self) -> u32 {
        if self.flat {
            0
        } else {
            usize::BITS - (self.n - 1).leading_zeros()
        }
    }

    /// Messages forwarded at step `k`: `min(2^k, n − 2^k)`.
    pub fn size(&self, k: u32) -> usize {
        let d = 1usize << k;
        d.min(self.n.saturating_sub(d))
    }

    /// Who member `i` sends to at step `k`: member `i − 2^k` (mod `n`).
    pub fn target(&self, i: usize, k: u32) -> usize {
        (i + self.n - (1usize << k) % self.n) % self.n
    }

    /// The step at which member `q` sends to member `p`, if it does: `q − p ≡ 2^k`.
    pub fn step_from(&self, q: usize, p: usize) -> Option<u32> {
        if self.flat || q >= self.n || p >= self.n {
            return None;
        }
        let d = (q + self.n - p) % self.n;
        (d.is_power_of_two() && d < self.n).then(|| d.trailing_zeros())
    }

    /// Ring offset of `a` from `i`: `a − i` (mod `n`).
    pub fn offset(&self, i: usize, a: usize) -> usize {
        (a + self.n - i) % self.n
    }

    /// Authors member `i` forwards (or needs to forward) at some step: offsets
    /// `0 .. window` from it.
    pub fn window(&self) -> usize {
        (0..self.steps()).map(|k| self.size(k)).max().unwrap_or(0)
    }

    /// Frames of one exchange.
    pub fn frames(&self) -> usize {
        if self.flat {
            self.n * (self.n - 1)
        } else {
            self.n * self.steps() as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run the schedule: every member ends with every member's message, each delivered
    /// exactly once, every bundle sent by a member that held all of it, and receivers'
    /// checks (`step_from`, offsets) accept exactly what is sent.
    #[test]
    fn every_member_gets_every_message_exactly_once() {
        for n in 1..=130 {
            let s = Schedule::new(n);
            if s.is_flat() {
                assert_eq!((s.steps(), s.window()), (0, 0));
                continue;
            }
            let mut held: Vec<Vec<u32>> = (0..n)
                .map(|i| (0..n).map(|a| u32::from(a == i)).collect())
                .collect();
            let mut frames = 0;
            for k in 0..s.steps() {
                let before = held.clone();
                for (i, mine) in before.iter().enumerate() {
                    let t = s.target(i, k);
                    assert_ne!(t, i);
                    assert_eq!(s.step_from(i, t), Some(k), "n {n}: {i} → {t}");
                    frames += 1;
                    for off in 0..s.size(k) {
                        let a = (i + off) % n;
                        assert!(off < s.window());
                        assert_eq!(mine[a], 1, "n {n} step {k}: {i} forwards {a} unheld");
                        held[t][a] += 1;
                    }
                }
            }
            for (i, h) in held.iter().enumerate() {
                assert!(h.iter().all(|&c| c == 1), "n {n}: member {i} holds {h:?}");
            }
            assert_eq!(frames, s.frames(), "n {n}");
            // Nobody else may send a given member a bundle.
            for p in 0..n {
                let senders = (0..n).filter(|&q| s.step_from(q, p).is_some()).count();
                assert_eq!(senders, s.steps() as usize, "n {n}");
            }
        }
    }

    #[test]
    fn frames_per_exchange() {
        assert!(Schedule::new(2).is_flat());
        assert_eq!(Schedule::new(8).frames(), 24);
        assert_eq!(Schedule::flat(8).frames(), 56);
        assert_eq!(Schedule::new(32).frames(), 160);
        assert_eq!(Schedule::flat(32).frames(), 992);
        assert_eq!(Schedule::new(33).frames(), 33 * 6);
        assert_eq!(Schedule::new(32).window(), 16);
        assert_eq!(Schedule::new(24).window(), 8);
    }
}
