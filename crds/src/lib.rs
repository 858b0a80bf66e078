//! Graft API types: filled in by the cluster-mode work.
