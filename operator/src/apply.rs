//! Carries out a [`Plan`] against the API server: only the differences the
//! planner found, each with field manager `graft-operator`.
//!
//! - LivePatchNode spec: server-side apply (force), the whole spec, owned by
//!   its Node (owner reference with the Node's UID).
//! - LivePatch status: server-side apply (force) on the status subresource.
//! - Cordon and uncordon: one JSON merge patch per Node setting
//!   `spec.unschedulable` and the `graft.dev/cordoned-by` annotation, with the
//!   Node's `resourceVersion` as a precondition (a Node someone changed in the
//!   meantime is re-planned, not overwritten).
//! - Finalizer: a JSON merge patch of the whole `metadata.finalizers` list,
//!   with the `resourceVersion` as a precondition; it is removed only after
//!   every LivePatchNode write of the pass succeeded.
//! - Events: through [`Recorder`], on the LivePatch (related: the Node) and on
//!   the Node (related: the LivePatch); cordon Events only once the cordon is
//!   written. Write failures are reported as Warning Events whose reason is
//!   the error's category, at most once per object and category every
//!   [`ERROR_EVENT_INTERVAL`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt, future::BoxFuture, stream};
use graft_crds::{
    API_VERSION, CORDONED_BY_ANNOTATION, LivePatch, LivePatchNode, OPERATOR_FIELD_MANAGER,
};
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder},
};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::{
    error::Error,
    metrics::Metrics,
    plan::{
        CordonAction, CordonChange, FinalizerChange, NodeSpecWrite, Plan, PlannedEvent, Severity,
        StatusWrite, Target, TargetKind, World,
    },
};

/// How many writes run at once.
const CONCURRENCY: usize = 8;

/// Least time between two error Events about the same object and category.
pub const ERROR_EVENT_INTERVAL: Duration = Duration::from_secs(300);

/// Longest Event note the API accepts is 1 kB; keep a margin.
const MAX_NOTE_BYTES: usize = 1000;

/// What carrying out plans needs.
pub struct Context {
    /// The API client (with Graft's User-Agent).
    pub client: Client,
    /// Publishes Events.
    pub recorder: Recorder,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    error_events: Mutex<HashMap<(TargetKind, String, &'static str), Instant>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// A context whose Events name `instance` (the pod name) as reporting instance.
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: Option<String>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: OPERATOR_FIELD_MANAGER.to_owned(),
                instance,
            },
        );
        Self {
            client,
            recorder,
            metrics,
            error_events: Mutex::new(HashMap::new()),
        }
    }
}

/// Which store an object was written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A LivePatch (status or finalizers).
    LivePatch,
    /// A LivePatchNode.
    LivePatchNode,
    /// A Node.
    Node,
}

/// One object written, with its `resourceVersion` before and after, so the
/// caller can wait until its watch has seen the write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The kind.
    pub kind: Kind,
    /// The name.
    pub name: String,
    /// `resourceVersion` the plan was made on (`None`: did not exist).
    pub before: Option<String>,
    /// `resourceVersion` the API answered with.
    pub after: Option<String>,
}

impl Written {
    /// Whether a store that holds `current` (the object's `resourceVersion`,
    /// `None` when absent) reflects this write.
    pub fn seen_in(&self, current: Option<&str>) -> bool {
        self.before == self.after || current != self.before.as_deref()
    }
}

/// What carrying out a plan did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Objects written.
    pub written: Vec<Written>,
    /// What failed (also counted in the metrics and logged).
    pub errors: Vec<Error>,
}

/// PatchParams of a server-side apply by the operator.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(OPERATOR_FIELD_MANAGER).force()
}

/// PatchParams of a merge patch by the operator.
pub fn merge_params() -> PatchParams {
    PatchParams {
        field_manager: Some(OPERATOR_FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// The server-side apply body of a LivePatchNode: its whole spec, owned by its Node.
pub fn node_spec_body(write: &NodeSpecWrite) -> Value {
    let mut metadata = json!({ "name": write.node });
    if !write.node_uid.is_empty() {
        metadata["ownerReferences"] = json!([{
            "apiVersion": "v1",
            "kind": "Node",
            "name": write.node,
            "uid": write.node_uid,
        }]);
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": "LivePatchNode",
        "metadata": metadata,
        "spec": write.spec,
    })
}

/// The server-side apply body of a LivePatch status.
pub fn status_body(write: &StatusWrite) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "LivePatch",
        "metadata": { "name": write.live_patch },
        "status": write.status,
    })
}

