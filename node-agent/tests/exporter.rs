//! `graft-agent exporter` as Prometheus (or Ansible's monitoring) meets it:
//! the binary serves the kernel's livepatch metrics over HTTP, read at scrape
//! time, without Kubernetes. Here over a simulated kernel with a stalled
//! transition that an earlier `graft-agent apply` left running.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn agent() -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("graft-agent"));
    c.env_remove("GRAFT_KERNEL").env_remove("GRAFT_STATE_DIR");
    c
}

fn run_ok(args: &[&str]) -> std::process::Output {
    let out = agent().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "graft-agent {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Stops the exporter when the test ends, however it ends.
struct Exporter(Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(addr: &str, path: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[test]
fn exporter_reports_a_stalled_transition_from_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let kernel = format!("sim:{d}");
    let module = dir.path().join("stall.ko");
    run_ok(&["sim", "init", d, "--tasks", "12"]);
    run_ok(&[
        "sim",
        "add-task",
        d,
        "--comm",
        "holder",
        "--kthread",
        "--sleeps-in",
        "held_fn",
    ]);
    run_ok(&[
        "sim",
        "build-module",
        "--name",
        "graft_stall",
        "--release",
        "6.1.0-sim-amd64",
        "--patches",
        "vmlinux:held_fn",
        "-o",
        module.to_str().unwrap(),
    ]);
    // apply gives up after its timeout; the kernel keeps the transition going.
    let out = agent()
        .args(["--kernel", &kernel, "apply", module.to_str().unwrap()])
        .args(["--stall-after", "1s", "--timeout", "1500ms"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let child = agent()
        .args(["--kernel", &kernel, "exporter", "--listen", "127.0.0.1:0"])
        .args(["--node-name", "test-node"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut exporter = Exporter(child);
    let mut line = String::new();
    BufReader::new(exporter.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    assert!(line.contains("SIMULATED"), "{line}");

    let (code, text) = get(&addr, "/metrics");
    assert_eq!(code, 200, "{text}");
    let sample = |name: &str, labels: &[&str]| -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| labels.iter().all(|lab| l.contains(lab)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let labels = [r#"patch="graft_stall""#, r#"node="test-node""#];
    assert_eq!(
        sample("graft_transition_stalled", &labels),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample("graft_transition_in_progress", &labels), Some(1.0));
    assert_eq!(
        sample("graft_transition_blocking_tasks", &labels),
        Some(1.0)
    );
    assert_eq!(
        sample(
            "graft_patch_state",
            &[labels[0], labels[1], r#"state="Stalled""#]
        ),
        Some(1.0)
    );
    assert!(sample("graft_transition_started_timestamp_seconds", &labels).is_some());
    assert_eq!(
        sample("graft_agent_info", &[r#"simulated="true""#, labels[1]]),
        Some(1.0)
    );
    for name in [
        "graft_patch_state",
        "graft_transition_stalled",
        "graft_transition_in_progress",
        "graft_transition_started_timestamp_seconds",
        "graft_transition_blocking_tasks",
        "graft_agent_info",
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }

    assert_eq!(get(&addr, "/livez").0, 200);
    assert_eq!(get(&addr, "/readyz").0, 200);
    assert_eq!(get(&addr, "/nope").0, 404);

    // Release the task: the next scrape sees the patch applied.
    run_ok(&["sim", "release-task", d, "--comm", "holder"]);
    let (_, text) = get(&addr, "/metrics");
    assert!(
        text.lines().any(|l| l.starts_with("graft_patch_state{")
            && l.contains(r#"state="Applied""#)
            && l.ends_with(" 1")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("graft_transition_stalled{") && l.ends_with(" 0")),
        "{text}"
    );
}
