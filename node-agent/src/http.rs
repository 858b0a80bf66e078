//! The agent's small HTTP server: `/metrics`, `/livez`, `/readyz`.
//!
//! Nothing here runs between requests: metrics are collected when scraped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::metrics::Metrics;

/// Liveness and readiness, as the probes see them.
#[derive(Debug)]
pub struct Health {
    alive: AtomicBool,
    ready: AtomicBool,
    not_ready_reason: &'static str,
}

impl Health {
    /// Alive, not ready until [`Health::set_ready`]; `not_ready_reason` is what `/readyz` says meanwhile.
    pub fn new(not_ready_reason: &'static str) -> Self {
        Self {
            alive: AtomicBool::new(true),
            ready: AtomicBool::new(false),
            not_ready_reason,
        }
    }

    /// Alive and ready from the start (the exporter has nothing to wait for).
    pub fn always_ready() -> Self {
        let h = Self::new("");
        h.set_ready();
        h
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The agent's main loop ended or broke: `/livez` fails so the kubelet restarts it.
    pub fn set_dead(&self) {
        self.alive.store(false, Ordering::Release);
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The routes, for [`serve`] and for tests.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(app): State<AppState>) -> Response {
    // Collecting reads sysfs and procfs: keep it off the executor threads.
    match tokio::task::spawn_blocking(move || app.metrics.render()).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("collecting metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

async fn livez(State(app): State<AppState>) -> Response {
    if app.health.is_alive() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent's main loop has stopped\n",
        )
            .into_response()
    }
}

async fn readyz(State(app): State<AppState>) -> Response {
    if app.health.is_ready() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", app.health.not_ready_reason),
        )
            .into_response()
    }
}

/// Binds `addr` (port 0 picks a free one) and returns the bound address with
/// the server future, which ends when `shutdown` completes.
pub async fn bind(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(
    SocketAddr,
    impl Future<Output = std::io::Result<()>> + Send + 'static,
)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(metrics, health);
    let server = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    };
    Ok((local, server))
}

/// A header value from text, with an error that says what was wrong.
pub fn header_value(text: &str) -> Result<axum::http::HeaderValue, String> {
    axum::http::HeaderValue::from_str(text).map_err(|e| format!("bad header value {text:?}: {e}"))
}
