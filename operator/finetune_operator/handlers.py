"""Kopf registration only: each handler is one call into reconcile.py.

Every handler is a sync `def`: Kopf runs those in worker threads, so boto3, data preparation
and the sync kubernetes client never block the event loop. Deletion needs no finalizer: the
ConfigMap and the Job carry owner references and the garbage collector removes them; artifacts
in S3 stay; the task's metric series go when its DELETED watch event arrives. (Kopf keeps its own
finalizer on a task while its timer follows the task's Job, and lifts it when the task is deleted.)
The operator's state is the one reconcile.Context that startup puts in Kopf's memo (Kopf docs
memos.rst), never a module-level dict: every handler takes it from its `memo`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Callable

import kopf

from . import GROUP, PLURAL, VERSION, metrics
from .kube import Kube, load_config
from .reconcile import Context, Task, apply_now, follow, suspend_changed
from .resources import DOMAIN, LABEL_MANAGED_BY, MANAGED_BY, TaskRef
from .settings import OperatorSettings
from .taskset_reconcile import LABEL_SET, SetContext, resync, task_changed
from .taskset_spec import SET_PLURAL

SETTINGS = OperatorSettings()  # validated at import: a bad FINETUNE_* variable fails fast
FOLLOWED_PHASES = ("Training", "Suspended")


def _counted(fn: Callable[..., None]) -> Callable[..., None]:
    """Count unexpected errors and outages (not bad user input) for the alert rules."""

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> None:
        try:
            fn(**kwargs)
        except kopf.PermanentError:
            raise
        except Exception as err:
            metrics.OPERATOR_ERRORS.labels(fn.__name__, type(err).__name__).inc()
            raise

    return wrapper


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """The one place that configures Kopf, the API client and the metrics server.

    The operator's state (the Context: API client, per-task locks, S3 clients) goes into the
    operator's memo; Kopf hands every handler a shallow copy of it, so all share one Context.
    """
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=DOMAIN)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=DOMAIN, key="last-handled-configuration")
    settings.persistence.finalizer = f"{DOMAIN}/finalizer"
    # Without timeouts a watch can go silent forever (kopf #585, #232).
    settings.watching.server_timeout = SETTINGS.watch_server_timeout
    settings.watching.client_timeout = SETTINGS.watch_client_timeout
    settings.watching.connect_timeout = 30
    # Our own Events mark each transition; Kopf posts only its warnings and errors.
    settings.posting.level = logging.WARNING
    # Sync handlers run in this pool: mostly waiting on the API and S3, so more than the cores.
    settings.execution.max_workers = max(16, 4 * SETTINGS.max_parallel_preparations)
    settings.networking.request_timeout = 60
    # Namespace-scoped installs get Roles only: Kopf's namespace/CRD scanning would be refused
    # (403) and retried through its backoffs for about a minute before serving the listed names.
    settings.scanning.disabled = bool(SETTINGS.namespaces)
    load_config()
    memo.ctx = Context(SETTINGS, Kube())
    memo.sets = SetContext(memo.ctx)
    if SETTINGS.metrics_port and not memo.get("metrics_served"):  # a retried startup: once
        metrics.serve(SETTINGS.metrics_port)
        memo.metrics_served = True


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@_counted
def apply(body: Any, memo: kopf.Memo, **_: Any) -> None:
    apply_now(Task.from_body(body), memo.ctx)


@kopf.on.field(GROUP, VERSION, PLURAL, field="spec.suspend",
               when=lambda old, new, **_: bool(old) != bool(new))
@_counted
def suspend(body: Any, memo: kopf.Memo, **_: Any) -> None:
    suspend_changed(Task.from_body(body), memo.ctx)


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.poll_interval,
            initial_delay=SETTINGS.poll_interval,  # a Job just created has nothing to say yet
            when=lambda status, **_: status.get("phase") in FOLLOWED_PHASES)
@_counted
def follow_job(body: Any, memo: kopf.Memo, **_: Any) -> None:
    follow(Task.from_body(body), memo.ctx)


@kopf.on.event(GROUP, VERSION, PLURAL, when=lambda type, **_: type == "DELETED")
def task_deleted(name: str, namespace: str, **_: Any) -> None:
    """The task is gone: drop its series so that its alerts resolve (no API call, no finalizer)."""
    metrics.forget_task(namespace, name)


def _finished(body: Any, **_: Any) -> bool:
    conds = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in conds)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY}, when=_finished)
@_counted
def job_finished(body: Any, memo: kopf.Memo, **_: Any) -> None:
    """A Job finished: report it now rather than at the next timer tick."""
    meta = body.get("metadata") or {}
    for owner in meta.get("ownerReferences") or []:
        if owner.get("kind") == "FineTuneTask":
            ref = TaskRef(owner["name"], meta.get("namespace") or "default", owner.get("uid", ""))
            follow(Task(ref, None, {}, {}), memo.ctx)


# ---- FineTuneTaskSet (taskset_reconcile.py, docs/tasksets.md) ------------------------------


@kopf.on.resume(GROUP, VERSION, SET_PLURAL)
@kopf.on.create(GROUP, VERSION, SET_PLURAL)
@kopf.on.update(GROUP, VERSION, SET_PLURAL, field="spec")
@_counted
def set_apply(body: Any, memo: kopf.Memo, **_: Any) -> None:
    resync(body, memo.sets)


@kopf.timer(GROUP, VERSION, SET_PLURAL, interval=SETTINGS.taskset_resync_interval,
            initial_delay=SETTINGS.taskset_resync_interval)
@_counted
def set_resync(body: Any, memo: kopf.Memo, **_: Any) -> None:
    """New folders under the prefix become tasks, removed ones go (not on an empty listing)."""
    resync(body, memo.sets)


@kopf.on.event(GROUP, VERSION, PLURAL, labels={LABEL_SET: kopf.PRESENT})
@_counted
def set_task_changed(body: Any, memo: kopf.Memo, **_: Any) -> None:
    """A generated task changed: its set's counts follow now, not at the next resync."""
    task_changed(body, memo.sets)


def run_operator() -> int:
    """`finetune operator`: run Kopf in this process until SIGTERM/SIGINT."""
    kopf.configure(log_format=kopf.LogFormat.PLAIN)
    for noisy in ("botocore", "boto3", "urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    namespaces = SETTINGS.namespaces
    liveness = f"http://0.0.0.0:{SETTINGS.health_port}/healthz" if SETTINGS.health_port else None
    # standalone: one replica (Recreate), no peering objects to create or RBAC to grant.
    asyncio.run(kopf.operator(clusterwide=not namespaces, namespaces=namespaces,
                              standalone=True, liveness_endpoint=liveness))
    return 0
