//! A deterministic discrete-event harness: one `Source`, one `Destination`,
//! simulated shells (a job that dirties memory, a chunk store, a link with a
//! bandwidth and a latency) and injectable faults. It tracks where the job
//! runs after every step and records every violation of the invariant.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};

use migrate::{
    AbortReason, DestAction, DestConfig, DestEvent, DestPhase, Destination, Message, MigrateError,
    MigrationId, Outcome, Source, SourceAction, SourceConfig, SourceEvent, SourcePhase, StateMap,
};
use store::{BlobRef, ChunkId, ChunkMap};

pub const CS: u32 = 64 * 1024;
pub const GENERATION: u64 = 7;
pub const MIG: MigrationId = MigrationId(0xfeed);

/// xorshift64*: deterministic, no dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, permille: u64) -> bool {
        self.below(1000) < permille
    }
}

/// A failure injected at protocol step `n` (the n-th message put on the
/// wire, counting both directions and retransmissions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Message n is lost (once; retransmissions get through).
    DropOnce(usize),
    /// The link is cut for good from message n on, both ways.
    CutFrom(usize),
    /// The destination node dies just before message n leaves (if it is the
    /// destination's, it never leaves; if it is for the destination, it is lost).
    DestCrash(usize),
    /// Same for the source node.
    SrcCrash(usize),
    /// The source's shell cancels while message n is in flight.
    SrcCancel(usize),
    /// The destination's shell cancels while message n is in flight.
    DestCancel(usize),
    /// Message n arrives twice (the copy 300 ms later).
    Duplicate(usize),
    /// Message n arrives this many ms late (after later messages).
    Delay(usize, u64),
    /// The destination's verification of the final manifest fails.
    VerifyFails,
    /// The destination's fetch of this round fails.
    FetchFails(u32),
    /// The source's shell cannot pause the job.
    PauseFails,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preload {
    Nothing,
    Module,
    /// Module and the first-version chunks of every other memory slot.
    ModuleAndHalf,
    /// Every chunk of the initial state.
    Everything,
}

/// Random network misbehaviour (per mille per message).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Chaos {
    pub loss: u64,
    pub dup: u64,
    /// Extra latency, uniform in 0..=jitter_ms.
    pub jitter_ms: u64,
}

#[derive(Clone, Debug)]
pub struct Params {
    pub mem_chunks: usize,
    /// Chunks 0..hot are the ones the job rewrites.
    pub hot: usize,
    /// Distinct bytes per second the job dirties.
    pub dirty_rate: u64,
    /// Effective link throughput (bytes/s) for chunk fetches.
    pub bandwidth: u64,
    pub latency_ms: u64,
    pub preload: Preload,
    pub src: SourceConfig,
    pub dst: DestConfig,
    pub fault: Fault,
    pub chaos: Chaos,
    pub seed: u64,
    /// Estimates the source's shell reports at the start.
    pub shell_dirty_estimate: Option<u64>,
    /// The destination's shell reports fetch progress this often.
    pub progress_every_ms: Option<u64>,
}

impl Params {
    /// A small job on a 100 Mbit/s LAN; compression off so the simulated link
    /// and the source's model agree.
    pub fn small() -> Params {
        let mut src = SourceConfig {
            link_bandwidth_bytes_per_s: 12_500_000,
            compression_cores: 0.0,
            ..SourceConfig::default()
        };
        src.precopy.max_rounds = 8;
        Params {
            mem_chunks: 64,
            hot: 16,
            dirty_rate: 1_000_000,
            bandwidth: 12_500_000,
            latency_ms: 2,
            preload: Preload::Module,
            src,
            dst: DestConfig::default(),
            fault: Fault::None,
            chaos: Chaos::default(),
            seed: 1,
            shell_dirty_estimate: None,
            progress_every_ms: None,
        }
    }
}

