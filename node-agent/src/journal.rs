//! What the agent must remember across its own crash: which transitions it
//! started and when, and a lock that serialises its operations.
//!
//! The kernel allows one transition system-wide; the agent makes sure its
//! own invocations never race each other for it. The journal lives in a
//! directory that does not survive a reboot on real hosts (`/run/graft`),
//! just like the transitions it describes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Result};
use crate::kernel::{KernelKind, Target};

/// A transition the agent started (or resumed), written before the kernel is asked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TransitionRecord {
    pub patch: String,
    pub target: Target,
    /// Wall-clock start, milliseconds since the epoch.
    pub started_unix_ms: u64,
    /// The boot it belongs to: a record from an earlier boot means nothing.
    pub boot_id: String,
    /// When it counts as stalled, so `status` can say so after a restart.
    pub stall_after_ms: u64,
}

impl TransitionRecord {
    pub fn started(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.started_unix_ms)
    }

    pub fn elapsed(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.started())
            .unwrap_or_default()
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

/// Held while an operation runs; released when dropped, or by the kernel if we die.
#[derive(Debug)]
pub struct AgentLock {
    _file: Flock<File>,
}

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// `/run/graft` on a real host; inside the simulated kernel's directory for a simulation.
    pub fn default_for(kind: &KernelKind) -> Self {
        match kind {
            KernelKind::Linux => Self::new("/run/graft"),
            KernelKind::Simulated { dir } => Self::new(dir.join("agent-state")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn ensure(&self) -> Result<()> {
        fs::create_dir_all(self.path.join("transitions")).map_err(|e| {
            AgentError::kernel(
                format!("creating state directory {}", self.path.display()),
                e,
            )
        })
    }

    /// Takes the agent lock, waiting up to `deadline` for another invocation to finish.
    pub fn lock(&self, deadline: Instant, mut on_wait: impl FnMut(&str)) -> Result<AgentLock> {
        self.ensure()?;
        let lock_path = self.path.join("agent.lock");
        let mut told = false;
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&lock_path)
                .map_err(|e| AgentError::kernel(format!("opening {}", lock_path.display()), e))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut locked) => {
                    // The holder's pid, for the message another invocation prints.
                    let _ = locked.set_len(0);
                    let _ = writeln!(&mut *locked, "{}", std::process::id());
                    return Ok(AgentLock { _file: locked });
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    if Instant::now() >= deadline {
                        return Err(AgentError::AgentLocked { lock: lock_path });
                    }
                    if !told {
                        let holder = fs::read_to_string(&lock_path).unwrap_or_default();
                        on_wait(&format!(
                            "waiting for another graft-agent operation (pid {}) to finish",
                            holder.trim()
                        ));
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err((_, e)) => {
                    return Err(AgentError::kernel(
                        format!("locking {}", lock_path.display()),
                        io::Error::from(e),
                    ));
                }
            }
        }
    }

    fn record_path(&self, patch: &str) -> PathBuf {
        self.path.join("transitions").join(format!("{patch}.json"))
    }

    pub fn record(&self, record: &TransitionRecord) -> Result<()> {
        self.ensure()?;
        let path = self.record_path(&record.patch);
        let tmp = path.with_extension("json.tmp");
        let write = || -> io::Result<()> {
            fs::write(&tmp, serde_json::to_vec(record)?)?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| AgentError::kernel(format!("writing {}", path.display()), e))
    }

    /// The record of a transition of `patch` in this boot, if any.
    pub fn load(&self, patch: &str, boot_id: &str) -> Option<TransitionRecord> {
        let text = fs::read_to_string(self.record_path(patch)).ok()?;
        let record: TransitionRecord = serde_json::from_str(&text).ok()?;
        (record.boot_id == boot_id).then_some(record)
    }

    pub fn clear(&self, patch: &str) {
        let _ = fs::remove_file(self.record_path(patch));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_and_belong_to_one_boot() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let record = TransitionRecord {
            patch: "p".into(),
            target: Target::Patched,
            started_unix_ms: 1000,
            boot_id: "boot-a".into(),
            stall_after_ms: 60_000,
        };
        state.record(&record).unwrap();
        assert_eq!(state.load("p", "boot-a"), Some(record));
        assert_eq!(state.load("p", "boot-b"), None);
        state.clear("p");
        assert_eq!(state.load("p", "boot-a"), None);
    }

    #[test]
    fn a_second_lock_waits_and_then_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let _held = state.lock(Instant::now(), |_| {}).unwrap();
        let mut said = Vec::new();
        let err = state
            .lock(Instant::now() + Duration::from_millis(120), |m| {
                said.push(m.to_string())
            })
            .unwrap_err();
        assert!(matches!(err, AgentError::AgentLocked { .. }));
        assert_eq!(said.len(), 1);
        assert!(said[0].contains(&format!("pid {}", std::process::id())));
    }
}
