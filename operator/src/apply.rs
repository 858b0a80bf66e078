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

fn named<'w, K: kube::Resource>(objects: &'w [Arc<K>], name: &str) -> Option<&'w K> {
    objects
        .iter()
        .find(|o| o.meta().name.as_deref() == Some(name))
        .map(AsRef::as_ref)
}

fn before_of<K: kube::Resource>(objects: &[Arc<K>], name: &str) -> Option<String> {
    named(objects, name).and_then(resource_version)
}

fn uid_of<K: kube::Resource>(objects: &[Arc<K>], name: &str) -> Option<String> {
    named(objects, name).and_then(|o| o.meta().uid.clone())
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
    write_all(
        ctx,
        world,
        &mut outcome,
        adds,
        |change| finalizer_write(&live_patches, change),
        |_| {},
    )
    .await;

    // 2. LivePatchNode specs.
    let node_specs_ok = write_all(
        ctx,
        world,
        &mut outcome,
        &plan.node_specs,
        |write| node_spec_write(&live_patch_nodes, world, write),
        |write| debug!(node = %write.node, patches = write.spec.patches.len(), "applied LivePatchNode spec"),
    )
    .await;

    // 3. Cordons and uncordons.
    let mut events: Vec<&PlannedEvent> = Vec::new();
    write_all(
        ctx,
        world,
        &mut outcome,
        &plan.cordons,
        |change| cordon_write(&nodes, change),
        |change| {
            info!(node = %change.node, action = ?change.action, cordoned_by = change.cordoned_by.as_deref().unwrap_or(""), "cordon change");
            events.extend(&change.events);
        },
    )
    .await;

    // 4. LivePatch statuses.
    write_all(
        ctx,
        world,
        &mut outcome,
        &plan.statuses,
        |write| status_write(&live_patches, world, write),
        |_| {},
    )
    .await;

    // 5. Finalizer removals, once the entries are gone from every node.
    if node_specs_ok {
        let removals = plan.finalizers.iter().filter(|f| !f.add);
        write_all(
            ctx,
            world,
            &mut outcome,
            removals,
            |change| finalizer_write(&live_patches, change),
            |change| info!(live_patch = %change.live_patch, "reverted everywhere: finalizer removed"),
        )
        .await;
    }

    // 6. Events, best effort.
    events.extend(&plan.events);
    publish_all(ctx, events).await;
    outcome
}

/// One write of a plan, not yet sent.
struct PendingWrite<'a, K> {
    kind: Kind,
    name: &'a str,
    /// For [`Written::before`].
    before: Option<String>,
    /// What the write does, as its error says it.
    what: String,
    /// Whether a 404 means the write is moot rather than failed.
    gone_is_done: bool,
    request: BoxFuture<'a, kube::Result<K>>,
}

/// Sends `write(item)` for every item, [`CONCURRENCY`] at a time, then takes
/// the answers in the order they came: an object written is recorded in
/// `outcome` (after `on_written` saw its item), a failure is reported against
/// the object and kept in `outcome`. Returns whether no failure was kept.
async fn write_all<'a, T: Sync + 'a, K: kube::Resource>(
    ctx: &Context,
    world: &World,
    outcome: &mut Outcome,
    items: impl IntoIterator<Item = &'a T>,
    write: impl Fn(&'a T) -> PendingWrite<'a, K>,
    mut on_written: impl FnMut(&'a T),
) -> bool {
    let results = run_all(
        items
            .into_iter()
            .map(|item| {
                let mut write = write(item);
                async move {
                    let result = write.request.as_mut().await;
                    (item, write, result)
                }
                .boxed()
            })
            .collect(),
    )
    .await;
    let mut all_ok = true;
    for (item, write, result) in results {
        match result {
            Ok(object) => {
                on_written(item);
                outcome.written.push(Written {
                    kind: write.kind,
                    name: write.name.to_owned(),
                    before: write.before,
                    after: resource_version(&object),
                });
            }
            Err(kube::Error::Api(status)) if write.gone_is_done && status.code == 404 => {}
            Err(source) => {
                all_ok = false;
                let error = Error::kube(write.what, source);
                let target = write_target(world, write.kind, write.name);
                report_error(ctx, target, &error).await;
                outcome.errors.push(error);
            }
        }
    }
    all_ok
}

fn finalizer_write<'a>(
    api: &Api<LivePatch>,
    change: &'a FinalizerChange,
) -> PendingWrite<'a, LivePatch> {
    let api = api.clone();
    let what = if change.add {
        format!("add finalizer to LivePatch {}", change.live_patch)
    } else {
        format!("remove the finalizer of LivePatch {}", change.live_patch)
    };
    PendingWrite {
        kind: Kind::LivePatch,
        name: &change.live_patch,
        before: change.resource_version.clone(),
        what,
        // A LivePatch already deleted has no finalizer left to remove.
        gone_is_done: !change.add,
        request: async move {
            api.patch(
                &change.live_patch,
                &merge_params(),
                &Patch::Merge(finalizer_body(change)),
            )
            .await
        }
        .boxed(),
    }
}

fn node_spec_write<'a>(
    api: &Api<LivePatchNode>,
    world: &World,
    write: &'a NodeSpecWrite,
) -> PendingWrite<'a, LivePatchNode> {
    let api = api.clone();
    PendingWrite {
        kind: Kind::LivePatchNode,
        name: &write.node,
        before: before_of(&world.live_patch_nodes, &write.node),
        what: format!("apply the spec of LivePatchNode {}", write.node),
        gone_is_done: false,
        request: async move {
            api.patch(
                &write.node,
                &apply_params(),
                &Patch::Apply(node_spec_body(write)),
            )
            .await
        }
        .boxed(),
    }
}

fn cordon_write<'a>(api: &Api<Node>, change: &'a CordonChange) -> PendingWrite<'a, Node> {
    let api = api.clone();
    let verb = match change.action {
        CordonAction::Cordon => "cordon",
        CordonAction::Uncordon => "uncordon",
        CordonAction::Remark | CordonAction::Unmark => "update the cordon mark of",
    };
    PendingWrite {
        kind: Kind::Node,
        name: &change.node,
        before: change.resource_version.clone(),
        what: format!("{verb} node {}", change.node),
        gone_is_done: false,
        request: async move {
            api.patch(
                &change.node,
                &merge_params(),
                &Patch::Merge(cordon_body(change)),
            )
            .await
        }
        .boxed(),
    }
}

fn status_write<'a>(
    api: &Api<LivePatch>,
    world: &World,
    write: &'a StatusWrite,
) -> PendingWrite<'a, LivePatch> {
    let api = api.clone();
    PendingWrite {
        kind: Kind::LivePatch,
        name: &write.live_patch,
        before: before_of(&world.live_patches, &write.live_patch),
        what: format!("apply the status of LivePatch {}", write.live_patch),
        gone_is_done: false,
        request: async move {
            api.patch_status(
                &write.live_patch,
                &apply_params(),
                &Patch::Apply(status_body(write)),
            )
            .await
        }
        .boxed(),
    }
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

/// The object an Event about a failed write is on: a LivePatchNode is named
/// after its Node, and its failures show where `kubectl describe node` looks.
fn write_target(world: &World, kind: Kind, name: &str) -> Target {
    let (kind, uid) = match kind {
        Kind::LivePatch => (TargetKind::LivePatch, uid_of(&world.live_patches, name)),
        Kind::LivePatchNode | Kind::Node => (TargetKind::Node, uid_of(&world.nodes, name)),
    };
    Target {
        kind,
        name: name.to_owned(),
        uid,
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
