//! Scenario 1: a LivePatch for 5 nodes with `maxParallel: 2` reaches
//! Available, and never more than 2 nodes are in transition at once (sampled
//! by a watch throughout), in the rollout order (zone, then name).

use std::{sync::Arc, time::Duration};

use anyhow::{Result, ensure};
use graft_crds::{FINALIZER, PatchState};
use kube::ResourceExt;

use super::{Scn, check_admission_order, exact, expect_kernel_applied};
use crate::{
    checks::{expect_condition, occurrences},
    env::{Env, NodeOpts, RELEASE},
    sampler::Sampler,
};

const BOUND: usize = 2;

pub async fn run(env: Arc<Env>) -> Result<()> {
    let sc = Scn::new(env.clone(), 1);
    let module = env
        .build_module("graft_e2e_s1", RELEASE, "e2e_s1_fn", "2s")
        .await?;
    let layout = [
        ("n1", "zone-b"),
        ("n2", "zone-a"),
        ("n3", "zone-b"),
        ("n4", "zone-a"),
        ("n5", "zone-c"),
    ];
    let nodes = sc
        .nodes(
            layout
                .iter()
                .map(|(suffix, zone)| NodeOpts {
                    zone: Some(zone),
                    ..NodeOpts::new(suffix)
                })
                .collect(),
        )
        .await?;
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let order: Vec<String> = ["n2", "n4", "n1", "n3", "n5"]
        .iter()
        .map(|s| sc.name(s))
        .collect();

    let lp = sc.live_patch("lp", vec![exact(&module)], 2);
    let lp_name = lp.name_any();
    let sampler = Sampler::start(&env.client, &lp_name, &names, BOUND).await?;
    sc.create(&lp).await?;
    let reached = sc
        .wait_lp(
            &lp_name,
            Duration::from_secs(100),
            &[
                ("Applied", "5"),
                ("Targeted", "5"),
                ("Stalled", "0"),
                ("Failed", "0"),
                ("Desired", "Enabled"),
                ("Transitioning", "0"),
                ("Pending", "0"),
                ("NotApplicable", "0"),
            ],
            ("Available", "True"),
        )
        .await;
    let samples = sampler.stop();
    let lp = reached?;

    ensure!(
        samples.violations.is_empty(),
        "more than {BOUND} nodes were in flight at once: {:?}",
        samples.violations
    );
    ensure!(
        samples.max_in_flight == BOUND,
        "at most {} node(s) were ever in flight: the rollout did not use maxParallel {BOUND}",
        samples.max_in_flight
    );
    ensure!(
        samples.max_transitioning <= BOUND,
        "{} agents reported a transition at once (maxParallel {BOUND})",
        samples.max_transitioning
    );
    ensure!(
        samples.max_status_transitioning <= BOUND as u32,
        "kubectl get lp showed Transitioning={} (maxParallel {BOUND})",
        samples.max_status_transitioning
    );
    ensure!(
        samples.events >= 10 && samples.errors.is_empty(),
        "the rollout was not sampled throughout: {} changes seen, watch errors {:?}",
        samples.events,
        samples.errors
    );
    check_admission_order(&order, &samples.admitted, Duration::from_millis(1500))?;

    let generation = lp.metadata.generation;
    let status = lp.status.clone().unwrap_or_default();
    let what = format!("LivePatch {lp_name}");
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
    expect_condition(
        &what,
        &status.conditions,
        "Degraded",
        "False",
        "AsExpected",
        generation,
    )?;
    expect_condition(
        &what,
        &status.conditions,
        "Paused",
        "False",
        "AsExpected",
        generation,
    )?;
    ensure!(
        status.nodes_needing_attention.is_empty(),
        "no node needs attention, yet status lists {:?}",
        status.nodes_needing_attention
    );
    ensure!(
        lp.finalizers().iter().any(|f| f == FINALIZER),
        "LivePatch {lp_name} lacks the finalizer {FINALIZER}: {:?}",
        lp.finalizers()
    );

    for node in &nodes {
        sc.expect_lpn(
            node,
            &lp_name,
            &module,
            PatchState::Applied,
            &[
                ("Applied", "1"),
                ("Transitioning", "0"),
                ("Stalled", "0"),
                ("Failed", "0"),
            ],
        )
        .await?;
        expect_kernel_applied(node, &module.name, 1)?;
    }

    let events = sc
        .wait_events(
            "one Applied Event per node, on the LivePatch and on the Node",
            Duration::from_secs(20),
            |events| {
                let missing: Vec<&String> = names
                    .iter()
                    .filter(|n| {
                        occurrences(events, "LivePatch", &lp_name, "Applied", Some(n)) != 1
                            || occurrences(events, "Node", n, "Applied", Some(&lp_name)) != 1
                    })
                    .collect();
                (!missing.is_empty())
                    .then(|| format!("not exactly one Applied Event each way for {missing:?}"))
            },
        )
        .await?;
    let warnings: Vec<_> = events.iter().filter(|e| e.type_ == "Warning").collect();
    ensure!(
        warnings.is_empty(),
        "a clean rollout raised Warning Events: {warnings:?}"
    );
    Ok(())
}
