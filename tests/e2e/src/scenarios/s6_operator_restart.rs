//! Scenario 6: the operator killed (SIGKILL) mid-rollout and restarted: the
//! rollout continues, the parallelism bound holds throughout, and nothing is
//! applied twice. Then two replicas with leader election: only the Lease
//! holder writes (Lease, leader metric, Events' reporting instance, its
//! log), and when it dies the other takes over.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use graft_crds::{DesiredState, PatchState};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, ResourceExt};

use super::{Scn, check_admission_order, exact, expect_kernel_applied};
use crate::{
    checks::{Look, eventually, http_get, metric_value, occurrences},
    env::{Env, NodeOpts, RELEASE, within},
    sampler::Sampler,
};

const BOUND: usize = 2;
const PART: &str = "graft.dev/e2e-part";
/// What graft-operator logs when (and only when) it writes as the leader.
const WRITE_LOG_LINE: &str = "writing the differences";

pub async fn run(env: Arc<Env>) -> Result<()> {
    let sc = Scn::new(env.clone(), 6);
    restart_mid_rollout(&sc).await?;
    leader_election(&sc).await
}

async fn restart_mid_rollout(sc: &Scn) -> Result<()> {
    let env = &sc.env;
    let module = env
        .build_module("graft_e2e_s6", RELEASE, "e2e_s6_fn", "3s")
        .await?;
    let suffixes = ["n1", "n2", "n3", "n4", "n5", "n6"];
    let nodes = sc
        .nodes(
            suffixes
                .iter()
                .map(|s| NodeOpts {
                    zone: Some("zone-a"),
                    labels: vec![(PART, "a")],
                    ..NodeOpts::new(s)
                })
                .collect(),
        )
        .await?;
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let mut lp = sc.live_patch("lp", vec![exact(&module)], 2);
    if let Some(labels) = lp
        .spec
        .node_selector
        .as_mut()
        .and_then(|s| s.match_labels.as_mut())
    {
        labels.insert(PART.into(), "a".into());
    }
    let lp_name = lp.name_any();
    let sampler = Sampler::start(&env.client, &lp_name, &names, BOUND).await?;
    sc.create(&lp).await?;

    // Kill the operator while the first wave is in transition.
    eventually(
        "two nodes in transition",
        Duration::from_secs(40),
        || async {
            let mut moving = Vec::new();
            for name in &names {
                let state = sc
                    .lpn(name)
                    .await?
                    .and_then(|o| o.status)
                    .and_then(|s| s.patch(&lp_name).map(|p| p.state));
                if state.is_some_and(PatchState::is_in_progress) {
                    moving.push(name.clone());
                }
            }
            Ok(if moving.len() == BOUND {
                Look::Done(())
            } else {
                Look::Waiting(format!("in transition: {moving:?}"))
            })
        },
    )
    .await?;
    env.kill("operator").await?;
    let killed = Instant::now();
    // The agents finish the first wave by themselves; nobody starts the next.
    for name in &names[..BOUND] {
        sc.wait_state(name, &lp_name, PatchState::Applied, Duration::from_secs(20))
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.start_operator("operator", &[]).await?;
    let restarted = Instant::now();

    let reached = sc
        .wait_lp(
            &lp_name,
            Duration::from_secs(90),
            &[
                ("Applied", "6"),
                ("Targeted", "6"),
                ("Transitioning", "0"),
                ("Pending", "0"),
                ("Failed", "0"),
            ],
            ("Available", "True"),
        )
        .await;
    let samples = sampler.stop();
    let lp = reached?;
    ensure!(
        samples.violations.is_empty(),
        "more than {BOUND} nodes were in flight at once across the restart: {:?}",
        samples.violations
    );
    let started_while_dead: Vec<&String> = samples
        .admitted
        .iter()
        .filter(|(_, at)| **at > killed + Duration::from_secs(1) && **at < restarted)
        .map(|(name, _)| name)
        .collect();
    ensure!(
        started_while_dead.is_empty(),
        "nodes were admitted while no operator ran: {started_while_dead:?}"
    );
    let order: Vec<String> = suffixes.iter().map(|s| sc.name(s)).collect();
    check_admission_order(&order, &samples.admitted, Duration::from_millis(1500))?;
    for node in &nodes {
        let lpn = sc
            .expect_lpn(
                node,
                &lp_name,
                &module,
                PatchState::Applied,
                &[("Applied", "1")],
            )
            .await?;
        let entry_generation = lpn
            .spec
            .patch(&lp_name)
            .and_then(|e| e.live_patch_generation);
        ensure!(
            entry_generation == lp.metadata.generation,
            "LivePatchNode {} entry has generation {entry_generation:?}, the LivePatch {:?}",
            node.name,
            lp.metadata.generation
        );
        expect_kernel_applied(node, &module.name, 1)?;
    }
    let events = sc.events().await?;
    for name in &names {
        let applied = occurrences(&events, "LivePatch", &lp_name, "Applied", Some(name));
        ensure!(
            applied <= 1,
            "{applied} Applied Events for {name}: applied twice?"
        );
    }
    Ok(())
}

async fn lease_holder(sc: &Scn, lease: &str) -> Result<Option<String>> {
    let api: Api<Lease> = Api::namespaced(sc.env.client.clone(), &sc.env.namespace);
    Ok(within("reading the leader Lease", api.get_opt(lease))
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

async fn leader_election(sc: &Scn) -> Result<()> {
    let env = &sc.env;
    env.stop("operator").await?;
    let module = env
        .build_module("graft_e2e_s6b", RELEASE, "e2e_s6b_fn", "1500ms")
        .await?;
    let nodes = sc
        .nodes(
            ["m1", "m2", "m3"]
                .iter()
                .map(|s| NodeOpts {
                    labels: vec![(PART, "b")],
                    ..NodeOpts::new(s)
                })
                .collect(),
        )
        .await?;
    let lease = sc.name("lease");
    let ids = [sc.name("op-a"), sc.name("op-b")];
    let keys = ["operator/a", "operator/b"];
    let mut addrs = Vec::new();
    for (key, id) in keys.iter().zip(&ids) {
        let args: Vec<String> = [
            "--leader-election",
            "--lease-namespace",
            &env.namespace,
            "--lease-name",
            &lease,
            "--lease-identity",
            id,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        addrs.push(env.start_operator(key, &args).await?);
    }
    let leader = eventually(
        "one replica to hold the Lease",
        Duration::from_secs(40),
        || async {
            Ok(match lease_holder(sc, &lease).await? {
                Some(holder) if ids.contains(&holder) => Look::Done(holder),
                other => Look::Waiting(format!("holder {other:?}")),
            })
        },
    )
    .await?;
    let (l, f) = if leader == ids[0] { (0, 1) } else { (1, 0) };
    eventually(
        "graft_operator_leader to be 1 on the leader and 0 on the other",
        Duration::from_secs(30),
        || async {
            let on_leader = metric_value(
                &http_get(addrs[l], "/metrics").await?,
                "graft_operator_leader",
            );
            let on_follower = metric_value(
                &http_get(addrs[f], "/metrics").await?,
                "graft_operator_leader",
            );
            Ok(if (on_leader, on_follower) == (Some(1.0), Some(0.0)) {
                Look::Done(())
            } else {
                Look::Waiting(format!("leader {on_leader:?}, follower {on_follower:?}"))
            })
        },
    )
    .await?;

    let mut lp = sc.live_patch("lp-b", vec![exact(&module)], 2);
    if let Some(labels) = lp
        .spec
        .node_selector
        .as_mut()
        .and_then(|s| s.match_labels.as_mut())
    {
        labels.insert(PART.into(), "b".into());
    }
    let lp_name = lp.name_any();
    sc.create(&lp).await?;
    sc.wait_lp(
        &lp_name,
        Duration::from_secs(60),
        &[("Applied", "3"), ("Targeted", "3")],
        ("Available", "True"),
    )
    .await?;
    let about_b = |events: &[crate::checks::SeenEvent]| -> Vec<crate::checks::SeenEvent> {
        events
            .iter()
            .filter(|e| {
                e.regarding_name == lp_name || e.related_name.as_deref() == Some(lp_name.as_str())
            })
            .cloned()
            .collect()
    };
    let events = sc
        .wait_events(
            "Applied Events for the second rollout",
            Duration::from_secs(20),
            |events| {
                (occurrences(events, "LivePatch", &lp_name, "Applied", None) < 3)
                    .then(|| "missing".to_owned())
            },
        )
        .await?;
    let foreign: Vec<_> = about_b(&events)
        .into_iter()
        .filter(|e| e.reporting_instance != leader)
        .collect();
    ensure!(
        foreign.is_empty(),
        "Events not written by the leader {leader}: {foreign:?}"
    );
    let follower_log = env.log_of(keys[f]).await;
    let leader_log = env.log_of(keys[l]).await;
    ensure!(
        leader_log.contains(WRITE_LOG_LINE),
        "the leader's log never says {WRITE_LOG_LINE:?}: the follower check below would prove nothing"
    );
    ensure!(
        !follower_log.contains(WRITE_LOG_LINE),
        "the replica that does not hold the Lease wrote: its log says {WRITE_LOG_LINE:?}"
    );
    ensure!(
        lease_holder(sc, &lease).await?.as_deref() == Some(leader.as_str()),
        "the Lease changed hands during a quiet rollout"
    );

    // The leader dies; the other replica takes the Lease and carries on.
    env.kill(keys[l]).await?;
    let new_leader = ids[f].clone();
    eventually(
        "the other replica to take over the Lease",
        Duration::from_secs(60),
        || async {
            Ok(match lease_holder(sc, &lease).await? {
                Some(holder) if holder == new_leader => Look::Done(()),
                other => Look::Waiting(format!("holder {other:?}")),
            })
        },
    )
    .await?;
    sc.set_desired(&lp_name, DesiredState::Disabled).await?;
    sc.wait_lp(
        &lp_name,
        Duration::from_secs(60),
        &[
            ("Desired", "Disabled"),
            ("Applied", "0"),
            ("Transitioning", "0"),
        ],
        ("Available", "True"),
    )
    .await?;
    let events = sc
        .wait_events(
            "Reverted Events from the new leader",
            Duration::from_secs(20),
            |events| {
                (occurrences(events, "LivePatch", &lp_name, "Reverted", None) < 3)
                    .then(|| "missing".to_owned())
            },
        )
        .await?;
    let reverted_by: Vec<String> = about_b(&events)
        .iter()
        .filter(|e| e.reason == "Reverted")
        .map(|e| e.reporting_instance.clone())
        .collect();
    ensure!(
        reverted_by.iter().all(|i| *i == new_leader),
        "Reverted Events came from {reverted_by:?}, want only the new leader {new_leader}"
    );
    for node in &nodes {
        let (loaded, _) = Env::module_state(&node.dir, &module.name)?;
        ensure!(
            !loaded,
            "{}: {} still loaded after the revert",
            node.name,
            module.name
        );
    }

    // Back to the suite's single operator.
    env.stop(keys[f]).await?;
    env.start_operator("operator", &[]).await?;
    Ok(())
}
