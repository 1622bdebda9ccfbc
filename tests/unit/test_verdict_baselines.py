"""Issue 18's case end to end without a model: a 4-label task whose labels are random (nothing to
learn) and a task the tuned model clearly learned. Real train/validation records give the real
baselines (finetune_trainer.baselines); the base and tuned models are per-record correctness
vectors standing in for the evaluator's; metrics.json comes from report.build_metrics, the
status, its Event and the local table from the operator's own transitions."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from finetune_contract import Metrics
from finetune_dev.local_status import cells, row_for
from finetune_operator import reasons as R
from finetune_operator import transitions as T
from finetune_operator.status import condition, new_run
from finetune_trainer.baselines import baselines
from finetune_trainer.evaluate import EvalResult
from finetune_trainer.report import build_metrics, headline

LABELS = ["billing", "bug", "login", "other"]
AT = T.At(generation=1, now="2026-01-01T00:00:00Z")


def _records(n: int, seed: int) -> list[dict]:
    """Tickets whose label is drawn at random, independent of the text."""
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": f"ticket {i}: {rng.random():.6f}"},
                          {"role": "assistant", "content": rng.choice(LABELS)}]}
            for i in range(n)]


def _result(loss: float, correct: list[bool]) -> EvalResult:
    return EvalResult(loss=loss, tokens=100, records=len(correct),
                      exact_match=sum(correct) / len(correct), correct=correct)


def _metrics(tuned_correct: list[bool], train: list[dict], validation: list[dict]) -> Metrics:
    base = _result(3.29, [False] * len(validation))  # the base does not know the answer format
    return build_metrics(
        run_id="r1", base=base, tuned=_result(0.74, tuned_correct), state={}, config={},
        budget={}, wall_seconds=1.0, adapter_uri="s3://o/ns/t/r1/adapter/", adapter_digest=None,
        real_train_tokens=0, baselines=baselines(train, validation))


def _guesses(validation: list[dict]) -> list[str]:
    rng = random.Random(9)  # 9 of 30 right: 0.30, chance for 4 labels, as in the issue
    return [rng.choice(LABELS) for _ in validation]


def _majority(validation: list[dict]) -> list[str]:
    return ["bug"] * len(validation)  # a model collapsed onto the train split's majority label


@pytest.mark.parametrize("answers", [_guesses, _majority], ids=["guesses", "majority"])
def test_random_labels_get_no_gain_naming_the_majority_or_prior_baseline(
        answers: Callable[[list[dict]], list[str]]) -> None:
    records = _records(150, seed=18)
    train, validation = records[:120], records[120:]
    # A tuned model that learned the format only: its label is right by chance.
    tuned = [g == r["messages"][-1]["content"] for g, r in zip(answers(validation), validation)]
    m = _metrics(tuned, train, validation)
    em = m.exact_match
    assert em is not None and em.answer_shape == "labels" and em.comparison is not None
    assert {b.name for b in em.baselines} == {"majorityLabel", "labelPrior"}
    assert m.improvement == pytest.approx((3.29 - 0.74) / 3.29)  # the loss still "improved"
    assert m.verdicts.no_gain
    c = em.comparison
    assert c.against in {"majorityLabel", "labelPrior"} and not c.significant
    assert c.samples == 30 and c.p_value >= 0.05
    lead = f"no gain over {c.label} ({c.tuned:.2f} vs {c.reference:.2f} on 30 records"
    # The status (what transitions.succeed writes), its Event, the table and the trainer's
    # termination message all lead with it.
    ending = T.succeed(new_run("r1", 1, AT.now), m, AT, job=None)
    assert (ending.phase, ending.reason) == ("Succeeded", R.NO_GAIN)
    assert ending.status.message.startswith(lead), ending.status.message
    assert "more or cleaner samples" in ending.status.message
    assert ending.event.message == ending.status.message and ending.event.type == "Warning"
    ready = condition(ending.status, "Ready")
    assert ready is not None and ready.status == "False"
    assert headline(m).startswith(lead)
    row = cells(row_for("t", ending.status, None, m, None))
    assert row[4].startswith(f"EM {c.tuned:.2f} [") and row[5].startswith(c.label)
    assert row[6] == "no gain"


def test_a_learned_task_beats_every_baseline_with_an_interval_above_them() -> None:
    records = _records(150, seed=18)
    train, validation = records[:120], records[120:]
    tuned = [i % 10 != 0 for i in range(30)]  # 27 of 30 right
    m = _metrics(tuned, train, validation)
    em = m.exact_match
    assert em is not None and em.comparison is not None and em.tuned_interval is not None
    assert not m.verdicts.no_gain and em.comparison.significant
    assert (em.tuned_interval.low, em.tuned_interval.high) == (0.7438, 0.9654)
    assert all(em.tuned_interval.low > b.exact_match for b in em.baselines)
    ending = T.succeed(new_run("r1", 1, AT.now), m, AT, job=None)
    assert ending.reason == R.IMPROVED
    assert ending.status.message.startswith(
        f"EM 0.90 [0.74-0.97], beats {em.comparison.label} by "
        f"{0.9 - em.comparison.reference:+.2f} (0.90 vs {em.comparison.reference:.2f} on 30 "
        "records, p"), ending.status.message
    assert "eval loss 0.7400 vs base 3.2900 (+77.5%)" in ending.status.message


def test_without_exact_match_the_loss_rule_and_message_stay() -> None:
    base = EvalResult(loss=2.0, tokens=100, records=30)
    tuned = EvalResult(loss=2.1, tokens=100, records=30)
    m = build_metrics(run_id="r1", base=base, tuned=tuned, state={}, config={}, budget={},
                      wall_seconds=1.0, adapter_uri="s3://o/", adapter_digest=None,
                      real_train_tokens=0)
    assert m.exact_match is None and m.verdicts.no_gain
    assert headline(m).startswith("eval loss 2.0000 -> 2.1000")
