//! Footprint of an idle `graft-agent run`: resident memory and wake-ups.
//!
//! The agent runs over a simulated kernel (`--kernel sim:DIR`) against
//! [`crate::fakeapi::FakeApi`]. Its LivePatchNode asks for one patch (a
//! simulated module from a hostPath), so the agent has done real work — fetch,
//! verify, load, follow the transition, write the status — before it goes
//! idle. Once the status says Applied, the benchmark waits a settling time
//! (tokio's blocking threads linger 10 s after their last job), then counts,
//! over the window, the voluntary context switches of every agent thread
//! (`/proc/PID/task/*/status`): each is the thread going to sleep again after
//! a wake-up. No API request reaches the agent in the window (the fake
//! server sends nothing, and counts what the agent sends).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use graft_crds::{
    DesiredState, LivePatchNode, LivePatchNodeSpec, ModuleSource, NodeModule, NodePatch,
    TransitionPolicy,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::clock::schedstat_ns;
use crate::fakeapi::FakeApi;

pub const NODE: &str = "bench-node";
const RELEASE: &str = "6.1.0-sim-amd64";
const LIVEPATCH: &str = "bench-idle";
const MODULE: &str = "graft_bench_idle";

#[derive(Debug, Clone)]
pub struct IdleConfig {
    pub agent: PathBuf,
    pub work: PathBuf,
    pub settle: Duration,
    pub window: Duration,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ThreadCount {
    pub comm: String,
    pub voluntary: u64,
    pub nonvoluntary: u64,
    pub cpu_ns: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleResult {
    pub window_s: f64,
    pub settle_s: f64,
    /// From the agent's start to the status saying Applied.
    pub applied_after_s: f64,
    pub vm_rss_kib: u64,
    pub vm_hwm_kib: u64,
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    pub threads: usize,
    /// Voluntary context switches of all threads in the window.
    pub voluntary: u64,
    pub nonvoluntary: u64,
    pub voluntary_per_minute: f64,
    /// Same, in the settling time (after the apply, before the window).
    pub settle_voluntary: u64,
    /// Threads when the status said Applied, and when the window began.
    pub settle_threads: (usize, usize),
    pub cpu_ms: f64,
    /// Per thread (by tid) in the window.
    pub per_thread: BTreeMap<u32, ThreadCount>,
    /// Threads that started or ended during the window (their counts are partial).
    pub threads_changed: bool,
    pub api_requests_in_window: Vec<String>,
    pub status_writes: usize,
}

fn status_field(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Context switches and CPU time of every thread of `pid`.
pub fn thread_counts(pid: u32) -> BTreeMap<u32, ThreadCount> {
    let mut out = BTreeMap::new();
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in entries.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let dir = e.path();
        let Ok(status) = fs::read_to_string(dir.join("status")) else {
            continue;
        };
        out.insert(
            tid,
            ThreadCount {
                comm: fs::read_to_string(dir.join("comm"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default(),
                voluntary: status_field(&status, "voluntary_ctxt_switches:"),
                nonvoluntary: status_field(&status, "nonvoluntary_ctxt_switches:"),
                cpu_ns: schedstat_ns(&dir.join("schedstat").to_string_lossy()).unwrap_or(0),
            },
        );
    }
    out
}

fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{:?} failed: {}{}",
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The LivePatchNode the operator would write: one patch from a hostPath.
pub fn live_patch_node(host_path: &str, sha256: &str) -> Value {
    let spec = LivePatchNodeSpec {
        patches: vec![NodePatch {
            live_patch: LIVEPATCH.into(),
            live_patch_generation: Some(1),
            module: NodeModule {
                kernel_release: RELEASE.into(),
                source: ModuleSource {
                    host_path: Some(host_path.into()),
                    ..ModuleSource::default()
                },
                sha256: Some(sha256.into()),
            },
            desired_state: DesiredState::Enabled,
            transition: TransitionPolicy::default(),
        }],
    };
    let mut v = serde_json::to_value(LivePatchNode::new(NODE, spec)).unwrap_or(Value::Null);
    v["metadata"]["uid"] = json!("0b3e9c1a-graft-bench-idle");
    v["metadata"]["generation"] = json!(1);
    v["metadata"]["resourceVersion"] = json!("1");
    v
}

fn patch_state(status: &Value) -> Option<&str> {
    status["patches"]
        .as_array()?
        .iter()
        .find(|p| p["livePatch"] == LIVEPATCH)?["state"]
        .as_str()
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(cfg: &IdleConfig, log: &mut dyn FnMut(&str)) -> anyhow::Result<IdleResult> {
    let dir = cfg.work.join("idle");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let kernel = dir.join("kernel");
    let module = dir.join(format!("{MODULE}.ko"));
    run_checked(
        Command::new(&cfg.agent)
            .args(["sim", "init"])
            .arg(&kernel)
            .args(["--release", RELEASE]),
    )?;
    run_checked(
        Command::new(&cfg.agent)
            .args([
                "sim",
                "build-module",
                "--name",
                MODULE,
                "--release",
                RELEASE,
            ])
            .args(["--patches", "vmlinux:cmdline_proc_show"])
            .args(["--transition-time", "300ms", "-o"])
            .arg(&module),
    )?;
    let bytes = fs::read(&module)?;
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let host_path = module.to_string_lossy().into_owned();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let api = rt.block_on(FakeApi::start(live_patch_node(&host_path, &sha)))?;
    // Serve from a thread of our own while this one measures.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        rt.block_on(async {
            let _ = stop_rx.await;
        })
    });
    let kubeconfig = dir.join("kubeconfig");
    fs::write(&kubeconfig, api.kubeconfig())?;
    let agent_log = fs::File::create(dir.join("agent.log"))?;
    let started = Instant::now();
    let child = Command::new(&cfg.agent)
        .env("KUBECONFIG", &kubeconfig)
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("http_proxy")
        .arg("--kernel")
        .arg(format!("sim:{}", kernel.display()))
        .args(["run", "--node-name", NODE, "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(agent_log)
        .spawn()?;
    let pid = child.id();
    let child = Kill(child);
    log(&format!(
        "graft-agent run (pid {pid}) against the fake API server on {}",
        api.addr
    ));

    let applied = loop {
        if api
            .statuses()
            .iter()
            .any(|s| patch_state(s) == Some("Applied"))
        {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(120) {
            anyhow::bail!(
                "the agent did not report {LIVEPATCH} Applied within 120 s; see {}",
                dir.join("agent.log").display()
            );
        }
        if !Path::new(&format!("/proc/{pid}")).exists() {
            anyhow::bail!("the agent exited; see {}", dir.join("agent.log").display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    log(&format!(
        "status Applied after {:.2}s; settling {}s, then measuring {}s",
        applied.as_secs_f64(),
        cfg.settle.as_secs(),
        cfg.window.as_secs()
    ));
    let at_applied = thread_counts(pid);
    std::thread::sleep(cfg.settle);
    let before = thread_counts(pid);
    let window_start = Instant::now();
    std::thread::sleep(cfg.window);
    let after = thread_counts(pid);
    let window = window_start.elapsed();
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let requests = api.requests_since(window_start);
    let writes = api.statuses().len();
    drop(child);
    let _ = stop_tx.send(());
    let _ = server.join();

    // Threads present at both ends; one that ended meanwhile took its count with it.
    let delta = |a: &BTreeMap<u32, ThreadCount>, b: &BTreeMap<u32, ThreadCount>| -> u64 {
        b.iter()
            .map(|(tid, end)| {
                let start = a.get(tid).map_or(0, |t| t.voluntary);
                end.voluntary.saturating_sub(start)
            })
            .sum()
    };
    let mut per_thread = BTreeMap::new();
    for (tid, end) in &after {
        let start = before.get(tid).cloned().unwrap_or_default();
        per_thread.insert(
            *tid,
            ThreadCount {
                comm: end.comm.clone(),
                voluntary: end.voluntary - start.voluntary.min(end.voluntary),
                nonvoluntary: end.nonvoluntary - start.nonvoluntary.min(end.nonvoluntary),
                cpu_ns: end.cpu_ns.saturating_sub(start.cpu_ns),
            },
        );
    }
    let voluntary: u64 = per_thread.values().map(|t| t.voluntary).sum();
    let threads_changed = before.keys().ne(after.keys());
    Ok(IdleResult {
        window_s: window.as_secs_f64(),
        settle_s: cfg.settle.as_secs_f64(),
        applied_after_s: applied.as_secs_f64(),
        vm_rss_kib: status_field(&status, "VmRSS:"),
        vm_hwm_kib: status_field(&status, "VmHWM:"),
        rss_anon_kib: status_field(&status, "RssAnon:"),
        rss_file_kib: status_field(&status, "RssFile:"),
        threads: after.len(),
        voluntary,
        nonvoluntary: per_thread.values().map(|t| t.nonvoluntary).sum(),
        voluntary_per_minute: voluntary as f64 * 60.0 / window.as_secs_f64(),
        settle_voluntary: delta(&at_applied, &before),
        settle_threads: (at_applied.len(), before.len()),
        cpu_ms: per_thread.values().map(|t| t.cpu_ns).sum::<u64>() as f64 / 1e6,
        per_thread,
        threads_changed,
        api_requests_in_window: requests,
        status_writes: writes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_status_fields() {
        let s = "Name:\tx\nVmHWM:\t   9000 kB\nVmRSS:\t    8123 kB\nvoluntary_ctxt_switches:\t42\n";
        assert_eq!(status_field(s, "VmRSS:"), 8123);
        assert_eq!(status_field(s, "VmHWM:"), 9000);
        assert_eq!(status_field(s, "voluntary_ctxt_switches:"), 42);
        assert_eq!(status_field(s, "RssAnon:"), 0);
    }

    #[test]
    fn counts_this_process_threads() {
        let counts = thread_counts(std::process::id());
        assert!(!counts.is_empty());
    }

    #[test]
    fn the_live_patch_node_is_what_the_agent_expects() {
        let v = live_patch_node("/x/m.ko", &"a".repeat(64));
        let lpn: LivePatchNode = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(lpn.spec.patches.len(), 1);
        assert_eq!(v["metadata"]["name"], NODE);
        assert_eq!(
            v["spec"]["patches"][0]["module"]["source"]["hostPath"],
            "/x/m.ko"
        );
    }
}
