//! Every example guest, paused and resumed at random points, must produce exactly the
//! output of a straight run: stdout, stderr, written files and exit code.
//!
//! The guests are built by `scripts/build-guests` (which `scripts/test` runs first).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasm_host::drive::{run_with_pauses, PausePlan};
use wasm_host::{BufferSink, Host, HostConfig, Job, JobSpec, Outcome, Preopen};

fn guest(name: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guests/out");
    for candidate in [format!("{name}.wasm"), format!("{name}.wat")] {
        if let Ok(b) = std::fs::read(dir.join(&candidate)) {
            return b;
        }
    }
    panic!(
        "guest `{name}` not found in {}: run scripts/build-guests first",
        dir.display()
    );
}

fn host() -> Arc<Host> {
    static HOST: OnceLock<Arc<Host>> = OnceLock::new();
    HOST.get_or_init(|| Host::new(HostConfig::default()).expect("host"))
        .clone()
}

fn plain_host() -> Arc<Host> {
    static HOST: OnceLock<Arc<Host>> = OnceLock::new();
    HOST.get_or_init(|| {
        Host::new(HostConfig {
            pausable: false,
            ..HostConfig::default()
        })
        .expect("plain host")
    })
    .clone()
}

#[derive(Debug, PartialEq, Eq)]
struct RunResult {
    code: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    files: Vec<(String, Vec<u8>)>,
}

struct Case {
    guest: &'static str,
    args: Vec<String>,
    /// Files to put into the preopened /data before the run.
    inputs: Vec<(&'static str, Vec<u8>)>,
}

impl Case {
    fn new(guest: &'static str, args: &[&str]) -> Case {
        Case {
            guest,
            args: args.iter().map(|s| s.to_string()).collect(),
            inputs: Vec::new(),
        }
    }

    fn spec(&self, dir: &std::path::Path) -> JobSpec {
        for (name, bytes) in &self.inputs {
            std::fs::write(dir.join(name), bytes).expect("write input");
        }
        let mut argv = vec![self.guest.to_string()];
        argv.extend(self.args.iter().cloned());
        let mut spec = JobSpec::new(argv);
        spec.preopens = vec![Preopen {
            host: dir.to_path_buf(),
            guest: "/data".into(),
        }];
        spec.seed = [7; 32];
        spec
    }

    fn collect(&self, dir: &std::path::Path, code: i32, sink: &BufferSink) -> RunResult {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .expect("read data dir")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).expect("read output file"),
                )
            })
            .collect();
        files.sort();
        RunResult {
            code,
            stdout: sink.stdout_bytes(),
            stderr: sink.stderr_bytes(),
            files,
        }
    }

    fn straight(&self, host: &Host) -> RunResult {
        let dir = tempfile::tempdir().expect("tempdir");
        let module = host.load(&guest(self.guest)).expect("load");
        let sink = BufferSink::default();
        let mut job =
            Job::start(host, module, self.spec(dir.path()), Box::new(sink.clone())).expect("start");
        let code = match job.run().expect("run") {
            Outcome::Exited(c) => c,
            Outcome::Paused => panic!("paused without request"),
        };
        self.collect(dir.path(), code, &sink)
    }

    fn paused(&self, seed: u64, fresh_instance: bool, max_delay: Duration) -> (RunResult, u32) {
        let host = host();
        let dir = tempfile::tempdir().expect("tempdir");
        let module = host.load(&guest(self.guest)).expect("load");
        let sink = BufferSink::default();
        let s2 = sink.clone();
        let plan = PausePlan {
            count: 20,
            seed,
            min_delay: Duration::from_micros(50),
            max_delay,
            fresh_instance,
        };
        let (code, report) = run_with_pauses(
            &host,
            module,
            self.spec(dir.path()),
            move || Box::new(s2.clone()),
            &plan,
        )
        .expect("paused run");
        (self.collect(dir.path(), code, &sink), report.pauses)
    }
}

fn check(case: Case) {
    check_with(case, Duration::from_millis(8));
}

fn check_with(case: Case, max_delay: Duration) {
    let reference = case.straight(&host());
    let plain = case.straight(&plain_host());
    assert_eq!(
        reference, plain,
        "{}: instrumented run differs from the plain module",
        case.guest
    );
    assert!(
        !reference.stdout.is_empty(),
        "{}: produced no output",
        case.guest
    );
    for (seed, fresh) in [(1u64, true), (2, true), (3, false)] {
        let (got, pauses) = case.paused(seed, fresh, max_delay);
        assert!(
            pauses >= 20,
            "{} seed {seed}: only {pauses} pauses happened",
            case.guest
        );
        assert_eq!(
            got.code, reference.code,
            "{} seed {seed}: exit code",
            case.guest
        );
        assert!(
            got.stdout == reference.stdout,
            "{} seed {seed}: stdout differs ({} vs {} bytes)",
            case.guest,
            got.stdout.len(),
            reference.stdout.len()
        );
        assert_eq!(
            got.stderr, reference.stderr,
            "{} seed {seed}: stderr",
            case.guest
        );
        assert_eq!(
            got.files, reference.files,
            "{} seed {seed}: files",
            case.guest
        );
    }
}

#[test]
fn autopilot_resumes_bit_identically_with_its_exit_code() {
    let case = Case::new("autopilot", &["--exit-code", "7"]);
    check(case);
}

#[test]
fn tracker_with_clocks_and_random_resumes_bit_identically() {
    check(Case::new("tracker", &[]));
}

#[test]
fn sieve_growing_memory_resumes_bit_identically() {
    check(Case::new("sieve", &["24"]));
}

#[test]
fn imgproc_with_files_resumes_bit_identically() {
    // Make the input with the guest itself, then filter it from the file.
    let host = host();
    let dir = tempfile::tempdir().expect("tempdir");
    let module = host.load(&guest("imgproc")).expect("load");
    let mut spec = JobSpec::new(vec![
        "imgproc".into(),
        "--make-input".into(),
        "/data/in.pgm".into(),
    ]);
    spec.preopens = vec![Preopen {
        host: dir.path().to_path_buf(),
        guest: "/data".into(),
    }];
    let mut job = Job::start(&host, module, spec, Box::new(BufferSink::default())).expect("start");
    assert_eq!(job.run().expect("make input"), Outcome::Exited(0));
    let input = std::fs::read(dir.path().join("in.pgm")).expect("input written");
    assert!(input.starts_with(b"P5"), "input is a PGM");
    let mut case = Case::new(
        "imgproc",
        &["--input", "/data/in.pgm", "--output", "/data/out.pgm"],
    );
    case.inputs.push(("in.pgm", input));
    check(case);
}

#[test]
fn recurse_deep_stacks_and_indirect_calls_resume_bit_identically() {
    check(Case::new("recurse", &[]));
}

#[test]
fn c_guest_resumes_bit_identically() {
    check(Case::new("cguest", &[]));
}

#[test]
fn wat_guest_resumes_bit_identically() {
    let reference = Case::new("countdown", &[]).straight(&host());
    assert!(reference.stdout.ends_with(b"liftoff\n"));
    // It runs for a few milliseconds only: pause it at short intervals.
    check_with(Case::new("countdown", &[]), Duration::from_millis(2));
}
