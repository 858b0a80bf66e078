//! The agent's Prometheus metrics, with the names the cluster contract fixes.
//!
//! One [`prometheus::Registry`] per process, labelled with the node's name.
//! Two kinds of metrics live in it:
//!
//! - **Kernel truth, read at scrape time** (`graft_patch_state`,
//!   `graft_transition_in_progress`, `graft_transition_stalled`,
//!   `graft_transition_started_timestamp_seconds`,
//!   `graft_transition_blocking_tasks`, `graft_agent_info`): a collector reads
//!   sysfs and the agent's transition journal on every scrape, so the numbers
//!   are true even for a transition someone else started, and nothing runs
//!   between scrapes. In cluster mode the agent's own view of each LivePatch
//!   (Pending, Loading, Failed, NotApplicable...) fills in what the kernel
//!   cannot know, and the `patch` label is the LivePatch name; elsewhere it is
//!   the patch's sysfs (module) name.
//! - **Events the agent saw** (`graft_transition_duration_seconds`,
//!   `graft_module_load_failures_total`): updated from operation outcomes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::journal::StateDir;
use crate::kernel::{Kernel, Target};
use crate::patching::{self, NodeStatus, Patcher};

/// The agent's version, as `graft_agent_info{version}` and the LivePatchNode status report it.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Buckets of `graft_transition_duration_seconds`: transitions take from well
/// under a second to many minutes when a task holds them up.
pub const DURATION_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Reasons of `graft_module_load_failures_total` besides [`crate::error::LoadRefusal::as_str`].
pub mod load_failure {
    pub const SHA256_MISMATCH: &str = "sha256_mismatch";
    pub const FETCH_FAILED: &str = "fetch_failed";
    pub const WRONG_KERNEL_RELEASE: &str = "wrong_kernel_release";
    pub const NOT_A_LIVEPATCH: &str = "not_a_livepatch";
}

impl From<patching::PatchState> for graft_crds::PatchState {
    fn from(s: patching::PatchState) -> Self {
        use graft_crds::PatchState as Api;
        match s {
            patching::PatchState::Pending => Api::Pending,
            patching::PatchState::Loading => Api::Loading,
            patching::PatchState::Transitioning => Api::Transitioning,
            patching::PatchState::Applied => Api::Applied,
            patching::PatchState::Stalled => Api::Stalled,
            patching::PatchState::Reverting => Api::Reverting,
            patching::PatchState::Reverted => Api::Reverted,
            patching::PatchState::Failed => Api::Failed,
            patching::PatchState::NotApplicable => Api::NotApplicable,
        }
    }
}

/// What the cluster mode knows about one LivePatch on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPatch {
    /// The LivePatch name (the `patch` label in cluster mode).
    pub live_patch: String,
    /// The patch's sysfs name, once the module was inspected.
    pub sysfs_name: Option<String>,
    /// The state the agent reports in the LivePatchNode status.
    pub state: graft_crds::PatchState,
}

/// One `patch` label's values in a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchRow {
    pub patch: String,
    pub state: graft_crds::PatchState,
    pub in_progress: bool,
    pub stalled: bool,
    /// Unix time the transition started, when one runs and its start is known.
    pub started: Option<f64>,
    /// Tasks not yet switched to the transition's target.
    pub blocking_tasks: usize,
}

