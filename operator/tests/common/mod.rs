//! Builders of Nodes, LivePatches and LivePatchNodes, and a tiny in-memory
//! "cluster" that applies plans the way the API server would, with agents
//! that report whatever a test tells them to.

#![allow(dead_code)]

use std::{collections::BTreeMap, sync::Arc};

use graft_crds::{
    CORDONED_BY_ANNOTATION, DesiredState, FINALIZER, LivePatch, LivePatchNode, LivePatchNodeSpec,
    LivePatchNodeStatus, LivePatchSpec, ModuleSource, NodePatch, OnStall, PatchModule, PatchState,
    PatchStatus, RolloutPolicy,
};
use graft_operator::plan::{CordonAction, Memory, Plan, World, plan};
use k8s_openapi::{
    api::core::v1::{Node, NodeSpec, NodeStatus, NodeSystemInfo},
    apimachinery::pkg::{
        apis::meta::v1::{ObjectMeta, OwnerReference, Time},
        util::intstr::IntOrString,
    },
    jiff::Timestamp,
};

pub const KERNEL: &str = "6.1.0-18-amd64";
pub const SHA: &str = "1111111111111111111111111111111111111111111111111111111111111111";
pub const SHA2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

pub fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).unwrap())
}

/// A Linux node with the default kernel, in zone `zone`.
pub fn node(name: &str, zone: &str) -> Node {
    let mut labels = BTreeMap::from([("kubernetes.io/os".to_owned(), "linux".to_owned())]);
    if !zone.is_empty() {
        labels.insert("topology.kubernetes.io/zone".to_owned(), zone.to_owned());
    }
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            uid: Some(format!("uid-{name}")),
            resource_version: Some("1".to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            node_info: Some(NodeSystemInfo {
                kernel_version: KERNEL.to_owned(),
                operating_system: "linux".to_owned(),
                boot_id: format!("boot-{name}-1"),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        }),
    }
}

pub fn with_label(mut node: Node, key: &str, value: &str) -> Node {
    node.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), value.to_owned());
    node
}

pub fn with_kernel(mut node: Node, kernel: &str) -> Node {
    node.status
        .as_mut()
        .unwrap()
        .node_info
        .as_mut()
        .unwrap()
        .kernel_version = kernel.to_owned();
    node
}

pub fn cordoned(mut node: Node, by: Option<&str>) -> Node {
    node.spec
        .get_or_insert_with(NodeSpec::default)
        .unschedulable = Some(true);
    if let Some(by) = by {
        node.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(CORDONED_BY_ANNOTATION.to_owned(), by.to_owned());
    }
    node
}

pub fn module_exact(kernel: &str, sha: Option<&str>) -> PatchModule {
    PatchModule {
        kernel_release: Some(kernel.to_owned()),
        kernel_release_regex: None,
        source: ModuleSource::host_path("/var/lib/graft/modules/fix.ko"),
        sha256: sha.map(str::to_owned),
    }
}

/// A LivePatch for the default kernel, generation 1, carrying the finalizer.
pub fn live_patch(name: &str) -> LivePatch {
    let mut lp = LivePatch::new(
        name,
        LivePatchSpec {
            modules: vec![module_exact(KERNEL, Some(SHA))],
            ..LivePatchSpec::default()
        },
    );
    lp.metadata.uid = Some(format!("uid-lp-{name}"));
    lp.metadata.generation = Some(1);
    lp.metadata.resource_version = Some("1".to_owned());
    lp.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
    lp
}

pub fn rollout(mut lp: LivePatch, max_parallel: IntOrString, max_failures: u32) -> LivePatch {
    lp.spec.rollout = RolloutPolicy {
        max_parallel,
        max_failures,
        paused: false,
    };
    lp
}

pub fn on_stall(mut lp: LivePatch, on_stall: OnStall, uncordon: bool) -> LivePatch {
    lp.spec.transition.on_stall = on_stall;
    lp.spec.transition.uncordon_on_recovery = uncordon;
    lp
}

/// An in-memory cluster: the planner's inputs, and what applying a plan does.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub live_patches: BTreeMap<String, LivePatch>,
    pub nodes: BTreeMap<String, Node>,
    pub lpns: BTreeMap<String, LivePatchNode>,
    pub operator_node: Option<String>,
    pub memory: Memory,
    pub clock: i64,
    rv: u64,
}