/// The merge patch of a cordon change.
pub fn cordon_body(change: &CordonChange) -> Value {
    let annotation = match change.action {
        CordonAction::Cordon | CordonAction::Remark => json!(change.cordoned_by),
        CordonAction::Uncordon | CordonAction::Unmark => Value::Null,
    };
    let mut body = json!({
        "metadata": {
            "annotations": { CORDONED_BY_ANNOTATION: annotation },
        },
    });
    if let Some(rv) = &change.resource_version {
        body["metadata"]["resourceVersion"] = json!(rv);
    }
    match change.action {
        CordonAction::Cordon => body["spec"] = json!({ "unschedulable": true }),
        CordonAction::Uncordon => body["spec"] = json!({ "unschedulable": null }),
        CordonAction::Remark | CordonAction::Unmark => {}
    }
    body
}

/// The merge patch of a finalizer change.
pub fn finalizer_body(change: &FinalizerChange) -> Value {
    let mut body = json!({ "metadata": { "finalizers": change.finalizers } });
    if let Some(rv) = &change.resource_version {
        body["metadata"]["resourceVersion"] = json!(rv);
    }
    body
}

/// The reference an Event uses for a [`Target`].
pub fn object_reference(target: &Target) -> ObjectReference {
    let (api_version, kind) = match target.kind {
        TargetKind::LivePatch => (API_VERSION, "LivePatch"),
        TargetKind::Node => ("v1", "Node"),
    };
    ObjectReference {
        api_version: Some(api_version.to_owned()),
        kind: Some(kind.to_owned()),
        name: Some(target.name.clone()),
        uid: target.uid.clone(),
        ..ObjectReference::default()
    }
}

fn truncate_note(note: &str) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note.to_owned();
    }
    let mut end = MAX_NOTE_BYTES - 3;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &note[..end])
}

/// The Event as the Recorder takes it.
pub fn kube_event(event: &PlannedEvent) -> Event {
    Event {
        type_: match event.severity {
            Severity::Normal => EventType::Normal,
            Severity::Warning => EventType::Warning,
        },
        reason: event.reason.to_owned(),
        note: Some(truncate_note(&event.note)),
        action: event.action.to_owned(),
        secondary: event.related.as_ref().map(object_reference),
    }
}

fn resource_version<K: kube::Resource>(object: &K) -> Option<String> {
    object.meta().resource_version.clone()
}

fn before_of<K: kube::Resource>(objects: &[Arc<K>], name: &str) -> Option<String> {
    objects
        .iter()
        .find(|o| o.meta().name.as_deref() == Some(name))
        .and_then(|o| resource_version(o.as_ref()))
}

