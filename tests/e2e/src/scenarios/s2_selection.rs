//! Scenario 2: nodes whose kernel matches no module entry are NotApplicable
//! (and so is a node whose kernel has no livepatch support, as its agent
//! reports); a nodeSelector excludes nodes; an exact release and a regex
//! entry each pick their own module.

use std::{sync::Arc, time::Duration};

use anyhow::{Result, anyhow, ensure};
use graft_crds::{ModuleSource, PatchModule, PatchState};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
use kube::ResourceExt;

use super::{Scn, exact, expect_kernel_applied, expect_kernel_clean};
use crate::{
    checks::{describe, expect_condition, occurrences},
    env::{Env, NodeOpts, RELEASE},
};

const OLD_RELEASE: &str = "5.10.0-e2e-amd64";
const OTHER_RELEASE: &str = "6.6.0-e2e-other";

pub async fn run(env: Arc<Env>) -> Result<()> {
    let sc = Scn::new(env.clone(), 2);
    let current = env
        .build_module("graft_e2e_s2", RELEASE, "e2e_s2_fn", "1500ms")
        .await?;
    let old = env
        .build_module("graft_e2e_s2", OLD_RELEASE, "e2e_s2_fn", "1500ms")
        .await?;
    let web = [("pool", "web")];
    let nodes = sc
        .nodes(vec![
            NodeOpts {
                labels: web.to_vec(),
                ..NodeOpts::new("a")
            },
            NodeOpts {
                labels: web.to_vec(),
                release: OTHER_RELEASE,
                ..NodeOpts::new("b")
            },
            NodeOpts {
                labels: vec![("pool", "batch")],
                ..NodeOpts::new("c")
            },
            NodeOpts {
                labels: web.to_vec(),
                release: OLD_RELEASE,
                ..NodeOpts::new("e")
            },
            NodeOpts {
                labels: web.to_vec(),
                livepatch: false,
                ..NodeOpts::new("f")
            },
        ])
        .await?;
    let [a, b, c, e, f] = [0, 1, 2, 3, 4].map(|i| &nodes[i]);

    let mut lp = sc.live_patch(
        "lp",
        vec![
            exact(&current),
            PatchModule {
                kernel_release: None,
                kernel_release_regex: Some(r"5\.10\.0-e2e-.*".to_owned()),
                source: ModuleSource::host_path(old.path.clone()),
                sha256: Some(old.sha256.clone()),
            },
        ],
        5,
    );
    if let Some(selector) = lp.spec.node_selector.as_mut() {
        selector.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "pool".into(),
            operator: "In".into(),
            values: Some(vec!["web".into()]),
        }]);
    }
    let lp_name = lp.name_any();
    sc.create(&lp).await?;
    let lp = sc
        .wait_lp(
            &lp_name,
            Duration::from_secs(60),
            &[
                ("Applied", "2"),
                ("Targeted", "2"),
                ("Stalled", "0"),
                ("Failed", "0"),
                ("Transitioning", "0"),
                ("Pending", "0"),
                ("NotApplicable", "2"),
            ],
            ("Available", "True"),
        )
        .await?;
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
        "Degraded",
        "False",
        "AsExpected",
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

    let applied_row = [("Applied", "1"), ("Transitioning", "0"), ("Failed", "0")];
    sc.expect_lpn(a, &lp_name, &current, PatchState::Applied, &applied_row)
        .await?;
    expect_kernel_applied(a, &current.name, 1)?;
    let lpn_e = sc
        .expect_lpn(e, &lp_name, &old, PatchState::Applied, &applied_row)
        .await?;
    let entry = lpn_e
        .spec
        .patch(&lp_name)
        .ok_or_else(|| anyhow!("LivePatchNode {} has no entry for {lp_name}", e.name))?;
    ensure!(
        entry.module.kernel_release == OLD_RELEASE
            && entry.module.source.host_path.as_deref() == Some(old.path.as_str()),
        "node {} ({OLD_RELEASE}) got {:?}, not the module of the regex entry",
        e.name,
        entry.module
    );
    expect_kernel_applied(e, &old.name, 1)?;

    // b: no module entry matches its kernel; c: the nodeSelector excludes it.
    for node in [b, c] {
        let entry = sc
            .lpn(&node.name)
            .await?
            .and_then(|o| o.spec.patch(&lp_name).cloned());
        ensure!(
            entry.is_none(),
            "node {} got an entry of {lp_name}: {entry:?}",
            node.name
        );
        expect_kernel_clean(node, &current.name)?;
    }
    // f: targeted, but its agent finds no livepatch support.
    let lpn_f = sc
        .wait_state(
            &f.name,
            &lp_name,
            PatchState::NotApplicable,
            Duration::from_secs(10),
        )
        .await?;
    let reported = lpn_f
        .status
        .as_ref()
        .and_then(|s| s.patch(&lp_name))
        .and_then(|p| p.reason.clone());
    ensure!(
        reported.as_deref() == Some("LivepatchUnsupported"),
        "node {} (no livepatch support) reports reason {reported:?}, want LivepatchUnsupported",
        f.name
    );
    expect_kernel_clean(f, &current.name)?;

    let events = sc
        .wait_events(
            "Applied Events for the two targeted nodes",
            Duration::from_secs(20),
            |events| {
                let missing: Vec<&str> = [a, e]
                    .iter()
                    .map(|n| n.name.as_str())
                    .filter(|n| occurrences(events, "LivePatch", &lp_name, "Applied", Some(n)) != 1)
                    .collect();
                (!missing.is_empty()).then(|| format!("no single Applied Event for {missing:?}"))
            },
        )
        .await?;
    let stray: Vec<_> = events
        .iter()
        .filter(|ev| {
            [b, c, f].iter().any(|n| {
                ev.regarding_name == n.name || ev.related_name.as_deref() == Some(n.name.as_str())
            })
        })
        .cloned()
        .collect();
    ensure!(
        stray.is_empty(),
        "Events about nodes that are not applicable or not selected: {:?}",
        describe(&stray)
    );
    Ok(())
}
