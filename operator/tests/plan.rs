//! The planner, scenario by scenario: selection, pacing, budgets, pause,
//! Disabled, deletion, cordons, trust in agent reports, Events.

mod common;

use common::*;
use graft_crds::{
    DesiredState, FINALIZER, OnStall, PatchState,
    conditions::{FALSE, TRUE, livepatch as cond, reasons},
};
use graft_operator::plan::{CordonAction, PlannedEvent, Severity, TargetKind, reason};
use k8s_openapi::apimachinery::pkg::{
    apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
    util::intstr::IntOrString,
};

fn admitted(cluster: &Cluster, lp: &str) -> Vec<String> {
    cluster
        .nodes
        .keys()
        .filter(|n| cluster.admitted(n, lp))
        .cloned()
        .collect()
}

fn events_with<'a>(events: &'a [PlannedEvent], reason: &str) -> Vec<&'a PlannedEvent> {
    events.iter().filter(|e| e.reason == reason).collect()
}

fn five_nodes() -> Vec<k8s_openapi::api::core::v1::Node> {
    vec![
        node("n-a2", "zone-a"),
        node("n-b1", "zone-b"),
        node("n-a1", "zone-a"),
        node("n-b2", "zone-b"),
        node("n-c1", "zone-c"),
    ]
}

#[test]
fn every_linux_node_gets_a_livepatchnode_owned_by_it() {
    let mut windows = node("win", "");
    windows.metadata.labels = Some([("kubernetes.io/os".into(), "windows".into())].into());
    windows
        .status
        .as_mut()
        .unwrap()
        .node_info
        .as_mut()
        .unwrap()
        .operating_system = "windows".into();
    let mut cluster = Cluster::new([node("n1", ""), node("n2", ""), windows], []);
    let plan = cluster.step();
    let names: Vec<_> = plan.node_specs.iter().map(|w| w.node.as_str()).collect();
    assert_eq!(names, ["n1", "n2"]);
    assert!(
        plan.node_specs
            .iter()
            .all(|w| !w.exists && w.spec.patches.is_empty())
    );
    assert_eq!(plan.node_specs[0].node_uid, "uid-n1");
    // Nothing changes: nothing is written again.
    assert!(cluster.step().is_quiet());
}

#[test]
fn admits_at_most_max_parallel_nodes_in_zone_then_name_order() {
    let lp = rollout(live_patch("fix"), IntOrString::Int(2), 0);
    let mut cluster = Cluster::new(five_nodes(), [lp]);
    cluster.step();
    assert_eq!(admitted(&cluster, "fix"), ["n-a1", "n-a2"]);
    // Nothing settled yet: no more admissions, however often we plan.
    cluster.step();
    cluster.step();
    assert_eq!(admitted(&cluster, "fix"), ["n-a1", "n-a2"]);
    let status = cluster.status("fix");
    assert_eq!((status.targeted, status.pending), (5, 5));
}

#[test]
fn applied_nodes_free_their_slot_for_the_next_in_order() {
    let lp = rollout(live_patch("fix"), IntOrString::Int(2), 0);
    let mut cluster = Cluster::new(five_nodes(), [lp]);
    cluster.step();
    cluster.report("n-a1", "fix", PatchState::Transitioning);
    cluster.report("n-a2", "fix", PatchState::Applied);
    cluster.step();
    assert_eq!(admitted(&cluster, "fix"), ["n-a1", "n-a2", "n-b1"]);
    cluster.report("n-a1", "fix", PatchState::Applied);
    cluster.report("n-b1", "fix", PatchState::Applied);
    cluster.step();
    assert_eq!(admitted(&cluster, "fix").len(), 5);
    for n in ["n-b2", "n-c1"] {
        cluster.report(n, "fix", PatchState::Applied);
    }
    cluster.settle(5);
    let status = cluster.status("fix");
    assert_eq!((status.applied, status.targeted), (5, 5));
    assert_eq!(
        cluster.condition("fix", cond::AVAILABLE),
        (TRUE.into(), reasons::COMPLETE.into())
    );
    assert_eq!(
        cluster.condition("fix", cond::PROGRESSING),
        (FALSE.into(), reasons::COMPLETE.into())
    );
    assert_eq!(cluster.condition("fix", cond::DEGRADED).0, FALSE);
}

#[test]
fn the_operators_own_node_is_rolled_out_last() {
    let lp = rollout(live_patch("fix"), IntOrString::Int(1), 0);
    let mut cluster = Cluster::new([node("a", ""), node("b", ""), node("c", "")], [lp]);
    cluster.operator_node = Some("a".into());
    cluster.step();
    assert_eq!(admitted(&cluster, "fix"), ["b"]);
    cluster.report("b", "fix", PatchState::Applied);
    cluster.step();
    assert_eq!(admitted(&cluster, "fix"), ["b", "c"]);
    cluster.report("c", "fix", PatchState::Applied);
    cluster.step();
    assert_eq!(admitted(&cluster, "fix"), ["a", "b", "c"]);
}