/// Carries out `plan`, made from `world`. Never fails as a whole: each write
/// that fails is logged, counted and reported, and the next pass retries.
pub async fn execute(ctx: &Context, world: &World, plan: &Plan) -> Outcome {
    let mut outcome = Outcome::default();
    let live_patches: Api<LivePatch> = Api::all(ctx.client.clone());
    let live_patch_nodes: Api<LivePatchNode> = Api::all(ctx.client.clone());
    let nodes: Api<Node> = Api::all(ctx.client.clone());

    // 1. Finalizers first, so a LivePatch can never lose track of its nodes.
    let adds = plan.finalizers.iter().filter(|f| f.add);
    let results = run_all(
        adds.map(|change| {
            let api = live_patches.clone();
            async move {
                let result = api
                    .patch(
                        &change.live_patch,
                        &merge_params(),
                        &Patch::Merge(finalizer_body(change)),
                    )
                    .await
                    .map_err(|e| {
                        Error::kube(
                            format!("add finalizer to LivePatch {}", change.live_patch),
                            e,
                        )
                    });
                (change, result)
            }
            .boxed()
        })
        .collect(),
    )
    .await;
    for (change, result) in results {
        match result {
            Ok(lp) => outcome.written.push(Written {
                kind: Kind::LivePatch,
                name: change.live_patch.clone(),
                before: change.resource_version.clone(),
                after: resource_version(&lp),
            }),
            Err(error) => {
                report_error(ctx, lp_target(world, &change.live_patch), &error).await;
                outcome.errors.push(error);
            }
        }
    }

    // 2. LivePatchNode specs.
    let results = run_all(
        plan.node_specs
            .iter()
            .map(|write| {
                let api = live_patch_nodes.clone();
                async move {
                    let result = api
                        .patch(
                            &write.node,
                            &apply_params(),
                            &Patch::Apply(node_spec_body(write)),
                        )
                        .await
                        .map_err(|e| {
                            Error::kube(
                                format!("apply the spec of LivePatchNode {}", write.node),
                                e,
                            )
                        });
                    (write, result)
                }
                .boxed()
            })
            .collect(),
    )
    .await;
    let mut node_specs_ok = true;
    for (write, result) in results {
        match result {
            Ok(lpn) => {
                debug!(node = %write.node, patches = write.spec.patches.len(), "applied LivePatchNode spec");
                outcome.written.push(Written {
                    kind: Kind::LivePatchNode,
                    name: write.node.clone(),
                    before: before_of(&world.live_patch_nodes, &write.node),
                    after: resource_version(&lpn),
                });
            }
            Err(error) => {
                node_specs_ok = false;
                report_error(ctx, node_target(world, &write.node), &error).await;
                outcome.errors.push(error);
            }
        }
    }

    // 3. Cordons and uncordons.
    let results = run_all(
        plan.cordons
            .iter()
            .map(|change| {
                let api = nodes.clone();
                async move {
                    let result = api
                        .patch(
                            &change.node,
                            &merge_params(),
                            &Patch::Merge(cordon_body(change)),
                        )
                        .await
                        .map_err(|e| {
                            let verb = match change.action {
                                CordonAction::Cordon => "cordon",
                                CordonAction::Uncordon => "uncordon",
                                CordonAction::Remark | CordonAction::Unmark => {
                                    "update the cordon mark of"
                                }
                            };
                            Error::kube(format!("{verb} node {}", change.node), e)
                        });
                    (change, result)
                }
                .boxed()
            })
            .collect(),
    )
    .await;
    let mut events: Vec<&PlannedEvent> = Vec::new();
    for (change, result) in results {
        match result {
            Ok(node) => {
                info!(node = %change.node, action = ?change.action, cordoned_by = change.cordoned_by.as_deref().unwrap_or(""), "cordon change");
                outcome.written.push(Written {
                    kind: Kind::Node,
                    name: change.node.clone(),
                    before: change.resource_version.clone(),
                    after: resource_version(&node),
                });
                events.extend(&change.events);
            }
            Err(error) => {
                report_error(ctx, node_target(world, &change.node), &error).await;
                outcome.errors.push(error);
            }
        }
    }

    // 4. LivePatch statuses.
    let results = run_all(
        plan.statuses
            .iter()
            .map(|write| {
                let api = live_patches.clone();
                async move {
                    let result = api
                        .patch_status(
                            &write.live_patch,
                            &apply_params(),
                            &Patch::Apply(status_body(write)),
                        )
                        .await
                        .map_err(|e| {
                            Error::kube(
                                format!("apply the status of LivePatch {}", write.live_patch),
                                e,
                            )
                        });
                    (write, result)
                }
                .boxed()
            })
            .collect(),
    )
    .await;
    for (write, result) in results {
        match result {
            Ok(lp) => outcome.written.push(Written {
                kind: Kind::LivePatch,
                name: write.live_patch.clone(),
                before: before_of(&world.live_patches, &write.live_patch),
                after: resource_version(&lp),
            }),
            Err(error) => {
                report_error(ctx, lp_target(world, &write.live_patch), &error).await;
                outcome.errors.push(error);
            }
        }
    }

    // 5. Finalizer removals, once the entries are gone from every node.
    if node_specs_ok {
        let removals = plan.finalizers.iter().filter(|f| !f.add);
        let results = run_all(
            removals
                .map(|change| {
                    let api = live_patches.clone();
                    async move {
                        let result = api
                            .patch(
                                &change.live_patch,
                                &merge_params(),
                                &Patch::Merge(finalizer_body(change)),
                            )
                            .await
                            .map_err(|e| {
                                Error::kube(
                                    format!(
                                        "remove the finalizer of LivePatch {}",
                                        change.live_patch
                                    ),
                                    e,
                                )
                            });
                        (change, result)
                    }
                    .boxed()
                })
                .collect(),
        )
        .await;
        for (change, result) in results {
            match result {
                Ok(lp) => {
                    info!(live_patch = %change.live_patch, "reverted everywhere: finalizer removed");
                    outcome.written.push(Written {
                        kind: Kind::LivePatch,
                        name: change.live_patch.clone(),
                        before: change.resource_version.clone(),
                        after: resource_version(&lp),
                    });
                }
                // Already gone: nothing left to do.
                Err(Error::Kube {
                    source: kube::Error::Api(status),
                    ..
                }) if status.code == 404 => {}
                Err(error) => {
                    report_error(ctx, lp_target(world, &change.live_patch), &error).await;
                    outcome.errors.push(error);
                }
            }
        }
    }

    // 6. Events, best effort.
    events.extend(&plan.events);
    publish_all(ctx, events).await;
    outcome
}