/// The job at the source: memory slot versions, dirtied over time.
#[derive(Clone, Debug)]
pub struct JobModel {
    /// Version of each memory slot; `None` = all-zero.
    pub slots: Vec<Option<u64>>,
    hot: usize,
    rate: u64,
    carry: u64,
    last: u64,
    next_version: u64,
    rng: Rng,
    pub module: BlobRef,
}

/// The shell's answer to a PauseJob for a job in `state`: a real manifest (the
/// destination rebuilds it from the Final's patch and the offer and checks its
/// hash), told apart by `stamp` (its globals).
pub fn paused_event(state: &StateMap, stamp: u64) -> SourceEvent {
    let manifest = store::Manifest {
        version: store::MANIFEST_VERSION,
        job: "job-a".into(),
        generation: GENERATION,
        module: state.module.clone(),
        memory: state.memory.clone(),
        globals: serde_bytes::ByteBuf::from(stamp.to_le_bytes().to_vec()),
        host_state: Default::default(),
        extra: Default::default(),
        parent: None,
    };
    SourceEvent::Paused {
        manifest_id: ChunkId::of(&manifest.encode()),
        manifest: Box::new(manifest),
    }
}

pub fn mem_id(slot: usize, version: u64) -> ChunkId {
    ChunkId::of(format!("mem slot {slot} version {version}").as_bytes())
}

impl JobModel {
    pub fn new(p: &Params) -> JobModel {
        let slots = (0..p.mem_chunks)
            .map(|i| if i % 7 == 3 { None } else { Some(0) })
            .collect();
        let mlen = 3 * CS as u64 - 100;
        let module = BlobRef {
            hash: ChunkId::of(b"module"),
            map: ChunkMap {
                len: mlen,
                chunk_size: CS,
                chunks: (0..3)
                    .map(|j| (j, ChunkId::of(format!("module {j}").as_bytes())))
                    .collect(),
            },
        };
        JobModel {
            slots,
            hot: p.hot.min(p.mem_chunks),
            rate: p.dirty_rate,
            carry: 0,
            last: 0,
            next_version: 1,
            rng: Rng::new(p.seed ^ 0xabcdef),
            module,
        }
    }

    /// Let the job run (or not) until `now`.
    pub fn advance(&mut self, now: u64, running: bool) {
        let dt = now.saturating_sub(self.last);
        self.last = now;
        if !running || self.hot == 0 {
            return;
        }
        let bytes = self.carry + self.rate * dt / 1000;
        let n = bytes / CS as u64;
        self.carry = bytes % CS as u64;
        for _ in 0..n {
            let i = self.rng.below(self.hot as u64) as usize;
            self.slots[i] = Some(self.next_version);
            self.next_version += 1;
        }
    }

