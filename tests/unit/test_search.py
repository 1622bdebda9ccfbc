"""spec.training.search: the spec's bounds, the rendered plan, and the trainer's pure parts
(carving the selection slice, picking the winner). The real search run is in
tests/integration/test_trainer.py."""

from __future__ import annotations

import math
from typing import Any

import pytest

from finetune_contract import SearchCandidate
from finetune_operator.render import SEARCH_KEY, explain_axolotl_config
from finetune_operator.spec import SpecError
from finetune_trainer.search import carve_selection, prompt_key, winner
from finetune_trainer.train import local_config
from tests.unit.test_render import LAYOUT, manifest, render, spec


@pytest.mark.parametrize("search, error", [
    ({"learningRates": [1e-4]}, "2 to 6 candidates"),
    ({}, "2 to 6 candidates"),
    ({"learningRates": [1e-4, 1e-4]}, "got 1"),                  # duplicates are one candidate
    ({"learningRates": [1e-4, 2e-4, 3e-4], "loraRanks": [8, 16, 32]}, "got 9"),
    ({"learningRates": [1e-4, 1.5]}, "learningRates.1"),
    ({"loraRanks": [0, 8]}, "loraRanks.0"),
    ({"learningRates": [1e-4, 2e-4], "selectionFraction": 0.9}, "selectionFraction"),
    ({"learningRates": [1e-4, 2e-4], "steps": 3}, "steps"),      # typo: unknown keys fail
])
def test_search_spec_is_bounded(search: dict[str, Any], error: str) -> None:
    with pytest.raises(SpecError) as err:
        spec({"search": search})
    assert error in str(err.value) and "\n" not in str(err.value)


def test_search_plan_is_rates_times_ranks_with_alpha_kept_in_ratio() -> None:
    cfg = render({"search": {"learningRates": [2e-4, 1e-3], "loraRanks": [8, 32]},
                  "lora": {"r": 16, "alpha": 32}})
    plan = cfg[SEARCH_KEY]
    assert plan["selectionRecords"] == 24 and plan["seed"] == 42          # 0.2 x 120
    assert [(c["learningRate"], c["loraR"], c["loraAlpha"]) for c in plan["candidates"]] == [
        (2e-4, 8, 16), (1e-3, 8, 16), (2e-4, 32, 64), (1e-3, 32, 64)]


def test_search_on_ranks_only_uses_the_derived_learning_rate() -> None:
    cfg = render({"search": {"loraRanks": [4, 8]}})
    rates = {c["learningRate"] for c in cfg[SEARCH_KEY]["candidates"]}
    assert rates == {cfg["learning_rate"]}


def test_no_search_renders_no_plan() -> None:
    assert SEARCH_KEY not in render()


def test_too_small_a_selection_slice_is_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError) as err:
        render({"search": {"learningRates": [1e-4, 2e-4], "selectionFraction": 0.05}})
    assert "spec.training.search" in str(err.value) and "6-record" in str(err.value)


def test_search_is_explained() -> None:
    s = spec({"search": {"learningRates": [1e-4, 5e-4]}})
    why = dict(explain_axolotl_config(s, manifest(), LAYOUT, profile="cpu"))
    assert "validation split" in why[SEARCH_KEY] and "96 train records" in why[SEARCH_KEY]


def test_our_keys_never_reach_axolotl(tmp_path: Any) -> None:
    cfg = render({"search": {"learningRates": [1e-4, 5e-4]}})
    local = local_config(cfg, model_dir=tmp_path, tokenizer_dir=tmp_path,
                         train_parquet=tmp_path / "t.parquet", validation_parquet=tmp_path / "v.parquet",
                         work=tmp_path, profile="cpu")
    assert not [k for k in local if k.startswith("finetune_")]


def _chat(prompt: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def test_selection_keeps_prompt_groups_whole_and_is_order_independent() -> None:
    records = [_chat(f"q{i % 40}", f"a{i}") for i in range(100)]   # 40 prompts, 2-3 answers each
    fit, sel = carve_selection(records, 20, seed=7, shape="messages")
    assert sorted(fit + sel) == list(range(100)) and 20 <= len(sel) <= 22
    fit_prompts = {prompt_key(records[i], "messages") for i in fit}
    assert not fit_prompts & {prompt_key(records[i], "messages") for i in sel}
    shuffled = list(reversed(records))
    _, sel2 = carve_selection(shuffled, 20, seed=7, shape="messages")
    assert sorted(shuffled[i]["messages"][1]["content"] for i in sel2) == sorted(
        records[i]["messages"][1]["content"] for i in sel)


def test_selection_depends_on_the_seed() -> None:
    records = [{"text": f"record {i}"} for i in range(100)]
    assert carve_selection(records, 20, 1, "text")[1] != carve_selection(records, 20, 2, "text")[1]


def _cand(loss: float) -> SearchCandidate:
    return SearchCandidate(learning_rate=1e-4, lora_r=8, lora_alpha=16, selection_loss=loss)


@pytest.mark.parametrize("losses, chosen", [
    ([0.5, 0.2, 0.3], 1), ([math.nan, 0.9], 1), ([0.1, 0.1], 0)])
def test_the_lowest_selection_loss_wins_and_nan_never_does(losses: list[float], chosen: int) -> None:
    assert winner([_cand(x) for x in losses]) == chosen


def test_a_search_report_must_name_one_of_its_candidates() -> None:
    from pydantic import ValidationError

    from finetune_contract import SearchReport

    with pytest.raises(ValidationError, match="not one of 1 candidates"):
        SearchReport(fit_samples=1, selection_samples=1, selection_sha256="0", chosen=1,
                     candidates=[_cand(0.1)])
