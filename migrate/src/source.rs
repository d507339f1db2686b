//! The source side: the node that runs the job and wants to move it.

use std::collections::VecDeque;

use crate::ids::FastSet;

use store::{ChunkId, ChunkMap, Manifest};

use crate::adapt::{
    choose_compression_with, choose_mode, effective_rate, precopy_stop, transfer_ms, LevelProfile,
    MoveMode, PostcopyPolicy, PrecopyPolicy, RoundFacts, StopReason, ZSTD_PROFILES,
};
use crate::error::MigrateError;
use crate::msg::{
    AbortReason, Body, ChunkRef, Compression, Deferral, Message, MigrationId, Offer, Outcome,
    StateMap, MAX_ROUNDS,
};
use crate::patch::ManifestPatch;

/// Knobs of the source. `Default` suits a LAN of edge nodes.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceConfig {
    pub precopy: PrecopyPolicy,
    /// Link bandwidth (bytes/s) until the shell reports an estimate.
    pub link_bandwidth_bytes_per_s: u64,
    /// Dirty rate (bytes/s) until the shell reports or a round measures one.
    pub dirty_bytes_per_s: u64,
    /// Spare CPU for compression, in x86-core equivalents (see `adapt`).
    pub compression_cores: f64,
    /// The zstd level table compression is chosen from.
    pub compression_profiles: Vec<LevelProfile>,
    /// First retransmission of an unanswered message after this long; the
    /// interval doubles up to `max_retransmit_ms`.
    pub retransmit_ms: u64,
    pub max_retransmit_ms: u64,
    /// How long to wait for a reply, on top of twice the expected transfer
    /// time of the chunks the destination must fetch first.
    pub reply_timeout_ms: u64,
    /// How long to retransmit Go before escalating.
    pub handover_timeout_ms: u64,
    /// Pre-copy, post-copy or hybrid, and whether the destination can do post-copy.
    pub postcopy: PostcopyPolicy,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            precopy: PrecopyPolicy {
                max_rounds: 8,
                // MOSE's end-to-end bound for a drone autopilot.
                downtime_target_ms: 50,
                min_shrink_permille: 900,
            },
            link_bandwidth_bytes_per_s: 12_500_000, // 100 Mbit/s
            dirty_bytes_per_s: 0,
            compression_cores: 1.0,
            compression_profiles: ZSTD_PROFILES.to_vec(),
            retransmit_ms: 200,
            max_retransmit_ms: 1_600,
            reply_timeout_ms: 3_000,
            handover_timeout_ms: 5_000,
            postcopy: PostcopyPolicy::default(),
        }
    }
}

impl SourceConfig {
    pub fn validate(&self) -> Result<(), MigrateError> {
        if self.precopy.max_rounds > MAX_ROUNDS {
            return Err(MigrateError::Config(
                "max_rounds must be 0 (stop-and-copy) ..= MAX_ROUNDS",
            ));
        }
        if self.precopy.min_shrink_permille == 0 || self.precopy.min_shrink_permille > 1000 {
            return Err(MigrateError::Config("min_shrink_permille must be 1..=1000"));
        }
        if self.retransmit_ms == 0 || self.max_retransmit_ms < self.retransmit_ms {
            return Err(MigrateError::Config(
                "retransmit_ms must be > 0 and <= max_retransmit_ms",
            ));
        }
        if self.reply_timeout_ms <= self.retransmit_ms || self.handover_timeout_ms == 0 {
            return Err(MigrateError::Config(
                "reply_timeout_ms must exceed retransmit_ms; handover_timeout_ms must be > 0",
            ));
        }
        if self.link_bandwidth_bytes_per_s == 0 {
            return Err(MigrateError::Config(
                "link_bandwidth_bytes_per_s must be > 0",
            ));
        }
        if !self.compression_cores.is_finite() {
            return Err(MigrateError::Config("compression_cores must be finite"));
        }
        Ok(())
    }
}