    pub fn state(&self) -> StateMap {
        StateMap {
            module: self.module.clone(),
            memory: ChunkMap {
                len: self.slots.len() as u64 * CS as u64,
                chunk_size: CS,
                chunks: self
                    .slots
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| v.map(|v| (i as u64, mem_id(i, v))))
                    .collect(),
            },
            extra: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    Src,
    Dst,
}

#[derive(Debug)]
enum Shell {
    Src(SourceEvent),
    SrcPauseDone,
    Dst(DestEvent),
    DstFetched { round: u32, ids: Vec<ChunkId> },
    Verify { manifest_id: ChunkId, hashes: bool },
}

pub struct Sim {
    pub p: Params,
    pub now: u64,
    pub src: Option<Source>,
    pub dst: Option<Destination>,
    pub src_dead: bool,
    pub dst_dead: bool,
    net: BTreeMap<(u64, u64), (Node, Message)>,
    shell: BTreeMap<(u64, u64), Shell>,
    seq: u64,
    pub job: JobModel,
    pub dest_store: HashSet<ChunkId>,
    pub initial_dest_store: HashSet<ChunkId>,
    /// Every chunk the destination fetched, in order.
    pub fetched: Vec<ChunkId>,
    /// Post-copy: chunks the destination restores without and pulls after resuming.
    pub deferred: Vec<ChunkId>,
    /// Rounds the destination asked its shell to fetch.
    pub fetch_rounds: Vec<u32>,
    manifests: HashMap<ChunkId, StateMap>,
    pub s_running: bool,
    pub s_holds: bool,
    pub d_running: bool,
    pub d_restored: bool,
    pub d_ever_ran: bool,
    pub handover_recorded: bool,
    /// When the source was asked to pause, and when the destination started.
    pub paused_at: Option<u64>,
    pub started_at: Option<u64>,
    pub src_outcomes: Vec<Outcome>,
    pub dst_outcomes: Vec<Outcome>,
    pub errors: Vec<(Node, MigrateError)>,
    /// Errors the harness provoked itself (a cancel after Go).
    pub expected_errors: Vec<(Node, MigrateError)>,
    pub violations: Vec<String>,
    /// Messages put on the wire: (time, from, name, dropped).
    pub log: Vec<(u64, Node, &'static str, bool)>,
    pub rounds_in_messages: Vec<(u32, Vec<ChunkId>)>,
    cut: bool,
    rng: Rng,
    /// Whether the run ended with nothing left to do.
    pub quiescent: bool,
}

impl Sim {
    pub fn new(p: Params) -> Sim {
        let job = JobModel::new(&p);
        let init = job.state();
        let mut dest_store = HashSet::new();
        match p.preload {
            Preload::Nothing => {}
            Preload::Module => dest_store.extend(init.module.map.chunks.iter().map(|c| c.1)),
            Preload::ModuleAndHalf => {
                dest_store.extend(init.module.map.chunks.iter().map(|c| c.1));
                dest_store.extend(
                    init.memory
                        .chunks
                        .iter()
                        .filter(|(i, _)| i % 2 == 0)
                        .map(|c| c.1),
                );
            }
            Preload::Everything => {
                dest_store.extend(init.distinct_chunks().iter().map(|c| c.id));
            }
        }
        let rng = Rng::new(p.seed);
        let mut sim = Sim {
            now: 0,
            src: None,
            dst: None,
            src_dead: false,
            dst_dead: false,
            net: BTreeMap::new(),
            shell: BTreeMap::new(),
            seq: 0,
            initial_dest_store: dest_store.clone(),
            dest_store,
            fetched: Vec::new(),
            deferred: Vec::new(),
            fetch_rounds: Vec::new(),
            manifests: HashMap::new(),
            s_running: true,
            s_holds: true,
            d_running: false,
            d_restored: false,
            d_ever_ran: false,
            handover_recorded: false,
            paused_at: None,
            started_at: None,
            src_outcomes: Vec::new(),
            dst_outcomes: Vec::new(),
            errors: Vec::new(),
            expected_errors: Vec::new(),
            violations: Vec::new(),
            log: Vec::new(),
            rounds_in_messages: Vec::new(),
            cut: false,
            rng,
            quiescent: false,
            job,
            p,
        };
        let mut src = Source::new(sim.p.src.clone(), MIG, "job-a".into(), GENERATION, init, 0)
            .expect("valid source");
        if sim.p.shell_dirty_estimate.is_some() {
            src.handle_event(
                0,
                SourceEvent::Estimates {
                    link_bandwidth_bytes_per_s: None,
                    dirty_bytes_per_s: sim.p.shell_dirty_estimate,
                },
            )
            .expect("estimates");
        }
        sim.src = Some(src);
        sim.drain();
        sim
    }

    fn push_shell(&mut self, at: u64, s: Shell) {
        self.seq += 1;
        self.shell.insert((at, self.seq), s);
    }

    fn push_net(&mut self, at: u64, to: Node, m: Message) {
        self.seq += 1;
        self.net.insert((at, self.seq), (to, m));
    }

