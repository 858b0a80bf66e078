#!/usr/bin/env bash
# Runs the Ansible example (examples/ansible/) for real: ansible-playbook
# against localhost (ansible_connection=local) over a simulated kernel.
#
#   tests/ansible/run.sh
#
# Installs ansible-core into .work/ansible-venv when it is missing
# (scripts/install-ansible.sh) and builds graft-agent. Prints one line per
# check and ends with `ansible: N passed, N failed`; exits 1 on any failure.
# Each playbook run's output is kept in .work/ansible-test/ for reading.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
EXAMPLES="$ROOT/examples/ansible"
LOGS="$ROOT/.work/ansible-test"

log() { printf 'ansible-test: %s\n' "$*" >&2; }

# ansible-core refuses to run under a locale whose encoding is not UTF-8.
case "$(locale charmap 2>/dev/null || true)" in
    UTF-8 | utf8) ;;
    *) export LC_ALL=C.UTF-8 LANG=C.UTF-8 ;;
esac

ANSIBLE_BIN="$("$ROOT/scripts/install-ansible.sh")"
version="$("$ANSIBLE_BIN/ansible-playbook" --version)"
log "${version%%$'\n'*}"

log "building graft-agent"
(cd "$ROOT" && cargo build --quiet -p graft-agent)
AGENT="${CARGO_TARGET_DIR:-$ROOT/target}/debug/graft-agent"
[ -x "$AGENT" ] || { log "no graft-agent binary at $AGENT"; exit 1; }

TMP="$(mktemp -d "${TMPDIR:-/tmp}/graft-ansible.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
rm -rf "$LOGS"
mkdir -p "$LOGS"

KERNEL="$TMP/kernel"
MODULE="$TMP/graft_demo.ko"
"$AGENT" sim init "$KERNEL" >/dev/null
"$AGENT" sim build-module --name graft_demo --release 6.1.0-sim-amd64 \
    --patches vmlinux:cmdline_proc_show --transition-time 300ms -o "$MODULE" >/dev/null
SHA256="$(sha256sum "$MODULE" | cut -d' ' -f1)"

# Ansible keeps its own state under TMP, reads no ansible.cfg from the
# checkout or the home directory, and prints no colour.
export ANSIBLE_CONFIG="$TMP/ansible.cfg"
printf '[defaults]\n' >"$ANSIBLE_CONFIG"
export ANSIBLE_HOME="$TMP/ansible-home"
export ANSIBLE_LOCAL_TEMP="$TMP/ansible-local"
export ANSIBLE_REMOTE_TMP="$TMP/ansible-remote"
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 ANSIBLE_RETRY_FILES_ENABLED=0

cat >"$TMP/inventory.ini" <<'EOF'
[livepatch_nodes]
localhost ansible_connection=local ansible_python_interpreter="{{ ansible_playbook_python }}"
EOF

# Extra variables as JSON, so that paths with spaces survive.
"$ANSIBLE_BIN/python" - "$TMP/vars.json" "$AGENT" "sim:$KERNEL" "$MODULE" "$SHA256" <<'EOF'
import json, sys
out, agent, kernel, module, sha256 = sys.argv[1:]
json.dump({
    "graft_agent_bin": agent,
    "graft_kernel": kernel,
    "graft_module": module,
    "graft_sha256": sha256,
    "graft_patch": "graft_demo",
    "graft_become": False,
    "graft_stall_after": "10s",
    "graft_timeout": "60s",
}, open(out, "w"))
EOF

passed=0
failed=0
OUT=""

# playbook NAME PLAYBOOK [ansible-playbook args...]: runs it, keeps its output
# in $OUT (and in $LOGS/NAME.log), its exit status in $RC.
playbook() {
    local name="$1" book="$2"
    shift 2
    OUT="$LOGS/$name.log"
    set +e
    "$ANSIBLE_BIN/ansible-playbook" -i "$TMP/inventory.ini" -e "@$TMP/vars.json" \
        "$@" "$EXAMPLES/$book" >"$OUT" 2>&1 </dev/null
    RC=$?
    set -e
}

# recap FIELD: localhost's number for FIELD (ok, changed, failed...) in PLAY RECAP.
recap() {
    sed -nE "s/^localhost +:.* $1=([0-9]+).*/\1/p" "$OUT" | tail -n 1
}

# patch_state: the state graft-agent reports for graft_demo, or "absent".
patch_state() {
    "$AGENT" --kernel "sim:$KERNEL" --json status | "$ANSIBLE_BIN/python" -c '
import json, sys
patches = [p for p in json.load(sys.stdin)["patches"] if p["name"] == "graft_demo"]
print(patches[0]["state"] if patches else "absent")'
}

# check DESCRIPTION CONDITION...: one line per check; the output on failure.
check() {
    local what="$1"
    shift
    if "$@"; then
        passed=$((passed + 1))
        printf 'ok   %s\n' "$what"
    else
        failed=$((failed + 1))
        printf 'FAIL %s (exit %s, recap ok=%s changed=%s failed=%s; output in %s)\n' \
            "$what" "$RC" "$(recap ok)" "$(recap changed)" "$(recap failed)" "${OUT#"$ROOT"/}"
        sed -n '/^TASK \[/,$p' "$OUT" | tail -n 25 | sed 's/^/    /'
    fi
}

succeeded_with() { [ "$RC" -eq 0 ] && [ "$(recap failed)" = 0 ] && [ "$(recap changed)" = "$1" ]; }
state_is() { [ "$(patch_state)" = "$1" ]; }

ZEROS="$(printf '0%.0s' $(seq 64))"
playbook apply-wrong-sha256 apply-livepatch.yml -e "graft_sha256=$ZEROS"
check "apply with a wrong sha256 fails with the agent's message" \
    eval '[ "$RC" -ne 0 ] && [ "$(recap failed)" = 1 ] && grep -q "sha256 mismatch" "$OUT"'
check "the refused module never reached the kernel" state_is absent

playbook apply-check apply-livepatch.yml --check
check "apply --check reports changed" succeeded_with 1
check "apply --check leaves the kernel alone" state_is absent

playbook apply-first apply-livepatch.yml
check "apply reports changed on the first run" succeeded_with 1
check "the patch is applied" state_is Applied

playbook apply-second apply-livepatch.yml
check "apply reports ok (changed=0) on the second run" succeeded_with 0
check "the second run says the patch is already applied" grep -q "already applied" "$OUT"

playbook revert-first revert-livepatch.yml
check "revert reports changed" succeeded_with 1
check "the patch is gone" state_is absent

playbook revert-second revert-livepatch.yml
check "revert reports ok (changed=0) when the patch is not loaded" succeeded_with 0

# A task sleeping in the patched function, inside a pod, blocks the transition.
"$AGENT" sim add-task "$KERNEL" --comm nginx --sleeps-in cmdline_proc_show \
    --pod-uid 0b8a1c9e-5f2d-4c41-9d1e-7a6b3c2d1e0f --container-id "$(printf 'c%.0s' $(seq 64))" >/dev/null
playbook apply-stall-revert apply-livepatch.yml -e graft_stall_after=1s -e graft_on_stall=revert
check "a stalled apply with graft_on_stall=revert fails (exit 1) and names the blocking task and pod" \
    eval '[ "$RC" -ne 0 ] && [ "$(recap failed)" = 1 ] && grep -q "nginx/[0-9]* in cmdline_proc_show, pod 0b8a1c9e" "$OUT"'
check "the stalled patch was reverted" state_is absent

printf 'ansible: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
