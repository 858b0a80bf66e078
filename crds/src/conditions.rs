//! Condition types and reasons used in Graft's statuses, and a helper to set a
//! condition the way Kubernetes' `meta.SetStatusCondition` does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types of `LivePatch.status.conditions`.
pub mod livepatch {
    /// Nodes are being patched or reverted.
    pub const PROGRESSING: &str = "Progressing";
    /// Every targeted node has the desired state.
    pub const AVAILABLE: &str = "Available";
    /// Some nodes stalled or failed.
    pub const DEGRADED: &str = "Degraded";
    /// The rollout stopped starting nodes.
    pub const PAUSED: &str = "Paused";

    /// Every condition type, in the order they are usually shown.
    pub const ALL: [&str; 4] = [PROGRESSING, AVAILABLE, DEGRADED, PAUSED];
}

/// Condition types of `LivePatchNode.status.conditions`.
pub mod livepatchnode {
    /// The agent runs and the node matches its spec.
    pub const READY: &str = "Ready";
    /// A patch on the node failed or stalled.
    pub const DEGRADED: &str = "Degraded";

    /// Every condition type.
    pub const ALL: [&str; 2] = [READY, DEGRADED];
}

/// Condition reasons with a fixed meaning across Graft.
pub mod reasons {
    /// `Paused`: `spec.rollout.paused` is true.
    pub const PAUSED_BY_USER: &str = "PausedByUser";
    /// `Paused`: more nodes failed than `spec.rollout.maxFailures` allows.
    pub const FAILURE_BUDGET_EXCEEDED: &str = "FailureBudgetExceeded";
    /// `Progressing`: nodes are being patched.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// `Progressing`: nodes are being reverted.
    pub const REVERTING: &str = "Reverting";
    /// `Progressing` false / `Available` true: every targeted node is done.
    pub const COMPLETE: &str = "Complete";
    /// `Degraded`: a transition stalled.
    pub const TRANSITION_STALLED: &str = "TransitionStalled";
    /// `Degraded`: a node failed to apply or revert the patch.
    pub const NODE_FAILED: &str = "NodeFailed";
    /// `Degraded`: `kernelReleaseRegex` does not compile.
    pub const INVALID_KERNEL_RELEASE_REGEX: &str = "InvalidKernelReleaseRegex";
    /// No problem to report.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// `Ready` false on a LivePatchNode: the kernel has no livepatch support.
    pub const LIVEPATCH_UNSUPPORTED: &str = "LivepatchUnsupported";
}

/// `status` of a condition.
pub const TRUE: &str = "True";
/// `status` of a condition.
pub const FALSE: &str = "False";
/// `status` of a condition.
pub const UNKNOWN: &str = "Unknown";

/// Builds a condition.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { TRUE } else { FALSE }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}

/// Inserts or updates `new` in `conditions`, keyed by type. Like Kubernetes'
/// `meta.SetStatusCondition`, `lastTransitionTime` changes only when the
/// status changes, so repeated reconciles do not rewrite it. Returns whether
/// anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        None => {
            conditions.push(new);
            true
        }
        Some(existing) => {
            let transition_time = if existing.status == new.status {
                existing.last_transition_time.clone()
            } else {
                new.last_transition_time.clone()
            };
            let updated = Condition {
                last_transition_time: transition_time,
                ..new
            };
            if *existing == updated {
                false
            } else {
                *existing = updated;
                true
            }
        }
    }
}

/// The condition of the given type, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of the given type is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == TRUE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn set_condition_keeps_transition_time_while_status_is_unchanged() {
        let mut conditions = Vec::new();
        assert!(set_condition(
            &mut conditions,
            condition(
                livepatch::PROGRESSING,
                true,
                reasons::ROLLING_OUT,
                "1 of 3",
                Some(1),
                at(10)
            )
        ));
        assert!(set_condition(
            &mut conditions,
            condition(
                livepatch::PROGRESSING,
                true,
                reasons::ROLLING_OUT,
                "2 of 3",
                Some(1),
                at(20)
            )
        ));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].message, "2 of 3");
        assert_eq!(conditions[0].last_transition_time, at(10));

        assert!(!set_condition(
            &mut conditions,
            condition(
                livepatch::PROGRESSING,
                true,
                reasons::ROLLING_OUT,
                "2 of 3",
                Some(1),
                at(30)
            )
        ));

        assert!(set_condition(
            &mut conditions,
            condition(
                livepatch::PROGRESSING,
                false,
                reasons::COMPLETE,
                "3 of 3",
                Some(1),
                at(40)
            )
        ));
        assert_eq!(conditions[0].last_transition_time, at(40));
        assert!(!is_true(&conditions, livepatch::PROGRESSING));
        assert!(find_condition(&conditions, livepatch::AVAILABLE).is_none());
    }
}
