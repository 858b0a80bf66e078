//! A simulated kernel, for tests, demos, the Ansible example and simulated fleets.
//!
//! Its whole state is one JSON file, `<DIR>/kernel.json`, guarded by a lock
//! file, so several `graft-agent` processes see one consistent kernel. Time is
//! evaluated lazily: a transition records when it started, and each reader
//! works out from the clock how far it has got. No daemon runs.
//!
//! It follows the real kernel's rules where the agent depends on them: one
//! transition at a time (EBUSY), writing `enabled` reverses a transition in
//! progress, a disabled patch's directory disappears when unpatching ends, a
//! replace patch removes the patches it supersedes but leaves their modules
//! loaded, a task sleeping in a patched function keeps its old state until it
//! leaves (user tasks are freed by the periodic fake signal, kthreads are not),
//! and a forced patch's module can never be removed.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{
    Kernel, KernelKind, KernelResult, LoadedModule, PatchSysfs, PatchedFunction, PatchedObject,
    TaskPatchState, TransitionHints,
};
use crate::module_file::ModuleInfo;

const STATE_FILE: &str = "kernel.json";
const LOCK_FILE: &str = "kernel.lock";
/// How long a simulated transition takes when the module does not say.
pub const DEFAULT_TRANSITION_MS: u64 = 1500;

/// What `graft-agent sim build-module` embeds in a module's `.graft.sim` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct SimModuleSpec {
    /// Object name (`vmlinux` or a module) to the functions the patch replaces.
    #[serde(default)]
    pub objects: BTreeMap<String, Vec<String>>,
    /// An atomic-replace (cumulative) patch.
    #[serde(default)]
    pub replace: bool,
    /// How long the transition takes when nothing blocks it.
    #[serde(default)]
    pub transition_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub struct SimTask {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    #[serde(default)]
    pub kthread: bool,
    /// `/proc/<pid>/cgroup` text.
    #[serde(default = "default_cgroup")]
    pub cgroup: String,
    /// A function this task sleeps in; it blocks any transition of a patch that
    /// replaces the function until it is released.
    #[serde(default)]
    pub sleeps_in: Option<String>,
    /// The module that function lives in, for the stack trace.
    #[serde(default)]
    pub sleeps_in_module: Option<String>,
    #[serde(default)]
    pub released: bool,
}

