#!/usr/bin/env bash
# Live test of Graft's alerting with real Prometheus and a real scrape.
#
#   tests/prometheus/live.sh
#
# 1. Builds graft-agent (or uses $GRAFT_AGENT) and scripts a simulated kernel
#    in which a kernel thread sleeps in the function a livepatch replaces:
#    `graft-agent apply` leaves the transition stalled (exit 3).
# 2. Serves that kernel's metrics with `graft-agent exporter` on 127.0.0.1 and
#    lints them with `promtool check metrics`.
# 3. Starts Debian's `prometheus` on 127.0.0.1 (scrape and rule evaluation
#    every 1s) with a copy of charts/graft/files/prometheus-rules.yaml whose
#    `for:` durations are cut to 2s, and waits through the HTTP API
#    (/api/v1/alerts) for GraftTransitionStalled to fire with its labels and
#    annotations rendered.
# 4. Releases the blocking task and waits for the alert to resolve.
# 5. Lints the operator's metrics the same way when a graft-operator binary
#    can serve them without a cluster, and checks that every query of the
#    Grafana dashboard runs.
#
# Every wait is bounded; everything started here is stopped on exit. One line
# per check, then "prometheus-live: N passed, N failed[, N skipped]"; exits
# non-zero when a check failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RULES="$ROOT/charts/graft/files/prometheus-rules.yaml"
DASHBOARD="$ROOT/charts/graft/files/grafana-dashboard.json"
NODE=live-node
PATCH=livepatch_stall
BLOCKER=kworker/stuck
STALL_FN=do_stall

passed=0 failed=0 skipped=0
pass() { passed=$((passed + 1)); printf 'PASS %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s: %s\n' "$1" "$2"; }
skip() { skipped=$((skipped + 1)); printf 'SKIP %s: %s\n' "$1" "$2"; }
note() { printf '     %s\n' "$*"; }

