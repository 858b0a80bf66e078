//! Serde defaults and round-trips of the API types, and the helpers the
//! operator and agent use to read them.

use std::{str::FromStr, time::Duration};

use graft_crds::{
    BlockingTask, ConfigMapKey, DesiredState, KernelMatch, LivePatch, LivePatchNode,
    LivePatchNodeSpec, LivePatchNodeStatus, LivePatchSpec, LivePatchStatus, ModuleSource,
    NodeAttention, NodeModule, NodePatch, OnStall, PatchModule, PatchState, PatchStatus,
    RolloutPolicy, SourceRef, TransitionPolicy, TransitionStatus, TransitionTarget,
};
use k8s_openapi::{
    apimachinery::pkg::{apis::meta::v1::Time, util::intstr::IntOrString},
    jiff::Timestamp,
};
use serde_json::json;

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn time(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).unwrap())
}

#[test]
fn minimal_livepatch_yaml_gets_the_documented_defaults() {
    let lp: LivePatch = serde_yaml::from_str(
        r#"
apiVersion: graft.dev/v1alpha1
kind: LivePatch
metadata:
  name: cve-2024-1234
spec:
  modules:
    - kernelRelease: 6.1.0-18-amd64
      source:
        hostPath: /var/lib/graft/modules/cve-2024-1234.ko
"#,
    )
    .unwrap();
    let spec = &lp.spec;
    assert_eq!(spec.node_selector, None);
    assert_eq!(spec.desired_state, DesiredState::Enabled);
    assert_eq!(spec.rollout.max_parallel, IntOrString::Int(1));
    assert_eq!(spec.rollout.max_failures, 0);
    assert!(!spec.rollout.paused);
    assert_eq!(spec.transition.stall_after, "60s");
    assert_eq!(spec.transition.stall_after(), Ok(Duration::from_secs(60)));
    assert_eq!(spec.transition.signal_after(), Ok(None));
    assert_eq!(spec.transition.on_stall, OnStall::Cordon);
    assert!(!spec.transition.allow_force);
    assert!(spec.transition.uncordon_on_recovery);
    assert_eq!(spec.rollout, RolloutPolicy::default());
    assert_eq!(spec.transition, TransitionPolicy::default());
    assert_eq!(lp.status, None);

    let module = &spec.modules[0];
    assert_eq!(
        module.kernel_match(),
        Some(KernelMatch::Exact("6.1.0-18-amd64"))
    );
    assert_eq!(
        module.source.get(),
        Some(SourceRef::HostPath(
            "/var/lib/graft/modules/cve-2024-1234.ko"
        ))
    );
    assert!(!module.source.requires_sha256());
    assert_eq!(module.sha256, None);
}

#[test]
fn livepatch_serializes_camel_case_and_omits_unset_options() {
    let lp = LivePatch::new(
        "cve-2024-1234",
        LivePatchSpec {
            modules: vec![PatchModule {
                kernel_release_regex: Some(r"6\.1\.0-.*".into()),
                source: ModuleSource::config_map("patches", "cve.ko"),
                sha256: Some(SHA.into()),
                ..Default::default()
            }],
            rollout: RolloutPolicy {
                max_parallel: IntOrString::String("10%".into()),
                max_failures: 2,
                paused: false,
            },
            ..Default::default()
        },
    );
    let value = serde_json::to_value(&lp).unwrap();
    assert_eq!(value["apiVersion"], "graft.dev/v1alpha1");
    assert_eq!(value["kind"], "LivePatch");
    assert_eq!(
        value["spec"],
        json!({
            "modules": [{
                "kernelReleaseRegex": "6\\.1\\.0-.*",
                "source": {"configMap": {"name": "patches", "key": "cve.ko"}},
                "sha256": SHA,
            }],
            "desiredState": "Enabled",
            "rollout": {"maxParallel": "10%", "maxFailures": 2, "paused": false},
            "transition": {"stallAfter": "60s", "onStall": "Cordon", "allowForce": false, "uncordonOnRecovery": true},
        })
    );
    let back: LivePatch = serde_json::from_value(value).unwrap();
    assert_eq!(back, lp);
}

