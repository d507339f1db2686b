//! What roam nodes say to each other on top of the mesh: control requests (one CBOR
//! [`NodeMsg`] per request, answered with a [`NodeReply`]) and the heartbeat gossip.
//!
//! Every decoder here takes bytes from the network: sizes are bounded by the mesh
//! (control frames) and checked again here, and a malformed message is a typed error.

use serde::{Deserialize, Serialize};
use store::BlobRef;

/// Largest control message a node decodes (the mesh refuses larger frames anyway).
pub const MAX_NODE_MSG: usize = 1 << 20;
/// Largest heartbeat.
pub const MAX_HEARTBEAT: usize = 64 << 10;
/// Most jobs one heartbeat lists.
pub const MAX_HEARTBEAT_JOBS: usize = 256;
/// Largest output piece forwarded in one message.
pub const MAX_OUTPUT_PIECE: usize = 512 << 10;
/// Longest job id.
pub const MAX_JOB_ID: usize = 64;

/// An output stream of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

/// How a job is started (what `roam run` sends).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLaunch {
    pub job: String,
    /// argv including argv[0].
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub stdin: Vec<u8>,
    pub seed: u64,
    /// The node whose log book receives the job's output (peer id bytes).
    #[serde(with = "serde_bytes")]
    pub home: Vec<u8>,
}

/// A control request from one node to another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NodeMsg {
    /// One message of a migration (either direction). The source adds the job's
    /// home (peer id bytes), so the destination knows where output goes.
    Migrate {
        msg: migrate::Message,
        #[serde(with = "serde_bytes")]
        home: Vec<u8>,
        /// Chunks the message names, sent along when they are few (the last dirty
        /// chunks of a Final), so the destination need not fetch them: one round
        /// trip less while the job is paused. The receiver verifies each hash.
        #[serde(default)]
        inline: Vec<InlineChunk>,
    },
    /// Output of a job, for its home node's log book.
    Output {
        job: String,
        stream: StreamKind,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The job ended; its streams are complete at these lengths.
    Exited {
        job: String,
        code: i32,
        stdout_len: u64,
        stderr_len: u64,
    },
    /// Start a job here; its (original) module is the blob `module`, fetch it from the
    /// sender.
    Start { launch: JobLaunch, module: BlobRef },
    /// Move `job` (running at the receiver) to the node named `to`; `mode` as
    /// `[migration] mode` (None: the receiver's config).
    MoveJob {
        job: String,
        to: String,
        #[serde(default)]
        mode: Option<String>,
    },
    /// Move every job away and accept no new ones.
    Drain,
    /// Read a job's log from its home.
    ReadLog {
        job: String,
        stream: StreamKind,
        from: u64,
        max: u32,
    },
    /// A checkpoint of `job`, running at the sender, for the receiver to keep as one of
    /// its replicas: the receiver fetches the chunks it lacks from the sender, stores the
    /// manifest and answers `Ok` only once all of it is stored (the acknowledgement).
    Replicate {
        job: String,
        generation: u64,
        /// Copy number at the sender within the generation.
        seq: u64,
        #[serde(with = "serde_bytes")]
        home: Vec<u8>,
        #[serde(with = "serde_bytes")]
        manifest: Vec<u8>,
        /// Set when a recovery copies the checkpoint it resumes from: the generation
        /// the sender claims. The receiver learns of the claim now rather than from a
        /// heartbeat a few hundred ms later — holding the same checkpoint, it might
        /// otherwise outrank the sender and resume the job too.
        #[serde(default)]
        claim: Option<u64>,
    },
}

/// Most jobs a heartbeat lists as recently ended.
pub const MAX_HEARTBEAT_ENDED: usize = 128;
/// Most member names in one heartbeat.
pub const MAX_HEARTBEAT_MEMBERS: usize = 256;

/// A chunk carried inside a control message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineChunk {
    pub id: store::ChunkId,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Most bytes of chunks a migration message carries inline.
pub const MAX_INLINE_BYTES: usize = 768 << 10;

/// The answer to a [`NodeMsg`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeReply {
    Ok,
    /// For `MoveJob`: the move's summary line.
    Moved(String),
    Log(LogSlice),
    Error(String),
}

/// A piece of a job's log as read from its home.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSlice {
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Offset after `data`.
    pub next: u64,
    /// The exit code once the job ended and every byte arrived.
    pub exit_code: Option<i32>,
    /// The home knows this job.
    pub known: bool,
}

/// A job as a heartbeat lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    pub job: String,
    pub generation: u64,
    /// Running, paused (moving), ...
    pub state: String,
    #[serde(with = "serde_bytes")]
    pub home: Vec<u8>,
    pub memory_bytes: u64,
}

