//! `graft-agent run`: the agent as a DaemonSet.
//!
//! It watches only this node's LivePatchNode (field selector on its name),
//! fetches each module the spec asks for, verifies its sha256 before anything
//! else, drives the same [`crate::patching::Patcher`] as the host command, and
//! reports the status by server-side apply as field manager `graft-agent`.
//! See `.work/cluster-contract.md` for the flags, ports and metric names it
//! shares with the operator, the chart and the alerts.

pub mod agent;
pub mod fetch;
pub mod plan;
pub mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

pub use agent::{Agent, AgentConfig, ClusterError};

use crate::error::exit_code;
use crate::http::{self, Health};
use crate::journal::StateDir;
use crate::kernel::{self, Kernel};
use crate::metrics::{AGENT_VERSION, Metrics};

/// Flags of `graft-agent run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// This node's name (give it from the downward API, `spec.nodeName`): the
    /// agent watches the LivePatchNode of that name and only it.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// Graft's own namespace, where module ConfigMaps live.
    #[arg(long, env = "POD_NAMESPACE", default_value = "graft-system")]
    pub namespace: String,

    /// Address of the HTTP server (`/metrics`, `/livez`, `/readyz`).
    #[arg(long, default_value = "0.0.0.0:9440")]
    pub listen: SocketAddr,

    /// Where the host's filesystem is mounted in the agent's container;
    /// `hostPath` module sources are read under it.
    #[arg(long, default_value = "/")]
    pub host_root: PathBuf,

    /// Give up a module download (url sources) after this long.
    #[arg(long, default_value = "60s", value_parser = crate::cli::parse_duration)]
    pub fetch_timeout: Duration,

    /// Least time between two status writes that only report progress
    /// (state changes are written at once).
    #[arg(long, default_value = "5s", value_parser = crate::cli::parse_duration)]
    pub progress_interval: Duration,
}

/// Runs `graft-agent run`; returns the process exit code.
pub fn run_command(kernel_spec: &str, state_dir: Option<PathBuf>, args: RunArgs) -> i32 {
    let kernel: Arc<dyn Kernel> = match kernel::open(kernel_spec) {
        Ok(k) => Arc::from(k),
        Err(e) => {
            eprintln!("error: {e}");
            return exit_code::BAD_INPUT;
        }
    };
    let state = state_dir
        .map(StateDir::new)
        .unwrap_or_else(|| StateDir::default_for(&kernel.kind()));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit_code::KERNEL_REFUSED;
        }
    };
    let code = runtime.block_on(run_async(kernel, state, args));
    // An operation that did not detach in time stays with the kernel.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

async fn run_async(kernel: Arc<dyn Kernel>, state: StateDir, args: RunArgs) -> i32 {
    if let kernel::KernelKind::Simulated { dir } = kernel.kind() {
        tracing::warn!(dir = %dir.display(), "SIMULATED kernel: nothing on this node is really patched");
    }
    let client = match kube_client(&args.node_name).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "error: cannot configure the Kubernetes client (KUBECONFIG or the in-cluster service account): {e}"
            );
            return exit_code::BAD_INPUT;
        }
    };
    let metrics = match Metrics::new(&args.node_name, Arc::clone(&kernel), state.clone()) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            eprintln!("error: cannot set up metrics: {e}");
            return exit_code::KERNEL_REFUSED;
        }
    };
    let health = Arc::new(Health::new(
        "waiting for the first watch data of this node's LivePatchNode",
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (addr, server) = match http::bind(
        args.listen,
        Arc::clone(&metrics),
        Arc::clone(&health),
        stopped(stop_rx.clone()),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return exit_code::BAD_INPUT;
        }
    };
    tracing::info!(%addr, node = %args.node_name, "serving /metrics, /livez and /readyz");
    let server = tokio::spawn(server);
    let mut cfg = AgentConfig::new(&args.node_name);
    cfg.namespace = args.namespace;
    cfg.host_root = args.host_root;
    cfg.fetch.timeout = args.fetch_timeout;
    cfg.writer.progress_interval = args.progress_interval;
    let agent = Agent::new(cfg, client, kernel, state, metrics, Arc::clone(&health));
    let result = agent.run(stopped(stop_rx)).await;
    let code = match result {
        Ok(()) => exit_code::OK,
        Err(e) => {
            health.set_dead();
            tracing::error!("{e}");
            exit_code::KERNEL_REFUSED
        }
    };
    server.abort();
    code
}

/// A client from KUBECONFIG or the in-cluster config, with a User-Agent that
/// names the agent and its node (kube sends none by default).
async fn kube_client(node: &str) -> Result<kube::Client, String> {
    let mut config = kube::Config::infer().await.map_err(|e| e.to_string())?;
    let agent = format!("graft-agent/{AGENT_VERSION} (node {node})");
    let value = http::header_value(&agent)?;
    config.headers.push((::http::header::USER_AGENT, value));
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// SIGTERM (the kubelet stopping the pod) or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the agent");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("stop signal received");
}
