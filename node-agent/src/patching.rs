//! Apply, revert, status and blocking: the livepatch lifecycle on one node.
//!
//! This is the one implementation that the host command and the cluster mode
//! both drive. It follows the lifecycle the kernel's own selftests use: load
//! (which enables and starts the transition), wait for `transition` to drop,
//! and on the way back disable, wait for the directory to go, wait for the
//! module's refcount to reach 0, unload.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::error::{AgentError, LoadRefusal, Result, exit_code, libc_errno};
use crate::journal::{StateDir, TransitionRecord, unix_ms};
use crate::kernel::{Kernel, KernelKind, LoadedModule, PatchSysfs, Target};
use crate::module_file::{Digest, ModuleInfo, check_loadable, inspect_file, is_valid_module_name};
use crate::tasks::{BlockingTask, TaskCensus, census, describe_blockers};
use crate::transition::{Observation, Waiter, observe_with};

/// How long cleaning up after a transition waits for disabled patches'
/// directories to go. Kernels since 5.1 free them within milliseconds; older
/// ones keep a disabled patch until its module is removed.
const DISABLED_PATCH_GRACE: Duration = Duration::from_secs(5);

/// How many blocking tasks a report names at most.
pub const MAX_BLOCKING_REPORTED: usize = 50;

/// A patch's state on a node; the same words as `LivePatchNode.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PatchState {
    Pending,
    Loading,
    Transitioning,
    Applied,
    Stalled,
    Reverting,
    Reverted,
    Failed,
    NotApplicable,
}

impl PatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Loading => "Loading",
            Self::Transitioning => "Transitioning",
            Self::Applied => "Applied",
            Self::Stalled => "Stalled",
            Self::Reverting => "Reverting",
            Self::Reverted => "Reverted",
            Self::Failed => "Failed",
            Self::NotApplicable => "NotApplicable",
        }
    }
}

