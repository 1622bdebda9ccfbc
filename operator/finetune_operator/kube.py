"""Small helpers over the sync `kubernetes` client: the only module that calls the API directly.

Sync on purpose: handlers that call it are sync `def`s, which Kopf runs in worker threads, so
no blocking call ever sits on the event loop. Bodies go out as dicts and come back as dicts
(`_preload_content=False`): no model round trip that could drop or reject fields.
Errors: `ApiError` with the HTTP status and one line; `transient` says a retry may help.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import time
from typing import Any

from . import GROUP, PLURAL, VERSION
from finetune_contract import one_line

MERGE = "application/merge-patch+json"
_EVENT_SEQ = itertools.count()


class ApiError(Exception):
    """An API call that failed; the message is one line and names the object."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(one_line(message))
        self.status = status

    @property
    def transient(self) -> bool:
        # 0: no HTTP answer (connection refused/reset); 429 throttled; 5xx server side.
        return self.status in (0, 408, 429) or self.status >= 500


def load_config() -> None:
    """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube)."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


class Kube:
    """The calls the operator makes, each one named after its RBAC verb."""

    def __init__(self, api_client: Any = None) -> None:
        from kubernetes import client

        self.api_client = api_client or client.ApiClient()
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)

    # ---- plumbing --------------------------------------------------------------------------

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        """Run one call; return the JSON body, None on 404, ApiError otherwise."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            resp = fn(*args, _preload_content=False, _request_timeout=30, **kwargs)
        except ApiException as err:
            if err.status == 404:
                return None
            raise ApiError(err.status or 0, f"{what}: {err.status} {_reason(err)}") from None
        except (HTTPError, OSError) as err:
            raise ApiError(0, f"{what}: API server unreachable ({type(err).__name__})") from None
        data = resp.data
        return json.loads(data) if data else {}

    def _create(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], bool]:
        """Create; on 409 return the existing object instead (create-if-absent)."""
        from kubernetes.client.exceptions import ApiException

        try:
            resp = fn(*args, _preload_content=False, _request_timeout=30, **kwargs)
            return json.loads(resp.data or b"{}"), True
        except ApiException as err:
            if err.status == 409:
                return {}, False
            raise ApiError(err.status or 0, f"{what}: {err.status} {_reason(err)}") from None

    # ---- ConfigMaps ------------------------------------------------------------------------

    def create_configmap(self, body: dict[str, Any]) -> bool:
        """True when created, False when it already existed."""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        _, created = self._create(f"create configmap {ns}/{name}",
                                  self.core.create_namespaced_config_map, ns, body)
        return created

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._call(f"get configmap {namespace}/{name}",
                          self.core.read_namespaced_config_map, name, namespace)

    def delete_configmap(self, namespace: str, name: str) -> None:
        self._call(f"delete configmap {namespace}/{name}",
                   self.core.delete_namespaced_config_map, name, namespace)

    # ---- Services (the headless Service of a multi-node run) -------------------------------

    def create_service(self, body: dict[str, Any]) -> bool:
        """True when created, False when it already existed."""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        _, created = self._create(f"create service {ns}/{name}",
                                  self.core.create_namespaced_service, ns, body)
        return created

    def delete_service(self, namespace: str, name: str) -> None:
        self._call(f"delete service {namespace}/{name}",
                   self.core.delete_namespaced_service, name, namespace)

    # ---- Jobs ------------------------------------------------------------------------------

    def create_job(self, body: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
        """(job, created); on 409 the existing Job is read back so the caller can check it."""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        obj, created = self._create(f"create job {ns}/{name}",
                                    self.batch.create_namespaced_job, ns, body)
        if not created:
            return self.get_job(ns, name), False
        return obj, True

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._call(f"get job {namespace}/{name}", self.batch.read_namespaced_job,
                          name, namespace)

    def delete_job(self, namespace: str, name: str) -> None:
        # Background: the Job goes now, its pods right after (Orphan would leave them running).
        self._call(f"delete job {namespace}/{name}", self.batch.delete_namespaced_job, name,
                   namespace, propagation_policy="Background")

    def set_job_suspended(self, namespace: str, name: str, suspend: bool) -> None:
        self._call(f"patch job {namespace}/{name}", self.batch.patch_namespaced_job, name,
                   namespace, {"spec": {"suspend": suspend}}, _content_type=MERGE)

    # ---- Pods, Secrets ---------------------------------------------------------------------

    def job_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        """The Job's pods (`job-name` selector, filtered again in podstate.of_job): their
        container states and conditions say why a run fails or cannot start."""
        pods = self._call(f"list pods of job {namespace}/{job_name}",
                          self.core.list_namespaced_pod, namespace,
                          label_selector=f"job-name={job_name}") or {}
        return list(pods.get("items", []))

    def read_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's base64 `data`, or None when it does not exist. Never logged."""
        obj = self._call(f"get secret {namespace}/{name}", self.core.read_namespaced_secret,
                         name, namespace)
        return None if obj is None else dict(obj.get("data") or {})

    # ---- the FineTuneTask ------------------------------------------------------------------

    def get_task(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._call(f"get finetunetask {namespace}/{name}",
                          self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace,
                          PLURAL, name)

    def patch_task_status(self, namespace: str, name: str, status_patch: dict[str, Any]) -> None:
        self._call(f"patch finetunetask {namespace}/{name} status",
                   self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace,
                   PLURAL, name, {"status": status_patch}, _content_type=MERGE)

    # ---- Events ----------------------------------------------------------------------------

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the task; best effort (an event lost is not worth a retry)."""
        now = datetime.datetime.now(datetime.timezone.utc)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        ns = involved["namespace"]
        body = {
            "apiVersion": "v1", "kind": "Event",
            # Explicit unique name (client-go style: <object>.<hex nanos>) instead of generateName;
            # pid and a counter keep two events of one instant apart.
            "metadata": {"name": f"{involved['name']}.{time.time_ns():x}{os.getpid() % 4096:03x}"
                                 f"{next(_EVENT_SEQ) % 4096:03x}", "namespace": ns},
            "involvedObject": involved, "type": type_, "reason": reason,
            "message": one_line(message, 1000), "firstTimestamp": stamp, "lastTimestamp": stamp,
            "count": 1, "source": {"component": "finetune-operator"},
            "reportingComponent": "finetune-operator",
        }
        try:
            self._call(f"create event {ns}", self.core.create_namespaced_event, ns, body)
        except ApiError:
            pass


def _reason(err: Any) -> str:
    """The API's Status.message when there is one (never the request body)."""
    try:
        return str(json.loads(err.body).get("message") or err.reason)
    except (TypeError, ValueError, AttributeError):
        return str(err.reason)
