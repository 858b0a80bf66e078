//! The status the agent reports, and the writer that sends it.
//!
//! The agent keeps its view of the node in a [`NodeModel`] and publishes the
//! whole status after every change. The [`run_writer`] task sends it by
//! server-side apply to the status subresource, as field manager
//! `graft-agent`: a change of state goes out at once, progress alone (tasks
//! switched, blocking tasks) at most once per `progress_interval`, so a long
//! transition costs a handful of writes. When the API is unreachable the
//! writer keeps the latest status and retries with backoff.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

use graft_crds::{
    AGENT_FIELD_MANAGER, API_VERSION, BlockingTask, LivePatchNode, LivePatchNodeStatus,
    MAX_BLOCKING_TASKS, NodePatch, PatchState, PatchStatus, TransitionStatus, TransitionTarget,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use tokio::sync::watch;

use super::plan::{self, KernelFacts};
use crate::kernel::Target;
use crate::metrics::{AGENT_VERSION, ClusterPatch};
use crate::tasks;

pub fn now() -> Time {
    Time(Timestamp::now())
}

fn time_at(t: SystemTime) -> Option<Time> {
    Timestamp::try_from(t).ok().map(Time)
}

/// The agent's view of its node: what it reports in `LivePatchNode.status`.
#[derive(Debug, Clone, Default)]
pub struct NodeModel {
    pub kernel_release: String,
    pub boot_id: String,
    pub livepatch_supported: bool,
    pub simulated: bool,
    pub observed_generation: Option<i64>,
    /// One entry per spec entry, in spec order.
    pub patches: Vec<PatchStatus>,
    /// LivePatches whose stall policy is reverting them (finish, then report Failed).
    pub stall_revert: BTreeSet<String>,
    conditions: Vec<Condition>,
}

impl NodeModel {
    /// Starts from what the API server holds (the status an earlier run of
    /// the agent wrote), adjusted to the kernel as it is now: after a reboot
    /// everything that was applied has to be applied again.
    pub fn seed(
        previous: Option<&LivePatchNodeStatus>,
        kernel: &KernelFacts,
        simulated: bool,
    ) -> Self {
        let mut model = Self {
            kernel_release: kernel.release.clone(),
            boot_id: kernel.boot_id.clone(),
            livepatch_supported: kernel.livepatch_supported,
            simulated,
            ..Self::default()
        };
        if let Some(prev) = previous {
            model.patches = prev.patches.clone();
            model.conditions = prev.conditions.clone();
            model.observed_generation = prev.observed_generation;
            let rebooted = prev
                .boot_id
                .as_deref()
                .is_some_and(|b| !b.is_empty() && b != kernel.boot_id);
            if rebooted {
                tracing::info!(
                    previous = prev.boot_id.as_deref().unwrap_or_default(),
                    current = %kernel.boot_id,
                    "the node rebooted since the last status: applying the spec again"
                );
                model.patches.iter_mut().for_each(plan::reset_for_new_boot);
            }
            for p in &model.patches {
                if p.state == PatchState::Reverting
                    && p.reason.as_deref() == Some(plan::reason::STALLED_AND_REVERTED)
                {
                    model.stall_revert.insert(p.live_patch.clone());
                }
            }
        }
        model
    }

    /// The kernel rebooted under a running agent (a simulated kernel can).
    pub fn observe_kernel(&mut self, kernel: &KernelFacts) {
        if kernel.boot_id != self.boot_id {
            tracing::info!(current = %kernel.boot_id, "the boot ID changed: applying the spec again");
            self.patches.iter_mut().for_each(plan::reset_for_new_boot);
            self.stall_revert.clear();
        }
        self.boot_id = kernel.boot_id.clone();
        self.kernel_release = kernel.release.clone();
        self.livepatch_supported = kernel.livepatch_supported;
    }

    /// Keeps one entry per spec entry, in spec order; entries the operator
    /// dropped (after they were reverted) go.
    pub fn align_with_spec(&mut self, spec: &[NodePatch]) {
        let mut old: HashMap<String, PatchStatus> = self
            .patches
            .drain(..)
            .map(|p| (p.live_patch.clone(), p))
            .collect();
        self.patches = spec
            .iter()
            .map(|s| {
                old.remove(&s.live_patch).unwrap_or_else(|| PatchStatus {
                    live_patch: s.live_patch.clone(),
                    live_patch_generation: s.live_patch_generation,
                    sha256: s.module.sha256.clone(),
                    state: PatchState::Pending,
                    last_transition_time: Some(now()),
                    ..PatchStatus::default()
                })
            })
            .collect();
        self.stall_revert
            .retain(|name| spec.iter().any(|s| &s.live_patch == name));
    }

    pub fn entry(&self, live_patch: &str) -> Option<&PatchStatus> {
        self.patches.iter().find(|p| p.live_patch == live_patch)
    }

    pub fn entry_mut(&mut self, live_patch: &str) -> &mut PatchStatus {
        let i = match self.patches.iter().position(|p| p.live_patch == live_patch) {
            Some(i) => i,
            None => {
                self.patches.push(PatchStatus {
                    live_patch: live_patch.to_string(),
                    ..PatchStatus::default()
                });
                self.patches.len() - 1
            }
        };
        &mut self.patches[i]
    }

    /// Records that `spec`'s entry is now about this generation and digest.
    pub fn attempt(&mut self, spec: &NodePatch) {
        let e = self.entry_mut(&spec.live_patch);
        e.live_patch_generation = spec.live_patch_generation;
        e.sha256 = spec.module.sha256.clone();
    }

    /// Sets an entry's state, reason and message; `lastTransitionTime` moves
    /// only when the state changes.
    pub fn set(
        &mut self,
        live_patch: &str,
        state: PatchState,
        reason: Option<&str>,
        message: impl Into<String>,
    ) {
        let e = self.entry_mut(live_patch);
        if e.state != state || e.last_transition_time.is_none() {
            e.last_transition_time = Some(now());
        }
        e.state = state;
        e.reason = reason.map(str::to_string);
        let message = message.into();
        e.message = (!message.is_empty()).then_some(message);
        if !matches!(
            state,
            PatchState::Transitioning | PatchState::Stalled | PatchState::Reverting
        ) {
            e.transition = None;
        }
    }

    /// Applies what the observer saw during an operation.
    pub fn progress(&mut self, live_patch: &str, ev: &ProgressEvent) {
        let stall_revert = self.stall_revert.contains(live_patch);
        let e = self.entry_mut(live_patch);
        let state: PatchState = ev.state.into();
        match state {
            PatchState::Transitioning | PatchState::Stalled | PatchState::Reverting => {
                let target = match ev.target {
                    Target::Patched => TransitionTarget::Patched,
                    Target::Unpatched => TransitionTarget::Unpatched,
                };
                let restart = e.transition.as_ref().is_none_or(|t| t.target != target);
                if restart {
                    e.transition = Some(TransitionStatus {
                        target,
                        started: time_at(SystemTime::now() - ev.elapsed),
                        ..TransitionStatus::default()
                    });
                }
                let t = e.transition.get_or_insert_with(TransitionStatus::default);
                if let Some((switched, total)) = ev.census {
                    t.tasks_switched = Some(u32::try_from(switched).unwrap_or(u32::MAX));
                    t.tasks_total = Some(u32::try_from(total).unwrap_or(u32::MAX));
                }
                match (&ev.blocking, state) {
                    (Some(b), PatchState::Stalled) => t.blocking_tasks = api_blocking_tasks(b),
                    (_, PatchState::Stalled) => {}
                    _ => t.blocking_tasks.clear(),
                }
                if e.state != state {
                    e.last_transition_time = Some(now());
                }
                e.state = state;
                e.reason = match state {
                    PatchState::Stalled => Some(plan::reason::TRANSITION_STALLED.into()),
                    PatchState::Reverting if stall_revert => {
                        Some(plan::reason::STALLED_AND_REVERTED.into())
                    }
                    _ => None,
                };
                if let Some(m) = &ev.message {
                    e.message = Some(m.clone());
                } else if restart {
                    e.message = None;
                }
            }
            PatchState::Pending | PatchState::Loading => {
                if e.state != state {
                    e.last_transition_time = Some(now());
                }
                e.state = state;
                e.reason = (state == PatchState::Pending).then(|| plan::reason::WAITING.into());
                if let Some(m) = &ev.message {
                    e.message = Some(m.clone());
                }
                e.transition = None;
            }
            _ => {}
        }
    }

    /// The whole status, ready to apply.
    pub fn to_status(&mut self, spec: &[NodePatch]) -> LivePatchNodeStatus {
        self.refresh_conditions(spec);
        let mut status = LivePatchNodeStatus {
            observed_generation: self.observed_generation,
            kernel_release: Some(self.kernel_release.clone()),
            boot_id: Some(self.boot_id.clone()),
            livepatch_supported: Some(self.livepatch_supported),
            agent_version: Some(AGENT_VERSION.to_string()),
            simulated: self.simulated,
            conditions: self.conditions.clone(),
            patches: self.patches.clone(),
            ..LivePatchNodeStatus::default()
        };
        status.recount();
        status
    }

    /// What the metrics need to know about each LivePatch.
    pub fn cluster_patches(&self) -> Vec<ClusterPatch> {
        self.patches
            .iter()
            .map(|p| ClusterPatch {
                live_patch: p.live_patch.clone(),
                sysfs_name: p.sysfs_name.clone(),
                state: p.state,
            })
            .collect()
    }

    fn refresh_conditions(&mut self, spec: &[NodePatch]) {
        let at_goal = |p: &PatchStatus| {
            let desired = spec
                .iter()
                .find(|s| s.live_patch == p.live_patch)
                .map(|s| s.desired_state);
            match desired {
                Some(graft_crds::DesiredState::Enabled) => {
                    matches!(p.state, PatchState::Applied | PatchState::NotApplicable)
                }
                Some(graft_crds::DesiredState::Disabled) => {
                    matches!(p.state, PatchState::Reverted | PatchState::NotApplicable)
                }
                None => true,
            }
        };
        let failed: Vec<&str> = self
            .patches
            .iter()
            .filter(|p| p.state == PatchState::Failed)
            .map(|p| p.live_patch.as_str())
            .collect();
        let stalled: Vec<&str> = self
            .patches
            .iter()
            .filter(|p| p.state == PatchState::Stalled)
            .map(|p| p.live_patch.as_str())
            .collect();
        let busy: Vec<&str> = self
            .patches
            .iter()
            .filter(|p| !at_goal(p))
            .map(|p| p.live_patch.as_str())
            .collect();
        let ready = if busy.is_empty() {
            (
                "True",
                "AsSpecified",
                "every patch is as the spec asks".to_string(),
            )
        } else if !failed.is_empty() {
            (
                "False",
                "PatchFailed",
                format!("failed: {}", failed.join(", ")),
            )
        } else if !stalled.is_empty() {
            (
                "False",
                "TransitionStalled",
                format!("stalled: {}", stalled.join(", ")),
            )
        } else {
            (
                "False",
                "InProgress",
                format!("in progress: {}", busy.join(", ")),
            )
        };
        let degraded = if !failed.is_empty() {
            (
                "True",
                "PatchFailed",
                format!("failed: {}", failed.join(", ")),
            )
        } else if !stalled.is_empty() {
            (
                "True",
                "TransitionStalled",
                format!("stalled: {}", stalled.join(", ")),
            )
        } else {
            (
                "False",
                "NoProblem",
                "no patch failed or stalled".to_string(),
            )
        };
        let generation = self.observed_generation;
        for (type_, (status, reason, message)) in [("Ready", ready), ("Degraded", degraded)] {
            let existing = self.conditions.iter_mut().find(|c| c.type_ == type_);
            match existing {
                Some(c) => {
                    if c.status != status {
                        c.last_transition_time = now();
                    }
                    c.status = status.into();
                    c.reason = reason.into();
                    c.message = message;
                    c.observed_generation = generation;
                }
                None => self.conditions.push(Condition {
                    type_: type_.into(),
                    status: status.into(),
                    reason: reason.into(),
                    message,
                    observed_generation: generation,
                    last_transition_time: now(),
                }),
            }
        }
        self.conditions
            .retain(|c| c.type_ == "Ready" || c.type_ == "Degraded");
    }
}

/// What the observer reports from the blocking thread that runs an operation.
#[derive(Debug, Clone)]
pub struct ProgressEvent {
    pub state: crate::patching::PatchState,
    pub target: Target,
    pub elapsed: Duration,
    /// (switched, total), when a task census was taken.
    pub census: Option<(usize, usize)>,
    /// The blocking tasks, when the transition is stalled.
    pub blocking: Option<Vec<tasks::BlockingTask>>,
    pub message: Option<String>,
}

/// The kernel's blocking tasks as the API reports them: kernel threads first
/// (fake signals do not move them), at most [`MAX_BLOCKING_TASKS`].
pub fn api_blocking_tasks(tasks: &[tasks::BlockingTask]) -> Vec<BlockingTask> {
    let mut sorted: Vec<&tasks::BlockingTask> = tasks.iter().collect();
    sorted.sort_by_key(|t| !t.kthread);
    sorted
        .into_iter()
        .take(MAX_BLOCKING_TASKS)
        .map(|t| BlockingTask {
            pid: i32::try_from(t.pid).unwrap_or(i32::MAX),
            tid: i32::try_from(t.tid).unwrap_or(i32::MAX),
            comm: t.comm.clone(),
            function: t.function.clone(),
            kernel_thread: t.kthread,
            pod_uid: t.pod.as_ref().map(|p| p.pod_uid.clone()),
            pod_namespace: None,
            pod_name: None,
            container_id: t.pod.as_ref().and_then(|p| p.kubernetes_container_id()),
        })
        .collect()
}

/// What changes a status write must not wait for: everything but progress.
fn signature(status: &LivePatchNodeStatus) -> impl PartialEq + use<> {
    let node = (
        status.observed_generation,
        status.kernel_release.clone(),
        status.boot_id.clone(),
        status.livepatch_supported,
        status.simulated,
    );
    let patches: Vec<_> = status
        .patches
        .iter()
        .map(|p| {
            (
                p.live_patch.clone(),
                p.live_patch_generation,
                p.sha256.clone(),
                p.state,
                p.reason.clone(),
                p.sysfs_name.clone(),
                p.forced,
            )
        })
        .collect();
    let conditions: Vec<_> = status
        .conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone()))
        .collect();
    (node, patches, conditions)
}

