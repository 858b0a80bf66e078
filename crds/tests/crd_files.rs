//! The committed CRD YAML files are exactly what the Rust types generate, and
//! the generated schemas document every field.

use std::path::{Path, PathBuf};

use graft_crds::generate::{REGENERATE_COMMAND, check_dir, crd_files, render_all};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crds/ sits in the repository root")
        .to_path_buf()
}

#[test]
fn committed_crd_yaml_matches_the_rust_types() {
    let drift = check_dir(&repo_root().join("crds"));
    assert!(
        drift.is_empty(),
        "the committed CRD YAML is stale:\n  {}\nregenerate it from the repository root with:\n  {REGENERATE_COMMAND}",
        drift
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// The Helm chart carries copies of the CRDs once it exists; they must not
/// drift either.
#[test]
fn chart_crds_match_the_rust_types() {
    let chart_crds = repo_root().join("charts/graft/files/crds");
    let drift = check_dir(&chart_crds);
    assert!(
        drift.is_empty(),
        "the chart's CRDs are stale:\n  {}\nregenerate them from the repository root with:\n  \
         cargo run -p graft-crds --bin crdgen -- --out-dir charts/graft/files/crds",
        drift
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

#[test]
fn check_dir_reports_missing_and_stale_files() {
    let dir = std::env::temp_dir().join(format!("graft-crds-drift-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let missing = check_dir(&dir);
    assert_eq!(missing.len(), 2);
    assert!(missing.iter().all(|d| d.first_difference.is_none()));
    assert!(
        missing[0]
            .to_string()
            .ends_with("livepatch.yaml is missing")
    );

    graft_crds::generate::write_all(&dir).unwrap();
    assert!(check_dir(&dir).is_empty());

    let path = dir.join("livepatchnode.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("shortNames:\n    - lpn", "shortNames:\n    - lpx", 1),
    )
    .unwrap();
    let stale = check_dir(&dir);
    assert_eq!(stale.len(), 1);
    let line = stale[0].first_difference.expect("the file exists");
    assert_eq!(text.lines().nth(line - 1), Some("    - lpn"));

    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn printed_stream_holds_every_crd_once() {
    let stream = render_all();
    let names: Vec<_> = stream
        .lines()
        .filter_map(|l| l.strip_prefix("  name: "))
        .collect();
    assert_eq!(names, ["livepatches.graft.dev", "livepatchnodes.graft.dev"]);
    assert_eq!(stream.matches("\n---\n").count(), 1);
    for document in stream.split("\n---\n") {
        let parsed: serde_yaml::Value = serde_yaml::from_str(document).unwrap();
        assert_eq!(parsed["kind"].as_str(), Some("CustomResourceDefinition"));
    }
}

/// `kubectl explain` shows each field's description: none may be missing.
#[test]
fn every_field_has_a_description() {
    fn walk(schema: &Value, path: &str, missing: &mut Vec<String>) {
        let described = schema["description"]
            .as_str()
            .is_some_and(|d| !d.trim().is_empty());
        if !described {
            missing.push(path.to_owned());
        }
        if let Some(properties) = schema["properties"].as_object() {
            for (name, child) in properties {
                walk(child, &format!("{path}.{name}"), missing);
            }
        }
        if let Some(items) = schema["items"].as_object() {
            // An array's items are described by the array field itself;
            // descend into their fields only.
            for (name, child) in items
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                walk(child, &format!("{path}[].{name}"), missing);
            }
        }
    }
    for file in crd_files() {
        let version = &file.crd.spec.versions[0];
        let schema = serde_json::to_value(
            version
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        let mut missing = Vec::new();
        walk(&schema, &file.crd.spec.names.kind, &mut missing);
        assert!(
            missing.is_empty(),
            "{}: fields without a description: {missing:#?}",
            file.file_name
        );
    }
}

#[test]
fn crds_are_cluster_scoped_with_status_short_names_and_category() {
    let files = crd_files();
    let expected = [("LivePatch", "lp"), ("LivePatchNode", "lpn")];
    for (file, (kind, short)) in files.iter().zip(expected) {
        let spec = &file.crd.spec;
        assert_eq!(spec.group, "graft.dev");
        assert_eq!(spec.scope, "Cluster");
        assert_eq!(spec.names.kind, kind);
        assert_eq!(
            spec.names.short_names.as_deref(),
            Some(&[short.to_owned()][..])
        );
        assert_eq!(
            spec.names.categories.as_deref(),
            Some(&["graft".to_owned()][..])
        );
        let version = &spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        assert!(
            version.subresources.as_ref().unwrap().status.is_some(),
            "{kind}: status subresource"
        );
    }
}

#[test]
fn printer_columns_are_the_documented_ones() {
    let columns = |i: usize, wide: bool| -> Vec<String> {
        crd_files()[i].crd.spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .filter(|c| wide || c.priority.unwrap_or(0) == 0)
            .map(|c| format!("{}={}", c.name, c.json_path))
            .collect()
    };
    assert_eq!(
        columns(0, false),
        [
            "Applied=.status.applied",
            "Targeted=.status.targeted",
            "Stalled=.status.stalled",
            "Failed=.status.failed",
            "Age=.metadata.creationTimestamp",
        ]
    );
    assert_eq!(
        columns(1, false),
        [
            "Kernel=.status.kernelRelease",
            "Applied=.status.applied",
            "Transitioning=.status.transitioning",
            "Stalled=.status.stalled",
            "Age=.metadata.creationTimestamp",
        ]
    );
    // Every column points at a field the schema has.
    for (i, file) in crd_files().iter().enumerate() {
        let schema = serde_json::to_value(&file.crd.spec.versions[0].schema).unwrap();
        for column in columns(i, true) {
            let path = column.split_once('=').unwrap().1;
            if path.starts_with(".metadata.") {
                continue;
            }
            let mut node = &schema["openAPIV3Schema"];
            for part in path.trim_start_matches('.').split('.') {
                node = &node["properties"][part];
            }
            assert!(
                node.is_object(),
                "{}: column {column} points at no field",
                file.file_name
            );
        }
    }
}

mod crdgen_binary {
    use std::process::Command;

    fn crdgen(args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_crdgen"))
            .args(args)
            .output()
            .unwrap()
    }

    #[test]
    fn prints_every_crd_without_arguments() {
        let out = crdgen(&[]);
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            graft_crds::generate::render_all()
        );
    }

    #[test]
    fn writes_to_any_directory_and_checks_it() {
        let dir = std::env::temp_dir().join(format!("graft-crdgen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dir_arg = dir.to_str().unwrap();

        let check = crdgen(&["--check", dir_arg]);
        assert_eq!(check.status.code(), Some(1), "missing files fail the check");
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert!(stderr.contains("livepatch.yaml is missing"), "{stderr}");
        assert!(
            stderr.contains("regenerate with: cargo run -p graft-crds --bin crdgen -- --out-dir"),
            "{stderr}"
        );

        assert!(crdgen(&["--out-dir", dir_arg]).status.success());
        assert!(dir.join("livepatch.yaml").is_file() && dir.join("livepatchnode.yaml").is_file());
        assert!(crdgen(&["--check", dir_arg]).status.success());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_bad_arguments_with_usage() {
        for args in [
            &["--out-dir"][..],
            &["--frobnicate"],
            &["--check", "a", "b"],
        ] {
            let out = crdgen(args);
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("Usage: crdgen"),
                "{args:?}"
            );
        }
        let help = crdgen(&["--help"]);
        assert!(help.status.success());
        assert!(String::from_utf8_lossy(&help.stdout).contains("--out-dir DIR"));
    }
}
