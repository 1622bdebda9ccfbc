"""The kubelet's part, and only that: bind pods to one node, run them, report how they ended.

There is no kubelet or container runtime on these machines. This node watches pods, binds the
unscheduled ones to itself (there is no scheduler either), resolves what a kubelet resolves
(Secret and ConfigMap env, ConfigMap and emptyDir volumes), hands the pod to a `PodRunner`, and
writes the container's terminated state (exit code, termination message) to `pods/status`. It
honours deletion: a pod being deleted is stopped, reported Failed (as a kubelet gives a killed
pod a terminal phase, keeping a DisruptionTarget condition the eviction API added) and then
removed with grace 0, as a kubelet confirms it. Job status, retries, podFailurePolicy, suspend,
deadlines and garbage collection are the real controllers' work.

Two things a real cluster does that tests need to provoke, played faithfully: a pod whose
`nodeSelector` this node's labels do not match is marked `PodScheduled=False, Unschedulable` with
the scheduler's message (and never bound), and an image from a `.invalid` registry (a name that
never resolves, RFC 2606) waits in `ErrImagePull` then `ImagePullBackOff` until it is deleted.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("finetune.node")

NODE_NAME = "finetune-node"
TERMINATION_MESSAGE_LIMIT = 4096  # what a kubelet keeps of the termination-message file
LOG_FALLBACK_LINES = 80
RETRY_CONFIG_S = 2.0  # how often a pod waiting on a missing Secret is tried again


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ContainerConfigError(Exception):
    """What a kubelet reports as CreateContainerConfigError (e.g. a missing Secret)."""


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    message: str = ""
    reason: str | None = None  # the terminated state's reason, e.g. "OOMKilled"; default Error


@dataclass
class PodContext:
    """One pod as its runner sees it: the manifest, resolved env, local dirs for its mounts."""

    pod: dict[str, Any]
    env: dict[str, str]
    mounts: dict[str, Path]  # mountPath in the container -> local folder
    work: Path
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def container(self) -> dict[str, Any]:
        return self.pod["spec"]["containers"][0]

    @property
    def job_name(self) -> str:
        return self.pod["metadata"].get("labels", {}).get("job-name", "")

    def local_path(self, path: str) -> str:
        """A container path rewritten to where its mount lives on this machine."""
        for mount, local in sorted(self.mounts.items(), key=lambda kv: -len(kv[0])):
            if path == mount or path.startswith(mount.rstrip("/") + "/"):
                return str(local) + path[len(mount.rstrip("/")):]
        return path


class PodRunner(Protocol):
    def __call__(self, ctx: PodContext) -> Outcome: ...


def run_local_process(ctx: PodContext) -> Outcome:
    """Run the container's command as a local process (the image's Python is this one)."""
    c = ctx.container
    argv = list(c.get("command") or []) + list(c.get("args") or [])
    if not argv:
        return Outcome(128, "the node runs containers with an explicit command only")
    argv = [ctx.local_path(a) for a in argv]
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable  # the image's interpreter is this one (after the mounts)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           **{k: ctx.local_path(v) for k, v in ctx.env.items()}}
    logfile = ctx.work / "container.log"
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=ctx.work, start_new_session=True)
        while proc.poll() is None:
            if ctx.stop.wait(0.2):
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    return Outcome(proc.returncode if proc.returncode >= 0 else 128 - proc.returncode,
                   termination_message(ctx, proc.returncode, logfile))


def termination_message(ctx: PodContext, exit_code: int, logfile: Path) -> str:
    """The file at terminationMessagePath, else (FallbackToLogsOnError) the log's tail."""
    path = Path(ctx.local_path(ctx.container.get("terminationMessagePath",
                                                 "/dev/termination-log")))
    text = path.read_text(errors="replace") if path.is_file() else ""
    if not text and exit_code != 0 and \
            ctx.container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
        lines = logfile.read_text(errors="replace").splitlines()[-LOG_FALLBACK_LINES:]
        text = "\n".join(lines)
    return text[-TERMINATION_MESSAGE_LIMIT:]


def unpullable(image: str) -> bool:
    """An image whose registry is under `.invalid`, which never resolves (RFC 2606)."""
    host = image.split("/", 1)[0] if "/" in image else ""
    return host.split(":", 1)[0].endswith(".invalid")


