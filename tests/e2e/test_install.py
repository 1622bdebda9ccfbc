"""The install paths of docs/install.md against the real kube-apiserver (issue 12 item 7).

The real helm (4) installs, upgrades and uninstalls the chart, and the real kubectl applies
`manifests/` server-side, against the session's control plane (admin kubeconfig). Nothing runs
the operator: the control plane has no Deployment controller and these tests do not start the
`node` fixture, so the Deployments stay objects in etcd. What is checked is what the apiserver
accepts and keeps: every object of a release on the server and gone after uninstall, the CRD
adopted and kept by `crds.keep`, FineTuneTasks and S3 artifacts untouched by uninstall, and the
ServiceMonitor/PrometheusRule only where the monitoring.coreos.com CRDs are served. As in
test_crd_server.py, the session's operator must not run (`no_session_operator`): it would
reconcile the task whose status the uninstall test checks.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_contract.run import RunLayout
from finetune_contract.storage import Storage
from finetune_operator import GROUP, PLURAL, VERSION

from .harness import Cluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("no_session_operator")]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "finetune-operator"
MANIFESTS = ROOT / "manifests"
CRD_FILE = ROOT / "crds" / "finetunetasks.finetune.v-sekai.org.yaml"
SET_CRD_FILE = ROOT / "crds" / "finetunetasksets.finetune.v-sekai.org.yaml"
ALERTS = CHART / "files" / "alerts.yaml"
HELM = str(ROOT / ".tools" / "bin" / "helm")
CRD_NAME = f"{PLURAL}.{GROUP}"
SET_CRD_NAME = f"finetunetasksets.{GROUP}"
HELM_OWNERSHIP = ("meta.helm.sh/release-name", "meta.helm.sh/release-namespace")


def _monitoring_crd(kind: str, plural: str) -> dict[str, Any]:
    """The smallest CRD that serves monitoring.coreos.com/v1 `kind` (any body accepted)."""
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.monitoring.coreos.com"},
            "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                     "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural,
                               "singular": kind.lower()},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                         "openAPIV3Schema": {"type": "object",
                                             "x-kubernetes-preserve-unknown-fields": True}}}]}}


MONITORING_CRDS = [_monitoring_crd("ServiceMonitor", "servicemonitors"),
                   _monitoring_crd("PrometheusRule", "prometheusrules")]


# ---- helpers ---------------------------------------------------------------------------------

class Helm:
    """The real helm binary against the session's apiserver, with its own config/cache dirs."""

    def __init__(self, kubeconfig: Path, home: Path) -> None:
        self.kubeconfig = kubeconfig
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_", "KUBE"))}
        self.env.update(HOME=str(home), HELM_CACHE_HOME=str(home / "cache"),
                        HELM_CONFIG_HOME=str(home / "config"), HELM_DATA_HOME=str(home / "data"))

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([HELM, f"--kubeconfig={self.kubeconfig}", *args], env=self.env,
                              capture_output=True, text=True, timeout=120)
        if check:
            assert proc.returncode == 0, f"helm {' '.join(args)}: {proc.stderr.strip()}"
        return proc

    def manifest(self, release: str, ns: str) -> list[dict[str, Any]]:
        out = self("get", "manifest", release, "-n", ns).stdout
        return [d for d in yaml.safe_load_all(out) if d]

    def status(self, release: str, ns: str) -> str:
        return json.loads(self("status", release, "-n", ns, "-o", "json").stdout)["info"]["status"]