#[test]
fn percent_max_parallel_rounds_down_with_a_minimum_of_one() {
    let nodes: Vec<_> = (0..25).map(|i| node(&format!("n{i:02}"), "")).collect();
    let lp = rollout(live_patch("fix"), IntOrString::String("10%".into()), 0);
    let mut cluster = Cluster::new(nodes.clone(), [lp]);
    cluster.step();
    assert_eq!(admitted(&cluster, "fix"), ["n00", "n01"]);

    let lp = rollout(live_patch("fix"), IntOrString::String("10%".into()), 0);
    let mut small = Cluster::new(nodes.into_iter().take(5), [lp]);
    small.step();
    assert_eq!(admitted(&small, "fix"), ["n00"]);
}

#[test]
fn selected_nodes_whose_kernel_matches_nothing_are_not_applicable() {
    let nodes = [
        node("n1", ""),
        with_kernel(node("n2", ""), "5.10.0-28-amd64"),
        with_kernel(node("n3", ""), ""),
    ];
    let lp = rollout(live_patch("fix"), IntOrString::Int(10), 0);
    let mut cluster = Cluster::new(nodes, [lp]);
    cluster.step();
    assert_eq!(admitted(&cluster, "fix"), ["n1"]);
    let status = cluster.status("fix");
    assert_eq!((status.targeted, status.not_applicable), (1, 2));
    cluster.report("n1", "fix", PatchState::Applied);
    cluster.step();
    assert_eq!(cluster.condition("fix", cond::AVAILABLE).0, TRUE);
    let summary = &cluster.plan().summaries["fix"];
    assert_eq!(summary.nodes[&PatchState::NotApplicable], 2);
    assert_eq!(summary.nodes[&PatchState::Applied], 1);
    assert_eq!(summary.nodes.len(), PatchState::ALL.len());
}

#[test]
fn a_regex_picks_the_module_for_a_kernel_family_and_the_first_match_wins() {
    let mut lp = rollout(live_patch("fix"), IntOrString::Int(10), 0);
    let mut family = module_exact("x", Some(SHA2));
    family.kernel_release = None;
    family.kernel_release_regex = Some(r"6\.1\.0-\d+-amd64".into());
    lp.spec.modules = vec![module_exact(KERNEL, Some(SHA)), family];
    let nodes = [
        node("exact", ""),
        with_kernel(node("family", ""), "6.1.0-20-amd64"),
        with_kernel(node("other", ""), "6.1.0-20-arm64"),
    ];
    let mut cluster = Cluster::new(nodes, [lp]);
    cluster.step();
    assert_eq!(
        cluster
            .entry("exact", "fix")
            .unwrap()
            .module
            .sha256
            .as_deref(),
        Some(SHA)
    );
    let family = cluster.entry("family", "fix").unwrap();
    assert_eq!(family.module.sha256.as_deref(), Some(SHA2));
    assert_eq!(family.module.kernel_release, "6.1.0-20-amd64");
    assert!(cluster.entry("other", "fix").is_none());
}

#[test]
fn a_regex_that_does_not_compile_degrades_the_livepatch() {
    let mut lp = live_patch("fix");
    let mut bad = module_exact("x", Some(SHA2));
    bad.kernel_release = None;
    bad.kernel_release_regex = Some("6.1.(".into());
    lp.spec.modules.push(bad);
    let mut cluster = Cluster::new([node("n1", "")], [lp]);
    cluster.step();
    assert_eq!(
        cluster.condition("fix", cond::DEGRADED),
        (TRUE.into(), reasons::INVALID_KERNEL_RELEASE_REGEX.into())
    );
    // The valid entry still works.
    assert!(cluster.admitted("n1", "fix"));
}

#[test]
fn the_node_selector_limits_the_targets() {
    let nodes = [
        with_label(node("web1", ""), "pool", "web"),
        with_label(node("db1", ""), "pool", "db"),
        node("plain", ""),
    ];
    let mut lp = rollout(live_patch("fix"), IntOrString::Int(10), 0);
    lp.spec.node_selector = Some(LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "pool".into(),
            operator: "NotIn".into(),
            values: Some(vec!["db".into()]),
        }]),
    });
    let mut cluster = Cluster::new(nodes, [lp]);
    cluster.step();
    assert_eq!(admitted(&cluster, "fix"), ["plain", "web1"]);
    assert_eq!(cluster.status("fix").not_applicable, 0);
}

