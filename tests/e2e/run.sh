#!/usr/bin/env bash
# Graft's end-to-end suite against a real Kubernetes API server.
#
#   GRAFT_E2E=1 KUBECONFIG=~/.kube/config tests/e2e/run.sh [SCENARIO...]
#   GRAFT_E2E=1 tests/e2e/run.sh cleanup [RUN_ID]    # what a killed run left behind
#
# Does nothing unless GRAFT_E2E=1: it then builds graft-operator, graft-agent
# and the suite (graft-e2e), and runs the scenarios (default: all nine)
# against the cluster KUBECONFIG names (else ~/.kube/config). The cluster
# needs only its API server (kind, k3d, any throw-away cluster): the suite
# creates Node objects for simulated nodes and runs graft-operator and one
# graft-agent per node on this machine. Everything it creates is labelled
# graft.dev/e2e=<run id> and deleted at the end.
#
# Scenario 9 renders the chart's RBAC and admission policy with Helm's SDK
# (helm-python-sdk) in the same virtualenv as tests/helm (.work/venv-helm,
# GRAFT_HELM_VENV overrides); without it, scenario 9 fails and says why.
#
# Output: one line per scenario and "N passed, N failed"; exit status 0 only
# when every scenario passed (and 0 when skipped).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${GRAFT_HELM_VENV:-$ROOT/.work/venv-helm}"
REQS="$ROOT/tests/helm/requirements.txt"

log() { printf 'tests/e2e: %s\n' "$*" >&2; }

if [ "${GRAFT_E2E:-}" != 1 ]; then
    echo "tests/e2e: SKIPPED: GRAFT_E2E is not 1. The end-to-end suite creates and deletes objects in a" \
        "Kubernetes cluster, so it runs only when asked: GRAFT_E2E=1 KUBECONFIG=<cluster> tests/e2e/run.sh" \
        "(KUBECONFIG is ${KUBECONFIG:-<unset>})."
    exit 0
fi

cd "$ROOT"
# Where cargo puts binaries (CARGO_TARGET_DIR or the workspace's target/).
target_dir() {
    cargo metadata --format-version 1 --no-deps 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null ||
        printf '%s\n' "$ROOT/target"
}

log "building graft-operator, graft-agent and graft-e2e"
cargo build --locked -q -p graft-operator -p graft-agent -p graft-e2e
TARGET="$(target_dir)"
E2E="$TARGET/debug/graft-e2e"
export GRAFT_E2E_AGENT_BIN="$TARGET/debug/graft-agent"
export GRAFT_E2E_OPERATOR_BIN="$TARGET/debug/graft-operator"

if [ "${1:-}" = cleanup ]; then
    exec "$E2E" "$@"
fi

# Helm's SDK for scenario 9 (shared with tests/helm; rebuilt when its requirements change).
have_helm_sdk() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import helm_python, yaml' 2>/dev/null; }
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if ! have_helm_sdk || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "setting up Helm's SDK in $VENV (for scenario 9)"
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null && [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null || true
    fi
    if python3 -c 'import venv, ensurepip' 2>/dev/null &&
        rm -rf "$VENV" && mkdir -p "$(dirname "$VENV")" && python3 -m venv "$VENV" &&
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS"; then
        printf '%s\n' "$want" >"$stamp"
    else
        log "could not set up Helm's SDK (python3-venv and PyPI needed); scenario 9 will fail and say so"
    fi
fi
if have_helm_sdk; then
    export GRAFT_E2E_HELM_PYTHON="$VENV/bin/python"
fi

RUN_ID="${GRAFT_E2E_RUN_ID:-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')}"
export GRAFT_E2E_RUN_ID="$RUN_ID"
export GRAFT_E2E_WORKDIR="${GRAFT_E2E_WORKDIR:-$TARGET/e2e/$RUN_ID}"
mkdir -p "$GRAFT_E2E_WORKDIR"

log "run $RUN_ID; work dir and logs: $GRAFT_E2E_WORKDIR"
set +e
"$E2E" "$@"
status=$?
set -e
# The suite cleans up after failures, panics, Ctrl-C and SIGTERM itself. Killed
# outright (SIGKILL, OOM), it cannot: kill the children it recorded, then
# delete by its label.
if [ "$status" -gt 128 ]; then
    log "graft-e2e was killed (status $status): cleaning up run $RUN_ID"
    if [ -f "$GRAFT_E2E_WORKDIR/children.pids" ]; then
        while read -r pid; do
            if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'graft-\(agent\|operator\)'; then
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done <"$GRAFT_E2E_WORKDIR/children.pids"
    fi
    "$E2E" cleanup "$RUN_ID" || true
fi
exit "$status"
