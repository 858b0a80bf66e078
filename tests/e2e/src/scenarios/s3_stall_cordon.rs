//! Scenario 3: a node whose transition stalls (a kernel thread sleeps in
//! the patched function) becomes Stalled and is cordoned with our
//! annotation; when its transition completes it is uncordoned. A node that
//! someone else cordoned beforehand stays cordoned, before and after.

use std::{sync::Arc, time::Duration};

use anyhow::{Result, anyhow, ensure};
use graft_crds::{CORDONED_BY_ANNOTATION, OPERATOR_FIELD_MANAGER, PatchState};
use k8s_openapi::api::core::v1::Node;
use kube::{Api, ResourceExt, api::Patch};
use serde_json::json;

use super::{Scn, exact, expect_kernel_applied};
use crate::{
    checks::{Look, describe, eventually, expect_condition, occurrences, stays},
    env::{Env, NodeOpts, RELEASE, within},
};

const BLOCKER: &str = "e2e-blocker";
const FUNCTION: &str = "e2e_s3_fn";

/// (unschedulable, our annotation) of a Node.
async fn cordon_state(nodes: &Api<Node>, name: &str) -> Result<(bool, Option<String>)> {
    let node = within(&format!("reading Node {name}"), nodes.get(name)).await?;
    let unschedulable = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    Ok((
        unschedulable,
        node.annotations().get(CORDONED_BY_ANNOTATION).cloned(),
    ))
}

