#!/usr/bin/env bash
# Graft's whole test suite, as CI runs it (.ci/run calls this script).
#
#   scripts/test.sh              every stage
#   scripts/test.sh STAGE...     only these stages (see the list below)
#
# Each stage installs what it needs (Debian packages, PyPI packages in venvs
# under .work/, crates) and prints its own results; this script runs them all,
# even after a failure, prints one line per stage and a closing
# "N passed, N failed" line, and exits non-zero when any stage failed.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

ALL_STAGES=(lint unit fuzz ansible helm prometheus vm bench e2e)

# Incremental state is only worth its disk on a developer's edit-compile loop.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# A full disk fails every later stage with the same confusing ENOSPC, so say
# up front when the run is unlikely to fit (a whole run peaks at about 4 GiB).
warn_if_disk_is_short() {
    local dir="${CARGO_TARGET_DIR:-$ROOT/target}" free_kib
    mkdir -p "$dir" 2>/dev/null || dir="$ROOT"
    free_kib=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
    if [ "${free_kib:-0}" -lt $((5 * 1024 * 1024)) ]; then
        echo "warning: only $((free_kib / 1024)) MiB free under $dir; a whole run needs about 4 GiB" \
            "(free space, or point CARGO_TARGET_DIR at a larger disk)" >&2
    fi
}

stage_lint() {
    cargo fmt --all -- --check &&
        cargo clippy --workspace --all-targets --locked -- -D warnings
}
# Unit, mocked-API, simulated-kernel CLI and CRD drift tests.
stage_unit() { cargo nextest run --workspace --locked --no-fail-fast; }
stage_fuzz() { scripts/fuzz.sh "${GRAFT_FUZZ_SECONDS:-30}"; }
stage_ansible() { tests/ansible/run.sh; }
stage_helm() { tests/helm/run.sh; }
stage_prometheus() { tests/prometheus/run.sh; }
# Real kernels in qemu: Debian 12's 6.1 and the 6.12 that bookworm-backports carries.
stage_vm() { tests/vm/run.sh 6.1 6.12.95+deb12-amd64; }
stage_bench() { scripts/bench.sh --short; }
# Against the cluster KUBECONFIG names, only with GRAFT_E2E=1; says it skipped otherwise.
stage_e2e() { tests/e2e/run.sh; }

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=("${ALL_STAGES[@]}")

warn_if_disk_is_short
passed=0 failed=0 summary=()
for stage in "${stages[@]}"; do
    if ! declare -F "stage_$stage" >/dev/null; then
        echo "unknown stage $stage; stages: ${ALL_STAGES[*]}" >&2
        exit 2
    fi
    echo "=== stage $stage"
    start=$(date +%s)
    if "stage_$stage"; then
        passed=$((passed + 1)); result=passed
    else
        failed=$((failed + 1)); result=FAILED
    fi
    summary+=("stage $stage: $result ($(( $(date +%s) - start ))s)")
done

echo "=== summary"
printf '%s\n' "${summary[@]}"
echo "stages: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
