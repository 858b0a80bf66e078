//! What to do about one spec entry: pure decisions, tested without a kernel or an API.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use graft_crds::{DesiredState, NodePatch, OnStall, PatchState, PatchStatus};

use crate::patching::{ApplyOptions, RevertOptions, StallPolicy};

/// Reasons the agent writes in `status.patches[].reason` (one CamelCase word each).
pub mod reason {
    pub const LIVEPATCH_UNSUPPORTED: &str = "LivepatchUnsupported";
    pub const KERNEL_RELEASE_MISMATCH: &str = "KernelReleaseMismatch";
    pub const CHECKSUM_MISMATCH: &str = "ChecksumMismatch";
    pub const FETCH_FAILED: &str = "FetchFailed";
    pub const NOT_A_MODULE: &str = "NotAModule";
    pub const NOT_A_LIVEPATCH: &str = "NotALivepatch";
    pub const MODULE_LOAD_FAILED: &str = "ModuleLoadFailed";
    pub const DIFFERENT_BUILD_LOADED: &str = "DifferentBuildLoaded";
    pub const TRANSITION_STALLED: &str = "TransitionStalled";
    pub const STALLED_AND_REVERTED: &str = "StalledAndReverted";
    pub const FORCED: &str = "Forced";
    pub const FORCED_TRANSITION_FAILED: &str = "ForcedTransitionFailed";
    pub const TRANSITION_REVERSED: &str = "TransitionReversed";
    pub const PATCH_VANISHED: &str = "PatchVanished";
    pub const REVERT_FAILED: &str = "RevertFailed";
    pub const REVERT_REVERSED: &str = "RevertReversed";
    pub const WAITING: &str = "WaitingForOtherTransition";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const REBOOTED: &str = "Rebooted";
    pub const NOT_LOADED: &str = "NotLoaded";
}

/// What the kernel looks like right now, as far as the decisions need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelFacts {
    pub release: String,
    pub boot_id: String,
    pub livepatch_supported: bool,
    /// Patches under `/sys/kernel/livepatch`: name -> (enabled, transition).
    pub patches: BTreeMap<String, (bool, bool)>,
    /// Loaded modules among the names asked about (with or without a patch directory).
    pub loaded_modules: BTreeSet<String>,
}

/// The one thing to do about an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The status is right and the kernel needs nothing.
    Nothing,
    /// Report this state without touching the kernel.
    Report {
        state: PatchState,
        reason: Option<&'static str>,
        message: String,
    },
    /// The entry is Applied already (same module); only its generation is new.
    AdoptGeneration,
    /// Fetch, verify and apply the module (or resume its transition).
    Apply,
    /// Revert the patch of this sysfs name (or follow the revert in progress).
    Revert { sysfs_name: String },
}

impl Action {
    pub fn needs_kernel(&self) -> bool {
        matches!(self, Self::Apply | Self::Revert { .. })
    }
}

/// Whether `status` describes an attempt at exactly this spec entry: same
/// LivePatch generation and, when the spec pins one, the same sha256.
pub fn same_attempt(spec: &NodePatch, status: &PatchStatus) -> bool {
    status.live_patch_generation == spec.live_patch_generation
        && spec
            .module
            .sha256
            .as_ref()
            .is_none_or(|want| status.sha256.as_ref() == Some(want))
}

