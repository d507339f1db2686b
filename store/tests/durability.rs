//! Batched durability of the disk tier: a chunk waits in `tmp/` (readable, listed)
//! until `Store::sync` flushes the waiting chunks at once and renames them into
//! place; a crash before that loses them whole, never leaves one torn.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use common::*;
use store::{ChunkId, RetentionPolicy, Store, StoreConfig};

const CS: usize = 4096;

/// No memory cache: every read goes to the disk tier.
fn uncached() -> StoreConfig {
    StoreConfig {
        cache_bytes: 0,
        ..cfg(CS as u32)
    }
}

fn chunk(seed: u64) -> Vec<u8> {
    let mut c = vec![0u8; CS];
    fill_chunk(&mut c, seed);
    c
}

fn in_place(dir: &Path, id: &ChunkId) -> bool {
    let hex = id.to_hex();
    dir.join("chunks").join(&hex[..2]).join(&hex).is_file()
}

fn files_in_tmp(dir: &Path) -> usize {
    fs::read_dir(dir.join("tmp")).map_or(0, |d| d.count())
}

#[test]
fn a_waiting_chunk_is_readable_and_goes_in_place_at_sync() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), uncached()).unwrap();
    let data = chunk(1);
    let id = store.put_chunk(&data).unwrap();
    assert!(store.contains(&id));
    assert!(!in_place(dir.path(), &id), "in place before any sync");
    assert_eq!(files_in_tmp(dir.path()), 1);
    assert_eq!(store.get_chunk(&id).unwrap(), data);

    store.sync().unwrap();
    assert!(in_place(dir.path(), &id));
    assert_eq!(files_in_tmp(dir.path()), 0);
    assert_eq!(store.get_chunk(&id).unwrap(), data);
}

#[test]
fn a_crash_keeps_synced_chunks_and_drops_waiting_ones_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, lost) = (chunk(2), chunk(3));
    let (kept_id, lost_id) = {
        let store = Store::open(dir.path(), uncached()).unwrap();
        let kept_id = store.put_chunk(&kept).unwrap();
        store.sync().unwrap();
        let lost_id = store.put_chunk(&lost).unwrap();
        // Dropped without a sync: as far as the files go, a SIGKILL here.
        (kept_id, lost_id)
    };
    let store = Store::open(dir.path(), uncached()).unwrap();
    assert_eq!(store.get_chunk(&kept_id).unwrap(), kept);
    assert!(!store.contains(&lost_id), "an unsynced chunk survived");
    assert_eq!(
        files_in_tmp(dir.path()),
        0,
        "open leaves temporaries behind"
    );
    let stats = store.stats();
    assert_eq!(stats.chunk_count, 1);
    let report = store.verify();
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    // Put again, it is stored again (no stale "already there").
    assert_eq!(store.put_chunk(&lost).unwrap(), lost_id);
    store.sync().unwrap();
    assert!(in_place(dir.path(), &lost_id));
}

#[test]
fn gc_removes_a_waiting_chunk_with_its_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), uncached()).unwrap();
    let id = store.put_chunk(&chunk(4)).unwrap();
    let report = store.gc(&RetentionPolicy::default()).unwrap();
    assert_eq!(report.chunks_removed, 1);
    assert!(report.bytes_freed > 0);
    assert!(!store.contains(&id));
    assert_eq!(store.stats().stored_bytes, 0);
    assert_eq!(files_in_tmp(dir.path()), 0);
    store.sync().unwrap();
    assert!(!in_place(dir.path(), &id));
}

#[test]
fn a_checkpoint_commit_puts_every_chunk_in_place_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), uncached()).unwrap();
    let mem = image(40, CS, 5);
    let info = store
        .checkpoint_full(meta(&store, "durable-job", 0), &mem)
        .unwrap();
    let ck = store.load_checkpoint(&info.id()).unwrap();
    for (id, _) in ck.manifest.referenced() {
        assert!(
            in_place(dir.path(), &id),
            "chunk {id} of a committed checkpoint waits"
        );
    }
    drop(store);
    let store = Store::open(dir.path(), uncached()).unwrap();
    let ck = store.load_checkpoint(&info.id()).unwrap();
    assert_eq!(store.restore_memory(&ck.manifest).unwrap(), mem);
}

#[test]
fn the_same_chunk_put_from_many_threads_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), uncached()).unwrap());
    let data = Arc::new(chunk(6));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (store, data) = (store.clone(), data.clone());
            std::thread::spawn(move || store.put_chunk(&data).unwrap())
        })
        .collect();
    let ids: Vec<ChunkId> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(files_in_tmp(dir.path()), 1);
    let stats = store.stats();
    assert_eq!(stats.chunk_count, 1);
    store.sync().unwrap();
    assert_eq!(files_in_tmp(dir.path()), 0);
    let file_len = fs::metadata(
        dir.path()
            .join("chunks")
            .join(&ids[0].to_hex()[..2])
            .join(ids[0].to_hex()),
    )
    .unwrap()
    .len();
    assert_eq!(stats.stored_bytes, file_len);
}
