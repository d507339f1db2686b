//! bigstate — a job with a large, mostly stable state and a low dirty rate, for
//! live-migration benchmarks.
//!
//! It allocates `--mib N` MiB of state and fills it from a seeded stream, either
//! incompressible (`--fill random`, xorshift bytes) or compressible about 3-4x by zstd
//! (`--fill text`, pseudo-words and stock phrases from a seeded vocabulary). Then it runs
//! `--steps` steps. Each step hashes a `--window-kib` window read from anywhere in the
//! state `--rounds` times over (the CPU work; reads only) and writes `--dirty-kib-per-step`
//! KiB, in `--pieces` pieces, to random 4 KiB pages of a small hot region (`--hot-kib`, in
//! the middle of the state). What a step writes depends on the window it read, so a byte
//! of cold state lost or changed by a migration shows up in the hot region and in the
//! final checksum. Every `--print-every` steps it prints the running checksum of the steps
//! and a checksum of the whole hot region (all the state that ever changes); at the end a
//! checksum of the entire state. `--dump PATH` writes the filled state to a file (in a
//! preopened dir) and exits, to check how well it compresses.
//!
//! Usage: bigstate [MIB | --size MIB | --mib MIB] [--fill random|text] [--steps N]
//!                 [--window-kib W] [--rounds R] [--dirty-kib-per-step K] [--pieces P]
//!                 [--hot-kib H] [--print-every N] [--seed S] [--dump PATH]

use common::{fail, Args, Rng};
use std::io::Write;

const PAGE: usize = 4096;
/// Passes over the window per step (default of `--rounds`).
const ROUNDS: u64 = 80;

const USAGE: &str = "\
usage: bigstate [MIB | --size MIB | --mib MIB] [--fill random|text] [--steps N]
                [--window-kib W] [--rounds R] [--dirty-kib-per-step K] [--pieces P]
                [--hot-kib H] [--print-every N] [--flush-lines] [--seed S]
                [--dump PATH]
  --mib N                 state size in MiB (default 64; also the first argument
                          or --size N, like the other guests)
  --fill random|text      random: incompressible xorshift bytes (default);
                          text: pseudo-words, compresses ~3-4x with zstd
  --steps N               steps to run (default 4000: ~4 s under `roam exec` on a slow
                          2-core machine with the other defaults, ~1 ms per step)
  --window-kib W          KiB of state read per step, at a random place (default 64)
  --rounds R              times the window is hashed per step: the CPU work (default 80)
  --dirty-kib-per-step K  KiB written per step (default 4)
  --pieces P              the K KiB are written as P pieces, each within one random
                          4 KiB page of the hot region (default 4)
  --hot-kib H             size of the hot region the writes land in, in the middle of
                          the state (default 1024; 0 = the whole state)
  --print-every N         progress line every N steps (default steps/20)
  --flush-lines           write each progress line out at once (default: in 16 KiB
                          blocks), so its arrival times show the job's progress
  --seed S                seed of the fill and of the step stream (default 1)
  --dump PATH             write the filled state to PATH (a preopened dir) and exit";

/// 64-bit word-at-a-time hash: fast enough to run over the whole state, and order
/// sensitive. Not FNV (byte at a time), which would dominate the run for 64 MiB.
#[derive(Clone, Copy)]
struct Hash(u64);

impl Hash {
    fn new(seed: u64) -> Hash {
        Hash(seed ^ 0x6A09_E667_F3BC_C908)
    }

