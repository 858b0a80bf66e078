//! The runtime: watches, a debounced reconcile loop that plans the whole
//! fleet and writes only the differences (when this replica leads), the
//! admin server, and graceful shutdown.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::Client;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::{
    apply::{self, Context, Outcome, Written},
    error::Error,
    http::{self, Health},
    leader::{Leadership, LeaseConfig},
    metrics::Metrics,
    plan::{self, Memory},
    watch::{self as watches, Readiness, Stores},
};

/// Timing of the reconcile loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Quiet time after the last change before planning (changes that arrive
    /// together are planned together).
    pub debounce: Duration,
    /// Longest wait for quiet before planning anyway.
    pub max_debounce: Duration,
    /// Plan at least this often, even when nothing seems to change.
    pub resync: Duration,
    /// Longest wait for the watches to show this replica's own writes before
    /// the next plan (so a plan never acts twice on the same state).
    pub catch_up: Duration,
    /// Longest time one pass may spend writing.
    pub apply: Duration,
    /// First retry delay after a failed write (doubles up to `resync`).
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(200),
            max_debounce: Duration::from_secs(2),
            resync: Duration::from_secs(60),
            catch_up: Duration::from_secs(10),
            apply: Duration::from_secs(120),
            retry: Duration::from_secs(1),
        }
    }
}

/// Everything `run` needs besides the client.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Address of the admin server.
    pub listen: SocketAddr,
    /// Leader election, or `None` to always write (a single replica).
    pub lease: Option<LeaseConfig>,
    /// The node the operator runs on (rolled out last).
    pub operator_node: Option<String>,
    /// This replica's name in Events (the pod name).
    pub instance: Option<String>,
    /// Loop timing.
    pub timing: Timing,
}

/// A Kubernetes client from `KUBECONFIG` or the in-cluster configuration,
/// sending Graft's User-Agent (so writes are attributed to graft-operator).
pub async fn client() -> Result<Client, Error> {
    let mut config = kube::Config::infer().await.map_err(|e| {
        Error::Config(format!(
            "no Kubernetes configuration (KUBECONFIG or in-cluster): {e}"
        ))
    })?;
    config.headers.push((
        ::http::header::USER_AGENT,
        ::http::HeaderValue::from_static(concat!("graft-operator/", env!("CARGO_PKG_VERSION"))),
    ));
    Client::try_from(config)
        .map_err(|e| Error::Config(format!("building the Kubernetes client: {e}")))
}

fn now() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// Runs the operator until `shutdown` completes, then stops the loop after
/// its current pass, releases the Lease and stops the admin server.
pub async fn run(
    client: Client,
    config: RunConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::default());
    let health = Arc::new(Health::new(readiness.clone(), metrics.clone()));
    let wake = Arc::new(Notify::new());
    let listener = http::bind(config.listen).await?;
    info!(listen = %config.listen, "admin server: /livez /readyz /metrics");

    let leadership = match &config.lease {
        Some(lease) => Leadership::elect(client.clone(), lease).await?,
        None => Leadership::always(),
    };
    let (stores, watch_futures) =
        watches::watches(&client, readiness.clone(), metrics.clone(), wake.clone());
    let ctx = Arc::new(Context::new(
        client,
        metrics.clone(),
        config.instance.clone(),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut server = tokio::spawn(http::serve(listener, health.clone(), {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    }));
    let watch_task = tokio::spawn(futures::future::join_all(watch_futures));
    let loop_task = tokio::spawn(reconcile_loop(
        ctx,
        stores,
        health,
        wake,
        leadership.is_leader.clone(),
        config.operator_node.clone(),
        config.timing.clone(),
        stop_rx,
    ));

    let mut result = Ok(());
    tokio::select! {
        () = shutdown => info!("shutdown requested: finishing the current pass"),
        served = &mut server => {
            result = match served {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error),
                Err(join) => Err(Error::Config(format!("admin server task: {join}"))),
            };
        }
    }
    let _ = stop_tx.send(true);
    if tokio::time::timeout(config.timing.apply + Duration::from_secs(5), loop_task)
        .await
        .is_err()
    {
        warn!("the reconcile loop did not stop in time");
    }
    watch_task.abort();
    leadership.release(Duration::from_secs(5)).await;
    metrics.set_leader(false);
    if !server.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    info!("stopped");
    result
}

