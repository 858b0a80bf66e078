//! The operator's errors. Each has a bounded [`Error::category`], used as the
//! `category` label of `graft_reconcile_errors_total` and as the reason of
//! the Warning Event that reports it.

use std::{net::SocketAddr, time::Duration};

/// Something the operator could not do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the Kubernetes API failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was attempted, naming the object (e.g. `cordon node n1`).
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },

    /// A step took longer than allowed.
    #[error("{what}: no answer within {after:?}")]
    Timeout {
        /// What was attempted.
        what: String,
        /// The limit.
        after: Duration,
    },

    /// An object from the API does not deserialize into its type; it is
    /// ignored (its last good version is kept) and the watch goes on.
    #[error("{kind} {name:?} is malformed and is ignored until it is fixed: {message}")]
    MalformedObject {
        /// Its kind.
        kind: &'static str,
        /// Its name.
        name: String,
        /// What does not fit.
        message: String,
    },

    /// A watch failed (it is retried with backoff).
    #[error("watch of {kind} objects failed (retrying with backoff): {source}")]
    Watch {
        /// The kind watched.
        kind: &'static str,
        /// The watcher's error.
        #[source]
        source: kube::runtime::watcher::Error,
    },

    /// Leader election over the Lease failed.
    #[error("leader election on Lease {lease}: {source}")]
    LeaderElection {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The lease manager's error.
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },

    /// The admin HTTP server could not run.
    #[error("admin server on {addr}: {source}")]
    Serve {
        /// The listen address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The configuration is not usable.
    #[error("configuration: {0}")]
    Config(String),
}

/// Every value [`Error::category`] can return.
pub const CATEGORIES: [&str; 14] = [
    "Conflict",
    "Forbidden",
    "NotFound",
    "Invalid",
    "Throttled",
    "ApiUnavailable",
    "ApiError",
    "ApiUnreachable",
    "Timeout",
    "MalformedObject",
    "WatchFailed",
    "LeaderElection",
    "AdminServer",
    "Config",
];

impl Error {
    /// Builds [`Error::Kube`].
    pub fn kube(what: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            what: what.into(),
            source,
        }
    }

    /// A short CamelCase word for the kind of failure, from a fixed set
    /// ([`CATEGORIES`]): the metric label and the Event reason.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube { source, .. } => match source {
                kube::Error::Api(status) => match status.code {
                    409 => "Conflict",
                    401 | 403 => "Forbidden",
                    404 | 410 => "NotFound",
                    400 | 422 => "Invalid",
                    429 => "Throttled",
                    500..=599 => "ApiUnavailable",
                    _ => "ApiError",
                },
                _ => "ApiUnreachable",
            },
            Self::Timeout { .. } => "Timeout",
            Self::MalformedObject { .. } => "MalformedObject",
            Self::Watch { .. } => "WatchFailed",
            Self::LeaderElection { .. } => "LeaderElection",
            Self::Serve { .. } => "AdminServer",
            Self::Config(_) => "Config",
        }
    }

    /// Whether the API answered 409 Conflict (a precondition or a concurrent
    /// write): re-plan on fresh data, soon.
    pub fn is_conflict(&self) -> bool {
        self.category() == "Conflict"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16) -> Error {
        Error::kube(
            "apply LivePatchNode n1",
            kube::Error::Api(Box::new(Status {
                code,
                message: "nope".into(),
                ..Status::default()
            })),
        )
    }

    #[test]
    fn categories_are_bounded_and_camel_case() {
        let errors = [
            api(409),
            api(403),
            api(404),
            api(422),
            api(429),
            api(503),
            api(418),
            Error::Timeout {
                what: "x".into(),
                after: Duration::from_secs(1),
            },
            Error::MalformedObject {
                kind: "LivePatch",
                name: "x".into(),
                message: "y".into(),
            },
            Error::Config("x".into()),
        ];
        for error in &errors {
            let category = error.category();
            assert!(CATEGORIES.contains(&category), "{category}");
            assert!(category.chars().next().unwrap().is_ascii_uppercase());
            assert!(category.chars().all(|c| c.is_ascii_alphanumeric()));
        }
        assert!(api(409).is_conflict());
        assert!(!api(422).is_conflict());
        assert_eq!(api(403).category(), "Forbidden");
        assert!(api(403).to_string().starts_with("apply LivePatchNode n1: "));
    }
}
