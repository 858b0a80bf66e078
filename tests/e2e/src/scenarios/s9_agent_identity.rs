//! Scenario 9: with the chart's agent RBAC and admission policy installed
//! (rendered from the chart by Helm's SDK, applied unchanged), an agent
//! identity for node A cannot write node B's LivePatchNode status.
//!
//! The identity is the one a real agent pod has: a ServiceAccount token
//! bound to a Pod scheduled to node A (TokenRequest with a boundObjectRef;
//! the Pod is created with `spec.nodeName` and never runs, no kubelet
//! needed). Since Kubernetes 1.30 (ServiceAccountTokenPodNodeInfo, beta and
//! on by default; GA in 1.32) the API server puts the Pod's node into such a
//! token's identity as `authentication.kubernetes.io/node-name`: the policy
//! compares it with the LivePatchNode's name. A real `graft-agent run` with
//! that identity patches node A and reports its status; one that pretends
//! to be node B's agent with the same identity is refused.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use graft_crds::{AGENT_FIELD_MANAGER, API_VERSION, LivePatchNode, PatchState};
use k8s_openapi::api::{
    authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
    },
    core::v1::{
        Capabilities, Container, Pod, PodSecurityContext, PodSpec, SeccompProfile, SecurityContext,
        ServiceAccount, Toleration,
    },
};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::{Scn, exact};
use crate::{
    chart,
    checks::{Look, api_refusal, eventually, stays},
    env::{Env, NodeOpts, RELEASE, SimNode, agent_key, within},
};

const NODE_NAME_KEY: &str = "authentication.kubernetes.io/node-name";

