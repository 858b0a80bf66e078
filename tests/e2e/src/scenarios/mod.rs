//! The scenarios of issue 6, and what they share.

mod s1_rollout;
mod s2_selection;
mod s3_stall_cordon;
mod s4_failure_budget;
mod s5_disable_delete;
mod s6_operator_restart;
mod s7_agent_restart;
mod s8_validation;
mod s9_agent_identity;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::{Result, anyhow, bail};
use futures::future::BoxFuture;
use graft_crds::{
    DesiredState, LivePatch, LivePatchNode, LivePatchSpec, ModuleSource, PatchModule, PatchState,
    RolloutPolicy, TransitionPolicy,
};
use k8s_openapi::apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString};
use kube::{
    Api, ResourceExt,
    api::{Patch, PostParams},
};
use serde_json::json;

use crate::{
    checks::{self, Look, SeenEvent, eventually},
    env::{Env, LABEL, Module, NodeOpts, SCENARIO_LABEL, SimNode, within},
};

/// One scenario of the suite.
pub struct Scenario {
    pub number: u8,
    pub title: &'static str,
    /// Longest it may take.
    pub limit: Duration,
    pub run: fn(Arc<Env>) -> BoxFuture<'static, Result<()>>,
}

/// Every scenario, in order.
pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            number: 1,
            title: "a LivePatch for 5 nodes with maxParallel 2 reaches Available, never more than 2 in transition",
            limit: Duration::from_secs(150),
            run: |env| Box::pin(s1_rollout::run(env)),
        },
        Scenario {
            number: 2,
            title: "nodes no module matches are NotApplicable; a nodeSelector excludes nodes",
            limit: Duration::from_secs(120),
            run: |env| Box::pin(s2_selection::run(env)),
        },
        Scenario {
            number: 3,
            title: "a stalled node is cordoned with our annotation and uncordoned on completion; someone else's cordon stays",
            limit: Duration::from_secs(150),
            run: |env| Box::pin(s3_stall_cordon::run(env)),
        },
        Scenario {
            number: 4,
            title: "maxFailures 1: the rollout halts after the second failed node (Paused, FailureBudgetExceeded)",
            limit: Duration::from_secs(120),
            run: |env| Box::pin(s4_failure_budget::run(env)),
        },
        Scenario {
            number: 5,
            title: "desiredState Disabled reverts everywhere; deleting the LivePatch reverts, then removes it",
            limit: Duration::from_secs(180),
            run: |env| Box::pin(s5_disable_delete::run(env)),
        },
        Scenario {
            number: 6,
            title: "operator killed mid-rollout and restarted: the rollout continues within bounds, nothing applied twice; two replicas: only the leader writes",
            limit: Duration::from_secs(300),
            run: |env| Box::pin(s6_operator_restart::run(env)),
        },
        Scenario {
            number: 7,
            title: "an agent restarted mid-transition resumes; a simulated reboot (new boot ID) makes it re-apply",
            limit: Duration::from_secs(150),
            run: |env| Box::pin(s7_agent_restart::run(env)),
        },
        Scenario {
            number: 8,
            title: "invalid LivePatches are rejected by the API server with the schema's messages",
            limit: Duration::from_secs(60),
            run: |env| Box::pin(s8_validation::run(env)),
        },
        Scenario {
            number: 9,
            title: "with the chart's agent RBAC and admission policy, node A's agent identity cannot write node B's LivePatchNode status",
            limit: Duration::from_secs(180),
            run: |env| Box::pin(s9_agent_identity::run(env)),
        },
    ]
}

/// A scenario's view of the environment: its names, its nodes, its LivePatches.
pub struct Scn {
    pub env: Arc<Env>,
    pub n: u8,
}

impl Scn {
    pub fn new(env: Arc<Env>, n: u8) -> Self {
        Self { env, n }
    }

    /// A name of this scenario (`e2e-<run>-s<n>-<suffix>`).
    pub fn name(&self, suffix: &str) -> String {
        self.env.node_name(self.n, suffix)
    }

    /// The prefix of this scenario's names.
    pub fn prefix(&self) -> String {
        format!("{}s{}-", self.env.prefix(), self.n)
    }

