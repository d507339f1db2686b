//! How a chunk's bytes travel (wire) and rest (disk): optionally zstd-compressed,
//! always named by the hash of the uncompressed bytes, always decoded with a
//! bound on the output size and verified against that name.
//!
//! Two encodings share the same codec logic:
//! - [`EncodedChunk`], a CBOR-serialisable struct for the network;
//! - the on-disk chunk file: a 16-byte header (magic, codec, length) followed by
//!   the payload, so that a truncated or garbled file is detected before or by
//!   hashing.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};

use crate::error::{malformed, Result, StoreError};
use crate::ChunkId;

/// How the caller wants chunks compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// Store/send raw bytes.
    #[default]
    None,
    /// zstd at this level (1..=22; negative levels are the fast modes). If the
    /// result is not smaller than the input, the chunk is kept raw.
    Zstd(i32),
}

/// The codec of an encoded chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Codec {
    Raw,
    Zstd,
}

impl Codec {
    fn to_byte(self) -> u8 {
        match self {
            Codec::Raw => 0,
            Codec::Zstd => 1,
        }
    }
    fn from_byte(b: u8) -> Option<Codec> {
        match b {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// A chunk as it travels: name, codec, declared uncompressed length, payload.
/// Nothing in it is trusted until [`EncodedChunk::decode_verified`] succeeds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodedChunk {
    pub id: ChunkId,
    pub codec: Codec,
    pub uncompressed_len: u64,
    pub bytes: serde_bytes::ByteBuf,
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compress `data` according to `compression`; returns the codec actually used
/// and the payload (raw when compression does not pay).
pub(crate) fn compress(data: &[u8], compression: Compression) -> (Codec, Vec<u8>) {
    let Compression::Zstd(level) = compression else {
        return (Codec::Raw, data.to_vec());
    };
    let out = COMPRESSOR.with(|c| {
        let mut slot = c.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            *slot = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
        }
        let (_, comp) = slot.as_mut()?;
        // Only worth it if it saves something: cap the output below the input.
        let mut out = Vec::with_capacity(data.len().saturating_sub(1));
        comp.compress_to_buffer(data, &mut out).ok().map(|_| out)
    });
    match out {
        Some(out) if out.len() < data.len() => (Codec::Zstd, out),
        _ => (Codec::Raw, data.to_vec()),
    }
}

/// Decode `payload` of `codec` into `out`, which must be exactly the declared
/// uncompressed length; never writes past `out`. Does not verify the hash.
pub(crate) fn decode_payload_into(
    id: &ChunkId,
    codec: Codec,
    payload: &[u8],
    out: &mut [u8],
) -> Result<()> {
    match codec {
        Codec::Raw => {
            if payload.len() != out.len() {
                return Err(StoreError::Corrupt {
                    id: *id,
                    path: None,
                    reason: format!(
                        "raw payload is {} bytes, declared {}",
                        payload.len(),
                        out.len()
                    ),
                });
            }
            out.copy_from_slice(payload);
            Ok(())
        }
        Codec::Zstd => {
            let n = DECOMPRESSOR.with(|d| {
                let mut slot = d.borrow_mut();
                if slot.is_none() {
                    *slot = zstd::bulk::Decompressor::new().ok();
                }
                match slot.as_mut() {
                    Some(dec) => dec.decompress_to_buffer(payload, out).ok(),
                    None => None,
                }
            });
            match n {
                Some(n) if n == out.len() => Ok(()),
                _ => Err(StoreError::DecompressLimit {
                    id: *id,
                    limit: out.len() as u64,
                }),
            }
        }
    }
}

fn check_hash(id: &ChunkId, data: &[u8]) -> Result<()> {
    if ChunkId::of(data) == *id {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            id: *id,
            path: None,
            reason: "hash mismatch".into(),
        })
    }
}

impl EncodedChunk {
    /// Encode `data`, computing its id.
    pub fn encode(data: &[u8], compression: Compression) -> EncodedChunk {
        Self::encode_with_id(ChunkId::of(data), data, compression)
    }

    /// Encode `data` whose id the caller already knows (the receiver verifies
    /// it anyway).
    pub fn encode_with_id(id: ChunkId, data: &[u8], compression: Compression) -> EncodedChunk {
        let (codec, bytes) = compress(data, compression);
        EncodedChunk {
            id,
            codec,
            uncompressed_len: data.len() as u64,
            bytes: serde_bytes::ByteBuf::from(bytes),
        }
    }

    /// Decompress (never producing more than `max_uncompressed_len` bytes) and
    /// verify the hash. A zstd bomb or a lying length is
    /// [`StoreError::DecompressLimit`]; a hash mismatch is [`StoreError::Corrupt`].
    pub fn decode_verified(&self, max_uncompressed_len: usize) -> Result<Vec<u8>> {
        let len = self.checked_len(max_uncompressed_len)?;
        let mut out = crate::util::try_zeroed_vec(len)?;
        self.decode_into(&mut out)?;
        Ok(out)
    }

