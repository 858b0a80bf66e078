"""The Graft chart, checked with real Helm.

Helm's own Go SDK (v4), through PyPI's helm-python-sdk: lint, schema
validation, rendering, and a client-side dry-run install. Run with
tests/helm/run.sh, which makes the virtualenv. Where a `helm` binary is on
PATH, a few checks run through it as well.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import celpy
import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "graft"
RULES_FILE = CHART_DIR / "files" / "prometheus-rules.yaml"
RUNBOOKS = REPO / "docs" / "runbooks.md"

RELEASE = "graft"
NAMESPACE = "graft-system"

# Every toggle on (ServiceMonitor; PodMonitor is its alternative, tested apart).
ALL_ON: dict[str, Any] = {
    "crds": {"enabled": True, "keep": True},
    "admissionPolicy": {"enabled": True},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "grafanaDashboard": {"enabled": True},
    "agent": {"kmsg": True},
}

# The contract's alerts (.work/cluster-contract.md, DESIGN.md).
ALERTS = ["GraftTransitionStalled", "GraftPatchFailed", "GraftNodeCordoned", "GraftRolloutHalted"]

STANDARD_LABELS = {
    "helm.sh/chart": "graft-0.1.0",
    "app.kubernetes.io/name": "graft",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/version": "0.1.0",
    "app.kubernetes.io/managed-by": "Helm",
    "app.kubernetes.io/part-of": "graft",
}


# --- helpers ------------------------------------------------------------------


@pytest.fixture(scope="session")
def chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


def render_files(chart: helm.Chart, values: dict[str, Any] | None = None, **kw: Any) -> dict[str, str]:
    return chart.render(values, name=kw.get("name", RELEASE), namespace=kw.get("namespace", NAMESPACE))


def render(chart: helm.Chart, values: dict[str, Any] | None = None, **kw: Any) -> list[dict[str, Any]]:
    """Every object the chart renders (NOTES.txt left out)."""
    objects = []
    for path, text in sorted(render_files(chart, values, **kw).items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return objects


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(objects: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return sorted((o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in objects)


def rule_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """RBAC rules as (apiGroup, resource, resourceName or '*', verb) tuples."""
    out = set()
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames", ["*"]):
                        out.add((group, resource, name, verb))
    return out


def expand(spec: dict[tuple[str, str], list[str]]) -> set[tuple[str, str, str, str]]:
    return {(g, r, "*", v) for (g, r), verbs in spec.items() for v in verbs}


def container(obj: dict[str, Any]) -> dict[str, Any]:
    containers = obj["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def schema_error(chart: helm.Chart, values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmValuesError) as raised:
        chart.validate_schema(values)
    return str(raised.value)


# --- lint, install --------------------------------------------------------------


def test_lint_reports_no_errors_or_warnings_with_defaults_and_every_toggle_on() -> None:
    for values in (None, ALL_ON, {"podMonitor": {"enabled": True}}):
        report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert report["errors"] == [] and problems == [], report


def test_the_chart_requires_kubernetes_1_30(chart: helm.Chart) -> None:
    """ValidatingAdmissionPolicy v1, the token's node-name claim and appArmorProfile are 1.30+."""
    assert chart.metadata["kubeVersion"] == ">=1.30.0-0"
    assert chart.metadata["apiVersion"] == "v2" and chart.metadata["type"] == "application"


def test_client_dry_run_install_renders_notes_and_the_whole_manifest(chart: helm.Chart) -> None:
    config = helm.Config(storage_driver="memory", namespace=NAMESPACE)
    try:
        release = config.install(chart, RELEASE, ALL_ON, namespace=NAMESPACE, dry_run="client")
    finally:
        config.close()
    manifest = [d for d in yaml.safe_load_all(release["manifest"]) if d]
    assert kinds(manifest) == kinds(render(chart, ALL_ON))
    assert release["chart_name"] == "graft" and release["namespace"] == NAMESPACE
    assert f"kubectl -n {NAMESPACE} get deploy/graft-operator ds/graft-agent" in release["notes"]


# --- what renders ----------------------------------------------------------------


