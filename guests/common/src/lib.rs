//! Small helpers shared by the guest workloads: argument parsing, a deterministic PRNG
//! and an FNV-1a checksum. Std only, so the guests build offline and stay tiny.
//!
//! Nothing in here touches a clock or host randomness: a guest that wants either asks
//! for it explicitly, so every other guest's output is a pure function of its args.

use std::io::Write;

/// Command-line arguments: `--name value` options, `--flag`s and positionals.
pub struct Args {
    items: Vec<String>,
}

impl Args {
    pub fn from_env() -> Args {
        Args {
            items: std::env::args().skip(1).collect(),
        }
    }

    /// Value following `--name`, if present.
    pub fn opt(&self, name: &str) -> Option<&str> {
        let key = format!("--{name}");
        let pos = self.items.iter().position(|a| *a == key)?;
        match self.items.get(pos + 1) {
            Some(v) => Some(v.as_str()),
            None => fail(&format!("{key} needs a value")),
        }
    }

    /// Numeric value following `--name`, or `default`.
    pub fn num(&self, name: &str, default: u64) -> u64 {
        match self.opt(name) {
            Some(v) => parse_num(v).unwrap_or_else(|| fail(&format!("--{name}: bad number {v:?}"))),
            None => default,
        }
    }

    pub fn flag(&self, name: &str) -> bool {
        self.items.contains(&format!("--{name}"))
    }

    /// The size knob: `--size N`, else the first argument if it is a number, else `default`.
    pub fn size(&self, default: u64) -> u64 {
        if self.opt("size").is_some() {
            return self.num("size", default);
        }
        match self.items.first() {
            Some(first) if !first.starts_with("--") => {
                parse_num(first).unwrap_or_else(|| fail(&format!("bad size {first:?}")))
            }
            _ => default,
        }
    }
}

fn parse_num(s: &str) -> Option<u64> {
    s.trim().replace('_', "").parse().ok()
}

/// Print a usage error and exit with code 2.
pub fn fail(msg: &str) -> ! {
    let _ = std::io::stdout().flush();
    eprintln!("error: {msg}");
    std::process::exit(2)
}

/// xorshift64* — small, fast, and identical on every host.
#[derive(Clone)]
pub struct Rng {
    state: u64,
    spare: Option<f64>,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 the seed so that small or zero seeds still give a good stream.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng {
            state: if z == 0 { 0x1234_5678_9ABC_DEF1 } else { z },
            spare: None,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() >> 32) * n) >> 32
    }

    /// Standard normal (Box–Muller, second value cached).
    pub fn gauss(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        self.spare = Some(r * t.sin());
        r * t.cos()
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }
}

/// FNV-1a, 64 bit.
#[derive(Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv::new()
    }
}

impl Fnv {
    pub const fn new() -> Fnv {
        Fnv(0xCBF2_9CE4_8422_2325)
    }

    pub fn bytes(&mut self, data: &[u8]) {
        let mut h = self.0;
        for &b in data {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
        self.0 = h;
    }

    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    pub fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }

    pub fn value(&self) -> u64 {
        self.0
    }
}

/// Buffered stdout; flush it before exiting.
pub fn stdout() -> std::io::BufWriter<std::io::Stdout> {
    std::io::BufWriter::with_capacity(1 << 14, std::io::stdout())
}