fn default_cgroup() -> String {
    "0::/system.slice\n".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub struct SimPatch {
    pub enabled: bool,
    pub replace: bool,
    pub objects: BTreeMap<String, Vec<String>>,
    pub transition_ms: u64,
    /// A patch an atomic replace superseded: disabled, its directory freed
    /// by a kernel worker at this time (simulated ms), as the real kernel
    /// frees replaced patches asynchronously after the transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freed_at_ms: Option<u64>,
}

/// How long after an atomic replace completes the replaced patches'
/// directories stay (disabled) before the simulated kernel frees them.
pub const REPLACED_PATCH_FREE_MS: u64 = 100;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub struct SimModule {
    pub srcversion: Option<String>,
    pub livepatch: bool,
    /// Set once `force` was written: the module can never be removed.
    #[serde(default)]
    pub forced: bool,
    /// The sysfs directory, while it exists.
    pub patch: Option<SimPatch>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub struct SimTransition {
    pub patch: String,
    /// 1 patching, 0 unpatching; flips when the transition is reversed.
    pub target: i8,
    /// The state every task had when the transition began.
    pub from: i8,
    /// When the current direction began (start, or the last reversal).
    pub phase_started_ms: u64,
    pub started_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub struct InjectedLoadFailure {
    /// Only loads of this module fail; any module when absent.
    pub module: Option<String>,
    pub errno: i32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub struct SimAttributes {
    /// `<object>/patched` (6.1+).
    pub patched: bool,
    /// `replace` (6.11+).
    pub replace: bool,
    /// `stack_order` (6.14+).
    pub stack_order: bool,
    /// `signal` (4.15 to 5.0); such kernels send no fake signals by themselves.
    pub signal: bool,
}

impl Default for SimAttributes {
    /// Debian 12's 6.1 kernel.
    fn default() -> Self {
        Self {
            patched: true,
            replace: false,
            stack_order: false,
            signal: false,
        }
    }
}

/// The documented state file, `<DIR>/kernel.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub struct SimState {
    pub release: String,
    pub boot_id: String,
    pub livepatch: bool,
    /// `module.sig_enforce=1`: unsigned modules fail with EKEYREJECTED.
    #[serde(default)]
    pub sig_enforce: bool,
    #[serde(default)]
    pub attributes: SimAttributes,
    /// The kernel's fake-signal period (about 15 s since 5.1); 0 = never.
    pub signal_cycle_ms: u64,
    pub tasks: Vec<SimTask>,
    #[serde(default)]
    pub modules: BTreeMap<String, SimModule>,
    #[serde(default)]
    pub transition: Option<SimTransition>,
    #[serde(default)]
    pub load_failures: Vec<InjectedLoadFailure>,
    /// Kernel log lines, like `dmesg`.
    #[serde(default)]
    pub log: Vec<String>,
}

/// Options of `graft-agent sim init`.
#[derive(Debug, Clone)]
pub struct SimInit {
    pub release: String,
    pub tasks: u32,
    pub livepatch: bool,
    pub sig_enforce: bool,
    pub attributes: SimAttributes,
    pub signal_cycle: Duration,
}

impl Default for SimInit {
    fn default() -> Self {
        Self {
            release: "6.1.0-sim-amd64".into(),
            tasks: 40,
            livepatch: true,
            sig_enforce: false,
            attributes: SimAttributes::default(),
            signal_cycle: Duration::from_secs(15),
        }
    }
}

impl SimState {
    pub fn new(init: &SimInit) -> Self {
        let mut tasks = vec![
            SimTask::host(1, "systemd", false),
            SimTask::host(2, "kthreadd", true),
        ];
        for (i, pid) in (0..init.tasks.saturating_sub(2)).zip(10..) {
            tasks.push(match i % 4 {
                0 => SimTask::host(pid, &format!("kworker/{}:0", i / 4), true),
                1 => SimTask::host(pid, "sshd", false),
                2 => SimTask::host(pid, "containerd", false),
                _ => SimTask::host(pid, "bash", false),
            });
        }
        Self {
            release: init.release.clone(),
            boot_id: new_boot_id(),
            livepatch: init.livepatch,
            sig_enforce: init.sig_enforce,
            attributes: init.attributes,
            signal_cycle_ms: if init.attributes.signal {
                0
            } else {
                init.signal_cycle.as_millis() as u64
            },
            tasks,
            modules: BTreeMap::new(),
            transition: None,
            load_failures: Vec::new(),
            log: Vec::new(),
        }
    }

    fn next_pid(&self) -> u32 {
        self.tasks.iter().map(|t| t.pid).max().unwrap_or(1) + 1
    }

    fn functions_of(&self, patch: &str) -> Vec<String> {
        self.modules
            .get(patch)
            .and_then(|m| m.patch.as_ref())
            .map(|p| p.objects.values().flatten().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether a task is pinned to its old state at `now`. A task sleeping in
    /// an original function blocks patching it; it does not block unpatching,
    /// which waits only for tasks inside the new code.
    fn is_held(&self, task: &SimTask, functions: &[String], tr: &SimTransition, now: u64) -> bool {
        let Some(f) = &task.sleeps_in else {
            return false;
        };
        if tr.from != 0 {
            return false;
        }
        if task.released || !functions.contains(f) {
            return false;
        }
        // The kernel's fake signal wakes user tasks sleeping interruptibly; kthreads stay.
        let freed_by_signal = !task.kthread
            && self.signal_cycle_ms > 0
            && now >= tr.started_ms + self.signal_cycle_ms;
        !freed_by_signal
    }

    /// Each task's patch_state at `now`.
    fn task_state_at(&self, index: usize, now: u64) -> i8 {
        let Some(tr) = &self.transition else {
            return -1;
        };
        let task = &self.tasks[index];
        let functions = self.functions_of(&tr.patch);
        if self.is_held(task, &functions, tr, now) {
            return tr.from;
        }
        let duration = self
            .modules
            .get(&tr.patch)
            .and_then(|m| m.patch.as_ref())
            .map_or(DEFAULT_TRANSITION_MS, |p| p.transition_ms);
        // Tasks switch one after another over the transition's duration.
        let switch_at =
            tr.phase_started_ms + duration * (index as u64 + 1) / self.tasks.len().max(1) as u64;
        if now >= switch_at {
            tr.target
        } else {
            1 - tr.target
        }
    }

    /// Ends the transition when every task has reached its target. Returns whether anything changed.
    fn advance(&mut self, now: u64) -> bool {
        let freed = self.free_replaced_patches(now);
        let Some(tr) = self.transition.clone() else {
            return freed;
        };
        if (0..self.tasks.len()).any(|i| self.task_state_at(i, now) != tr.target) {
            return freed;
        }
        self.finish_transition(&tr, now);
        true
    }

    /// Removes the directories of replaced patches whose time has come.
    fn free_replaced_patches(&mut self, now: u64) -> bool {
        let mut freed = false;
        for module in self.modules.values_mut() {
            if module
                .patch
                .as_ref()
                .and_then(|p| p.freed_at_ms)
                .is_some_and(|at| now >= at)
            {
                module.patch = None;
                freed = true;
            }
        }
        freed
    }

    fn finish_transition(&mut self, tr: &SimTransition, now: u64) {
        self.transition = None;
        if tr.target == 1 {
            self.log
                .push(format!("livepatch: '{}': patching complete", tr.patch));
            let replace = self
                .modules
                .get(&tr.patch)
                .and_then(|m| m.patch.as_ref())
                .is_some_and(|p| p.replace);
            if replace {
                // The replaced patches are disabled now and their directories
                // go a moment later; their modules stay loaded.
                for (name, module) in self.modules.iter_mut() {
                    if *name != tr.patch
                        && let Some(patch) = module.patch.as_mut()
                    {
                        patch.enabled = false;
                        patch.freed_at_ms = Some(now + REPLACED_PATCH_FREE_MS);
                    }
                }
            }
        } else {
            self.log
                .push(format!("livepatch: '{}': unpatching complete", tr.patch));
            if let Some(m) = self.modules.get_mut(&tr.patch) {
                m.patch = None;
            }
        }
    }

    /// When the running transition will end if nothing changes, or `None` if it is blocked.
    fn predicted_end_ms(&self, now: u64) -> Option<u64> {
        let tr = self.transition.as_ref()?;
        let functions = self.functions_of(&tr.patch);
        let mut end = tr.phase_started_ms;
        for task in &self.tasks {
            if self.is_held(task, &functions, tr, now) {
                if tr.from == tr.target {
                    continue;
                }
                if !task.kthread && self.signal_cycle_ms > 0 {
                    end = end.max(tr.started_ms + self.signal_cycle_ms);
                    continue;
                }
                return None;
            }
        }
        let duration = self
            .modules
            .get(&tr.patch)
            .and_then(|m| m.patch.as_ref())
            .map_or(DEFAULT_TRANSITION_MS, |p| p.transition_ms);
        Some(end.max(tr.phase_started_ms + duration))
    }
}

impl SimTask {
    fn host(pid: u32, comm: &str, kthread: bool) -> Self {
        Self {
            pid,
            tid: pid,
            comm: comm.into(),
            kthread,
            cgroup: if kthread {
                "0::/\n".into()
            } else {
                default_cgroup()
            },
            sleeps_in: None,
            sleeps_in_module: None,
            released: false,
        }
    }

    fn stack(&self, held: bool) -> String {
        let mut s = String::from("[<0>] __schedule+0x2d1/0x8a0\n[<0>] schedule+0x5e/0xd0\n");
        match (&self.sleeps_in, held) {
            (Some(f), true) => {
                let module = self
                    .sleeps_in_module
                    .as_ref()
                    .map(|m| format!(" [{m}]"))
                    .unwrap_or_default();
                s.push_str(&format!("[<0>] {f}+0x3a/0x60{module}\n"));
            }
            _ => s.push_str("[<0>] do_nanosleep+0x88/0x170\n[<0>] hrtimer_nanosleep+0xc7/0x1b0\n"),
        }
        s.push_str(if self.kthread {
            "[<0>] kthread+0xe8/0x110\n[<0>] ret_from_fork+0x1f/0x30\n"
        } else {
            "[<0>] do_syscall_64+0x55/0xb0\n[<0>] entry_SYSCALL_64_after_hwframe+0x6e/0xd8\n"
        });
        s
    }
}

/// A task to add with `graft-agent sim add-task`.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    pub comm: String,
    pub kthread: bool,
    pub sleeps_in: Option<String>,
    pub sleeps_in_module: Option<String>,
    pub cgroup: Option<String>,
    /// A pod UID and container ID: the cgroup is then written as a systemd/containerd kubelet would.
    pub pod: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct SimKernel {
    dir: PathBuf,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn new_boot_id() -> String {
    // Unique enough for a simulation: time and pid, shaped like the kernel's UUID.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let x = nanos ^ ((std::process::id() as u128) << 64);
    let h = format!("{x:032x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl SimKernel {
    /// Opens an existing simulated kernel.
    pub fn open(dir: &Path) -> io::Result<Self> {
        if !dir.join(STATE_FILE).is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} is not a simulated kernel (no {STATE_FILE}); create one with `graft-agent sim init {}`",
                    dir.display(),
                    dir.display()
                ),
            ));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Creates (or recreates) a simulated kernel in `dir`.
    pub fn init(dir: &Path, init: &SimInit) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let kernel = Self {
            dir: dir.to_path_buf(),
        };
        let _lock = kernel.lock()?;
        kernel.save(&SimState::new(init))?;
        Ok(kernel)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> io::Result<Flock<File>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(LOCK_FILE))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| errno(e))
    }

    fn load(&self) -> io::Result<SimState> {
        let text = fs::read_to_string(self.dir.join(STATE_FILE))?;
        serde_json::from_str(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", self.dir.join(STATE_FILE).display()),
            )
        })
    }

    fn save(&self, state: &SimState) -> io::Result<()> {
        // Write then rename, so a reader never sees half a file.
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
        fs::rename(tmp, self.dir.join(STATE_FILE))
    }

    /// Runs `f` on the current state, advanced to now, and saves what changed.
    pub fn with_state<T>(
        &self,
        f: impl FnOnce(&mut SimState, u64) -> io::Result<T>,
    ) -> io::Result<T> {
        let _lock = self.lock()?;
        let mut state = self.load()?;
        let before = state.clone();
        let now = now_ms();
        state.advance(now);
        let result = f(&mut state, now);
        if state != before {
            self.save(&state)?;
        }
        result
    }

    /// A read-only view of the state advanced to now.
    pub fn snapshot(&self) -> io::Result<SimState> {
        self.with_state(|s, _| Ok(s.clone()))
    }

    pub fn add_task(&self, task: NewTask) -> io::Result<SimTask> {
        self.with_state(|state, _| {
            let pid = state.next_pid();
            let cgroup = match (&task.pod, &task.cgroup) {
                (_, Some(c)) => format!("{}\n", c.trim_end()),
                (Some((uid, cid)), None) => format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid}.scope\n",
                    uid.replace('-', "_")
                ),
                (None, None) if task.kthread => "0::/\n".into(),
                (None, None) => default_cgroup(),
            };
            let new = SimTask {
                pid,
                tid: pid,
                comm: task.comm,
                kthread: task.kthread,
                cgroup,
                sleeps_in: task.sleeps_in,
                sleeps_in_module: task.sleeps_in_module,
                released: false,
            };
            state.tasks.push(new.clone());
            Ok(new)
        })
    }

    /// Lets every task named `comm` leave the function it sleeps in.
    pub fn release_task(&self, comm: &str) -> io::Result<usize> {
        self.with_state(|state, now| {
            let mut released = 0;
            for task in state.tasks.iter_mut().filter(|t| t.comm == comm) {
                task.released = true;
                released += 1;
            }
            state.advance(now);
            Ok(released)
        })
    }

    /// Makes the next load (of `module`, or of any module) fail with `errno`.
    pub fn fail_next_load(&self, module: Option<String>, errno: i32) -> io::Result<()> {
        self.with_state(|state, _| {
            state
                .load_failures
                .push(InjectedLoadFailure { module, errno });
            Ok(())
        })
    }

    /// A new boot: new boot ID, no modules, no transition; tasks that were released sleep again.
    pub fn reboot(&self) -> io::Result<String> {
        self.with_state(|state, _| {
            state.boot_id = new_boot_id();
            state.modules.clear();
            state.transition = None;
            state.log.clear();
            Ok(state.boot_id.clone())
        })
    }

    /// The kernel log, like `dmesg`.
    pub fn log(&self) -> io::Result<Vec<String>> {
        Ok(self.snapshot()?.log)
    }
}

