#!/usr/bin/env bash
# Installs the host packages the real-kernel VM harness needs (tests/vm/).
#
#   scripts/install-vm-deps.sh
#
# Idempotent: does nothing when everything is present. Needs root (or sudo)
# when something is missing. It never installs a kernel image or headers
# package; tests/vm/lib.sh downloads and unpacks those under a cache folder.
#
# qemu-system-x86 comes from bookworm-backports because this kind of machine
# already carries backports' qemu-utils, which conflicts with bookworm's
# qemu-system-common. The backports entry is derived from the machine's own
# deb822 sources file (same mirror, same keyring, another Suites line).
set -euo pipefail

log() { printf 'install-vm-deps: %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

SOURCES=/etc/apt/sources.list.d/debian.sources
BACKPORTS=/etc/apt/sources.list.d/graft-bookworm-backports.sources

codename() { . /etc/os-release && printf '%s' "${VERSION_CODENAME:-bookworm}"; }

backports_enabled() {
    grep -rqsE "^[^#]*$(codename)-backports" /etc/apt/sources.list /etc/apt/sources.list.d/
}

# Copies the first stanza of debian.sources that lists the release itself
# (not -security) and points its Suites at <codename>-backports.
enable_backports() {
    local cn; cn="$(codename)"
    if [ ! -r "$SOURCES" ]; then
        log "cannot enable ${cn}-backports: $SOURCES is missing; add ${cn}-backports to apt's sources yourself"
        exit 1
    fi
    local stanza
    stanza="$(awk -v cn="$cn" '
        BEGIN { RS = ""; FS = "\n" }
        {
            for (i = 1; i <= NF; i++)
                if ($i ~ "^Suites:" && $i ~ ("[[:space:]]" cn "([[:space:]]|$)")) { print; exit }
        }' "$SOURCES")"
    if [ -z "$stanza" ]; then
        log "no stanza for suite ${cn} in $SOURCES; add ${cn}-backports to apt's sources yourself"
        exit 1
    fi
    log "enabling ${cn}-backports in $BACKPORTS (derived from $SOURCES)"
    printf '# Written by graft scripts/install-vm-deps.sh from %s\n%s\n' "$SOURCES" \
        "$(printf '%s\n' "$stanza" | sed -E "s/^Suites:.*/Suites: ${cn}-backports/")" |
        $SUDO tee "$BACKPORTS" >/dev/null
    APT_UPDATED=""
}

APT_UPDATED=""
apt_update() {
    if [ -z "$APT_UPDATED" ]; then
        log "apt-get update"
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
}

missing=()
need() { # need <command> <package>
    command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}
need busybox busybox-static
need cpio cpio
need modinfo kmod
need make build-essential
need gcc build-essential
need readelf binutils
need dpkg-deb dpkg
need python3 python3
# 6.12+ headers ship a vmlinux, so kbuild generates module BTF with pahole.
need pahole dwarves
# The busybox binary must be the static one: the initramfs has no libc.
if command -v busybox >/dev/null 2>&1 && readelf -lW "$(command -v busybox)" | grep -q 'program interpreter'; then
    missing+=(busybox-static)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    apt_update
    # shellcheck disable=SC2046
    log "installing: $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        $(printf '%s\n' "${missing[@]}" | sort -u)
fi

if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    if ! backports_enabled; then enable_backports; fi
    apt_update
    log "installing qemu-system-x86 from $(codename)-backports"
    # -t only raises backports for this transaction; a dry run on this kind
    # of machine shows 0 upgraded (the package/suite form cannot pull the
    # matching qemu-system-common and seabios from backports).
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        -t "$(codename)-backports" qemu-system-x86
fi

log "host packages present: qemu $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), busybox, cpio, kmod, build tools"