/// A status to write. `epoch` changes when the LivePatchNode is (re)created,
/// which makes the writer send it even if it equals the last one.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub epoch: u64,
    pub status: LivePatchNodeStatus,
}

/// Pod names for pod UIDs, from the Pods on this node. Only asked when a
/// blocking task names an unknown pod; a Forbidden answer (RBAC does not
/// allow listing pods) is remembered, and the tasks keep their UIDs only.
pub struct PodNames {
    api: Api<Pod>,
    node: String,
    names: HashMap<String, (String, String)>,
    forbidden: bool,
    last_list: Option<Instant>,
}

/// How often at most the Pods of the node are listed to name blocking tasks' pods.
const POD_LIST_MIN_INTERVAL: Duration = Duration::from_secs(10);

impl PodNames {
    pub fn new(client: Client, node: &str) -> Self {
        Self {
            api: Api::all(client),
            node: node.to_string(),
            names: HashMap::new(),
            forbidden: false,
            last_list: None,
        }
    }

    /// Fills in pod namespaces and names of blocking tasks where it can.
    pub async fn fill(&mut self, status: &mut LivePatchNodeStatus) {
        let tasks = || {
            status
                .patches
                .iter()
                .filter_map(|p| p.transition.as_ref())
                .flat_map(|t| t.blocking_tasks.iter())
        };
        let unknown = tasks().any(|t| {
            t.pod_uid
                .as_ref()
                .is_some_and(|uid| !self.names.contains_key(uid))
        });
        let due = self
            .last_list
            .is_none_or(|t| t.elapsed() >= POD_LIST_MIN_INTERVAL);
        if unknown && !self.forbidden && due {
            self.list().await;
        }
        for p in &mut status.patches {
            for t in p
                .transition
                .iter_mut()
                .flat_map(|t| t.blocking_tasks.iter_mut())
            {
                if let Some((ns, name)) = t.pod_uid.as_ref().and_then(|u| self.names.get(u)) {
                    t.pod_namespace = Some(ns.clone());
                    t.pod_name = Some(name.clone());
                }
            }
        }
    }

