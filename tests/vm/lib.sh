# shellcheck shell=bash
# Shared helpers for tests/vm/run.sh and tests/vm/demo.sh: find the Debian
# kernel to boot, fetch its image and headers without installing them, build
# the modules and the static agent, pack the initramfs and boot qemu.
#
# Kernel selection (GRAFT_VM_KERNEL or the first argument of the scripts):
#   6.1      Debian 12's default kernel (whatever linux-image-amd64 depends on)
#   6.12     the 6.12 kernel of Debian 12 (what linux-image-6.12-amd64 depends on)
#   RELEASE  an exact release such as 6.1.0-56-amd64 or 6.12.95+deb12-amd64
#
# Nothing is installed for the kernel: the image, headers, headers-common and
# kbuild .debs are fetched with `apt-get download` into the cache and unpacked
# with `dpkg -x`, so the machine's own kernel setup is never touched.

GRAFT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
GRAFT_WORK="${GRAFT_WORK:-$GRAFT_ROOT/.work/vm}"
if [ -z "${GRAFT_CACHE:-}" ]; then
    if mkdir -p /var/cache/graft 2>/dev/null && [ -w /var/cache/graft ]; then
        GRAFT_CACHE=/var/cache/graft
    else
        GRAFT_CACHE="$GRAFT_ROOT/.work/cache"
    fi
fi

vm_log() { printf '[vm] %s\n' "$*" >&2; }
vm_die() { printf '[vm] error: %s\n' "$*" >&2; exit 1; }

# apt_refresh_once: apt-get update, at most once per run (stale lists name
# .debs the mirror no longer has).
APT_REFRESHED=""
apt_refresh_once() {
    [ -z "$APT_REFRESHED" ] || return 1
    APT_REFRESHED=1
    vm_log "apt-get update (package lists look stale)"
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq >&2
}

# Prints the single linux-image-*/linux-headers-* dependency of a metapackage.
meta_dep() { # meta_dep <metapackage> <prefix>
    apt-cache depends "$1" 2>/dev/null | awk -v p="$2" '$1 == "Depends:" && index($2, p) == 1 { print $2; exit }'
}

# resolve_kernel <alias|release> -> prints the exact release
resolve_kernel() {
    local want="$1" img hdr meta
    case "$want" in
        6.1|default) meta="linux-image-amd64" ;;
        6.12)        meta="linux-image-6.12-amd64" ;;
        *)           printf '%s' "$want"; return 0 ;;
    esac
    img="$(meta_dep "$meta" linux-image-)"
    if [ -z "$img" ] && apt_refresh_once; then img="$(meta_dep "$meta" linux-image-)"; fi
    [ -n "$img" ] || vm_die "apt knows no package $meta; run apt-get update (for 6.12: bookworm-security or -backports must be in apt's sources)"
    hdr="$(meta_dep "${meta/linux-image-/linux-headers-}" linux-headers-)"
    if [ -n "$hdr" ] && [ "${hdr#linux-headers-}" != "${img#linux-image-}" ]; then
        vm_die "$meta points at ${img#linux-image-} but its headers metapackage at ${hdr#linux-headers-}; name the release explicitly"
    fi
    printf '%s' "${img#linux-image-}"
}

# candidate_deb <dir> <package>: path of the cached .deb of apt's candidate.
candidate_deb() {
    local ver
    ver="$(apt-cache show --no-all-versions "$2" 2>/dev/null | awk '$1 == "Version:" { print $2; exit }')"
    [ -n "$ver" ] || vm_die "apt knows no package $2 (try apt-get update)"
    # apt-get download writes an epoch's colon as %3a.
    printf '%s/%s_%s_%s.deb' "$1" "$2" "${ver//:/%3a}" "$(apt-cache show --no-all-versions "$2" | awk '$1 == "Architecture:" { print $2; exit }')"
}

# apt_download <dir> <package>... : downloads candidate .debs unless cached.
apt_download() {
    local dir="$1"; shift
    mkdir -p "$dir"
    local p
    for p in "$@"; do
        if [ ! -s "$(candidate_deb "$dir" "$p")" ]; then
            vm_log "downloading $p"
            # -o APT::Sandbox::User=root: the cache folder is root's, not _apt's.
            (cd "$dir" && apt-get download -q -o APT::Sandbox::User=root "$p" >/dev/null) ||
                { apt_refresh_once && (cd "$dir" && apt-get download -q -o APT::Sandbox::User=root "$p" >/dev/null); } ||
                vm_die "apt-get download $p failed (is the package known to apt?)"
        fi
    done
}

