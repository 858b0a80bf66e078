# Guest side of the detection-lag benchmark (graft.mode=bench): scripts/bench.sh
# appends this file as /graft/bench.sh and graft-bench as /graft/bin/graft-bench
# to tests/vm's initramfs. Rows go to the serial console as "@@GRAFT bench-*"
# lines; graft-bench report reads them on the host.
#
# Kernel command line: graft.bench.rounds=N, and for diagnosis
# graft.bench.agentlog=FILTER (GRAFT_LOG for graft-agent, e.g.
# graft_agent=trace; its log is printed after each of its trials).
. /graft/lib.sh

rounds=10
agentlog=""
for word in $GRAFT_BOOT_CMDLINE; do
    case "$word" in
        graft.bench.rounds=*) rounds="${word#graft.bench.rounds=}" ;;
        graft.bench.agentlog=*) agentlog="${word#graft.bench.agentlog=}" ;;
    esac
done
note "bench: $rounds interleaved rounds of apply+revert of graft_demo by graft-agent, poll-1s and poll-1ms"
if [ -n "$agentlog" ]; then
    export GRAFT_LOG="$agentlog"
    set -- --agent-log
fi
# graft-bench times each apply's finit_module call through the kernel's tracing events.
mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null
graft-bench lag --agent /graft/bin/graft-agent --module "$M/graft_demo.ko" --rounds "$rounds" "$@"
