//! Wire messages of the migration protocol and their validation.
//!
//! Every message is a plain serde type (the mesh encodes it as CBOR). A peer
//! is untrusted: before a state machine looks at a message it runs
//! [`Message::validate`], which bounds every list and byte string and checks
//! every hash it can check without the store, returning a typed
//! [`MessageError`]. Checks that need the protocol state (migration id,
//! generation, round number) are done by the state machines.

use crate::ids::FastSet;

use serde::{Deserialize, Serialize};
use store::{BlobRef, ChunkId, ChunkMap, Manifest, MAX_CHUNK_SIZE, MAX_JOB_ID_LEN};

pub use crate::patch::ManifestPatch;

/// Most chunk entries a state map (and so an offer) may list, summed over
/// memory, module and extra blobs. 2^17 entries cover a full 4 GiB wasm32
/// memory at 64 KiB chunks plus 4 GiB of module and file blobs; an offer this
/// large encodes to about 6 MB of CBOR, so the mesh must carry control messages
/// on a stream, not in one 1 MiB request.
pub const MAX_STATE_CHUNKS: usize = 1 << 17;
/// Most extra blobs (files the job wrote) a state map may list.
pub const MAX_EXTRA_BLOBS: usize = 256;
/// Largest final manifest accepted in a [`Body::Final`]. A manifest lists at
/// most [`MAX_STATE_CHUNKS`] entries (~45 bytes each in CBOR) plus the opaque
/// globals and host state; 16 MiB leaves ample room and keeps a hostile peer
/// from making us buffer the store's own 64 MiB limit.
pub const MAX_MANIFEST_BYTES: usize = 16 << 20;
/// Highest round number any message may carry (and the largest
/// `SourceConfig::max_rounds`).
pub const MAX_ROUNDS: u32 = 64;
/// Highest zstd level a peer may ask for.
pub const MAX_ZSTD_LEVEL: i32 = 22;

/// Names one migration attempt. The source picks it (random); every message
/// of the attempt carries it, so messages of an earlier, aborted attempt of
/// the same job are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MigrationId(pub u64);

impl std::fmt::Display for MigrationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One chunk to move: its id and uncompressed length (for byte accounting and
/// to bound the fetch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

/// How the source will serve the chunks of a round (a hint the destination
/// passes on to its fetches). Mirrors `store::Compression`, which is not a
/// wire type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Compression {
    #[default]
    None,
    Zstd(i32),
}

impl Compression {
    /// The store's equivalent, for `EncodedChunk::encode`.
    pub fn to_store(self) -> store::Compression {
        match self {
            Compression::None => store::Compression::None,
            Compression::Zstd(l) => store::Compression::Zstd(l),
        }
    }
}

/// What a post-copy Final defers: every memory chunk of the manifest the
/// destination lacks, fetched after the resume — on first touch, and in the
/// background in this order: the `hot` slots first (the ones the job wrote most
/// recently, most recent first), then the rest by address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deferral {
    /// Memory slots (chunk indices of the manifest's memory map), hottest first.
    pub hot: Vec<u64>,
}

/// Everything a checkpoint needs, as chunk ids: what the source offers and
/// what every dirty set is computed from. Built from the job's newest
/// (incremental) checkpoint, see [`StateMap::from_manifest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMap {
    /// The module's bytes; `module.hash` is the module hash.
    pub module: BlobRef,
    /// Linear memory (absent chunks are all-zero and never move).
    pub memory: ChunkMap,
    /// Further blobs (files the job wrote).
    pub extra: Vec<BlobRef>,
}

impl StateMap {
    /// The state a checkpoint manifest describes.
    pub fn from_manifest(m: &Manifest) -> StateMap {
        StateMap {
            module: m.module.clone(),
            memory: m.memory.clone(),
            extra: m.extra.values().cloned().collect(),
        }
    }

    /// Number of chunk entries (with repeats).
    pub fn entry_count(&self) -> usize {
        self.maps().map(|m| m.chunks.len()).sum()
    }