    /// Selects this scenario's nodes (and no other node of the cluster).
    pub fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: Some(BTreeMap::from([
                (LABEL.to_owned(), self.env.run_id.clone()),
                (SCENARIO_LABEL.to_owned(), format!("s{}", self.n)),
            ])),
            match_expressions: None,
        }
    }

    /// Makes the nodes and starts their agents.
    pub async fn nodes(&self, opts: Vec<NodeOpts<'_>>) -> Result<Vec<SimNode>> {
        let mut nodes = Vec::with_capacity(opts.len());
        for o in opts {
            let node = self.env.add_node(self.n, o).await?;
            self.env.start_agent(&node).await?;
            nodes.push(node);
        }
        Ok(nodes)
    }

    /// A LivePatch of this scenario (labelled, selecting its nodes).
    pub fn live_patch(
        &self,
        suffix: &str,
        modules: Vec<PatchModule>,
        max_parallel: i32,
    ) -> LivePatch {
        let mut lp = LivePatch::new(
            &self.name(suffix),
            LivePatchSpec {
                node_selector: Some(self.selector()),
                modules,
                desired_state: DesiredState::Enabled,
                rollout: RolloutPolicy {
                    max_parallel: IntOrString::Int(max_parallel),
                    ..RolloutPolicy::default()
                },
                transition: TransitionPolicy::default(),
            },
        );
        lp.metadata.labels = Some(self.env.labels());
        lp
    }

    pub fn live_patches(&self) -> Api<LivePatch> {
        Api::all(self.env.client.clone())
    }

    pub fn live_patch_nodes(&self) -> Api<LivePatchNode> {
        Api::all(self.env.client.clone())
    }

    /// Creates `lp` as an admin would (`kubectl create`).
    pub async fn create(&self, lp: &LivePatch) -> Result<LivePatch> {
        within(
            &format!("creating LivePatch {}", lp.name_any()),
            self.live_patches().create(&self.env.post_params(), lp),
        )
        .await
    }

    /// Sets `spec.desiredState` (a merge patch, as `kubectl patch` would).
    pub async fn set_desired(&self, name: &str, desired: DesiredState) -> Result<LivePatch> {
        within(
            &format!("setting desiredState {desired} on LivePatch {name}"),
            self.live_patches().patch(
                name,
                &self.env.patch_params(),
                &Patch::Merge(json!({"spec": {"desiredState": desired.as_str()}})),
            ),
        )
        .await
    }

    pub async fn lp(&self, name: &str) -> Result<LivePatch> {
        within(
            &format!("reading LivePatch {name}"),
            self.live_patches().get(name),
        )
        .await
    }

    pub async fn lpn(&self, node: &str) -> Result<Option<LivePatchNode>> {
        within(
            &format!("reading LivePatchNode {node}"),
            self.live_patch_nodes().get_opt(node),
        )
        .await
    }

    /// What `kubectl get lp NAME -o wide` shows.
    pub fn lp_row(&self, lp: &LivePatch) -> Result<BTreeMap<String, String>> {
        checks::printer_row(&self.env.crds, "LivePatch", &serde_json::to_value(lp)?)
    }

    /// What `kubectl get lpn NAME -o wide` shows.
    pub fn lpn_row(&self, lpn: &LivePatchNode) -> Result<BTreeMap<String, String>> {
        checks::printer_row(&self.env.crds, "LivePatchNode", &serde_json::to_value(lpn)?)
    }

    /// Waits until the LivePatch's status describes its current generation,
    /// `kubectl get` shows `row`, and `condition` (type, status) holds.
    pub async fn wait_lp(
        &self,
        name: &str,
        limit: Duration,
        row: &[(&str, &str)],
        condition: (&str, &str),
    ) -> Result<LivePatch> {
        let what = format!(
            "LivePatch {name} to show {row:?} with {}={}",
            condition.0, condition.1
        );
        let result = eventually(&what, limit, || async {
            let lp = self.lp(name).await?;
            let status = lp.status.clone().unwrap_or_default();
            let shown = self.lp_row(&lp)?;
            let current = status.observed_generation == lp.metadata.generation;
            let holds = status
                .conditions
                .iter()
                .any(|c| c.type_ == condition.0 && c.status == condition.1);
            Ok(if current && holds && checks::row_matches(&shown, row) {
                Look::Done(lp)
            } else {
                Look::Waiting(format!(
                    "observedGeneration {:?} of {:?}, row {shown:?}, conditions {:?}",
                    status.observed_generation,
                    lp.metadata.generation,
                    checks::summary(&status.conditions)
                ))
            })
        })
        .await;
        self.explain(result).await
    }

    /// Waits until the agent of `node` reports `state` for `live_patch`.
    pub async fn wait_state(
        &self,
        node: &str,
        live_patch: &str,
        state: PatchState,
        limit: Duration,
    ) -> Result<LivePatchNode> {
        let what = format!("LivePatchNode {node} to report {live_patch} {state}");
        let result = eventually(&what, limit, || async {
            let lpn = self.lpn(node).await?;
            let seen = lpn
                .as_ref()
                .and_then(|o| o.status.as_ref())
                .and_then(|s| s.patch(live_patch))
                .map(|p| (p.state, p.reason.clone()));
            Ok(match (lpn, seen) {
                (Some(lpn), Some((s, _))) if s == state => Look::Done(lpn),
                (_, seen) => Look::Waiting(format!("{seen:?}")),
            })
        })
        .await;
        self.explain(result).await
    }

    /// The operator's Events about this scenario's objects.
    pub async fn events(&self) -> Result<Vec<SeenEvent>> {
        checks::operator_events(&self.env.client, &self.prefix()).await
    }

    /// Waits until the Events satisfy `check` (None: satisfied; Some: what is missing).
    pub async fn wait_events(
        &self,
        what: &str,
        limit: Duration,
        check: impl Fn(&[SeenEvent]) -> Option<String>,
    ) -> Result<Vec<SeenEvent>> {
        let result = eventually(what, limit, || async {
            let events = self.events().await?;
            Ok(match check(&events) {
                None => Look::Done(events),
                Some(missing) => Look::Waiting(format!(
                    "{missing}; Events: {:?}",
                    checks::describe(&events)
                )),
            })
        })
        .await;
        self.explain(result).await
    }

    /// Adds to a failure which of the suite's processes died on their own.
    pub async fn explain<T>(&self, result: Result<T>) -> Result<T> {
        match result {
            Ok(value) => Ok(value),
            Err(error) => {
                let exited = self.env.exited_processes().await;
                if exited.is_empty() {
                    Err(error)
                } else {
                    Err(error.context(format!("processes that exited: {}", exited.join("; "))))
                }
            }
        }
    }

    /// Checks the LivePatchNode of `node`: `kubectl get lpn` shows `row` and
    /// the agent reports `state` for `live_patch` with the module's digest.
    pub async fn expect_lpn(
        &self,
        node: &SimNode,
        live_patch: &str,
        module: &Module,
        state: PatchState,
        row: &[(&str, &str)],
    ) -> Result<LivePatchNode> {
        let lpn = self
            .lpn(&node.name)
            .await?
            .ok_or_else(|| anyhow!("LivePatchNode {} does not exist", node.name))?;
        let mut expected = vec![
            ("Kernel", node.release.as_str()),
            ("Simulated", "true"),
            ("Agent", env!("CARGO_PKG_VERSION")),
        ];
        expected.extend_from_slice(row);
        checks::expect_row(
            &format!("lpn {}", node.name),
            &self.lpn_row(&lpn)?,
            &expected,
        )?;
        let owned = lpn
            .owner_references()
            .iter()
            .any(|o| o.kind == "Node" && o.name == node.name);
        if !owned {
            bail!(
                "LivePatchNode {} is not owned by its Node: {:?}",
                node.name,
                lpn.owner_references()
            );
        }
        let status = lpn
            .status
            .as_ref()
            .and_then(|s| s.patch(live_patch))
            .ok_or_else(|| anyhow!("LivePatchNode {} has no status for {live_patch}", node.name))?;
        if status.state != state {
            bail!(
                "LivePatchNode {}: {live_patch} is {} (want {state}): {:?} {:?}",
                node.name,
                status.state,
                status.reason,
                status.message
            );
        }
        if state != PatchState::NotApplicable
            && status.sha256.as_deref() != Some(module.sha256.as_str())
        {
            bail!(
                "LivePatchNode {}: {live_patch} reports sha256 {:?}, the module's is {}",
                node.name,
                status.sha256,
                module.sha256
            );
        }
        if state != PatchState::NotApplicable
            && status.sysfs_name.as_deref() != Some(module.name.as_str())
        {
            bail!(
                "LivePatchNode {}: {live_patch} reports sysfs name {:?}, want {}",
                node.name,
                status.sysfs_name,
                module.name
            );
        }
        Ok(lpn)
    }
}

