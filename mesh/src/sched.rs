//! Multi-source chunk fetch scheduler, sans IO.
//!
//! One [`FetchScheduler`] drives one fetch of a list of chunks from several peers. It is a
//! plain struct: the network shell tells it what happened (a peer joined, a HAVE answer or
//! a GET answer arrived, a request failed or timed out, a peer went away) and polls it for
//! the next requests to send. It never sees a socket or a clock, so every policy below is
//! unit-tested deterministically:
//!
//! - discovery: each candidate peer is asked which chunks it holds (HAVE, batched);
//! - work is pulled, not pushed: a peer with a free request slot takes the next batch of
//!   pending chunks it holds, so faster peers naturally take a larger share;
//! - batches are bounded by id count and by announced bytes;
//! - a failed/timed-out request puts its chunks back for every other holder; a peer that
//!   fails repeatedly, goes away or sends a corrupt chunk is dropped from this fetch;
//! - endgame: when nothing is left to assign, an idle peer duplicates chunks still in flight
//!   elsewhere, so one slow peer cannot hold up the end of the fetch;
//! - accounting: bytes are counted both uncompressed (per peer, first copies) and as they
//!   travelled on the wire (first copies, and everything received), see [`Outcome`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;

use crate::types::ChunkId;

/// Identifies one request issued by a scheduler.
pub type Token = u64;

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Most ids in one GET request.
    pub max_ids_per_request: usize,
    /// A GET batch is closed once its announced size reaches this...
    pub target_request_bytes: u64,
    /// ...or earlier, once it reaches its fair share of the bytes still to fetch (those
    /// bytes / (usable peers x requests per peer)), but never below this. Keeps one early peer
    /// from taking a small fetch whole.
    pub min_request_bytes: u64,
    /// A GET batch never announces more than this (the responder's budget).
    pub max_request_bytes: u64,
    /// Requests of this fetch in flight to one peer at once.
    pub max_inflight_per_peer: usize,
    /// Most ids in one HAVE request.
    pub have_batch: usize,
    /// Size assumed for a chunk whose size no peer announced.
    pub assumed_chunk_len: u64,
    /// Failed requests after which a peer is dropped from this fetch.
    pub max_peer_failures: u32,
    /// Duplicate in-flight chunks on idle peers at the end of the fetch.
    pub endgame: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_ids_per_request: 1024,
            target_request_bytes: 2 << 20,
            min_request_bytes: 256 << 10,
            max_request_bytes: 8 << 20,
            max_inflight_per_peer: 4,
            have_batch: 4096,
            assumed_chunk_len: 64 << 10,
            max_peer_failures: 3,
            endgame: true,
        }
    }
}

/// A request the shell should send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<P> {
    Have {
        token: Token,
        peer: P,
        ids: Vec<ChunkId>,
    },
    Get {
        token: Token,
        peer: P,
        ids: Vec<ChunkId>,
    },
}

impl<P> Action<P> {
    pub fn token(&self) -> Token {
        match self {
            Action::Have { token, .. } | Action::Get { token, .. } => *token,
        }
    }
    pub fn peer(&self) -> &P {
        match self {
            Action::Have { peer, .. } | Action::Get { peer, .. } => peer,
        }
    }
}

/// What happened to one chunk of a GET response, as judged by the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Bytes arrived and hash to the id: `len` chunk bytes, which took `wire_len` bytes on
    /// the wire (fewer when they travelled compressed).
    Delivered { len: u64, wire_len: u64 },
    /// `wire_len` bytes arrived and do not hash to the id, or did not decompress.
    Corrupt { wire_len: u64 },
    /// The peer says it does not hold the chunk.
    Missing,
    /// The peer holds it but left it out of this response.
    Deferred,
}

/// What the shell should do after a GET response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GetReport {
    /// Chunks delivered for the first time: hand these to the consumer.
    pub accepted: Vec<ChunkId>,
    /// Chunks that failed verification.
    pub corrupt: usize,
    /// Entries for chunks that were not asked for in this request.
    pub unexpected: usize,
}

impl GetReport {
    /// Whether the peer misbehaved in this response (grounds for a penalty).
    pub fn offence(&self) -> bool {
        self.corrupt > 0 || self.unexpected > 0
    }
}

