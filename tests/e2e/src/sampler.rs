//! Watches LivePatchNodes (and the LivePatch) throughout a rollout and
//! records, at every change, how many of a scenario's nodes are in flight,
//! when each node was admitted, and every state each node went through.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use futures::{StreamExt, stream};
use graft_crds::{DesiredState, LivePatch, LivePatchNode, PatchState};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use tokio::{sync::watch, task::JoinHandle};

/// What the sampler saw.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// Changes observed (LivePatchNode and LivePatch events).
    pub events: u64,
    /// Most nodes at once whose spec had an Enabled entry of the patch that
    /// was not yet Applied (for that entry's generation): the nodes the
    /// rollout had in flight, whatever their agents reported.
    pub max_in_flight: usize,
    /// Most nodes at once whose agent reported Loading, Transitioning or Reverting.
    pub max_transitioning: usize,
    /// Highest `status.transitioning` of the LivePatch.
    pub max_status_transitioning: u32,
    /// When each node first got an entry of the patch.
    pub admitted: BTreeMap<String, Instant>,
    /// Every (time, node, state) change of the patch's state per node.
    pub timeline: Vec<(Instant, String, PatchState)>,
    /// Moments when more than the bound were in flight, with who.
    pub violations: Vec<String>,
    /// Watch errors.
    pub errors: Vec<String>,
}

impl Samples {
    /// The states `node` went through after `since`, in order.
    pub fn states_after(&self, node: &str, since: Instant) -> Vec<PatchState> {
        self.timeline
            .iter()
            .filter(|(at, n, _)| n == node && *at >= since)
            .map(|(_, _, s)| *s)
            .collect()
    }
}

#[derive(Default)]
struct Tracker {
    objects: BTreeMap<String, LivePatchNode>,
    last_state: BTreeMap<String, PatchState>,
    samples: Samples,
}

enum Change {
    Node(watcher::Result<watcher::Event<LivePatchNode>>),
    Patch(watcher::Result<watcher::Event<LivePatch>>),
}

/// A running sampler.
pub struct Sampler {
    shared: Arc<Mutex<Tracker>>,
    task: JoinHandle<()>,
}

impl Sampler {
    /// Starts watching; returns once both watches have listed (so no change
    /// after this call is missed). `bound` is the in-flight limit to check.
    pub async fn start(
        client: &Client,
        live_patch: &str,
        nodes: &[String],
        bound: usize,
    ) -> Result<Self> {
        let shared = Arc::new(Mutex::new(Tracker::default()));
        let nodes: BTreeSet<String> = nodes.iter().cloned().collect();
        let lp_name = live_patch.to_owned();
        let node_events = watcher(
            Api::<LivePatchNode>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .map(Change::Node)
        .boxed();
        let patch_events = watcher(
            Api::<LivePatch>::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={live_patch}")),
        )
        .default_backoff()
        .map(Change::Patch)
        .boxed();
        let (ready_tx, mut ready_rx) = watch::channel(0u8);
        let tracker = shared.clone();
        let task = tokio::spawn(async move {
            let mut changes = stream::select(node_events, patch_events);
            while let Some(change) = changes.next().await {
                let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
                match change {
                    Change::Node(Ok(event)) => {
                        let synced = matches!(event, watcher::Event::InitDone);
                        match event {
                            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                                if nodes.contains(&o.name_any()) {
                                    t.objects.insert(o.name_any(), o);
                                    t.sample(&lp_name, bound);
                                }
                            }
                            watcher::Event::Delete(o) => {
                                t.objects.remove(&o.name_any());
                            }
                            watcher::Event::Init | watcher::Event::InitDone => {}
                        }
                        if synced {
                            ready_tx.send_modify(|n| *n |= 1);
                        }
                    }
                    Change::Patch(Ok(event)) => {
                        let synced = matches!(event, watcher::Event::InitDone);
                        if let watcher::Event::Apply(lp) | watcher::Event::InitApply(lp) = event {
                            let transitioning = lp.status.as_ref().map_or(0, |s| s.transitioning);
                            t.samples.events += 1;
                            t.samples.max_status_transitioning =
                                t.samples.max_status_transitioning.max(transitioning);
                        }
                        if synced {
                            ready_tx.send_modify(|n| *n |= 2);
                        }
                    }
                    Change::Node(Err(e)) | Change::Patch(Err(e)) => {
                        t.samples.errors.push(e.to_string());
                    }
                }
            }
        });
        let ready =
            tokio::time::timeout(Duration::from_secs(30), ready_rx.wait_for(|n| *n == 3)).await;
        if !matches!(ready, Ok(Ok(_))) {
            task.abort();
            bail!("the sampler's watches did not list within 30s");
        }
        Ok(Self { shared, task })
    }

    /// What it saw so far.
    pub fn snapshot(&self) -> Samples {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .samples
            .clone()
    }

    /// Stops watching; returns what it saw.
    pub fn stop(self) -> Samples {
        self.task.abort();
        self.snapshot()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tracker {
    fn sample(&mut self, live_patch: &str, bound: usize) {
        let now = Instant::now();
        self.samples.events += 1;
        let mut in_flight = Vec::new();
        let mut transitioning = 0;
        let mut changes = Vec::new();
        for (name, lpn) in &self.objects {
            let Some(entry) = lpn.spec.patch(live_patch) else {
                continue;
            };
            self.samples.admitted.entry(name.clone()).or_insert(now);
            let status = lpn.status.as_ref().and_then(|s| s.patch(live_patch));
            let state = status.map_or(PatchState::Pending, |s| s.state);
            let current =
                status.is_some_and(|s| s.live_patch_generation == entry.live_patch_generation);
            if entry.desired_state == DesiredState::Enabled
                && !(current && state == PatchState::Applied)
            {
                in_flight.push(name.clone());
            }
            if state.is_in_progress() {
                transitioning += 1;
            }
            if self.last_state.get(name) != Some(&state) {
                changes.push((name.clone(), state));
            }
        }
        for (name, state) in changes {
            self.last_state.insert(name.clone(), state);
            self.samples.timeline.push((now, name, state));
        }
        if in_flight.len() > bound {
            self.samples.violations.push(format!(
                "{} in flight: {}",
                in_flight.len(),
                in_flight.join(", ")
            ));
        }
        self.samples.max_in_flight = self.samples.max_in_flight.max(in_flight.len());
        self.samples.max_transitioning = self.samples.max_transitioning.max(transitioning);
    }
}
