//! `graft-agent` as a person or Ansible runs it, over the simulated kernel:
//! every behaviour of the host command and every bad input it must refuse.

use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;

const RELEASE: &str = "6.1.0-sim-amd64";
const POD_UID: &str = "7f3c1a2e-9b4d-4c2a-8f1e-0123456789ab";
const CONTAINER: &str = "4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f";

struct Sim {
    dir: tempfile::TempDir,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

fn agent_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("graft-agent")
}

impl Sim {
    fn new(extra: &[&str]) -> Self {
        let sim = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        let mut args = vec!["sim", "init", sim.path_str(), "--tasks", "12"];
        args.extend_from_slice(extra);
        let r = sim.raw(&args);
        assert_eq!(r.code, 0, "{}", r.stderr);
        sim
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn path_str(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    fn raw(&self, args: &[&str]) -> Run {
        let out = Command::new(agent_bin())
            .args(args)
            .env_remove("GRAFT_KERNEL")
            .timeout(Duration::from_secs(60))
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `graft-agent --kernel sim:DIR ARGS`.
    fn agent(&self, args: &[&str]) -> Run {
        let kernel = format!("sim:{}", self.path_str());
        let mut all = vec!["--kernel", kernel.as_str()];
        all.extend_from_slice(args);
        self.raw(&all)
    }

    fn agent_json(&self, args: &[&str]) -> (i32, Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let r = self.agent(&all);
        let v = r.json();
        assert_eq!(
            v["simulation"], true,
            "every output says it is a simulation: {v}"
        );
        (r.code, v)
    }

    fn spawn(&self, args: &[&str]) -> Child {
        let kernel = format!("sim:{}", self.path_str());
        StdCommand::new(agent_bin())
            .args(["--kernel", &kernel, "--json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Builds a simulated module file; returns its path.
    fn module(&self, name: &str, extra: &[&str]) -> String {
        let out = self.path().join(format!("{name}.ko"));
        let out_str = out.to_str().unwrap().to_string();
        let mut args = vec![
            "sim",
            "build-module",
            "--name",
            name,
            "--release",
            RELEASE,
            "-o",
            &out_str,
        ];
        args.extend_from_slice(extra);
        let r = self.raw(&args);
        assert_eq!(r.code, 0, "{}", r.stderr);
        out_str
    }

    fn demo(&self) -> String {
        self.module(
            "graft_demo",
            &[
                "--patches",
                "vmlinux:cmdline_proc_show",
                "--transition-time",
                "200ms",
            ],
        )
    }

    fn stall_patch(&self) -> String {
        self.module(
            "graft_stall_patch",
            &[
                "--patches",
                "graft_stall_rig:graft_rig_hold",
                "--transition-time",
                "100ms",
            ],
        )
    }

    fn add_rig(&self) {
        let r = self.raw(&[
            "sim",
            "add-task",
            self.path_str(),
            "--comm",
            "graft_rig",
            "--kthread",
            "--sleeps-in",
            "graft_rig_hold",
            "--in-module",
            "graft_stall_rig",
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }

    fn add_pod_task(&self) {
        let r = self.raw(&[
            "sim",
            "add-task",
            self.path_str(),
            "--comm",
            "nginx",
            "--sleeps-in",
            "graft_rig_hold",
            "--pod-uid",
            POD_UID,
            "--container-id",
            CONTAINER,
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }

    fn release(&self, comm: &str) {
        let r = self.raw(&["sim", "release-task", self.path_str(), "--comm", comm]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }

    fn state(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.path().join("kernel.json")).unwrap())
            .unwrap()
    }

    /// Waits (bounded) until a spawned agent has started a transition in the kernel.
    fn wait_for_transition(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.state()["transition"].is_null() {
            assert!(
                std::time::Instant::now() < deadline,
                "no transition started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn loaded_modules(&self) -> Vec<String> {
        self.state()["modules"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    fn pending_injected_failures(&self) -> usize {
        self.state()["load_failures"].as_array().unwrap().len()
    }
}

// 1. Inspect before touching the kernel: every bad input refused with exit 2 and no kernel call.

#[test]
fn inspect_reports_a_loadable_livepatch() {
    let sim = Sim::new(&[]);
    let demo = sim.demo();
    let (code, v) = sim.agent_json(&["inspect", &demo]);
    assert_eq!(code, 0);
    assert_eq!(v["name"], "graft_demo");
    assert_eq!(v["livepatch"], true);
    assert_eq!(v["kernel_release"], RELEASE);
    assert_eq!(v["loadable"], true);
    assert_eq!(v["license"], "GPL");
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    assert!(v["size_bytes"].as_u64().unwrap() > 0);
    assert!(v["srcversion"].is_string());
}

/// Each bad input: refused with exit 2, a message naming the problem, and the
/// kernel untouched (an injected load failure would be consumed by any load).
#[test]
fn bad_modules_are_refused_before_any_kernel_call() {
    let sim = Sim::new(&[]);
    let demo = sim.demo();
    let dir = sim.path();
    std::fs::write(dir.join("script.ko"), "#!/bin/sh\necho not a module\n").unwrap();
    let no_modinfo = dir.join("nomodinfo.ko");
    // An ELF without .modinfo (the agent's own binary is one, but a debug
    // build of it is larger than any module may be).
    std::fs::write(
        &no_modinfo,
        graft_agent::module_file::write_module_elf(&[(".data", b"1234")]),
    )
    .unwrap();
    let plain = sim.module("ext4", &["--not-livepatch"]);
    let other_release = dir.join("other.ko");
    let r = sim.raw(&[
        "sim",
        "build-module",
        "--name",
        "graft_other",
        "--release",
        "6.12.95+deb12-amd64",
        "--patches",
        "vmlinux:f",
        "-o",
        other_release.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0);
    sim.raw(&["sim", "fail-next-load", sim.path_str(), "--errno", "EPERM"]);

    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["/nonexistent/graft.ko".into()],
            "cannot read module file",
        ),
        (vec![dir.to_str().unwrap().into()], "not a regular file"),
        (
            vec![dir.join("script.ko").to_str().unwrap().into()],
            "not a valid ELF",
        ),
        (
            vec![no_modinfo.to_str().unwrap().into()],
            "no .modinfo section",
        ),
        (vec![plain.clone()], "not a livepatch module"),
        (
            vec![other_release.to_str().unwrap().into()],
            "built for kernel 6.12.95+deb12-amd64, but this kernel is 6.1.0-sim-amd64",
        ),
        (
            vec![demo.clone(), "--sha256".into(), "0".repeat(64)],
            "sha256 mismatch",
        ),
        (
            vec![demo.clone(), "--sha256".into(), "xyz".into()],
            "64 hexadecimal digits",
        ),
        (
            vec![demo.clone(), "--on-stall".into(), "force".into()],
            "--on-stall force also needs --allow-force",
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["apply"];
        full.extend(args.iter().map(String::as_str));
        let r = sim.agent(&full);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(expected),
            "{args:?}: expected {expected:?} in {}",
            r.stderr
        );
        let (code, v) = sim.agent_json(&full);
        assert_eq!(code, 2);
        assert!(v["error"].as_str().unwrap().contains(expected), "{v}");
    }
    assert!(sim.loaded_modules().is_empty());
    assert_eq!(sim.pending_injected_failures(), 1, "no load was attempted");
}

#[test]
fn an_unsigned_module_on_a_kernel_that_enforces_signatures() {
    let sim = Sim::new(&["--sig-enforce"]);
    let demo = sim.demo();
    let (code, v) = sim.agent_json(&["inspect", &demo]);
    assert_eq!(code, 2, "{v}");
    assert_eq!(v["signed"], false);
    assert_eq!(v["loadable"], false);
    assert!(
        v["refusal"]
            .as_str()
            .unwrap()
            .contains("enforces module signatures"),
        "{v}"
    );
    // apply leaves the verdict to the kernel, which refuses with EKEYREJECTED.
    let (code, v) = sim.agent_json(&["apply", &demo]);
    assert_eq!(code, 1, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("must be signed"),
        "{v}"
    );
    assert!(sim.loaded_modules().is_empty());
}

#[test]
fn bad_durations_and_names_are_usage_errors() {
    let sim = Sim::new(&[]);
    let demo = sim.demo();
    let r = sim.agent(&["apply", &demo, "--stall-after", "soon"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not a duration"), "{}", r.stderr);
    let r = sim.agent(&["revert", "../etc"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not a patch name"), "{}", r.stderr);
    let r = sim.raw(&["--kernel", "qemu", "status"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--kernel must be `linux` or `sim:DIR`"),
        "{}",
        r.stderr
    );
    let r = sim.raw(&["--kernel", "sim:/nonexistent/sim", "status"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("graft-agent sim init"), "{}", r.stderr);
}

// 2. Load: the kernel's errno turned into reasons a person can act on.

#[test]
fn load_errors_name_the_reason() {
    let sim = Sim::new(&[]);
    let demo = sim.demo();
    for (errno, expected, category) in [
        ("EKEYREJECTED", "must be signed", "LoadRefused"),
        (
            "EPERM",
            "locked down, or the agent lacks CAP_SYS_MODULE",
            "LoadRefused",
        ),
        ("ENOEXEC", "rejected the module as invalid", "LoadRefused"),
        ("EINVAL", "rejected the module as invalid", "LoadRefused"),
        ("ENOENT", "unknown symbol or missing object", "LoadRefused"),
    ] {
        sim.raw(&["sim", "fail-next-load", sim.path_str(), "--errno", errno]);
        let (code, v) = sim.agent_json(&["apply", &demo]);
        assert_eq!(code, 1, "{errno}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains(expected),
            "{errno}: {v}"
        );
        assert_eq!(v["category"], category);
    }
    assert!(sim.loaded_modules().is_empty());
}

#[test]
fn a_module_name_taken_by_someone_else_is_looked_at_again_then_reported() {
    // EEXIST from the kernel: the agent looks again (someone may have loaded it
    // meanwhile); a name that stays taken without a patch is reported.
    let sim = Sim::new(&[]);
    let demo = sim.demo();
    sim.raw(&["sim", "fail-next-load", sim.path_str(), "--errno", "EEXIST"]);
    let (code, v) = sim.agent_json(&["apply", &demo]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(sim.loaded_modules(), vec!["graft_demo"]);
    assert_eq!(sim.agent(&["revert", "graft_demo"]).code, 0);

    for _ in 0..2 {
        sim.raw(&["sim", "fail-next-load", sim.path_str(), "--errno", "EEXIST"]);
    }
    let (code, v) = sim.agent_json(&["apply", &demo]);
    assert_eq!(code, 1, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("already loaded"),
        "{v}"
    );
}

// 3. Follow the transition; idempotence; --check.

#[test]
fn apply_follows_the_transition_and_is_idempotent() {
    let sim = Sim::new(&[]);
    let demo = sim.demo();
    let (code, v) = sim.agent_json(&["apply", &demo, "--check"]);
    assert_eq!(code, 0);
    assert_eq!(v["changed"], true);
    assert!(v["would"].as_str().unwrap().contains("load the module"));
    assert!(sim.loaded_modules().is_empty(), "--check changes nothing");

    let (code, v) = sim.agent_json(&["apply", &demo]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["state"], "Applied");
    assert_eq!(v["changed"], true);
    let took = v["transition"]["duration_seconds"].as_f64().unwrap();
    assert!(
        took >= 0.2,
        "the simulated transition takes 200ms, reported {took}"
    );

    let (code, v) = sim.agent_json(&["apply", &demo]);
    assert_eq!(code, 0);
    assert_eq!(v["changed"], false);
    assert_eq!(v["state"], "Applied");
    let (code, v) = sim.agent_json(&["apply", &demo, "--check"]);
    assert_eq!((code, v["changed"].clone()), (0, Value::Bool(false)));

    let (_, status) = sim.agent_json(&["status"]);
    assert_eq!(status["patches"][0]["name"], "graft_demo");
    assert_eq!(status["patches"][0]["state"], "Applied");
    assert_eq!(status["patches"][0]["enabled"], true);
    assert_eq!(
        status["patches"][0]["objects"][0]["functions"][0]["name"],
        "cmdline_proc_show"
    );
}

#[test]
fn a_different_build_of_a_loaded_patch_is_refused() {
    let sim = Sim::new(&[]);
    let demo = sim.demo();
    assert_eq!(sim.agent(&["apply", &demo]).code, 0);
    let other = sim.module("graft_demo", &["--patches", "vmlinux:other_function"]);
    let r = sim.agent(&["apply", &other]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("different build"), "{}", r.stderr);
    assert!(
        r.stderr.contains("graft-agent revert graft_demo"),
        "{}",
        r.stderr
    );
}

// 4 and 5. A stall names its blockers and pods; each policy behaves as described.

#[test]
fn a_stall_names_the_blocking_task_its_function_and_its_pod() {
    let sim = Sim::new(&[]);
    sim.add_rig();
    sim.add_pod_task();
    let patch = sim.stall_patch();
    let (code, v) = sim.agent_json(&[
        "apply",
        &patch,
        "--stall-after",
        "300ms",
        "--timeout",
        "800ms",
    ]);
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["state"], "Stalled");
    assert!(v["message"].as_str().unwrap().contains("stalled after"));
    let blocking = v["blocking"].as_array().unwrap();
    assert_eq!(blocking.len(), 2, "{v}");
    let rig = blocking.iter().find(|b| b["comm"] == "graft_rig").unwrap();
    assert_eq!(rig["function"], "graft_rig_hold");
    assert_eq!(rig["in_patched_function"], true);
    assert_eq!(rig["kthread"], true);
    let nginx = blocking.iter().find(|b| b["comm"] == "nginx").unwrap();
    assert_eq!(nginx["pod"]["pod_uid"], POD_UID);
    assert_eq!(nginx["pod"]["container_id"], CONTAINER);
    assert_eq!(nginx["pod"]["runtime"], "containerd");
    assert!(v["notes"][0].as_str().unwrap().contains("about every 15 s"));

    let (code, b) = sim.agent_json(&["blocking"]);
    assert_eq!(code, 0);
    assert_eq!(b["patch"], "graft_stall_patch");
    assert_eq!(b["blocking"].as_array().unwrap().len(), 2);
    let (_, status) = sim.agent_json(&["status"]);
    assert_eq!(status["patches"][0]["state"], "Stalled");
    assert_eq!(status["transition"]["patch"], "graft_stall_patch");

    // Human output names them too.
    let r = sim.agent(&["blocking", "graft_stall_patch"]);
    assert!(
        r.stdout.contains("graft_rig_hold (patched)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains(POD_UID), "{}", r.stdout);
    assert!(r.stderr.contains("SIMULATION"), "{}", r.stderr);
}

#[test]
fn stall_policy_wait_keeps_waiting_until_released() {
    let sim = Sim::new(&[]);
    sim.add_rig();
    let patch = sim.stall_patch();
    let child = sim.spawn(&[
        "apply",
        &patch,
        "--stall-after",
        "200ms",
        "--timeout",
        "20s",
    ]);
    sim.wait_for_transition();
    std::thread::sleep(Duration::from_millis(600));
    sim.release("graft_rig");
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["state"], "Applied");
    assert!(v["transition"]["duration_seconds"].as_f64().unwrap() >= 0.6);
}

#[test]
fn stall_policy_revert_reverses_and_unloads() {
    let sim = Sim::new(&[]);
    sim.add_rig();
    let patch = sim.stall_patch();
    let (code, v) = sim.agent_json(&[
        "apply",
        &patch,
        "--stall-after",
        "300ms",
        "--on-stall",
        "revert",
        "--timeout",
        "10s",
    ]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["state"], "Reverted");
    assert_eq!(v["unloaded"][0], "graft_stall_patch");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("reverted as --on-stall revert asked")
    );
    assert!(sim.loaded_modules().is_empty());
    assert!(sim.state()["transition"].is_null());
}

#[test]
fn stall_policy_force_needs_allow_force_and_is_loud() {
    let sim = Sim::new(&[]);
    sim.add_rig();
    let patch = sim.stall_patch();
    let (code, v) = sim.agent_json(&[
        "apply",
        &patch,
        "--stall-after",
        "200ms",
        "--on-stall",
        "force",
        "--allow-force",
    ]);
    assert_eq!(code, 5, "{v}");
    assert_eq!(v["forced"], true);
    assert_eq!(v["state"], "Applied");
    assert!(v["message"].as_str().unwrap().contains("FORCED"));
    assert!(v["message"].as_str().unwrap().contains("rebooted"));
    // A forced module can never be unloaded: revert says so instead of pretending.
    let (code, v) = sim.agent_json(&["revert", "graft_stall_patch", "--timeout", "1s"]);
    assert_eq!(code, 1, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("reboot the node"),
        "{v}"
    );
}

#[test]
fn signal_after_is_used_where_the_kernel_has_a_signal_attribute() {
    let sim = Sim::new(&["--like", "4.19"]);
    sim.add_pod_task();
    let patch = sim.stall_patch();
    let (code, v) = sim.agent_json(&[
        "apply",
        &patch,
        "--stall-after",
        "150ms",
        "--signal-after",
        "400ms",
        "--timeout",
        "10s",
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["state"], "Applied");
    assert!(
        v["notes"]
            .to_string()
            .contains("signalled the blocking tasks"),
        "{v}"
    );
}

#[test]
fn signal_after_on_a_modern_kernel_says_the_kernel_signals_by_itself() {
    let sim = Sim::new(&["--signal-cycle", "1s"]);
    sim.add_pod_task();
    let patch = sim.stall_patch();
    let (code, v) = sim.agent_json(&[
        "apply",
        &patch,
        "--signal-after",
        "200ms",
        "--timeout",
        "10s",
    ]);
    assert_eq!(
        code, 0,
        "the kernel's own fake signal frees the user task: {v}"
    );
    assert!(
        v["notes"]
            .to_string()
            .contains("signals blocking tasks by itself"),
        "{v}"
    );
}

// 6. Revert and unload; atomic replace cleans up what it replaced.

#[test]
fn revert_disables_follows_and_unloads() {
    let sim = Sim::new(&[]);
    let demo = sim.demo();
    assert_eq!(sim.agent(&["apply", &demo]).code, 0);
    let (code, v) = sim.agent_json(&["revert", "graft_demo", "--check"]);
    assert_eq!((code, v["changed"].clone()), (0, Value::Bool(true)));
    assert_eq!(sim.loaded_modules(), vec!["graft_demo"]);
    let (code, v) = sim.agent_json(&["revert", "graft_demo"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["state"], "Reverted");
    assert_eq!(v["unloaded"][0], "graft_demo");
    assert!(sim.loaded_modules().is_empty());
    let (code, v) = sim.agent_json(&["revert", "graft_demo"]);
    assert_eq!(code, 0);
    assert_eq!(v["changed"], false);
}

#[test]
fn a_cumulative_patch_replaces_and_the_replaced_module_is_unloaded() {
    let sim = Sim::new(&["--like", "6.12"]);
    let demo = sim.demo();
    assert_eq!(sim.agent(&["apply", &demo]).code, 0);
    let cumulative = sim.module(
        "graft_cumulative",
        &[
            "--patches",
            "vmlinux:cmdline_proc_show",
            "--replace",
            "--transition-time",
            "100ms",
        ],
    );
    let (code, v) = sim.agent_json(&["apply", &cumulative]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["unloaded"], serde_json::json!(["graft_demo"]));
    assert_eq!(sim.loaded_modules(), vec!["graft_cumulative"]);
    let (_, status) = sim.agent_json(&["status"]);
    assert_eq!(status["patches"][0]["replace"], true);
}

// 7. One transition at a time.

#[test]
fn another_transition_in_progress_is_waited_for_then_reported() {
    let sim = Sim::new(&[]);
    sim.add_rig();
    let patch = sim.stall_patch();
    let demo = sim.demo();
    assert_eq!(
        sim.agent(&[
            "apply",
            &patch,
            "--stall-after",
            "100ms",
            "--timeout",
            "300ms"
        ])
        .code,
        3
    );
    let r = sim.agent(&["apply", &demo, "--timeout", "500ms"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("another transition is in progress (patch graft_stall_patch)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("waiting"),
        "it says it waits: {}",
        r.stderr
    );

    // When the other transition ends in time, the apply goes through.
    let child = sim.spawn(&["apply", &demo, "--timeout", "20s"]);
    std::thread::sleep(Duration::from_millis(500));
    sim.release("graft_rig");
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sim.loaded_modules(),
        vec!["graft_demo", "graft_stall_patch"]
    );
}

#[test]
fn concurrent_agent_invocations_are_serialised() {
    let sim = Sim::new(&[]);
    sim.add_rig();
    let patch = sim.stall_patch();
    // The first invocation holds the agent lock while it waits for the rig.
    let first = sim.spawn(&["apply", &patch, "--timeout", "30s"]);
    sim.wait_for_transition();
    let r = sim.agent(&["revert", "graft_stall_patch", "--timeout", "200ms"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr.contains("another graft-agent operation"),
        "{}",
        r.stderr
    );
    sim.release("graft_rig");
    assert_eq!(first.wait_with_output().unwrap().status.code(), Some(0));
}

// 8. Survive its own crash.

#[test]
fn a_killed_agent_is_picked_up_by_the_next_one_without_loading_twice() {
    let sim = Sim::new(&[]);
    sim.add_rig();
    let patch = sim.stall_patch();
    let mut child = sim.spawn(&["apply", &patch, "--stall-after", "200ms"]);
    sim.wait_for_transition();
    let first_started = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(400));
    child.kill().unwrap();
    child.wait().unwrap();

    let (code, status) = sim.agent_json(&["status"]);
    assert_eq!(code, 0);
    assert_eq!(status["transition"]["patch"], "graft_stall_patch");
    assert_eq!(status["patches"][0]["state"], "Stalled");
    assert!(
        status["transition"]["started"].is_string(),
        "the journal kept the start: {status}"
    );

    let resumed = sim.spawn(&[
        "apply",
        &patch,
        "--stall-after",
        "200ms",
        "--timeout",
        "20s",
    ]);
    std::thread::sleep(
        (first_started + Duration::from_millis(1100))
            .saturating_duration_since(std::time::Instant::now()),
    );
    sim.release("graft_rig");
    let out = resumed.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["state"], "Applied");
    assert_eq!(v["transition"]["resumed"], true);
    assert!(
        v["transition"]["duration_seconds"].as_f64().unwrap() >= 1.0,
        "the duration counts from the first start: {v}"
    );
}

// 9. Kernel differences.

#[test]
fn only_attributes_the_kernel_exposes_are_reported() {
    for (like, replace, stack_order) in [
        ("6.1", Value::Null, Value::Null),
        ("6.12", Value::Bool(false), Value::Null),
        ("6.14", Value::Bool(false), serde_json::json!(1)),
    ] {
        let sim = Sim::new(&["--like", like]);
        let demo = sim.demo();
        assert_eq!(sim.agent(&["apply", &demo]).code, 0);
        let (_, status) = sim.agent_json(&["status", "graft_demo"]);
        assert_eq!(status["patches"][0]["replace"], replace, "{like}");
        assert_eq!(status["patches"][0]["stack_order"], stack_order, "{like}");
    }
    let sim = Sim::new(&["--like", "6.1"]);
    let demo = sim.demo();
    assert_eq!(sim.agent(&["apply", &demo]).code, 0);
    let r = sim.agent(&["status"]);
    assert!(
        r.stdout.contains("does not expose the `replace` attribute"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_kernel_without_livepatch_says_so() {
    let sim = Sim::new(&["--no-livepatch"]);
    let demo = sim.demo();
    let (code, v) = sim.agent_json(&["status"]);
    assert_eq!(code, 0);
    assert_eq!(v["kernel"]["livepatch_supported"], false);
    assert!(
        v["kernel"]["message"]
            .as_str()
            .unwrap()
            .contains("does not support livepatch")
    );
    let (code, v) = sim.agent_json(&["apply", &demo]);
    assert_eq!(code, 1);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("this kernel does not support livepatch")
    );
}

#[test]
fn blocking_without_a_transition_says_nothing_is_blocked() {
    let sim = Sim::new(&[]);
    let (code, v) = sim.agent_json(&["blocking"]);
    assert_eq!(code, 0);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("no transition is in progress")
    );
    assert_eq!(v["blocking"], serde_json::json!([]));
}
