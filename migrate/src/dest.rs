//! The destination side: the node the job moves to.

use std::collections::VecDeque;

use crate::ids::FastSet;

use store::{ChunkId, ChunkMap, Manifest};

use crate::error::MigrateError;
use crate::msg::{
    AbortReason, Body, ChunkRef, Compression, Deferral, Message, MigrationId, Outcome,
};

/// Knobs of the destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestConfig {
    /// Abort when the source has said nothing (and the shell reported
    /// nothing) for this long. Must exceed the source's
    /// `max_retransmit_ms`, whose retransmissions keep a live migration
    /// going, and the time the source needs to checkpoint or pause.
    pub idle_timeout_ms: u64,
    /// This node can restore a job lazily (post-copy: its memory fetched after the
    /// resume; needs userfaultfd). Told to the source in `Have`; without it every
    /// move here is pre-copy.
    pub lazy_restore: bool,
}

impl Default for DestConfig {
    fn default() -> Self {
        DestConfig {
            idle_timeout_ms: 10_000,
            lazy_restore: true,
        }
    }
}

/// What the destination's shell tells the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestEvent {
    /// Every chunk of [`DestAction::Fetch`] `round` is verified and stored.
    Fetched { round: u32 },
    /// The fetch of `round` failed.
    FetchFailed { round: u32 },
    /// [`DestAction::VerifyAndRestore`] succeeded: the job is restored,
    /// paused, not running.
    Restored,
    /// A chunk the manifest needs is missing or corrupt, or restore failed.
    RestoreFailed,
    /// Call the migration off (refused once the job runs here).
    Cancel,
    /// The fetch of `round` goes on; `bytes` have arrived. Tells the source the
    /// link is slow, not dead (send one every few hundred ms of a long fetch).
    Progress { round: u32, bytes: u64 },
}

/// What the destination core asks its shell to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestAction {
    /// Send to the source.
    Send(Message),
    /// Fetch these chunks (from the source or any peer holding them), verify
    /// and store them; answer with [`DestEvent::Fetched`] or `FetchFailed`.
    Fetch {
        round: u32,
        chunks: Vec<ChunkRef>,
        compression: Compression,
    },
    /// Check every chunk the manifest needs is in the store (hash-verified),
    /// import the manifest and restore the job *paused*. Do not run it.
    /// Answer with [`DestEvent::Restored`] or `RestoreFailed`. `manifest` is the
    /// encoding whose blake3 is `manifest_id` (checked by the core), `decoded` the
    /// same manifest decoded (the shell need not decode it again).
    VerifyAndRestore {
        manifest: Vec<u8>,
        manifest_id: ChunkId,
        decoded: Box<Manifest>,
    },
    /// Post-copy: restore without these memory chunks (the next action is the
    /// `VerifyAndRestore`) and fetch them after `ResumeJob`, in this order, with the
    /// ones the job touches first, asking the source for `compression` (the move's).
    /// Their absence is not a verification failure.
    Defer {
        chunks: Vec<ChunkRef>,
        compression: Compression,
    },
    /// Record `job` at `generation` (the source's + 1) as owned here,
    /// durably, then run the restored job.
    ResumeJob {
        job: String,
        generation: u64,
        manifest_id: ChunkId,
    },
    /// Throw away the restored (paused) job, if any; never run it. Idempotent.
    DiscardRestored,
    /// The migration ended here.
    Finished(Outcome),
}

/// Where the destination is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DestPhase {
    /// Have sent; waiting for round 1.
    Offered,
    /// Fetching the chunks of `round`.
    Fetching { round: u32 },
    /// Round `round` acknowledged; waiting for the next round or Final.
    Idle { round: u32 },
    /// Fetching the last chunks.
    FetchingFinal,
    /// VerifyAndRestore asked.
    Verifying,
    /// Restored and paused, Ready sent; waiting for Go.
    Ready,
    /// Go received (or a post-copy Final restored): the job runs here at
    /// generation + 1.
    Running,
    /// Final: the job never ran here and never will.
    Aborted,
}

impl DestPhase {
    fn name(self) -> &'static str {
        match self {
            DestPhase::Offered => "Offered",
            DestPhase::Fetching { .. } => "Fetching",
            DestPhase::Idle { .. } => "Idle",
            DestPhase::FetchingFinal => "FetchingFinal",
            DestPhase::Verifying => "Verifying",
            DestPhase::Ready => "Ready",
            DestPhase::Running => "Running",
            DestPhase::Aborted => "Aborted",
        }
    }
}