/// The result of a finished fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome<P> {
    pub fetched: usize,
    pub missing: Vec<ChunkId>,
    /// Chunk bytes delivered (first copies only, uncompressed) per peer.
    pub per_peer_bytes: Vec<(P, u64)>,
    /// Chunk payload bytes the first copies took on the wire: the compressed size of
    /// chunks that travelled compressed, their size otherwise. Counts exactly the chunks
    /// counted in `per_peer_bytes`, so `wire_bytes / sum(per_peer_bytes)` is the
    /// compression ratio achieved. Excludes CBOR headers and transport framing.
    pub wire_bytes: u64,
    /// Chunk payload bytes of every GET response handed to the scheduler, as on the wire:
    /// first copies, late duplicates (endgame) and corrupt items. What the fetch cost in
    /// chunk traffic; at least `wire_bytes`.
    pub wire_bytes_received: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Pending,
    InFlight(u8),
    Done,
}

struct Chunk {
    id: ChunkId,
    len: Option<u64>,
    state: State,
    holders: Vec<u32>,
}

struct Peer<P> {
    id: P,
    usable: bool,
    inflight: usize,
    failures: u32,
    queue: VecDeque<u32>,
    delivered_bytes: u64,
}

enum ReqKind {
    Have(Vec<u32>),
    Get(Vec<u32>),
}

struct Request {
    peer: u32,
    kind: ReqKind,
}

/// Schedules one multi-source fetch. See the module documentation.
pub struct FetchScheduler<P> {
    cfg: SchedulerConfig,
    chunks: Vec<Chunk>,
    index: HashMap<ChunkId, u32>,
    peers: Vec<Peer<P>>,
    peer_index: HashMap<P, u32>,
    requests: HashMap<Token, Request>,
    have_queue: VecDeque<(u32, Vec<u32>)>,
    next_token: Token,
    rr: usize,
    done: usize,
    pending: usize,
    wire_bytes: u64,
    wire_bytes_received: u64,
}

impl<P: Clone + Eq + Hash> FetchScheduler<P> {
    /// A fetch of `ids` (duplicates are ignored).
    pub fn new(ids: impl IntoIterator<Item = ChunkId>, cfg: SchedulerConfig) -> Self {
        let mut chunks = Vec::new();
        let mut index = HashMap::new();
        for id in ids {
            if index.contains_key(&id) {
                continue;
            }
            index.insert(id, chunks.len() as u32);
            chunks.push(Chunk {
                id,
                len: None,
                state: State::Pending,
                holders: Vec::new(),
            });
        }
        let chunks_len = chunks.len();
        FetchScheduler {
            cfg,
            chunks,
            index,
            peers: Vec::new(),
            peer_index: HashMap::new(),
            requests: HashMap::new(),
            have_queue: VecDeque::new(),
            next_token: 1,
            rr: 0,
            pending: chunks_len,
            done: 0,
            wire_bytes: 0,
            wire_bytes_received: 0,
        }
    }

    fn peer_idx(&mut self, peer: P) -> u32 {
        if let Some(&i) = self.peer_index.get(&peer) {
            return i;
        }
        let i = self.peers.len() as u32;
        self.peers.push(Peer {
            id: peer.clone(),
            usable: true,
            inflight: 0,
            failures: 0,
            queue: VecDeque::new(),
            delivered_bytes: 0,
        });
        self.peer_index.insert(peer, i);
        i
    }

    /// Adds a candidate source: it will be asked which of the chunks it holds.
    pub fn add_peer(&mut self, peer: P) {
        if self.peer_index.contains_key(&peer) {
            return;
        }
        let pi = self.peer_idx(peer);
        let wanted: Vec<u32> = (0..self.chunks.len() as u32)
            .filter(|&c| self.chunks[c as usize].state != State::Done)
            .collect();
        for batch in wanted.chunks(self.cfg.have_batch.max(1)) {
            self.have_queue.push_back((pi, batch.to_vec()));
        }
    }

    /// Adds a source known to hold every chunk (for example the source of a migration):
    /// no HAVE round trip. Chunks it turns out not to hold are reported `Missing` by it.
    pub fn add_peer_holding_all(&mut self, peer: P) {
        if self.peer_index.contains_key(&peer) {
            return;
        }
        let pi = self.peer_idx(peer);
        for c in 0..self.chunks.len() as u32 {
            self.add_holder(c, pi, None);
        }
    }

    fn add_holder(&mut self, c: u32, pi: u32, len: Option<u64>) {
        let ch = &mut self.chunks[c as usize];
        if ch.len.is_none() {
            ch.len = len;
        }
        if !ch.holders.contains(&pi) {
            ch.holders.push(pi);
        }
        if ch.state == State::Pending {
            self.peers[pi as usize].queue.push_back(c);
        }
    }

    /// Whether `peer` is still a source for this fetch.
    pub fn is_usable(&self, peer: &P) -> bool {
        self.peer_index
            .get(peer)
            .is_some_and(|&i| self.peers[i as usize].usable)
    }

