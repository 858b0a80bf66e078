//! Every manifest in `examples/livepatches/` passes the CRD's validation (CEL
//! rules evaluated locally, no unknown or misspelled fields) and plans as its
//! comments say.

mod common;

use std::{collections::BTreeMap, path::PathBuf};

use common::*;
use graft_crds::{DesiredState, LivePatch, OnStall};
use graft_operator::select::KernelMatcher;
use kube::{CustomResourceExt, core::cel::Validator};
use serde_json::Value;

fn examples() -> BTreeMap<String, Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/livepatches");
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("examples/livepatches exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let value: Value =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            found.insert(
                path.file_name().unwrap().to_string_lossy().into_owned(),
                value,
            );
        }
    }
    found
}

fn example(name: &str) -> LivePatch {
    let mut lp: LivePatch = serde_json::from_value(examples()[name].clone()).unwrap();
    lp.metadata.generation = Some(1);
    lp.metadata.uid = Some("uid".into());
    lp.metadata.finalizers = Some(vec![graft_crds::FINALIZER.into()]);
    lp
}

/// Whether every field of `written` survives a round trip through the Rust
/// type (a misspelled or unknown field would be dropped).
fn missing_fields(written: &Value, parsed: &Value, path: &str, out: &mut Vec<String>) {
    match (written, parsed) {
        (Value::Object(w), Value::Object(p)) => {
            for (key, value) in w {
                match p.get(key) {
                    Some(other) => missing_fields(value, other, &format!("{path}.{key}"), out),
                    None => out.push(format!("{path}.{key}")),
                }
            }
        }
        (Value::Array(w), Value::Array(p)) if w.len() == p.len() => {
            for (i, (a, b)) in w.iter().zip(p).enumerate() {
                missing_fields(a, b, &format!("{path}[{i}]"), out);
            }
        }
        (w, p) if w == p => {}
        (w, p) => out.push(format!("{path}: {w} became {p}")),
    }
}

#[test]
fn every_example_is_a_valid_livepatch() {
    let crd = graft_crds::generate::installable(LivePatch::crd());
    let schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    let all = examples();
    assert!(all.len() >= 5, "{:?}", all.keys());
    for (name, value) in &all {
        assert_eq!(value["apiVersion"], "graft.dev/v1alpha1", "{name}");
        assert_eq!(value["kind"], "LivePatch", "{name}");
        if let Err(errors) = Validator::new().validate(&schema, value, None) {
            panic!(
                "{name}: {:?}",
                errors.iter().map(|e| e.to_string()).collect::<Vec<_>>()
            );
        }
        let lp: LivePatch =
            serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut missing = Vec::new();
        missing_fields(value, &serde_json::to_value(&lp).unwrap(), "", &mut missing);
        assert!(
            missing.is_empty(),
            "{name}: unknown or misspelled fields {missing:?}"
        );
        for module in &lp.spec.modules {
            assert!(module.kernel_match().is_some(), "{name}");
            assert!(module.source.get().is_some(), "{name}");
            assert!(
                !module.source.requires_sha256() || module.sha256.is_some(),
                "{name}"
            );
            if let Some(sha) = &module.sha256 {
                assert!(
                    sha.len() == 64
                        && sha
                            .bytes()
                            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                    "{name}"
                );
            }
        }
        assert!(
            KernelMatcher::new(&lp.spec.modules).invalid.is_empty(),
            "{name}"
        );
        assert!(lp.spec.rollout.max_parallel_nodes(100).is_some(), "{name}");
        assert!(lp.spec.transition.stall_after().is_ok(), "{name}");
    }
}

#[test]
fn the_cautious_rollout_starts_ten_percent_and_cordons_and_reverts() {
    let lp = example("cautious-rollout.yaml");
    assert_eq!(lp.spec.transition.on_stall, OnStall::CordonAndRevert);
    let nodes: Vec<_> = (0..30).map(|i| node(&format!("n{i:02}"), "")).collect();
    let mut cluster = Cluster::new(nodes, [lp]);
    cluster.step();
    let admitted = cluster
        .nodes
        .keys()
        .filter(|n| cluster.admitted(n, "cve-2024-1086-cautious"))
        .count();
    assert_eq!(admitted, 3);
}

#[test]
fn the_kernel_family_example_picks_the_first_matching_entry() {
    let lp = example("kernel-family-regex.yaml");
    let nodes = [
        with_kernel(node("exact", ""), "6.1.0-18-amd64"),
        with_kernel(node("older", ""), "6.1.0-9-amd64"),
        with_kernel(node("cloud", ""), "6.1.0-18-cloud-amd64"),
        with_kernel(node("newer", ""), "6.1.0-20-amd64"),
    ];
    let mut cluster = Cluster::new(
        nodes,
        [rollout(
            lp,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(10),
            0,
        )],
    );
    cluster.step();
    let source = |n: &str| {
        let entry = cluster.entry(n, "cve-2024-1086-debian12").unwrap();
        serde_json::to_value(&entry.module.source)
            .unwrap()
            .to_string()
    };
    assert!(source("exact").contains("6.1.0-18-amd64/"));
    assert!(source("older").contains("6.1.0-older-amd64/"));
    assert!(source("cloud").contains("hostPath"));
    assert!(cluster.entry("newer", "cve-2024-1086-debian12").is_none());
    assert_eq!(cluster.status("cve-2024-1086-debian12").not_applicable, 1);
}

#[test]
fn the_configmap_example_targets_only_its_pool() {
    let lp = example("configmap-sha256.yaml");
    let web = with_label(
        with_label(node("web", ""), "pool", "web"),
        "environment",
        "production",
    );
    let staging = with_label(
        with_label(node("staging", ""), "pool", "web"),
        "environment",
        "staging",
    );
    let mut cluster = Cluster::new([web, staging], [lp]);
    cluster.step();
    assert!(cluster.admitted("web", "cve-2024-1086-configmap"));
    assert!(
        cluster
            .entry("staging", "cve-2024-1086-configmap")
            .is_none()
    );
}

#[test]
fn the_disabled_example_reverts_what_the_hostpath_example_applied() {
    let mut cluster = Cluster::new([node("n1", "")], [example("hostpath-one-kernel.yaml")]);
    cluster.step();
    cluster.report(
        "n1",
        "cve-2024-1086-hostpath",
        graft_crds::PatchState::Applied,
    );
    cluster.step();
    let mut disabled = example("disabled.yaml");
    disabled.metadata.generation = Some(2);
    cluster.put_live_patch(disabled);
    cluster.step();
    assert_eq!(
        cluster
            .entry("n1", "cve-2024-1086-hostpath")
            .unwrap()
            .desired_state,
        DesiredState::Disabled
    );
}