/// The `modules[]` entry of a module built for one exact release.
pub fn exact(module: &Module) -> PatchModule {
    PatchModule {
        kernel_release: Some(module.release.clone()),
        kernel_release_regex: None,
        source: ModuleSource::host_path(module.path.clone()),
        sha256: Some(module.sha256.clone()),
    }
}

/// Fails unless the simulated kernel in `node` has `module` loaded and
/// enabled, with exactly `completions` patching transitions completed on this boot.
pub fn expect_kernel_applied(node: &SimNode, module: &str, completions: usize) -> Result<()> {
    let (loaded, enabled) = Env::module_state(&node.dir, module)?;
    let done = Env::completed_patchings(&node.dir, module)?;
    if !(loaded && enabled) || done != completions {
        bail!(
            "the simulated kernel of {} has {module} loaded={loaded} enabled={enabled} after {done} \
             completed patching transition(s) (want loaded, enabled, {completions})",
            node.name
        );
    }
    Ok(())
}

/// Fails unless `module` is not loaded in the simulated kernel of `node`.
pub fn expect_kernel_clean(node: &SimNode, module: &str) -> Result<()> {
    let (loaded, _) = Env::module_state(&node.dir, module)?;
    if loaded {
        bail!(
            "the simulated kernel of {} still has {module} loaded",
            node.name
        );
    }
    Ok(())
}

