#!/usr/bin/env bash
# Graft in two minutes, no cluster needed: boots a throw-away VM with Debian's
# kernel and shows graft-agent applying a real livepatch, following the
# transition task by task, naming what blocks a stalled one, and reverting.
#
#   tests/vm/demo.sh [KERNEL]        # KERNEL: 6.1 (default), 6.12 or a release
#
# Installs what it needs (qemu, busybox, kernel image and headers unpacked
# under /var/cache/graft, never installed), builds the modules and the agent.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

"$GRAFT_ROOT/scripts/install-vm-deps.sh"
build_agent
fetch_kernel "${1:-${GRAFT_VM_KERNEL:-6.1}}"
VMDIR="$GRAFT_WORK/$KREL"
mkdir -p "$VMDIR"
build_modules "$VMDIR/modules"
INITRD="$VMDIR/initramfs.cpio"
build_initramfs "$INITRD" "$VMDIR/modules" "$AGENT"
pick_accel
rc=0
boot_vm "$VMDIR/console-demo.log" 300 "graft.mode=demo" live || rc=$?
if [ "$rc" -ne 0 ] || ! grep -q '^@@GRAFT exit mode=demo rc=0' "$VMDIR/console-demo.log"; then
    vm_die "the demo did not finish (qemu status $rc); console log: $VMDIR/console-demo.log"
fi
vm_log "console log kept in $VMDIR/console-demo.log"
