"""Following a run's Job (timer and Job events): read the Job, then write what it says —
metrics and verdict on success, the reason on failure (podstate.py reads the pods), and while it
runs the trainer's progress (progress.py) or why its pod cannot start — into the task's status.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any

import kopf

from . import metrics, podstate, progress, transitions
from . import reasons as R
from finetune_contract import Metrics, RunLayout, one_line
from .spec import FineTuneTaskSpec, FineTuneTaskStatus, ProgressStatus, SpecError, parse_spec
from .status import condition
from finetune_contract.storage import StorageError
from .taskstate import (METRICS_MAX_BYTES, RETRY_SOON, Context, Stop, Task, Writer, api,
                        storage_for, storage_quietly)

LOG = logging.getLogger(__name__)


def follow(task: Task, ctx: Context) -> None:
    """Timer / Job event: read the Job and write what it says into the task's status."""
    with ctx.lock(task.ref):
        # The body a timer or Job event carries may predate the spec handler's last write.
        fresh = api(lambda: ctx.kube.get_task(task.ref.namespace, task.ref.name))
        if fresh is None:
            return
        w = Writer(Task.from_body(fresh), ctx)
        try:
            spec = parse_spec(w.task.spec)
        except SpecError:
            return  # the spec handler reports it
        try:
            follow_run(w, spec)
        except Stop:
            pass
        except kopf.PermanentError as err:
            # The run's failure is already in the status and an Event on the task; as a timer
            # or Job-event "handler failure" it would only be logged and posted twice.
            LOG.info("%s/%s: run ended as Failed: %s", task.ref.namespace, task.ref.name, err)


def follow_run(w: Writer, spec: FineTuneTaskSpec) -> None:
    st, ref = w.status, w.task.ref
    if st.phase not in ("Training", "Suspended") or st.job is None or spec.run_id() != st.run_id:
        return  # nothing running, or the spec changed and the spec handler starts the new run
    layout = RunLayout(root=spec.output.uri, namespace=ref.namespace, task=ref.name,
                       run_id=st.run_id)
    job = api(lambda: w.ctx.kube.get_job(ref.namespace, st.job.name))
    conds = {c.get("type"): c for c in ((job or {}).get("status") or {}).get("conditions") or []
             if c.get("status") == "True"}
    if job is None or "Complete" in conds:
        _succeed(w, spec, layout, job)
    elif "Failed" in conds:
        _job_failed(w, job)
    else:
        _running(w, spec, layout, job)


def _succeed(w: Writer, spec: FineTuneTaskSpec, layout: RunLayout,
             job: dict[str, Any] | None) -> None:
    storage = storage_for(w, spec)
    try:
        m = Metrics.model_validate_json(storage.read_text(layout.metrics, METRICS_MAX_BYTES))
    except StorageError as err:
        if err.transient:
            raise kopf.TemporaryError(w.scrub(str(err)), delay=RETRY_SOON) from None
        if job is None:
            w.fail("Trained", R.JOB_LOST, f"Job {w.status.job.name} is gone and "
                   f"{layout.metrics} is missing: change the spec (or recreate the task) to rerun")
        w.fail("Trained", R.METRICS_MISSING, f"the Job completed but {layout.metrics} is "
               f"unreadable ({err}): check the trainer's logs")
    except ValueError as err:
        w.fail("Evaluated", R.BAD_METRICS, f"{layout.metrics} does not match the contract: "
               f"{one_line(str(err), 200)}")
    job_status = (w.status.job.model_copy(update={
        "start_time": ((job or {}).get("status") or {}).get("startTime"),
        "completion_time": ((job or {}).get("status") or {}).get("completionTime")})
        if w.status.job else None)
    w.end(transitions.succeed(w.status, m, w.at(), job=job_status))
    ref = w.task.ref
    metrics.TASK_EVAL_LOSS.labels(ref.namespace, ref.name).set(m.eval_loss)
    metrics.TASK_BASE_EVAL_LOSS.labels(ref.namespace, ref.name).set(m.base_eval_loss)
    metrics.TASK_IMPROVEMENT.labels(ref.namespace, ref.name).set(m.improvement)
    metrics.TASK_NO_GAIN.labels(ref.namespace, ref.name).set(1 if m.verdicts.no_gain else 0)
    metrics.TASK_LAST_SUCCESS.labels(ref.namespace, ref.name).set(time.time())


