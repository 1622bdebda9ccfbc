"""The e2e harness: kmock as the API server, the operator as a real process, helpers that play
the API server's and the Job controller's parts. Shared by tests/e2e and bench/bench_operator.py.

What is real: HTTP between the operator (Kopf + the `kubernetes` client) and kmock; the
`finetune operator` process; SeaweedFS (S3) where the caller passes one. What the harness
adds because kmock does not: uid, creationTimestamp, metadata.generation (bumped on spec
changes), names for `generateName`, the Job controller (status), the garbage collector.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kmock
import yaml
from kmock._internal import dicts as kmock_dicts

from finetune_operator import GROUP, KIND, PLURAL, VERSION
from finetune_operator.crdgen import build_crd, to_jsonschema

HARNESS_AGENT = "finetune-e2e-harness"
ROOT = Path(__file__).resolve().parents[2]
VERBS = {"FETCH": "get", "LIST": "list", "WATCH": "watch", "CREATE": "create",
         "DELETE": "delete"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def describe(obj: Any) -> str:
    return json.dumps(obj, indent=1)[:3000]


def task_validator() -> jsonschema.Draft202012Validator:
    """The CRD's openAPIV3Schema as JSON Schema: what the API server would admit."""
    crd = build_crd()
    schema = to_jsonschema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    return jsonschema.Draft202012Validator(schema)


class _MatchOnlyThis(kmock.RawHandler):
    """Sits between kmock's emulator and its matcher (see the MRO): kmock finds the reaction
    for a request by scanning its whole request log for that request; the log is left holding
    only the request being matched (the matching itself is synchronous)."""

    __slots__ = ()

    async def _handle(self, request: Any) -> Any:
        self._requests[:] = [request]
        return await super()._handle(request)


