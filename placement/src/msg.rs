//! What nodes gossip. Small on purpose: short field names, columns as sparse
//! delta-coded fixed-point pairs, costs as `f32`. Everything a node uses from its own
//! messages goes through the same wire precision, so every node computes from the very
//! same numbers. Decoding validates against the round (indices, lengths, ranges): a
//! message from the network is untrusted.

use serde::{Deserialize, Serialize};

use crate::model::{effective_cost, Hysteresis, Job, JobId, NodeEnv, NodeId};

/// Fixed-point scale of column entries: `x = q / Q`.
pub const Q: u32 = 65_535;

/// Upper bound on any cost, capacity or price on the wire (seconds / CPU units).
pub const MAX_VALUE: f32 = 1.0e9;

/// A price or ρ from the wire, sanitised (finite, within range, ≥ 0).
pub fn sane(v: f32) -> f64 {
    if v.is_finite() {
        v.clamp(0.0, MAX_VALUE) as f64
    } else {
        0.0
    }
}

/// One gossip message. `(round, view, iter, from)` identifies it; handling one twice is a
/// no-op.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Msg {
    #[serde(rename = "r")]
    pub round: u64,
    /// Digest of the view: round, membership epoch and set, job list, solver settings.
    #[serde(rename = "v")]
    pub view: u32,
    #[serde(rename = "i")]
    pub iter: u32,
    #[serde(rename = "n")]
    pub from: NodeId,
    #[serde(rename = "b")]
    pub body: Body,
    /// Sent again because the sender made no progress for a tick: "I may be missing
    /// something — re-send me your last messages". A copy without it (a late delivery,
    /// an answer to a probe) asks for nothing, so answers never beget answers.
    #[serde(rename = "p", default, skip_serializing_if = "std::ops::Not::not")]
    pub probe: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// Iteration 0 of a view: the sender's constraints and costs, its starting column and
    /// (warm start) its capacity price and ρ from its last solve.
    #[serde(rename = "S")]
    Start(Start),
    /// The sender's column `x[·][from]` after iteration `iter`, and its capacity price
    /// (the multiplier of its local step, cost units per unit of demand).
    #[serde(rename = "C")]
    Column(Column, f32),
    /// The sender stopped at `iter` and ran its share of the rounding (it is one of the
    /// members with a rounding task, see [`crate::integer::round_task`]): its cheapest
    /// placement, or why it found none.
    #[serde(rename = "R")]
    Candidate(Candidate),
    /// The sender stopped at `iter` and chose the placement with this digest (the
    /// cheapest candidate).
    #[serde(rename = "F")]
    Final(u64),
    /// Starts or columns forwarded in one frame by the log-depth relay
    /// ([`crate::relay::Schedule`]): at step `k` the sender's own and those of the next
    /// `size(k) − 1` members on the ring, to the member `2^k` before it. Each inner
    /// message keeps its author; the receiver accepts only `Start`/`Column` messages of
    /// the same round and view by those authors, from the member the schedule names.
    #[serde(rename = "B")]
    Relay(Vec<Msg>),
    /// Relayed views (see [`crate::relay`]): the final digests go to the task holders
    /// only, and each holder, once it holds every member's, sends this list of
    /// `(member, digest)` in member order to everyone.
    #[serde(rename = "V")]
    Verdict(Vec<(NodeId, u64)>),
}

/// A rounding task's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Candidate {
    /// The member index (in the sorted member list) of every job, in job order.
    #[serde(rename = "a")]
    Placement(Vec<u32>),
    /// No integer placement: this job fitted nowhere.
    #[serde(rename = "f")]
    Failed(JobId),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Start {
    #[serde(rename = "s")]
    pub spec: Spec,
    #[serde(rename = "x")]
    pub column: Column,
    /// Capacity price of the sender (cost units per unit of demand), 0 without history.
    #[serde(rename = "m")]
    pub mu: f32,
    /// The ρ the sender ended its last solve with (0: none, use the configured one).
    #[serde(rename = "h")]
    pub rho: f32,
}

/// A node's constraints and cost column: sparse over the jobs it may run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    #[serde(rename = "c")]
    cap: f32,
    #[serde(rename = "k")]
    knee: f32,
    #[serde(rename = "l")]
    slope: f32,
    /// Delta-coded job indices (on the wire: one byte string of LEB128 varints).
    #[serde(rename = "j", with = "varints")]
    idx: Vec<u32>,
    /// On the wire: one byte string of little-endian `f32`s.
    #[serde(rename = "e", with = "f32s")]
    cost: Vec<f32>,
}

