#!/usr/bin/env bash
# Fuzzes graft-agent's module file parser (the code that reads an untrusted
# .ko before any kernel call) for a bounded time.
#
#   scripts/fuzz.sh [SECONDS]        # default 60; CI runs 30
#
# Installs cargo-fuzz when it is missing (`cargo install cargo-fuzz --locked`).
# cargo-fuzz needs nightly compiler flags (-Zsanitizer); on a stable toolchain
# this script sets RUSTC_BOOTSTRAP=1 to unlock them.
#
# The corpus lives in node-agent/fuzz/corpus/module_parser (seeded with
# modules from `graft-agent sim build-module` and raw .modinfo text), and
# grows across runs. A crash leaves its input in
# node-agent/fuzz/artifacts/module_parser/ and makes this script exit 1;
# the last line says how to replay it.
#
# Environment:
#   FUZZ_SANITIZER   address (default) or none (about twice as fast; the
#                    parser is safe Rust, so ASan guards only its dependencies)
#   FUZZ_TARGET      the fuzz target (default module_parser)
#   FUZZ_TARGET_DIR  cargo's target directory for the fuzz build (default
#                    node-agent/fuzz/target; a directory outside the checkout
#                    lets fresh clones on one machine share the build)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_DIR="$ROOT/node-agent/fuzz"
TARGET="${FUZZ_TARGET:-module_parser}"
SANITIZER="${FUZZ_SANITIZER:-address}"
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-$FUZZ_DIR/target}"
SECONDS_TO_RUN="${1:-60}"

log() { printf 'fuzz: %s\n' "$*" >&2; }
die() { printf 'fuzz: FAILED: %s\n' "$*"; exit 1; }

case "$SECONDS_TO_RUN" in
    '' | *[!0-9]* | 0) echo "usage: scripts/fuzz.sh [SECONDS]  (a whole number of seconds > 0)" >&2; exit 2 ;;
esac
case "$SANITIZER" in
    address | none) ;;
    *) echo "fuzz: FUZZ_SANITIZER must be address or none, got '$SANITIZER'" >&2; exit 2 ;;
esac

command -v cargo >/dev/null || die "cargo is not on PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked >&2 || die "could not install cargo-fuzz"
fi
if ! rustc -V | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi

# One set of flags for build and run, so that `run` does not rebuild.
# Debug assertions turn integer overflow in the parser into a crash.
FLAGS=(--fuzz-dir "$FUZZ_DIR" --target-dir "$FUZZ_TARGET_DIR" --sanitizer "$SANITIZER" --debug-assertions)

CORPUS="$FUZZ_DIR/corpus/$TARGET"
ARTIFACTS="$FUZZ_DIR/artifacts/$TARGET"
mkdir -p "$CORPUS" "$ARTIFACTS"

# Seeds: real module shapes from the simulated kernel's module builder, and
# raw .modinfo text (the target also feeds its input to parse_modinfo).
# Same names on every run, so re-running does not pile up copies.
seed() {
    local started=$SECONDS
    (cd "$ROOT" && cargo build --quiet -p graft-agent) || die "cannot build graft-agent for the seed corpus"
    local agent="${CARGO_TARGET_DIR:-$ROOT/target}/debug/graft-agent"
    local build=("$agent" sim build-module)
    "${build[@]}" --name graft_demo --release 6.1.0-sim-amd64 \
        --patches vmlinux:cmdline_proc_show -o "$CORPUS/seed-livepatch.ko" >/dev/null
    "${build[@]}" --name graft_cumulative --release 6.12.0-sim-amd64 --replace \
        --patches vmlinux:cmdline_proc_show --patches vmlinux:meminfo_proc_show \
        --patches nfsd:nfsd4_open --srcversion 0123456789ABCDEF01234567 \
        -o "$CORPUS/seed-replace.ko" >/dev/null
    "${build[@]}" --name plain_module --release 4.19.0-sim-amd64 --not-livepatch \
        -o "$CORPUS/seed-not-livepatch.ko" >/dev/null
    printf 'livepatch=Y\0license=GPL\0description=demo\0\0\0depends=nfsd,sunrpc\0retpoline=Y\0name=graft_demo\0vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions \0srcversion=0A1B2C3D\0alias=x\0alias=y\0' \
        >"$CORPUS/seed-modinfo.txt"
    log "seed corpus ready in $CORPUS ($((SECONDS - started))s)"
}

build() {
    local started=$SECONDS
    log "building $TARGET (sanitizer $SANITIZER) in $FUZZ_TARGET_DIR"
    (cd "$ROOT" && cargo fuzz build "${FLAGS[@]}" "$TARGET") >&2 || die "cargo fuzz build failed"
    log "built in $((SECONDS - started))s"
}

seed
build

mkdir -p "$FUZZ_TARGET_DIR"
LOG="$FUZZ_TARGET_DIR/$TARGET.log"
log "fuzzing $TARGET for ${SECONDS_TO_RUN}s (log: $LOG)"
started=$SECONDS
set +e
(cd "$ROOT" && cargo fuzz run "${FLAGS[@]}" "$TARGET" "$CORPUS" -- \
    -max_total_time="$SECONDS_TO_RUN" \
    -dict="$FUZZ_DIR/$TARGET.dict" \
    -artifact_prefix="$ARTIFACTS/" \
    -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1) >"$LOG" 2>&1
rc=$?
set -e
elapsed=$((SECONDS - started))

stat() { sed -n "s/^stat::$1: *//p" "$LOG" | tail -n 1; }
execs="$(stat number_of_executed_units)"
corpus_files="$(find "$CORPUS" -type f | wc -l)"

if [ "$rc" -ne 0 ]; then
    # The reason, without libFuzzer's byte dump of the input.
    grep -E -A3 'panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|^SUMMARY:' "$LOG" | head -n 30 || tail -n 20 "$LOG"
    crash="$(grep -oE "$ARTIFACTS/[a-z-]+-[0-9a-f]+" "$LOG" | tail -n 1 || true)"
    if [ -n "$crash" ]; then
        die "$TARGET crashed after ${elapsed}s; input kept in ${crash#"$ROOT"/}; replay: RUSTC_BOOTSTRAP=1 cargo fuzz run ${FLAGS[*]#"$ROOT"/} $TARGET ${crash#"$ROOT"/}"
    fi
    die "$TARGET exited with status $rc after ${elapsed}s (see $LOG)"
fi
echo "fuzz: $TARGET ok: ${execs:-?} inputs in ${elapsed}s, no crash, corpus $corpus_files files"
