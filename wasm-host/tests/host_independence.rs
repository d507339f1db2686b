//! Nothing in a snapshot depends on the host that wrote it, and nothing compiled for one
//! host is ever run on another.
//!
//! A job moves between x86_64 and aarch64 nodes (README, "Heterogeneous swarms"), so:
//! - a snapshot file, a job's state and its globals are the same bytes on every host:
//!   the file header's integers are explicitly little-endian, everything else is CBOR
//!   (integers big-endian and minimal by the format), lengths and offsets are `u64`, not
//!   a raw `usize`; floats travel as their bits. The pinned digests below were computed
//!   on x86_64 and are checked by this same test built for aarch64 and run under
//!   qemu-aarch64; a deliberate format change bumps `FORMAT_VERSION` and them with it.
//! - compiled code is cached under a key that names the target triple, and an entry that
//!   an engine of another target or configuration wrote under our key is refused by
//!   wasmtime and recompiled, never run.

use std::collections::BTreeMap;
use std::path::Path;

use serde_bytes::ByteBuf;
use wasm_host::host::{fingerprint_of, TARGET_TRIPLE};
use wasm_host::snapshot::{GlobalValue, JobGlobals, JobState, JOB_STATE_FORMAT};
use wasm_host::wasi::{FdEntry, FdKind, FileImage, WasiState};
use wasm_host::{Host, HostConfig, Snapshot};

/// blake3 of [`snapshot`]'s encoding (pinned).
const SNAPSHOT_DIGEST: &str = "bfc964724ab2b97cab8c2439039d53ef949d989d7ebb3584d0e168a99087db10";
/// blake3 of [`job_state`]'s and [`job_globals`]'s encodings, concatenated (pinned).
const STATE_DIGEST: &str = "55e31cafe1d3e1d2b5bf0d15534c97a6a4a68eadda70cc3f39973501994e2b60";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// CBOR's encoding of an unsigned integer that needs 8 bytes: 0x1b, then big-endian.
fn cbor_u64(v: u64) -> Vec<u8> {
    let mut out = vec![0x1b];
    out.extend_from_slice(&v.to_be_bytes());
    out
}

/// Numbers that do not fit 32 bits (a 32-bit host's usize) and whose byte patterns
/// differ between byte orders.
const BIG: [u64; 4] = [
    0x0102_0304_0506_0708,
    (5 << 30) + 3,
    0x1122_3344_5566_7788,
    0x7ff8_0000_dead_beef,
];

fn wasi() -> WasiState {
    let mut fds = BTreeMap::new();
    for (fd, kind) in [
        (0, FdKind::Stdin),
        (1, FdKind::Stdout),
        (2, FdKind::Stderr),
        (3, FdKind::Preopen(0)),
        (
            9,
            FdKind::File {
                preopen: 0,
                rel: "log/out.txt".into(),
                read: false,
                write: true,
                pos: BIG[1],
            },
        ),
    ] {
        fds.insert(
            fd,
            FdEntry {
                kind,
                flags: 0x0102,
                rights_base: (1 << 30) - 1,
                rights_inheriting: 0,
            },
        );
    }
    WasiState {
        args: vec!["autopilot".into(), "20000".into()],
        env: vec![("RUST_BACKTRACE".into(), "1".into())],
        preopen_names: vec!["/data".into()],
        fds,
        stdin: b"line one\n".to_vec(),
        stdin_offset: 5,
        stdout_offset: BIG[0],
        stderr_offset: BIG[1],
        monotonic_ns: BIG[2],
        realtime_floor_ns: 1_700_000_000_000_000_000,
        random_seed: *blake3::hash(b"seed").as_bytes(),
        random_position: 0x1_0000_0000,
        touched_files: vec![(0, "log/out.txt".into())],
    }
}

fn globals() -> Vec<(String, GlobalValue)> {
    vec![
        ("__stack_pointer".into(), GlobalValue::I32(-16)),
        ("g64".into(), GlobalValue::I64(BIG[0] as i64)),
        // A NaN with a payload: kept as bits, so it survives any host's float handling.
        ("nan".into(), GlobalValue::F64(BIG[3])),
        ("f32".into(), GlobalValue::F32(0x7fc0_0001)),
        (
            "v".into(),
            GlobalValue::V128(u128::from(BIG[0]) << 64 | u128::from(BIG[2])),
        ),
    ]
}