impl Spec {
    /// The spec node `me` announces for `jobs` (sorted by id).
    pub fn from_env(me: NodeId, env: &NodeEnv, jobs: &[Job], h: &Hysteresis) -> Spec {
        let cap = env.capacity.clamp(0.0, MAX_VALUE as f64) as f32;
        let (knee, slope) = if env.load.knee < 1.0 && env.load.slope > 0.0 {
            (
                (env.load.knee.max(0.0) * cap as f64) as f32,
                env.load.slope.min(MAX_VALUE as f64) as f32,
            )
        } else {
            (cap, 0.0)
        };
        let (mut idx, mut cost) = (Vec::new(), Vec::new());
        let mut last = 0u32;
        for (j, job) in jobs.iter().enumerate() {
            if let Some(c) = effective_cost(job, me, env, h) {
                let j = j as u32;
                idx.push(if idx.is_empty() { j } else { j - last });
                last = j;
                cost.push(c.clamp(0.0, MAX_VALUE as f64) as f32);
            }
        }
        Spec {
            cap,
            knee,
            slope,
            idx,
            cost,
        }
    }

    pub fn capacity(&self) -> f64 {
        self.cap as f64
    }
    /// Absolute knee of the load term.
    pub fn knee_abs(&self) -> f64 {
        self.knee as f64
    }
    pub fn slope(&self) -> f64 {
        self.slope as f64
    }

    /// Validated `(job index, cost)` pairs for a round of `n_jobs` jobs.
    pub fn costs(&self, n_jobs: usize) -> Result<Vec<(usize, f64)>, &'static str> {
        let bad = |reason| reason;
        let ok = |v: f32| v.is_finite() && (0.0..=MAX_VALUE).contains(&v);
        if !ok(self.cap) || !ok(self.knee) || !ok(self.slope) || self.knee > self.cap {
            return Err(bad("capacity or load term out of range"));
        }
        if self.idx.len() != self.cost.len() || self.idx.len() > n_jobs {
            return Err(bad("cost list length"));
        }
        let mut out = Vec::with_capacity(self.idx.len());
        let mut j: u64 = 0;
        for (k, (&d, &c)) in self.idx.iter().zip(&self.cost).enumerate() {
            if k > 0 && d == 0 {
                return Err(bad("cost indices not increasing"));
            }
            j += d as u64;
            if j >= n_jobs as u64 || !ok(c) {
                return Err(bad("cost entry out of range"));
            }
            out.push((j as usize, c as f64));
        }
        Ok(out)
    }
}

/// A sparse column: flat `[Δjob, q, Δjob, q, …]`, `x[job] = q / Q`, zeros omitted. On
/// the wire one byte string of LEB128 varints (a CBOR array of integers costs a header
/// per entry to write and to read; columns are most of what the swarm exchanges, and the
/// relay re-encodes them at every hop).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Column(#[serde(with = "varints")] pub Vec<u32>);

/// Byte-string visitor shared by the compact encodings below.
struct BytesVisitor<T>(fn(&[u8]) -> Result<T, &'static str>);

impl<T> serde::de::Visitor<'_> for BytesVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a byte string")
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }
    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<T, E> {
        (self.0)(&v).map_err(E::custom)
    }
}

/// `Vec<u32>` as one byte string of LEB128 varints.
mod varints {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u32], s: S) -> Result<S::Ok, S::Error> {
        let mut out = Vec::with_capacity(v.len() * 2);
        for &x in v {
            let mut x = x;
            while x >= 0x80 {
                out.push((x as u8) | 0x80);
                x >>= 7;
            }
            out.push(x as u8);
        }
        s.serialize_bytes(&out)
    }

    /// Untrusted: at most 5 bytes per value, no value past `u32::MAX`, no cut-off value.
    pub fn decode(b: &[u8]) -> Result<Vec<u32>, &'static str> {
        let mut out = Vec::with_capacity(b.len());
        let (mut acc, mut shift) = (0u64, 0u32);
        for &byte in b {
            acc |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                out.push(u32::try_from(acc).map_err(|_| "varint above u32")?);
                (acc, shift) = (0, 0);
            } else {
                shift += 7;
                if shift > 28 {
                    return Err("varint too long");
                }
            }
        }
        if shift != 0 {
            return Err("varint cut short");
        }
        Ok(out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        // byte_buf: ciborium's `deserialize_bytes` takes only what fits its scratch
        // buffer (4 KiB); this reads any length, chunk by chunk (what arrived, never a
        // declared length).
        d.deserialize_byte_buf(super::BytesVisitor(decode))
    }
}

