//! `LivePatch`: what a cluster admin writes.

use k8s_openapi::apimachinery::pkg::{
    apis::meta::v1::{Condition, LabelSelector, Time},
    util::intstr::IntOrString,
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    common::{DesiredState, ModuleSource, SHA256_PATTERN, TransitionPolicy},
    livepatchnode::PatchState,
};

/// Most entries in `spec.modules` (the schema's `maxItems`).
pub const MAX_MODULES: usize = 32;

/// Most entries in `status.nodesNeedingAttention` (the schema's `maxItems`).
pub const MAX_NODES_NEEDING_ATTENTION: usize = 20;

/// What the admin asks for: the nodes, the module for each kernel release,
/// the desired state, the rollout pace and the stall policy.
// Clippy reads the repeated `type_`/`priority` keys of the printcolumns as
// duplicated attributes; they are separate columns.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "graft.dev",
    version = "v1alpha1",
    kind = "LivePatch",
    plural = "livepatches",
    singular = "livepatch",
    shortname = "lp",
    category = "graft",
    status = "LivePatchStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A kernel livepatch and how Graft rolls it out: which nodes, which module for which kernel release, how many nodes at once, and what to do when a transition stalls. Graft loads the module on every matching node, waits until every task has switched to the patched code, and cordons a node only when its transition stalls.",
    printcolumn(
        name = "Applied",
        type_ = "integer",
        json_path = ".status.applied",
        description = "Nodes where the patch is applied"
    ),
    printcolumn(
        name = "Targeted",
        type_ = "integer",
        json_path = ".status.targeted",
        description = "Nodes that should get the patch"
    ),
    printcolumn(
        name = "Stalled",
        type_ = "integer",
        json_path = ".status.stalled",
        description = "Nodes whose transition stalled"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.failed",
        description = "Nodes where the patch failed"
    ),
    printcolumn(
        name = "Desired",
        type_ = "string",
        json_path = ".spec.desiredState",
        description = "Enabled or Disabled",
        priority = 1
    ),
    printcolumn(
        name = "Transitioning",
        type_ = "integer",
        json_path = ".status.transitioning",
        description = "Nodes in transition",
        priority = 1
    ),
    printcolumn(
        name = "Pending",
        type_ = "integer",
        json_path = ".status.pending",
        description = "Nodes waiting for their turn",
        priority = 1
    ),
    printcolumn(
        name = "NotApplicable",
        type_ = "integer",
        json_path = ".status.notApplicable",
        description = "Selected nodes whose kernel no module matches",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct LivePatchSpec {
    /// Which nodes get the patch, by their labels. Empty or unset: every
    /// Linux node. Nodes whose kernel release matches none of `modules` are
    /// counted as NotApplicable and left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// The patch built for each kernel release it supports, one entry per
    /// kernel build. Each node's kernel release
    /// (`Node.status.nodeInfo.kernelVersion`, as `uname -r` prints it) is
    /// matched against the entries in order; the first match wins.
    #[schemars(length(min = 1, max = MAX_MODULES))]
    pub modules: Vec<PatchModule>,

    /// `Enabled` (default): apply the patch on every targeted node.
    /// `Disabled`: revert it and unload the module everywhere, keeping this
    /// object. Deleting the LivePatch also reverts it everywhere first.
    #[serde(default)]
    pub desired_state: DesiredState,

    /// How fast the patch spreads and when the rollout stops.
    #[serde(default)]
    pub rollout: RolloutPolicy,

    /// How long a transition may take and what to do when it stalls.
    #[serde(default)]
    pub transition: TransitionPolicy,
}

/// The patch module built for one kernel release (or family of releases).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "has(self.kernelRelease) != has(self.kernelReleaseRegex)"
).message(
    "set exactly one of kernelRelease (an exact release such as 6.1.0-18-amd64) or kernelReleaseRegex (a regular expression such as 6\\.1\\.0-18-.*)"
))]
#[x_kube(validation = Rule::new(
    "has(self.sha256) || !(has(self.source.url) || has(self.source.configMap))"
).message(
    "sha256 is required when the module comes from a url or configMap: set it to the module file's SHA-256 digest as printed by sha256sum (64 lowercase hex digits)"
).reason(Reason::FieldValueRequired).field_path(".sha256"))]
pub struct PatchModule {
    /// The exact kernel release this module was built for, as `uname -r`
    /// prints it (e.g. `6.1.0-18-amd64`). Set this or `kernelReleaseRegex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub kernel_release: Option<String>,

