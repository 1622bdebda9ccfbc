"""One budget from counted tokens: the operator renders the schedule from the characters/4
estimate, the trainer re-derives it from the answer tokens its tokenizer counts (the contract's
Budget.recount, finetune_trainer.recount), and metrics.json records both counts and which one
the budget used. Issue 17's case: a date task, 420 answer tokens estimated, 1,320 counted."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_contract import Budget, FileDigest, LengthStats, Manifest, RunLayout
from finetune_contract.budget import schedule
from finetune_operator.render import BUDGET_KEY, render_axolotl_config
from finetune_operator.spec import parse_spec
from finetune_trainer import recount
from finetune_trainer.evaluate import EvalResult
from finetune_trainer.report import build_metrics, headline

LAYOUT = RunLayout(root="s3://adapters", namespace="ml", task="dates", run_id="r0")


def _manifest(out_chars: int) -> Manifest:
    def digest(uri: str, n: int) -> FileDigest:
        return FileDigest(uri=uri, sha256="0" * 64, records=n, bytes=100 * n)

    return Manifest(run_id="r0", created_at="2026-01-01T00:00:00Z", seed=42,
                    validation_fraction=0.2, format="chat", record_shape="messages", sources=[],
                    records_read=150, records_kept=150, train_samples=120, validation_samples=30,
                    lengths=LengthStats(total_p50=80, total_p95=90, total_max=95,
                                        output_chars_train=out_chars),
                    train=digest(LAYOUT.train, 120), validation=digest(LAYOUT.validation, 30))


def _render(training: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = parse_spec({"baseModel": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct"},
                       "dataset": {"uri": "s3://tasks/t/"}, "output": {"uri": "s3://adapters/"},
                       "training": training or {}})
    # 120 answers of 10 characters: 1200/4 = 300, + one end-of-turn token each = 420 estimated
    return render_axolotl_config(spec, _manifest(1200), LAYOUT, profile="cpu")


def test_the_render_records_its_estimate_and_that_it_used_it() -> None:
    budget = Budget.model_validate(_render()[BUDGET_KEY])
    assert budget.answer_tokens == budget.answer_tokens_estimated == 420
    assert budget.answer_tokens_used == "estimated" and budget.answer_tokens_counted is None
    assert budget.schedule_set == []
    # 2000 / 420 = 4.76 epochs: 120 x 4.76 / 4 records per step = 143 steps
    assert (budget.epochs, budget.max_steps) == (4.76, 143)


def test_the_trainer_derives_the_schedule_from_the_counted_tokens(
        capsys: pytest.CaptureFixture[str]) -> None:
    config = _render()
    rendered = Budget.model_validate(config[BUDGET_KEY])
    budget, updates = recount.apply(rendered, 1320, config)
    # 2000 / 1320 < 3: clamped to 3 epochs -> 120 x 3 / 4 = 90 steps, as schedule() says
    expected = schedule(1320, 120, rendered.records_per_step)
    assert (budget.epochs, budget.max_steps) == (3.0, 90) == (expected.epochs, expected.max_steps)
    assert budget.answer_tokens == budget.answer_tokens_counted == 1320
    assert budget.answer_tokens_estimated == 420 and budget.answer_tokens_used == "counted"
    assert budget.estimated_max_steps == 143
    assert updates == {"max_steps": 90, "eval_steps": 9, "save_steps": 9,
                       "early_stopping_patience": expected.early_stopping_patience,
                       "warmup_steps": 4, "num_epochs": 3}
    assert budget.earliest_stop_step == (expected.early_stopping_patience + 1) * 9
    # The disagreement is said, not silent: in the log ...
    err = capsys.readouterr().err
    assert "answer tokens counted 1320 vs 420 estimated (x3.14): max_steps 143 -> 90" in err
    # ... in metrics.json's budget, and at the end of the termination message.
    wire = budget.wire()
    assert (wire["answerTokensEstimated"], wire["answerTokensCounted"],
            wire["answerTokensUsed"]) == (420, 1320, "counted")
    m = build_metrics(run_id="r0", base=EvalResult(2.0, 10, 30), tuned=EvalResult(0.5, 10, 30),
                      state={}, config=config, budget=wire, wall_seconds=1.0,
                      adapter_uri="s3://a/ml/dates/r0/adapter/", adapter_digest=None,
                      real_train_tokens=0)
    assert headline(m).endswith("answer tokens counted 1320 vs 420 estimated (x3.14): "
                                "max_steps 143 -> 90 from the count")


def test_counts_that_nearly_agree_still_set_the_schedule_but_raise_no_alarm(
        capsys: pytest.CaptureFixture[str]) -> None:
    config = _render()
    budget, updates = recount.apply(Budget.model_validate(config[BUDGET_KEY]), 430, config)
    # 2000 / 430 = 4.65 epochs -> 120 x 4.65 / 4 = 140 steps (143 from the estimate)
    assert budget.max_steps == updates["max_steps"] == 140 and budget.answer_tokens_used == "counted"
    assert recount.disagreement(budget) is None and capsys.readouterr().err == ""
    same, updates = recount.apply(Budget.model_validate(config[BUDGET_KEY]), 420, config)
    assert updates == {} and same.max_steps == 143


@pytest.mark.parametrize("training", [{"maxSteps": 60}, {"epochs": 5}])
def test_a_schedule_the_spec_fixed_is_kept_and_recorded_as_such(training: dict[str, Any]) -> None:
    config = _render(training)
    rendered = Budget.model_validate(config[BUDGET_KEY])
    budget, updates = recount.apply(rendered, 1320, config)
    assert updates == {} and budget.max_steps == rendered.max_steps
    assert budget.answer_tokens_used == "spec" and budget.answer_tokens_counted == 1320
    assert "kept (set in spec.training)" in (recount.disagreement(budget) or "")


def test_a_patience_the_spec_fixed_survives_the_recount() -> None:
    config = _render({"earlyStoppingPatience": 5})
    budget, updates = recount.apply(Budget.model_validate(config[BUDGET_KEY]), 1320, config)
    assert budget.max_steps == 90 and budget.early_stopping_patience == 5
    assert "early_stopping_patience" not in updates


def test_max_steps_from_spec_training_axolotl_is_kept() -> None:
    config = _render({"axolotl": {"max_steps": 77}})
    rendered = Budget.model_validate(config[BUDGET_KEY])
    budget, updates = recount.apply(rendered, 1320, config)
    assert updates == {} and budget.answer_tokens_used == "estimated"
    assert "kept (set in spec.training.axolotl)" in (recount.disagreement(budget) or "")
