//! For the tests that run a script of `scripts/` with `--json` (netns_migrate, hetero):
//! such a script prints a table, then one JSON object as its last line: the figures,
//! `{"skipped": REASON}` when this machine cannot run it, or `{"error": WHY}`.

use std::io::Write;
use std::process::Command;

/// Straight to stderr, past the test harness's capture: a skip must be seen.
pub fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// What a script printed last, once it ran (did not skip).
pub struct ScriptRun {
    /// Its last line, parsed.
    pub v: serde_json::Value,
    pub last: String,
    pub stderr: String,
}

/// Runs `cmd` and parses the last line of its stdout (echoed, for a failing test's log).
/// `None` when the script skipped: then `test` and the reason are said on the terminal.
/// Panics when the last line is not JSON or the script failed.
pub fn run_json_script(test: &str, cmd: &mut Command) -> Option<ScriptRun> {
    let out = cmd.output().expect("running the script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{stdout}");
    let last = stdout.lines().last().unwrap_or("").to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap_or_else(|e| {
        panic!(
            "the script's last line is not JSON ({e}); exit {:?}\n{stdout}\n{stderr}",
            out.status.code()
        )
    });
    if let Some(why) = v.get("skipped").and_then(|s| s.as_str()) {
        say(&format!("SKIP {test}: {why}"));
        return None;
    }
    assert!(
        out.status.success(),
        "the script failed (exit {:?}): {}\n{stderr}",
        out.status.code(),
        v.get("error").and_then(|e| e.as_str()).unwrap_or(&last)
    );
    Some(ScriptRun { v, last, stderr })
}
