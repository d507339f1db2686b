# shellcheck shell=bash
# Helpers for scripts that start `roam node` processes and drive them through the CLI
# (scripts/shaped-move, scripts/hetero-move). Sourced, not run. The caller sets PROG
# (its name, for messages), JSON (1: a failure or skip also prints a JSON last line) and
# KEEP (1: keep the temp dir) before calling swarm_tmp; it may define swarm_on_exit, run
# by the exit trap after the processes in PIDS are ended and before TMP is removed.

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
json_str() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }

# skip REASON: this machine cannot run it; exit 0 saying why (and {"skipped": ...}).
skip() {
    echo "$PROG: SKIPPED: $1"
    if [ "$JSON" -eq 1 ]; then
        printf '{"skipped": %s}\n' "$(json_str "$1")"
    fi
    exit 0
}

# Any command that fails unexpectedly (set -e) says where, instead of ending silently.
set -E
trap 'fail "line $LINENO: a command failed (exit $?)"' ERR

# swarm_tmp: makes TMP (/tmp/$PROG.XXXXXX) and PIDS, and a trap that always ends the
# processes in PIDS (started by the caller with &), runs swarm_on_exit and removes TMP.
swarm_tmp() {
    TMP="$(mktemp -d "/tmp/$PROG.XXXXXX")"
    PIDS=()
    trap swarm_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

swarm_cleanup() {
    local rc=$?
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    if declare -F swarm_on_exit >/dev/null; then
        swarm_on_exit || true
    fi
    if [ "$KEEP" -eq 1 ]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}

# fail WHY: exit 1 with the reason, the tails of the logs in TMP (*.log) and, with JSON,
# {"error": WHY} as the last line.
fail() {
    log "FAILED: $*"
    local f
    for f in "${TMP:-/nonexistent}"/*.log; do
        if [ -s "$f" ]; then
            echo "---- tail of $(basename "$f")" >&2
            tail -n 25 "$f" >&2
        fi
    done
    if [ "$JSON" -eq 1 ]; then
        printf '{"error": %s}\n' "$(json_str "$*")"
    fi
    exit 1
}

# wait_for SECONDS DESCRIPTION CMD...: runs CMD every 0.2 s until it succeeds (a status
# polled with a deadline; fail when it runs out).
wait_for() {
    local secs="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${secs}s waiting for $what"
        sleep 0.2
    done
}

# peer_field NAME FIELD CMD...: FIELD of the peer called NAME in the JSON that CMD prints
# (`roam peers --json`, run however the caller needs); exit 1 if that peer is not
# connected or the field is missing or null.
peer_field() {
    local name="$1" field="$2"
    shift 2
    "$@" | python3 -c '
import json, sys
for p in json.load(sys.stdin):
    if p.get("name") == sys.argv[1] and p.get("connected") and p.get(sys.argv[2]) is not None:
        print(p[sys.argv[2]]); sys.exit(0)
sys.exit(1)' "$name" "$field"
}
