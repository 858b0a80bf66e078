//! The cluster loop: watch this node's LivePatchNode, do what its spec asks
//! through [`Patcher`] (one operation at a time, on a blocking thread), and
//! report the status.
//!
//! The loop is driven by the watch alone: a change of the LivePatchNode's
//! spec (its generation), its re-creation, or the end of an operation. When
//! nothing needs doing it waits without any timer. While an operation runs,
//! its observer feeds progress into the status and detaches (the kernel
//! carries on) when the spec entry changes or the agent is told to stop.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use graft_crds::{LivePatchNode, NodePatch, PatchState};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, watch};

use super::fetch::{FetchLimits, ModuleFetcher};
use super::plan::{self, Action, KernelFacts, reason};
use super::status::{NodeModel, PodNames, ProgressEvent, Publish, WriterLimits, run_writer};
use crate::error::{AgentError, exit_code};
use crate::http::Health;
use crate::journal::StateDir;
use crate::kernel::{Kernel, Target};
use crate::metrics::{Metrics, load_failure};
use crate::module_file::{self, ModuleInfo, sha256_hex};
use crate::patching::{self, Observer, Outcome, Patcher, Progress};

/// How the cluster loop behaves; [`AgentConfig::new`] has the production values.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    /// Graft's namespace (module ConfigMaps).
    pub namespace: String,
    /// Where the host's filesystem is mounted (hostPath sources).
    pub host_root: PathBuf,
    pub fetch: FetchLimits,
    pub writer: WriterLimits,
    /// How often a running transition's tasks are counted (and the operation
    /// can be detached).
    pub census_interval: Duration,
    /// Longest single Patcher call; a transition still running after it is
    /// picked up again at once (nothing is lost, the kernel carries on).
    pub operation_slice: Duration,
    /// On shutdown, how long to wait for the operation to detach.
    pub shutdown_grace: Duration,
}

impl AgentConfig {
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            namespace: "graft-system".into(),
            host_root: PathBuf::from("/"),
            fetch: FetchLimits::default(),
            writer: WriterLimits::default(),
            census_interval: Duration::from_secs(2),
            operation_slice: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// What the watch last said about this node's LivePatchNode.
#[derive(Debug, Clone)]
enum Observed {
    /// No answer from the API server yet.
    NotSynced,
    /// The operator has not created it (or deleted it).
    Missing,
    Present(Arc<LivePatchNode>),
}

/// Why the loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("the watch of LivePatchNode {node} ended unexpectedly")]
    WatchEnded { node: String },
}

/// The cluster-mode agent of one node.
pub struct Agent {
    cfg: AgentConfig,
    client: Client,
    kernel: Arc<dyn Kernel>,
    state: StateDir,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// A module fetched and verified for the operation in progress, kept so that
/// picking a long transition up again does not download it again.
struct Fetched {
    key: (String, Option<i64>, Option<String>, String),
    bytes: Arc<Vec<u8>>,
    info: ModuleInfo,
}

/// The running loop's state.
struct Run {
    model: Option<NodeModel>,
    spec: Vec<NodePatch>,
    uid: Option<String>,
    generation: Option<i64>,
    epoch: u64,
    status_tx: watch::Sender<Option<Publish>>,
    cache: Option<Fetched>,
}

enum OpEnd {
    Done(Box<Result<Outcome, AgentError>>),
    /// Shutting down and the operation did not detach in time: the kernel carries on.
    Abandoned,
}

impl Agent {
    pub fn new(
        cfg: AgentConfig,
        client: Client,
        kernel: Arc<dyn Kernel>,
        state: StateDir,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Self {
            cfg,
            client,
            kernel,
            state,
            metrics,
            health,
        }
    }