summary() {
    if [ "$skipped" -gt 0 ]; then
        printf 'prometheus-live: %d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
    else
        printf 'prometheus-live: %d passed, %d failed\n' "$passed" "$failed"
    fi
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/graft-prom-live.XXXXXX")"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # Bounded: a process that ignores SIGTERM gets SIGKILL after 5s.
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [ -n "${KEEP_WORK:-}" ]; then
        printf 'kept %s\n' "$WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# finish: print the summary and exit with the verdict.
finish() {
    summary
    [ "$failed" -eq 0 ]
    exit $?
}

# http URL [TIMEOUT]: GET on 127.0.0.1, body on stdout; non-zero on any error.
http() {
    python3 - "$1" "${2:-5}" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:
        sys.stdout.write(r.read().decode())
except Exception as e:
    sys.stderr.write(f"{e}\n")
    sys.exit(1)
PY
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_until SECONDS COMMAND...: runs COMMAND every 0.5s until it succeeds.
wait_until() {
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

# --- tools ---------------------------------------------------------------------

for tool in prometheus promtool; do
    if ! command -v "$tool" >/dev/null; then
        "$ROOT/scripts/install-prometheus.sh" >&2 || true
        break
    fi
done
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    fail "prometheus and promtool installed" "run scripts/install-prometheus.sh"
    finish
fi

# Where cargo puts binaries (CARGO_TARGET_DIR or the workspace's target/).
target_dir() {
    (cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null) |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null ||
        printf '%s\n' "$ROOT/target"
}

AGENT="${GRAFT_AGENT:-}"
if [ -z "$AGENT" ]; then
    if (cd "$ROOT" && timeout 1500 cargo build --quiet -p graft-agent --bin graft-agent) >"$WORK/build.log" 2>&1; then
        AGENT="$(target_dir)/debug/graft-agent"
        pass "graft-agent builds"
    else
        fail "graft-agent builds" "cargo build failed: $(tail -n 5 "$WORK/build.log" | tr '\n' ' ')"
        finish
    fi
fi

if ! "$AGENT" exporter --help >/dev/null 2>&1; then
    fail "graft-agent has the exporter subcommand" "\`$AGENT exporter --help\` failed: the agent's exporter (cluster contract) is not built yet"
    finish
fi

# --- a simulated kernel with a stalled transition ------------------------------

SIM="$WORK/kernel"
SIMREL=6.1.0-sim-amd64
{
    "$AGENT" sim init "$SIM" --release "$SIMREL" &&
        "$AGENT" sim add-task "$SIM" --comm "$BLOCKER" --kthread --sleeps-in "$STALL_FN" &&
        "$AGENT" sim build-module --name "$PATCH" --release "$SIMREL" --patches "vmlinux:$STALL_FN" --output "$WORK/$PATCH.ko"
} >"$WORK/sim.log" 2>&1 || {
    fail "simulated kernel set up" "$(tail -n 3 "$WORK/sim.log" | tr '\n' ' ')"
    finish
}

timeout 60 "$AGENT" --kernel "sim:$SIM" apply "$WORK/$PATCH.ko" --stall-after 2s --timeout 3s >"$WORK/apply.log" 2>&1
rc=$?
if [ "$rc" -eq 3 ]; then
    pass "graft-agent apply leaves the transition stalled (exit 3)"
else
    fail "graft-agent apply leaves the transition stalled (exit 3)" "exit $rc: $(tail -n 3 "$WORK/apply.log" | tr '\n' ' ')"
    finish
fi

# --- the exporter ----------------------------------------------------------------

EXPORTER_PORT="$(free_port)"
"$AGENT" --kernel "sim:$SIM" exporter --listen "127.0.0.1:$EXPORTER_PORT" --node-name "$NODE" \
    >"$WORK/exporter.log" 2>&1 &
PIDS+=($!)
METRICS_URL="http://127.0.0.1:$EXPORTER_PORT/metrics"

if wait_until 15 http "$METRICS_URL" >"$WORK/agent-metrics.txt" 2>/dev/null; then
    pass "graft-agent exporter serves /metrics on 127.0.0.1:$EXPORTER_PORT"
else
    fail "graft-agent exporter serves /metrics" "nothing within 15s: $(tail -n 3 "$WORK/exporter.log" | tr '\n' ' ')"
    finish
fi

# metric_value NAME LABEL=VALUE...: the value of the first sample whose labels include all given ones.
metric_value() {
    python3 - "$WORK/agent-metrics.txt" "$@" <<'PY'
import re, sys
path, name, *want = sys.argv[1:]
want = [w.split("=", 1) for w in want]
for line in open(path):
    m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)', line)
    if not m or m.group(1) != name:
        continue
    labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
    if all(labels.get(k) == v for k, v in want):
        print(m.group(4))
        sys.exit(0)
sys.exit(1)
PY
}

expect_metric() { # DESCRIPTION EXPECTED NAME LABELS...
    local what="$1" expected="$2"; shift 2
    local got
    got="$(metric_value "$@")" || got="(absent)"
    if [ "$got" = "$expected" ] || { [ "$expected" = "1" ] && [ "$got" = "1.0" ]; }; then
        pass "$what"
    else
        fail "$what" "$1{${*:2}} is $got, want $expected"
    fi
}

expect_metric "the agent reports the transition stalled" 1 graft_transition_stalled "node=$NODE" "patch=$PATCH"
expect_metric "the agent reports the transition in progress" 1 graft_transition_in_progress "node=$NODE" "patch=$PATCH"
expect_metric "the agent reports one blocking task" 1 graft_transition_blocking_tasks "node=$NODE" "patch=$PATCH"
expect_metric "the agent reports state Stalled" 1 graft_patch_state "node=$NODE" "patch=$PATCH" "state=Stalled"
expect_metric "the agent says it runs on a simulated kernel" 1 graft_agent_info "node=$NODE" "simulated=true"

if promtool check metrics <"$WORK/agent-metrics.txt" >"$WORK/agent-lint.txt" 2>&1; then
    pass "promtool check metrics accepts the agent's /metrics"
else
    fail "promtool check metrics accepts the agent's /metrics" "$(head -n 5 "$WORK/agent-lint.txt" | tr '\n' ' ')"
fi

# --- prometheus with the rules ------------------------------------------------------

# The test copy only shortens `for:` so the test takes seconds, not minutes.
sed -E 's/^([[:space:]]*for:[[:space:]]*).*/\12s/' "$RULES" >"$WORK/rules.yaml"
if promtool check rules "$WORK/rules.yaml" >"$WORK/check-rules.txt" 2>&1 &&
    [ "$(grep -c 'for: 2s' "$WORK/rules.yaml")" -eq 4 ]; then
    pass "the test copy of the rules is valid, with every for: cut to 2s"
else
    fail "the test copy of the rules is valid" "$(tr '\n' ' ' <"$WORK/check-rules.txt")"
    finish
fi

PROM_PORT="$(free_port)"
PROM="http://127.0.0.1:$PROM_PORT"
cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $WORK/rules.yaml
scrape_configs:
  - job_name: graft-agent
    static_configs:
      - targets: ["127.0.0.1:$EXPORTER_PORT"]
EOF
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)

if wait_until 30 http "$PROM/-/ready" >/dev/null 2>&1; then
    pass "prometheus is ready on 127.0.0.1:$PROM_PORT"
else
    fail "prometheus is ready" "not within 30s: $(tail -n 3 "$WORK/prometheus.log" | tr '\n' ' ')"
    finish
fi

# alert_state NAME: prints the state of alert NAME (firing, pending) or "inactive"; saves the alert as JSON.
alert_state() {
    http "$PROM/api/v1/alerts" >"$WORK/alerts.json" 2>/dev/null || { echo unreachable; return; }
    python3 - "$1" "$WORK/alerts.json" "$WORK/alert.json" <<'PY'
import json, sys
name, src, out = sys.argv[1:]
alerts = [a for a in json.load(open(src))["data"]["alerts"] if a["labels"].get("alertname") == name]
json.dump(alerts, open(out, "w"))
print(alerts[0]["state"] if alerts else "inactive")
PY
}
alert_is() { [ "$(alert_state "$1")" = "$2" ]; }

started=$SECONDS
if wait_until 60 alert_is GraftTransitionStalled firing; then
    pass "GraftTransitionStalled fires ($((SECONDS - started))s after prometheus started)"
else
    fail "GraftTransitionStalled fires" "state after 60s: $(alert_state GraftTransitionStalled)"
    finish
fi

python3 - "$WORK/alert.json" "$NODE" "$PATCH" >"$WORK/alert-check.txt" 2>&1 <<'PY'
import json, sys
alerts, node, patch = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
assert len(alerts) == 1, f"{len(alerts)} alerts, want 1"
a = alerts[0]
for k, v in {"node": node, "patch": patch, "severity": "warning", "job": "graft-agent"}.items():
    assert a["labels"].get(k) == v, f"label {k}={a['labels'].get(k)!r}, want {v!r}"
d = a["annotations"]
assert d["summary"] == f"Livepatch {patch} is stuck in its transition on node {node}.", d["summary"]
assert "1 task(s) still sleep in a function the patch replaces" in d["description"], d["description"]
assert f"`kubectl get lpn {node} -o yaml`" in d["description"], d["description"]
assert "`graft-agent blocking`" in d["description"], d["description"]
assert d["runbook_url"].endswith("docs/runbooks.md#grafttransitionstalled"), d["runbook_url"]
PY
if [ $? -eq 0 ]; then
    pass "the firing alert carries node, patch, severity and the rendered summary, description and runbook"
else
    fail "the firing alert's labels and annotations" "$(tail -n 1 "$WORK/alert-check.txt")"
fi

# Only the stalled alert may fire: nothing failed, nothing is cordoned or halted.
http "$PROM/api/v1/alerts" >"$WORK/alerts.json" 2>/dev/null
others="$(python3 - "$WORK/alerts.json" <<'PY'
import json, sys
names = {a["labels"]["alertname"] for a in json.load(open(sys.argv[1]))["data"]["alerts"]}
print(" ".join(sorted(names - {"GraftTransitionStalled"})))
PY
)"
if [ -z "$others" ]; then
    pass "no other Graft alert is active"
