//! Graft's node agent: the kernel side of live patching on one node.
//!
//! [`kernel`] is the interface to the kernel (real or simulated), [`module_file`]
//! inspects `.ko` files before the kernel sees them, [`patching`] runs the
//! livepatch lifecycle (apply, follow the transition, stall policy, revert),
//! [`tasks`] and [`pods`] name what blocks a transition, and [`cli`] is the
//! host command.

pub mod cli;
pub mod error;
pub mod journal;
pub mod kernel;
pub mod module_file;
pub mod patching;
pub mod pods;
mod render;
pub mod tasks;
pub mod transition;