class Node:
    """Watches every pod and plays the kubelet for the ones that land on this node."""

    def __init__(self, api_client: Any, runner: PodRunner = run_local_process,
                 name: str = NODE_NAME, work_root: Path | None = None,
                 max_running: int | None = None) -> None:
        from kubernetes import client

        self.api = api_client
        self.core = client.CoreV1Api(api_client)
        self.name = name
        self.runner = runner
        self.work_root = Path(work_root or tempfile.mkdtemp(prefix="finetune-node-"))
        self._pods: dict[str, PodContext | None] = {}  # uid -> context (None: not started)
        # A node's capacity (e.g. one GPU): pods beyond it stay Pending, unbound, until a
        # running one ends. None: every pod is bound at once.
        self.max_running = max_running
        self._bound: set[str] = set()  # uids bound here and not finished
        self._unschedulable: set[str] = set()  # uids already marked Unschedulable
        self.labels = {"kubernetes.io/hostname": name}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch_forever, name="node", daemon=True)

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> Node:
        self._register()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            for ctx in self._pods.values():
                if ctx is not None:
                    ctx.stop.set()
        self._thread.join(15)

    def _register(self) -> None:
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": dict(self.labels)},
                "status": {"capacity": {"cpu": "2", "memory": "24Gi", "pods": "1100"},
                           "allocatable": {"cpu": "2", "memory": "24Gi", "pods": "1100"}}}
        self._call(self.core.create_node, body, ok=(409,))

    def _call(self, fn: Callable[..., Any], *args: Any, ok: tuple[int, ...] = (),
              **kw: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = fn(*args, _preload_content=False, **kw)
            return json.loads(resp.data or b"null")
        except ApiException as err:
            if err.status in ok:
                return None
            raise

    # ---- the watch -------------------------------------------------------------------------

    def _watch_forever(self) -> None:
        from kubernetes import watch

        while not self._stopping.is_set():
            try:
                listing = self._call(self.core.list_pod_for_all_namespaces)
                for pod in listing["items"]:
                    self._on_pod(pod)
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces, _request_timeout=30,
                    resource_version=listing["metadata"]["resourceVersion"],
                    timeout_seconds=25)
                for event in stream:
                    if self._stopping.is_set():
                        return
                    pod = self.api.sanitize_for_serialization(event["object"])
                    if event["type"] == "DELETED":
                        self._forget(pod)
                    else:
                        self._on_pod(pod)
            except Exception as err:  # noqa: BLE001 - an apiserver outage: re-list and go on
                log.info("node watch restarts: %s", str(err).splitlines()[0][:200])
                self._stopping.wait(1.0)

    def _on_pod(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        if spec.get("nodeName") in (None, "") and not meta.get("deletionTimestamp"):
            if not self._fits(pod):
                self._mark_unschedulable(pod)
            elif self._take_slot(uid):
                self._bind(pod)
            return
        if spec.get("nodeName") != self.name:
            return
        if meta.get("deletionTimestamp"):
            self._terminate(pod)
            return
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return
        with self._lock:
            if uid in self._pods:
                return
            self._pods[uid] = None
        threading.Thread(target=self._run_pod, args=(pod,), daemon=True,
                         name=f"pod-{meta['name']}").start()

    def _fits(self, pod: dict[str, Any]) -> bool:
        wanted = pod["spec"].get("nodeSelector") or {}
        return all(self.labels.get(k) == v for k, v in wanted.items())

    def _mark_unschedulable(self, pod: dict[str, Any]) -> None:
        """What the scheduler writes when no node fits (once: the patch comes back as an event)."""
        meta = pod["metadata"]
        with self._lock:
            if meta["uid"] in self._unschedulable:
                return
            self._unschedulable.add(meta["uid"])
        message = ("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. "
                   "preemption: 0/1 nodes are available: 1 Preemption is not helpful for "
                   "scheduling.")
        self._call(self.core.patch_namespaced_pod_status, meta["name"], meta["namespace"],
                   {"status": {"conditions": [{
                       "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                       "message": message, "lastTransitionTime": now()}]}},
                   _content_type="application/strategic-merge-patch+json", ok=(404, 409))

    def _forget(self, pod: dict[str, Any]) -> None:
        with self._lock:
            self._unschedulable.discard(pod["metadata"]["uid"])
            ctx = self._pods.pop(pod["metadata"]["uid"], None)
        if ctx is not None:
            ctx.stop.set()
        self._free_slot(pod["metadata"]["uid"])

    def _take_slot(self, uid: str) -> bool:
        with self._lock:
            if uid in self._bound:
                return True
            if self.max_running is not None and len(self._bound) >= self.max_running:
                return False
            self._bound.add(uid)
            return True

    def _free_slot(self, uid: str) -> None:
        """A pod ended or went: bind the oldest pending pods into the freed capacity."""
        with self._lock:
            if uid not in self._bound:
                return
            self._bound.discard(uid)
        if self.max_running is None:
            return
        try:
            pending = self._call(self.core.list_pod_for_all_namespaces,
                                 field_selector="spec.nodeName=")
        except Exception as err:  # noqa: BLE001 - an outage: the watch's re-list binds them
            log.info("pending pods wait for the apiserver: %s", str(err)[:200])
            return
        for pod in sorted(pending["items"], key=lambda p: p["metadata"]["creationTimestamp"]):
            if not pod["metadata"].get("deletionTimestamp") and \
                    self._take_slot(pod["metadata"]["uid"]):
                self._bind(pod)

    def _bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        body = {"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.name}}
        # 409: already bound (a re-list saw the pod again); 404: deleted meanwhile.
        self._call(self.core.create_namespaced_pod_binding, meta["name"], meta["namespace"],
                   body, ok=(404, 409))

    def _terminate(self, pod: dict[str, Any]) -> None:
        """A pod being deleted: stop it, then confirm the deletion as a kubelet does."""
        meta = pod["metadata"]
        with self._lock:
            ctx = self._pods.get(meta["uid"])
        if ctx is not None:
            ctx.stop.set()
            return  # the pod's thread confirms once its process is gone
        self._call(self.core.delete_namespaced_pod, meta["name"], meta["namespace"],
                   grace_period_seconds=0, ok=(404, 409))

    # ---- one pod ---------------------------------------------------------------------------

    def _run_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        name, ns = meta["name"], meta["namespace"]
        work = self.work_root / ns / name
        container = pod["spec"]["containers"][0]
        started = now()
        try:
            ctx = None
            while ctx is None:
                try:
                    ctx = self._context(pod, work)
                except ContainerConfigError as err:
                    self._patch_status(ns, name, {"phase": "Pending", "containerStatuses": [
                        self._container_status(container, {"waiting": {
                            "reason": "CreateContainerConfigError", "message": str(err)}})]})
                    if self._stopping.wait(RETRY_CONFIG_S) or self._deleted(ns, name):
                        return
            with self._lock:
                if meta["uid"] not in self._pods:
                    return
                self._pods[meta["uid"]] = ctx
            if unpullable(container["image"]):
                self._pull_forever(ns, name, container, ctx)
                return
            self._patch_status(ns, name, {
                "phase": "Running", "startTime": started, "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "conditions": [{"type": t, "status": "True", "lastTransitionTime": started}
                               for t in ("PodScheduled", "Initialized", "ContainersReady",
                                         "Ready")],
                "containerStatuses": [self._container_status(
                    container, {"running": {"startedAt": started}}, ready=True)]})
            try:
                outcome = self.runner(ctx)
            except Exception as err:  # noqa: BLE001 - a runner bug is a crashed container
                log.exception("runner failed for %s/%s", ns, name)
                outcome = Outcome(128, f"node runner error: {err}")
            if ctx.stop.is_set():
                # Killed for its deletion: a terminal phase first (the Job controller reads it,
                # and the DisruptionTarget condition an eviction added stays), then confirm.
                self._patch_status(ns, name, {"phase": "Failed", "containerStatuses": [
                    self._container_status(container, {"terminated": {
                        "exitCode": outcome.exit_code or 137, "reason": "Error",
                        "startedAt": started, "finishedAt": now()}})]})
                self._confirm_deleted(ns, name)
                return
            phase = "Succeeded" if outcome.exit_code == 0 else "Failed"
            terminated = {"exitCode": outcome.exit_code,
                          "reason": outcome.reason or ("Completed" if outcome.exit_code == 0
                                                       else "Error"),
                          "startedAt": started, "finishedAt": now()}
            if outcome.message:
                terminated["message"] = outcome.message[-TERMINATION_MESSAGE_LIMIT:]
            self._patch_status(ns, name, {
                "phase": phase,
                "conditions": [{"type": t, "status": "False", "lastTransitionTime": now(),
                                "reason": "PodCompleted"} for t in ("Ready", "ContainersReady")],
                "containerStatuses": [self._container_status(container,
                                                             {"terminated": terminated})]})
        finally:
            shutil.rmtree(work, ignore_errors=True)
            self._free_slot(meta["uid"])

    def _pull_forever(self, ns: str, name: str, container: dict[str, Any],
                      ctx: PodContext) -> None:
        """An image that cannot be pulled: ErrImagePull, then ImagePullBackOff, until deleted."""
        scheduled = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}]
        said = (f'failed to pull and unpack image "{container["image"]}": failed to resolve '
                f"reference: dial tcp: lookup {container['image'].split('/')[0]}: no such host")
        backoff = f'Back-off pulling image "{container["image"]}"'
        for reason, message in (("ErrImagePull", said), ("ImagePullBackOff", backoff)):
            self._patch_status(ns, name, {"phase": "Pending", "conditions": scheduled,
                                          "containerStatuses": [self._container_status(
                                              container, {"waiting": {"reason": reason,
                                                                      "message": message}})]})
            if ctx.stop.wait(1.0):
                break
        while not ctx.stop.wait(1.0) and not self._stopping.is_set():
            pass
        self._confirm_deleted(ns, name)

    def _deleted(self, ns: str, name: str) -> bool:
        pod = self._call(self.core.read_namespaced_pod, name, ns, ok=(404,))
        if pod is None:
            return True
        if pod["metadata"].get("deletionTimestamp"):
            self._confirm_deleted(ns, name)
            return True
        return False

    def _confirm_deleted(self, ns: str, name: str) -> None:
        self._through_outage(self.core.delete_namespaced_pod, name, ns, grace_period_seconds=0)

    @staticmethod
    def _container_status(container: dict[str, Any], state: dict[str, Any],
                          ready: bool = False) -> dict[str, Any]:
        return {"name": container["name"], "image": container["image"], "imageID": "",
                "ready": ready, "restartCount": 0, "started": "running" in state,
                "state": state}

    def _patch_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        self._through_outage(self.core.patch_namespaced_pod_status, name, ns,
                             {"status": status},
                             _content_type="application/strategic-merge-patch+json")

    def _through_outage(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
        """Report, retrying through an apiserver outage (a kubelet never forgets an exit)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        while True:
            try:
                self._call(fn, *args, ok=(404, 409), **kw)
                return
            except ApiException as err:
                if err.status and err.status < 500:
                    raise
            except (OSError, HTTPError) as err:  # the apiserver is down or restarting
                log.info("%s waits for the apiserver: %s", fn.__name__, err)
            if self._stopping.wait(1.0):
                return

    def _context(self, pod: dict[str, Any], work: Path) -> PodContext:
        """Env and mounts resolved as a kubelet would (Secret values never leave the pod)."""
        ns = pod["metadata"]["namespace"]
        container = pod["spec"]["containers"][0]
        env: dict[str, str] = {}
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
                continue
            ref = (item.get("valueFrom") or {})
            if "secretKeyRef" in ref or "configMapKeyRef" in ref:
                value = self._key_ref(ns, ref)
                if value is not None:
                    env[item["name"]] = value
            elif "fieldRef" in ref:
                path = ref["fieldRef"]["fieldPath"]
                env[item["name"]] = str(pod["metadata"].get(path.split(".", 1)[1], ""))
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        work.mkdir(parents=True, exist_ok=True)
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            local = work / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            volume = volumes.get(mount["name"], {})
            if "configMap" in volume:
                cm = self._call(self.core.read_namespaced_config_map,
                                volume["configMap"]["name"], ns, ok=(404,))
                if cm is None:
                    raise ContainerConfigError(
                        f'configmap "{volume["configMap"]["name"]}" not found')
                for key, value in (cm.get("data") or {}).items():
                    (local / key).write_text(value)
            mounts[mount["mountPath"]] = local
        term = container.get("terminationMessagePath", "/dev/termination-log")
        mounts[term] = work / "termination-log"
        return PodContext(pod=pod, env=env, mounts=mounts, work=work)

    def _key_ref(self, ns: str, ref: dict[str, Any]) -> str | None:
        import base64

        kind = "secretKeyRef" if "secretKeyRef" in ref else "configMapKeyRef"
        key_ref = ref[kind]
        read = (self.core.read_namespaced_secret if kind == "secretKeyRef"
                else self.core.read_namespaced_config_map)
        obj = self._call(read, key_ref["name"], ns, ok=(404,))
        what = "secret" if kind == "secretKeyRef" else "configmap"
        if obj is None:
            if key_ref.get("optional"):
                return None
            raise ContainerConfigError(f'{what} "{key_ref["name"]}" not found')
        data = obj.get("data") or {}
        if key_ref["key"] not in data:
            if key_ref.get("optional"):
                return None
            raise ContainerConfigError(
                f"couldn't find key {key_ref['key']} in {what.capitalize()} {ns}/{key_ref['name']}")
        value = data[key_ref["key"]]
        return base64.b64decode(value).decode() if kind == "secretKeyRef" else value