else
    fail "no other Graft alert is active" "active: $others"
fi

# Every rule evaluated without error against the live data (templates with `query` included).
http "$PROM/api/v1/rules" >"$WORK/rules.json" 2>/dev/null
health="$(python3 - "$WORK/rules.json" <<'PY'
import json, sys
rules = [r for g in json.load(open(sys.argv[1]))["data"]["groups"] for r in g["rules"]]
bad = [f"{r['name']}: {r.get('lastError')}" for r in rules if r.get("health") != "ok"]
print("; ".join(bad) if bad else f"{len(rules)} rules")
PY
)"
if [ "$health" = "4 rules" ]; then
    pass "prometheus evaluates all 4 rules without error"
else
    fail "prometheus evaluates all 4 rules without error" "$health"
fi

# --- the transition completes: the alert resolves ------------------------------------

if "$AGENT" sim release-task "$SIM" --comm "$BLOCKER" >"$WORK/release.log" 2>&1; then
    pass "the blocking task is released"
else
    fail "the blocking task is released" "$(tail -n 2 "$WORK/release.log" | tr '\n' ' ')"
fi

started=$SECONDS
if wait_until 30 alert_is GraftTransitionStalled inactive; then
    pass "GraftTransitionStalled resolves once the transition completes ($((SECONDS - started))s)"