    fn maps(&self) -> impl Iterator<Item = &ChunkMap> + '_ {
        std::iter::once(&self.memory)
            .chain(std::iter::once(&self.module.map))
            .chain(self.extra.iter().map(|b| &b.map))
    }

    /// Every chunk the state needs, each id once, with its length.
    pub fn distinct_chunks(&self) -> Vec<ChunkRef> {
        let mut seen: FastSet = crate::ids::with_capacity(self.entry_count());
        let mut out = Vec::with_capacity(self.entry_count());
        for map in self.maps() {
            for (i, id) in &map.chunks {
                if seen.insert(*id) {
                    // A validated map has chunk_size <= MAX_CHUNK_SIZE, so a
                    // chunk length always fits in u32.
                    let len = u32::try_from(map.chunk_len(*i)).unwrap_or(u32::MAX);
                    out.push(ChunkRef { id: *id, len });
                }
            }
        }
        out
    }

    /// Bytes of the distinct non-zero chunks.
    pub fn stored_bytes(&self) -> u64 {
        self.distinct_chunks().iter().map(|c| c.len as u64).sum()
    }

    /// Bounded size and well-formed chunk maps.
    pub fn validate(&self) -> Result<(), MessageError> {
        if self.extra.len() > MAX_EXTRA_BLOBS {
            return Err(MessageError::TooMany {
                what: "extra blobs",
                len: self.extra.len() as u64,
                limit: MAX_EXTRA_BLOBS as u64,
            });
        }
        let n = self.entry_count();
        if n > MAX_STATE_CHUNKS {
            return Err(MessageError::TooMany {
                what: "state chunks",
                len: n as u64,
                limit: MAX_STATE_CHUNKS as u64,
            });
        }
        for (what, map) in [
            ("memory map", &self.memory),
            ("module map", &self.module.map),
        ]
        .into_iter()
        .chain(self.extra.iter().map(|b| ("extra blob map", &b.map)))
        {
            map.validate(what).map_err(|e| MessageError::Malformed {
                what,
                detail: e.to_string(),
            })?;
        }
        Ok(())
    }
}

/// The first message: what the source wants to move.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub job: String,
    /// The source's newest checkpoint of the job.
    pub state: StateMap,
}

/// Why a migration was aborted (carried by [`Body::Abort`] and reported in
/// [`Outcome::Aborted`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AbortReason {
    /// A reply did not come in time (peer gone, link cut, lost messages).
    Timeout,
    /// The local node called it off (shell `Cancel`).
    Cancelled,
    /// The destination declined the offer (capacity, policy, fenced generation).
    Refused,
    /// The destination could not fetch the chunks of a round.
    FetchFailed,
    /// The destination lacked a chunk of the final manifest or could not restore.
    VerificationFailed,
    /// The job could not be paused (it ended or trapped meanwhile).
    PauseFailed,
    /// The source did not see a majority of the swarm at the handover (it may be
    /// cut off into a minority): the job stays at the source.
    NoMajority,
}

/// How a migration ended, as seen by one side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The destination runs the job at generation + 1; the source dropped it.
    Committed,
    /// The source runs the job; the destination never started it.
    Aborted(AbortReason),
    /// Source only: Go was sent and neither its ack nor an Abort came back.
    /// The job is paused here and may be running at the destination; the
    /// shell hands the job to crash recovery (generation fencing). The source
    /// core still resolves if the ack or an Abort arrives later.
    Escalated,
}

/// One protocol message. `generation` is the job's generation at the source
/// (the destination runs `generation + 1` after commit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub migration: MigrationId,
    pub generation: u64,
    pub body: Body,
}

impl Message {
    /// Validates the message and checks that it belongs to this migration and generation:
    /// the first thing either side does with anything it receives.
    pub(crate) fn check_addressed_to(
        &self,
        migration: MigrationId,
        generation: u64,
    ) -> Result<(), crate::error::MigrateError> {
        use crate::error::MigrateError;
        self.validate()?;
        if self.migration != migration {
            return Err(MigrateError::WrongMigration {
                expected: migration,
                found: self.migration,
            });
        }
        if self.generation != generation {
            return Err(MigrateError::WrongGeneration {
                expected: generation,
                found: self.generation,
            });
        }
        Ok(())
    }
}