#[test]
fn an_invalid_selector_selects_nothing_and_degrades() {
    let mut lp = live_patch("fix");
    lp.spec.node_selector = Some(LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "pool".into(),
            operator: "Gt".into(),
            values: Some(vec!["1".into()]),
        }]),
    });
    let mut cluster = Cluster::new([node("n1", "")], [lp]);
    cluster.step();
    assert!(admitted(&cluster, "fix").is_empty());
    assert_eq!(
        cluster.condition("fix", cond::DEGRADED).1,
        "InvalidNodeSelector"
    );
}

#[test]
fn a_status_for_another_generation_or_digest_counts_as_pending() {
    let mut cluster = Cluster::new([node("n1", "")], [live_patch("fix")]);
    cluster.step();
    cluster.report("n1", "fix", PatchState::Applied);
    // The agent's report is for generation 0.
    cluster
        .lpns
        .get_mut("n1")
        .unwrap()
        .status
        .as_mut()
        .unwrap()
        .patches[0]
        .live_patch_generation = Some(0);
    cluster.step();
    assert_eq!(cluster.status("fix").pending, 1);
    cluster.report("n1", "fix", PatchState::Applied);
    cluster
        .lpns
        .get_mut("n1")
        .unwrap()
        .status
        .as_mut()
        .unwrap()
        .patches[0]
        .sha256 = Some(SHA2.into());
    cluster.step();
    assert_eq!(cluster.status("fix").pending, 1);
    cluster.report("n1", "fix", PatchState::Applied);
    cluster.step();
    assert_eq!(cluster.status("fix").applied, 1);
}

#[test]
fn a_new_boot_id_resets_the_node_until_its_agent_reports_again() {
    let mut cluster = Cluster::new([node("n1", "")], [live_patch("fix")]);
    cluster.step();
    cluster.report("n1", "fix", PatchState::Applied);
    cluster.step();
    assert_eq!(cluster.status("fix").applied, 1);
    cluster.reboot("n1");
    cluster.step();
    assert_eq!(cluster.status("fix").pending, 1);
    cluster.report("n1", "fix", PatchState::Applied);
    cluster.step();
    assert_eq!(cluster.status("fix").applied, 1);
}

#[test]
fn a_simulated_kernel_is_trusted_whatever_the_kubelets_boot_id() {
    // A simulated agent on a real node reports the simulation's boot ID, not the kubelet's.
    let mut cluster = Cluster::new([node("n1", "")], [live_patch("fix")]);
    cluster.step();
    cluster.report("n1", "fix", PatchState::Applied);
    let status = cluster.lpns.get_mut("n1").unwrap().status.as_mut().unwrap();
    status.boot_id = Some("simulated-boot".into());
    status.simulated = true;
    cluster.step();
    assert_eq!(cluster.status("fix").applied, 1);
}

#[test]
fn failed_nodes_hold_their_rollout_slot() {
    let lp = rollout(live_patch("fix"), IntOrString::Int(2), 5);
    let mut cluster = Cluster::new(five_nodes(), [lp]);
    cluster.step();
    cluster.report("n-a1", "fix", PatchState::Failed);
    cluster.report("n-a2", "fix", PatchState::Applied);
    cluster.step();
    // One slot held by the failed node, one free: n-b1 only.
    assert_eq!(admitted(&cluster, "fix"), ["n-a1", "n-a2", "n-b1"]);
    cluster.report("n-b1", "fix", PatchState::Applied);
    cluster.step();
    assert_eq!(admitted(&cluster, "fix"), ["n-a1", "n-a2", "n-b1", "n-b2"]);
}