    fn crash(&mut self, node: Node) {
        match node {
            Node::Dst => {
                self.dst = None;
                self.dst_dead = true;
                self.d_running = false;
                self.d_restored = false;
            }
            Node::Src => {
                self.src = None;
                self.src_dead = true;
                self.s_running = false;
                self.s_holds = false;
            }
        }
        self.shell.retain(|_, s| match node {
            Node::Dst => matches!(s, Shell::Src(_) | Shell::SrcPauseDone),
            Node::Src => !matches!(s, Shell::Src(_) | Shell::SrcPauseDone),
        });
    }

    fn wire(&mut self, from: Node, m: Message) {
        let n = self.log.len();
        match self.p.fault {
            Fault::DestCrash(k) if k == n => self.crash(Node::Dst),
            Fault::SrcCrash(k) if k == n => self.crash(Node::Src),
            Fault::SrcCancel(k) if k == n => {
                self.push_shell(self.now, Shell::Src(SourceEvent::Cancel))
            }
            Fault::DestCancel(k) if k == n => {
                self.push_shell(self.now, Shell::Dst(DestEvent::Cancel))
            }
            Fault::CutFrom(k) if k == n => self.cut = true,
            _ => {}
        }
        if let migrate::Body::Round { round, chunks, .. } = &m.body {
            if from == Node::Src {
                self.rounds_in_messages
                    .push((*round, chunks.iter().map(|c| c.id).collect()));
            }
        }
        let from_dead = match from {
            Node::Src => self.src_dead,
            Node::Dst => self.dst_dead,
        };
        let dropped = from_dead
            || self.cut
            || self.p.fault == Fault::DropOnce(n)
            || self.rng.chance(self.p.chaos.loss);
        self.log.push((self.now, from, m.body.name(), dropped));
        if dropped {
            return;
        }
        let to = match from {
            Node::Src => Node::Dst,
            Node::Dst => Node::Src,
        };
        let jitter = if self.p.chaos.jitter_ms > 0 {
            self.rng.below(self.p.chaos.jitter_ms + 1)
        } else {
            0
        };
        let mut at = self.now + self.p.latency_ms + jitter;
        if let Fault::Delay(k, d) = self.p.fault {
            if k == n {
                at += d;
            }
        }
        if self.p.fault == Fault::Duplicate(n) || self.rng.chance(self.p.chaos.dup) {
            let extra = 300 + self.rng.below(self.p.chaos.jitter_ms + 1);
            self.push_net(at + extra, to, m.clone());
        }
        self.push_net(at, to, m);
    }

    fn record(&mut self, node: Node, r: Result<(), MigrateError>) {
        if let Err(e) = r {
            self.errors.push((node, e));
        }
    }

    /// Carry out every queued action of both cores.
    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(a) = self.src.as_mut().and_then(|s| s.poll_action()) {
                progressed = true;
                self.src_action(a);
            }
            while let Some(a) = self.dst.as_mut().and_then(|d| d.poll_action()) {
                progressed = true;
                self.dst_action(a);
            }
            if !progressed {
                break;
            }
        }
    }

    fn src_action(&mut self, a: SourceAction) {
        let now = self.now;
        match a {
            SourceAction::Send(m) => self.wire(Node::Src, m),
            SourceAction::Checkpoint { round } => {
                self.job.advance(now, self.s_running);
                let state = self.job.state();
                self.push_shell(
                    now + 1,
                    Shell::Src(SourceEvent::Checkpointed { round, state }),
                );
            }
            SourceAction::PauseJob => {
                self.paused_at = Some(now);
                if !self.s_running {
                    self.violations
                        .push(format!("{now}: PauseJob while not running"));
                }
                if self.p.fault == Fault::PauseFails {
                    self.push_shell(now + 2, Shell::Src(SourceEvent::PauseFailed));
                } else {
                    self.push_shell(now + 2, Shell::SrcPauseDone);
                }
            }
            SourceAction::ResumeJob => {
                if !self.s_holds {
                    self.violations
                        .push(format!("{now}: source resumes a dropped job"));
                }
                if self.s_running {
                    self.violations
                        .push(format!("{now}: source resumes a running job"));
                }
                self.job.advance(now, false);
                self.s_running = true;
            }
            SourceAction::RecordHandover => self.handover_recorded = true,
            SourceAction::DropJob => {
                if self.s_running {
                    self.violations
                        .push(format!("{now}: source drops a running job"));
                }
                self.s_holds = false;
            }
            SourceAction::Escalate => {
                if self.s_running {
                    self.violations
                        .push(format!("{now}: escalates while running"));
                }
            }
            SourceAction::Finished(o) => self.src_outcomes.push(o),
        }
    }

