#!/usr/bin/env bash
# Graft's main job on its own, no cluster: boots Debian's kernel in qemu and shows
# graft-agent applying the demo livepatch, the transition converging task by task,
# the patched behaviour, a stall naming its blocker, and the revert.
#
#   scripts/demo.sh [6.1|6.12]
#
# Installs what it needs (qemu, the kernel image and headers, busybox) by itself.
exec "$(dirname "$0")/../tests/vm/demo.sh" "$@"
