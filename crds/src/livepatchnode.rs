//! `LivePatchNode`: the per-node contract between the operator (spec) and that
//! node's agent (status).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    DesiredState, ModuleSource, SHA256_PATTERN, TransitionPolicy, api_enum_strings,
};

/// Most patches one LivePatchNode can carry (the schema's `maxItems`).
pub const MAX_PATCHES_PER_NODE: usize = 64;

/// Most blocking tasks reported per transition (the schema's `maxItems`); the
/// full count is `tasksTotal - tasksSwitched`.
pub const MAX_BLOCKING_TASKS: usize = 10;

/// What the operator wants on one node. Named after the Node and owned by it,
/// so it goes away with the Node. The operator writes `spec`; only the agent
/// on that node writes `status`.
// Clippy reads the repeated `type_`/`priority` keys of the printcolumns as
// duplicated attributes; they are separate columns.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "graft.dev",
    version = "v1alpha1",
    kind = "LivePatchNode",
    plural = "livepatchnodes",
    singular = "livepatchnode",
    shortname = "lpn",
    category = "graft",
    status = "LivePatchNodeStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "The livepatches one node should have (spec, written by graft-operator) and what that node's graft-agent found and did (status). Named after its Node and owned by it.",
    printcolumn(
        name = "Kernel",
        type_ = "string",
        json_path = ".status.kernelRelease",
        description = "Kernel release the agent reports (uname -r)"
    ),
    printcolumn(
        name = "Applied",
        type_ = "integer",
        json_path = ".status.applied",
        description = "Patches applied on this node"
    ),
    printcolumn(
        name = "Transitioning",
        type_ = "integer",
        json_path = ".status.transitioning",
        description = "Patches loading, transitioning or reverting"
    ),
    printcolumn(
        name = "Stalled",
        type_ = "integer",
        json_path = ".status.stalled",
        description = "Patches whose transition stalled"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.failed",
        description = "Patches that failed",
        priority = 1
    ),
    printcolumn(
        name = "Simulated",
        type_ = "boolean",
        json_path = ".status.simulated",
        description = "The node runs Graft's simulated kernel",
        priority = 1
    ),
    printcolumn(
        name = "Agent",
        type_ = "string",
        json_path = ".status.agentVersion",
        description = "graft-agent version",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct LivePatchNodeSpec {
    /// The patches this node should have, one entry per LivePatch that
    /// targets it and whose turn in the rollout has come. Written by
    /// graft-operator only. A patch that disappears from this list is left
    /// as it is; to remove a patch the operator first sets its
    /// `desiredState` to Disabled.
    #[serde(default)]
    #[schemars(length(max = MAX_PATCHES_PER_NODE))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["livePatch".into()]))]
    pub patches: Vec<NodePatch>,
}

/// One patch the operator wants on this node.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodePatch {
    /// Name of the LivePatch this entry comes from.
    #[schemars(length(min = 1, max = 253))]
    pub live_patch: String,

    /// `metadata.generation` of the LivePatch when the operator wrote this
    /// entry. The agent echoes it in `status.patches[].livePatchGeneration`,
    /// so the operator knows which version of the patch a status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_patch_generation: Option<i64>,

    /// The module chosen for this node's kernel.
    pub module: NodeModule,

    /// `Enabled`: load the module and finish the transition to the patched
    /// state. `Disabled`: revert (cancelling a transition in progress) and
    /// unload the module.
    #[serde(default)]
    pub desired_state: DesiredState,

    /// The LivePatch's transition policy. The agent applies its node-local
    /// parts (stallAfter, signalAfter, Revert, Force); the operator cordons.
    #[serde(default)]
    pub transition: TransitionPolicy,
}

/// The module chosen for one node: its source, digest and the kernel release
/// it was matched for.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "has(self.sha256) || !(has(self.source.url) || has(self.source.configMap))"
).message(
    "sha256 is required when the module comes from a url or configMap: set it to the module file's SHA-256 digest as printed by sha256sum (64 lowercase hex digits)"
).reason(Reason::FieldValueRequired).field_path(".sha256"))]
pub struct NodeModule {
    /// The node's kernel release (`Node.status.nodeInfo.kernelVersion`) that
    /// the operator matched the module for. The agent refuses to load the
    /// module when the running kernel (`uname -r`) differs.
    #[schemars(length(min = 1, max = 64))]
    pub kernel_release: String,