    /// Runs until `shutdown` completes. A transition in progress is left to
    /// the kernel; the next start picks it up.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ClusterError> {
        let (stop_tx, mut stop) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let api: Api<LivePatchNode> = Api::all(self.client.clone());
        let (obj_tx, mut obj_rx) = watch::channel(Observed::NotSynced);
        let watch_task = tokio::spawn(watch_own(
            api.clone(),
            self.cfg.node_name.clone(),
            obj_tx,
            Arc::clone(&self.health),
        ));
        let (status_tx, status_rx) = watch::channel(None);
        let writer = tokio::spawn(run_writer(
            api,
            self.cfg.node_name.clone(),
            status_rx,
            PodNames::new(self.client.clone(), &self.cfg.node_name),
            self.cfg.writer,
        ));
        let fetcher = ModuleFetcher::new(
            self.client.clone(),
            &self.cfg.namespace,
            &self.cfg.host_root,
            self.cfg.fetch,
        );
        let mut run = Run {
            model: None,
            spec: Vec::new(),
            uid: None,
            generation: None,
            epoch: 0,
            status_tx,
            cache: None,
        };
        let mut told_missing = false;
        let result = loop {
            if *stop.borrow() {
                break Ok(());
            }
            let observed = obj_rx.borrow_and_update().clone();
            let obj = match observed {
                Observed::Present(obj) => obj,
                other => {
                    if matches!(other, Observed::Missing) && !told_missing {
                        told_missing = true;
                        tracing::info!(node = %self.cfg.node_name,
                            "no LivePatchNode for this node yet; waiting for graft-operator to create it");
                    }
                    tokio::select! {
                        r = obj_rx.changed() => if r.is_err() {
                            break Err(ClusterError::WatchEnded { node: self.cfg.node_name.clone() });
                        },
                        _ = stopped(&mut stop) => {}
                    }
                    continue;
                }
            };
            told_missing = false;
            let next = self.reconcile(&mut run, &obj).await;
            match next {
                Some((spec, action)) => {
                    let stopped = self
                        .operate(&mut run, &fetcher, &spec, action, &mut obj_rx, &mut stop)
                        .await;
                    if stopped {
                        break Ok(());
                    }
                }
                None => {
                    // Settled: wait for a new spec, a re-created object, or the end.
                    let waited = self.wait_for_change(&run, &mut obj_rx, &mut stop).await;
                    if let Err(e) = waited {
                        break Err(e);
                    }
                }
            }
        };
        self.publish(&mut run);
        drop(run);
        watch_task.abort();
        // Let the writer send the last status, briefly.
        let _ = tokio::time::timeout(Duration::from_secs(3), writer).await;
        result
    }

    /// Waits until the LivePatchNode's spec changes, it is re-created, or shutdown.
    async fn wait_for_change(
        &self,
        run: &Run,
        obj_rx: &mut watch::Receiver<Observed>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), ClusterError> {
        loop {
            tokio::select! {
                r = obj_rx.changed() => {
                    if r.is_err() {
                        return Err(ClusterError::WatchEnded { node: self.cfg.node_name.clone() });
                    }
                    match &*obj_rx.borrow() {
                        Observed::Present(o)
                            if o.uid() == run.uid && o.metadata.generation == run.generation => {}
                        Observed::NotSynced => {}
                        // Gone: keep the model (the kernel state is real) and wait.
                        Observed::Missing => {}
                        Observed::Present(_) => return Ok(()),
                    }
                }
                _ = stopped(stop) => return Ok(()),
            }
        }
    }

