"""The FineTuneTask lifecycle as plain functions: what the Kopf handlers call, nothing more.

One run per spec (`spec.run_id()`); each step checks its own condition first and creates its
child if absent (409 = already done), so a re-delivered event, a retried step or an operator
restart resumes where it stopped and never creates a second Job:

    prepare (DataReady) -> render (ConfigRendered) -> launch (JobCreated) -> follow (Trained,
    Evaluated, Ready)

A spec change starts a new run and deletes the superseded run's Job and ConfigMap (see
docs/operator.md for why). Failures a retry cannot fix end the run as Failed with a condition,
an Event and `kopf.PermanentError`; outages raise `kopf.TemporaryError` with a delay. Every
status write goes through `Writer`, which patches only what changed and scrubs secret values.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import kopf

from . import API_VERSION, KIND, metrics
from .contract import Manifest, Metrics, RunLayout, TerminationMessage, one_line
from .kube import ApiError, Kube
from .resources import TaskRef, build_configmap, build_job, child_name, profile_for, s3_endpoint
from .settings import OperatorSettings
from .spec import (AdapterStatus, DataStatus, DroppedCounts, FineTuneTaskSpec, FineTuneTaskStatus,
                   JobStatus, SpecError, parse_spec)
from .status import (FINAL_PHASES, evaluation, is_true, load, metrics_status, new_run, now_iso,
                     run_started_at, set_condition, status_patch, with_phase)
from .storage import Credentials, Storage, StorageError

METRICS_MAX_BYTES = 8 * 1024 * 1024
RETRY_SOON = 15.0     # seconds: S3 or API outage
RETRY_LATER = 60.0    # seconds: waiting on something a person must create or fix


@dataclass
class Context:
    """Process-wide state shared by all handlers (built once at startup)."""

    settings: OperatorSettings
    kube: Kube
    prep_slots: threading.BoundedSemaphore = field(init=False)
    _locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)
    _storages: OrderedDict[tuple[Any, ...], Storage] = field(default_factory=OrderedDict)
    _active: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prep_slots = threading.BoundedSemaphore(self.settings.max_parallel_preparations)

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

    def commit(self, new: FineTuneTaskStatus, event: tuple[str, str, str] | None = None) -> None:
        new = new.model_copy(update={"message": self.scrub(new.message or "") or None,
                                     "conditions": [c.model_copy(update={"message": self.scrub(
                                         c.message)}) for c in new.conditions]})
        patch = status_patch(self._stored, new)
        if patch:
            ref = self.task.ref
            self.ctx.kube.patch_task_status(ref.namespace, ref.name, patch)
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

    def cond(self, type_: Any, value: Any, reason: str, message: str) -> FineTuneTaskStatus:
        return set_condition(self.status, type_, value, reason, self.scrub(message),
                             generation=self.task.generation, now=now_iso())

    # ---- final phases ----------------------------------------------------------------------

    def finish(self, phase: str, cond: tuple[Any, str, str], message: str, *,
               ready: bool = False, ready_reason: str | None = None, **fields: Any) -> None:
        """End the run: the step's condition, Ready, phase, an Event and the run metrics."""
        type_, value, reason = cond
        self.status = self.cond(type_, value, reason, message)
        self.status = self.cond("Ready", "True" if ready else "False", ready_reason or reason,
                                message)
        new = with_phase(self.status, phase, message, generation=self.task.generation, **fields)
        warn = phase == "Failed" or (phase == "Succeeded" and not ready)
        self.commit(new, ("Warning" if warn else "Normal", ready_reason or reason, message))
        ref, result = self.task.ref, {"Succeeded": "succeeded", "Failed": "failed"}.get(
            phase, "skipped")
        metrics.RUNS_FINISHED.labels(ref.namespace, ref.name, result, ready_reason or reason).inc()
        started = run_started_at(self.status)
        if started:
            t0 = datetime.datetime.strptime(started, "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=datetime.timezone.utc)
            metrics.RUN_DURATION.labels(ref.namespace, result).observe(
                max(0.0, time.time() - t0.timestamp()))
        self.ctx.set_active(ref, False)
        for gauge in (metrics.TASK_TRAINING_STARTED, metrics.TASK_TRAINING_DEADLINE):
            try:
                gauge.remove(ref.namespace, ref.name)
            except KeyError:
                pass

    def fail(self, cond_type: Any, reason: str, message: str) -> None:
        """Failed for good: condition + Event, then PermanentError (Kopf will not retry)."""
        self.finish("Failed", (cond_type, "False", reason), message)
        raise kopf.PermanentError(self.scrub(f"{reason}: {message}"))


# ---- the spec handler ----------------------------------------------------------------------


def reconcile(task: Task, ctx: Context) -> None:
    """Create/update/resume: drive the current run as far as it can go without waiting."""
    with ctx.lock(task.ref):
        w = Writer(task, ctx)
        spec = _parse(w)
        run_id = spec.run_id()
        if w.status.run_id != run_id:
            _start_run(w, run_id)
        elif w.status.phase in FINAL_PHASES:
            return  # this spec's run already ended; only a spec change starts another
        ctx.set_active(task.ref, True)
        layout = RunLayout(root=spec.output.uri, namespace=task.ref.namespace,
                           task=task.ref.name, run_id=run_id)
        storage = _storage(w, spec)
        manifest = _prepare(w, spec, layout, storage)
        if spec.infrequent:
            w.finish("Skipped", ("ConfigRendered", "False", "Infrequent"),
                     "spec.infrequent is set: data prepared and checked, no GPU spent")
            return
        _render(w, spec, layout, storage, manifest)
        if _launch(w, spec, layout):
            _follow(w, spec)  # resumed with a Job already there: it may have finished meanwhile


def _parse(w: Writer) -> FineTuneTaskSpec:
    try:
        return parse_spec(w.task.spec)
    except SpecError as err:
        w.fail("DataReady", "InvalidSpec", f"{err}; fix the spec and re-apply")
        raise  # unreachable: fail() raises


def _start_run(w: Writer, run_id: str) -> None:
    """A new spec: delete the superseded run's children, then reset the status."""
    old = w.status.job
    if old is not None and old.name != child_name(w.task.ref.name, run_id):
        _api(lambda: w.ctx.kube.delete_job(w.task.ref.namespace, old.name))
        _api(lambda: w.ctx.kube.delete_configmap(w.task.ref.namespace, old.config_map))
        w.event("Normal", "Superseded", f"spec changed: deleted Job {old.name} of run "
                                        f"{w.status.run_id}")
    # Not committed here: the first step's write carries it (one status patch fewer per run).
    w.status = new_run(run_id, w.task.generation, now_iso())
    metrics.RUNS_STARTED.labels(w.task.ref.namespace, w.task.ref.name).inc()


def _api(call: Any) -> Any:
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


def _storage(w: Writer, spec: FineTuneTaskSpec) -> Storage:
    secret = spec.storage.credentials_secret
    creds = Credentials()
    if secret:
        ns = w.task.ref.namespace
        data = _api(lambda: w.ctx.kube.read_secret_data(ns, secret))
        if data is None:
            w.commit(with_phase(w.cond("DataReady", "False", "SecretNotFound",
                                       f"waiting for Secret {ns}/{secret}"), "Pending",
                                f"waiting for Secret {ns}/{secret} (spec.storage.credentialsSecret)",
                                generation=w.task.generation))
            raise kopf.TemporaryError(f"Secret {ns}/{secret} not found", delay=RETRY_LATER)
        try:
            creds = Credentials.from_secret_data(data, secret_name=secret)
        except (StorageError, ValueError) as err:
            raise kopf.TemporaryError(f"{one_line(str(err))}: fix the Secret",
                                      delay=RETRY_LATER) from None
    # The access key id is an identifier, not a secret (and may be a common word): scrub and
    # guard the secret key and session token.
    w.secrets = [s.get_secret_value() for s in (creds.secret_access_key, creds.session_token) if s]
    return w.ctx.storage(s3_endpoint(spec, w.ctx.settings), spec.storage.region, creds)


def _prepare(w: Writer, spec: FineTuneTaskSpec, layout: RunLayout, storage: Storage) -> Manifest:
    from .prepare import PrepareError, prepare_run

    if is_true(w.status, "DataReady") and w.status.data is not None:
        try:  # prepared earlier in this run: one read instead of a re-preparation
            return Manifest.model_validate_json(storage.read_text(layout.manifest, 1 << 20))
        except (StorageError, ValueError):
            pass
    msg = f"run {layout.run_id}: preparing data from {spec.dataset.uri}"
    w.commit(with_phase(w.cond("DataReady", "Unknown", "Preparing", f"reading {spec.dataset.uri}"),
                        "Preparing", msg, generation=w.task.generation),
             ("Normal", "RunStarted", msg))
    start = time.monotonic()
    try:
        with w.ctx.prep_slots:
            manifest = prepare_run(spec, layout, storage)
    except PrepareError as err:
        if err.reason == "TooFewSamples":
            w.finish("Skipped", ("DataReady", "False", "TooFewSamples"), str(err))
            raise _Stop() from None
        if err.transient:
            raise kopf.TemporaryError(w.scrub(str(err)), delay=RETRY_SOON) from None
        w.fail("DataReady", err.reason, str(err))
    except StorageError as err:
        if err.transient:
            raise kopf.TemporaryError(w.scrub(str(err)), delay=RETRY_SOON) from None
        w.fail("DataReady", "Storage", str(err))
    finally:
        metrics.DATA_PREP_DURATION.labels(w.task.ref.namespace).observe(time.monotonic() - start)
    d = manifest.dropped
    data = DataStatus(train_samples=manifest.train_samples,
                      validation_samples=manifest.validation_samples,
                      dropped=DroppedCounts(empty=d.empty, duplicate=d.duplicate,
                                            malformed=d.malformed, too_long=d.too_long,
                                            leaked=d.leaked),
                      digest=manifest.digest, manifest_uri=layout.manifest)
    msg = (f"{manifest.train_samples} train / {manifest.validation_samples} validation samples, "
           f"{d.total()} dropped")
    w.commit(w.cond("DataReady", "True", "Prepared", msg).model_copy(update={"data": data}),
             ("Normal", "DataReady", msg))
    return manifest


class _Stop(Exception):
    """The run ended inside a step (e.g. Skipped); the caller stops without error."""


def _render(w: Writer, spec: FineTuneTaskSpec, layout: RunLayout, storage: Storage,
            manifest: Manifest) -> None:
    import yaml

    from .render import render_axolotl_config

    if is_true(w.status, "ConfigRendered"):
        return
    try:
        config = render_axolotl_config(spec, manifest, layout, profile=profile_for(spec, w.ctx.settings))
    except (ValueError, TypeError, KeyError) as err:
        w.fail("ConfigRendered", "InvalidConfig", f"{err}; check spec.training")
    body = build_configmap(w.task.ref, layout.run_id, config)
    text = body["data"]["axolotl.yaml"]
    if any(s and s in text for s in w.secrets):
        w.fail("ConfigRendered", "SecretInConfig",
               "a credential value appears in the rendered config (spec.training.axolotl?): "
               "remove it; credentials reach the trainer only through the Secret")
    try:
        storage.write_text(layout.config, text, "application/yaml")
    except StorageError as err:
        raise kopf.TemporaryError(w.scrub(str(err)), delay=RETRY_SOON) from None
    _api(lambda: w.ctx.kube.create_configmap(body))
    # Committed with JobCreated a moment later (one status patch and one Event fewer); if the
    # launch fails first, the retry re-renders and finds the ConfigMap there (409).
    w.status = w.cond("ConfigRendered", "True", "Rendered",
                      f"ConfigMap {body['metadata']['name']} holds the Axolotl config")


def _launch(w: Writer, spec: FineTuneTaskSpec, layout: RunLayout) -> bool:
    """Create the Job unless suspended; True when it already existed (so follow it now)."""
    ref, name = w.task.ref, child_name(w.task.ref.name, layout.run_id)
    if is_true(w.status, "JobCreated"):
        apply_suspend(w, spec)
        return True
    if spec.suspend:
        msg = "spec.suspend is true: no Job is created until it is false"
        w.commit(with_phase(w.cond("JobCreated", "False", "Suspended", msg), "Suspended", msg,
                            generation=w.task.generation), ("Normal", "Suspended", msg))
        return False
    body = build_job(ref, layout.run_id, spec, layout, w.ctx.settings)
    _job, created = _api(lambda: w.ctx.kube.create_job(body))
    msg = f"ConfigMap and Job {name} {'created' if created else 'exist'}"
    new = with_phase(w.cond("JobCreated", "True", "Created", msg), "Training", msg,
                     generation=w.task.generation, job=JobStatus(name=name, config_map=name))
    w.commit(new, ("Normal", "JobCreated", msg))
    metrics.TASK_TRAINING_STARTED.labels(ref.namespace, ref.name).set(time.time())
    metrics.TASK_TRAINING_DEADLINE.labels(ref.namespace, ref.name).set(
        spec.resources.active_deadline_seconds)
    return not created


def apply_suspend(w: Writer, spec: FineTuneTaskSpec) -> None:
    """On a flip of `spec.suspend`, suspend or resume the Job and move the phase.

    Acts on transitions only (phase differs from what spec.suspend asks): a Job that Kueue
    holds suspended while it waits for quota is left alone.
    """
    job, want = w.status.job, "Suspended" if spec.suspend else "Training"
    if job is None or w.status.phase not in ("Training", "Suspended") or w.status.phase == want:
        return
    ns = w.task.ref.namespace
    if _api(lambda: w.ctx.kube.get_job(ns, job.name)) is None:
        return  # gone: follow() reports it
    _api(lambda: w.ctx.kube.set_job_suspended(ns, job.name, spec.suspend))
    msg = f"Job {job.name} {'suspended' if spec.suspend else 'resumed'}"
    w.commit(with_phase(w.status, want, msg, generation=w.task.generation), ("Normal", want, msg))


def suspend_changed(task: Task, ctx: Context) -> None:
    """The spec.suspend handler: suspend/resume the Job, or launch it when unsuspended."""
    with ctx.lock(task.ref):
        fresh = _api(lambda: ctx.kube.get_task(task.ref.namespace, task.ref.name))
        if fresh is None:
            return
        task = Task.from_body(fresh)
        w = Writer(task, ctx)
        try:
            spec = parse_spec(task.spec)
        except SpecError:
            return  # the spec handler reports it
        if w.status.run_id != spec.run_id():
            return  # a new run: the spec handler owns it
        if is_true(w.status, "JobCreated") or w.status.phase != "Suspended":
            apply_suspend(w, spec)
            return
    if not spec.suspend:  # suspended before any Job existed: launch it now
        apply_now(task, ctx)


# ---- following the Job ---------------------------------------------------------------------


def follow(task: Task, ctx: Context) -> None:
    """Timer / Job event: read the Job and write what it says into the task's status."""
    with ctx.lock(task.ref):
        # The body a timer or Job event carries may predate the spec handler's last write.
        fresh = _api(lambda: ctx.kube.get_task(task.ref.namespace, task.ref.name))
        if fresh is None:
            return
        w = Writer(Task.from_body(fresh), ctx)
        try:
            spec = parse_spec(w.task.spec)
        except SpecError:
            return  # the spec handler reports it
        try:
            _follow(w, spec)
        except _Stop:
            pass


def _follow(w: Writer, spec: FineTuneTaskSpec) -> None:
    st, ref = w.status, w.task.ref
    if st.phase not in ("Training", "Suspended") or st.job is None or spec.run_id() != st.run_id:
        return  # nothing running, or the spec changed and the spec handler starts the new run
    layout = RunLayout(root=spec.output.uri, namespace=ref.namespace, task=ref.name,
                       run_id=st.run_id)
    job = _api(lambda: w.ctx.kube.get_job(ref.namespace, st.job.name))
    conds = {c.get("type"): c for c in ((job or {}).get("status") or {}).get("conditions") or []
             if c.get("status") == "True"}
    if job is None or "Complete" in conds:
        _succeed(w, spec, layout, job)
    elif "Failed" in conds:
        _job_failed(w, conds["Failed"])
    else:
        _running(w, job)


def _succeed(w: Writer, spec: FineTuneTaskSpec, layout: RunLayout,
             job: dict[str, Any] | None) -> None:
    storage = _storage(w, spec)
    try:
        m = Metrics.model_validate_json(storage.read_text(layout.metrics, METRICS_MAX_BYTES))
    except StorageError as err:
        if err.transient:
            raise kopf.TemporaryError(w.scrub(str(err)), delay=RETRY_SOON) from None
        if job is None:
            w.fail("Trained", "JobLost", f"Job {w.status.job.name} is gone and "
                   f"{layout.metrics} is missing: change the spec (or recreate the task) to rerun")
        w.fail("Trained", "MetricsMissing", f"the Job completed but {layout.metrics} is "
               f"unreadable ({err}): check the trainer's logs")
    except ValueError as err:
        w.fail("Evaluated", "BadMetrics", f"{layout.metrics} does not match the contract: "
               f"{one_line(str(err), 200)}")
    reason, message, ready = evaluation(m)
    w.status = w.cond("Trained", "True", "Completed",
                      f"best step {m.best_step}, train loss {m.train_loss}"
                      + (", stopped early" if m.stopped_early else ""))
    w.status = w.cond("Evaluated", "True", reason, message)
    job_status = (w.status.job.model_copy(update={
        "start_time": ((job or {}).get("status") or {}).get("startTime"),
        "completion_time": ((job or {}).get("status") or {}).get("completionTime")})
        if w.status.job else None)
    w.finish("Succeeded", ("Evaluated", "True", reason), message, ready=ready,
             ready_reason=reason, metrics=metrics_status(m), job=job_status,
             adapter=AdapterStatus(uri=m.adapter_uri, digest=m.adapter_digest))
    ref = w.task.ref
    metrics.TASK_EVAL_LOSS.labels(ref.namespace, ref.name).set(m.eval_loss)
    metrics.TASK_BASE_EVAL_LOSS.labels(ref.namespace, ref.name).set(m.base_eval_loss)
    metrics.TASK_IMPROVEMENT.labels(ref.namespace, ref.name).set(m.improvement)
    metrics.TASK_LAST_SUCCESS.labels(ref.namespace, ref.name).set(time.time())


def _job_failed(w: Writer, cond: dict[str, Any]) -> None:
    """Reason from the trainer's termination message when it wrote one, else the Job's."""
    ns, name = w.task.ref.namespace, w.status.job.name  # type: ignore[union-attr]
    raw = _api(lambda: w.ctx.kube.termination_message(ns, name))
    term = TerminationMessage.decode(raw)
    if term is not None:
        reason, message = term.reason, term.message
    else:
        reason = cond.get("reason") or "JobFailed"
        message = f"Job {name} failed: {cond.get('message') or reason}"
        if raw:  # FallbackToLogsOnError: the log tail of a crash (OOM, bug)
            message += f"; last output: {one_line(raw, 200)}"
    w.fail("Trained", reason, message)


def _running(w: Writer, job: dict[str, Any]) -> None:
    js = job.get("status") or {}
    start = js.get("startTime")
    new = w.status
    if new.job is not None and start and new.job.start_time != start:
        new = new.model_copy(update={"job": new.job.model_copy(update={"start_time": start})})
    if js.get("active"):
        w.status = new
        new = w.cond("Trained", "Unknown", "Running", f"trainer pod running (Job {new.job.name})")
    w.commit(new)


def apply_now(task: Task, ctx: Context) -> None:
    """reconcile(), with `_Stop` (run ended inside a step) as a normal return."""
    try:
        reconcile(task, ctx)
    except _Stop:
        pass
