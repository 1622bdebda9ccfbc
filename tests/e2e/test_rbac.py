"""RBAC from the operator's side: every (verb, group, resource) the real operator has called on
the API server in this e2e session so far is granted by the shipped ClusterRole
(manifests/rbac.yaml, generated from the chart and drift-tested), and every call on a namespaced
resource also by the namespace-scoped Role; and, once the session has run a task to training,
that nothing is granted which the operator neither called nor is listed below as needed on a
real cluster. pytest runs this file after test_lifecycle.py, test_namespaced_mode.py and
test_prometheus_scrape.py, so it sees their calls too.
"""

from __future__ import annotations

import pytest
import yaml

from .harness import ROOT, ApiServer, OperatorProcess, wait_for

CLUSTER_SCOPED = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}
# Granted, but no test against kmock exercises them; each is a call the operator makes on a real
# cluster. Keep this short: a grant that is neither called nor listed here fails the test.
NOT_EXERCISED_BY_E2E = {
    ("patch", "batch", "jobs"): "suspend/resume a running Job (spec.suspend)",
    ("get", "", "configmaps"): "create-if-absent after a 409 AlreadyExists",
    ("get", "apiextensions.k8s.io", "customresourcedefinitions"): "Kopf resource discovery",
}


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


def test_nothing_is_granted_that_the_operator_does_not_use(api_server: ApiServer,
                                                           operator: OperatorProcess) -> None:
    granted = shipped_grants()
    assert set(NOT_EXERCISED_BY_E2E) <= granted, "stale NOT_EXERCISED_BY_E2E entries"
    calls = set(api_server.api_calls())
    if ("create", "batch", "jobs") not in calls:
        pytest.skip("no task reached training in this session: run all of tests/e2e")
    unexplained = granted - calls - set(NOT_EXERCISED_BY_E2E)
    assert not unexplained, f"granted but neither called nor documented: {sorted(unexplained)}"
