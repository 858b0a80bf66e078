# shellcheck shell=bash
# Shared helpers for tests/vm/run.sh and tests/vm/demo.sh: find the Debian
# kernel to boot, fetch its image and headers without installing them, build
# the modules and the static agent, pack the initramfs and boot qemu.
#
# Kernel selection (GRAFT_KERNEL or the first argument of the scripts):
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
                vm_die "apt-get download $p failed (is the package known to apt? try apt-get update)"
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
}