@pytest.fixture(scope="module")
def helm(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(cluster.kubeconfig, tmp_path_factory.mktemp("helm-home"))


def _kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def _on_server(cluster: Cluster, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The server's copy of each object in `docs` (missing ones left out)."""
    out = cluster.kubectl("get", "-f", "-", "-o", "json", "--ignore-not-found",
                          input=yaml.safe_dump_all(docs)).stdout
    if not out.strip():
        return []
    body = json.loads(out)
    return body["items"] if body.get("kind") == "List" else [body]


def _crd(cluster: Cluster, name: str = CRD_NAME) -> dict[str, Any] | None:
    out = cluster.kubectl("get", "crd", name, "-o", "json", "--ignore-not-found").stdout
    return json.loads(out) if out.strip() else None


def _delete_crds(cluster: Cluster, names: list[str]) -> None:
    cluster.kubectl("delete", "crd", *names, "--ignore-not-found", "--wait=true",
                    "--timeout=60s")


def _restore_session_crd(cluster: Cluster) -> None:
    """Leave the FineTuneTask and FineTuneTaskSet CRDs as the session fixture applied them:
    present, Established, not owned by a Helm release."""
    for name, source in ((CRD_NAME, CRD_FILE), (SET_CRD_NAME, SET_CRD_FILE)):
        crd = _crd(cluster, name)
        if crd is None or crd["metadata"].get("deletionTimestamp"):
            wait_for(lambda: _crd(cluster, name) is None, 60, "the deleted CRD to go")
            cluster.kubectl("apply", "--server-side", "-f", str(source))
        else:
            cluster.kubectl("annotate", "crd", name, "--overwrite",
                            *(f"{k}-" for k in (*HELM_OWNERSHIP, "helm.sh/resource-policy")))
            cluster.kubectl("label", "crd", name, "app.kubernetes.io/managed-by-")
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")


# ---- helm ------------------------------------------------------------------------------------

def test_helm_install_and_uninstall_with_the_crd_managed_elsewhere(cluster: Cluster,
                                                                   helm: Helm) -> None:
    """`crds.install=false` (docs/install.md): the release is everything but the CRD, every
    object lands on the server, and uninstall removes exactly those objects."""
    release, ns = "ftop-byo", "helm-byo"
    crd_before = _crd(cluster)
    assert crd_before is not None

    helm("install", release, str(CHART), "-n", ns, "--create-namespace",
         "--set", "crds.install=false")
    assert helm.status(release, ns) == "deployed"
    docs = helm.manifest(release, ns)
    assert _kinds(docs) == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service",
                            "ServiceAccount"]
    served = _on_server(cluster, docs)
    assert _kinds(served) == _kinds(docs)
    for obj in served:
        assert obj["metadata"]["annotations"]["meta.helm.sh/release-name"] == release
        assert obj["metadata"].get("namespace", ns) == ns
    [binding] = [o for o in served if o["kind"] == "ClusterRoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount",
                                    "name": f"{release}-finetune-operator", "namespace": ns}]

    out = helm("uninstall", release, "-n", ns, "--wait").stdout
    assert "kept" not in out
    assert _on_server(cluster, docs) == []
    crd_after = _crd(cluster)
    assert crd_after is not None and crd_after["metadata"]["uid"] == crd_before["metadata"]["uid"]


def test_helm_adopts_the_crd_and_uninstall_keeps_crd_tasks_and_s3_artifacts(
        cluster: Cluster, helm: Helm, task_storage: Storage) -> None:
    """Default values on a cluster where the CRD was applied with kubectl: plain `helm install`
    refuses it, `--take-ownership` adopts it. `helm uninstall` then keeps the CRD
    (`crds.keep`), so every FineTuneTask stays with its status, and never touches S3."""
    release, ns, task_ns, task = "ftop", "helm-own", "install-tasks", "kept"
    cluster.ensure_namespace(task_ns)
    bucket = "install-kept"
    task_storage.ensure_bucket(f"s3://{bucket}/")
    layout = RunLayout(root=f"s3://{bucket}/runs/", namespace=task_ns, task=task,
                       run_id="r0123abcd")
    artifacts = {layout.train: '{"messages": []}\n', layout.manifest: "{}",
                 layout.adapter + "adapter_config.json": "{}",
                 layout.adapter + "adapter_model.safetensors": "weights",
                 layout.metrics: '{"evalLoss": 1.0}', layout.complete_marker: "ok"}
    for uri, text in artifacts.items():
        task_storage.write_text(uri, text)
    cluster.apply([{"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneTask",
                    "metadata": {"name": task, "namespace": task_ns},
                    "spec": {"baseModel": {"name": "HuggingFaceTB/SmolLM2-135M"},
                             "dataset": {"uri": f"s3://{bucket}/data/"},
                             "output": {"uri": f"s3://{bucket}/runs/"}}}])
    cluster.kubectl("patch", "ftt", task, "-n", task_ns, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"phase": "Succeeded", "runId": layout.run_id,
                                                 "adapter": {"uri": layout.adapter}}}))
    task_uid = json.loads(cluster.kubectl("get", "ftt", task, "-n", task_ns, "-o",
                                          "json").stdout)["metadata"]["uid"]
    crd_uid = (_crd(cluster) or {})["metadata"]["uid"]
    try:
        refused = helm("install", release, str(CHART), "-n", ns, "--create-namespace",
                       check=False)
        assert refused.returncode != 0
        assert (f'CustomResourceDefinition "{CRD_NAME}"' in refused.stderr
                or f'CustomResourceDefinition "{SET_CRD_NAME}"' in refused.stderr)
        assert "exists and cannot be imported into the current release" in refused.stderr
        assert helm("list", "-n", ns, "-q").stdout.strip() == ""  # nothing half-installed

        helm("install", release, str(CHART), "-n", ns, "--create-namespace", "--take-ownership")
        assert helm.status(release, ns) == "deployed"
        docs = helm.manifest(release, ns)
        assert "CustomResourceDefinition" in _kinds(docs)
        assert _kinds(_on_server(cluster, docs)) == _kinds(docs)
        crd = _crd(cluster) or {}
        assert crd["metadata"]["uid"] == crd_uid  # adopted in place, not recreated
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release

        out = helm("uninstall", release, "-n", ns, "--wait").stdout
        assert "kept due to the resource policy" in out and CRD_NAME in out
        assert SET_CRD_NAME in out
        assert [d["kind"] for d in _on_server(cluster, docs)] == ["CustomResourceDefinition"] * 2
        assert (_crd(cluster) or {})["metadata"]["uid"] == crd_uid

        kept = json.loads(cluster.kubectl("get", "ftt", task, "-n", task_ns, "-o",
                                          "json").stdout)
        assert kept["metadata"]["uid"] == task_uid
        assert kept["status"]["phase"] == "Succeeded"
        assert kept["status"]["adapter"]["uri"] == layout.adapter

        listed = task_storage.list(layout.prefix)
        assert sorted(o.uri for o in listed) == sorted(artifacts)
        for uri, text in artifacts.items():
            assert task_storage.read_text(uri) == text
    finally:
        helm("uninstall", release, "-n", ns, "--ignore-not-found", check=False)
        _restore_session_crd(cluster)
        cluster.kubectl("delete", "ftt", task, "-n", task_ns, "--ignore-not-found")