    fn dst_action(&mut self, a: DestAction) {
        let now = self.now;
        match a {
            DestAction::Send(m) => self.wire(Node::Dst, m),
            DestAction::Fetch { round, chunks, .. } => {
                self.fetch_rounds.push(round);
                let mut bytes = 0u64;
                for c in &chunks {
                    if self.dest_store.contains(&c.id) {
                        self.violations
                            .push(format!("{now}: chunk {} re-sent (already stored)", c.id));
                    }
                    bytes += c.len as u64;
                    self.fetched.push(c.id);
                }
                let t = now + self.p.latency_ms * 2 + bytes * 1000 / self.p.bandwidth.max(1);
                if let Some(every) = self.p.progress_every_ms.filter(|e| *e > 0) {
                    let mut at = now + every;
                    while at < t {
                        let done = (at - now) * self.p.bandwidth / 1000;
                        self.push_shell(
                            at,
                            Shell::Dst(DestEvent::Progress {
                                round,
                                bytes: done.min(bytes),
                            }),
                        );
                        at += every;
                    }
                }
                if self.p.fault == Fault::FetchFails(round) {
                    self.push_shell(t, Shell::Dst(DestEvent::FetchFailed { round }));
                } else {
                    let ids = chunks.iter().map(|c| c.id).collect();
                    self.push_shell(t, Shell::DstFetched { round, ids });
                }
            }
            DestAction::VerifyAndRestore {
                manifest_id,
                manifest,
                decoded,
            } => {
                let hashes = ChunkId::of(&manifest) == manifest_id
                    && store::Manifest::decode(&manifest).is_ok_and(|m| m == *decoded);
                self.push_shell(
                    now + 1,
                    Shell::Verify {
                        manifest_id,
                        hashes,
                    },
                );
            }
            // Post-copy: restored without these; pulled once the job runs (not
            // simulated further: the lazy fill is wasm-host's and the node's).
            DestAction::Defer { chunks, .. } => {
                if self.p.src.postcopy.requested == migrate::RequestedMode::Auto
                    && !self.p.src.postcopy.available
                {
                    self.violations
                        .push(format!("{now}: chunks deferred without post-copy"));
                }
                self.deferred.extend(chunks.iter().map(|c| c.id));
            }
            DestAction::ResumeJob { generation, .. } => {
                if !self.d_restored {
                    self.violations
                        .push(format!("{now}: destination runs an unrestored job"));
                }
                if self.d_running {
                    self.violations
                        .push(format!("{now}: destination starts the job twice"));
                }
                if generation != GENERATION + 1 {
                    self.violations
                        .push(format!("{now}: destination runs generation {generation}"));
                }
                self.d_running = true;
                self.d_ever_ran = true;
                self.started_at = Some(now);
            }
            DestAction::DiscardRestored => {
                if self.d_running {
                    self.violations
                        .push(format!("{now}: destination discards a running job"));
                }
                self.d_restored = false;
            }
            DestAction::Finished(o) => self.dst_outcomes.push(o),
        }
    }

