//! Where a job's output lands: the log book of its *home* node (the node it was
//! submitted to), whichever node runs it.
//!
//! A job's WASI state counts the bytes it wrote to each stream, and that count moves
//! with the job, so every output piece carries its exact offset in the stream. The
//! book keeps each stream as the longest gap-free prefix it has seen and parks pieces
//! that arrive early; a piece it already holds (a retransmission, the source flushing
//! late after a move) is dropped. What a reader sees is therefore every byte once, in
//! order, however pieces are delayed, repeated or reordered on the way.

use std::collections::{BTreeMap, HashMap};

use super::proto::{LogSlice, StreamKind};

/// Bytes a stream may park ahead of a gap before pieces are refused.
pub const MAX_PARKED_BYTES: usize = 64 << 20;

/// One stream: a gap-free prefix plus pieces beyond a gap.
#[derive(Debug, Default)]
pub struct Assembler {
    data: Vec<u8>,
    parked: BTreeMap<u64, Vec<u8>>,
    parked_bytes: usize,
    /// Bytes received that were already held.
    pub duplicate_bytes: u64,
}

/// What became of a piece.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Appended (possibly with parked pieces it joined).
    Appended,
    /// Held beyond a gap.
    Parked,
    /// Nothing new.
    Duplicate,
    /// Too much parked already: the sender must retry later.
    Refused,
}

impl Assembler {
    pub fn len(&self) -> u64 {
        self.data.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn accept(&mut self, offset: u64, piece: &[u8]) -> Accepted {
        let end = offset.saturating_add(piece.len() as u64);
        let len = self.len();
        if end <= len {
            self.duplicate_bytes += piece.len() as u64;
            return Accepted::Duplicate;
        }
        if offset > len {
            if self
                .parked
                .get(&offset)
                .is_some_and(|p| p.len() >= piece.len())
            {
                self.duplicate_bytes += piece.len() as u64;
                return Accepted::Duplicate;
            }
            if self.parked_bytes + piece.len() > MAX_PARKED_BYTES {
                return Accepted::Refused;
            }
            self.parked_bytes += piece.len();
            if let Some(old) = self.parked.insert(offset, piece.to_vec()) {
                self.parked_bytes -= old.len();
            }
            return Accepted::Parked;
        }
        let skip = (len - offset) as usize;
        self.duplicate_bytes += skip as u64;
        self.data.extend_from_slice(&piece[skip..]);
        self.drain_parked();
        Accepted::Appended
    }

    fn drain_parked(&mut self) {
        while let Some((&off, _)) = self.parked.first_key_value() {
            if off > self.len() {
                break;
            }
            let Some((off, p)) = self.parked.pop_first() else {
                break;
            };
            self.parked_bytes -= p.len();
            let end = off + p.len() as u64;
            if end > self.len() {
                let skip = (self.len() - off) as usize;
                self.data.extend_from_slice(&p[skip..]);
            } else {
                self.duplicate_bytes += p.len() as u64;
            }
        }
    }
}

/// A job's two streams and how it ended.
#[derive(Debug, Default)]
pub struct JobLog {
    pub stdout: Assembler,
    pub stderr: Assembler,
    /// Exit code and final stream lengths, once the runner said so.
    pub exit: Option<(i32, u64, u64)>,
}

impl JobLog {
    pub fn stream(&self, s: StreamKind) -> &Assembler {
        match s {
            StreamKind::Stdout => &self.stdout,
            StreamKind::Stderr => &self.stderr,
        }
    }

    fn stream_mut(&mut self, s: StreamKind) -> &mut Assembler {
        match s {
            StreamKind::Stdout => &mut self.stdout,
            StreamKind::Stderr => &mut self.stderr,
        }
    }

