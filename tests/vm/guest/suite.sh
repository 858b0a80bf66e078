# Graft's real-kernel scenarios (issue 3), run by /init inside the VM.
# Each step is recorded on the console; tests/vm/check.py judges them.
. /graft/lib.sh
A=graft-agent
# Keep printk off the console while scenarios print; the kernel log is dumped
# at the end (and it stays in the artifact).
dmesg -n 1

fact kernel.release "$(uname -r)"
fact kernel.boot_cmdline "$GRAFT_BOOT_CMDLINE"
fact kernel.livepatch_dir "$([ -d $LP ] && echo yes || echo no)"
fact kernel.taint_before "$(cat /proc/sys/kernel/tainted)"
run agent.version $A --version

# --- 1: apply graft_demo --------------------------------------------------
note "scenario 1: apply graft_demo"
fact s1.cmdline_before "$(cat /proc/cmdline)"
sum=$(sha256sum $M/graft_demo.ko | cut -d' ' -f1)
run s1.apply $A --json apply $M/graft_demo.ko --sha256 "$sum" --timeout 30s
fact s1.cmdline_after "$(cat /proc/cmdline)"
fact s1.sysfs "$(sysfs_patches)"
run s1.status $A --json status
fact s1.sysfs_after_status "$(sysfs_patches)"
run s1.status_human $A status
run s1.apply_again $A --json apply $M/graft_demo.ko --timeout 30s
fact s1.taint "$(cat /proc/sys/kernel/tainted)"

# --- 2: revert ------------------------------------------------------------
note "scenario 2: revert graft_demo"
run s2.revert $A --json revert graft_demo --timeout 30s
fact s2.cmdline "$(cat /proc/cmdline)"
fact s2.sysfs_dir "$([ -e $LP/graft_demo ] && echo present || echo gone)"
fact s2.module "$(loaded graft_demo && echo loaded || echo unloaded)"
run s2.revert_again $A --json revert graft_demo --timeout 30s

# --- 3: a stalled transition ----------------------------------------------
note "scenario 3: stall"
insmod $M/graft_stall_rig.ko
fact s3.rig_loaded "$(loaded graft_stall_rig && echo yes || echo no)"
fact s3.rig_kthread_pid "$(pid_of_comm graft_stall_rig)"
cat /proc/graft_stall_rig >/tmp/reader.out 2>&1 &
reader=$!
wait_for 10 sh -c "[ \"\$(cat $RIG/holders)\" = 2 ]"
fact s3.holders "$(cat $RIG/holders)"
fact s3.reader_pid "$reader"
run s3.apply $A --json apply $M/graft_stall_patch.ko --stall-after 2s --timeout 6s
fact s3.sysfs "$(sysfs_patches)"
fact s3.unswitched "$(unswitched 1 | tr '\n' ';')"
run s3.blocking $A --json blocking graft_stall_patch
run s3.blocking_human $A blocking
run s3.status $A --json status
run s3.second_apply $A --json apply $M/graft_demo.ko --timeout 2s
run s3.second_apply_human $A apply $M/graft_demo.ko --timeout 1s
fact s3.demo_after_refusal "$(loaded graft_demo && echo loaded || echo unloaded)"
fact s3.sysfs_after_refusal "$(sysfs_patches)"

# --- 4: stall policy revert -----------------------------------------------
# Reverting a patch whose transition stalls on a kthread completes: the
# kthread never left the old graft_rig_hold(), so it already is in the
# target (unpatched) state; only tasks that had switched must switch back,
# and none of them sleeps in the new function.
note "scenario 4: stall policy revert"
run s4.revert_stalled $A --json revert graft_stall_patch --timeout 30s
fact s4.sysfs_after_revert "$(sysfs_patches)"
fact s4.module_after_revert "$(loaded graft_stall_patch && echo loaded || echo unloaded)"
run s4.apply $A --json apply $M/graft_stall_patch.ko --stall-after 2s --on-stall revert --timeout 60s
fact s4.sysfs "$(sysfs_patches)"
fact s4.module "$(loaded graft_stall_patch && echo loaded || echo unloaded)"
fact s4.patch_states "$(patch_states)"
fact s4.rig_kthread_stack "$(head -1 /proc/$(pid_of_comm graft_stall_rig)/stack)"
fact s4.holders "$(cat $RIG/holders)"

