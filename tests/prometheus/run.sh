#!/usr/bin/env bash
# Graft's alerting, proven with real Prometheus (Debian's prometheus package):
#
#   tests/prometheus/run.sh
#
#   promtool check rules  charts/graft/files/prometheus-rules.yaml
#   promtool test rules   tests/prometheus/rules.test.yaml (every alert fires
#                         when it should, and not when the condition clears in time)
#   tests/prometheus/live.sh  a real scrape of graft-agent over a simulated
#                         kernel, the stalled alert firing and resolving
#
# Installs prometheus/promtool with scripts/install-prometheus.sh when missing.
# One line per check, then "prometheus: N passed, N failed[, N skipped]".
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

passed=0 failed=0 skipped=0
pass() { passed=$((passed + 1)); printf 'PASS %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$1"; }

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    scripts/install-prometheus.sh >&2 || true
fi
if ! command -v promtool >/dev/null; then
    fail "promtool is installed (scripts/install-prometheus.sh)"
    printf 'prometheus: %d passed, %d failed\n' "$passed" "$failed"
    exit 1
fi
printf '     %s\n' "$(promtool --version 2>&1 | head -n 1)"

out="$(mktemp)"
trap 'rm -f "$out"' EXIT

if timeout 60 promtool check rules charts/graft/files/prometheus-rules.yaml >"$out" 2>&1; then
    pass "promtool check rules charts/graft/files/prometheus-rules.yaml ($(grep -o '[0-9]* rules found' "$out"))"
else
    fail "promtool check rules charts/graft/files/prometheus-rules.yaml"
    sed 's/^/     /' "$out"
fi

if timeout 120 promtool test rules tests/prometheus/rules.test.yaml >"$out" 2>&1; then
    pass "promtool test rules tests/prometheus/rules.test.yaml ($(grep -c '^  - name:' tests/prometheus/rules.test.yaml) cases)"
else
    fail "promtool test rules tests/prometheus/rules.test.yaml"
    sed 's/^/     /' "$out"
fi

tests/prometheus/live.sh | tee "$out"
live_status=${PIPESTATUS[0]}
line="$(grep -E '^prometheus-live: [0-9]+ passed, [0-9]+ failed' "$out" | tail -n 1)"
if [ -n "$line" ]; then
    read -r p f s < <(sed -E 's/^prometheus-live: ([0-9]+) passed, ([0-9]+) failed(, ([0-9]+) skipped)?$/\1 \2 \4/' <<<"$line")
    passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + ${s:-0}))
fi
if [ "$live_status" -ne 0 ] && [ "$failed" -eq 0 ]; then
    fail "tests/prometheus/live.sh exited $live_status"
fi

if [ "$skipped" -gt 0 ]; then
    printf 'prometheus: %d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
else
    printf 'prometheus: %d passed, %d failed\n' "$passed" "$failed"
fi
[ "$failed" -eq 0 ]
