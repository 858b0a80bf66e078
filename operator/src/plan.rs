//! The planner: from every LivePatch, Node and LivePatchNode, the whole
//! desired world — each node's LivePatchNode spec, each LivePatch's status,
//! cordons and uncordons, finalizer changes and the Events to emit — as the
//! differences from what is there. Pure: no I/O, no clock (the caller passes
//! `now`), deterministic for a given input whatever the order of the input
//! lists.
//!
//! ## The rules
//!
//! - **Selection.** A LivePatch targets the Linux nodes its `nodeSelector`
//!   matches whose kernel release (`status.nodeInfo.kernelVersion`) one of
//!   its module entries matches (exact, or anchored regex; the first match
//!   wins). Selected nodes that no entry matches are NotApplicable.
//! - **Rollout order.** Zone (label `topology.kubernetes.io/zone`), then
//!   name; the node the operator runs on comes last.
//! - **Admission.** A node is admitted when its LivePatchNode gets an
//!   `Enabled` entry for the patch with the module chosen for its kernel. A
//!   node *occupies a slot* while it has an entry whose state is not settled
//!   (Pending, Loading, Transitioning, Reverting, Stalled) or is Failed. New
//!   nodes are admitted in rollout order while fewer than `maxParallel` slots
//!   are occupied, unless the rollout is paused, halted, or the LivePatch does
//!   not carry the finalizer yet. Nodes already admitted stay admitted. A node
//!   that occupies a slot may have its entry updated (new module, retry) at
//!   any time: that does not add a node in flight.
//! - **Trust.** An agent's per-patch status counts only when it echoes the
//!   entry's `livePatchGeneration` and `sha256` and the agent's boot ID is the
//!   node's current one; otherwise the node is Pending for that patch.
//! - **Failure budget.** More Failed targets than `maxFailures` halts the
//!   rollout (no new admissions; condition Paused, reason
//!   FailureBudgetExceeded; Event RolloutHalted). When the LivePatch's
//!   generation changes (any edit of its spec), failed nodes get the new
//!   generation, which tells their agents to try again.
//! - **Disabled and deletion.** Every entry of a Disabled LivePatch is set to
//!   Disabled at once (reverts are not paced). A LivePatch being deleted
//!   (finalizer `graft.dev/revert`) is Disabled everywhere; once every
//!   existing node's entry is Reverted or NotApplicable (or no agent ever
//!   reported on that node) the entries are dropped and the finalizer is
//!   removed. LivePatchNodes of Nodes that are gone are ignored. Entries of
//!   nodes that are no longer targeted, and of LivePatches that no longer
//!   exist, are Disabled and then dropped the same way.
//! - **Cordon.** A node is cordoned when one of its patches is Stalled and
//!   that patch's `onStall` cordons, only if it is schedulable, marking it
//!   with `graft.dev/cordoned-by: <patches>`; a node that someone else
//!   cordoned is never touched. It is uncordoned (and the mark removed) once
//!   nothing on it stalls and every patch named in the mark has
//!   `uncordonOnRecovery`.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use graft_crds::{
    CORDONED_BY_ANNOTATION, DesiredState, FINALIZER, LivePatch, LivePatchNode, LivePatchNodeSpec,
    LivePatchStatus, MAX_NODES_NEEDING_ATTENTION, MAX_PATCHES_PER_NODE, NodeAttention, NodeModule,
    NodePatch, PatchState, PatchStatus, TransitionPolicy,
    conditions::{self, livepatch as cond, reasons},
};
use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::Time};

use crate::select::{self, KernelMatcher};

/// `Degraded` reason: the `nodeSelector` cannot be evaluated.
pub const REASON_INVALID_NODE_SELECTOR: &str = "InvalidNodeSelector";

/// Longest agent message copied into a status or an Event note.
const MAX_MESSAGE_CHARS: usize = 512;

/// Everything the planner looks at.
#[derive(Clone, Debug, Default)]
pub struct World {
    /// Every LivePatch.
    pub live_patches: Vec<Arc<LivePatch>>,
    /// Every Node.
    pub nodes: Vec<Arc<Node>>,
    /// Every LivePatchNode.
    pub live_patch_nodes: Vec<Arc<LivePatchNode>>,
    /// The node the operator runs on (env `NODE_NAME`): rolled out last.
    pub operator_node: Option<String>,
}

/// What the planner remembers between runs, to emit an Event once per change
/// of a node's state rather than on every run. The first run after start only
/// primes it (no per-node Events for states found already there).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    primed: bool,
    states: BTreeMap<(String, String), PatchState>,
    halted: BTreeSet<String>,
}

impl Memory {
    /// The state last planned for `live_patch` on `node`, if any.
    pub fn state(&self, live_patch: &str, node: &str) -> Option<PatchState> {
        self.states
            .get(&(live_patch.to_owned(), node.to_owned()))
            .copied()
    }

    /// Whether a run has primed it.
    pub fn is_primed(&self) -> bool {
        self.primed
    }
}

/// The outcome of one planning run: only what differs from what is there.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// LivePatchNodes to create or whose spec (or owner) to apply.
    pub node_specs: Vec<NodeSpecWrite>,
    /// Nodes to cordon, uncordon or re-mark.
    pub cordons: Vec<CordonChange>,
    /// LivePatch statuses to apply.
    pub statuses: Vec<StatusWrite>,
    /// Finalizers to add (before any admission) or remove (after cleanup).
    pub finalizers: Vec<FinalizerChange>,
    /// Events about node states and the rollout (cordon Events ride on their
    /// [`CordonChange`], to be published only when the cordon was written).
    pub events: Vec<PlannedEvent>,
    /// Per LivePatch (not deleted): what the metrics export.
    pub summaries: BTreeMap<String, PatchSummary>,
    /// Memory for the next run.
    pub memory: Memory,
}

