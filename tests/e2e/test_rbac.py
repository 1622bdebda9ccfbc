"""RBAC, enforced by the real apiserver: the operator runs as the chart's ServiceAccount with
exactly the shipped ClusterRole. One scenario exercises every kind of call the operator makes
(prepare, launch a two-node run, suspend, supersede, fail, delete; then a FineTuneTaskSet generates tasks,
rolls them up, drops one, and goes). With the shipped role it meets no 403 and
uses every grant; with any single grant dropped, the apiserver refuses that call (read from its
audit log), so no grant is there without a use.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_contract import TerminationMessage
from finetune_contract.storage import Storage
from finetune_dev.cluster.audit import Call
from finetune_dev.cluster.node import Node, Outcome
from finetune_operator import GROUP, VERSION
from finetune_dev.devs3 import S3Server

from .conftest import OPERATOR_TEST_SETTINGS, alpaca_records
from .harness import (ROOT, Cluster, Identity, OperatorProcess, ScriptedTrainer, chart_rbac,
                      operator_identity, wait_for)

pytestmark = pytest.mark.cluster
SETS = "finetunetasksets"
Grant = tuple[str, str, str]  # (verb, apiGroup, resource)


def grants_of(role: dict[str, Any]) -> set[Grant]:
    return {(verb, group, resource) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def checked(call: Call) -> set[Grant]:
    """The grants the apiserver checked a call against. A server-side apply (the body is a whole
    object) that makes a new object is authorized as patch and as create; the audit log records
    a patch either way (201 when it created, 403 when a grant was missing)."""
    out = {call.rbac}
    if call.verb == "patch" and call.code in (201, 403) and isinstance(call.body, dict) \
            and "kind" in call.body:
        out.add(("create", call.group, call.resource))
    return out


def shipped_role() -> dict[str, Any]:
    """The ClusterRole of manifests/rbac.yaml (generated from the chart, drift-tested)."""
    docs = yaml.safe_load_all((ROOT / "manifests" / "rbac.yaml").read_text())
    [role] = [d for d in docs if d and d["kind"] == "ClusterRole"]
    return role


def without(role: dict[str, Any], dropped: Grant) -> dict[str, Any]:
    verb, group, resource = dropped
    rules = []
    for rule in role["rules"]:
        if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]:
            rest = [v for v in rule["verbs"] if v != verb]
            if rest:
                rules.append({**rule, "verbs": rest})
            others = [r for r in rule["resources"] if r != resource]
            if others:
                rules.append({**rule, "resources": others})
        else:
            rules.append(rule)
    return {**role, "rules": rules}


class Scenario:
    """One task through every kind of call, step by step; `stop()` ends it early (a probe
    stops at the first refusal it was looking for)."""

    def __init__(self, cluster: Cluster, trainer: ScriptedTrainer, storage: Storage,
                 s3: S3Server, ns: str, stop: Callable[[], bool]) -> None:
        self.cluster, self.trainer, self.storage, self.s3 = cluster, trainer, storage, s3
        self.ns, self.stop, self.name = ns, stop, "rbac"

    def _until(self, what: str, predicate: Callable[[], Any], timeout: float = 40) -> bool:
        """True when the step got there; False when `stop()` fired first."""
        result = wait_for(lambda: "stopped" if self.stop() else predicate(), timeout, what,
                          interval=0.2)
        return result != "stopped"

    def _phase(self, *phases: str) -> Callable[[], Any]:
        return lambda: (s := self.cluster.status(self.ns, self.name)).get("phase") in phases and s

    def run(self) -> None:
        c, ns, name = self.cluster, self.ns, self.name
        c.ensure_namespace(ns)
        c.create_secret(ns, "s3-credentials", {"AWS_ACCESS_KEY_ID": self.s3.access_key,
                                               "AWS_SECRET_ACCESS_KEY": self.s3.secret_key})
        bucket = f"b-{ns}"
        self.storage.ensure_bucket(f"s3://{bucket}/")
        self.storage.write_text(f"s3://{bucket}/d.jsonl",
                                "".join(json.dumps(r) + "\n" for r in alpaca_records(60)))
        c.apply_task(ns, name, {
            "baseModel": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
            "dataset": {"uri": f"s3://{bucket}/d.jsonl", "validationFraction": 0.2,
                        "minSamples": 20, "minValidationSamples": 5},
            "output": {"uri": f"s3://{bucket}/runs/"},
            "storage": {"endpoint": self.s3.endpoint, "credentialsSecret": "s3-credentials"},
            # Two nodes: each run also has a headless Service (created, then deleted when the
            # run is superseded).
            "resources": {"gpu": 1, "nodes": 2}})
        steps: list[tuple[str, Callable[[], None], Callable[[], Any]]] = [
            ("prepare and launch", lambda: None, self._phase("Training")),
            ("suspend the Job", lambda: c.patch_spec(ns, name, {"suspend": True}),
             self._phase("Suspended")),
            ("a new run supersedes it",
             lambda: c.patch_spec(ns, name, {"suspend": False, "training": {"epochs": 2}}),
             lambda: (s := self._phase("Training")()) and s.get("observedGeneration") == 3),
            ("the trainer fails with a reason", self._fail, self._phase("Failed")),
            ("delete the task", lambda: c.delete_task(ns, name),
             lambda: c.task(ns, name) is None),
            # A FineTuneTaskSet: server-side apply of new tasks (patch + create), a name check
            # (get), its status (patch status), roll-ups from task events (get the set), Kopf's
            # finalizer for its timer (patch), removing an entry (delete a task).
            ("a set generates two tasks", lambda: self._set("create", {"tasks": [
                {"key": "a", "spec": {"dataset": {"uri": f"s3://{bucket}/d.jsonl"}}},
                {"key": "b", "spec": {"dataset": {"uri": f"s3://{bucket}/d.jsonl"}}}]}),
             lambda: self._set_status().get("counts", {}).get("skipped") == 2),
            ("an entry leaves the set", lambda: self._set("patch", {"tasks": [
                {"key": "a", "spec": {"dataset": {"uri": f"s3://{bucket}/d.jsonl"}}}]}),
             lambda: c.task(ns, "set-b") is None and self._set_status().get("tasks") == 1),
            ("delete the set", lambda: self._set("delete", {}),
             lambda: self._set_status() is None),
        ]
        for what, act, done in steps:
            if self.stop():
                return
            act()
            if not self._until(what, done):
                return

    def _set(self, how: str, spec: dict[str, Any]) -> None:
        c, ns, api = self.cluster, self.ns, self.cluster.custom
        if how == "create":
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneTaskSet",
                    "metadata": {"name": "set", "namespace": ns},
                    "spec": {"defaults": {
                        "baseModel": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
                        "dataset": {"minSamples": 100},  # 60 records: both tasks end Skipped
                        "output": {"uri": f"s3://b-{ns}/runs/"},
                        "storage": {"endpoint": self.s3.endpoint,
                                    "credentialsSecret": "s3-credentials"}}, **spec}}
            c._call(api.create_namespaced_custom_object, GROUP, VERSION, ns, SETS, body)
        elif how == "patch":
            c._call(api.patch_namespaced_custom_object, GROUP, VERSION, ns, SETS, "set",
                    {"spec": spec}, _content_type="application/merge-patch+json")
        else:
            c._call(api.delete_namespaced_custom_object, GROUP, VERSION, ns, SETS, "set")

    def _set_status(self) -> dict[str, Any] | None:
        obj = self.cluster._call(self.cluster.custom.get_namespaced_custom_object, GROUP,
                                 VERSION, self.ns, SETS, "set")
        return None if obj is None else obj.get("status") or {}

    def _fail(self) -> None:
        job = self.cluster.status(self.ns, self.name)["job"]["name"]
        msg = TerminationMessage(ok=False, reason="BaseModelNotFound", message="no such model")
        self.trainer.release(job, Outcome(2, msg.encode()))


def test_the_shipped_role_is_enough_and_every_grant_is_used(
        cluster: Cluster, operator: OperatorProcess, identity: Identity,
        trainer: ScriptedTrainer, task_storage: Storage, s3_server: S3Server) -> None:
    since = cluster.audit.mark()
    Scenario(cluster, trainer, task_storage, s3_server, "rbac-full", lambda: False).run()
    calls = cluster.audit.calls(identity.username, since)
    # Kopf lists and watches CRDs and tasks once at start-up; this operator started earlier.
    startup = {g for g in grants_of(shipped_role()) if g[0] in ("list", "watch")}
    used = {g for c in calls if c.code < 400 for g in checked(c)} | startup
    granted = grants_of(shipped_role())
    assert not {c.rbac for c in calls if c.code == 403}, "a call the shipped role refuses"
    assert granted - used == set(), f"granted but not used: {sorted(granted - used)}"
    assert {g for c in calls for g in checked(c)} - granted == set()



@pytest.mark.slow
@pytest.mark.parametrize("dropped", sorted(grants_of(shipped_role())),
                         ids=lambda g: f"{g[0]}-{g[1] or 'core'}-{g[2]}")
def test_dropping_any_grant_breaks_a_call(
        dropped: Grant, cluster: Cluster, no_session_operator: None, node: Node,
        trainer: ScriptedTrainer, task_storage: Storage, s3_server: S3Server,
        tmp_path: Path) -> None:
    verb, group, resource = dropped
    probe = f"probe-{verb}-{(group or 'core').split('.')[0]}-{resource.replace('/', '-')}"
    docs = chart_rbac(f"serviceAccount.name={probe}", f"fullnameOverride={probe}")
    docs = [without(d, dropped) if d["kind"] == "ClusterRole" else d for d in docs]
    who = operator_identity(cluster, tmp_path, docs)
    since = cluster.audit.mark()

    def refused() -> bool:
        # The authorizer's own decision is recorded for the call's verb; the create that a
        # server-side apply implies is checked later, under a patch the authorizer allowed.
        return any(dropped in checked(c) and c.code == 403
                   and (c.forbidden_by_rbac or c.rbac != dropped)
                   for c in cluster.audit.calls(who.username, since))

    proc = OperatorProcess(who.kubeconfig, tmp_path / "operator.log", **OPERATOR_TEST_SETTINGS)
    proc.start(wait=False)
    try:
        Scenario(cluster, trainer, task_storage, s3_server, probe, refused).run()
        assert refused(), f"without {dropped} the scenario still ran: the grant is unused"
    finally:
        proc.stop()
        cluster.kubectl("delete", "namespace", probe, "--wait=false", check=False)
