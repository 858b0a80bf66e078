#!/usr/bin/env bash
# Graft's benchmarks (issue 8), in one command. BENCHMARKS.md has the figures.
#
#   scripts/bench.sh            full run: 15 interleaved rounds of the detection-lag
#                               benchmark in a VM, a 60 s idle window, 15 scans; the
#                               checks hold the figures to the targets
#   scripts/bench.sh --short    CI (`scripts/test.sh bench`): 3 rounds, a 20 s idle
#                               window, 5 scans; the checks fail only on a bad miss
#                               (see tests/bench/src/checks.rs: SHORT)
#
# What it runs:
#   1. detection lag, real kernel: tests/vm's Debian kernel, modules, static
#      graft-agent and initramfs, plus a static graft-bench and
#      tests/bench/guest/bench.sh appended to it; one boot under qemu runs
#      graft-agent and the 1 s / 1 ms polling baselines side by side; the rows
#      come back over the serial console (tests/bench/src/lag.rs);
#   2. idle footprint of `graft-agent run` over a simulated kernel and a fake
#      API server, on the host (tests/bench/src/idle.rs);
#   3. blocking-task scan of 10,000 tasks in a generated /proc, on the host
#      (tests/bench/src/scan.rs).
#
# Environment:
#   GRAFT_BENCH_KERNEL   kernel for step 1 (default 6.1; any tests/vm/lib.sh alias or release)
#   GRAFT_BENCH_ROUNDS   rounds for step 1 (default 15, --short 3)
#   GRAFT_ACCEL          kvm or tcg (default: KVM if it boots the kernel, else TCG)
#   GRAFT_AGENT          a prebuilt static graft-agent instead of building one
#   GRAFT_BENCH_AGENT_LOG  diagnosis: GRAFT_LOG for graft-agent in the VM (e.g.
#                        graft_agent=trace); its log lands in console.log as
#                        "@@GRAFT bench-agent-log" lines (logging perturbs the figures)
#
# Results go to .work/bench/: lag.csv (raw rows), console.log, results.md
# (machine, tables, checks: what BENCHMARKS.md quotes), idle.json, scan.json.
# Prints one line per check and a closing "N passed, N failed"; exits non-zero
# when a check failed or a step could not run (counted as a failed check).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

SHORT=""
for arg in "$@"; do
    case "$arg" in
        --short) SHORT=1 ;;
        -h|--help) sed -n '2,/^set /p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

OUT="$ROOT/.work/bench"
mkdir -p "$OUT"
CHECKS="$OUT/checks.txt"
: >"$CHECKS"
KERNEL="${GRAFT_BENCH_KERNEL:-6.1}"
if [ -n "$SHORT" ]; then
    ROUNDS="${GRAFT_BENCH_ROUNDS:-3}" WINDOW=20s SETTLE=12s RUNS=5 MODE=(--short)
else
    ROUNDS="${GRAFT_BENCH_ROUNDS:-15}" WINDOW=60s SETTLE=15s RUNS=15 MODE=()
fi
log() { printf '[bench] %s\n' "$*" >&2; }
# fail_step NAME DETAIL: a step that could not run counts as a failed check.
fail_step() { echo "check $1: FAILED ($2)" | tee -a "$CHECKS"; }
# keep_checks FILE: the check lines of a graft-bench run, on the console and in $CHECKS.
keep_checks() { grep '^check ' "$1" | tee -a "$CHECKS"; }
t_start=$(date +%s)

# --- setup: host packages (tests/vm's installer), static graft-agent and graft-bench
if ! "$ROOT/scripts/install-vm-deps.sh"; then
    fail_step "setup: host packages" "scripts/install-vm-deps.sh failed"
fi
# shellcheck source=../tests/vm/lib.sh
source "$ROOT/tests/vm/lib.sh"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/x86_64-unknown-linux-gnu/release"
BENCH="$TARGET_DIR/graft-bench"
AGENT=""
# build_agent and the graft-bench build share the recipe: static glibc, release.
if ! AGENT="$( (build_agent && printf '%s' "$AGENT") )" || [ -z "$AGENT" ]; then
    fail_step "setup: static graft-agent" "build_agent failed"
fi
log "building the static graft-bench"
if ! (RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --quiet --release -p graft-bench --target x86_64-unknown-linux-gnu) ||
    [ ! -x "$BENCH" ]; then
    fail_step "setup: static graft-bench" "cargo build -p graft-bench failed"
    BENCH=""
fi

