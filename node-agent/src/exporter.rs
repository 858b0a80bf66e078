//! `graft-agent exporter`: the agent's kernel metrics without Kubernetes, for
//! hosts managed by Ansible (or anything else) and for Prometheus tests.
//! Metrics are collected when scraped; nothing runs in between.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::error::exit_code;
use crate::http::{self, Health};
use crate::journal::StateDir;
use crate::kernel::{self, Kernel};
use crate::metrics::{self, Metrics};

/// Flags of `graft-agent exporter`.
#[derive(Debug, Args)]
pub struct ExporterArgs {
    /// Address to serve `/metrics`, `/livez` and `/readyz` on (port 0 picks a free port).
    #[arg(long, default_value = "0.0.0.0:9440")]
    pub listen: SocketAddr,

    /// The `node` label of every metric [default: this host's name].
    #[arg(long)]
    pub node_name: Option<String>,
}

/// Runs `graft-agent exporter`; returns the process exit code.
pub fn run_command(kernel_spec: &str, state_dir: Option<PathBuf>, args: ExporterArgs) -> i32 {
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
    let node = args.node_name.unwrap_or_else(metrics::hostname);
    let simulated = kernel.kind().is_simulated();
    let metrics = match Metrics::new(&node, kernel, state) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            eprintln!("error: cannot set up metrics: {e}");
            return exit_code::KERNEL_REFUSED;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit_code::KERNEL_REFUSED;
        }
    };
    runtime.block_on(async move {
        let health = Arc::new(Health::always_ready());
        let (addr, server) = match http::bind(
            args.listen,
            metrics,
            health,
            crate::cluster::wait_for_signal(),
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot listen on {}: {e}", args.listen);
                return exit_code::BAD_INPUT;
            }
        };
        // On stdout, so scripts (and tests binding port 0) learn the address.
        println!(
            "graft-agent exporter: serving metrics of node {node}{} on http://{addr}/metrics",
            if simulated { " (SIMULATED kernel)" } else { "" }
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        match server.await {
            Ok(()) => exit_code::OK,
            Err(e) => {
                eprintln!("error: the HTTP server failed: {e}");
                exit_code::KERNEL_REFUSED
            }
        }
    })
}
