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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn get(health: &Arc<Health>, path: &str) -> (StatusCode, String) {
        let response = router(health.clone())
            .oneshot(
                axum::http::Request::builder()
                    .uri(path)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_waits_for_every_watch_and_livez_for_a_turning_loop() {
        let readiness = Arc::new(Readiness::default());
        let health = Arc::new(Health::new(readiness.clone(), Arc::new(Metrics::new())));
        let (status, body) = get(&health, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("LivePatch, LivePatchNode, Node"), "{body}");
        readiness.mark_all_ready_for_tests();
        assert_eq!(get(&health, "/readyz").await.0, StatusCode::OK);

        assert_eq!(get(&health, "/livez").await.0, StatusCode::OK);
        health.last_turn.store(
            unix_seconds() - LIVENESS_WINDOW.as_secs() - 5,
            Ordering::Release,
        );
        let (status, body) = get(&health, "/livez").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("has not turned"), "{body}");
        health.turned();
        assert_eq!(get(&health, "/livez").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_served_as_prometheus_text() {
        let health = Arc::new(Health::new(
            Arc::new(Readiness::default()),
            Arc::new(Metrics::new()),
        ));
        health.metrics.set_leader(true);
        let response = router(health.clone())
            .oneshot(
                axum::http::Request::builder()
                    .uri("/metrics")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let (_, body) = get(&health, "/metrics").await;
        assert!(body.contains("graft_operator_leader 1"), "{body}");
        assert_eq!(get(&health, "/nope").await.0, StatusCode::NOT_FOUND);
    }
}