def _job_failed(w: Writer, job: dict[str, Any]) -> None:
    """The trainer's reason when it gave a specific one, else what its pods and the Job say."""
    pods = _pods(w)
    d = podstate.failure(job, pods, progress=w.status.progress, waited=_waited(w.status, pods))
    w.fail("Trained", d.reason, d.message)


def _pods(w: Writer) -> list[dict[str, Any]]:
    ns, name = w.task.ref.namespace, w.status.job.name  # type: ignore[union-attr]
    return podstate.of_job(api(lambda: w.ctx.kube.job_pods(ns, name)), name)


def _waited(st: FineTuneTaskStatus, pods: list[dict[str, Any]]) -> podstate.Waiting | None:
    """A pod that never started: still listed, or (the Job controller deleted it at the
    deadline) as the status said while it waited."""
    now = podstate.waiting(pods)
    cond = condition(st, "Trained")
    if now is None and cond is not None and cond.status == "Unknown" and \
            cond.reason in transitions.POD_WAITING:
        return podstate.Waiting(cond.reason, cond.message, None)
    return now


def _running(w: Writer, spec: FineTuneTaskSpec, layout: RunLayout, job: dict[str, Any]) -> None:
    js = job.get("status") or {}
    start = js.get("startTime")
    new = w.status
    event = None
    if new.job is not None and start and new.job.start_time != start:
        new = new.model_copy(update={"job": new.job.model_copy(update={"start_time": start})})
    if js.get("active") and new.job is not None:
        w.status = new
        new, event = _pod_started(w, job)
    # Only a ready pod writes progress: a pending or suspended run costs no S3 or Secret read.
    report = _progress(w, spec, layout) if js.get("ready") else None
    w.commit(transitions.progressed(new, report), event)


def _pod_started(w: Writer, job: dict[str, Any]) -> transitions.Step:
    """Running, or why the pod cannot start. Pods are listed only while the Job has a pod that
    is not ready (its `ready` count), so a training run costs no pod reads."""
    js, name = job.get("status") or {}, w.status.job.name  # type: ignore[union-attr]
    if (js.get("ready") or 0) >= js["active"]:
        return transitions.running(w.status, name, w.at())
    stuck = podstate.waiting(_pods(w))
    if stuck is None:
        return transitions.running(w.status, name, w.at())
    s = w.ctx.settings
    timeout = (s.image_pull_timeout if stuck.reason == R.IMAGE_PULL_FAILED
               else s.unschedulable_timeout)
    if stuck.expired(datetime.datetime.now(datetime.timezone.utc), timeout):
        _give_up(w, stuck, timeout)
    return transitions.pod_waiting(w.status, stuck.reason, stuck.message(timeout), w.at())


def _give_up(w: Writer, stuck: podstate.Waiting, timeout: float) -> None:
    """Waited too long: fail the run, then delete its Job so that its pod stops holding a GPU
    or a Kueue quota (the status and the Event keep the reason)."""
    ns, name = w.task.ref.namespace, w.status.job.name  # type: ignore[union-attr]
    ending = transitions.fail(w.status, "Trained", stuck.reason,
                              f"{stuck.detail}; gave up after {timeout:.0f} s and deleted "
                              f"Job {name}", w.at())
    w.end(ending)
    api(lambda: w.ctx.kube.delete_job(ns, name))
    raise kopf.PermanentError(w.scrub(f"{ending.reason}: {ending.event.message}"))


def _progress(w: Writer, spec: FineTuneTaskSpec, layout: RunLayout) -> ProgressStatus | None:
    """The trainer's latest report, at most once per FINETUNE_PROGRESS_INTERVAL per task."""
    ref = w.task.ref
    if not w.ctx.progress.due((ref.namespace, ref.name)):
        return None
    storage = storage_quietly(w, spec)
    report = progress.read(storage, layout) if storage is not None else None
    return progress.summary(report) if report is not None else None
