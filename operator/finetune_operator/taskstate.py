"""Per-task state shared by the reconcile steps and the Job follower: the process-wide Context
(kept in the operator's kopf.Memo), the Task a handler hands in, and the Writer that applies
transitions.py to the task's status (patches only what changed, scrubs secret values, posts
Events, ends runs with their metrics).
"""

from __future__ import annotations

import datetime
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import kopf

from . import API_VERSION, KIND, metrics, transitions
from finetune_contract import one_line
from .kube import ApiError, Kube
from .progress import Throttle
from .resources import TaskRef, s3_endpoint
from .settings import OperatorSettings
from .spec import ConditionType, FineTuneTaskSpec, FineTuneTaskStatus
from .status import load, now_iso, run_started_at, status_patch
from .transitions import At, Ending, Event
from finetune_contract.storage import Credentials, Storage, StorageError

METRICS_MAX_BYTES = 8 * 1024 * 1024
RETRY_SOON = 15.0     # seconds: S3 or API outage
RETRY_LATER = 60.0    # seconds: waiting on something a person must create or fix


@dataclass
class Context:
    """Process-wide state shared by all handlers (built once at startup)."""

    settings: OperatorSettings
    kube: Kube
    clock: Callable[[], float] = time.monotonic  # injected by tests
    prep_slots: threading.BoundedSemaphore = field(init=False)
    progress: Throttle = field(init=False)
    _locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)
    _storages: OrderedDict[tuple[Any, ...], Storage] = field(default_factory=OrderedDict)
    _active: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prep_slots = threading.BoundedSemaphore(self.settings.max_parallel_preparations)
        self.progress = Throttle(self.settings.progress_interval, self.clock)

    def lock(self, task: TaskRef) -> threading.Lock:
        """One lock per task: the spec handler, the timer and Job events never interleave."""
        with self._locks_guard:
            return self._locks.setdefault((task.namespace, task.name), threading.Lock())

    def storage(self, endpoint: str, region: str, creds: Credentials) -> Storage:
        """Reuse boto3 clients per (endpoint, credentials): building one costs ~50 ms."""
        key = (endpoint, region, tuple(creds.secret_values()))
        with self._locks_guard:
            if key in self._storages:
                self._storages.move_to_end(key)
                return self._storages[key]
            store = self._storages[key] = Storage(endpoint, creds, region)
            while len(self._storages) > 64:
                self._storages.popitem(last=False)
            return store

    def set_active(self, task: TaskRef, active: bool) -> None:
        names = self._active.setdefault(task.namespace, set())
        (names.add if active else names.discard)(task.name)
        metrics.ACTIVE_RUNS.labels(task.namespace).set(len(names))


@dataclass
class Task:
    """What a handler knows about the FineTuneTask when it calls in."""

    ref: TaskRef
    generation: int | None
    spec: dict[str, Any]
    status: dict[str, Any]

    @classmethod
    def from_body(cls, body: Any) -> Task:
        meta = body.get("metadata") or {}
        return cls(TaskRef(meta["name"], meta.get("namespace") or "default", meta.get("uid", "")),
                   meta.get("generation"), dict(body.get("spec") or {}),
                   dict(body.get("status") or {}))


