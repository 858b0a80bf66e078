# The newcomer demo, run by /init inside the VM (tests/vm/demo.sh boots it).
# Shows graft-agent doing its main job on a real kernel, with its human output.
. /graft/lib.sh
dmesg -n 1
PATH=/graft/bin:$PATH
step() { printf '\n==> %s\n' "$*"; sleep "${DEMO_PAUSE:-1}"; }
show() { printf '$ %s\n' "$*"; "$@"; }

step "A throw-away VM running Debian's kernel $(uname -r), livepatch built in. The demo patch replaces cmdline_proc_show(), the function behind /proc/cmdline."
show cat /proc/cmdline

step "What is this module, and would this kernel take it? (changes nothing)"
show graft-agent inspect $M/graft_demo.ko

step "Apply it: load the module, then follow the transition until every task runs the patched code"
show graft-agent apply $M/graft_demo.ko --sha256 "$(sha256sum $M/graft_demo.ko | cut -d' ' -f1)"
echo "(exit code $?)"

step "The patched code runs:"
show cat /proc/cmdline
show graft-agent status

step "Applying it again changes nothing (idempotent, for Ansible and friends)"
show graft-agent apply $M/graft_demo.ko
echo "(exit code $?)"

step "When a transition stalls: a kernel thread of the test module graft_stall_rig sleeps in graft_rig_hold(), the function graft_stall_patch replaces. A task switches only when no patched function is on its stack."
show insmod $M/graft_stall_rig.ko
show graft-agent apply $M/graft_stall_patch.ko --stall-after 3s --timeout 6s
echo "(exit code $? = still stalled when --timeout passed; the kernel keeps trying)"
show graft-agent blocking

step "Let the kernel thread go: the transition completes. graft-agent apply picks the transition up again."
graft-agent apply $M/graft_stall_patch.ko --timeout 30s &
agent=$!
sleep 2
show sh -c "echo 1 > $RIG/release"
wait $agent
echo "(exit code $?)"
show graft-agent revert graft_stall_patch
show rmmod graft_stall_rig

step "Revert the demo patch: disable, follow the transition back, unload the module"
show graft-agent revert graft_demo
echo "(exit code $?)"
show cat /proc/cmdline
show graft-agent status

step "What the kernel logged meanwhile:"
dmesg | grep -E 'livepatch|graft_' | tail -n 30
step "Done. The VM powers off now."
