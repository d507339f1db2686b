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