    fn deliver(&mut self, to: Node, m: Message) {
        let now = self.now;
        match to {
            Node::Src => {
                if let Some(s) = self.src.as_mut() {
                    let r = s.handle_message(now, m);
                    self.record(Node::Src, r);
                }
            }
            Node::Dst => {
                if self.dst_dead {
                    return;
                }
                match self.dst.as_mut() {
                    Some(d) => {
                        let r = d.handle_message(now, m);
                        self.record(Node::Dst, r);
                    }
                    // The shell only creates a core for an Offer; anything
                    // else for an unknown migration is dropped.
                    None if !matches!(m.body, migrate::Body::Offer(_)) => {}
                    None => {
                        let store = &self.dest_store;
                        match Destination::accept(self.p.dst.clone(), now, &m, None, |id| {
                            store.contains(id)
                        }) {
                            Ok(d) => self.dst = Some(d),
                            Err(e) => self.errors.push((Node::Dst, e)),
                        }
                    }
                }
            }
        }
    }

    fn shell_event(&mut self, s: Shell) {
        let now = self.now;
        match s {
            Shell::Src(ev) => {
                if let Some(src) = self.src.as_mut() {
                    let cancel = ev == SourceEvent::Cancel;
                    let r = src.handle_event(now, ev);
                    match r {
                        Err(e @ MigrateError::TooLateToCancel) if cancel => {
                            self.expected_errors.push((Node::Src, e))
                        }
                        r => self.record(Node::Src, r),
                    }
                }
            }
            Shell::SrcPauseDone => {
                self.job.advance(now, self.s_running);
                self.s_running = false;
                let state = self.job.state();
                // A real manifest (the destination rebuilds it from the Final's
                // patch and the offer, and checks its hash).
                let paused = paused_event(&state, now);
                if let SourceEvent::Paused { manifest_id, .. } = &paused {
                    self.manifests.insert(*manifest_id, state.clone());
                }
                if let Some(src) = self.src.as_mut() {
                    let r = src.handle_event(now, paused);
                    self.record(Node::Src, r);
                }
            }
            Shell::Dst(ev) => {
                if let Some(d) = self.dst.as_mut() {
                    let cancel = ev == DestEvent::Cancel;
                    match d.handle_event(now, ev) {
                        Err(e @ MigrateError::TooLateToCancel) if cancel => {
                            self.expected_errors.push((Node::Dst, e))
                        }
                        r => self.record(Node::Dst, r),
                    }
                }
            }
            Shell::DstFetched { round, ids } => {
                self.dest_store.extend(ids);
                if let Some(d) = self.dst.as_mut() {
                    let r = d.handle_event(now, DestEvent::Fetched { round });
                    self.record(Node::Dst, r);
                }
            }
            Shell::Verify {
                manifest_id,
                hashes,
            } => {
                if !hashes {
                    self.violations.push(format!(
                        "{now}: restore asked with a manifest not matching its id"
                    ));
                }
                let ok = self.p.fault != Fault::VerifyFails
                    && self.manifests.get(&manifest_id).is_some_and(|st| {
                        st.distinct_chunks().iter().all(|c| {
                            self.dest_store.contains(&c.id) || self.deferred.contains(&c.id)
                        })
                    });
                if ok {
                    self.d_restored = true;
                }
                if let Some(d) = self.dst.as_mut() {
                    let ev = if ok {
                        DestEvent::Restored
                    } else {
                        DestEvent::RestoreFailed
                    };
                    let r = d.handle_event(now, ev);
                    self.record(Node::Dst, r);
                }
            }
        }
    }

    fn check(&mut self) {
        if self.s_running && self.d_running {
            self.violations
                .push(format!("{}: the job runs at both nodes", self.now));
        }
    }