#[test]
fn livepatch_status_round_trips() {
    let mut status = LivePatchStatus {
        observed_generation: Some(4),
        conditions: vec![graft_crds::conditions::condition(
            graft_crds::conditions::livepatch::PAUSED,
            true,
            graft_crds::conditions::reasons::FAILURE_BUDGET_EXCEEDED,
            "2 nodes failed, maxFailures is 1",
            Some(4),
            time(1_700_000_000),
        )],
        nodes_needing_attention: vec![NodeAttention {
            node: "worker-3".into(),
            state: PatchState::Stalled,
            reason: Some("TransitionStalled".into()),
            message: Some("kthread blocks the transition".into()),
            since: Some(time(1_700_000_100)),
            cordoned: true,
        }],
        ..Default::default()
    };
    status.tally([
        PatchState::Applied,
        PatchState::Stalled,
        PatchState::NotApplicable,
    ]);
    let value = serde_json::to_value(&status).unwrap();
    assert_eq!(value["targeted"], 2);
    assert_eq!(value["notApplicable"], 1);
    assert_eq!(
        value["nodesNeedingAttention"][0]["since"],
        "2023-11-14T22:15:00Z"
    );
    assert_eq!(value["conditions"][0]["type"], "Paused");
    let back: LivePatchStatus = serde_json::from_value(value).unwrap();
    assert_eq!(back, status);
}

#[test]
fn livepatchnode_round_trips_with_full_status() {
    let mut node = LivePatchNode::new(
        "worker-1",
        LivePatchNodeSpec {
            patches: vec![NodePatch {
                live_patch: "cve-2024-1234".into(),
                live_patch_generation: Some(3),
                module: NodeModule {
                    kernel_release: "6.1.0-18-amd64".into(),
                    source: ModuleSource::url("https://patches.example/cve.ko"),
                    sha256: Some(SHA.into()),
                },
                desired_state: DesiredState::Enabled,
                transition: TransitionPolicy {
                    on_stall: OnStall::CordonAndRevert,
                    signal_after: Some("15s".into()),
                    ..Default::default()
                },
            }],
        },
    );
    let mut status = LivePatchNodeStatus {
        observed_generation: Some(7),
        kernel_release: Some("6.1.0-18-amd64".into()),
        boot_id: Some("0d6c6e2e-5d35-4c87-9b8b-4f6f0f0b8f7e".into()),
        livepatch_supported: Some(true),
        agent_version: Some("0.1.0".into()),
        simulated: true,
        patches: vec![PatchStatus {
            live_patch: "cve-2024-1234".into(),
            live_patch_generation: Some(3),
            sha256: Some(SHA.into()),
            state: PatchState::Stalled,
            sysfs_name: Some("livepatch_cve_2024_1234".into()),
            transition: Some(TransitionStatus {
                target: TransitionTarget::Patched,
                started: Some(time(1_700_000_000)),
                tasks_switched: Some(410),
                tasks_total: Some(412),
                blocking_tasks: vec![BlockingTask {
                    pid: 812,
                    tid: 815,
                    comm: "nginx".into(),
                    function: Some("ep_poll".into()),
                    kernel_thread: false,
                    pod_uid: Some("6f1b".into()),
                    pod_namespace: Some("web".into()),
                    pod_name: Some("nginx-7d9".into()),
                    container_id: Some("containerd://abc".into()),
                }],
                signalled_at: None,
            }),
            reason: Some("TransitionStalled".into()),
            message: Some("2 of 412 tasks have not switched after 60s".into()),
            last_transition_time: Some(time(1_700_000_060)),
            applied_at: None,
            duration_seconds: None,
            forced: false,
        }],
        ..Default::default()
    };
    status.recount();
    assert_eq!(
        (
            status.applied,
            status.transitioning,
            status.stalled,
            status.failed
        ),
        (0, 0, 1, 0)
    );
    node.status = Some(status);

    let value = serde_json::to_value(&node).unwrap();
    let patch = &value["status"]["patches"][0];
    assert_eq!(patch["state"], "Stalled");
    assert_eq!(patch["transition"]["target"], "Patched");
    assert_eq!(patch["transition"]["tasksSwitched"], 410);
    assert_eq!(
        patch["transition"]["blockingTasks"][0]["podName"],
        "nginx-7d9"
    );
    assert!(
        patch.get("appliedAt").is_none(),
        "unset options are omitted"
    );
    assert_eq!(value["status"]["simulated"], true);
    assert_eq!(
        value["spec"]["patches"][0]["transition"]["signalAfter"],
        "15s"
    );

    let back: LivePatchNode = serde_json::from_value(value).unwrap();
    assert_eq!(back, node);
    assert_eq!(
        back.status
            .as_ref()
            .unwrap()
            .patch("cve-2024-1234")
            .unwrap()
            .state,
        PatchState::Stalled
    );
    assert!(back.spec.patch("cve-2024-1234").is_some());
    assert!(back.spec.patch("other").is_none());
}

