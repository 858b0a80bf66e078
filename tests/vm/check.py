#!/usr/bin/env python3
"""Judge Graft's VM scenarios from the serial console logs.

    check.py --release REL --boot NAME:QEMU_RC:LOG [--boot ...]

The guest scripts (tests/vm/guest/*.sh) record every command they run as
lines starting with "@@GRAFT": its exit code and duration, its stdout and
stderr, and facts observed from sysfs and /proc. This script turns those
records into one PASS/FAIL line per scenario, with the reasons for each
failure, and a closing "N passed, N failed" line. Exit status 1 on any
failure.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field


@dataclass
class Run:
    cmd: str = ""
    rc: int | None = None
    secs: float | None = None
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)

    @property
    def doc(self):
        text = "\n".join(self.out).strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return None

    def message(self) -> str:
        doc = self.doc
        parts = []
        if isinstance(doc, dict):
            for key in ("message", "error"):
                if isinstance(doc.get(key), str):
                    parts.append(doc[key])
        parts.extend(self.err)
        return "\n".join(parts)


@dataclass
class Boot:
    name: str
    qemu_rc: int
    log: str
    runs: dict[str, Run] = field(default_factory=dict)
    facts: dict[str, str] = field(default_factory=dict)
    exit_rc: int | None = None
    booted: bool = False
    tail: list[str] = field(default_factory=list)

    def problem(self) -> str | None:
        if not self.booted:
            why = "timed out" if self.qemu_rc == 124 else f"qemu exit {self.qemu_rc}"
            return f"{self.name} boot never reached /init ({why}); see {self.log}"
        if self.exit_rc is None:
            why = "timed out" if self.qemu_rc in (124, 137) else f"qemu exit {self.qemu_rc}"
            return f"{self.name} boot ended before its scenarios finished ({why}); see {self.log}"
        return None


RECORD = re.compile(r"@@GRAFT (\S+)(?: (\S+))?(?: (.*))?$")


def parse(name: str, qemu_rc: int, path: str) -> Boot:
    boot = Boot(name, qemu_rc, path)
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError:
        lines = []
    boot.tail = [l for l in lines if l.strip()][-15:]
    for line in lines:
        at = line.find("@@GRAFT ")
        if at < 0:
            continue
        m = RECORD.match(line[at:])
        if not m:
            continue
        kind, ident, rest = m.group(1), m.group(2) or "", m.group(3) or ""
        if kind == "boot":
            boot.booted = True
        elif kind == "exit":
            rc = re.search(r"rc=(\d+)", line)
            boot.exit_rc = int(rc.group(1)) if rc else -1
        elif kind == "cmd":
            boot.runs.setdefault(ident, Run()).cmd = rest
        elif kind == "rc":
            run = boot.runs.setdefault(ident, Run())
            fields = rest.split()
            run.rc = int(fields[0])
            run.secs = float(fields[1]) if len(fields) > 1 else None
        elif kind in ("out", "err"):
            # "@@GRAFT out ID text": keep the text exactly (one space after ID).
            text = line[at:].split(" ", 3)
            getattr(boot.runs.setdefault(ident, Run()), kind).append(text[3] if len(text) > 3 else "")
        elif kind == "fact":
            boot.facts[ident] = rest
    return boot


class Scenario:
    def __init__(self, number: int, title: str, boots: list[Boot]):
        self.number, self.title, self.problems, self.info = number, title, [], []
        self.boots = boots

    def fail(self, text: str) -> None:
        self.problems.append(text)

    def expect(self, cond: bool, text: str) -> bool:
        if not cond:
            self.fail(text)
        return cond

    def fact(self, boot: Boot, key: str) -> str | None:
        if key not in boot.facts:
            self.fail(f"no record of {key} (the guest script stopped early?)")
            return None
        return boot.facts[key]

    def run(self, boot: Boot, key: str) -> Run | None:
        run = boot.runs.get(key)
        if run is None or run.rc is None:
            self.fail(f"{key}: never ran (the guest script stopped early?)")
            return None
        return run

    def agent(self, boot: Boot, key: str, rc: int, state: str | tuple | None = None,
              changed: bool | None = None, patch: str | None = None) -> dict | None:
        """Checks an agent run's exit code and JSON; returns the document."""
        run = self.run(boot, key)
        if run is None:
            return None
        doc = run.doc
        where = f"{key} (`{short(run.cmd)}`)"
        if run.rc != rc:
            msg = one_line(run.message())
            self.fail(f"{where}: exit {run.rc}, expected {rc}" + (f": {msg}" if msg else ""))
        if doc is None:
            if "--json" in run.cmd:
                self.fail(f"{where}: stdout is not one JSON document: {short(' '.join(run.out)) or '(empty)'}")
            return None
        if not isinstance(doc, dict):
            self.fail(f"{where}: JSON is not an object")
            return None
        if state is not None:
            states = (state,) if isinstance(state, str) else state
            if doc.get("state") not in states:
                self.fail(f"{where}: state {doc.get('state')!r}, expected {' or '.join(states)}"
                          + (f" ({one_line(doc.get('message', ''))})" if doc.get("message") else ""))
        if changed is not None and doc.get("changed") is not changed:
            self.fail(f"{where}: changed={doc.get('changed')!r}, expected {changed}")
        if patch is not None and doc.get("patch") != patch:
            self.fail(f"{where}: patch {doc.get('patch')!r}, expected {patch!r}")
        return doc

    def secs(self) -> float:
        return sum((r.secs or 0) for b in self.boots for k, r in b.runs.items()
                   if k.split(".")[0] in self.prefixes)