    /// The next request to send, if any. `may_send(peer)` lets the shell veto peers that
    /// are at a global limit; vetoed work stays queued.
    pub fn poll_action(&mut self, may_send: impl Fn(&P) -> bool) -> Option<Action<P>> {
        // HAVE queries first: they unlock everything else.
        if let Some(pos) = self
            .have_queue
            .iter()
            .position(|(pi, _)| may_send(&self.peers[*pi as usize].id))
        {
            let (pi, idxs) = self.have_queue.remove(pos)?;
            let peer = &self.peers[pi as usize];
            if peer.usable {
                let token = self.token();
                let ids = idxs.iter().map(|&c| self.chunks[c as usize].id).collect();
                self.requests.insert(
                    token,
                    Request {
                        peer: pi,
                        kind: ReqKind::Have(idxs),
                    },
                );
                return Some(Action::Have {
                    token,
                    peer: self.peers[pi as usize].id.clone(),
                    ids,
                });
            }
        }
        let n = self.peers.len();
        for k in 0..n {
            let pi = (self.rr + k) % n;
            if !may_send(&self.peers[pi].id) {
                continue;
            }
            if let Some(a) = self.assign(pi as u32) {
                self.rr = pi + 1;
                return Some(a);
            }
        }
        if self.cfg.endgame {
            for pi in 0..n {
                if !may_send(&self.peers[pi].id) {
                    continue;
                }
                if let Some(a) = self.endgame(pi as u32) {
                    return Some(a);
                }
            }
        }
        None
    }

    fn token(&mut self) -> Token {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn chunk_len(&self, c: u32) -> u64 {
        self.chunks[c as usize]
            .len
            .unwrap_or(self.cfg.assumed_chunk_len)
    }

    fn assign(&mut self, pi: u32) -> Option<Action<P>> {
        let p = &self.peers[pi as usize];
        if !p.usable || p.inflight >= self.cfg.max_inflight_per_peer {
            return None;
        }
        let usable = self.peers.iter().filter(|p| p.usable).count().max(1) as u64;
        let slots = usable * self.cfg.max_inflight_per_peer.max(1) as u64;
        let remaining = (self.chunks.len() - self.done) as u64;
        let fair = (remaining * self.cfg.assumed_chunk_len).div_ceil(slots);
        let target = fair
            .max(self.cfg.min_request_bytes)
            .min(self.cfg.target_request_bytes);
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        while batch.len() < self.cfg.max_ids_per_request && bytes < target {
            let Some(&c) = self.peers[pi as usize].queue.front() else {
                break;
            };
            let ch = &self.chunks[c as usize];
            if ch.state != State::Pending || !ch.holders.contains(&pi) {
                self.peers[pi as usize].queue.pop_front();
                continue;
            }
            let len = self.chunk_len(c);
            if !batch.is_empty() && bytes + len > self.cfg.max_request_bytes {
                break;
            }
            self.peers[pi as usize].queue.pop_front();
            self.chunks[c as usize].state = State::InFlight(1);
            self.pending -= 1;
            bytes += len;
            batch.push(c);
        }
        if batch.is_empty() {
            return None;
        }
        Some(self.issue_get(pi, batch))
    }

    fn issue_get(&mut self, pi: u32, batch: Vec<u32>) -> Action<P> {
        let token = self.token();
        let ids = batch.iter().map(|&c| self.chunks[c as usize].id).collect();
        self.peers[pi as usize].inflight += 1;
        self.requests.insert(
            token,
            Request {
                peer: pi,
                kind: ReqKind::Get(batch),
            },
        );
        Action::Get {
            token,
            peer: self.peers[pi as usize].id.clone(),
            ids,
        }
    }

    /// An idle peer takes over chunks in flight elsewhere, once nothing else is left.
    fn endgame(&mut self, pi: u32) -> Option<Action<P>> {
        let p = &self.peers[pi as usize];
        if !p.usable || p.inflight > 0 {
            return None;
        }
        if self.pending > 0 {
            // Pending chunks remain (held by busy peers only): not the end yet.
            return None;
        }
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        'outer: for req in self.requests.values() {
            let ReqKind::Get(cs) = &req.kind else {
                continue;
            };
            if req.peer == pi {
                continue;
            }
            for &c in cs {
                let ch = &self.chunks[c as usize];
                if ch.state != State::InFlight(1) || !ch.holders.contains(&pi) {
                    continue;
                }
                let len = self.chunk_len(c);
                if batch.len() >= self.cfg.max_ids_per_request
                    || bytes >= self.cfg.target_request_bytes
                    || (!batch.is_empty() && bytes + len > self.cfg.max_request_bytes)
                {
                    break 'outer;
                }
                bytes += len;
                batch.push(c);
            }
        }
        if batch.is_empty() {
            return None;
        }
        for &c in &batch {
            self.chunks[c as usize].state = State::InFlight(2);
        }
        Some(self.issue_get(pi, batch))
    }