impl Kernel for SimKernel {
    fn kind(&self) -> KernelKind {
        KernelKind::Simulated {
            dir: self.dir.clone(),
        }
    }

    fn release(&self) -> KernelResult<String> {
        Ok(self.snapshot()?.release)
    }

    fn boot_id(&self) -> KernelResult<String> {
        Ok(self.snapshot()?.boot_id)
    }

    fn livepatch_supported(&self) -> bool {
        self.snapshot().is_ok_and(|s| s.livepatch)
    }

    fn signatures_enforced(&self) -> bool {
        self.snapshot().is_ok_and(|s| s.sig_enforce)
    }

    fn patch_names(&self) -> KernelResult<Vec<String>> {
        let state = self.snapshot()?;
        Ok(state
            .modules
            .iter()
            .filter(|(_, m)| m.patch.is_some())
            .map(|(n, _)| n.clone())
            .collect())
    }

    fn patch(&self, name: &str) -> KernelResult<Option<PatchSysfs>> {
        let state = self.snapshot()?;
        let Some(patch) = state.modules.get(name).and_then(|m| m.patch.as_ref()) else {
            return Ok(None);
        };
        let in_transition = state.transition.as_ref().is_some_and(|t| t.patch == name);
        let attrs = state.attributes;
        Ok(Some(PatchSysfs {
            name: name.to_string(),
            enabled: patch.enabled,
            transition: in_transition,
            replace: attrs.replace.then_some(patch.replace),
            // Patches stack in load order; the simulation approximates it by name.
            stack_order: attrs.stack_order.then(|| {
                state
                    .modules
                    .iter()
                    .filter(|(_, m)| m.patch.is_some())
                    .position(|(n, _)| n == name)
                    .map_or(1, |p| p as u32 + 1)
            }),
            signal_supported: attrs.signal,
            objects: patch
                .objects
                .iter()
                .map(|(object, functions)| PatchedObject {
                    name: object.clone(),
                    patched: attrs.patched.then_some(patch.enabled || in_transition),
                    functions: functions
                        .iter()
                        .map(|f| PatchedFunction {
                            name: f.clone(),
                            sympos: 1,
                        })
                        .collect(),
                })
                .collect(),
        }))
    }

