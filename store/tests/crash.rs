//! Crash safety of the disk tier: this test binary re-executes itself as a
//! writer child (selected by an environment variable) that commits checkpoints
//! (full, incremental, GC) in a loop; the parent SIGKILLs it at random moments,
//! re-opens the store, and checks that every listed checkpoint restores
//! bit-identically and that nothing half-written is listed or left behind.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rand::Rng;
use store::{Checkpoint, RetentionPolicy, Store};

const CHILD_ENV: &str = "ROAM_STORE_CRASH_CHILD_DIR";
const READY: &str = "ROAM-STORE-CRASH-CHILD-READY";
const CS: usize = 4096;
const JOB: &str = "crash-job";

/// The memory image at generation `g`: its size varies, chunk `i` changes
/// every `1 + i % 4` generations, some chunks are zero.
fn image_at(g: u64) -> Vec<u8> {
    let n = 16 + (g % 5) as usize;
    let mut m = vec![0u8; n * CS];
    for (i, c) in m.chunks_mut(CS).enumerate() {
        let epoch = g / (1 + i as u64 % 4);
        if !(i as u64 + epoch).is_multiple_of(5) {
            fill_chunk(c, (i as u64) << 32 | epoch);
        }
    }
    m
}

fn dirty_between(a: &[u8], b: &[u8]) -> Vec<u64> {
    b.chunks(CS)
        .enumerate()
        .filter(|(i, c)| a.get(i * CS..(i + 1) * CS) != Some(*c))
        .map(|(i, _)| i as u64)
        .collect()
}

#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // only runs when the parent re-executes us
    };
    let store = Store::open(&dir, cfg(CS as u32)).unwrap();
    let mut parent: Option<Checkpoint> = store
        .latest(JOB)
        .map(|r| store.load_checkpoint(&r.id).unwrap());
    println!("{READY}");
    std::io::stdout().flush().unwrap();
    let first = parent.as_ref().map_or(0, |p| p.manifest.generation + 1);
    // Bounded so an orphaned child cannot run forever.
    for g in first..first + 5000 {
        let mem = image_at(g);
        let info = match &parent {
            Some(p) if !g.is_multiple_of(7) => {
                let dirty = dirty_between(&image_at(p.manifest.generation), &mem);
                store.checkpoint_incremental(p, meta(&store, JOB, g), &mem, &dirty)
            }
            _ => store.checkpoint_full(meta(&store, JOB, g), &mem),
        }
        .unwrap();
        parent = Some(info.checkpoint);
        if g % 4 == 3 {
            store
                .gc(&RetentionPolicy {
                    keep_per_job: 3,
                    ..Default::default()
                })
                .unwrap();
        }
    }
}

#[test]
fn sigkill_at_random_moments_never_lists_a_broken_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut r = rng(0xC0FFEE);
    let mut newest = 0u64;
    let mut restored = 0usize;
    const KILLS: usize = 60;
    for round in 0..KILLS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait (on its output, not a timer) until it has the store open.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.any(|l| l.map(|l| l.contains(READY)).unwrap_or(false));
        assert!(ready, "round {round}: child died before opening the store");
        std::thread::sleep(Duration::from_micros(r.random_range(0..20_000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let store = Store::open(dir.path(), cfg(CS as u32)).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        let report = store.verify();
        assert!(report.is_clean(), "round {round}: {:?}", report.problems);
        let listed = store.list_checkpoints(Some(JOB));
        for c in &listed {
            let cp = store.load_checkpoint(&c.id).unwrap();
            assert_eq!(cp.manifest.generation, c.generation);
            let mem = store.restore_memory(&cp.manifest).unwrap();
            assert!(
                mem == image_at(c.generation),
                "round {round}: generation {} differs",
                c.generation
            );
            assert_eq!(
                store.get_blob(&cp.manifest.module, 1 << 20).unwrap(),
                module_bytes()
            );
            assert_eq!(cp.manifest.globals.as_ref(), c.generation.to_le_bytes());
            restored += 1;
        }
        // GC keeps the newest, so the newest generation never goes back.
        let latest = listed.last().map_or(0, |c| c.generation);
        assert!(
            latest >= newest,
            "round {round}: newest went from {newest} to {latest}"
        );
        newest = latest;
    }
    eprintln!("crash test: {KILLS} kills, newest generation {newest}, {restored} restores");
    assert!(newest > 0, "the writer never committed anything");
    assert!(restored >= KILLS);
}