impl Plan {
    /// Whether the plan writes nothing.
    pub fn is_quiet(&self) -> bool {
        self.node_specs.is_empty()
            && self.cordons.is_empty()
            && self.statuses.is_empty()
            && self.finalizers.is_empty()
            && self.events.is_empty()
    }
}

/// The LivePatchNode spec one node should have (all entries), owned by the Node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpecWrite {
    /// Node name (and LivePatchNode name).
    pub node: String,
    /// Node UID, for the owner reference.
    pub node_uid: String,
    /// The whole spec.
    pub spec: LivePatchNodeSpec,
    /// Whether the LivePatchNode exists already (else it is created).
    pub exists: bool,
}

/// What to do to a Node's schedulability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CordonAction {
    /// Set `spec.unschedulable` and our annotation.
    Cordon,
    /// Clear `spec.unschedulable` and our annotation.
    Uncordon,
    /// Keep it cordoned, change which patches the annotation names.
    Remark,
    /// The node is schedulable again (someone uncordoned it): drop our annotation.
    Unmark,
}

/// A change to a Node's cordon.
#[derive(Clone, Debug, PartialEq)]
pub struct CordonChange {
    /// Node name.
    pub node: String,
    /// The node's `resourceVersion` the decision was made on (a precondition).
    pub resource_version: Option<String>,
    /// What to do.
    pub action: CordonAction,
    /// The annotation value for Cordon and Remark: LivePatch names, sorted,
    /// comma-separated.
    pub cordoned_by: Option<String>,
    /// Events to publish once the change is written.
    pub events: Vec<PlannedEvent>,
}

/// A LivePatch status to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusWrite {
    /// LivePatch name.
    pub live_patch: String,
    /// The whole status.
    pub status: LivePatchStatus,
}

/// A finalizer change on a LivePatch: the whole new list, written with the
/// `resourceVersion` it was computed from as a precondition.
#[derive(Clone, Debug, PartialEq)]
pub struct FinalizerChange {
    /// LivePatch name.
    pub live_patch: String,
    /// The LivePatch's `resourceVersion`.
    pub resource_version: Option<String>,
    /// True to add [`FINALIZER`], false to remove it.
    pub add: bool,
    /// The complete `metadata.finalizers` after the change.
    pub finalizers: Vec<String>,
}

/// The kind of object an Event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetKind {
    /// A `graft.dev/v1alpha1` LivePatch.
    LivePatch,
    /// A `v1` Node.
    Node,
}

/// An object an Event refers to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// Its kind.
    pub kind: TargetKind,
    /// Its name.
    pub name: String,
    /// Its UID, when known.
    pub uid: Option<String>,
}

/// Severity of an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Things go as planned.
    Normal,
    /// A person should look.
    Warning,
}

/// An Event to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedEvent {
    /// The object it is about.
    pub regarding: Target,
    /// The other object involved (the Node for a LivePatch Event and the reverse).
    pub related: Option<Target>,
    /// Normal or Warning.
    pub severity: Severity,
    /// One of the `reason` constants.
    pub reason: &'static str,
    /// What Graft did, CamelCase.
    pub action: &'static str,
    /// Human-readable details.
    pub note: String,
}

/// Event reasons (and Event actions) the operator uses.
pub mod reason {
    /// The patch reached Applied on a node.
    pub const APPLIED: &str = "Applied";
    /// A node's transition stalled.
    pub const STALLED: &str = "Stalled";
    /// The patch failed on a node.
    pub const FAILED: &str = "Failed";
    /// The patch was reverted and unloaded on a node.
    pub const REVERTED: &str = "Reverted";
    /// A node was cordoned because a transition stalled.
    pub const CORDONED: &str = "Cordoned";
    /// A node Graft had cordoned was uncordoned.
    pub const UNCORDONED: &str = "Uncordoned";
    /// The failure budget is exceeded: no new node is started.
    pub const ROLLOUT_HALTED: &str = "RolloutHalted";
}

/// What the metrics export for one LivePatch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatchSummary {
    /// Nodes per state (targeted nodes, plus NotApplicable ones); every state present.
    pub nodes: BTreeMap<PatchState, u32>,
    /// Nodes cordoned by Graft because of this patch (after this plan).
    pub cordoned: u32,
    /// The failure budget is exceeded.
    pub halted: bool,
    /// `spec.rollout.paused`.
    pub paused: bool,
}

/// One Linux node as the planner sees it.
struct NodeView<'a> {
    name: &'a str,
    uid: &'a str,
    node: &'a Node,
    kernel: Option<&'a str>,
    lpn: Option<&'a LivePatchNode>,
    /// The agent's status is from the node's current boot.
    trusted: bool,
    /// Some agent has written a status on this node.
    agent_reported: bool,
    /// The entries as planned so far (starts as the existing spec).
    entries: BTreeMap<String, NodePatch>,
}

impl NodeView<'_> {
    fn status_of(&self, live_patch: &str) -> Option<&PatchStatus> {
        self.lpn
            .and_then(|lpn| lpn.status.as_ref())
            .and_then(|s| s.patch(live_patch))
    }

    /// The state of `entry` on this node, trusting the agent only as the
    /// module docs say.
    fn effective(&self, entry: &NodePatch) -> PatchState {
        effective_state(entry, self.status_of(&entry.live_patch), self.trusted)
    }

    fn droppable(&self, entry: &NodePatch) -> bool {
        !self.agent_reported
            || (entry.desired_state == DesiredState::Disabled
                && matches!(
                    self.effective(entry),
                    PatchState::Reverted | PatchState::NotApplicable
                ))
    }
}