/// What a message says. Arrows give the direction (S = source, D = destination).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// S→D: move this job; here is its newest state.
    Offer(Box<Offer>),
    /// D→S: of the offered chunks, these are already in my store. `lazy`: I can
    /// restore a job without its memory and fetch it after the resume, so post-copy
    /// and hybrid moves may come here (absent, from an older peer: no).
    Have {
        have: Vec<ChunkId>,
        #[serde(default)]
        lazy: bool,
    },
    /// S→D: pre-copy round `round` (1-based): fetch these chunks.
    Round {
        round: u32,
        chunks: Vec<ChunkRef>,
        compression: Compression,
    },
    /// D→S: I hold every chunk of round `round`.
    RoundAck { round: u32 },
    /// D→S: still fetching the chunks of `round` (the final copy is round
    /// `after_round + 1`); `bytes` of them are here. Sent while a fetch takes
    /// long, so a slow link is told from a dead peer without a guessed deadline.
    Progress { round: u32, bytes: u64 },
    /// S→D: the job is paused; the last dirty chunks and the final manifest, as a
    /// patch of the offered memory map (see [`ManifestPatch`]); `manifest_id` is the
    /// id of the full manifest. `after_round` is the number of pre-copy rounds
    /// acknowledged.
    Final {
        after_round: u32,
        chunks: Vec<ChunkRef>,
        compression: Compression,
        manifest: ManifestPatch,
        manifest_id: ChunkId,
        /// Post-copy (and hybrid): the destination restores without the memory
        /// chunks of the manifest it lacks (other than `chunks`), fetches them after
        /// the resume, and **starts the job as soon as it is restored**: this Final
        /// carries the Go (the source is paused and will not resume unless the
        /// destination aborts), which saves the Ready → Go round trip. `None` for
        /// pre-copy (absent from the encoding).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        postcopy: Option<Deferral>,
    },
    /// D→S: I restored the job (paused) and will start it on Go.
    Ready,
    /// S→D: the job is paused here and will not resume unless you Abort:
    /// start it at generation + 1.
    Go,
    /// D→S: I run it at generation + 1 (the commit ack). `held_ms`: how long the
    /// destination took from the handover to the resume (its restore, after a
    /// post-copy Final; 0 after a Go), so the source can tell its job's downtime.
    GoAck {
        #[serde(default)]
        held_ms: u64,
    },
    /// Either way: this migration is over and the sender did not (destination)
    /// or will not (source) hand the job over.
    Abort { reason: AbortReason },
}

impl Body {
    /// Short name for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Body::Offer(_) => "Offer",
            Body::Have { .. } => "Have",
            Body::Round { .. } => "Round",
            Body::RoundAck { .. } => "RoundAck",
            Body::Progress { .. } => "Progress",
            Body::Final { .. } => "Final",
            Body::Ready => "Ready",
            Body::Go => "Go",
            Body::GoAck { .. } => "GoAck",
            Body::Abort { .. } => "Abort",
        }
    }
}

/// A message that is malformed on its own (without protocol state).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("{what}: {len} entries, limit {limit}")]
    TooMany {
        what: &'static str,
        len: u64,
        limit: u64,
    },
    #[error("{what}: {len} bytes, limit {limit}")]
    TooLarge {
        what: &'static str,
        len: u64,
        limit: u64,
    },
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("manifest hash {actual} does not match its id {claimed}")]
    ManifestHashMismatch { claimed: ChunkId, actual: ChunkId },
}