impl std::fmt::Display for PatchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do when a transition has not finished after `stall_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StallPolicy {
    /// Report the stall and keep waiting until the timeout.
    Wait,
    /// Reverse the transition, follow it back, unload the module.
    Revert,
    /// Write `force`: every task counts as switched. Breaks the consistency
    /// model; the module can never be unloaded; the node should be rebooted.
    Force,
}

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub sha256: Option<String>,
    pub stall_after: Duration,
    pub signal_after: Option<Duration>,
    pub on_stall: StallPolicy,
    pub allow_force: bool,
    pub timeout: Duration,
    pub check: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            sha256: None,
            stall_after: Duration::from_secs(60),
            signal_after: None,
            on_stall: StallPolicy::Wait,
            allow_force: false,
            timeout: Duration::from_secs(300),
            check: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RevertOptions {
    pub stall_after: Duration,
    pub timeout: Duration,
    pub check: bool,
}

impl Default for RevertOptions {
    fn default() -> Self {
        Self {
            stall_after: Duration::from_secs(60),
            timeout: Duration::from_secs(300),
            check: false,
        }
    }
}

/// Where a transition stands, for reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TransitionReport {
    pub target: Target,
    /// RFC 3339 start time.
    pub started: String,
    pub elapsed_seconds: f64,
    /// How long the kernel took, once it finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// Tasks taking part, from the last census (absent when none was taken).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks_total: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks_switched: Option<usize>,
    pub stalled: bool,
    /// The agent picked up a transition that an earlier invocation started.
    pub resumed: bool,
}

/// The result of `apply` or `revert`.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub simulation: bool,
    pub patch: String,
    pub changed: bool,
    pub state: PatchState,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transition: Option<TransitionReport>,
    pub blocking: Vec<BlockingTask>,
    /// Modules unloaded along the way (the patch itself, or modules a replace patch superseded).
    pub unloaded: Vec<String>,
    pub forced: bool,
    /// Things the operator should know that are not errors.
    pub notes: Vec<String>,
    /// What `--check` found would happen (nothing was changed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would: Option<String>,
    #[serde(skip)]
    pub exit_code: i32,
}

/// A snapshot handed to the observer while an operation waits.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    pub patch: &'a str,
    pub state: PatchState,
    pub target: Target,
    pub elapsed: Duration,
    pub census: Option<&'a TaskCensus>,
    pub blocking: &'a [BlockingTask],
    pub message: Option<&'a str>,
}

/// Watches an operation. Returning `Break` detaches: the operation returns
/// with the transition still running (the kernel carries on).
pub trait Observer {
    fn progress(&mut self, progress: &Progress<'_>) -> ControlFlow<()>;
    /// How often a task census is wanted while a transition runs; `None` = only when needed.
    fn census_interval(&self) -> Option<Duration> {
        None
    }
}

/// An observer that only watches.
#[derive(Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {
    fn progress(&mut self, _: &Progress<'_>) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// How a followed transition ended.
enum FollowEnd {
    Completed {
        elapsed: Duration,
        census: Option<TaskCensus>,
    },
    Stalled {
        action: StallPolicy,
        census: TaskCensus,
        blocking: Vec<BlockingTask>,
        elapsed: Duration,
    },
    TimedOut {
        stalled: bool,
        census: TaskCensus,
        blocking: Vec<BlockingTask>,
        elapsed: Duration,
    },
    Reversed,
    Vanished,
    Detached {
        stalled: bool,
        elapsed: Duration,
    },
}

struct FollowPolicy {
    stall_after: Duration,
    on_stall: StallPolicy,
    signal_after: Option<Duration>,
    deadline: Instant,
}

pub struct Patcher<'k> {
    kernel: &'k dyn Kernel,
    state: StateDir,
}

impl<'k> Patcher<'k> {
    pub fn new(kernel: &'k dyn Kernel, state: StateDir) -> Self {
        Self { kernel, state }
    }

    pub fn kernel(&self) -> &dyn Kernel {
        self.kernel
    }

    fn simulation(&self) -> bool {
        self.kernel.kind().is_simulated()
    }

    fn outcome(&self, patch: &str, state: PatchState, message: impl Into<String>) -> Outcome {
        Outcome {
            simulation: self.simulation(),
            patch: patch.to_string(),
            changed: false,
            state,
            message: message.into(),
            transition: None,
            blocking: Vec::new(),
            unloaded: Vec::new(),
            forced: false,
            notes: Vec::new(),
            would: None,
            exit_code: exit_code::OK,
        }
    }

    fn release(&self) -> Result<String> {
        self.kernel
            .release()
            .map_err(|e| AgentError::kernel("reading the kernel release", e))
    }

    fn boot_id(&self) -> String {
        self.kernel.boot_id().unwrap_or_default()
    }

    /// Inspects a module file and checks that this node may load it. No kernel state changes.
    pub fn inspect(&self, path: &Path, pinned_sha256: Option<&str>) -> Result<ModuleInfo> {
        let digest = if pinned_sha256.is_some() {
            Digest::Compute
        } else {
            Digest::Skip
        };
        let info = inspect_file(path, digest)?;
        check_loadable(&info, &self.release()?, pinned_sha256)?;
        Ok(info)
    }

    /// Applies a livepatch module file: inspect, load, follow the transition, apply the stall policy.
    pub fn apply(
        &self,
        path: &Path,
        opts: &ApplyOptions,
        observer: &mut dyn Observer,
    ) -> Result<Outcome> {
        if opts.on_stall == StallPolicy::Force && !opts.allow_force {
            return Err(AgentError::InvalidArgument(
                "--on-stall force also needs --allow-force: forcing marks every task switched, \
                 breaks the consistency model, makes the module impossible to unload and \
                 requires a reboot"
                    .into(),
            ));
        }
        let info = self.inspect(path, opts.sha256.as_deref())?;
        self.apply_inspected(path, &info, opts, observer)
    }

    /// Applies module bytes already in memory, inspected and checked by the
    /// caller (the cluster mode fetches and verifies its own download). The
    /// bytes go into a sealed memory file and load through the same
    /// [`Kernel::load_module`] as a file on disk.
    pub fn apply_bytes(
        &self,
        bytes: &[u8],
        info: &ModuleInfo,
        opts: &ApplyOptions,
        observer: &mut dyn Observer,
    ) -> Result<Outcome> {
        let module = crate::module_memfd::SealedModule::new(&info.name, bytes).map_err(|e| {
            AgentError::kernel(format!("holding module {} in memory", info.name), e)
        })?;
        self.apply_inspected(module.path(), info, opts, observer)
    }

    /// Applies a module already inspected and checked (the cluster mode verifies its own download).
    pub fn apply_inspected(
        &self,
        path: &Path,
        info: &ModuleInfo,
        opts: &ApplyOptions,
        observer: &mut dyn Observer,
    ) -> Result<Outcome> {
        if !self.kernel.livepatch_supported() {
            return Err(AgentError::LivepatchUnsupported);
        }
        let name = info.name.as_str();
        let deadline = Instant::now() + opts.timeout;
        let _lock = self.lock(name, deadline, observer)?;
        let mut unloaded = Vec::new();
        let mut retried_eexist = false;
        let resumed;
        loop {
            match self.read_patch(name)? {
                Some(p) => {
                    self.check_same_build(info)?;
                    match (p.enabled, p.transition) {
                        (true, false) => {
                            let mut out = self.outcome(name, PatchState::Applied, "");
                            if opts.check {
                                out.would = Some("nothing: the patch is already applied".into());
                                out.message = format!("{name} is already applied");
                                return Ok(out);
                            }
                            out.unloaded = self.unload_inert_modules(deadline, observer)?;
                            out.changed = !out.unloaded.is_empty();
                            out.message = format!("{name} is already applied; nothing to do");
                            if out.changed {
                                out.message = format!(
                                    "{name} is already applied; unloaded the modules it superseded"
                                );
                            }
                            return Ok(out);
                        }
                        (true, true) => {
                            if opts.check {
                                return Ok(self.would(
                                    name,
                                    PatchState::Transitioning,
                                    "follow the transition already in progress",
                                ));
                            }
                            resumed = true;
                            break;
                        }
                        (false, true) => {
                            if opts.check {
                                return Ok(self.would(
                                    name,
                                    PatchState::Reverting,
                                    "reverse the unpatching transition in progress",
                                ));
                            }
                            self.write_enabled(name, true)?;
                            self.journal_start(name, Target::Patched, opts.stall_after)?;
                            resumed = true;
                            break;
                        }
                        // Unpatched, its directory about to go: wait for it.
                        (false, false) => self.wait_briefly(deadline, observer, name)?,
                    }
                }
                None => {
                    if let Some(stale) = self
                        .kernel
                        .loaded_module(name)
                        .map_err(|e| AgentError::kernel(format!("reading /sys/module/{name}"), e))?
                    {
                        if opts.check {
                            return Ok(self.would(
                                name,
                                PatchState::Pending,
                                "unload the inactive module of the same name, then load the patch",
                            ));
                        }
                        self.unload_when_free(&stale.name, deadline, observer)?;
                        unloaded.push(stale.name);
                        continue;
                    }
                    if let Some(other) = self.transition_in_progress()? {
                        if opts.check {
                            return Ok(self.would(
                                name,
                                PatchState::Pending,
                                &format!(
                                    "wait for the transition of patch {other} to end, then load the patch"
                                ),
                            ));
                        }
                        self.wait_for_other_transition(&other, deadline, observer)?;
                        continue;
                    }
                    if opts.check {
                        return Ok(self.would(
                            name,
                            PatchState::Pending,
                            "load the module and follow its transition",
                        ));
                    }
                    self.journal_start(name, Target::Patched, opts.stall_after)?;
                    report(observer, name, PatchState::Loading, Target::Patched, None);
                    match self.kernel.load_module(path, info) {
                        Ok(()) => {
                            resumed = false;
                            break;
                        }
                        // Another transition began between our look and our load: wait again.
                        Err(e) if e.raw_os_error() == Some(libc_errno::EBUSY) => continue,
                        // Someone loaded it between our look and our load: look again, once.
                        Err(e)
                            if e.raw_os_error() == Some(libc_errno::EEXIST) && !retried_eexist =>
                        {
                            retried_eexist = true;
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                        Err(e) => {
                            self.state.clear(name);
                            let errno = e.raw_os_error().unwrap_or(0);
                            return Err(AgentError::LoadRefused {
                                module: name.to_string(),
                                reason: LoadRefusal::from_errno(errno),
                                errno,
                            });
                        }
                    }
                }
            }
        }

        let record = self.journal_or_now(name, Target::Patched, opts.stall_after)?;
        let policy = FollowPolicy {
            stall_after: opts.stall_after,
            on_stall: opts.on_stall,
            signal_after: opts.signal_after,
            deadline,
        };
        let mut notes = Vec::new();
        let end = self.follow(
            name,
            Target::Patched,
            &record,
            &policy,
            observer,
            &mut notes,
        )?;
        let mut out = self.outcome(name, PatchState::Transitioning, "");
        out.changed = true;
        out.unloaded = unloaded;
        out.notes = notes;
        match end {
            FollowEnd::Completed { elapsed, census } => {
                self.state.clear(name);
                out.state = PatchState::Applied;
                out.transition =
                    Some(self.report(&record, elapsed, census.as_ref(), false, resumed, true));
                out.unloaded
                    .extend(self.unload_inert_modules(deadline, observer)?);
                out.message = format!(
                    "{name} applied: every task switched to the patched code in {}",
                    seconds(elapsed)
                );
                if !out.unloaded.is_empty() {
                    out.message
                        .push_str(&format!("; unloaded {}", out.unloaded.join(", ")));
                }
            }
            FollowEnd::Stalled {
                action: StallPolicy::Revert,
                census,
                blocking,
                elapsed,
            } => {
                let stalled_msg = stall_summary(name, elapsed, &census, &blocking);
                report(
                    observer,
                    name,
                    PatchState::Reverting,
                    Target::Unpatched,
                    Some(&format!(
                        "{stalled_msg}; reverting as --on-stall revert asks"
                    )),
                );
                self.write_enabled(name, false)?;
                self.journal_start(name, Target::Unpatched, opts.stall_after)?;
                let back = self.journal_or_now(name, Target::Unpatched, opts.stall_after)?;
                let reverse = FollowPolicy {
                    on_stall: StallPolicy::Wait,
                    signal_after: None,
                    ..policy
                };
                let end = self.follow(
                    name,
                    Target::Unpatched,
                    &back,
                    &reverse,
                    observer,
                    &mut out.notes,
                )?;
                out.blocking = blocking;
                out.transition =
                    Some(self.report(&record, elapsed, Some(&census), true, resumed, false));
                match end {
                    FollowEnd::Completed { .. } => {
                        self.state.clear(name);
                        self.wait_directory_gone(name, deadline, observer)?;
                        self.unload_when_free(name, deadline, observer)?;
                        out.unloaded.push(name.to_string());
                        out.state = PatchState::Reverted;
                        out.exit_code = exit_code::KERNEL_REFUSED;
                        out.message = format!(
                            "{stalled_msg}; reverted as --on-stall revert asked: the kernel is back on the original code and {name} is unloaded"
                        );
                    }
                    other => {
                        out.state = PatchState::Reverting;
                        out.exit_code = exit_code::TIMED_OUT;
                        out.message = format!(
                            "{stalled_msg}; the revert {} — the kernel carries on with it; run `graft-agent revert {name}` to follow it",
                            describe_unfinished(&other)
                        );
                    }
                }
            }
            FollowEnd::Stalled {
                action: StallPolicy::Force,
                census,
                blocking,
                elapsed,
            } => {
                let stalled_msg = stall_summary(name, elapsed, &census, &blocking);
                self.kernel
                    .force(name)
                    .map_err(|e| AgentError::KernelWriteFailed {
                        patch: name.to_string(),
                        action: "force",
                        detail: e.to_string(),
                    })?;
                tracing::warn!(patch = name, "FORCED the transition: reboot this node soon");
                let forced_end = self.follow(
                    name,
                    Target::Patched,
                    &record,
                    &FollowPolicy {
                        on_stall: StallPolicy::Wait,
                        stall_after: Duration::MAX,
                        ..policy
                    },
                    observer,
                    &mut out.notes,
                )?;
                self.state.clear(name);
                out.forced = true;
                out.blocking = blocking;
                out.transition =
                    Some(self.report(&record, elapsed, Some(&census), true, resumed, false));
                out.state = if matches!(forced_end, FollowEnd::Completed { .. }) {
                    PatchState::Applied
                } else {
                    PatchState::Failed
                };
                out.exit_code = exit_code::FORCED;
                out.message = format!(
                    "FORCED: {stalled_msg}; --on-stall force marked every task as switched. \
                     The consistency model no longer holds for the tasks that had not switched, \
                     {name} can never be unloaded, and this node should be rebooted soon"
                );
            }
            FollowEnd::Stalled {
                action: StallPolicy::Wait,
                ..
            } => unreachable!("the wait policy keeps following until the timeout"),
            FollowEnd::TimedOut {
                stalled,
                census,
                blocking,
                elapsed,
            } => {
                out.state = if stalled {
                    PatchState::Stalled
                } else {
                    PatchState::Transitioning
                };
                out.exit_code = exit_code::TIMED_OUT;
                out.transition =
                    Some(self.report(&record, elapsed, Some(&census), stalled, resumed, false));
                out.message = if stalled {
                    format!(
                        "{}; gave up waiting after --timeout {}. The kernel keeps trying; \
                         `graft-agent apply` again picks it up, `graft-agent revert {name}` cancels it",
                        stall_summary(name, elapsed, &census, &blocking),
                        humantime::format_duration(opts.timeout)
                    )
                } else {
                    format!(
                        "{name} is still transitioning ({}/{} tasks switched) after --timeout {}; the kernel carries on",
                        census.switched,
                        census.total,
                        humantime::format_duration(opts.timeout)
                    )
                };
                out.blocking = blocking;
            }
            FollowEnd::Reversed => {
                self.state.clear(name);
                out.state = PatchState::Reverting;
                out.exit_code = exit_code::KERNEL_REFUSED;
                out.message = format!(
                    "the transition of {name} was reversed by someone else (its `enabled` was written); it is being reverted"
                );
            }
            FollowEnd::Vanished => {
                self.state.clear(name);
                out.state = PatchState::Failed;
                out.exit_code = exit_code::KERNEL_REFUSED;
                out.message = format!(
                    "the patch {name} disappeared during its transition (superseded by a replace patch, or removed by someone else)"
                );
            }
            FollowEnd::Detached { stalled, elapsed } => {
                out.state = if stalled {
                    PatchState::Stalled
                } else {
                    PatchState::Transitioning
                };
                out.exit_code = exit_code::TIMED_OUT;
                out.transition = Some(self.report(&record, elapsed, None, stalled, resumed, false));
                out.message = format!("stopped following {name}; the kernel carries on");
            }
        }
        Ok(out)
    }

    /// Reverts a patch: disable, follow the unpatching transition, unload the module.
    pub fn revert(
        &self,
        name: &str,
        opts: &RevertOptions,
        observer: &mut dyn Observer,
    ) -> Result<Outcome> {
        if !is_valid_module_name(name) {
            return Err(AgentError::InvalidArgument(format!(
                "{name:?} is not a patch name; `graft-agent status` lists the loaded patches"
            )));
        }
        if !self.kernel.livepatch_supported() {
            return Err(AgentError::LivepatchUnsupported);
        }
        let deadline = Instant::now() + opts.timeout;
        let _lock = self.lock(name, deadline, observer)?;
        let resumed;
        loop {
            match self.read_patch(name)? {
                None => {
                    return match self
                        .kernel
                        .loaded_module(name)
                        .map_err(|e| AgentError::kernel(format!("reading /sys/module/{name}"), e))?
                    {
                        None => Ok(self.outcome(
                            name,
                            PatchState::Reverted,
                            format!("{name} is not loaded; nothing to do"),
                        )),
                        Some(_) if opts.check => Ok(self.would(
                            name,
                            PatchState::Reverting,
                            "unload the inactive module",
                        )),
                        Some(m) => {
                            self.unload_when_free(&m.name, deadline, observer)?;
                            self.state.clear(name);
                            let mut out = self.outcome(
                                name,
                                PatchState::Reverted,
                                format!("{name} was inactive; unloaded its module"),
                            );
                            out.changed = true;
                            out.unloaded.push(m.name);
                            Ok(out)
                        }
                    };
                }
                Some(p) => match (p.enabled, p.transition) {
                    (true, false) => {
                        if let Some(other) = self.transition_in_progress()? {
                            if opts.check {
                                return Ok(self.would(name, PatchState::Applied, &format!("wait for the transition of patch {other}, then disable the patch")));
                            }
                            self.wait_for_other_transition(&other, deadline, observer)?;
                            continue;
                        }
                        if opts.check {
                            return Ok(self.would(
                                name,
                                PatchState::Applied,
                                "disable the patch, follow the unpatching transition and unload the module",
                            ));
                        }
                        self.journal_start(name, Target::Unpatched, opts.stall_after)?;
                        match self.kernel.set_enabled(name, false) {
                            Ok(()) => {}
                            Err(e) if e.raw_os_error() == Some(libc_errno::EBUSY) => continue,
                            Err(e) => return Err(self.write_error(name, false, e)),
                        }
                        resumed = false;
                        break;
                    }
                    (true, true) => {
                        if opts.check {
                            return Ok(self.would(
                                name,
                                PatchState::Transitioning,
                                "cancel the patching transition in progress and unload the module",
                            ));
                        }
                        self.write_enabled(name, false)?;
                        self.journal_start(name, Target::Unpatched, opts.stall_after)?;
                        resumed = false;
                        break;
                    }
                    (false, true) => {
                        if opts.check {
                            return Ok(self.would(
                                name,
                                PatchState::Reverting,
                                "follow the unpatching transition in progress and unload the module",
                            ));
                        }
                        resumed = true;
                        break;
                    }
                    (false, false) => self.wait_briefly(deadline, observer, name)?,
                },
            }
        }
        let record = self.journal_or_now(name, Target::Unpatched, opts.stall_after)?;
        let policy = FollowPolicy {
            stall_after: opts.stall_after,
            on_stall: StallPolicy::Wait,
            signal_after: None,
            deadline,
        };
        let mut out = self.outcome(name, PatchState::Reverting, "");
        out.changed = true;
        let end = self.follow(
            name,
            Target::Unpatched,
            &record,
            &policy,
            observer,
            &mut out.notes,
        )?;
        match end {
            FollowEnd::Completed { elapsed, census } => {
                self.state.clear(name);
                self.wait_directory_gone(name, deadline, observer)?;
                self.unload_when_free(name, deadline, observer)?;
                out.unloaded.push(name.to_string());
                out.state = PatchState::Reverted;
                out.transition =
                    Some(self.report(&record, elapsed, census.as_ref(), false, resumed, true));
                out.message = format!(
                    "{name} reverted in {}: every task is back on the original code and the module is unloaded",
                    seconds(elapsed)
                );
            }
            FollowEnd::TimedOut {
                stalled,
                census,
                blocking,
                elapsed,
            } => {
                out.exit_code = exit_code::TIMED_OUT;
                out.transition =
                    Some(self.report(&record, elapsed, Some(&census), stalled, resumed, false));
                out.message = format!(
                    "the revert of {name} has not finished after --timeout {} ({}/{} tasks switched back); the kernel carries on",
                    humantime::format_duration(opts.timeout),
                    census.switched,
                    census.total
                );
                out.blocking = blocking;
            }
            FollowEnd::Reversed => {
                self.state.clear(name);
                out.state = PatchState::Transitioning;
                out.exit_code = exit_code::KERNEL_REFUSED;
                out.message = format!(
                    "the revert of {name} was reversed by someone else; the patch is being applied again"
                );
            }
            FollowEnd::Detached { stalled, elapsed } => {
                out.exit_code = exit_code::TIMED_OUT;
                out.transition = Some(self.report(&record, elapsed, None, stalled, resumed, false));
                out.message =
                    format!("stopped following the revert of {name}; the kernel carries on");
            }
            FollowEnd::Vanished | FollowEnd::Stalled { .. } => {
                unreachable!("an unpatching transition neither vanishes nor applies a stall policy")
            }
        }
        Ok(out)
    }

    /// Every patch on the node, with the transition in progress if any.
    pub fn status(&self, only: Option<&str>) -> Result<NodeStatus> {
        let kind = self.kernel.kind();
        let supported = self.kernel.livepatch_supported();
        let boot_id = self.boot_id();
        let mut status = NodeStatus {
            simulation: kind.is_simulated(),
            kernel: KernelReport {
                kind,
                release: self.release()?,
                boot_id: boot_id.clone(),
                livepatch_supported: supported,
                message: (!supported).then(|| AgentError::LivepatchUnsupported.to_string()),
            },
            patches: Vec::new(),
            inert_modules: Vec::new(),
            transition: None,
        };
        if !supported {
            return Ok(status);
        }
        let names = self
            .kernel
            .patch_names()
            .map_err(|e| AgentError::kernel("listing /sys/kernel/livepatch", e))?;
        for name in names
            .iter()
            .filter(|n| only.is_none_or(|o| o == n.as_str()))
        {
            let Some(sysfs) = self.read_patch(name)? else {
                continue;
            };
            let module = self.kernel.loaded_module(name).ok().flatten();
            let record = self.state.load(name, &boot_id);
            let state = derive_state(&sysfs, record.as_ref());
            if sysfs.transition {
                status.transition = Some(self.active_transition(&sysfs, record.as_ref(), state)?);
            }
            status.patches.push(PatchStatus {
                name: name.clone(),
                enabled: sysfs.enabled,
                transition: sysfs.transition,
                state,
                replace: sysfs.replace,
                stack_order: sysfs.stack_order,
                signal_supported: sysfs.signal_supported,
                objects: sysfs.objects.clone(),
                srcversion: module.as_ref().and_then(|m| m.srcversion.clone()),
                refcnt: module.as_ref().map(|m| m.refcnt),
            });
        }
        status.inert_modules = self
            .inert_modules()?
            .into_iter()
            .map(|m| m.name)
            .filter(|n| only.is_none_or(|o| o == n))
            .collect();
        Ok(status)
    }

    /// The tasks blocking the transition in progress (of `only`, if given).
    pub fn blocking(&self, only: Option<&str>) -> Result<BlockingReport> {
        let status = self.status(None)?;
        let mut report = BlockingReport {
            simulation: status.simulation,
            patch: None,
            transition: None,
            blocking: Vec::new(),
            message: String::new(),
        };
        let Some(active) = status.transition else {
            report.message = "no transition is in progress; nothing is blocked".into();
            return Ok(report);
        };
        if let Some(only) = only
            && only != active.patch
        {
            if !status.patches.iter().any(|p| p.name == only) {
                return Err(AgentError::NoSuchPatch {
                    patch: only.to_string(),
                });
            }
            report.message = format!(
                "{only} is not in transition (the transition in progress is {})",
                active.patch
            );
            return Ok(report);
        }
        report.message = format!(
            "{} tasks block the transition of {} ({}/{} switched)",
            active.blocking.len(),
            active.patch,
            active.tasks_switched,
            active.tasks_total
        );
        report.patch = Some(active.patch.clone());
        report.blocking = active.blocking.clone();
        report.transition = Some(active);
        Ok(report)
    }

    fn active_transition(
        &self,
        sysfs: &PatchSysfs,
        record: Option<&TransitionRecord>,
        state: PatchState,
    ) -> Result<ActiveTransition> {
        let target = Target::from_enabled(sysfs.enabled);
        let (census, blocking) = self.census_and_blockers(sysfs, target)?;
        Ok(ActiveTransition {
            patch: sysfs.name.clone(),
            target,
            state,
            started: record.map(|r| format_time(r.started())),
            elapsed_seconds: record.map(|r| r.elapsed().as_secs_f64()),
            tasks_total: census.total,
            tasks_switched: census.switched,
            blocking,
        })
    }

    fn census_and_blockers(
        &self,
        sysfs: &PatchSysfs,
        target: Target,
    ) -> Result<(TaskCensus, Vec<BlockingTask>)> {
        let states = self
            .kernel
            .task_states()
            .map_err(|e| AgentError::kernel("reading tasks' patch_state", e))?;
        let census = census(&states, target);
        let functions: Vec<&str> = sysfs.function_names().collect();
        let blocking = describe_blockers(
            self.kernel,
            &census.blockers,
            &functions,
            MAX_BLOCKING_REPORTED,
        );
        Ok((census, blocking))
    }

    /// Follows a transition until it completes, stalls (with a non-waiting
    /// policy), times out, or the observer detaches.
    fn follow(
        &self,
        name: &str,
        target: Target,
        record: &TransitionRecord,
        policy: &FollowPolicy,
        observer: &mut dyn Observer,
        notes: &mut Vec<String>,
    ) -> Result<FollowEnd> {
        let mut waiter = Waiter::new(self.kernel);
        let started = Instant::now() - record.elapsed();
        let stall_at = started.checked_add(policy.stall_after);
        let census_every = observer.census_interval();
        let mut next_census = Instant::now();
        let mut stalled = false;
        let mut last_census;
        // The kernel resets every task to -1 just before `transition` drops, so a
        // census taken in that window undercounts: report the most tasks seen.
        let mut peak_total = 0;
        let mut blocking: Vec<BlockingTask> = Vec::new();
        let mut next_signal = policy.signal_after.and_then(|d| started.checked_add(d));
        let mut said_signals = false;
        // The patch's full description (functions, `signal`), read only when a
        // stall, a signal, a census or the deadline needs it: every other look
        // reads just `enabled` and `transition`.
        let mut details: Option<PatchSysfs> = None;
        let mut progress = self.kernel.progress_reader(name);
        loop {
            let observation = observe_with(&mut progress, target).map_err(|e| {
                AgentError::kernel(format!("reading /sys/kernel/livepatch/{name}"), e)
            })?;
            tracing::trace!(patch = name, ?observation, "transition observed");
            match observation {
                Observation::Complete => {
                    // Everyone who took part has switched.
                    let census = (peak_total > 0).then(|| TaskCensus {
                        total: peak_total,
                        switched: peak_total,
                        blockers: Vec::new(),
                    });
                    return Ok(FollowEnd::Completed {
                        elapsed: started.elapsed(),
                        census,
                    });
                }
                Observation::Reversed(_) => return Ok(FollowEnd::Reversed),
                Observation::Vanished => return Ok(FollowEnd::Vanished),
                Observation::InProgress(_) => {}
            }
            let now = Instant::now();
            if !stalled && stall_at.is_some_and(|at| now >= at) {
                let Some(sysfs) = self.details(name, &mut details)? else {
                    continue;
                };
                stalled = true;
                (last_census, blocking) = self.census_and_blockers(&sysfs, target)?;
                peak_total = peak_total.max(last_census.total);
                let msg = stall_summary(name, started.elapsed(), &last_census, &blocking);
                tracing::info!(patch = name, "{msg}");
                let flow = observer.progress(&Progress {
                    patch: name,
                    state: PatchState::Stalled,
                    target,
                    elapsed: started.elapsed(),
                    census: Some(&last_census),
                    blocking: &blocking,
                    message: Some(&msg),
                });
                if policy.on_stall != StallPolicy::Wait {
                    return Ok(FollowEnd::Stalled {
                        action: policy.on_stall,
                        census: last_census,
                        blocking,
                        elapsed: started.elapsed(),
                    });
                }
                if !sysfs.signal_supported && !said_signals {
                    said_signals = true;
                    notes.push(
                        "this kernel has no `signal` attribute: since 5.1 it sends fake signals to \
                         blocking tasks by itself about every 15 s, which frees user tasks but not kernel threads"
                            .into(),
                    );
                }
                if flow.is_break() {
                    return Ok(FollowEnd::Detached {
                        stalled,
                        elapsed: started.elapsed(),
                    });
                }
            }
            if let Some(at) = next_signal
                && now >= at
            {
                let Some(sysfs) = self.details(name, &mut details)? else {
                    continue;
                };
                if sysfs.signal_supported {
                    match self.kernel.signal(name) {
                        Ok(()) => notes.push(format!(
                            "signalled the blocking tasks after {}",
                            seconds(started.elapsed())
                        )),
                        Err(e) => tracing::warn!(patch = name, error = %e, "writing signal failed"),
                    }
                    next_signal = policy.signal_after.and_then(|d| at.checked_add(d));
                } else {
                    if !said_signals {
                        said_signals = true;
                        notes.push(
                            "--signal-after has no effect here: this kernel has no `signal` \
                                 attribute and signals blocking tasks by itself about every 15 s"
                                .into(),
                        );
                    }
                    next_signal = None;
                }
            }
            if now >= policy.deadline {
                let Some(sysfs) = self.details(name, &mut details)? else {
                    continue;
                };
                let (c, b) = self.census_and_blockers(&sysfs, target)?;
                return Ok(FollowEnd::TimedOut {
                    stalled,
                    census: c,
                    blocking: b,
                    elapsed: started.elapsed(),
                });
            }
            if census_every.is_some_and(|_| now >= next_census) {
                let (c, b) = if stalled {
                    let Some(sysfs) = self.details(name, &mut details)? else {
                        continue;
                    };
                    self.census_and_blockers(&sysfs, target)?
                } else {
                    (
                        census(
                            &self
                                .kernel
                                .task_states()
                                .map_err(|e| AgentError::kernel("reading tasks' patch_state", e))?,
                            target,
                        ),
                        Vec::new(),
                    )
                };
                last_census = c;
                peak_total = peak_total.max(last_census.total);
                if stalled {
                    blocking = b;
                }
                next_census = now + census_every.unwrap_or_default();
                let flow = observer.progress(&Progress {
                    patch: name,
                    state: if stalled {
                        PatchState::Stalled
                    } else if target == Target::Patched {
                        PatchState::Transitioning
                    } else {
                        PatchState::Reverting
                    },
                    target,
                    elapsed: started.elapsed(),
                    census: Some(&last_census),
                    blocking: &blocking,
                    message: None,
                });
                if flow.is_break() {
                    return Ok(FollowEnd::Detached {
                        stalled,
                        elapsed: started.elapsed(),
                    });
                }
            }
            let mut wake = policy.deadline;
            for t in [stall_at.filter(|_| !stalled), next_signal]
                .into_iter()
                .flatten()
            {
                wake = wake.min(t);
            }
            if census_every.is_some() {
                wake = wake.min(next_census);
            }
            waiter.wait(Some(wake));
        }
    }

    /// The patch's full sysfs description, read once per followed transition
    /// (its objects, functions and attributes do not change meanwhile);
    /// `None` when its directory went away.
    fn details(&self, name: &str, cache: &mut Option<PatchSysfs>) -> Result<Option<PatchSysfs>> {
        if cache.is_none() {
            *cache = self.read_patch(name)?;
        }
        Ok(cache.clone())
    }

    fn report(
        &self,
        record: &TransitionRecord,
        elapsed: Duration,
        census: Option<&TaskCensus>,
        stalled: bool,
        resumed: bool,
        finished: bool,
    ) -> TransitionReport {
        TransitionReport {
            target: record.target,
            started: format_time(record.started()),
            elapsed_seconds: elapsed.as_secs_f64(),
            duration_seconds: finished.then_some(elapsed.as_secs_f64()),
            tasks_total: census.map(|c| c.total),
            tasks_switched: census.map(|c| c.switched),
            stalled,
            resumed,
        }
    }

    fn would(&self, name: &str, state: PatchState, action: &str) -> Outcome {
        let mut out = self.outcome(name, state, format!("--check: would {action}"));
        out.changed = true;
        out.would = Some(action.to_string());
        out
    }

    fn lock(
        &self,
        name: &str,
        deadline: Instant,
        observer: &mut dyn Observer,
    ) -> Result<crate::journal::AgentLock> {
        self.state.lock(deadline, |msg| {
            report(
                observer,
                name,
                PatchState::Pending,
                Target::Patched,
                Some(msg),
            );
        })
    }

    fn read_patch(&self, name: &str) -> Result<Option<PatchSysfs>> {
        self.kernel
            .patch(name)
            .map_err(|e| AgentError::kernel(format!("reading /sys/kernel/livepatch/{name}"), e))
    }

    fn write_enabled(&self, name: &str, enabled: bool) -> Result<()> {
        self.kernel
            .set_enabled(name, enabled)
            .map_err(|e| self.write_error(name, enabled, e))
    }

    fn write_error(&self, name: &str, enabled: bool, e: std::io::Error) -> AgentError {
        if e.raw_os_error() == Some(libc_errno::EBUSY)
            && let Ok(Some(other)) = self.transition_in_progress()
        {
            return AgentError::Busy { patch: other };
        }
        AgentError::KernelWriteFailed {
            patch: name.to_string(),
            action: if enabled { "enable" } else { "disable" },
            detail: e.to_string(),
        }
    }

    fn journal_start(&self, name: &str, target: Target, stall_after: Duration) -> Result<()> {
        self.state.record(&TransitionRecord {
            patch: name.to_string(),
            target,
            started_unix_ms: unix_ms(SystemTime::now()),
            boot_id: self.boot_id(),
            stall_after_ms: stall_after.as_millis().min(u64::MAX as u128) as u64,
        })
    }

    /// The journal's record of this transition, or a new one starting now
    /// (a transition someone else started, or one whose record was lost).
    fn journal_or_now(
        &self,
        name: &str,
        target: Target,
        stall_after: Duration,
    ) -> Result<TransitionRecord> {
        match self.state.load(name, &self.boot_id()) {
            Some(r) if r.target == target => Ok(r),
            _ => {
                self.journal_start(name, target, stall_after)?;
                self.state
                    .load(name, &self.boot_id())
                    .ok_or_else(|| AgentError::Simulation("journal write lost".into()))
            }
        }
    }

    /// The patch in transition right now, if any (the kernel runs one at a time).
    pub fn transition_in_progress(&self) -> Result<Option<String>> {
        for name in self
            .kernel
            .patch_names()
            .map_err(|e| AgentError::kernel("listing /sys/kernel/livepatch", e))?
        {
            if self.read_patch(&name)?.is_some_and(|p| p.transition) {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    fn wait_for_other_transition(
        &self,
        other: &str,
        deadline: Instant,
        observer: &mut dyn Observer,
    ) -> Result<()> {
        let msg = format!("waiting: another transition is in progress (patch {other})");
        tracing::info!("{msg}");
        report(
            observer,
            other,
            PatchState::Pending,
            Target::Patched,
            Some(&msg),
        );
        let mut waiter = Waiter::new(self.kernel);
        loop {
            if !self.read_patch(other)?.is_some_and(|p| p.transition) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(AgentError::Busy {
                    patch: other.to_string(),
                });
            }
            waiter.wait(Some(deadline));
        }
    }

    fn wait_briefly(
        &self,
        deadline: Instant,
        observer: &mut dyn Observer,
        name: &str,
    ) -> Result<()> {
        if Instant::now() >= deadline {
            return Err(AgentError::KernelWriteFailed {
                patch: name.to_string(),
                action: "settle",
                detail:
                    "the patch is disabled but its sysfs directory did not go away before --timeout"
                        .into(),
            });
        }
        report(
            observer,
            name,
            PatchState::Reverting,
            Target::Unpatched,
            Some("waiting for the disabled patch's directory to go"),
        );
        std::thread::sleep(Duration::from_millis(10));
        Ok(())
    }

    fn wait_directory_gone(
        &self,
        name: &str,
        deadline: Instant,
        observer: &mut dyn Observer,
    ) -> Result<()> {
        // Two small reads, not the whole directory that is being taken apart.
        while self
            .kernel
            .patch_progress(name)
            .map_err(|e| AgentError::kernel(format!("reading /sys/kernel/livepatch/{name}"), e))?
            .is_some()
        {
            self.wait_briefly(deadline, observer, name)?;
        }
        Ok(())
    }

    fn check_same_build(&self, info: &ModuleInfo) -> Result<()> {
        let loaded = self
            .kernel
            .loaded_module(&info.name)
            .map_err(|e| AgentError::kernel(format!("reading /sys/module/{}", info.name), e))?;
        if let (
            Some(LoadedModule {
                srcversion: Some(loaded),
                ..
            }),
            Some(file),
        ) = (loaded, &info.srcversion)
            && &loaded != file
        {
            return Err(AgentError::DifferentBuildLoaded {
                patch: info.name.clone(),
                loaded,
                file: file.clone(),
            });
        }
        Ok(())
    }

    /// Livepatch modules with no patch directory: superseded by a replace
    /// patch, or disabled and never unloaded. They do nothing but take memory.
    fn inert_modules(&self) -> Result<Vec<LoadedModule>> {
        let names = self
            .kernel
            .patch_names()
            .map_err(|e| AgentError::kernel("listing /sys/kernel/livepatch", e))?;
        Ok(self
            .kernel
            .loaded_livepatch_modules()
            .map_err(|e| AgentError::kernel("listing /sys/module", e))?
            .into_iter()
            .filter(|m| m.live && !names.contains(&m.name))
            .collect())
    }

    /// Unloads the livepatch modules whose patch is gone: superseded by an
    /// atomic replace, or left behind by another tool. The kernel disables
    /// the patches a replace supersedes when its transition ends and frees
    /// them a moment later from a worker, which then drops their modules'
    /// references; so it first waits (briefly) for disabled patches to go,
    /// or their modules would be left for the next run.
    fn unload_inert_modules(
        &self,
        deadline: Instant,
        observer: &mut dyn Observer,
    ) -> Result<Vec<String>> {
        self.wait_for_disabled_patches(deadline.min(Instant::now() + DISABLED_PATCH_GRACE))?;
        let mut unloaded = Vec::new();
        for module in self.inert_modules()? {
            self.unload_when_free(&module.name, deadline, observer)?;
            tracing::info!(module = %module.name, "unloaded a superseded livepatch module");
            unloaded.push(module.name);
        }
        Ok(unloaded)
    }

    /// Waits until no patch is disabled and idle (a directory about to go), or `until`.
    fn wait_for_disabled_patches(&self, until: Instant) -> Result<()> {
        loop {
            let names = self
                .kernel
                .patch_names()
                .map_err(|e| AgentError::kernel("listing /sys/kernel/livepatch", e))?;
            // Two attribute reads a patch, not the whole directory.
            let leaving = names.into_iter().find(|name| {
                matches!(self.kernel.patch_progress(name), Ok(Some(p)) if !p.enabled && !p.transition)
            });
            let Some(name) = leaving else { return Ok(()) };
            if Instant::now() >= until {
                tracing::info!(patch = %name, "a disabled patch is still registered; its module stays loaded");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the module's refcount to reach 0, then `delete_module`.
    fn unload_when_free(
        &self,
        name: &str,
        deadline: Instant,
        observer: &mut dyn Observer,
    ) -> Result<()> {
        let mut told = false;
        loop {
            let busy = match self.kernel.unload_module(name) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) => {
                    return Ok(());
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc_errno::EAGAIN | libc_errno::EBUSY)
                    ) =>
                {
                    e
                }
                Err(e) => {
                    return Err(AgentError::UnloadFailed {
                        module: name.to_string(),
                        detail: e.to_string(),
                    });
                }
            };
            if Instant::now() >= deadline {
                return Err(AgentError::UnloadFailed {
                    module: name.to_string(),
                    detail: format!(
                        "it is still in use ({busy}); a module whose patch was ever forced can never \
                         be unloaded: reboot the node to get rid of it"
                    ),
                });
            }
            if !told {
                told = true;
                report(
                    observer,
                    name,
                    PatchState::Reverting,
                    Target::Unpatched,
                    Some("waiting for the module's reference count to reach 0"),
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn report(
    observer: &mut dyn Observer,
    patch: &str,
    state: PatchState,
    target: Target,
    message: Option<&str>,
) {
    let _ = observer.progress(&Progress {
        patch,
        state,
        target,
        elapsed: Duration::ZERO,
        census: None,
        blocking: &[],
        message,
    });
}

/// "graft_stall_patch stalled after 5.0s: 1 of 41 tasks not switched (graft_rig/123 in graft_rig_hold)".
pub fn stall_summary(
    name: &str,
    elapsed: Duration,
    census: &TaskCensus,
    blocking: &[BlockingTask],
) -> String {
    let mut msg = format!(
        "{name} stalled after {}: {} of {} tasks not switched",
        seconds(elapsed),
        census.remaining(),
        census.total
    );
    let named: Vec<String> = blocking
        .iter()
        .take(3)
        .map(|b| {
            let mut s = format!("{}/{}", b.comm, b.tid);
            if let Some(f) = &b.function {
                s.push_str(&format!(" in {f}"));
            }
            if let Some(pod) = &b.pod {
                s.push_str(&format!(", pod {}", pod.pod_uid));
            }
            s
        })
        .collect();
    if !named.is_empty() {
        msg.push_str(&format!(" ({}", named.join("; ")));
        if blocking.len() > 3 {
            msg.push_str(&format!("; and {} more", blocking.len() - 3));
        }
        msg.push(')');
    }
    msg
}

fn describe_unfinished(end: &FollowEnd) -> &'static str {
    match end {
        FollowEnd::TimedOut { .. } => "did not finish before --timeout",
        FollowEnd::Reversed => "was reversed by someone else",
        FollowEnd::Detached { .. } => "is still running",
        _ => "did not finish",
    }
}

fn derive_state(sysfs: &PatchSysfs, record: Option<&TransitionRecord>) -> PatchState {
    match (sysfs.enabled, sysfs.transition) {
        (true, false) => PatchState::Applied,
        (true, true) => {
            let stalled = record.is_some_and(|r| {
                r.target == Target::Patched
                    && r.elapsed() >= Duration::from_millis(r.stall_after_ms)
            });
            if stalled {
                PatchState::Stalled
            } else {
                PatchState::Transitioning
            }
        }
        (false, _) => PatchState::Reverting,
    }
}

pub fn seconds(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelReport {
    #[serde(flatten)]
    pub kind: KernelKind,
    pub release: String,
    pub boot_id: String,
    pub livepatch_supported: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PatchStatus {
    pub name: String,
    pub enabled: bool,
    pub transition: bool,
    pub state: PatchState,
    /// `replace` as the kernel shows it; `null` where the kernel does not expose it (before 6.11).
    pub replace: Option<bool>,
    /// `stack_order` as the kernel shows it; `null` where the kernel does not expose it (before 6.14).
    pub stack_order: Option<u32>,
    pub signal_supported: bool,
    pub objects: Vec<crate::kernel::PatchedObject>,
    pub srcversion: Option<String>,
    pub refcnt: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActiveTransition {
    pub patch: String,
    pub target: Target,
    pub state: PatchState,
    /// Known when this agent started (or resumed) the transition.
    pub started: Option<String>,
    pub elapsed_seconds: Option<f64>,
    pub tasks_total: usize,
    pub tasks_switched: usize,
    pub blocking: Vec<BlockingTask>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub simulation: bool,
    pub kernel: KernelReport,
    pub patches: Vec<PatchStatus>,
    /// Loaded livepatch modules without a patch directory (superseded or disabled).
    pub inert_modules: Vec<String>,
    pub transition: Option<ActiveTransition>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlockingReport {
    pub simulation: bool,
    pub patch: Option<String>,
    pub transition: Option<ActiveTransition>,
    pub blocking: Vec<BlockingTask>,
    pub message: String,
}