    /// Where to read the module from.
    pub source: ModuleSource,

    /// SHA-256 digest of the module file, 64 lowercase hex digits. The agent
    /// verifies it before anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SHA256_PATTERN))]
    pub sha256: Option<String>,
}

/// What the agent on the node found and did. Written only by that node's agent.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LivePatchNodeStatus {
    /// The `metadata.generation` of this LivePatchNode the agent last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The running kernel's release, as `uname -r` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,

    /// The kernel's boot ID (`/proc/sys/kernel/random/boot_id`). When it
    /// changes the node rebooted, every patch is gone from the kernel and the
    /// agent applies the spec again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,

    /// Whether the kernel supports livepatch (`/sys/kernel/livepatch` exists).
    /// Unset until the agent has checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub livepatch_supported: Option<bool>,

    /// Version of the graft-agent writing this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,

    /// True when the agent drives Graft's simulated kernel instead of the real
    /// one (tests and demos): nothing on this node is really patched.
    #[serde(default)]
    pub simulated: bool,

    /// Standard conditions of the node as a whole: `Ready` (the agent runs
    /// and the node matches its spec) and `Degraded` (a patch failed or
    /// stalled).
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// One entry per patch in the spec (and per patch the agent still has to
    /// clean up), keyed by `livePatch`.
    #[serde(default)]
    #[schemars(length(max = MAX_PATCHES_PER_NODE))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["livePatch".into()]))]
    pub patches: Vec<PatchStatus>,

    /// Number of patches in state Applied.
    #[serde(default)]
    pub applied: u32,

    /// Number of patches in state Loading, Transitioning or Reverting.
    #[serde(default)]
    pub transitioning: u32,

    /// Number of patches in state Stalled.
    #[serde(default)]
    pub stalled: u32,

    /// Number of patches in state Failed.
    #[serde(default)]
    pub failed: u32,
}

impl LivePatchNodeStatus {
    /// The status entry of one LivePatch, if any.
    pub fn patch(&self, live_patch: &str) -> Option<&PatchStatus> {
        self.patches.iter().find(|p| p.live_patch == live_patch)
    }

    /// Recomputes `applied`, `transitioning`, `stalled` and `failed` from
    /// `patches`. Call it before writing the status.
    pub fn recount(&mut self) {
        let count = |f: fn(PatchState) -> bool| {
            u32::try_from(self.patches.iter().filter(|p| f(p.state)).count()).unwrap_or(u32::MAX)
        };
        self.applied = count(|s| s == PatchState::Applied);
        self.transitioning = count(PatchState::is_in_progress);
        self.stalled = count(|s| s == PatchState::Stalled);
        self.failed = count(|s| s == PatchState::Failed);
    }
}

/// Where one patch stands on one node.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PatchStatus {
    /// Name of the LivePatch.
    pub live_patch: String,

    /// The `livePatchGeneration` of the spec entry this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_patch_generation: Option<i64>,

    /// SHA-256 of the module the agent verified for this patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,

    /// Pending (accepted, not started), Loading (fetching, verifying or
    /// loading the module), Transitioning (tasks are moving to the patched
    /// code), Applied (every task runs patched code), Stalled (the transition
    /// ran longer than stallAfter), Reverting (moving tasks back to the
    /// unpatched code), Reverted (disabled and unloaded), Failed (see reason
    /// and message) or NotApplicable (this node cannot take the patch, e.g.
    /// its kernel does not support livepatch or is not the release the module
    /// was built for).
    pub state: PatchState,

    /// Name of the patch under `/sys/kernel/livepatch/` (the module name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sysfs_name: Option<String>,

    /// The transition in progress (states Transitioning, Stalled and
    /// Reverting); absent when no transition runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<TransitionStatus>,

    /// Why the patch is in its state, as one CamelCase word (e.g.
    /// `ChecksumMismatch`, `KernelReleaseMismatch`, `ModuleLoadFailed`,
    /// `TransitionStalled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// Human-readable details: what happened and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// When `state` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,

    /// When the patch last reached Applied on the current boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<Time>,

    /// How long the last finished transition took, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,

    /// True when the transition was forced (`onStall: Force`): the module can
    /// never be unloaded and the node should be rebooted.
    #[serde(default)]
    pub forced: bool,
}