    /// A regular expression (RE2 syntax) matched against the whole kernel
    /// release, as if written between `^` and `$` (e.g. `6\.1\.0-18-.*`).
    /// Set this or `kernelRelease`. The agent still refuses a module whose
    /// own build does not fit the running kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub kernel_release_regex: Option<String>,

    /// Where the agent reads the module file from: exactly one of
    /// `hostPath`, `url` or `configMap`.
    pub source: ModuleSource,

    /// SHA-256 digest of the module file, 64 lowercase hex digits (the first
    /// field `sha256sum` prints). Required for `url` and `configMap`,
    /// optional for `hostPath`. The agent refuses a module whose digest
    /// differs before it does anything else with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SHA256_PATTERN))]
    pub sha256: Option<String>,
}

/// How a [`PatchModule`] picks kernel releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelMatch<'a> {
    /// Exactly this release.
    Exact(&'a str),
    /// Every release the regular expression matches as a whole.
    Regex(&'a str),
}

impl KernelMatch<'_> {
    /// For [`KernelMatch::Regex`], the pattern anchored at both ends
    /// (`^(?:…)$`), ready to compile; `None` for an exact release.
    pub fn anchored_pattern(&self) -> Option<String> {
        match self {
            Self::Exact(_) => None,
            Self::Regex(pattern) => Some(format!("^(?:{pattern})$")),
        }
    }
}

impl PatchModule {
    /// How this entry picks kernel releases, or `None` when neither or both
    /// of `kernelRelease` and `kernelReleaseRegex` are set (the schema
    /// rejects both).
    pub fn kernel_match(&self) -> Option<KernelMatch<'_>> {
        match (&self.kernel_release, &self.kernel_release_regex) {
            (Some(release), None) => Some(KernelMatch::Exact(release)),
            (None, Some(regex)) => Some(KernelMatch::Regex(regex)),
            _ => None,
        }
    }
}

/// How fast a patch spreads across the targeted nodes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPolicy {
    /// How many nodes may be in transition at once: a whole number of nodes
    /// (at least 1, e.g. `3`) or a percentage of the targeted nodes from 1%
    /// to 100% (e.g. `"10%"`, rounded down, but at least 1 node). Failed
    /// nodes count against this budget too. Default 1.
    #[serde(default = "default_max_parallel")]
    // Not nullable: an explicit null must be defaulted (to 1) by the API
    // server, not kept, or the object would not deserialize.
    #[schemars(extend("nullable" = false))]
    // `string(self) == self` is true only for a string (CEL equality across
    // types is false); it stands in for `type(self) == string`, which kube's
    // client-side CEL evaluator cannot run, so the tests can check this rule.
    #[x_kube(validation = Rule::new(
        "string(self) == self ? self.matches('^(100|[1-9][0-9]?)%$') : self >= 1"
    ).message(
        "maxParallel must be a whole number of nodes of at least 1 (e.g. 3) or a percentage of the targeted nodes from 1% to 100% (e.g. \"10%\")"
    ))]
    pub max_parallel: IntOrString,

    /// How many failed nodes the rollout tolerates. When more nodes than
    /// this have failed, the rollout halts (condition Paused, reason
    /// FailureBudgetExceeded) until the failures are resolved or the budget
    /// is raised. Default 0: the first failure halts the rollout.
    #[serde(default)]
    pub max_failures: u32,

    /// Stop starting new nodes. Nodes already in transition finish; nothing
    /// is reverted. Default false.
    #[serde(default)]
    pub paused: bool,
}

fn default_max_parallel() -> IntOrString {
    IntOrString::Int(1)
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        Self {
            max_parallel: default_max_parallel(),
            max_failures: 0,
            paused: false,
        }
    }
}

impl RolloutPolicy {
    /// `maxParallel` as a number of nodes, given how many nodes are targeted:
    /// percentages round down, and the result is at least 1. `None` when the
    /// value is invalid (the schema rejects such values).
    ///
    /// ```
    /// # use graft_crds::RolloutPolicy;
    /// # use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    /// let policy = RolloutPolicy { max_parallel: IntOrString::String("10%".into()), ..Default::default() };
    /// assert_eq!(policy.max_parallel_nodes(35), Some(3));
    /// assert_eq!(policy.max_parallel_nodes(5), Some(1));
    /// ```
    pub fn max_parallel_nodes(&self, targeted: u32) -> Option<u32> {
        match &self.max_parallel {
            IntOrString::Int(n) => u32::try_from(*n).ok().filter(|n| *n >= 1),
            IntOrString::String(s) => {
                let percent: u64 = s.strip_suffix('%')?.parse().ok()?;
                if !(1..=100).contains(&percent) || s.starts_with(['+', '0']) {
                    return None;
                }
                let nodes = u64::from(targeted) * percent / 100;
                Some(u32::try_from(nodes).unwrap_or(u32::MAX).max(1))
            }
        }
    }

