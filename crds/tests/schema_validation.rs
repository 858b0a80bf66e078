//! The CRD schemas accept good objects and refuse bad ones with a message that
//! says what to fix.
//!
//! Two checks run on each object, as the API server would: the OpenAPI part of
//! the schema (types, enums, patterns, bounds, required fields, unknown
//! fields) by a small checker below, and the CEL rules
//! (`x-kubernetes-validations`) by kube's client-side CEL evaluator. Both run
//! against the generated CRD, the same schema that ends up in the YAML.

use kube::{
    CustomResourceExt,
    core::cel::{ErrorKind, Validator, compile_schema, estimate_rule_cost},
};
use serde_json::{Value, json};

use graft_crds::{LivePatch, LivePatchNode};

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn schema_of<K: CustomResourceExt>() -> Value {
    let crd = graft_crds::generate::installable(K::crd());
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("derived CRDs have a schema");
    serde_json::to_value(schema).unwrap()
}

/// Every problem the API server would report for `object`, as
/// `path: message` strings.
fn problems(schema: &Value, object: &Value) -> Vec<String> {
    let mut found = Vec::new();
    structural::check(schema, object, "", true, &mut found);
    if let Err(errors) = Validator::new().validate(schema, object, None) {
        for error in errors.iter() {
            if error.kind == ErrorKind::ValidationFailure {
                found.push(format!("{}: {}", error.field_path, error.message));
            } else {
                // A rule that cannot be evaluated is a bug in the rule, not a
                // verdict on the object.
                found.push(format!(
                    "RULE BROKEN ({:?}) {}: {} [{}]",
                    error.kind, error.field_path, error.message, error.rule
                ));
            }
        }
    }
    found
}