impl Cluster {
    pub fn new(
        nodes: impl IntoIterator<Item = Node>,
        lps: impl IntoIterator<Item = LivePatch>,
    ) -> Self {
        let mut cluster = Self {
            clock: 1_700_000_000,
            rv: 100,
            ..Self::default()
        };
        for node in nodes {
            cluster.add_node(node);
        }
        for lp in lps {
            cluster.put_live_patch(lp);
        }
        cluster
    }

    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    pub fn add_node(&mut self, node: Node) {
        let name = node.metadata.name.clone().unwrap();
        self.nodes.insert(name, node);
    }

    pub fn put_live_patch(&mut self, lp: LivePatch) {
        let name = lp.metadata.name.clone().unwrap();
        self.live_patches.insert(name, lp);
    }

    /// Edits a LivePatch's spec: the generation goes up.
    pub fn edit(&mut self, name: &str, f: impl FnOnce(&mut LivePatchSpec)) {
        let lp = self.live_patches.get_mut(name).unwrap();
        f(&mut lp.spec);
        lp.metadata.generation = Some(lp.metadata.generation.unwrap_or(0) + 1);
    }

    /// `kubectl delete lp NAME`: sets the deletion timestamp (the object stays
    /// while it has finalizers).
    pub fn delete(&mut self, name: &str) {
        let clock = self.clock;
        let lp = self.live_patches.get_mut(name).unwrap();
        if lp.metadata.finalizers.as_ref().is_none_or(Vec::is_empty) {
            self.live_patches.remove(name);
        } else {
            lp.metadata.deletion_timestamp = Some(at(clock));
            lp.metadata.generation = Some(lp.metadata.generation.unwrap_or(0) + 1);
        }
    }

    pub fn world(&self) -> World {
        World {
            live_patches: self.live_patches.values().cloned().map(Arc::new).collect(),
            nodes: self.nodes.values().cloned().map(Arc::new).collect(),
            live_patch_nodes: self.lpns.values().cloned().map(Arc::new).collect(),
            operator_node: self.operator_node.clone(),
        }
    }

    pub fn plan(&self) -> Plan {
        plan(&self.world(), &self.memory, &at(self.clock))
    }

    /// Plans and applies the plan, as the operator's runtime would.
    pub fn step(&mut self) -> Plan {
        self.clock += 1;
        let plan = self.plan();
        self.apply(&plan);
        plan
    }

    /// Steps until the plan writes nothing (at most `max` steps).
    pub fn settle(&mut self, max: usize) -> Vec<Plan> {
        let mut plans = Vec::new();
        for _ in 0..max {
            let plan = self.step();
            let quiet = plan.is_quiet();
            plans.push(plan);
            if quiet {
                return plans;
            }
        }
        panic!(
            "the plan did not settle in {max} steps: {:#?}",
            plans.last()
        );
    }