    fn set_enabled(&self, name: &str, enabled: bool) -> KernelResult<()> {
        self.with_state(|state, now| {
            let Some(patch) = state.modules.get_mut(name).and_then(|m| m.patch.as_mut()) else {
                return Err(errno(Errno::ENOENT));
            };
            if patch.enabled == enabled {
                return Err(errno(Errno::EINVAL));
            }
            match &mut state.transition {
                Some(tr) if tr.patch == name => {
                    // Reverse the transition in progress.
                    patch.enabled = enabled;
                    tr.target = 1 - tr.target;
                    tr.phase_started_ms = now;
                }
                Some(_) => return Err(errno(Errno::EBUSY)),
                None if !enabled => {
                    patch.enabled = false;
                    state.transition = Some(SimTransition {
                        patch: name.to_string(),
                        target: 0,
                        from: 1,
                        phase_started_ms: now,
                        started_ms: now,
                    });
                }
                // A disabled patch cannot be enabled again (kernels since 5.1).
                None => return Err(errno(Errno::EINVAL)),
            }
            state.advance(now);
            Ok(())
        })
    }

    fn force(&self, name: &str) -> KernelResult<()> {
        self.with_state(|state, now| {
            let Some(tr) = state.transition.clone() else {
                return Err(errno(Errno::EINVAL));
            };
            // Like the kernel: every task is marked switched, and every patch
            // module becomes unremovable.
            for module in state.modules.values_mut().filter(|m| m.patch.is_some()) {
                module.forced = true;
            }
            if !state.modules.contains_key(name) {
                return Err(errno(Errno::ENOENT));
            }
            state.finish_transition(&tr, now);
            Ok(())
        })
    }

