//! Properties of the planner over random fleets and random agent behaviour:
//! the parallelism bound holds in every reachable step, admissions follow the
//! rollout order, budgets halt, pause blocks admissions, plans do not depend
//! on the order of their inputs, and a fleet of healthy agents always
//! converges.

mod common;

use std::sync::Arc;

use common::*;
use graft_crds::{
    DesiredState, OnStall, PatchState,
    conditions::{TRUE, livepatch as cond, reasons},
};
use graft_operator::plan::{Memory, Plan, World, occupies_slot, plan};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Fleet {
    nodes: Vec<(String, &'static str, bool)>,
    operator_node: Option<usize>,
    max_parallel: IntOrString,
    max_failures: u32,
    paused: bool,
    on_stall: OnStall,
}

fn fleet() -> impl Strategy<Value = Fleet> {
    let node = (
        prop::sample::select(vec!["", "zone-a", "zone-b", "zone-c"]),
        prop::bool::weighted(0.85),
    );
    (
        prop::collection::vec(node, 1..12),
        prop::option::of(0usize..12),
        prop_oneof![
            (1i32..5).prop_map(IntOrString::Int),
            prop::sample::select(vec!["1%", "10%", "34%", "50%", "100%"])
                .prop_map(|p| IntOrString::String(p.to_owned())),
        ],
        0u32..3,
        prop::bool::weighted(0.15),
        prop::sample::select(OnStall::ALL.to_vec()),
    )
        .prop_map(
            |(nodes, operator_node, max_parallel, max_failures, paused, on_stall)| {
                let count = nodes.len();
                Fleet {
                    nodes: nodes
                        .into_iter()
                        .enumerate()
                        .map(|(i, (zone, matches))| (format!("node-{i:02}"), zone, matches))
                        .collect(),
                    operator_node: operator_node.filter(|i| *i < count),
                    max_parallel,
                    max_failures,
                    paused,
                    on_stall,
                }
            },
        )
}

fn build(fleet: &Fleet) -> Cluster {
    let nodes = fleet.nodes.iter().map(|(name, zone, matches)| {
        let n = node(name, zone);
        if *matches {
            n
        } else {
            with_kernel(n, "5.10.0-28-amd64")
        }
    });
    let mut lp = rollout(
        live_patch("fix"),
        fleet.max_parallel.clone(),
        fleet.max_failures,
    );
    lp.spec.rollout.paused = fleet.paused;
    lp.spec.transition.on_stall = fleet.on_stall;
    lp.spec.transition.allow_force = true;
    let mut cluster = Cluster::new(nodes, [lp]);
    cluster.operator_node = fleet.operator_node.map(|i| fleet.nodes[i].0.clone());
    cluster
}

/// Targeted nodes in rollout order, computed independently of the planner.
fn rollout_order(fleet: &Fleet) -> Vec<String> {
    let operator = fleet.operator_node.map(|i| fleet.nodes[i].0.clone());
    let mut targets: Vec<_> = fleet
        .nodes
        .iter()
        .filter(|(_, _, matches)| *matches)
        .map(|(name, zone, _)| (Some(name) == operator.as_ref(), *zone, name.clone()))
        .collect();
    targets.sort();
    targets.into_iter().map(|(_, _, name)| name).collect()
}

fn limit(fleet: &Fleet, targeted: usize) -> usize {
    let cluster = build(fleet);
    cluster.live_patches["fix"]
        .spec
        .rollout
        .max_parallel_nodes(u32::try_from(targeted).unwrap())
        .unwrap() as usize
}

/// The state the planner would trust for the node's entry.
fn state(cluster: &Cluster, node: &str) -> Option<PatchState> {
    let entry = cluster.entry(node, "fix")?;
    let status = cluster.lpns[node]
        .status
        .as_ref()
        .and_then(|s| s.patch("fix"));
    Some(graft_operator::plan::effective_state(entry, status, true))
}

fn occupied(cluster: &Cluster, order: &[String]) -> usize {
    order
        .iter()
        .filter(|n| state(cluster, n).is_some_and(occupies_slot))
        .count()
}

fn failed(cluster: &Cluster, order: &[String]) -> u32 {
    order
        .iter()
        .filter(|n| state(cluster, n) == Some(PatchState::Failed))
        .count() as u32
}

/// One agent move for a node with an entry, chosen by `dice`.
fn agent_move(cluster: &mut Cluster, node: &str, dice: u8) {
    let Some(current) = state(cluster, node) else {
        return;
    };
    let next = match current {
        PatchState::Pending => {
            [PatchState::Pending, PatchState::Loading, PatchState::Failed][dice as usize % 3]
        }
        PatchState::Loading => [
            PatchState::Loading,
            PatchState::Transitioning,
            PatchState::Failed,
            PatchState::NotApplicable,
        ][dice as usize % 4],
        PatchState::Transitioning => [
            PatchState::Transitioning,
            PatchState::Applied,
            PatchState::Stalled,
            PatchState::Failed,
        ][dice as usize % 4],
        PatchState::Stalled => {
            [PatchState::Stalled, PatchState::Applied, PatchState::Failed][dice as usize % 3]
        }
        settled => settled,
    };
    if next != current {
        cluster.report(node, "fix", next);
    }
}

fn shuffled(world: &World, seed: usize) -> World {
    fn rotate<T: Clone>(v: &[T], by: usize) -> Vec<T> {
        let mut v = v.to_vec();
        v.reverse();
        if !v.is_empty() {
            let by = by % v.len();
            v.rotate_left(by);
        }
        v
    }
    World {
        live_patches: rotate(&world.live_patches, seed),
        nodes: rotate(&world.nodes, seed / 3),
        live_patch_nodes: rotate(&world.live_patch_nodes, seed / 7),
        operator_node: world.operator_node.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// In every reachable step: occupied slots never exceed maxParallel,
    /// admissions are a prefix of the rollout order, nothing is admitted while
    /// paused or over budget, and plans are independent of input order.
    #[test]
    fn every_reachable_step_respects_the_rollout_rules(
        fleet in fleet(),
        moves in prop::collection::vec(prop::collection::vec(any::<u8>(), 12), 1..25),
        seed in 0usize..1000,
    ) {
        let mut cluster = build(&fleet);
        let order = rollout_order(&fleet);
        let limit = limit(&fleet, order.len());
        for dice in moves {
            let over_budget = failed(&cluster, &order) > fleet.max_failures;
            let admitted_before: Vec<bool> = order.iter().map(|n| cluster.admitted(n, "fix")).collect();

            let world = cluster.world();
            let now = at(cluster.clock);
            let plan: Plan = plan(&world, &cluster.memory, &now);
            let again = graft_operator::plan::plan(&shuffled(&world, seed), &cluster.memory, &now);
            prop_assert_eq!(&plan, &again, "the plan depends on input order");
            cluster.apply(&plan);

            let admitted: Vec<bool> = order.iter().map(|n| cluster.admitted(n, "fix")).collect();
            prop_assert!(occupied(&cluster, &order) <= limit,
                "{} slots occupied, maxParallel allows {}", occupied(&cluster, &order), limit);
            // Admissions form a prefix of the rollout order.
            let first_gap = admitted.iter().position(|a| !a).unwrap_or(admitted.len());
            prop_assert!(admitted[first_gap..].iter().all(|a| !a), "admitted out of order: {:?}", admitted);
            // Nobody is un-admitted.
            for (before, after) in admitted_before.iter().zip(&admitted) {
                prop_assert!(!before || *after);
            }
            if fleet.paused || over_budget {
                prop_assert_eq!(&admitted, &admitted_before, "admitted while paused or halted");
            }
            if over_budget {
                let status = cluster.status("fix");
                let paused = graft_crds::conditions::find_condition(&status.conditions, cond::PAUSED).unwrap();
                prop_assert_eq!(paused.status.as_str(), TRUE);
                prop_assert_eq!(paused.reason.as_str(), reasons::FAILURE_BUDGET_EXCEEDED);
            }
            // Counts add up.
            let status = cluster.status("fix");
            let agent_not_applicable = order.iter().filter(|n| state(&cluster, n) == Some(PatchState::NotApplicable)).count();
            prop_assert_eq!(status.targeted as usize, order.len() - agent_not_applicable);
            prop_assert_eq!(status.targeted,
                status.applied + status.transitioning + status.stalled + status.failed + status.pending + status.reverted);
            prop_assert_eq!(status.not_applicable as usize, fleet.nodes.len() - order.len() + agent_not_applicable);
            // Cordons only for Stalled nodes with a cordoning policy.
            for name in cluster.nodes.keys() {
                if cluster.cordoned_by(name).is_some() {
                    prop_assert!(fleet.on_stall.cordons());
                    prop_assert_eq!(state(&cluster, name), Some(PatchState::Stalled));
                }
            }

            cluster.clock += 1;
            for (i, name) in order.iter().enumerate() {
                agent_move(&mut cluster, name, dice[i % dice.len()]);
            }
        }
    }

    /// Healthy agents (every transition finishes) always converge: every
    /// targeted node Applied, Available, nothing cordoned, and then quiet.
    #[test]
    fn a_healthy_fleet_converges(fleet in fleet()) {
        let fleet = Fleet { paused: false, ..fleet };
        let mut cluster = build(&fleet);
        let order = rollout_order(&fleet);
        for _ in 0..(order.len() * 2 + 4) {
            cluster.step();
            for name in &order {
                if state(&cluster, name).is_some_and(|s| s != PatchState::Applied) {
                    cluster.report(name, "fix", PatchState::Applied);
                }
            }
        }
        cluster.settle(4);
        let status = cluster.status("fix");
        prop_assert_eq!(status.applied as usize, order.len());
        let available = graft_crds::conditions::find_condition(&status.conditions, cond::AVAILABLE).unwrap();
        prop_assert_eq!(available.status.as_str(), TRUE);
        prop_assert!(cluster.nodes.keys().all(|n| cluster.cordoned_by(n).is_none()));
    }

    /// Deleting a LivePatch at any point of a rollout ends with every entry
    /// gone and the LivePatch released, once the agents have reverted.
    #[test]
    fn deletion_always_completes_once_agents_revert(
        fleet in fleet(),
        steps_before in 0usize..6,
    ) {
        let mut cluster = build(&fleet);
        for _ in 0..steps_before {
            cluster.step();
            for name in cluster.nodes.keys().cloned().collect::<Vec<_>>() {
                if state(&cluster, &name).is_some() {
                    cluster.report(&name, "fix", PatchState::Applied);
                }
            }
        }
        cluster.delete("fix");
        for _ in 0..4 {
            if !cluster.live_patches.contains_key("fix") {
                break;
            }
            cluster.step();
            for name in cluster.nodes.keys().cloned().collect::<Vec<_>>() {
                if let Some(entry) = cluster.entry(&name, "fix") {
                    prop_assert_eq!(entry.desired_state, DesiredState::Disabled);
                    cluster.report(&name, "fix", PatchState::Reverted);
                }
            }
        }
        prop_assert!(!cluster.live_patches.contains_key("fix"));
        prop_assert!(cluster.lpns.values().all(|l| l.spec.patches.is_empty()));
    }
}

#[test]
fn the_first_plan_of_an_empty_memory_is_deterministic() {
    let cluster = build(&Fleet {
        nodes: vec![("b".into(), "z", true), ("a".into(), "z", true)],
        operator_node: None,
        max_parallel: IntOrString::Int(1),
        max_failures: 0,
        paused: false,
        on_stall: OnStall::Cordon,
    });
    let world = cluster.world();
    let reversed = World {
        nodes: world.nodes.iter().rev().map(Arc::clone).collect(),
        ..world.clone()
    };
    assert_eq!(
        plan(&world, &Memory::default(), &at(1)),
        plan(&reversed, &Memory::default(), &at(1))
    );
}