    /// Gives a chunk back after a request for it ended without delivering it.
    fn release(&mut self, c: u32, front_for: Option<u32>) {
        let ch = &mut self.chunks[c as usize];
        match ch.state {
            State::InFlight(n) if n > 1 => ch.state = State::InFlight(n - 1),
            State::InFlight(_) => {
                ch.state = State::Pending;
                self.pending += 1;
                for &h in &ch.holders {
                    let p = &mut self.peers[h as usize];
                    if !p.usable {
                        continue;
                    }
                    if Some(h) == front_for || front_for.is_none() {
                        p.queue.push_front(c);
                    } else {
                        p.queue.push_back(c);
                    }
                }
            }
            State::Pending | State::Done => {}
        }
    }

    fn note_failure(&mut self, pi: u32) {
        let p = &mut self.peers[pi as usize];
        p.failures += 1;
        if p.failures >= self.cfg.max_peer_failures {
            p.usable = false;
        }
    }

    /// A HAVE request was answered with the size of each asked chunk (`None` = not held),
    /// in request order. Returns `false` (and treats it as a failure) if the answer does
    /// not match the request.
    pub fn on_have_response(&mut self, token: Token, sizes: &[Option<u32>]) -> bool {
        let Some(req) = self.requests.remove(&token) else {
            return true;
        };
        let ReqKind::Have(idxs) = req.kind else {
            return true;
        };
        if sizes.len() != idxs.len() {
            self.note_failure(req.peer);
            return false;
        }
        if !self.peers[req.peer as usize].usable {
            return true;
        }
        for (&c, size) in idxs.iter().zip(sizes) {
            if let Some(len) = size {
                let len = u64::from(*len);
                if len <= self.cfg.max_request_bytes {
                    self.add_holder(c, req.peer, Some(len));
                }
            }
        }
        true
    }

    /// A request (HAVE or GET) failed: timeout, stream error, refusal, connection closed.
    pub fn on_failure(&mut self, token: Token) {
        let Some(req) = self.requests.remove(&token) else {
            return;
        };
        self.note_failure(req.peer);
        if let ReqKind::Get(cs) = req.kind {
            self.peers[req.peer as usize].inflight -= 1;
            for c in cs {
                // Let other holders go first.
                self.release(c, Some(u32::MAX));
            }
        }
    }

    /// A GET request was answered; `items` are the shell's verdicts on each entry.
    pub fn on_get_response(
        &mut self,
        token: Token,
        items: impl IntoIterator<Item = (ChunkId, ItemOutcome)>,
    ) -> GetReport {
        let mut report = GetReport::default();
        let Some(Request {
            peer: pi,
            kind: ReqKind::Get(cs),
        }) = self.requests.remove(&token)
        else {
            // A request already written off (or not a GET): nothing to schedule, but the
            // bytes were received all the same.
            for (_, o) in items {
                self.wire_bytes_received += wire_len(&o);
            }
            return report;
        };
        self.peers[pi as usize].inflight -= 1;
        let mut open: HashSet<u32> = cs.iter().copied().collect();
        let mut deferred = HashSet::new();
        let mut delivered = 0usize;
        let mut missing = 0usize;
        for (id, outcome) in items {
            self.wire_bytes_received += wire_len(&outcome);
            let Some(&c) = self.index.get(&id) else {
                report.unexpected += 1;
                continue;
            };
            if !open.remove(&c) {
                report.unexpected += 1;
                continue;
            }
            match outcome {
                ItemOutcome::Delivered { len, wire_len } => {
                    delivered += 1;
                    let ch = &mut self.chunks[c as usize];
                    if ch.state != State::Done {
                        if ch.state == State::Pending {
                            self.pending -= 1;
                        }
                        ch.state = State::Done;
                        self.done += 1;
                        report.accepted.push(id);
                        self.peers[pi as usize].delivered_bytes += len;
                        self.wire_bytes += wire_len;
                    }
                }
                ItemOutcome::Corrupt { .. } => {
                    report.corrupt += 1;
                    self.peers[pi as usize].usable = false;
                    self.chunks[c as usize].holders.retain(|&h| h != pi);
                    self.release(c, None);
                }
                ItemOutcome::Missing => {
                    missing += 1;
                    self.chunks[c as usize].holders.retain(|&h| h != pi);
                    self.release(c, None);
                }
                ItemOutcome::Deferred => {
                    deferred.insert(c);
                }
            }
        }
        // Deferred entries, and entries the peer left out, go back to the front of its
        // queue in request order.
        for &c in cs.iter().rev() {
            if deferred.contains(&c) || open.contains(&c) {
                self.release(c, Some(pi));
            }
        }
        if report.offence() {
            self.peers[pi as usize].usable = false;
        } else if delivered == 0 && missing < cs.len() {
            // A response that delivers nothing it holds is a stall.
            self.note_failure(pi);
        }
        report
    }