class Emulator(kmock.KubernetesEmulator, _MatchOnlyThis):
    """kmock's emulator plus what a real API server sets, and a record of the operator's calls."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.calls: list[dict[str, Any]] = []  # every non-harness request
        self.bodies: list[tuple[str, Any]] = []  # (verb resource, body) the operator sent

    async def _handle(self, request: Any) -> Any:
        return await self._handle_recorded(request)

    async def _handle_recorded(self, request: Any) -> Any:
        res = request.resource
        if res is not None and res.plural and request.action is not None:
            agent = (request.headers or {}).get("User-Agent", "")
            verb = VERBS.get(request.action.name)
            if verb is None:
                verb = "update" if str(request.method).upper().endswith("PUT") else "patch"
            resource = res.plural + (f"/{request.subresource}" if request.subresource else "")
            if HARNESS_AGENT not in agent:
                name = request.name
                if name is None and verb == "create" and isinstance(request.data, dict):
                    name = (request.data.get("metadata") or {}).get("name")
                self.calls.append({"verb": verb, "group": res.group or "", "resource": resource,
                                   "namespace": request.namespace, "name": name,
                                   "agent": agent.split("/")[0], "t": time.monotonic()})
                if request.data is not None and verb in ("create", "patch", "update"):
                    self.bodies.append((f"{verb} {resource}", request.data))
            self._as_api_server(request)
        return await super()._handle(request)

    def _KubernetesEmulator__get_objs(self, request: Any, strict: bool) -> list[Any]:
        """kmock scans every stored object per request; a named request is one dict lookup
        (what makes a 1,000-task benchmark measure the operator rather than the mock)."""
        if request.name is not None and (strict or request.namespace is not None):
            obj = self.objects._objects.get((request.resource, request.namespace, request.name))
            return [obj] if obj is not None else []
        return super()._KubernetesEmulator__get_objs(request, strict)  # type: ignore[misc]

    def _as_api_server(self, request: Any) -> None:
        """What a real API server adds on writes: names, uid, timestamps, generation, and a new
        resourceVersion on every write (Kopf waits for the version its own patch produced)."""
        data, action = request.data, request.action.name
        version = str(time.monotonic_ns())
        if action == "UPDATE" and isinstance(data, list):  # JSON patch: add an op at the end
            key = (request.resource, request.namespace, request.name)
            current = (self.objects[key].raw.get("metadata", {}).get("resourceVersion")
                       if key in self.objects and not self.objects[key].deleted else None)
            for op in data:
                if (op.get("op") == "test" and op.get("path") == "/metadata/resourceVersion"
                        and op.get("value") != current):
                    # What the API server answers to a failed `test`: 422, not 500.
                    raise kmock.KubernetesError(status=422, reason="Invalid",
                                                message="the test operation failed")
            data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
            return
        if action not in ("CREATE", "UPDATE") or not isinstance(data, dict):
            return
        meta = data.setdefault("metadata", {})
        meta["resourceVersion"] = version
        if action == "CREATE":
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta["generation"] = 1
        elif not request.subresource and "spec" in data:
            key = (request.resource, request.namespace, request.name)
            if key in self.objects and not self.objects[key].deleted:
                old = self.objects[key].raw
                merged = kmock_dicts.patch_dict(copy.deepcopy(old), copy.deepcopy(data))
                if merged.get("spec") != old.get("spec"):
                    meta["generation"] = int(old.get("metadata", {}).get("generation") or 1) + 1


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiServer:
    """kmock on a loopback port, served from its own thread and event loop."""

    def __init__(self) -> None:
        self.emulator: Emulator | None = None
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)

    def start(self) -> ApiServer:
        self._thread.start()
        if not self._ready.wait(30) or not self.url:
            raise RuntimeError("kmock did not start")
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with Emulator() as emulator, kmock.Server(emulator) as server:
            emulator.resources.load_bundled()
            emulator.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = kmock.ResourceInfo(
                kind=KIND, singular=KIND.lower(), namespaced=True,
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                shortnames={"ftt"}, categories={"finetune"}, subresources={"status"})
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "e2e", "user": {"token": "e2e-token"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "e2e"}}],
        }))
        return path

    def api_calls(self) -> list[tuple[str, str, str]]:
        """Distinct (verb, group, resource) the operator called."""
        assert self.emulator is not None
        return sorted({(c["verb"], c["group"], c["resource"]) for c in self.emulator.calls})


class Cluster:
    """The test's side of the API: a `kubernetes` client marked as the harness."""

    def __init__(self, url: str) -> None:
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = url
        self.api = client.ApiClient(cfg)
        self.api.user_agent = HARNESS_AGENT
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.validator = task_validator()

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

    # ---- FineTuneTasks ---------------------------------------------------------------------

    def task_doc(self, ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                "metadata": {"name": name, "namespace": ns}, "spec": spec}

    def apply_task(self, ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        doc = self.task_doc(ns, name, spec)
        self.validator.validate(doc)  # what the API server would reject never reaches Kopf
        return self._call(self.custom.create_namespaced_custom_object, GROUP, VERSION, ns,
                          PLURAL, doc)

    def patch_spec(self, ns: str, name: str, spec_patch: dict[str, Any]) -> dict[str, Any]:
        current = self.task(ns, name)
        merged = kmock_dicts.patch_dict(copy.deepcopy(current), {"spec": spec_patch})
        merged.pop("status", None)
        self.validator.validate({k: v for k, v in merged.items() if k != "status"})
        return self._call(self.custom.patch_namespaced_custom_object, GROUP, VERSION, ns, PLURAL,
                          name, {"spec": spec_patch},
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
        import base64

        data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
        self._call(self.core.create_namespaced_secret, ns,
                   {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": name, "namespace": ns}, "data": data})

    def jobs(self, ns: str) -> list[dict[str, Any]]:
        items = (self._call(self.batch.list_namespaced_job, ns) or {}).get("items", [])
        return [j for j in items if j["metadata"].get("namespace") == ns]

    def configmaps(self, ns: str) -> list[dict[str, Any]]:
        items = (self._call(self.core.list_namespaced_config_map, ns) or {}).get("items", [])
        return [c for c in items if c["metadata"].get("namespace") == ns]

    def events(self, ns: str) -> list[dict[str, Any]]:
        items = (self._call(self.core.list_namespaced_event, ns) or {}).get("items", [])
        return [e for e in items if e["metadata"].get("namespace") == ns]

    # ---- playing the Job controller --------------------------------------------------------

    def set_job_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        self._call(self.batch.patch_namespaced_job_status, name, ns, {"status": status},
                   _content_type="application/merge-patch+json")

    def start_job(self, ns: str, name: str) -> None:
        self.set_job_status(ns, name, {"startTime": _now(), "active": 1})

    def complete_job(self, ns: str, name: str) -> None:
        now = _now()
        self.set_job_status(ns, name, {
            "active": 0, "succeeded": 1, "startTime": now, "completionTime": now,
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
                {"type": "Complete", "status": "True", "lastTransitionTime": now}]})

    def fail_job(self, ns: str, name: str, *, termination: str | None, exit_code: int = 2,
                 reason: str = "PodFailurePolicy") -> None:
        """A failed trainer pod (with its termination message), then the Job's Failed condition."""
        now = _now()
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{name}-x1", "namespace": ns,
                            "labels": {"job-name": name, "batch.kubernetes.io/job-name": name}},
               "spec": {"restartPolicy": "Never",
                        "containers": [{"name": "trainer", "image": "trainer"}]},
               "status": {"phase": "Failed", "containerStatuses": [{
                   "name": "trainer", "ready": False, "restartCount": 0, "image": "trainer",
                   "imageID": "", "state": {"terminated": {
                       "exitCode": exit_code, "reason": "Error", "finishedAt": now,
                       **({"message": termination} if termination else {})}}}]}}
        self._call(self.core.create_namespaced_pod, ns, pod)
        self.set_job_status(ns, name, {"active": 0, "failed": 1, "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": reason, "lastTransitionTime": now},
            {"type": "Failed", "status": "True", "reason": reason, "lastTransitionTime": now,
             "message": f"Container trainer for pod {ns}/{name}-x1 failed with exit code "
                        f"{exit_code} matching FailJob rule at index 0"}]})

    # ---- playing the garbage collector -----------------------------------------------------

    def collect_garbage(self, ns: str, owner_uid: str) -> list[str]:
        """Delete what an owner reference ties to a deleted owner (kmock has no GC)."""
        gone = []
        for kind, items, delete in (
                ("job", self.jobs(ns), self.batch.delete_namespaced_job),
                ("configmap", self.configmaps(ns), self.core.delete_namespaced_config_map)):
            for obj in items:
                owners = obj["metadata"].get("ownerReferences") or []
                if any(o.get("uid") == owner_uid for o in owners):
                    self._call(delete, obj["metadata"]["name"], ns)
                    gone.append(f"{kind}/{obj['metadata']['name']}")
        return gone


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