#[test]
fn exceeding_the_failure_budget_halts_the_rollout_with_one_event() {
    let lp = rollout(live_patch("fix"), IntOrString::Int(3), 1);
    let mut cluster = Cluster::new(five_nodes(), [lp]);
    cluster.step();
    cluster.report("n-a1", "fix", PatchState::Failed);
    cluster.step();
    // One failure is within the budget.
    assert_eq!(cluster.condition("fix", cond::PAUSED).0, FALSE);
    cluster.report("n-a2", "fix", PatchState::Failed);
    cluster.report("n-b1", "fix", PatchState::Applied);
    let plan = cluster.step();
    assert_eq!(
        cluster.condition("fix", cond::PAUSED),
        (TRUE.into(), reasons::FAILURE_BUDGET_EXCEEDED.into())
    );
    assert_eq!(
        cluster.condition("fix", cond::DEGRADED),
        (TRUE.into(), reasons::NODE_FAILED.into())
    );
    let halted = events_with(&plan.events, reason::ROLLOUT_HALTED);
    assert_eq!(halted.len(), 1);
    assert_eq!(halted[0].severity, Severity::Warning);
    assert_eq!(halted[0].regarding.kind, TargetKind::LivePatch);
    assert!(halted[0].note.contains("n-a1, n-a2"), "{}", halted[0].note);
    assert!(plan.summaries["fix"].halted);
    // n-b1 applied, but nothing new starts; the Event is not repeated.
    assert_eq!(admitted(&cluster, "fix"), ["n-a1", "n-a2", "n-b1"]);
    let plan = cluster.step();
    assert!(events_with(&plan.events, reason::ROLLOUT_HALTED).is_empty());
    assert_eq!(admitted(&cluster, "fix"), ["n-a1", "n-a2", "n-b1"]);
    let status = cluster.status("fix");
    assert_eq!(status.nodes_needing_attention.len(), 2);
    assert_eq!(status.nodes_needing_attention[0].node, "n-a1");
    assert_eq!(
        status.nodes_needing_attention[0].reason.as_deref(),
        Some("ModuleLoadFailed")
    );
    assert_eq!(
        cluster.condition("fix", cond::PROGRESSING),
        (FALSE.into(), reasons::FAILURE_BUDGET_EXCEEDED.into())
    );
}

#[test]
fn editing_the_livepatch_retries_failed_nodes() {
    let lp = rollout(live_patch("fix"), IntOrString::Int(1), 0);
    let mut cluster = Cluster::new([node("n1", ""), node("n2", "")], [lp]);
    cluster.step();
    cluster.report("n1", "fix", PatchState::Failed);
    cluster.step();
    assert_eq!(
        cluster.condition("fix", cond::PAUSED).1,
        reasons::FAILURE_BUDGET_EXCEEDED
    );
    cluster.edit("fix", |spec| spec.rollout.max_failures = 0);
    cluster.step();
    // The failed node gets the new generation (its agent tries again) and
    // keeps its slot; the halt is lifted but n2 waits for that slot.
    assert_eq!(
        cluster.entry("n1", "fix").unwrap().live_patch_generation,
        Some(2)
    );
    assert_eq!(admitted(&cluster, "fix"), ["n1"]);
    assert_eq!(cluster.condition("fix", cond::PAUSED).0, FALSE);
    cluster.report("n1", "fix", PatchState::Applied);
    cluster.step();
    assert_eq!(admitted(&cluster, "fix"), ["n1", "n2"]);
}

#[test]
fn a_paused_rollout_starts_no_node_but_lets_running_ones_finish() {
    let lp = rollout(live_patch("fix"), IntOrString::Int(1), 0);
    let mut cluster = Cluster::new([node("n1", ""), node("n2", "")], [lp]);
    cluster.step();
    cluster.edit("fix", |spec| spec.rollout.paused = true);
    cluster.step();
    // An edit that changes no entry content leaves the entry's generation alone.
    assert_eq!(
        cluster.entry("n1", "fix").unwrap().live_patch_generation,
        Some(1)
    );
    cluster.report("n1", "fix", PatchState::Applied);
    let plan = cluster.step();
    assert_eq!(admitted(&cluster, "fix"), ["n1"]);
    assert_eq!(
        cluster.condition("fix", cond::PAUSED),
        (TRUE.into(), reasons::PAUSED_BY_USER.into())
    );
    assert_eq!(
        cluster.condition("fix", cond::PROGRESSING),
        (FALSE.into(), reasons::PAUSED_BY_USER.into())
    );
    assert!(plan.summaries["fix"].paused);
    cluster.edit("fix", |spec| spec.rollout.paused = false);
    cluster.step();
    assert_eq!(admitted(&cluster, "fix"), ["n1", "n2"]);
}

#[test]
fn a_new_module_is_rolled_out_at_the_same_pace() {
    let lp = rollout(live_patch("fix"), IntOrString::Int(1), 0);
    let mut cluster = Cluster::new([node("n1", ""), node("n2", "")], [lp]);
    for n in ["n1", "n2"] {
        cluster.step();
        cluster.report(n, "fix", PatchState::Applied);
    }
    cluster.step();
    assert_eq!(cluster.status("fix").applied, 2);
    cluster.edit("fix", |spec| spec.modules[0].sha256 = Some(SHA2.into()));
    cluster.step();
    let sha = |c: &Cluster, n: &str| c.entry(n, "fix").unwrap().module.sha256.clone().unwrap();
    assert_eq!(
        (sha(&cluster, "n1"), sha(&cluster, "n2")),
        (SHA2.into(), SHA.into())
    );
    assert_eq!(
        cluster.entry("n1", "fix").unwrap().live_patch_generation,
        Some(2)
    );
    // n2 still runs the old module: it counts as pending, not applied.
    assert_eq!(
        (cluster.status("fix").applied, cluster.status("fix").pending),
        (0, 2)
    );
    cluster.report("n1", "fix", PatchState::Applied);
    cluster.step();
    assert_eq!(sha(&cluster, "n2"), SHA2);
}

