"""Phase and condition transitions (pure): keyed by type, stable times, minimal patches."""

from __future__ import annotations

import pytest

from finetune_contract import Metrics, Verdicts
from finetune_operator.spec import MetricsStatus
from finetune_operator.status import (CONDITION_ORDER, condition, evaluation, load, new_run,
                                      set_condition, status_patch, with_phase)

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"


def test_conditions_are_keyed_by_type_in_fixed_order() -> None:
    st = new_run("r1", 1, T0)
    st = set_condition(st, "JobCreated", "True", "Created", "job", generation=1, now=T1)
    st = set_condition(st, "DataReady", "True", "Prepared", "ok", generation=1, now=T1)
    st = set_condition(st, "DataReady", "True", "Prepared", "ok again", generation=1, now=T2)
    types = [c.type for c in st.conditions]
    assert types == sorted(types, key=CONDITION_ORDER.index)
    assert types.count("DataReady") == 1


@pytest.mark.parametrize(("first", "second", "moves"), [
    ("Unknown", "Unknown", False),
    ("Unknown", "True", True),
    ("True", "True", False),
    ("True", "False", True),
])
def test_last_transition_time_moves_only_on_status_change(first: str, second: str,
                                                          moves: bool) -> None:
    st = set_condition(new_run("r1", 1, T0), "DataReady", first, "A", "m1", generation=1, now=T1)
    st = set_condition(st, "DataReady", second, "B", "m2", generation=2, now=T2)
    cond = condition(st, "DataReady")
    assert cond is not None
    assert cond.last_transition_time == (T2 if moves else T1)
    assert (cond.reason, cond.message, cond.observed_generation) == ("B", "m2", 2)


def test_patch_is_none_when_nothing_changed() -> None:
    st = with_phase(new_run("r1", 3, T0), "Preparing", "preparing", generation=3)
    stored = st.wire()
    assert status_patch(stored, load(stored)) is None
    assert status_patch({**stored, "kopf": {"x": 1}}, st) is None  # foreign keys untouched


def test_patch_carries_only_changes_and_nulls_dropped_fields() -> None:
    old = with_phase(new_run("r1", 1, T0), "Succeeded", "done", generation=1,
                     metrics=MetricsStatus(evalLoss=1.0))
    nxt = new_run("r2", 2, T1)
    patch = status_patch(old.wire(), nxt)
    assert patch is not None
    assert patch["runId"] == "r2" and patch["phase"] == "Pending"
    assert patch["metrics"] is None  # a new run shows none of the old run's results
    assert "data" not in patch  # never set: nothing to delete


def test_load_ignores_foreign_and_bad_status() -> None:
    assert load({"phase": "Training", "kopf": {"progress": {}}}).phase == "Training"
    assert load({"phase": "NotAPhase"}).phase == "Pending"
    assert load(None).phase == "Pending"


def _metrics(base: float, tuned: float, overfit: bool = False) -> Metrics:
    return Metrics(run_id="r1", base_eval_loss=base, eval_loss=tuned,
                   improvement=Metrics.relative_improvement(base, tuned), overfit_gap=0.2,
                   verdicts=Verdicts(overfit=overfit, no_gain=tuned >= base),
                   adapter_uri="s3://a/b/")


@pytest.mark.parametrize(("metrics", "reason", "ready", "advice"), [
    (_metrics(2.0, 1.0), "Improved", True, "+50.0%"),
    (_metrics(2.0, 1.5, overfit=True), "Overfit", True, "fewer epochs"),
    (_metrics(2.0, 2.1), "NoGain", False, "add samples"),
])
def test_verdicts_say_what_to_try(metrics: Metrics, reason: str, ready: bool, advice: str) -> None:
    got_reason, message, got_ready = evaluation(metrics)
    assert (got_reason, got_ready) == (reason, ready)
    assert advice in message and "\n" not in message


def test_ready_follows_the_phase_until_the_run_ends() -> None:
    st = with_phase(new_run("r1", 1, T0), "Training", "Job created", generation=1, now=T1)
    ready = condition(st, "Ready")
    assert ready is not None
    assert (ready.status, ready.reason, ready.message) == ("False", "Training", "Job created")
    assert ready.last_transition_time == T0  # still False: the time stays
    done = set_condition(st, "Ready", "True", "Improved", "ok", generation=1, now=T2)
    done = with_phase(done, "Succeeded", "ok", generation=1, now=T2)
    assert condition(done, "Ready").status == "True"  # type: ignore[union-attr]


def test_a_search_winner_reaches_the_status_and_the_message() -> None:
    from finetune_contract import SearchCandidate, SearchReport
    from finetune_operator.status import metrics_status

    m = _metrics(2.0, 1.0).model_copy(update={"search": SearchReport(
        fit_samples=96, selection_samples=24, selection_sha256="0" * 64, chosen=1,
        candidates=[SearchCandidate(learning_rate=r, lora_r=8, lora_alpha=16, selection_loss=x)
                    for r, x in ((1e-4, 0.9), (5e-4, 0.4))])})
    st = metrics_status(m)
    assert (st.chosen_learning_rate, st.chosen_lora_r) == (5e-4, 8)
    assert "search chose lr 0.0005, r 8 of 2 on a 24-record train slice" in evaluation(m)[1]
    assert metrics_status(_metrics(2.0, 1.0)).chosen_learning_rate is None