/// Combines what the kernel says with what the cluster mode knows. The kernel
/// wins while it has a transition running (whoever started it); otherwise the
/// agent's state stands, corrected where the kernel contradicts it (a patch
/// the agent applied that is no longer there reads Reverted).
pub fn patch_rows(
    status: &NodeStatus,
    started: &BTreeMap<String, f64>,
    cluster: &[ClusterPatch],
) -> Vec<PatchRow> {
    use graft_crds::PatchState as S;
    let mut rows: Vec<PatchRow> = Vec::new();
    let mut claimed: Vec<&str> = Vec::new();
    for c in cluster {
        let kernel = c
            .sysfs_name
            .as_deref()
            .and_then(|n| status.patches.iter().find(|p| p.name == n));
        if let Some(p) = kernel {
            claimed.push(&p.name);
        }
        let row = match kernel {
            Some(p) if p.transition => kernel_row(&c.live_patch, p, status, started),
            Some(p) => {
                let kernel_state: S = p.state.into();
                let state = match c.state {
                    // The agent's word for an enabled patch it did not (yet) report.
                    S::Transitioning | S::Stalled | S::Reverting | S::Reverted => kernel_state,
                    other => other,
                };
                PatchRow {
                    patch: c.live_patch.clone(),
                    state,
                    in_progress: false,
                    stalled: false,
                    started: None,
                    blocking_tasks: 0,
                }
            }
            None => PatchRow {
                patch: c.live_patch.clone(),
                state: match c.state {
                    S::Applied | S::Transitioning | S::Stalled | S::Reverting => S::Reverted,
                    other => other,
                },
                in_progress: false,
                stalled: false,
                started: None,
                blocking_tasks: 0,
            },
        };
        rows.push(row);
    }
    for p in &status.patches {
        if !claimed.contains(&p.name.as_str()) {
            rows.push(kernel_row(&p.name, p, status, started));
        }
    }
    rows
}

fn kernel_row(
    label: &str,
    p: &patching::PatchStatus,
    status: &NodeStatus,
    started: &BTreeMap<String, f64>,
) -> PatchRow {
    let active = status
        .transition
        .as_ref()
        .filter(|t| t.patch == p.name && p.transition);
    PatchRow {
        patch: label.to_string(),
        state: p.state.into(),
        in_progress: p.transition,
        stalled: p.state == patching::PatchState::Stalled,
        started: active.and_then(|_| started.get(&p.name).copied()),
        blocking_tasks: active.map_or(0, |t| t.tasks_total.saturating_sub(t.tasks_switched)),
    }
}

/// Reads the kernel on every scrape.
struct KernelCollector {
    kernel: Arc<dyn Kernel>,
    state: StateDir,
    cluster: Arc<Mutex<Vec<ClusterPatch>>>,
    patch_state: GaugeVec,
    in_progress: GaugeVec,
    stalled: GaugeVec,
    started: GaugeVec,
    blocking: GaugeVec,
    info: GaugeVec,
    /// Scrapes may overlap; each one resets and refills the vectors.
    scrape: Mutex<()>,
}

impl KernelCollector {
    fn new(
        kernel: Arc<dyn Kernel>,
        state: StateDir,
        cluster: Arc<Mutex<Vec<ClusterPatch>>>,
    ) -> prometheus::Result<Self> {
        let gauge =
            |name: &str, help: &str, labels: &[&str]| GaugeVec::new(Opts::new(name, help), labels);
        Ok(Self {
            kernel,
            state,
            cluster,
            patch_state: gauge(
                "graft_patch_state",
                "1 for the state each livepatch is in on this node, 0 for the other states",
                &["patch", "state"],
            )?,
            in_progress: gauge(
                "graft_transition_in_progress",
                "1 while the patch's transition is running",
                &["patch"],
            )?,
            stalled: gauge(
                "graft_transition_stalled",
                "1 while the patch's transition has been running longer than its stallAfter",
                &["patch"],
            )?,
            started: gauge(
                "graft_transition_started_timestamp_seconds",
                "Unix time the running transition started (only while one runs and its start is known)",
                &["patch"],
            )?,
            blocking: gauge(
                "graft_transition_blocking_tasks",
                "Tasks that have not yet switched to the running transition's target (0 when none)",
                &["patch"],
            )?,
            info: gauge(
                "graft_agent_info",
                "Always 1: the graft-agent version, the running kernel and whether it is Graft's simulated kernel",
                &["version", "kernel_release", "simulated"],
            )?,
            scrape: Mutex::new(()),
        })
    }

    fn vectors(&self) -> [&GaugeVec; 6] {
        [
            &self.patch_state,
            &self.in_progress,
            &self.stalled,
            &self.started,
            &self.blocking,
            &self.info,
        ]
    }

