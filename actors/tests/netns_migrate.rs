//! A live migration over a real, shaped network path: `scripts/shaped-move` puts two
//! `roam node` processes in two network namespaces it creates (and removes) itself,
//! joined by a veth pair rate-limited to 10 Mbit/s with a 20 ms RTT, moves a running
//! 64 MiB bigstate job (`--fill text`, ~3x compressible) from one to the other, and
//! compares the job's output with a straight `roam exec` of the same module and args.
//! This test runs it and checks that the move committed, that the outputs are identical,
//! and that the nodes really saw the added RTT.
//!
//! How the RTT is made: where the kernel has the netem qdisc (`scripts/netns check`
//! says "ok"), the veth pair is delayed by netem. Where it has not (CONFIG_NET_SCH_NETEM
//! unset), the link is only rate-limited (tbf) and the delay comes from `roam relay`, a
//! userspace TCP forwarder in namespace b that holds every chunk 10 ms each way; node b
//! reaches node a only through it (the script checks the sockets and fails otherwise).
//!
//! The full 64 MiB runs in about a minute (the move itself ~22 s), so the size is not
//! reduced. Needs root and iproute2; otherwise, or when the script finds that the
//! machine cannot make namespaces, it prints why and returns.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;

mod common;
use common::{run_json_script, say, ScriptRun};

#[test]
fn shaped_move_between_namespaces_keeps_the_output() {
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid());
    if euid.as_ref().ok() != Some(&0) {
        say(&format!(
            "SKIP shaped_move_between_namespaces: needs root for ip netns / tc (euid {euid:?})"
        ));
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        say("SKIP shaped_move_between_namespaces: iproute2 (ip) missing");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let Some(ScriptRun { v, last, stderr }) = run_json_script(
        "shaped_move_between_namespaces",
        Command::new(root.join("scripts/shaped-move"))
            // The node's default timeouts: a first round that outlasts any guess of the
            // link's speed is kept alive by the destination's progress reports.
            .args(["--mib", "64", "--json"])
            .env("ROAM_BIN", env!("CARGO_BIN_EXE_roam"))
            .current_dir(&root),
    ) else {
        return;
    };
    assert_eq!(v["shaped_outcome"], "committed", "{last}\n{stderr}");
    assert_eq!(v["outputs_identical"], true, "{last}\n{stderr}");
    let sent = v["shaped_sent_bytes"].as_u64().expect("shaped_sent_bytes");
    assert!(
        sent >= 64 << 20,
        "the move sent less than the state: {last}"
    );
    assert!(
        v["shaped_wire_bytes"].as_u64().is_some_and(|w| w > 0),
        "nothing crossed the link: {last}"
    );
    // Not a timing check: the relay (or netem) holds every byte rtt/2 each way, so the
    // RTT the nodes measure cannot be below the target if the connection goes through it.
    let target = v["rtt_target_ms"].as_f64().expect("rtt_target_ms");
    let rtt = v["rtt_ms"].as_f64().expect("rtt_ms");
    assert!(
        rtt >= 0.9 * target,
        "RTT {rtt} ms is below the {target} ms the path adds: {last}"
    );
    if v["rtt_by"] == "relay" {
        assert_eq!(v["via_relay"], true, "{last}");
    }
}

/// A job that dirties memory faster than the shaped link carries it (every step
/// rewrites 256 KiB anywhere in its 32 MiB, over 20 Mbit/s; enough steps to outlive
/// pre-copy rounds and the pull) moves by post-copy and by
/// hybrid: both commit, the memory follows after the resume (deferred bytes, a pull at
/// the destination), and the output is bit-identical to a straight run.
#[test]
fn post_copy_and_hybrid_over_a_shaped_link_keep_the_output() {
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid());
    if euid.as_ref().ok() != Some(&0) {
        say(&format!(
            "SKIP post_copy_over_a_shaped_link: needs root for ip netns / tc (euid {euid:?})"
        ));
        return;
    }
    if !actors::node::migrator::postcopy_available() {
        say("SKIP post_copy_over_a_shaped_link: userfaultfd unavailable (no post-copy)");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for mode in ["post-copy", "hybrid"] {
        let name = format!("{mode}_over_a_shaped_link");
        let Some(ScriptRun { v, last, stderr }) = run_json_script(
            &name,
            Command::new(root.join("scripts/shaped-move"))
                .args([
                    "--mib", "32", "--rate", "20mbit", "--rtt-ms", "4", "--steps", "25000",
                ])
                .args(["--move-mode", mode, "--reply-timeout-ms", "20000", "--json"])
                .args(["--job-arg", "--hot-kib", "--job-arg", "0"])
                .args(["--job-arg", "--dirty-kib-per-step", "--job-arg", "256"])
                .env("ROAM_BIN", env!("CARGO_BIN_EXE_roam"))
                .current_dir(&root),
        ) else {
            return;
        };
        assert_eq!(v["shaped_outcome"], "committed", "{mode}: {last}\n{stderr}");
        assert_eq!(v["outputs_identical"], true, "{mode}: {last}\n{stderr}");
        assert_eq!(v["mode"], mode, "{last}");
        assert!(
            v["deferred_bytes"].as_u64().is_some_and(|b| b > 0),
            "{mode}: no memory was deferred: {last}"
        );
        assert!(
            v["pull_s"].as_f64().is_some_and(|s| s > 0.0),
            "{mode}: no pull at the destination: {last}"
        );
    }
}