/// The state of one entry on a node from the agent's status: `Pending` unless
/// the status is trusted and echoes the entry's generation and digest; a
/// `Reverted` report for an `Enabled` entry is stale too.
pub fn effective_state(
    entry: &NodePatch,
    status: Option<&PatchStatus>,
    trusted: bool,
) -> PatchState {
    let Some(status) = status.filter(|_| trusted) else {
        return PatchState::Pending;
    };
    if entry.live_patch_generation.is_some()
        && status.live_patch_generation != entry.live_patch_generation
    {
        return PatchState::Pending;
    }
    if let (Some(want), Some(got)) = (&entry.module.sha256, &status.sha256)
        && want != got
    {
        return PatchState::Pending;
    }
    if entry.desired_state == DesiredState::Enabled && status.state == PatchState::Reverted {
        return PatchState::Pending;
    }
    status.state
}

/// Whether a node with an entry in `state` occupies a rollout slot.
pub fn occupies_slot(state: PatchState) -> bool {
    !matches!(
        state,
        PatchState::Applied | PatchState::Reverted | PatchState::NotApplicable
    )
}

fn same_module(a: &NodePatch, b: &NodePatch) -> bool {
    a.desired_state == b.desired_state && a.module == b.module
}

fn has_finalizer(lp: &LivePatch) -> bool {
    lp.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

fn truncate(message: &str) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        message.to_owned()
    } else {
        let mut cut: String = message.chars().take(MAX_MESSAGE_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}

/// The names in a `graft.dev/cordoned-by` annotation.
pub fn parse_cordoned_by(value: &str) -> BTreeSet<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn join_names<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    names
        .into_iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

fn list_nodes(names: &[&str]) -> String {
    const SHOWN: usize = 5;
    let mut text = names
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// How a LivePatch is handled in this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Roll out (`desiredState: Enabled`).
    Enable,
    /// Revert everywhere (`desiredState: Disabled`), keep the object.
    Disable,
    /// Being deleted with our finalizer: revert everywhere, then let it go.
    Delete,
}

/// One LivePatch's part of the plan, before cordon decisions are known.
struct PatchOutcome<'a> {
    lp: &'a LivePatch,
    name: &'a str,
    mode: Mode,
    /// Targeted nodes (indexes into the ordered node list) with their counted state.
    targets: Vec<(usize, PatchState)>,
    not_applicable: u32,
    halted: bool,
    failed_for_budget: u32,
    invalid_regex: Vec<(usize, String)>,
    invalid_selector: Option<String>,
    remove_finalizer: bool,
    /// Every node that had or has an entry of this patch, with the entry's
    /// state (before any entry is dropped): for Events and memory.
    touched: Vec<(usize, PatchState)>,
}

