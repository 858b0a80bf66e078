# Helpers for the guest scripts (busybox sh). Records go to the console as
# lines starting with "@@GRAFT"; tests/vm/check.py reads them on the host.
M=/graft/modules
LP=/sys/kernel/livepatch
RIG=/sys/module/graft_stall_rig/parameters

now() { cut -d' ' -f1 /proc/uptime; }

# run ID COMMAND...: runs COMMAND, records its exit code, duration, stdout
# and stderr (each line prefixed, so nothing can be mistaken for a record).
run() {
    _id="$1"; shift
    echo "@@GRAFT cmd $_id $*"
    _t0=$(now)
    # A hung command must not eat the whole VM's time budget: exit 137.
    timeout -s KILL "${RUN_LIMIT:-120}" "$@" >/tmp/run.out 2>/tmp/run.err
    _rc=$?
    _t1=$(now)
    echo "@@GRAFT rc $_id $_rc $(awk -v a="$_t0" -v b="$_t1" 'BEGIN { printf "%.2f", b - a }')"
    sed "s/^/@@GRAFT out $_id /" /tmp/run.out
    sed "s/^/@@GRAFT err $_id /" /tmp/run.err
    return $_rc
}

# record ID FILE: the content of FILE (e.g. a background command's output).
record() {
    sed "s/^/@@GRAFT out $1 /" "$2"
}

# fact ID VALUE...: one observed value.
fact() { _id="$1"; shift; echo "@@GRAFT fact $_id $*"; }

# note TEXT: free text for the human reading the log.
note() { echo "@@GRAFT note $*"; }

# wait_for SECONDS COMMAND...: polls every 0.1 s until COMMAND succeeds.
wait_for() {
    _n=$(($1 * 10)); shift
    while [ "$_n" -gt 0 ]; do "$@" && return 0; sleep 0.1; _n=$((_n - 1)); done
    return 1
}

# sysfs_patches: "name enabled transition [replace]" per patch, ';'-separated.
sysfs_patches() {
    _s=""
    for _d in "$LP"/*; do
        [ -d "$_d" ] || continue
        _r=-
        [ -e "$_d/replace" ] && _r=$(cat "$_d/replace")
        _s="$_s${_s:+;}$(basename "$_d") $(cat "$_d/enabled") $(cat "$_d/transition") $_r"
    done
    echo "$_s"
}
loaded() { grep -q "^$1 " /proc/modules; }
modules_loaded() { awk '{ printf "%s%s", sep, $1; sep = "," }' /proc/modules; }
no_transition() { ! grep -qs 1 "$LP"/*/transition; }
pid_of_comm() { # first pid whose comm is $1
    for _p in /proc/[0-9]*; do
        [ "$(cat "$_p/comm" 2>/dev/null)" = "$1" ] && { basename "$_p"; return 0; }
    done
    return 1
}
# patch_states: the distinct patch_state values of all tasks, e.g. "-1".
patch_states() { cat /proc/[0-9]*/task/[0-9]*/patch_state 2>/dev/null | sort -u | tr '\n' ' '; }
# unswitched TARGET: "pid/tid comm top-frame" of tasks not yet in TARGET state.
unswitched() {
    for _t in /proc/[0-9]*/task/[0-9]*; do
        _s=$(cat "$_t/patch_state" 2>/dev/null) || continue
        [ "$_s" = -1 ] && continue
        [ "$_s" = "$1" ] && continue
        echo "$_t $(cat "$_t/comm") $(head -1 "$_t/stack" 2>/dev/null)"
    done
}

# bounded_wait PID SECONDS: waits for a background job, killing it (SIGKILL)
# if it outlives SECONDS; returns its exit status.
bounded_wait() {
    _n=$(($2 * 10))
    while [ "$_n" -gt 0 ] && kill -0 "$1" 2>/dev/null; do sleep 0.1; _n=$((_n - 1)); done
    kill -0 "$1" 2>/dev/null && { note "pid $1 outlived $2 s: killed"; kill -9 "$1"; }
    wait "$1"
}
