//! Command-line flags of `graft-operator`.

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};

use crate::{
    controller::{RunConfig, Timing},
    error::Error,
    leader::LeaseConfig,
};

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// graft-operator: rolls Graft LivePatches out across the cluster.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "graft-operator",
    version,
    about = "Rolls Graft LivePatches (graft.dev/v1alpha1) out across a Kubernetes cluster",
    long_about = "Rolls Graft LivePatches (graft.dev/v1alpha1) out across a Kubernetes cluster.\n\n\
        Watches LivePatches, LivePatchNodes and Nodes; keeps one LivePatchNode per Linux node \
        (owned by its Node) whose spec says which patches its graft-agent should load; paces \
        each rollout (maxParallel, maxFailures, paused; zone then name, the operator's own node \
        last); cordons nodes whose transition stalls (annotation graft.dev/cordoned-by) and \
        uncordons them on recovery; reverts everywhere before a LivePatch is deleted; writes \
        LivePatch status, Events and Prometheus metrics.\n\n\
        Connects with KUBECONFIG or the in-cluster service account. Every write uses the field \
        manager graft-operator.",
    after_help = "Environment:\n  \
        NODE_NAME      the node this operator runs on (rolled out last); same as --node-name\n  \
        POD_NAME       this replica's identity in the Lease and in Events; same as --lease-identity\n  \
        POD_NAMESPACE  namespace of the Lease; same as --lease-namespace\n  \
        KUBECONFIG     Kubernetes client configuration (else in-cluster)\n  \
        RUST_LOG       log filter (default info), e.g. graft_operator=debug\n\n\
        Signals: SIGTERM or SIGINT finish the current pass, release the Lease and exit 0."
)]
pub struct Args {
    /// Address of the HTTP server for /metrics (Prometheus text), /livez
    /// (the process runs and its reconcile loop is not wedged) and /readyz
    /// (every watch has its first data).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9441")]
    pub listen: SocketAddr,

    /// Elect a leader over a coordination.k8s.io Lease, so that several
    /// replicas are safe: all of them watch and plan, only the Lease holder
    /// writes. Without it this replica always writes: run only one.
    #[arg(long)]
    pub leader_election: bool,

    /// Namespace of the leader Lease (default: POD_NAMESPACE, else the
    /// client's default namespace).
    #[arg(long, value_name = "NAMESPACE", env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Name of the leader Lease.
    #[arg(long, value_name = "NAME", default_value = "graft-operator")]
    pub lease_name: String,

    /// This replica's identity in the Lease and in Events (default: POD_NAME,
    /// else the host name).
    #[arg(long, value_name = "ID", env = "POD_NAME")]
    pub lease_identity: Option<String>,

    /// The node this operator runs on: it is patched last, after every other
    /// node of each rollout.
    #[arg(long, value_name = "NODE", env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Plan at least this often even when nothing changes (e.g. 60s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub resync_interval: std::time::Duration,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let duration = graft_crds::parse_duration(s).map_err(|e| e.to_string())?;
    if duration < std::time::Duration::from_secs(1) {
        return Err("must be at least 1s".to_owned());
    }
    Ok(duration)
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

impl Args {
    /// The run configuration; `default_namespace` is the client's (used for
    /// the Lease when neither --lease-namespace nor POD_NAMESPACE is set).
    pub fn run_config(&self, default_namespace: &str) -> Result<RunConfig, Error> {
        let identity = self
            .lease_identity
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(host_name);
        let lease = if self.leader_election {
            let identity = identity.clone().ok_or_else(|| {
                Error::Config(
                    "--leader-election needs an identity: set --lease-identity or POD_NAME".into(),
                )
            })?;
            Some(LeaseConfig {
                namespace: self
                    .lease_namespace
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| default_namespace.to_owned()),
                name: self.lease_name.clone(),
                identity,
            })
        } else {
            None
        };
        Ok(RunConfig {
            listen: self.listen,
            lease,
            operator_node: self.node_name.clone().filter(|s| !s.is_empty()),
            instance: identity,
            timing: Timing {
                resync: self.resync_interval,
                ..Timing::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_parse_with_the_contract_defaults() {
        let args = Args::try_parse_from(["graft-operator"]).unwrap();
        assert_eq!(args.listen, "0.0.0.0:9441".parse().unwrap());
        assert!(!args.leader_election);
        assert_eq!(args.lease_name, "graft-operator");
        assert_eq!(args.log_format, LogFormat::Text);
        let config = args.run_config("default").unwrap();
        assert!(config.lease.is_none());

        let args = Args::try_parse_from([
            "graft-operator",
            "--listen",
            "127.0.0.1:1234",
            "--leader-election",
            "--lease-namespace",
            "graft-system",
            "--lease-identity",
            "pod-1",
            "--node-name",
            "n1",
            "--log-format",
            "json",
            "--resync-interval",
            "5m",
        ])
        .unwrap();
        let config = args.run_config("default").unwrap();
        let lease = config.lease.unwrap();
        assert_eq!(
            (
                lease.namespace.as_str(),
                lease.name.as_str(),
                lease.identity.as_str()
            ),
            ("graft-system", "graft-operator", "pod-1")
        );
        assert_eq!(config.operator_node.as_deref(), Some("n1"));
        assert_eq!(config.timing.resync, std::time::Duration::from_secs(300));
        assert!(Args::try_parse_from(["graft-operator", "--resync-interval", "1ms"]).is_err());
    }

    #[test]
    fn help_documents_every_flag() {
        Args::command().debug_assert();
        let help = Args::command().render_long_help().to_string();
        for flag in [
            "--listen",
            "--leader-election",
            "--lease-namespace",
            "--lease-name",
            "--lease-identity",
            "--node-name",
            "--log-format",
            "--resync-interval",
            "NODE_NAME",
            "POD_NAME",
            "POD_NAMESPACE",
            "KUBECONFIG",
            "9441",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
        }
    }
}