def test_defaults_render_the_workloads_rbac_crds_services_and_admission_policy(chart: helm.Chart) -> None:
    assert kinds(render(chart)) == sorted(
        [
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy", "graft-agent-own-node"),
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding", "graft-agent-own-node"),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition", "livepatches.graft.dev"),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition", "livepatchnodes.graft.dev"),
            ("apps/v1", "DaemonSet", "graft-agent"),
            ("apps/v1", "Deployment", "graft-operator"),
            ("rbac.authorization.k8s.io/v1", "ClusterRole", "graft-agent"),
            ("rbac.authorization.k8s.io/v1", "ClusterRole", "graft-operator"),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "graft-agent"),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "graft-operator"),
            ("rbac.authorization.k8s.io/v1", "Role", "graft-agent-modules"),
            ("rbac.authorization.k8s.io/v1", "Role", "graft-operator-leader-election"),
            ("rbac.authorization.k8s.io/v1", "RoleBinding", "graft-agent-modules"),
            ("rbac.authorization.k8s.io/v1", "RoleBinding", "graft-operator-leader-election"),
            ("v1", "Service", "graft-agent-metrics"),
            ("v1", "Service", "graft-operator-metrics"),
            ("v1", "ServiceAccount", "graft-agent"),
            ("v1", "ServiceAccount", "graft-operator"),
        ]
    )


def test_monitoring_objects_are_off_by_default_and_render_when_turned_on(chart: helm.Chart) -> None:
    monitoring = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"}
    assert not [o for o in render(chart) if o["kind"] in monitoring]

    on = render(chart, ALL_ON)
    assert sorted((o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in on if o["kind"] in monitoring) == [
        ("monitoring.coreos.com/v1", "PrometheusRule", "graft"),
        ("monitoring.coreos.com/v1", "ServiceMonitor", "graft-agent"),
        ("monitoring.coreos.com/v1", "ServiceMonitor", "graft-operator"),
        ("v1", "ConfigMap", "graft-dashboard"),
    ]
    for monitor in (o for o in on if o["kind"] == "ServiceMonitor"):
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["spec"]["endpoints"] == [{"port": "http-metrics", "path": "/metrics", "interval": "30s"}]
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}

    pods = render(chart, {"podMonitor": {"enabled": True, "interval": "15s"}})
    monitors = [o for o in pods if o["kind"] == "PodMonitor"]
    assert sorted(m["metadata"]["name"] for m in monitors) == ["graft-agent", "graft-operator"]
    assert all(m["spec"]["podMetricsEndpoints"][0]["port"] == "http" for m in monitors)
    assert not [o for o in pods if o["kind"] == "ServiceMonitor"]


def test_service_monitor_and_pod_monitor_together_fail_the_render(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="choose one"):
        render(chart, {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}})