class Writer:
    """Holds the task's status; commits a merge patch only when it changed; posts Events."""

    def __init__(self, task: Task, ctx: Context) -> None:
        self.task, self.ctx = task, ctx
        self.status: FineTuneTaskStatus = load(task.status)
        self._stored: dict[str, Any] = dict(task.status)
        self.secrets: list[str] = []

    def scrub(self, text: str) -> str:
        for value in self.secrets:
            if value:
                text = text.replace(value, "***")
        return one_line(text)

    def commit(self, new: FineTuneTaskStatus, event: Event | None = None) -> None:
        new = new.model_copy(update={"message": self.scrub(new.message or "") or None,
                                     "conditions": [c.model_copy(update={"message": self.scrub(
                                         c.message)}) for c in new.conditions]})
        patch = status_patch(self._stored, new)
        if patch:
            ref = self.task.ref
            api(lambda: self.ctx.kube.patch_task_status(ref.namespace, ref.name, patch))
            self._stored.update({k: v for k, v in patch.items() if v is not None})
            for k in [k for k, v in patch.items() if v is None]:
                self._stored.pop(k, None)
        self.status = new
        if event:
            self.event(*event)

    def event(self, type_: str, reason: str, message: str) -> None:
        ref = self.task.ref
        involved = {"apiVersion": API_VERSION, "kind": KIND, "name": ref.name,
                    "namespace": ref.namespace, "uid": ref.uid}
        self.ctx.kube.post_event(involved, type_, reason, self.scrub(message))

    def at(self) -> At:
        """Now, for this task's generation: the stamp every transition of this write carries."""
        return At(self.task.generation, now_iso())

    # ---- the run's end -----------------------------------------------------------------------

    def end(self, ending: Ending) -> None:
        """Commit a run's end (status and Event) and record it in the run metrics."""
        self.commit(ending.status, ending.event)
        ref = self.task.ref
        metrics.RUNS_FINISHED.labels(ref.namespace, ref.name, ending.result, ending.reason).inc()
        started = run_started_at(self.status)
        if started:
            t0 = datetime.datetime.strptime(started, "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=datetime.timezone.utc)
            metrics.RUN_DURATION.labels(ref.namespace, ending.result).observe(
                max(0.0, time.time() - t0.timestamp()))
        self.ctx.set_active(ref, False)
        self.ctx.progress.forget((ref.namespace, ref.name))
        for gauge in (metrics.TASK_TRAINING_STARTED, metrics.TASK_TRAINING_DEADLINE):
            try:
                gauge.remove(ref.namespace, ref.name)
            except KeyError:
                pass

    def stop(self, ending: Ending) -> NoReturn:
        """End the run inside a step: PermanentError when it failed (Kopf will not retry),
        else `Stop` (the caller returns normally)."""
        self.end(ending)
        if ending.phase == "Failed":
            raise kopf.PermanentError(self.scrub(f"{ending.reason}: {ending.event.message}"))
        raise Stop()

    def fail(self, cond_type: ConditionType, reason: str, message: str) -> NoReturn:
        """Failed for good: condition + Warning Event, then PermanentError."""
        self.stop(transitions.fail(self.status, cond_type, reason, message, self.at()))


def api(call: Any) -> Any:
    """Run one API call; outages and RBAC gaps become TemporaryError with advice."""
    try:
        return call()
    except ApiError as err:
        if err.transient:
            raise kopf.TemporaryError(f"{err} (will retry)", delay=RETRY_SOON) from None
        if err.status in (401, 403):
            raise kopf.TemporaryError(f"{err}: check the operator's RBAC (docs/operator.md)",
                                      delay=RETRY_LATER * 5) from None
        raise


def storage_for(w: Writer, spec: FineTuneTaskSpec) -> Storage:
    """The task's S3 client, from the Secret it names; a missing Secret waits, never fails."""
    secret = spec.storage.credentials_secret
    creds = Credentials()
    if secret:
        ns = w.task.ref.namespace
        data = api(lambda: w.ctx.kube.read_secret_data(ns, secret))
        if data is None:
            w.commit(*transitions.waiting_for_secret(w.status, ns, secret, w.at()))
            raise kopf.TemporaryError(f"Secret {ns}/{secret} not found", delay=RETRY_LATER)
        try:
            creds = Credentials.from_secret_data(data, secret_name=secret)
        except (StorageError, ValueError) as err:
            raise kopf.TemporaryError(f"{one_line(str(err))}: fix the Secret",
                                      delay=RETRY_LATER) from None
    return _storage(w, spec, creds)


def storage_quietly(w: Writer, spec: FineTuneTaskSpec) -> Storage | None:
    """storage_for without side effects, for best-effort reads (progress.json): None when the
    Secret is missing, unreadable or the API fails; nothing is written to the status."""
    secret = spec.storage.credentials_secret
    creds = Credentials()
    if secret:
        ns = w.task.ref.namespace
        try:
            data = w.ctx.kube.read_secret_data(ns, secret)
            if data is None:
                return None
            creds = Credentials.from_secret_data(data, secret_name=secret)
        except (ApiError, StorageError, ValueError):
            return None
    return _storage(w, spec, creds)


def _storage(w: Writer, spec: FineTuneTaskSpec, creds: Credentials) -> Storage:
    # The access key id is an identifier, not a secret (and may be a common word): scrub and
    # guard the secret key and session token.
    w.secrets = [s.get_secret_value() for s in (creds.secret_access_key, creds.session_token) if s]
    return w.ctx.storage(s3_endpoint(spec, w.ctx.settings), spec.storage.region, creds)


def retry_later(w: Writer, cond_type: ConditionType, message: str) -> NoReturn:
    """An outage: say so in the condition (status stays truthful), then back off and retry."""
    msg = f"{message}; retrying in {RETRY_SOON:.0f}s"
    w.commit(*transitions.retrying(w.status, cond_type, msg, w.at()))
    raise kopf.TemporaryError(w.scrub(msg), delay=RETRY_SOON)


class Stop(Exception):
    """The run ended inside a step (e.g. Skipped); the caller stops without error."""