# fetch_kernel <alias|release>: sets KREL, KIMAGE (bzImage) and KDIR (headers).
fetch_kernel() {
    KREL="$(resolve_kernel "$1")"
    local kroot="$GRAFT_CACHE/kernels/$KREL" debs="$GRAFT_CACHE/debs"
    KIMAGE="$kroot/vmlinuz-$KREL"
    KDIR="$kroot/usr/src/linux-headers-$KREL"
    if [ -s "$KIMAGE" ] && [ -f "$KDIR/Makefile" ] && [ -f "$kroot/.complete" ]; then
        return 0
    fi
    rm -rf "$kroot"; mkdir -p "$kroot"
    apt-cache show "linux-headers-$KREL" >/dev/null 2>&1 ||
        { apt_refresh_once && apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; } ||
        vm_die "no package linux-headers-$KREL in apt's sources: modules cannot be built for $KREL"
    # The headers package depends on its -common part and on the kbuild tools.
    local deps
    deps="$(apt-cache depends "linux-headers-$KREL" | awk '$1 == "Depends:" && ($2 ~ /^linux-headers-/ || $2 ~ /^linux-kbuild-/) { print $2 }' | sort -u)"
    apt_download "$debs" "linux-image-$KREL" "linux-headers-$KREL" $deps
    local p deb
    for p in "linux-headers-$KREL" $deps; do
        dpkg -x "$(candidate_deb "$debs" "$p")" "$kroot"
    done
    deb="$(candidate_deb "$debs" "linux-image-$KREL")"
    dpkg-deb --fsys-tarfile "$deb" | tar -xO "./boot/vmlinuz-$KREL" >"$KIMAGE"
    [ -s "$KIMAGE" ] || vm_die "no ./boot/vmlinuz-$KREL in $deb"
    [ -f "$KDIR/Makefile" ] || vm_die "headers for $KREL unpacked but $KDIR/Makefile is missing"
    # Debian's per-flavour Makefile includes the -common one by absolute path
    # (/usr/src/linux-headers-<version>-common/Makefile): point it into the
    # unpacked tree. The symlinks to the kbuild tools are relative and work.
    sed -i -E "s#^include /usr/src/#include $kroot/usr/src/#" "$KDIR/Makefile"
    touch "$kroot/.complete"
    vm_log "kernel $KREL: image and headers under $kroot"
}

