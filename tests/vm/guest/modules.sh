# The modules on their own, with insmod/rmmod/sysfs only (no agent): checks
# that graft_demo patches /proc/cmdline, that the stall rig keeps
# graft_stall_patch's transition at 1 until released, and that
# graft_cumulative replaces graft_demo. Debugging aid for new kernels:
#   tests/vm/run.sh --mode modules
M=/graft/modules
LP=/sys/kernel/livepatch
dmesg -n 1
fails=0
check() { # check NAME CONDITION...
    name="$1"; shift
    if "$@"; then echo "@@GRAFT check $name ok"; else echo "@@GRAFT check $name FAIL"; fails=$((fails + 1)); fi
}
wait_for() { # wait_for SECONDS COMMAND...: polls every 0.1 s
    n=$(($1 * 10)); shift
    while [ "$n" -gt 0 ]; do "$@" && return 0; sleep 0.1; n=$((n - 1)); done
    return 1
}
transition_is() { [ "$(cat "$LP/$1/transition" 2>/dev/null)" = "$2" ]; }
gone() { [ ! -e "$LP/$1" ]; }
cmdline_is() { [ "$(cat /proc/cmdline)" = "$1" ]; }

echo "livepatch sysfs attributes: $(ls /sys/kernel/livepatch 2>&1)"
insmod $M/graft_demo.ko
ls -l $LP/graft_demo/
check demo_transition_ends wait_for 10 transition_is graft_demo 0
check demo_cmdline cmdline_is "graft_demo: patched"
echo 0 > $LP/graft_demo/enabled
check demo_unpatch_ends wait_for 10 gone graft_demo
check demo_rmmod rmmod graft_demo
check demo_cmdline_back cmdline_is "$GRAFT_BOOT_CMDLINE"

insmod $M/graft_stall_rig.ko
echo "rig holders after insmod: $(cat /sys/module/graft_stall_rig/parameters/holders)"
cat /proc/graft_stall_rig > /tmp/reader.out &
reader=$!
check rig_reader_holds wait_for 5 sh -c '[ "$(cat /sys/module/graft_stall_rig/parameters/holders)" = 2 ]'
t0=$(cut -d' ' -f1 /proc/uptime)
insmod $M/graft_stall_patch.ko
sleep 5
check stall_transition_stays_1 transition_is graft_stall_patch 1
for t in /proc/[0-9]*/task/[0-9]*; do
    s=$(cat $t/patch_state 2>/dev/null)
    [ "$s" = 0 ] && echo "unswitched: $t $(cat $t/comm) $(head -3 $t/stack | tr '\n' ' ')"
done
echo "waiting for the kernel's fake signal to free the reader (not the kthread)"
check reader_freed_by_signal wait_for 25 sh -c "! kill -0 $reader 2>/dev/null"
echo "reader printed: $(cat /tmp/reader.out)  t=$(cut -d' ' -f1 /proc/uptime) (start $t0)"
check reader_saw_patch grep -q "is patched" /tmp/reader.out
check stall_still_1 transition_is graft_stall_patch 1
for t in /proc/[0-9]*/task/[0-9]*; do
    s=$(cat $t/patch_state 2>/dev/null)
    [ "$s" = 0 ] && echo "unswitched: $t $(cat $t/comm) $(head -3 $t/stack | tr '\n' ' ')"
done
echo 1 > /sys/module/graft_stall_rig/parameters/release
check stall_ends_after_release wait_for 10 transition_is graft_stall_patch 0
check patched_reader sh -c 'cat /proc/graft_stall_rig | grep -q "is patched"'
echo 0 > $LP/graft_stall_patch/enabled
check stall_patch_unpatched wait_for 10 gone graft_stall_patch
check stall_patch_rmmod rmmod graft_stall_patch
check rig_rmmod rmmod graft_stall_rig

# Reverse a stalled transition: the kthread never left the old code, so it
# is already in the target state and the reverse transition completes.
insmod $M/graft_stall_rig.ko
insmod $M/graft_stall_patch.ko
sleep 3
check stall_again transition_is graft_stall_patch 1
echo 0 > $LP/graft_stall_patch/enabled
check reverse_of_stall_completes wait_for 10 gone graft_stall_patch
check reverse_rmmod wait_for 5 rmmod graft_stall_patch
echo 1 > /sys/module/graft_stall_rig/parameters/release
check rig_rmmod2 rmmod graft_stall_rig

insmod $M/graft_demo.ko
check demo2 wait_for 10 transition_is graft_demo 0
insmod $M/graft_cumulative.ko
check cumulative_ends wait_for 10 transition_is graft_cumulative 0
check cumulative_cmdline cmdline_is "graft_cumulative: patched"
check demo_dir_gone gone graft_demo
echo "graft_demo refcnt: $(cat /sys/module/graft_demo/refcnt) replace attr: $(cat $LP/graft_cumulative/replace 2>&1)"
check replaced_rmmod rmmod graft_demo
echo 0 > $LP/graft_cumulative/enabled
check cumulative_gone wait_for 10 gone graft_cumulative
check cumulative_rmmod rmmod graft_cumulative
check cmdline_restored cmdline_is "$GRAFT_BOOT_CMDLINE"
echo "@@GRAFT dmesg-begin"
dmesg
echo "@@GRAFT dmesg-end"
echo "@@GRAFT checks failed=$fails"
[ "$fails" = 0 ]
