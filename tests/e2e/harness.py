"""The e2e harness: a real Kubernetes control plane, the operator as a real process under RBAC,
and a node that plays the kubelet. Shared by tests/e2e and bench/bench_operator.py.

What is real: etcd, kube-apiserver and kube-controller-manager (hack/controlplane, started by
finetune_dev.cluster), with RBAC enforced and an audit log; the CRD, the chart's ServiceAccount,
ClusterRole/Roles and bindings, applied with the real kubectl; the operator process,
authenticated with a TokenRequest token of that ServiceAccount; the Job controller and the
garbage collector. What is played: the kubelet (finetune_dev.cluster.node) and, in most tests,
the trainer inside the pod (`ScriptedTrainer`: the test writes the run's outputs to S3 and
decides the container's exit code and termination message).
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_dev.cluster import install
from finetune_dev.cluster.audit import Audit, Call
from finetune_dev.cluster.controlplane import ControlPlane, free_port
from finetune_dev.cluster.install import (CHART, CRD_FILE, HELM, KUBECTL, OPERATOR_NAMESPACE,
                                          RELEASE, Identity, chart_rbac, render_chart)
from finetune_dev.cluster.node import Outcome, PodContext, run_local_process
from finetune_dev.cluster.operator_process import OperatorProcess
from finetune_operator import GROUP, PLURAL, VERSION
from finetune_operator.resources import LABEL_TASK

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["Audit", "Call", "CHART", "CRD_FILE", "HELM", "KUBECTL", "OPERATOR_NAMESPACE", "RELEASE", "Identity",
           "OperatorProcess", "chart_rbac", "free_port", "render_chart"]


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.1) -> Any:
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


# ---- the trainer inside the pod, played by the test -----------------------------------------

@dataclass
class ScriptedTrainer:
    """A PodRunner for the node: each pod of a Job runs until the test releases an outcome for
    that Job (one per attempt), or until the pod is deleted. Unreleased pods keep running, as a
    long training would."""

    outcomes: dict[str, list[Outcome]] = field(default_factory=dict)
    started: dict[str, int] = field(default_factory=dict)
    # Tasks whose pods run the real trainer command (the node's run_local_process) instead.
    real_tasks: set[str] = field(default_factory=set)
    _cv: threading.Condition = field(default_factory=threading.Condition)

    def release(self, job: str, *outcomes: Outcome) -> None:
        with self._cv:
            self.outcomes.setdefault(job, []).extend(outcomes)
            self._cv.notify_all()

    def attempts(self, job: str) -> int:
        with self._cv:
            return self.started.get(job, 0)

    def __call__(self, ctx: PodContext) -> Outcome:
        job = ctx.job_name
        with self._cv:
            self.started[job] = self.started.get(job, 0) + 1
            real = (ctx.pod["metadata"].get("labels") or {}).get(LABEL_TASK) in self.real_tasks
        if real:
            return run_local_process(ctx)
        with self._cv:
            while not ctx.stop.is_set():
                if self.outcomes.get(job):
                    return self.outcomes[job].pop(0)
                self._cv.wait(0.2)
        return Outcome(137, "")


# ---- the test's side of the API (admin) --------------------------------------------------------

class Cluster:
    """Admin access to the control plane: the `kubernetes` client and the real kubectl."""

    def __init__(self, plane: ControlPlane) -> None:
        from kubernetes import client, config

        self.plane = plane
        self.kubeconfig = plane.admin_kubeconfig
        self.api = config.new_client_from_config(config_file=str(self.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.rbac = client.RbacAuthorizationV1Api(self.api)
        self.audit = Audit(plane.audit_log)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True
                ) -> subprocess.CompletedProcess[str]:
        return install.kubectl(self.kubeconfig, *args, input=input, check=check)

    def apply(self, docs: Iterable[dict[str, Any]], *extra: str) -> None:
        install.apply(self.kubeconfig, docs, *extra)

    @staticmethod
    def _raw(resp: Any) -> Any:
        return json.loads(resp.data or b"null")

    def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._raw(fn(*args, _preload_content=False, **kw))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def ensure_namespace(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.create_namespace({"metadata": {"name": name}}, _preload_content=False)
        except ApiException as err:
            if err.status != 409:
                raise
        # Pods need the namespace's default ServiceAccount (the serviceaccount controller).
        wait_for(lambda: self._call(self.core.read_namespaced_service_account, "default", name),
                 30, f"the default ServiceAccount in {name}")

    # ---- FineTuneTasks ---------------------------------------------------------------------

    def task_doc(self, ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneTask",
                "metadata": {"name": name, "namespace": ns}, "spec": spec}

    def apply_task(self, ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call(self.custom.create_namespaced_custom_object, GROUP, VERSION, ns,
                          PLURAL, self.task_doc(ns, name, spec))

    def patch_spec(self, ns: str, name: str, spec_patch: dict[str, Any]) -> dict[str, Any]:
        return self._call(self.custom.patch_namespaced_custom_object, GROUP, VERSION, ns, PLURAL,
                          name, {"spec": spec_patch},
                          _content_type="application/merge-patch+json")

    def touch(self, ns: str, name: str, value: str) -> None:
        """An annotation-only change: a watch event that Kopf must treat as a no-op."""
        self._call(self.custom.patch_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, name,
                   {"metadata": {"annotations": {"e2e/touch": value}}},
                   _content_type="application/merge-patch+json")

    def task(self, ns: str, name: str) -> dict[str, Any] | None:
        return self._call(self.custom.get_namespaced_custom_object, GROUP, VERSION, ns, PLURAL,
                          name)

    def status(self, ns: str, name: str) -> dict[str, Any]:
        return (self.task(ns, name) or {}).get("status") or {}

    def delete_task(self, ns: str, name: str) -> None:
        self._call(self.custom.delete_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, name)

    def wait_phase(self, ns: str, name: str, *phases: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(lambda: (s := self.status(ns, name)).get("phase") in phases and s,
                        timeout, f"{ns}/{name} in phase {phases}") or {}

    # ---- built-ins -------------------------------------------------------------------------

    def create_secret(self, ns: str, name: str, values: dict[str, str]) -> None:
        data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
        self._call(self.core.create_namespaced_secret, ns,
                   {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": name, "namespace": ns}, "data": data})

    def jobs(self, ns: str) -> list[dict[str, Any]]:
        return (self._call(self.batch.list_namespaced_job, ns) or {}).get("items", [])

    def job(self, ns: str, name: str) -> dict[str, Any] | None:
        return self._call(self.batch.read_namespaced_job, name, ns)

    def job_condition(self, ns: str, name: str, type_: str) -> dict[str, Any] | None:
        conds = ((self.job(ns, name) or {}).get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == type_ and c["status"] == "True"), None)

    def pods(self, ns: str, job: str | None = None) -> list[dict[str, Any]]:
        kw = {"label_selector": f"batch.kubernetes.io/job-name={job}"} if job else {}
        return (self._call(self.core.list_namespaced_pod, ns, **kw) or {}).get("items", [])

    def configmaps(self, ns: str) -> list[dict[str, Any]]:
        items = (self._call(self.core.list_namespaced_config_map, ns) or {}).get("items", [])
        # Every namespace holds the root CA's ConfigMap (published by the controller manager).
        return [c for c in items if c["metadata"]["name"] != "kube-root-ca.crt"]

    def events(self, ns: str) -> list[dict[str, Any]]:
        return (self._call(self.core.list_namespaced_event, ns) or {}).get("items", [])


# ---- installing what the chart ships, and the operator's identity -----------------------------

def install_crd(cluster: Cluster) -> None:
    install.install_crd(cluster.kubeconfig)


def operator_identity(cluster: Cluster, workdir: Path, docs: list[dict[str, Any]]
                      ) -> Identity:
    """Apply the chart's RBAC documents and issue a token for its ServiceAccount."""
    identity = install.operator_identity(cluster.plane, workdir, docs)
    for ns in {identity.namespace} | {d["metadata"]["namespace"] for d in docs
                                      if d["kind"] in ("Role", "RoleBinding")}:
        cluster.ensure_namespace(ns)
    return identity
