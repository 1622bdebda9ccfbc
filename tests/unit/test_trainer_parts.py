"""The trainer's pure parts: record checks, the string-typed parquet copy, config localisation,
verdicts. No training here (tests/integration/test_trainer.py runs the real thing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import yaml

from finetune_contract import (BUDGET_KEY, PROGRESS_PREFIX, SEARCH_KEY, Budget, EvalPoint,
                               ProgressEvent, SearchPlan)
from finetune_trainer.errors import TrainerError
from finetune_trainer.fetch import parse_records, write_parquet
from finetune_trainer.report import verdicts
from finetune_trainer.train import CPU_SAFE, local_config


BUDGET = Budget(
    tokens_estimated_from="characters/4", train_records=120, validation_records=30,
    answer_tokens=400, record_tokens_p50=40, record_tokens_p95=60, record_tokens_max=80,
    sequence_len=128, records_over_sequence_len_max="0", sample_packing=False,
    packing_gain_estimate=1.0, micro_batch_size=4, gradient_accumulation_steps=1,
    records_per_step=4.0, epochs=3.0, max_steps=90, eval_steps=9, evaluations=10,
    early_stopping_patience=2, earliest_stop_step=27, learning_rate=5e-4, warmup_steps=4,
    eval_sample_packing=False)


def _jsonl(*records: Any) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def chat(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


@pytest.mark.parametrize("record, reason", [
    (chat(("user", "q")), "BadRoles"),                                   # no answer
    (chat(("assistant", "a")), "BadRoles"),                              # no user turn
    (chat(("user", "q"), ("assistant", "a"), ("user", "again")), "BadRoles"),
    (chat(("human", "q"), ("assistant", "a")), "BadRoles"),              # unknown role
    ({"messages": [{"role": "user"}]}, "Malformed"),
    ({"text": "x"}, "Malformed"),                                        # wrong shape
])
def test_chat_records_need_the_roles_training_needs(record: Any, reason: str) -> None:
    with pytest.raises(TrainerError) as err:
        parse_records(_jsonl(chat(("user", "ok"), ("assistant", "ok")), record), "messages", "train.jsonl")
    assert err.value.reason == reason and err.value.bad_input
    assert "train.jsonl line 2" in str(err.value) and "\n" not in str(err.value)


def test_valid_chat_and_text_records_parse() -> None:
    assert len(parse_records(_jsonl(chat(("system", "s"), ("user", "q"), ("assistant", "a"))),
                             "messages", "v")) == 1
    assert parse_records(_jsonl({"text": "hello"}), "text", "v") == [{"text": "hello"}]


@pytest.mark.parametrize("answer", ["2017-10-21", "00123", "3.50", "true", "null", "1e5"])
def test_parquet_copy_keeps_date_and_number_like_answers_as_strings(answer: str, tmp_path: Path) -> None:
    import datasets

    rec = chat(("user", "when?"), ("assistant", answer))
    path = write_parquet([rec, rec], "messages", tmp_path / "train.parquet")
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert ds[0]["messages"][1]["content"] == answer
    assert isinstance(ds[0]["messages"][1]["content"], str)


def test_local_config_points_at_local_copies_and_forces_cpu_safe_keys(tmp_path: Path) -> None:
    rendered = {"base_model": "org/model", "revision_of_model": "main", "finetune_budget": {"a": 1},
                "datasets": [{"path": "s3://b/train.jsonl", "ds_type": "json", "type": "chat_template"}],
                "test_datasets": [{"path": "s3://b/validation.jsonl", "ds_type": "json",
                                   "type": "chat_template", "split": "train"}],
                "adapter": "qlora", "bf16": "auto", "lora_mlp_kernel": True}
    cfg = local_config(rendered, model_dir=tmp_path / "m", tokenizer_dir=tmp_path / "tok",
                       train_parquet=tmp_path / "t.parquet", validation_parquet=tmp_path / "v.parquet",
                       work=tmp_path, profile="cpu")
    assert cfg["base_model"] == str(tmp_path / "m") and "revision_of_model" not in cfg
    assert cfg["tokenizer_config"] == str(tmp_path / "tok") and "finetune_budget" not in cfg
    assert cfg["datasets"][0]["path"] == str(tmp_path / "t.parquet")
    assert cfg["datasets"][0]["ds_type"] == "parquet" and cfg["test_datasets"][0]["split"] == "train"
    assert cfg["adapter"] == "lora" and all(cfg[k] == v for k, v in CPU_SAFE.items())


def _evals(*losses: float) -> list[EvalPoint]:
    return [EvalPoint(step=10 * (i + 1), eval_loss=x) for i, x in enumerate(losses)]


@pytest.mark.parametrize("losses, stopped, base, tuned, overfit, no_gain", [
    ((2.0, 1.5, 1.2, 1.1), False, 2.5, 1.1, False, False),     # still improving
    ((2.0, 1.2, 1.3, 1.4), True, 2.5, 1.2, True, False),       # rose for the patience window
    ((2.0, 1.2, 1.2, 1.2), True, 2.5, 1.2, False, False),      # plateau: stopped, not overfit
    ((2.0, 1.2, 1.3), True, 2.5, 1.2, False, False),           # shorter than the window
    ((2.0, 1.9, 1.95, 2.1), True, 1.8, 1.9, True, True),       # both
])
def test_verdicts(losses: tuple[float, ...], stopped: bool, base: float, tuned: float,
                  overfit: bool, no_gain: bool) -> None:
    v = verdicts(_evals(*losses), stopped_early=stopped, base=base, tuned=tuned, patience=2)
    assert (v.overfit, v.no_gain) == (overfit, no_gain)


@pytest.mark.parametrize(("configured", "budget", "longest", "expect"), [
    (128, {"sequence_len": 128}, 120, 128),                          # fits: unchanged
    (128, {"sequence_len": 128}, 200, 256),                          # derived: raised to fit
    (128, {"sequence_len": 512}, 200, 128),                          # axolotl override: kept
    (128, {"sequence_len": 128, "sequence_len_set": True}, 200, 128),  # spec.training: kept
    (128, {"sequence_len": 128, "sample_packing": True}, 130, 192),
    (128, {"sequence_len": 128}, 20000, 8192),                       # capped
    (9000, {"sequence_len": 9000}, 20000, 9000),                     # the cap never lowers it
])
def test_sequence_len_fits_every_measured_record(configured: int, budget: dict[str, Any],
                                                 longest: int, expect: int) -> None:
    b = BUDGET.model_copy(update=budget)
    assert b.fitted_sequence_len(configured, longest) == expect


def test_the_trainer_reads_the_budget_and_plan_the_operator_rendered(tmp_path: Path) -> None:
    """Typed on both sides: the rendered config's keys parse with the contract's models."""
    from tests.unit.test_render import render

    cfg = yaml.safe_load(yaml.safe_dump(render({"search": {"learningRates": [1e-4, 5e-4]}})))
    budget = Budget.model_validate(cfg[BUDGET_KEY])
    plan = SearchPlan.model_validate(cfg[SEARCH_KEY])
    assert budget.sequence_len == cfg["sequence_len"] and budget.max_steps == cfg["max_steps"]
    assert [c.learning_rate for c in plan.candidates] == [1e-4, 5e-4]
    assert budget.wire() == cfg[BUDGET_KEY] and plan.wire() == cfg[SEARCH_KEY]
    assert not budget.sequence_len_set
    assert Budget.model_validate(render({"sequenceLen": 512})[BUDGET_KEY]).sequence_len_set


def test_a_budget_that_is_not_the_operators_is_bad_config() -> None:
    from finetune_trainer.fetch import _ours

    with pytest.raises(TrainerError) as err:
        _ours({BUDGET_KEY: {"maxSteps": "many"}}, BUDGET_KEY, Budget, "s3://b/config.yaml")
    assert err.value.reason == "BadConfig" and err.value.bad_input
    assert "\n" not in str(err.value)
    assert _ours({}, BUDGET_KEY, Budget, "x") is None


def test_judge_keeps_exact_match_and_returns_the_answer_up_to_end_of_turn() -> None:
    from finetune_trainer.evaluate import judge

    # 0 is the end-of-turn token, 1 the pad that generate() fills a finished row with
    # (special tokens decode to nothing).
    vocab = {5: "ye", 6: "s", 7: "!", 9: "no", 0: "", 1: ""}

    def decode(ids: list[int]) -> str:
        return "".join(vocab[i] for i in ids)

    ref = [5, 6, 0]  # "yes" and its end-of-turn token
    assert judge([5, 6, 0, 1, 1], ref, 0, decode, "yes") == (True, "yes")
    assert judge([9, 0, 1], ref, 0, decode, "yes") == (False, "no")
    # Right text that runs on past the end of turn: a miss for exact match, as before.
    assert judge([5, 6, 7, 0], ref, 0, decode, "yes") == (False, "yes!")
    # No end-of-turn token at all: the answer is everything generated (the length cap).
    assert judge([5, 9, 9], ref, 0, decode, "yes") == (False, "yenono")


def test_stage_clock_adds_up_repeated_stages(capsys: pytest.CaptureFixture[str]) -> None:
    from finetune_trainer.train import StageClock

    now = [1000.0]  # an injected clock: exact sums, no sleeping
    clock = StageClock(clock=lambda: now[0])
    for stage, seconds in (("fetch", 1.5), ("train", 2.25), ("fetch", 0.5)):
        clock.enter(stage)
        now[0] += seconds
    assert clock.seconds() == {"fetch": 2.0, "train": 2.25}
    lines = capsys.readouterr().out.splitlines()
    assert [e.stage for e in map(ProgressEvent.parse, lines) if e] == ["fetch", "train", "fetch"]


def test_progress_lines_round_trip_through_the_contract(capsys: pytest.CaptureFixture[str]) -> None:
    from finetune_trainer.train import progress

    progress("eval", step=12, maxSteps=48, evalLoss=0.5)
    line = capsys.readouterr().out.strip()
    assert line.startswith(PROGRESS_PREFIX)
    event = ProgressEvent.parse(line)
    assert event is not None and (event.stage, event.step, event.max_steps) == ("eval", 12, 48)
    assert event.eval_loss == 0.5 and not event.model_extra
    assert ProgressEvent.parse("{} loss 0.3") is None
    assert ProgressEvent.parse(PROGRESS_PREFIX + "not json") is None