def test_monitors_select_the_metrics_services_and_pods(chart: helm.Chart) -> None:
    objects = render(chart, ALL_ON)
    for component, port in (("operator", 9441), ("agent", 9440)):
        service = find(objects, "Service", f"graft-{component}-metrics")
        monitor = find(objects, "ServiceMonitor", f"graft-{component}")
        workload = find(objects, "Deployment" if component == "operator" else "DaemonSet")
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert workload["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
        assert service["spec"]["ports"] == [
            {"name": "http-metrics", "port": port, "targetPort": "http", "protocol": "TCP"}
        ]
        assert container(workload)["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]


def test_every_object_and_pod_carries_the_standard_labels(chart: helm.Chart) -> None:
    objects = render(chart, {**ALL_ON, "commonLabels": {"team": "kernel"}})
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        where = f'{obj["kind"]} {obj["metadata"]["name"]}'
        assert STANDARD_LABELS.items() <= labels.items(), where
        assert labels["team"] == "kernel", where
    for workload in (find(objects, "Deployment"), find(objects, "DaemonSet")):
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert STANDARD_LABELS.items() <= pod_labels.items()
        assert pod_labels["app.kubernetes.io/component"] in ("operator", "agent")


def test_namespaced_objects_live_in_the_release_namespace(chart: helm.Chart) -> None:
    cluster_scoped = {
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    for obj in render(chart, ALL_ON, namespace="kernel-ops"):
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in obj["metadata"], obj["metadata"]["name"]
        else:
            assert obj["metadata"]["namespace"] == "kernel-ops", obj["metadata"]["name"]


def test_names_follow_the_release_name(chart: helm.Chart) -> None:
    objects = render(chart, name="edge")
    assert find(objects, "DaemonSet")["metadata"]["name"] == "edge-graft-agent"
    assert find(objects, "Deployment")["metadata"]["name"] == "edge-graft-operator"
    objects = render(chart, {"fullnameOverride": "lp"})
    assert find(objects, "DaemonSet")["metadata"]["name"] == "lp-agent"


# --- values schema ---------------------------------------------------------------


def test_the_default_values_and_every_toggle_pass_the_schema(chart: helm.Chart) -> None:
    chart.validate_schema(None)
    chart.validate_schema(ALL_ON)
    chart.validate_schema(chart.values)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"serviceMonitors": {"enabled": True}}, "serviceMonitors"),
        ({"operator": {"replica": 2}}, "replica"),
        ({"agent": {"image": {"repo": "x"}}}, "repo"),
        ({"crds": {"enabled": True, "keepOnUninstall": True}}, "keepOnUninstall"),
        ({"agent": {"tolerations": [{"operator": "Exists", "efect": "NoSchedule"}]}}, "efect"),
        ({"agent": {"resources": {"request": {"cpu": "1"}}}}, "request"),
        ({"grafanaDashboard": {"enabled": True, "folder": "x"}}, "folder"),
    ],
)
def test_the_schema_rejects_unknown_keys(chart: helm.Chart, values: dict[str, Any], complaint: str) -> None:
    message = schema_error(chart, values)
    assert "additional properties" in message and complaint in message, message


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"operator": {"replicas": "2"}}, "/operator/replicas"),
        ({"operator": {"replicas": -1}}, "/operator/replicas"),
        ({"crds": {"enabled": "yes"}}, "/crds/enabled"),
        ({"crds": {"keep": 1}}, "/crds/keep"),
        ({"admissionPolicy": {"enabled": "true"}}, "/admissionPolicy/enabled"),
        ({"agent": {"port": 70000}}, "/agent/port"),
        ({"operator": {"port": "9441"}}, "/operator/port"),
        ({"agent": {"logFormat": "yaml"}}, "/agent/logFormat"),
        ({"agent": {"tolerations": {"operator": "Exists"}}}, "/agent/tolerations"),
        ({"agent": {"tolerations": [{"operator": "Sometimes"}]}}, "/agent/tolerations/0/operator"),
        ({"agent": {"nodeSelector": {"kubernetes.io/os": 1}}}, "/agent/nodeSelector"),
        ({"agent": {"moduleDir": "var/lib/graft"}}, "/agent/moduleDir"),
        ({"agent": {"maxUnavailable": "ten"}}, "/agent/maxUnavailable"),
        ({"agent": {"privileged": "false"}}, "/agent/privileged"),
        ({"agent": {"appArmorProfile": {"type": "Localhost"}}}, "/agent/appArmorProfile"),
        ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, "/operator/image/pullPolicy"),
        ({"operator": {"image": {"digest": "latest"}}}, "/operator/image/digest"),
        ({"serviceMonitor": {"interval": "30 seconds"}}, "/serviceMonitor/interval"),
        ({"commonLabels": ["team=kernel"]}, "/commonLabels"),
        ({"operator": {"serviceAccount": {"create": False}}}, "/operator/serviceAccount"),
    ],
)
def test_the_schema_rejects_wrong_types_and_values(chart: helm.Chart, values: dict[str, Any], where: str) -> None:
    message = schema_error(chart, values)
    assert where in message, message


def test_values_yaml_documents_every_value() -> None:
    """Every key in values.yaml has a comment right above it (or shares the comment of the
    key on the line before), except the entries of a default map or list
    (e.g. resources.requests.cpu, nodeSelector's label)."""
    data_parents = {"resources", "requests", "limits", "nodeSelector", "labels", "annotations", "tolerations"}
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    parents: list[tuple[int, str]] = []
    undocumented = []
    documented = False
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while parents and parents[-1][0] >= indent:
            parents.pop()
        previous = next((l.strip() for l in reversed(lines[:i]) if l.strip()), "")
        shares_comment = i > 0 and re.match(r"^ {%d}[A-Za-z][\w.-]*: \S" % indent, lines[i - 1]) and documented
        documented = previous.startswith("#") or bool(shares_comment)
        if not documented and not (parents and parents[-1][1] in data_parents):
            undocumented.append(f"values.yaml:{i + 1}: {line.strip()}")
        parents.append((indent, key))
    assert not undocumented, "\n".join(undocumented)


