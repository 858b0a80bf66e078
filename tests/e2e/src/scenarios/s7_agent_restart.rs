//! Scenario 7: an agent killed mid-transition and started again resumes the
//! transition (no second load, no Loading); a simulated reboot (new boot ID,
//! nothing loaded, the Node's bootID updated as a kubelet would) makes the
//! agent apply the patch again.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use graft_crds::PatchState;
use kube::ResourceExt;

use super::{Scn, exact, expect_kernel_applied, expect_kernel_clean};
use crate::{
    checks::{Look, eventually, occurrences},
    env::{Env, NodeOpts, RELEASE, agent_key},
    sampler::Sampler,
};

const BLOCKER: &str = "e2e-blocker";
const FUNCTION: &str = "e2e_s7_fn";

pub async fn run(env: Arc<Env>) -> Result<()> {
    let sc = Scn::new(env.clone(), 7);
    let module = env
        .build_module("graft_e2e_s7", RELEASE, FUNCTION, "3s")
        .await?;
    let nodes = sc
        .nodes(vec![NodeOpts::new("n1"), NodeOpts::new("n2")])
        .await?;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    // A kernel thread keeps n1 in transition until the test lets it go.
    env.sim(&[
        "add-task",
        &n1.dir.to_string_lossy(),
        "--comm",
        BLOCKER,
        "--kthread",
        "--sleeps-in",
        FUNCTION,
    ])
    .await?;
    let mut lp = sc.live_patch("lp", vec![exact(&module)], 2);
    lp.spec.transition.stall_after = "10m".into();
    let lp_name = lp.name_any();
    let names = vec![n1.name.clone(), n2.name.clone()];
    let sampler = Sampler::start(&env.client, &lp_name, &names, 2).await?;
    sc.create(&lp).await?;
    sc.wait_state(
        &n2.name,
        &lp_name,
        PatchState::Applied,
        Duration::from_secs(40),
    )
    .await?;
    sc.wait_state(
        &n1.name,
        &lp_name,
        PatchState::Transitioning,
        Duration::from_secs(20),
    )
    .await?;

    // Kill n1's agent mid-transition and start it again.
    env.kill(&agent_key(&n1.name)).await?;
    let restarted = Instant::now();
    env.start_agent(n1).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (loaded, enabled) = Env::module_state(&n1.dir, &module.name)?;
    ensure!(
        loaded && enabled,
        "{}: the module left the kernel across the agent restart",
        n1.name
    );
    env.sim(&["release-task", &n1.dir.to_string_lossy(), "--comm", BLOCKER])
        .await?;
    let resumed = sc
        .wait_state(
            &n1.name,
            &lp_name,
            PatchState::Applied,
            Duration::from_secs(30),
        )
        .await;
    let samples = sampler.stop();
    resumed?;
    let after = samples.states_after(&n1.name, restarted);
    ensure!(
        after
            .iter()
            .all(|s| matches!(s, PatchState::Transitioning | PatchState::Applied)),
        "after its restart the agent of {} reported {after:?}: it should resume the transition (Transitioning, then Applied)",
        n1.name
    );
    sc.expect_lpn(
        n1,
        &lp_name,
        &module,
        PatchState::Applied,
        &[("Applied", "1")],
    )
    .await?;
    expect_kernel_applied(n1, &module.name, 1)?;

    // Reboot n2: the agent stops with the node, the kernel comes back empty
    // with a new boot ID, the kubelet reports it, the agent starts again.
    env.stop(&agent_key(&n2.name)).await?;
    let old_boot = Env::boot_id(&n2.dir)?;
    env.sim(&["reboot", &n2.dir.to_string_lossy()]).await?;
    let new_boot = Env::boot_id(&n2.dir)?;
    ensure!(
        new_boot != old_boot,
        "the simulated reboot kept boot ID {old_boot}"
    );
    expect_kernel_clean(n2, &module.name)?;
    env.set_node_boot_id(&n2.name, &new_boot).await?;
    // (The operator keeps counting the old report of a simulated agent, whose
    // boot ID is its own kernel's, not the kubelet's: nothing to wait for here.)
    env.start_agent(n2).await?;
    eventually(
        &format!(
            "the agent of {} to apply {lp_name} again on the new boot",
            n2.name
        ),
        Duration::from_secs(40),
        || async {
            let lpn = sc.lpn(&n2.name).await?;
            let status = lpn.and_then(|o| o.status);
            let boot = status.as_ref().and_then(|s| s.boot_id.clone());
            let state = status
                .as_ref()
                .and_then(|s| s.patch(&lp_name))
                .map(|p| p.state);
            Ok(
                if boot.as_deref() == Some(new_boot.as_str()) && state == Some(PatchState::Applied)
                {
                    Look::Done(())
                } else {
                    Look::Waiting(format!("bootId {boot:?}, state {state:?}"))
                },
            )
        },
    )
    .await?;
    expect_kernel_applied(n2, &module.name, 1)?;
    sc.wait_lp(
        &lp_name,
        Duration::from_secs(30),
        &[("Applied", "2"), ("Targeted", "2"), ("Transitioning", "0")],
        ("Available", "True"),
    )
    .await?;
    sc.wait_events(
        "an Applied Event for each boot of n2",
        Duration::from_secs(20),
        |events| {
            let n = occurrences(events, "LivePatch", &lp_name, "Applied", Some(&n2.name));
            (n != 2).then(|| format!("{n} Applied Events for {}", n2.name))
        },
    )
    .await?;
    Ok(())
}