    #[inline]
    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }

    fn bytes(&mut self, data: &[u8]) {
        let mut it = data.chunks_exact(8);
        for c in &mut it {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        for &b in it.remainder() {
            self.word(b as u64);
        }
        self.word(data.len() as u64);
    }

    fn value(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        z = (z ^ (z >> 33)).wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        z ^ (z >> 33)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Fill {
    Random,
    Text,
}

/// Writes pseudo-random content of the chosen kind into a byte slice.
struct Filler {
    kind: Fill,
    /// For `Fill::Text`: `WORDS` pseudo-words, then `PHRASES` phrases made of them (with
    /// their spaces), as (start, len) into `letters`.
    tokens: Vec<(u32, u16)>,
    letters: Vec<u8>,
}

const WORDS: usize = 1024;
const PHRASES: usize = 8192;

const SYLLABLES: [&[u8]; 32] = [
    b"ka", b"lo", b"mi", b"ne", b"ru", b"sa", b"ti", b"vo", b"an", b"er", b"in", b"on", b"st",
    b"th", b"ch", b"qu", b"ba", b"de", b"fu", b"go", b"hi", b"jo", b"pe", b"za", b"ly", b"ou",
    b"ea", b"ri", b"tor", b"ing", b"ess", b"al",
];

impl Filler {
    fn new(kind: Fill, seed: u64) -> Filler {
        let mut tokens = Vec::new();
        let mut letters = Vec::new();
        if kind == Fill::Text {
            let mut rng = Rng::new(seed ^ 0x7E47);
            for _ in 0..WORDS {
                let start = letters.len();
                for _ in 0..1 + rng.below(4) {
                    letters.extend_from_slice(SYLLABLES[rng.below(32) as usize]);
                }
                if rng.chance(0.1) {
                    letters[start] = letters[start].to_ascii_uppercase();
                }
                tokens.push((start as u32, (letters.len() - start) as u16));
            }
            for _ in 0..PHRASES {
                let start = letters.len();
                for k in 0..3 + rng.below(6) {
                    if k > 0 {
                        letters.push(b' ');
                    }
                    let (ws, wl) = tokens[rng.below(WORDS as u64) as usize];
                    letters.extend_from_within(ws as usize..ws as usize + wl as usize);
                }
                tokens.push((start as u32, (letters.len() - start) as u16));
            }
        }
        Filler {
            kind,
            tokens,
            letters,
        }
    }

    fn fill(&self, buf: &mut [u8], rng: &mut Rng) {
        match self.kind {
            Fill::Random => {
                let mut it = buf.chunks_exact_mut(8);
                for c in &mut it {
                    c.copy_from_slice(&rng.next_u64().to_le_bytes());
                }
                let tail = it.into_remainder();
                let last = rng.next_u64().to_le_bytes();
                let n = tail.len();
                tail.copy_from_slice(&last[..n]);
            }
            Fill::Text => self.text(buf, rng),
        }
    }

    /// Words and stock phrases separated by spaces, with some punctuation and newlines.
    /// The word choice is skewed (product of two uniform picks) so that common words
    /// repeat, as in text; the phrases give an LZ compressor longer matches.
    fn text(&self, buf: &mut [u8], rng: &mut Rng) {
        let n = WORDS as u64;
        let mut i = 0;
        while i < buf.len() {
            let r = rng.next_u64();
            let t = if (r >> 56) & 3 == 0 {
                WORDS + (((r & 0xFFFF_FFFF) * PHRASES as u64) >> 32) as usize
            } else {
                let a = ((r & 0x0FFF_FFFF) * n) >> 28;
                let b = (((r >> 28) & 0x0FFF_FFFF) * n) >> 28;
                (a * b / n) as usize
            };
            let (start, len) = self.tokens[t];
            let token = &self.letters[start as usize..start as usize + len as usize];
            let take = token.len().min(buf.len() - i);
            buf[i..i + take].copy_from_slice(&token[..take]);
            i += take;
            if i < buf.len() {
                buf[i] = match r >> 59 {
                    0 => b'\n',
                    1 | 2 => b',',
                    3 => b'.',
                    _ => b' ',
                };
                i += 1;
            }
        }
    }
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

fn main() {
    let args = Args::from_env();
    if args.flag("help") {
        println!("{USAGE}");
        return;
    }
    // `--mib N`, or the usual size knob of the guests (first argument or `--size N`).
    let mib = match args.opt("mib") {
        Some(_) => args.num("mib", 64),
        None => args.size(64),
    };
    if !(1..=3072).contains(&mib) {
        fail("--mib must be in 1..=3072");
    }
    let fill = match args.opt("fill").unwrap_or("random") {
        "random" => Fill::Random,
        "text" => Fill::Text,
        other => fail(&format!("--fill: expected random or text, got {other:?}")),
    };
    let state_len = (mib as usize) << 20;
    let steps = args.num("steps", 4000);
    let window = (args.num("window-kib", 64) as usize) << 10;
    let rounds = args.num("rounds", ROUNDS).max(1);
    let dirty = (args.num("dirty-kib-per-step", 4) as usize) << 10;
    let pieces = args.num("pieces", 4) as usize;
    let hot_kib = args.num("hot-kib", 1024) as usize;
    let hot_len = if hot_kib == 0 {
        state_len
    } else {
        hot_kib << 10
    };
    let print_every = args.num("print-every", (steps / 20).max(1)).max(1);
    let flush_lines = args.flag("flush-lines");
    let seed = args.num("seed", 1);
    if window == 0 || window > state_len {
        fail("--window-kib must be in 1..=state size");
    }
    if hot_len > state_len {
        fail("--hot-kib must not exceed the state size");
    }
    if pieces == 0 || pieces > 4096 {
        fail("--pieces must be in 1..=4096");
    }
    if dirty > hot_len {
        fail("--dirty-kib-per-step must not exceed the hot region");
    }
    // The hot region sits in the middle of the state, on a page boundary.
    let hot_start = ((state_len - hot_len) / 2) & !(PAGE - 1);
    let hot_pages = (hot_len / PAGE).max(1);

    let mut out = common::stdout();
    let kind = if fill == Fill::Text { "text" } else { "random" };
    writeln!(
        out,
        "bigstate: mib={mib} fill={kind} steps={steps} window_kib={} rounds={rounds} \
         dirty_kib_per_step={} pieces={pieces} hot_kib={} seed={seed} pages_at_start={}",
        window >> 10,
        dirty >> 10,
        hot_len >> 10,
        memory_pages()
    )
    .unwrap();

    let filler = Filler::new(fill, seed);
    let mut state = vec![0u8; state_len];
    let mut fill_rng = Rng::new(seed);
    // Fill in 64 KiB blocks so the generator state is the only thing carried along.
    for block in state.chunks_mut(64 << 10) {
        filler.fill(block, &mut fill_rng);
    }
    let mut h = Hash::new(0);
    h.bytes(&state);
    if let Some(path) = args.opt("dump") {
        if let Err(e) = std::fs::write(path, &state) {
            fail(&format!("--dump {path}: {e}"));
        }
        writeln!(out, "dumped {mib} MiB to {path}").unwrap();
        out.flush().unwrap();
        return;
    }
    writeln!(
        out,
        "filled {mib} MiB: state={:016x} pages={}",
        h.value(),
        memory_pages()
    )
    .unwrap();

    let mut rng = Rng::new(seed ^ 0x05EE_D0F5_7E95);
    let mut run = Hash::new(1);
    let base = dirty / pieces;
    for step in 1..=steps {
        // CPU work: hash a window read from anywhere in the state.
        let at = rng.below((state_len - window + 1) as u64) as usize;
        let mut digest = step;
        for _ in 0..rounds {
            let mut wh = Hash::new(digest);
            wh.bytes(&state[at..at + window]);
            digest = wh.value();
        }
        run.word(digest);

        // Writes: `dirty` bytes in `pieces` pieces, each inside one random page of the
        // hot region (a piece bigger than a page starts on a random page and runs on).
        let mut piece_rng = Rng::new(digest ^ rng.next_u64());
        for p in 0..pieces {
            let len = if p + 1 == pieces {
                dirty - base * (pieces - 1)
            } else {
                base
            };
            if len == 0 {
                continue;
            }
            let page = rng.below(hot_pages as u64) as usize;
            let mut off = hot_start + page * PAGE;
            if len < PAGE {
                off += rng.below((PAGE - len + 1) as u64) as usize;
            }
            let off = off.min(hot_start + hot_len - len);
            filler.fill(&mut state[off..off + len], &mut piece_rng);
        }

        if step % print_every == 0 || step == steps {
            let mut hh = Hash::new(2);
            hh.bytes(&state[hot_start..hot_start + hot_len]);
            writeln!(
                out,
                "step {step}/{steps} run={:016x} hot={:016x}",
                run.value(),
                hh.value()
            )
            .unwrap();
            if flush_lines {
                out.flush().unwrap();
            }
        }
    }

    let mut h = Hash::new(3);
    h.bytes(&state);
    let whole = h.value();
    writeln!(out, "state {:016x} pages={}", whole, memory_pages()).unwrap();
    let mut c = Hash::new(4);
    c.word(whole);
    c.word(run.value());
    writeln!(out, "checksum {:016x}", c.value()).unwrap();
    out.flush().unwrap();
}
