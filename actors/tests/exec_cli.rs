//! `roam exec --capture-after … --out` in one process and `roam resume` in another give,
//! together, exactly the output and exit code of a straight run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn roam() -> Command {
    Command::new(env!("CARGO_BIN_EXE_roam"))
}

fn guest(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guests/out");
    let wasm = dir.join(format!("{name}.wasm"));
    if wasm.exists() {
        return wasm;
    }
    let wat = dir.join(format!("{name}.wat"));
    assert!(
        wat.exists(),
        "guest {name} missing: run scripts/build-guests"
    );
    wat
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn roam")
}

fn across_processes(name: &str, args: &[&str], capture_ms: u64, data: Option<&Path>) {
    let dirs: Vec<String> = data
        .map(|d| vec!["--dir".to_string(), format!("{}::/data", d.display())])
        .unwrap_or_default();
    let straight = run(roam()
        .arg("exec")
        .args(&dirs)
        .arg(guest(name))
        .arg("--")
        .args(args));
    let work = tempfile::tempdir().expect("tempdir");
    let snap = work.path().join("job.snap");
    let first = run(roam()
        .arg("exec")
        .args(&dirs)
        .arg("--capture-after")
        .arg(capture_ms.to_string())
        .arg("--out")
        .arg(&snap)
        .arg(guest(name))
        .arg("--")
        .args(args));
    assert_eq!(
        first.status.code(),
        Some(0),
        "{name}: capture run failed: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        snap.exists(),
        "{name}: no snapshot written (job ended before {capture_ms} ms?)"
    );
    let second = run(roam().arg("resume").args(&dirs).arg(&snap));
    let mut joined = first.stdout.clone();
    joined.extend_from_slice(&second.stdout);
    assert_eq!(
        second.status.code(),
        straight.status.code(),
        "{name}: exit code"
    );
    assert!(
        joined == straight.stdout,
        "{name}: stdout differs: {} + {} bytes vs {} bytes",
        first.stdout.len(),
        second.stdout.len(),
        straight.stdout.len()
    );
    assert!(!first.stdout.is_empty() || !second.stdout.is_empty());
}

#[test]
fn guests_resume_in_another_process() {
    across_processes("autopilot", &["--exit-code", "5"], 300, None);
    across_processes("tracker", &[], 400, None);
    across_processes("sieve", &[], 300, None);
    across_processes("recurse", &[], 300, None);
    across_processes("cguest", &[], 300, None);
    across_processes("countdown", &[], 15, None);
}

#[test]
fn written_files_travel_with_the_snapshot() {
    let data = tempfile::tempdir().expect("tempdir");
    let dirs = format!("{}::/data", data.path().display());
    let made = run(roam()
        .args(["exec", "--dir", &dirs])
        .arg(guest("imgproc"))
        .args(["--", "--make-input", "/data/in.pgm"]));
    assert_eq!(made.status.code(), Some(0));
    across_processes(
        "imgproc",
        &["--input", "/data/in.pgm", "--output", "/data/out.pgm"],
        400,
        Some(data.path()),
    );
    let out = std::fs::read(data.path().join("out.pgm")).expect("output image written");
    assert!(out.starts_with(b"P5"));
}

#[test]
fn a_corrupt_snapshot_is_refused_with_a_message() {
    let work = tempfile::tempdir().expect("tempdir");
    let bad = work.path().join("bad.snap");
    std::fs::write(&bad, b"ROAMSNAP\x01\x00\x00\x00garbage").expect("write");
    let out = run(roam().arg("resume").arg(&bad));
    assert_eq!(out.status.code(), Some(2));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("not a usable snapshot"), "message was: {msg}");
}

#[test]
fn unknown_imports_are_named_unless_allowed() {
    let work = tempfile::tempdir().expect("tempdir");
    let m = work.path().join("m.wat");
    std::fs::write(
        &m,
        r#"(module (import "env" "mystery" (func $m (result i32)))
            (memory (export "memory") 1)
            (func (export "_start") (drop (call $m))))"#,
    )
    .expect("write");
    let refused = run(roam().arg("exec").arg(&m));
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("env::mystery"));
    let allowed = run(roam().args(["exec", "--allow-unknown-imports"]).arg(&m));
    assert_eq!(
        allowed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
}

#[test]
fn hostile_guests_are_contained() {
    let work = tempfile::tempdir().expect("tempdir");
    let spin = work.path().join("spin.wat");
    std::fs::write(
        &spin,
        r#"(module (memory (export "memory") 1)
            (func (export "_start") (loop $l (br $l))))"#,
    )
    .expect("write");
    let out = run(roam().args(["exec", "--cpu-limit-ms", "200"]).arg(&spin));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CPU limit"));

    let hog = work.path().join("hog.wat");
    std::fs::write(
        &hog,
        r#"(module (memory (export "memory") 1)
            (func (export "_start")
              (if (i32.eq (memory.grow (i32.const 4096)) (i32.const -1)) (then unreachable))))"#,
    )
    .expect("write");
    let out = run(roam().args(["exec", "--memory-limit-mib", "16"]).arg(&hog));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("trapped"));
}