#[test]
fn empty_livepatchnode_status_defaults_to_zero_counts() {
    let status: LivePatchNodeStatus = serde_json::from_value(json!({})).unwrap();
    assert_eq!(status, LivePatchNodeStatus::default());
    assert!(!status.simulated);
    let spec: LivePatchNodeSpec = serde_json::from_value(json!({})).unwrap();
    assert!(spec.patches.is_empty());
    let entry: NodePatch = serde_json::from_value(json!({
        "livePatch": "p", "module": {"kernelRelease": "6.1.0", "source": {"hostPath": "/p.ko"}}
    }))
    .unwrap();
    assert_eq!(entry.desired_state, DesiredState::Enabled);
    assert_eq!(entry.transition, TransitionPolicy::default());
}

#[test]
fn enums_print_and_parse_their_api_spelling() {
    for state in PatchState::ALL {
        let text = state.to_string();
        assert_eq!(text, state.as_str());
        assert_eq!(serde_json::to_value(state).unwrap(), json!(text));
        assert_eq!(PatchState::from_str(&text), Ok(state));
    }
    for value in OnStall::ALL {
        assert_eq!(serde_json::to_value(value).unwrap(), json!(value.as_str()));
        assert_eq!(value.as_str().parse::<OnStall>(), Ok(value));
    }
    for value in DesiredState::ALL {
        assert_eq!(serde_json::to_value(value).unwrap(), json!(value.as_str()));
    }
    for value in TransitionTarget::ALL {
        assert_eq!(serde_json::to_value(value).unwrap(), json!(value.as_str()));
    }
    let error = "Done".parse::<PatchState>().unwrap_err().to_string();
    assert!(
        error.contains("\"Done\" is not a valid PatchState"),
        "{error}"
    );
    assert!(error.contains("Pending, Loading, Transitioning"), "{error}");
}

#[test]
fn patch_state_groups() {
    let in_progress: Vec<_> = PatchState::ALL
        .into_iter()
        .filter(|s| s.is_in_progress())
        .collect();
    assert_eq!(
        in_progress,
        [
            PatchState::Loading,
            PatchState::Transitioning,
            PatchState::Reverting
        ]
    );
    let attention: Vec<_> = PatchState::ALL
        .into_iter()
        .filter(|s| s.needs_attention())
        .collect();
    assert_eq!(attention, [PatchState::Stalled, PatchState::Failed]);
    let settled: Vec<_> = PatchState::ALL
        .into_iter()
        .filter(|s| s.is_settled())
        .collect();
    assert_eq!(
        settled,
        [
            PatchState::Applied,
            PatchState::Reverted,
            PatchState::Failed,
            PatchState::NotApplicable
        ]
    );
}

#[test]
fn tally_counts_each_targeted_node_once() {
    let mut status = LivePatchStatus::default();
    status.tally(
        PatchState::ALL
            .into_iter()
            .chain([PatchState::Applied, PatchState::Applied]),
    );
    assert_eq!(status.targeted, 10);
    assert_eq!(status.applied, 3);
    assert_eq!(status.transitioning, 3);
    assert_eq!(
        (
            status.stalled,
            status.failed,
            status.pending,
            status.reverted,
            status.not_applicable
        ),
        (1, 1, 1, 1, 1)
    );
    let buckets = status.applied
        + status.transitioning
        + status.stalled
        + status.failed
        + status.pending
        + status.reverted;
    assert_eq!(buckets, status.targeted);
}