def test_the_schema_describes_exactly_the_keys_of_values_yaml(chart: helm.Chart) -> None:
    schema = chart.schema
    assert schema is not None

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].split("/")[-1]]
        return node

    def walk(values: Any, node: dict[str, Any], path: str) -> None:
        node = resolve(node)
        if isinstance(values, dict) and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path or '/'} accepts unknown keys"
            assert set(values) <= set(node["properties"]), f"{path}: {set(values) - set(node['properties'])}"
            for key, value in values.items():
                walk(value, node["properties"][key], f"{path}/{key}")

    walk(chart.values, schema, "")
    # Every object with fixed keys in the schema refuses others.
    def closed(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node:
                assert node.get("additionalProperties") is False, path
            for key, child in node.items():
                # if/then add conditions to an object that is closed already.
                if key not in ("if", "then"):
                    closed(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                closed(child, f"{path}/{i}")

    closed(schema, "#")


# --- RBAC ------------------------------------------------------------------------


def test_the_operator_gets_only_what_it_needs(chart: helm.Chart) -> None:
    objects = render(chart)
    role = find(objects, "ClusterRole", "graft-operator")
    assert rule_set(role["rules"]) == expand(
        {
            ("graft.dev", "livepatches"): ["get", "list", "watch", "update", "patch"],
            ("graft.dev", "livepatches/status"): ["update", "patch"],
            ("graft.dev", "livepatches/finalizers"): ["update", "patch"],
            ("graft.dev", "livepatchnodes"): ["get", "list", "watch", "create", "patch", "update", "delete"],
            ("", "nodes"): ["get", "list", "watch", "patch"],
            ("", "events"): ["create", "patch"],
            ("events.k8s.io", "events"): ["create", "patch"],
        }
    )
    lease = find(objects, "Role", "graft-operator-leader-election")
    assert lease["metadata"]["namespace"] == NAMESPACE
    assert rule_set(lease["rules"]) == {
        ("coordination.k8s.io", "leases", "*", "create"),
        *{("coordination.k8s.io", "leases", "graft-operator", v) for v in ("get", "update", "patch")},
    }
    for binding_kind, role_kind, name in (
        ("ClusterRoleBinding", "ClusterRole", "graft-operator"),
        ("RoleBinding", "Role", "graft-operator-leader-election"),
    ):
        binding = find(objects, binding_kind, name)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "graft-operator", "namespace": NAMESPACE}]


def test_the_agent_reads_its_objects_and_writes_only_status(chart: helm.Chart) -> None:
    objects = render(chart)
    role = find(objects, "ClusterRole", "graft-agent")
    assert rule_set(role["rules"]) == expand(
        {
            ("graft.dev", "livepatchnodes"): ["get", "list", "watch"],
            ("graft.dev", "livepatchnodes/status"): ["get", "patch", "update"],
            ("", "pods"): ["list"],
        }
    )
    modules = find(objects, "Role", "graft-agent-modules")
    assert modules["metadata"]["namespace"] == NAMESPACE
    assert rule_set(modules["rules"]) == {("", "configmaps", "*", "get")}
    for binding_kind, role_kind, name in (
        ("ClusterRoleBinding", "ClusterRole", "graft-agent"),
        ("RoleBinding", "Role", "graft-agent-modules"),
    ):
        binding = find(objects, binding_kind, name)
        assert binding["roleRef"]["name"] == name and binding["roleRef"]["kind"] == role_kind
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "graft-agent", "namespace": NAMESPACE}]


def test_no_role_grants_wildcards_secrets_or_escalation(chart: helm.Chart) -> None:
    for obj in render(chart, ALL_ON):
        if obj["kind"] not in ("ClusterRole", "Role"):
            continue
        for group, resource, _, verb in rule_set(obj["rules"]):
            assert "*" not in (group, resource, verb), obj["metadata"]["name"]
            assert resource not in ("secrets", "serviceaccounts/token", "pods/exec"), obj["metadata"]["name"]
            assert verb not in ("escalate", "bind", "impersonate"), obj["metadata"]["name"]