/// What the source's shell tells the core.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceEvent {
    /// New estimates (LinkMonitor, dirty tracking); `None` keeps the old one.
    Estimates {
        link_bandwidth_bytes_per_s: Option<u64>,
        dirty_bytes_per_s: Option<u64>,
    },
    /// Answer to [`SourceAction::Checkpoint`]: the chunk map of a new
    /// (incremental) checkpoint taken while the job keeps running.
    Checkpointed { round: u32, state: StateMap },
    /// Answer to [`SourceAction::PauseJob`]: the job is paused and this is its
    /// final checkpoint (its manifest, and the id of the manifest as stored).
    Paused {
        manifest: Box<Manifest>,
        manifest_id: ChunkId,
    },
    /// Answer to [`SourceAction::PauseJob`]: the job was not paused (the
    /// shell withdrew the request, or the job ended or trapped meanwhile);
    /// whatever it was doing, it goes on doing here.
    PauseFailed,
    /// Call the migration off. Refused with [`MigrateError::TooLateToCancel`]
    /// once Go was sent.
    Cancel,
}

/// What the source core asks its shell to do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceAction {
    /// Send to the destination.
    Send(Message),
    /// Take an incremental checkpoint without stopping the job for longer than
    /// a checkpoint takes; answer with [`SourceEvent::Checkpointed`].
    Checkpoint { round: u32 },
    /// Pause the job and checkpoint it; answer with [`SourceEvent::Paused`] or
    /// [`SourceEvent::PauseFailed`].
    PauseJob,
    /// Run the paused job again here (the migration aborted).
    ResumeJob,
    /// Make durable that this job's generation was handed over, before the
    /// next action (the Go, or a post-copy Final) leaves: a restarted source must
    /// treat the job as escalated, never resume it on its own.
    RecordHandover,
    /// The destination runs the job at generation + 1: forget it here.
    DropJob,
    /// Go was sent and neither an ack nor an Abort came back: keep the job
    /// paused (never resume it), hand it to crash recovery.
    Escalate,
    /// The migration ended (see [`Outcome`]). After `Escalated` a later
    /// `Committed` or `Aborted` may still follow.
    Finished(Outcome),
}

/// Where the source is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourcePhase {
    /// Offer sent, waiting for Have. Job runs here.
    Offering,
    /// Round sent, waiting for its ack. Job runs here.
    PreCopy { round: u32 },
    /// Waiting for the shell's checkpoint after round `round`. Job runs here.
    Checkpointing { round: u32 },
    /// PauseJob asked, waiting for the shell.
    Pausing,
    /// Final sent, job paused here, waiting for Ready.
    AwaitReady,
    /// Go (or a post-copy Final) sent: the job stays paused here unless the
    /// destination aborts.
    HandedOver,
    /// Go unanswered: paused here, crash recovery decides.
    Escalated,
    /// Job dropped here; the destination owns it.
    Committed,
    /// Job runs here; the destination never started it.
    Aborted,
}

impl SourcePhase {
    fn name(self) -> &'static str {
        match self {
            SourcePhase::Offering => "Offering",
            SourcePhase::PreCopy { .. } => "PreCopy",
            SourcePhase::Checkpointing { .. } => "Checkpointing",
            SourcePhase::Pausing => "Pausing",
            SourcePhase::AwaitReady => "AwaitReady",
            SourcePhase::HandedOver => "HandedOver",
            SourcePhase::Escalated => "Escalated",
            SourcePhase::Committed => "Committed",
            SourcePhase::Aborted => "Aborted",
        }
    }
}

/// One pre-copy round as it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundReport {
    pub round: u32,
    pub chunks: usize,
    pub bytes: u64,
    pub compression: Compression,
    /// From first send to ack.
    pub duration_ms: u64,
}

/// What the source measured and decided (for logs and benchmarks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceReport {
    pub offered_bytes: u64,
    /// Bytes the destination already had when offered.
    pub present_bytes: u64,
    pub rounds: Vec<RoundReport>,
    pub stop: Option<StopReason>,
    /// Chunks and bytes sent while the job was paused.
    pub final_chunks: usize,
    pub final_bytes: u64,
    /// Effective throughput and dirty-rate estimates at the end (bytes/s).
    pub throughput: u64,
    pub dirty_rate: u64,
    /// How memory was copied (chosen at the start, revised after round 1).
    pub mode: MoveMode,
    /// Post-copy: chunks and bytes the destination fetches after it resumed the job.
    pub deferred_chunks: usize,
    pub deferred_bytes: u64,
    /// Size of the Final's manifest patch (its head's encoding plus ~9 bytes per zeroed
    /// slot; sent while the job is paused).
    pub manifest_patch_bytes: usize,
    /// From the GoAck: how long the destination took from the handover to the
    /// resume (its restore, after a post-copy Final).
    pub dest_held_ms: u64,
}

