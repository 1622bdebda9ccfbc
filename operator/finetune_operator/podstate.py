"""What the trainer's pods say when the trainer itself could not (pure: pod and Job dicts in).

On a real cluster most failures never reach the trainer's termination message: the kernel kills
it at the memory limit, the kubelet cannot pull its image or find a GPU, no node fits the pod,
the Job's deadline stops it. Each of those gets a reason constant and one line with advice,
read from the container state, the pod's conditions or the Job's Failed condition.

- `failure(job, pods)`: why a failed Job failed (the trainer's own reason when it gave a
  specific one).
- `waiting(pods)`: a pod that cannot start (image pull, no node), while the run is Training.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any

from finetune_contract import TerminationMessage, one_line
from finetune_contract import reasons as trainer
from . import reasons as R
from .resources import CONTAINER
from .spec import ProgressStatus

PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                          "ErrImageNeverPull"})
# What CUDA, the NVIDIA driver and PyTorch print when the pod has no usable GPU.
NO_GPU = re.compile(r"no CUDA GPUs are available|no CUDA-capable device|found no NVIDIA driver|"
                    r"CUDA driver initialization failed|NVIDIA-SMI has failed", re.IGNORECASE)
# The trainer's catch-all reasons: a pod's state can say more than these.
GENERIC = frozenset({trainer.TRAINING_FAILED, trainer.INTERNAL})
DETAIL_CHARS = 200

OOM_ADVICE = ("use a smaller training.microBatchSize, a shorter training.sequenceLen or "
              "training.adapter: qlora, or raise resources.memory")
GPU_ADVICE = ("check that the node runs the device plugin and driver for "
              "resources.gpuResourceName, or set resources.gpu: 0 to train on the CPU")
DEADLINE_ADVICE = ("raise spec.resources.activeDeadlineSeconds, or lower training.maxSteps or "
                   "training.epochs")
PULL_ADVICE = ("check spec.trainerImage (or the operator's FINETUNE_TRAINER_IMAGE), the registry "
               "and its pull secret")
FIT_ADVICE = ("check resources (gpu, gpuResourceName, cpu, memory), nodeSelector, tolerations "
              "and the cluster's free capacity")


@dataclass(frozen=True)
class Diagnosis:
    """A reason constant and the one line the status, the Event and the metric label carry."""

    reason: str
    message: str


@dataclass(frozen=True)
class Waiting:
    """A trainer pod that cannot start; `since` (RFC 3339) is when it started waiting."""

    reason: str
    detail: str
    since: str | None

    def message(self, timeout: float) -> str:
        when = f"waiting since {self.since}" if self.since else "waiting"
        limit = f"; the run fails after {timeout:.0f} s" if timeout > 0 else ""
        return f"{self.detail} ({when}{limit})"

    def expired(self, now: datetime.datetime, timeout: float) -> bool:
        """Waited `timeout` seconds or more (0: never)."""
        if timeout <= 0 or not self.since:
            return False
        try:
            since = datetime.datetime.fromisoformat(self.since)
        except ValueError:
            return False  # a time we cannot read: wait for the Job's deadline instead
        return (now - since).total_seconds() >= timeout


# ---- reading pods --------------------------------------------------------------------------


def _created(pod: dict[str, Any]) -> str:
    return (pod.get("metadata") or {}).get("creationTimestamp") or ""


def _trainer_status(pod: dict[str, Any]) -> dict[str, Any]:
    return next((cs for cs in (pod.get("status") or {}).get("containerStatuses") or []
                 if cs.get("name") == CONTAINER), {})


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    return (_trainer_status(pod).get("state") or {}).get("terminated") or {}


def _condition(pod: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (pod.get("status") or {}).get("conditions") or []
                 if c.get("type") == type_), None)


def of_job(pods: list[dict[str, Any]], job_name: str) -> list[dict[str, Any]]:
    """The Job's pods only: a selector the server ignored must not mix in other Jobs' pods."""
    return [p for p in pods
            if ((p.get("metadata") or {}).get("labels") or {}).get("job-name") == job_name]


def termination_message(pods: list[dict[str, Any]]) -> str | None:
    """The trainer container's termination message from the newest finished pod."""
    best: tuple[str, str] | None = None
    for pod in pods:
        term = _terminated(pod)
        if term.get("message"):
            key = (term.get("finishedAt") or "", term["message"])
            best = max(best, key) if best else key
    return best[1] if best else None


