//! `graft-agent run`'s cluster loop over the simulated kernel, against a
//! mocked API server (tower-test). The mock plays a small API server for this
//! node's LivePatchNode: it answers the list and watch of the agent's field
//! selector, stores every status the agent applies, serves ConfigMaps and the
//! node's Pods, and fails the test on any request it does not expect. Every
//! status write is checked: PATCH to the status subresource, server-side
//! apply content type, field manager `graft-agent` with force.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use graft_agent::cluster::{Agent, AgentConfig};
use graft_agent::http::Health;
use graft_agent::journal::StateDir;
use graft_agent::kernel::Kernel;
use graft_agent::kernel::sim::{NewTask, SimInit, SimKernel, SimModuleSpec};
use graft_agent::metrics::Metrics;
use graft_agent::module_file::{self, SIM_SECTION, sha256_hex};
use graft_crds::{
    DesiredState, LivePatchNode, LivePatchNodeSpec, ModuleSource, NodeModule, NodePatch, OnStall,
    TransitionPolicy,
};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::oneshot;

const NODE: &str = "node-a";
const NS: &str = "graft-system";
const RELEASE: &str = "6.1.0-sim-amd64";
const LP: &str = "cve-2024-0001";
const POD_UID: &str = "7f3c1a2e-9b4d-4c2a-8f1e-0123456789ab";
const CONTAINER: &str = "4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f";
const LPN_PATH: &str = "/apis/graft.dev/v1alpha1/livepatchnodes";

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Responder = tower_test::mock::SendResponse<Response<Body>>;

#[derive(Default)]
enum PodsAnswer {
    #[default]
    Forbidden,
    List(Vec<(String, String, String)>),
}

/// What the mocked API server holds and has seen.
#[derive(Default)]
struct ApiState {
    lpn: Option<Value>,
    rv: u64,
    /// Every `status` the agent applied, in order.
    statuses: Vec<Value>,
    configmaps: HashMap<String, Value>,
    configmap_gets: usize,
    pods: PodsAnswer,
    pod_lists: usize,
    parked_watch: Option<Responder>,
    pending_events: Vec<Value>,
    unexpected: Vec<String>,
    /// Status writes to answer with 500 (the API server is having trouble).
    fail_status_writes: usize,
}

impl ApiState {
    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    fn event(&mut self, kind: &str, object: Value) {
        self.pending_events
            .push(json!({"type": kind, "object": object}));
        if let Some(watch) = self.parked_watch.take() {
            self.flush_events(watch);
        }
    }

    fn flush_events(&mut self, watch: Responder) {
        let mut body = Vec::new();
        for e in self.pending_events.drain(..) {
            body.extend(serde_json::to_vec(&e).unwrap());
            body.push(b'\n');
        }
        watch.send_response(ok_bytes(body));
    }
}

#[derive(Clone)]
struct FakeApi {
    state: Arc<Mutex<ApiState>>,
}

fn ok_bytes(body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

fn ok(v: &Value) -> Response<Body> {
    ok_bytes(serde_json::to_vec(v).unwrap())
}

fn api_error(code: u16, reason: &str) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(
            serde_json::to_vec(&json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("mock: {reason}"), "reason": reason, "code": code,
            }))
            .unwrap(),
        ))
        .unwrap()
}

fn query_map(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3D", "=").replace("%2F", "/")))
        .collect()
}

