//! The processes the suite starts (graft-operator, graft-agent): each logs to
//! its own file, is recorded in a pid file (so `run.sh` can kill what a
//! killed suite left behind), and is killed when its handle is dropped.

use std::{
    ffi::OsStr,
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::process::{Child, Command};

/// Environment variables a child must not inherit: they would change which
/// node, namespace, kernel or identity it acts for.
const SCRUBBED_ENV: &[&str] = &[
    "NODE_NAME",
    "POD_NAME",
    "POD_NAMESPACE",
    "GRAFT_KERNEL",
    "GRAFT_STATE_DIR",
];

/// A child process of the suite.
#[derive(Debug)]
pub struct Proc {
    /// A short name (`operator`, `agent e2e-x-s1-n1`).
    pub name: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    child: Child,
    pid: i32,
}

impl Proc {
    /// Starts `program` with `args`; `env` is added to a scrubbed copy of the
    /// suite's environment.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[impl AsRef<OsStr>],
        env: &[(&str, &OsStr)],
        log: PathBuf,
        pid_file: &Path,
    ) -> Result<Self> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening the log {}", log.display()))?;
        let err = out.try_clone()?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        for var in SCRUBBED_ENV {
            command.env_remove(var);
        }
        // Plain logs: they are read by people and searched by the scenarios.
        command.env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .context("a just-started child has no pid")?;
        let mut pids = OpenOptions::new()
            .create(true)
            .append(true)
            .open(pid_file)
            .with_context(|| format!("opening {}", pid_file.display()))?;
        writeln!(pids, "{pid}")?;
        Ok(Self {
            name: name.to_owned(),
            log,
            child,
            pid,
        })
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn signal(&self, signal: Signal) {
        // The child is ours and not yet reaped (we hold it), so the pid is its own.
        let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), signal);
    }

    /// SIGKILL, as a crash or an OOM kill would end it; waits for the exit.
    pub async fn kill(mut self) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        self.signal(Signal::SIGKILL);
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// SIGTERM (what the kubelet sends), then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        self.signal(Signal::SIGTERM);
        let waited = tokio::time::timeout(grace, self.child.wait()).await;
        match waited {
            Ok(status) => status.ok(),
            Err(_) => self.kill().await,
        }
    }

    /// The log so far (for assertions on what the process said).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Creates (truncates) the pid file.
pub fn new_pid_file(path: &Path) -> Result<()> {
    File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(())
}
