//! Two-hop all-to-all for the per-iteration exchange: the members of a view (sorted, by
//! index) are laid out in rows of `width`; a node sends its own message to its row-mates,
//! and each node forwards the messages of its whole row, in one bundle, to the nodes of
//! the other rows whose column it serves. Every member still receives every other
//! member's message of the iteration, exactly once in the normal case, but in
//! `Σ_rows L(L−1) + Σ_rows (N − L)` frames instead of `N(N−1)`: 312 instead of 992 at
//! 32 members (rows of 6), 30 instead of 56 at 8. The bytes on the wire stay those of
//! the all-to-all (every message still travels to every member once, only bundled);
//! the price is a second hop per iteration.
//!
//! Which node relays row `R` (length `L_R`) to a node `p` of another row: the one at
//! position `col(p) mod L_R` of row `R` (the last row may be short). Everything here is a
//! function of the member count, so every member of a view computes the same layout.

use std::ops::Range;

/// The layout of `n` members in rows of `width`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    n: usize,
    width: usize,
}

impl Grid {
    /// The layout with the fewest frames per exchange for `n` members (ties to the wider
    /// rows, i.e. more direct traffic). `n ≤ 2` gives one row: everything direct.
    pub fn new(n: usize) -> Grid {
        let n = n.max(1);
        let mut best = Grid { n, width: n };
        let mut best_frames = best.frames();
        for width in 1..n {
            let g = Grid { n, width };
            let f = g.frames();
            if f < best_frames || (f == best_frames && width > best.width) {
                best = g;
                best_frames = f;
            }
        }
        best
    }

    /// One row holding every member: plain all-to-all.
    pub fn flat(n: usize) -> Grid {
        let n = n.max(1);
        Grid { n, width: n }
    }

    pub fn members(&self) -> usize {
        self.n
    }
    pub fn width(&self) -> usize {
        self.width
    }
    pub fn rows(&self) -> usize {
        self.n.div_ceil(self.width)
    }
    /// True if every member is in one row (no relaying).
    pub fn is_flat(&self) -> bool {
        self.width >= self.n
    }

    pub fn row(&self, i: usize) -> usize {
        i / self.width
    }
    pub fn col(&self, i: usize) -> usize {
        i % self.width
    }
    /// Member indices of row `r`.
    pub fn row_range(&self, r: usize) -> Range<usize> {
        let lo = (r * self.width).min(self.n);
        lo..(lo + self.width).min(self.n)
    }
    pub fn row_len(&self, r: usize) -> usize {
        self.row_range(r).len()
    }

    /// The member that forwards row `r`'s messages to member `p` (`p` not in row `r`).
    pub fn relay_of(&self, r: usize, p: usize) -> usize {
        let range = self.row_range(r);
        range.start + self.col(p) % range.len().max(1)
    }

    /// Where member `i` sends its own message: its row-mates.
    pub fn row_mates(&self, i: usize) -> impl Iterator<Item = usize> {
        self.row_range(self.row(i)).filter(move |&m| m != i)
    }

    /// Where member `i` forwards its row's bundle: every member of another row that it
    /// is the relay of.
    pub fn relay_targets(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        let r = self.row(i);
        let rows = self.row_range(r);
        (0..self.n).filter(move |&p| !rows.contains(&p) && self.relay_of(r, p) == i)
    }

    /// Frames of one exchange.
    pub fn frames(&self) -> usize {
        (0..self.rows())
            .map(|r| {
                let l = self.row_len(r);
                l * (l - 1) + if self.rows() > 1 { self.n - l } else { 0 }
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ordered pair (author, recipient) is served exactly once: directly within a
    /// row, else by exactly one relay of the author's row.
    #[test]
    fn every_pair_is_served_exactly_once() {
        for n in 1..=80 {
            for g in std::iter::once(Grid::new(n))
                .chain(std::iter::once(Grid::flat(n)))
                .chain((1..=n).map(|width| Grid { n, width }))
            {
                let mut got = vec![vec![0u32; n]; n];
                let mut frames = 0;
                for i in 0..n {
                    for m in g.row_mates(i) {
                        got[i][m] += 1;
                        frames += 1;
                    }
                    let targets: Vec<usize> = g.relay_targets(i).collect();
                    frames += targets.len();
                    for p in targets {
                        for a in g.row_range(g.row(i)) {
                            got[a][p] += 1;
                        }
                    }
                }
                for (a, row) in got.iter().enumerate() {
                    for (p, &times) in row.iter().enumerate() {
                        assert_eq!(times, u32::from(a != p), "{g:?}: {a} → {p}");
                    }
                }
                assert_eq!(frames, g.frames(), "{g:?}");
            }
        }
    }

    #[test]
    fn the_chosen_layout_cuts_the_frames() {
        assert!(Grid::new(1).is_flat());
        assert!(Grid::new(2).is_flat());
        assert_eq!(Grid::new(3).frames(), 5);
        assert_eq!(Grid::new(8).frames(), 30);
        assert_eq!(Grid::flat(8).frames(), 56);
        let g = Grid::new(32);
        assert_eq!(Grid::flat(32).frames(), 992);
        assert!(g.frames() <= 320, "{g:?}: {}", g.frames());
        assert!(
            Grid::new(64).frames() <= 64 * 16,
            "{}",
            Grid::new(64).frames()
        );
        // No member sends much more than the others (the short last row's relays serve
        // several columns each).
        let per: Vec<usize> = (0..32)
            .map(|i| g.row_mates(i).count() + g.relay_targets(i).count())
            .collect();
        assert!(per.iter().all(|&f| f <= 16), "{per:?}");
    }
}
