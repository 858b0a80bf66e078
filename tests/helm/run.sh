#!/usr/bin/env bash
# The Helm chart's tests (tests/helm/test_chart.py) with real Helm: Helm v4's
# Go SDK through PyPI's helm-python-sdk, in a virtualenv of its own.
#
#   tests/helm/run.sh [pytest args...]
#
# The virtualenv lives in .work/venv-helm (GRAFT_HELM_VENV overrides) and is
# reused while tests/helm/requirements.txt is unchanged. The test of the CRDs
# runs the crds crate's generator through cargo.
# Exit status: pytest's, except that "no tests collected" (5) is a failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${GRAFT_HELM_VENV:-$ROOT/.work/venv-helm}"
REQS="$ROOT/tests/helm/requirements.txt"

log() { printf 'tests/helm: %s\n' "$*" >&2; }

have_venv_module() { python3 -c 'import venv, ensurepip' >/dev/null 2>&1; }

if ! command -v python3 >/dev/null; then
    log "python3 is missing"; exit 1
fi

stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    if ! have_venv_module; then
        log "installing python3-venv"
        SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    fi
    log "creating $VENV"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS"
    printf '%s\n' "$want" >"$stamp"
fi

log "$("$VENV/bin/python" -c 'import helm_python as h; print("helm SDK", h.helm_sdk_version(), "via helm-python-sdk", h.__version__)')"

cd "$ROOT"
set +e
"$VENV/bin/python" -m pytest tests/helm -q -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    log "pytest collected no tests: that is a failure"
    exit 1
fi
exit "$status"
