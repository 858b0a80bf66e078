//! graft-operator: rolls Graft's LivePatches out across a Kubernetes fleet.
//!
//! The heart is pure and exhaustively tested: [`select`] decides which nodes
//! a LivePatch targets and [`plan`] computes the whole desired world (every
//! LivePatchNode spec, every LivePatch status, cordons, finalizers, Events)
//! as differences from what is there. The rest is the runtime around it:
//! [`watch`] keeps stores of LivePatches, LivePatchNodes and Nodes,
//! [`controller`] runs the debounced reconcile loop, [`apply`] writes a plan
//! (server-side apply with field manager `graft-operator`), [`leader`] elects
//! the one replica that writes, [`http`] serves `/livez`, `/readyz` and
//! `/metrics` ([`metrics`]).
#![warn(missing_docs)]

pub mod apply;
pub mod cli;
pub mod controller;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod select;
pub mod watch;

pub use error::Error;