pub async fn run(env: Arc<Env>) -> Result<()> {
    let sc = Scn::new(env.clone(), 3);
    let module = env
        .build_module("graft_e2e_s3", RELEASE, FUNCTION, "1500ms")
        .await?;
    let nodes = sc
        .nodes(vec![NodeOpts::new("a"), NodeOpts::new("b")])
        .await?;
    let (a, b) = (&nodes[0], &nodes[1]);
    for node in [a, b] {
        env.sim(&[
            "add-task",
            &node.dir.to_string_lossy(),
            "--comm",
            BLOCKER,
            "--kthread",
            "--sleeps-in",
            FUNCTION,
        ])
        .await?;
    }
    // Someone else cordons b first (as `kubectl cordon` does).
    let node_api: Api<Node> = Api::all(env.client.clone());
    within(
        &format!("cordoning Node {}", b.name),
        node_api.patch(
            &b.name,
            &env.patch_params(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        ),
    )
    .await?;

    let mut lp = sc.live_patch("lp", vec![exact(&module)], 2);
    lp.spec.transition.stall_after = "3s".into();
    let lp_name = lp.name_any();
    sc.create(&lp).await?;
    let lp = sc
        .wait_lp(
            &lp_name,
            Duration::from_secs(60),
            &[
                ("Stalled", "2"),
                ("Applied", "0"),
                ("Targeted", "2"),
                ("Failed", "0"),
            ],
            ("Degraded", "True"),
        )
        .await?;
    let generation = lp.metadata.generation;
    let status = lp.status.clone().unwrap_or_default();
    let what = format!("LivePatch {lp_name}");
    expect_condition(
        &what,
        &status.conditions,
        "Degraded",
        "True",
        "TransitionStalled",
        generation,
    )?;
    expect_condition(
        &what,
        &status.conditions,
        "Available",
        "False",
        "RollingOut",
        generation,
    )?;

    // The agents name the blocking kernel thread and the function it sleeps in.
    for node in [a, b] {
        let lpn = sc
            .expect_lpn(
                node,
                &lp_name,
                &module,
                PatchState::Stalled,
                &[("Stalled", "1"), ("Applied", "0")],
            )
            .await?;
        let patch = lpn
            .status
            .as_ref()
            .and_then(|s| s.patch(&lp_name))
            .ok_or_else(|| anyhow!("no status for {lp_name} on {}", node.name))?;
        ensure!(
            patch.reason.as_deref() == Some("TransitionStalled"),
            "{}: stalled with reason {:?}",
            node.name,
            patch.reason
        );
        let blocking = patch
            .transition
            .as_ref()
            .map(|t| t.blocking_tasks.clone())
            .unwrap_or_default();
        ensure!(
            blocking.iter().any(|t| t.comm == BLOCKER
                && t.kernel_thread
                && t.function.as_deref() == Some(FUNCTION)),
            "{}: the blocking tasks {blocking:?} do not name kernel thread {BLOCKER} in {FUNCTION}",
            node.name
        );
    }

    // a is cordoned by Graft, with our annotation; b keeps someone else's cordon, unmarked.
    eventually(
        &format!(
            "Node {} to be cordoned with {CORDONED_BY_ANNOTATION}",
            a.name
        ),
        Duration::from_secs(20),
        || async {
            let state = cordon_state(&node_api, &a.name).await?;
            Ok(if state == (true, Some(lp_name.clone())) {
                Look::Done(())
            } else {
                Look::Waiting(format!("(unschedulable, annotation) = {state:?}"))
            })
        },
    )
    .await?;
    let node = within("reading Node a", node_api.get(&a.name)).await?;
    let by_operator = node
        .managed_fields()
        .iter()
        .filter(|m| m.manager.as_deref() == Some(OPERATOR_FIELD_MANAGER))
        .any(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.to_string().contains("f:unschedulable"))
        });
    ensure!(
        by_operator,
        "spec.unschedulable of Node {} is not managed by {OPERATOR_FIELD_MANAGER}",
        a.name
    );
    ensure!(
        cordon_state(&node_api, &b.name).await? == (true, None),
        "Node {} (cordoned by someone else) was marked or uncordoned by Graft",
        b.name
    );
    let lp = sc.lp(&lp_name).await?;
    let attention = lp
        .status
        .map(|s| s.nodes_needing_attention)
        .unwrap_or_default();
    let listed = |name: &str, cordoned: bool| {
        attention
            .iter()
            .any(|n| n.node == name && n.state == PatchState::Stalled && n.cordoned == cordoned)
    };
    ensure!(
        listed(&a.name, true) && listed(&b.name, false),
        "nodesNeedingAttention does not list {} (Stalled, cordoned) and {} (Stalled, not cordoned by Graft): {attention:?}",
        a.name,
        b.name
    );
    sc.wait_events(
        "Stalled and Cordoned Events",
        Duration::from_secs(20),
        |events| {
            let ok = occurrences(events, "LivePatch", &lp_name, "Stalled", Some(&a.name)) >= 1
                && occurrences(events, "LivePatch", &lp_name, "Stalled", Some(&b.name)) >= 1
                && occurrences(events, "Node", &a.name, "Cordoned", None) == 1
                && occurrences(events, "LivePatch", &lp_name, "Cordoned", Some(&a.name)) == 1;
            (!ok).then(|| "missing".to_owned())
        },
    )
    .await?;

    // a's transition completes: Applied, uncordoned, unmarked.
    env.sim(&["release-task", &a.dir.to_string_lossy(), "--comm", BLOCKER])
        .await?;
    sc.wait_state(
        &a.name,
        &lp_name,
        PatchState::Applied,
        Duration::from_secs(30),
    )
    .await?;
    eventually(
        &format!("Node {} to be uncordoned", a.name),
        Duration::from_secs(20),
        || async {
            let state = cordon_state(&node_api, &a.name).await?;
            Ok(if state == (false, None) {
                Look::Done(())
            } else {
                Look::Waiting(format!("(unschedulable, annotation) = {state:?}"))
            })
        },
    )
    .await?;
    sc.wait_lp(
        &lp_name,
        Duration::from_secs(20),
        &[("Stalled", "1"), ("Applied", "1")],
        ("Degraded", "True"),
    )
    .await?;

    // b's completes too: Applied, still cordoned (not ours to undo).
    env.sim(&["release-task", &b.dir.to_string_lossy(), "--comm", BLOCKER])
        .await?;
    let lp = sc
        .wait_lp(
            &lp_name,
            Duration::from_secs(30),
            &[("Stalled", "0"), ("Applied", "2"), ("Transitioning", "0")],
            ("Available", "True"),
        )
        .await?;
    let status = lp.status.clone().unwrap_or_default();
    expect_condition(
        &what,
        &status.conditions,
        "Degraded",
        "False",
        "AsExpected",
        lp.metadata.generation,
    )?;
    stays(
        &format!("Node {} cordoned by someone else", b.name),
        Duration::from_secs(3),
        || async {
            let state = cordon_state(&node_api, &b.name).await?;
            Ok((state != (true, None)).then(|| format!("(unschedulable, annotation) = {state:?}")))
        },
    )
    .await?;
    for node in [a, b] {
        expect_kernel_applied(node, &module.name, 1)?;
    }
    let events = sc
        .wait_events(
            "an Uncordoned Event for the node Graft cordoned",
            Duration::from_secs(20),
            |events| {
                (occurrences(events, "Node", &a.name, "Uncordoned", None) != 1)
                    .then(|| "missing".to_owned())
            },
        )
        .await?;
    ensure!(
        occurrences(&events, "Node", &b.name, "Cordoned", None) == 0
            && occurrences(&events, "Node", &b.name, "Uncordoned", None) == 0,
        "Graft reported cordoning or uncordoning {}, which someone else cordoned: {:?}",
        b.name,
        describe(&events)
    );
    Ok(())
}
