//! A snapshot from the network or disk is untrusted: every mutation or truncation must be
//! refused with a typed error, and restore must never panic.

use std::path::PathBuf;
use std::time::Duration;

use wasm_host::drive::{run_and_capture, SplitMix};
use wasm_host::{
    BufferSink, Host, HostConfig, HostError, Job, JobSpec, Limits, Snapshot, SnapshotError,
};

fn guest(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../guests/out/{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/build-guests first", path.display()))
}

fn captured() -> (
    std::sync::Arc<Host>,
    std::sync::Arc<wasm_host::LoadedModule>,
    Snapshot,
) {
    let host = Host::new(HostConfig::default()).expect("host");
    let module = host.load(&guest("recurse")).expect("load");
    let snap = run_and_capture(
        &host,
        module.clone(),
        JobSpec::new(vec!["recurse".into()]),
        Box::new(BufferSink::default()),
        Duration::from_millis(150),
    )
    .expect("run")
    .expect("still running after 150 ms");
    (host, module, snap)
}

#[test]
fn every_mutation_and_truncation_is_refused() {
    let (_host, _module, snap) = captured();
    let bytes = snap.encode();
    assert_eq!(
        Snapshot::decode(&bytes).expect("intact snapshot decodes"),
        snap
    );
    let mut rng = SplitMix(99);
    for _ in 0..2000 {
        let mut m = bytes.clone();
        let at = rng.between(0, m.len() as u64 - 1) as usize;
        let flip = rng.between(1, 255) as u8;
        m[at] ^= flip;
        let err = Snapshot::decode(&m).expect_err("mutated snapshot accepted");
        assert!(
            matches!(
                err,
                SnapshotError::Checksum | SnapshotError::BadMagic | SnapshotError::Version { .. }
            ),
            "unexpected error for a flipped byte at {at}: {err}"
        );
    }
    let mut lengths: Vec<usize> = (0..64).collect();
    for _ in 0..500 {
        lengths.push(rng.between(0, bytes.len() as u64 - 1) as usize);
    }
    lengths.push(bytes.len() - 1);
    for len in lengths {
        assert!(
            Snapshot::decode(&bytes[..len]).is_err(),
            "truncation to {len} bytes accepted"
        );
    }
}

/// Mutations behind a valid checksum (a hostile sender can compute one) still give
/// typed errors from decode or restore, never a panic.
#[test]
fn resealed_mutations_give_typed_errors() {
    let (host, module, snap) = captured();
    let bytes = snap.encode();
    let manifest_len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    let mut rng = SplitMix(7);
    let mut refused = 0;
    for _ in 0..300 {
        let mut m = bytes[..bytes.len() - 32].to_vec();
        let at = 16 + rng.between(0, manifest_len as u64 - 1) as usize;
        m[at] = rng.next_u64() as u8;
        let sum = blake3::hash(&m);
        m.extend_from_slice(sum.as_bytes());
        match Snapshot::decode(&m) {
            Err(_) => refused += 1,
            Ok(s) => {
                let dir = tempfile::tempdir().expect("tempdir");
                let _ = dir;
                match Job::restore(
                    &host,
                    module.clone(),
                    &s,
                    Vec::new(),
                    &Limits::default(),
                    Box::new(BufferSink::default()),
                ) {
                    Ok(_) | Err(_) => {}
                }
            }
        }
    }
    assert!(refused > 0, "no resealed mutation was refused");
}

#[test]
fn snapshot_of_another_module_is_refused() {
    let (host, _module, snap) = captured();
    let other = host.load(&guest("sieve")).expect("load sieve");
    let err = Job::restore(
        &host,
        other,
        &snap,
        Vec::new(),
        &Limits::default(),
        Box::new(BufferSink::default()),
    )
    .err()
    .expect("restore into another module must fail");
    assert!(
        matches!(
            err,
            HostError::Snapshot(SnapshotError::ModuleMismatch { .. })
        ),
        "got {err}"
    );
}

#[test]
fn bad_magic_and_version_are_named() {
    let (_h, _m, snap) = captured();
    let mut bytes = snap.encode();
    assert_eq!(
        Snapshot::decode(b"NOTASNAPSHOT-AT-ALL-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
        Err(SnapshotError::BadMagic)
    );
    bytes[8] = 99;
    assert!(matches!(
        Snapshot::decode(&bytes),
        Err(SnapshotError::Version { found: 99, .. })
    ));
}

/// A loop without any call is a pause point too (it yields outside its body), and a job
/// paused there resumes to the right result.
#[test]
fn call_free_loops_pause_and_resume() {
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start") (local $i i32) (local $acc i32)
        (loop $spin
          (local.set $acc (i32.add (local.get $acc) (i32.xor (local.get $i) (i32.const 0x55))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $spin (i32.ne (local.get $i) (i32.const 300000000))))
        (call $exit (i32.and (local.get $acc) (i32.const 127)))))"#;
    let host = Host::new(HostConfig::default()).expect("host");
    let module = host.load(wat.as_bytes()).expect("load");
    let expected = {
        let mut job = Job::start(
            &host,
            module.clone(),
            JobSpec::new(vec!["spin".into()]),
            Box::new(BufferSink::default()),
        )
        .expect("start");
        match job.run().expect("run") {
            wasm_host::Outcome::Exited(c) => c,
            other => panic!("{other:?}"),
        }
    };
    let snap = run_and_capture(
        &host,
        module.clone(),
        JobSpec::new(vec!["spin".into()]),
        Box::new(BufferSink::default()),
        Duration::from_millis(30),
    )
    .expect("run")
    .expect("paused inside the call-free loop");
    let decoded = Snapshot::decode(&snap.encode()).expect("decode");
    let mut job = Job::restore(
        &host,
        module,
        &decoded,
        Vec::new(),
        &Limits::default(),
        Box::new(BufferSink::default()),
    )
    .expect("restore");
    assert_eq!(
        job.run().expect("resume"),
        wasm_host::Outcome::Exited(expected)
    );
}

/// A wrong branch target could loop forever: fail instead of hanging the suite.
fn limited(mut spec: JobSpec) -> JobSpec {
    spec.limits.cpu = Some(Duration::from_secs(30));
    spec
}

/// Branches out of a wrapped (call-free) loop — `br`, `br_if` and `br_table` to labels
/// outside it — still reach the right place after instrumentation, paused or not.
#[test]
fn branches_out_of_wrapped_loops_keep_their_targets() {
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start") (local $i i32) (local $acc i32) (local $round i32)
        (block $finished
          (loop $rounds
            (block $b2
              (block $b1
                (block $b0
                  (local.set $i (i32.const 0))
                  (loop $inner
                    (local.set $acc (i32.add (local.get $acc) (i32.mul (local.get $i) (i32.const 3))))
                    (local.set $i (i32.add (local.get $i) (i32.const 1)))
                    ;; odd rounds leave early to $b1; others through the table to $b0
                    (br_if $b1 (i32.and (i32.eq (local.get $i) (i32.const 1000000))
                                        (i32.and (local.get $round) (i32.const 1))))
                    (br_table $inner $b0 $b2 (i32.div_u (local.get $i) (i32.const 3000000))))
                  )
                ;; $b0: the table's second target
                (local.set $acc (i32.xor (local.get $acc) (i32.const 0x1234))))
              ;; $b1
              (local.set $acc (i32.add (local.get $acc) (i32.const 7))))
            ;; $b2
            (local.set $round (i32.add (local.get $round) (i32.const 1)))
            (br_if $finished (i32.ge_u (local.get $round) (i32.const 40)))
            (br $rounds)))
        (call $exit (i32.and (local.get $acc) (i32.const 255)))))"#;
    let plain = Host::new(HostConfig {
        pausable: false,
        ..HostConfig::default()
    })
    .expect("plain host");
    let run_plain = |host: &Host| {
        let module = host.load(wat.as_bytes()).expect("load");
        let mut job = Job::start(
            host,
            module,
            limited(JobSpec::new(vec!["branches".into()])),
            Box::new(BufferSink::default()),
        )
        .expect("start");
        job.run().expect("run")
    };
    let expected = run_plain(&plain);
    let (host, _m, _s) = captured();
    assert_eq!(run_plain(&host), expected, "instrumented run differs");
    let module = host.load(wat.as_bytes()).expect("load");
    let plan = wasm_host::drive::PausePlan {
        count: 20,
        seed: 5,
        min_delay: Duration::from_micros(100),
        max_delay: Duration::from_millis(3),
        fresh_instance: true,
    };
    let sink = BufferSink::default();
    let (code, report) = wasm_host::drive::run_with_pauses(
        &host,
        module,
        limited(JobSpec::new(vec!["branches".into()])),
        move || Box::new(sink.clone()),
        &plan,
    )
    .expect("paused run");
    assert!(report.pauses >= 5, "only {} pauses", report.pauses);
    assert_eq!(wasm_host::Outcome::Exited(code), expected);
}
