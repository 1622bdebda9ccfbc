"""RBAC from the operator's side: every (verb, group, resource) the real operator has called on
the API server in this e2e session so far is granted by the shipped ClusterRole
(manifests/rbac.yaml, generated from the chart and drift-tested), and every call on a namespaced
resource also by the namespace-scoped Role. pytest runs this file after test_lifecycle.py and
test_prometheus_scrape.py, so it sees their calls too; tests/integration/test_helm.py checks the
other direction (nothing granted that is neither called nor documented as needed).
"""

from __future__ import annotations

import yaml

from .harness import ROOT, ApiServer, OperatorProcess, wait_for

CLUSTER_SCOPED = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}


def shipped_grants() -> set[tuple[str, str, str]]:
    docs = yaml.safe_load_all((ROOT / "manifests" / "rbac.yaml").read_text())
    [role] = [d for d in docs if d and d["kind"] == "ClusterRole"]
    return {(verb, group, resource) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_every_call_the_operator_made_is_granted(api_server: ApiServer,
                                                 operator: OperatorProcess) -> None:
    # Kopf lists and watches FineTuneTasks as soon as it runs: at least those calls are seen.
    wait_for(lambda: ("watch", "finetune.v-sekai.org", "finetunetasks") in api_server.api_calls(),
             30, "the operator's watch on finetunetasks")
    granted = shipped_grants()
    calls = set(api_server.api_calls())
    assert not calls - granted, f"calls the ClusterRole does not allow: {sorted(calls - granted)}"
    role = {g for g in granted if (g[1], g[2]) not in CLUSTER_SCOPED}
    namespaced_calls = {c for c in calls if (c[1], c[2]) not in CLUSTER_SCOPED}
    assert not namespaced_calls - role, sorted(namespaced_calls - role)
