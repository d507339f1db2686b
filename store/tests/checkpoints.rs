//! Checkpoint building, restoring, dedup, GC, limits and migration between
//! stores, on both tiers.

mod common;

use common::*;
use rand::seq::index::sample;
use rand::Rng;
use store::{ChunkId, Compression, EncodedChunk, RetentionPolicy, Store, StoreError};

const CS: usize = 4096;

fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    vec![
        (Store::in_memory(cfg(CS as u32)).unwrap(), None),
        (Store::open(dir.path(), cfg(CS as u32)).unwrap(), Some(dir)),
    ]
}

/// Dirty `k` random chunks of `mem` with fresh content; returns their indices.
fn dirty_some(mem: &mut [u8], k: usize, seed: u64) -> Vec<u64> {
    let mut r = rng(seed);
    let n = mem.len() / CS;
    let mut idx: Vec<u64> = sample(&mut r, n, k).into_iter().map(|i| i as u64).collect();
    idx.sort();
    for &i in &idx {
        fill_chunk(&mut mem[i as usize * CS..][..CS], seed * 7919 + i);
    }
    idx
}

#[test]
fn full_then_incrementals_restore_bit_identical_and_write_only_dirty_chunks() {
    for (store, dir) in stores() {
        // 1 % of 1000 chunks in memory; fewer on disk (one fsync'ed file each).
        let n = if dir.is_some() { 300 } else { 1000 };
        let mut mem = image(n, CS, 1);
        let full = store.checkpoint_full(meta(&store, "job", 1), &mem).unwrap();
        assert_eq!(
            store.restore_memory(&full.checkpoint.manifest).unwrap(),
            mem
        );
        let nonzero = mem.chunks(CS).filter(|c| c.iter().any(|&b| b != 0)).count();
        assert_eq!(full.checkpoint.manifest.memory.chunks.len(), nonzero);

        let mut history = vec![(full.checkpoint.clone(), mem.clone())];
        let mut parent = full.checkpoint;
        for round in 0..6u64 {
            let dirty = dirty_some(&mut mem, n / 100, 100 + round);
            let before = store.stats().chunks_written;
            let info = store
                .checkpoint_incremental(&parent, meta(&store, "job", 1), &mem, &dirty)
                .unwrap();
            let after = store.stats().chunks_written;
            // Exactly the dirty chunks (all fresh content) plus the manifest.
            assert_eq!(info.chunks_hashed, dirty.len() as u64);
            assert_eq!(info.chunks_written, dirty.len() as u64 + 1);
            assert_eq!(after - before, dirty.len() as u64 + 1, "round {round}");
            assert_eq!(info.checkpoint.manifest.parent, Some(parent.id));
            let restored = store.restore_memory(&info.checkpoint.manifest).unwrap();
            assert!(restored == mem, "round {round} restores differently");
            // An incremental equals a full checkpoint of the same memory.
            let again = store
                .checkpoint_full(meta(&store, "job-check", 1), &mem)
                .unwrap();
            assert_eq!(
                again.checkpoint.manifest.memory,
                info.checkpoint.manifest.memory
            );
            history.push((info.checkpoint.clone(), mem.clone()));
            parent = info.checkpoint;
        }
        // Every earlier checkpoint still restores to its own image.
        for (c, m) in &history {
            let loaded = store.load_checkpoint(&c.id).unwrap();
            assert_eq!(&loaded, c);
            assert!(store.restore_memory(&loaded.manifest).unwrap() == *m);
            let mut buf = vec![0xAAu8; m.len()];
            store
                .restore_memory_into(&loaded.manifest, &mut buf)
                .unwrap();
            assert!(buf == *m);
        }
        assert!(store.verify().is_clean());
        // Progress counts up by one to its total: every chunk file (on disk) and
        // every checkpoint.
        let mut seen = Vec::new();
        let rep = store.verify_with(&mut |done, total| seen.push((done, total)));
        let expect = rep.checkpoints_checked
            + if store.dir().is_some() {
                rep.chunks_checked
            } else {
                0
            };
        assert!(expect > 0 && seen.len() as u64 == expect, "{seen:?}");
        assert!(seen
            .iter()
            .enumerate()
            .all(|(i, &(d, t))| d == i as u64 + 1 && t == expect));
    }
}

