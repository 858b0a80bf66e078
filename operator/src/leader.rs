//! Leader election over a `coordination.k8s.io/v1` Lease: every replica
//! watches and plans, only the holder writes.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use crate::error::Error;

/// How long a Lease is valid after its last renewal, in seconds: a replica
/// that dies is replaced within this time.
pub const LEASE_DURATION_SECONDS: u64 = 15;

/// How long before expiry the holder renews, in seconds.
pub const LEASE_GRACE_SECONDS: u64 = 5;

/// Where and as whom to elect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
}

/// Whether this replica may write, as it changes.
#[derive(Debug)]
pub struct Leadership {
    /// True while this replica holds the Lease (always true without election).
    pub is_leader: watch::Receiver<bool>,
    task: Option<JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>>,
    _always: Option<watch::Sender<bool>>,
}

impl Leadership {
    /// No election: this replica always writes.
    pub fn always() -> Self {
        let (sender, receiver) = watch::channel(true);
        Self {
            is_leader: receiver,
            task: None,
            _always: Some(sender),
        }
    }

    /// Takes part in the election on the Lease (created when missing). Its
    /// field manager is `graft-operator-<identity>`: the Lease's server-side
    /// apply locking needs one manager per replica.
    pub async fn elect(client: Client, config: &LeaseConfig) -> Result<Self, Error> {
        let lease = format!("{}/{}", config.namespace, config.name);
        let manager = LeaseManagerBuilder::new(client, &config.name)
            .with_namespace(&config.namespace)
            .with_identity(&config.identity)
            .with_field_manager(format!(
                "{}-{}",
                graft_crds::OPERATOR_FIELD_MANAGER,
                config.identity
            ))
            .with_duration(LEASE_DURATION_SECONDS)
            .with_grace(LEASE_GRACE_SECONDS)
            .build()
            .await
            .map_err(|source| Error::LeaderElection {
                lease: lease.clone(),
                source,
            })?;
        info!(%lease, identity = %config.identity, "taking part in leader election");
        let (is_leader, task) = manager.watch().await;
        Ok(Self {
            is_leader,
            task: Some(task),
            _always: None,
        })
    }

    /// Gives the Lease up (if held), waiting at most `timeout`.
    pub async fn release(self, timeout: Duration) {
        let Self {
            is_leader, task, ..
        } = self;
        drop(is_leader);
        if let Some(task) = task {
            match tokio::time::timeout(timeout, task).await {
                Ok(Ok(Ok(_))) => info!("leader Lease released"),
                Ok(Ok(Err(error))) => warn!(%error, "releasing the leader Lease failed"),
                Ok(Err(error)) => warn!(%error, "leader election task failed"),
                Err(_) => warn!("releasing the leader Lease timed out"),
            }
        }
    }
}
