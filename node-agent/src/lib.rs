//! Graft's node agent: the kernel side of live patching on one node.
//!
//! [`kernel`] is the interface to the kernel (real or simulated), [`module_file`]
//! inspects `.ko` files before the kernel sees them, [`patching`] runs the
//! livepatch lifecycle (apply, follow the transition, stall policy, revert),
//! [`tasks`] and [`pods`] name what blocks a transition, and [`cli`] is the
//! host command. [`cluster`] is the DaemonSet mode (`graft-agent run`),
//! [`metrics`] and [`http`] serve Prometheus metrics and probes, and
//! [`exporter`] serves the kernel metrics without Kubernetes.

pub mod cli;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod error;
#[cfg(feature = "cluster")]
pub mod exporter;
#[cfg(feature = "cluster")]
pub mod http;
pub mod journal;
pub mod kernel;
#[cfg(feature = "cluster")]
pub mod metrics;
pub mod module_file;
pub mod module_memfd;
pub mod patching;
pub mod pods;
mod render;
pub mod tasks;
pub mod transition;