/// `Vec<f32>` as one byte string of little-endian values.
mod f32s {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[f32], s: S) -> Result<S::Ok, S::Error> {
        let out: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        s.serialize_bytes(&out)
    }

    pub fn decode(b: &[u8]) -> Result<Vec<f32>, &'static str> {
        if !b.len().is_multiple_of(4) {
            return Err("f32 list length");
        }
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        // byte_buf: ciborium's `deserialize_bytes` takes only what fits its scratch
        // buffer (4 KiB); this reads any length, chunk by chunk (what arrived, never a
        // declared length).
        d.deserialize_byte_buf(super::BytesVisitor(decode))
    }
}

impl Column {
    /// Encode a dense column whose entries are already multiples of `1/Q`.
    pub fn from_dense(x: &[f64]) -> Column {
        let mut v = Vec::new();
        let mut last = 0usize;
        let mut first = true;
        for (j, &xj) in x.iter().enumerate() {
            let q = (xj * Q as f64).round() as u32;
            if q > 0 {
                v.push(if first { j } else { j - last } as u32);
                v.push(q.min(Q));
                last = j;
                first = false;
            }
        }
        Column(v)
    }

    /// Decode into a dense column of `n_jobs` entries; `None` if malformed.
    pub fn to_dense(&self, n_jobs: usize) -> Option<Vec<f64>> {
        if !self.0.len().is_multiple_of(2) || self.0.len() / 2 > n_jobs {
            return None;
        }
        let mut x = vec![0.0; n_jobs];
        let mut j: u64 = 0;
        for (k, pair) in self.0.chunks_exact(2).enumerate() {
            if k > 0 && pair[0] == 0 {
                return None;
            }
            j += pair[0] as u64;
            if j >= n_jobs as u64 || pair[1] > Q || pair[1] == 0 {
                return None;
            }
            x[j as usize] = pair[1] as f64 / Q as f64;
        }
        Some(x)
    }
}

/// Snap a value in [0, 1] down to the wire grid (down, so a column that meets its
/// capacity still does after quantisation).
pub fn quantise(x: f64) -> f64 {
    (x.clamp(0.0, 1.0) * Q as f64 + 1e-9).floor() / Q as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_vectors_round_trip_and_reject_garbage() {
        let v = vec![0, 1, 127, 128, 300, 65_535, u32::MAX];
        let mut buf = Vec::new();
        ciborium::into_writer(&Column(v.clone()), &mut buf).unwrap();
        let back: Column = ciborium::from_reader(&buf[..]).unwrap();
        assert_eq!(back.0, v);
        // Longer than ciborium's 4 KiB scratch buffer.
        let long: Vec<u32> = (0..5000).map(|i| i * 977).collect();
        let mut buf = Vec::new();
        ciborium::into_writer(&Column(long.clone()), &mut buf).unwrap();
        assert!(buf.len() > 8192);
        let back: Column = ciborium::from_reader(&buf[..]).unwrap();
        assert_eq!(back.0, long);
        // A byte string that claims more than there is.
        let mut cut = buf.clone();
        cut.truncate(100);
        assert!(ciborium::from_reader::<Column, _>(&cut[..]).is_err());
        assert_eq!(varints::decode(&[0x80]), Err("varint cut short"));
        assert_eq!(varints::decode(&[0xff; 6]), Err("varint too long"));
        assert_eq!(
            varints::decode(&[0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err("varint above u32")
        );
        assert_eq!(varints::decode(&[]), Ok(vec![]));
        let f = vec![0.5f32, -1.0, f32::MAX, 1e-9];
        let mut out = Vec::new();
        for x in &f {
            out.extend_from_slice(&x.to_le_bytes());
        }
        assert_eq!(f32s::decode(&out), Ok(f));
        assert!(f32s::decode(&out[..5]).is_err());
        // A column sent as an array of integers (no byte string) is refused.
        let mut arr = Vec::new();
        ciborium::into_writer(&vec![1u32, 2], &mut arr).unwrap();
        assert!(ciborium::from_reader::<Column, _>(&arr[..]).is_err());
    }

    #[test]
    fn column_round_trip_and_rejects() {
        let x = vec![0.0, quantise(0.5), 0.0, 1.0, quantise(1e-3)];
        let c = Column::from_dense(&x);
        assert_eq!(c.to_dense(5), Some(x.clone()));
        assert_eq!(c.to_dense(4), None, "index past the job count");
        assert_eq!(Column(vec![1]).to_dense(5), None, "odd length");
        assert_eq!(Column(vec![1, 5, 0, 5]).to_dense(5), None, "repeated index");
        assert_eq!(Column(vec![1, Q + 1]).to_dense(5), None, "value above 1");
    }
}