#[test]
fn max_parallel_resolves_counts_and_percentages() {
    let policy = |v: IntOrString| RolloutPolicy {
        max_parallel: v,
        ..Default::default()
    };
    let int = |n| policy(IntOrString::Int(n));
    let pct = |s: &str| policy(IntOrString::String(s.into()));
    assert_eq!(int(1).max_parallel_nodes(100), Some(1));
    assert_eq!(int(5).max_parallel_nodes(3), Some(5));
    assert_eq!(int(0).max_parallel_nodes(10), None);
    assert_eq!(int(-1).max_parallel_nodes(10), None);
    assert_eq!(pct("10%").max_parallel_nodes(35), Some(3));
    assert_eq!(
        pct("10%").max_parallel_nodes(9),
        Some(1),
        "at least one node"
    );
    assert_eq!(pct("100%").max_parallel_nodes(7), Some(7));
    assert_eq!(pct("50%").max_parallel_nodes(0), Some(1));
    for bad in ["0%", "101%", "05%", "+5%", "5", "abc", "%", "2.5%"] {
        assert_eq!(pct(bad).max_parallel_nodes(10), None, "{bad}");
    }
}

#[test]
fn failure_budget_is_exceeded_past_max_failures() {
    let default = RolloutPolicy::default();
    assert!(!default.failure_budget_exceeded(0));
    assert!(
        default.failure_budget_exceeded(1),
        "default 0: the first failure halts"
    );
    let two = RolloutPolicy {
        max_failures: 2,
        ..Default::default()
    };
    assert!(!two.failure_budget_exceeded(2));
    assert!(two.failure_budget_exceeded(3));
}

#[test]
fn module_sources_and_kernel_matches() {
    assert_eq!(
        ModuleSource::url("https://x/p.ko").get(),
        Some(SourceRef::Url("https://x/p.ko"))
    );
    let cm = ModuleSource::config_map("patches", "p.ko");
    assert_eq!(
        cm.get(),
        Some(SourceRef::ConfigMap(&ConfigMapKey {
            name: "patches".into(),
            key: "p.ko".into()
        }))
    );
    assert!(cm.requires_sha256());
    assert_eq!(ModuleSource::default().get(), None);
    let both = ModuleSource {
        host_path: Some("/p.ko".into()),
        url: Some("https://x/p.ko".into()),
        config_map: None,
    };
    assert_eq!(both.get(), None);

    let regex = PatchModule {
        kernel_release_regex: Some(r"6\.1\..*|6\.6\..*".into()),
        ..Default::default()
    };
    let matcher = regex.kernel_match().unwrap();
    assert_eq!(matcher, KernelMatch::Regex(r"6\.1\..*|6\.6\..*"));
    assert_eq!(
        matcher.anchored_pattern().as_deref(),
        Some(r"^(?:6\.1\..*|6\.6\..*)$")
    );
    assert_eq!(KernelMatch::Exact("6.1.0").anchored_pattern(), None);
    assert_eq!(PatchModule::default().kernel_match(), None);
}

#[test]
fn force_needs_allow_force() {
    let force = TransitionPolicy {
        on_stall: OnStall::Force,
        ..Default::default()
    };
    assert_eq!(force.effective_on_stall(), OnStall::Cordon);
    let allowed = TransitionPolicy {
        allow_force: true,
        ..force
    };
    assert_eq!(allowed.effective_on_stall(), OnStall::Force);
    assert!(OnStall::CordonAndRevert.cordons() && OnStall::CordonAndRevert.reverts());
    assert!(OnStall::Cordon.cordons() && !OnStall::Cordon.reverts());
    assert!(OnStall::Revert.reverts() && !OnStall::Revert.cordons());
    assert!(OnStall::Force.forces() && !OnStall::Force.cordons());
}

#[test]
fn durations_parse_from_the_policy() {
    let policy = TransitionPolicy {
        stall_after: "1h30m".into(),
        signal_after: Some("1.5s".into()),
        ..Default::default()
    };
    assert_eq!(policy.stall_after(), Ok(Duration::from_secs(5400)));
    assert_eq!(policy.signal_after(), Ok(Some(Duration::from_millis(1500))));
    let bad = TransitionPolicy {
        stall_after: "soon".into(),
        ..Default::default()
    };
    assert!(
        bad.stall_after()
            .unwrap_err()
            .to_string()
            .contains("\"soon\"")
    );
}