pub async fn run(env: Arc<Env>) -> Result<()> {
    let sc = Scn::new(env.clone(), 9);
    let served = match env
        .client
        .list_api_group_resources("admissionregistration.k8s.io/v1")
        .await
    {
        Ok(list) => list
            .resources
            .iter()
            .any(|r| r.name == "validatingadmissionpolicies"),
        Err(kube::Error::Api(status)) if status.code == 404 => false,
        Err(error) => {
            return Err(anyhow!(error).context("discovering admissionregistration.k8s.io/v1"));
        }
    };
    if !served {
        bail!(
            "this API server ({}) does not serve ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1, \
             GA since Kubernetes 1.30): the chart's admission policy cannot be exercised here",
            env.server_version
        );
    }
    let rendered = chart::render(&env, &format!("e2e-{}", env.run_id)).await?;
    eprintln!(
        "  scenario 9: chart rendered with Helm SDK {}",
        rendered.helm
    );
    chart::apply(&env, &rendered).await?;
    let policy = rendered
        .find("ValidatingAdmissionPolicy")
        .ok_or_else(|| anyhow!("no policy rendered"))?;
    let validations = policy["spec"]["validations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let no_claim_message = validations
        .iter()
        .find(|v| {
            v["expression"]
                .as_str()
                .is_some_and(|e| e.contains("variables.nodeName != ''"))
        })
        .and_then(|v| v["message"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            anyhow!("the rendered policy has no node-name-claim rule: {validations:?}")
        })?;
    ensure!(
        validations.iter().any(|v| v["messageExpression"]
            .as_str()
            .is_some_and(|m| m.contains("may only write the LivePatchNode"))),
        "the rendered policy has no rule naming the agent's own LivePatchNode: {validations:?}"
    );

    let module = env
        .build_module("graft_e2e_s9", RELEASE, "e2e_s9_fn", "1500ms")
        .await?;
    let a = env.add_node(9, NodeOpts::new("a")).await?;
    let b = env.add_node(9, NodeOpts::new("b")).await?;
    let service_account = rendered.agent_service_account.clone();

    // The agent's Pod on node A (it never runs), and a token bound to it.
    let pod = agent_pod(&env, &sc.name("agent-a"), &a.name, &service_account);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);
    let pod = within(
        "creating the agent Pod on node A",
        pods.create(&env.post_params(), &pod),
    )
    .await?;
    let bound_token = token(&env, &service_account, Some(&pod)).await?;
    let username = format!("system:serviceaccount:{}:{service_account}", env.namespace);
    let extra = review(&env, &bound_token, &username).await?;
    let node_claim = extra.get(NODE_NAME_KEY).cloned().unwrap_or_default();
    if node_claim != [a.name.clone()] {
        bail!(
            "a token bound to a Pod on node {} carries {NODE_NAME_KEY}={node_claim:?}: this API server ({}) \
             does not put the Pod's node into bound tokens (ServiceAccountTokenPodNodeInfo, on by default \
             since Kubernetes 1.30, GA in 1.32), so the chart's policy cannot tell agents apart here; extra: {extra:?}",
            a.name,
            env.server_version
        );
    }
    let kubeconfig = chart::token_kubeconfig(&bound_token, &env.namespace)?;
    let kubeconfig_path = env
        .workdir
        .join(format!("{}.kubeconfig", sc.name("agent-a")));
    chart::write_secret_file(&kubeconfig_path, &kubeconfig)?;
    let as_agent_a = chart::client_from(&kubeconfig, "graft-e2e/agent-identity").await?;

    // The operator makes a LivePatchNode for every Linux node.
    for node in [&a, &b] {
        eventually(
            &format!("LivePatchNode {}", node.name),
            Duration::from_secs(30),
            || async {
                Ok(match sc.lpn(&node.name).await? {
                    Some(_) => Look::Done(()),
                    None => Look::Waiting("absent".into()),
                })
            },
        )
        .await?;
    }

    // RBAC and admission policies take effect a moment after they are
    // created: probe with dry runs until both are in force.
    eventually(
        "the chart's RBAC to let agent A write its own status (dry run)",
        Duration::from_secs(30),
        || async {
            let result = write_status(&as_agent_a, &a.name, true).await;
            Ok(match result {
                Ok(_) => Look::Done(()),
                Err(e) => Look::Waiting(format!("{e:#}")),
            })
        },
    )
    .await?;
    let cross = format!(
        "the Graft agent on node {a} may only write the LivePatchNode {a}, not {b}",
        a = a.name,
        b = b.name
    );
    eventually(
        "the admission policy to refuse node B's status to agent A (dry run)",
        Duration::from_secs(60),
        || async {
            let result = write_status(&as_agent_a, &b.name, true).await;
            Ok(match api_refusal(&result) {
                Some((403, message)) if message.contains(&cross) => Look::Done(()),
                Some((code, message)) => Look::Waiting(format!("refused with {code}: {message}")),
                None if result.is_ok() => {
                    Look::Waiting("accepted: the policy is not in force yet".into())
                }
                None => Look::Waiting(format!("{result:?}")),
            })
        },
    )
    .await?;

    // For real: node B's status is refused to agent A, with the policy's words.
    let result = write_status(&as_agent_a, &b.name, false).await;
    match api_refusal(&result) {
        Some((403, message)) if message.contains(&cross) => {}
        other => {
            bail!("agent A writing node B's status: want 403 {cross:?}, got {other:?} ({result:?})")
        }
    }
    // RBAC: no spec writes at all.
    let spec_write = Api::<LivePatchNode>::all(as_agent_a.clone())
        .patch(
            &a.name,
            &PatchParams {
                field_manager: Some(AGENT_FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({"spec": {"patches": []}})),
        )
        .await;
    match api_refusal(&spec_write) {
        Some((403, message)) if message.contains("cannot patch resource \"livepatchnodes\"") => {}
        other => bail!("agent A patching a LivePatchNode spec: want RBAC's 403, got {other:?}"),
    }
    // A token of the same ServiceAccount that is not bound to a Pod carries no node name.
    let unbound = token(&env, &service_account, None).await?;
    let as_unbound = chart::client_from(
        &chart::token_kubeconfig(&unbound, &env.namespace)?,
        "graft-e2e/unbound-token",
    )
    .await?;
    let result = write_status(&as_unbound, &a.name, true).await;
    match api_refusal(&result) {
        Some((403, message)) if message.contains(&no_claim_message) => {}
        other => bail!(
            "an unbound agent token writing a status: want 403 {no_claim_message:?}, got {other:?}"
        ),
    }

    // Real agents with that identity: node A's works; one posing as node B's is refused.
    let lp = sc.live_patch("lp", vec![exact(&module)], 2);
    let lp_name = lp.name_any();
    sc.create(&lp).await?;
    env.start_agent_as(&agent_key(&a.name), &a.name, &a.dir, Some(&kubeconfig_path))
        .await?;
    let impostor = format!("{}-as-node-a", agent_key(&b.name));
    env.start_agent_as(&impostor, &b.name, &b.dir, Some(&kubeconfig_path))
        .await?;
    sc.wait_state(
        &a.name,
        &lp_name,
        PatchState::Applied,
        Duration::from_secs(40),
    )
    .await?;
    sc.expect_lpn(
        &a,
        &lp_name,
        &module,
        PatchState::Applied,
        &[("Applied", "1")],
    )
    .await?;
    let refused_in_log = eventually(
        "the impostor agent to be refused",
        Duration::from_secs(40),
        || async {
            let log = env.log_of(&impostor).await;
            Ok(if log.contains(&cross) {
                Look::Done(())
            } else {
                Look::Waiting(format!(
                    "its log has {} lines, none with the policy's message",
                    log.lines().count()
                ))
            })
        },
    )
    .await;
    refused_in_log?;
    stays(
        &format!("LivePatchNode {} without a status", b.name),
        Duration::from_secs(3),
        || async {
            Ok(status_of(&sc, &b)
                .await?
                .map(|s| format!("it has a status: {s}")))
        },
    )
    .await?;
    sc.wait_lp(
        &lp_name,
        Duration::from_secs(20),
        &[("Applied", "1"), ("Targeted", "2"), ("Pending", "1")],
        ("Available", "False"),
    )
    .await?;
    env.stop(&impostor).await?;
    env.stop(&agent_key(&a.name)).await?;
    Ok(())
}

/// The status of a node's LivePatchNode as JSON, if it has any content.
async fn status_of(sc: &Scn, node: &SimNode) -> Result<Option<String>> {
    let status = sc.lpn(&node.name).await?.and_then(|o| o.status);
    Ok(status
        .filter(|s| s.agent_version.is_some() || !s.patches.is_empty())
        .map(|s| serde_json::to_string(&s).unwrap_or_default()))
}

/// Server-side apply of a status field, as the agent writes its status.
async fn write_status(client: &Client, node: &str, dry_run: bool) -> kube::Result<LivePatchNode> {
    let mut params = PatchParams::apply(AGENT_FIELD_MANAGER).force();
    params.dry_run = dry_run;
    let body = json!({
        "apiVersion": API_VERSION,
        "kind": "LivePatchNode",
        "metadata": {"name": node},
        "status": {"agentVersion": "e2e-identity-probe"},
    });
    let api: Api<LivePatchNode> = Api::all(client.clone());
    match tokio::time::timeout(
        Duration::from_secs(30),
        api.patch_status(node, &params, &Patch::Apply(&body)),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(kube::Error::Service("no answer within 30s".into())),
    }
}

/// A Pod for the agent on `node`, as the DaemonSet would make it (it never
/// runs: there is no kubelet; it only anchors the token's identity).
fn agent_pod(env: &Env, name: &str, node: &str, service_account: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(env.namespace.clone()),
            labels: Some(env.labels()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            service_account_name: Some(service_account.to_owned()),
            automount_service_account_token: Some(false),
            // Never evicted from a node that is never Ready.
            tolerations: Some(vec![Toleration {
                operator: Some("Exists".into()),
                ..Toleration::default()
            }]),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65534),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: "graft-agent".into(),
                image: Some("graft-e2e.invalid/never-pulled:0".into()),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        ..Capabilities::default()
                    }),
                    ..SecurityContext::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// A ServiceAccount token (TokenRequest API), bound to `pod` when given.