    async fn list(&mut self) {
        self.last_list = Some(Instant::now());
        let params = ListParams::default().fields(&format!("spec.nodeName={}", self.node));
        match self.api.list_metadata(&params).await {
            Ok(list) => {
                self.names = list
                    .items
                    .into_iter()
                    .filter_map(|p| {
                        let m = p.metadata;
                        Some((m.uid?, (m.namespace.unwrap_or_default(), m.name?)))
                    })
                    .collect();
            }
            Err(kube::Error::Api(s)) if s.code == 403 => {
                self.forbidden = true;
                tracing::info!(
                    "not allowed to list the Pods on this node: blocking tasks are reported \
                     with their pod UID only (grant list on pods to name them)"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing the Pods on this node failed; pod names left out")
            }
        }
    }
}

/// Writes the status by server-side apply, as field manager `graft-agent`.
pub async fn apply_status(
    api: &Api<LivePatchNode>,
    node: &str,
    status: &LivePatchNodeStatus,
) -> kube::Result<()> {
    let body = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "LivePatchNode",
        "status": status,
    });
    api.patch_status(
        node,
        &PatchParams::apply(AGENT_FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
}

/// Rate limits of the writer.
#[derive(Debug, Clone, Copy)]
pub struct WriterLimits {
    /// Least time between two writes that only carry progress.
    pub progress_interval: Duration,
    /// First retry delay after a failed write (doubles up to `max_backoff`).
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for WriterLimits {
    fn default() -> Self {
        Self {
            progress_interval: Duration::from_secs(5),
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Sends each published status; returns when the publisher is gone and the
/// last status was sent (or could not be).
pub async fn run_writer(
    api: Api<LivePatchNode>,
    node: String,
    mut rx: watch::Receiver<Option<Publish>>,
    mut pods: PodNames,
    limits: WriterLimits,
) {
    let mut last: Option<Publish> = None;
    let mut last_at: Option<tokio::time::Instant> = None;
    let mut backoff = limits.backoff;
    let mut closed = false;
    loop {
        let desired = rx.borrow_and_update().clone();
        let Some(desired) = desired.filter(|d| last.as_ref() != Some(d)) else {
            if closed || rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        let significant = last.as_ref().is_none_or(|l| {
            l.epoch != desired.epoch || signature(&l.status) != signature(&desired.status)
        });
        if !significant
            && !closed
            && let Some(at) = last_at
        {
            let due = at + limits.progress_interval;
            if tokio::time::Instant::now() < due {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    r = rx.changed() => closed = r.is_err(),
                }
                continue;
            }
        }
        let mut body = desired.status.clone();
        pods.fill(&mut body).await;
        match apply_status(&api, &node, &body).await {
            Ok(()) => {
                tracing::debug!(node = %node, "status written");
                last = Some(desired);
                last_at = Some(tokio::time::Instant::now());
                backoff = limits.backoff;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                // The LivePatchNode is gone; the operator recreates it and the
                // agent publishes again with a new epoch.
                tracing::info!(node = %node, "LivePatchNode not found; status not written");
                last = Some(desired);
            }
            Err(e) => {
                tracing::warn!(node = %node, error = %e, retry_in = ?backoff, "writing the LivePatchNode status failed");
                if closed {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    r = rx.changed() => closed = r.is_err(),
                }
                backoff = (backoff * 2).min(limits.max_backoff);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::PodRef;

    fn task(pid: u32, kthread: bool) -> tasks::BlockingTask {
        tasks::BlockingTask {
            pid,
            tid: pid,
            comm: format!("t{pid}"),
            kthread,
            function: Some("f".into()),
            in_patched_function: true,
            pod: Some(PodRef {
                pod_uid: "uid".into(),
                container_id: Some("c".repeat(64)),
                runtime: Some("containerd"),
            }),
        }
    }

    #[test]
    fn blocking_tasks_are_bounded_with_kernel_threads_first() {
        let mut many: Vec<_> = (1..=15).map(|p| task(p, false)).collect();
        many.push(task(99, true));
        let api = api_blocking_tasks(&many);
        assert_eq!(api.len(), MAX_BLOCKING_TASKS);
        assert_eq!(api[0].pid, 99);
        assert!(api[0].kernel_thread);
        assert_eq!(api[1].pid, 1);
        assert_eq!(api[1].pod_uid.as_deref(), Some("uid"));
        assert_eq!(
            api[1].container_id.as_deref(),
            Some(format!("containerd://{}", "c".repeat(64)).as_str())
        );
    }

    #[test]
    fn progress_alone_is_not_significant_but_a_state_change_is() {
        let mut model = NodeModel::default();
        model.set("p", PatchState::Transitioning, None, "");
        let a = model.to_status(&[]);
        let ev = ProgressEvent {
            state: crate::patching::PatchState::Transitioning,
            target: Target::Patched,
            elapsed: Duration::from_secs(1),
            census: Some((3, 10)),
            blocking: None,
            message: None,
        };
        model.progress("p", &ev);
        let b = model.to_status(&[]);
        assert_ne!(a, b);
        assert!(signature(&a) == signature(&b));
        model.progress(
            "p",
            &ProgressEvent {
                state: crate::patching::PatchState::Stalled,
                blocking: Some(vec![task(5, true)]),
                ..ev
            },
        );
        let c = model.to_status(&[]);
        assert!(signature(&b) != signature(&c));
        let t = c.patches[0].transition.as_ref().unwrap();
        assert_eq!(t.blocking_tasks.len(), 1);
        assert_eq!(t.tasks_switched, Some(3));
        assert_eq!(c.patches[0].reason.as_deref(), Some("TransitionStalled"));
        assert_eq!(c.stalled, 1);
    }

    #[test]
    fn a_reboot_found_at_start_resets_what_was_applied() {
        let previous = LivePatchNodeStatus {
            boot_id: Some("old".into()),
            patches: vec![
                PatchStatus {
                    live_patch: "a".into(),
                    state: PatchState::Applied,
                    ..PatchStatus::default()
                },
                PatchStatus {
                    live_patch: "b".into(),
                    state: PatchState::Reverted,
                    ..PatchStatus::default()
                },
            ],
            ..LivePatchNodeStatus::default()
        };
        let kernel = KernelFacts {
            boot_id: "new".into(),
            ..KernelFacts::default()
        };
        let model = NodeModel::seed(Some(&previous), &kernel, false);
        assert_eq!(model.patches[0].state, PatchState::Pending);
        assert_eq!(model.patches[0].reason.as_deref(), Some("Rebooted"));
        assert_eq!(model.patches[1].state, PatchState::Reverted);
        let same_boot = KernelFacts {
            boot_id: "old".into(),
            ..KernelFacts::default()
        };
        let model = NodeModel::seed(Some(&previous), &same_boot, false);
        assert_eq!(model.patches[0].state, PatchState::Applied);
    }
}