    /// The exit code once the job ended *and* every byte of both streams arrived.
    pub fn finished(&self) -> Option<i32> {
        let (code, out, err) = self.exit?;
        (self.stdout.len() >= out && self.stderr.len() >= err).then_some(code)
    }
}

/// The log books of every job homed at this node.
#[derive(Debug, Default)]
pub struct LogBook {
    jobs: HashMap<String, JobLog>,
}

impl LogBook {
    /// Registers a job homed here (so readers can tell "no output yet" from "unknown").
    pub fn open(&mut self, job: &str) {
        self.jobs.entry(job.to_string()).or_default();
    }

    pub fn accept(&mut self, job: &str, stream: StreamKind, offset: u64, data: &[u8]) -> Accepted {
        self.jobs
            .entry(job.to_string())
            .or_default()
            .stream_mut(stream)
            .accept(offset, data)
    }

    pub fn exited(&mut self, job: &str, code: i32, stdout_len: u64, stderr_len: u64) {
        self.jobs.entry(job.to_string()).or_default().exit = Some((code, stdout_len, stderr_len));
    }

    pub fn get(&self, job: &str) -> Option<&JobLog> {
        self.jobs.get(job)
    }

    pub fn jobs(&self) -> impl Iterator<Item = (&String, &JobLog)> {
        self.jobs.iter()
    }

    /// Up to `max` bytes of `stream` from `from`.
    pub fn read(&self, job: &str, stream: StreamKind, from: u64, max: usize) -> LogSlice {
        let Some(log) = self.jobs.get(job) else {
            return LogSlice::default();
        };
        let data = log.stream(stream).data();
        let start = (from as usize).min(data.len());
        let end = start.saturating_add(max).min(data.len());
        LogSlice {
            data: data[start..end].to_vec(),
            next: end as u64,
            exit_code: log.finished(),
            known: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cuts `text` into pieces, delivers them shuffled with duplicates and overlaps,
    /// and checks the stream equals `text` exactly.
    #[test]
    fn shuffled_duplicated_overlapping_pieces_give_each_byte_once() {
        let text: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20 {
            let mut pieces = Vec::new();
            let mut at = 0usize;
            while at < text.len() {
                let n = 1 + (next() % 700) as usize;
                let end = (at + n).min(text.len());
                pieces.push((at, end));
                // An overlapping retransmission now and then.
                if next() % 5 == 0 {
                    let back = (next() % 50) as usize;
                    pieces.push((at.saturating_sub(back), end));
                }
                at = end;
            }
            let dup: Vec<_> = pieces.iter().step_by(3).copied().collect();
            pieces.extend(dup);
            for i in (1..pieces.len()).rev() {
                let j = (next() % (i as u64 + 1)) as usize;
                pieces.swap(i, j);
            }
            let mut a = Assembler::default();
            for (s, e) in pieces {
                assert_ne!(a.accept(s as u64, &text[s..e]), Accepted::Refused);
            }
            assert_eq!(a.data(), &text[..]);
            assert_eq!(a.parked_bytes, 0);
        }
    }

    #[test]
    fn finished_only_when_every_byte_arrived() {
        let mut b = LogBook::default();
        b.open("j");
        b.accept("j", StreamKind::Stdout, 3, b"def");
        b.exited("j", 4, 6, 0);
        assert_eq!(b.get("j").unwrap().finished(), None);
        let s = b.read("j", StreamKind::Stdout, 0, 100);
        assert!(s.data.is_empty() && s.known && s.exit_code.is_none());
        b.accept("j", StreamKind::Stdout, 0, b"abc");
        assert_eq!(b.get("j").unwrap().finished(), Some(4));
        let s = b.read("j", StreamKind::Stdout, 2, 2);
        assert_eq!((s.data.as_slice(), s.next), (&b"cd"[..], 4));
        assert!(!b.read("other", StreamKind::Stdout, 0, 9).known);
    }

    #[test]
    fn parking_is_bounded() {
        let mut a = Assembler::default();
        let big = vec![1u8; MAX_PARKED_BYTES];
        assert_eq!(a.accept(10, &big), Accepted::Parked);
        assert_eq!(
            a.accept(MAX_PARKED_BYTES as u64 + 20, b"x"),
            Accepted::Refused
        );
    }
}
