//! Damage detection: every damaged byte of every file in a disk store is
//! reported by `verify()` and never returned as data; random mutations of
//! untrusted inputs (manifests, encoded chunks) give typed errors, not panics.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use rand::Rng;
use store::{ChunkId, Codec, Compression, EncodedChunk, Manifest, Problem, Store, StoreError};

const CS: usize = 4096;

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn small_store(dir: &Path) -> (Store, Vec<ChunkId>) {
    let store = Store::open(dir, cfg(CS as u32)).unwrap();
    let mut mem = image(6, CS, 1);
    // One incompressible chunk so both codecs are on disk.
    rng(5).fill(&mut mem[5 * CS..]);
    let a = store.checkpoint_full(meta(&store, "c", 1), &mem).unwrap();
    mem[0] ^= 0xff;
    let b = store
        .checkpoint_incremental(&a.checkpoint, meta(&store, "c", 2), &mem, &[0])
        .unwrap();
    (store, vec![a.id(), b.id()])
}

fn chunk_id_of(path: &Path) -> ChunkId {
    path.file_name().unwrap().to_str().unwrap().parse().unwrap()
}

#[test]
fn every_damaged_byte_is_reported_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _ids) = small_store(dir.path());
    assert!(store.verify().is_clean());
    let chunk_files = files_under(&dir.path().join("chunks"));
    assert!(chunk_files.len() >= 8);
    let mut codecs = [false; 2];
    let mut r = rng(77);
    let mut flips = 0;
    for path in &chunk_files {
        let id = chunk_id_of(path);
        let orig = fs::read(path).unwrap();
        codecs[orig[5] as usize] = true;
        // Every header byte, then a random sample of payload bytes.
        let mut positions: Vec<usize> = (0..24.min(orig.len())).collect();
        positions.extend((0..16).map(|_| r.random_range(0..orig.len())));
        for pos in positions {
            let mut bad = orig.clone();
            bad[pos] ^= 1 << r.random_range(0..8);
            fs::write(path, &bad).unwrap();
            let rep = store.verify();
            assert!(
                rep.mentions(&id),
                "flip at {pos} of {} not reported",
                path.display()
            );
            flips += 1;
        }
        // Truncations and an appended byte.
        for cut in [0, 1, 23, 24, orig.len() / 2, orig.len() - 1] {
            fs::write(path, &orig[..cut]).unwrap();
            assert!(
                store.verify().mentions(&id),
                "truncation to {cut} not reported"
            );
        }
        let mut longer = orig.clone();
        longer.push(0);
        fs::write(path, &longer).unwrap();
        assert!(store.verify().mentions(&id));
        fs::write(path, &orig).unwrap();
    }
    assert!(
        codecs[0] && codecs[1],
        "both raw and zstd files were exercised"
    );
    assert!(flips > 300);
    assert!(store.verify().is_clean());
}

#[test]
fn damaged_chunks_are_never_returned_as_data() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ids) = small_store(dir.path());
    drop(store);
    let mut r = rng(3);
    for path in files_under(&dir.path().join("chunks")) {
        let id = chunk_id_of(&path);
        let orig = fs::read(&path).unwrap();
        for _ in 0..8 {
            let pos = r.random_range(0..orig.len());
            let mut bad = orig.clone();
            bad[pos] ^= 0x80;
            fs::write(&path, &bad).unwrap();
            // Fresh open: the cache is empty, the read goes to the file.
            let store = Store::open(dir.path(), cfg(CS as u32)).unwrap();
            match store.get_chunk(&id) {
                Err(StoreError::Corrupt {
                    id: i,
                    path: Some(p),
                    ..
                }) => {
                    assert_eq!(i, id);
                    assert_eq!(p, path);
                }
                other => panic!("flip at {pos}: expected Corrupt, got {other:?}"),
            }
            // Restoring a checkpoint that uses it fails the same way.
            for cid in &ids {
                if cid == &id {
                    assert!(store.load_checkpoint(cid).is_err());
                    continue;
                }
                let c = store.load_checkpoint(cid).unwrap();
                if c.manifest.memory.chunks.iter().any(|e| e.1 == id) {
                    assert!(matches!(
                        store.restore_memory(&c.manifest),
                        Err(StoreError::Corrupt { .. })
                    ));
                }
            }
        }
        fs::write(&path, &orig).unwrap();
    }
}

#[test]
fn missing_chunks_and_bad_refs_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ids) = small_store(dir.path());
    let c = store.load_checkpoint(&ids[1]).unwrap();
    let victim = c.manifest.memory.chunks[2].1;
    let path = dir
        .path()
        .join("chunks")
        .join(&victim.to_string()[..2])
        .join(victim.to_string());
    fs::remove_file(&path).unwrap();
    let rep = store.verify();
    assert!(rep.problems.contains(&Problem::MissingChunk {
        checkpoint: ids[1],
        chunk: victim
    }));
    // A junk file among the refs, and a ref whose manifest is gone.
    let job_dir = dir.path().join("checkpoints").join("c");
    fs::write(job_dir.join("not-a-ref"), b"").unwrap();
    let mpath = dir
        .path()
        .join("chunks")
        .join(&ids[0].to_string()[..2])
        .join(ids[0].to_string());
    fs::remove_file(&mpath).unwrap();
    let rep = store.verify();
    assert!(rep.problems.iter().any(|p| matches!(
        p,
        Problem::BadCheckpoint {
            checkpoint: None,
            ..
        }
    )));
    assert!(rep
        .problems
        .iter()
        .any(|p| matches!(p, Problem::BadCheckpoint { checkpoint: Some(i), .. } if *i == ids[0])));
    drop(store);
    // On reopen, the checkpoint without a manifest is not listed.
    let store = Store::open(dir.path(), cfg(CS as u32)).unwrap();
    let listed: Vec<_> = store
        .list_checkpoints(None)
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, vec![ids[1]]);
}