#[test]
fn incremental_handles_growth_shrink_zeroing_and_partial_chunks() {
    for (store, _dir) in stores() {
        let mut mem = image(64, CS, 2);
        let mut parent = store
            .checkpoint_full(meta(&store, "g", 1), &mem)
            .unwrap()
            .checkpoint;
        let mut r = rng(3);
        for step in 0..12 {
            let mut dirty = Vec::new();
            match step % 4 {
                0 => {
                    // grow by a chunk and a half, new bytes random
                    let old = mem.len();
                    mem.resize(old + CS + CS / 2, 0);
                    r.fill(&mut mem[old..]);
                }
                1 => {
                    // shrink to a non-multiple of the chunk size
                    let len = mem.len() - CS - 100;
                    mem.truncate(len);
                }
                2 => {
                    // zero a dirty chunk and write into another
                    let n = mem.len() / CS;
                    mem[CS..2 * CS].fill(0);
                    mem[(n - 1) * CS + 5] ^= 0xff;
                    dirty = vec![1, n as u64 - 1, 10_000]; // out-of-range index is ignored
                }
                _ => {
                    let whole = (mem.len() / CS) * CS;
                    dirty = dirty_some(&mut mem[..whole], 3, step);
                    dirty.extend(dirty.clone()); // duplicates are fine
                }
            }
            let info = store
                .checkpoint_incremental(&parent, meta(&store, "g", 1), &mem, &dirty)
                .unwrap();
            assert_eq!(
                store.restore_memory(&info.checkpoint.manifest).unwrap(),
                mem,
                "step {step}"
            );
            let full = store.checkpoint_full(meta(&store, "g2", 1), &mem).unwrap();
            assert_eq!(
                full.checkpoint.manifest.memory,
                info.checkpoint.manifest.memory
            );
            parent = info.checkpoint;
        }
        // Lying about dirty chunks is the caller's bug, and it shows: the
        // checkpoint restores the old content of an unreported chunk.
        mem[0] ^= 1;
        let info = store
            .checkpoint_incremental(&parent, meta(&store, "g", 1), &mem, &[])
            .unwrap();
        assert_ne!(
            store.restore_memory(&info.checkpoint.manifest).unwrap(),
            mem
        );
    }
}

#[test]
fn dedup_across_jobs_and_zero_chunks_never_stored() {
    for (store, _dir) in stores() {
        let mem = image(64, CS, 5);
        let zero_id = ChunkId::of(&[0u8; CS]);
        let a = store
            .checkpoint_full(meta(&store, "job-a", 1), &mem)
            .unwrap();
        let chunks_after_a = store.stats().chunk_count;
        let distinct: std::collections::HashSet<_> = a
            .checkpoint
            .manifest
            .memory
            .chunks
            .iter()
            .map(|e| e.1)
            .collect();
        // memory chunks + module chunks (3 of 4096 for 10 KiB) + manifest
        assert_eq!(chunks_after_a, distinct.len() as u64 + 3 + 1);
        assert!(!store.contains(&zero_id));
        assert!(a.checkpoint.manifest.memory.chunks.len() < 64);
        // Another job, same memory: only its manifest is new.
        let b = store
            .checkpoint_full(meta(&store, "job-b", 1), &mem)
            .unwrap();
        assert_eq!(b.chunks_written, 1);
        assert_eq!(store.stats().chunk_count, chunks_after_a + 1);
        assert_ne!(a.id(), b.id());
        // A memory that is all zeros stores nothing but its manifest.
        let z = store
            .checkpoint_full(meta(&store, "job-z", 1), &vec![0u8; 50 * CS])
            .unwrap();
        assert_eq!(z.chunks_written, 1);
        assert!(z.checkpoint.manifest.memory.chunks.is_empty());
        assert_eq!(
            store.restore_memory(&z.checkpoint.manifest).unwrap(),
            vec![0u8; 50 * CS]
        );
        assert!(!store.contains(&zero_id));
        // Sizes: b shares everything with a, so only its manifest is unique.
        let sizes = store.checkpoint_sizes(None).unwrap();
        let sb = sizes.iter().find(|s| s.checkpoint.id == b.id()).unwrap();
        assert_eq!(sb.unique_bytes, sb.manifest_bytes);
        assert!(sb.referenced_bytes > 40 * CS as u64);
    }
}

