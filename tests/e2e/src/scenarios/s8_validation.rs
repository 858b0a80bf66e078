//! Scenario 8: invalid LivePatch objects are rejected by the API server
//! (422) with the schema's own messages, read from the generated CRD: a bad
//! sha256, two sources, Force without allowForce, a malformed and a too
//! short duration, an http URL. A valid object is accepted. All requests are
//! server-side dry runs (admission and validation run in full; nothing is
//! stored).

use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use graft_crds::{LivePatch, ModuleSource, OnStall, PatchModule};
use serde_json::Value;

use super::{Scn, dry_run};
use crate::{
    checks::api_refusal,
    env::{Env, RELEASE, within},
};

/// The node of the LivePatch schema at `path` (`*` steps into array items).
fn schema_at<'a>(schema: &'a Value, path: &[&str]) -> Result<&'a Value> {
    path.iter()
        .try_fold(schema, |node, key| {
            if *key == "*" {
                node.get("items")
            } else {
                node.get("properties")?.get(*key)
            }
        })
        .ok_or_else(|| anyhow!("the LivePatch schema has nothing at {}", path.join(".")))
}

/// The message of the one CEL rule at `path`.
fn rule_message(schema: &Value, path: &[&str]) -> Result<String> {
    let rules = schema_at(schema, path)?
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("no x-kubernetes-validations at {}", path.join(".")))?;
    match rules.as_slice() {
        [rule] => rule["message"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the rule at {} has no message", path.join("."))),
        _ => bail!("{} rules at {}, expected one", rules.len(), path.join(".")),
    }
}

/// What the API server says about a value that misses the `pattern` at `path`.
fn pattern_message(schema: &Value, path: &[&str]) -> Result<String> {
    let pattern = schema_at(schema, path)?["pattern"]
        .as_str()
        .ok_or_else(|| anyhow!("no pattern at {}", path.join(".")))?;
    Ok(format!("should match '{pattern}'"))
}

struct Case {
    what: &'static str,
    object: LivePatch,
    field: &'static str,
    message: String,
}

pub async fn run(env: Arc<Env>) -> Result<()> {
    let sc = Scn::new(env.clone(), 8);
    let crd = env
        .crds
        .iter()
        .find(|f| f.crd.spec.names.kind == "LivePatch")
        .ok_or_else(|| anyhow!("no LivePatch CRD"))?;
    let schema = serde_json::to_value(
        crd.crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .ok_or_else(|| anyhow!("the LivePatch CRD has no schema"))?,
    )?;
    let valid = |suffix: &str| {
        sc.live_patch(
            suffix,
            vec![PatchModule {
                kernel_release: Some(RELEASE.into()),
                kernel_release_regex: None,
                source: ModuleSource::host_path("/var/lib/graft/modules/e2e.ko"),
                sha256: Some("0".repeat(64)),
            }],
            1,
        )
    };

    let mut cases = Vec::new();
    let mut object = valid("bad-sha256");
    object.spec.modules[0].sha256 = Some("ABC123".into());
    cases.push(Case {
        what: "a sha256 that is not 64 lowercase hex digits",
        object,
        field: "spec.modules[0].sha256",
        message: pattern_message(&schema, &["spec", "modules", "*", "sha256"])?,
    });
    let mut object = valid("two-sources");
    object.spec.modules[0].source.url = Some("https://example.com/patch.ko".into());
    cases.push(Case {
        what: "two sources (hostPath and url)",
        object,
        field: "spec.modules[0].source",
        message: rule_message(&schema, &["spec", "modules", "*", "source"])?,
    });
    let mut object = valid("force");
    object.spec.transition.on_stall = OnStall::Force;
    cases.push(Case {
        what: "onStall Force without allowForce",
        object,
        field: "spec.transition.onStall",
        message: rule_message(&schema, &["spec", "transition"])?,
    });
    let mut object = valid("bad-duration");
    object.spec.transition.stall_after = "ten minutes".into();
    cases.push(Case {
        what: "a malformed duration",
        object,
        field: "spec.transition.stallAfter",
        message: pattern_message(&schema, &["spec", "transition", "stallAfter"])?,
    });
    let mut object = valid("short-duration");
    object.spec.transition.stall_after = "500ms".into();
    cases.push(Case {
        what: "a duration under 1s",
        object,
        field: "spec.transition.stallAfter",
        message: rule_message(&schema, &["spec", "transition", "stallAfter"])?,
    });
    let mut object = valid("http-url");
    object.spec.modules[0].source = ModuleSource::url("http://example.com/patch.ko");
    cases.push(Case {
        what: "a plain http URL",
        object,
        field: "spec.modules[0].source.url",
        message: rule_message(&schema, &["spec", "modules", "*", "source", "url"])?,
    });

    let api = sc.live_patches();
    let pp = dry_run(&env);
    within(
        "creating a valid LivePatch (dry run)",
        api.create(&pp, &valid("valid")),
    )
    .await
    .map_err(|e| anyhow!("the API server refused a valid LivePatch: {e:#}"))?;

    let mut wrong = Vec::new();
    for case in cases {
        let result = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            api.create(&pp, &case.object),
        )
        .await
        .map_err(|_| anyhow!("creating the LivePatch with {} got no answer", case.what))?;
        match api_refusal(&result) {
            Some((422, message))
                if message.contains(case.field) && message.contains(&case.message) => {}
            Some((code, message)) => wrong.push(format!(
                "{}: refused with {code} {message:?}; want 422 naming {} with {:?}",
                case.what, case.field, case.message
            )),
            None => wrong.push(format!(
                "{}: {}",
                case.what,
                match result {
                    Ok(_) => "accepted".to_owned(),
                    Err(e) => format!("failed without an API answer: {e}"),
                }
            )),
        }
    }
    if !wrong.is_empty() {
        bail!("{}", wrong.join("; "));
    }
    Ok(())
}