/// PostParams of a server-side dry run.
pub fn dry_run(env: &Env) -> PostParams {
    PostParams {
        dry_run: true,
        ..env.post_params()
    }
}

/// Fails unless the nodes were admitted in `order` (the rollout order: zone,
/// then name). Nodes admitted in the same pass are written concurrently, so
/// their watch events may arrive in either order: `tolerance` allows that.
pub fn check_admission_order(
    order: &[String],
    admitted: &BTreeMap<String, std::time::Instant>,
    tolerance: Duration,
) -> Result<()> {
    for (i, earlier) in order.iter().enumerate() {
        let Some(first) = admitted.get(earlier) else {
            bail!(
                "{earlier} was never admitted (admitted: {:?})",
                admitted.keys()
            );
        };
        for later in &order[i + 1..] {
            let Some(second) = admitted.get(later) else {
                bail!(
                    "{later} was never admitted (admitted: {:?})",
                    admitted.keys()
                );
            };
            if *first > *second + tolerance {
                bail!(
                    "{later} was admitted {:.1}s before {earlier}, which comes first in the rollout order (zone, then name)",
                    (*first - *second).as_secs_f64()
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn admission_order_allows_one_pass_of_concurrent_writes() {
        let t0 = Instant::now();
        let order: Vec<String> = ["a", "b", "c"].iter().map(|s| (*s).to_owned()).collect();
        let at = |pairs: &[(&str, u64)]| -> BTreeMap<String, Instant> {
            pairs
                .iter()
                .map(|(n, ms)| ((*n).to_owned(), t0 + Duration::from_millis(*ms)))
                .collect()
        };
        let tolerance = Duration::from_millis(500);
        check_admission_order(&order, &at(&[("a", 0), ("b", 0), ("c", 3000)]), tolerance).unwrap();
        check_admission_order(&order, &at(&[("b", 0), ("a", 100), ("c", 3000)]), tolerance)
            .unwrap();
        let err = check_admission_order(
            &order,
            &at(&[("a", 0), ("b", 4000), ("c", 2000)]),
            tolerance,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("c was admitted 2.0s before b"),
            "{err}"
        );
        assert!(check_admission_order(&order, &at(&[("a", 0), ("b", 10)]), tolerance).is_err());
    }
}
