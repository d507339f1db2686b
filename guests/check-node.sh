#!/usr/bin/env bash
# Smoke test of the built guests under Node's WASI: runs each guest twice with its default
# args, prints the wall time of each run, and compares the two runs' stdout, stderr and
# output files byte for byte (except tracker, whose random_get is not deterministic under
# Node). Run scripts/build-guests first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/data"
fail=0

run() { # name, run number, args...
    local name="$1" n="$2"
    shift 2
    local wasm="out/$name.wasm" start end rc=0
    start=$(date +%s%N)
    node run-node.mjs "$wasm" --data "$TMP/data" -- "$@" >"$TMP/$name.$n.out" 2>"$TMP/$name.$n.err" || rc=$?
    end=$(date +%s%N)
    printf '%-10s run %d: %5d ms, exit %d, stdout %8d bytes\n' "$name" "$n" \
        $(((end - start) / 1000000)) "$rc" "$(wc -c <"$TMP/$name.$n.out")"
    echo "$rc" >"$TMP/$name.$n.rc"
}

same() { # name
    local name="$1" f
    for f in out err rc; do
        if ! cmp -s "$TMP/$name.1.$f" "$TMP/$name.2.$f"; then
            echo "FAIL: $name: $f differs between runs"
            fail=1
        fi
    done
}

node run-node.mjs out/imgproc.wasm --data "$TMP/data" -- --make-input /data/in.pgm >/dev/null
for n in 1 2; do
    run autopilot "$n"
    run sieve "$n"
    run recurse "$n"
    run cguest "$n"
    run tracker "$n"
    run imgproc "$n" --input /data/in.pgm --output "/data/edges$n.pgm"
    run bigstate "$n" --mib 16 --steps 400 --fill text # default is ~13 s under Node
done
for g in autopilot sieve recurse cguest tracker imgproc bigstate; do
    for n in 1 2; do
        [ "$(cat "$TMP/$g.$n.rc")" = 0 ] || { echo "FAIL: $g run $n exited $(cat "$TMP/$g.$n.rc")"; fail=1; }
    done
done
for g in autopilot sieve recurse cguest bigstate; do same "$g"; done
sed -i 's/edges[12]/edgesN/' "$TMP"/imgproc.*.out
same imgproc
cmp -s "$TMP/data/edges1.pgm" "$TMP/data/edges2.pgm" || { echo "FAIL: imgproc output files differ"; fail=1; }
grep -qx 'clock: monotonic ok' "$TMP/tracker.1.out" || { echo "FAIL: tracker clock line"; fail=1; }

# The synthetic image and the same image read from a file give the same pipeline result.
node run-node.mjs out/imgproc.wasm --data "$TMP/data" >"$TMP/imgproc.synth.out"
if [ "$(tail -1 "$TMP/imgproc.synth.out")" != "$(tail -1 "$TMP/imgproc.1.out")" ]; then
    echo "FAIL: imgproc: file input and synthetic input disagree"
    fail=1
fi

rc=0
node run-node.mjs out/autopilot.wasm -- 1000 --exit-code 7 >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 7 ] || { echo "FAIL: autopilot --exit-code 7 exited $rc"; fail=1; }

if [ -f out/countdown.wasm ]; then
    node run-node.mjs out/countdown.wasm >"$TMP/countdown.out"
    [ "$(tail -1 "$TMP/countdown.out")" = liftoff ] || { echo "FAIL: countdown"; fail=1; }
fi

if [ "$fail" -eq 0 ]; then echo "guests: all checks passed"; else exit 1; fi
