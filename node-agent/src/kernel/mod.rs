//! The kernel interface: one contract, two implementations.
//!
//! [`linux::LinuxKernel`] talks to a real kernel through syscalls, sysfs and
//! procfs (with configurable roots so tests can point it at fake trees).
//! [`sim::SimKernel`] is a simulated kernel whose state lives in a directory,
//! so that several `graft-agent` invocations see one consistent kernel.
//! Everything above this module (apply, revert, the stall policy, cluster mode)
//! is written once against [`Kernel`].

pub mod kmsg;
pub mod linux;
pub mod proc_scan;
pub mod sim;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// Which kernel the agent talks to. Every output names it, so that a
/// simulation is never mistaken for the real thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum KernelKind {
    Linux,
    Simulated { dir: PathBuf },
}

impl KernelKind {
    pub fn is_simulated(&self) -> bool {
        matches!(self, Self::Simulated { .. })
    }
}

/// The direction of a transition, as `patch_state` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Unpatched = 0,
    Patched = 1,
}

impl Target {
    pub fn from_enabled(enabled: bool) -> Self {
        if enabled {
            Self::Patched
        } else {
            Self::Unpatched
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Patched => "patched",
            Self::Unpatched => "unpatched",
        }
    }
}

/// One function a patch replaces: `<object>/<function>,<sympos>` in sysfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatchedFunction {
    pub name: String,
    pub sympos: u32,
}

/// One object (`vmlinux` or a module) a patch touches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatchedObject {
    pub name: String,
    /// `<object>/patched`: only on 6.1+ kernels; `None` where the kernel does not expose it.
    pub patched: Option<bool>,
    pub functions: Vec<PatchedFunction>,
}

/// What `/sys/kernel/livepatch/<patch>/` says, reading only attributes that exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatchSysfs {
    pub name: String,
    pub enabled: bool,
    pub transition: bool,
    /// `replace` (6.11+); `None` where the kernel does not expose it.
    pub replace: Option<bool>,
    /// `stack_order` (6.14+); `None` where the kernel does not expose it.
    pub stack_order: Option<u32>,
    /// Whether the kernel has the `signal` attribute (4.15 to 5.0).
    pub signal_supported: bool,
    pub objects: Vec<PatchedObject>,
}

impl PatchSysfs {
    pub fn function_names(&self) -> impl Iterator<Item = &str> {
        self.objects
            .iter()
            .flat_map(|o| o.functions.iter().map(|f| f.name.as_str()))
    }
}

/// The two attributes a transition watcher reads on every look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PatchProgress {
    pub enabled: bool,
    pub transition: bool,
}

/// Reads one patch's [`PatchProgress`] on each call; see [`Kernel::progress_reader`].
pub type ProgressReader<'k> = Box<dyn FnMut() -> KernelResult<Option<PatchProgress>> + 'k>;

/// A loaded module, from `/sys/module/<name>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadedModule {
    pub name: String,
    pub refcnt: u32,
    pub srcversion: Option<String>,
    /// Taint flag K: the kernel marks every loaded livepatch module with it.
    pub livepatch: bool,
    /// `initstate`: `live` once its init has returned.
    pub live: bool,
}

/// One thread's `patch_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskPatchState {
    pub pid: u32,
    pub tid: u32,
    /// -1 when no transition runs, else 0 (unpatched) or 1 (patched).
    pub state: i8,
}

/// How a kernel writes fail: the raw errno, so callers can name the reason.
pub type KernelResult<T> = io::Result<T>;

/// The operations the agent needs from a kernel. Implementations read what
/// exists and never assume an attribute that a kernel version lacks.
pub trait Kernel: Send + Sync {
    fn kind(&self) -> KernelKind;

    /// `uname -r` of the running kernel.
    fn release(&self) -> KernelResult<String>;
    /// `/proc/sys/kernel/random/boot_id`: changes on every boot.
    fn boot_id(&self) -> KernelResult<String>;
    /// Whether `/sys/kernel/livepatch` exists.
    fn livepatch_supported(&self) -> bool;
    /// Whether the kernel refuses unsigned modules (`module.sig_enforce`).
    fn signatures_enforced(&self) -> bool;