#[test]
fn disabled_reverts_every_node_that_has_the_entry_at_once() {
    let lp = rollout(live_patch("fix"), IntOrString::Int(2), 0);
    let mut cluster = Cluster::new([node("n1", ""), node("n2", ""), node("n3", "")], [lp]);
    cluster.step();
    cluster.report("n1", "fix", PatchState::Applied);
    cluster.report("n2", "fix", PatchState::Transitioning);
    cluster.edit("fix", |spec| spec.desired_state = DesiredState::Disabled);
    cluster.step();
    for n in ["n1", "n2"] {
        let entry = cluster.entry(n, "fix").unwrap();
        assert_eq!(entry.desired_state, DesiredState::Disabled);
        assert_eq!(entry.live_patch_generation, Some(2));
    }
    assert!(
        cluster.entry("n3", "fix").is_none(),
        "never admitted, nothing to revert"
    );
    assert_eq!(
        cluster.condition("fix", cond::PROGRESSING),
        (TRUE.into(), reasons::REVERTING.into())
    );
    cluster.report("n1", "fix", PatchState::Reverted);
    cluster.report("n2", "fix", PatchState::Reverted);
    let plan = cluster.step();
    assert_eq!(
        events_with(&plan.events, reason::REVERTED).len(),
        4,
        "LivePatch and Node, per node"
    );
    assert_eq!(cluster.status("fix").reverted, 3);
    assert_eq!(
        cluster.condition("fix", cond::AVAILABLE),
        (TRUE.into(), reasons::COMPLETE.into())
    );
    // Entries stay (Disabled) while the LivePatch exists.
    assert!(cluster.entry("n1", "fix").is_some());
}

#[test]
fn the_finalizer_is_added_before_any_node_is_admitted() {
    let mut lp = live_patch("fix");
    lp.metadata.finalizers = None;
    let mut cluster = Cluster::new([node("n1", "")], [lp]);
    let plan = cluster.step();
    assert_eq!(plan.finalizers.len(), 1);
    assert!(plan.finalizers[0].add);
    assert_eq!(plan.finalizers[0].finalizers, [FINALIZER]);
    assert_eq!(plan.finalizers[0].resource_version.as_deref(), Some("1"));
    assert!(!cluster.admitted("n1", "fix"));
    cluster.step();
    assert!(cluster.admitted("n1", "fix"));
}

#[test]
fn deleting_reverts_everywhere_then_drops_entries_and_the_finalizer() {
    let lp = rollout(live_patch("fix"), IntOrString::Int(5), 0);
    let other = rollout(live_patch("other"), IntOrString::Int(5), 0);
    let mut cluster = Cluster::new([node("n1", ""), node("n2", "")], [lp, other]);
    cluster.step();
    for n in ["n1", "n2"] {
        cluster.agent_started(n);
        cluster.report(n, "fix", PatchState::Applied);
        cluster.report(n, "other", PatchState::Applied);
    }
    cluster.step();
    cluster.delete("fix");
    let plan = cluster.step();
    assert!(plan.finalizers.is_empty());
    for n in ["n1", "n2"] {
        assert_eq!(
            cluster.entry(n, "fix").unwrap().desired_state,
            DesiredState::Disabled
        );
    }
    cluster.report("n1", "fix", PatchState::Reverted);
    let plan = cluster.step();
    assert!(plan.finalizers.is_empty(), "n2 has not reverted yet");
    cluster.report("n2", "fix", PatchState::NotApplicable);
    let plan = cluster.step();
    assert_eq!(plan.finalizers.len(), 1);
    assert!(!plan.finalizers[0].add);
    assert!(plan.finalizers[0].finalizers.is_empty());
    assert!(plan.statuses.iter().all(|s| s.live_patch != "fix"));
    assert!(!cluster.live_patches.contains_key("fix"));
    for n in ["n1", "n2"] {
        assert!(cluster.entry(n, "fix").is_none());
        assert!(cluster.admitted(n, "other"), "other patches stay");
    }
}