/// Plans the whole world. See the module docs for the rules.
pub fn plan(world: &World, memory: &Memory, now: &Time) -> Plan {
    let mut out = Plan::default();
    let mut next_memory = Memory {
        primed: true,
        ..Memory::default()
    };

    // Linux nodes in rollout order.
    let lpns: BTreeMap<&str, &LivePatchNode> = world
        .live_patch_nodes
        .iter()
        .filter_map(|lpn| lpn.metadata.name.as_deref().map(|n| (n, lpn.as_ref())))
        .collect();
    let operator_node = world.operator_node.as_deref();
    let mut linux: Vec<&Node> = world
        .nodes
        .iter()
        .map(Arc::as_ref)
        .filter(|n| n.metadata.name.is_some() && select::is_linux(n))
        .collect();
    linux.sort_by_cached_key(|n| {
        let name = n.metadata.name.clone().unwrap_or_default();
        (
            Some(name.as_str()) == operator_node,
            select::zone(n).to_owned(),
            name,
        )
    });
    linux.dedup_by(|a, b| a.metadata.name == b.metadata.name);
    let mut views: Vec<NodeView<'_>> = linux
        .into_iter()
        .map(|node| {
            let name = node.metadata.name.as_deref().unwrap_or_default();
            let lpn = lpns.get(name).copied();
            let agent_status = lpn.and_then(|l| l.status.as_ref());
            let trusted = match (select::boot_id(node), agent_status) {
                (_, None) => false,
                // A simulated kernel has its own boot ID, unrelated to the kubelet's.
                (Some(node_boot), Some(status)) => {
                    status.simulated
                        || status
                            .boot_id
                            .as_deref()
                            .is_none_or(|agent_boot| agent_boot == node_boot)
                }
                (None, Some(_)) => true,
            };
            NodeView {
                name,
                uid: node.metadata.uid.as_deref().unwrap_or_default(),
                node,
                kernel: select::kernel_release(node),
                lpn,
                trusted,
                agent_reported: agent_status.is_some(),
                entries: lpn
                    .map(|l| {
                        l.spec
                            .patches
                            .iter()
                            .map(|p| (p.live_patch.clone(), p.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();

    // LivePatches by name; those being deleted without our finalizer are as if gone.
    let mut live_patches: Vec<&LivePatch> = world
        .live_patches
        .iter()
        .map(Arc::as_ref)
        .filter(|lp| lp.metadata.name.is_some())
        .filter(|lp| lp.metadata.deletion_timestamp.is_none() || has_finalizer(lp))
        .collect();
    live_patches.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    live_patches.dedup_by(|a, b| a.metadata.name == b.metadata.name);
    let known: BTreeMap<&str, &LivePatch> = live_patches
        .iter()
        .map(|lp| (lp.metadata.name.as_deref().unwrap_or_default(), *lp))
        .collect();

    let mut outcomes = Vec::with_capacity(live_patches.len());
    for lp in &live_patches {
        outcomes.push(plan_patch(lp, &mut views));
    }

    // Entries of LivePatches that no longer exist: disable, then drop.
    for view in &mut views {
        let orphans: Vec<String> = view
            .entries
            .keys()
            .filter(|name| !known.contains_key(name.as_str()))
            .cloned()
            .collect();
        for name in orphans {
            let mut entry = view.entries[&name].clone();
            entry.desired_state = DesiredState::Disabled;
            let state = view.effective(&entry);
            node_state_events(None, &name, view, state, memory, &mut out.events);
            if view.droppable(&entry) {
                view.entries.remove(&name);
            } else {
                next_memory
                    .states
                    .insert((name.clone(), view.name.to_owned()), state);
                view.entries.insert(name, entry);
            }
        }
    }

    // Per-node states of every entry, for cordons and Events.
    let stalled_cordoning: Vec<BTreeSet<String>> = views
        .iter()
        .map(|view| {
            view.entries
                .values()
                .filter(|entry| view.effective(entry) == PatchState::Stalled)
                .filter(|entry| {
                    known
                        .get(entry.live_patch.as_str())
                        .map_or(&entry.transition, |lp| &lp.spec.transition)
                        .effective_on_stall()
                        .cordons()
                })
                .map(|entry| entry.live_patch.clone())
                .collect()
        })
        .collect();

    // Cordon decisions, and who is cordoned by Graft afterwards.
    let mut cordoned_after: Vec<BTreeSet<String>> = Vec::with_capacity(views.len());
    for (view, stalled) in views.iter().zip(&stalled_cordoning) {
        let (change, after) = decide_cordon(view, stalled, &known);
        cordoned_after.push(after);
        if let Some(change) = change {
            out.cordons.push(change);
        }
    }

    // Statuses, summaries, Events and finalizers, per LivePatch.
    for outcome in &outcomes {
        finish_patch(
            outcome,
            &views,
            &cordoned_after,
            memory,
            &mut next_memory,
            now,
            &mut out,
        );
    }

    // LivePatchNode specs that differ from what is there.
    for view in &views {
        let spec = LivePatchNodeSpec {
            patches: view.entries.values().cloned().collect(),
        };
        let owned = view.lpn.is_some_and(|lpn| {
            lpn.metadata.owner_references.iter().flatten().any(|o| {
                o.kind == "Node"
                    && o.api_version == "v1"
                    && o.uid == view.uid
                    && o.name == view.name
            })
        });
        // Compared as a map keyed by LivePatch: the API server may keep the
        // entries of a list-map in another order than we applied them.
        let same_spec = view.lpn.is_some_and(|lpn| {
            let mut existing: Vec<&NodePatch> = lpn.spec.patches.iter().collect();
            existing.sort_by(|a, b| a.live_patch.cmp(&b.live_patch));
            existing.len() == spec.patches.len()
                && existing.iter().zip(&spec.patches).all(|(a, b)| *a == b)
        });
        if !(owned && same_spec) {
            out.node_specs.push(NodeSpecWrite {
                node: view.name.to_owned(),
                node_uid: view.uid.to_owned(),
                spec,
                exists: view.lpn.is_some(),
            });
        }
    }

    out.memory = next_memory;
    out
}

/// Plans one LivePatch's entries on every node (mutating `views`).
fn plan_patch<'a>(lp: &'a LivePatch, views: &mut [NodeView<'_>]) -> PatchOutcome<'a> {
    let name = lp.metadata.name.as_deref().unwrap_or_default();
    let generation = lp.metadata.generation;
    let deleting = lp.metadata.deletion_timestamp.is_some();
    let mode = if deleting {
        Mode::Delete
    } else if lp.spec.desired_state == DesiredState::Disabled {
        Mode::Disable
    } else {
        Mode::Enable
    };
    let matcher = KernelMatcher::new(&lp.spec.modules);
    let mut invalid_selector = None;

    // Selection: targets (with the module entry each matches) and NotApplicable nodes.
    let mut targets: Vec<(usize, usize)> = Vec::new();
    let mut not_applicable = 0u32;
    let no_labels = BTreeMap::new();
    for (index, view) in views.iter().enumerate() {
        let labels = view.node.metadata.labels.as_ref().unwrap_or(&no_labels);
        let selected = match select::selector_matches(lp.spec.node_selector.as_ref(), labels) {
            Ok(selected) => selected,
            Err(error) => {
                invalid_selector.get_or_insert(error.0);
                false
            }
        };
        if !selected {
            continue;
        }
        match view.kernel.and_then(|k| matcher.find(k)) {
            Some(module) => targets.push((index, module)),
            None => not_applicable += 1,
        }
    }
    let desired_entry = |view: &NodeView<'_>, module: usize| {
        let module = &lp.spec.modules[module];
        NodePatch {
            live_patch: name.to_owned(),
            live_patch_generation: generation,
            module: NodeModule {
                kernel_release: view.kernel.unwrap_or_default().to_owned(),
                source: module.source.clone(),
                sha256: module.sha256.clone(),
            },
            desired_state: DesiredState::Enabled,
            transition: lp.spec.transition.clone(),
        }
    };
    let target_set: BTreeSet<usize> = targets.iter().map(|(i, _)| *i).collect();

    let mut halted = false;
    let mut failed_for_budget = 0;
    match mode {
        Mode::Enable => {
            // A: updates that add no node in flight.
            for &(index, module) in &targets {
                let view = &mut views[index];
                let desired = desired_entry(view, module);
                let Some(existing) = view.entries.get(name).cloned() else {
                    continue;
                };
                let state = view.effective(&existing);
                if existing.desired_state == DesiredState::Enabled
                    && same_module(&existing, &desired)
                {
                    let mut entry = existing;
                    entry.transition = desired.transition;
                    if state == PatchState::Failed && entry.live_patch_generation != generation {
                        entry.live_patch_generation = generation;
                    }
                    view.entries.insert(name.to_owned(), entry);
                } else if occupies_slot(state) {
                    view.entries.insert(name.to_owned(), desired);
                }
            }
            // B: slots in use and the failure budget.
            let mut used = 0u32;
            for &(index, module) in &targets {
                let view = &views[index];
                if let Some(entry) = view.entries.get(name) {
                    let state = view.effective(entry);
                    if occupies_slot(state) {
                        used += 1;
                    }
                    if counted_state(view, entry, &desired_entry(view, module), mode)
                        == PatchState::Failed
                    {
                        failed_for_budget += 1;
                    }
                }
            }
            halted = lp.spec.rollout.failure_budget_exceeded(failed_for_budget);
            let limit = lp
                .spec
                .rollout
                .max_parallel_nodes(u32::try_from(targets.len()).unwrap_or(u32::MAX))
                .unwrap_or(1);
            let may_admit = !halted && !lp.spec.rollout.paused && has_finalizer(lp);
            // C: admissions in rollout order.
            for &(index, module) in &targets {
                let view = &mut views[index];
                let desired = desired_entry(view, module);
                let current = view.entries.get(name).is_some_and(|e| {
                    e.desired_state == DesiredState::Enabled && same_module(e, &desired)
                });
                if current {
                    continue;
                }
                let in_flight = view
                    .entries
                    .get(name)
                    .is_some_and(|e| occupies_slot(view.effective(e)));
                if in_flight {
                    continue;
                }
                let room =
                    view.entries.contains_key(name) || view.entries.len() < MAX_PATCHES_PER_NODE;
                if may_admit && used < limit && room {
                    view.entries.insert(name.to_owned(), desired);
                    used += 1;
                }
            }
        }
        Mode::Disable | Mode::Delete => {
            for &(index, _) in &targets {
                let view = &mut views[index];
                if let Some(existing) = view.entries.get(name) {
                    let entry = disabled(existing, generation, &lp.spec.transition);
                    view.entries.insert(name.to_owned(), entry);
                }
            }
        }
    }

    // Nodes that are not targeted: disable (then drop, below).
    for (index, view) in views.iter_mut().enumerate() {
        if target_set.contains(&index) {
            continue;
        }
        if let Some(existing) = view.entries.get(name) {
            let entry = disabled(existing, generation, &lp.spec.transition);
            view.entries.insert(name.to_owned(), entry);
        }
    }
    let mut module_of: Vec<Option<usize>> = vec![None; views.len()];
    for &(index, module) in &targets {
        module_of[index] = Some(module);
    }
    let touched: Vec<(usize, PatchState)> = views
        .iter()
        .enumerate()
        .filter_map(|(index, view)| {
            let entry = view.entries.get(name)?;
            let state = match module_of[index] {
                Some(module) => counted_state(view, entry, &desired_entry(view, module), mode),
                None => view.effective(entry),
            };
            Some((index, state))
        })
        .collect();
    for (index, view) in views.iter_mut().enumerate() {
        if !target_set.contains(&index) && view.entries.get(name).is_some_and(|e| view.droppable(e))
        {
            view.entries.remove(name);
        }
    }

    // Deletion: once every entry is reverted, drop them all and let the LivePatch go.
    let mut remove_finalizer = false;
    if mode == Mode::Delete {
        let done = views
            .iter()
            .all(|view| view.entries.get(name).is_none_or(|e| view.droppable(e)));
        if done {
            for view in views.iter_mut() {
                view.entries.remove(name);
            }
            remove_finalizer = true;
        }
    }

    let targets = targets
        .iter()
        .map(|&(index, module)| {
            let view = &views[index];
            let state = match view.entries.get(name) {
                None if mode == Mode::Enable => PatchState::Pending,
                None => PatchState::Reverted,
                Some(entry) => counted_state(view, entry, &desired_entry(view, module), mode),
            };
            (index, state)
        })
        .collect();

    PatchOutcome {
        lp,
        name,
        mode,
        targets,
        not_applicable,
        halted,
        failed_for_budget,
        invalid_regex: matcher.invalid,
        invalid_selector,
        remove_finalizer,
        touched,
    }
}

/// `existing` with `desiredState: Disabled` (a new generation when that changes
/// it) and the current transition policy.
fn disabled(existing: &NodePatch, generation: Option<i64>, policy: &TransitionPolicy) -> NodePatch {
    let mut entry = existing.clone();
    if entry.desired_state != DesiredState::Disabled {
        entry.desired_state = DesiredState::Disabled;
        if generation.is_some() {
            entry.live_patch_generation = generation;
        }
    }
    entry.transition = policy.clone();
    entry
}

/// The state a targeted node is counted in, given its (planned) entry.
fn counted_state(
    view: &NodeView<'_>,
    entry: &NodePatch,
    desired: &NodePatch,
    mode: Mode,
) -> PatchState {
    let state = view.effective(entry);
    match mode {
        Mode::Enable => {
            if entry.desired_state == DesiredState::Disabled {
                match state {
                    PatchState::Reverted => PatchState::Pending,
                    other => other,
                }
            } else if !same_module(entry, desired) {
                if occupies_slot(state) {
                    state
                } else {
                    PatchState::Pending
                }
            } else {
                state
            }
        }
        Mode::Disable | Mode::Delete => state,
    }
}

/// Decides the cordon change of one node, and which patches Graft has it
/// cordoned for afterwards.
fn decide_cordon(
    view: &NodeView<'_>,
    stalled: &BTreeSet<String>,
    known: &BTreeMap<&str, &LivePatch>,
) -> (Option<CordonChange>, BTreeSet<String>) {
    let unschedulable = view
        .node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let mark = view
        .node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CORDONED_BY_ANNOTATION))
        .map(|v| parse_cordoned_by(v));
    let resource_version = view.node.metadata.resource_version.clone();
    let change = |action, cordoned_by: Option<String>, events| CordonChange {
        node: view.name.to_owned(),
        resource_version: resource_version.clone(),
        action,
        cordoned_by,
        events,
    };
    let node_target = Target {
        kind: TargetKind::Node,
        name: view.name.to_owned(),
        uid: Some(view.uid.to_owned()).filter(|u| !u.is_empty()),
    };
    let lp_target = |name: &str| Target {
        kind: TargetKind::LivePatch,
        name: name.to_owned(),
        uid: known.get(name).and_then(|lp| lp.metadata.uid.clone()),
    };
    let cordon_events = |names: &BTreeSet<String>, cordon: bool| {
        let list = join_names(names);
        let mut events = Vec::new();
        let (reason, note_node) = if cordon {
            (
                reason::CORDONED,
                format!(
                    "Graft cordoned node {}: the transition of {list} stalled (onStall cordons); \
                     no new pods are scheduled here until it finishes",
                    view.name
                ),
            )
        } else {
            (
                reason::UNCORDONED,
                format!(
                    "Graft uncordoned node {}: nothing on it is stalled any more ({list})",
                    view.name
                ),
            )
        };
        events.push(PlannedEvent {
            regarding: node_target.clone(),
            related: None,
            severity: Severity::Normal,
            reason,
            action: reason,
            note: note_node.clone(),
        });
        for name in names {
            events.push(PlannedEvent {
                regarding: lp_target(name),
                related: Some(node_target.clone()),
                severity: Severity::Normal,
                reason,
                action: reason,
                note: note_node.clone(),
            });
        }
        events
    };

    match (stalled.is_empty(), mark) {
        // Something stalls and the node is ours, or free to take.
        (false, Some(mark)) => {
            let by = join_names(stalled);
            if !unschedulable {
                (
                    Some(change(
                        CordonAction::Cordon,
                        Some(by),
                        cordon_events(stalled, true),
                    )),
                    stalled.clone(),
                )
            } else if &mark != stalled {
                (
                    Some(change(CordonAction::Remark, Some(by), Vec::new())),
                    stalled.clone(),
                )
            } else {
                (None, mark)
            }
        }
        (false, None) => {
            if unschedulable {
                // Someone else cordoned it: never touched.
                (None, BTreeSet::new())
            } else {
                let by = join_names(stalled);
                (
                    Some(change(
                        CordonAction::Cordon,
                        Some(by),
                        cordon_events(stalled, true),
                    )),
                    stalled.clone(),
                )
            }
        }
        // Nothing stalls: release our mark if every patch it names allows.
        (true, Some(mark)) => {
            let allowed = mark.iter().all(|name| match known.get(name.as_str()) {
                Some(lp) => lp.spec.transition.uncordon_on_recovery,
                None => view
                    .entries
                    .get(name)
                    .is_none_or(|e| e.transition.uncordon_on_recovery),
            });
            if !allowed {
                let after = if unschedulable { mark } else { BTreeSet::new() };
                (None, after)
            } else if unschedulable {
                (
                    Some(change(
                        CordonAction::Uncordon,
                        None,
                        cordon_events(&mark, false),
                    )),
                    BTreeSet::new(),
                )
            } else {
                (
                    Some(change(CordonAction::Unmark, None, Vec::new())),
                    BTreeSet::new(),
                )
            }
        }
        (true, None) => (None, BTreeSet::new()),
    }
}

/// Per-node Events when the state of `live_patch` on `view` changed since the
/// last run: on the LivePatch (related: the Node) and on the Node.
fn node_state_events(
    lp: Option<&LivePatch>,
    live_patch: &str,
    view: &NodeView<'_>,
    state: PatchState,
    memory: &Memory,
    events: &mut Vec<PlannedEvent>,
) {
    if !memory.primed {
        return;
    }
    let before = memory
        .state(live_patch, view.name)
        .unwrap_or(PatchState::Pending);
    if before == state {
        return;
    }
    let status = view.status_of(live_patch);
    let detail = status
        .map(|s| {
            let reason = s.reason.as_deref().unwrap_or("");
            let message = s.message.as_deref().map(truncate).unwrap_or_default();
            match (reason.is_empty(), message.is_empty()) {
                (true, true) => String::new(),
                (false, true) => format!(" ({reason})"),
                (true, false) => format!(": {message}"),
                (false, false) => format!(" ({reason}): {message}"),
            }
        })
        .unwrap_or_default();
    let (severity, reason, note) = match state {
        PatchState::Applied => (
            Severity::Normal,
            reason::APPLIED,
            format!(
                "LivePatch {live_patch} is applied on node {}: every task runs the patched code",
                view.name
            ),
        ),
        PatchState::Stalled => (
            Severity::Warning,
            reason::STALLED,
            format!(
                "The transition of LivePatch {live_patch} on node {} stalled{detail}; \
                 see kubectl get lpn {} -o yaml for the blocking tasks",
                view.name, view.name
            ),
        ),
        PatchState::Failed => (
            Severity::Warning,
            reason::FAILED,
            format!(
                "LivePatch {live_patch} failed on node {}{detail}",
                view.name
            ),
        ),
        PatchState::Reverted => (
            Severity::Normal,
            reason::REVERTED,
            format!(
                "LivePatch {live_patch} is reverted and unloaded on node {}",
                view.name
            ),
        ),
        _ => return,
    };
    let node_target = Target {
        kind: TargetKind::Node,
        name: view.name.to_owned(),
        uid: Some(view.uid.to_owned()).filter(|u| !u.is_empty()),
    };
    let lp_target = Target {
        kind: TargetKind::LivePatch,
        name: live_patch.to_owned(),
        uid: lp.and_then(|lp| lp.metadata.uid.clone()),
    };
    events.push(PlannedEvent {
        regarding: lp_target.clone(),
        related: Some(node_target.clone()),
        severity,
        reason,
        action: reason,
        note: note.clone(),
    });
    events.push(PlannedEvent {
        regarding: node_target,
        related: Some(lp_target),
        severity,
        reason,
        action: reason,
        note,
    });
}

/// Status, summary, Events, memory and finalizer change of one LivePatch.
fn finish_patch(
    outcome: &PatchOutcome<'_>,
    views: &[NodeView<'_>],
    cordoned_after: &[BTreeSet<String>],
    memory: &Memory,
    next_memory: &mut Memory,
    now: &Time,
    out: &mut Plan,
) {
    let lp = outcome.lp;
    let name = outcome.name;
    let generation = lp.metadata.generation;
    let lp_target = Target {
        kind: TargetKind::LivePatch,
        name: name.to_owned(),
        uid: lp.metadata.uid.clone(),
    };

    // Per-node Events (nodes with an entry) and memory.
    for &(index, state) in &outcome.touched {
        node_state_events(
            Some(lp),
            name,
            &views[index],
            state,
            memory,
            &mut out.events,
        );
    }
    for &(index, state) in outcome.touched.iter().chain(&outcome.targets) {
        next_memory
            .states
            .insert((name.to_owned(), views[index].name.to_owned()), state);
    }

    // Halt Event, once per halt.
    if outcome.halted {
        next_memory.halted.insert(name.to_owned());
        if memory.primed && !memory.halted.contains(name) {
            let failed: Vec<&str> = outcome
                .targets
                .iter()
                .filter(|(_, s)| *s == PatchState::Failed)
                .map(|(i, _)| views[*i].name)
                .collect();
            out.events.push(PlannedEvent {
                regarding: lp_target.clone(),
                related: None,
                severity: Severity::Warning,
                reason: reason::ROLLOUT_HALTED,
                action: reason::ROLLOUT_HALTED,
                note: format!(
                    "Rollout of LivePatch {name} halted: {} node(s) failed ({}), more than maxFailures {}; \
                     no new node is started until the failures are resolved (editing the LivePatch retries \
                     the failed nodes) or maxFailures is raised",
                    outcome.failed_for_budget,
                    list_nodes(&failed),
                    lp.spec.rollout.max_failures
                ),
            });
        }
    }

    // Counts, and the summary for the metrics.
    let mut states: Vec<PatchState> = outcome.targets.iter().map(|(_, s)| *s).collect();
    states.extend(std::iter::repeat_n(
        PatchState::NotApplicable,
        outcome.not_applicable as usize,
    ));
    let mut status = LivePatchStatus {
        observed_generation: generation,
        conditions: lp
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default(),
        ..LivePatchStatus::default()
    };
    status.tally(states.iter().copied());
    let cordoned: u32 = cordoned_after
        .iter()
        .filter(|patches| patches.contains(name))
        .count()
        .try_into()
        .unwrap_or(u32::MAX);
    let mut per_state: BTreeMap<PatchState, u32> =
        PatchState::ALL.iter().map(|s| (*s, 0)).collect();
    for state in &states {
        *per_state.entry(*state).or_default() += 1;
    }
    let paused = lp.spec.rollout.paused;

    // Nodes that need attention, in rollout order.
    status.nodes_needing_attention = outcome
        .targets
        .iter()
        .filter(|(_, s)| s.needs_attention())
        .take(MAX_NODES_NEEDING_ATTENTION)
        .map(|&(index, state)| {
            let view = &views[index];
            let agent = view.status_of(name);
            NodeAttention {
                node: view.name.to_owned(),
                state,
                reason: agent.and_then(|s| s.reason.clone()),
                message: agent.and_then(|s| s.message.as_deref().map(truncate)),
                since: agent.and_then(|s| s.last_transition_time.clone()),
                cordoned: cordoned_after[index].contains(name),
            }
        })
        .collect();

    // Conditions.
    let targeted = status.targeted;
    let enabling = outcome.mode == Mode::Enable;
    let done_state = if enabling {
        PatchState::Applied
    } else {
        PatchState::Reverted
    };
    let done = states
        .iter()
        .filter(|s| **s == done_state || **s == PatchState::NotApplicable)
        .count();
    let all_done = done == states.len();
    // Progressing: some node is (or may be) moving towards the desired state.
    let unfinished = |state: PatchState| {
        state != done_state && state != PatchState::NotApplicable && state != PatchState::Failed
    };
    let moving = outcome.targets.iter().any(|&(index, state)| {
        let view = &views[index];
        unfinished(state)
            && view
                .entries
                .get(name)
                .is_some_and(|e| !enabling || occupies_slot(view.effective(e)))
    });
    let waiting = outcome.targets.iter().any(|&(_, state)| unfinished(state));
    let blocked_reason = if enabling && outcome.halted {
        Some(reasons::FAILURE_BUDGET_EXCEEDED)
    } else if enabling && paused {
        Some(reasons::PAUSED_BY_USER)
    } else {
        None
    };
    let work_reason = if enabling {
        reasons::ROLLING_OUT
    } else {
        reasons::REVERTING
    };
    let progress_note = if enabling {
        format!(
            "{} of {targeted} targeted node(s) applied, {} in transition, {} pending, {} failed",
            status.applied, status.transitioning, status.pending, status.failed
        )
    } else {
        format!(
            "{} of {targeted} targeted node(s) reverted, {} in transition, {} failed",
            status.reverted, status.transitioning, status.failed
        )
    };
    let (progressing, progressing_reason) = if moving || (waiting && blocked_reason.is_none()) {
        (true, work_reason)
    } else if let Some(blocked) = blocked_reason.filter(|_| waiting) {
        (false, blocked)
    } else if status.failed > 0 {
        (false, reasons::NODE_FAILED)
    } else {
        (false, reasons::COMPLETE)
    };
    let set = |status: &mut LivePatchStatus, type_, value, reason: &str, message: String| {
        conditions::set_condition(
            &mut status.conditions,
            conditions::condition(type_, value, reason, message, generation, now.clone()),
        );
    };
    set(
        &mut status,
        cond::PROGRESSING,
        progressing,
        progressing_reason,
        progress_note.clone(),
    );
    set(
        &mut status,
        cond::AVAILABLE,
        all_done,
        if all_done {
            reasons::COMPLETE
        } else {
            work_reason
        },
        progress_note,
    );
    let stalled_nodes: Vec<&str> = outcome
        .targets
        .iter()
        .filter(|(_, s)| *s == PatchState::Stalled)
        .map(|(i, _)| views[*i].name)
        .collect();
    let failed_nodes: Vec<&str> = outcome
        .targets
        .iter()
        .filter(|(_, s)| *s == PatchState::Failed)
        .map(|(i, _)| views[*i].name)
        .collect();
    let (degraded, degraded_reason, degraded_message) = if !outcome.invalid_regex.is_empty() {
        let detail = outcome
            .invalid_regex
            .iter()
            .map(|(i, e)| format!("modules[{i}].kernelReleaseRegex: {}", truncate(e)))
            .collect::<Vec<_>>()
            .join("; ");
        (
            true,
            reasons::INVALID_KERNEL_RELEASE_REGEX,
            format!("{detail}; nodes are matched against the other entries only"),
        )
    } else if let Some(error) = &outcome.invalid_selector {
        (
            true,
            REASON_INVALID_NODE_SELECTOR,
            format!("nodeSelector: {error}; no node is selected"),
        )
    } else if !stalled_nodes.is_empty() {
        (
            true,
            reasons::TRANSITION_STALLED,
            format!(
                "the transition stalled on {} node(s): {}",
                stalled_nodes.len(),
                list_nodes(&stalled_nodes)
            ),
        )
    } else if !failed_nodes.is_empty() {
        (
            true,
            reasons::NODE_FAILED,
            format!(
                "the patch failed on {} node(s): {}",
                failed_nodes.len(),
                list_nodes(&failed_nodes)
            ),
        )
    } else {
        (
            false,
            reasons::AS_EXPECTED,
            "no node stalled or failed".to_owned(),
        )
    };
    set(
        &mut status,
        cond::DEGRADED,
        degraded,
        degraded_reason,
        degraded_message,
    );
    let (paused_value, paused_reason, paused_message) = if enabling && outcome.halted {
        (
            true,
            reasons::FAILURE_BUDGET_EXCEEDED,
            format!(
                "{} node(s) failed, more than maxFailures {}: no new node is started",
                outcome.failed_for_budget, lp.spec.rollout.max_failures
            ),
        )
    } else if paused {
        (
            true,
            reasons::PAUSED_BY_USER,
            "spec.rollout.paused is true: no new node is started (reverts are never paused)"
                .to_owned(),
        )
    } else {
        (
            false,
            reasons::AS_EXPECTED,
            "the rollout is not paused".to_owned(),
        )
    };
    set(
        &mut status,
        cond::PAUSED,
        paused_value,
        paused_reason,
        paused_message,
    );

    out.summaries.insert(
        name.to_owned(),
        PatchSummary {
            nodes: per_state,
            cordoned,
            halted: enabling && outcome.halted,
            paused,
        },
    );

    // Finalizer, then status (a LivePatch that is let go gets no status).
    let finalizers = lp.metadata.finalizers.clone().unwrap_or_default();
    if outcome.remove_finalizer {
        out.finalizers.push(FinalizerChange {
            live_patch: name.to_owned(),
            resource_version: lp.metadata.resource_version.clone(),
            add: false,
            finalizers: finalizers.into_iter().filter(|f| f != FINALIZER).collect(),
        });
        out.summaries.remove(name);
        return;
    }
    if outcome.mode != Mode::Delete && !has_finalizer(lp) {
        let mut list = finalizers;
        list.push(FINALIZER.to_owned());
        out.finalizers.push(FinalizerChange {
            live_patch: name.to_owned(),
            resource_version: lp.metadata.resource_version.clone(),
            add: true,
            finalizers: list,
        });
    }
    if lp.status.as_ref() != Some(&status) {
        out.statuses.push(StatusWrite {
            live_patch: name.to_owned(),
            status,
        });
    }
}