    /// The peer went away: its requests are failed and it is no longer used. Returns the
    /// tokens of the requests that were in flight to it.
    pub fn on_peer_gone(&mut self, peer: &P) -> Vec<Token> {
        let Some(&pi) = self.peer_index.get(peer) else {
            return Vec::new();
        };
        self.peers[pi as usize].usable = false;
        self.have_queue.retain(|(p, _)| *p != pi);
        let tokens: Vec<Token> = self
            .requests
            .iter()
            .filter(|(_, r)| r.peer == pi)
            .map(|(t, _)| *t)
            .collect();
        for t in &tokens {
            if let Some(req) = self.requests.remove(t) {
                if let ReqKind::Get(cs) = req.kind {
                    self.peers[pi as usize].inflight -= 1;
                    for c in cs {
                        self.release(c, None);
                    }
                }
            }
        }
        tokens
    }

    /// Whether this token belongs to a request still in flight.
    pub fn is_pending(&self, token: Token) -> bool {
        self.requests.contains_key(&token)
    }

    pub fn total(&self) -> usize {
        self.chunks.len()
    }

    pub fn done(&self) -> usize {
        self.done
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.requests.len()
    }

    /// True when every chunk is fetched, or when nothing is in flight or queued and
    /// [`poll_action`](Self::poll_action) has nothing more to offer (call it first).
    pub fn is_finished(&self) -> bool {
        if self.done == self.chunks.len() {
            return true;
        }
        if !self.requests.is_empty() || !self.have_queue.is_empty() {
            return false;
        }
        // Nothing in flight: finished unless some usable peer still has work queued
        // (work a veto held back).
        !self.peers.iter().enumerate().any(|(pi, p)| {
            p.usable
                && p.queue.iter().any(|&c| {
                    let ch = &self.chunks[c as usize];
                    ch.state == State::Pending && ch.holders.contains(&(pi as u32))
                })
        })
    }

    /// The result so far: fetched count, chunks still missing, bytes per peer.
    pub fn outcome(&self) -> Outcome<P> {
        Outcome {
            fetched: self.done,
            missing: self
                .chunks
                .iter()
                .filter(|c| c.state != State::Done)
                .map(|c| c.id)
                .collect(),
            per_peer_bytes: self
                .peers
                .iter()
                .map(|p| (p.id.clone(), p.delivered_bytes))
                .collect(),
            wire_bytes: self.wire_bytes,
            wire_bytes_received: self.wire_bytes_received,
        }
    }
}