    /// Brings the model up to date with the object and the kernel, reports
    /// what needs no kernel work, and returns the first entry that does.
    async fn reconcile(&self, run: &mut Run, obj: &LivePatchNode) -> Option<(NodePatch, Action)> {
        let facts = self.kernel_facts(run).await;
        let simulated = self.kernel.kind().is_simulated();
        if run.uid != obj.uid() {
            run.epoch += 1;
            run.uid = obj.uid();
        }
        let model = run
            .model
            .get_or_insert_with(|| NodeModel::seed(obj.status.as_ref(), &facts, simulated));
        model.observe_kernel(&facts);
        model.observed_generation = obj.metadata.generation;
        run.generation = obj.metadata.generation;
        run.spec = obj.spec.patches.clone();
        model.align_with_spec(&run.spec);
        let mut next = None;
        for spec in &run.spec {
            let stall_revert = model.stall_revert.contains(&spec.live_patch);
            let action = plan::decide(spec, model.entry(&spec.live_patch), stall_revert, &facts);
            match action {
                Action::Nothing => {}
                Action::Report {
                    state,
                    reason,
                    message,
                } => {
                    model.attempt(spec);
                    model.set(&spec.live_patch, state, reason, message);
                }
                Action::AdoptGeneration => model.attempt(spec),
                a @ (Action::Apply | Action::Revert { .. }) => {
                    if next.is_none() {
                        next = Some((spec.clone(), a));
                    }
                }
            }
        }
        self.publish(run);
        next
    }

    async fn kernel_facts(&self, run: &Run) -> KernelFacts {
        let kernel = Arc::clone(&self.kernel);
        let names: Vec<String> = run
            .model
            .iter()
            .flat_map(|m| m.patches.iter().filter_map(|p| p.sysfs_name.clone()))
            .collect();
        tokio::task::spawn_blocking(move || read_facts(kernel.as_ref(), &names))
            .await
            .unwrap_or_default()
    }

    fn publish(&self, run: &mut Run) {
        let Some(model) = run.model.as_mut() else {
            return;
        };
        let status = model.to_status(&run.spec);
        self.metrics.set_cluster_patches(model.cluster_patches());
        run.status_tx.send_replace(Some(Publish {
            epoch: run.epoch,
            status,
        }));
    }

