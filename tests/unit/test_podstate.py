"""Failure detail for real clusters (podstate.py, pure): each reason from the pod state or the
Job condition that a real kubelet, scheduler or Job controller writes for it."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from finetune_contract import TerminationMessage
from finetune_operator import podstate
from finetune_operator import reasons as R
from finetune_operator.spec import ProgressStatus

JOB = "triage-r1"
T0 = "2026-12-03T10:00:00Z"


def pod(phase: str = "Failed", *, state: dict[str, Any] | None = None, created: str = T0,
        conditions: list[dict[str, Any]] | None = None, deleting: bool = False,
        **status: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"{JOB}-x{created[-3:-1]}", "creationTimestamp": created,
                            "labels": {"job-name": JOB}}
    if deleting:
        meta["deletionTimestamp"] = created
    st: dict[str, Any] = {"phase": phase, "conditions": conditions or [], **status}
    if state is not None:
        st["containerStatuses"] = [{"name": "trainer", "image": "reg.example/trainer:1",
                                    "state": state}]
    return {"metadata": meta, "status": st,
            "spec": {"containers": [{"name": "trainer", "image": "reg.example/trainer:1",
                                     "resources": {"limits": {"memory": "32Gi"}}}]}}


def killed(code: int, reason: str = "Error", message: str = "", **kw: Any) -> dict[str, Any]:
    term = {"exitCode": code, "reason": reason, "finishedAt": T0}
    if message:
        term["message"] = message
    return pod(state={"terminated": term}, **kw)


def job(reason: str = R.BACKOFF_LIMIT_EXCEEDED, message: str = "Job has reached the specified "
        "backoff limit") -> dict[str, Any]:
    return {"metadata": {"name": JOB}, "spec": {"activeDeadlineSeconds": 3600},
            "status": {"conditions": [{"type": "Failed", "status": "True", "reason": reason,
                                       "message": message}]}}


OWN = TerminationMessage(ok=False, reason="ModelNotFound", message="no such model: check "
                         "baseModel").encode()
GENERIC = TerminationMessage(ok=False, reason="TrainingFailed",
                             message="RuntimeError: No CUDA GPUs are available").encode()
DISRUPTED = [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]

FAILURES: list[tuple[str, dict[str, Any], list[dict[str, Any]], str, str]] = [
    # (case, job, pods, reason, a phrase of the message)
    ("oom-killed", job(), [killed(137, "OOMKilled")], R.OOM_KILLED, "microBatchSize"),
    ("exit-137", job(), [killed(137, message="step 40/300")], R.OOM_KILLED, "qlora"),
    ("oom-names-the-limit", job(), [killed(137, "OOMKilled")], R.OOM_KILLED, "limit 32Gi"),
    ("deadline", job(R.DEADLINE_EXCEEDED, "Job was active longer than specified deadline"),
     [killed(143)], R.DEADLINE_EXCEEDED, "activeDeadlineSeconds (3600 s)"),
    ("admission", job(), [pod("Failed", reason="UnexpectedAdmissionError",
                              message="Allocate failed due to requested number of devices "
                                      "unavailable for nvidia.com/gpu")],
     R.GPU_NOT_FOUND, "device plugin"),
    ("cuda-in-log", job(), [killed(1, message="Traceback...\nRuntimeError: No CUDA GPUs are "
                                              "available")], R.GPU_NOT_FOUND, "gpu: 0"),
    ("cuda-in-trainer-message", job(), [killed(1, message=GENERIC)], R.GPU_NOT_FOUND,
     "No CUDA GPUs are available"),
    ("trainer-knows", job(R.POD_FAILURE_POLICY), [killed(2, message=OWN)], "ModelNotFound",
     "check baseModel"),
    ("trainer-generic", job(), [killed(1, message=TerminationMessage(
        ok=False, reason="TrainingFailed", message="axolotl exited 1").encode())],
     "TrainingFailed", "axolotl exited 1"),
    ("crash-log-tail", job(), [killed(1, message="CUDA error: an illegal memory access")],
     R.BACKOFF_LIMIT_EXCEEDED, "last output: CUDA error: an illegal memory access"),
    ("no-pods", job(), [], R.BACKOFF_LIMIT_EXCEEDED, "backoff limit"),
    ("evicted-137-is-no-oom", job(), [killed(137, conditions=DISRUPTED)],
     R.BACKOFF_LIMIT_EXCEEDED, f"Job {JOB} failed"),
    ("newest-pod-wins", job(), [killed(137, "OOMKilled", created="2026-12-03T10:05:00Z"),
                                killed(1, message=OWN)], R.OOM_KILLED, "OOMKilled"),
]


@pytest.mark.parametrize(("job_", "pods", "reason", "phrase"),
                         [c[1:] for c in FAILURES], ids=[c[0] for c in FAILURES])
def test_each_failure_has_its_reason_and_advice(job_: dict[str, Any], pods: list[dict[str, Any]],
                                                reason: str, phrase: str) -> None:
    d = podstate.failure(job_, pods)
    assert d.reason == reason
    assert phrase in d.message, d.message
    assert "\n" not in d.message and len(d.message) < 600


def test_a_deadline_says_how_far_the_run_got() -> None:
    p = ProgressStatus(stage="train", step=480, max_steps=600, percent=80.0, updated=T0)
    d = podstate.failure(job(R.DEADLINE_EXCEEDED), [killed(143)], progress=p)
    assert "at step 480 of 600" in d.message


def test_a_deadline_before_the_pod_started_names_what_kept_it() -> None:
    waited = podstate.Waiting(R.UNSCHEDULABLE, "no node fits the trainer pod: 0/3 nodes", None)
    d = podstate.failure(job(R.DEADLINE_EXCEEDED), [], waited=waited)
    assert d.reason == R.UNSCHEDULABLE and "0/3 nodes" in d.message


UNSCHEDULABLE_MSG = ("0/12 nodes are available: 4 Insufficient nvidia.com/gpu, 8 node(s) didn't "
                     "match Pod's node affinity/selector. preemption: 0/12 nodes are available: "
                     "12 Preemption is not helpful for scheduling.")

WAITING: list[tuple[str, dict[str, Any], str | None, str]] = [
    ("unschedulable", pod("Pending", conditions=[{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": UNSCHEDULABLE_MSG, "lastTransitionTime": T0}]), R.UNSCHEDULABLE,
     "no node fits the trainer pod: 0/12 nodes are available: 4 Insufficient nvidia.com/gpu, "
     "8 node(s) didn't match Pod's node affinity/selector; check"),
    ("image-pull-backoff", pod("Pending", state={"waiting": {
        "reason": "ImagePullBackOff", "message": 'Back-off pulling image "reg.example/trainer:1"'}},
        conditions=[{"type": "PodScheduled", "status": "True", "lastTransitionTime": T0}]),
     R.IMAGE_PULL_FAILED, "reg.example/trainer:1 cannot be pulled (ImagePullBackOff: Back-off"),
    ("err-image-pull", pod("Pending", state={"waiting": {
        "reason": "ErrImagePull", "message": "rpc error: code = NotFound"}}),
     R.IMAGE_PULL_FAILED, "(ErrImagePull: rpc error: code = NotFound)"),
    ("running", pod("Running", state={"running": {"startedAt": T0}}), None, ""),
    ("creating", pod("Pending", state={"waiting": {"reason": "ContainerCreating"}}), None, ""),
    ("being-deleted", pod("Pending", deleting=True, state={"waiting": {
        "reason": "ImagePullBackOff"}}), None, ""),
]


@pytest.mark.parametrize(("p", "reason", "phrase"), [c[1:] for c in WAITING],
                         ids=[c[0] for c in WAITING])
def test_a_pod_that_cannot_start_says_why(p: dict[str, Any], reason: str | None,
                                          phrase: str) -> None:
    w = podstate.waiting([p])
    assert (w.reason if w else None) == reason
    if w is not None:
        assert phrase in w.detail, w.detail
        assert w.since == T0
        assert "preemption" not in w.detail


def test_waiting_expires_after_its_timeout_and_never_with_zero() -> None:
    w = podstate.Waiting(R.IMAGE_PULL_FAILED, "x", T0)
    t0 = datetime.datetime(2026, 12, 3, 10, 0, tzinfo=datetime.timezone.utc)
    assert not w.expired(t0 + datetime.timedelta(seconds=599), 600)
    assert w.expired(t0 + datetime.timedelta(seconds=600), 600)
    assert not w.expired(t0 + datetime.timedelta(days=9), 0)
    garbled = podstate.Waiting(R.IMAGE_PULL_FAILED, "x", "yesterday")
    assert not garbled.expired(t0, 600)  # never a crash in the timer
    assert "the run fails after 600 s" in w.message(600) and "fails" not in w.message(0)


def test_other_jobs_pods_are_left_out_and_the_newest_message_wins() -> None:
    other = killed(1, message=OWN)
    other["metadata"]["labels"]["job-name"] = "someone-else"
    older = killed(1, message="old")
    newer = killed(1, message="new")
    term = older["status"]["containerStatuses"][0]["state"]["terminated"]
    term["finishedAt"] = "2026-01-01T00:00:00Z"
    assert podstate.of_job([other, older], JOB) == [older]
    assert podstate.termination_message([older, newer]) == "new"
