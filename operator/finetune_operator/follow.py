"""Following a run's Job (timer and Job events): read the Job, then write what it says —
metrics and verdict on success, the trainer's own reason on failure — into the task's status.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf

from . import metrics, transitions
from . import reasons as R
from finetune_contract import Metrics, RunLayout, TerminationMessage, one_line
from .spec import FineTuneTaskSpec, SpecError, parse_spec
from finetune_contract.storage import StorageError
from .taskstate import (METRICS_MAX_BYTES, RETRY_SOON, Context, Stop, Task, Writer, api,
                        storage_for)

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
        _job_failed(w, conds["Failed"])
    else:
        _running(w, job)


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


def _job_failed(w: Writer, cond: dict[str, Any]) -> None:
    """Reason from the trainer's termination message when it wrote one, else the Job's."""
    ns, name = w.task.ref.namespace, w.status.job.name  # type: ignore[union-attr]
    raw = api(lambda: w.ctx.kube.termination_message(ns, name))
    term = TerminationMessage.decode(raw)
    if term is not None:
        reason, message = term.reason, term.message
    else:
        reason = cond.get("reason") or R.JOB_FAILED
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
    if js.get("active") and new.job is not None:
        new = transitions.running(new, new.job.name, w.at()).status
    w.commit(new)
