#!/usr/bin/env bash
# Graft's real-kernel VM suite: boots a Debian kernel under qemu with a
# busybox initramfs and checks graft-agent against real livepatch modules.
#
#   tests/vm/run.sh [KERNEL] [--mode suite|modules] [--keep-going]
#
# KERNEL: 6.1 (default, Debian 12's kernel), 6.12, or an exact release such
# as 6.1.0-56-amd64 (also GRAFT_VM_KERNEL=...). Several kernels may be given:
#   tests/vm/run.sh 6.1 6.12
#
# Prints one line per scenario and "N passed, N failed" per kernel (and a
# total when there are several), exits non-zero on any failure, boot
# failure or timeout. Serial console logs stay under .work/vm/<release>/.
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
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) vm_die "unknown option $1" ;;
        *) KERNELS+=("$1"); shift ;;
    esac
done
if [ "${#KERNELS[@]}" -eq 0 ]; then KERNELS=("${GRAFT_VM_KERNEL:-6.1}"); fi

"$GRAFT_ROOT/scripts/install-vm-deps.sh"

AGENT=""
if [ "$MODE" = suite ]; then build_agent; fi

total_pass=0 total_fail=0 overall=0
for k in "${KERNELS[@]}"; do
    fetch_kernel "$k"
    VMDIR="$GRAFT_WORK/$KREL"
    mkdir -p "$VMDIR"
    build_modules "$VMDIR/modules"
    INITRD="$VMDIR/initramfs.cpio"
    build_initramfs "$INITRD" "$VMDIR/modules" "$AGENT"
    pick_accel
    t0=$(date +%s)
    rc=0
    case "$MODE" in
        modules)
            boot_vm "$VMDIR/console-modules.log" 240 "graft.mode=modules" || rc=$?
            grep -E '^@@GRAFT (check|checks|exit)' "$VMDIR/console-modules.log" || true
            if [ "$rc" -ne 0 ] || ! grep -q '^@@GRAFT checks failed=0' "$VMDIR/console-modules.log"; then
                echo "kernel $KREL: module checks FAILED (qemu rc=$rc, log $VMDIR/console-modules.log)"
                overall=1
            else
                echo "kernel $KREL: module checks passed"
            fi
            ;;
        suite)
            rc1=0 rc2=0
            boot_vm "$VMDIR/console.log" "${GRAFT_VM_TIMEOUT:-420}" "graft.mode=suite" || rc1=$?
            boot_vm "$VMDIR/console-sig-enforce.log" 120 "graft.mode=sigenforce module.sig_enforce=1" || rc2=$?
            summary="$VMDIR/summary.txt"
            if python3 "$HERE/check.py" --release "$KREL" \
                --boot "suite:$rc1:$VMDIR/console.log" \
                --boot "sigenforce:$rc2:$VMDIR/console-sig-enforce.log" >"$summary"; then :; else overall=1; fi
            cat "$summary"
            read -r p f < <(awk '/^[0-9]+ passed, [0-9]+ failed/ { print $1, $3 }' "$summary" | tail -1)
            total_pass=$((total_pass + ${p:-0})); total_fail=$((total_fail + ${f:-1}))
            ;;
        *) vm_die "unknown mode $MODE" ;;
    esac
    vm_log "kernel $KREL done in $(( $(date +%s) - t0 ))s; console logs in $VMDIR"
done
if [ "$MODE" = suite ] && [ "${#KERNELS[@]}" -gt 1 ]; then
    echo "total: $total_pass passed, $total_fail failed"
fi
exit "$overall"