    /// Run until nothing is left to do or `limit_ms` of simulated time.
    pub fn run(&mut self, limit_ms: u64) {
        loop {
            self.check();
            let net = self.net.keys().next().copied();
            let shell = self.shell.keys().next().copied();
            let ts = self.src.as_ref().and_then(|s| s.poll_timeout());
            let td = self.dst.as_ref().and_then(|d| d.poll_timeout());
            let candidates = [
                net.map(|k| (k.0, 0, k.1)),
                shell.map(|k| (k.0, 0, k.1)),
                ts.map(|t| (t, 1, 0)),
                td.map(|t| (t, 2, 0)),
            ];
            let Some(&(t, kind, seq)) = candidates.iter().flatten().min() else {
                self.quiescent = true;
                return;
            };
            if t > limit_ms {
                return;
            }
            self.now = self.now.max(t);
            match kind {
                0 => {
                    if let Some((to, m)) = self.net.remove(&(t, seq)) {
                        self.deliver(to, m);
                    } else if let Some(s) = self.shell.remove(&(t, seq)) {
                        self.shell_event(s);
                    }
                }
                1 => {
                    if let Some(s) = self.src.as_mut() {
                        s.handle_timeout(t);
                    }
                }
                _ => {
                    if let Some(d) = self.dst.as_mut() {
                        d.handle_timeout(t);
                    }
                }
            }
            self.drain();
        }
    }

    pub fn src_phase(&self) -> Option<SourcePhase> {
        self.src.as_ref().map(|s| s.phase())
    }

    pub fn dst_phase(&self) -> Option<DestPhase> {
        self.dst.as_ref().map(|d| d.phase())
    }

    pub fn final_src_outcome(&self) -> Option<Outcome> {
        self.src_outcomes.last().copied()
    }

    /// Index of the first message with this name in the log.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.log.iter().position(|e| e.2 == name)
    }

    /// Every check that holds whatever the fault: the invariant, no
    /// protocol errors between two honest peers, and the bookkeeping of each
    /// outcome. Returns a description of what failed.
    pub fn assert_sound(&self, what: &str) {
        assert!(
            self.violations.is_empty(),
            "{what}: violations {:?}\nlog {:?}",
            self.violations,
            self.log
        );
        assert!(
            self.errors.is_empty(),
            "{what}: protocol errors between honest peers {:?}\nlog {:?}",
            self.errors,
            self.log
        );
        assert!(self.quiescent, "{what}: did not settle; log {:?}", self.log);
        assert!(!(self.s_running && self.d_running), "{what}: runs twice");
        if self.src_dead {
            return;
        }
        let src_phase = self.src_phase();
        match self.final_src_outcome() {
            Some(Outcome::Committed) => {
                assert_eq!(src_phase, Some(SourcePhase::Committed), "{what}");
                assert!(
                    !self.s_holds && !self.s_running,
                    "{what}: source kept the job"
                );
                assert!(self.handover_recorded, "{what}: Go without RecordHandover");
                assert!(self.d_ever_ran, "{what}: committed but never started there");
                if !self.dst_dead {
                    assert!(self.d_running, "{what}: committed, destination not running");
                    assert_eq!(self.dst_phase(), Some(DestPhase::Running), "{what}");
                }
            }
            Some(Outcome::Aborted(_)) => {
                assert_eq!(src_phase, Some(SourcePhase::Aborted), "{what}");
                assert!(
                    self.s_running && self.s_holds,
                    "{what}: aborted, source not running"
                );
                assert!(
                    !self.d_ever_ran,
                    "{what}: aborted but the destination ran it"
                );
                assert!(!self.d_restored, "{what}: a restored copy was left behind");
                if let Some(p) = self.dst_phase() {
                    assert_eq!(p, DestPhase::Aborted, "{what}: destination left in {p:?}");
                }
            }
            Some(Outcome::Escalated) => {
                assert_eq!(src_phase, Some(SourcePhase::Escalated), "{what}");
                assert!(
                    !self.s_running && self.s_holds,
                    "{what}: escalated but running"
                );
            }
            None => panic!("{what}: source never finished; log {:?}", self.log),
        }
        // At least one node runs the job, unless the source escalated (or a
        // node crashed, handled above / by the caller).
        if self.final_src_outcome() != Some(Outcome::Escalated) && !self.dst_dead {
            assert!(
                self.s_running ^ self.d_running,
                "{what}: runs at {} nodes",
                self.s_running as u8 + self.d_running as u8
            );
        }
    }
}

pub fn aborted(reason: AbortReason) -> Option<Outcome> {
    Some(Outcome::Aborted(reason))
}
