//! `roam chaos` at level 1, end to end: the smoke scenario (3 in-process nodes, 2 jobs,
//! n2 killed and restarted, n1 partitioned away and healed) is played, its report
//! parses, and the invariants that hold whether or not crash recovery brings jobs back
//! do hold: no generation on two nodes at once, no output byte delivered twice, every
//! finished job's output bit-identical to a straight run. That every job *finished*
//! is asserted only with `ROAM_CHAOS_STRICT=1` (turn it on once crash recovery is in).

use std::path::{Path, PathBuf};
use std::process::Command;

use recovery::Report;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn roam() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_roam"));
    c.current_dir(workspace()).env("ROAM_PROGRESS", "0");
    c
}

#[test]
fn smoke_scenario_plays_its_timeline_and_keeps_the_invariants() {
    let guests = workspace().join("guests/out");
    for g in ["autopilot", "tracker"] {
        let p = guests.join(format!("{g}.wasm"));
        assert!(p.exists(), "{}: run scripts/build-guests", p.display());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("smoke.svg");
    let out = roam()
        .arg("chaos")
        .arg("--timeline")
        .arg(&svg)
        .arg("configs/chaos/smoke.toml")
        .output()
        .expect("roam runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = || {
        format!(
            "stdout:\n{stdout}\nstderr (last 3000 bytes):\n{}",
            tail(&stderr)
        )
    };

    // The timeline was played, in order.
    let mut at = 0;
    for ev in [
        "] kill n2",
        "] restart n2",
        "] partition {n1} | {n2,n3}",
        "] heal",
    ] {
        let pos = stdout[at..]
            .find(ev)
            .unwrap_or_else(|| panic!("`{ev}` not played after byte {at}\n{}", ctx()));
        at += pos + ev.len();
    }
    assert!(
        stdout.contains("home n3"),
        "n1 and n2 are disrupted\n{}",
        ctx()
    );
    assert!(
        stdout.contains("no generation on two nodes at once"),
        "{}",
        ctx()
    );

    // The last line is the report.
    let last = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("last line: {e}\n{}", ctx()));
    let report: Report = serde_json::from_value(v["report"].clone())
        .unwrap_or_else(|e| panic!("report: {e}\n{}", ctx()));
    assert_eq!(v["scenario"], "smoke");
    assert_eq!(
        (&v["kills"], &v["restarts"], &v["partitions"], &v["jobs"]),
        (&1.into(), &1.into(), &1.into(), &2.into()),
        "{}",
        ctx()
    );
    assert_eq!(report.jobs, 2);
    assert_eq!(v["jobs_lost"].as_u64(), Some(report.jobs_lost.len() as u64));
    assert_eq!(
        out.status.code(),
        Some(if report.ok() { 0 } else { 1 }),
        "exit code 1 exactly when an invariant fails\n{}",
        ctx()
    );

    // What holds with or without recovery.
    assert!(
        report.duplicate_generations.is_empty(),
        "{:?}\n{}",
        report.duplicate_generations,
        ctx()
    );
    assert_eq!(report.duplicate_output_bytes, 0, "{}", ctx());
    let finished_wrong: Vec<&String> = report
        .output_mismatch
        .iter()
        .chain(&report.output_unverified)
        .filter(|j| !report.unfinished.contains(j))
        .collect();
    assert!(
        finished_wrong.is_empty(),
        "finished jobs whose output differs from a straight run: {finished_wrong:?}\n{}",
        ctx()
    );
    assert_eq!(v["outputs_identical"], true, "{}", ctx());
    assert!(report.finished + report.unfinished.len() == report.jobs);

    // The timeline was drawn, with the kill and the partition.
    let drawn = std::fs::read_to_string(&svg).expect("the SVG is written");
    assert!(
        drawn.starts_with("<svg") || drawn.contains("<svg"),
        "not SVG"
    );
    assert!(drawn.contains("n2 killed") && drawn.contains("partition"));
    assert!(stdout.contains(&format!("timeline: {}", svg.display())));

    // Every job finished: only once crash recovery is in (ROAM_CHAOS_STRICT=1).
    if std::env::var_os("ROAM_CHAOS_STRICT").is_some() {
        assert!(report.ok(), "ROAM_CHAOS_STRICT: every invariant\n{}", ctx());
    } else if !report.unfinished.is_empty() {
        eprintln!(
            "not asserted: every job finished (unfinished: {:?}, lost: {:?}); a node's jobs \
             survive its death only with crash recovery. Set ROAM_CHAOS_STRICT=1 to assert it.",
            report.unfinished, report.jobs_lost
        );
    }
}

#[test]
fn a_disrupted_home_and_level_2_are_refused_before_anything_starts() {
    let out = roam()
        .args(["chaos", "--home", "n1", "configs/chaos/smoke.toml"])
        .output()
        .expect("roam runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--home n1") && stderr.contains("cut into a minority at 9000 ms"),
        "{stderr}"
    );
    assert!(stderr.contains("not replicated"), "{stderr}");

    let out = roam()
        .args(["chaos", "--level", "2", "configs/chaos/smoke.toml"])
        .output()
        .expect("roam runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("only level 1"), "{stderr}");

    let out = roam()
        .args(["chaos", "configs/chaos/nope.toml"])
        .output()
        .expect("roam runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml"));
}

fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(3000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}
