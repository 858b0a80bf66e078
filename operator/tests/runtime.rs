//! The runtime against a mocked API server that serves lists and holds
//! watches open: the watches fill the stores (skipping a malformed object),
//! readiness follows them, the loop plans and writes as leader — and writes
//! nothing when it does not lead.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use graft_operator::{
    apply::Context,
    controller::{Timing, reconcile_loop},
    http::Health,
    metrics::Metrics,
    watch::{Readiness, watches},
};
use http::{Request, Response};
use kube::{Client, client::Body};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    body: Value,
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": format!("{kind}List"),
        "metadata": { "resourceVersion": "10" },
        "items": items,
    })
}

struct Fleet {
    seen: Arc<Mutex<Vec<Seen>>>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts watches and the reconcile loop against a mocked API server holding
/// one Linux node, the LivePatch `fix` and a malformed LivePatch `broken`.
fn start(leader: bool) -> Fleet {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let cluster = Cluster::new([node("n1", "")], [live_patch("fix")]);
    let mut good = serde_json::to_value(&cluster.live_patches["fix"]).unwrap();
    good["apiVersion"] = json!("graft.dev/v1alpha1");
    good["kind"] = json!("LivePatch");
    let broken = json!({
        "apiVersion": "graft.dev/v1alpha1", "kind": "LivePatch",
        "metadata": { "name": "broken", "resourceVersion": "3" },
        "spec": { "modules": "not a list" },
    });
    let node_json = serde_json::to_value(&cluster.nodes["n1"]).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = seen.clone();
    let server = tokio::spawn(async move {
        let mut held = Vec::new(); // open watches: never answered
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let uri = parts.uri.to_string();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            recorder.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                uri: uri.clone(),
                body: body.clone(),
            });
            if uri.contains("watch=true") {
                held.push(send);
                continue;
            }
            let path = uri.split('?').next().unwrap();
            let answer = match (parts.method.as_str(), path) {
                ("GET", "/apis/graft.dev/v1alpha1/livepatches") => {
                    list("LivePatch", vec![good.clone(), broken.clone()])
                }
                ("GET", "/apis/graft.dev/v1alpha1/livepatchnodes") => list("LivePatchNode", vec![]),
                ("GET", "/api/v1/nodes") => list("Node", vec![node_json.clone()]),
                ("PATCH", p) if p.starts_with("/apis/graft.dev/v1alpha1/livepatchnodes/") => {
                    let mut object = body.clone();
                    object["metadata"]["resourceVersion"] = json!("11");
                    object
                }
                ("PATCH", "/apis/graft.dev/v1alpha1/livepatches/fix/status") => good.clone(),
                ("POST", _) => body.clone(),
                other => panic!("unexpected request {other:?}"),
            };
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });

    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::default());
    let wake = Arc::new(Notify::new());
    let (stores, watch_futures) =
        watches(&client, readiness.clone(), metrics.clone(), wake.clone());
    let health = Arc::new(Health::new(readiness.clone(), metrics.clone()));
    let ctx = Arc::new(Context::new(client, metrics.clone(), None));
    let (leader_tx, leader_rx) = watch::channel(leader);
    let (stop, stop_rx) = watch::channel(false);
    let timing = Timing {
        debounce: Duration::from_millis(10),
        max_debounce: Duration::from_millis(50),
        resync: Duration::from_millis(300),
        catch_up: Duration::from_millis(100),
        apply: Duration::from_secs(5),
        retry: Duration::from_millis(100),
    };
    let mut tasks = vec![server];
    tasks.extend(watch_futures.into_iter().map(tokio::spawn));
    tasks.push(tokio::spawn(async move {
        reconcile_loop(ctx, stores, health, wake, leader_rx, None, timing, stop_rx).await;
        drop(leader_tx);
    }));
    Fleet {
        seen,
        metrics,
        readiness,
        stop,
        tasks,
    }
}

impl Fleet {
    async fn wait_for(&self, what: &str, f: impl Fn(&[Seen]) -> bool) {
        for _ in 0..200 {
            if f(&self.seen.lock().unwrap()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "timed out waiting for {what}: {:#?}",
            self.seen.lock().unwrap()
        );
    }

    async fn stop(self) -> Vec<Seen> {
        let _ = self.stop.send(true);
        let loop_task = self.tasks.last().unwrap();
        for _ in 0..100 {
            if loop_task.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(loop_task.is_finished(), "the loop stops when asked");
        for task in &self.tasks {
            task.abort();
        }
        self.seen.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn the_leader_watches_plans_and_writes_ignoring_a_malformed_object() {
    let fleet = start(true);
    fleet
        .wait_for("the LivePatchNode apply", |seen| {
            seen.iter()
                .any(|s| s.method == "PATCH" && s.uri.contains("/livepatchnodes/n1"))
        })
        .await;
    fleet
        .wait_for("the status apply", |seen| {
            seen.iter()
                .any(|s| s.uri.contains("/livepatches/fix/status"))
        })
        .await;
    assert!(fleet.readiness.ready());
    let text = fleet.metrics.render();
    assert!(
        !text.contains(r#"graft_reconcile_errors_total{category="MalformedObject"} 0"#),
        "{text}"
    );
    assert!(text.contains("graft_operator_leader 1"), "{text}");
    assert!(
        text.contains(r#"graft_nodes{patch="fix",state="Pending"} 1"#),
        "{text}"
    );
    assert!(!text.contains(r#"patch="broken""#), "{text}");
    let seen = fleet.stop().await;
    let lpn = seen
        .iter()
        .find(|s| s.uri.contains("/livepatchnodes/n1"))
        .unwrap();
    assert_eq!(lpn.body["spec"]["patches"][0]["livePatch"], "fix");
    assert!(
        seen.iter().all(|s| !s.uri.contains("/livepatches/broken")),
        "nothing is written for a malformed LivePatch"
    );
    // The watches use the default watcher config: a list, then a watch.
    for path in [
        "/apis/graft.dev/v1alpha1/livepatches",
        "/apis/graft.dev/v1alpha1/livepatchnodes",
        "/api/v1/nodes",
    ] {
        assert!(seen.iter().any(|s| s.method == "GET"
            && s.uri.starts_with(path)
            && !s.uri.contains("watch=true")));
        assert!(
            seen.iter().any(|s| s.method == "GET"
                && s.uri.starts_with(path)
                && s.uri.contains("watch=true"))
        );
    }
}

#[tokio::test]
async fn a_replica_that_does_not_lead_writes_nothing() {
    let fleet = start(false);
    for _ in 0..100 {
        if fleet.readiness.ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(fleet.readiness.ready());
    // Several loop turns (resync is 300 ms).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let text = fleet.metrics.render();
    assert!(text.contains("graft_operator_leader 0"), "{text}");
    assert!(
        !text.contains("patch="),
        "only the leader exports per-patch series: {text}"
    );
    let seen = fleet.stop().await;
    let writes: Vec<_> = seen.iter().filter(|s| s.method != "GET").collect();
    assert!(writes.is_empty(), "{writes:#?}");
}