    /// Whether `failed` failed nodes exceed `maxFailures`, so the rollout halts.
    pub fn failure_budget_exceeded(&self, failed: u32) -> bool {
        failed > self.max_failures
    }
}

/// What Graft observed and did for one LivePatch. Written by graft-operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LivePatchStatus {
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Standard conditions: `Progressing` (nodes are being patched or
    /// reverted), `Available` (every targeted node has the desired state),
    /// `Degraded` (some nodes stalled or failed) and `Paused` (the rollout
    /// stopped starting nodes: `spec.rollout.paused`, or reason
    /// FailureBudgetExceeded).
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Nodes selected by `nodeSelector` whose kernel release a module
    /// matches. Each is counted in exactly one of pending, transitioning,
    /// applied, stalled, failed and reverted.
    #[serde(default)]
    pub targeted: u32,

    /// Targeted nodes where every task runs the patched code.
    #[serde(default)]
    pub applied: u32,

    /// Targeted nodes loading the module, in transition, or reverting.
    #[serde(default)]
    pub transitioning: u32,

    /// Targeted nodes whose transition ran longer than `stallAfter`.
    #[serde(default)]
    pub stalled: u32,

    /// Targeted nodes where the patch failed (see `nodesNeedingAttention`
    /// and the LivePatchNode of each node).
    #[serde(default)]
    pub failed: u32,

    /// Targeted nodes waiting for their turn in the rollout.
    #[serde(default)]
    pub pending: u32,

    /// Targeted nodes where the patch has been reverted and unloaded
    /// (`desiredState: Disabled`, or the `Revert` stall policy).
    #[serde(default)]
    pub reverted: u32,

    /// Selected nodes that cannot take the patch: no module matches their
    /// kernel release, or their agent reports the patch NotApplicable (e.g.
    /// no livepatch support). Not included in `targeted`.
    #[serde(default)]
    pub not_applicable: u32,

    /// The nodes that need a person's attention (stalled or failed), at most
    /// 20, in rollout order; the counts above give the totals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_NODES_NEEDING_ATTENTION))]
    pub nodes_needing_attention: Vec<NodeAttention>,
}

/// A node that needs attention for one LivePatch.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeAttention {
    /// Name of the Node (and of its LivePatchNode).
    pub node: String,

    /// The patch's state on that node (Stalled or Failed).
    pub state: PatchState,

    /// Why, as one CamelCase word, from the node's agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// Details from the node's agent: what happened and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// When the node entered this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,

    /// True when Graft cordoned the node because of this patch.
    #[serde(default)]
    pub cordoned: bool,
}

impl LivePatchStatus {
    /// Sets the per-state counts from the states of the targeted nodes
    /// (NotApplicable ones are counted in `notApplicable` and not targeted).
    /// `Loading`, `Transitioning` and `Reverting` count as transitioning.
    pub fn tally(&mut self, states: impl IntoIterator<Item = PatchState>) {
        let (mut targeted, mut applied, mut transitioning, mut stalled) = (0u32, 0u32, 0u32, 0u32);
        let (mut failed, mut pending, mut reverted, mut not_applicable) = (0u32, 0u32, 0u32, 0u32);
        for state in states {
            let bucket = match state {
                PatchState::NotApplicable => {
                    not_applicable = not_applicable.saturating_add(1);
                    continue;
                }
                PatchState::Pending => &mut pending,
                PatchState::Loading | PatchState::Transitioning | PatchState::Reverting => {
                    &mut transitioning
                }
                PatchState::Applied => &mut applied,
                PatchState::Stalled => &mut stalled,
                PatchState::Reverted => &mut reverted,
                PatchState::Failed => &mut failed,
            };
            *bucket = bucket.saturating_add(1);
            targeted = targeted.saturating_add(1);
        }
        self.targeted = targeted;
        self.applied = applied;
        self.transitioning = transitioning;
        self.stalled = stalled;
        self.failed = failed;
        self.pending = pending;
        self.reverted = reverted;
        self.not_applicable = not_applicable;
    }
}