/// The source's state machine. Feed it messages, shell events and timeouts;
/// drain [`Source::poll_action`] after each call.
#[derive(Debug)]
pub struct Source {
    cfg: SourceConfig,
    migration: MigrationId,
    generation: u64,
    phase: SourcePhase,
    /// Distinct chunks of the offer (a Have may only name these).
    offered: Vec<ChunkRef>,
    offered_ids: FastSet,
    /// Chunks the destination holds: its Have plus every acknowledged round.
    at_dest: FastSet,
    /// The round in flight.
    rounds_sent: u32,
    round_chunks: Vec<ChunkRef>,
    round_bytes: u64,
    round_sent_at: u64,
    round_compression: Compression,
    /// When the state the last dirty set was computed from was captured.
    last_state_at: u64,
    link_bw: u64,
    dirty_rate: u64,
    /// `dirty_rate` comes from a measurement (else from config or the shell).
    dirty_measured: bool,
    /// Effective throughput measured by rounds (None until one was measured).
    measured_throughput: Option<u64>,
    /// The job is paused here by this migration.
    paused: bool,
    /// Aborted while a PauseJob was in progress: resume when it completes.
    resume_when_paused: bool,
    /// What the shell last said of the node's view of the swarm (see
    /// [`Source::set_majority_in_sight`]).
    majority_in_sight: bool,
    abort_reason: Option<AbortReason>,
    outstanding: Option<Message>,
    next_retransmit: Option<u64>,
    backoff: u64,
    deadline: Option<u64>,
    actions: VecDeque<SourceAction>,
    report: SourceReport,
    mode: MoveMode,
    /// The offered memory map: the base of the Final's manifest patch.
    offered_memory: ChunkMap,
    /// The memory map of the newest checkpoint taken during the move (slots that
    /// differ from it at the pause are the hottest).
    last_memory: Option<ChunkMap>,
    /// Offered chunks that are only memory (a post-copy leaves them for after the
    /// resume; the module and files go first).
    memory_only: FastSet,
}

fn ewma(old: Option<u64>, new: u64) -> u64 {
    match old {
        None => new,
        Some(o) => o / 2 + new / 2,
    }
}

impl Source {
    /// Start migrating `job` (now at `generation`) whose newest checkpoint is
    /// `state`. The first action is the Offer.
    pub fn new(
        cfg: SourceConfig,
        migration: MigrationId,
        job: String,
        generation: u64,
        state: StateMap,
        now: u64,
    ) -> Result<Source, MigrateError> {
        cfg.validate()?;
        let offered = state.distinct_chunks();
        let elsewhere: FastSet = std::iter::once(&state.module.map)
            .chain(state.extra.iter().map(|b| &b.map))
            .flat_map(|m| m.chunks.iter().map(|(_, id)| *id))
            .collect();
        let memory_only: FastSet = state
            .memory
            .chunks
            .iter()
            .map(|(_, id)| *id)
            .filter(|id| !elsewhere.contains(id))
            .collect();
        let offered_memory = state.memory.clone();
        let offer = Message {
            migration,
            generation,
            body: Body::Offer(Box::new(Offer { job, state })),
        };
        offer.validate()?;
        let mut s = Source {
            migration,
            generation,
            phase: SourcePhase::Offering,
            offered_ids: offered.iter().map(|c| c.id).collect(),
            offered,
            at_dest: FastSet::default(),
            rounds_sent: 0,
            round_chunks: Vec::new(),
            round_bytes: 0,
            round_sent_at: now,
            round_compression: Compression::None,
            last_state_at: now,
            link_bw: cfg.link_bandwidth_bytes_per_s,
            dirty_rate: cfg.dirty_bytes_per_s,
            dirty_measured: false,
            measured_throughput: None,
            paused: false,
            resume_when_paused: false,
            majority_in_sight: true,
            abort_reason: None,
            outstanding: None,
            next_retransmit: None,
            backoff: cfg.retransmit_ms,
            deadline: None,
            actions: VecDeque::new(),
            report: SourceReport {
                offered_bytes: 0,
                ..SourceReport::default()
            },
            mode: MoveMode::PreCopy,
            offered_memory,
            last_memory: None,
            memory_only,
            cfg,
        };
        s.report.offered_bytes = s.offered.iter().map(|c| c.len as u64).sum();
        s.mode = s.choose_mode();
        let deadline = now.saturating_add(s.cfg.reply_timeout_ms);
        s.send_tracked(now, offer, deadline, 0);
        Ok(s)
    }

