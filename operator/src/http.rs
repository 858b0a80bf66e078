//! The admin HTTP server: `/livez`, `/readyz` and `/metrics`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get,
};
use tokio::net::TcpListener;

use crate::{error::Error, metrics::Metrics, watch::Readiness};

/// How long the reconcile loop may go without completing a turn before
/// `/livez` fails. A turn happens at least every resync interval; writes are
/// bounded by their own timeout.
pub const LIVENESS_WINDOW: Duration = Duration::from_secs(300);

/// What the endpoints report on.
#[derive(Debug)]
pub struct Health {
    /// The watches' first data.
    pub readiness: Arc<Readiness>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    last_turn: AtomicU64,
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Health {
    /// A health record whose loop has just turned.
    pub fn new(readiness: Arc<Readiness>, metrics: Arc<Metrics>) -> Self {
        Self {
            readiness,
            metrics,
            last_turn: AtomicU64::new(unix_seconds()),
        }
    }

    /// The reconcile loop completed a turn.
    pub fn turned(&self) {
        self.last_turn.store(unix_seconds(), Ordering::Release);
    }

    /// Seconds since the loop's last turn.
    pub fn since_last_turn(&self) -> u64 {
        unix_seconds().saturating_sub(self.last_turn.load(Ordering::Acquire))
    }
}

/// The router (exposed for tests).
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn livez(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let since = health.since_last_turn();
    if since <= LIVENESS_WINDOW.as_secs() {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the reconcile loop has not turned for {since}s\n"),
        )
    }
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let missing = health.readiness.not_ready();
    if missing.is_empty() {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("waiting for the first list of: {}\n", missing.join(", ")),
        )
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        health.metrics.render(),
    )
}

/// Binds `addr` (fails at once when it cannot).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Serve { addr, source })
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    axum::serve(listener, router(health))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| Error::Serve { addr, source })
}
