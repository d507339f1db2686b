//! The replicas a node holds, as it must find them again after a restart.
//!
//! A holder that acknowledged a checkpoint promised its owner to keep it: the
//! owner counts that copy when it decides whether the job is safe, and the
//! recovery decision ([`crate::decide`]) counts it when the owner dies. A node
//! that restarts (its store on disk, or kept by the chaos harness) still has the
//! checkpoint's chunks, but the index that says "this manifest is my replica of
//! job J, copy number S of generation G, its output goes to home H" lived in
//! memory. Without it the restarted holder announces nothing, and a job whose
//! other holder dies meanwhile is lost although its checkpoint sits in a live
//! node's store (level 1's `bench.toml`, traced: a holder killed and restarted
//! twice, the other killed 1.8 s later).
//!
//! So each held replica is written as a small record ([`HeldNote`]) next to the
//! checkpoints, one per job, replaced only by a newer checkpoint
//! ([`supersedes`]) and before the acknowledgement is sent; at start the node
//! reads them back ([`HeldNote::decode`]), keeps those whose checkpoint is still
//! complete in its store, and announces them in its heartbeat again.

use serde::{Deserialize, Serialize};

use crate::ids::CheckpointRef;

/// Names of held-replica records start with this.
pub const NOTE_PREFIX: &str = "replica-";
/// Largest record [`HeldNote::decode`] accepts.
pub const MAX_NOTE_BYTES: usize = 4096;
/// Longest job id in a record.
const MAX_JOB: usize = 1024;
/// Longest home (a libp2p peer id's bytes are 38).
const MAX_HOME: usize = 256;

/// One replica held: the job's newest checkpoint this node acknowledged, and where
/// the job's output goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldNote {
    pub job: String,
    pub checkpoint: CheckpointRef,
    /// The job's home (opaque here: the shell's peer id bytes).
    pub home: Vec<u8>,
}

/// The record name of `job`'s replica: a fixed prefix and the hash of the job id,
/// so any job id gives a short, file-name-safe name.
pub fn note_name(job: &str) -> String {
    let h = blake3::Hasher::new_derive_key("roam 2026 held replica note v1")
        .update(job.as_bytes())
        .finalize();
    format!("{NOTE_PREFIX}{}", &h.to_hex()[..32])
}

impl HeldNote {
    /// CBOR.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        // Plain data into a Vec: cannot fail.
        let _ = ciborium::into_writer(self, &mut out);
        out
    }

    /// A record read back from the store: `None` when too large, malformed, or out
    /// of bounds (a damaged record is skipped, never trusted).
    pub fn decode(bytes: &[u8]) -> Option<HeldNote> {
        if bytes.len() > MAX_NOTE_BYTES {
            return None;
        }
        let n: HeldNote = ciborium::from_reader(bytes).ok()?;
        (!n.job.is_empty() && n.job.len() <= MAX_JOB && n.home.len() <= MAX_HOME).then_some(n)
    }
}

/// Whether a record of `new` replaces the record `old` held now: when there is none,
/// it is unreadable, or it names an older checkpoint of the same job. Imports of two
/// copies of one job can finish in either order; the older must not win.
pub fn supersedes(new: &HeldNote, old: Option<&[u8]>) -> bool {
    match old.and_then(HeldNote::decode) {
        None => true,
        Some(o) => o.job != new.job || o.checkpoint < new.checkpoint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::CheckpointId;

    fn note(job: &str, generation: u64, seq: u64) -> HeldNote {
        HeldNote {
            job: job.into(),
            checkpoint: CheckpointRef {
                generation,
                seq,
                id: CheckpointId([(generation * 16 + seq) as u8; 32]),
            },
            home: vec![1, 2, 3],
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let n = note("bigstate-19", 2, 7);
        assert_eq!(HeldNote::decode(&n.encode()), Some(n.clone()));
        assert_eq!(HeldNote::decode(b"garbage"), None);
        assert_eq!(HeldNote::decode(&[]), None);
        assert_eq!(HeldNote::decode(&vec![0u8; MAX_NOTE_BYTES + 1]), None);
        assert_eq!(HeldNote::decode(&note("", 1, 1).encode()), None);
        let mut far = n.clone();
        far.home = vec![0; MAX_HOME + 1];
        assert_eq!(HeldNote::decode(&far.encode()), None);
    }

    #[test]
    fn only_a_newer_checkpoint_replaces_the_record() {
        let old = note("j", 1, 5).encode();
        assert!(supersedes(&note("j", 1, 6), Some(&old)));
        assert!(supersedes(&note("j", 2, 1), Some(&old)));
        assert!(!supersedes(&note("j", 1, 5), Some(&old)));
        assert!(!supersedes(&note("j", 1, 4), Some(&old)));
        assert!(!supersedes(&note("j", 0, 9), Some(&old)));
        assert!(supersedes(&note("j", 0, 1), None));
        assert!(supersedes(&note("j", 0, 1), Some(b"damaged")));
    }

    #[test]
    fn names_are_short_safe_and_distinct() {
        let a = note_name("tracker-11");
        assert!(a.starts_with(NOTE_PREFIX));
        assert_eq!(a.len(), NOTE_PREFIX.len() + 32);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'));
        assert_eq!(a, note_name("tracker-11"));
        assert_ne!(a, note_name("tracker-12"));
        assert!(note_name(&"é/..".repeat(300)).len() <= 128);
    }
}