    /// Like [`decode_verified`](Self::decode_verified) into a caller buffer of
    /// exactly `uncompressed_len` bytes.
    pub fn decode_into(&self, out: &mut [u8]) -> Result<()> {
        if out.len() as u64 != self.uncompressed_len {
            return Err(StoreError::InvalidArgument(format!(
                "output buffer is {} bytes, chunk declares {}",
                out.len(),
                self.uncompressed_len
            )));
        }
        decode_payload_into(&self.id, self.codec, &self.bytes, out)?;
        check_hash(&self.id, out)
    }

    fn checked_len(&self, max: usize) -> Result<usize> {
        if self.uncompressed_len > max as u64 {
            return Err(StoreError::DecompressLimit {
                id: self.id,
                limit: max as u64,
            });
        }
        // A payload larger than what zstd could ever need for `max` bytes is junk.
        let bound = zstd::zstd_safe::compress_bound(max) as u64 + 64;
        if self.bytes.len() as u64 > bound {
            return Err(StoreError::TooLarge {
                what: "encoded chunk payload",
                len: self.bytes.len() as u64,
                limit: bound,
            });
        }
        Ok(self.uncompressed_len as usize)
    }

    /// CBOR bytes of this chunk for the wire.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len() + 64);
        // Serialising plain data into a Vec cannot fail.
        let _ = ciborium::into_writer(self, &mut out);
        out
    }

    /// Parse CBOR from the wire, refusing input larger than what a chunk of
    /// `max_uncompressed_len` can need. Does not verify: call
    /// [`decode_verified`](Self::decode_verified).
    pub fn from_cbor(bytes: &[u8], max_uncompressed_len: usize) -> Result<EncodedChunk> {
        let limit = zstd::zstd_safe::compress_bound(max_uncompressed_len) as u64 + 256;
        if bytes.len() as u64 > limit {
            return Err(StoreError::TooLarge {
                what: "encoded chunk",
                len: bytes.len() as u64,
                limit,
            });
        }
        let chunk: EncodedChunk =
            ciborium::from_reader(bytes).map_err(|e| malformed("encoded chunk", e))?;
        chunk.checked_len(max_uncompressed_len)?;
        Ok(chunk)
    }
}

/// On-disk chunk file header (24 bytes): `b"RMCK"`, format version 1, codec
/// byte, two zero bytes, uncompressed length (u64 LE), payload check (8 bytes:
/// the first 8 bytes of blake3(payload) for zstd, zero for raw). The payload
/// follows.
///
/// The payload check exists because a zstd stream has bits the decoder
/// ignores: flipping one may still decode to the right bytes, and we want
/// *every* damaged byte of a file to be reported. For raw payloads the chunk
/// hash already covers every byte.
pub(crate) const FILE_MAGIC: [u8; 4] = *b"RMCK";
pub(crate) const FILE_VERSION: u8 = 1;
pub(crate) const FILE_HEADER_LEN: usize = 24;

fn payload_check(codec: Codec, payload: &[u8]) -> [u8; 8] {
    match codec {
        Codec::Raw => [0; 8],
        Codec::Zstd => {
            let mut c = [0u8; 8];
            c.copy_from_slice(&blake3::hash(payload).as_bytes()[..8]);
            c
        }
    }
}

/// Build a chunk file (header + payload).
pub(crate) fn encode_file(data: &[u8], compression: Compression) -> Vec<u8> {
    let (codec, payload) = compress(data, compression);
    let mut out = Vec::with_capacity(FILE_HEADER_LEN + payload.len());
    out.extend_from_slice(&FILE_MAGIC);
    out.push(FILE_VERSION);
    out.push(codec.to_byte());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload_check(codec, &payload));
    out.extend_from_slice(&payload);
    out
}

