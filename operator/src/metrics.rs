//! The operator's Prometheus metrics, with the names of the cluster contract:
//! `graft_nodes{patch,state}`, `graft_nodes_cordoned{patch}`,
//! `graft_rollout_halted{patch}`, `graft_rollout_paused{patch}`,
//! `graft_reconcile_duration_seconds`, `graft_reconcile_errors_total{category}`
//! and `graft_operator_leader`.
//!
//! The per-LivePatch gauges are exported by the leader only (the replica whose
//! plan is carried out), so alerts see one series per patch.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
    time::Duration,
};

use graft_crds::PatchState;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::{
    error::{CATEGORIES, Error},
    plan::PatchSummary,
};

/// Buckets of `graft_reconcile_duration_seconds`: a pass plans in
/// milliseconds and may write for seconds on a large fleet.
const DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The registry and every metric in it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    nodes: IntGaugeVec,
    nodes_cordoned: IntGaugeVec,
    rollout_halted: IntGaugeVec,
    rollout_paused: IntGaugeVec,
    reconcile_duration: Histogram,
    reconcile_errors: IntCounterVec,
    leader: IntGauge,
    exported: Mutex<BTreeSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric. Error counters start at 0 for every category.
    pub fn new() -> Self {
        let registry = Registry::new();
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let gauge = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(gauge.clone()))
                .expect("unique metric");
            gauge
        };
        let nodes = gauge_vec(
            "graft_nodes",
            "Nodes per LivePatch and patch state (targeted nodes, plus NotApplicable ones)",
            &["patch", "state"],
        );
        let nodes_cordoned = gauge_vec(
            "graft_nodes_cordoned",
            "Nodes currently cordoned by Graft because of this LivePatch",
            &["patch"],
        );
        let rollout_halted = gauge_vec(
            "graft_rollout_halted",
            "1 when the LivePatch's failure budget is exceeded and its rollout halted",
            &["patch"],
        );
        let rollout_paused = gauge_vec(
            "graft_rollout_paused",
            "1 when the LivePatch's spec.rollout.paused is true",
            &["patch"],
        );
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "graft_reconcile_duration_seconds",
                "Duration of one reconcile pass: plan the whole fleet and write the differences",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        registry
            .register(Box::new(reconcile_duration.clone()))
            .expect("unique metric");
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "graft_reconcile_errors_total",
                "Errors while reconciling, by category",
            ),
            &["category"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(reconcile_errors.clone()))
            .expect("unique metric");
        for category in CATEGORIES {
            reconcile_errors.with_label_values(&[category]);
        }
        let leader = IntGauge::new(
            "graft_operator_leader",
            "1 on the operator replica that holds the leader Lease (and writes)",
        )
        .expect("valid metric");
        registry
            .register(Box::new(leader.clone()))
            .expect("unique metric");
        Self {
            registry,
            nodes,
            nodes_cordoned,
            rollout_halted,
            rollout_paused,
            reconcile_duration,
            reconcile_errors,
            leader,
            exported: Mutex::new(BTreeSet::new()),
        }
    }

    /// Sets the per-LivePatch gauges from a plan's summaries, and removes the
    /// series of LivePatches that are gone.
    pub fn observe_plan(&self, summaries: &BTreeMap<String, PatchSummary>) {
        let mut exported = self.exported.lock().unwrap_or_else(|e| e.into_inner());
        for gone in exported.iter().filter(|p| !summaries.contains_key(*p)) {
            self.remove_patch(gone);
        }
        for (patch, summary) in summaries {
            for state in PatchState::ALL {
                let count = summary.nodes.get(&state).copied().unwrap_or(0);
                self.nodes
                    .with_label_values(&[patch.as_str(), state.as_str()])
                    .set(i64::from(count));
            }
            self.nodes_cordoned
                .with_label_values(&[patch.as_str()])
                .set(i64::from(summary.cordoned));
            self.rollout_halted
                .with_label_values(&[patch.as_str()])
                .set(i64::from(summary.halted));
            self.rollout_paused
                .with_label_values(&[patch.as_str()])
                .set(i64::from(summary.paused));
        }
        *exported = summaries.keys().cloned().collect();
    }

    /// Removes every per-LivePatch series (a replica that is not the leader
    /// exports none).
    pub fn clear_plan(&self) {
        let mut exported = self.exported.lock().unwrap_or_else(|e| e.into_inner());
        for patch in exported.iter() {
            self.remove_patch(patch);
        }
        exported.clear();
    }

    fn remove_patch(&self, patch: &str) {
        for state in PatchState::ALL {
            let _ = self.nodes.remove_label_values(&[patch, state.as_str()]);
        }
        let _ = self.nodes_cordoned.remove_label_values(&[patch]);
        let _ = self.rollout_halted.remove_label_values(&[patch]);
        let _ = self.rollout_paused.remove_label_values(&[patch]);
    }

    /// Counts an error under its category.
    pub fn error(&self, error: &Error) {
        self.reconcile_errors
            .with_label_values(&[error.category()])
            .inc();
    }

    /// Records the duration of a reconcile pass.
    pub fn reconcile_duration(&self, duration: Duration) {
        self.reconcile_duration.observe(duration.as_secs_f64());
    }

    /// Sets `graft_operator_leader`.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into memory does not fail");
        String::from_utf8(buffer).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(applied: u32, cordoned: u32) -> PatchSummary {
        let mut nodes: BTreeMap<PatchState, u32> =
            PatchState::ALL.iter().map(|s| (*s, 0)).collect();
        nodes.insert(PatchState::Applied, applied);
        PatchSummary {
            nodes,
            cordoned,
            halted: true,
            paused: false,
        }
    }

    #[test]
    fn exports_the_contract_names_with_every_state() {
        let metrics = Metrics::new();
        metrics.set_leader(true);
        metrics.observe_plan(&BTreeMap::from([("fix".to_owned(), summary(3, 1))]));
        metrics.reconcile_duration(Duration::from_millis(20));
        let text = metrics.render();
        assert!(
            text.contains(r#"graft_nodes{patch="fix",state="Applied"} 3"#),
            "{text}"
        );
        for state in PatchState::ALL {
            assert!(
                text.contains(&format!(r#"graft_nodes{{patch="fix",state="{state}"}}"#)),
                "{state}"
            );
        }
        assert!(text.contains(r#"graft_nodes_cordoned{patch="fix"} 1"#));
        assert!(text.contains(r#"graft_rollout_halted{patch="fix"} 1"#));
        assert!(text.contains(r#"graft_rollout_paused{patch="fix"} 0"#));
        assert!(text.contains("graft_operator_leader 1"));
        assert!(text.contains("graft_reconcile_duration_seconds_bucket"));
        assert!(text.contains(r#"graft_reconcile_errors_total{category="Conflict"} 0"#));
    }

    #[test]
    fn series_of_gone_patches_are_removed() {
        let metrics = Metrics::new();
        metrics.observe_plan(&BTreeMap::from([
            ("a".to_owned(), summary(1, 0)),
            ("b".to_owned(), summary(1, 0)),
        ]));
        metrics.observe_plan(&BTreeMap::from([("b".to_owned(), summary(2, 0))]));
        let text = metrics.render();
        assert!(!text.contains(r#"patch="a""#), "{text}");
        assert!(text.contains(r#"graft_nodes{patch="b",state="Applied"} 2"#));
        metrics.clear_plan();
        assert!(!metrics.render().contains("patch="));
    }

    #[test]
    fn errors_are_counted_by_category() {
        let metrics = Metrics::new();
        metrics.error(&Error::Config("x".into()));
        assert!(
            metrics
                .render()
                .contains(r#"graft_reconcile_errors_total{category="Config"} 1"#)
        );
    }
}