    fn signal(&self, name: &str) -> KernelResult<()> {
        self.with_state(|state, now| {
            if !state.attributes.signal {
                return Err(errno(Errno::ENOENT));
            }
            let Some(tr) = state.transition.clone() else {
                return Err(errno(Errno::EINVAL));
            };
            if tr.patch != name {
                return Err(errno(Errno::EINVAL));
            }
            // A signal frees user tasks sleeping interruptibly.
            let functions = state.functions_of(name);
            for task in state.tasks.iter_mut() {
                if !task.kthread
                    && task
                        .sleeps_in
                        .as_ref()
                        .is_some_and(|f| functions.contains(f))
                {
                    task.released = true;
                }
            }
            state.advance(now);
            Ok(())
        })
    }

    fn load_module(&self, _path: &Path, info: &ModuleInfo) -> KernelResult<()> {
        let spec: SimModuleSpec = match &info.sim_section {
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad {}: {e}", crate::module_file::SIM_SECTION),
                )
            })?,
            None => SimModuleSpec::default(),
        };
        self.with_state(|state, now| {
            if let Some(i) = state
                .load_failures
                .iter()
                .position(|f| f.module.as_ref().is_none_or(|m| *m == info.name))
            {
                let failure = state.load_failures.remove(i);
                return Err(io::Error::from_raw_os_error(failure.errno));
            }
            if state.sig_enforce && !info.signed {
                return Err(errno(Errno::EKEYREJECTED));
            }
            if state.modules.contains_key(&info.name) {
                return Err(errno(Errno::EEXIST));
            }
            if info.livepatch {
                if !state.livepatch {
                    // klp_enable_patch is an unknown symbol without CONFIG_LIVEPATCH.
                    return Err(errno(Errno::ENOENT));
                }
                if state.transition.is_some() {
                    return Err(errno(Errno::EBUSY));
                }
            }
            let patch = info.livepatch.then(|| SimPatch {
                enabled: true,
                replace: spec.replace,
                objects: spec.objects.clone(),
                transition_ms: spec.transition_ms.unwrap_or(DEFAULT_TRANSITION_MS),
                freed_at_ms: None,
            });
            state.modules.insert(
                info.name.clone(),
                SimModule {
                    srcversion: info.srcversion.clone(),
                    livepatch: info.livepatch,
                    forced: false,
                    patch,
                },
            );
            if info.livepatch {
                state.transition = Some(SimTransition {
                    patch: info.name.clone(),
                    target: 1,
                    from: 0,
                    phase_started_ms: now,
                    started_ms: now,
                });
                state.advance(now);
            }
            Ok(())
        })
    }

    fn unload_module(&self, name: &str) -> KernelResult<()> {
        self.with_state(|state, _| {
            let Some(module) = state.modules.get(name) else {
                return Err(errno(Errno::ENOENT));
            };
            if module.forced || module.patch.is_some() {
                return Err(errno(Errno::EAGAIN));
            }
            state.modules.remove(name);
            Ok(())
        })
    }

    fn loaded_module(&self, name: &str) -> KernelResult<Option<LoadedModule>> {
        let state = self.snapshot()?;
        Ok(state.modules.get(name).map(|m| loaded(name, m)))
    }

    fn loaded_livepatch_modules(&self) -> KernelResult<Vec<LoadedModule>> {
        let state = self.snapshot()?;
        Ok(state
            .modules
            .iter()
            .filter(|(_, m)| m.livepatch)
            .map(|(n, m)| loaded(n, m))
            .collect())
    }

    fn task_states(&self) -> KernelResult<Vec<TaskPatchState>> {
        let state = self.snapshot()?;
        let now = now_ms();
        Ok(state
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| TaskPatchState {
                pid: t.pid,
                tid: t.tid,
                state: state.task_state_at(i, now),
            })
            .collect())
    }

    fn task_comm(&self, pid: u32, tid: u32) -> KernelResult<String> {
        let state = self.snapshot()?;
        find_task(&state, pid, tid).map(|t| t.comm.clone())
    }

    fn task_stack(&self, pid: u32, tid: u32) -> KernelResult<String> {
        let state = self.snapshot()?;
        let now = now_ms();
        let task = find_task(&state, pid, tid)?;
        let held = state
            .transition
            .as_ref()
            .is_some_and(|tr| state.is_held(task, &state.functions_of(&tr.patch), tr, now))
            || (task.sleeps_in.is_some() && !task.released);
        Ok(task.stack(held))
    }

    fn task_cgroup(&self, pid: u32) -> KernelResult<String> {
        let state = self.snapshot()?;
        find_task(&state, pid, pid).map(|t| t.cgroup.clone())
    }

    fn task_is_kthread(&self, pid: u32) -> KernelResult<bool> {
        let state = self.snapshot()?;
        find_task(&state, pid, pid).map(|t| t.kthread)
    }

    fn transition_hints(&self) -> Box<dyn TransitionHints> {
        Box::new(SimHints {
            kernel: self.clone(),
        })
    }
}

