"""The FineTuneTask lifecycle as plain functions: what the Kopf handlers call, nothing more.

One run per spec (`spec.run_id()`); each step checks its own condition first and creates its
child if absent (409 = already done), so a re-delivered event, a retried step or an operator
restart resumes where it stopped and never creates a second Job:

    prepare (DataReady) -> render (ConfigRendered) -> launch (JobCreated) -> follow (Trained,
    Evaluated, Ready)

A spec change starts a new run and deletes the superseded run's Job and ConfigMap (see
docs/operator.md for why); following the Job is follow.py, the shared state
taskstate.py. Failures a retry cannot fix end the run as Failed with a condition,
an Event and `kopf.PermanentError`; outages raise `kopf.TemporaryError` with a delay. Every
status change is a function of transitions.py (shared with the local runner), every reason a
reasons.py constant, and every write goes through `Writer`, which patches only what changed and
scrubs secret values.
"""

from __future__ import annotations

import time

import kopf

from . import metrics, policy, transitions
from . import reasons as R
from finetune_contract import Manifest, RunLayout
from .follow import follow, follow_run
from .multinode import build_headless_service
from .resources import build_configmap, build_job, child_name, profile_for
from .spec import FineTuneTaskSpec, JobStatus, SpecError, parse_spec
from .status import FINAL_PHASES, is_true
from finetune_contract.storage import Storage, StorageError
from .taskstate import RETRY_SOON, Context, Stop, Task, Writer, api, retry_later, storage_for

__all__ = ["Context", "Task", "apply_now", "follow", "reconcile", "suspend_changed"]

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
        _check_policy(w, spec)
        ctx.set_active(task.ref, True)
        layout = RunLayout(root=spec.output.uri, namespace=task.ref.namespace,
                           task=task.ref.name, run_id=run_id)
        storage = storage_for(w, spec)
        manifest = _prepare(w, spec, layout, storage)
        skipped = transitions.skip_before_training(spec, w.status, w.at())
        if skipped is not None:
            w.stop(skipped)
        _render(w, spec, layout, storage, manifest)
        if _launch(w, spec, layout):
            follow_run(w, spec)  # resumed with a Job already there: it may have finished meanwhile


def _parse(w: Writer) -> FineTuneTaskSpec:
    try:
        return parse_spec(w.task.spec)
    except SpecError as err:
        w.fail("DataReady", R.INVALID_SPEC, f"{err}; fix the spec and re-apply")


def _check_policy(w: Writer, spec: FineTuneTaskSpec) -> None:
    """The admin's policy (policy.py), before anything is read: a violation ends the run."""
    violation = policy.check_spec(spec, policy.from_settings(w.ctx.settings, local=False))
    if violation is not None:
        w.fail("DataReady", R.POLICY_VIOLATION, violation.message)


def _start_run(w: Writer, run_id: str) -> None:
    """A new spec (called only when the run id changed): delete the superseded run's children,
    then reset the status."""
    old = w.status.job
    if old is not None:
        api(lambda: w.ctx.kube.delete_job(w.task.ref.namespace, old.name))
        api(lambda: w.ctx.kube.delete_configmap(w.task.ref.namespace, old.config_map))
        if old.service:
            api(lambda: w.ctx.kube.delete_service(w.task.ref.namespace, old.service))
        w.event("Normal", R.SUPERSEDED, f"spec changed: deleted Job {old.name} of run "
                                        f"{w.status.run_id}")
    # Not committed here: the first step's write carries it (one status patch fewer per run).
    w.status = transitions.start(run_id, w.at())
    metrics.RUNS_STARTED.labels(w.task.ref.namespace, w.task.ref.name).inc()