# --- 1. detection lag in a VM
lag_vm() { # runs in a subshell: lib.sh's vm_die exits
    fetch_kernel "$KERNEL"
    VMDIR="$OUT/$KREL"
    mkdir -p "$VMDIR"
    build_modules "$VMDIR/modules"
    INITRD="$VMDIR/initramfs.cpio"
    build_initramfs "$INITRD" "$VMDIR/modules" "$AGENT"
    # A second cpio archive after tests/vm's: the kernel unpacks both.
    local extra="$VMDIR/initramfs-bench"
    rm -rf "$extra"; mkdir -p "$extra/graft/bin"
    install -m 0644 "$ROOT/tests/bench/guest/bench.sh" "$extra/graft/bench.sh"
    install -m 0755 "$BENCH" "$extra/graft/bin/graft-bench"
    (cd "$extra" && printf '%s\n' graft/bench.sh graft/bin/graft-bench |
        cpio -o -H newc --owner 0:0 --quiet) >>"$INITRD"
    pick_accel
    printf '%s\n' "$ACCEL" >"$OUT/accel"
    printf '%s\n' "$KREL" >"$OUT/release"
    local rc=0
    boot_vm "$OUT/console.log" $((180 + ROUNDS * 6 * 10)) \
        "graft.mode=bench printk.devkmsg=on graft.bench.rounds=$ROUNDS${GRAFT_BENCH_AGENT_LOG:+ graft.bench.agentlog=$GRAFT_BENCH_AGENT_LOG}" || rc=$?
    log "qemu exited with $rc"
    return 0
}
rm -f "$OUT/console.log" "$OUT/accel" "$OUT/release" "$OUT/lag.csv"
if [ -n "$AGENT" ] && [ -n "$BENCH" ]; then
    t0=$(date +%s)
    if ( lag_vm ); then
        log "lag benchmark VM done in $(( $(date +%s) - t0 ))s"
    else
        fail_step "lag: VM" "kernel, modules, initramfs or boot failed (see the messages above)"
    fi
    if [ -s "$OUT/console.log" ]; then
        "$BENCH" report --console "$OUT/console.log" --csv "$OUT/lag.csv" \
            --markdown "$OUT/lag.md" "${MODE[@]}" >"$OUT/lag.out" 2>&1
        cat "$OUT/lag.out" | grep -v '^check '
        keep_checks "$OUT/lag.out"
    fi
else
    fail_step "lag: VM" "no graft-agent or graft-bench to run"
fi

# --- 2. idle footprint, 3. scan (host)
if [ -n "$AGENT" ] && [ -n "$BENCH" ]; then
    "$BENCH" idle --agent "$AGENT" --work "$OUT" --settle "$SETTLE" --window "$WINDOW" \
        --markdown "$OUT/idle.md" --json "$OUT/idle.json" "${MODE[@]}" >"$OUT/idle.out" 2>&1 ||
        grep -q '^check ' "$OUT/idle.out" || fail_step "idle: graft-agent run" "$(tail -1 "$OUT/idle.out")"
    grep -v '^check ' "$OUT/idle.out"
    keep_checks "$OUT/idle.out"
fi
if [ -n "$BENCH" ]; then
    "$BENCH" scan --work "$OUT" --runs "$RUNS" \
        --markdown "$OUT/scan.md" --json "$OUT/scan.json" "${MODE[@]}" >"$OUT/scan.out" 2>&1 ||
        grep -q '^check ' "$OUT/scan.out" || fail_step "scan" "$(tail -1 "$OUT/scan.out")"
    grep -v '^check ' "$OUT/scan.out"
    keep_checks "$OUT/scan.out"
fi

# --- summary
passed=$(grep -c ': passed (' "$CHECKS")
failed=$(grep -c ': FAILED (' "$CHECKS")
{
    echo "## $(if [ -n "$SHORT" ]; then echo "Short run (--short)"; else echo "Full run"; fi), $(date -u +%Y-%m-%dT%H:%MZ), graft $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "?")"
    echo
    echo "Machine: $(nproc) CPUs, $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load average $(cut -d' ' -f1-3 /proc/loadavg) at the end;" \
        "host kernel $(uname -r); qemu $(qemu-system-x86_64 --version 2>/dev/null | head -1 | awk '{print $4}') with -accel $(cat "$OUT/accel" 2>/dev/null || echo '?'), 2 vCPUs;" \
        "guest kernel $(cat "$OUT/release" 2>/dev/null || echo '?'). Took $(( $(date +%s) - t_start )) s."
    echo
    for f in lag.md idle.md scan.md; do [ -s "$OUT/$f" ] && cat "$OUT/$f" && echo; done
    echo "### Checks"
    echo
    sed 's/^/    /' "$CHECKS"
    echo
    echo "    $passed passed, $failed failed"
} >"$OUT/results.md"
log "results: $OUT/results.md, raw rows: $OUT/lag.csv"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