    pub fn apply(&mut self, plan: &Plan) {
        for write in &plan.node_specs {
            let rv = self.next_rv();
            let lpn = self
                .lpns
                .entry(write.node.clone())
                .or_insert_with(|| LivePatchNode::new(&write.node, LivePatchNodeSpec::default()));
            if lpn.spec != write.spec {
                lpn.metadata.generation = Some(lpn.metadata.generation.unwrap_or(0) + 1);
            }
            lpn.spec = write.spec.clone();
            lpn.metadata.resource_version = Some(rv);
            lpn.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: write.node.clone(),
                uid: write.node_uid.clone(),
                ..OwnerReference::default()
            }]);
        }
        for change in &plan.cordons {
            let rv = self.next_rv();
            let node = self.nodes.get_mut(&change.node).unwrap();
            assert_eq!(
                node.metadata.resource_version, change.resource_version,
                "cordon precondition"
            );
            node.metadata.resource_version = Some(rv);
            let annotations = node.metadata.annotations.get_or_insert_with(BTreeMap::new);
            let spec = node.spec.get_or_insert_with(NodeSpec::default);
            match change.action {
                CordonAction::Cordon => {
                    spec.unschedulable = Some(true);
                    annotations.insert(
                        CORDONED_BY_ANNOTATION.to_owned(),
                        change.cordoned_by.clone().unwrap(),
                    );
                }
                CordonAction::Remark => {
                    annotations.insert(
                        CORDONED_BY_ANNOTATION.to_owned(),
                        change.cordoned_by.clone().unwrap(),
                    );
                }
                CordonAction::Uncordon => {
                    spec.unschedulable = None;
                    annotations.remove(CORDONED_BY_ANNOTATION);
                }
                CordonAction::Unmark => {
                    annotations.remove(CORDONED_BY_ANNOTATION);
                }
            }
        }
        for write in &plan.statuses {
            let lp = self.live_patches.get_mut(&write.live_patch).unwrap();
            lp.status = Some(write.status.clone());
        }
        for change in &plan.finalizers {
            let rv = self.next_rv();
            let lp = self.live_patches.get_mut(&change.live_patch).unwrap();
            lp.metadata.finalizers = Some(change.finalizers.clone());
            lp.metadata.resource_version = Some(rv);
            if lp.metadata.deletion_timestamp.is_some() && change.finalizers.is_empty() {
                self.live_patches.remove(&change.live_patch);
            }
        }
        self.memory = plan.memory.clone();
    }

    pub fn entry(&self, node: &str, lp: &str) -> Option<&NodePatch> {
        self.lpns.get(node).and_then(|l| l.spec.patch(lp))
    }

    pub fn admitted(&self, node: &str, lp: &str) -> bool {
        self.entry(node, lp)
            .is_some_and(|e| e.desired_state == DesiredState::Enabled)
    }

    /// The node's agent reports `state` for its current entry of `lp` (echoing
    /// its generation and digest), on the node's current boot.
    pub fn report(&mut self, node: &str, lp: &str, state: PatchState) {
        let boot = self.nodes[node]
            .status
            .as_ref()
            .unwrap()
            .node_info
            .as_ref()
            .unwrap()
            .boot_id
            .clone();
        let clock = self.clock;
        let lpn = self.lpns.get_mut(node).expect("LivePatchNode exists");
        let entry = lpn.spec.patch(lp).expect("entry exists").clone();
        let status = lpn.status.get_or_insert_with(LivePatchNodeStatus::default);
        status.boot_id = Some(boot);
        status.kernel_release = Some(KERNEL.to_owned());
        let patch = PatchStatus {
            live_patch: lp.to_owned(),
            live_patch_generation: entry.live_patch_generation,
            sha256: entry.module.sha256.clone(),
            state,
            reason: match state {
                PatchState::Failed => Some("ModuleLoadFailed".to_owned()),
                PatchState::Stalled => Some("TransitionStalled".to_owned()),
                _ => None,
            },
            message: (state == PatchState::Failed).then(|| "finit_module: EPERM".to_owned()),
            last_transition_time: Some(at(clock)),
            ..PatchStatus::default()
        };
        match status.patches.iter_mut().find(|p| p.live_patch == lp) {
            Some(existing) => *existing = patch,
            None => status.patches.push(patch),
        }
        status.recount();
    }

    /// The agent reports an empty status (it runs, nothing done yet).
    pub fn agent_started(&mut self, node: &str) {
        let boot = self.nodes[node]
            .status
            .as_ref()
            .unwrap()
            .node_info
            .as_ref()
            .unwrap()
            .boot_id
            .clone();
        let lpn = self.lpns.get_mut(node).expect("LivePatchNode exists");
        lpn.status
            .get_or_insert_with(LivePatchNodeStatus::default)
            .boot_id = Some(boot);
    }

    /// The node reboots: the kubelet reports a new boot ID.
    pub fn reboot(&mut self, node: &str) {
        let info = self
            .nodes
            .get_mut(node)
            .unwrap()
            .status
            .as_mut()
            .unwrap()
            .node_info
            .as_mut()
            .unwrap();
        info.boot_id.push('+');
    }

    pub fn status(&self, lp: &str) -> &graft_crds::LivePatchStatus {
        self.live_patches[lp]
            .status
            .as_ref()
            .expect("status written")
    }

    pub fn condition(&self, lp: &str, type_: &str) -> (String, String) {
        let c = graft_crds::conditions::find_condition(&self.status(lp).conditions, type_)
            .unwrap_or_else(|| panic!("condition {type_}"));
        (c.status.clone(), c.reason.clone())
    }

    pub fn cordoned_by(&self, node: &str) -> Option<String> {
        self.nodes[node]
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CORDONED_BY_ANNOTATION).cloned())
    }

    pub fn unschedulable(&self, node: &str) -> bool {
        self.nodes[node]
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
    }
}