def last_failed(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest pod that failed (a retry's pod is newer than the one it replaced)."""
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    return max(failed, key=_created) if failed else None


def _disrupted(pod: dict[str, Any]) -> bool:
    """Deleted, evicted or preempted: its exit 137 is a kill after the grace period, no OOM."""
    cond = _condition(pod, "DisruptionTarget")
    return bool((pod.get("metadata") or {}).get("deletionTimestamp")) or (
        cond is not None and cond.get("status") == "True")


# ---- while the run is Training -------------------------------------------------------------


def waiting(pods: list[dict[str, Any]]) -> Waiting | None:
    """The newest live pod, when it cannot start: its image cannot be pulled or no node fits."""
    live = [p for p in pods if (p.get("status") or {}).get("phase") in (None, "Pending")
            and not (p.get("metadata") or {}).get("deletionTimestamp")]
    if not live:
        return None
    pod = max(live, key=_created)
    scheduled = _condition(pod, "PodScheduled") or {}
    # Our reason is the scheduler's own word (and OOMKilled the kubelet's).
    if scheduled.get("status") == "False" and scheduled.get("reason") == R.UNSCHEDULABLE:
        return Waiting(R.UNSCHEDULABLE, f"no node fits the trainer pod: "
                       f"{shorten_scheduler(scheduled.get('message') or '')}; {FIT_ADVICE}",
                       scheduled.get("lastTransitionTime") or _created(pod) or None)
    wait = (_trainer_status(pod).get("state") or {}).get("waiting") or {}
    if wait.get("reason") in PULL_REASONS:
        image = _trainer_status(pod).get("image") or _image(pod)
        said = one_line(f"{wait['reason']}: {wait.get('message') or ''}".rstrip(": "),
                        DETAIL_CHARS)
        since = scheduled.get("lastTransitionTime") if scheduled.get("status") == "True" else None
        return Waiting(R.IMAGE_PULL_FAILED, f"the trainer image {image} cannot be pulled "
                       f"({said}): {PULL_ADVICE}", since or _created(pod) or None)
    return None


def shorten_scheduler(message: str) -> str:
    """The scheduler's message without its preemption half, on one short line."""
    head = re.split(r"\.?\s*preemption:", message, maxsplit=1)[0]
    return one_line(head.rstrip(". "), DETAIL_CHARS) or "the scheduler gave no message"


def _image(pod: dict[str, Any]) -> str:
    containers = (pod.get("spec") or {}).get("containers") or []
    return next((c.get("image", "") for c in containers if c.get("name") == CONTAINER), "")


# ---- a failed Job --------------------------------------------------------------------------


def failure(job: dict[str, Any], pods: list[dict[str, Any]], *,
            progress: ProgressStatus | None = None, waited: Waiting | None = None
            ) -> Diagnosis:
    """Why the Job failed, most specific first.

    The Job's deadline (or, if the pod never started, what kept it waiting: `waited`, from the
    status, because the Job controller deletes the pod); the trainer's own reason when it is a
    specific one; no GPU; a kill at the memory limit; the trainer's generic reason; else the
    Job's reason with the log tail that FallbackToLogsOnError left.
    """
    name = (job.get("metadata") or {}).get("name", "")
    cond = next((c for c in (job.get("status") or {}).get("conditions") or []
                 if c.get("type") == "Failed" and c.get("status") == "True"), {})
    if cond.get("reason") == R.DEADLINE_EXCEEDED:
        if waited is not None:
            return Diagnosis(waited.reason, f"{waited.detail}; the Job's deadline passed before "
                                            "its pod started")
        return Diagnosis(R.DEADLINE_EXCEEDED, _deadline(job, progress))
    pod = last_failed(pods)
    raw = termination_message([pod] if pod is not None else pods)  # the last attempt's word
    term = TerminationMessage.decode(raw)
    if term is not None and term.reason not in GENERIC:
        return Diagnosis(term.reason, term.message)
    said = term.message if term is not None else (raw or "")
    gpu = _no_gpu(pod, said)
    if gpu is not None:
        return gpu
    if pod is not None and _oom(pod):
        limit = next((c.get("resources", {}).get("limits", {}).get("memory")
                      for c in (pod.get("spec") or {}).get("containers") or []
                      if c.get("name") == CONTAINER), None)
        at = f" at its memory limit {limit}" if limit else ""
        return Diagnosis(R.OOM_KILLED, f"the trainer was killed{at} (OOMKilled, exit "
                                       f"{_terminated(pod).get('exitCode', 137)}): {OOM_ADVICE}")
    if term is not None:
        return Diagnosis(term.reason, term.message)
    reason = cond.get("reason") or R.JOB_FAILED
    message = f"Job {name} failed: {cond.get('message') or reason}"
    if raw:  # FallbackToLogsOnError: the log tail of a crash
        message += f"; last output: {one_line(raw, DETAIL_CHARS)}"
    return Diagnosis(reason, message)


def _oom(pod: dict[str, Any]) -> bool:
    term = _terminated(pod)
    return term.get("reason") == R.OOM_KILLED or (term.get("exitCode") == 137
                                                  and not _disrupted(pod))


def _no_gpu(pod: dict[str, Any] | None, said: str) -> Diagnosis | None:
    """The kubelet's device admission failed, or CUDA found no device in the container."""
    status = (pod or {}).get("status") or {}
    if status.get("reason") == "UnexpectedAdmissionError":
        detail = one_line(status.get("message") or "", DETAIL_CHARS)
        return Diagnosis(R.GPU_NOT_FOUND, f"the node could not give the pod its GPU "
                                          f"(UnexpectedAdmissionError: {detail}): {GPU_ADVICE}")
    found = NO_GPU.search(said)
    if found:
        return Diagnosis(R.GPU_NOT_FOUND, f"the trainer found no GPU ({found.group(0)}): "
                                          f"{GPU_ADVICE}")
    return None


def _deadline(job: dict[str, Any], progress: ProgressStatus | None) -> str:
    limit = (job.get("spec") or {}).get("activeDeadlineSeconds")
    where = ""
    if progress is not None and progress.step is not None:
        where = f" at step {progress.step}" + (f" of {progress.max_steps}"
                                               if progress.max_steps else "")
    return (f"the Job ran past its activeDeadlineSeconds ({limit} s){where} and was stopped: "
            f"{DEADLINE_ADVICE}")