/// Gossiped by every node every `heartbeat_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub name: String,
    pub draining: bool,
    /// Load in [0, 1] (running jobs and any load injected by the operator).
    pub load: f64,
    pub speed: f64,
    pub jobs: Vec<JobSummary>,
    /// Changes whenever the node restarts: jobs it ran before are gone.
    #[serde(default)]
    pub incarnation: u64,
    /// The newest replicated checkpoint this node holds of each job.
    #[serde(default)]
    pub holdings: Vec<(String, recovery::CheckpointRef)>,
    /// Jobs that ended here recently (nobody must recover them).
    #[serde(default)]
    pub ended: Vec<String>,
    /// Jobs this node lost without ending them (a post-copy whose memory could not be
    /// completed), with the generation it ran: recover them as if the node had died.
    #[serde(default)]
    pub abandoned: Vec<(String, u64)>,
    /// Every member this node knows of (by name): a node that just (re)started learns
    /// the whole membership from its first heartbeat, instead of counting a majority
    /// of the few members it has heard itself.
    #[serde(default)]
    pub members: Vec<String>,
    /// Jobs this node restored to recover them and announces before running them (a
    /// claim), with the generation: nobody else recovers them meanwhile.
    #[serde(default)]
    pub claims: Vec<(String, u64)>,
    /// Jobs whose node this node sees gone (dead, restarted without them, or gave them
    /// up) and that it is deciding how to recover, with the newest generation it knows
    /// ran and that node's name. A holder that restarted since knows nothing of where
    /// its replicas' jobs ran; this tells it the job needs recovering (and it may be
    /// the one to resume it).
    #[serde(default)]
    pub orphans: Vec<(String, u64, String)>,
    /// Jobs this node moved away recently: (job, the generation it runs at the
    /// destination, the destination's name). The destination may die before any of
    /// its own heartbeats listed the job; without this the others, seeing the source
    /// stop listing it, took the job for ended and nobody recovered it.
    #[serde(default)]
    pub moved: Vec<(String, u64, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("invalid message: {0}")]
    Invalid(String),
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing CBOR into a Vec cannot fail for these types.
    if let Err(e) = ciborium::into_writer(v, &mut out) {
        tracing::error!(%e, "CBOR encoding failed");
    }
    out
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, ProtoError> {
    if bytes.len() > max {
        return Err(ProtoError::TooLarge(bytes.len()));
    }
    ciborium::from_reader(bytes).map_err(|e| ProtoError::Malformed(e.to_string()))
}