# ---- kubectl -k ------------------------------------------------------------------------------

def test_kubectl_apply_server_side_k_manifests(cluster: Cluster) -> None:
    """docs/install.md's `kubectl apply --server-side -k manifests/`, verbatim: the apiserver
    takes every object, and a second look (`kubectl diff --server-side`) finds nothing to
    change. Run in finetune-system as documented; the helm tests use their own namespaces and
    release names, so no object is shared but the CRD."""
    docs = [d for d in yaml.safe_load_all(cluster.kubectl("kustomize", str(MANIFESTS)).stdout)
            if d]
    assert _kinds(docs) == ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                            "CustomResourceDefinition", "Deployment", "Namespace", "Service",
                            "ServiceAccount"]
    created = [d for d in docs if d["kind"] not in ("Namespace", "CustomResourceDefinition")]
    try:
        out = cluster.kubectl("apply", "--server-side", "-k", str(MANIFESTS)).stdout
        assert out.count("serverside-applied") == len(docs), out
        served = _on_server(cluster, docs)
        assert _kinds(served) == _kinds(docs)
        [deploy] = [o for o in served if o["kind"] == "Deployment"]
        assert deploy["metadata"]["namespace"] == "finetune-system"
        assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "finetune-operator"

        diff = cluster.kubectl("diff", "--server-side", "-k", str(MANIFESTS), check=False)
        assert diff.returncode == 0, diff.stdout + diff.stderr
    finally:
        # Not the namespace (the session's operator identity lives there) nor the CRD.
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=true",
                        input=yaml.safe_dump_all(created))


# ---- monitoring ------------------------------------------------------------------------------

@pytest.fixture()
def no_monitoring_crds(cluster: Cluster) -> Iterator[list[str]]:
    """The monitoring.coreos.com CRDs absent before the test and removed after it."""
    names = [c["metadata"]["name"] for c in MONITORING_CRDS]
    _delete_crds(cluster, names)
    yield names
    _delete_crds(cluster, names)


def test_monitoring_objects_only_where_their_crds_are_served(
        cluster: Cluster, helm: Helm, no_monitoring_crds: list[str],
        tmp_path: Path) -> None:
    release, ns = "ftop-mon", "helm-mon"
    cache = f"--cache-dir={tmp_path / 'kubectl-cache'}"
    monitoring = str(MANIFESTS / "monitoring")
    enabled = ["--set", "crds.install=false", "--set", "metrics.serviceMonitor.enabled=true",
               "--set", "prometheusRule.enabled=true"]
    try:
        # Without the CRDs: the install succeeds and leaves them out, though enabled.
        helm("install", release, str(CHART), "-n", ns, "--create-namespace", *enabled)
        assert helm.status(release, ns) == "deployed"
        assert not {"ServiceMonitor", "PrometheusRule"} & set(_kinds(helm.manifest(release, ns)))
        # The plain manifests keep them in their own kustomization, which needs the CRDs.
        refused = cluster.kubectl(cache, "apply", "--server-side", "-k", monitoring, check=False)
        assert refused.returncode != 0
        assert 'no matches for kind "ServiceMonitor"' in refused.stderr
        assert 'no matches for kind "PrometheusRule"' in refused.stderr

        cluster.apply(MONITORING_CRDS, "--server-side")
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        *(f"crd/{n}" for n in no_monitoring_crds))

        # With them: the same values now render and install both.
        helm("upgrade", release, str(CHART), "-n", ns, "--reuse-values")
        docs = helm.manifest(release, ns)
        assert {"ServiceMonitor", "PrometheusRule"} <= set(_kinds(docs))
        served = {o["kind"]: o for o in _on_server(cluster, docs)}
        assert served["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == "metrics"
        assert served["PrometheusRule"]["spec"]["groups"] == \
            yaml.safe_load(ALERTS.read_text())["groups"]
        # The values flag still rules: off means absent even where the CRDs are served.
        helm("upgrade", release, str(CHART), "-n", ns, "--reuse-values",
             "--set", "prometheusRule.enabled=false")
        assert "PrometheusRule" not in _kinds(helm.manifest(release, ns))
        assert "ServiceMonitor" in _kinds(helm.manifest(release, ns))

        applied = cluster.kubectl(cache, "apply", "--server-side", "-k", monitoring).stdout
        assert applied.count("serverside-applied") == 2, applied
    finally:
        helm("uninstall", release, "-n", ns, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "-k", monitoring, "--ignore-not-found", check=False)
