//! sieve — a segmented sieve of Eratosthenes whose memory grows while it runs.
//!
//! The sieve keeps one byte per odd number, in segments of 1 MiB that are allocated one at
//! a time as the sieve advances and all kept to the end, so the guest's linear memory
//! grows step by step from a few pages to well over 64 MiB (default 64 segments, numbers
//! up to 2^27). After each segment it prints the running prime count and the memory size;
//! then it makes a second pass over everything it kept (twin primes, gaps, residues) and
//! counts Goldbach partitions of a few large even numbers by random access across the
//! whole table.
//!
//! Usage: sieve [SEGMENTS | --size SEGMENTS] [--goldbach K]

use common::{Args, Fnv};
use std::io::Write;

const SEG: usize = 1 << 20; // bytes (= odd numbers) per segment

/// Odd primes up to `n` by a plain sieve (for the base primes).
fn small_primes(n: usize) -> Vec<usize> {
    let mut is = vec![true; n + 1];
    let mut out = Vec::new();
    let mut i = 3;
    while i <= n {
        if is[i] {
            out.push(i);
            let mut j = i * i;
            while j <= n {
                is[j] = false;
                j += 2 * i;
            }
        }
        i += 2;
    }
    out
}

fn isqrt(n: u64) -> u64 {
    let mut r = (n as f64).sqrt() as u64;
    while r * r > n {
        r -= 1;
    }
    while (r + 1) * (r + 1) <= n {
        r += 1;
    }
    r
}

/// Current linear-memory size in 64 KiB pages.
fn memory_pages() -> usize {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

struct Table {
    segs: Vec<Vec<u8>>,
}

impl Table {
    /// Is the odd number `n` prime? (`n` must be odd and within the table.)
    #[inline]
    fn odd_is_prime(&self, n: u64) -> bool {
        let idx = (n / 2) as usize;
        self.segs[idx / SEG][idx % SEG] != 0
    }
}

fn main() {
    let args = Args::from_env();
    let nseg = args.size(64).max(1) as usize;
    let goldbach_k = args.num("goldbach", 6);
    let limit = (2 * SEG * nseg) as u64; // sieve covers [1, limit)
    let mut out = common::stdout();

    writeln!(
        out,
        "sieve: segments={nseg} segment_bytes={SEG} limit={limit} pages_at_start={}",
        memory_pages()
    )
    .unwrap();
    let base = small_primes(isqrt(limit) as usize + 1);
    // Next odd multiple to strike, per base prime, carried from segment to segment.
    let mut next: Vec<u64> = base.iter().map(|&p| (p * p) as u64).collect();

    let mut table = Table {
        segs: Vec::with_capacity(nseg),
    };
    let mut count = 1u64; // the prime 2
    let mut sum = Fnv::new();
    for k in 0..nseg {
        let lo = (2 * SEG * k) as u64; // segment holds odd numbers in [lo, lo + 2*SEG)
        let hi = lo + 2 * SEG as u64;
        let mut seg = vec![1u8; SEG];
        if k == 0 {
            seg[0] = 0; // 1 is not prime
        }
        for (&p, nx) in base.iter().zip(next.iter_mut()) {
            let p = p as u64;
            if *nx >= hi {
                continue;
            }
            let mut i = ((*nx - lo) / 2) as usize;
            while i < SEG {
                seg[i] = 0;
                i += p as usize;
            }
            *nx = lo + 2 * i as u64 + 1;
        }
        let c = seg.iter().map(|&b| b as u64).sum::<u64>();
        count += c;
        sum.u64(count);
        table.segs.push(seg);
        writeln!(
            out,
            "segment {k} upto={} primes={count} pages={}",
            hi - 1,
            memory_pages()
        )
        .unwrap();
    }
    writeln!(out, "pi({}) = {count}", limit - 1).unwrap();

    // Second pass over every kept segment.
    let (mut twins, mut max_gap, mut gap_at) = (0u64, 0u64, 0u64);
    let mut mod4 = [0u64; 4];
    let mut last_digit = [0u64; 10];
    let mut gaps = [0u64; 64];
    let mut prev = 2u64;
    let mut psum = 2u128;
    for (k, seg) in table.segs.iter().enumerate() {
        for (i, &b) in seg.iter().enumerate() {
            if b == 0 {
                continue;
            }
            let n = (2 * (k * SEG + i) + 1) as u64;
            let gap = n - prev;
            if gap == 2 {
                twins += 1;
            }
            if gap > max_gap {
                max_gap = gap;
                gap_at = prev;
            }
            gaps[((gap / 2) as usize).min(63)] += 1;
            mod4[(n % 4) as usize] += 1;
            last_digit[(n % 10) as usize] += 1;
            psum += n as u128;
            prev = n;
        }
    }
    writeln!(out, "twin prime pairs: {twins}").unwrap();
    writeln!(out, "largest prime: {prev}").unwrap();
    writeln!(out, "max gap: {max_gap} after {gap_at}").unwrap();
    writeln!(out, "sum of primes: {psum}").unwrap();
    writeln!(out, "mod 4: 1 -> {}, 3 -> {}", mod4[1], mod4[3]).unwrap();
    writeln!(
        out,
        "last digit: 1 -> {}, 3 -> {}, 7 -> {}, 9 -> {}",
        last_digit[1], last_digit[3], last_digit[7], last_digit[9]
    )
    .unwrap();
    for (h, g) in gaps.iter().enumerate().take(20).skip(1) {
        writeln!(out, "gap {:3}: {g}", 2 * h).unwrap();
        sum.u64(*g);
    }
    for v in [twins, max_gap, gap_at, prev, psum as u64] {
        sum.u64(v);
    }

    // Goldbach partitions: random access across the whole table.
    for j in 0..goldbach_k {
        let n = limit - 2 - j * (limit / (4 * goldbach_k.max(1))) / 2 * 2;
        let mut parts = 0u64;
        let mut p = 3u64;
        while p <= n / 2 {
            if table.odd_is_prime(p) && table.odd_is_prime(n - p) {
                parts += 1;
            }
            p += 2;
        }
        writeln!(out, "goldbach {n}: {parts} partitions").unwrap();
        sum.u64(parts);
    }

    writeln!(out, "checksum {:016x}", sum.value()).unwrap();
    out.flush().unwrap();
}