impl FakeApi {
    fn new(lpn: Option<Value>) -> Self {
        let state = ApiState {
            lpn,
            rv: 100,
            ..ApiState::default()
        };
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn serve(&self, mut handle: Handle) {
        let fake = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                fake.answer(request, send).await;
            }
        });
    }

    async fn answer(&self, request: Request<Body>, send: Responder) {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let query = query_map(request.uri().query().unwrap_or_default());
        let content_type = request
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let mut s = self.state.lock().unwrap();
        let selects_node = query.get("fieldSelector").map(String::as_str)
            == Some(&format!("metadata.name={NODE}"));
        match (method.as_str(), path.as_str()) {
            ("GET", LPN_PATH)
                if selects_node && query.get("watch").map(String::as_str) == Some("true") =>
            {
                if s.pending_events.is_empty() {
                    if let Some(old) = s.parked_watch.replace(send) {
                        old.send_response(ok_bytes(Vec::new()));
                    }
                } else {
                    s.flush_events(send);
                }
            }
            ("GET", LPN_PATH) if selects_node => {
                let rv = s.rv.to_string();
                let items: Vec<Value> = s.lpn.iter().cloned().collect();
                send.send_response(ok(&json!({
                    "apiVersion": "graft.dev/v1alpha1", "kind": "LivePatchNodeList",
                    "metadata": {"resourceVersion": rv}, "items": items,
                })));
            }
            ("PATCH", p) if p == format!("{LPN_PATH}/{NODE}/status") => {
                let checks = [
                    (
                        query.get("fieldManager").map(String::as_str) == Some("graft-agent"),
                        "fieldManager=graft-agent",
                    ),
                    (
                        query.get("force").map(String::as_str) == Some("true"),
                        "force=true",
                    ),
                    (
                        content_type.as_deref() == Some("application/apply-patch+yaml"),
                        "server-side apply content type",
                    ),
                ];
                for (good, what) in checks {
                    if !good {
                        s.unexpected.push(format!(
                            "status PATCH without {what}: {query:?} {content_type:?}"
                        ));
                    }
                }
                if s.fail_status_writes > 0 {
                    s.fail_status_writes -= 1;
                    send.send_response(api_error(500, "InternalError"));
                    return;
                }
                let applied: Value = serde_json::from_slice(&body).unwrap();
                if applied["apiVersion"] != "graft.dev/v1alpha1"
                    || applied["kind"] != "LivePatchNode"
                {
                    s.unexpected
                        .push(format!("status apply without apiVersion/kind: {applied}"));
                }
                if applied.get("spec").is_some() {
                    s.unexpected.push("the agent applied a spec".into());
                }
                s.statuses.push(applied["status"].clone());
                let rv = s.next_rv();
                match s.lpn.as_mut() {
                    Some(lpn) => {
                        lpn["status"] = applied["status"].clone();
                        lpn["metadata"]["resourceVersion"] = json!(rv);
                        let lpn = lpn.clone();
                        send.send_response(ok(&lpn));
                        // A real API server tells every watcher, the agent included.
                        s.event("MODIFIED", lpn);
                    }
                    None => send.send_response(api_error(404, "NotFound")),
                }
            }
            ("GET", p) if p.starts_with(&format!("/api/v1/namespaces/{NS}/configmaps/")) => {
                s.configmap_gets += 1;
                let name = p.rsplit('/').next().unwrap().to_string();
                match s.configmaps.get(&name) {
                    Some(cm) => send.send_response(ok(cm)),
                    None => send.send_response(api_error(404, "NotFound")),
                }
            }
            ("GET", "/api/v1/pods")
                if query.get("fieldSelector").map(String::as_str)
                    == Some(&format!("spec.nodeName={NODE}")) =>
            {
                s.pod_lists += 1;
                match &s.pods {
                    PodsAnswer::Forbidden => send.send_response(api_error(403, "Forbidden")),
                    PodsAnswer::List(pods) => {
                        let items: Vec<Value> = pods
                            .iter()
                            .map(|(uid, ns, name)| {
                                json!({
                                    "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                                    "metadata": {"uid": uid, "namespace": ns, "name": name},
                                })
                            })
                            .collect();
                        send.send_response(ok(&json!({
                            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                            "metadata": {}, "items": items,
                        })));
                    }
                }
            }
            _ => {
                s.unexpected.push(format!(
                    "{method} {path}?{:?}",
                    request_query_string(&query)
                ));
                send.send_response(api_error(404, "NotFound"));
            }
        }
    }

    /// The operator creates the LivePatchNode.
    fn create(&self, patches: Vec<NodePatch>) {
        let mut s = self.state.lock().unwrap();
        let rv = s.next_rv();
        let obj = lpn_json(patches, 1, &rv);
        s.lpn = Some(obj.clone());
        s.event("ADDED", obj);
    }

    /// The operator changes the spec (a new generation).
    fn set_spec(&self, patches: Vec<NodePatch>) {
        let mut s = self.state.lock().unwrap();
        let rv = s.next_rv();
        let lpn = s.lpn.as_mut().expect("no LivePatchNode");
        let generation = lpn["metadata"]["generation"].as_i64().unwrap() + 1;
        lpn["metadata"]["generation"] = json!(generation);
        lpn["metadata"]["resourceVersion"] = json!(rv);
        lpn["spec"] = serde_json::to_value(LivePatchNodeSpec { patches }).unwrap();
        let obj = lpn.clone();
        s.event("MODIFIED", obj);
    }

    fn statuses(&self) -> Vec<Value> {
        self.state.lock().unwrap().statuses.clone()
    }

    fn object(&self) -> Option<Value> {
        self.state.lock().unwrap().lpn.clone()
    }

    fn assert_no_unexpected_requests(&self) {
        let s = self.state.lock().unwrap();
        assert!(
            s.unexpected.is_empty(),
            "unexpected requests: {:#?}",
            s.unexpected
        );
    }

    /// Waits until the last status written satisfies `pred`; returns it.
    async fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(last) = self.statuses().last()
                && pred(last)
            {
                return last.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; statuses written:\n{:#}",
                    Value::Array(self.statuses())
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn request_query_string(q: &HashMap<String, String>) -> String {
    let mut v: Vec<_> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    v.join("&")
}

fn lpn_json(patches: Vec<NodePatch>, generation: i64, rv: &str) -> Value {
    let mut v =
        serde_json::to_value(LivePatchNode::new(NODE, LivePatchNodeSpec { patches })).unwrap();
    v["metadata"]["uid"] = json!("5a0c6a51-lpn-uid");
    v["metadata"]["generation"] = json!(generation);
    v["metadata"]["resourceVersion"] = json!(rv);
    v
}

/// The state of one LivePatch in a written status.
fn patch_state(status: &Value) -> Option<&str> {
    status["patches"]
        .as_array()?
        .iter()
        .find(|p| p["livePatch"] == LP)?["state"]
        .as_str()
}

fn states_seen(statuses: &[Value]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for s in statuses {
        if let Some(state) = patch_state(s)
            && seen.last().map(String::as_str) != Some(state)
        {
            seen.push(state.to_string());
        }
    }
    seen
}

/// A simulated node: its kernel, the host filesystem the agent sees, and module files.
struct Node {
    dir: tempfile::TempDir,
    host: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        SimKernel::init(
            dir.path(),
            &SimInit {
                tasks: 12,
                ..SimInit::default()
            },
        )
        .unwrap();
        Self {
            dir,
            host: tempfile::tempdir().unwrap(),
        }
    }

    fn sim(&self) -> SimKernel {
        SimKernel::open(self.dir.path()).unwrap()
    }

    fn state(&self) -> StateDir {
        StateDir::new(self.dir.path().join("agent-state"))
    }

    /// Writes a module under the host root; returns its hostPath and sha256.
    fn host_module(&self, bytes: &[u8]) -> (String, String) {
        let rel = "var/lib/graft/modules/demo.ko";
        let full: PathBuf = self.host.path().join(rel);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, bytes).unwrap();
        (format!("/{rel}"), sha256_hex(bytes))
    }

    fn loaded_patches(&self) -> Vec<String> {
        self.sim().patch_names().unwrap()
    }
}