fn loaded(name: &str, m: &SimModule) -> LoadedModule {
    LoadedModule {
        name: name.to_string(),
        // The livepatch core holds a reference while the patch exists.
        refcnt: u32::from(m.patch.is_some() || m.forced),
        srcversion: m.srcversion.clone(),
        livepatch: m.livepatch,
        live: true,
    }
}

fn find_task(state: &SimState, pid: u32, tid: u32) -> io::Result<&SimTask> {
    state
        .tasks
        .iter()
        .find(|t| t.pid == pid && t.tid == tid)
        .ok_or_else(|| errno(Errno::ESRCH))
}

/// The simulation's stand-in for the kernel log: it knows when the running
/// transition will end, and wakes the waiter then.
struct SimHints {
    kernel: SimKernel,
}

impl TransitionHints for SimHints {
    fn wait(&mut self, timeout: Duration) -> bool {
        let now = now_ms();
        let end = self
            .kernel
            .snapshot()
            .ok()
            .and_then(|s| s.predicted_end_ms(now));
        match end {
            Some(end) if end.saturating_sub(now) <= timeout.as_millis() as u64 => {
                std::thread::sleep(Duration::from_millis(end.saturating_sub(now)));
                true
            }
            _ => {
                std::thread::sleep(timeout);
                false
            }
        }
    }