#[test]
fn mutated_manifests_give_typed_errors() {
    let store = Store::in_memory(cfg(CS as u32)).unwrap();
    let mut mem = image(40, CS, 2);
    mem.truncate(39 * CS + 77);
    let mut m = meta(&store, "fuzz", 9);
    m.extra.insert("a".into(), store.put_blob(b"abc").unwrap());
    let c = store.checkpoint_full(m, &mem).unwrap();
    let good = store.get_chunk(&c.id()).unwrap();
    assert_eq!(Manifest::decode(&good).unwrap(), c.checkpoint.manifest);
    let mut r = rng(11);
    let (mut ok, mut err) = (0, 0);
    for i in 0..20_000 {
        let mut b = good.clone();
        match i % 5 {
            0 => {
                let p = r.random_range(0..b.len());
                b[p] ^= 1 << r.random_range(0..8);
            }
            1 => b.truncate(r.random_range(0..b.len())),
            2 => {
                let p = r.random_range(0..b.len());
                b[p] = r.random();
                let q = r.random_range(0..b.len());
                b[q] = [0x1b, 0x9b, 0xbb, 0x5b, 0xff, 0x7f][r.random_range(0..6)];
            }
            3 => {
                let p = r.random_range(0..b.len());
                let junk: Vec<u8> = (0..r.random_range(1..16)).map(|_| r.random()).collect();
                b.splice(p..p, junk);
            }
            _ => {
                b = (0..r.random_range(0..200)).map(|_| r.random()).collect();
            }
        }
        match Manifest::decode(&b) {
            Ok(m) => {
                assert_ne!(i % 5, 1, "a truncated manifest decoded");
                ok += 1;
                m.validate().unwrap();
            }
            Err(
                StoreError::Malformed { .. }
                | StoreError::UnsupportedVersion { .. }
                | StoreError::TooLarge { .. },
            ) => err += 1,
            Err(e) => panic!("unexpected error kind {e:?}"),
        }
        // Importing it is a typed error too (chunks missing, or malformed).
        if i % 50 == 0 {
            let _ = store.import_manifest(&b);
        }
    }
    // Flips inside ids or opaque blobs still decode (the id then differs);
    // structure damage does not.
    assert!(err > 10_000, "{err} errors, {ok} accepted");
}

#[test]
fn mutated_encoded_chunks_give_typed_errors() {
    let mut data = vec![0u8; CS];
    fill_chunk(&mut data, 1);
    let mut r = rng(12);
    for compression in [Compression::None, Compression::Zstd(3)] {
        let e = EncodedChunk::encode(&data, compression);
        let wire = e.to_cbor();
        assert_eq!(
            EncodedChunk::from_cbor(&wire, CS)
                .unwrap()
                .decode_verified(CS)
                .unwrap(),
            data
        );
        let mut rejected = 0;
        for i in 0..5000 {
            let mut b = wire.clone();
            match i % 3 {
                0 => {
                    let p = r.random_range(0..b.len());
                    b[p] ^= 1 << r.random_range(0..8);
                }
                1 => b.truncate(r.random_range(0..b.len())),
                _ => {
                    let p = r.random_range(0..b.len());
                    b.insert(p, r.random());
                }
            }
            let res = EncodedChunk::from_cbor(&b, CS).and_then(|c| c.decode_verified(CS));
            match res {
                Ok(d) => assert_eq!(d, data, "a mutation decoded to different data"),
                Err(
                    StoreError::Malformed { .. }
                    | StoreError::Corrupt { .. }
                    | StoreError::DecompressLimit { .. }
                    | StoreError::TooLarge { .. },
                ) => rejected += 1,
                Err(e) => panic!("unexpected error kind {e:?}"),
            }
        }
        assert!(rejected > 4000, "{compression:?}: only {rejected} rejected");
    }
    // Oversized input is refused before parsing.
    let huge = vec![0u8; 2 * CS + 4096];
    assert!(matches!(
        EncodedChunk::from_cbor(&huge, CS),
        Err(StoreError::TooLarge { .. })
    ));
}

#[test]
fn zstd_bomb_is_rejected_by_the_store() {
    let store = Store::in_memory(cfg(CS as u32)).unwrap();
    let big = vec![7u8; 256 << 20];
    let payload = zstd_compress(&big);
    let bomb = EncodedChunk {
        id: ChunkId::of(&big[..CS]),
        codec: Codec::Zstd,
        uncompressed_len: CS as u64,
        bytes: serde_bytes_buf(payload.clone()),
    };
    assert!(matches!(
        store.put_encoded(&bomb),
        Err(StoreError::DecompressLimit { .. })
    ));
    // Declaring the true size is refused too: over the store's chunk bound.
    let honest = EncodedChunk {
        id: ChunkId::of(&big),
        uncompressed_len: big.len() as u64,
        ..bomb
    };
    assert!(matches!(
        store.put_encoded(&honest),
        Err(StoreError::DecompressLimit { .. })
    ));
    assert_eq!(store.stats().chunk_count, 0);
}

fn zstd_compress(data: &[u8]) -> Vec<u8> {
    // Through the public API: a raw chunk re-encoded would be capped, so build
    // the frame by encoding slices and checking the codec.
    let e = EncodedChunk::encode(data, Compression::Zstd(3));
    assert_eq!(e.codec, Codec::Zstd);
    e.bytes.into_vec()
}

fn serde_bytes_buf(v: Vec<u8>) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(v)
}