pub fn valid_job_id(job: &str) -> bool {
    !job.is_empty()
        && job.len() <= MAX_JOB_ID
        && job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn check_job(job: &str) -> Result<(), ProtoError> {
    if valid_job_id(job) {
        Ok(())
    } else {
        Err(ProtoError::Invalid(format!("job id {job:?}")))
    }
}

impl NodeMsg {
    pub fn decode(bytes: &[u8]) -> Result<NodeMsg, ProtoError> {
        let m: NodeMsg = decode(bytes, MAX_NODE_MSG)?;
        match &m {
            NodeMsg::Migrate { msg, home, inline } => {
                msg.validate()
                    .map_err(|e| ProtoError::Invalid(e.to_string()))?;
                if home.len() > 128 {
                    return Err(ProtoError::Invalid("home peer id too long".into()));
                }
                let total: usize = inline.iter().map(|c| c.data.len()).sum();
                if total > MAX_INLINE_BYTES {
                    return Err(ProtoError::TooLarge(total));
                }
                if let Some(c) = inline.iter().find(|c| store::ChunkId::of(&c.data) != c.id) {
                    return Err(ProtoError::Invalid(format!(
                        "inline chunk {} does not match its hash",
                        c.id
                    )));
                }
            }
            NodeMsg::Output { job, data, .. } => {
                check_job(job)?;
                if data.len() > MAX_OUTPUT_PIECE {
                    return Err(ProtoError::TooLarge(data.len()));
                }
            }
            NodeMsg::Exited { job, .. } | NodeMsg::ReadLog { job, .. } => check_job(job)?,
            NodeMsg::MoveJob { job, to, mode } => {
                check_job(job)?;
                if to.len() > 128 {
                    return Err(ProtoError::Invalid("node name too long".into()));
                }
                if mode.as_ref().is_some_and(|m| m.len() > 16) {
                    return Err(ProtoError::Invalid("move mode too long".into()));
                }
            }
            NodeMsg::Start { launch, module } => {
                check_job(&launch.job)?;
                module
                    .map
                    .validate("module")
                    .map_err(|e| ProtoError::Invalid(e.to_string()))?;
            }
            NodeMsg::Drain => {}
            NodeMsg::Replicate { job, home, .. } => {
                check_job(job)?;
                if home.len() > 128 {
                    return Err(ProtoError::Invalid("home peer id too long".into()));
                }
            }
        }
        Ok(m)
    }
}

impl NodeReply {
    pub fn decode(bytes: &[u8]) -> Result<NodeReply, ProtoError> {
        decode(bytes, MAX_NODE_MSG + 1024)
    }
}

impl Heartbeat {
    pub fn decode(bytes: &[u8]) -> Result<Heartbeat, ProtoError> {
        let h: Heartbeat = decode(bytes, MAX_HEARTBEAT)?;
        if h.jobs.len() > MAX_HEARTBEAT_JOBS {
            return Err(ProtoError::Invalid("too many jobs".into()));
        }
        if h.name.len() > 64 || !h.load.is_finite() || !h.speed.is_finite() {
            return Err(ProtoError::Invalid("bad name, load or speed".into()));
        }
        if h.members.len() > MAX_HEARTBEAT_MEMBERS
            || h.members.iter().any(|m| m.is_empty() || m.len() > 64)
            || h.orphans
                .iter()
                .chain(&h.moved)
                .any(|(_, _, m)| m.is_empty() || m.len() > 64)
        {
            return Err(ProtoError::Invalid("too many or bad member names".into()));
        }
        if h.holdings.len() > MAX_HEARTBEAT_JOBS
            || h.claims.len() > MAX_HEARTBEAT_JOBS
            || h.orphans.len() > MAX_HEARTBEAT_JOBS
            || h.moved.len() > MAX_HEARTBEAT_JOBS
            || h.ended.len() > MAX_HEARTBEAT_ENDED
            || h.abandoned.len() > MAX_HEARTBEAT_ENDED
        {
            return Err(ProtoError::Invalid(
                "too many holdings, ended or abandoned jobs".into(),
            ));
        }
        for j in &h.jobs {
            check_job(&j.job)?;
        }
        for j in h
            .holdings
            .iter()
            .map(|(j, _)| j)
            .chain(&h.ended)
            .chain(h.abandoned.iter().map(|(j, _)| j))
            .chain(h.claims.iter().map(|(j, _)| j))
            .chain(h.orphans.iter().map(|(j, _, _)| j))
            .chain(h.moved.iter().map(|(j, _, _)| j))
        {
            check_job(j)?;
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let m = NodeMsg::Output {
            job: "a-1".into(),
            stream: StreamKind::Stderr,
            offset: 7,
            data: b"hello".to_vec(),
        };
        assert_eq!(NodeMsg::decode(&encode(&m)).unwrap(), m);
        let bytes = encode(&m);
        for cut in 0..bytes.len() {
            assert!(NodeMsg::decode(&bytes[..cut]).is_err());
        }
        let bad = NodeMsg::Output {
            job: "../x".into(),
            stream: StreamKind::Stdout,
            offset: 0,
            data: vec![],
        };
        assert!(matches!(
            NodeMsg::decode(&encode(&bad)),
            Err(ProtoError::Invalid(_))
        ));
        assert!(NodeMsg::decode(&vec![0u8; MAX_NODE_MSG + 1]).is_err());
        let hb = Heartbeat {
            name: "n".into(),
            draining: false,
            load: f64::NAN,
            speed: 1.0,
            jobs: vec![],
            incarnation: 0,
            holdings: vec![],
            ended: vec![],
            abandoned: vec![],
            members: vec![],
            claims: vec![],
            orphans: vec![],
            moved: vec![],
        };
        assert!(Heartbeat::decode(&encode(&hb)).is_err());
        let too_long = Heartbeat {
            load: 0.0,
            members: vec!["m".repeat(65)],
            ..hb.clone()
        };
        assert!(Heartbeat::decode(&encode(&too_long)).is_err());
        let many = Heartbeat {
            load: 0.0,
            members: vec!["m".into(); MAX_HEARTBEAT_MEMBERS + 1],
            ..hb.clone()
        };
        assert!(Heartbeat::decode(&encode(&many)).is_err());
        let unnamed_destination = Heartbeat {
            load: 0.0,
            moved: vec![("job".into(), 2, String::new())],
            ..hb.clone()
        };
        assert!(Heartbeat::decode(&encode(&unnamed_destination)).is_err());
        let bad_job = Heartbeat {
            load: 0.0,
            moved: vec![("../job".into(), 2, "n2".into())],
            ..hb.clone()
        };
        assert!(Heartbeat::decode(&encode(&bad_job)).is_err());
        let moves = Heartbeat {
            load: 0.0,
            moved: vec![("job".into(), 0, "n2".into()); MAX_HEARTBEAT_JOBS + 1],
            ..hb.clone()
        };
        assert!(Heartbeat::decode(&encode(&moves)).is_err());
        let fine = Heartbeat {
            load: 0.0,
            members: vec!["n1".into(), "gw".into()],
            ..hb
        };
        assert_eq!(
            Heartbeat::decode(&encode(&fine)).map(|h| h.members).ok(),
            Some(vec!["n1".to_string(), "gw".to_string()])
        );
    }
}