#[test]
fn a_node_that_left_the_cluster_does_not_block_deletion() {
    let mut cluster = Cluster::new(
        [node("n1", ""), node("gone", "")],
        [rollout(live_patch("fix"), IntOrString::Int(5), 0)],
    );
    cluster.step();
    cluster.report("n1", "fix", PatchState::Applied);
    cluster.report("gone", "fix", PatchState::Applied);
    cluster.step();
    cluster.nodes.remove("gone"); // its LivePatchNode lingers until garbage collection
    cluster.delete("fix");
    cluster.step();
    cluster.report("n1", "fix", PatchState::Reverted);
    let plan = cluster.step();
    assert_eq!(plan.finalizers.len(), 1);
    assert!(
        plan.node_specs.iter().all(|w| w.node != "gone"),
        "a gone node's object is not written"
    );
}

#[test]
fn a_node_without_any_agent_report_does_not_block_deletion() {
    let mut cluster = Cluster::new([node("n1", "")], [live_patch("fix")]);
    cluster.step();
    cluster.delete("fix");
    let plan = cluster.step();
    assert_eq!(plan.finalizers.len(), 1);
    assert!(cluster.entry("n1", "fix").is_none());
}

#[test]
fn a_deselected_node_is_reverted_then_its_entry_dropped() {
    let mut lp = rollout(live_patch("fix"), IntOrString::Int(5), 0);
    lp.spec.node_selector = Some(LabelSelector {
        match_labels: Some([("pool".to_owned(), "web".to_owned())].into()),
        match_expressions: None,
    });
    let mut cluster = Cluster::new([with_label(node("n1", ""), "pool", "web")], [lp]);
    cluster.step();
    cluster.report("n1", "fix", PatchState::Applied);
    cluster.step();
    cluster.nodes.insert(
        "n1".into(),
        with_label(cluster.nodes["n1"].clone(), "pool", "db"),
    );
    cluster.step();
    assert_eq!(
        cluster.entry("n1", "fix").unwrap().desired_state,
        DesiredState::Disabled
    );
    assert_eq!(cluster.status("fix").targeted, 0);
    cluster.report("n1", "fix", PatchState::Reverted);
    let plan = cluster.step();
    assert!(cluster.entry("n1", "fix").is_none());
    assert_eq!(events_with(&plan.events, reason::REVERTED).len(), 2);
}

#[test]
fn entries_of_a_livepatch_that_is_gone_are_reverted_then_dropped() {
    let mut cluster = Cluster::new([node("n1", "")], [live_patch("fix")]);
    cluster.step();
    cluster.report("n1", "fix", PatchState::Applied);
    cluster.step();
    cluster.live_patches.clear(); // deleted with its finalizer removed by hand
    cluster.step();
    assert_eq!(
        cluster.entry("n1", "fix").unwrap().desired_state,
        DesiredState::Disabled
    );
    cluster.report("n1", "fix", PatchState::Reverted);
    cluster.step();
    assert!(cluster.entry("n1", "fix").is_none());
}

fn stalled_cluster(
    policy: OnStall,
    uncordon: bool,
    node_state: k8s_openapi::api::core::v1::Node,
) -> Cluster {
    let lp = on_stall(live_patch("fix"), policy, uncordon);
    let mut cluster = Cluster::new([node_state], [lp]);
    cluster.step();
    cluster.report("n1", "fix", PatchState::Stalled);
    cluster
}

#[test]
fn stalled_transition_cordons_node_with_our_annotation() {
    let mut cluster = stalled_cluster(OnStall::Cordon, true, node("n1", ""));
    let plan = cluster.step();
    assert_eq!(plan.cordons.len(), 1);
    let change = &plan.cordons[0];
    assert_eq!(change.action, CordonAction::Cordon);
    assert_eq!(change.cordoned_by.as_deref(), Some("fix"));
    assert_eq!(change.resource_version.as_deref(), Some("1"));
    let reasons_: Vec<_> = change
        .events
        .iter()
        .map(|e| (e.regarding.kind, e.reason))
        .collect();
    assert_eq!(
        reasons_,
        [
            (TargetKind::Node, reason::CORDONED),
            (TargetKind::LivePatch, reason::CORDONED)
        ]
    );
    let stalled = events_with(&plan.events, reason::STALLED);
    assert_eq!(stalled.len(), 2);
    assert!(stalled.iter().all(|e| e.severity == Severity::Warning));
    assert!(cluster.unschedulable("n1"));
    assert_eq!(cluster.cordoned_by("n1").as_deref(), Some("fix"));
    assert_eq!(plan.summaries["fix"].cordoned, 1);
    let attention = &cluster.status("fix").nodes_needing_attention[0];
    assert!(attention.cordoned);
    assert_eq!(attention.state, PatchState::Stalled);
    assert_eq!(
        cluster.condition("fix", cond::DEGRADED).1,
        reasons::TRANSITION_STALLED
    );
    // Stable: no second cordon.
    assert!(cluster.step().cordons.is_empty());
}

