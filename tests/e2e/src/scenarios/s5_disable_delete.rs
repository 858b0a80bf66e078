//! Scenario 5: `desiredState: Disabled` reverts the patch everywhere (all
//! at once, not paced); enabling it again re-applies it; deleting the
//! LivePatch reverts it everywhere first (finalizer), then lets it go.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Result, bail, ensure};
use graft_crds::{DesiredState, FINALIZER, PatchState};
use kube::ResourceExt;

use super::{Scn, exact, expect_kernel_clean};
use crate::{
    checks::{Look, eventually, expect_condition, occurrences},
    env::{Env, NodeOpts, RELEASE, within},
};

pub async fn run(env: Arc<Env>) -> Result<()> {
    let sc = Scn::new(env.clone(), 5);
    let module = env
        .build_module("graft_e2e_s5", RELEASE, "e2e_s5_fn", "2s")
        .await?;
    let nodes = sc
        .nodes(vec![
            NodeOpts::new("n1"),
            NodeOpts::new("n2"),
            NodeOpts::new("n3"),
        ])
        .await?;
    let lp = sc.live_patch("lp", vec![exact(&module)], 3);
    let lp_name = lp.name_any();
    sc.create(&lp).await?;
    let applied = [
        ("Applied", "3"),
        ("Targeted", "3"),
        ("Transitioning", "0"),
        ("Failed", "0"),
    ];
    sc.wait_lp(
        &lp_name,
        Duration::from_secs(60),
        &applied,
        ("Available", "True"),
    )
    .await?;

    // Disabled: every node reverts; the LivePatch stays.
    sc.set_desired(&lp_name, DesiredState::Disabled).await?;
    let lp = sc
        .wait_lp(
            &lp_name,
            Duration::from_secs(60),
            &[
                ("Desired", "Disabled"),
                ("Applied", "0"),
                ("Targeted", "3"),
                ("Transitioning", "0"),
                ("Failed", "0"),
            ],
            ("Available", "True"),
        )
        .await?;
    let status = lp.status.clone().unwrap_or_default();
    ensure!(
        status.reverted == 3,
        "status.reverted is {} (want 3)",
        status.reverted
    );
    let what = format!("LivePatch {lp_name}");
    let generation = lp.metadata.generation;
    expect_condition(
        &what,
        &status.conditions,
        "Available",
        "True",
        "Complete",
        generation,
    )?;
    expect_condition(
        &what,
        &status.conditions,
        "Progressing",
        "False",
        "Complete",
        generation,
    )?;
    for node in &nodes {
        let lpn = sc
            .expect_lpn(
                node,
                &lp_name,
                &module,
                PatchState::Reverted,
                &[("Applied", "0"), ("Transitioning", "0")],
            )
            .await?;
        let desired = lpn.spec.patch(&lp_name).map(|e| e.desired_state);
        ensure!(
            desired == Some(DesiredState::Disabled),
            "LivePatchNode {} entry is {desired:?}, want Disabled",
            node.name
        );
        expect_kernel_clean(node, &module.name)?;
    }
    sc.wait_events(
        "a Reverted Event per node",
        Duration::from_secs(20),
        |events| {
            let missing: Vec<&str> = nodes
                .iter()
                .map(|n| n.name.as_str())
                .filter(|n| occurrences(events, "LivePatch", &lp_name, "Reverted", Some(n)) < 1)
                .collect();
            (!missing.is_empty()).then(|| format!("no Reverted Event for {missing:?}"))
        },
    )
    .await?;

    // Enabled again: applied again.
    sc.set_desired(&lp_name, DesiredState::Enabled).await?;
    sc.wait_lp(
        &lp_name,
        Duration::from_secs(60),
        &[
            ("Desired", "Enabled"),
            ("Applied", "3"),
            ("Transitioning", "0"),
        ],
        ("Available", "True"),
    )
    .await?;
    for node in &nodes {
        let (loaded, enabled) = Env::module_state(&node.dir, &module.name)?;
        ensure!(
            loaded && enabled,
            "{}: {} not applied again after re-enabling",
            node.name,
            module.name
        );
    }

    // Deleted: reverted everywhere while the finalizer holds it, then gone.
    within(
        &format!("deleting LivePatch {lp_name}"),
        sc.live_patches().delete(&lp_name, &Default::default()),
    )
    .await?;
    let saw_reverting = AtomicBool::new(false);
    eventually(
        &format!("LivePatch {lp_name} to be reverted and removed"),
        Duration::from_secs(60),
        || async {
            let Some(lp) =
                within("reading the LivePatch", sc.live_patches().get_opt(&lp_name)).await?
            else {
                return Ok(Look::Done(()));
            };
            if lp.metadata.deletion_timestamp.is_none()
                || !lp.finalizers().iter().any(|f| f == FINALIZER)
            {
                bail!(
                    "LivePatch {lp_name} is not held by {FINALIZER} while being deleted: {:?}",
                    lp.metadata
                );
            }
            let mut disabled = 0;
            for node in &nodes {
                let entry = sc
                    .lpn(&node.name)
                    .await?
                    .and_then(|o| o.spec.patch(&lp_name).cloned());
                if entry.is_some_and(|e| e.desired_state == DesiredState::Disabled) {
                    disabled += 1;
                }
            }
            if disabled == nodes.len() {
                saw_reverting.store(true, Ordering::Relaxed);
            }
            Ok(Look::Waiting(format!(
                "being deleted, {disabled} node entries Disabled"
            )))
        },
    )
    .await?;
    ensure!(
        saw_reverting.load(Ordering::Relaxed),
        "LivePatch {lp_name} went away without its node entries being set to Disabled first"
    );
    for node in &nodes {
        expect_kernel_clean(node, &module.name)?;
        let entry = sc
            .lpn(&node.name)
            .await?
            .and_then(|o| o.spec.patch(&lp_name).cloned());
        ensure!(
            entry.is_none(),
            "LivePatchNode {} still has an entry of the deleted {lp_name}: {entry:?}",
            node.name
        );
    }
    sc.wait_events(
        "a second Reverted Event per node (the deletion)",
        Duration::from_secs(20),
        |events| {
            let missing: Vec<&str> = nodes
                .iter()
                .map(|n| n.name.as_str())
                .filter(|n| occurrences(events, "LivePatch", &lp_name, "Reverted", Some(n)) < 2)
                .collect();
            (!missing.is_empty()).then(|| format!("fewer than two Reverted Events for {missing:?}"))
        },
    )
    .await?;
    // Applied exactly twice per node (enabled, enabled again), reverted twice.
    for node in &nodes {
        let patched = Env::completed_patchings(&node.dir, &module.name)?;
        ensure!(
            patched == 2,
            "{}: {patched} patching transitions completed (want 2)",
            node.name
        );
    }
    Ok(())
}
