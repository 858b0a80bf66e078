//! Reconcile passes against a mocked API server (`tower-test`): every request
//! the operator sends is recorded with its method, path, query, content type
//! and body, and answered; the tests assert the exact requests.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use graft_crds::{FINALIZER, OnStall, PatchState};
use graft_operator::{
    apply::{self, Context, Outcome},
    metrics::Metrics,
    plan::{Plan, plan},
};
use http::{Request, Response};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Client, client::Body};
use serde_json::{Value, json};

/// One request as the API server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    /// Path and query.
    uri: String,
    content_type: String,
    body: Value,
}

type Answer = Box<dyn Fn(&Seen) -> Option<(u16, Value)> + Send + Sync>;

/// Runs `plan` (made from `cluster`) against a mocked API server that records
/// every request and answers with `answer` (or, when it returns `None`, as a
/// real server would for a successful write).
async fn run(cluster: &Cluster, plan: &Plan, answer: Answer) -> (Vec<Seen>, Outcome, Arc<Metrics>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let world = cluster.world();
    let server = {
        let seen = seen.clone();
        let cluster = cluster.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                let request = Seen {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    content_type: parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default(),
                    body: if bytes.is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_slice(&bytes).unwrap()
                    },
                };
                let (code, response) =
                    answer(&request).unwrap_or_else(|| (200, success(&cluster, &request)));
                seen.lock().unwrap().push(request);
                send.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(serde_json::to_vec(&response).unwrap()))
                        .unwrap(),
                );
            }
        })
    };
    let metrics = Arc::new(Metrics::new());
    let ctx = Context::new(client, metrics.clone(), Some("graft-operator-0".into()));
    let outcome = apply::execute(&ctx, &world, plan).await;
    drop(ctx);
    server.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    (seen, outcome, metrics)
}

/// What a real API server answers to a successful write.
fn success(cluster: &Cluster, request: &Seen) -> Value {
    let path = request.uri.split('?').next().unwrap();
    let name = |prefix: &str| {
        path.strip_prefix(prefix)
            .map(|rest| rest.split('/').next().unwrap().to_owned())
    };
    let mut object = if let Some(node) = name("/api/v1/nodes/") {
        serde_json::to_value(&cluster.nodes[&node]).unwrap()
    } else if let Some(lp) = name("/apis/graft.dev/v1alpha1/livepatches/") {
        serde_json::to_value(&cluster.live_patches[&lp]).unwrap()
    } else if path.starts_with("/apis/graft.dev/v1alpha1/livepatchnodes/") {
        request.body.clone()
    } else if path.starts_with("/apis/events.k8s.io/v1/namespaces/default/events") {
        return request.body.clone();
    } else {
        panic!("unexpected request {request:?}");
    };
    object["metadata"]["resourceVersion"] = json!("999");
    object
}

fn failure(code: u16, reason: &str) -> (u16, Value) {
    (
        code,
        json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": format!("simulated {reason}"), "reason": reason, "code": code,
        }),
    )
}

fn no_override() -> Answer {
    Box::new(|_| None)
}

fn writes(seen: &[Seen]) -> Vec<(String, String)> {
    seen.iter()
        .filter(|s| !s.uri.starts_with("/apis/events.k8s.io/"))
        .map(|s| (s.method.clone(), s.uri.clone()))
        .collect()
}

fn events(seen: &[Seen]) -> Vec<&Seen> {
    seen.iter()
        .filter(|s| {
            s.uri
                .starts_with("/apis/events.k8s.io/v1/namespaces/default/events")
        })
        .collect()
}