fn check_chunks(what: &'static str, chunks: &[ChunkRef]) -> Result<(), MessageError> {
    if chunks.len() > MAX_STATE_CHUNKS {
        return Err(MessageError::TooMany {
            what,
            len: chunks.len() as u64,
            limit: MAX_STATE_CHUNKS as u64,
        });
    }
    if let Some(c) = chunks.iter().find(|c| c.len == 0 || c.len > MAX_CHUNK_SIZE) {
        return Err(MessageError::Malformed {
            what,
            detail: format!("chunk {} has length {}", c.id, c.len),
        });
    }
    Ok(())
}

fn check_round(what: &'static str, round: u32, min: u32) -> Result<(), MessageError> {
    if round < min || round > MAX_ROUNDS {
        return Err(MessageError::Malformed {
            what,
            detail: format!("round {round} outside {min}..={MAX_ROUNDS}"),
        });
    }
    Ok(())
}

fn check_compression(what: &'static str, c: Compression) -> Result<(), MessageError> {
    match c {
        Compression::Zstd(l) if !(1..=MAX_ZSTD_LEVEL).contains(&l) => {
            Err(MessageError::Malformed {
                what,
                detail: format!("zstd level {l} outside 1..={MAX_ZSTD_LEVEL}"),
            })
        }
        _ => Ok(()),
    }
}

impl Message {
    /// Check every bound that needs no protocol state (a Final's manifest hash
    /// needs the offer: the destination checks it when it applies the patch).
    pub fn validate(&self) -> Result<(), MessageError> {
        match &self.body {
            Body::Offer(_) if self.generation == u64::MAX => Err(MessageError::Malformed {
                what: "offer",
                detail: "generation cannot go up".into(),
            }),
            Body::Offer(o) => {
                if o.job.is_empty() || o.job.len() > MAX_JOB_ID_LEN {
                    return Err(MessageError::Malformed {
                        what: "offer",
                        detail: format!("job id of {} bytes", o.job.len()),
                    });
                }
                o.state.validate()
            }
            Body::Have { have, .. } => {
                if have.len() > MAX_STATE_CHUNKS {
                    return Err(MessageError::TooMany {
                        what: "have list",
                        len: have.len() as u64,
                        limit: MAX_STATE_CHUNKS as u64,
                    });
                }
                Ok(())
            }
            Body::Round {
                round,
                chunks,
                compression,
            } => {
                check_round("round", *round, 1)?;
                check_compression("round", *compression)?;
                check_chunks("round chunk list", chunks)
            }
            Body::RoundAck { round } => check_round("round ack", *round, 1),
            Body::Progress { round, .. } => check_round("progress", *round, 1),
            Body::Final {
                after_round,
                chunks,
                compression,
                manifest,
                postcopy,
                ..
            } => {
                check_round("final", *after_round, 0)?;
                check_compression("final", *compression)?;
                check_chunks("final chunk list", chunks)?;
                if manifest.head.is_empty() {
                    return Err(MessageError::Malformed {
                        what: "final",
                        detail: "empty manifest".into(),
                    });
                }
                if manifest.head.len() > MAX_MANIFEST_BYTES {
                    return Err(MessageError::TooLarge {
                        what: "final manifest",
                        len: manifest.head.len() as u64,
                        limit: MAX_MANIFEST_BYTES as u64,
                    });
                }
                if manifest.zeroed.len() > MAX_STATE_CHUNKS {
                    return Err(MessageError::TooMany {
                        what: "zeroed slots",
                        len: manifest.zeroed.len() as u64,
                        limit: MAX_STATE_CHUNKS as u64,
                    });
                }
                if let Some(d) = postcopy {
                    if d.hot.len() > MAX_STATE_CHUNKS {
                        return Err(MessageError::TooMany {
                            what: "hot slots",
                            len: d.hot.len() as u64,
                            limit: MAX_STATE_CHUNKS as u64,
                        });
                    }
                }
                // The manifest's hash is checked by the destination once it has
                // rebuilt it from the patch and the offer (`ManifestPatch::apply`).
                Ok(())
            }
            Body::Ready | Body::Go | Body::GoAck { .. } | Body::Abort { .. } => Ok(()),
        }
    }
}