def short(text: str, n: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def one_line(text: str) -> str:
    return short(text, 160)


def sysfs_patches(value: str | None) -> dict[str, dict]:
    """'name enabled transition replace;...' -> {name: {...}}"""
    result = {}
    for item in (value or "").split(";"):
        f = item.split()
        if len(f) >= 3:
            result[f[0]] = {"enabled": f[1] == "1", "transition": f[2] == "1",
                            "replace": None if len(f) < 4 or f[3] == "-" else f[3] == "1"}
    return result


def blocking_has_rig(s: Scenario, where: str, tasks, kthread_pid: str | None) -> None:
    if not isinstance(tasks, list):
        s.fail(f"{where}: no 'blocking' list")
        return
    found = [t for t in tasks if isinstance(t, dict) and t.get("comm") == "graft_stall_rig"]
    if not s.expect(bool(found), f"{where}: blocking does not name the rig kthread graft_stall_rig: {short(json.dumps(tasks))}"):
        return
    t = found[0]
    s.expect(str(t.get("function", "")).startswith("graft_rig_hold"),
             f"{where}: the rig kthread's function is {t.get('function')!r}, expected graft_rig_hold")
    if kthread_pid:
        s.expect(str(t.get("pid")) == kthread_pid or str(t.get("tid")) == kthread_pid,
                 f"{where}: the rig kthread has pid {t.get('pid')}/{t.get('tid')}, expected {kthread_pid}")


def replace_expectation(release: str, attrs_replace) -> str:
    """Which kernels expose /sys/kernel/livepatch/<p>/replace: 6.11 and later."""
    m = re.match(r"(\d+)\.(\d+)", release)
    newer = m and (int(m.group(1)), int(m.group(2))) >= (6, 11)
    return "exposed" if newer else "absent"


def check_status_matches_sysfs(s: Scenario, where: str, doc, sysfs: dict, release: str) -> None:
    if not isinstance(doc, dict):
        return
    kernel = doc.get("kernel") or {}
    s.expect(kernel.get("release") == release, f"{where}: kernel.release {kernel.get('release')!r}, uname -r says {release!r}")
    s.expect(kernel.get("livepatch_supported") is True, f"{where}: livepatch_supported is {kernel.get('livepatch_supported')!r}")
    patches = {p.get("name"): p for p in doc.get("patches") or [] if isinstance(p, dict)}
    s.expect(set(patches) == set(sysfs), f"{where}: patches {sorted(patches)} but sysfs has {sorted(sysfs)}")
    expect_replace = replace_expectation(release, None)
    for name, attrs in sysfs.items():
        p = patches.get(name)
        if p is None:
            continue
        s.expect(p.get("enabled") is attrs["enabled"], f"{where}: {name}.enabled {p.get('enabled')!r}, sysfs says {attrs['enabled']}")
        s.expect(p.get("transition") is attrs["transition"], f"{where}: {name}.transition {p.get('transition')!r}, sysfs says {attrs['transition']}")
        if attrs["enabled"] and not attrs["transition"]:
            s.expect(p.get("state") == "Applied", f"{where}: {name}.state {p.get('state')!r}, sysfs says applied")
        elif attrs["transition"]:
            s.expect(p.get("state") in ("Transitioning", "Stalled", "Reverting"),
                     f"{where}: {name}.state {p.get('state')!r} while sysfs shows a transition")
        # Kernel difference, stated explicitly: 6.11+ has a read-only `replace`
        # attribute, older kernels (6.1) do not and status must say null.
        if expect_replace == "exposed":
            s.expect(attrs["replace"] is not None, f"{where}: {release} should expose {name}/replace but sysfs has none")
            s.expect(p.get("replace") is attrs["replace"], f"{where}: {name}.replace {p.get('replace')!r}, sysfs says {attrs['replace']}")
        else:
            s.expect(attrs["replace"] is None, f"{where}: {release} unexpectedly exposes {name}/replace")
            s.expect("replace" in p and p.get("replace") is None,
                     f"{where}: {name}.replace is {p.get('replace', '(missing)')!r}; this kernel does not expose it, expected null")


def scenarios(suite: Boot, sig: Boot) -> list[Scenario]:
    out: list[Scenario] = []
    release = suite.facts.get("kernel.release", "?")
    boot_cmdline = suite.facts.get("kernel.boot_cmdline")

    def new(n, title, boots, prefixes):
        s = Scenario(n, title, boots)
        s.prefixes = prefixes
        out.append(s)
        for b in boots:
            if b.problem():
                s.fail(b.problem())
        return s

    # Kernel differences, stated instead of loosening the checks.
    if replace_expectation(release, None) == "exposed":
        replace_note = "[replace attribute exposed (6.11+): status reports it]"
    else:
        replace_note = "[no replace attribute before 6.11: status reports null]"

    # 1 apply
    s = new(1, f"apply graft_demo: Applied, /proc/cmdline patched, status agrees with sysfs {replace_note}", [suite], ["s1"])
    s.agent(suite, "s1.apply", 0, "Applied", changed=True, patch="graft_demo")
    s.expect(s.fact(suite, "s1.cmdline_before") == boot_cmdline, "/proc/cmdline before the patch is not the boot command line")
    after = s.fact(suite, "s1.cmdline_after")
    s.expect(after == "graft_demo: patched", f"/proc/cmdline after apply is {after!r}, expected 'graft_demo: patched'")
    sysfs = sysfs_patches(s.fact(suite, "s1.sysfs"))
    s.expect(sysfs.get("graft_demo", {}).get("enabled") is True and sysfs.get("graft_demo", {}).get("transition") is False,
             f"sysfs after apply: {suite.facts.get('s1.sysfs')!r}, expected graft_demo enabled, no transition")
    doc = s.agent(suite, "s1.status", 0)
    check_status_matches_sysfs(s, "s1.status", doc, sysfs_patches(suite.facts.get("s1.sysfs_after_status")), release)
    s.agent(suite, "s1.status_human", 0)
    s.agent(suite, "s1.apply_again", 0, "Applied", changed=False, patch="graft_demo")

    # 2 revert
    s = new(2, "revert graft_demo: effect gone, sysfs dir gone, module unloaded", [suite], ["s2"])
    s.agent(suite, "s2.revert", 0, "Reverted", changed=True, patch="graft_demo")
    c = s.fact(suite, "s2.cmdline")
    s.expect(c == boot_cmdline, f"/proc/cmdline after revert is {c!r}, expected the boot command line")
    s.expect(s.fact(suite, "s2.sysfs_dir") == "gone", "/sys/kernel/livepatch/graft_demo still exists")
    s.expect(s.fact(suite, "s2.module") == "unloaded", "module graft_demo is still loaded")
    s.agent(suite, "s2.revert_again", 0, changed=False)

    # 3 stall
    s = new(3, "stall: Stalled (exit 3), blocking names the rig kthread, second apply refused", [suite], ["s3"])
    kpid = s.fact(suite, "s3.rig_kthread_pid")
    s.expect(s.fact(suite, "s3.holders") == "2", f"the rig holds {suite.facts.get('s3.holders')} tasks, expected 2 (kthread and reader)")
    doc = s.agent(suite, "s3.apply", 3, "Stalled", patch="graft_stall_patch")
    if doc is not None:
        blocking_has_rig(s, "s3.apply", doc.get("blocking"), kpid)
    sysfs = sysfs_patches(s.fact(suite, "s3.sysfs"))
    s.expect(sysfs.get("graft_stall_patch", {}).get("transition") is True,
             f"sysfs after the stalled apply: {suite.facts.get('s3.sysfs')!r}, expected graft_stall_patch in transition")
    doc = s.agent(suite, "s3.blocking", 0)
    if doc is not None:
        s.expect(doc.get("patch") == "graft_stall_patch", f"s3.blocking: patch {doc.get('patch')!r}")
        blocking_has_rig(s, "s3.blocking", doc.get("blocking"), kpid)
    run = s.run(suite, "s3.blocking_human")
    if run is not None:
        s.expect(run.rc == 0 and "graft_rig_hold" in "\n".join(run.out), "`blocking` (human) does not show graft_rig_hold")
    doc = s.agent(suite, "s3.status", 0)
    check_status_matches_sysfs(s, "s3.status", doc, sysfs_patches(suite.facts.get("s3.sysfs")), release)
    if isinstance(doc, dict):
        p = {x.get("name"): x for x in doc.get("patches") or []}.get("graft_stall_patch", {})
        s.expect(p.get("transition") is True, f"s3.status: graft_stall_patch.transition is {p.get('transition')!r}, expected true")
    want = "another transition is in progress (patch graft_stall_patch)"
    s.agent(suite, "s3.second_apply", 4)
    run = suite.runs.get("s3.second_apply")
    if run is not None and run.rc is not None:
        s.expect(want in run.message(), f"s3.second_apply: message {one_line(run.message())!r} lacks {want!r}")
    run = s.run(suite, "s3.second_apply_human")
    if run is not None:
        s.expect(run.rc == 4, f"s3.second_apply_human: exit {run.rc}, expected 4")
        s.expect(any(l.startswith("error:") and want in l for l in run.err),
                 f"s3.second_apply_human: stderr has no 'error: ...{want}': {one_line(' | '.join(run.err))!r}")
    s.expect(s.fact(suite, "s3.demo_after_refusal") == "unloaded", "graft_demo got loaded although the apply was refused")

    # 4 stall policy revert
    s = new(4, "stall policy revert: reverse transition completes, module unloaded, kernel consistent", [suite], ["s4"])
    s.agent(suite, "s4.revert_stalled", 0, "Reverted", patch="graft_stall_patch")
    s.expect(s.fact(suite, "s4.module_after_revert") == "unloaded", "graft_stall_patch still loaded after reverting its stalled transition")
    doc = s.agent(suite, "s4.apply", 1, "Reverted", patch="graft_stall_patch")
    s.expect(s.fact(suite, "s4.sysfs") == "", f"sysfs after the policy revert: {suite.facts.get('s4.sysfs')!r}, expected no patch")
    s.expect(s.fact(suite, "s4.module") == "unloaded", "graft_stall_patch still loaded after the policy revert")
    ps = (s.fact(suite, "s4.patch_states") or "").split()
    s.expect(ps == ["-1"], f"task patch_state values after the revert: {ps}, expected only -1 (no transition)")
    stack = s.fact(suite, "s4.rig_kthread_stack") or ""
    s.expect("graft_rig_hold" in stack, f"the rig kthread is no longer in graft_rig_hold ({stack!r}): the scenario did not test a real stall")

    # 8 agent killed during a stalled transition
    s = new(8, "agent killed (SIGKILL) during a stalled transition, restarted: reports it and carries on", [suite], ["s8"])
    s.expect(s.fact(suite, "s8.transition_before_kill") == "1", "the transition was not running when the agent was killed")
    s.expect(s.fact(suite, "s8.killed_rc") == "137", f"the killed agent's status is {suite.facts.get('s8.killed_rc')}, expected 137 (SIGKILL)")
    sysfs = sysfs_patches(s.fact(suite, "s8.sysfs_after_kill"))
    s.expect(sysfs.get("graft_stall_patch", {}).get("transition") is True, "the kernel's transition did not survive the agent")
    doc = s.agent(suite, "s8.restart", 3, ("Stalled", "Transitioning"), patch="graft_stall_patch")
    if isinstance(doc, dict):
        # The restarted agent must know it joined a transition it did not
        # start: transition.resumed, and the original start time (so the
        # elapsed time covers the killed agent's part too).
        tr = doc.get("transition") or {}
        s.expect(tr.get("resumed") is True, f"s8.restart: transition.resumed is {tr.get('resumed')!r}, expected true")
        el = tr.get("elapsed_seconds")
        s.expect(isinstance(el, (int, float)) and el > float((suite.runs.get("s8.restart") or Run()).secs or 0) + 1,
                 f"s8.restart: elapsed_seconds {el!r} does not include the time before the kill")
    run = s.run(suite, "s8.restart_human")
    if run is not None:
        s.expect(run.rc == 3, f"s8.restart_human: exit {run.rc}, expected 3")
        text = "\n".join(run.out + run.err)
        s.expect(re.search(r"in progress|already|resum|continu", text, re.I) is not None,
                 f"s8.restart_human does not say the transition was already in progress: {one_line(text)!r}")
    s.expect(s.fact(suite, "s8.stall_patch_loads") == "1", "graft_stall_patch is not loaded exactly once")
    doc = s.agent(suite, "s8.status", 0)
    check_status_matches_sysfs(s, "s8.status", doc, sysfs_patches(suite.facts.get("s8.sysfs")), release)
    if isinstance(doc, dict):
        p = {x.get("name"): x for x in doc.get("patches") or []}.get("graft_stall_patch", {})
        s.expect(p.get("transition") is True, f"s8.status: graft_stall_patch.transition is {p.get('transition')!r}, expected true")
    rc = s.fact(suite, "s8.carry_rc")
    carry = suite.runs.get("s8.carry") or Run()
    s.expect(rc == "0", f"the agent started again did not carry on to Applied after the release: exit {rc}: "
             f"{one_line(' '.join(carry.out) + ' ' + ' '.join((suite.runs.get('s8.carry_err') or Run()).out))}")
    cdoc = carry.doc
    s.expect(isinstance(cdoc, dict) and cdoc.get("state") == "Applied", f"carried-on apply ended in state {cdoc.get('state') if isinstance(cdoc, dict) else None!r}, expected Applied")

    # 5 release and apply again
    s = new(5, "release the rig, apply again: Applied", [suite], ["s5"])
    s.expect(s.fact(suite, "s5.carrier_running_before_release") == "yes", "the waiting apply had already ended before the rig was released")
    s.agent(suite, "s5.revert_carried", 0, "Reverted", patch="graft_stall_patch")
    s.expect(s.fact(suite, "s5.holders_after_release") == "0", f"tasks still hold in the rig after the release: {suite.facts.get('s5.holders_after_release')}")
    s.agent(suite, "s5.apply", 0, "Applied", changed=True, patch="graft_stall_patch")
    sysfs = sysfs_patches(s.fact(suite, "s5.sysfs"))
    st = sysfs.get("graft_stall_patch", {})
    s.expect(st.get("enabled") is True and st.get("transition") is False, f"sysfs after apply: {suite.facts.get('s5.sysfs')!r}")
    rd = s.fact(suite, "s5.rig_read") or ""
    s.expect("is patched" in rd, f"/proc/graft_stall_rig prints {rd!r}: the patched graft_rig_hold() does not run")
    s.agent(suite, "s5.cleanup", 0, "Reverted", patch="graft_stall_patch")
    mods = s.fact(suite, "s5.modules_after_cleanup") or ""
    s.expect("graft_" not in mods, f"modules left after cleanup: {mods}")
    s.info.append(f"reader: {suite.facts.get('s5.reader_output', '?')}")

    # 6 cumulative
    s = new(6, f"cumulative graft_cumulative replaces graft_demo, replaced module unloaded {replace_note.replace('status reports it', 'status says replace=true')}", [suite], ["s6"])
    s.agent(suite, "s6.demo", 0, "Applied", patch="graft_demo")
    s.agent(suite, "s6.apply", 0, "Applied", changed=True, patch="graft_cumulative")
    c = s.fact(suite, "s6.cmdline")
    s.expect(c == "graft_cumulative: patched", f"/proc/cmdline is {c!r}, expected 'graft_cumulative: patched'")
    sysfs = sysfs_patches(s.fact(suite, "s6.sysfs"))
    s.expect(list(sysfs) == ["graft_cumulative"], f"sysfs patches {sorted(sysfs)}, expected only graft_cumulative")
    s.expect(s.fact(suite, "s6.demo_module") == "unloaded", "the replaced graft_demo module is still loaded")
    doc = s.agent(suite, "s6.status", 0)
    if isinstance(doc, dict):
        p = {x.get("name"): x for x in doc.get("patches") or []}.get("graft_cumulative", {})
        if replace_expectation(release, None) == "exposed":
            # 6.11+: the kernel says it is a replace patch.
            s.expect(sysfs.get("graft_cumulative", {}).get("replace") is True, f"{release}: sysfs graft_cumulative/replace is not 1")
            s.expect(p.get("replace") is True, f"s6.status: graft_cumulative.replace is {p.get('replace')!r}; {release} exposes it, expected true")
        else:
            # 6.1: no replace attribute; the agent must not guess.
            s.expect("replace" in p and p.get("replace") is None,
                     f"s6.status: graft_cumulative.replace is {p.get('replace', '(missing)')!r}; {release} does not expose it, expected null")
    s.agent(suite, "s6.revert", 0, "Reverted", patch="graft_cumulative")
    s.expect(s.fact(suite, "s6.cmdline_after_revert") == boot_cmdline, "/proc/cmdline not restored after reverting graft_cumulative")
    mods = s.fact(suite, "s6.modules_after_revert") or ""
    s.expect("graft_" not in mods, f"modules left: {mods}")

    # 7 bad input
    s = new(7, "bad input refused before any kernel call (exit 2); unsigned module under sig_enforce (exit 1)", [suite, sig], ["s7", "sig"])
    for key, words in (("s7.not_livepatch", r"livepatch"), ("s7.vermagic", r"vermagic|release|kernel"),
                       ("s7.sha256", r"sha256|checksum|digest")):
        s.agent(suite, key, 2)
        run = suite.runs.get(key)
        if run is not None and run.rc is not None:
            s.expect(re.search(words, run.message(), re.I) is not None, f"{key}: message {one_line(run.message())!r} does not say why")
    run = s.run(suite, "s7.not_livepatch_human")
    if run is not None:
        s.expect(run.rc == 2 and any(l.startswith("error:") for l in run.err), f"s7.not_livepatch_human: exit {run.rc}, stderr {one_line(' | '.join(run.err))!r}")
    mods = s.fact(suite, "s7.modules_after") or ""
    s.expect("graft_" not in mods, f"modules loaded after bad input: {mods}")
    s.expect(s.fact(suite, "s7.new_kernel_messages") == "", f"the kernel logged about the bad modules: {suite.facts.get('s7.new_kernel_messages')!r}")
    s.expect(s.fact(sig, "sig.enforce_param") == "Y", f"module.sig_enforce is {sig.facts.get('sig.enforce_param')!r} in the sig_enforce boot")
    for key in ("sig.apply", "sig.apply_human"):
        s.agent(sig, key, 1)
        run = sig.runs.get(key)
        if run is not None and run.rc is not None:
            s.expect(re.search(r"must be signed|signed", run.message(), re.I) is not None,
                     f"{key}: message {one_line(run.message())!r} does not say the module must be signed")
    s.expect(s.fact(sig, "sig.module") == "unloaded", "graft_demo loaded despite sig_enforce")

    out.sort(key=lambda x: x.number)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--release", required=True)
    ap.add_argument("--boot", action="append", required=True, help="NAME:QEMU_RC:LOG")
    args = ap.parse_args()
    boots = {}
    for spec in args.boot:
        name, rc, path = spec.split(":", 2)
        boots[name] = parse(name, int(rc), path)
    suite, sig = boots["suite"], boots["sigenforce"]
    result = scenarios(suite, sig)
    print(f"kernel {args.release}")
    passed = 0
    for s in result:
        ok = not s.problems
        passed += ok
        secs = s.secs()
        print(f"{'PASS' if ok else 'FAIL'} {s.number} {s.title} ({secs:.1f}s in the agent)")
        for p in s.problems:
            print(f"       - {p}")
    for b in boots.values():
        if b.problem():
            print(f"console tail of the {b.name} boot ({b.log}):")
            for l in b.tail:
                print(f"       | {l}")
    failed = len(result) - passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
