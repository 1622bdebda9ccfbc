"""The run's state machine (transitions.py, pure), on tables: each step and each outcome gives
the phase, the condition, the reason, Ready and the Event that the operator and the local runner
both write. Every reason a transition writes is a reasons.py constant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from finetune_contract import DropCounts, FileDigest, Manifest, Metrics, RunLayout, Verdicts
from finetune_operator import reasons as R
from finetune_operator import transitions as T
from finetune_operator.spec import FineTuneTaskStatus, JobStatus, parse_spec
from finetune_operator.status import FINAL_PHASES, condition

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
AT = T.At(generation=3, now=T1)
JOB = JobStatus(name="triage-r1", config_map="triage-r1")
LAYOUT = RunLayout(root="s3://out", namespace="ml", task="triage", run_id="r1")
SPEC = {"baseModel": {"name": "Qwen/Qwen2.5-0.5B-Instruct"}, "dataset": {"uri": "s3://data/triage/"},
        "output": {"uri": "s3://out/"}}


def _training() -> FineTuneTaskStatus:
    """A run whose Job is running: the status every outcome below starts from."""
    at0 = T.At(generation=3, now=T0)
    st = T.preparing(T.start("r1", at0), "r1", "s3://d/t/", at0).status
    st = T.prepared(st, _manifest(), LAYOUT, at0).status
    st = T.rendered(st, "ConfigMap triage-r1 holds the Axolotl config", at0).status
    return T.launched(st, JOB, "ConfigMap and Job triage-r1 created", at0).status


def _manifest() -> Manifest:
    digest = FileDigest(uri="s3://x", sha256="0" * 64, records=1, bytes=1)
    return Manifest(run_id="r1", created_at=T0, seed=1, validation_fraction=0.1, format="alpaca",
                    record_shape="messages", sources=[], records_read=120, records_kept=118,
                    train_samples=106, validation_samples=12, dropped=DropCounts(duplicate=2),
                    train=digest, validation=digest)


def _metrics(base: float, tuned: float, overfit: bool = False) -> Metrics:
    return Metrics(run_id="r1", base_eval_loss=base, eval_loss=tuned, best_step=40,
                   improvement=Metrics.relative_improvement(base, tuned), overfit_gap=0.2,
                   verdicts=Verdicts(overfit=overfit, no_gain=tuned >= base),
                   adapter_uri="s3://out/ml/triage/r1/adapter/", adapter_digest="abc")


# ---- outcomes ------------------------------------------------------------------------------

Outcome = Callable[[FineTuneTaskStatus], "T.Ending | None"]

OUTCOMES: list[tuple[str, Outcome, str, str, str, str, bool, str, str]] = [
    # (name, transition, phase, condition, its status, reason, ready, event type, result)
    ("improved", lambda st: T.succeed(st, _metrics(2.0, 1.0), AT, job=JOB),
     "Succeeded", "Evaluated", "True", R.IMPROVED, True, "Normal", R.RESULT_SUCCEEDED),
    ("overfit", lambda st: T.succeed(st, _metrics(2.0, 1.5, overfit=True), AT, job=JOB),
     "Succeeded", "Evaluated", "True", R.OVERFIT, True, "Normal", R.RESULT_SUCCEEDED),
    ("no-gain", lambda st: T.succeed(st, _metrics(2.0, 2.1), AT, job=JOB),
     "Succeeded", "Evaluated", "True", R.NO_GAIN, False, "Warning", R.RESULT_SUCCEEDED),
    ("trainer-failed", lambda st: T.fail(st, "Trained", "OutOfMemory", "axolotl ran out", AT),
     "Failed", "Trained", "False", "OutOfMemory", False, "Warning", R.RESULT_FAILED),
    ("bad-metrics", lambda st: T.fail(st, "Evaluated", R.BAD_METRICS, "no contract", AT),
     "Failed", "Evaluated", "False", R.BAD_METRICS, False, "Warning", R.RESULT_FAILED),
    ("too-few-samples", lambda st: T.data_not_prepared(st, R.TOO_FEW_SAMPLES, "only 12", AT),
     "Skipped", "DataReady", "False", R.TOO_FEW_SAMPLES, False, "Normal", R.RESULT_SKIPPED),
    ("bad-data", lambda st: T.data_not_prepared(st, R.MALFORMED, "line 3: not JSON", AT),
     "Failed", "DataReady", "False", R.MALFORMED, False, "Warning", R.RESULT_FAILED),
    ("infrequent", lambda st: T.skip_before_training(
        parse_spec({**SPEC, "infrequent": True}), st, AT),
     "Skipped", "ConfigRendered", "False", R.INFREQUENT, False, "Normal", R.RESULT_SKIPPED),
    ("skip", lambda st: T.skip(st, "DataReady", R.TOO_FEW_SAMPLES, "only 12", AT),
     "Skipped", "DataReady", "False", R.TOO_FEW_SAMPLES, False, "Normal", R.RESULT_SKIPPED),
]


@pytest.mark.parametrize(("transition", "phase", "cond_type", "value", "reason", "ready",
                          "event_type", "result"),
                         [o[1:] for o in OUTCOMES], ids=[o[0] for o in OUTCOMES])
def test_each_outcome_ends_the_run(transition: Outcome, phase: str, cond_type: str, value: str,
                                   reason: str, ready: bool, event_type: str, result: str) -> None:
    before = _training()
    ending = transition(before)
    assert ending is not None
    st = ending.status
    assert (st.phase, ending.phase, ending.result, ending.reason) == (phase, phase, result, reason)
    assert phase in FINAL_PHASES and result in R.RESULTS
    cond, ready_cond = condition(st, cond_type), condition(st, "Ready")  # type: ignore[arg-type]
    assert cond is not None and ready_cond is not None
    assert (cond.status, cond.reason) == (value, reason)
    # Ready, the phase message and the Event tell one story: the same reason and message.
    assert (ready_cond.status, ready_cond.reason) == ("True" if ready else "False", reason)
    assert ready_cond.message == st.message == ending.event.message
    assert ending.event == (event_type, reason, st.message)
    # Ready was False while training: its lastTransitionTime moves only when it turns True.
    assert ready_cond.last_transition_time == (T1 if ready else T0)
    assert st.observed_generation == ready_cond.observed_generation == 3
    assert before == _training()  # pure: the status handed in is not changed


@pytest.mark.parametrize(("base", "tuned", "overfit"), [(2.0, 1.0, False), (2.0, 1.5, True)])
def test_success_carries_the_runs_results(base: float, tuned: float, overfit: bool) -> None:
    m = _metrics(base, tuned, overfit)
    done = JOB.model_copy(update={"completion_time": T1})
    st = T.succeed(_training(), m, AT, job=done).status
    trained = condition(st, "Trained")
    assert trained is not None and (trained.status, trained.reason) == ("True", R.COMPLETED)
    assert st.metrics is not None and st.metrics.eval_loss == tuned
    assert st.adapter is not None and st.adapter.uri == m.adapter_uri
    assert st.job == done and st.data is not None  # earlier steps' fields survive


@pytest.mark.parametrize(("spec", "skipped"), [
    ({**SPEC, "infrequent": True}, True),
    (SPEC, False),
    ({**SPEC, "suspend": True}, False),  # suspend holds the run, it never skips it
])
def test_only_an_infrequent_spec_skips_before_training(spec: dict[str, Any],
                                                       skipped: bool) -> None:
    ending = T.skip_before_training(parse_spec(spec), _training(), AT)
    assert (ending is not None) == skipped
    if ending is not None:
        assert ending.event.message == T.INFREQUENT_MESSAGE


def test_too_few_samples_is_the_only_prepare_reason_that_skips() -> None:
    from finetune_operator.prepare.errors import REASONS

    phases = {r: T.data_not_prepared(_training(), r, "m", AT).phase for r in REASONS}
    assert {r for r, p in phases.items() if p == "Skipped"} == {R.TOO_FEW_SAMPLES}


# ---- steps ---------------------------------------------------------------------------------

Move = Callable[[FineTuneTaskStatus], "T.Step"]

STEPS: list[tuple[str, Move, str, tuple[str, str, str], str | None]] = [
    # (name, transition, phase after, (condition, status, reason), Event reason)
    ("preparing", lambda st: T.preparing(st, "r1", "s3://d/t/", AT),
     "Preparing", ("DataReady", "Unknown", R.PREPARING), R.RUN_STARTED),
    ("prepared", lambda st: T.prepared(st, _manifest(), LAYOUT, AT),
     "Pending", ("DataReady", "True", R.PREPARED), R.DATA_READY),
    ("waiting-for-secret", lambda st: T.waiting_for_secret(st, "ml", "s3-creds", AT),
     "Pending", ("DataReady", "False", R.SECRET_NOT_FOUND), None),
    ("retrying", lambda st: T.retrying(st, "DataReady", "S3 unreachable; retrying in 15s", AT),
     "Pending", ("DataReady", "Unknown", R.RETRYING), None),
    ("rendered", lambda st: T.rendered(st, "config written", AT),
     "Pending", ("ConfigRendered", "True", R.RENDERED), None),
    ("launched", lambda st: T.launched(st, JOB, "Job created", AT),
     "Training", ("JobCreated", "True", R.CREATED), R.JOB_CREATED),
    ("suspended-before-launch", lambda st: T.suspended_before_launch(st, AT),
     "Suspended", ("JobCreated", "False", R.SUSPENDED), R.SUSPENDED),
    ("running", lambda st: T.running(st, "triage-r1", AT),
     "Pending", ("Trained", "Unknown", R.RUNNING), None),
]


@pytest.mark.parametrize(("move", "phase", "cond", "event_reason"), [s[1:] for s in STEPS],
                         ids=[s[0] for s in STEPS])
def test_each_step_sets_its_condition(move: Move, phase: str, cond: tuple[str, str, str],
                                      event_reason: str | None) -> None:
    before = T.start("r1", T.At(generation=3, now=T0))
    step = move(before)
    got = condition(step.status, cond[0])  # type: ignore[arg-type]
    assert got is not None and (got.type, got.status, got.reason) == cond
    assert got.observed_generation == 3 and got.last_transition_time == T1
    assert step.status.phase == phase
    assert (step.event.reason if step.event else None) == event_reason
    if step.event is not None:
        assert step.event.type == "Normal"
    ready = condition(step.status, "Ready")
    assert ready is not None and (ready.status, ready.reason) == ("False", step.status.phase)
    assert before == T.start("r1", T.At(generation=3, now=T0))


@pytest.mark.parametrize(("suspend", "phase", "message"), [
    (True, "Suspended", "Job triage-r1 suspended"), (False, "Training", "Job triage-r1 resumed")])
def test_a_suspend_flip_moves_a_running_job(suspend: bool, phase: str, message: str) -> None:
    step = T.job_suspended(_training(), "triage-r1", suspend, AT)
    assert step.status.phase == phase and step.status.message == message
    assert step.event == ("Normal", phase, message)
    ready = condition(step.status, "Ready")
    assert ready is not None and (ready.reason, ready.message) == (phase, message)


def test_every_reason_a_transition_writes_is_a_constant() -> None:
    written = {c.reason for _, move, *_ in STEPS for c in move(_training()).status.conditions}
    for _, outcome, *_ in OUTCOMES:
        ending = outcome(_training())
        assert ending is not None
        written |= {c.reason for c in ending.status.conditions} | {ending.event.reason}
    assert written <= R.ALL