#[test]
fn a_node_someone_else_cordoned_is_never_touched() {
    let mut cluster = stalled_cluster(OnStall::Cordon, true, cordoned(node("n1", ""), None));
    let plan = cluster.step();
    assert!(plan.cordons.is_empty());
    assert_eq!(cluster.cordoned_by("n1"), None);
    assert_eq!(plan.summaries["fix"].cordoned, 0);
    cluster.report("n1", "fix", PatchState::Applied);
    let plan = cluster.step();
    assert!(
        plan.cordons.is_empty(),
        "no uncordon of a node we did not cordon"
    );
    assert!(cluster.unschedulable("n1"));
}

#[test]
fn a_recovered_node_is_uncordoned() {
    let mut cluster = stalled_cluster(OnStall::Cordon, true, node("n1", ""));
    cluster.step();
    cluster.report("n1", "fix", PatchState::Applied);
    let plan = cluster.step();
    assert_eq!(plan.cordons.len(), 1);
    assert_eq!(plan.cordons[0].action, CordonAction::Uncordon);
    assert_eq!(plan.cordons[0].events[0].reason, reason::UNCORDONED);
    assert!(!cluster.unschedulable("n1"));
    assert_eq!(cluster.cordoned_by("n1"), None);
    assert_eq!(plan.summaries["fix"].cordoned, 0);
    assert_eq!(events_with(&plan.events, reason::APPLIED).len(), 2);
}

#[test]
fn uncordon_on_recovery_false_keeps_the_node_cordoned() {
    let mut cluster = stalled_cluster(OnStall::Cordon, false, node("n1", ""));
    cluster.step();
    cluster.report("n1", "fix", PatchState::Applied);
    let plan = cluster.step();
    assert!(plan.cordons.is_empty());
    assert!(cluster.unschedulable("n1"));
    assert_eq!(plan.summaries["fix"].cordoned, 1);
}

#[test]
fn a_revert_policy_does_not_cordon_but_cordon_and_revert_does() {
    let mut cluster = stalled_cluster(OnStall::Revert, true, node("n1", ""));
    assert!(cluster.step().cordons.is_empty());
    let mut cluster = stalled_cluster(OnStall::CordonAndRevert, true, node("n1", ""));
    assert_eq!(cluster.step().cordons[0].action, CordonAction::Cordon);
}

#[test]
fn a_node_we_cordoned_that_someone_uncordoned_is_cordoned_again_while_stalled() {
    let mut cluster = stalled_cluster(OnStall::Cordon, true, node("n1", ""));
    cluster.step();
    cluster
        .nodes
        .get_mut("n1")
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .unschedulable = None;
    let plan = cluster.step();
    assert_eq!(plan.cordons[0].action, CordonAction::Cordon);
}

#[test]
fn the_annotation_names_every_stalled_patch() {
    let mut cluster = Cluster::new([node("n1", "")], [live_patch("a"), live_patch("b")]);
    cluster.step();
    cluster.report("n1", "a", PatchState::Stalled);
    cluster.step();
    assert_eq!(cluster.cordoned_by("n1").as_deref(), Some("a"));
    cluster.report("n1", "b", PatchState::Stalled);
    let plan = cluster.step();
    assert_eq!(plan.cordons[0].action, CordonAction::Remark);
    assert_eq!(cluster.cordoned_by("n1").as_deref(), Some("a,b"));
    cluster.report("n1", "a", PatchState::Applied);
    cluster.step();
    assert_eq!(cluster.cordoned_by("n1").as_deref(), Some("b"));
    assert!(cluster.unschedulable("n1"));
}

#[test]
fn events_are_emitted_once_per_state_change_and_not_on_the_first_run() {
    let mut cluster = Cluster::new([node("n1", "")], [live_patch("fix")]);
    cluster.step();
    cluster.report("n1", "fix", PatchState::Applied);
    let plan = cluster.step();
    let applied = events_with(&plan.events, reason::APPLIED);
    assert_eq!(applied.len(), 2);
    assert_eq!(applied[0].regarding.kind, TargetKind::LivePatch);
    assert_eq!(applied[0].regarding.uid.as_deref(), Some("uid-lp-fix"));
    assert_eq!(applied[0].related.as_ref().unwrap().name, "n1");
    assert_eq!(applied[1].regarding.kind, TargetKind::Node);
    assert_eq!(applied[1].regarding.uid.as_deref(), Some("uid-n1"));
    assert!(cluster.step().events.is_empty());

    // A restarted operator (empty memory) finds it Applied: no Event.
    cluster.memory = Default::default();
    assert!(cluster.step().events.is_empty());
}