else
    fail "GraftTransitionStalled resolves" "state after 30s: $(alert_state GraftTransitionStalled)"
fi

http "$METRICS_URL" >"$WORK/agent-metrics.txt" 2>/dev/null
expect_metric "the agent reports the transition over" 0 graft_transition_in_progress "node=$NODE" "patch=$PATCH"
expect_metric "the agent reports state Applied" 1 graft_patch_state "node=$NODE" "patch=$PATCH" "state=Applied"
if promtool check metrics <"$WORK/agent-metrics.txt" >"$WORK/agent-lint.txt" 2>&1; then
    pass "promtool check metrics accepts the agent's /metrics after the transition"
else
    fail "promtool check metrics accepts the agent's /metrics after the transition" "$(head -n 5 "$WORK/agent-lint.txt" | tr '\n' ' ')"
fi

# --- the Grafana dashboard's queries run --------------------------------------------

python3 - "$DASHBOARD" "$PROM" >"$WORK/dashboard.txt" 2>&1 <<'PY'
import json, sys, urllib.parse, urllib.request
dashboard, prom = json.load(open(sys.argv[1])), sys.argv[2]
exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
bad = []
for e in exprs:
    q = e.replace("$__rate_interval", "1m").replace("$patch", ".*")
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            status = json.load(r)["status"]
    except Exception as err:  # 400 for a bad query
        status = str(err)
    if status != "success":
        bad.append(f"{e}: {status}")
print(f"{len(exprs)} queries" if not bad else "; ".join(bad))
sys.exit(1 if bad else 0)
PY
if [ $? -eq 0 ]; then
    pass "every query of the Grafana dashboard runs ($(cat "$WORK/dashboard.txt"))"
else
    fail "every query of the Grafana dashboard runs" "$(cat "$WORK/dashboard.txt")"
fi

# --- the operator's metrics -------------------------------------------------------------

OPERATOR="${GRAFT_OPERATOR:-$(target_dir)/debug/graft-operator}"
if [ ! -x "$OPERATOR" ] && [ -z "${GRAFT_OPERATOR:-}" ] && [ -f "$ROOT/operator/Cargo.toml" ]; then
    (cd "$ROOT" && timeout 1500 cargo build --quiet -p graft-operator --bin graft-operator) >"$WORK/build-operator.log" 2>&1 || true
fi
if [ ! -x "$OPERATOR" ]; then
    skip "promtool check metrics on the operator's /metrics" "no graft-operator binary (operator/ not built)"
else
    # No cluster here: point it at an API server that refuses connections and see
    # whether it serves /metrics meanwhile (it should, for /livez and /readyz).
    OP_PORT="$(free_port)"
    cat >"$WORK/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
EOF
    KUBECONFIG="$WORK/kubeconfig" POD_NAMESPACE=graft-system POD_NAME=live-test NODE_NAME="$NODE" \
        "$OPERATOR" --listen "127.0.0.1:$OP_PORT" >"$WORK/operator.log" 2>&1 &
    PIDS+=($!)
    if wait_until 15 http "http://127.0.0.1:$OP_PORT/metrics" >"$WORK/operator-metrics.txt" 2>/dev/null; then
        if promtool check metrics <"$WORK/operator-metrics.txt" >"$WORK/operator-lint.txt" 2>&1; then
            pass "promtool check metrics accepts the operator's /metrics ($(grep -c '^graft_' "$WORK/operator-metrics.txt") graft_ samples)"
        else
            fail "promtool check metrics accepts the operator's /metrics" "$(head -n 5 "$WORK/operator-lint.txt" | tr '\n' ' ')"
        fi
    else
        skip "promtool check metrics on the operator's /metrics" "graft-operator served no /metrics within 15s without a cluster: $(tail -n 2 "$WORK/operator.log" | tr '\n' ' ')"
    fi
fi

finish