#[test]
fn unique_bytes_count_what_only_one_checkpoint_holds() {
    let store = Store::in_memory(cfg(CS as u32)).unwrap();
    let mut mem = image(100, CS, 9);
    let c0 = store.checkpoint_full(meta(&store, "u", 1), &mem).unwrap();
    let dirty = vec![1u64, 2, 3, 5, 6]; // all non-zero in image(.., 9)? make sure
    for &i in &dirty {
        fill_chunk(&mut mem[i as usize * CS..][..CS], 555 + i);
    }
    let c1 = store
        .checkpoint_incremental(&c0.checkpoint, meta(&store, "u", 1), &mem, &dirty)
        .unwrap();
    let sizes = store.checkpoint_sizes(Some("u")).unwrap();
    assert_eq!(sizes.len(), 2);
    let s1 = sizes.iter().find(|s| s.checkpoint.id == c1.id()).unwrap();
    assert_eq!(s1.unique_bytes, s1.manifest_bytes + 5 * CS as u64);
    let s0 = sizes.iter().find(|s| s.checkpoint.id == c0.id()).unwrap();
    let old_nonzero = dirty
        .iter()
        .filter(|&&i| c0.checkpoint.manifest.memory.get(i).is_some())
        .count() as u64;
    assert_eq!(s0.unique_bytes, s0.manifest_bytes + old_nonzero * CS as u64);
}

#[test]
fn blobs_and_extra_files_roundtrip() {
    for (store, _dir) in stores() {
        let mut file = vec![0u8; 3 * CS + 123];
        rng(4).fill(&mut file[CS..]);
        let blob = store.put_blob(&file).unwrap();
        assert_eq!(blob.map.chunks.len(), 3); // first chunk is zero
        let mut m = meta(&store, "files", 2);
        m.extra.insert("out.log".into(), blob.clone());
        let c = store.checkpoint_full(m, &image(10, CS, 1)).unwrap();
        let back = store.load_checkpoint(&c.id()).unwrap();
        assert_eq!(
            store
                .get_blob(&back.manifest.extra["out.log"], 1 << 20)
                .unwrap(),
            file
        );
        assert_eq!(
            store.get_blob(&back.manifest.module, 1 << 20).unwrap(),
            module_bytes()
        );
        assert_eq!(back.manifest.module.hash, ChunkId::of(&module_bytes()));
        assert!(matches!(
            store.get_blob(&blob, 100),
            Err(StoreError::TooLarge { .. })
        ));
        // A blob ref with the wrong whole hash is caught.
        let mut lie = blob.clone();
        lie.hash = ChunkId::of(b"nope");
        assert!(matches!(
            store.get_blob(&lie, 1 << 20),
            Err(StoreError::Corrupt { .. })
        ));
    }
}