def _prepare(w: Writer, spec: FineTuneTaskSpec, layout: RunLayout, storage: Storage) -> Manifest:
    from .prepare import PrepareError, prepare_run

    if is_true(w.status, "DataReady") and w.status.data is not None:
        try:  # prepared earlier in this run: one read instead of a re-preparation
            return Manifest.model_validate_json(storage.read_text(layout.manifest, 1 << 20))
        except (StorageError, ValueError):
            pass
    w.commit(*transitions.preparing(w.status, layout.run_id, spec.dataset.uri, w.at()))
    start = time.monotonic()
    try:
        with w.ctx.prep_slots:
            manifest = prepare_run(spec, layout, storage)
    except PrepareError as err:
        if err.transient:
            retry_later(w, "DataReady", str(err))
        w.stop(transitions.data_not_prepared(w.status, err.reason, str(err), w.at()))
    except StorageError as err:
        if err.transient:
            retry_later(w, "DataReady", str(err))
        w.fail("DataReady", R.STORAGE, str(err))
    finally:
        metrics.DATA_PREP_DURATION.labels(w.task.ref.namespace).observe(time.monotonic() - start)
    w.commit(*transitions.prepared(w.status, manifest, layout, w.at()))
    return manifest


def _render(w: Writer, spec: FineTuneTaskSpec, layout: RunLayout, storage: Storage,
            manifest: Manifest) -> None:

    from .render import render_axolotl_config

    if is_true(w.status, "ConfigRendered"):
        return
    try:
        config = render_axolotl_config(spec, manifest, layout, profile=profile_for(spec, w.ctx.settings),
                                       gpu_memory_gib=w.ctx.settings.gpu_memory_gib)
    except (ValueError, TypeError, KeyError) as err:
        w.fail("ConfigRendered", R.INVALID_CONFIG, f"{err}; check spec.training")
    body = build_configmap(w.task.ref, layout.run_id, config,
                           spec.resources.world_shape()[0])
    text = body["data"]["axolotl.yaml"]
    if any(s and s in text for s in w.secrets):
        w.fail("ConfigRendered", R.SECRET_IN_CONFIG,
               "a credential value appears in the rendered config (spec.training.axolotl?): "
               "remove it; credentials reach the trainer only through the Secret")
    try:
        storage.write_text(layout.config, text, "application/yaml")
    except StorageError as err:
        raise kopf.TemporaryError(w.scrub(str(err)), delay=RETRY_SOON) from None
    api(lambda: w.ctx.kube.create_configmap(body))
    # Committed with JobCreated a moment later (one status patch and one Event fewer); if the
    # launch fails first, the retry re-renders and finds the ConfigMap there (409).
    w.status = transitions.rendered(
        w.status, f"ConfigMap {body['metadata']['name']} holds the Axolotl config", w.at()).status


def _launch(w: Writer, spec: FineTuneTaskSpec, layout: RunLayout) -> bool:
    """Create the Job unless suspended; True when it already existed (so follow it now)."""
    nodes = spec.resources.world_shape()[0]
    ref, name = w.task.ref, child_name(w.task.ref.name, layout.run_id, nodes)
    if is_true(w.status, "JobCreated"):
        apply_suspend(w, spec)
        return True
    if spec.suspend:
        w.commit(*transitions.suspended_before_launch(w.status, w.at()))
        return False
    body = build_job(ref, layout.run_id, spec, layout, w.ctx.settings)
    service = None
    if nodes > 1:  # the pods' DNS names (the rendezvous) before the pods
        headless = build_headless_service(body)
        api(lambda: w.ctx.kube.create_service(headless))
        service = name
    _job, created = api(lambda: w.ctx.kube.create_job(body))
    msg = f"ConfigMap and Job {name} {'created' if created else 'exist'}"
    children = JobStatus(name=name, config_map=name, service=service)
    w.commit(*transitions.launched(w.status, children, msg, w.at()))
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
    if api(lambda: w.ctx.kube.get_job(ns, job.name)) is None:
        return  # gone: follow() reports it
    api(lambda: w.ctx.kube.set_job_suspended(ns, job.name, spec.suspend))
    w.commit(*transitions.job_suspended(w.status, job.name, spec.suspend, w.at()))


def suspend_changed(task: Task, ctx: Context) -> None:
    """The spec.suspend handler: suspend/resume the Job, or launch it when unsuspended."""
    with ctx.lock(task.ref):
        fresh = api(lambda: ctx.kube.get_task(task.ref.namespace, task.ref.name))
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


def apply_now(task: Task, ctx: Context) -> None:
    """reconcile(), with `Stop` (run ended inside a step) as a normal return."""
    try:
        reconcile(task, ctx)
    except Stop:
        pass
