//! Graft's Kubernetes API, group `graft.dev`, version `v1alpha1`: the types
//! shared by graft-operator and graft-agent, and the generator of the CRD
//! YAML (`crdgen`).
//!
//! Two cluster-scoped kinds:
//!
//! - [`LivePatch`] (`kubectl get lp`): what a cluster admin writes — which
//!   nodes, which module for which kernel release ([`PatchModule`]), how fast
//!   ([`RolloutPolicy`]) and what to do when a transition stalls
//!   ([`TransitionPolicy`]). Its [`LivePatchStatus`] is written by the operator.
//! - [`LivePatchNode`] (`kubectl get lpn`): one per node, named after it. The
//!   operator writes the spec ([`NodePatch`] entries); only that node's agent
//!   writes the status ([`LivePatchNodeStatus`], with a [`PatchStatus`] per
//!   patch).
//!
//! The schema validates what OpenAPI can say (patterns, enums, bounds) and
//! the rest with CEL rules (`x-kubernetes-validations`), so a bad object is
//! refused by `kubectl apply` with a message that says what to fix.
//!
//! Regenerate the committed CRD files after changing a type:
//! `cargo run -p graft-crds --bin crdgen -- --out-dir crds` (a test fails
//! while they are stale).

#![warn(missing_docs)]

pub mod common;
pub mod conditions;
pub mod duration;
pub mod generate;
pub mod livepatch;
pub mod livepatchnode;

pub use common::{
    ConfigMapKey, DEFAULT_STALL_AFTER, DesiredState, ModuleSource, OnStall, SHA256_PATTERN,
    SourceRef, TransitionPolicy, UnknownValue,
};
pub use duration::{DURATION_PATTERN, DurationError, parse_duration};
pub use livepatch::{
    KernelMatch, LivePatch, LivePatchSpec, LivePatchStatus, MAX_MODULES,
    MAX_NODES_NEEDING_ATTENTION, NodeAttention, PatchModule, RolloutPolicy,
};
pub use livepatchnode::{
    BlockingTask, LivePatchNode, LivePatchNodeSpec, LivePatchNodeStatus, MAX_BLOCKING_TASKS,
    MAX_PATCHES_PER_NODE, NodeModule, NodePatch, PatchState, PatchStatus, TransitionStatus,
    TransitionTarget,
};

/// The API group.
pub const GROUP: &str = "graft.dev";

/// The API version.
pub const VERSION: &str = "v1alpha1";

/// `apiVersion` of Graft's objects.
pub const API_VERSION: &str = "graft.dev/v1alpha1";

/// Annotation the operator puts on a Node it cordoned; its value names the
/// LivePatch(es) that caused it. Graft uncordons only Nodes that carry it.
pub const CORDONED_BY_ANNOTATION: &str = "graft.dev/cordoned-by";

/// Finalizer the operator puts on a LivePatch so that deleting it reverts the
/// patch everywhere first.
pub const FINALIZER: &str = "graft.dev/revert";

/// Field manager of the operator's server-side apply writes.
pub const OPERATOR_FIELD_MANAGER: &str = "graft-operator";

/// Field manager of the agent's server-side apply writes.
pub const AGENT_FIELD_MANAGER: &str = "graft-agent";
