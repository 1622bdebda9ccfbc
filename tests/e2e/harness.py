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
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finetune_dev.cluster.controlplane import ControlPlane, free_port
from finetune_dev.cluster.node import Outcome, PodContext
from finetune_operator import GROUP, PLURAL, VERSION

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "finetunetasks.finetune.v-sekai.org.yaml"
CHART = ROOT / "helm" / "finetune-operator"
OPERATOR_NAMESPACE = "finetune-system"
RELEASE = "finetune"
KUBECTL = str(Path(sys.executable).parent / "kubectl")
HELM = str(ROOT / ".tools" / "bin" / "helm")
__all__ = ["free_port"]


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


# ---- the apiserver's audit log: which calls a user made, with what result --------------------

@dataclass(frozen=True)
class Call:
    verb: str
    group: str
    resource: str  # with "/subresource" where there is one
    namespace: str
    name: str
    code: int
    body: Any
    t: float  # seconds since the epoch (stageTimestamp)

    @property
    def rbac(self) -> tuple[str, str, str]:
        return self.verb, self.group, self.resource


class Audit:
    """Reads the apiserver's JSON audit log (one event per line, ResponseComplete stage)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def calls(self, user: str, since: int = 0) -> list[Call]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(since)
            lines = f.read().splitlines()
        out = []
        for line in lines:
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # a line being written
            # A watch is recorded when its response starts (it completes only when it closes);
            # every other request when it completes.
            stage = "ResponseStarted" if ev.get("verb") == "watch" else "ResponseComplete"
            if ev.get("stage") != stage or ev["user"].get("username") != user:
                continue
            ref = ev.get("objectRef") or {}
            if not ref.get("resource"):
                continue  # discovery (/api, /apis, /version)
            resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource")
                                          else "")
            stamp = ev.get("stageTimestamp", "")
            out.append(Call(ev["verb"], ref.get("apiGroup", ""), resource,
                            ref.get("namespace", ""), ref.get("name", ""),
                            int((ev.get("responseStatus") or {}).get("code", 0)),
                            ev.get("requestObject"), _epoch(stamp)))
        return out


def _epoch(stamp: str) -> float:
    import datetime

    if not stamp:
        return 0.0
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# ---- the trainer inside the pod, played by the test -----------------------------------------

@dataclass
class ScriptedTrainer:
    """A PodRunner for the node: each pod of a Job runs until the test releases an outcome for
    that Job (one per attempt), or until the pod is deleted. Unreleased pods keep running, as a
    long training would."""

    outcomes: dict[str, list[Outcome]] = field(default_factory=dict)
    started: dict[str, int] = field(default_factory=dict)
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
        proc = subprocess.run([KUBECTL, f"--kubeconfig={self.kubeconfig}", *args], input=input,
                              capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def apply(self, docs: Iterable[dict[str, Any]], *extra: str) -> None:
        self.kubectl("apply", *extra, "-f", "-", input=yaml.safe_dump_all(list(docs)))

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
    cluster.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    f"crd/{PLURAL}.{GROUP}")


def render_chart(*set_values: str, show_only: Iterable[str] = ()) -> list[dict[str, Any]]:
    """`helm template` of the shipped chart (the real helm binary)."""
    args = [HELM, "template", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE]
    for value in set_values:
        args += ["--set", value]
    for template in show_only:
        args += ["--show-only", template]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


@dataclass
class Identity:
    """A ServiceAccount the operator runs as, with a kubeconfig holding its token."""

    namespace: str
    name: str
    kubeconfig: Path

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


def chart_rbac(*set_values: str) -> list[dict[str, Any]]:
    return [d for d in render_chart(*set_values) if d["kind"] in RBAC_KINDS]


def operator_identity(cluster: Cluster, workdir: Path, docs: list[dict[str, Any]]
                      ) -> Identity:
    """Apply the chart's RBAC documents and issue a token for its ServiceAccount."""
    cluster.ensure_namespace(OPERATOR_NAMESPACE)
    for doc in docs:
        if doc.get("metadata", {}).get("namespace") and doc["kind"] in ("Role", "RoleBinding"):
            cluster.ensure_namespace(doc["metadata"]["namespace"])
    cluster.apply(docs)
    [account] = [d for d in docs if d["kind"] == "ServiceAccount"]
    name = account["metadata"]["name"]
    token = cluster.kubectl("create", "token", name, "-n", OPERATOR_NAMESPACE,
                            "--duration=24h").stdout.strip()
    path = cluster.plane.token_kubeconfig(workdir / f"{name}.kubeconfig", token)
    return Identity(OPERATOR_NAMESPACE, name, path)


class OperatorProcess:
    """`python -m finetune_operator operator` against the kubeconfig, logs to a file."""

    def __init__(self, kubeconfig: Path, log: Path, **settings: Any) -> None:
        self.kubeconfig, self.log = kubeconfig, log
        self.metrics_port = free_port()
        self.settings = {"metrics_port": self.metrics_port, "health_port": 0,
                         "poll_interval": 1.0, "trainer_image": "registry.example/trainer:e2e",
                         **settings}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> OperatorProcess:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "FINETUNE_", "KUBECONFIG"))}
        env.update({f"FINETUNE_{k.upper()}": str(v) for k, v in self.settings.items()})
        env["KUBECONFIG"] = str(self.kubeconfig)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "finetune_operator", "operator"], env=env,
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        if wait:
            wait_for(self._serving, 60, "the operator's /metrics endpoint", interval=0.2)
        return self

    def _serving(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited {self.proc.returncode}: "
                                 f"{self.log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=0.5):
                return True
        except OSError:
            return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics_text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as resp:
            return resp.read().decode()

    def kill(self) -> None:
        """A crash: SIGKILL, no graceful shutdown."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
