#!/usr/bin/env bash
# Installs Debian's `prometheus` package, which brings the `prometheus` server
# and `promtool`, for the rule tests in tests/prometheus/.
#
#   scripts/install-prometheus.sh
#
# Idempotent: does nothing when both binaries are on PATH. Needs root (or
# sudo) when something is missing. The package's service is never started:
# the tests run their own server on 127.0.0.1 with their own configuration.
set -euo pipefail

log() { printf 'install-prometheus: %s\n' "$*" >&2; }

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    log "prometheus and promtool are present ($(promtool --version 2>&1 | head -n1))"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Keep the package's init script from starting a server during the install,
# unless the machine already has a policy of its own.
POLICY=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod 755 "$POLICY"
    made_policy=1
fi
cleanup() { if [ -n "$made_policy" ]; then $SUDO rm -f "$POLICY"; fi; }
trap cleanup EXIT

log "installing Debian's prometheus package"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null

# A package install on a machine with systemd may still have started it.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

command -v prometheus >/dev/null && command -v promtool >/dev/null || {
    log "the package installed, but prometheus or promtool is not on PATH"
    exit 1
}
log "installed $(promtool --version 2>&1 | head -n1)"
