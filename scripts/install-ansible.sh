#!/usr/bin/env bash
# Installs ansible-core from PyPI into a Python venv (default .work/ansible-venv)
# and prints the venv's bin directory on stdout:
#
#   PATH="$(scripts/install-ansible.sh):$PATH" ansible-playbook ...
#
# Idempotent: does nothing when the venv already holds a working ansible-core
# of the pinned range. Installs python3 and python3-venv with apt when they
# are missing (needs root or sudo then).
#
# Environment: GRAFT_ANSIBLE_VENV  where the venv goes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GRAFT_ANSIBLE_VENV:-$ROOT/.work/ansible-venv}"
# ansible-core 2.16 is the oldest with a supported controller on Python 3.10;
# 2.19 is the newest this repository's playbooks are tested with.
REQUIREMENT='ansible-core>=2.16,<2.20'
STAMP="$VENV/.graft-requirement"

log() { printf 'install-ansible: %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

installed() {
    [ -x "$VENV/bin/ansible-playbook" ] &&
        [ "$(cat "$STAMP" 2>/dev/null)" = "$REQUIREMENT" ] &&
        "$VENV/bin/ansible-playbook" --version >/dev/null 2>&1
}

if installed; then
    printf '%s\n' "$VENV/bin"
    exit 0
fi

apt_updated=""
apt_install() {
    command -v apt-get >/dev/null || { log "cannot install $*: no apt-get here; install them yourself"; exit 1; }
    if [ -z "$apt_updated" ]; then
        log "apt-get update"
        $SUDO apt-get update -qq >&2
        apt_updated=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >&2
}

python_ok() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null
}

# Creates the venv with the first interpreter that can (pyenv's python3 may
# come before Debian's on PATH; Debian's needs python3-venv for ensurepip).
make_venv() {
    local py
    for py in python3 /usr/bin/python3; do
        command -v "$py" >/dev/null && python_ok "$py" || continue
        rm -rf "$VENV"
        if "$py" -m venv "$VENV" >/dev/null 2>&1; then
            return 0
        fi
    done
    rm -rf "$VENV"
    return 1
}

mkdir -p "$(dirname "$VENV")"
if ! make_venv; then
    apt_install python3 python3-venv
    make_venv || { log "cannot create a Python venv in $VENV (Python 3.10 or newer with the venv module is needed)"; exit 1; }
fi

log "installing $REQUIREMENT into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$REQUIREMENT" >&2
printf '%s\n' "$REQUIREMENT" >"$STAMP"
installed || { log "ansible-playbook does not run after installing $REQUIREMENT"; exit 1; }
version="$("$VENV/bin/ansible-playbook" --version)"
log "${version%%$'\n'*}"
printf '%s\n' "$VENV/bin"