#[test]
fn failures_emit_warning_events_with_the_agents_reason() {
    let mut cluster = Cluster::new(
        [node("n1", "")],
        [rollout(live_patch("fix"), IntOrString::Int(1), 3)],
    );
    cluster.step();
    cluster.report("n1", "fix", PatchState::Failed);
    let plan = cluster.step();
    let failed = events_with(&plan.events, reason::FAILED);
    assert_eq!(failed.len(), 2);
    assert!(
        failed[0].note.contains("ModuleLoadFailed"),
        "{}",
        failed[0].note
    );
    assert!(failed[0].note.contains("EPERM"), "{}", failed[0].note);
}

#[test]
fn nodes_needing_attention_are_bounded() {
    let nodes: Vec<_> = (0..30).map(|i| node(&format!("n{i:02}"), "")).collect();
    let lp = rollout(live_patch("fix"), IntOrString::Int(30), 100);
    let mut cluster = Cluster::new(nodes, [lp]);
    cluster.step();
    for i in 0..30 {
        cluster.report(&format!("n{i:02}"), "fix", PatchState::Failed);
    }
    cluster.step();
    let status = cluster.status("fix");
    assert_eq!(status.failed, 30);
    assert_eq!(
        status.nodes_needing_attention.len(),
        graft_crds::MAX_NODES_NEEDING_ATTENTION
    );
    assert_eq!(status.nodes_needing_attention[0].node, "n00");
}

#[test]
fn a_settled_world_writes_nothing() {
    let mut cluster = Cluster::new(
        five_nodes(),
        [rollout(live_patch("fix"), IntOrString::Int(5), 0)],
    );
    cluster.step();
    for n in cluster.nodes.keys().cloned().collect::<Vec<_>>() {
        cluster.report(&n, "fix", PatchState::Applied);
    }
    cluster.settle(4);
    let plan = cluster.plan();
    assert!(plan.is_quiet(), "{plan:#?}");
}

#[test]
fn status_reports_the_observed_generation_and_conditions_keep_their_time() {
    let mut cluster = Cluster::new([node("n1", ""), node("n2", "")], [live_patch("fix")]);
    cluster.step();
    let first = cluster.status("fix").conditions.clone();
    assert_eq!(cluster.status("fix").observed_generation, Some(1));
    cluster.report("n1", "fix", PatchState::Transitioning);
    cluster.step();
    cluster.edit("fix", |spec| spec.transition.stall_after = "2m".into());
    cluster.step();
    let status = cluster.status("fix");
    assert_eq!(status.observed_generation, Some(2));
    let progressing = |c: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
        c.iter()
            .find(|c| c.type_ == cond::PROGRESSING)
            .unwrap()
            .last_transition_time
            .clone()
    };
    assert_eq!(progressing(&status.conditions), progressing(&first));
    // The new policy reached the node without a new generation (nothing to redo).
    let entry = cluster.entry("n1", "fix").unwrap();
    assert_eq!(entry.transition.stall_after, "2m");
    assert_eq!(entry.live_patch_generation, Some(1));
}

#[test]
fn entries_stored_in_another_order_are_not_rewritten() {
    let mut cluster = Cluster::new([node("n1", "")], [live_patch("a"), live_patch("b")]);
    cluster.settle(4);
    let lpn = cluster.lpns.get_mut("n1").unwrap();
    assert_eq!(lpn.spec.patches.len(), 2);
    lpn.spec.patches.reverse();
    assert!(cluster.plan().node_specs.is_empty());
}

/// Not a benchmark, a guard against accidentally quadratic planning: a
/// 3,000-node fleet with four LivePatches plans in well under a second even
/// in a debug build (run with --ignored to see the time).
#[test]
#[ignore = "timing; run explicitly"]
fn planning_a_large_fleet_is_fast() {
    let nodes: Vec<_> = (0..3000)
        .map(|i| node(&format!("n{i:04}"), ["a", "b", "c"][i % 3]))
        .collect();
    let lps: Vec<_> = (0..4)
        .map(|i| {
            rollout(
                live_patch(&format!("p{i}")),
                IntOrString::String("10%".into()),
                5,
            )
        })
        .collect();
    let mut cluster = Cluster::new(nodes, lps);
    cluster.step();
    let started = std::time::Instant::now();
    let plan = cluster.plan();
    let elapsed = started.elapsed();
    eprintln!("planned 3000 nodes x 4 patches in {elapsed:?}");
    assert!(plan.node_specs.is_empty());
    assert!(elapsed < std::time::Duration::from_secs(5));
}