async fn token(env: &Env, service_account: &str, pod: Option<&Pod>) -> Result<String> {
    let bound = pod.map(|pod| BoundObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(pod.name_any()),
        uid: pod.metadata.uid.clone(),
    });
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            bound_object_ref: bound,
            expiration_seconds: Some(600),
        },
        ..TokenRequest::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &env.namespace);
    let answer = within(
        &format!("requesting a token for ServiceAccount {service_account}"),
        api.create_token_request(service_account, &PostParams::default(), &request),
    )
    .await?;
    answer
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .context("the TokenRequest answer has no token")
}

/// The identity the API server gives `token` (TokenReview): checks the
/// username, returns the extra fields.
async fn review(
    env: &Env,
    token: &str,
    username: &str,
) -> Result<std::collections::BTreeMap<String, Vec<String>>> {
    let api: Api<TokenReview> = Api::all(env.client.clone());
    let request = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: None,
        },
        ..TokenReview::default()
    };
    let answer = within(
        "reviewing the agent token",
        api.create(&PostParams::default(), &request),
    )
    .await?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        bail!(
            "the API server does not accept the agent token: {:?}",
            status.error
        );
    }
    let user = status.user.unwrap_or_default();
    if user.username.as_deref() != Some(username) {
        bail!(
            "the agent token authenticates as {:?}, want {username}",
            user.username
        );
    }
    Ok(user.extra.unwrap_or_default())
}
