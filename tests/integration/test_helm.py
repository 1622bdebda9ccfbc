"""The Helm chart as tested code: the real helm binary lints and renders every ci/ values file,
kubernetes-validate --strict checks each object against the Kubernetes 1.37 schemas, and the
chart's contracts are pinned: CRD equal to crds/, strict values schema, least-privilege RBAC,
Deployment settings the operator's settings.py understands.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploytools import ALERTS, CHART, CRD_FILE, SET_CRD_FILE, helm_template, kinds, promtool_check_rules, \
    render, run, tool, validate_k8s

from finetune_operator.policy import DEFAULT_DENIED_KEYS, Policy
from finetune_operator.policy import from_settings as policy_from_settings
from finetune_operator.settings import OperatorSettings

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))

# (apiGroup, resource) -> verbs: exactly the calls the operator makes (see _helpers.tpl for why).
NAMESPACED_RULES = {
    ("finetune.v-sekai.org", "finetunetasks"): {"get", "list", "watch", "create", "patch",
                                                "delete"},
    ("finetune.v-sekai.org", "finetunetasks/status"): {"patch"},
    ("finetune.v-sekai.org", "finetunetasksets"): {"get", "list", "watch", "patch"},
    ("finetune.v-sekai.org", "finetunetasksets/status"): {"patch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete", "patch"},
    ("", "configmaps"): {"create", "delete"},
    ("", "services"): {"create", "delete"},
    ("", "secrets"): {"get"},
    ("", "pods"): {"list"},
    ("", "events"): {"create"},
}
CLUSTER_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


# The ServiceMonitor and PrometheusRule render only where the monitoring.coreos.com CRDs are
# served (.Capabilities.APIVersions, which `helm install` reads from the cluster) AND their value
# is on; `helm template` has no cluster, so these tests name the APIs with --api-versions.
MONITORING_APIS = ("monitoring.coreos.com/v1/ServiceMonitor",
                   "monitoring.coreos.com/v1/PrometheusRule")


def render_with_apis(*values_files: Path, apis: tuple[str, ...] = MONITORING_APIS,
                     **set_values: str) -> list[dict[str, Any]]:
    """`render` on a cluster that serves `apis` (helm template --api-versions)."""
    args = [tool("helm"), "template", "finetune-operator", str(CHART),
            "--namespace", "finetune-system", *(f"--api-versions={api}" for api in apis)]
    for f in values_files:
        args += ["-f", str(f)]
    for key, value in set_values.items():
        args += ["--set", f"{key}={value}"]
    return [d for d in yaml.safe_load_all(run(*args).stdout) if d]


def values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_helm_lint(values: Path) -> None:
    run(tool("helm"), "lint", "--strict", str(CHART), "-f", str(values))


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_template_is_valid_kubernetes(values: Path) -> None:
    docs = render_with_apis(values)  # with the monitoring objects where the values enable them
    assert kinds(docs, "Deployment") and kinds(docs, "Service")
    validate_k8s(docs)
    for rule in kinds(docs, "PrometheusRule"):
        promtool_check_rules(rule["spec"]["groups"])


def test_ci_values_cover_every_mode() -> None:
    names = {p.stem for p in CI_VALUES}
    assert {"default-values", "namespaced-values", "monitoring-values"} <= names


def test_chart_crd_equals_crds_dir() -> None:
    sources = [yaml.safe_load(f.read_text()) for f in (CRD_FILE, SET_CRD_FILE)]
    crds = sorted(kinds(render(), "CustomResourceDefinition"), key=lambda c: c["metadata"]["name"])
    assert len(crds) == 2  # FineTuneTask and FineTuneTaskSet
    for crd, source in zip(crds, sources):
        annotations = crd["metadata"].pop("annotations")
        assert annotations == {"helm.sh/resource-policy": "keep"}
        assert crd == source
    unkept = kinds(render(**{"crds.keep": "false"}), "CustomResourceDefinition")
    assert sorted(unkept, key=lambda c: c["metadata"]["name"]) == sources
    assert not kinds(render(**{"crds.install": "false"}), "CustomResourceDefinition")


@pytest.mark.parametrize(("override", "message"), [
    ("watchNamespaces=3", "watchNamespaces"),
    ("ports.metrics=eighty", "ports/metrics"),
    ("operator.deviceProfile=tpu", "deviceProfile"),
    ("replicas=2", "additional properties 'replicas' not allowed"),
    ("operator.trainerimage=x", "additional properties 'trainerimage' not allowed"),
    ("watchNamespaces[0]=Not_A_Namespace", "watchNamespaces/0"),
    ("policy.axolotlKeyPolicy=maybe", "axolotlKeyPolicy"),
    ("policy.allowedS3Endpoints[0]=a b", "allowedS3Endpoints/0"),
    ("policy.allowLoopbackEndpoints=yes", "allowLoopbackEndpoints"),
], ids=["wrong-type-list", "wrong-type-port", "bad-enum", "unknown-key", "unknown-nested-key",
        "bad-namespace-name", "bad-key-policy", "bad-endpoint-entry", "wrong-type-loopback"])
def test_values_schema_rejects(override: str, message: str) -> None:
    out = run(tool("helm"), "template", "x", str(CHART), "--set", override, check=False)
    assert out.returncode != 0, f"--set {override} was accepted"
    assert message in out.stderr, out.stderr


def _value_key_lines(text: str) -> dict[str, int]:
    """Dotted key path -> line index, for every key of values.yaml (maps only; lists are values)."""
    paths: dict[str, int] = {}
    stack: list[tuple[int, str]] = []
    for index, line in enumerate(text.splitlines()):
        match = re.match(r"^( *)([A-Za-z][\w.-]*):(\s|$)", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        paths[".".join(k for _, k in stack)] = index
    return paths


def _schema_leaves(schema: dict[str, Any], prefix: str = "") -> set[str]:
    leaves: set[str] = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        if "properties" in sub:
            assert sub.get("additionalProperties") is False, f"{path}: schema must be strict"
            leaves |= _schema_leaves(sub, path + ".")
        else:
            leaves.add(path)
    return leaves


def test_every_value_has_a_comment_and_a_schema() -> None:
    text = (CHART / "values.yaml").read_text()
    lines = text.splitlines()
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    leaves = _schema_leaves(schema)
    keys = _value_key_lines(text)
    top_level = {k for k in keys if "." not in k}
    assert top_level == set(schema["properties"]), "values.yaml and values.schema.json differ"
    undocumented = [leaf for leaf in sorted(leaves)
                    if leaf not in keys or not lines[keys[leaf] - 1].lstrip().startswith("#")]
    assert not undocumented, f"values without a comment right above them: {undocumented}"


def test_cluster_mode_rbac_is_exactly_what_the_operator_uses() -> None:
    docs = render()
    [role] = kinds(docs, "ClusterRole")
    assert grants(role["rules"]) == NAMESPACED_RULES | CLUSTER_RULES
    assert not kinds(docs, "Role") and not kinds(docs, "RoleBinding")
    [binding] = kinds(docs, "ClusterRoleBinding")
    [account] = kinds(docs, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": "finetune-system"}]


def test_namespaced_mode_has_roles_only(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(CHART / "ci" / "namespaced-values.yaml")
    assert not kinds(docs, "ClusterRole") and not kinds(docs, "ClusterRoleBinding")
    roles = kinds(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "research"]
    for role in roles:
        assert grants(role["rules"]) == NAMESPACED_RULES
    for binding in kinds(docs, "RoleBinding"):
        assert binding["subjects"][0]["namespace"] == "finetune-system"
    for name, value in _env(docs).items():
        monkeypatch.setenv(name, value)
    assert OperatorSettings().namespaces == ["ml", "research"]  # parsed as the operator does


def test_rbac_create_false_renders_no_rbac() -> None:
    docs = render(CHART / "ci" / "bring-your-own-values.yaml")
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"):
        assert not kinds(docs, kind), kind
    [deploy] = kinds(docs, "Deployment")
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "finetune-operator"


def _env(docs: list[dict[str, Any]]) -> dict[str, str]:
    [deploy] = kinds(docs, "Deployment")
    [container] = deploy["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def _settings_kwargs(env: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix("FINETUNE_").lower(): v for k, v in env.items()
            if k.startswith("FINETUNE_")}


def test_deployment_env_is_understood_by_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env(render())
    fields = set(OperatorSettings.model_fields)
    unknown = [k for k in _settings_kwargs(env) if k not in fields]
    assert not unknown, f"env the operator ignores: {unknown}"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings()  # the operator's own parsing, from the real environment
    assert settings.namespaces == [] and settings.metrics_port == 8080
    assert settings.health_port == 8081
    assert settings.gpu_memory_gib is None  # unset unless the admin names it
    sized = _env(render(**{"operator.gpuMemoryGiB": "80"}))
    assert OperatorSettings(**_settings_kwargs(sized)).gpu_memory_gib == 80


def test_deployment_is_one_hardened_replica() -> None:
    [deploy] = kinds(render(), "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["finetune", "operator"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}} in pod["volumes"]
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_service_and_servicemonitor_select_the_operator_and_set_the_alert_job() -> None:
    docs = render_with_apis(CHART / "ci" / "monitoring-values.yaml")
    [service] = kinds(docs, "Service")
    [monitor] = kinds(docs, "ServiceMonitor")
    [deploy] = kinds(docs, "Deployment")
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True  # keep the task's namespace
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # Prometheus Operator sets job=<value of the jobLabel label>; the default rules expect it.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "finetune-operator"


def test_prometheusrule_is_the_alerts_file() -> None:
    source = yaml.safe_load(ALERTS.read_text())["groups"]
    [rule] = kinds(render_with_apis(**{"prometheusRule.enabled": "true"}), "PrometheusRule")
    assert rule["spec"]["groups"] == source
    [custom] = kinds(render_with_apis(CHART / "ci" / "monitoring-values.yaml"), "PrometheusRule")
    alerts = {r["alert"]: r for g in custom["spec"]["groups"] for r in g["rules"]}
    assert "FineTuneTaskStuckInTraining" not in alerts
    assert 'up{job="ml-operators"}' in alerts["FineTuneOperatorDown"]["expr"]
    assert "14 * 86400" in alerts["FineTuneTaskNoRecentSuccess"]["expr"]
    assert alerts["FineTuneRunFailed"]["annotations"]["runbook_url"] == \
        "https://wiki.example.com/finetune/runbook#finetunerunfailed"
    off = render_with_apis()
    assert not kinds(off, "PrometheusRule") and not kinds(off, "ServiceMonitor")


@pytest.mark.parametrize(("apis", "expected"), [
    ((), []),  # no Prometheus Operator: enabling the values must not break the install
    (MONITORING_APIS[:1], ["ServiceMonitor"]),
    (MONITORING_APIS[1:], ["PrometheusRule"]),
    (MONITORING_APIS, ["PrometheusRule", "ServiceMonitor"]),
], ids=["no-crds", "servicemonitor-crd", "prometheusrule-crd", "both-crds"])
def test_monitoring_objects_render_only_where_their_api_is_served(
        apis: tuple[str, ...], expected: list[str]) -> None:
    docs = render_with_apis(CHART / "ci" / "monitoring-values.yaml", apis=apis)
    monitoring = [d["kind"] for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert sorted(monitoring) == expected


def test_notes_say_how_to_create_a_first_task() -> None:
    out = run(tool("helm"), "install", "--dry-run=client", "finetune-operator", str(CHART),
              "--namespace", "finetune-system", "-f", str(CHART / "ci" / "namespaced-values.yaml"))
    notes = out.stdout.split("NOTES:", 1)[1]
    assert "kind: FineTuneTask" in notes and "kubectl -n ml apply -f -" in notes
    assert "create secret generic s3-credentials" in notes


def test_helm_template_fails_on_broken_values_file(tmp_path: Path) -> None:
    bad = values_file(tmp_path, {"metrics": {"serviceMonitor": {"interval": "soon"}}})
    out = helm_template(bad, check=False)
    assert out.returncode != 0 and "interval" in out.stderr



def _policy(docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Policy:
    for name, value in _env(docs).items():
        monkeypatch.setenv(name, value)
    return policy_from_settings(OperatorSettings(), local=False)  # as the operator builds it


def test_default_policy_is_the_operators_built_in_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """values.yaml repeats the built-in denylist so admins see it: the two must not drift."""
    assert _policy(render(), monkeypatch) == Policy(denied_keys=DEFAULT_DENIED_KEYS,
                                                    allow_loopback=False)


def test_policy_values_reach_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = _policy(render(CHART / "ci" / "policy-values.yaml"), monkeypatch)
    assert rules == Policy(axolotl_key_policy="allowlist",
                           denied_keys=("trust_remote_code", "hub_*", "push_*"),
                           allowed_keys=("warmup_*", "weight_decay", "lr_scheduler"),
                           allowed_endpoints=("minio.minio.svc:9000", "https://s3.example.com",
                                              "*.s3.example.net"),
                           allow_loopback=False)
    loopback = _policy(render(**{"policy.allowLoopbackEndpoints": "true"}), monkeypatch)
    assert loopback.allow_loopback is True
