//! The chart's own objects for scenario 9 (the agent's RBAC and
//! ServiceAccount, the admission policy), rendered by Helm's SDK
//! (`render_chart.py`), and a kubeconfig for a ServiceAccount token.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::{Value, json};

use crate::env::{Env, FIELD_MANAGER, LABEL, within};

/// The objects scenario 9 installs, as rendered.
#[derive(Debug)]
pub struct ChartObjects {
    pub objects: Vec<Value>,
    /// Name of the agent's ServiceAccount.
    pub agent_service_account: String,
    /// The Helm SDK version that rendered them.
    pub helm: String,
}

impl ChartObjects {
    /// The rendered object of `kind`.
    pub fn find(&self, kind: &str) -> Option<&Value> {
        self.objects.iter().find(|o| o["kind"] == kind)
    }
}

/// Renders the chart (release `release`, the run's namespace, the run's
/// label as `commonLabels`, the admission policy on) and keeps the agent's
/// RBAC, its ServiceAccount and the admission policy with its binding.
pub async fn render(env: &Env, release: &str) -> Result<ChartObjects> {
    let python = env.helm_python.as_ref().ok_or_else(|| {
        anyhow!(
            "scenario 9 installs the chart's own RBAC and admission policy, rendered with Helm's SDK \
             (helm-python-sdk): GRAFT_E2E_HELM_PYTHON must name a Python that has it (tests/e2e/run.sh \
             sets one up in .work/venv-helm)"
        )
    })?;
    let script = env.repo_root.join("tests/e2e/render_chart.py");
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python)
            .arg(&script)
            .args([
                "--chart",
                &env.repo_root.join("charts/graft").to_string_lossy(),
            ])
            .args(["--release", release, "--namespace", &env.namespace])
            .args(["--label", &format!("{LABEL}={}", env.run_id)])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("rendering the chart took more than 120s"))?
    .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    if !output.status.success() {
        bail!(
            "rendering the chart failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let rendered: Value =
        serde_json::from_slice(&output.stdout).context("the renderer's output is not JSON")?;
    let objects: Vec<Value> = rendered["objects"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        // The chart's ServiceAccounts template also makes the operator's.
        .filter(|o| {
            o["kind"] != "ServiceAccount"
                || o["metadata"]["labels"]["app.kubernetes.io/component"] == "agent"
        })
        .collect();
    let agent_service_account = objects
        .iter()
        .find(|o| o["kind"] == "ServiceAccount")
        .and_then(|o| o["metadata"]["name"].as_str())
        .ok_or_else(|| anyhow!("the chart rendered no agent ServiceAccount"))?
        .to_owned();
    for kind in [
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        if !objects.iter().any(|o| o["kind"] == kind) {
            bail!("the chart rendered no {kind} for the agent (admissionPolicy.enabled=true)");
        }
    }
    Ok(ChartObjects {
        objects,
        agent_service_account,
        helm: rendered["helm"].as_str().unwrap_or("?").to_owned(),
    })
}

fn api_resource(kind: &str) -> Result<(ApiResource, bool)> {
    let (group, version, plural, namespaced) = match kind {
        "ServiceAccount" => ("", "v1", "serviceaccounts", true),
        "Role" => ("rbac.authorization.k8s.io", "v1", "roles", true),
        "RoleBinding" => ("rbac.authorization.k8s.io", "v1", "rolebindings", true),
        "ClusterRole" => ("rbac.authorization.k8s.io", "v1", "clusterroles", false),
        "ClusterRoleBinding" => (
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            false,
        ),
        "ValidatingAdmissionPolicy" => (
            "admissionregistration.k8s.io",
            "v1",
            "validatingadmissionpolicies",
            false,
        ),
        "ValidatingAdmissionPolicyBinding" => (
            "admissionregistration.k8s.io",
            "v1",
            "validatingadmissionpolicybindings",
            false,
        ),
        other => bail!("the chart rendered an unexpected kind {other}"),
    };
    let api_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Ok((
        ApiResource {
            group: group.to_owned(),
            version: version.to_owned(),
            api_version,
            kind: kind.to_owned(),
            plural: plural.to_owned(),
        },
        namespaced,
    ))
}

/// Applies the rendered objects (server-side apply, field manager graft-e2e).
pub async fn apply(env: &Env, chart: &ChartObjects) -> Result<()> {
    for object in &chart.objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let (resource, namespaced) = api_resource(kind)?;
        let api: Api<DynamicObject> = if namespaced {
            let namespace = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or(&env.namespace);
            Api::namespaced_with(env.client.clone(), namespace, &resource)
        } else {
            Api::all_with(env.client.clone(), &resource)
        };
        if object["metadata"]["labels"][LABEL] != json!(env.run_id) {
            bail!("the rendered {kind} {name} lacks the run's label (commonLabels)");
        }
        within(
            &format!("applying the chart's {kind} {name}"),
            api.patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(object),
            ),
        )
        .await?;
    }
    Ok(())
}

/// A kubeconfig for the current cluster that authenticates with `token`
/// (the cluster entry of the current context, unchanged), as JSON text.
pub fn token_kubeconfig(token: &str, namespace: &str) -> Result<String> {
    let config =
        Kubeconfig::read().context("reading the kubeconfig (KUBECONFIG or ~/.kube/config)")?;
    let context_name = config
        .current_context
        .clone()
        .ok_or_else(|| anyhow!("the kubeconfig has no current-context"))?;
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| anyhow!("the kubeconfig has no context {context_name}"))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .ok_or_else(|| anyhow!("the kubeconfig has no cluster {}", context.cluster))?;
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [serde_json::to_value(cluster)?],
        "users": [{"name": "graft-e2e-token", "user": {"token": token}}],
        "contexts": [{"name": "graft-e2e-token", "context": {
            "cluster": cluster.name, "user": "graft-e2e-token", "namespace": namespace,
        }}],
        "current-context": "graft-e2e-token",
    });
    Ok(serde_json::to_string_pretty(&config)?)
}

/// A client from a kubeconfig text.
pub async fn client_from(kubeconfig: &str, user_agent: &'static str) -> Result<Client> {
    let parsed = Kubeconfig::from_yaml(kubeconfig).context("parsing a generated kubeconfig")?;
    let mut config = kube::Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
        .await
        .context("loading a generated kubeconfig")?;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(user_agent),
    ));
    Ok(Client::try_from(config)?)
}

/// Writes `text` to `path`, readable by its owner only (it holds a token).
pub fn write_secret_file(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