/// What the destination saw (for logs and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestReport {
    /// Distinct chunks the store already had when offered.
    pub present_chunks: usize,
    /// Chunks asked for by `Fetch` actions, over all rounds and the final.
    pub fetched_chunks: usize,
    pub fetched_bytes: u64,
    /// Post-copy: chunks restored lazily (fetched after the resume).
    pub deferred_chunks: usize,
    /// From the handover (Go, or a post-copy Final) to the resume, in ms.
    pub held_ms: u64,
}

/// The destination's state machine; created from an Offer by
/// [`Destination::accept`].
#[derive(Debug)]
pub struct Destination {
    cfg: DestConfig,
    migration: MigrationId,
    generation: u64,
    job: String,
    phase: DestPhase,
    /// Our answer to the offer (resent on a duplicate Offer).
    have: Vec<ChunkId>,
    /// Chunks in our store as far as this migration knows.
    known: FastSet,
    /// Chunks of the fetch in progress.
    pending: Vec<ChunkRef>,
    acked: u32,
    /// The final manifest's id (set by the Final), and the manifest itself (encoded and
    /// decoded) until `verify` hands it to the shell.
    final_id: Option<ChunkId>,
    final_manifest: Option<(Vec<u8>, Box<Manifest>)>,
    /// The offered memory map: the base of the Final's manifest patch.
    offered_memory: ChunkMap,
    /// Post-copy: memory chunks restored lazily, and the compression (from the Final).
    deferred: Vec<ChunkRef>,
    deferred_compression: Compression,
    /// The Final carried the Go (post-copy): start as soon as restored. With the
    /// time it arrived.
    handover_at: Option<u64>,
    /// VerifyAndRestore was asked: an abort must discard.
    restore_asked: bool,
    abort_reason: Option<AbortReason>,
    deadline: Option<u64>,
    actions: VecDeque<DestAction>,
    report: DestReport,
}

impl Destination {
    /// Take on an Offer. `has` answers whether the local store holds a
    /// chunk (module, earlier checkpoints, other jobs' identical chunks).
    /// `local_generation` is the newest generation of this job this node has
    /// recorded as owned (by an earlier [`DestAction::ResumeJob`]); an offer
    /// for an older generation is fenced off: this node already runs a newer
    /// one, and answering it could let a stale source resume.
    ///
    /// The first action is the Have. To decline an offer, send
    /// [`Destination::refusal`] instead — but never in answer to a
    /// [`MigrateError::Fenced`] offer, and never for a migration id this node
    /// has a core for: drop those. (A source past Go ignores refusals anyway.)
    pub fn accept(
        cfg: DestConfig,
        now: u64,
        offer: &Message,
        local_generation: Option<u64>,
        mut has: impl FnMut(&ChunkId) -> bool,
    ) -> Result<Destination, MigrateError> {
        offer.validate()?;
        let Body::Offer(o) = &offer.body else {
            return Err(MigrateError::Unexpected {
                what: offer.body.name(),
                phase: "accept",
            });
        };
        if let Some(local) = local_generation.filter(|l| *l > offer.generation) {
            return Err(MigrateError::Fenced {
                job: o.job.clone(),
                local,
                offered: offer.generation,
            });
        }
        let have: Vec<ChunkId> = o
            .state
            .distinct_chunks()
            .into_iter()
            .map(|c| c.id)
            .filter(|id| has(id))
            .collect();
        let mut d = Destination {
            migration: offer.migration,
            generation: offer.generation,
            job: o.job.clone(),
            phase: DestPhase::Offered,
            known: have.iter().copied().collect(),
            report: DestReport {
                present_chunks: have.len(),
                ..DestReport::default()
            },
            have,
            pending: Vec::new(),
            acked: 0,
            final_id: None,
            final_manifest: None,
            offered_memory: o.state.memory.clone(),
            deferred: Vec::new(),
            deferred_compression: Compression::None,
            handover_at: None,
            restore_asked: false,
            abort_reason: None,
            deadline: Some(now.saturating_add(cfg.idle_timeout_ms)),
            actions: VecDeque::new(),
            cfg,
        };
        d.send(Body::Have {
            have: d.have.clone(),
            lazy: d.cfg.lazy_restore,
        });
        Ok(d)
    }