fn event_summary(seen: &[Seen]) -> Vec<(String, String, String)> {
    let mut list: Vec<_> = events(seen)
        .iter()
        .map(|e| {
            (
                e.body["reason"].as_str().unwrap().to_owned(),
                e.body["regarding"]["kind"].as_str().unwrap().to_owned(),
                e.body["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    list.sort();
    list
}

const APPLY: &str = "application/apply-patch+yaml";
const MERGE: &str = "application/merge-patch+json";

/// A cluster where `fix` is admitted on n1 and the agent reported `state`.
fn reported(state: PatchState, node: k8s_openapi::api::core::v1::Node) -> Cluster {
    let lp = on_stall(live_patch("fix"), OnStall::Cordon, true);
    let mut cluster = Cluster::new([node], [lp]);
    cluster.step();
    cluster.step();
    cluster.report("n1", "fix", state);
    cluster
}

fn next_plan(cluster: &Cluster) -> Plan {
    plan(&cluster.world(), &cluster.memory, &at(cluster.clock + 1))
}

#[tokio::test]
async fn livepatchnode_spec_is_applied_with_force_and_our_field_manager_owned_by_the_node() {
    let cluster = Cluster::new([node("n1", "")], [live_patch("fix")]);
    let plan = next_plan(&cluster);
    let (seen, outcome, _) = run(&cluster, &plan, no_override()).await;
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    let lpn = &seen[0];
    assert_eq!(lpn.method, "PATCH");
    assert_eq!(
        lpn.uri,
        "/apis/graft.dev/v1alpha1/livepatchnodes/n1?&force=true&fieldManager=graft-operator"
    );
    assert_eq!(lpn.content_type, APPLY);
    assert_eq!(
        lpn.body,
        json!({
            "apiVersion": "graft.dev/v1alpha1",
            "kind": "LivePatchNode",
            "metadata": {
                "name": "n1",
                "ownerReferences": [{ "apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "uid-n1" }],
            },
            "spec": { "patches": [{
                "livePatch": "fix",
                "livePatchGeneration": 1,
                "module": {
                    "kernelRelease": KERNEL,
                    "source": { "hostPath": "/var/lib/graft/modules/fix.ko" },
                    "sha256": SHA,
                },
                "desiredState": "Enabled",
                "transition": {
                    "stallAfter": "60s", "onStall": "Cordon", "allowForce": false, "uncordonOnRecovery": true,
                },
            }]},
        })
    );
    assert_eq!(
        writes(&seen),
        [
            ("PATCH".into(), "/apis/graft.dev/v1alpha1/livepatchnodes/n1?&force=true&fieldManager=graft-operator".into()),
            ("PATCH".into(), "/apis/graft.dev/v1alpha1/livepatches/fix/status?&force=true&fieldManager=graft-operator".into()),
        ]
    );
    // The write is reported with the versions before and after, for the catch-up wait.
    assert!(
        outcome
            .written
            .iter()
            .any(|w| w.name == "n1" && w.before.is_none() && w.after.as_deref() == Some("999"))
    );
}

#[tokio::test]
async fn livepatch_status_is_applied_to_the_status_subresource() {
    let cluster = Cluster::new(
        [
            node("n1", ""),
            with_kernel(node("n2", ""), "5.10.0-1-amd64"),
        ],
        [live_patch("fix")],
    );
    let plan = next_plan(&cluster);
    let (seen, outcome, _) = run(&cluster, &plan, no_override()).await;
    assert!(outcome.errors.is_empty());
    let status = seen
        .iter()
        .find(|s| s.uri.contains("/livepatches/fix/status"))
        .unwrap();
    assert_eq!(status.method, "PATCH");
    assert_eq!(
        status.uri,
        "/apis/graft.dev/v1alpha1/livepatches/fix/status?&force=true&fieldManager=graft-operator"
    );
    assert_eq!(status.content_type, APPLY);
    assert_eq!(status.body["apiVersion"], "graft.dev/v1alpha1");
    assert_eq!(status.body["kind"], "LivePatch");
    assert_eq!(status.body["metadata"], json!({ "name": "fix" }));
    assert!(
        status.body.get("spec").is_none(),
        "only the status is applied"
    );
    let body = &status.body["status"];
    assert_eq!(body["observedGeneration"], 1);
    assert_eq!(
        (
            body["targeted"].as_u64(),
            body["pending"].as_u64(),
            body["notApplicable"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    let types: Vec<&str> = body["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Progressing", "Available", "Degraded", "Paused"]);
    assert_eq!(body["conditions"][0]["reason"], "RollingOut");
    assert_eq!(
        body["conditions"][0]["lastTransitionTime"],
        "2023-11-14T22:13:21Z"
    );
}

#[tokio::test]
async fn a_stalled_node_is_cordoned_with_our_annotation_and_events() {
    let cluster = reported(PatchState::Stalled, node("n1", ""));
    let plan = next_plan(&cluster);
    let (seen, outcome, _) = run(&cluster, &plan, no_override()).await;
    assert!(outcome.errors.is_empty());
    let cordon = seen
        .iter()
        .find(|s| s.uri.starts_with("/api/v1/nodes/"))
        .unwrap();
    assert_eq!(cordon.method, "PATCH");
    assert_eq!(cordon.uri, "/api/v1/nodes/n1?&fieldManager=graft-operator");
    assert_eq!(cordon.content_type, MERGE);
    assert_eq!(
        cordon.body,
        json!({
            "metadata": {
                "annotations": { "graft.dev/cordoned-by": "fix" },
                "resourceVersion": "1",
            },
            "spec": { "unschedulable": true },
        })
    );
    assert_eq!(
        event_summary(&seen),
        [
            ("Cordoned".into(), "LivePatch".into(), "Normal".into()),
            ("Cordoned".into(), "Node".into(), "Normal".into()),
            ("Stalled".into(), "LivePatch".into(), "Warning".into()),
            ("Stalled".into(), "Node".into(), "Warning".into()),
        ]
    );
}

#[tokio::test]
async fn an_event_is_posted_on_the_livepatch_and_on_the_node() {
    let cluster = reported(PatchState::Applied, node("n1", ""));
    let plan = next_plan(&cluster);
    let (seen, _, _) = run(&cluster, &plan, no_override()).await;
    let posted = events(&seen);
    assert_eq!(posted.len(), 2);
    for event in &posted {
        assert_eq!(event.method, "POST");
        assert_eq!(
            event.uri,
            "/apis/events.k8s.io/v1/namespaces/default/events?"
        );
        assert_eq!(event.body["reason"], "Applied");
        assert_eq!(event.body["action"], "Applied");
        assert_eq!(event.body["type"], "Normal");
        assert_eq!(event.body["reportingController"], "graft-operator");
        assert_eq!(event.body["reportingInstance"], "graft-operator-0");
        assert!(
            event.body["note"]
                .as_str()
                .unwrap()
                .contains("applied on node n1")
        );
    }
    let on_lp = posted
        .iter()
        .find(|e| e.body["regarding"]["kind"] == "LivePatch")
        .unwrap();
    assert_eq!(
        on_lp.body["regarding"],
        json!({ "apiVersion": "graft.dev/v1alpha1", "kind": "LivePatch", "name": "fix", "uid": "uid-lp-fix" })
    );
    assert_eq!(
        on_lp.body["related"],
        json!({ "apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "uid-n1" })
    );
    let on_node = posted
        .iter()
        .find(|e| e.body["regarding"]["kind"] == "Node")
        .unwrap();
    assert_eq!(on_node.body["regarding"]["name"], "n1");
    assert_eq!(on_node.body["related"]["name"], "fix");
}

#[tokio::test]
async fn our_cordoned_node_is_uncordoned_on_recovery() {
    let mut cluster = reported(PatchState::Stalled, node("n1", ""));
    cluster.step();
    assert!(cluster.unschedulable("n1"));
    cluster.report("n1", "fix", PatchState::Applied);
    let rv = cluster.nodes["n1"]
        .metadata
        .resource_version
        .clone()
        .unwrap();
    let plan = next_plan(&cluster);
    let (seen, outcome, _) = run(&cluster, &plan, no_override()).await;
    assert!(outcome.errors.is_empty());
    let uncordon = seen
        .iter()
        .find(|s| s.uri.starts_with("/api/v1/nodes/"))
        .unwrap();
    assert_eq!(
        uncordon.uri,
        "/api/v1/nodes/n1?&fieldManager=graft-operator"
    );
    assert_eq!(uncordon.content_type, MERGE);
    assert_eq!(
        uncordon.body,
        json!({
            "metadata": { "annotations": { "graft.dev/cordoned-by": null }, "resourceVersion": rv },
            "spec": { "unschedulable": null },
        })
    );
    let summary = event_summary(&seen);
    assert!(
        summary.contains(&("Uncordoned".into(), "Node".into(), "Normal".into())),
        "{summary:?}"
    );
    assert!(summary.contains(&("Uncordoned".into(), "LivePatch".into(), "Normal".into())));
}

#[tokio::test]
async fn a_node_someone_else_cordoned_is_not_touched() {
    let cluster = reported(PatchState::Stalled, cordoned(node("n1", ""), None));
    let plan = next_plan(&cluster);
    let (seen, _, _) = run(&cluster, &plan, no_override()).await;
    assert!(
        seen.iter().all(|s| !s.uri.starts_with("/api/v1/nodes")),
        "{:?}",
        writes(&seen)
    );
    assert_eq!(
        writes(&seen),
        [("PATCH".into(), "/apis/graft.dev/v1alpha1/livepatches/fix/status?&force=true&fieldManager=graft-operator".into())]
    );
    let status = &seen
        .iter()
        .find(|s| s.uri.contains("/status"))
        .unwrap()
        .body["status"];
    assert_eq!(status["nodesNeedingAttention"][0]["cordoned"], false);
    assert_eq!(status["stalled"], 1);
}

#[tokio::test]
async fn the_finalizer_is_removed_after_every_node_reverted() {
    let mut cluster = reported(PatchState::Applied, node("n1", ""));
    cluster.step();
    cluster.delete("fix");
    cluster.step();
    cluster.report("n1", "fix", PatchState::Reverted);
    let rv = cluster.live_patches["fix"]
        .metadata
        .resource_version
        .clone()
        .unwrap();
    let plan = next_plan(&cluster);
    let (seen, outcome, _) = run(&cluster, &plan, no_override()).await;
    assert!(outcome.errors.is_empty());
    assert_eq!(
        writes(&seen),
        [
            ("PATCH".into(), "/apis/graft.dev/v1alpha1/livepatchnodes/n1?&force=true&fieldManager=graft-operator".into()),
            ("PATCH".into(), "/apis/graft.dev/v1alpha1/livepatches/fix?&fieldManager=graft-operator".into()),
        ]
    );
    assert_eq!(
        seen[0].body["spec"],
        json!({ "patches": [] }),
        "the entry is dropped first"
    );
    let finalizer = seen
        .iter()
        .find(|s| {
            s.uri
                .starts_with("/apis/graft.dev/v1alpha1/livepatches/fix?")
        })
        .unwrap();
    assert_eq!(finalizer.content_type, MERGE);
    assert_eq!(
        finalizer.body,
        json!({ "metadata": { "finalizers": [], "resourceVersion": rv } })
    );
    assert_eq!(
        event_summary(&seen),
        [
            ("Reverted".into(), "LivePatch".into(), "Normal".into()),
            ("Reverted".into(), "Node".into(), "Normal".into()),
        ]
    );
}

#[tokio::test]
async fn the_finalizer_stays_when_a_livepatchnode_write_fails_and_the_failure_is_reported() {
    let mut cluster = reported(PatchState::Applied, node("n1", ""));
    cluster.step();
    cluster.delete("fix");
    cluster.step();
    cluster.report("n1", "fix", PatchState::Reverted);
    let plan = next_plan(&cluster);
    let answer: Answer = Box::new(|seen| {
        seen.uri
            .starts_with("/apis/graft.dev/v1alpha1/livepatchnodes/")
            .then(|| failure(500, "InternalError"))
    });
    let (seen, outcome, metrics) = run(&cluster, &plan, answer).await;
    assert_eq!(outcome.errors.len(), 1);
    assert_eq!(outcome.errors[0].category(), "ApiUnavailable");
    assert!(
        seen.iter().all(|s| !s
            .uri
            .starts_with("/apis/graft.dev/v1alpha1/livepatches/fix?")),
        "the finalizer must not be removed: {:?}",
        writes(&seen)
    );
    let warning = events(&seen)
        .into_iter()
        .find(|e| e.body["reason"] == "ApiUnavailable")
        .unwrap();
    assert_eq!(warning.body["type"], "Warning");
    assert_eq!(warning.body["regarding"]["kind"], "Node");
    assert!(
        warning.body["note"]
            .as_str()
            .unwrap()
            .contains("LivePatchNode n1")
    );
    assert!(
        metrics
            .render()
            .contains(r#"graft_reconcile_errors_total{category="ApiUnavailable"} 1"#)
    );
}

#[tokio::test]
async fn a_conflicting_cordon_is_retried_without_events() {
    let cluster = reported(PatchState::Stalled, node("n1", ""));
    let plan = next_plan(&cluster);
    let answer: Answer = Box::new(|seen| {
        seen.uri
            .starts_with("/api/v1/nodes/")
            .then(|| failure(409, "Conflict"))
    });
    let (seen, outcome, _) = run(&cluster, &plan, answer).await;
    assert_eq!(outcome.errors.len(), 1);
    assert!(outcome.errors[0].is_conflict());
    let summary = event_summary(&seen);
    assert!(
        summary
            .iter()
            .all(|(reason, _, _)| reason != "Cordoned" && reason != "Conflict"),
        "{summary:?}"
    );
}

#[tokio::test]
async fn the_finalizer_is_added_with_a_precondition() {
    let mut lp = rollout(live_patch("fix"), IntOrString::Int(1), 0);
    lp.metadata.finalizers = Some(vec!["example.com/other".into()]);
    let cluster = Cluster::new([node("n1", "")], [lp]);
    let plan = next_plan(&cluster);
    let (seen, _, _) = run(&cluster, &plan, no_override()).await;
    assert_eq!(seen[0].method, "PATCH");
    assert_eq!(
        seen[0].uri,
        "/apis/graft.dev/v1alpha1/livepatches/fix?&fieldManager=graft-operator"
    );
    assert_eq!(
        seen[0].body,
        json!({ "metadata": { "finalizers": ["example.com/other", FINALIZER], "resourceVersion": "1" } })
    );
    // No node is admitted before the finalizer is there.
    let lpn = seen
        .iter()
        .find(|s| s.uri.contains("/livepatchnodes/n1"))
        .unwrap();
    assert_eq!(lpn.body["spec"]["patches"], json!([]));
}
