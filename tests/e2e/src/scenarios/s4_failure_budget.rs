//! Scenario 4: with `maxFailures: 1` the rollout tolerates the first failed
//! node and halts after the second (condition Paused, reason
//! FailureBudgetExceeded), and stays halted although a slot is free.
//!
//! Six nodes in one zone (rollout order n1…n6), `maxParallel: 3`; the
//! simulated kernels of n1 and n4 refuse the module (EKEYREJECTED, as with
//! module.sig_enforce=1). n1 fails in the first wave (n1, n2, n3) and the
//! rollout goes on: n4 is admitted once n2 or n3 is done, so after n1
//! failed. n4 fails: the budget is exceeded. Whether n5 was admitted in the
//! same pass as n4 depends on whether n2 and n3 finished in one pass; either
//! way, once nothing is in transition, fewer than 3 slots are used, nodes are
//! pending, and none is started.

use std::{sync::Arc, time::Duration};

use anyhow::{Result, ensure};
use graft_crds::PatchState;
use kube::ResourceExt;

use super::{Scn, exact, expect_kernel_applied, expect_kernel_clean};
use crate::{
    checks::{expect_condition, occurrences, stays},
    env::{Env, NodeOpts, RELEASE},
};

const MAX_PARALLEL: i32 = 3;

pub async fn run(env: Arc<Env>) -> Result<()> {
    let sc = Scn::new(env.clone(), 4);
    let module = env
        .build_module("graft_e2e_s4", RELEASE, "e2e_s4_fn", "3s")
        .await?;
    let suffixes = ["n1", "n2", "n3", "n4", "n5", "n6"];
    let nodes = sc
        .nodes(
            suffixes
                .iter()
                .map(|s| NodeOpts {
                    zone: Some("zone-a"),
                    ..NodeOpts::new(s)
                })
                .collect(),
        )
        .await?;
    for failing in [&nodes[0], &nodes[3]] {
        env.sim(&[
            "fail-next-load",
            &failing.dir.to_string_lossy(),
            "--errno",
            "EKEYREJECTED",
        ])
        .await?;
    }
    let mut lp = sc.live_patch("lp", vec![exact(&module)], MAX_PARALLEL);
    lp.spec.rollout.max_failures = 1;
    let lp_name = lp.name_any();
    sc.create(&lp).await?;

    let settled = [
        ("Failed", "2"),
        ("Targeted", "6"),
        ("Transitioning", "0"),
        ("Stalled", "0"),
    ];
    let lp = sc
        .wait_lp(
            &lp_name,
            Duration::from_secs(60),
            &settled,
            ("Paused", "True"),
        )
        .await?;
    let generation = lp.metadata.generation;
    let status = lp.status.clone().unwrap_or_default();
    let what = format!("LivePatch {lp_name}");
    expect_condition(
        &what,
        &status.conditions,
        "Paused",
        "True",
        "FailureBudgetExceeded",
        generation,
    )?;
    expect_condition(
        &what,
        &status.conditions,
        "Progressing",
        "False",
        "FailureBudgetExceeded",
        generation,
    )?;
    expect_condition(
        &what,
        &status.conditions,
        "Degraded",
        "True",
        "NodeFailed",
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
    ensure!(
        status.applied + status.pending == 4 && status.pending >= 1,
        "want the 4 nodes that did not fail applied or pending, at least one pending: applied {}, pending {}",
        status.applied,
        status.pending
    );
    let used = status.failed + status.transitioning + status.stalled;
    ensure!(
        used < MAX_PARALLEL as u32,
        "{used} slots are in use: the test cannot tell a halt from a full rollout"
    );
    let attention: Vec<(String, PatchState, Option<String>)> = status
        .nodes_needing_attention
        .iter()
        .map(|n| (n.node.clone(), n.state, n.reason.clone()))
        .collect();
    let failed = |node: &str| {
        (
            node.to_owned(),
            PatchState::Failed,
            Some("ModuleLoadFailed".to_owned()),
        )
    };
    ensure!(
        attention == vec![failed(&nodes[0].name), failed(&nodes[3].name)],
        "nodesNeedingAttention is {attention:?}, want n1 and n4 Failed (ModuleLoadFailed)"
    );

    // Halted: with a slot free, the pending nodes stay unstarted.
    let pending: Vec<String> = {
        let mut names = Vec::new();
        for node in &nodes {
            if sc
                .lpn(&node.name)
                .await?
                .and_then(|o| o.spec.patch(&lp_name).cloned())
                .is_none()
            {
                names.push(node.name.clone());
            }
        }
        names
    };
    ensure!(
        pending.contains(&nodes[5].name) && pending.len() == status.pending as usize,
        "the nodes without an entry ({pending:?}) are not the {} pending ones ending with n6",
        status.pending
    );
    stays(
        "the halt (no node started)",
        Duration::from_secs(6),
        || async {
            for name in &pending {
                if let Some(entry) = sc
                    .lpn(name)
                    .await?
                    .and_then(|o| o.spec.patch(&lp_name).cloned())
                {
                    return Ok(Some(format!("{name} was started: {entry:?}")));
                }
            }
            Ok(None)
        },
    )
    .await?;
    sc.wait_lp(
        &lp_name,
        Duration::from_secs(5),
        &settled,
        ("Paused", "True"),
    )
    .await?;

    for (i, node) in nodes.iter().enumerate() {
        if i == 0 || i == 3 {
            sc.expect_lpn(
                node,
                &lp_name,
                &module,
                PatchState::Failed,
                &[("Failed", "1"), ("Applied", "0")],
            )
            .await?;
            expect_kernel_clean(node, &module.name)?;
        } else if pending.contains(&node.name) {
            expect_kernel_clean(node, &module.name)?;
        } else {
            sc.expect_lpn(
                node,
                &lp_name,
                &module,
                PatchState::Applied,
                &[("Applied", "1")],
            )
            .await?;
            expect_kernel_applied(node, &module.name, 1)?;
        }
    }
    let (n1, n4) = (nodes[0].name.clone(), nodes[3].name.clone());
    let events = sc
        .wait_events(
            "Failed Events for n1 and n4 and one RolloutHalted",
            Duration::from_secs(20),
            |events| {
                let ok = occurrences(events, "LivePatch", &lp_name, "Failed", Some(&n1)) == 1
                    && occurrences(events, "LivePatch", &lp_name, "Failed", Some(&n4)) == 1
                    && occurrences(events, "LivePatch", &lp_name, "RolloutHalted", None) == 1;
                (!ok).then(|| "missing".to_owned())
            },
        )
        .await?;
    let halted: Vec<_> = events
        .iter()
        .filter(|e| e.reason == "RolloutHalted")
        .collect();
    ensure!(
        halted
            .iter()
            .all(|e| e.type_ == "Warning" && e.note.contains(&n1) && e.note.contains(&n4)),
        "the RolloutHalted Event should be a Warning naming both failed nodes: {halted:?}"
    );
    Ok(())
}