/// Decides what to do about one spec entry. `stall_revert` is true while a
/// stall policy's revert is under way for it (it must be finished, not undone).
pub fn decide(
    spec: &NodePatch,
    status: Option<&PatchStatus>,
    stall_revert: bool,
    kernel: &KernelFacts,
) -> Action {
    let same = status.is_some_and(|s| same_attempt(spec, s));
    let failed_same = same && status.is_some_and(|s| s.state == PatchState::Failed);
    let sysfs = status.and_then(|s| s.sysfs_name.clone());
    let in_kernel = sysfs.as_ref().and_then(|n| kernel.patches.get(n)).copied();
    let loaded = sysfs
        .as_ref()
        .is_some_and(|n| in_kernel.is_some() || kernel.loaded_modules.contains(n));
    match spec.desired_state {
        DesiredState::Enabled => {
            if stall_revert && let Some(name) = sysfs {
                return Action::Revert { sysfs_name: name };
            }
            // No retry loops: a failed attempt waits for a new generation, digest or boot.
            if failed_same {
                return Action::Nothing;
            }
            if !kernel.livepatch_supported {
                return Action::Report {
                    state: PatchState::NotApplicable,
                    reason: Some(reason::LIVEPATCH_UNSUPPORTED),
                    message:
                        "this node's kernel does not support livepatch (no /sys/kernel/livepatch)"
                            .into(),
                };
            }
            if spec.module.kernel_release != kernel.release {
                return Action::Report {
                    state: PatchState::NotApplicable,
                    reason: Some(reason::KERNEL_RELEASE_MISMATCH),
                    message: format!(
                        "the module is for kernel {}, this node runs {}",
                        spec.module.kernel_release, kernel.release
                    ),
                };
            }
            match (in_kernel, status) {
                (Some((true, false)), Some(s)) if s.state == PatchState::Applied && same => {
                    Action::Nothing
                }
                // Same module, already applied: a new generation changed something else.
                (Some((true, false)), Some(s))
                    if s.state == PatchState::Applied
                        && spec.module.sha256.is_some()
                        && s.sha256 == spec.module.sha256 =>
                {
                    Action::AdoptGeneration
                }
                _ => Action::Apply,
            }
        }
        DesiredState::Disabled => {
            if failed_same
                && status.is_some_and(|s| s.reason.as_deref() == Some(reason::REVERT_FAILED))
            {
                return Action::Nothing;
            }
            match sysfs {
                Some(name) if loaded => Action::Revert { sysfs_name: name },
                _ => Action::Report {
                    state: PatchState::Reverted,
                    reason: None,
                    message: "the patch is not loaded on this node".into(),
                },
            }
        }
    }
}

/// After a reboot every patch is gone from the kernel: entries that were
/// (being) applied, or failed, start again; the others stay as they were.
pub fn reset_for_new_boot(status: &mut PatchStatus) {
    if matches!(
        status.state,
        PatchState::Reverted | PatchState::NotApplicable | PatchState::Pending
    ) {
        return;
    }
    status.state = PatchState::Pending;
    status.reason = Some(reason::REBOOTED.into());
    status.message =
        Some("the node rebooted (its boot ID changed): nothing is loaded, applying again".into());
    status.transition = None;
    status.applied_at = None;
    status.duration_seconds = None;
    status.forced = false;
}

/// The policy mapping of the cluster contract: Cordon waits (the operator
/// cordons), Revert and CordonAndRevert revert, Force forces only with allowForce.
pub fn stall_policy(on_stall: OnStall) -> (StallPolicy, bool) {
    match on_stall {
        OnStall::Cordon => (StallPolicy::Wait, false),
        OnStall::Revert | OnStall::CordonAndRevert => (StallPolicy::Revert, false),
        OnStall::Force => (StallPolicy::Force, true),
    }
}

/// `ApplyOptions` for a spec entry. `slice` bounds one call: a transition
/// still running after it is picked up again by the next call.
pub fn apply_options(spec: &NodePatch, slice: Duration) -> Result<ApplyOptions, String> {
    let stall_after = spec.transition.stall_after().map_err(|e| e.to_string())?;
    let signal_after = spec.transition.signal_after().map_err(|e| e.to_string())?;
    let (on_stall, allow_force) = stall_policy(spec.transition.effective_on_stall());
    Ok(ApplyOptions {
        // The agent verified the digest itself, before anything else.
        sha256: None,
        stall_after,
        signal_after,
        on_stall,
        allow_force,
        timeout: slice,
        check: false,
    })
}

