//! A checkpoint means the same bytes on every host. Its id is the blake3 of its
//! manifest's encoding, and x86_64 and aarch64 nodes exchange manifests, chunk maps and
//! encoded chunks: so nothing in them may depend on the host's byte order or pointer
//! width. Integers are CBOR integers (explicitly big-endian, minimal length, whatever
//! the host), lengths and indices are `u64` (never a raw `usize`), and the chunk file
//! header is explicitly little-endian.
//!
//! The pinned ids below were computed on x86_64 and are checked by the same test built
//! for aarch64 and run under qemu-aarch64 (see README, "Heterogeneous swarms"). A
//! deliberate format change bumps `MANIFEST_VERSION` and these ids with it.

use std::collections::BTreeMap;

use serde_bytes::ByteBuf;
use store::{BlobRef, ChunkId, ChunkMap, Codec, Compression, EncodedChunk, Manifest};

/// The checkpoint id of [`manifest`]'s encoding (pinned).
const MANIFEST_ID: &str = "16fc2060bf43c821904f646fcf3f9920852c5190e00e39cca588859f614924f3";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// CBOR's encoding of an unsigned integer that needs 8 bytes: 0x1b, then big-endian.
fn cbor_u64(v: u64) -> Vec<u8> {
    let mut out = vec![0x1b];
    out.extend_from_slice(&v.to_be_bytes());
    out
}

/// A manifest whose numbers do not fit 32 bits (a 32-bit host's usize) and whose byte
/// patterns differ between byte orders.
fn manifest() -> Manifest {
    let chunk_size = 64 << 10;
    // 5 GiB of memory: chunk indices past 65 535 and a length past u32::MAX.
    let memory = ChunkMap {
        len: 5 << 30,
        chunk_size,
        chunks: vec![
            (0, ChunkId::of(b"first")),
            (70_000, ChunkId::of(b"past 4 GiB")),
            ((5 << 30) / u64::from(chunk_size) - 1, ChunkId::of(b"last")),
        ],
    };
    let module_bytes = b"\0asm\x01\0\0\0".to_vec();
    let module = BlobRef {
        hash: ChunkId::of(&module_bytes),
        map: ChunkMap {
            len: module_bytes.len() as u64,
            chunk_size,
            chunks: vec![(0, ChunkId::of(&module_bytes))],
        },
    };
    let mut extra = BTreeMap::new();
    extra.insert(
        "file:0:out.txt".to_string(),
        BlobRef {
            hash: ChunkId::of(b"out"),
            map: ChunkMap::empty(0x1_0000_0001, chunk_size),
        },
    );
    Manifest {
        version: store::MANIFEST_VERSION,
        job: "autopilot.wasm-1a2b".into(),
        generation: 0x0102_0304_0506_0708,
        module,
        memory,
        globals: ByteBuf::from(vec![0xde, 0xad, 0xbe, 0xef]),
        host_state: ByteBuf::from(vec![1, 2, 3]),
        extra,
        parent: Some(ChunkId::of(b"parent")),
    }
}

#[test]
fn manifest_encoding_and_checkpoint_id_do_not_depend_on_the_host() {
    let m = manifest();
    m.validate().expect("a valid manifest");
    let bytes = m.encode();
    // Integers wider than 32 bits are CBOR integers, big-endian by the format.
    for v in [0x0102_0304_0506_0708u64, 5 << 30, 0x1_0000_0001] {
        assert!(
            contains(&bytes, &cbor_u64(v)),
            "{v:#x} is not a CBOR uint64 in the manifest"
        );
        // ...and never the host's native (or little-endian) bytes of it.
        assert!(
            !contains(&bytes, &v.to_le_bytes()),
            "{v:#x} raw little-endian"
        );
    }
    // Chunk index 70 000 needs 4 bytes: CBOR 0x1a + big-endian u32.
    let mut idx = vec![0x1a];
    idx.extend_from_slice(&70_000u32.to_be_bytes());
    assert!(contains(&bytes, &idx));
    // Decoded identically, and encoded again to the same bytes (canonical).
    let back = Manifest::decode(&bytes).expect("decodes");
    assert_eq!(back, m);
    assert_eq!(back.encode(), bytes);
    // The checkpoint id is the same on every host.
    assert_eq!(ChunkId::of(&bytes).to_hex(), MANIFEST_ID);
}

#[test]
fn encoded_chunks_name_lengths_explicitly() {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let c = EncodedChunk::encode(&data, Compression::None);
    assert_eq!(c.codec, Codec::Raw);
    let wire = c.to_cbor();
    // 100 000 as a CBOR uint32 (0x1a + big-endian), the length's only encoding.
    let mut len = vec![0x1a];
    len.extend_from_slice(&100_000u32.to_be_bytes());
    assert!(contains(&wire, &len));
    let back = EncodedChunk::from_cbor(&wire, 1 << 20).expect("parses");
    assert_eq!(back, c);
    assert_eq!(back.decode_verified(1 << 20).expect("verifies"), data);
    // The name is the hash of the uncompressed bytes, however they travel.
    let z = EncodedChunk::encode(&data, Compression::Zstd(3));
    assert_eq!(z.id, c.id);
    assert_eq!(z.decode_verified(1 << 20).expect("verifies"), data);
}
