"""status.progress (progress.py, transitions) and the issue-18/15 fields of status.metrics:
what a running trainer's progress.json becomes in the status, how often it is read (an
injected clock, no sleeps), what a finished run keeps, and a pod that cannot start."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_contract import (EvalPoint, ExactMatch, Metrics, RunLayout, RunProgress,
                               Verdicts)
from finetune_contract.run import Baseline, Comparison, Interval
from finetune_contract.storage import Storage
from finetune_operator import progress
from finetune_operator import reasons as R
from finetune_operator import transitions as T
from finetune_operator.spec import FineTuneTaskStatus, JobStatus
from finetune_operator.status import condition, metrics_status, status_patch

T0, T1 = "2026-12-03T10:00:00Z", "2026-12-03T10:05:00Z"
AT = T.At(generation=1, now=T1)
JOB = JobStatus(name="triage-r1", config_map="triage-r1")
REPORT = RunProgress(stage="train", step=120, max_steps=300, epoch=1.5, loss=0.8,
                     eval_history=[EvalPoint(step=50, eval_loss=1.4),
                                   EvalPoint(step=100, eval_loss=1.1)],
                     tokens_per_second=900.0, eta_seconds=95.6, resumed_from_step=100,
                     updated=T0)


def _training() -> FineTuneTaskStatus:
    at0 = T.At(generation=1, now=T0)
    return T.launched(T.start("r1", at0), JOB, "Job triage-r1 created", at0).status


def test_the_summary_keeps_what_a_person_reads() -> None:
    s = progress.summary(REPORT)
    assert s.wire() == {"stage": "train", "percent": 40.0, "step": 120, "maxSteps": 300,
                        "etaSeconds": 96, "lastEvalLoss": 1.1, "resumedFromStep": 100,
                        "updated": T0}
    early = progress.summary(RunProgress(stage="fetch", updated=T0))
    assert early.wire() == {"stage": "fetch", "updated": T0}


@pytest.mark.parametrize("text", [None, "", "not json", '{"step": 3}', '{"stage": 1}',
                                  '[1, 2]'])
def test_a_missing_or_invalid_report_is_no_progress(text: str | None) -> None:
    assert progress.parse(text) is None


def test_the_read_is_bounded_and_never_raises(tmp_path: Path) -> None:
    layout = RunLayout(root=str(tmp_path), namespace="ml", task="triage", run_id="r1")
    storage = Storage()
    assert progress.read(storage, layout) is None  # not written yet
    Path(layout.progress).parent.mkdir(parents=True)
    Path(layout.progress).write_text(REPORT.to_json())
    assert progress.read(storage, layout) == REPORT
    Path(layout.progress).write_text(REPORT.to_json() + " " * progress.MAX_BYTES)
    assert progress.read(storage, layout) is None  # valid, but over the cap: not even read
    Path(layout.progress).write_bytes(b"\xff\xfe")
    assert progress.read(storage, layout) is None


def test_at_most_one_read_per_interval_per_task() -> None:
    now = [1000.0]
    throttle = progress.Throttle(30.0, clock=lambda: now[0])
    assert throttle.due("a") and throttle.due("b")
    now[0] += 29.9
    assert not throttle.due("a") and not throttle.due("b")
    now[0] += 0.1
    assert throttle.due("a")
    assert not throttle.due("a")  # the read just now starts a new interval
    throttle.forget("a")  # the run ended: the next run's first report is read at once
    assert throttle.due("a")


def test_progress_moves_while_training_and_an_unchanged_report_sends_nothing() -> None:
    st = _training()
    moved = T.progressed(st, progress.summary(REPORT))
    patch = status_patch(st.wire(), moved)
    assert patch == {"progress": progress.summary(REPORT).wire()}
    assert T.progressed(moved, None) == moved  # no new report (throttled): unchanged
    assert status_patch(moved.wire(), T.progressed(moved, progress.summary(REPORT))) is None


def _metrics() -> Metrics:
    em = ExactMatch(
        base=0.1, tuned=0.9, samples=30, base_interval=Interval(low=0.03, high=0.26),
        tuned_interval=Interval(low=0.74, high=0.97), answer_shape="labels",
        baselines=[Baseline(name="labelPrior", label="the label prior", exact_match=0.27,
                            correct=8),
                   Baseline(name="majorityLabel", label="the majority label", exact_match=0.3,
                            correct=9)],
        comparison=Comparison(against="majorityLabel", label="the majority label",
                              reference=0.3, tuned=0.9, samples=30, tuned_only=18,
                              reference_only=0, p_value=3.8e-6, significant=True))
    return Metrics(run_id="r1", base_eval_loss=2.0, eval_loss=0.5, improvement=0.75,
                   verdicts=Verdicts(overfit=False, no_gain=False), exact_match=em,
                   adapter_uri="s3://out/ml/triage/r1/adapter/", resumed_from_step=100,
                   resume_count=1)


def test_metrics_carry_the_interval_the_best_baseline_the_headline_and_resumes() -> None:
    m = _metrics()
    s = metrics_status(m)
    assert (s.exact_match, s.exact_match_low, s.exact_match_high) == (0.9, 0.74, 0.97)
    assert (s.best_baseline, s.best_baseline_exact_match) == ("majorityLabel", 0.3)
    assert s.headline == m.exact_match.headline()  # type: ignore[union-attr]
    assert s.headline is not None and s.headline.startswith("EM 0.90 [0.74-0.97], beats the "
                                                            "majority label by +0.60")
    assert (s.resumed_from_step, s.resume_count) == (100, 1)
    plain = metrics_status(m.model_copy(update={"exact_match": None, "resumed_from_step": None,
                                                "resume_count": 0}))
    assert not {"exactMatchLow", "bestBaseline", "headline", "resumedFromStep",
                "resumeCount"} & set(plain.wire())
    assert len(str(s.wire())) < 800  # the status stays small
    assert not {"worldSize", "nodes", "processesPerNode", "sharding"} & set(s.wire())


def test_metrics_show_how_a_multi_process_run_was_spread() -> None:
    spread = metrics_status(_metrics().model_copy(update={
        "world_size": 4, "nodes": 2, "processes_per_node": 2, "sharding": "fsdp"}))
    assert {k: spread.wire()[k] for k in ("worldSize", "nodes", "processesPerNode",
                                          "sharding")} == {
        "worldSize": 4, "nodes": 2, "processesPerNode": 2, "sharding": "fsdp"}


def test_success_drops_progress_and_failure_keeps_it() -> None:
    st = T.progressed(_training(), progress.summary(REPORT))
    done = T.succeed(st, _metrics(), AT, job=JOB).status
    assert done.progress is None and "progress" in (status_patch(st.wire(), done) or {})
    failed = T.fail(st, "Trained", R.OOM_KILLED, "killed", AT).status
    assert failed.progress == st.progress  # where it got to before it failed


def test_a_pod_that_cannot_start_is_in_the_condition_and_message_once_as_an_event() -> None:
    st = _training()
    first = T.pod_waiting(st, R.IMAGE_PULL_FAILED, "image x cannot be pulled", AT)
    trained = condition(first.status, "Trained")
    assert trained is not None and (trained.status, trained.reason) == ("Unknown",
                                                                        R.IMAGE_PULL_FAILED)
    assert first.status.phase == "Training"
    assert first.status.message == "image x cannot be pulled"
    assert first.event == ("Warning", R.IMAGE_PULL_FAILED, "image x cannot be pulled")
    again = T.pod_waiting(first.status, R.IMAGE_PULL_FAILED, "image x cannot be pulled", AT)
    assert again.event is None and status_patch(first.status.wire(), again.status) is None
    started = T.running(first.status, JOB.name, AT).status
    assert started.message == f"trainer pod running (Job {JOB.name})"
    trained = condition(started, "Trained")
    assert trained is not None and trained.reason == R.RUNNING
