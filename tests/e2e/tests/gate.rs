//! The suite's gate, checked without any cluster: without GRAFT_E2E=1 it
//! says it skipped and exits 0 (touching nothing); with GRAFT_E2E=1 and no
//! reachable cluster it fails loudly, every scenario counted as failed.

use std::process::{Command, Output};

fn suite(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_graft-e2e"));
    command
        .args(args)
        .env_remove("GRAFT_E2E")
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("HOME", std::env::temp_dir().join("graft-e2e-gate-no-home"));
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the suite binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A kubeconfig whose API server is a closed port on this machine.
fn unreachable_kubeconfig(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: c, cluster: {{server: \"https://127.0.0.1:{port}\", insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: u, user: {{token: not-a-token}}}}]\n\
             contexts: [{{name: x, context: {{cluster: c, user: u}}}}]\n\
             current-context: x\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn without_graft_e2e_it_skips_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = unreachable_kubeconfig(&dir);
    for env in [
        vec![("KUBECONFIG", kubeconfig.to_str().unwrap())],
        vec![
            ("GRAFT_E2E", "0"),
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ],
        vec![],
    ] {
        let out = suite(&[], &env);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{env:?}: {out:?}");
        assert!(stdout.contains("SKIPPED"), "{stdout}");
        assert!(stdout.contains("GRAFT_E2E is not 1"), "{stdout}");
        assert!(stdout.contains("tests/e2e/run.sh"), "{stdout}");
        assert!(!stdout.contains("passed"), "a skip is not a pass: {stdout}");
    }
}

#[test]
fn with_graft_e2e_and_no_reachable_cluster_every_scenario_fails() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = unreachable_kubeconfig(&dir);
    let out = suite(
        &[],
        &[
            ("GRAFT_E2E", "1"),
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ],
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    for n in 1..=9 {
        assert!(stdout.contains(&format!("scenario {n}: FAIL")), "{stdout}");
    }
    assert!(
        stdout.trim_end().ends_with("0 passed, 9 failed"),
        "{stdout}"
    );
    assert!(stderr.contains("no cluster"), "{stderr}");
    assert!(stderr.contains("does not answer"), "{stderr}");
}

#[test]
fn with_graft_e2e_and_no_kubeconfig_it_fails_loudly() {
    let out = suite(
        &["2"],
        &[
            ("GRAFT_E2E", "1"),
            ("KUBECONFIG", "/nonexistent/graft-e2e/kubeconfig"),
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout.contains("scenario 2: FAIL"), "{stdout}");
    assert!(
        stdout.trim_end().ends_with("0 passed, 1 failed"),
        "{stdout}"
    );
    assert!(text(&out.stderr).contains("KUBECONFIG"), "{out:?}");
}

#[test]
fn listing_and_bad_usage_need_no_cluster() {
    let out = suite(&["--list"], &[]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).lines().count(), 9, "{out:?}");
    let out = suite(&["12"], &[("GRAFT_E2E", "1")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
