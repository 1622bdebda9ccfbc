"""The follower's wiring (follow.py) against an in-memory API: progress is read at most once per
interval per task (an injected clock, no sleeps) and only while a pod is ready; pods are listed
only while the Job has a pod that is not ready; a pod that cannot start is shown, then fails
the run and its Job is deleted; a failed Job's reason comes from its pods."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from finetune_contract import RunProgress
from finetune_operator import follow as F
from finetune_operator import reasons as R
from finetune_operator.settings import OperatorSettings
from finetune_operator.spec import parse_spec
from finetune_operator.taskstate import Context, Task

SPEC = {"baseModel": {"name": "Qwen/Qwen2.5-0.5B-Instruct"}, "dataset": {"uri": "s3://data/t/"},
        "output": {"uri": "s3://out/"}, "storage": {"credentialsSecret": None}}
RUN = parse_spec(SPEC).run_id()
JOB = f"triage-{RUN}"


class FakeKube:
    """The calls follow.py makes, on dicts; every call is recorded."""

    def __init__(self, job_status: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        self.task = {"metadata": {"name": "triage", "namespace": "ml", "uid": "u",
                                  "generation": 1},
                     "spec": SPEC, "status": {"phase": "Training", "runId": RUN,
                                              "job": {"name": JOB, "configMap": JOB}}}
        self.job: dict[str, Any] | None = {"metadata": {"name": JOB},
                                           "spec": {"activeDeadlineSeconds": 3600},
                                           "status": job_status}
        self.pods = pods
        self.calls: list[str] = []
        self.events: list[tuple[str, str]] = []

    def get_task(self, ns: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.task)

    def get_job(self, ns: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.job)

    def job_pods(self, ns: str, name: str) -> list[dict[str, Any]]:
        self.calls.append("list pods")
        return copy.deepcopy(self.pods)

    def delete_job(self, ns: str, name: str) -> None:
        self.calls.append("delete job")
        self.job = None

    def patch_task_status(self, ns: str, name: str, patch: dict[str, Any]) -> None:
        self.calls.append("patch status")
        status = self.task["status"]
        for k, v in patch.items():
            if v is None:
                status.pop(k, None)
            else:
                status[k] = v

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason))

    @property
    def status(self) -> dict[str, Any]:
        return self.task["status"]


@pytest.fixture()
def clock() -> list[float]:
    return [1000.0]


def _ctx(kube: FakeKube, clock: list[float], **settings: Any) -> Context:
    settings_ = OperatorSettings(progress_interval=30, **settings)
    return Context(settings_, kube, clock=lambda: clock[0])  # type: ignore[arg-type]


@pytest.fixture()
def reports(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each progress.json read returns the next step (the trainer moving on)."""
    reads: list[int] = []

    def read(storage: Any, layout: Any) -> RunProgress:
        reads.append(len(reads) + 1)
        return RunProgress(stage="train", step=10 * len(reads), max_steps=100,
                           updated="2026-12-03T10:00:00Z")

    monkeypatch.setattr(F.progress, "read", read)
    monkeypatch.setattr(Context, "storage", lambda self, *a: object())
    return reads


def _tick(kube: FakeKube, ctx: Context) -> None:
    F.follow(Task.from_body(kube.task), ctx)


RUNNING = {"active": 1, "ready": 1, "startTime": "2026-12-03T10:00:00Z"}


def test_progress_is_read_at_most_once_per_interval_per_task(clock: list[float],
                                                             reports: list[int]) -> None:
    kube = FakeKube(RUNNING, [])
    ctx = _ctx(kube, clock)
    _tick(kube, ctx)
    assert kube.status["progress"]["step"] == 10
    for _ in range(5):  # the timer fires every few seconds: no new read, no patch
        clock[0] += 5.0
        patches = kube.calls.count("patch status")
        _tick(kube, ctx)
        assert kube.calls.count("patch status") == patches
    clock[0] += 5.0  # 30 s since the first read
    _tick(kube, ctx)
    assert kube.status["progress"]["step"] == 20 and reports == [1, 2]
    assert "list pods" not in kube.calls  # a ready pod: nothing to diagnose


def test_no_read_while_no_pod_is_ready(clock: list[float], reports: list[int]) -> None:
    kube = FakeKube({"active": 1, "ready": 0}, [])
    _tick(kube, _ctx(kube, clock))
    assert reports == [] and "progress" not in kube.status
    assert kube.calls.count("list pods") == 1  # why is it not ready?


def _pulling(created: str) -> dict[str, Any]:
    return {"metadata": {"name": f"{JOB}-a", "creationTimestamp": created,
                         "labels": {"job-name": JOB}},
            "spec": {"containers": [{"name": "trainer", "image": "reg.example/t:1"}]},
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": "trainer", "image": "reg.example/t:1",
                "state": {"waiting": {"reason": "ImagePullBackOff",
                                      "message": "Back-off pulling image"}}}]}}


def test_a_pod_that_cannot_pull_is_shown_then_fails_the_run_and_its_job_goes(
        clock: list[float], reports: list[int]) -> None:
    kube = FakeKube({"active": 1, "ready": 0}, [_pulling("2999-01-01T00:00:00Z")])
    ctx = _ctx(kube, clock, image_pull_timeout=600)
    _tick(kube, ctx)
    trained = next(c for c in kube.status["conditions"] if c["type"] == "Trained")
    assert (trained["status"], trained["reason"]) == ("Unknown", R.IMAGE_PULL_FAILED)
    assert kube.status["phase"] == "Training" and "cannot be pulled" in kube.status["message"]
    _tick(kube, ctx)
    assert kube.events == [("Warning", R.IMAGE_PULL_FAILED)]  # once, not per tick
    kube.pods = [_pulling("2000-01-01T00:00:00Z")]  # waiting for far longer than 600 s
    _tick(kube, ctx)
    assert kube.status["phase"] == "Failed" and "delete job" in kube.calls
    trained = next(c for c in kube.status["conditions"] if c["type"] == "Trained")
    assert (trained["status"], trained["reason"]) == ("False", R.IMAGE_PULL_FAILED)


def test_a_failed_job_takes_its_reason_from_the_pods(clock: list[float],
                                                     reports: list[int]) -> None:
    pod = {"metadata": {"name": f"{JOB}-a", "creationTimestamp": "2026-12-03T10:00:00Z",
                        "labels": {"job-name": JOB}},
           "spec": {"containers": [{"name": "trainer"}]},
           "status": {"phase": "Failed", "containerStatuses": [{
               "name": "trainer", "state": {"terminated": {"exitCode": 137,
                                                           "reason": "OOMKilled"}}}]}}
    kube = FakeKube({"conditions": [{"type": "Failed", "status": "True",
                                     "reason": "BackoffLimitExceeded"}]}, [pod])
    kube.task["status"]["progress"] = {"stage": "train", "step": 40,
                                       "updated": "2026-12-03T10:00:00Z"}
    _tick(kube, _ctx(kube, clock))
    assert kube.status["phase"] == "Failed"
    assert kube.events == [("Warning", R.OOM_KILLED)]
    assert kube.status["progress"]["step"] == 40  # a failed run keeps how far it got