    fn model<'r>(&self, run: &'r mut Run) -> &'r mut NodeModel {
        run.model.get_or_insert_with(NodeModel::default)
    }

    /// Runs one operation; returns true when the agent is shutting down.
    async fn operate(
        &self,
        run: &mut Run,
        fetcher: &ModuleFetcher,
        spec: &NodePatch,
        action: Action,
        obj_rx: &mut watch::Receiver<Observed>,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let lp = spec.live_patch.clone();
        match action {
            Action::Apply => {
                let Some((bytes, info)) = self.prepare_apply(run, fetcher, spec).await else {
                    return *stop.borrow();
                };
                let opts = match plan::apply_options(spec, self.cfg.operation_slice) {
                    Ok(o) => o,
                    Err(e) => {
                        self.model(run).set(
                            &lp,
                            PatchState::Failed,
                            Some(reason::INVALID_SPEC),
                            format!("the transition policy is invalid: {e}"),
                        );
                        self.publish(run);
                        return false;
                    }
                };
                let kernel = Arc::clone(&self.kernel);
                let state = self.state.clone();
                let end = self
                    .follow(run, spec, obj_rx, stop, move |observer| {
                        Patcher::new(kernel.as_ref(), state)
                            .apply_bytes(&bytes, &info, &opts, observer)
                    })
                    .await;
                match end {
                    OpEnd::Done(result) => self.applied(run, spec, *result),
                    OpEnd::Abandoned => return true,
                }
            }
            Action::Revert { sysfs_name } => {
                let after_stall = self.model(run).stall_revert.contains(&lp);
                if !after_stall {
                    self.model(run).attempt(spec);
                }
                let reason = after_stall.then_some(reason::STALLED_AND_REVERTED);
                let entry = self.model(run).entry(&lp).map(|e| e.state);
                if entry != Some(PatchState::Reverting) {
                    self.model(run).set(
                        &lp,
                        PatchState::Reverting,
                        reason,
                        format!("reverting {sysfs_name}"),
                    );
                }
                self.publish(run);
                let opts = plan::revert_options(spec, self.cfg.operation_slice);
                let kernel = Arc::clone(&self.kernel);
                let state = self.state.clone();
                let name = sysfs_name.clone();
                let end = self
                    .follow(run, spec, obj_rx, stop, move |observer| {
                        Patcher::new(kernel.as_ref(), state).revert(&name, &opts, observer)
                    })
                    .await;
                match end {
                    OpEnd::Done(result) => self.reverted(run, spec, after_stall, *result),
                    OpEnd::Abandoned => return true,
                }
            }
            Action::Nothing | Action::Report { .. } | Action::AdoptGeneration => {}
        }
        self.publish(run);
        *stop.borrow()
    }

    /// Fetches, verifies and inspects the module; reports Failed when it cannot.
    async fn prepare_apply(
        &self,
        run: &mut Run,
        fetcher: &ModuleFetcher,
        spec: &NodePatch,
    ) -> Option<(Arc<Vec<u8>>, ModuleInfo)> {
        let lp = spec.live_patch.as_str();
        let key = (
            lp.to_string(),
            spec.live_patch_generation,
            spec.module.sha256.clone(),
            serde_json::to_string(&spec.module.source).unwrap_or_default(),
        );
        if let Some(f) = run.cache.as_ref().filter(|f| f.key == key) {
            return Some((Arc::clone(&f.bytes), f.info.clone()));
        }
        run.cache = None;
        let source = fetcher.describe(&spec.module.source);
        let model = self.model(run);
        model.attempt(spec);
        // Picking up a transition the kernel is running (after a restart):
        // the module is needed again, but the state stays what the kernel says.
        let in_kernel = model.entry(lp).is_some_and(|e| {
            matches!(
                e.state,
                PatchState::Transitioning | PatchState::Stalled | PatchState::Reverting
            )
        });
        if !in_kernel {
            model.set(
                lp,
                PatchState::Loading,
                None,
                format!("fetching the module from {source}"),
            );
        }
        self.publish(run);

        let fail = |run: &mut Run, why: &'static str, metric: &str, message: String| {
            tracing::warn!(patch = lp, reason = why, "{message}");
            self.metrics.count_load_failure(lp, metric);
            self.model(run)
                .set(lp, PatchState::Failed, Some(why), message);
            self.publish(run);
            None
        };
        let bytes = match fetcher.fetch(&spec.module.source).await {
            Ok(b) => b,
            Err(e) => {
                return fail(
                    run,
                    reason::FETCH_FAILED,
                    load_failure::FETCH_FAILED,
                    format!("cannot get the module from {source}: {e}"),
                );
            }
        };
        // The digest first: nothing else looks at bytes that are not the pinned ones.
        let actual = sha256_hex(&bytes);
        match &spec.module.sha256 {
            Some(want) if !want.eq_ignore_ascii_case(&actual) => {
                return fail(
                    run,
                    reason::CHECKSUM_MISMATCH,
                    load_failure::SHA256_MISMATCH,
                    format!(
                        "the module from {source} has sha256 {actual}, but the LivePatch pins {want}; \
                         it was not loaded. Fix the source or the LivePatch's sha256"
                    ),
                );
            }
            Some(_) => {}
            None => self.model(run).entry_mut(lp).sha256 = Some(actual.clone()),
        }
        let info = match module_file::inspect_bytes(&PathBuf::from(&source), &bytes) {
            Ok(i) => ModuleInfo {
                sha256: Some(actual),
                ..i
            },
            Err(e) => {
                return fail(
                    run,
                    reason::NOT_A_MODULE,
                    crate::error::LoadRefusal::BadModule.as_str(),
                    e.to_string(),
                );
            }
        };
        let release = self.model(run).kernel_release.clone();
        if let Err(e) = module_file::check_loadable(&info, &release, None) {
            let (why, metric) = match e {
                AgentError::NotALivepatch { .. } => {
                    (reason::NOT_A_LIVEPATCH, load_failure::NOT_A_LIVEPATCH)
                }
                _ => (
                    reason::KERNEL_RELEASE_MISMATCH,
                    load_failure::WRONG_KERNEL_RELEASE,
                ),
            };
            return fail(run, why, metric, e.to_string());
        }
        self.model(run).entry_mut(lp).sysfs_name = Some(info.name.clone());
        let bytes = Arc::new(bytes);
        run.cache = Some(Fetched {
            key,
            bytes: Arc::clone(&bytes),
            info: info.clone(),
        });
        Some((bytes, info))
    }

    /// Runs `op` on a blocking thread, feeding its progress into the status.
    async fn follow<F>(
        &self,
        run: &mut Run,
        spec: &NodePatch,
        obj_rx: &mut watch::Receiver<Observed>,
        stop: &mut watch::Receiver<bool>,
        op: F,
    ) -> OpEnd
    where
        F: FnOnce(&mut dyn Observer) -> Result<Outcome, AgentError> + Send + 'static,
    {
        let (tx, mut events) = mpsc::unbounded_channel();
        let interrupt = Arc::new(AtomicBool::new(false));
        let mut observer = ClusterObserver {
            module: self
                .model(run)
                .entry(&spec.live_patch)
                .and_then(|e| e.sysfs_name.clone()),
            tx,
            interrupt: Arc::clone(&interrupt),
            census_every: self.cfg.census_interval,
        };
        let mut handle = tokio::task::spawn_blocking(move || op(&mut observer));
        let lp = spec.live_patch.as_str();
        let mut watching = true;
        let result = loop {
            tokio::select! {
                r = &mut handle => break r,
                Some(ev) = events.recv() => {
                    self.model(run).progress(lp, &ev);
                    self.publish(run);
                }
                r = obj_rx.changed(), if watching => {
                    if r.is_err() {
                        watching = false;
                        continue;
                    }
                    if entry_changed(&obj_rx.borrow(), run, spec) {
                        tracing::info!(patch = lp, "the spec changed: detaching from the operation (the kernel carries on)");
                        interrupt.store(true, Ordering::Release);
                    }
                }
                _ = stopped(stop) => {
                    tracing::info!(patch = lp, "stopping: leaving the transition to the kernel");
                    interrupt.store(true, Ordering::Release);
                    match tokio::time::timeout(self.cfg.shutdown_grace, &mut handle).await {
                        Ok(r) => break r,
                        Err(_) => return OpEnd::Abandoned,
                    }
                }
            }
        };
        while let Ok(ev) = events.try_recv() {
            self.model(run).progress(lp, &ev);
        }
        OpEnd::Done(Box::new(result.unwrap_or_else(|e| {
            Err(AgentError::Simulation(format!(
                "the operation's thread failed: {e}"
            )))
        })))
    }

    /// Records the end of an apply.
    fn applied(&self, run: &mut Run, spec: &NodePatch, result: Result<Outcome, AgentError>) {
        let lp = spec.live_patch.as_str();
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                self.apply_failed(run, lp, e);
                return;
            }
        };
        tracing::info!(patch = lp, state = %out.state, "{}", out.message);
        let model = self.model(run);
        let settled = !matches!(
            out.state,
            patching::PatchState::Transitioning
                | patching::PatchState::Stalled
                | patching::PatchState::Reverting
        );
        match out.state {
            patching::PatchState::Applied => {
                let (why, forced) = if out.forced {
                    (Some(reason::FORCED), true)
                } else {
                    (None, false)
                };
                model.set(lp, PatchState::Applied, why, &out.message);
                let e = model.entry_mut(lp);
                e.forced = forced;
                e.applied_at = Some(super::status::now());
                if let Some(d) = out.transition.as_ref().and_then(|t| t.duration_seconds) {
                    e.duration_seconds = Some(d);
                    self.metrics.observe_transition(Target::Patched, d);
                }
            }
            patching::PatchState::Reverted => {
                model.stall_revert.remove(lp);
                model.set(
                    lp,
                    PatchState::Failed,
                    Some(reason::STALLED_AND_REVERTED),
                    &out.message,
                );
            }
            patching::PatchState::Reverting if out.exit_code == exit_code::TIMED_OUT => {
                // The stall policy is reverting and the call ended first: finish it next.
                model.stall_revert.insert(lp.to_string());
                model.set(
                    lp,
                    PatchState::Reverting,
                    Some(reason::STALLED_AND_REVERTED),
                    &out.message,
                );
            }
            patching::PatchState::Reverting => model.set(
                lp,
                PatchState::Failed,
                Some(reason::TRANSITION_REVERSED),
                &out.message,
            ),
            patching::PatchState::Stalled => {
                let blocking = super::status::api_blocking_tasks(&out.blocking);
                model.set(
                    lp,
                    PatchState::Stalled,
                    Some(reason::TRANSITION_STALLED),
                    &out.message,
                );
                if let Some(t) = model.entry_mut(lp).transition.as_mut()
                    && !blocking.is_empty()
                {
                    t.blocking_tasks = blocking;
                }
            }
            patching::PatchState::Transitioning => {
                model.set(lp, PatchState::Transitioning, None, &out.message)
            }
            patching::PatchState::Failed => model.set(
                lp,
                PatchState::Failed,
                Some(if out.forced {
                    reason::FORCED_TRANSITION_FAILED
                } else {
                    reason::PATCH_VANISHED
                }),
                &out.message,
            ),
            other => model.set(lp, other.into(), None, &out.message),
        }
        if settled {
            run.cache = None;
        }
    }

    fn apply_failed(&self, run: &mut Run, lp: &str, e: AgentError) {
        tracing::warn!(patch = lp, category = e.category(), "{e}");
        let (state, why, metric) = match &e {
            AgentError::LoadRefused { reason: r, .. } => (
                PatchState::Failed,
                reason::MODULE_LOAD_FAILED,
                Some(r.as_str()),
            ),
            AgentError::DifferentBuildLoaded { .. } => (
                PatchState::Failed,
                reason::DIFFERENT_BUILD_LOADED,
                Some(crate::error::LoadRefusal::AlreadyLoaded.as_str()),
            ),
            AgentError::LivepatchUnsupported => (
                PatchState::NotApplicable,
                reason::LIVEPATCH_UNSUPPORTED,
                None,
            ),
            // Not the patch's fault: another transition or operation held
            // the kernel for a whole slice; try again.
            AgentError::Busy { .. } | AgentError::AgentLocked { .. } => {
                (PatchState::Pending, reason::WAITING, None)
            }
            other => (PatchState::Failed, other.category(), None),
        };
        if let Some(m) = metric {
            self.metrics.count_load_failure(lp, m);
        }
        if state != PatchState::Pending {
            run.cache = None;
        }
        self.model(run).set(lp, state, Some(why), e.to_string());
    }

    /// Records the end of a revert.
    fn reverted(
        &self,
        run: &mut Run,
        spec: &NodePatch,
        after_stall: bool,
        result: Result<Outcome, AgentError>,
    ) {
        let lp = spec.live_patch.as_str();
        let model = self.model(run);
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                tracing::warn!(patch = lp, category = e.category(), "{e}");
                model.stall_revert.remove(lp);
                model.set(
                    lp,
                    PatchState::Failed,
                    Some(reason::REVERT_FAILED),
                    e.to_string(),
                );
                return;
            }
        };
        tracing::info!(patch = lp, state = %out.state, "{}", out.message);
        match out.state {
            patching::PatchState::Reverted => {
                if let Some(d) = out.transition.as_ref().and_then(|t| t.duration_seconds) {
                    self.metrics.observe_transition(Target::Unpatched, d);
                }
                model.stall_revert.remove(lp);
                if after_stall {
                    model.set(
                        lp,
                        PatchState::Failed,
                        Some(reason::STALLED_AND_REVERTED),
                        format!(
                            "the transition stalled and was reverted as the LivePatch's onStall asks; {}",
                            out.message
                        ),
                    );
                } else {
                    model.set(lp, PatchState::Reverted, None, &out.message);
                    let e = model.entry_mut(lp);
                    e.applied_at = None;
                    e.forced = false;
                }
            }
            patching::PatchState::Reverting => {
                let why = after_stall.then_some(reason::STALLED_AND_REVERTED);
                model.set(lp, PatchState::Reverting, why, &out.message);
            }
            _ => {
                model.stall_revert.remove(lp);
                model.set(
                    lp,
                    PatchState::Failed,
                    Some(reason::REVERT_REVERSED),
                    &out.message,
                );
            }
        }
    }
}