    /// Names of the directories under `/sys/kernel/livepatch`.
    fn patch_names(&self) -> KernelResult<Vec<String>>;
    /// A patch's sysfs state, or `None` when its directory does not exist.
    fn patch(&self, name: &str) -> KernelResult<Option<PatchSysfs>>;
    /// Only `enabled` and `transition` of a patch, or `None` when its directory
    /// does not exist: what following a transition needs on every look, for a
    /// fraction of [`Kernel::patch`]'s reads.
    fn patch_progress(&self, name: &str) -> KernelResult<Option<PatchProgress>> {
        Ok(self.patch(name)?.map(|p| PatchProgress {
            enabled: p.enabled,
            transition: p.transition,
        }))
    }
    /// [`Kernel::patch_progress`] of one patch, again and again, for a watcher
    /// that looks many times. The real kernel keeps both attributes open and
    /// re-reads them in place; the default asks `patch_progress` each time.
    fn progress_reader<'k>(&'k self, name: &str) -> ProgressReader<'k> {
        let name = name.to_string();
        Box::new(move || self.patch_progress(&name))
    }
    /// Writes `enabled`: 0 to disable (or cancel a patching transition), 1 to
    /// cancel an unpatching transition.
    fn set_enabled(&self, name: &str, enabled: bool) -> KernelResult<()>;
    /// Writes 1 to `force`. Dangerous: see the stall policy.
    fn force(&self, name: &str) -> KernelResult<()>;
    /// Writes 1 to `signal` (kernels 4.15 to 5.0 only).
    fn signal(&self, name: &str) -> KernelResult<()>;

    /// `finit_module(2)`; for a livepatch this enables it and starts the transition.
    fn load_module(&self, path: &Path, info: &crate::module_file::ModuleInfo) -> KernelResult<()>;
    /// `delete_module(2)` without waiting.
    fn unload_module(&self, name: &str) -> KernelResult<()>;
    fn loaded_module(&self, name: &str) -> KernelResult<Option<LoadedModule>>;
    /// Every loaded module carrying the livepatch taint.
    fn loaded_livepatch_modules(&self) -> KernelResult<Vec<LoadedModule>>;

    /// `patch_state` of every thread on the system.
    fn task_states(&self) -> KernelResult<Vec<TaskPatchState>>;
    fn task_comm(&self, pid: u32, tid: u32) -> KernelResult<String>;
    /// `/proc/<pid>/task/<tid>/stack` as text.
    fn task_stack(&self, pid: u32, tid: u32) -> KernelResult<String>;
    /// `/proc/<pid>/cgroup` as text.
    fn task_cgroup(&self, pid: u32) -> KernelResult<String>;
    fn task_is_kthread(&self, pid: u32) -> KernelResult<bool>;

    /// A source of wake-ups that hint the kernel may have finished a
    /// transition. Hints only: callers always confirm from sysfs.
    fn transition_hints(&self) -> Box<dyn TransitionHints>;
}

/// Wakes a waiter when the kernel may have moved on.
pub trait TransitionHints: Send {
    /// Blocks for at most `timeout`; returns `true` when woken by a hint.
    fn wait(&mut self, timeout: Duration) -> bool;
    /// Short description for logs and `status` (e.g. "kernel log", "polling only").
    fn describe(&self) -> &'static str;
}

/// Hints that never come: the waiter relies on its own polling schedule.
#[derive(Debug, Default)]
pub struct NoHints;

impl TransitionHints for NoHints {
    fn wait(&mut self, timeout: Duration) -> bool {
        std::thread::sleep(timeout);
        false
    }
    fn describe(&self) -> &'static str {
        "polling only"
    }
}

/// Parses `--kernel linux` or `--kernel sim:DIR`.
pub fn open(spec: &str) -> Result<Box<dyn Kernel>, String> {
    match spec {
        "linux" => Ok(Box::new(linux::LinuxKernel::new())),
        _ => match spec.strip_prefix("sim:") {
            Some(dir) if !dir.is_empty() => sim::SimKernel::open(Path::new(dir))
                .map(|k| Box::new(k) as Box<dyn Kernel>)
                .map_err(|e| e.to_string()),
            _ => Err(format!(
                "--kernel must be `linux` or `sim:DIR` (a simulated kernel's directory), got {spec:?}"
            )),
        },
    }
}