#[test]
fn disk_store_survives_reopen_and_lists_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mem = image(50, CS, 3);
    let (id1, id2, id3);
    {
        let s = Store::open(dir.path(), cfg(CS as u32)).unwrap();
        id1 = s.checkpoint_full(meta(&s, "j", 1), &mem).unwrap().id();
        let mut m2 = mem.clone();
        m2[7] = 1;
        let p = s.load_checkpoint(&id1).unwrap();
        id2 = s
            .checkpoint_incremental(&p, meta(&s, "j", 1), &m2, &[0])
            .unwrap()
            .id();
        id3 = s.checkpoint_full(meta(&s, "j", 2), &mem).unwrap().id();
        // Same generation as id2 but committed later: ordered by seq.
        assert_eq!(s.latest("j").unwrap().id, id3);
    }
    let s = Store::open(dir.path(), cfg(CS as u32)).unwrap();
    let list: Vec<_> = s
        .list_checkpoints(Some("j"))
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(list, vec![id1, id2, id3]);
    assert_eq!(s.latest("j").unwrap().generation, 2);
    let c2 = s.load_checkpoint(&id2).unwrap();
    let mut expect = mem.clone();
    expect[7] = 1;
    assert_eq!(s.restore_memory(&c2.manifest).unwrap(), expect);
    // New commits after reopen sort after the old ones.
    let id4 = s.checkpoint_full(meta(&s, "j", 2), &expect).unwrap().id();
    assert_eq!(s.latest("j").unwrap().id, id4);
    assert!(s.verify().is_clean());
    assert!(s.list_checkpoints(Some("other")).is_empty());
}

#[test]
fn gc_keeps_newest_and_pinned_and_frees_the_rest() {
    for (store, _dir) in stores() {
        let mut mem = image(100, CS, 11);
        let mut ids = Vec::new();
        let mut images = Vec::new();
        let mut parent = None;
        for g in 0..5u64 {
            let dirty = dirty_some(&mut mem, 10, 50 + g);
            let info = match &parent {
                None => store.checkpoint_full(meta(&store, "gc", g), &mem).unwrap(),
                Some(p) => store
                    .checkpoint_incremental(p, meta(&store, "gc", g), &mem, &dirty)
                    .unwrap(),
            };
            ids.push(info.id());
            images.push(mem.clone());
            parent = Some(info.checkpoint);
        }
        let other = store
            .checkpoint_full(meta(&store, "other", 0), &image(20, CS, 99))
            .unwrap();
        let before = store.stats();
        // Expected garbage: what only ids[1] and ids[2] reach.
        let reach = |id: &ChunkId| -> std::collections::HashSet<ChunkId> {
            let c = store.load_checkpoint(id).unwrap();
            let mut s: std::collections::HashSet<_> =
                c.manifest.referenced().map(|e| e.0).collect();
            s.insert(*id);
            s
        };
        let dropped: std::collections::HashSet<_> =
            reach(&ids[1]).union(&reach(&ids[2])).copied().collect();
        let kept: std::collections::HashSet<_> = [ids[0], ids[3], ids[4], other.id()]
            .iter()
            .flat_map(reach)
            .collect();
        let garbage = dropped.difference(&kept).count() as u64;
        assert!(garbage > 2); // two manifests and at least one memory chunk
        let rep = store
            .gc(&RetentionPolicy {
                keep_per_job: 2,
                pinned_checkpoints: vec![ids[0]],
                pinned_chunks: vec![],
            })
            .unwrap();
        assert_eq!(rep.refs_removed, 2); // ids[1], ids[2]
        assert_eq!(rep.checkpoints_kept, 4);
        assert_eq!(rep.chunks_removed, garbage, "{rep:?}");
        let after = store.stats();
        assert_eq!(after.chunk_count, before.chunk_count - rep.chunks_removed);
        assert!(after.stored_bytes < before.stored_bytes);
        let listed: Vec<_> = store
            .list_checkpoints(Some("gc"))
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(listed, vec![ids[0], ids[3], ids[4]]);
        for k in [0, 3, 4] {
            let c = store.load_checkpoint(&ids[k]).unwrap();
            assert_eq!(store.restore_memory(&c.manifest).unwrap(), images[k]);
        }
        assert!(matches!(
            store.load_checkpoint(&ids[1]),
            Err(StoreError::NotFound(_))
        ));
        let c = store.load_checkpoint(&other.id()).unwrap();
        assert!(store.restore_memory(&c.manifest).is_ok());
        assert!(store.verify().is_clean());
        // keep 0: everything goes, including the module blob.
        let rep = store.gc(&RetentionPolicy::default()).unwrap();
        assert_eq!(rep.checkpoints_kept, 0);
        assert_eq!(store.stats().chunk_count, 0);
        assert_eq!(store.list_checkpoints(None), vec![]);
    }
}