/// Completes once the stop flag is set (never, if its sender went without setting it).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Whether the spec entry of the running operation changed (or went).
fn entry_changed(observed: &Observed, run: &Run, spec: &NodePatch) -> bool {
    match observed {
        Observed::Present(o) => o.uid() != run.uid || o.spec.patch(&spec.live_patch) != Some(spec),
        Observed::Missing | Observed::NotSynced => false,
    }
}

fn read_facts(kernel: &dyn Kernel, names: &[String]) -> KernelFacts {
    let mut facts = KernelFacts {
        release: kernel.release().unwrap_or_default(),
        boot_id: kernel.boot_id().unwrap_or_default(),
        livepatch_supported: kernel.livepatch_supported(),
        ..KernelFacts::default()
    };
    for name in kernel.patch_names().unwrap_or_default() {
        if let Ok(Some(p)) = kernel.patch(&name) {
            facts.patches.insert(name, (p.enabled, p.transition));
        }
    }
    for name in names {
        if let Ok(Some(m)) = kernel.loaded_module(name) {
            facts.loaded_modules.insert(m.name);
        }
    }
    facts
}

/// Reports an operation's progress to the async side; detaches when asked.
struct ClusterObserver {
    /// The sysfs name of the patch being worked on.
    module: Option<String>,
    tx: mpsc::UnboundedSender<ProgressEvent>,
    interrupt: Arc<AtomicBool>,
    census_every: Duration,
}

