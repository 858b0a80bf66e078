//! The baselines the agent is measured against: plain polling of
//! `/sys/kernel/livepatch/<patch>/transition` at a fixed interval, as kpatch
//! does once a second. Each runs as its own process (`graft-bench poll ...`)
//! so that every setting is started, timed and charged the same way.
//!
//! apply:  finit_module, then read `transition` at once and every INTERVAL until 0.
//! revert: write 0 to `enabled`, read `transition` every INTERVAL until 0 (or
//!         the directory is gone), then, like graft-agent, wait for the
//!         directory to go (every 10 ms) and delete_module (retried every 20 ms).

use std::ffi::CString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clock::{mono_ns, schedstat_ns};

/// What a baseline run prints on stdout (one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BaselineReport {
    /// CLOCK_MONOTONIC ns just before finit_module / the write to `enabled`.
    pub call_ns: i64,
    /// ... and when that call returned.
    pub return_ns: i64,
    /// When a read of `transition` first said the transition is over.
    pub notice_ns: i64,
    /// Reads of `transition`.
    pub polls: u64,
    /// CPU this thread used in the polling loop, and the loop's wall time.
    pub poll_cpu_ns: u64,
    pub poll_wall_ns: u64,
}

pub struct Poller {
    sys: PathBuf,
    interval: Duration,
    deadline: Instant,
}

impl Poller {
    pub fn new(sys: impl Into<PathBuf>, interval: Duration, timeout: Duration) -> Self {
        Self {
            sys: sys.into(),
            interval,
            deadline: Instant::now() + timeout,
        }
    }

    fn patch_dir(&self, name: &str) -> PathBuf {
        self.sys.join("kernel/livepatch").join(name)
    }

    pub fn apply(&self, module: &Path, name: &str) -> anyhow::Result<BaselineReport> {
        let file = File::open(module)?;
        let params = CString::default();
        let call_ns = mono_ns();
        nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty())
            .map_err(|e| anyhow::anyhow!("finit_module {}: {e}", module.display()))?;
        let return_ns = mono_ns();
        self.poll(name, true, call_ns, return_ns)
    }

    pub fn revert(&self, name: &str) -> anyhow::Result<BaselineReport> {
        let dir = self.patch_dir(name);
        let call_ns = mono_ns();
        fs::write(dir.join("enabled"), "0")
            .map_err(|e| anyhow::anyhow!("writing {}/enabled: {e}", dir.display()))?;
        let return_ns = mono_ns();
        let report = self.poll(name, false, call_ns, return_ns)?;
        while dir.exists() {
            self.check_deadline("the patch directory to go")?;
            std::thread::sleep(Duration::from_millis(10));
        }
        let cname = CString::new(name)?;
        loop {
            match nix::kmod::delete_module(&cname, nix::kmod::DeleteModuleFlags::O_NONBLOCK) {
                Ok(()) | Err(nix::errno::Errno::ENOENT) => break,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EBUSY) => {
                    self.check_deadline("the module to be free")?;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => anyhow::bail!("delete_module {name}: {e}"),
            }
        }
        Ok(report)
    }

    fn check_deadline(&self, what: &str) -> anyhow::Result<()> {
        if Instant::now() >= self.deadline {
            anyhow::bail!("timed out waiting for {what}");
        }
        Ok(())
    }

    /// Reads `transition` now and every interval until it says 0; the report
    /// of a call made at `call_ns` that returned at `return_ns`.
    fn poll(
        &self,
        name: &str,
        patching: bool,
        call_ns: i64,
        return_ns: i64,
    ) -> anyhow::Result<BaselineReport> {
        let path = self.patch_dir(name).join("transition");
        let cpu0 = schedstat_ns("/proc/thread-self/schedstat").unwrap_or(0);
        let t0 = mono_ns();
        let mut polls = 0;
        loop {
            polls += 1;
            match fs::read(&path) {
                Ok(v) if v.first() == Some(&b'0') => break,
                Ok(_) => {}
                // Unpatching ends with the directory going away (ENOENT, or
                // ENODEV while sysfs removes it).
                Err(e) if graft_agent::kernel::linux::gone(&e) && !patching => break,
                Err(e) => anyhow::bail!("reading {}: {e}", path.display()),
            }
            self.check_deadline("the transition to end")?;
            std::thread::sleep(self.interval);
        }
        let notice = mono_ns();
        let cpu1 = schedstat_ns("/proc/thread-self/schedstat").unwrap_or(0);
        Ok(BaselineReport {
            call_ns,
            return_ns,
            notice_ns: notice,
            polls,
            poll_cpu_ns: cpu1.saturating_sub(cpu0),
            poll_wall_ns: (notice - t0).max(0) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs whose transition flips to 0 after a while: the poller
    /// notices after the flip and counts its reads (no timing bounds: CI
    /// machines are busy).
    #[test]
    fn poll_notices_after_the_flip() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("kernel/livepatch/p");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("transition"), "1\n").unwrap();
        let flip = dir.join("transition");
        let flipper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(120));
            let before_write = mono_ns();
            fs::write(flip, "0\n").unwrap();
            before_write
        });
        let poller = Poller::new(
            root.path(),
            Duration::from_millis(50),
            Duration::from_secs(10),
        );
        let report = poller.poll("p", true, 1, 2).unwrap();
        let flipped = flipper.join().unwrap();
        assert!(report.notice_ns >= flipped);
        assert!(report.polls >= 2, "{} polls", report.polls);
        assert!(report.poll_wall_ns >= 100_000_000);
        assert_eq!((report.call_ns, report.return_ns), (1, 2));
    }

    #[test]
    fn unpatching_ends_when_the_directory_goes() {
        let root = tempfile::tempdir().unwrap();
        let poller = Poller::new(
            root.path(),
            Duration::from_millis(1),
            Duration::from_secs(5),
        );
        assert_eq!(poller.poll("gone", false, 0, 0).unwrap().polls, 1);
        assert!(poller.poll("gone", true, 0, 0).is_err());
    }
}