# build_modules <outdir>: copies kernel-module/ to <outdir> and builds it
# against $KDIR. Fails on any compiler or modpost warning.
build_modules() {
    local out="$1"
    rm -rf "$out"; mkdir -p "$out"
    out="$(cd "$out" && pwd)"   # kbuild needs an absolute M=
    cp "$GRAFT_ROOT"/kernel-module/Kbuild "$GRAFT_ROOT"/kernel-module/Makefile "$GRAFT_ROOT"/kernel-module/*.c "$out"/
    vm_log "building modules for $KREL"
    if ! make -C "$KDIR" M="$out" modules >"$out/build.log" 2>&1; then
        cat "$out/build.log" >&2
        vm_die "module build for $KREL failed (log: $out/build.log)"
    fi
    if grep -iE 'warning' "$out/build.log" >&2; then
        vm_die "module build for $KREL is not warning-free (log: $out/build.log)"
    fi
    local m
    for m in graft_demo graft_cumulative graft_stall_rig graft_stall_patch; do
        [ -s "$out/$m.ko" ] || vm_die "module build produced no $m.ko"
        modinfo -F vermagic "$out/$m.ko" | grep -q "^$KREL " ||
            vm_die "$m.ko has vermagic '$(modinfo -F vermagic "$out/$m.ko")', expected $KREL"
    done
    # Bad input for scenario 7: graft_demo claiming another kernel release.
    local other
    other="$(python3 "$GRAFT_ROOT/tests/vm/badvermagic.py" "$out/graft_demo.ko" "$out/graft_demo_badvermagic.ko" "$KREL")" ||
        vm_die "could not make graft_demo_badvermagic.ko"
    vm_log "graft_demo_badvermagic.ko claims release $other"
}

# build_agent: builds the static graft-agent; sets AGENT. GRAFT_AGENT=path
# uses a prebuilt binary instead.
build_agent() {
    if [ -n "${GRAFT_AGENT:-}" ]; then
        AGENT="$GRAFT_AGENT"
        [ -x "$AGENT" ] || vm_die "GRAFT_AGENT=$AGENT is not an executable"
        return 0
    fi
    vm_log "building the static graft-agent"
    (cd "$GRAFT_ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --quiet --release -p graft-agent --target x86_64-unknown-linux-gnu) ||
        vm_die "cargo build of graft-agent failed"
    AGENT="${CARGO_TARGET_DIR:-$GRAFT_ROOT/target}/x86_64-unknown-linux-gnu/release/graft-agent"
    [ -x "$AGENT" ] || vm_die "no agent binary at $AGENT"
    if readelf -lW "$AGENT" | grep -q 'program interpreter'; then
        vm_die "$AGENT is dynamically linked; the initramfs has no libc"
    fi
}

# build_initramfs <out.cpio> <modules dir> [agent]: a busybox initramfs with
# /init, the guest scripts under /graft, the modules under /graft/modules and
# the agent as /graft/bin/graft-agent.
build_initramfs() {
    local out="$1" mods="$2" agent="${3:-}" root
    root="$(dirname "$out")/initramfs-root"
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,etc,graft/bin,graft/modules}
    cp "$(command -v busybox)" "$root/bin/busybox"
    ln -s busybox "$root/bin/sh"
    install -m 0755 "$GRAFT_ROOT/tests/vm/guest/init" "$root/init"
    cp "$GRAFT_ROOT"/tests/vm/guest/*.sh "$root/graft/"
    cp "$mods"/*.ko "$root/graft/modules/"
    if [ -n "$agent" ]; then install -m 0755 "$agent" "$root/graft/bin/graft-agent"; fi
    printf 'root:x:0:0:root:/:/bin/sh\n' >"$root/etc/passwd"
    # With /dev/console in the archive the kernel opens the console for
    # /init; without it (no root to mknod) /init reopens it after devtmpfs.
    mknod "$root/dev/console" c 5 1 2>/dev/null || true
    (cd "$root" && find . | sort | cpio -o -H newc --owner 0:0 --quiet) >"$out"
}

# qemu_args <kernel> <initrd> <append> <accel>: sets QEMU_ARGS.
qemu_args() {
    QEMU_ARGS=(qemu-system-x86_64 -machine q35 -accel "$4" -smp 2 -m 768
        -nodefaults -nographic -monitor none -serial stdio -no-reboot
        -kernel "$1" -initrd "$2"
        -append "console=ttyS0 panic=-1 oops=panic quiet loglevel=4 $3")
    if [ "$4" = tcg ]; then QEMU_ARGS+=(-cpu max); fi
}

# boot_vm <log> <timeout-seconds> <append> [live]: boots the VM with a hard
# timeout, the serial console going to <log> (and to stderr when live).
# Returns qemu's status, 124 on timeout.
boot_vm() {
    local log="$1" limit="$2" append="$3" live="${4:-}"
    qemu_args "$KIMAGE" "$INITRD" "$append" "$ACCEL"
    vm_log "booting $KREL ($ACCEL, timeout ${limit}s): ${append}"
    local rcfile="$log.qemu-status"
    rm -f "$rcfile"
    if [ -n "$live" ]; then
        # Live: drop the firmware's terminal resets (it clears the screen and
        # turns line wrapping off). On a terminal keep the agent's in-place
        # progress line (\r, ESC[K); elsewhere give each update its own line.
        local tty_filter=(cat)
        if [ ! -t 1 ]; then tty_filter=(sed -u -e 's/\r/\n/g' -e 's/\x1b\[K//g'); fi
        { s=0; timeout --kill-after=5 "$limit" "${QEMU_ARGS[@]}" </dev/null 2>&1 || s=$?; echo "$s" >"$rcfile"; } |
            sed -u -e 's/\r$//' -e 's/\x1bc//g' -e 's/\x1b\[?7l//g' -e 's/\x1b\[2J//g' -e 's/\x1b\[0m//g' |
            tee "$log" | "${tty_filter[@]}" || true
    else
        { s=0; timeout --kill-after=5 "$limit" "${QEMU_ARGS[@]}" </dev/null 2>&1 || s=$?; echo "$s" >"$rcfile"; } |
            tr -d '\r' >"$log" || true
    fi
    local rc
    rc="$(cat "$rcfile" 2>/dev/null || echo 1)"
    rm -f "$rcfile"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then vm_log "qemu hit the ${limit}s timeout and was killed"; fi
    return "$rc"
}

# pick_accel: KVM only when a quick probe boot reaches /init; else TCG.
# The answer is kept per host boot and kernel release. GRAFT_ACCEL=kvm|tcg
# skips the probe.
pick_accel() {
    if [ -n "${GRAFT_ACCEL:-}" ]; then ACCEL="$GRAFT_ACCEL"; return 0; fi
    ACCEL=tcg
    [ -r /dev/kvm ] && [ -w /dev/kvm ] || return 0
    local memo
    memo="$GRAFT_CACHE/accel-$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown)-$KREL"
    if [ -s "$memo" ]; then ACCEL="$(cat "$memo")"; vm_log "accelerator for $KREL on this host boot: $ACCEL (probed before)"; return 0; fi
    ACCEL=kvm
    # Under TCG this kernel reaches /init in about 4 s, under KVM in about 1 s.
    if boot_vm "$VMDIR/kvm-probe.log" 12 "graft.mode=probe" && grep -q '@@GRAFT probe ok' "$VMDIR/kvm-probe.log"; then
        vm_log "KVM boots this kernel: using -accel kvm"
    else
        vm_log "KVM cannot boot $KREL here (see $VMDIR/kvm-probe.log): using -accel tcg"
        ACCEL=tcg
    fi
    printf '%s\n' "$ACCEL" >"$memo"
}