fn snapshot() -> Snapshot {
    // Three 64 KiB chunks, the middle one all zeros (left out of the file).
    let mut memory = vec![0u8; 3 << 16];
    for (i, b) in memory[..1 << 16].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    memory[(2 << 16) + 8..(2 << 16) + 16].copy_from_slice(&BIG[0].to_le_bytes());
    let module = b"\0asm\x01\0\0\0".to_vec();
    Snapshot {
        module_hash: *blake3::hash(&module).as_bytes(),
        module: Some(module),
        memory,
        globals: globals(),
        stack: (0..64).collect(),
        wasi: wasi(),
        files: vec![FileImage {
            preopen: 0,
            rel: "log/out.txt".into(),
            data: ByteBuf::from(b"written before the move".to_vec()),
        }],
    }
}

fn job_state() -> JobState {
    JobState {
        format: JOB_STATE_FORMAT,
        module_hash: *blake3::hash(b"module").as_bytes(),
        stack: ByteBuf::from((0..32).collect::<Vec<u8>>()),
        wasi: wasi(),
    }
}

fn job_globals() -> JobGlobals {
    JobGlobals {
        format: JOB_STATE_FORMAT,
        globals: globals(),
    }
}

#[test]
fn snapshot_bytes_do_not_depend_on_the_host() {
    let snap = snapshot();
    let bytes = snap.encode();
    // Header: magic, then u32 format version and u32 manifest length, little-endian by
    // definition (read here byte by byte, not with the host's order).
    assert_eq!(&bytes[..8], wasm_host::snapshot::MAGIC);
    let le32 = |at: usize| -> u32 { (0..4).map(|i| u32::from(bytes[at + i]) << (8 * i)).sum() };
    assert_eq!(le32(8), wasm_host::snapshot::FORMAT_VERSION);
    let manifest_len = le32(12) as usize;
    // The manifest is exactly that long: one CBOR item that re-encodes to itself.
    let manifest = &bytes[16..16 + manifest_len];
    let value: ciborium::Value = ciborium::from_reader(manifest).expect("one CBOR item");
    let mut again = Vec::new();
    ciborium::into_writer(&value, &mut again).expect("re-encodes");
    assert_eq!(again, manifest, "the manifest is not canonical CBOR");
    // Then the two non-zero chunks and the checksum: nothing else.
    assert_eq!(bytes.len(), 16 + manifest_len + 2 * (1 << 16) + 32);
    // Wide integers are CBOR integers, never raw host bytes.
    for v in [BIG[0], BIG[1], BIG[2], BIG[3]] {
        assert!(contains(manifest, &cbor_u64(v)), "{v:#x} not a CBOR uint64");
        assert!(!contains(manifest, &v.to_le_bytes()), "{v:#x} as raw bytes");
    }
    // Decoded identically; the memory's own bytes (the guest's little-endian wasm
    // memory) are carried as they are.
    let back = Snapshot::decode(&bytes).expect("decodes");
    assert_eq!(back, snap);
    assert_eq!(
        &back.memory[(2 << 16) + 8..(2 << 16) + 16],
        &BIG[0].to_le_bytes()
    );
    assert_eq!(back.encode(), bytes);
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), SNAPSHOT_DIGEST);
}

#[test]
fn job_state_and_globals_do_not_depend_on_the_host() {
    let (state, globals) = (job_state(), job_globals());
    let (s, g) = (state.encode(), globals.encode());
    for v in [BIG[0], BIG[1], BIG[2]] {
        assert!(contains(&s, &cbor_u64(v)), "{v:#x} not a CBOR uint64");
    }
    assert!(
        contains(&g, &cbor_u64(BIG[3])),
        "NaN bits not a CBOR uint64"
    );
    assert_eq!(JobState::decode(&s).expect("state"), state);
    assert_eq!(JobGlobals::decode(&g).expect("globals"), globals);
    let mut h = blake3::Hasher::new();
    h.update(&s);
    h.update(&g);
    assert_eq!(h.finalize().to_hex().as_str(), STATE_DIGEST);
}

/// The `compiled/*.cwasm` files of a cache directory.
fn compiled(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("compiled"))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

const WAT: &str = r#"(module
  (func (export "_start") (local i32)
    (loop $l (local.set 0 (i32.add (local.get 0) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get 0) (i32.const 1000)))))
  (memory (export "memory") 1))"#;