def test_the_workloads_use_separate_service_accounts(chart: helm.Chart) -> None:
    objects = render(chart)
    assert find(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "graft-operator"
    assert find(objects, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"] == "graft-agent"
    objects = render(chart, {"agent": {"serviceAccount": {"create": False, "name": "node-agent"}}})
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"] == ["graft-operator"]
    assert find(objects, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"] == "node-agent"
    assert find(objects, "ClusterRoleBinding", "graft-agent")["subjects"][0]["name"] == "node-agent"


# --- the agent DaemonSet -----------------------------------------------------------


def test_the_agent_runs_on_every_linux_node_even_cordoned_and_tainted(chart: helm.Chart) -> None:
    pod = find(render(chart), "DaemonSet")["spec"]["template"]["spec"]
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["hostPID"] is True
    assert not pod.get("hostNetwork") and not pod.get("hostIPC")
    assert "affinity" not in pod


def test_the_agent_holds_exactly_the_capabilities_the_kernel_interface_needs(chart: helm.Chart) -> None:
    ds = find(render(chart), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    sc = container(ds)["securityContext"]
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == {"SYS_MODULE", "SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH", "SYSLOG"}
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["appArmorProfile"] == {"type": "Unconfined"}
    # The API server refuses allowPrivilegeEscalation: false next to CAP_SYS_ADMIN.
    assert sc.get("allowPrivilegeEscalation") is not False


def test_the_agent_can_be_made_privileged_or_given_an_apparmor_profile(chart: helm.Chart) -> None:
    sc = container(find(render(chart, {"agent": {"privileged": True}}), "DaemonSet"))["securityContext"]
    assert sc["privileged"] is True and "capabilities" not in sc and "appArmorProfile" not in sc
    sc = container(
        find(
            render(chart, {"agent": {"appArmorProfile": {"type": "Localhost", "localhostProfile": "graft-agent"}}}),
            "DaemonSet",
        )
    )["securityContext"]
    assert sc["appArmorProfile"] == {"type": "Localhost", "localhostProfile": "graft-agent"}


def test_the_agent_sees_the_hosts_sysfs_modules_journal_and_kernel_log(chart: helm.Chart) -> None:
    ds = find(render(chart), "DaemonSet")
    c = container(ds)
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}

    def host(mount_path: str) -> dict[str, Any]:
        return volumes[mounts[mount_path]["name"]].get("hostPath", {})

    # /sys/kernel read-write (livepatch `enabled`); the rest of /sys stays the runtime's read-only view.
    assert host("/sys/kernel") == {"path": "/sys/kernel", "type": "Directory"}
    assert not mounts["/sys/kernel"].get("readOnly")
    assert "/sys" not in mounts and "/proc" not in mounts
    # Module files read-only, where --host-root /host finds them.
    assert host("/host/var/lib/graft/modules") == {"path": "/var/lib/graft/modules", "type": "DirectoryOrCreate"}
    assert mounts["/host/var/lib/graft/modules"]["readOnly"] is True
    assert host("/run/graft")["path"] == "/run/graft"
    assert host("/dev/kmsg") == {"path": "/dev/kmsg", "type": "CharDevice"}
    assert mounts["/dev/kmsg"]["readOnly"] is True
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    # No other host paths.
    assert sorted(v["hostPath"]["path"] for v in volumes.values() if "hostPath" in v) == [
        "/dev/kmsg",
        "/run/graft",
        "/sys/kernel",
        "/var/lib/graft/modules",
    ]

    moved = find(render(chart, {"agent": {"moduleDir": "/opt/patches", "kmsg": False}}), "DaemonSet")
    mounts = {m["mountPath"]: m for m in container(moved)["volumeMounts"]}
    assert "/host/opt/patches" in mounts and "/dev/kmsg" not in mounts


def test_the_agent_runs_in_cluster_mode_with_the_contracts_flags_and_downward_api(chart: helm.Chart) -> None:
    c = container(find(render(chart), "DaemonSet"))
    assert c["args"][0] == "run"
    assert set(c["args"][1:]) == {
        "--node-name=$(NODE_NAME)",
        "--namespace=$(POD_NAMESPACE)",
        "--listen=0.0.0.0:9440",
        "--host-root=/host",
        "--log-format=json",
    }
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}
    assert env == {"NODE_NAME": "spec.nodeName", "POD_NAMESPACE": "metadata.namespace"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["image"] == "graft-dev/graft-agent:0.1.0"


def test_images_take_registry_tag_and_digest(chart: helm.Chart) -> None:
    objects = render(
        chart,
        {
            "agent": {"image": {"registry": "registry.example", "tag": "v9"}},
            "operator": {"image": {"digest": "sha256:" + "a" * 64}},
        },
    )
    assert container(find(objects, "DaemonSet"))["image"] == "registry.example/graft-dev/graft-agent:v9"
    assert container(find(objects, "Deployment"))["image"] == "graft-dev/graft-operator@sha256:" + "a" * 64


# --- the operator Deployment ---------------------------------------------------------


def test_the_operator_runs_unprivileged_non_root_and_read_only(chart: helm.Chart) -> None:
    deploy = find(render(chart), "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    sc = container(deploy)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert sc["runAsNonRoot"] is True
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostPID") and not pod.get("hostNetwork") and "volumes" not in pod


def test_the_operator_serves_probes_on_9441_and_gets_its_identity_from_the_downward_api(chart: helm.Chart) -> None:
    c = container(find(render(chart), "Deployment"))
    assert "--listen=0.0.0.0:9441" in c["args"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["ports"][0]["containerPort"] == 9441
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "NODE_NAME": "spec.nodeName"}


def test_one_operator_replica_runs_without_leader_election_and_never_overlaps(chart: helm.Chart) -> None:
    deploy = find(render(chart), "Deployment")
    assert deploy["spec"]["replicas"] == 1
    assert not [a for a in container(deploy)["args"] if a.startswith("--lease") or a == "--leader-election"]
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize(
    "values",
    [{"operator": {"replicas": 2}}, {"operator": {"replicas": 3}}, {"operator": {"leaderElection": {"enabled": True}}}],
)
def test_leader_election_is_on_whenever_more_than_one_operator_may_run(chart: helm.Chart, values: dict[str, Any]) -> None:
    deploy = find(render(chart, values), "Deployment")
    args = container(deploy)["args"]
    assert "--leader-election" in args
    assert "--lease-name=graft-operator" in args and "--lease-namespace=$(POD_NAMESPACE)" in args
    assert deploy["spec"]["strategy"]["type"] == "RollingUpdate"


# --- CRDs ------------------------------------------------------------------------------


def generator_output() -> list[dict[str, Any]]:
    """The CRDs exactly as the crds crate's generator prints them."""
    if shutil.which("cargo") is None:
        pytest.fail("cargo is not on PATH: cannot run the CRD generator (crds/src/bin/crdgen.rs)")
    run = subprocess.run(
        ["cargo", "run", "--quiet", "-p", "graft-crds", "--bin", "crdgen"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr
    return [d for d in yaml.safe_load_all(run.stdout) if d]


@pytest.fixture(scope="session")
def generated_crds() -> list[dict[str, Any]]:
    return generator_output()


def test_the_charts_crd_files_are_the_generators_output() -> None:
    run = subprocess.run(
        ["cargo", "run", "--quiet", "-p", "graft-crds", "--bin", "crdgen", "--", "--check", "charts/graft/files/crds"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, (
        f"{run.stderr}\nregenerate with: cargo run -p graft-crds --bin crdgen -- --out-dir charts/graft/files/crds"
    )


def test_the_rendered_crds_equal_the_generators_output_plus_labels_and_keep(
    chart: helm.Chart, generated_crds: list[dict[str, Any]]
) -> None:
    rendered = [o for o in render(chart) if o["kind"] == "CustomResourceDefinition"]
    assert sorted(c["metadata"]["name"] for c in rendered) == sorted(c["metadata"]["name"] for c in generated_crds)
    by_name = {c["metadata"]["name"]: c for c in generated_crds}
    for crd in rendered:
        meta = crd["metadata"]
        assert meta.pop("annotations") == {"helm.sh/resource-policy": "keep"}
        labels = meta.pop("labels")
        assert STANDARD_LABELS.items() <= labels.items()
        assert labels["app.kubernetes.io/component"] == "crds"
        assert crd == by_name[meta["name"]], f"{meta['name']} differs from the generator's output"


def test_crds_can_be_left_to_go_with_the_release_or_left_out(chart: helm.Chart) -> None:
    for crd in (o for o in render(chart, {"crds": {"keep": False}}) if o["kind"] == "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})
    assert not [o for o in render(chart, {"crds": {"enabled": False}}) if o["kind"] == "CustomResourceDefinition"]


def test_the_crds_cover_the_resources_the_roles_name(chart: helm.Chart) -> None:
    objects = render(chart)
    plurals = {c["spec"]["names"]["plural"] for c in objects if c["kind"] == "CustomResourceDefinition"}
    for role in (o for o in objects if o["kind"] == "ClusterRole"):
        for group, resource, _, _ in rule_set(role["rules"]):
            if group == "graft.dev":
                assert resource.split("/")[0] in plurals, resource


# --- alerts, runbooks, dashboard -----------------------------------------------------------


def test_the_prometheus_rule_embeds_the_rules_file_unchanged(chart: helm.Chart) -> None:
    rule = find(render(chart, ALL_ON), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == yaml.safe_load(RULES_FILE.read_text())


def test_every_alert_of_the_contract_has_severity_summary_description_and_runbook() -> None:
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    assert [g["name"] for g in groups] == ["graft"]
    rules = {r["alert"]: r for r in groups[0]["rules"]}
    assert list(rules) == ALERTS
    runbooks = RUNBOOKS.read_text()
    headings = {h.strip() for h in re.findall(r"^## (.+)$", runbooks, flags=re.M)}
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert annotations["runbook_url"].endswith(f"docs/runbooks.md#{name.lower()}"), name
        assert name in headings, f"docs/runbooks.md has no section for {name}"
        # What to run: the node's LivePatchNode, and graft-agent on the node.
        node = "{{ $labels.node }}" if "$labels.node" in annotations["summary"] else "NODE"
        assert f"`kubectl get lpn {node} -o yaml`" in annotations["description"], name
        assert "graft-agent blocking`" in annotations["description"] or "`graft-agent status`" in annotations["description"], name
    assert rules["GraftTransitionStalled"]["expr"] == "graft_transition_stalled == 1"
    assert rules["GraftTransitionStalled"]["for"] == "1m"
    assert rules["GraftPatchFailed"]["expr"] == 'graft_patch_state{state="Failed"} == 1'
    assert rules["GraftNodeCordoned"]["for"] == "30m" and "graft_nodes_cordoned" in rules["GraftNodeCordoned"]["expr"]
    assert rules["GraftRolloutHalted"]["for"] == "1m" and "graft_rollout_halted" in rules["GraftRolloutHalted"]["expr"]


def test_the_dashboard_shows_rollouts_transitions_stalls_durations_and_blocking_tasks(chart: helm.Chart) -> None:
    cm = find(render(chart, {**ALL_ON, "grafanaDashboard": {"enabled": True, "namespace": "monitoring"}}), "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["graft.json"])
    assert dashboard["uid"] == "graft-overview"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for metric in (
        "graft_nodes{",
        "graft_transition_in_progress",
        "graft_transition_stalled",
        "graft_transition_duration_seconds_bucket",
        "graft_transition_blocking_tasks",
        "graft_nodes_cordoned",
    ):
        assert any(metric in e for e in exprs), metric
    assert any("histogram_quantile(0.9" in e for e in exprs)
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Rollout progress per patch", "Transitions in progress", "Stalled nodes", "Transition duration", "Blocking tasks"} <= titles


def test_notes_say_what_to_do_next(chart: helm.Chart) -> None:
    notes = render_files(chart)[f"graft/templates/NOTES.txt"]
    assert "kubectl get livepatchnodes" in notes
    assert "pod-security.kubernetes.io/enforce=privileged" in notes
    assert "--set serviceMonitor.enabled=true" in notes and "--set prometheusRule.enabled=true" in notes
    notes = render_files(chart, {**ALL_ON, "admissionPolicy": {"enabled": False}})["graft/templates/NOTES.txt"]
    assert "A PrometheusRule with Graft's alerts is installed" in notes
    assert "WARNING: admissionPolicy.enabled is false" in notes


# --- the admission policy ------------------------------------------------------------------


class Policy:
    """Evaluates the rendered ValidatingAdmissionPolicy's CEL like the API server does:
    matchConditions, then variables, then every validation (cel-python, not cel-go)."""

    def __init__(self, policy: dict[str, Any]) -> None:
        self.spec = policy["spec"]
        self.env = celpy.Environment()

    def _eval(self, expression: str, activation: dict[str, Any]) -> Any:
        program = self.env.program(self.env.compile(expression))
        return program.evaluate(activation)

    def admits(self, request: dict[str, Any]) -> tuple[bool, list[str]]:
        resource = request["resource"]["resource"] + ("/" + request["subResource"] if request["subResource"] else "")
        rules = self.spec["matchConstraints"]["resourceRules"]
        if not any(
            request["resource"]["group"] in r["apiGroups"] and resource in r["resources"] and request["operation"] in r["operations"]
            for r in rules
        ):
            return True, []
        activation = {"request": celpy.json_to_cel(request)}
        if not all(bool(self._eval(c["expression"], activation)) for c in self.spec["matchConditions"]):
            return True, []
        variables = {v["name"]: self._eval(v["expression"], activation) for v in self.spec.get("variables", [])}
        activation["variables"] = celpy.celtypes.MapType({celpy.celtypes.StringType(k): v for k, v in variables.items()})
        failed = [v.get("message") or v.get("messageExpression") for v in self.spec["validations"] if not bool(self._eval(v["expression"], activation))]
        return not failed, failed


def request(user: str, node_claim: list[str] | None, name: str, sub: str = "status", operation: str = "UPDATE") -> dict[str, Any]:
    extra = {} if node_claim is None else {"authentication.kubernetes.io/node-name": node_claim}
    return {
        "operation": operation,
        "name": name,
        "subResource": sub,
        "resource": {"group": "graft.dev", "version": "v1alpha1", "resource": "livepatchnodes"},
        "userInfo": {"username": user, "extra": extra},
    }


AGENT = f"system:serviceaccount:{NAMESPACE}:graft-agent"
OPERATOR = f"system:serviceaccount:{NAMESPACE}:graft-operator"


@pytest.fixture(scope="session")
def policy(chart: helm.Chart) -> Policy:
    objects = render(chart)
    policy = find(objects, "ValidatingAdmissionPolicy")
    binding = find(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert policy["spec"]["failurePolicy"] == "Fail"
    return Policy(policy)


def test_the_policy_lets_an_agent_write_the_status_of_its_own_node(policy: Policy) -> None:
    assert policy.admits(request(AGENT, ["node-a"], "node-a")) == (True, [])


@pytest.mark.parametrize(
    ("req", "why"),
    [
        (request(AGENT, ["node-a"], "node-b"), "another node's status"),
        (request(AGENT, ["node-a"], "node-a", sub=""), "its own node's spec"),
        (request(AGENT, ["node-a"], "node-a", sub="", operation="DELETE"), "deleting its own object"),
        (request(AGENT, ["node-a"], "node-b", sub="", operation="CREATE"), "creating objects"),
        (request(AGENT, None, "node-a"), "a token without the node-name claim"),
        (request(AGENT, [], "node-a"), "an empty node-name claim"),
        (request(AGENT, ["node-a", "node-b"], "node-b"), "an ambiguous node-name claim"),
    ],
)
def test_the_policy_denies_an_agent_anything_else(policy: Policy, req: dict[str, Any], why: str) -> None:
    admitted, failures = policy.admits(req)
    assert not admitted, why
    assert failures, why


def test_the_policy_leaves_the_operator_and_admins_alone(policy: Policy) -> None:
    assert policy.admits(request(OPERATOR, None, "node-b", sub="", operation="UPDATE"))[0]
    assert policy.admits(request("kubernetes-admin", None, "node-b", sub="", operation="DELETE"))[0]
    # An agent of another release (another ServiceAccount) is not this policy's business.
    assert policy.admits(request("system:serviceaccount:other:graft-agent", ["node-a"], "node-b"))[0]


def test_the_policy_can_be_turned_off(chart: helm.Chart) -> None:
    objects = render(chart, {"admissionPolicy": {"enabled": False}})
    assert not [o for o in objects if o["kind"].startswith("ValidatingAdmissionPolicy")]


def test_the_policy_follows_a_custom_agent_service_account(chart: helm.Chart) -> None:
    objects = render(chart, {"agent": {"serviceAccount": {"name": "kernel-agent"}}}, namespace="kernel-ops")
    condition = find(objects, "ValidatingAdmissionPolicy")["spec"]["matchConditions"][0]["expression"]
    assert "system:serviceaccount:kernel-ops:kernel-agent" in condition


# --- a helm binary, where there is one ---------------------------------------------------------


@pytest.mark.skipif(shutil.which("helm") is None, reason="no helm binary on PATH; the SDK checks above stand")
def test_the_helm_binary_lints_and_renders_the_same_objects(chart: helm.Chart) -> None:
    lint = subprocess.run(["helm", "lint", "--strict", str(CHART_DIR)], capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    template = subprocess.run(
        ["helm", "template", RELEASE, str(CHART_DIR), "-n", NAMESPACE, "--kube-version", "1.30.0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert template.returncode == 0, template.stderr
    objects = [d for d in yaml.safe_load_all(template.stdout) if d]
    assert kinds(objects) == kinds(render(chart))


# --- the flags the chart passes exist in the binaries ------------------------------------------


def target_dir() -> Path:
    """Where cargo puts binaries: CARGO_TARGET_DIR, or the workspace's target/."""
    run = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if run.returncode == 0:
        return Path(json.loads(run.stdout)["target_directory"])
    return REPO / "target"


def help_text(binary: str, *args: str) -> str:
    path = target_dir() / "debug" / binary
    if not path.exists():
        pytest.skip(f"{path} is not built (cargo build -p {binary})")
    run = subprocess.run([str(path), *args, "--help"], capture_output=True, text=True, timeout=30)
    if run.returncode != 0 or "--" not in run.stdout:
        pytest.skip(f"{path} {' '.join(args)} --help prints no options: not the contract's binary yet")
    return run.stdout


def flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


def test_the_agent_binary_knows_every_flag_the_daemonset_passes(chart: helm.Chart) -> None:
    args = container(find(render(chart), "DaemonSet"))["args"]
    text = help_text("graft-agent", args[0])
    missing = [f for f in flags(args) if not re.search(rf"(^|\s){re.escape(f)}[\s=,]", text)]
    assert not missing, f"`graft-agent {args[0]} --help` lacks {missing}"


def test_the_operator_binary_knows_every_flag_the_deployment_passes(chart: helm.Chart) -> None:
    args = container(find(render(chart, {"operator": {"replicas": 2}}), "Deployment"))["args"]
    text = help_text("graft-operator")
    missing = [f for f in flags(args) if not re.search(rf"(^|\s){re.escape(f)}[\s=,]", text)]
    assert not missing, f"`graft-operator --help` lacks {missing}"
