"""Namespace-scoped mode as the chart deploys it, on the real operator process and the real
apiserver: the chart's Roles and RoleBindings in two namespaces (watchNamespaces), nothing
cluster-wide, FINETUNE_NAMESPACES comma-separated, and Kopf's /healthz on FINETUNE_HEALTH_PORT
(what the Deployment's probes call). Cluster-scoped reads get the apiserver's own 403. The
operator must stay up, fall back to the listed namespaces, and run a task there.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from finetune_contract.storage import Storage
from finetune_dev.devs3 import S3Server

from .conftest import OPERATOR_TEST_SETTINGS, alpaca_records
from .harness import (Cluster, OperatorProcess, chart_rbac, free_port, operator_identity,
                      wait_for)

WATCHED = ("probe-a", "probe-b")
# Kopf's optional cluster-scoped observations; refused by the Role-only account, not needed.
OPTIONAL_CLUSTER_CALLS = {("list", "", "namespaces"), ("watch", "", "namespaces"),
                          ("list", "apiextensions.k8s.io", "customresourcedefinitions"),
                          ("watch", "apiextensions.k8s.io", "customresourcedefinitions")}


def _healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False



@pytest.mark.slow
def test_namespace_scoped_operator_with_role_only_permissions(
        cluster: Cluster, no_session_operator: None, s3_server: S3Server,
        task_storage: Storage, tmp_path: Path) -> None:
    docs = chart_rbac("watchNamespaces={" + ",".join(WATCHED) + "}",
                      "serviceAccount.name=scoped", "fullnameOverride=scoped")
    assert {d["kind"] for d in docs} == {"ServiceAccount", "Role", "RoleBinding"}
    who = operator_identity(cluster, tmp_path, docs)
    since = cluster.audit.mark()
    health_port = free_port()
    proc = OperatorProcess(who.kubeconfig, tmp_path / "operator.log", health_port=health_port,
                           namespaces=",".join(WATCHED), **OPERATOR_TEST_SETTINGS)
    proc.start()
    try:
        wait_for(lambda: _healthz(health_port), 30, "Kopf's /healthz on the health port")

        def watching() -> set[str]:
            return {c.namespace for c in cluster.audit.calls(who.username, since)
                    if c.rbac == ("watch", "finetune.v-sekai.org", "finetunetasks")
                    and c.code == 200}

        # Kopf 1.45 retries each 403 through its error backoffs before it falls back to the
        # listed namespaces.
        wait_for(lambda: watching() == set(WATCHED), 120, f"watches on finetunetasks in {WATCHED}",
                 interval=0.5)
        assert proc.running and _healthz(health_port)

        # A task in a watched namespace is handled under the Role alone.
        ns = WATCHED[0]
        cluster.create_secret(ns, "s3-credentials", {
            "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})
        bucket = "scoped"
        task_storage.ensure_bucket(f"s3://{bucket}/")
        task_storage.write_text(f"s3://{bucket}/d.jsonl", "".join(
            json.dumps(r) + "\n" for r in alpaca_records(60)))
        cluster.apply_task(ns, "scoped", {
            "baseModel": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
            "dataset": {"uri": f"s3://{bucket}/d.jsonl", "validationFraction": 0.2,
                        "minSamples": 20, "minValidationSamples": 5},
            "output": {"uri": f"s3://{bucket}/runs/"},
            "storage": {"endpoint": s3_server.endpoint, "credentialsSecret": "s3-credentials"},
            "resources": {"gpu": 1}})
        cluster.wait_phase(ns, "scoped", "Training", timeout=60)

        calls = cluster.audit.calls(who.username, since)
        refused = {c.rbac for c in calls if c.code == 403}
        assert refused <= OPTIONAL_CLUSTER_CALLS, sorted(refused - OPTIONAL_CLUSTER_CALLS)
        outside = {c.namespace for c in calls if c.namespace} - set(WATCHED)
        assert not outside, f"calls outside the watched namespaces: {sorted(outside)}"
        log = proc.log.read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        assert s3_server.secret_key not in log
    finally:
        proc.stop()