/// Publishes Events, a few at a time; failures are logged and counted only.
pub async fn publish_all(ctx: &Context, events: Vec<&PlannedEvent>) {
    let results = run_all(
        events
            .into_iter()
            .map(|event| {
                async move {
                    let reference = object_reference(&event.regarding);
                    let result = ctx.recorder.publish(&kube_event(event), &reference).await;
                    (event, result)
                }
                .boxed()
            })
            .collect(),
    )
    .await;
    for (event, result) in results {
        if let Err(e) = result {
            let error = Error::kube(
                format!(
                    "publish Event {} about {:?} {}",
                    event.reason, event.regarding.kind, event.regarding.name
                ),
                e,
            );
            ctx.metrics.error(&error);
            warn!(%error, "Event not published");
        }
    }
}

async fn run_all<T>(futures: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    stream::iter(futures)
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

fn lp_target(world: &World, name: &str) -> Target {
    Target {
        kind: TargetKind::LivePatch,
        name: name.to_owned(),
        uid: world
            .live_patches
            .iter()
            .find(|lp| lp.metadata.name.as_deref() == Some(name))
            .and_then(|lp| lp.metadata.uid.clone()),
    }
}

fn node_target(world: &World, name: &str) -> Target {
    Target {
        kind: TargetKind::Node,
        name: name.to_owned(),
        uid: world
            .nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .and_then(|n| n.metadata.uid.clone()),
    }
}

/// Logs and counts an error and, unless it is a conflict (re-planned at once)
/// or was reported recently, publishes a Warning Event about `target` whose
/// reason is the error's category.
pub async fn report_error(ctx: &Context, target: Target, error: &Error) {
    ctx.metrics.error(error);
    warn!(%error, category = error.category(), "write failed; retrying on the next pass");
    if error.is_conflict() {
        return;
    }
    let key = (target.kind, target.name.clone(), error.category());
    {
        let mut last = ctx.error_events.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < ERROR_EVENT_INTERVAL)
        {
            return;
        }
        last.insert(key, now);
    }
    let event = PlannedEvent {
        regarding: target,
        related: None,
        severity: Severity::Warning,
        reason: error.category(),
        action: "Reconcile",
        note: format!("graft-operator could not {error}"),
    };
    publish_all(ctx, vec![&event]).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_is_seen_once_the_store_moved_past_the_old_version() {
        let update = Written {
            kind: Kind::Node,
            name: "n1".into(),
            before: Some("1".into()),
            after: Some("2".into()),
        };
        assert!(!update.seen_in(Some("1")));
        assert!(update.seen_in(Some("2")));
        assert!(update.seen_in(Some("3")));
        assert!(update.seen_in(None), "deleted meanwhile");
        let create = Written {
            before: None,
            ..update.clone()
        };
        assert!(!create.seen_in(None));
        assert!(create.seen_in(Some("2")));
        let no_op = Written {
            after: Some("1".into()),
            ..update
        };
        assert!(no_op.seen_in(Some("1")));
    }

    #[test]
    fn long_notes_are_cut_at_a_character_boundary() {
        let note = "é".repeat(800);
        let cut = truncate_note(&note);
        assert!(cut.len() <= MAX_NOTE_BYTES);
        assert!(cut.ends_with("..."));
    }
}
