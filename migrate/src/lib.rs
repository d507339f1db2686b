//! Sans-IO core of roam's live-migration protocol (pre-copy, stop-and-copy,
//! two-phase handover), so the part of a move that decides *who runs the job*
//! can be tested exhaustively with no network, no clock and no Wasm.
//!
//! Two state machines, [`Source`] (the node running the job) and
//! [`Destination`], are fed [`Message`]s from the peer, events from their
//! shell ([`SourceEvent`], [`DestEvent`]) and timeouts (`handle_timeout(now)`
//! at `poll_timeout()`, times in milliseconds from any monotonic origin), and
//! are polled for actions ([`SourceAction`], [`DestAction`]) that the shell
//! carries out **in order**. Chunk bytes never pass through the core: it says
//! which chunks to fetch, the shell moves them with the mesh's verified
//! chunk exchange (the destination pulls, possibly from several peers).
//!
//! # Message order
//!
//! ```text
//!  Source (job runs)                          Destination
//!  Offer{job, state map}  ─────────────────▶  has(chunk)? for each chunk
//!                         ◀─────────────────  Have{chunks already stored}
//!  Round{1, missing}      ─────────────────▶  Fetch → Fetched
//!                         ◀─────────────────  RoundAck{1}
//!  Checkpoint → dirty set; stop rule (adapt::precopy_stop)
//!  Round{k, dirty}        ─────────────────▶  ...  (k ≤ max_rounds)
//!                         ◀─────────────────  RoundAck{k}
//!  PauseJob → Paused{final manifest}
//!  Final{last dirty, manifest patch} ──────▶  Fetch → VerifyAndRestore → Restored
//!                         ◀─────────────────  Ready      (restored, paused)
//!  RecordHandover; Go     ─────────────────▶  ResumeJob{generation + 1}
//!                         ◀─────────────────  GoAck      (the commit ack)
//!  DropJob
//! ```
//!
//! A post-copy (or hybrid) move folds the Go into the Final: the source records
//! the handover *before* the Final leaves, and the destination starts the job as
//! soon as it has restored it (memory still missing, pulled after the resume):
//!
//! ```text
//!  PauseJob → Paused; RecordHandover
//!  Final{manifest patch, postcopy: hot slots} ▶  Defer; VerifyAndRestore → Restored
//!                                                ResumeJob{generation + 1}
//!                         ◀─────────────────  GoAck{held_ms}
//!  DropJob
//! ```
//!
//! The Final's manifest is a patch of the Offer's memory map
//! ([`ManifestPatch`]): the destination rebuilds the manifest and checks its hash,
//! and the downtime carries only the slots that changed since the offer.
//!
//! Either side may send `Abort` until the handover; the source resends its
//! last unanswered message (Offer, Round, Final, Go) with exponential backoff
//! and the destination answers a duplicate with its previous reply, so one
//! lost message costs a retransmission, not the migration. The destination
//! sends nothing on its own except an `Abort` when it gives up.
//!
//! # The invariant: a job never runs at two nodes
//!
//! Who may run the job, by the source's phase:
//!
//! | source phase | source | destination |
//! |---|---|---|
//! | Offering, PreCopy, Checkpointing | runs | cannot: it has no manifest |
//! | Pausing, AwaitReady | pausing / paused | may hold a restored, paused copy; does not run it |
//! | HandedOver, Escalated | paused, never resumes by itself | may run (if Go arrived) |
//! | Committed | dropped | runs (generation + 1) |
//! | Aborted | runs | never started, never will |
//!
//! It rests on three rules, each enforced in one place of the code:
//!
//! 1. **The destination starts only on Go.** `ResumeJob` is emitted on the
//!    single transition to `Running` — `Ready --Go--> Running`, or
//!    `Verifying --Restored--> Running` for a Final that carries the Go — at
//!    most once.
//! 2. **The source sends Go (or a Final carrying it) only while paused, and
//!    after that it resumes only on the destination's Abort.** Timeouts after
//!    Go lead to `Escalated`, never to `ResumeJob`; `Cancel` after Go is
//!    refused.
//! 3. **The destination's Abort is final and never follows Running.** It is
//!    sent only on entering (or from) `Aborted`, which is terminal and cannot
//!    be reached from `Running`; in `Aborted` a Go is answered with Abort.
//!
//! Suppose both ran at some instant. The destination runs, so by (1) it got
//! Go, which by (2) the source sent while paused; the source runs again, so
//! by (2) it received an Abort from the destination. By (3) that Abort was
//! sent from `Aborted`, which the destination can neither leave nor have
//! left `Running` for; so it was `Aborted` before it could get to `Running`,
//! and `Aborted` never reaches `Running`. Contradiction. Before the handover
//! the source may abort at any time (on a timeout, a refusal, a failed
//! fetch or verification, a cancel): the destination cannot have started,
//! since the source never sends Go after aborting.
//!
//! **Message loss, duplication, reordering.** The argument uses no ordering
//! and no delivery guarantee: every step towards running at the destination
//! needs the *receipt* of a specific message, and every step towards resuming
//! at the source after Go needs the receipt of the destination's Abort. A
//! lost message can only stop progress; the timeouts then turn a stall before
//! Go into an abort (the source resumes) and a stall after Go into an
//! escalation (nobody resumes on a guess). Duplicates are answered from the
//! current phase and move nothing twice; messages of another migration id
//! or generation are refused ([`MigrateError`]) without a state change, so
//! a message of an earlier, aborted attempt cannot drive a new one.
//!
//! **Liveness.** "At least one node runs the job" holds in every outcome but
//! one: Go sent and no answer (Go or its ack lost for `handover_timeout_ms`,
//! or the destination crashed after Ready). The source cannot tell "the
//! destination never got Go" from "it got Go and runs": resuming could run
//! the job twice. So it emits [`SourceAction::Escalate`], keeps the paused
//! job and hands it to crash recovery, which is fenced by generation: the
//! destination runs `generation + 1`, the source's copy is `generation`, and
//! recovery only ever resumes the newest generation it can find in the job's
//! replica set (the source's copy runs again only if no node holds a newer
//! one). A late GoAck (→ `DropJob`) or Abort (→ `ResumeJob`) still resolves
//! an escalated source.
//!
//! A post-copy move trades part of that liveness for a round trip of downtime:
//! its Final carries the Go, so a Final lost for good, or a destination that
//! crashes before it answers, escalates instead of aborting (in a pre-copy
//! move the same faults before Go end in an abort and the source resumes).
//! Post-copy has already given up on the source resuming by itself: once the
//! job runs at the destination with memory still at the source, losing either
//! node is crash recovery's case anyway.
//!
//! **Crashes.** The core's state is in memory, so the shells add two durable
//! records: [`SourceAction::RecordHandover`] before the Go leaves (a source
//! that restarts after it must escalate, not resume), and the generation
//! written by [`DestAction::ResumeJob`] before the job starts (a destination
//! that restarts refuses an offer for an older generation:
//! [`Destination::accept`] fences it, so a replayed Offer can never make it
//! answer a stale source with an Abort). For the same reason a refusal
//! ([`Destination::refusal`], an Abort a shell sends without a core) counts as
//! proof only before Go: a source past Go refuses it. A destination that crashes before
//! Go loses a paused copy only; the source times out and resumes (before Go)
//! or escalates (after Go). A destination that crashes while running is an
//! owner crash: crash recovery's case, not this protocol's.
//!
//! # Pre-copy adaptation
//!
//! After each acknowledged round the shell checkpoints the running job
//! (incremental, dirty-tracked) and the core computes the dirty set: chunks
//! of the new state the destination does not hold (its Have plus every
//! acknowledged round, so a chunk already there is never sent again). The
//! stop rule ([`adapt::precopy_stop`]) compares it with what fits in the
//! downtime target at the measured throughput, with the previous round, and
//! with what the measured dirty rate will re-dirty during another round;
//! `max_rounds` bounds it. Chunks are compressed at the level
//! [`adapt::choose_compression`] picks for the link and the spare CPU.

pub mod adapt;
mod bytes;
mod dest;
mod error;
mod ids;
mod msg;
mod patch;
mod source;

pub use adapt::{
    choose_compression, choose_mode, LevelProfile, MoveMode, PostcopyPolicy, PrecopyPolicy,
    RequestedMode, StopReason, ZSTD_PROFILES,
};
pub use dest::{DestAction, DestConfig, DestEvent, DestPhase, DestReport, Destination};
pub use error::MigrateError;
pub use msg::{
    AbortReason, Body, ChunkRef, Compression, Deferral, ManifestPatch, Message, MessageError,
    MigrationId, Offer, Outcome, StateMap, MAX_EXTRA_BLOBS, MAX_MANIFEST_BYTES, MAX_ROUNDS,
    MAX_STATE_CHUNKS, MAX_ZSTD_LEVEL,
};
pub use source::{
    RoundReport, Source, SourceAction, SourceConfig, SourceEvent, SourcePhase, SourceReport,
};