    pub fn migration(&self) -> MigrationId {
        self.migration
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn phase(&self) -> SourcePhase {
        self.phase
    }

    /// Whether this node sees a strict majority of the swarm's members (true until
    /// said otherwise). Without one the handover is refused: the move aborts with
    /// [`AbortReason::NoMajority`] and the job stays here, so a node cut off into a
    /// minority never starts a new generation of a job on the other side of its own
    /// partition while the majority may be recovering it (two new histories of the
    /// job at once). The shell says it before feeding each event.
    pub fn set_majority_in_sight(&mut self, yes: bool) {
        self.majority_in_sight = yes;
    }

    /// How this move copies memory (as chosen so far).
    pub fn mode(&self) -> MoveMode {
        self.mode
    }

    pub fn report(&self) -> SourceReport {
        let mut r = self.report.clone();
        r.throughput = self.throughput();
        r.mode = self.mode;
        r.dirty_rate = self.dirty_rate;
        r
    }

    /// The next thing the shell must do.
    pub fn poll_action(&mut self) -> Option<SourceAction> {
        self.actions.pop_front()
    }

    /// When [`Source::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<u64> {
        match (self.deadline, self.next_retransmit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Effective throughput: measured by rounds, else the model's prediction
    /// for the link and the compression it would pick.
    fn throughput(&self) -> u64 {
        self.measured_throughput.unwrap_or_else(|| {
            let c = self.compression();
            effective_rate(
                &self.cfg.compression_profiles,
                self.link_bw,
                self.cfg.compression_cores,
                c,
            )
        })
    }

    fn compression(&self) -> Compression {
        choose_compression_with(
            &self.cfg.compression_profiles,
            self.link_bw,
            self.cfg.compression_cores,
        )
    }

    /// Send `msg` and resend it until answered or `deadline`; the first
    /// resend waits `expect_ms` (the time the answer needs, e.g. the
    /// destination's fetch) on top of the backoff.
    fn send_tracked(&mut self, now: u64, msg: Message, deadline: u64, expect_ms: u64) {
        self.actions.push_back(SourceAction::Send(msg.clone()));
        self.outstanding = Some(msg);
        self.backoff = self.cfg.retransmit_ms;
        self.next_retransmit = Some(now.saturating_add(expect_ms).saturating_add(self.backoff));
        self.deadline = Some(deadline);
    }

    fn stop_timers(&mut self) {
        self.outstanding = None;
        self.next_retransmit = None;
        self.deadline = None;
    }

    fn msg(&self, body: Body) -> Message {
        Message {
            migration: self.migration,
            generation: self.generation,
            body,
        }
    }

    /// Abort before the handover, or after it on the destination's Abort.
    /// Never called in `HandedOver`/`Escalated` for any other reason: that is
    /// the whole safety argument (see the crate doc).
    fn abort(&mut self, reason: AbortReason, tell_peer: bool) {
        if self.paused {
            self.paused = false;
            self.actions.push_back(SourceAction::ResumeJob);
        }
        if self.phase == SourcePhase::Pausing {
            self.resume_when_paused = true;
        }
        if tell_peer {
            let m = self.msg(Body::Abort { reason });
            self.actions.push_back(SourceAction::Send(m));
        }
        self.stop_timers();
        self.phase = SourcePhase::Aborted;
        self.abort_reason = Some(reason);
        self.actions
            .push_back(SourceAction::Finished(Outcome::Aborted(reason)));
    }

    /// The destination is still talking about a migration we aborted.
    fn reply_abort(&mut self) {
        let reason = self.abort_reason.unwrap_or(AbortReason::Cancelled);
        let m = self.msg(Body::Abort { reason });
        self.actions.push_back(SourceAction::Send(m));
    }

    fn start_round(&mut self, now: u64, round: u32, chunks: Vec<ChunkRef>) {
        let bytes: u64 = chunks.iter().map(|c| c.len as u64).sum();
        let compression = self.compression();
        let expect = transfer_ms(bytes, self.throughput());
        let deadline = now
            .saturating_add(self.cfg.reply_timeout_ms)
            .saturating_add(expect.saturating_mul(2));
        self.rounds_sent = round;
        self.round_bytes = bytes;
        self.round_sent_at = now;
        self.round_compression = compression;
        let m = self.msg(Body::Round {
            round,
            chunks: chunks.clone(),
            compression,
        });
        self.round_chunks = chunks;
        self.phase = SourcePhase::PreCopy { round };
        self.send_tracked(now, m, deadline, expect);
    }

    /// Distinct chunks of `state` the destination lacks.
    fn choose_mode(&self) -> MoveMode {
        choose_mode(
            &self.cfg.postcopy,
            self.report.offered_bytes,
            self.dirty_rate,
            self.throughput(),
            self.cfg.precopy.downtime_target_ms,
        )
    }

    /// The chunks the Final carries, and (post-copy, hybrid) the memory chunks it
    /// defers with the hot slots to fetch first: the module and files go before the
    /// job resumes; memory goes after, the slots written most recently first (those
    /// that changed since the last checkpoint of the move, then since the offer; the
    /// job's first touches pull what it needs even sooner). Sending hot chunks before
    /// the resume would only add their transfer to the downtime.
    fn final_split(&self, state: &StateMap) -> (Vec<ChunkRef>, Vec<ChunkRef>, Vec<u64>) {
        let all = self.missing(state);
        if self.mode == MoveMode::PreCopy {
            return (all, Vec::new(), Vec::new());
        }
        let memory: FastSet = state.memory.chunks.iter().map(|(_, id)| *id).collect();
        let elsewhere: FastSet = std::iter::once(&state.module.map)
            .chain(state.extra.iter().map(|b| &b.map))
            .flat_map(|m| m.chunks.iter().map(|(_, id)| *id))
            .collect();
        let (now, deferred): (Vec<ChunkRef>, Vec<ChunkRef>) = all
            .into_iter()
            .partition(|c| elsewhere.contains(&c.id) || !memory.contains(&c.id));
        let deferred_ids: FastSet = deferred.iter().map(|c| c.id).collect();
        let mut hot = Vec::new();
        let mut listed = FastSet::default();
        for base in [self.last_memory.as_ref(), Some(&self.offered_memory)]
            .into_iter()
            .flatten()
        {
            for (slot, id) in &state.memory.chunks {
                if deferred_ids.contains(id) && base.get(*slot) != Some(*id) && listed.insert(*slot)
                {
                    hot.push(*slot);
                }
            }
        }
        (now, deferred, hot)
    }

    fn missing(&self, state: &StateMap) -> Vec<ChunkRef> {
        state
            .distinct_chunks()
            .into_iter()
            .filter(|c| !self.at_dest.contains(&c.id))
            .collect()
    }

    /// A message from the destination.
    pub fn handle_message(&mut self, now: u64, msg: Message) -> Result<(), MigrateError> {
        msg.check_addressed_to(self.migration, self.generation)?;
        let phase = self.phase;
        let unexpected = |what| MigrateError::Unexpected {
            what,
            phase: phase.name(),
        };
        match msg.body {
            Body::Offer(_) | Body::Round { .. } | Body::Final { .. } | Body::Go => {
                Err(MigrateError::WrongDirection {
                    message: msg.body.name(),
                    role: "source",
                })
            }
            Body::Have { have, lazy } => {
                match phase {
                    SourcePhase::Offering => {
                        if let Some(id) = have.iter().find(|id| !self.offered_ids.contains(id)) {
                            return Err(MigrateError::NotOffered(*id));
                        }
                        if !lazy {
                            // The destination cannot restore without the memory (no
                            // userfaultfd there): nothing is sent yet, so the move
                            // becomes pre-copy, even when post-copy was asked for.
                            self.cfg.postcopy.available = false;
                            self.mode = MoveMode::PreCopy;
                        }
                        self.at_dest.extend(have);
                        let missing: Vec<ChunkRef> = self
                            .offered
                            .iter()
                            .filter(|c| !self.at_dest.contains(&c.id))
                            .copied()
                            .collect();
                        let sent: u64 = missing.iter().map(|c| c.len as u64).sum();
                        self.report.present_bytes = self.report.offered_bytes - sent;
                        let not_memory: Vec<ChunkRef> = missing
                            .iter()
                            .filter(|c| !self.memory_only.contains(&c.id))
                            .copied()
                            .collect();
                        if self.mode == MoveMode::PostCopy && !not_memory.is_empty() {
                            // While the job runs, only what the destination needs to
                            // build the job (module, files): it compiles and stages
                            // it before the pause. Memory follows after the resume.
                            self.start_round(now, 1, not_memory);
                        } else if self.mode == MoveMode::PostCopy {
                            self.stop_timers();
                            self.report.stop = Some(StopReason::PostCopy);
                            self.phase = SourcePhase::Pausing;
                            self.actions.push_back(SourceAction::PauseJob);
                        } else if self.cfg.precopy.max_rounds == 0 {
                            // Pure stop-and-copy: everything moves while paused.
                            self.stop_timers();
                            self.report.stop = Some(StopReason::RoundLimit);
                            self.phase = SourcePhase::Pausing;
                            self.actions.push_back(SourceAction::PauseJob);
                        } else {
                            self.start_round(now, 1, missing);
                        }
                    }
                    SourcePhase::Aborted => self.reply_abort(),
                    // A duplicate: the first one moved us on.
                    _ => {}
                }
                Ok(())
            }
            Body::Progress { round, .. } => {
                if round > self.rounds_sent.saturating_add(1) {
                    return Err(MigrateError::WrongRound {
                        expected: self.rounds_sent,
                        found: round,
                    });
                }
                // The destination is fetching what we asked for: a slow link, not a
                // dead peer. Wait another reply timeout; no need to resend.
                let fetching = match phase {
                    SourcePhase::PreCopy { round: r } => r == round,
                    // The Final's chunks (a post-copy Final hands over at once).
                    SourcePhase::AwaitReady => round == self.rounds_sent + 1,
                    SourcePhase::HandedOver => {
                        round == self.rounds_sent + 1
                            && self
                                .outstanding
                                .as_ref()
                                .is_some_and(|m| matches!(m.body, Body::Final { .. }))
                    }
                    _ => false,
                };
                if fetching {
                    let later = now.saturating_add(self.cfg.reply_timeout_ms);
                    self.deadline = self.deadline.map(|d| d.max(later));
                    let quiet = now.saturating_add(self.cfg.max_retransmit_ms);
                    self.next_retransmit = self.next_retransmit.map(|t| t.max(quiet));
                } else if phase == SourcePhase::Aborted {
                    self.reply_abort();
                }
                Ok(())
            }
            Body::RoundAck { round } => {
                if round > self.rounds_sent {
                    return Err(MigrateError::WrongRound {
                        expected: self.rounds_sent,
                        found: round,
                    });
                }
                match phase {
                    SourcePhase::PreCopy { round: r } if r == round => {
                        self.on_round_ack(now, round);
                    }
                    SourcePhase::Aborted => self.reply_abort(),
                    _ => {} // stale or duplicate
                }
                Ok(())
            }
            Body::Ready => {
                match phase {
                    SourcePhase::AwaitReady if !self.majority_in_sight => {
                        self.abort(AbortReason::NoMajority, true);
                    }
                    SourcePhase::AwaitReady => {
                        // The handover. From here on the job never resumes
                        // here unless the destination says Abort.
                        self.actions.push_back(SourceAction::RecordHandover);
                        let go = self.msg(Body::Go);
                        self.phase = SourcePhase::HandedOver;
                        let deadline = now.saturating_add(self.cfg.handover_timeout_ms);
                        self.send_tracked(now, go, deadline, 0);
                    }
                    SourcePhase::HandedOver | SourcePhase::Escalated | SourcePhase::Committed => {}
                    SourcePhase::Aborted => self.reply_abort(),
                    _ => return Err(unexpected("Ready")),
                }
                Ok(())
            }
            Body::GoAck { held_ms } => match phase {
                SourcePhase::HandedOver | SourcePhase::Escalated => {
                    self.report.dest_held_ms = held_ms;
                    self.stop_timers();
                    self.paused = false;
                    self.phase = SourcePhase::Committed;
                    self.actions.push_back(SourceAction::DropJob);
                    self.actions
                        .push_back(SourceAction::Finished(Outcome::Committed));
                    Ok(())
                }
                SourcePhase::Committed => Ok(()),
                _ => Err(unexpected("GoAck")),
            },
            Body::Abort { reason } => match phase {
                // The destination runs the job; it never aborts after that.
                SourcePhase::Committed => Err(unexpected("Abort")),
                SourcePhase::Aborted => Ok(()),
                // A refusal is a shell's answer to an Offer, made without a
                // core (`Destination::refusal`): after Go it proves nothing
                // about whether the job was started there.
                SourcePhase::HandedOver | SourcePhase::Escalated
                    if reason == AbortReason::Refused =>
                {
                    Err(unexpected("Abort(Refused)"))
                }
                // Before Go: we may always abort. After Go: the destination's
                // Abort proves it never started and never will (it is final
                // there), so resuming here is safe.
                _ => {
                    self.abort(reason, false);
                    Ok(())
                }
            },
        }
    }

    fn on_round_ack(&mut self, now: u64, round: u32) {
        self.stop_timers();
        self.at_dest.extend(self.round_chunks.iter().map(|c| c.id));
        let dt = now.saturating_sub(self.round_sent_at);
        if self.round_bytes > 0 && dt > 0 {
            let measured = transfer_rate(self.round_bytes, dt);
            self.measured_throughput = Some(ewma(self.measured_throughput, measured));
        }
        self.report.rounds.push(RoundReport {
            round,
            chunks: self.round_chunks.len(),
            bytes: self.round_bytes,
            compression: self.round_compression,
            duration_ms: dt,
        });
        self.phase = SourcePhase::Checkpointing { round };
        self.actions.push_back(SourceAction::Checkpoint { round });
    }

    /// A report from the shell.
    pub fn handle_event(&mut self, now: u64, ev: SourceEvent) -> Result<(), MigrateError> {
        let phase = self.phase;
        let unexpected = |what| MigrateError::Unexpected {
            what,
            phase: phase.name(),
        };
        match ev {
            SourceEvent::Estimates {
                link_bandwidth_bytes_per_s,
                dirty_bytes_per_s,
            } => {
                // A zero estimate says nothing (no transfer observed yet).
                if let Some(b) = link_bandwidth_bytes_per_s.filter(|b| *b > 0) {
                    self.link_bw = b;
                }
                if let Some(d) = dirty_bytes_per_s {
                    self.dirty_rate = d;
                    self.dirty_measured = true;
                }
                Ok(())
            }
            SourceEvent::Checkpointed { round, state } => match phase {
                SourcePhase::Checkpointing { round: r } if r == round => {
                    state.validate()?;
                    self.on_checkpoint(now, round, &state);
                    Ok(())
                }
                SourcePhase::Aborted => Ok(()),
                _ => Err(unexpected("Checkpointed")),
            },
            SourceEvent::Paused {
                manifest,
                manifest_id,
            } => match phase {
                SourcePhase::Pausing => {
                    self.paused = true;
                    let state = StateMap::from_manifest(&manifest);
                    let (chunks, deferred, hot) = self.final_split(&state);
                    let bytes: u64 = chunks.iter().map(|c| c.len as u64).sum();
                    self.report.deferred_chunks = deferred.len();
                    self.report.deferred_bytes = deferred.iter().map(|c| c.len as u64).sum();
                    let compression = self.compression();
                    let patch = ManifestPatch::between(&self.offered_memory, &manifest);
                    self.report.manifest_patch_bytes = patch.head.len() + patch.zeroed.len() * 9;
                    let handover = self.mode != MoveMode::PreCopy;
                    if handover && !self.majority_in_sight {
                        // Its Final would carry the Go.
                        self.abort(AbortReason::NoMajority, true);
                        return Ok(());
                    }
                    let fin = self.msg(Body::Final {
                        after_round: self.rounds_sent,
                        chunks,
                        compression,
                        manifest: patch,
                        manifest_id,
                        postcopy: handover.then_some(Deferral { hot }),
                    });
                    if let Err(e) = state.validate().and_then(|()| fin.validate()) {
                        // The shell gave us something we cannot send: the
                        // migration cannot finish, the job goes on here.
                        self.abort(AbortReason::PauseFailed, true);
                        self.resume_when_paused = false;
                        return Err(e.into());
                    }
                    if let Body::Final { chunks, .. } = &fin.body {
                        self.report.final_chunks = chunks.len();
                    }
                    self.report.final_bytes = bytes;
                    let expect = transfer_ms(bytes, self.throughput());
                    let deadline = now
                        .saturating_add(self.cfg.reply_timeout_ms)
                        .saturating_add(expect.saturating_mul(2));
                    if handover {
                        // This Final carries the Go: from here on the job never
                        // resumes here unless the destination says Abort.
                        self.actions.push_back(SourceAction::RecordHandover);
                        self.phase = SourcePhase::HandedOver;
                        let deadline =
                            deadline.max(now.saturating_add(self.cfg.handover_timeout_ms));
                        self.send_tracked(now, fin, deadline, expect);
                    } else {
                        self.phase = SourcePhase::AwaitReady;
                        self.send_tracked(now, fin, deadline, expect);
                    }
                    Ok(())
                }
                SourcePhase::Aborted if self.resume_when_paused => {
                    self.resume_when_paused = false;
                    self.actions.push_back(SourceAction::ResumeJob);
                    Ok(())
                }
                _ => Err(unexpected("Paused")),
            },
            SourceEvent::PauseFailed => match phase {
                SourcePhase::Pausing => {
                    self.abort(AbortReason::PauseFailed, true);
                    self.resume_when_paused = false;
                    Ok(())
                }
                SourcePhase::Aborted if self.resume_when_paused => {
                    self.resume_when_paused = false;
                    Ok(())
                }
                _ => Err(unexpected("PauseFailed")),
            },
            SourceEvent::Cancel => match phase {
                SourcePhase::HandedOver | SourcePhase::Escalated => {
                    Err(MigrateError::TooLateToCancel)
                }
                SourcePhase::Committed | SourcePhase::Aborted => Ok(()),
                _ => {
                    self.abort(AbortReason::Cancelled, true);
                    Ok(())
                }
            },
        }
    }

    fn on_checkpoint(&mut self, now: u64, round: u32, state: &StateMap) {
        self.last_memory = Some(state.memory.clone());
        let dirty = self.missing(state);
        let dirty_bytes: u64 = dirty.iter().map(|c| c.len as u64).sum();
        let dt = now.saturating_sub(self.last_state_at);
        if dt > 0 {
            // Distinct bytes dirtied since the state the last round sent.
            let measured = transfer_rate(dirty_bytes, dt);
            let old = self.dirty_measured.then_some(self.dirty_rate);
            self.dirty_rate = ewma(old, measured);
            self.dirty_measured = true;
        }
        self.last_state_at = now;
        let facts = RoundFacts {
            round,
            sent_bytes: self.round_bytes,
            dirty_bytes,
            throughput: self.throughput(),
            dirty_rate: self.dirty_rate,
        };
        if round == 1 && self.mode == MoveMode::PreCopy {
            // The first round measured the dirty rate: revise an automatic choice (a
            // post-copy's first round carries no memory and measures nothing useful).
            self.mode = self.choose_mode();
        }
        let stop = match self.mode {
            MoveMode::PreCopy => precopy_stop(&self.cfg.precopy, &facts),
            MoveMode::Hybrid if round >= self.cfg.postcopy.hybrid_rounds.max(1) => {
                Some(StopReason::PostCopy)
            }
            MoveMode::Hybrid => {
                precopy_stop(&self.cfg.precopy, &facts).filter(|r| *r == StopReason::Converged)
            }
            MoveMode::PostCopy => Some(StopReason::PostCopy),
        };
        match stop {
            None => self.start_round(now, round + 1, dirty),
            Some(reason) => {
                self.report.stop = Some(reason);
                self.phase = SourcePhase::Pausing;
                self.actions.push_back(SourceAction::PauseJob);
            }
        }
    }

    /// Call at (or after) [`Source::poll_timeout`]; early calls do nothing.
    pub fn handle_timeout(&mut self, now: u64) {
        if self.deadline.is_some_and(|d| now >= d) {
            match self.phase {
                SourcePhase::HandedOver => {
                    // Go may have arrived: the job may run there. Never
                    // resume here; crash recovery decides by generation.
                    self.stop_timers();
                    self.phase = SourcePhase::Escalated;
                    self.actions.push_back(SourceAction::Escalate);
                    self.actions
                        .push_back(SourceAction::Finished(Outcome::Escalated));
                }
                _ => self.abort(AbortReason::Timeout, true),
            }
            return;
        }
        if self.next_retransmit.is_some_and(|t| now >= t) {
            if let Some(m) = self.outstanding.clone() {
                self.actions.push_back(SourceAction::Send(m));
            }
            self.backoff = self
                .backoff
                .saturating_mul(2)
                .min(self.cfg.max_retransmit_ms);
            self.next_retransmit = Some(now.saturating_add(self.backoff));
        }
    }
}

/// bytes per second for `bytes` in `ms` milliseconds (`ms` > 0).
fn transfer_rate(bytes: u64, ms: u64) -> u64 {
    let r = bytes as u128 * 1000 / ms.max(1) as u128;
    u64::try_from(r).unwrap_or(u64::MAX)
}