    fn refresh(&self) {
        for v in self.vectors() {
            v.reset();
        }
        let release = self.kernel.release().unwrap_or_default();
        let simulated = self.kernel.kind().is_simulated();
        self.info
            .with_label_values(&[AGENT_VERSION, release.as_str(), bool_str(simulated)])
            .set(1.0);
        let patcher = Patcher::new(self.kernel.as_ref(), self.state.clone());
        let status = match patcher.status(None) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read the kernel's livepatch state");
                return;
            }
        };
        let boot_id = self.kernel.boot_id().unwrap_or_default();
        let started: BTreeMap<String, f64> = status
            .patches
            .iter()
            .filter(|p| p.transition)
            .filter_map(|p| {
                let record = self.state.load(&p.name, &boot_id)?;
                (record.target == Target::from_enabled(p.enabled))
                    .then(|| (p.name.clone(), record.started_unix_ms as f64 / 1000.0))
            })
            .collect();
        let cluster = self.cluster.lock().map(|c| c.clone()).unwrap_or_default();
        for row in patch_rows(&status, &started, &cluster) {
            let patch = row.patch.as_str();
            for state in graft_crds::PatchState::ALL {
                self.patch_state
                    .with_label_values(&[patch, state.as_str()])
                    .set(if state == row.state { 1.0 } else { 0.0 });
            }
            self.in_progress
                .with_label_values(&[patch])
                .set(f64::from(u8::from(row.in_progress)));
            self.stalled
                .with_label_values(&[patch])
                .set(f64::from(u8::from(row.stalled)));
            self.blocking
                .with_label_values(&[patch])
                .set(row.blocking_tasks as f64);
            if let Some(t) = row.started {
                self.started.with_label_values(&[patch]).set(t);
            }
        }
    }
}

fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

impl Collector for KernelCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.vectors().into_iter().flat_map(|v| v.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh();
        self.vectors()
            .into_iter()
            .flat_map(|v| v.collect())
            .collect()
    }
}

