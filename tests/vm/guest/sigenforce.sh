# Scenario 7, second boot: module.sig_enforce=1. The unsigned graft_demo
# must be refused by the kernel (EKEYREJECTED) and the agent must say that
# the module has to be signed.
. /graft/lib.sh
A=graft-agent
dmesg -n 1
fact kernel.release "$(uname -r)"
fact sig.enforce_param "$(cat /sys/module/module/parameters/sig_enforce 2>/dev/null)"
run sig.inspect $A --json inspect $M/graft_demo.ko
run sig.apply $A --json apply $M/graft_demo.ko --timeout 20s
run sig.apply_human $A apply $M/graft_demo.ko --timeout 20s
fact sig.module "$(loaded graft_demo && echo loaded || echo unloaded)"
fact sig.cmdline "$(cat /proc/cmdline)"
fact sig.sysfs "$(sysfs_patches)"
echo "@@GRAFT dmesg-begin"
dmesg | tail -n 30
echo "@@GRAFT dmesg-end"