impl Observer for ClusterObserver {
    fn progress(&mut self, p: &Progress<'_>) -> ControlFlow<()> {
        // Reports about other patches (a superseded module being unloaded)
        // do not change this one's state; waiting for another does.
        let ours = self.module.as_deref().is_none_or(|m| m == p.patch);
        if ours || p.state == patching::PatchState::Pending {
            let stalled = p.state == patching::PatchState::Stalled;
            let _ = self.tx.send(ProgressEvent {
                state: p.state,
                target: p.target,
                elapsed: p.elapsed,
                census: p.census.map(|c| (c.switched, c.total)),
                blocking: stalled.then(|| p.blocking.to_vec()),
                message: p.message.map(str::to_string),
            });
        }
        if self.interrupt.load(Ordering::Acquire) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn census_interval(&self) -> Option<Duration> {
        Some(self.census_every)
    }
}

/// Follows this node's LivePatchNode (and only it) and publishes what the
/// watch says. The watcher retries with backoff while the API is unreachable.
async fn watch_own(
    api: Api<LivePatchNode>,
    node: String,
    tx: watch::Sender<Observed>,
    health: Arc<Health>,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut buffer: Option<LivePatchNode> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => buffer = None,
            Ok(watcher::Event::InitApply(o)) => buffer = Some(o),
            Ok(watcher::Event::InitDone) => {
                health.set_ready();
                let _ = tx.send(match buffer.take() {
                    Some(o) => Observed::Present(Arc::new(o)),
                    None => Observed::Missing,
                });
            }
            Ok(watcher::Event::Apply(o)) => {
                let _ = tx.send(Observed::Present(Arc::new(o)));
            }
            Ok(watcher::Event::Delete(_)) => {
                let _ = tx.send(Observed::Missing);
            }
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "watching the LivePatchNode failed; retrying")
            }
        }
    }
}