    /// The answer that declines `offer` (no state needed). Only for an offer
    /// this node never accepted; see [`Destination::accept`].
    pub fn refusal(offer: &Message) -> Message {
        Message {
            migration: offer.migration,
            generation: offer.generation,
            body: Body::Abort {
                reason: AbortReason::Refused,
            },
        }
    }

    pub fn migration(&self) -> MigrationId {
        self.migration
    }

    /// The job's generation at the source (it runs here at generation + 1).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn job(&self) -> &str {
        &self.job
    }

    pub fn phase(&self) -> DestPhase {
        self.phase
    }

    pub fn report(&self) -> &DestReport {
        &self.report
    }

    pub fn poll_action(&mut self) -> Option<DestAction> {
        self.actions.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        self.deadline
    }

    fn send(&mut self, body: Body) {
        self.actions.push_back(DestAction::Send(Message {
            migration: self.migration,
            generation: self.generation,
            body,
        }));
    }

    /// After every accepted input: while waiting for the source, give it
    /// `idle_timeout_ms` more; while waiting for our own shell (fetch,
    /// restore: it always answers), or when done, no deadline.
    fn rearm(&mut self, now: u64) {
        self.deadline = match self.phase {
            DestPhase::Offered | DestPhase::Idle { .. } | DestPhase::Ready => {
                Some(now.saturating_add(self.cfg.idle_timeout_ms))
            }
            _ => None,
        };
    }

    fn abort(&mut self, reason: AbortReason, tell_peer: bool) {
        if self.restore_asked {
            self.actions.push_back(DestAction::DiscardRestored);
        }
        if tell_peer {
            self.send(Body::Abort { reason });
        }
        self.phase = DestPhase::Aborted;
        self.abort_reason = Some(reason);
        self.deadline = None;
        self.pending.clear();
        self.actions
            .push_back(DestAction::Finished(Outcome::Aborted(reason)));
    }

    fn reply_abort(&mut self) {
        let reason = self.abort_reason.unwrap_or(AbortReason::Cancelled);
        self.send(Body::Abort { reason });
    }

    /// Ask the shell for the chunks we lack; false if there are none.
    fn fetch(&mut self, round: u32, chunks: Vec<ChunkRef>, compression: Compression) -> bool {
        let mut seen = FastSet::default();
        let want: Vec<ChunkRef> = chunks
            .into_iter()
            .filter(|c| !self.known.contains(&c.id) && seen.insert(c.id))
            .collect();
        if want.is_empty() {
            return false;
        }
        self.report.fetched_chunks += want.len();
        self.report.fetched_bytes += want.iter().map(|c| c.len as u64).sum::<u64>();
        self.pending = want.clone();
        self.actions.push_back(DestAction::Fetch {
            round,
            chunks: want,
            compression,
        });
        true
    }

    fn ack_round(&mut self, round: u32) {
        self.known.extend(self.pending.drain(..).map(|c| c.id));
        self.acked = round;
        self.phase = DestPhase::Idle { round };
        self.send(Body::RoundAck { round });
    }

    fn verify(&mut self) {
        self.known.extend(self.pending.drain(..).map(|c| c.id));
        if let (Some((manifest, decoded)), Some(manifest_id)) =
            (self.final_manifest.take(), self.final_id)
        {
            self.restore_asked = true;
            self.phase = DestPhase::Verifying;
            if !self.deferred.is_empty() {
                self.actions.push_back(DestAction::Defer {
                    chunks: std::mem::take(&mut self.deferred),
                    compression: self.deferred_compression,
                });
            }
            self.actions.push_back(DestAction::VerifyAndRestore {
                manifest,
                manifest_id,
                decoded,
            });
        }
    }

    /// The handover arrived at `handed_over` (Go, or a post-copy Final) and the job
    /// is restored: run it. The source is paused and has promised not to resume
    /// unless we abort, which we never do from here on.
    fn run(&mut self, handed_over: u64, now: u64) {
        // Only `verify` leads to Ready or to a restore, and it needs the manifest.
        let Some(manifest_id) = self.final_id else {
            return;
        };
        self.phase = DestPhase::Running;
        self.deadline = None;
        self.report.held_ms = now.saturating_sub(handed_over);
        // `validate` keeps an offer's generation below u64::MAX.
        self.actions.push_back(DestAction::ResumeJob {
            job: self.job.clone(),
            generation: self.generation.saturating_add(1),
            manifest_id,
        });
        self.send_goack();
        self.actions
            .push_back(DestAction::Finished(Outcome::Committed));
    }

    fn send_goack(&mut self) {
        self.send(Body::GoAck {
            held_ms: self.report.held_ms,
        });
    }

    /// The memory chunks of a post-copy Final's manifest this node lacks (and the
    /// Final does not bring): the hot slots first, then by address, each id once.
    fn deferred_chunks(&self, m: &Manifest, now: &[ChunkRef], d: &Deferral) -> Vec<ChunkRef> {
        let mut seen: FastSet = now.iter().map(|c| c.id).collect();
        let mut out = Vec::new();
        let mem = &m.memory;
        let hot = d
            .hot
            .iter()
            .filter_map(|slot| mem.get(*slot).map(|id| (*slot, id)));
        for (slot, id) in hot.chain(mem.chunks.iter().copied()) {
            if !self.known.contains(&id) && seen.insert(id) {
                // A validated map's chunk length fits in u32 (MAX_CHUNK_SIZE).
                let len = u32::try_from(mem.chunk_len(slot)).unwrap_or(u32::MAX);
                out.push(ChunkRef { id, len });
            }
        }
        out
    }

    /// A message from the source.
    pub fn handle_message(&mut self, now: u64, msg: Message) -> Result<(), MigrateError> {
        self.on_message(now, msg)?;
        self.rearm(now);
        Ok(())
    }

    fn on_message(&mut self, now: u64, msg: Message) -> Result<(), MigrateError> {
        msg.check_addressed_to(self.migration, self.generation)?;
        let phase = self.phase;
        let unexpected = |what| MigrateError::Unexpected {
            what,
            phase: phase.name(),
        };
        if phase == DestPhase::Aborted {
            // Whatever the source still says, the answer is that we are out.
            if !matches!(msg.body, Body::Abort { .. }) {
                self.reply_abort();
            }
            return Ok(());
        }
        match msg.body {
            Body::Have { .. }
            | Body::RoundAck { .. }
            | Body::Progress { .. }
            | Body::Ready
            | Body::GoAck { .. } => Err(MigrateError::WrongDirection {
                message: msg.body.name(),
                role: "destination",
            }),
            Body::Offer(_) => {
                // A retransmission (the shell routes by migration id).
                if phase == DestPhase::Offered {
                    let have = self.have.clone();
                    let lazy = self.cfg.lazy_restore;
                    self.send(Body::Have { have, lazy });
                }
                Ok(())
            }
            Body::Round {
                round,
                chunks,
                compression,
            } => {
                let next = self.acked + 1;
                let fetching = matches!(phase, DestPhase::Fetching { round: r } if r == round);
                let waiting = matches!(phase, DestPhase::Offered | DestPhase::Idle { .. });
                if round > next || (round == next && !waiting && !fetching) {
                    return Err(MigrateError::WrongRound {
                        expected: next,
                        found: round,
                    });
                }
                if round == next && waiting {
                    self.phase = DestPhase::Fetching { round };
                    if !self.fetch(round, chunks, compression) {
                        self.ack_round(round);
                    }
                } else if round == self.acked && phase == (DestPhase::Idle { round }) {
                    // Our ack was lost.
                    self.send(Body::RoundAck { round });
                }
                // Otherwise a duplicate of the round being fetched or a stale one.
                Ok(())
            }
            Body::Final {
                after_round,
                chunks,
                compression,
                manifest,
                manifest_id,
                postcopy,
            } => match phase {
                DestPhase::Offered | DestPhase::Idle { .. } => {
                    if after_round != self.acked {
                        return Err(MigrateError::WrongRound {
                            expected: self.acked,
                            found: after_round,
                        });
                    }
                    let (full, bytes) = match manifest.apply(&self.offered_memory, &manifest_id) {
                        Ok(m) => m,
                        Err(e) => {
                            // The source's own message does not add up: nothing can
                            // be restored from it, and telling it so lets it resume.
                            self.abort(AbortReason::VerificationFailed, true);
                            return Err(e.into());
                        }
                    };
                    if let Some(d) = &postcopy {
                        self.deferred = self.deferred_chunks(&full, &chunks, d);
                        self.report.deferred_chunks = self.deferred.len();
                        self.handover_at = Some(now);
                    }
                    self.final_id = Some(manifest_id);
                    self.final_manifest = Some((bytes, Box::new(full)));
                    self.deferred_compression = compression;
                    self.phase = DestPhase::FetchingFinal;
                    if !self.fetch(after_round + 1, chunks, compression) {
                        self.verify();
                    }
                    Ok(())
                }
                DestPhase::FetchingFinal | DestPhase::Verifying => Ok(()),
                DestPhase::Ready => {
                    // Our Ready was lost.
                    self.send(Body::Ready);
                    Ok(())
                }
                DestPhase::Running => {
                    if self.handover_at.is_some() {
                        // The Final carried the Go; our GoAck was lost.
                        self.send_goack();
                    }
                    Ok(())
                }
                _ => Err(unexpected("Final")),
            },
            Body::Go => match phase {
                DestPhase::Ready if self.final_id.is_some() => {
                    self.run(now, now);
                    Ok(())
                }
                DestPhase::Running => {
                    // Our ack was lost.
                    self.send_goack();
                    Ok(())
                }
                _ => Err(unexpected("Go")),
            },
            Body::Abort { reason } => match phase {
                // The source never aborts after Go.
                DestPhase::Running => Err(unexpected("Abort")),
                _ => {
                    self.abort(reason, false);
                    Ok(())
                }
            },
        }
    }

    /// A report from the shell.
    pub fn handle_event(&mut self, now: u64, ev: DestEvent) -> Result<(), MigrateError> {
        self.on_event(now, ev)?;
        self.rearm(now);
        Ok(())
    }

    fn on_event(&mut self, now: u64, ev: DestEvent) -> Result<(), MigrateError> {
        let phase = self.phase;
        let unexpected = |what| MigrateError::Unexpected {
            what,
            phase: phase.name(),
        };
        match (ev, phase) {
            (DestEvent::Fetched { round }, DestPhase::Fetching { round: r }) if r == round => {
                self.ack_round(round);
                Ok(())
            }
            (DestEvent::Fetched { round }, DestPhase::FetchingFinal) if round == self.acked + 1 => {
                self.verify();
                Ok(())
            }
            (DestEvent::FetchFailed { round }, DestPhase::Fetching { round: r }) if r == round => {
                self.abort(AbortReason::FetchFailed, true);
                Ok(())
            }
            (DestEvent::FetchFailed { round }, DestPhase::FetchingFinal)
                if round == self.acked + 1 =>
            {
                self.abort(AbortReason::FetchFailed, true);
                Ok(())
            }
            (DestEvent::Restored, DestPhase::Verifying) => {
                match self.handover_at {
                    // A post-copy Final carried the Go.
                    Some(at) => self.run(at, now),
                    None => {
                        self.phase = DestPhase::Ready;
                        self.send(Body::Ready);
                    }
                }
                Ok(())
            }
            (DestEvent::RestoreFailed, DestPhase::Verifying) => {
                self.abort(AbortReason::VerificationFailed, true);
                Ok(())
            }
            (DestEvent::Progress { round, bytes }, DestPhase::Fetching { round: r })
                if r == round =>
            {
                self.send(Body::Progress { round, bytes });
                Ok(())
            }
            (DestEvent::Progress { round, bytes }, DestPhase::FetchingFinal)
                if round == self.acked + 1 =>
            {
                self.send(Body::Progress { round, bytes });
                Ok(())
            }
            // A late report of a fetch that is over says nothing.
            (DestEvent::Progress { .. }, _) => Ok(()),
            (DestEvent::Cancel, DestPhase::Running) => Err(MigrateError::TooLateToCancel),
            (DestEvent::Cancel, DestPhase::Aborted) => Ok(()),
            (DestEvent::Cancel, _) => {
                self.abort(AbortReason::Cancelled, true);
                Ok(())
            }
            // A restore that finishes after we aborted: throw it away again.
            (DestEvent::Restored, DestPhase::Aborted) => {
                self.actions.push_back(DestAction::DiscardRestored);
                Ok(())
            }
            // Late answers to work of an aborted migration.
            (_, DestPhase::Aborted) => Ok(()),
            (DestEvent::Fetched { .. }, _) => Err(unexpected("Fetched")),
            (DestEvent::FetchFailed { .. }, _) => Err(unexpected("FetchFailed")),
            (DestEvent::Restored, _) => Err(unexpected("Restored")),
            (DestEvent::RestoreFailed, _) => Err(unexpected("RestoreFailed")),
        }
    }

    /// Call at (or after) [`Destination::poll_timeout`]; early calls do nothing.
    pub fn handle_timeout(&mut self, now: u64) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.abort(AbortReason::Timeout, true);
        }
    }
}