    fn describe(&self) -> &'static str {
        "simulated kernel log"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module_file::{inspect_bytes, write_module_elf};

    fn module(name: &str, release: &str, spec: &SimModuleSpec) -> ModuleInfo {
        let modinfo =
            format!("name={name}\0livepatch=Y\0vermagic={release} SMP\0srcversion=S{name}\0");
        let sim = serde_json::to_vec(spec).unwrap();
        let elf = write_module_elf(&[
            (".modinfo", modinfo.as_bytes()),
            (crate::module_file::SIM_SECTION, &sim),
        ]);
        inspect_bytes(Path::new("x.ko"), &elf).unwrap()
    }

    fn spec(func: &str, ms: u64, replace: bool) -> SimModuleSpec {
        SimModuleSpec {
            objects: [("vmlinux".to_string(), vec![func.to_string()])].into(),
            replace,
            transition_ms: Some(ms),
        }
    }

    fn kernel() -> (tempfile::TempDir, SimKernel) {
        let dir = tempfile::tempdir().unwrap();
        let k = SimKernel::init(
            dir.path(),
            &SimInit {
                tasks: 6,
                ..Default::default()
            },
        )
        .unwrap();
        (dir, k)
    }

    #[test]
    fn a_transition_finishes_after_its_duration() {
        let (_d, k) = kernel();
        k.load_module(
            Path::new("x"),
            &module("p", "6.1.0-sim-amd64", &spec("f", 100, false)),
        )
        .unwrap();
        let p = k.patch("p").unwrap().unwrap();
        assert!(p.enabled && p.transition);
        // A second load while the first transitions is refused like the kernel does.
        let err = k
            .load_module(Path::new("x"), &module("q", "r", &spec("g", 10, false)))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::EBUSY as i32));
        std::thread::sleep(Duration::from_millis(150));
        let p = k.patch("p").unwrap().unwrap();
        assert!(p.enabled && !p.transition);
        assert!(k.task_states().unwrap().iter().all(|t| t.state == -1));
        assert!(k.log().unwrap()[0].contains("'p': patching complete"));
    }

    #[test]
    fn a_kthread_in_a_patched_function_stalls_until_released() {
        let (_d, k) = kernel();
        k.add_task(NewTask {
            comm: "rig".into(),
            kthread: true,
            sleeps_in: Some("f".into()),
            ..Default::default()
        })
        .unwrap();
        k.load_module(Path::new("x"), &module("p", "r", &spec("f", 20, false)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert!(k.patch("p").unwrap().unwrap().transition);
        let blocked: Vec<_> = k
            .task_states()
            .unwrap()
            .into_iter()
            .filter(|t| t.state == 0)
            .collect();
        assert_eq!(blocked.len(), 1);
        assert!(
            k.task_stack(blocked[0].pid, blocked[0].tid)
                .unwrap()
                .contains("] f+0x")
        );
        assert_eq!(k.release_task("rig").unwrap(), 1);
        std::thread::sleep(Duration::from_millis(30));
        assert!(!k.patch("p").unwrap().unwrap().transition);
    }

    #[test]
    fn reversing_a_stalled_patch_completes_and_unpatching_removes_the_directory() {
        let (_d, k) = kernel();
        k.add_task(NewTask {
            comm: "rig".into(),
            kthread: true,
            sleeps_in: Some("f".into()),
            ..Default::default()
        })
        .unwrap();
        k.load_module(Path::new("x"), &module("p", "r", &spec("f", 20, false)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(40));
        k.set_enabled("p", false).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(k.patch("p").unwrap(), None);
        assert_eq!(k.loaded_module("p").unwrap().unwrap().refcnt, 0);
        k.unload_module("p").unwrap();
        assert_eq!(k.loaded_module("p").unwrap(), None);
    }

    #[test]
    fn user_tasks_are_freed_by_the_signal_cycle_but_kthreads_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let k = SimKernel::init(
            dir.path(),
            &SimInit {
                tasks: 3,
                signal_cycle: Duration::from_millis(80),
                ..Default::default()
            },
        )
        .unwrap();
        k.add_task(NewTask {
            comm: "reader".into(),
            sleeps_in: Some("f".into()),
            ..Default::default()
        })
        .unwrap();
        k.load_module(Path::new("x"), &module("p", "r", &spec("f", 10, false)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert!(k.patch("p").unwrap().unwrap().transition);
        std::thread::sleep(Duration::from_millis(80));
        assert!(!k.patch("p").unwrap().unwrap().transition);
    }

    #[test]
    fn a_replace_patch_supersedes_the_others_and_leaves_their_modules_loaded() {
        let (_d, k) = kernel();
        k.load_module(Path::new("x"), &module("a", "r", &spec("f", 5, false)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(10));
        k.load_module(Path::new("x"), &module("c", "r", &spec("f", 5, true)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(10));
        // Like the kernel: the replaced patch is disabled at once and freed a moment later.
        let a = k.patch("a").unwrap().expect("not freed yet");
        assert!(!a.enabled && !a.transition);
        assert_eq!(k.loaded_module("a").unwrap().unwrap().refcnt, 1);
        assert!(k.unload_module("a").is_err(), "still held by its patch");
        std::thread::sleep(Duration::from_millis(REPLACED_PATCH_FREE_MS + 10));
        assert_eq!(k.patch_names().unwrap(), vec!["c"]);
        let a = k.loaded_module("a").unwrap().unwrap();
        assert_eq!(a.refcnt, 0);
        assert!(a.livepatch);
    }

    #[test]
    fn forced_modules_can_never_be_removed() {
        let (_d, k) = kernel();
        k.add_task(NewTask {
            comm: "rig".into(),
            kthread: true,
            sleeps_in: Some("f".into()),
            ..Default::default()
        })
        .unwrap();
        k.load_module(Path::new("x"), &module("p", "r", &spec("f", 5, false)))
            .unwrap();
        k.force("p").unwrap();
        let p = k.patch("p").unwrap().unwrap();
        assert!(p.enabled && !p.transition);
        k.set_enabled("p", false).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let err = k.unload_module("p").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::EAGAIN as i32));
    }

    #[test]
    fn injected_load_failures_are_consumed_once() {
        let (_d, k) = kernel();
        k.fail_next_load(None, Errno::EKEYREJECTED as i32).unwrap();
        let m = module("p", "r", &spec("f", 5, false));
        let err = k.load_module(Path::new("x"), &m).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::EKEYREJECTED as i32));
        k.load_module(Path::new("x"), &m).unwrap();
    }

    #[test]
    fn reboot_forgets_modules_and_changes_boot_id() {
        let (_d, k) = kernel();
        let before = k.boot_id().unwrap();
        k.load_module(Path::new("x"), &module("p", "r", &spec("f", 5, false)))
            .unwrap();
        let after = k.reboot().unwrap();
        assert_ne!(before, after);
        assert!(k.patch_names().unwrap().is_empty());
        assert!(k.loaded_livepatch_modules().unwrap().is_empty());
    }
}
