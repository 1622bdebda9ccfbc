"""A run's state machine (pure: typed status in, typed status out; no API, no clock reads).

One function per step and one per outcome, used by every caller: the operator (reconcile.py,
follow.py and taskstate.py apply them and do the side effects: the status patch, the Event, the
metrics) and the local runner (finetune_dev.local keeps the status and prints it). So a local
run ends where a cluster run would, in the same phase with the same conditions, reasons and
messages; only messages that name a Kubernetes object are the caller's own.

    start -> preparing -> prepared -> [skip_before_training] -> rendered
          -> launched | suspended_before_launch -> running -> succeed | fail

Steps return a `Step` (the status and the Event that announces it, if any); outcomes return an
`Ending`, which also says what the run metrics record. Every reason is a `reasons` constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from finetune_contract import Manifest, Metrics, RunLayout
from . import reasons as R
from .spec import (AdapterStatus, ConditionType, FineTuneTaskSpec, FineTuneTaskStatus,
                   JobStatus, Phase, ProgressStatus)
from .status import (CondStatus, condition, data_status, evaluation, metrics_status, new_run,
                     set_condition, with_phase)

FinalPhase = Literal["Succeeded", "Failed", "Skipped"]
RESULT_OF: dict[FinalPhase, R.Result] = {
    "Succeeded": R.RESULT_SUCCEEDED, "Failed": R.RESULT_FAILED, "Skipped": R.RESULT_SKIPPED}

INFREQUENT_MESSAGE = "spec.infrequent is set: data prepared and checked, no GPU spent"
SUSPENDED_MESSAGE = "spec.suspend is true: no Job is created until it is false"


@dataclass(frozen=True)
class At:
    """When, and for which spec generation, a transition happens (the caller reads the clock)."""

    generation: int | None
    now: str


class Event(NamedTuple):
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


class Step(NamedTuple):
    """A run's next status, and the Event that announces it (None: a quiet step)."""

    status: FineTuneTaskStatus
    event: Event | None = None


class Ending(NamedTuple):
    """A run's final status; `reason` is Ready's, the Event's and the run metrics' label."""

    status: FineTuneTaskStatus
    event: Event
    phase: FinalPhase
    reason: str
    result: R.Result


def _cond(st: FineTuneTaskStatus, type_: ConditionType, value: CondStatus, reason: str,
          message: str, at: At) -> FineTuneTaskStatus:
    return set_condition(st, type_, value, reason, message, generation=at.generation, now=at.now)


def _phase(st: FineTuneTaskStatus, phase: Phase, message: str, at: At, **fields: object
           ) -> FineTuneTaskStatus:
    return with_phase(st, phase, message, generation=at.generation, now=at.now, **fields)


# ---- steps ---------------------------------------------------------------------------------


def start(run_id: str, at: At) -> FineTuneTaskStatus:
    """A new run: nothing of the previous run's status survives."""
    return new_run(run_id, at.generation, at.now)


def preparing(st: FineTuneTaskStatus, run_id: str, dataset_uri: str, at: At) -> Step:
    msg = f"run {run_id}: preparing data from {dataset_uri}"
    new = _cond(st, "DataReady", "Unknown", R.PREPARING, f"reading {dataset_uri}", at)
    return Step(_phase(new, "Preparing", msg, at), Event("Normal", R.RUN_STARTED, msg))


def prepared(st: FineTuneTaskStatus, manifest: Manifest, layout: RunLayout, at: At) -> Step:
    data, msg = data_status(manifest, layout)
    new = _cond(st, "DataReady", "True", R.PREPARED, msg, at).model_copy(update={"data": data})
    return Step(new, Event("Normal", R.DATA_READY, msg))


def waiting_for_secret(st: FineTuneTaskStatus, namespace: str, secret: str, at: At) -> Step:
    """The Secret is not there yet (Argo CD may sync the task first): wait, never fail."""
    new = _cond(st, "DataReady", "False", R.SECRET_NOT_FOUND,
                f"waiting for Secret {namespace}/{secret}", at)
    return Step(_phase(new, "Pending", f"waiting for Secret {namespace}/{secret} "
                                       "(spec.storage.credentialsSecret)", at))


def retrying(st: FineTuneTaskStatus, cond_type: ConditionType, message: str, at: At) -> Step:
    """An outage: the condition says so (the status stays truthful) while the caller retries."""
    return Step(_cond(st, cond_type, "Unknown", R.RETRYING, message, at))


def rendered(st: FineTuneTaskStatus, message: str, at: At) -> Step:
    """`message` says where the config went (a ConfigMap, or a local file)."""
    return Step(_cond(st, "ConfigRendered", "True", R.RENDERED, message, at))


def launched(st: FineTuneTaskStatus, job: JobStatus, message: str, at: At) -> Step:
    new = _cond(st, "JobCreated", "True", R.CREATED, message, at)
    return Step(_phase(new, "Training", message, at, job=job), Event("Normal", R.JOB_CREATED,
                                                                    message))


