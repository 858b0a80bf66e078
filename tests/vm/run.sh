#!/usr/bin/env bash
# Graft's real-kernel VM suite: boots a Debian kernel under qemu with a
# busybox initramfs and checks graft-agent against real livepatch modules.
#
#   tests/vm/run.sh [KERNEL...] [--mode suite|modules]
#
# KERNEL: 6.1 (default: Debian 12's kernel), 6.12 (Debian 12's 6.12 kernel),
# or an exact release such as 6.1.0-56-amd64 or 6.12.95+deb12-amd64 (also
# GRAFT_VM_KERNEL=...). With several kernels they run one after the other:
#   tests/vm/run.sh 6.1 6.12
#
# --mode modules checks only the modules, with insmod/rmmod/sysfs and no
# agent (useful when bringing up a new kernel).
#
# Prints one line per scenario and "N passed, N failed" per kernel, plus a
# total line when there are several; exits non-zero on any failure, boot
# failure or timeout. Console logs (artifacts) stay in .work/vm/<release>/.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

MODE=suite
KERNELS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --mode) MODE="$2"; shift 2 ;;
        --mode=*) MODE="${1#--mode=}"; shift ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) vm_die "unknown option $1" ;;
        *) KERNELS+=("$1"); shift ;;
    esac
done
[ "${#KERNELS[@]}" -gt 0 ] || KERNELS=("${GRAFT_VM_KERNEL:-6.1}")
case "$MODE" in suite|modules) ;; *) vm_die "unknown mode $MODE (suite or modules)" ;; esac
SCENARIOS=8

"$GRAFT_ROOT/scripts/install-vm-deps.sh"
AGENT=""
if [ "$MODE" = suite ]; then build_agent; fi

# run_kernel <alias|release> <summary file>: everything for one kernel; runs
# in a subshell so that one kernel's failure cannot stop the next one.
run_kernel() {
    local summary="$2"
    fetch_kernel "$1"
    VMDIR="$GRAFT_WORK/$KREL"
    mkdir -p "$VMDIR"
    build_modules "$VMDIR/modules"
    INITRD="$VMDIR/initramfs.cpio"
    build_initramfs "$INITRD" "$VMDIR/modules" "$AGENT"
    pick_accel
    if [ "$MODE" = modules ]; then
        local rc=0 log="$VMDIR/console-modules.log"
        boot_vm "$log" 240 "graft.mode=modules" || rc=$?
        grep -E '^@@GRAFT (check|checks)' "$log" | sed 's/^@@GRAFT //' || true
        if [ "$rc" -eq 0 ] && grep -q '^@@GRAFT checks failed=0' "$log"; then
            echo "kernel $KREL: module checks passed" | tee "$summary"
        else
            echo "kernel $KREL: module checks FAILED (qemu status $rc, log $log)" | tee "$summary"
            return 1
        fi
        return 0
    fi
    local rc1=0 rc2=0 ok=0
    boot_vm "$VMDIR/console.log" "${GRAFT_VM_TIMEOUT:-420}" "graft.mode=suite" || rc1=$?
    boot_vm "$VMDIR/console-sig-enforce.log" 120 "graft.mode=sigenforce module.sig_enforce=1" || rc2=$?
    python3 "$HERE/check.py" --release "$KREL" \
        --boot "suite:$rc1:$VMDIR/console.log" \
        --boot "sigenforce:$rc2:$VMDIR/console-sig-enforce.log" >"$summary" || ok=1
    cp "$summary" "$VMDIR/summary.txt"
    return "$ok"
}

total_pass=0 total_fail=0 overall=0
for k in "${KERNELS[@]}"; do
    summary="$(mktemp)"
    t0=$(date +%s)
    if ( run_kernel "$k" "$summary" ); then :; else overall=1; fi
    if [ "$MODE" = suite ]; then
        if grep -qE '^[0-9]+ passed, [0-9]+ failed$' "$summary"; then
            cat "$summary"
            read -r p f < <(awk '/^[0-9]+ passed, [0-9]+ failed$/ { print $1, $3 }' "$summary")
        else
            # Never got as far as judging scenarios (download, build or boot).
            echo "kernel $k: could not be prepared or booted (see the messages above)"
            echo "0 passed, $SCENARIOS failed"
            p=0 f=$SCENARIOS overall=1
        fi
        total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
    fi
    rm -f "$summary"
    vm_log "kernel $k done in $(( $(date +%s) - t0 ))s; console logs under $GRAFT_WORK"
done
if [ "$MODE" = suite ] && [ "${#KERNELS[@]}" -gt 1 ]; then
    echo "total: $total_pass passed, $total_fail failed"
fi
exit "$overall"