pub fn revert_options(spec: &NodePatch, slice: Duration) -> RevertOptions {
    RevertOptions {
        stall_after: spec
            .transition
            .stall_after()
            .unwrap_or(Duration::from_secs(60)),
        timeout: slice,
        check: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use graft_crds::{ModuleSource, NodeModule, TransitionPolicy};

    const SHA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const SHA2: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn spec(desired: DesiredState, generation: i64, sha: &str) -> NodePatch {
        NodePatch {
            live_patch: "cve-1".into(),
            live_patch_generation: Some(generation),
            module: NodeModule {
                kernel_release: "6.1.0".into(),
                source: ModuleSource::config_map("cm", "patch.ko"),
                sha256: Some(sha.into()),
            },
            desired_state: desired,
            transition: TransitionPolicy::default(),
        }
    }

    fn status(state: PatchState, generation: i64, sha: &str) -> PatchStatus {
        PatchStatus {
            live_patch: "cve-1".into(),
            live_patch_generation: Some(generation),
            sha256: Some(sha.into()),
            state,
            sysfs_name: Some("graft_demo".into()),
            ..PatchStatus::default()
        }
    }

    fn kernel(patches: &[(&str, bool, bool)]) -> KernelFacts {
        KernelFacts {
            release: "6.1.0".into(),
            boot_id: "boot".into(),
            livepatch_supported: true,
            patches: patches
                .iter()
                .map(|(n, e, t)| (n.to_string(), (*e, *t)))
                .collect(),
            loaded_modules: patches.iter().map(|(n, ..)| n.to_string()).collect(),
        }
    }

    #[test]
    fn a_new_entry_is_applied() {
        let s = spec(DesiredState::Enabled, 1, SHA);
        assert_eq!(decide(&s, None, false, &kernel(&[])), Action::Apply);
    }

    #[test]
    fn an_applied_entry_needs_nothing_until_the_kernel_disagrees() {
        let s = spec(DesiredState::Enabled, 1, SHA);
        let st = status(PatchState::Applied, 1, SHA);
        let applied = kernel(&[("graft_demo", true, false)]);
        assert_eq!(decide(&s, Some(&st), false, &applied), Action::Nothing);
        // Someone reverted it by hand: the spec still wants it.
        assert_eq!(decide(&s, Some(&st), false, &kernel(&[])), Action::Apply);
        // A transition running: follow it.
        let running = kernel(&[("graft_demo", true, true)]);
        assert_eq!(decide(&s, Some(&st), false, &running), Action::Apply);
    }

    #[test]
    fn a_new_generation_of_the_same_module_is_adopted_without_reloading() {
        let s = spec(DesiredState::Enabled, 2, SHA);
        let st = status(PatchState::Applied, 1, SHA);
        let applied = kernel(&[("graft_demo", true, false)]);
        assert_eq!(
            decide(&s, Some(&st), false, &applied),
            Action::AdoptGeneration
        );
        let other_module = spec(DesiredState::Enabled, 2, SHA2);
        assert_eq!(
            decide(&other_module, Some(&st), false, &applied),
            Action::Apply
        );
    }

    #[test]
    fn a_failed_attempt_is_not_retried_for_the_same_generation_and_digest() {
        let st = status(PatchState::Failed, 3, SHA);
        let k = kernel(&[]);
        assert_eq!(
            decide(&spec(DesiredState::Enabled, 3, SHA), Some(&st), false, &k),
            Action::Nothing
        );
        assert_eq!(
            decide(&spec(DesiredState::Enabled, 4, SHA), Some(&st), false, &k),
            Action::Apply,
            "a new generation tries again"
        );
        assert_eq!(
            decide(&spec(DesiredState::Enabled, 3, SHA2), Some(&st), false, &k),
            Action::Apply,
            "a new digest tries again"
        );
        let mut rebooted = st.clone();
        reset_for_new_boot(&mut rebooted);
        assert_eq!(rebooted.state, PatchState::Pending);
        assert_eq!(
            decide(
                &spec(DesiredState::Enabled, 3, SHA),
                Some(&rebooted),
                false,
                &k
            ),
            Action::Apply,
            "a new boot tries again"
        );
    }

    #[test]
    fn nodes_that_cannot_take_the_patch_are_not_applicable() {
        let s = spec(DesiredState::Enabled, 1, SHA);
        let mut k = kernel(&[]);
        k.release = "6.12.0".into();
        assert!(matches!(
            decide(&s, None, false, &k),
            Action::Report {
                state: PatchState::NotApplicable,
                reason: Some(reason::KERNEL_RELEASE_MISMATCH),
                ..
            }
        ));
        let mut k = kernel(&[]);
        k.livepatch_supported = false;
        assert!(matches!(
            decide(&s, None, false, &k),
            Action::Report {
                state: PatchState::NotApplicable,
                reason: Some(reason::LIVEPATCH_UNSUPPORTED),
                ..
            }
        ));
    }

    #[test]
    fn disabled_reverts_what_is_loaded_and_reports_the_rest_reverted() {
        let s = spec(DesiredState::Disabled, 2, SHA);
        let st = status(PatchState::Applied, 1, SHA);
        assert_eq!(
            decide(
                &s,
                Some(&st),
                false,
                &kernel(&[("graft_demo", true, false)])
            ),
            Action::Revert {
                sysfs_name: "graft_demo".into()
            }
        );
        // A module without its patch directory (disabled, never unloaded).
        let mut inert = kernel(&[]);
        inert.loaded_modules.insert("graft_demo".into());
        assert_eq!(
            decide(&s, Some(&st), false, &inert),
            Action::Revert {
                sysfs_name: "graft_demo".into()
            }
        );
        assert!(matches!(
            decide(&s, Some(&st), false, &kernel(&[])),
            Action::Report {
                state: PatchState::Reverted,
                ..
            }
        ));
        assert!(matches!(
            decide(&s, None, false, &kernel(&[])),
            Action::Report {
                state: PatchState::Reverted,
                ..
            }
        ));
        let mut failed = status(PatchState::Failed, 2, SHA);
        failed.reason = Some(reason::REVERT_FAILED.into());
        assert_eq!(
            decide(
                &s,
                Some(&failed),
                false,
                &kernel(&[("graft_demo", true, false)])
            ),
            Action::Nothing,
            "a failed revert is not retried for the same generation"
        );
    }

    #[test]
    fn a_stall_revert_is_finished_not_undone() {
        let s = spec(DesiredState::Enabled, 1, SHA);
        let st = status(PatchState::Reverting, 1, SHA);
        assert_eq!(
            decide(&s, Some(&st), true, &kernel(&[("graft_demo", false, true)])),
            Action::Revert {
                sysfs_name: "graft_demo".into()
            }
        );
    }

    #[test]
    fn stall_policies_map_as_the_contract_says() {
        assert_eq!(stall_policy(OnStall::Cordon), (StallPolicy::Wait, false));
        assert_eq!(stall_policy(OnStall::Revert), (StallPolicy::Revert, false));
        assert_eq!(
            stall_policy(OnStall::CordonAndRevert),
            (StallPolicy::Revert, false)
        );
        assert_eq!(stall_policy(OnStall::Force), (StallPolicy::Force, true));
        // Force without allowForce degrades to Cordon.
        let mut s = spec(DesiredState::Enabled, 1, SHA);
        s.transition.on_stall = OnStall::Force;
        let opts = apply_options(&s, Duration::from_secs(1)).unwrap();
        assert_eq!(
            (opts.on_stall, opts.allow_force),
            (StallPolicy::Wait, false)
        );
        s.transition.allow_force = true;
        let opts = apply_options(&s, Duration::from_secs(1)).unwrap();
        assert_eq!(
            (opts.on_stall, opts.allow_force),
            (StallPolicy::Force, true)
        );
        s.transition.stall_after = "5m".into();
        assert_eq!(
            apply_options(&s, Duration::from_secs(1))
                .unwrap()
                .stall_after,
            Duration::from_secs(300)
        );
        s.transition.stall_after = "soon".into();
        assert!(apply_options(&s, Duration::from_secs(1)).is_err());
    }
}
