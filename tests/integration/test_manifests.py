"""manifests/: the plain-YAML install generated from the chart (scripts/gen_manifests.py with the
real helm) must not drift from it; the real kubectl's kustomize must build every kustomization;
built-in objects pass kubernetes-validate --strict and the example FineTuneTask passes the CRD's
own openAPIV3Schema and the operator's spec model.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from deploytools import CRD_FILE, ROOT, SET_CRD_FILE, kinds, promtool_check_rules, run, tool, validate_k8s

from finetune_operator.crdgen import to_jsonschema
from finetune_operator.spec import FineTuneTaskSpec

MANIFESTS = ROOT / "manifests"


def kustomize(path: str) -> list[dict[str, Any]]:
    out = run(tool("kubectl"), "kustomize", str(MANIFESTS / path) if path else str(MANIFESTS))
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_manifests_match_the_chart() -> None:
    tool("helm")  # the generator renders the chart: fail with `make tools` when helm is missing
    out = run(sys.executable, str(ROOT / "scripts" / "gen_manifests.py"), "--check", check=False)
    assert out.returncode == 0, out.stderr


def test_kustomize_builds_a_valid_install() -> None:
    docs = kustomize("")
    validate_k8s(docs)
    assert {d["kind"] for d in docs} == {"Namespace", "CustomResourceDefinition", "ServiceAccount",
                                         "ClusterRole", "ClusterRoleBinding", "Service",
                                         "Deployment"}
    crds = kinds(docs, "CustomResourceDefinition")
    assert crds == [yaml.safe_load(CRD_FILE.read_text()), yaml.safe_load(SET_CRD_FILE.read_text())]
    [namespace] = kinds(docs, "Namespace")
    namespaced = [d for d in docs if d["kind"] not in
                  {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}]
    assert {d["metadata"]["namespace"] for d in namespaced} == {namespace["metadata"]["name"]}
    for doc in docs:
        assert "helm.sh/chart" not in doc["metadata"].get("labels", {})


def test_monitoring_kustomization_builds() -> None:
    docs = kustomize("monitoring")
    assert sorted(d["kind"] for d in docs) == ["PrometheusRule", "ServiceMonitor"]
    [rule] = kinds(docs, "PrometheusRule")
    promtool_check_rules(rule["spec"]["groups"])


def test_examples_build_and_the_task_is_valid() -> None:
    docs = kustomize("examples")
    validate_k8s([d for d in docs if d["kind"] != "FineTuneTask"])
    [task] = kinds(docs, "FineTuneTask")
    [secret] = kinds(docs, "Secret")
    crd = yaml.safe_load(CRD_FILE.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["storage"]]
    assert task["apiVersion"] == f"{crd['spec']['group']}/{version['name']}"
    # OpenAPI 3.0 -> JSON Schema the way tests/unit/test_crd.py does (nullable, exclusive bounds).
    jsonschema.Draft202012Validator(to_jsonschema(version["schema"]["openAPIV3Schema"])).validate(task)
    spec = FineTuneTaskSpec.model_validate(task["spec"])
    assert spec.storage.credentials_secret == secret["metadata"]["name"]
    assert task["metadata"]["namespace"] == secret["metadata"]["namespace"]
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_argocd_application_points_at_existing_paths() -> None:
    apps = list(yaml.safe_load_all((MANIFESTS / "argocd" / "application.yaml").read_text()))
    for app in apps:
        assert app["kind"] == "Application"
        assert (ROOT / app["spec"]["source"]["path"] / "kustomization.yaml").is_file()


def test_the_overlay_in_install_md_builds_and_sets_the_env(tmp_path: Path) -> None:
    """docs/install.md's kustomize overlay, taken verbatim from the page, next to a copy of
    manifests/ as in a clone of the repository."""
    doc = (ROOT / "docs" / "install.md").read_text()
    match = re.search(r"cat > my-install/kustomization.yaml <<'EOF'\n(.*?)\nEOF\n", doc, re.S)
    assert match, "docs/install.md lost its overlay example"
    shutil.copytree(MANIFESTS, tmp_path / "manifests")
    (tmp_path / "my-install").mkdir()
    (tmp_path / "my-install" / "kustomization.yaml").write_text(match.group(1) + "\n")
    out = run(tool("kubectl"), "kustomize", str(tmp_path / "my-install"))
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    [deploy] = kinds(docs, "Deployment")
    env = {e["name"]: e["value"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FINETUNE_DEFAULT_OUTPUT_URI"] == "s3://adapters/"
    assert env["FINETUNE_DEFAULT_S3_ENDPOINT"] == "http://minio.minio.svc:9000"
    assert env["FINETUNE_METRICS_PORT"] == "8080"  # the rest is kept
    validate_k8s(docs)