/// Checks a table of (name, object, expected) rows: `None` means the object
/// is valid; `Some(text)` means exactly one problem is reported and it
/// contains `text`.
fn check_table(schema: &Value, rows: &[(&str, Value, Option<&str>)]) {
    let mut failures = Vec::new();
    for (name, object, expected) in rows {
        let found = problems(schema, object);
        match expected {
            None if found.is_empty() => {}
            None => failures.push(format!("{name}: expected valid, got {found:#?}")),
            Some(text) => {
                if found.len() != 1 || !found[0].contains(text) {
                    failures.push(format!(
                        "{name}: expected one problem containing {text:?}, got {found:#?}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

fn livepatch(spec: Value) -> Value {
    json!({
        "apiVersion": "graft.dev/v1alpha1",
        "kind": "LivePatch",
        "metadata": {"name": "cve-2024-1234"},
        "spec": spec,
    })
}

/// A LivePatch with one module entry (and otherwise defaults).
fn lp_module(module: Value) -> Value {
    livepatch(json!({"modules": [module]}))
}

fn host_module() -> Value {
    json!({"kernelRelease": "6.1.0-18-amd64", "source": {"hostPath": "/var/lib/graft/p.ko"}})
}

/// A LivePatch with a valid module and the given `transition` policy.
fn lp_transition(transition: Value) -> Value {
    livepatch(json!({"modules": [host_module()], "transition": transition}))
}

/// A LivePatch with a valid module and the given `rollout` policy.
fn lp_rollout(rollout: Value) -> Value {
    livepatch(json!({"modules": [host_module()], "rollout": rollout}))
}

#[test]
fn livepatch_schema_accepts_good_objects_and_explains_bad_ones() {
    let schema = schema_of::<LivePatch>();
    let rows: Vec<(&str, Value, Option<&str>)> = vec![
        // Good objects.
        ("minimal hostPath module", lp_module(host_module()), None),
        (
            "hostPath with sha256",
            lp_module(
                json!({"kernelRelease": "6.1.0-18-amd64", "source": {"hostPath": "/p.ko"}, "sha256": SHA}),
            ),
            None,
        ),
        (
            "https url with sha256",
            lp_module(
                json!({"kernelRelease": "6.1.0-18-amd64", "source": {"url": "https://example.com/p.ko"}, "sha256": SHA}),
            ),
            None,
        ),
        (
            "configMap with sha256",
            lp_module(
                json!({"kernelReleaseRegex": "6\\.1\\.0-.*", "source": {"configMap": {"name": "patch-cve", "key": "p.ko"}}, "sha256": SHA}),
            ),
            None,
        ),
        (
            "everything set",
            livepatch(json!({
                "nodeSelector": {"matchLabels": {"kubernetes.io/os": "linux"},
                                 "matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]},
                "modules": [host_module(),
                            {"kernelReleaseRegex": "6\\.1\\..*", "source": {"url": "https://x.example/p.ko"}, "sha256": SHA}],
                "desiredState": "Disabled",
                "rollout": {"maxParallel": "25%", "maxFailures": 2, "paused": true},
                "transition": {"stallAfter": "1h30m", "signalAfter": "15s", "onStall": "CordonAndRevert",
                               "allowForce": false, "uncordonOnRecovery": false},
            })),
            None,
        ),
        (
            "maxParallel integer",
            lp_rollout(json!({"maxParallel": 3})),
            None,
        ),
        (
            "maxParallel 1%",
            lp_rollout(json!({"maxParallel": "1%"})),
            None,
        ),
        (
            "maxParallel 100%",
            lp_rollout(json!({"maxParallel": "100%"})),
            None,
        ),
        (
            "maxParallel 50%",
            lp_rollout(json!({"maxParallel": "50%"})),
            None,
        ),
        (
            "stallAfter 1.5s",
            lp_transition(json!({"stallAfter": "1.5s"})),
            None,
        ),
        (
            "stallAfter 1s",
            lp_transition(json!({"stallAfter": "1s"})),
            None,
        ),
        (
            "stallAfter 2m30s",
            lp_transition(json!({"stallAfter": "2m30s"})),
            None,
        ),
        (
            "onStall Revert",
            lp_transition(json!({"onStall": "Revert"})),
            None,
        ),
        (
            "Force with allowForce",
            lp_transition(json!({"onStall": "Force", "allowForce": true})),
            None,
        ),
        // Module source.
        (
            "no source",
            lp_module(json!({"kernelRelease": "6.1.0-18-amd64", "source": {}})),
            Some("source must set exactly one of hostPath, url or configMap"),
        ),
        (
            "two sources",
            lp_module(json!({"kernelRelease": "6.1.0-18-amd64",
                             "source": {"hostPath": "/p.ko", "url": "https://x.example/p.ko"}, "sha256": SHA})),
            Some("source must set exactly one of hostPath, url or configMap"),
        ),
        (
            "three sources",
            lp_module(json!({"kernelRelease": "6.1.0-18-amd64",
                             "source": {"hostPath": "/p.ko", "url": "https://x.example/p.ko",
                                        "configMap": {"name": "a", "key": "b"}}, "sha256": SHA})),
            Some("source must set exactly one of hostPath, url or configMap"),
        ),
        (
            "http url",
            lp_module(
                json!({"kernelRelease": "6.1.0-18-amd64", "source": {"url": "http://example.com/p.ko"}, "sha256": SHA}),
            ),
            Some("url must be an https:// URL"),
        ),
        (
            "ftp url",
            lp_module(
                json!({"kernelRelease": "6.1.0-18-amd64", "source": {"url": "ftp://example.com/p.ko"}, "sha256": SHA}),
            ),
            Some("url must be an https:// URL"),
        ),
        (
            "not a url",
            lp_module(
                json!({"kernelRelease": "6.1.0-18-amd64", "source": {"url": "https://exa mple.com/p.ko"}, "sha256": SHA}),
            ),
            Some("url must be an https:// URL"),
        ),
        (
            "relative hostPath",
            lp_module(
                json!({"kernelRelease": "6.1.0-18-amd64", "source": {"hostPath": "modules/p.ko"}}),
            ),
            Some("hostPath must be an absolute path"),
        ),
        (
            "hostPath with ..",
            lp_module(
                json!({"kernelRelease": "6.1.0-18-amd64", "source": {"hostPath": "/var/lib/../../etc/p.ko"}}),
            ),
            Some("hostPath must be an absolute path without '..'"),
        ),
        (
            "configMap name not a DNS name",
            lp_module(
                json!({"kernelRelease": "6.1.0-18-amd64", "source": {"configMap": {"name": "Patch_CVE", "key": "p.ko"}}, "sha256": SHA}),
            ),
            Some("spec.modules[0].source.configMap.name: should match"),
        ),
        (
            "configMap without key",
            lp_module(
                json!({"kernelRelease": "6.1.0-18-amd64", "source": {"configMap": {"name": "patch"}}, "sha256": SHA}),
            ),
            Some("spec.modules[0].source.configMap.key: Required value"),
        ),
        // sha256.
        (
            "url without sha256",
            lp_module(
                json!({"kernelRelease": "6.1.0-18-amd64", "source": {"url": "https://example.com/p.ko"}}),
            ),
            Some("sha256 is required when the module comes from a url or configMap"),
        ),
        (
            "configMap without sha256",
            lp_module(
                json!({"kernelRelease": "6.1.0-18-amd64", "source": {"configMap": {"name": "patch", "key": "p.ko"}}}),
            ),
            Some("sha256 is required when the module comes from a url or configMap"),
        ),
        (
            "uppercase sha256",
            lp_module(
                json!({"kernelRelease": "6.1.0-18-amd64", "source": {"hostPath": "/p.ko"}, "sha256": SHA.to_uppercase()}),
            ),
            Some("spec.modules[0].sha256: should match '^[0-9a-f]{64}$'"),
        ),
        (
            "short sha256",
            lp_module(
                json!({"kernelRelease": "6.1.0-18-amd64", "source": {"url": "https://example.com/p.ko"}, "sha256": &SHA[..63]}),
            ),
            Some("spec.modules[0].sha256: should match '^[0-9a-f]{64}$'"),
        ),
        (
            "sha256 with prefix",
            lp_module(
                json!({"kernelRelease": "6.1.0-18-amd64", "source": {"hostPath": "/p.ko"}, "sha256": format!("sha256:{SHA}")}),
            ),
            Some("spec.modules[0].sha256: should match '^[0-9a-f]{64}$'"),
        ),
        // Kernel release.
        (
            "both kernelRelease and kernelReleaseRegex",
            lp_module(
                json!({"kernelRelease": "6.1.0-18-amd64", "kernelReleaseRegex": "6\\.1\\..*", "source": {"hostPath": "/p.ko"}}),
            ),
            Some("set exactly one of kernelRelease"),
        ),
        (
            "neither kernelRelease nor kernelReleaseRegex",
            lp_module(json!({"source": {"hostPath": "/p.ko"}})),
            Some("set exactly one of kernelRelease"),
        ),
        (
            "empty modules",
            livepatch(json!({"modules": []})),
            Some("spec.modules: should have at least 1 items"),
        ),
        (
            "no modules",
            livepatch(json!({})),
            Some("spec.modules: Required value"),
        ),
        // Rollout.
        (
            "maxParallel 0",
            lp_rollout(json!({"maxParallel": 0})),
            Some("maxParallel must be a whole number of nodes of at least 1"),
        ),
        (
            "maxParallel negative",
            lp_rollout(json!({"maxParallel": -2})),
            Some("maxParallel must be a whole number of nodes of at least 1"),
        ),
        (
            "maxParallel 0%",
            lp_rollout(json!({"maxParallel": "0%"})),
            Some("or a percentage of the targeted nodes from 1% to 100%"),
        ),
        (
            "maxParallel 101%",
            lp_rollout(json!({"maxParallel": "101%"})),
            Some("or a percentage of the targeted nodes from 1% to 100%"),
        ),
        (
            "maxParallel 05%",
            lp_rollout(json!({"maxParallel": "05%"})),
            Some("or a percentage of the targeted nodes from 1% to 100%"),
        ),
        (
            "maxParallel number as string",
            lp_rollout(json!({"maxParallel": "3"})),
            Some("or a percentage of the targeted nodes from 1% to 100%"),
        ),
        (
            "maxParallel fraction",
            lp_rollout(json!({"maxParallel": "2.5%"})),
            Some("or a percentage of the targeted nodes from 1% to 100%"),
        ),
        (
            "maxFailures negative",
            lp_rollout(json!({"maxFailures": -1})),
            Some("spec.rollout.maxFailures: should be greater than or equal to 0"),
        ),
        // Transition.
        (
            "Force without allowForce",
            lp_transition(json!({"onStall": "Force"})),
            Some("onStall: Force marks every task as switched"),
        ),
        (
            "Force with allowForce false",
            lp_transition(json!({"onStall": "Force", "allowForce": false})),
            Some("set allowForce: true to confirm"),
        ),
        (
            "unknown onStall",
            lp_transition(json!({"onStall": "Reboot"})),
            Some("spec.transition.onStall: Unsupported value: \"Reboot\""),
        ),
        (
            "stallAfter without unit",
            lp_transition(json!({"stallAfter": "60"})),
            Some("spec.transition.stallAfter: should match"),
        ),
        (
            "stallAfter in days",
            lp_transition(json!({"stallAfter": "1d"})),
            Some("spec.transition.stallAfter: should match"),
        ),
        (
            "negative stallAfter",
            lp_transition(json!({"stallAfter": "-5s"})),
            Some("spec.transition.stallAfter: should match"),
        ),
        (
            "stallAfter below 1s",
            lp_transition(json!({"stallAfter": "500ms"})),
            Some("stallAfter must be at least 1s"),
        ),
        (
            "signalAfter zero",
            lp_transition(json!({"signalAfter": "0s"})),
            Some("signalAfter must be at least 1s"),
        ),
        (
            "signalAfter garbage",
            lp_transition(json!({"signalAfter": "soon"})),
            Some("spec.transition.signalAfter: should match"),
        ),
        // Other fields.
        (
            "unknown desiredState",
            livepatch(json!({"modules": [host_module()], "desiredState": "On"})),
            Some("spec.desiredState: Unsupported value: \"On\""),
        ),
        (
            "misspelled field",
            livepatch(json!({"modules": [host_module()], "nodeSelecter": {}})),
            Some("spec: unknown field \"nodeSelecter\""),
        ),
    ];
    check_table(&schema, &rows);
}

fn livepatchnode(patches: Value) -> Value {
    json!({
        "apiVersion": "graft.dev/v1alpha1",
        "kind": "LivePatchNode",
        "metadata": {"name": "worker-1"},
        "spec": {"patches": patches},
    })
}

#[test]
fn livepatchnode_schema_accepts_good_objects_and_explains_bad_ones() {
    let schema = schema_of::<LivePatchNode>();
    let entry = |module: Value, transition: Value| {
        json!([{"livePatch": "cve-2024-1234", "livePatchGeneration": 3, "module": module,
                "desiredState": "Enabled", "transition": transition}])
    };
    let url_module = json!({"kernelRelease": "6.1.0-18-amd64", "source": {"url": "https://x.example/p.ko"}, "sha256": SHA});
    let rows: Vec<(&str, Value, Option<&str>)> = vec![
        ("no patches", livepatchnode(json!([])), None),
        (
            "one patch",
            livepatchnode(entry(url_module.clone(), json!({}))),
            None,
        ),
        (
            "with status",
            json!({
                "apiVersion": "graft.dev/v1alpha1", "kind": "LivePatchNode",
                "metadata": {"name": "worker-1"},
                "spec": {"patches": entry(url_module.clone(), json!({}))},
                "status": {
                    "kernelRelease": "6.1.0-18-amd64", "bootId": "0d6c6e2e-5d35-4c87-9b8b-4f6f0f0b8f7e",
                    "livepatchSupported": true, "agentVersion": "0.1.0", "simulated": true,
                    "conditions": [{"type": "Ready", "status": "True", "reason": "AsExpected", "message": "",
                                    "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                    "patches": [{"livePatch": "cve-2024-1234", "state": "Stalled", "sysfsName": "livepatch_cve",
                                 "transition": {"target": "Patched", "started": "2026-01-01T00:00:00Z",
                                                "tasksSwitched": 410, "tasksTotal": 412,
                                                "blockingTasks": [{"pid": 812, "tid": 815, "comm": "worker",
                                                                   "function": "msleep", "kernelThread": false,
                                                                   "podUid": "uid", "podNamespace": "ns", "podName": "p",
                                                                   "containerId": "containerd://abc"}]},
                                 "reason": "TransitionStalled", "message": "2 tasks have not switched"}],
                    "applied": 0, "transitioning": 0, "stalled": 1, "failed": 0,
                }
            }),
            None,
        ),
        (
            "url without sha256",
            livepatchnode(entry(
                json!({"kernelRelease": "6.1.0-18-amd64", "source": {"url": "https://x.example/p.ko"}}),
                json!({}),
            )),
            Some("sha256 is required when the module comes from a url or configMap"),
        ),
        (
            "module without kernelRelease",
            livepatchnode(entry(json!({"source": {"hostPath": "/p.ko"}}), json!({}))),
            Some("spec.patches[0].module.kernelRelease: Required value"),
        ),
        (
            "two sources",
            livepatchnode(entry(
                json!({"kernelRelease": "6.1.0-18-amd64", "source": {"hostPath": "/p.ko", "url": "https://x.example/p.ko"}, "sha256": SHA}),
                json!({}),
            )),
            Some("source must set exactly one of hostPath, url or configMap"),
        ),
        (
            "Force without allowForce",
            livepatchnode(entry(url_module.clone(), json!({"onStall": "Force"}))),
            Some("set allowForce: true to confirm"),
        ),
        (
            "unknown patch state",
            json!({
                "apiVersion": "graft.dev/v1alpha1", "kind": "LivePatchNode",
                "metadata": {"name": "worker-1"}, "spec": {},
                "status": {"patches": [{"livePatch": "p", "state": "Done"}]}
            }),
            Some("status.patches[0].state: Unsupported value: \"Done\""),
        ),
        (
            "too many blocking tasks",
            json!({
                "apiVersion": "graft.dev/v1alpha1", "kind": "LivePatchNode",
                "metadata": {"name": "worker-1"}, "spec": {},
                "status": {"patches": [{"livePatch": "p", "state": "Stalled", "transition": {"target": "Patched",
                    "blockingTasks": (0..11).map(|i| json!({"pid": i, "tid": i, "comm": "t"})).collect::<Vec<_>>()}}]}
            }),
            Some("blockingTasks: must have at most 10 items"),
        ),
    ];
    check_table(&schema, &rows);
}

/// The defaults the API server fills in are the ones the Rust types use.
#[test]
fn schema_defaults_match_rust_defaults() {
    let schema = schema_of::<LivePatch>();
    let spec = &schema["properties"]["spec"]["properties"];
    let rust = serde_json::to_value(graft_crds::LivePatchSpec::default()).unwrap();
    assert_eq!(spec["transition"]["default"], rust["transition"]);
    assert_eq!(spec["rollout"]["default"], rust["rollout"]);
    assert_eq!(spec["desiredState"]["default"], rust["desiredState"]);
    assert_eq!(spec["transition"]["default"]["stallAfter"], "60s");
    assert_eq!(spec["transition"]["default"]["onStall"], "Cordon");
    assert_eq!(spec["transition"]["default"]["uncordonOnRecovery"], true);
    assert_eq!(spec["rollout"]["default"]["maxParallel"], 1);
}

/// Every CEL rule compiles, and none is estimated to exceed the API
/// server's per-rule cost budget.
#[test]
fn every_cel_rule_compiles_within_the_cost_budget() {
    fn walk(
        node: &kube::core::cel::CompiledSchema,
        path: &str,
        out: &mut Vec<String>,
        rules: &mut usize,
    ) {
        for compiled in &node.validations {
            match compiled {
                Ok(result) => {
                    *rules += 1;
                    for warning in estimate_rule_cost(&result.rule.rule, node) {
                        out.push(format!("{path}: {}", warning.message));
                    }
                }
                Err(error) => out.push(format!("{path}: {error}")),
            }
        }
        for (name, child) in &node.properties {
            walk(child, &format!("{path}.{name}"), out, rules);
        }
        if let Some(items) = &node.items {
            walk(items, &format!("{path}[]"), out, rules);
        }
        if let Some(values) = &node.additional_properties {
            walk(values, &format!("{path}{{}}"), out, rules);
        }
    }
    for (kind, schema, expected_rules) in [
        ("LivePatch", schema_of::<LivePatch>(), 9),
        ("LivePatchNode", schema_of::<LivePatchNode>(), 7),
    ] {
        let compiled = compile_schema(&schema);
        let mut problems = Vec::new();
        let mut rules = 0;
        walk(&compiled, kind, &mut problems, &mut rules);
        assert!(problems.is_empty(), "{kind}: {problems:#?}");
        assert_eq!(rules, expected_rules, "{kind}: number of CEL rules");
    }
}

/// A minimal checker for the OpenAPI (non-CEL) part of a structural schema,
/// with messages modelled on the API server's.
mod structural {
    use serde_json::Value;

    pub fn check(schema: &Value, value: &Value, path: &str, root: bool, out: &mut Vec<String>) {
        let at = |p: &str| {
            if p.is_empty() {
                "<root>".to_owned()
            } else {
                p.to_owned()
            }
        };
        if value.is_null() {
            if schema["nullable"] != true {
                out.push(format!("{}: must not be null", at(path)));
            }
            return;
        }
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(value)
        {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            out.push(format!(
                "{}: Unsupported value: {value}: supported values: {}",
                at(path),
                list.join(", ")
            ));
        }
        let int_or_string = schema["x-kubernetes-int-or-string"] == true;
        match (schema["type"].as_str(), value) {
            (_, Value::String(_) | Value::Number(_)) if int_or_string => {}
            (Some("string"), Value::String(s)) => check_string(schema, s, &at(path), out),
            (Some("integer"), Value::Number(n)) if n.is_i64() || n.is_u64() => {
                check_number(schema, n.as_f64().unwrap(), &at(path), out)
            }
            (Some("number"), Value::Number(n)) => {
                check_number(schema, n.as_f64().unwrap(), &at(path), out)
            }
            (Some("boolean"), Value::Bool(_)) => {}
            (Some("array"), Value::Array(items)) => {
                if let Some(min) = schema["minItems"].as_u64()
                    && (items.len() as u64) < min
                {
                    out.push(format!("{}: should have at least {min} items", at(path)));
                }
                if let Some(max) = schema["maxItems"].as_u64()
                    && (items.len() as u64) > max
                {
                    out.push(format!("{}: must have at most {max} items", at(path)));
                }
                for (i, item) in items.iter().enumerate() {
                    check(&schema["items"], item, &format!("{path}[{i}]"), false, out);
                }
            }
            (Some("object"), Value::Object(fields)) => {
                let properties = schema["properties"].as_object();
                for required in schema["required"].as_array().into_iter().flatten() {
                    let name = required.as_str().unwrap();
                    if !fields.contains_key(name) {
                        out.push(format!("{}: Required value", join(path, name)));
                    }
                }
                for (name, field) in fields {
                    let child = join(path, name);
                    if root && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
                        continue;
                    }
                    match properties.and_then(|p| p.get(name)) {
                        Some(field_schema) => check(field_schema, field, &child, false, out),
                        None if schema["additionalProperties"].is_object() => {
                            check(&schema["additionalProperties"], field, &child, false, out)
                        }
                        None => out.push(format!("{}: unknown field {name:?}", at(path))),
                    }
                }
            }
            (expected, _) => out.push(format!(
                "{}: must be of type {}",
                at(path),
                expected.unwrap_or("int-or-string")
            )),
        }
    }

    fn join(path: &str, name: &str) -> String {
        if path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    }

    fn check_string(schema: &Value, s: &str, path: &str, out: &mut Vec<String>) {
        let chars = s.chars().count() as u64;
        if let Some(min) = schema["minLength"].as_u64()
            && chars < min
        {
            out.push(format!("{path}: should be at least {min} chars long"));
        }
        if let Some(max) = schema["maxLength"].as_u64()
            && chars > max
        {
            out.push(format!("{path}: may not be more than {max} bytes"));
        }
        if let Some(pattern) = schema["pattern"].as_str()
            && !regex::Regex::new(pattern)
                .expect("schema patterns compile")
                .is_match(s)
        {
            out.push(format!("{path}: should match '{pattern}'"));
        }
    }

    fn check_number(schema: &Value, n: f64, path: &str, out: &mut Vec<String>) {
        if let Some(min) = schema["minimum"].as_f64()
            && n < min
        {
            out.push(format!("{path}: should be greater than or equal to {min}"));
        }
        if let Some(max) = schema["maximum"].as_f64()
            && n > max
        {
            out.push(format!("{path}: should be less than or equal to {max}"));
        }
    }
}