#[test]
fn size_limit_gives_full_then_gc_makes_room() {
    let mut c = cfg(CS as u32);
    c.cache_bytes = 60 * CS as u64;
    let store = Store::in_memory(c).unwrap();
    let a = store
        .checkpoint_full(meta(&store, "a", 0), &image(40, CS, 1))
        .unwrap();
    let err = store
        .checkpoint_full(meta(&store, "a", 1), &image(40, CS, 2))
        .unwrap_err();
    assert!(matches!(err, StoreError::Full { .. }), "{err}");
    // The failed checkpoint is not listed.
    assert_eq!(store.list_checkpoints(None).len(), 1);
    store.gc(&RetentionPolicy::default()).unwrap();
    assert!(!store.contains(&a.id()));
    store
        .checkpoint_full(meta(&store, "a", 1), &image(40, CS, 2))
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(CS as u32);
    c.disk_compression = Compression::None;
    c.disk_limit_bytes = 50 * (CS as u64 + 24);
    let disk = Store::open(dir.path(), c).unwrap();
    disk.checkpoint_full(meta(&disk, "d", 0), &image(40, CS, 1))
        .unwrap();
    assert!(matches!(
        disk.checkpoint_full(meta(&disk, "d", 1), &image(40, CS, 2)),
        Err(StoreError::Full { .. })
    ));
    assert!(disk.stats().stored_bytes <= 50 * (CS as u64 + 24));
    disk.gc(&RetentionPolicy::default()).unwrap();
    disk.checkpoint_full(meta(&disk, "d", 1), &image(40, CS, 2))
        .unwrap();
    assert!(disk.verify().is_clean());
}

#[test]
fn migration_between_stores_over_encoded_chunks() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(src_dir.path(), cfg(CS as u32)).unwrap();
    let dst = Store::in_memory(cfg(CS as u32)).unwrap();
    let mem = image(80, CS, 21);
    let mut m = meta(&src, "mig", 4);
    m.extra
        .insert("f".into(), src.put_blob(b"some file").unwrap());
    let c = src.checkpoint_full(m, &mem).unwrap().checkpoint;
    // Destination already has some of the chunks (a previous round).
    for (_, id) in c.manifest.memory.chunks.iter().take(10) {
        let e = src.get_encoded(id, Compression::None).unwrap();
        dst.put_encoded(&e).unwrap();
    }
    let manifest_bytes = src.get_chunk(&c.id).unwrap();
    // Importing before all chunks arrived fails and lists nothing.
    assert!(matches!(
        dst.import_manifest(&manifest_bytes),
        Err(StoreError::MissingChunks { .. })
    ));
    assert!(dst.list_checkpoints(None).is_empty());
    let ids: Vec<ChunkId> = c.manifest.referenced().map(|(id, _)| id).collect();
    let want = dst.missing(&ids);
    assert!(want.len() < ids.len());
    for id in want {
        let wire = src
            .get_encoded(&id, Compression::Zstd(3))
            .unwrap()
            .to_cbor();
        let e = EncodedChunk::from_cbor(&wire, CS).unwrap();
        assert_eq!(dst.put_encoded(&e).unwrap(), id);
    }
    let imported = dst.import_manifest(&manifest_bytes).unwrap();
    assert_eq!(imported.id, c.id);
    assert_eq!(dst.latest("mig").unwrap().id, c.id);
    assert_eq!(dst.restore_memory(&imported.manifest).unwrap(), mem);
    assert_eq!(
        dst.get_blob(&imported.manifest.extra["f"], 100).unwrap(),
        b"some file"
    );
    // A chunk that lies about its id is refused.
    let mut e = src
        .get_encoded(&c.manifest.memory.chunks[0].1, Compression::None)
        .unwrap();
    e.id = ChunkId::of(b"x");
    assert!(matches!(
        dst.put_encoded(&e),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn concurrent_checkpoints_from_several_threads() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), cfg(CS as u32)).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let store = &store;
            s.spawn(move || {
                let job = format!("job-{t}");
                let mut mem = image(30, CS, t % 2); // jobs 0/2 and 1/3 share content
                let mut p = store
                    .checkpoint_full(meta(store, &job, 0), &mem)
                    .unwrap()
                    .checkpoint;
                for g in 1..5 {
                    let d = dirty_some(&mut mem, 3, t * 100 + g);
                    p = store
                        .checkpoint_incremental(&p, meta(store, &job, g), &mem, &d)
                        .unwrap()
                        .checkpoint;
                    assert_eq!(store.restore_memory(&p.manifest).unwrap(), mem);
                }
            });
        }
        // GC running at the same time never breaks a listed checkpoint.
        for _ in 0..5 {
            store
                .gc(&RetentionPolicy {
                    keep_per_job: 1,
                    ..Default::default()
                })
                .unwrap();
        }
    });
    // Each job's newest checkpoint survived every GC and restores.
    for t in 0..4u64 {
        let r = store.latest(&format!("job-{t}")).unwrap();
        assert_eq!(r.generation, 4);
        let c = store.load_checkpoint(&r.id).unwrap();
        assert!(store.restore_memory(&c.manifest).is_ok());
    }
    assert!(store.verify().is_clean());
}

