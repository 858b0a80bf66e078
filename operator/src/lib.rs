//! graft-operator: rolls Graft's LivePatches out across a Kubernetes fleet.
#![warn(missing_docs)]

pub mod plan;
pub mod select;