fn module(name: &str, function: &str, transition_ms: u64) -> Vec<u8> {
    let spec = SimModuleSpec {
        objects: [("vmlinux".to_string(), vec![function.to_string()])].into(),
        replace: false,
        transition_ms: Some(transition_ms),
    };
    let modinfo = format!(
        "livepatch=Y\0name={name}\0vermagic={RELEASE} SMP preempt mod_unload modversions \0srcversion=0123456789ABCDEF\0license=GPL\0"
    );
    module_file::write_module_elf(&[
        (".modinfo", modinfo.as_bytes()),
        (SIM_SECTION, &serde_json::to_vec(&spec).unwrap()),
    ])
}

fn entry(source: ModuleSource, sha256: &str, desired: DesiredState, generation: i64) -> NodePatch {
    NodePatch {
        live_patch: LP.into(),
        live_patch_generation: Some(generation),
        module: NodeModule {
            kernel_release: RELEASE.into(),
            source,
            sha256: Some(sha256.into()),
        },
        desired_state: desired,
        transition: TransitionPolicy::default(),
    }
}

/// A running agent over `node`, talking to `api`.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the agent stops promptly")
            .unwrap();
    }
}

fn start(node: &Node, api: &FakeApi) -> Running {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    api.serve(handle);
    let client = kube::Client::new(service, "default");
    let kernel: Arc<dyn Kernel> = Arc::new(node.sim());
    let metrics = Arc::new(Metrics::new(NODE, Arc::clone(&kernel), node.state()).unwrap());
    let health = Arc::new(Health::new("waiting for the LivePatchNode watch"));
    let mut cfg = AgentConfig::new(NODE);
    cfg.namespace = NS.into();
    cfg.host_root = node.host.path().to_path_buf();
    cfg.census_interval = Duration::from_millis(100);
    cfg.writer.progress_interval = Duration::from_millis(300);
    cfg.writer.backoff = Duration::from_millis(50);
    let agent = Agent::new(
        cfg,
        client,
        kernel,
        node.state(),
        Arc::clone(&metrics),
        Arc::clone(&health),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        agent
            .run(async move {
                let _ = stopped.await;
            })
            .await
            .expect("the agent ends cleanly");
    });
    Running {
        stop: Some(stop),
        task,
        metrics,
        health,
    }
}

fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabled_entry_is_loaded_followed_and_reported_applied() {
    let node = Node::new();
    let bytes = module("graft_demo", "cmdline_proc_show", 1200);
    let (path, sha) = node.host_module(&bytes);
    // The operator has not created the LivePatchNode yet: the agent waits and never creates it.
    let api = FakeApi::new(None);
    let agent = start(&node, &api);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.health.is_ready() {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        api.statuses().is_empty(),
        "no status without a LivePatchNode"
    );

    api.create(vec![entry(
        ModuleSource::host_path(&path),
        &sha,
        DesiredState::Enabled,
        7,
    )]);
    let status = api
        .wait_status("Applied", |s| patch_state(s) == Some("Applied"))
        .await;
    let seen = states_seen(&api.statuses());
    let pos = |s: &str| seen.iter().position(|x| x == s);
    assert!(
        pos("Loading") < pos("Transitioning") && pos("Transitioning") < pos("Applied"),
        "states in order: {seen:?}"
    );
    assert!(pos("Loading").is_some(), "{seen:?}");

    let p = &status["patches"][0];
    assert_eq!(p["livePatch"], LP);
    assert_eq!(p["livePatchGeneration"], 7);
    assert_eq!(p["sha256"], sha.as_str());
    assert_eq!(p["sysfsName"], "graft_demo");
    assert!(p["appliedAt"].is_string());
    assert!(p["durationSeconds"].as_f64().unwrap() > 0.5);
    assert!(p.get("transition").is_none());
    assert_eq!(status["kernelRelease"], RELEASE);
    assert_eq!(status["bootId"], node.sim().boot_id().unwrap().as_str());
    assert_eq!(status["livepatchSupported"], true);
    assert_eq!(status["agentVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["simulated"], true);
    assert_eq!(status["applied"], 1);
    assert_eq!(status["observedGeneration"], 1);
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True");

    // The progress of the transition was reported while it ran.
    let progress = api
        .statuses()
        .iter()
        .filter(|s| patch_state(s) == Some("Transitioning"))
        .filter_map(|s| s["patches"][0]["transition"]["tasksTotal"].as_u64())
        .next_back();
    assert!(progress.is_some_and(|t| t > 0), "tasksTotal reported");

    assert_eq!(node.loaded_patches(), vec!["graft_demo"]);
    let text = agent.metrics.render();
    assert_eq!(
        metric(
            &text,
            "graft_patch_state",
            &[
                &format!("patch=\"{LP}\""),
                "state=\"Applied\"",
                "node=\"node-a\""
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "graft_transition_duration_seconds_count",
            &["target=\"patched\""]
        ),
        Some(1.0)
    );

    // Our own status writes come back through the watch; they start nothing.
    let writes = api.statuses().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.statuses().len(), writes, "no writes while idle");
    agent.stop().await;
    api.assert_no_unexpected_requests();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_transition_reports_the_blocking_task_its_function_and_pod() {
    let node = Node::new();
    node.sim()
        .add_task(NewTask {
            comm: "nginx-worker".into(),
            sleeps_in: Some("held_fn".into()),
            pod: Some((POD_UID.into(), CONTAINER.into())),
            ..NewTask::default()
        })
        .unwrap();
    let bytes = module("graft_stall", "held_fn", 300);
    let (path, sha) = node.host_module(&bytes);
    let mut e = entry(
        ModuleSource::host_path(&path),
        &sha,
        DesiredState::Enabled,
        1,
    );
    e.transition.stall_after = "1s".into();
    let api = FakeApi::new(None);
    api.state.lock().unwrap().pods =
        PodsAnswer::List(vec![(POD_UID.into(), "shop".into(), "nginx-7d9c".into())]);
    api.create(vec![e]);
    let agent = start(&node, &api);

    let status = api
        .wait_status("Stalled with a named pod", |s| {
            patch_state(s) == Some("Stalled")
                && s["patches"][0]["transition"]["blockingTasks"][0]["podName"].is_string()
        })
        .await;
    let p = &status["patches"][0];
    assert_eq!(p["reason"], "TransitionStalled");
    assert!(p["message"].as_str().unwrap().contains("stalled"), "{p}");
    let t = &p["transition"];
    assert_eq!(t["target"], "Patched");
    assert!(t["started"].is_string());
    let task = &t["blockingTasks"][0];
    assert_eq!(task["comm"], "nginx-worker");
    assert_eq!(task["function"], "held_fn");
    assert_eq!(task["podUid"], POD_UID);
    assert_eq!(task["podNamespace"], "shop");
    assert_eq!(task["podName"], "nginx-7d9c");
    assert_eq!(task["containerId"], format!("containerd://{CONTAINER}"));
    assert_eq!(task["kernelThread"], false);
    assert_eq!(status["stalled"], 1);
    let degraded = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap();
    assert_eq!(degraded["status"], "True");

    let text = agent.metrics.render();
    let lp = format!("patch=\"{LP}\"");
    assert_eq!(
        metric(&text, "graft_transition_stalled", &[&lp]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "graft_transition_in_progress", &[&lp]),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "graft_transition_blocking_tasks", &[&lp]),
        Some(1.0)
    );

    // A long stall is not a flood of writes: progress is rate-limited.
    let before = api.statuses().len();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let during = api.statuses().len() - before;
    assert!(during <= 5, "{during} writes in 1s of stall");

    // The task leaves the function: the transition ends.
    node.sim().release_task("nginx-worker").unwrap();
    api.wait_status("Applied", |s| patch_state(s) == Some("Applied"))
        .await;
    agent.stop().await;
    api.assert_no_unexpected_requests();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_leaves_the_transition_to_the_kernel_and_resumes_it() {
    let node = Node::new();
    node.sim()
        .add_task(NewTask {
            comm: "holder".into(),
            kthread: true,
            sleeps_in: Some("held_fn".into()),
            pod: Some((POD_UID.into(), CONTAINER.into())),
            ..NewTask::default()
        })
        .unwrap();
    let bytes = module("graft_stall", "held_fn", 300);
    let (path, sha) = node.host_module(&bytes);
    let mut e = entry(
        ModuleSource::host_path(&path),
        &sha,
        DesiredState::Enabled,
        1,
    );
    e.transition.stall_after = "1s".into();
    let api = FakeApi::new(None);
    api.create(vec![e.clone()]);
    let agent = start(&node, &api);
    let status = api
        .wait_status("Stalled", |s| patch_state(s) == Some("Stalled"))
        .await;
    // RBAC does not allow listing pods: the task keeps its pod UID only.
    let task = &status["patches"][0]["transition"]["blockingTasks"][0];
    assert_eq!(task["podUid"], POD_UID);
    assert_eq!(task["kernelThread"], true);
    assert!(task.get("podName").is_none());
    let started = status["patches"][0]["transition"]["started"].clone();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        api.state.lock().unwrap().pod_lists,
        1,
        "asked once, then remembered"
    );

    // SIGTERM: the agent goes, the kernel carries on with the transition.
    agent.stop().await;
    assert_eq!(
        node.sim().snapshot().unwrap().transition.unwrap().patch,
        "graft_stall"
    );

    // The next agent picks the transition up where it is (same start time) ...
    let api2 = FakeApi::new(api.object());
    let agent = start(&node, &api2);
    let resumed = api2
        .wait_status("Stalled again", |s| {
            patch_state(s) == Some("Stalled")
                && s["patches"][0]["transition"]["blockingTasks"][0]["comm"] == "holder"
        })
        .await;
    let again = resumed["patches"][0]["transition"]["started"]
        .as_str()
        .unwrap();
    let diff = (parse_time(again) - parse_time(started.as_str().unwrap())).abs();
    assert!(
        diff < 1.0,
        "resumed with the same start: {started} vs {again}"
    );
    assert!(
        api2.statuses()
            .iter()
            .all(|s| patch_state(s) != Some("Loading")),
        "not loaded again: {:?}",
        states_seen(&api2.statuses())
    );

    // ... and a new spec cancels it: the agent detaches and reverts.
    e.desired_state = DesiredState::Disabled;
    e.live_patch_generation = Some(2);
    api2.set_spec(vec![e]);
    api2.wait_status("Reverted", |s| patch_state(s) == Some("Reverted"))
        .await;
    assert!(node.sim().snapshot().unwrap().modules.is_empty());
    agent.stop().await;
    api.assert_no_unexpected_requests();
    api2.assert_no_unexpected_requests();
}

fn parse_time(rfc3339: &str) -> f64 {
    let t: k8s_openapi::jiff::Timestamp = rfc3339.parse().unwrap();
    t.as_millisecond() as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_entry_reverts_and_unloads() {
    let node = Node::new();
    let bytes = module("graft_demo", "cmdline_proc_show", 200);
    let (path, sha) = node.host_module(&bytes);
    let source = ModuleSource::host_path(&path);
    let api = FakeApi::new(None);
    api.create(vec![entry(source.clone(), &sha, DesiredState::Enabled, 1)]);
    let agent = start(&node, &api);
    api.wait_status("Applied", |s| patch_state(s) == Some("Applied"))
        .await;
    assert_eq!(node.loaded_patches(), vec!["graft_demo"]);

    api.set_spec(vec![entry(source, &sha, DesiredState::Disabled, 2)]);
    let status = api
        .wait_status("Reverted", |s| patch_state(s) == Some("Reverted"))
        .await;
    assert_eq!(status["patches"][0]["livePatchGeneration"], 2);
    assert_eq!(status["observedGeneration"], 2);
    let seen = states_seen(&api.statuses());
    assert!(
        seen.ends_with(&["Applied".into(), "Reverting".into(), "Reverted".into()]),
        "{seen:?}"
    );
    assert!(node.loaded_patches().is_empty());
    assert!(
        node.sim().snapshot().unwrap().modules.is_empty(),
        "module unloaded"
    );
    let text = agent.metrics.render();
    assert_eq!(
        metric(
            &text,
            "graft_transition_duration_seconds_count",
            &["target=\"unpatched\""]
        ),
        Some(1.0)
    );
    agent.stop().await;
    api.assert_no_unexpected_requests();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_reapplies_what_the_spec_asks() {
    let node = Node::new();
    let bytes = module("graft_demo", "cmdline_proc_show", 200);
    let (path, sha) = node.host_module(&bytes);
    let api = FakeApi::new(None);
    api.create(vec![entry(
        ModuleSource::host_path(&path),
        &sha,
        DesiredState::Enabled,
        1,
    )]);
    let agent = start(&node, &api);
    let before = api
        .wait_status("Applied", |s| patch_state(s) == Some("Applied"))
        .await;
    agent.stop().await;

    let new_boot = node.sim().reboot().unwrap();
    assert_ne!(before["bootId"], new_boot.as_str());
    assert!(node.loaded_patches().is_empty());

    // The agent starts again on the new boot; the API still holds the old status.
    let api = FakeApi::new(api.object());
    let agent = start(&node, &api);
    let status = api
        .wait_status("Applied on the new boot", |s| {
            patch_state(s) == Some("Applied") && s["bootId"] == new_boot.as_str()
        })
        .await;
    assert_eq!(status["patches"][0]["sysfsName"], "graft_demo");
    let seen = states_seen(&api.statuses());
    assert!(seen.contains(&"Loading".to_string()), "{seen:?}");
    // The first write already tells the truth about the new boot: not Applied.
    let first = &api.statuses()[0];
    assert_eq!(first["bootId"], new_boot.as_str());
    assert_ne!(patch_state(first), Some("Applied"), "{first:#}");
    assert_eq!(node.loaded_patches(), vec!["graft_demo"]);
    agent.stop().await;
    api.assert_no_unexpected_requests();
}

fn configmap(name: &str, key: &str, bytes: &[u8]) -> Value {
    use k8s_openapi::ByteString;
    let cm = k8s_openapi::api::core::v1::ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        binary_data: Some([(key.to_string(), ByteString(bytes.to_vec()))].into()),
        ..Default::default()
    };
    let mut v = serde_json::to_value(cm).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("ConfigMap");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_source_is_read_from_binary_data() {
    let node = Node::new();
    let bytes = module("graft_demo", "cmdline_proc_show", 200);
    let sha = sha256_hex(&bytes);
    let api = FakeApi::new(None);
    api.state.lock().unwrap().configmaps.insert(
        "demo-patch".into(),
        configmap("demo-patch", "patch.ko", &bytes),
    );
    api.create(vec![entry(
        ModuleSource::config_map("demo-patch", "patch.ko"),
        &sha,
        DesiredState::Enabled,
        1,
    )]);
    let agent = start(&node, &api);
    let status = api
        .wait_status("Applied", |s| patch_state(s) == Some("Applied"))
        .await;
    assert_eq!(status["patches"][0]["sha256"], sha.as_str());
    assert_eq!(api.state.lock().unwrap().configmap_gets, 1);
    assert_eq!(node.loaded_patches(), vec!["graft_demo"]);
    agent.stop().await;
    api.assert_no_unexpected_requests();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sha256_mismatch_fails_before_loading_and_is_not_retried() {
    let node = Node::new();
    let bytes = module("graft_demo", "cmdline_proc_show", 200);
    let pinned = "0".repeat(64);
    let api = FakeApi::new(None);
    api.state.lock().unwrap().configmaps.insert(
        "demo-patch".into(),
        configmap("demo-patch", "patch.ko", &bytes),
    );
    let spec = vec![entry(
        ModuleSource::config_map("demo-patch", "patch.ko"),
        &pinned,
        DesiredState::Enabled,
        3,
    )];
    api.create(spec.clone());
    let agent = start(&node, &api);
    let status = api
        .wait_status("Failed", |s| patch_state(s) == Some("Failed"))
        .await;
    let p = &status["patches"][0];
    assert_eq!(p["reason"], "ChecksumMismatch");
    assert!(
        p["message"].as_str().unwrap().contains(&sha256_hex(&bytes)),
        "{p}"
    );
    assert_eq!(p["sha256"], pinned.as_str());
    assert_eq!(status["failed"], 1);
    assert!(
        node.sim().snapshot().unwrap().modules.is_empty(),
        "nothing loaded"
    );
    let text = agent.metrics.render();
    assert_eq!(
        metric(
            &text,
            "graft_module_load_failures_total",
            &[&format!("patch=\"{LP}\""), "reason=\"sha256_mismatch\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "graft_patch_state",
            &[&format!("patch=\"{LP}\""), "state=\"Failed\""]
        ),
        Some(1.0)
    );

    // The same generation again (an unrelated change of the object): no retry.
    {
        let mut s = api.state.lock().unwrap();
        let rv = s.next_rv();
        let mut obj = s.lpn.clone().unwrap();
        obj["metadata"]["labels"] = json!({"touched": "yes"});
        obj["metadata"]["resourceVersion"] = json!(rv);
        s.lpn = Some(obj.clone());
        s.event("MODIFIED", obj);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent.stop().await;
    assert_eq!(api.state.lock().unwrap().configmap_gets, 1);

    // Nor after a restart on the same boot.
    let api2 = FakeApi::new(api.object());
    api2.state.lock().unwrap().configmaps = api.state.lock().unwrap().configmaps.clone();
    let agent = start(&node, &api2);
    api2.wait_status("the status written again", |s| {
        patch_state(s) == Some("Failed")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        api2.state.lock().unwrap().configmap_gets,
        0,
        "no retry after a restart"
    );
    assert!(
        api2.statuses()
            .iter()
            .all(|s| patch_state(s) == Some("Failed")),
        "{:?}",
        states_seen(&api2.statuses())
    );

    // A new generation tries again.
    api2.set_spec(vec![entry(
        ModuleSource::config_map("demo-patch", "patch.ko"),
        &sha256_hex(&bytes),
        DesiredState::Enabled,
        4,
    )]);
    api2.wait_status("Applied", |s| patch_state(s) == Some("Applied"))
        .await;
    agent.stop().await;
    api.assert_no_unexpected_requests();
    api2.assert_no_unexpected_requests();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_stall_revert_reverts_and_reports_failed() {
    let node = Node::new();
    node.sim()
        .add_task(NewTask {
            comm: "holder".into(),
            kthread: true,
            sleeps_in: Some("held_fn".into()),
            ..NewTask::default()
        })
        .unwrap();
    let bytes = module("graft_stall", "held_fn", 200);
    let (path, sha) = node.host_module(&bytes);
    let mut e = entry(
        ModuleSource::host_path(&path),
        &sha,
        DesiredState::Enabled,
        1,
    );
    e.transition.stall_after = "1s".into();
    e.transition.on_stall = OnStall::Revert;
    let api = FakeApi::new(None);
    api.create(vec![e]);
    let agent = start(&node, &api);
    let status = api
        .wait_status("Failed", |s| patch_state(s) == Some("Failed"))
        .await;
    assert_eq!(status["patches"][0]["reason"], "StalledAndReverted");
    assert!(
        node.sim().snapshot().unwrap().modules.is_empty(),
        "reverted and unloaded"
    );
    let seen = states_seen(&api.statuses());
    assert!(
        seen.contains(&"Stalled".to_string()) || seen.contains(&"Reverting".to_string()),
        "{seen:?}"
    );
    agent.stop().await;
    api.assert_no_unexpected_requests();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_status_writes_are_retried_and_the_kernel_work_goes_on() {
    let node = Node::new();
    let bytes = module("graft_demo", "cmdline_proc_show", 200);
    let (path, sha) = node.host_module(&bytes);
    let api = FakeApi::new(None);
    api.state.lock().unwrap().fail_status_writes = 4;
    api.create(vec![entry(
        ModuleSource::host_path(&path),
        &sha,
        DesiredState::Enabled,
        1,
    )]);
    let agent = start(&node, &api);
    api.wait_status("Applied", |s| patch_state(s) == Some("Applied"))
        .await;
    assert_eq!(api.state.lock().unwrap().fail_status_writes, 0);
    assert_eq!(node.loaded_patches(), vec!["graft_demo"]);
    agent.stop().await;
    api.assert_no_unexpected_requests();
}