fn wire_len(o: &ItemOutcome) -> u64 {
    match *o {
        ItemOutcome::Delivered { wire_len, .. } | ItemOutcome::Corrupt { wire_len } => wire_len,
        ItemOutcome::Missing | ItemOutcome::Deferred => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<ChunkId> {
        (0..n)
            .map(|i| ChunkId::of(&(i as u64).to_le_bytes()))
            .collect()
    }

    fn cfg() -> SchedulerConfig {
        SchedulerConfig {
            max_ids_per_request: 4,
            target_request_bytes: 4 * 100,
            // Fair sharing off: these tests reason about fixed batch sizes.
            min_request_bytes: 4 * 100,
            max_request_bytes: 1000,
            max_inflight_per_peer: 2,
            have_batch: 100,
            assumed_chunk_len: 100,
            max_peer_failures: 2,
            endgame: false,
        }
    }

    fn all(_: &&str) -> bool {
        true
    }

    fn drain(s: &mut FetchScheduler<&'static str>) -> Vec<Action<&'static str>> {
        let mut out = Vec::new();
        while let Some(a) = s.poll_action(all) {
            out.push(a);
        }
        out
    }

    /// Answers every HAVE in `acts` with "holds all, 100 bytes each".
    fn answer_haves(s: &mut FetchScheduler<&'static str>, acts: &[Action<&'static str>]) {
        for a in acts {
            if let Action::Have { token, ids, .. } = a {
                assert!(s.on_have_response(*token, &vec![Some(100); ids.len()]));
            }
        }
    }

    fn deliver(s: &mut FetchScheduler<&'static str>, a: &Action<&'static str>) -> GetReport {
        let Action::Get { token, ids, .. } = a else {
            panic!("not a get")
        };
        s.on_get_response(
            *token,
            ids.iter().map(|id| {
                (
                    *id,
                    ItemOutcome::Delivered {
                        len: 100,
                        wire_len: 100,
                    },
                )
            }),
        )
    }

    #[test]
    fn asks_have_then_splits_across_peers() {
        let mut s = FetchScheduler::new(ids(16), cfg());
        s.add_peer("a");
        s.add_peer("b");
        let haves = drain(&mut s);
        assert_eq!(haves.len(), 2);
        assert!(haves.iter().all(|a| matches!(a, Action::Have { .. })));
        answer_haves(&mut s, &haves);
        let gets = drain(&mut s);
        // 2 peers x 2 in flight x 4 ids = all 16 chunks, evenly split.
        assert_eq!(gets.len(), 4);
        let to_a = gets.iter().filter(|a| *a.peer() == "a").count();
        assert_eq!(to_a, 2);
        let mut seen = std::collections::HashSet::new();
        for g in &gets {
            let Action::Get { ids, .. } = g else { panic!() };
            assert_eq!(ids.len(), 4);
            for id in ids {
                assert!(seen.insert(*id), "chunk assigned twice");
            }
        }
        for g in &gets {
            assert_eq!(deliver(&mut s, g).accepted.len(), 4);
        }
        assert!(drain(&mut s).is_empty());
        assert!(s.is_finished());
        let out = s.outcome();
        assert_eq!(out.fetched, 16);
        assert!(out.missing.is_empty());
        assert!(out.per_peer_bytes.iter().all(|(_, b)| *b == 800));
    }

    #[test]
    fn faster_peer_takes_more_work() {
        let mut s = FetchScheduler::new(ids(40), cfg());
        s.add_peer("fast");
        s.add_peer("slow");
        let haves = drain(&mut s);
        answer_haves(&mut s, &haves);
        let mut slow_outstanding = Vec::new();
        let mut fast_done = 0;
        loop {
            let acts = drain(&mut s);
            if acts.is_empty() && slow_outstanding.is_empty() {
                break;
            }
            let mut progressed = false;
            for a in acts {
                if *a.peer() == "fast" {
                    fast_done += deliver(&mut s, &a).accepted.len();
                    progressed = true;
                } else {
                    slow_outstanding.push(a);
                }
            }
            if !progressed {
                // The slow peer answers only when the fast one has nothing left.
                for a in slow_outstanding.drain(..) {
                    deliver(&mut s, &a);
                }
            }
        }
        assert!(s.is_finished());
        assert_eq!(s.outcome().fetched, 40);
        assert!(fast_done >= 30, "fast peer fetched only {fast_done}");
    }

    #[test]
    fn failed_request_is_refetched_elsewhere_and_flaky_peer_dropped() {
        let mut s = FetchScheduler::new(ids(8), cfg());
        s.add_peer("a");
        s.add_peer("b");
        let haves = drain(&mut s);
        answer_haves(&mut s, &haves);
        let gets = drain(&mut s);
        assert_eq!(gets.len(), 2, "8 chunks, 4 per request");
        let (to_a, to_b): (Vec<_>, Vec<_>) = gets.into_iter().partition(|a| *a.peer() == "a");
        // a's request fails; b delivers its own then a's chunks.
        s.on_failure(to_a[0].token());
        deliver(&mut s, &to_b[0]);
        let again = drain(&mut s);
        assert!(!again.is_empty());
        for a in &again {
            if *a.peer() == "a" {
                s.on_failure(a.token());
            } else {
                deliver(&mut s, a);
            }
        }
        // a has now failed twice: dropped.
        assert!(!s.is_usable(&"a"));
        loop {
            let acts = drain(&mut s);
            if acts.is_empty() {
                break;
            }
            for a in &acts {
                assert_eq!(*a.peer(), "b");
                deliver(&mut s, a);
            }
        }
        assert!(s.is_finished());
        let out = s.outcome();
        assert_eq!(out.fetched, 8);
        let b_bytes = out
            .per_peer_bytes
            .iter()
            .find(|(p, _)| *p == "b")
            .unwrap()
            .1;
        assert_eq!(b_bytes, 800);
    }

    #[test]
    fn corrupt_chunk_drops_peer_and_refetches() {
        let mut s = FetchScheduler::new(ids(4), cfg());
        s.add_peer("liar");
        let haves = drain(&mut s);
        answer_haves(&mut s, &haves);
        s.add_peer("honest");
        let acts = drain(&mut s);
        let mut honest_have = None;
        let mut liar_get = None;
        for a in acts {
            match (&a, *a.peer()) {
                (Action::Have { .. }, "honest") => honest_have = Some(a),
                (Action::Get { .. }, "liar") => liar_get = Some(a),
                _ => panic!("unexpected {a:?}"),
            }
        }
        let Some(Action::Get { token, ids, .. }) = liar_get else {
            panic!()
        };
        let rep = s.on_get_response(
            token,
            ids.iter().enumerate().map(|(i, id)| {
                // The liar compresses: 100-byte chunks in 40 bytes on the wire.
                let o = if i == 0 {
                    ItemOutcome::Corrupt { wire_len: 70 }
                } else {
                    ItemOutcome::Delivered {
                        len: 100,
                        wire_len: 40,
                    }
                };
                (*id, o)
            }),
        );
        assert_eq!(rep.corrupt, 1);
        assert!(rep.offence());
        assert_eq!(rep.accepted.len(), 3);
        assert!(!s.is_usable(&"liar"));
        answer_haves(&mut s, &[honest_have.unwrap()]);
        let acts = drain(&mut s);
        assert_eq!(acts.len(), 1);
        assert_eq!(*acts[0].peer(), "honest");
        let Action::Get { ids: again, .. } = &acts[0] else {
            panic!()
        };
        assert_eq!(again, &vec![ids[0]]);
        deliver(&mut s, &acts[0]);
        assert!(s.is_finished());
        let out = s.outcome();
        assert!(out.missing.is_empty());
        // First copies: three compressed from the liar, one raw from the honest peer.
        assert_eq!(out.wire_bytes, 3 * 40 + 100);
        // Received: also the corrupt item.
        assert_eq!(out.wire_bytes_received, 70 + 3 * 40 + 100);
    }

    #[test]
    fn peer_gone_mid_fetch_hands_work_to_others() {
        let mut s = FetchScheduler::new(ids(16), cfg());
        s.add_peer("a");
        s.add_peer("b");
        let haves = drain(&mut s);
        answer_haves(&mut s, &haves);
        let gets = drain(&mut s);
        let a_tokens: Vec<Token> = gets
            .iter()
            .filter(|a| *a.peer() == "a")
            .map(|a| a.token())
            .collect();
        let mut gone = s.on_peer_gone(&"a");
        gone.sort();
        assert_eq!(gone, a_tokens);
        // Late failure reports for those tokens are ignored.
        for t in &a_tokens {
            s.on_failure(*t);
        }
        for g in gets.iter().filter(|a| *a.peer() == "b") {
            deliver(&mut s, g);
        }
        loop {
            let acts = drain(&mut s);
            if acts.is_empty() {
                break;
            }
            for a in &acts {
                assert_eq!(*a.peer(), "b");
                deliver(&mut s, a);
            }
        }
        assert!(s.is_finished());
        assert_eq!(s.outcome().fetched, 16);
    }

    #[test]
    fn chunks_nobody_holds_are_reported_missing() {
        let mut s = FetchScheduler::new(ids(4), cfg());
        s.add_peer("a");
        let haves = drain(&mut s);
        let Action::Have { token, .. } = &haves[0] else {
            panic!()
        };
        assert!(s.on_have_response(*token, &[Some(100), None, Some(100), None]));
        let gets = drain(&mut s);
        assert_eq!(gets.len(), 1);
        deliver(&mut s, &gets[0]);
        assert!(drain(&mut s).is_empty());
        assert!(s.is_finished());
        let out = s.outcome();
        assert_eq!(out.fetched, 2);
        assert_eq!(out.missing.len(), 2);
    }

    #[test]
    fn mismatched_have_answer_is_rejected() {
        let mut s = FetchScheduler::new(ids(4), cfg());
        s.add_peer("a");
        let haves = drain(&mut s);
        assert!(!s.on_have_response(haves[0].token(), &[Some(1)]));
        assert!(drain(&mut s).is_empty());
        assert!(s.is_finished());
        assert_eq!(s.outcome().missing.len(), 4);
    }

    #[test]
    fn batches_respect_byte_budget() {
        let mut c = cfg();
        c.max_ids_per_request = 100;
        c.target_request_bytes = 1000;
        c.max_request_bytes = 1000;
        let mut s = FetchScheduler::new(ids(10), c);
        s.add_peer("a");
        let haves = drain(&mut s);
        // Sizes 300 each: at most 3 per 1000-byte request... the 4th would exceed.
        s.on_have_response(haves[0].token(), &[Some(300); 10]);
        let gets = drain(&mut s);
        for g in &gets {
            let Action::Get { ids, .. } = g else { panic!() };
            assert!(ids.len() <= 3, "{} ids", ids.len());
        }
    }

    #[test]
    fn deferred_entries_are_asked_again_and_stalls_count_as_failures() {
        let mut s = FetchScheduler::new(ids(4), cfg());
        s.add_peer_holding_all("a");
        let gets = drain(&mut s);
        assert_eq!(gets.len(), 1, "no HAVE round trip for a known holder");
        let Action::Get { token, ids, .. } = &gets[0] else {
            panic!()
        };
        // First two delivered, the rest omitted (deferred).
        s.on_get_response(
            *token,
            ids[..2].iter().map(|id| {
                (
                    *id,
                    ItemOutcome::Delivered {
                        len: 100,
                        wire_len: 100,
                    },
                )
            }),
        );
        let again = drain(&mut s);
        let Action::Get {
            token, ids: rest, ..
        } = &again[0]
        else {
            panic!()
        };
        assert_eq!(rest, &ids[2..].to_vec());
        // Two responses in a row that deliver nothing: the peer is dropped.
        s.on_get_response(*token, rest.iter().map(|id| (*id, ItemOutcome::Deferred)));
        let again = drain(&mut s);
        s.on_get_response(again[0].token(), std::iter::empty());
        assert!(!s.is_usable(&"a"));
        assert!(drain(&mut s).is_empty());
        assert!(s.is_finished());
        assert_eq!(s.outcome().missing.len(), 2);
    }

    #[test]
    fn unexpected_entries_are_an_offence() {
        let mut s = FetchScheduler::new(ids(2), cfg());
        s.add_peer_holding_all("a");
        let gets = drain(&mut s);
        let rep = s.on_get_response(
            gets[0].token(),
            [(
                ChunkId::of(b"not asked"),
                ItemOutcome::Delivered {
                    len: 1,
                    wire_len: 1,
                },
            )],
        );
        assert_eq!(rep.unexpected, 1);
        assert!(rep.offence());
        assert!(!s.is_usable(&"a"));
    }

    #[test]
    fn endgame_duplicates_work_of_a_slow_peer() {
        let mut c = cfg();
        c.endgame = true;
        c.max_inflight_per_peer = 1;
        let mut s = FetchScheduler::new(ids(8), c);
        s.add_peer_holding_all("fast");
        s.add_peer_holding_all("slow");
        let gets = drain(&mut s);
        assert_eq!(gets.len(), 2);
        let slow = gets.iter().find(|a| *a.peer() == "slow").unwrap().clone();
        let fast = gets.iter().find(|a| *a.peer() == "fast").unwrap().clone();
        deliver(&mut s, &fast);
        // Nothing pending: the idle fast peer duplicates the slow peer's chunks.
        let dup = drain(&mut s);
        assert_eq!(dup.len(), 1);
        assert_eq!(*dup[0].peer(), "fast");
        let (Action::Get { ids: d, .. }, Action::Get { ids: sl, .. }) = (&dup[0], &slow) else {
            panic!()
        };
        assert_eq!(d, sl);
        assert_eq!(deliver(&mut s, &dup[0]).accepted.len(), 4);
        assert!(s.is_pending(slow.token()));
        // The late copy adds nothing...
        assert!(deliver(&mut s, &slow).accepted.is_empty());
        assert!(s.is_finished());
        // ...to the delivered bytes, but it was received.
        let out = s.outcome();
        let delivered: u64 = out.per_peer_bytes.iter().map(|(_, b)| b).sum();
        assert_eq!(delivered, 800);
        assert_eq!(out.wire_bytes, 800);
        assert_eq!(out.wire_bytes_received, 1200);
    }

    #[test]
    fn small_fetch_is_shared_even_if_one_peer_answers_first() {
        let mut c = cfg();
        c.target_request_bytes = 10_000;
        c.min_request_bytes = 0;
        c.max_ids_per_request = 100;
        c.max_request_bytes = 10_000;
        let mut s = FetchScheduler::new(ids(16), c);
        s.add_peer("early");
        s.add_peer("late");
        let haves = drain(&mut s);
        // Only the early peer has answered: it must not take all 16 chunks.
        answer_haves(&mut s, &haves[..1]);
        let early: usize = drain(&mut s)
            .iter()
            .map(|a| match a {
                Action::Get { ids, .. } => ids.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(
            early, 8,
            "2 peers x 2 slots: 4 chunks per request, 2 requests"
        );
        answer_haves(&mut s, &haves[1..]);
        let late = drain(&mut s);
        assert!(late.iter().all(|a| *a.peer() == "late"));
        assert!(!late.is_empty());
    }

    #[test]
    fn veto_keeps_work_queued() {
        let mut s = FetchScheduler::new(ids(4), cfg());
        s.add_peer_holding_all("a");
        assert!(s.poll_action(|_| false).is_none());
        assert!(!s.is_finished());
        assert!(s.poll_action(|_| true).is_some());
    }
}