/// The agent's metrics: one registry, labelled `node`.
pub struct Metrics {
    registry: Registry,
    transition_duration: HistogramVec,
    load_failures: IntCounterVec,
    cluster: Arc<Mutex<Vec<ClusterPatch>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry whose every sample carries `node="<node>"`, with the kernel
    /// collector reading `kernel` and the journal in `state`.
    pub fn new(node: &str, kernel: Arc<dyn Kernel>, state: StateDir) -> prometheus::Result<Self> {
        let registry = Registry::new_custom(
            None,
            Some(std::collections::HashMap::from([(
                "node".to_string(),
                node.to_string(),
            )])),
        )?;
        let cluster = Arc::new(Mutex::new(Vec::new()));
        registry.register(Box::new(KernelCollector::new(
            kernel,
            state,
            Arc::clone(&cluster),
        )?))?;
        let transition_duration = HistogramVec::new(
            HistogramOpts::new(
                "graft_transition_duration_seconds",
                "How long completed transitions this agent followed took, by target (patched or unpatched)",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["target"],
        )?;
        registry.register(Box::new(transition_duration.clone()))?;
        let load_failures = IntCounterVec::new(
            Opts::new(
                "graft_module_load_failures_total",
                "Modules this agent could not load, by patch and reason (a bounded set)",
            ),
            &["patch", "reason"],
        )?;
        registry.register(Box::new(load_failures.clone()))?;
        Ok(Self {
            registry,
            transition_duration,
            load_failures,
            cluster,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records a completed transition.
    pub fn observe_transition(&self, target: Target, seconds: f64) {
        self.transition_duration
            .with_label_values(&[target.as_str()])
            .observe(seconds);
    }

    /// Counts a module that could not be loaded; `reason` is one of the bounded
    /// reasons in the contract ([`load_failure`], [`crate::error::LoadRefusal::as_str`]).
    pub fn count_load_failure(&self, patch: &str, reason: &str) {
        self.load_failures.with_label_values(&[patch, reason]).inc();
    }

    /// What the cluster mode currently reports per LivePatch.
    pub fn set_cluster_patches(&self, patches: Vec<ClusterPatch>) {
        if let Ok(mut c) = self.cluster.lock() {
            *c = patches;
        }
    }

    /// The Prometheus text exposition of every metric. Reads the kernel: call
    /// it off the async executor.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %e, "metrics: encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The host's name, for the `node` label when none is given (exporter mode).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::sim::{SimInit, SimKernel, SimModuleSpec};
    use crate::module_file::{self, SIM_SECTION};
    use crate::patching::{ApplyOptions, Quiet, StallPolicy};
    use std::time::Duration;

    fn sim() -> (tempfile::TempDir, Arc<dyn Kernel>, StateDir) {
        let dir = tempfile::tempdir().unwrap();
        let kernel = SimKernel::init(
            dir.path(),
            &SimInit {
                tasks: 8,
                ..SimInit::default()
            },
        )
        .unwrap();
        let state = StateDir::new(dir.path().join("agent-state"));
        (dir, Arc::new(kernel), state)
    }

    fn module(name: &str, function: &str, ms: u64) -> Vec<u8> {
        let spec = SimModuleSpec {
            objects: [("vmlinux".to_string(), vec![function.to_string()])].into(),
            replace: false,
            transition_ms: Some(ms),
        };
        let modinfo = format!(
            "livepatch=Y\0name={name}\0vermagic=6.1.0-sim-amd64 SMP\0srcversion=ABC\0license=GPL\0"
        );
        module_file::write_module_elf(&[
            (".modinfo", modinfo.as_bytes()),
            (SIM_SECTION, &serde_json::to_vec(&spec).unwrap()),
        ])
    }

    fn line_value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .find(|l| labels.iter().all(|lab| l.contains(lab)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn scrape_names_every_contract_metric_with_node_and_patch_labels() {
        let (_dir, kernel, state) = sim();
        let metrics = Metrics::new("node-a", Arc::clone(&kernel), state.clone()).unwrap();
        let bytes = module("graft_demo", "cmdline_proc_show", 10);
        let info = module_file::inspect_bytes(std::path::Path::new("demo.ko"), &bytes).unwrap();
        let out = Patcher::new(kernel.as_ref(), state)
            .apply_bytes(&bytes, &info, &ApplyOptions::default(), &mut Quiet)
            .unwrap();
        assert_eq!(out.state, patching::PatchState::Applied);
        metrics.observe_transition(Target::Patched, 0.5);
        metrics.count_load_failure("other-patch", load_failure::SHA256_MISMATCH);

        let text = metrics.render();
        for help in [
            "# HELP graft_patch_state ",
            "# TYPE graft_patch_state gauge",
            "# TYPE graft_transition_in_progress gauge",
            "# TYPE graft_transition_stalled gauge",
            "# TYPE graft_transition_blocking_tasks gauge",
            "# TYPE graft_transition_duration_seconds histogram",
            "# TYPE graft_module_load_failures_total counter",
            "# TYPE graft_agent_info gauge",
        ] {
            assert!(text.contains(help), "{help} missing from\n{text}");
        }
        let patch = r#"patch="graft_demo""#;
        let node = r#"node="node-a""#;
        assert_eq!(
            line_value(
                &text,
                "graft_patch_state",
                &[patch, r#"state="Applied""#, node]
            ),
            Some(1.0)
        );
        assert_eq!(
            line_value(
                &text,
                "graft_patch_state",
                &[patch, r#"state="Failed""#, node]
            ),
            Some(0.0)
        );
        assert_eq!(
            text.matches("graft_patch_state{").count(),
            graft_crds::PatchState::ALL.len(),
            "one sample per state"
        );
        assert_eq!(
            line_value(&text, "graft_transition_in_progress", &[patch, node]),
            Some(0.0)
        );
        assert_eq!(
            line_value(&text, "graft_transition_stalled", &[patch, node]),
            Some(0.0)
        );
        assert_eq!(
            line_value(&text, "graft_transition_blocking_tasks", &[patch, node]),
            Some(0.0)
        );
        assert!(!text.contains("graft_transition_started_timestamp_seconds{"));
        assert_eq!(
            line_value(
                &text,
                "graft_transition_duration_seconds_count",
                &[r#"target="patched""#, node]
            ),
            Some(1.0)
        );
        assert_eq!(
            line_value(
                &text,
                "graft_module_load_failures_total",
                &[
                    r#"patch="other-patch""#,
                    r#"reason="sha256_mismatch""#,
                    node
                ]
            ),
            Some(1.0)
        );
        assert_eq!(
            line_value(
                &text,
                "graft_agent_info",
                &[
                    r#"kernel_release="6.1.0-sim-amd64""#,
                    r#"simulated="true""#,
                    &format!(r#"version="{AGENT_VERSION}""#),
                    node
                ]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn a_stalled_transition_started_elsewhere_is_seen_at_scrape_time() {
        let (dir, kernel, state) = sim();
        SimKernel::open(dir.path())
            .unwrap()
            .add_task(crate::kernel::sim::NewTask {
                comm: "holder".into(),
                kthread: true,
                sleeps_in: Some("held_fn".into()),
                ..Default::default()
            })
            .unwrap();
        let bytes = module("graft_stall", "held_fn", 10);
        let info = module_file::inspect_bytes(std::path::Path::new("s.ko"), &bytes).unwrap();
        let opts = ApplyOptions {
            stall_after: Duration::from_millis(50),
            timeout: Duration::from_millis(200),
            on_stall: StallPolicy::Wait,
            ..ApplyOptions::default()
        };
        let out = Patcher::new(kernel.as_ref(), state.clone())
            .apply_bytes(&bytes, &info, &opts, &mut Quiet)
            .unwrap();
        assert_eq!(out.state, patching::PatchState::Stalled);

        // A fresh registry: nothing but the kernel and the journal tell it.
        let metrics = Metrics::new("node-b", kernel, state).unwrap();
        metrics.set_cluster_patches(vec![ClusterPatch {
            live_patch: "cve-2024-0001".into(),
            sysfs_name: Some("graft_stall".into()),
            state: graft_crds::PatchState::Transitioning,
        }]);
        let text = metrics.render();
        let patch = r#"patch="cve-2024-0001""#;
        assert_eq!(
            line_value(&text, "graft_transition_stalled", &[patch]),
            Some(1.0)
        );
        assert_eq!(
            line_value(&text, "graft_transition_in_progress", &[patch]),
            Some(1.0)
        );
        assert_eq!(
            line_value(&text, "graft_patch_state", &[patch, r#"state="Stalled""#]),
            Some(1.0)
        );
        assert_eq!(
            line_value(&text, "graft_transition_blocking_tasks", &[patch]),
            Some(1.0)
        );
        let started = line_value(
            &text,
            "graft_transition_started_timestamp_seconds",
            &[patch],
        )
        .expect("start time from the journal");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(now - started < 60.0 && started <= now + 1.0, "{started}");
        assert!(!text.contains(r#"patch="graft_stall""#), "{text}");
    }

    #[test]
    fn cluster_states_fill_in_what_the_kernel_cannot_know() {
        use graft_crds::PatchState as S;
        let status = NodeStatus {
            simulation: true,
            kernel: patching::KernelReport {
                kind: crate::kernel::KernelKind::Linux,
                release: "6.1".into(),
                boot_id: "b".into(),
                livepatch_supported: true,
                message: None,
            },
            patches: vec![],
            inert_modules: vec![],
            transition: None,
        };
        let cluster = vec![
            ClusterPatch {
                live_patch: "failed".into(),
                sysfs_name: None,
                state: S::Failed,
            },
            ClusterPatch {
                live_patch: "gone".into(),
                sysfs_name: Some("m".into()),
                state: S::Applied,
            },
            ClusterPatch {
                live_patch: "na".into(),
                sysfs_name: None,
                state: S::NotApplicable,
            },
        ];
        let rows = patch_rows(&status, &BTreeMap::new(), &cluster);
        let states: Vec<(&str, S)> = rows.iter().map(|r| (r.patch.as_str(), r.state)).collect();
        assert_eq!(
            states,
            vec![
                ("failed", S::Failed),
                ("gone", S::Reverted),
                ("na", S::NotApplicable)
            ]
        );
    }
}