/// Parse a chunk file's header: (codec, uncompressed length, payload).
pub(crate) fn parse_file(bytes: &[u8], max_len: usize) -> Result<(Codec, usize, &[u8]), String> {
    if bytes.len() < FILE_HEADER_LEN {
        return Err(format!(
            "file is {} bytes, shorter than its header",
            bytes.len()
        ));
    }
    if bytes[0..4] != FILE_MAGIC {
        return Err("bad magic".into());
    }
    if bytes[4] != FILE_VERSION {
        return Err(format!("unknown file version {}", bytes[4]));
    }
    let codec = Codec::from_byte(bytes[5]).ok_or_else(|| format!("unknown codec {}", bytes[5]))?;
    if bytes[6..8] != [0, 0] {
        return Err("reserved header bytes are not zero".into());
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(len);
    if len > max_len as u64 {
        return Err(format!("declared length {len} exceeds limit {max_len}"));
    }
    let payload = &bytes[FILE_HEADER_LEN..];
    if bytes[16..24] != payload_check(codec, payload) {
        return Err("payload check mismatch".into());
    }
    Ok((codec, len as usize, payload))
}

/// Decode and verify a chunk file's bytes into a new buffer.
pub(crate) fn decode_file(id: &ChunkId, bytes: &[u8], max_len: usize) -> Result<Vec<u8>, String> {
    let (codec, len, payload) = parse_file(bytes, max_len)?;
    let mut out = crate::util::try_zeroed_vec(len).map_err(|e| e.to_string())?;
    decode_payload_into(id, codec, payload, &mut out).map_err(|e| e.to_string())?;
    if ChunkId::of(&out) != *id {
        return Err("hash mismatch".into());
    }
    Ok(out)
}

/// Decode and verify a chunk file's bytes into `out` (must be the exact length).
pub(crate) fn decode_file_into(id: &ChunkId, bytes: &[u8], out: &mut [u8]) -> Result<(), String> {
    let (codec, len, payload) = parse_file(bytes, out.len())?;
    if len != out.len() {
        return Err(format!("file holds {len} bytes, expected {}", out.len()));
    }
    decode_payload_into(id, codec, payload, out).map_err(|e| e.to_string())?;
    if ChunkId::of(out) != *id {
        return Err("hash mismatch".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i / 7 % 251) as u8).collect()
    }

    #[test]
    fn roundtrip_raw_and_zstd() {
        let data = sample(65536);
        for c in [
            Compression::None,
            Compression::Zstd(1),
            Compression::Zstd(19),
        ] {
            let e = EncodedChunk::encode(&data, c);
            assert_eq!(e.id, ChunkId::of(&data));
            if c != Compression::None {
                assert_eq!(e.codec, Codec::Zstd);
                assert!(e.bytes.len() < data.len() / 4);
            }
            let wire = e.to_cbor();
            let back = EncodedChunk::from_cbor(&wire, 65536).unwrap();
            assert_eq!(back, e);
            assert_eq!(back.decode_verified(65536).unwrap(), data);
        }
    }

    #[test]
    fn incompressible_stays_raw() {
        let mut x = 0x9e3779b97f4a7c15u64;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let e = EncodedChunk::encode(&data, Compression::Zstd(3));
        assert_eq!(e.codec, Codec::Raw);
        assert_eq!(e.decode_verified(4096).unwrap(), data);
    }

    #[test]
    fn zstd_bomb_is_rejected() {
        // 64 MiB of zeros compresses to a few KiB; claim it is one 64 KiB chunk.
        let big = vec![0u8; 64 << 20];
        let payload = zstd::bulk::compress(&big, 3).unwrap();
        assert!(payload.len() < 1 << 16);
        let bomb = EncodedChunk {
            id: ChunkId::of(&big[..65536]),
            codec: Codec::Zstd,
            uncompressed_len: 65536,
            bytes: serde_bytes::ByteBuf::from(payload.clone()),
        };
        assert!(matches!(
            bomb.decode_verified(65536),
            Err(StoreError::DecompressLimit { limit: 65536, .. })
        ));
        // Honest length, but over the receiver's limit: rejected before allocating.
        let honest = EncodedChunk {
            uncompressed_len: big.len() as u64,
            ..bomb
        };
        assert!(matches!(
            honest.decode_verified(65536),
            Err(StoreError::DecompressLimit { .. })
        ));
    }

    #[test]
    fn wrong_hash_and_lying_length_are_typed_errors() {
        let data = sample(1000);
        let mut e = EncodedChunk::encode(&data, Compression::None);
        e.id = ChunkId::of(b"other");
        assert!(matches!(
            e.decode_verified(4096),
            Err(StoreError::Corrupt { .. })
        ));
        let mut e = EncodedChunk::encode(&data, Compression::Zstd(1));
        e.uncompressed_len = 999;
        assert!(matches!(
            e.decode_verified(4096),
            Err(StoreError::DecompressLimit { .. })
        ));
        let mut e = EncodedChunk::encode(&data, Compression::None);
        e.uncompressed_len = 1001;
        assert!(matches!(
            e.decode_verified(4096),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn file_header_detects_damage() {
        let data = sample(5000);
        let id = ChunkId::of(&data);
        for c in [Compression::None, Compression::Zstd(1)] {
            let f = encode_file(&data, c);
            assert_eq!(decode_file(&id, &f, 1 << 20).unwrap(), data);
            for pos in 0..f.len() {
                let mut g = f.clone();
                g[pos] ^= 0x40;
                assert!(
                    decode_file(&id, &g, 1 << 20).is_err(),
                    "flip at {pos} of {} ({c:?}) undetected: {:02x?}",
                    f.len(),
                    &f[pos.saturating_sub(4)..(pos + 4).min(f.len())]
                );
            }
            for cut in 0..f.len() {
                assert!(decode_file(&id, &f[..cut], 1 << 20).is_err());
            }
        }
    }
}
