"""Pure builders of the children of a FineTuneTask: the ConfigMap and the trainer Job.

Nothing here touches the API: each function takes the parsed spec and settings and returns the
manifest as a plain dict (camelCase, quantities as strings), so tests compare them as tables
and `kubernetes-validate --strict` checks them. Names are deterministic per (task, run): a
re-delivered event or an operator restart builds the same names, and create-if-absent makes
the second create a no-op (reconcile.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import yaml

from . import API_VERSION, KIND, multinode
from finetune_contract import EXIT_BAD_INPUT, TRAINER_ENV, RunLayout
from .settings import OperatorSettings
from .spec import FineTuneTaskSpec

# libyaml when present: the pure-Python emitter costs ~30 ms per config, felt at 1,000 tasks.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

DOMAIN = "finetune.v-sekai.org"
LABEL_TASK = f"{DOMAIN}/task"
LABEL_RUN = f"{DOMAIN}/run"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "finetune-operator"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"

CONTAINER = "trainer"
CONFIG_DIR = "/etc/finetune"
CONFIG_KEY = "axolotl.yaml"
WORK_DIR = "/work"
TERMINATION_LOG = "/dev/termination-log"
RUN_AS = 10001  # the trainer image's user (trainer-image/Dockerfile)
MAX_NAME = 63  # Job names end up in the `job-name` pod label: a label value is at most 63 chars

# The pod's writable home and caches, then the contract's trainer env (quiet, unbuffered).
JOB_ENV = {"HOME": WORK_DIR, "HF_HOME": f"{WORK_DIR}/.cache/huggingface", **TRAINER_ENV}


@dataclass(frozen=True)
class TaskRef:
    """The owner: enough of the FineTuneTask's metadata to name, label and own its children."""

    name: str
    namespace: str
    uid: str

    def owner_reference(self) -> dict[str, Any]:
        # controller=True: `kubectl describe` and the GC treat the task as the one owner;
        # blockOwnerDeletion keeps foreground deletion of the task waiting for the Job.
        return {"apiVersion": API_VERSION, "kind": KIND, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


def child_name(task: str, run_id: str, nodes: int = 1) -> str:
    """`<task>-<run>`, cut to 63 characters with a hash of the full name when too long.

    The hash keeps two long task names that share a prefix from colliding after the cut. A run
    over several nodes leaves room for the `-<index>` the Job controller appends to make each
    pod's hostname (a DNS label, at most 63 characters too).
    """
    limit = MAX_NAME - (len(f"-{nodes - 1}") if nodes > 1 else 0)
    base = f"{task}-{run_id}".replace(".", "-")
    if len(base) <= limit:
        return base
    digest = hashlib.sha256(task.encode()).hexdigest()[:6]
    keep = limit - len(run_id) - len(digest) - 2
    return f"{task[:keep].replace('.', '-').rstrip('-')}-{digest}-{run_id}"


def labels(task: TaskRef, run_id: str) -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_TASK: task.name[:MAX_NAME].rstrip("-.") or "x",
            LABEL_RUN: run_id}


def profile_for(spec: FineTuneTaskSpec, settings: OperatorSettings) -> str:
    """gpu=0 runs the CPU profile (no CUDA-only settings); otherwise the operator's profile."""
    return "cpu" if spec.resources.gpu == 0 else settings.device_profile


def s3_endpoint(spec: FineTuneTaskSpec, settings: OperatorSettings) -> str:
    return spec.storage.endpoint or settings.default_s3_endpoint