def suspended_before_launch(st: FineTuneTaskStatus, at: At) -> Step:
    """spec.suspend before any Job exists: none is created until it is false."""
    new = _cond(st, "JobCreated", "False", R.SUSPENDED, SUSPENDED_MESSAGE, at)
    return Step(_phase(new, "Suspended", SUSPENDED_MESSAGE, at),
                Event("Normal", R.SUSPENDED, SUSPENDED_MESSAGE))


def job_suspended(st: FineTuneTaskStatus, job_name: str, suspend: bool, at: At) -> Step:
    """A flip of spec.suspend while the Job exists: Suspended, or back to Training."""
    phase: Phase = "Suspended" if suspend else "Training"
    msg = f"Job {job_name} {'suspended' if suspend else 'resumed'}"
    return Step(_phase(st, phase, msg, at), Event("Normal", phase, msg))


def running(st: FineTuneTaskStatus, job_name: str, at: At) -> Step:
    msg = f"trainer pod running (Job {job_name})"
    was = condition(st, "Trained")
    if was is not None and was.reason in POD_WAITING:
        st = _phase(st, st.phase, msg, at)  # the pod started after all: drop the waiting line
    return Step(_cond(st, "Trained", "Unknown", R.RUNNING, msg, at))


POD_WAITING: frozenset[str] = frozenset({R.IMAGE_PULL_FAILED, R.UNSCHEDULABLE})


def pod_waiting(st: FineTuneTaskStatus, reason: str, message: str, at: At) -> Step:
    """The trainer pod cannot start (its image, no node): Trained=Unknown and the phase message
    say why; a Warning Event when it starts (not on every check)."""
    was = condition(st, "Trained")
    new = _phase(_cond(st, "Trained", "Unknown", reason, message, at), st.phase, message, at)
    fresh = was is None or was.reason != reason
    return Step(new, Event("Warning", reason, message) if fresh else None)


def progressed(st: FineTuneTaskStatus, progress: ProgressStatus | None) -> FineTuneTaskStatus:
    """The running trainer's latest report (None keeps the last one)."""
    return st if progress is None else st.model_copy(update={"progress": progress})


# ---- outcomes ------------------------------------------------------------------------------


def _end(st: FineTuneTaskStatus, phase: FinalPhase, cond: tuple[ConditionType, CondStatus, str],
         message: str, at: At, *, ready: bool = False, **fields: object) -> Ending:
    """The step's condition, Ready (same reason), the final phase; Warning when not usable."""
    type_, value, reason = cond
    new = _cond(st, type_, value, reason, message, at)
    new = _cond(new, "Ready", "True" if ready else "False", reason, message, at)
    new = _phase(new, phase, message, at, **fields)
    warn = phase == "Failed" or (phase == "Succeeded" and not ready)
    return Ending(new, Event("Warning" if warn else "Normal", reason, message), phase, reason,
                  RESULT_OF[phase])


def succeed(st: FineTuneTaskStatus, m: Metrics, at: At, *, job: JobStatus | None) -> Ending:
    """The trainer finished: Trained, the verdict (Evaluated, Ready), metrics and adapter.

    NoGain is Succeeded with Ready=False (the run worked, its adapter is not worth serving)."""
    reason, message, ready = evaluation(m)
    new = _cond(st, "Trained", "True", R.COMPLETED, f"best step {m.best_step}, train loss "
                f"{m.train_loss}" + (", stopped early" if m.stopped_early else ""), at)
    new = _cond(new, "Evaluated", "True", reason, message, at)
    # status.progress goes: status.metrics holds the finished run (a Failed run keeps its last
    # progress, which says how far it got).
    return _end(new, "Succeeded", ("Evaluated", "True", reason), message, at, ready=ready,
                metrics=metrics_status(m), job=job, progress=None,
                adapter=AdapterStatus(uri=m.adapter_uri, digest=m.adapter_digest))


def fail(st: FineTuneTaskStatus, cond_type: ConditionType, reason: str, message: str,
         at: At) -> Ending:
    """Failed for good at `cond_type`: no retry helps, the next spec change starts a new run."""
    return _end(st, "Failed", (cond_type, "False", reason), message, at)


def skip(st: FineTuneTaskStatus, cond_type: ConditionType, reason: str, message: str,
         at: At) -> Ending:
    """Skipped: nothing is wrong, but no training is worth running (reasons.SKIPS)."""
    return _end(st, "Skipped", (cond_type, "False", reason), message, at)


def data_not_prepared(st: FineTuneTaskStatus, reason: str, message: str, at: At) -> Ending:
    """A PrepareError that no retry fixes: too few samples skips the run, anything else fails it."""
    if reason == R.TOO_FEW_SAMPLES:
        return skip(st, "DataReady", reason, message, at)
    return fail(st, "DataReady", reason, message, at)


def skip_before_training(spec: FineTuneTaskSpec, st: FineTuneTaskStatus, at: At
                         ) -> Ending | None:
    """After the data is prepared: a spec that asks for no training ends the run Skipped."""
    if spec.infrequent:
        return skip(st, "ConfigRendered", R.INFREQUENT, INFREQUENT_MESSAGE, at)
    return None
