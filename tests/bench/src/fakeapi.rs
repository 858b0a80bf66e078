//! A tiny Kubernetes API server for one LivePatchNode, enough for
//! `graft-agent run`: the list and watch of its field selector (the watch
//! stays open and carries an event for every change, as a real API server's
//! does), server-side-apply status patches, and an empty Pod list. Every
//! request is recorded with its time, so the idle benchmark can show there
//! was no API traffic in its window.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub const LPN_PATH: &str = "/apis/graft.dev/v1alpha1/livepatchnodes";

#[derive(Debug, Default)]
pub struct ApiState {
    pub lpn: Value,
    pub rv: u64,
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
    /// (when, "METHOD path?query") of every request.
    pub requests: Vec<(Instant, String)>,
    /// Every status the agent applied.
    pub statuses: Vec<Value>,
}

#[derive(Debug, Clone)]
pub struct FakeApi {
    pub state: Arc<Mutex<ApiState>>,
    pub addr: SocketAddr,
}

impl FakeApi {
    /// Serves `lpn` on 127.0.0.1 (a free port) from the current tokio runtime.
    pub async fn start(lpn: Value) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(ApiState {
            lpn,
            rv: 1,
            ..ApiState::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&state));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { state, addr })
    }

    /// A kubeconfig that points a client at this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: http://{}\n\
             users:\n- name: bench\n  user: {{}}\ncontexts:\n- name: bench\n  context:\n    cluster: bench\n    user: bench\n\
             current-context: bench\n",
            self.addr
        )
    }

    pub fn statuses(&self) -> Vec<Value> {
        self.state.lock().unwrap().statuses.clone()
    }

    pub fn requests_since(&self, t: Instant) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|(at, _)| *at >= t)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("graft-bench fake API server: no {what}"), "reason": "NotFound", "code": 404}),
    )
}

async fn answer(State(state): State<Arc<Mutex<ApiState>>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    state
        .lock()
        .unwrap()
        .requests
        .push((Instant::now(), format!("{method} {path}?{query}")));
    let body = match axum::body::to_bytes(request.into_body(), 16 << 20).await {
        Ok(b) => b,
        Err(_) => return not_found("body"),
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let status_path = format!("{LPN_PATH}/{}/status", node_name(&state));
    match (method, path.as_str()) {
        (Method::GET, LPN_PATH) if watch => {
            let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
            state.lock().unwrap().watchers.push(tx);
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<Bytes, std::convert::Infallible>(b), rx))
            });
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(stream))
                .unwrap_or_else(|_| not_found("watch"))
        }
        (Method::GET, LPN_PATH) => {
            let s = state.lock().unwrap();
            json_response(
                StatusCode::OK,
                &json!({"apiVersion": "graft.dev/v1alpha1", "kind": "LivePatchNodeList",
                        "metadata": {"resourceVersion": s.rv.to_string()}, "items": [s.lpn.clone()]}),
            )
        }
        (Method::PATCH, p) if p == status_path => {
            let applied: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let mut s = state.lock().unwrap();
            s.rv += 1;
            let rv = s.rv.to_string();
            s.statuses.push(applied["status"].clone());
            s.lpn["status"] = applied["status"].clone();
            s.lpn["metadata"]["resourceVersion"] = json!(rv);
            let obj = s.lpn.clone();
            // A real API server tells every watcher, the writer included.
            let mut event =
                serde_json::to_vec(&json!({"type": "MODIFIED", "object": obj})).unwrap_or_default();
            event.push(b'\n');
            let event = Bytes::from(event);
            s.watchers.retain(|w| w.send(event.clone()).is_ok());
            json_response(StatusCode::OK, &obj)
        }
        (Method::GET, "/api/v1/pods") => json_response(
            StatusCode::OK,
            &json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                    "metadata": {"resourceVersion": "1"}, "items": []}),
        ),
        _ => not_found(&path),
    }
}

fn node_name(state: &Arc<Mutex<ApiState>>) -> String {
    state.lock().unwrap().lpn["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