/// The reconcile loop: wait for a change (or the resync interval), let the
/// changes settle, plan, and — on the leader — write the differences, then
/// wait until the watches have seen those writes.
#[allow(clippy::too_many_arguments)]
pub async fn reconcile_loop(
    ctx: Arc<Context>,
    stores: Stores,
    health: Arc<Health>,
    wake: Arc<Notify>,
    mut leader: watch::Receiver<bool>,
    operator_node: Option<String>,
    timing: Timing,
    mut stop: watch::Receiver<bool>,
) {
    let mut memory = Memory::default();
    let mut retry: Option<Duration> = None;
    let mut leader_alive = true;
    let mut first = true;
    loop {
        let wait = if first {
            Duration::ZERO
        } else {
            retry.unwrap_or(timing.resync)
        };
        first = false;
        tokio::select! {
            () = wake.notified() => {}
            changed = leader.changed(), if leader_alive => {
                if changed.is_err() {
                    warn!("leader election stopped; this replica no longer writes");
                    leader_alive = false;
                }
            }
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        // Let a burst of changes settle.
        let deadline = Instant::now() + timing.max_debounce;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(timing.debounce.min(remaining)) => break,
            }
        }
        if *stop.borrow() {
            break;
        }
        health.turned();
        let is_leader = leader_alive && *leader.borrow();
        ctx.metrics.set_leader(is_leader);
        if !health.readiness.ready() {
            debug!(missing = ?health.readiness.not_ready(), "waiting for the watches' first data");
            continue;
        }
        let started = Instant::now();
        let world = stores.world(operator_node.clone());
        let plan = plan::plan(&world, &memory, &now());
        memory = plan.memory.clone();
        if !is_leader {
            ctx.metrics.clear_plan();
            ctx.metrics.reconcile_duration(started.elapsed());
            retry = None;
            continue;
        }
        ctx.metrics.observe_plan(&plan.summaries);
        if plan.is_quiet() {
            ctx.metrics.reconcile_duration(started.elapsed());
            retry = None;
            continue;
        }
        info!(
            node_specs = plan.node_specs.len(),
            statuses = plan.statuses.len(),
            cordons = plan.cordons.len(),
            finalizers = plan.finalizers.len(),
            events = plan.events.len(),
            "writing the differences"
        );
        let outcome =
            match tokio::time::timeout(timing.apply, apply::execute(&ctx, &world, &plan)).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    let error = Error::Timeout {
                        what: "write the plan".to_owned(),
                        after: timing.apply,
                    };
                    ctx.metrics.error(&error);
                    warn!(%error, "pass abandoned; the next pass re-plans");
                    Outcome {
                        written: Vec::new(),
                        errors: vec![error],
                    }
                }
            };
        wait_until_seen(&stores, &outcome.written, timing.catch_up).await;
        retry = next_retry(retry, &outcome.errors, &timing);
        ctx.metrics.reconcile_duration(started.elapsed());
        health.turned();
    }
    debug!("reconcile loop stopped");
}

/// The delay before the next pass after `errors`: none when all went well,
/// short after conflicts (re-plan on fresh data), else doubling.
pub fn next_retry(
    previous: Option<Duration>,
    errors: &[Error],
    timing: &Timing,
) -> Option<Duration> {
    if errors.is_empty() {
        None
    } else if errors.iter().all(Error::is_conflict) {
        Some(timing.debounce)
    } else {
        Some(
            previous
                .map_or(timing.retry, |d| d.saturating_mul(2))
                .clamp(timing.retry, timing.resync),
        )
    }
}

/// Waits until every write shows in the stores, or `limit` passes.
pub async fn wait_until_seen(stores: &Stores, written: &[Written], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let pending = written
            .iter()
            .filter(|w| !w.seen_in(stores.resource_version(w.kind, &w.name).as_deref()))
            .count();
        if pending == 0 {
            return;
        }
        if Instant::now() >= deadline {
            warn!(
                pending,
                "the watches did not show this replica's writes in time; planning anyway"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_short_after_conflicts_and_back_off_otherwise() {
        let timing = Timing::default();
        let conflict = || {
            Error::kube(
                "x",
                kube::Error::Api(Box::new(kube::core::Status {
                    code: 409,
                    ..kube::core::Status::default()
                })),
            )
        };
        let other = || Error::Config("x".into());
        assert_eq!(next_retry(None, &[], &timing), None);
        assert_eq!(
            next_retry(None, &[conflict()], &timing),
            Some(timing.debounce)
        );
        let first = next_retry(None, &[other()], &timing).unwrap();
        assert_eq!(first, timing.retry);
        let second = next_retry(Some(first), &[other(), conflict()], &timing).unwrap();
        assert_eq!(second, timing.retry * 2);
        assert_eq!(
            next_retry(Some(timing.resync), &[other()], &timing),
            Some(timing.resync)
        );
    }
}