#[test]
fn bad_arguments_are_typed_errors() {
    let mut c = cfg(CS as u32);
    c.chunk_size = 5000;
    assert!(matches!(
        Store::in_memory(c),
        Err(StoreError::InvalidArgument(_))
    ));
    let store = Store::in_memory(cfg(CS as u32)).unwrap();
    let mut m = meta(&store, "x", 0);
    m.job = String::new();
    assert!(matches!(
        store.checkpoint_full(m, &[1; 10]),
        Err(StoreError::InvalidArgument(_))
    ));
    let c = store
        .checkpoint_full(meta(&store, "x", 0), &[1; 10])
        .unwrap()
        .checkpoint;
    assert!(matches!(
        store.checkpoint_incremental(&c, meta(&store, "y", 0), &[1; 10], &[]),
        Err(StoreError::InvalidArgument(_))
    ));
    let mut buf = vec![0u8; 11];
    assert!(matches!(
        store.restore_memory_into(&c.manifest, &mut buf),
        Err(StoreError::InvalidArgument(_))
    ));
}

#[test]
fn notes_replace_only_when_asked_and_survive_a_reopen() {
    for (store, dir) in stores() {
        let newer = |v: u8| move |old: Option<&[u8]>| old.is_none_or(|o| o[0] < v);
        assert!(store.put_note_if("replica-a", &[2], newer(2)).unwrap());
        assert!(!store.put_note_if("replica-a", &[1], newer(1)).unwrap());
        assert!(store.put_note_if("replica-b", &[5], newer(5)).unwrap());
        assert!(store.put_note_if("other", &[9], newer(9)).unwrap());
        assert_eq!(
            store.notes("replica-"),
            vec![("replica-a".into(), vec![2]), ("replica-b".into(), vec![5])]
        );
        store.remove_note("replica-b").unwrap();
        store.remove_note("replica-b").unwrap();
        for bad in ["", ".hidden", "a/b", "ü", &"x".repeat(129)] {
            assert!(store.put_note_if(bad, &[0], |_| true).is_err(), "{bad:?}");
        }
        let big = vec![0u8; store::MAX_NOTE_BYTES + 1];
        assert!(store.put_note_if("big", &big, |_| true).is_err());
        // GC keeps notes: they are not checkpoints.
        store.gc(&RetentionPolicy::default()).unwrap();
        assert_eq!(store.notes("replica-").len(), 1);
        if let Some(dir) = dir {
            drop(store);
            let again = Store::open(dir.path(), cfg(CS as u32)).unwrap();
            assert_eq!(again.notes("replica-"), vec![("replica-a".into(), vec![2])]);
            assert_eq!(
                again.notes(""),
                vec![("other".into(), vec![9]), ("replica-a".into(), vec![2])]
            );
        }
    }
}