#[test]
fn compiled_code_is_keyed_by_target_triple() {
    // The triple is this build's, and names the architecture it runs on.
    assert!(
        TARGET_TRIPLE.starts_with(std::env::consts::ARCH),
        "{TARGET_TRIPLE} vs {}",
        std::env::consts::ARCH
    );
    assert!(
        TARGET_TRIPLE.contains(std::env::consts::OS),
        "{TARGET_TRIPLE}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = HostConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..HostConfig::default()
    };
    let host = Host::new(config.clone()).expect("host");
    let fp = host.fingerprint().to_string();
    assert!(fp.starts_with(&format!("{TARGET_TRIPLE}-")), "{fp}");
    // The same engine settings for another target give another key.
    let other = if std::env::consts::ARCH == "aarch64" {
        "x86_64-unknown-linux-gnu"
    } else {
        "aarch64-unknown-linux-gnu"
    };
    let engine = wasmtime::Engine::default();
    let here = fingerprint_of(TARGET_TRIPLE, engine.precompile_compatibility_hash());
    let there = fingerprint_of(other, engine.precompile_compatibility_hash());
    assert_ne!(here, there);
    assert!(there.starts_with(other), "{there}");

    let m = host.load(WAT.as_bytes()).expect("loads");
    let files = compiled(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0]
        .file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 name")
        .to_string();
    assert_eq!(
        name,
        format!("{}-{fp}.cwasm", wasm_host::host::hex(&m.hash)),
        "the cache key is the module hash and the fingerprint"
    );
}

#[test]
fn foreign_compiled_code_under_our_key_is_recompiled_not_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = HostConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..HostConfig::default()
    };
    let m = Host::new(config.clone())
        .expect("host")
        .load(WAT.as_bytes())
        .expect("loads");
    let files = compiled(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let ours = std::fs::read(&files[0]).expect("read the entry");
    // Code for the same module from an engine with other code-changing settings (as an
    // engine for another target would be): put under our key, as a shared cache or a
    // copied directory could.
    let mut c = wasmtime::Config::new();
    c.cranelift_opt_level(wasmtime::OptLevel::None)
        .wasm_multi_memory(true);
    let foreign_engine = wasmtime::Engine::new(&c).expect("engine");
    let foreign = wasmtime::Module::new(&foreign_engine, m.bytes.as_slice())
        .expect("compiles")
        .serialize()
        .expect("serializes");
    assert_ne!(foreign, ours);
    std::fs::write(&files[0], &foreign).expect("write");

    // A new host (no in-memory cache) refuses it, compiles again and runs the job.
    let host = Host::new(config).expect("host");
    let again = host.load(WAT.as_bytes()).expect("recompiled");
    assert_eq!(again.hash, m.hash);
    let rewritten = std::fs::read(&files[0]).expect("read the entry");
    assert_ne!(rewritten, foreign, "the foreign entry was kept");
    let sink = wasm_host::BufferSink::default();
    let mut job = wasm_host::Job::start(
        &host,
        again,
        wasm_host::JobSpec::new(vec!["wat".into()]),
        Box::new(sink),
    )
    .expect("starts");
    let outcome = job.run().expect("runs");
    assert!(
        matches!(outcome, wasm_host::Outcome::Exited(0)),
        "{outcome:?}"
    );
}

/// Writes the bits of 0.0/0.0 (the zeros loaded from memory, so no optimiser folds them)
/// to stdout as 8 little-endian bytes.
const NAN_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i64.store (i32.const 64)
      (i64.reinterpret_f64 (f64.div (f64.load (i32.const 0)) (f64.load (i32.const 8)))))
    (i32.store (i32.const 16) (i32.const 64))
    (i32.store (i32.const 20) (i32.const 8))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))"#;

fn nan_bits(canonical_nans: bool) -> u64 {
    let host = Host::new(HostConfig {
        cache_dir: None,
        canonical_nans,
        ..HostConfig::default()
    })
    .expect("host");
    let module = host.load(NAN_WAT.as_bytes()).expect("loads");
    let sink = wasm_host::BufferSink::default();
    let mut job = wasm_host::Job::start(
        &host,
        module,
        wasm_host::JobSpec::new(vec!["nan".into()]),
        Box::new(sink.clone()),
    )
    .expect("starts");
    let outcome = job.run().expect("runs");
    assert!(
        matches!(outcome, wasm_host::Outcome::Exited(0)),
        "{outcome:?}"
    );
    let out = sink.stdout_bytes();
    u64::from_le_bytes(out.as_slice().try_into().expect("8 bytes of output"))
}

#[test]
fn canonical_nans_make_the_same_nan_on_every_host() {
    // With canonicalisation (HostConfig::canonical_nans, ROAM_CANONICAL_NANS=1) every
    // host makes wasm's canonical NaN: positive, quiet, no payload.
    assert_eq!(nan_bits(true), 0x7ff8_0000_0000_0000);
    // Without, the hardware's default NaN: why the option exists.
    let native = nan_bits(false);
    assert!(f64::from_bits(native).is_nan(), "{native:#x}");
    if std::env::consts::ARCH == "x86_64" {
        assert_eq!(native, 0xfff8_0000_0000_0000, "x86_64's default NaN");
    } else if std::env::consts::ARCH == "aarch64" {
        assert_eq!(native, 0x7ff8_0000_0000_0000, "aarch64's default NaN");
    }
}