def build_configmap(task: TaskRef, run_id: str, config: dict[str, Any], nodes: int = 1
                    ) -> dict[str, Any]:
    """ConfigMap `<task>-<run>` holding the rendered Axolotl config (never a secret); named as
    its Job (`nodes` as in child_name)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": child_name(task.name, run_id, nodes),
            "namespace": task.namespace,
            "labels": labels(task, run_id),
            "ownerReferences": [task.owner_reference()],
        },
        "data": {CONFIG_KEY: yaml.dump(config, Dumper=_DUMPER, sort_keys=False)},
    }


def _secret_env(name: str, secret: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": name}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def _env(spec: FineTuneTaskSpec, settings: OperatorSettings) -> list[dict[str, Any]]:
    """Credentials only by reference: the operator never copies a secret value into the Job."""
    env: list[dict[str, Any]] = []
    secret = spec.storage.credentials_secret
    if secret:
        env += [_secret_env("AWS_ACCESS_KEY_ID", secret),
                _secret_env("AWS_SECRET_ACCESS_KEY", secret),
                _secret_env("AWS_SESSION_TOKEN", secret, optional=True)]
    endpoint = s3_endpoint(spec, settings)
    if endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": endpoint})
    env.append({"name": "AWS_DEFAULT_REGION", "value": spec.storage.region})
    env += [{"name": k, "value": v} for k, v in JOB_ENV.items()]
    return env


def _resources(spec: FineTuneTaskSpec) -> dict[str, Any]:
    res = spec.resources
    requests = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, str] = {"memory": res.memory}
    if res.gpu > 0:
        # Extended resources: the request defaults to the limit; only the limit is needed.
        limits[res.gpu_resource_name] = str(res.gpu)
    return {"requests": requests, "limits": limits}


def _pod_spec(spec: FineTuneTaskSpec, settings: OperatorSettings, layout: RunLayout,
              configmap: str) -> dict[str, Any]:
    res = spec.resources
    container = {
        "name": CONTAINER,
        "image": spec.trainer_image or settings.trainer_image,
        "imagePullPolicy": settings.trainer_image_pull_policy,
        "command": ["python", "-m", "finetune_trainer"],
        "args": ["--run-uri", layout.prefix,
                 "--config", f"{CONFIG_DIR}/{CONFIG_KEY}",
                 "--profile", profile_for(spec, settings),
                 "--termination-log", TERMINATION_LOG,
                 "--work-dir", WORK_DIR],
        "env": _env(spec, settings),
        "resources": _resources(spec),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "work", "mountPath": WORK_DIR},
        ],
        # Our JSON summary when the trainer wrote one; the log tail when it crashed (OOM, bug).
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # required by podFailurePolicy; retries are the Job's
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
                            "fsGroup": RUN_AS, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": configmap}},
            # PyTorch data loaders share tensors through /dev/shm; the runtime's 64 MiB is too small.
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            {"name": "work", "emptyDir": {}},
        ],
    }
    if settings.service_account:
        pod["serviceAccountName"] = settings.service_account
    if res.node_selector:
        pod["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod["tolerations"] = [dict(t) for t in res.tolerations]
    if res.priority_class_name:
        pod["priorityClassName"] = res.priority_class_name
    return pod


def build_job(task: TaskRef, run_id: str, spec: FineTuneTaskSpec, layout: RunLayout,
              settings: OperatorSettings) -> dict[str, Any]:
    """batch/v1 Job `<task>-<run>` that runs the trainer once for this run."""
    nodes = spec.resources.world_shape()[0]
    name = child_name(task.name, run_id, nodes)
    job_labels = labels(task, run_id)
    if spec.resources.queue_name:
        job_labels[LABEL_KUEUE_QUEUE] = spec.resources.queue_name
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": task.namespace,
            "labels": job_labels,
            "ownerReferences": [task.owner_reference()],
        },
        "spec": {
            "backoffLimit": spec.resources.backoff_limit,
            "activeDeadlineSeconds": spec.resources.active_deadline_seconds,
            "ttlSecondsAfterFinished": settings.job_ttl_seconds,
            # Created suspended when asked (and Kueue admits a Job by unsuspending it).
            "suspend": bool(spec.suspend),
            "podFailurePolicy": {"rules": [
                # Bad input (exit 2): retrying cannot help, fail the Job now.
                {"action": "FailJob",
                 "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                 "values": [EXIT_BAD_INPUT]}},
                # Preemption, node drain, eviction: not the trainer's fault, not counted.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]},
            "template": {
                "metadata": {"labels": labels(task, run_id)},
                "spec": _pod_spec(spec, settings, layout, name),
            },
        },
    }
    world = multinode.world_for(name, task.namespace, run_id, *spec.resources.world_shape())
    return job if world.size == 1 else multinode.with_world(job, world, CONTAINER)