/// A transition in progress on a node: how far it has moved to the patched
/// (or back to the unpatched) code, and what blocks it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TransitionStatus {
    /// Which code the tasks are moving to: `Patched` when enabling,
    /// `Unpatched` when disabling or cancelling.
    pub target: TransitionTarget,

    /// When the transition started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,

    /// Tasks already running the target code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_switched: Option<u32>,

    /// All tasks taking part in the transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_total: Option<u32>,

    /// Some of the tasks that still run the old code, with the function they
    /// sleep in and their pod. At most 10 entries (kernel threads first); the
    /// full count is `tasksTotal - tasksSwitched`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_BLOCKING_TASKS))]
    pub blocking_tasks: Vec<BlockingTask>,

    /// When the agent last wrote the patch's `signal` attribute (kernels 4.15
    /// to 5.0 only, after `signalAfter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signalled_at: Option<Time>,
}

/// A task (thread) that has not yet switched to the target code.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BlockingTask {
    /// Process ID (thread group ID) in the node's PID namespace.
    pub pid: i32,

    /// Thread ID in the node's PID namespace.
    pub tid: i32,

    /// Command name (`/proc/<pid>/task/<tid>/comm`).
    pub comm: String,

    /// The function the task sleeps in, from its kernel stack (e.g.
    /// `msleep_interruptible`). Unset when the stack could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,

    /// True for a kernel thread: fake signals do not move it, the transition
    /// waits until it leaves the patched function by itself.
    #[serde(default)]
    pub kernel_thread: bool,

    /// UID of the pod the task belongs to, when it runs in a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,

    /// Namespace of that pod, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,

    /// Name of that pod, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,

    /// ID of the container the task runs in, when it runs in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// The state of one patch on one node.
#[derive(
    JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum PatchState {
    /// Accepted, not started yet.
    #[default]
    Pending,
    /// Fetching, verifying or loading the module.
    Loading,
    /// Tasks are moving to the patched code.
    Transitioning,
    /// Every task runs the patched code.
    Applied,
    /// The transition ran longer than `stallAfter`.
    Stalled,
    /// Tasks are moving back to the unpatched code.
    Reverting,
    /// Disabled and unloaded.
    Reverted,
    /// Something went wrong; see reason and message.
    Failed,
    /// The node cannot take this patch.
    NotApplicable,
}

impl PatchState {
    /// Every state, in declaration order (e.g. for the `graft_patch_state`
    /// metric, which exports 1 for the current state and 0 for the others).
    pub const ALL: [Self; 9] = [
        Self::Pending,
        Self::Loading,
        Self::Transitioning,
        Self::Applied,
        Self::Stalled,
        Self::Reverting,
        Self::Reverted,
        Self::Failed,
        Self::NotApplicable,
    ];

    /// The state as it appears in the API.
    pub const fn as_str(self) -> &'static str {
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

    /// Loading, Transitioning or Reverting: work is under way (counted as
    /// `transitioning`, and against the rollout's `maxParallel`).
    pub const fn is_in_progress(self) -> bool {
        matches!(self, Self::Loading | Self::Transitioning | Self::Reverting)
    }

    /// Stalled or Failed: a person should look at the node.
    pub const fn needs_attention(self) -> bool {
        matches!(self, Self::Stalled | Self::Failed)
    }

    /// Applied, Reverted, Failed or NotApplicable: nothing more happens
    /// without a change of spec (or a reboot).
    pub const fn is_settled(self) -> bool {
        matches!(
            self,
            Self::Applied | Self::Reverted | Self::Failed | Self::NotApplicable
        )
    }
}

/// The direction of a transition.
#[derive(
    JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum TransitionTarget {
    /// Tasks move to the patched code (enabling).
    #[default]
    Patched,
    /// Tasks move back to the original code (disabling or cancelling).
    Unpatched,
}

impl TransitionTarget {
    /// Every value, in declaration order.
    pub const ALL: [Self; 2] = [Self::Patched, Self::Unpatched];

    /// The value as it appears in the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Patched => "Patched",
            Self::Unpatched => "Unpatched",
        }
    }
}

api_enum_strings!(PatchState, TransitionTarget);

impl LivePatchNodeSpec {
    /// The spec entry of one LivePatch, if any.
    pub fn patch(&self, live_patch: &str) -> Option<&NodePatch> {
        self.patches.iter().find(|p| p.live_patch == live_patch)
    }
}