# --- 8: the agent killed during a stalled transition ----------------------
note "scenario 8: agent killed during a stalled transition, then started again"
$A --json apply $M/graft_stall_patch.ko --stall-after 60s --timeout 120s >/tmp/killed.out 2>/tmp/killed.err &
victim=$!
wait_for 20 sh -c "[ \"\$(cat $LP/graft_stall_patch/transition 2>/dev/null)\" = 1 ]"
sleep 2
fact s8.transition_before_kill "$(cat $LP/graft_stall_patch/transition 2>/dev/null)"
kill -9 "$victim"
bounded_wait "$victim" 10
fact s8.killed_rc "$?"
record s8.killed_err /tmp/killed.err
fact s8.sysfs_after_kill "$(sysfs_patches)"
run s8.restart $A --json apply $M/graft_stall_patch.ko --stall-after 2s --timeout 5s
run s8.restart_human $A apply $M/graft_stall_patch.ko --stall-after 1s --timeout 2s
run s8.status $A --json status
fact s8.sysfs "$(sysfs_patches)"
fact s8.stall_patch_loads "$(grep -c '^graft_stall_patch ' /proc/modules)"
# Started once more, it carries on waiting until the rig lets go (scenario 5).
t_carry=$(now)
$A --json apply $M/graft_stall_patch.ko --timeout 60s >/tmp/carry.out 2>/tmp/carry.err &
carrier=$!
sleep 3

# --- 5: release the rig, apply again --------------------------------------
note "scenario 5: release the rig"
fact s5.carrier_running_before_release "$(kill -0 $carrier 2>/dev/null && echo yes || echo no)"
echo 1 >$RIG/release
bounded_wait "$carrier" 90
fact s8.carry_rc "$?"
fact s8.carry_secs "$(awk -v a="$t_carry" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')"
record s8.carry /tmp/carry.out
record s8.carry_err /tmp/carry.err
bounded_wait "$reader" 10 2>/dev/null
fact s5.reader_output "$(cat /tmp/reader.out)"
# Start from scratch: revert what the carried-on apply finished, then a
# fresh apply must complete now that nothing sleeps in graft_rig_hold().
run s5.revert_carried $A --json revert graft_stall_patch --timeout 30s
fact s5.holders_after_release "$(cat $RIG/holders)"
run s5.apply $A --json apply $M/graft_stall_patch.ko --stall-after 10s --timeout 30s
fact s5.sysfs "$(sysfs_patches)"
fact s5.rig_read "$(cat /proc/graft_stall_rig)"
run s5.cleanup $A --json revert graft_stall_patch --timeout 30s
rmmod graft_stall_rig
fact s5.modules_after_cleanup "$(modules_loaded)"

# --- 6: cumulative patch replaces graft_demo ------------------------------
note "scenario 6: cumulative"
run s6.demo $A --json apply $M/graft_demo.ko --timeout 30s
run s6.apply $A --json apply $M/graft_cumulative.ko --timeout 30s
fact s6.cmdline "$(cat /proc/cmdline)"
fact s6.sysfs "$(sysfs_patches)"
fact s6.demo_module "$(loaded graft_demo && echo loaded || echo unloaded)"
run s6.status $A --json status
run s6.revert $A --json revert graft_cumulative --timeout 30s
fact s6.cmdline_after_revert "$(cat /proc/cmdline)"
fact s6.modules_after_revert "$(modules_loaded)"

# --- 7: bad input, refused before any kernel call -------------------------
note "scenario 7: bad input"
dmesg_before=$(dmesg | wc -l)
run s7.not_livepatch $A --json apply $M/graft_stall_rig.ko --timeout 10s
run s7.not_livepatch_human $A apply $M/graft_stall_rig.ko --timeout 10s
run s7.vermagic $A --json apply $M/graft_demo_badvermagic.ko --timeout 10s
fact s7.vermagic_of_copy "$(modinfo -F vermagic $M/graft_demo_badvermagic.ko 2>/dev/null || strings $M/graft_demo_badvermagic.ko | grep '^vermagic=')"
wrong=$(sha256sum $M/graft_cumulative.ko | cut -d' ' -f1)
run s7.sha256 $A --json apply $M/graft_demo.ko --sha256 "$wrong" --timeout 10s
run s7.inspect_vermagic $A --json inspect $M/graft_demo_badvermagic.ko
fact s7.modules_after "$(modules_loaded)"
# Kernel messages about these modules since the scenario started: a load
# attempt would have logged at least the taint or the livepatch lines.
fact s7.new_kernel_messages "$(dmesg | tail -n +$((dmesg_before + 1)) | grep -e graft_ -e livepatch | tr '\n' ';')"

fact kernel.taint_after "$(cat /proc/sys/kernel/tainted)"
fact kernel.final_sysfs "$(sysfs_patches)"
fact kernel.final_patch_states "$(patch_states)"
echo "@@GRAFT dmesg-begin"
dmesg
echo "@@GRAFT dmesg-end"
