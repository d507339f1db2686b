//! `roam exec --checkpoint-every --store`, `roam store ls|verify|gc` and
//! `roam resume --store` across processes: a job resumed from any of its checkpoints
//! ends with the output and exit code of a straight run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn roam() -> Command {
    Command::new(env!("CARGO_BIN_EXE_roam"))
}

fn guest(name: &str) -> PathBuf {
    let wasm = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../guests/out/{name}.wasm"));
    assert!(
        wasm.exists(),
        "guest {name} missing: run scripts/build-guests"
    );
    wasm
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn roam")
}

fn ok(out: &Output, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checkpoint ids listed by `roam store ls`, oldest first.
fn listed(store: &Path) -> Vec<String> {
    let out = ok(&run(roam().args(["store", "ls"]).arg(store)), "store ls");
    out.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter(|id| id.len() == 64)
        .map(str::to_string)
        .collect()
}

#[test]
fn checkpoint_ls_verify_resume_gc() {
    let work = tempfile::tempdir().expect("tempdir");
    let store = work.path().join("ckpt");
    let straight = run(roam().arg("exec").arg(guest("sieve")).args(["--", "24"]));
    let expected = ok(&straight, "straight run");
    let first = run(roam()
        .args(["exec", "--checkpoint-every", "15", "--store"])
        .arg(&store)
        .args(["--job", "sv"])
        .arg(guest("sieve"))
        .args(["--", "24"]));
    assert_eq!(
        ok(&first, "checkpointed run"),
        expected,
        "checkpointing changed the output"
    );
    let ids = listed(&store);
    assert!(ids.len() >= 3, "only {} checkpoints listed", ids.len());
    let ls = ok(
        &run(roam().args(["store", "ls", "--job", "sv"]).arg(&store)),
        "ls",
    );
    assert!(ls.contains(&format!("{} checkpoint(s)", ids.len())), "{ls}");

    let verify = ok(&run(roam().args(["store", "verify"]).arg(&store)), "verify");
    assert!(verify.contains(": ok"), "{verify}");

    // Resume an early checkpoint (by prefix) and the newest one (by job): each prints the
    // rest of the straight run's output.
    // The newest checkpoint may come after the last line was printed, so only the early
    // one must print something.
    for (args, must_print) in [
        (
            vec!["--checkpoint".to_string(), ids[1][..12].to_string()],
            true,
        ),
        (vec!["--job".to_string(), "sv".to_string()], false),
    ] {
        let resumed = run(roam().args(["resume", "--store"]).arg(&store).args(&args));
        let out = ok(&resumed, "resume");
        assert!(
            (!must_print || !out.is_empty()) && expected.ends_with(&out),
            "resume {args:?}: output is not the rest of the straight run ({} bytes)",
            out.len()
        );
    }

    // Resume and keep checkpointing: a new generation, chained to the restored one.
    let again = run(roam()
        .args(["resume", "--checkpoint-every", "10", "--store"])
        .arg(&store)
        .args(["--checkpoint", &ids[0]]));
    assert!(expected.ends_with(&ok(&again, "resume with checkpoints")));
    let ls = ok(&run(roam().args(["store", "ls"]).arg(&store)), "ls");
    assert!(
        ls.lines().any(|l| l.split_whitespace().nth(1) == Some("1")),
        "no generation-1 checkpoint listed:\n{ls}"
    );

    let gc = ok(
        &run(roam().args(["store", "gc", "--keep", "1"]).arg(&store)),
        "gc",
    );
    assert!(gc.contains("kept 1 checkpoint(s)"), "{gc}");
    let left = listed(&store);
    assert_eq!(left.len(), 1, "{left:?}");
    ok(
        &run(roam().args(["store", "verify"]).arg(&store)),
        "verify after gc",
    );
    let last = run(roam().args(["resume", "--store"]).arg(&store));
    assert!(expected.ends_with(&ok(&last, "resume after gc")));
}

#[test]
fn a_damaged_store_fails_verify_and_resume() {
    let work = tempfile::tempdir().expect("tempdir");
    let store = work.path().join("ckpt");
    ok(
        &run(roam()
            .args(["exec", "--checkpoint-every", "10", "--store"])
            .arg(&store)
            .arg(guest("sieve"))
            .args(["--", "8"])),
        "checkpointed run",
    );
    assert!(!listed(&store).is_empty());
    // Flip a byte in the middle of every chunk file.
    let mut damaged = 0;
    let mut dirs = vec![store.join("chunks")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read chunks") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let mut b = std::fs::read(&p).expect("read chunk");
                let mid = b.len() / 2;
                b[mid] ^= 0x40;
                std::fs::write(&p, b).expect("write chunk");
                damaged += 1;
            }
        }
    }
    assert!(damaged > 0);
    let verify = run(roam().args(["store", "verify"]).arg(&store));
    assert_eq!(verify.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("corrupt chunk"));
    let resume = run(roam().args(["resume", "--store"]).arg(&store));
    assert_eq!(resume.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&resume.stderr).contains("corrupt"),
        "{}",
        String::from_utf8_lossy(&resume.stderr)
    );
    let missing = run(roam()
        .args(["store", "ls"])
        .arg(work.path().join("nothing")));
    assert_eq!(missing.status.code(), Some(2));
}
