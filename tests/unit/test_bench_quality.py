"""bench-quality's verdict logic without training: the target (EM or its task-aware equivalent,
never below the hand config, loss below base), issue 18's two checks (random labels end noGain
naming a baseline; a learnable family's EM interval clears every baseline) and what --check
fails on. Metrics come from report.build_metrics on per-record correctness, as a run's would."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from finetune_dev import task_families as F
from finetune_trainer import scoring
from finetune_trainer.baselines import baselines
from finetune_trainer.evaluate import EvalResult
from finetune_trainer.report import build_metrics

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_quality.py"


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_quality", BENCH)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _chat(record: dict[str, Any]) -> dict[str, Any]:
    if "messages" in record:
        return record
    return {"messages": [{"role": "user", "content": record["input"]},
                         {"role": "assistant", "content": record["output"]}]}


def _refs(task: str) -> list[str]:
    return [_chat(r)["messages"][-1]["content"] for r in F.generate(task).records[120:]]


def _result(task: str, answers: list[str] | None = None, tuned_loss: float = 0.1,
            base_right: bool = False) -> Any:
    """A finished run whose tuned model answers `answers` (default: every reference); the base
    model answers nothing right unless `base_right`."""
    records = [_chat(r) for r in F.generate(task).records]
    train, validation = records[:120], records[120:]
    refs = [r["messages"][-1]["content"] for r in validation]
    answers = refs if answers is None else answers
    base = (EvalResult(3.0, 10, 30, 1.0, [True] * 30, refs) if base_right else
            EvalResult(3.0, 10, 30, 0.0, [False] * 30, ["?"] * 30))
    hits = [a == r for a, r in zip(answers, refs)]
    tuned = EvalResult(tuned_loss, 10, 30, sum(hits) / 30, hits, answers)
    m = build_metrics(run_id="r", base=base, tuned=tuned, state={}, config={}, budget={},
                      wall_seconds=1.0, adapter_uri="s3://o/b/t/r/adapter/", adapter_digest=None,
                      real_train_tokens=0, baselines=baselines(train, validation),
                      scores=scoring.task_scores(train, validation, base.answers or [], answers))
    return SimpleNamespace(metrics=m, status=SimpleNamespace(message=""), wall_s=1.0)


def test_a_learnable_family_meets_the_target_and_clears_every_baseline() -> None:
    b = _bench()
    run = _result("product-routing")
    assert b.target_verdict(run, None) == "met"
    assert b.above_baselines(run.metrics) is True
    # Always the majority label: its interval's lower bound sits below that baseline's score.
    majority = _result("product-routing", ["grocery"] * 30)
    assert b.above_baselines(majority.metrics) is False


def test_the_random_label_task_must_end_no_gain_naming_a_baseline() -> None:
    b = _bench()
    rng = random.Random(3)
    guesses = [rng.choice(F.RANDOM_LABELS) for _ in range(30)]
    run = _result("random-labels", guesses)
    assert run.metrics.verdicts.no_gain
    assert b.random_check(run).startswith("met (no gain over the ")
    # No gain over the base model alone names no baseline: the check is not met.
    base_knew = _result("random-labels", guesses, base_right=True)
    assert base_knew.metrics.exact_match.comparison.against == "base"
    assert b.random_check(base_knew) == "MISS: no baseline named"
    # A random-label run the verdict calls a gain fails the check.
    perfect = _result("random-labels")
    assert b.random_check(perfect) == "MISS: not noGain"
    tasks = [F.generate("random-labels"), F.generate("product-routing")]
    results = {("random-labels", "defaults"): perfect,
               ("product-routing", "defaults"): _result("product-routing")}
    assert b.failed_checks(tasks, results) == ["random-labels"]


def test_the_task_aware_equivalent_counts_and_a_miss_is_named() -> None:
    b = _bench()
    refs = _refs("bilingual-polite")
    # Every other answer one character off (~45 characters each): EM 0.5, similarity ~0.99.
    close = [r if i % 2 else r[:-1] + "!" for i, r in enumerate(refs)]
    run = _result("bilingual-polite", close)
    em = run.metrics.exact_match
    assert em.tuned == 0.5 and em.scores.tuned.headline >= 0.95 and not run.metrics.verdicts.no_gain
    assert b.target_verdict(run, None) == "met"
    worse = _result("bilingual-polite", ["?"] * 30, tuned_loss=5.0)
    verdict = b.target_verdict(worse, None)
    assert verdict == "MISS: EM<0.95, loss>=base (verdict noGain)"
    routing = _refs("product-routing")
    one_off = _result("product-routing", ["grocery"] + routing[1:])
    assert "below hand" in b.target_verdict(one_off, _result("product-routing"))
    # A perfect score that no paired test backs (the base was perfect too) is not a target met.
    known = _result("product-routing", base_right=True)
    assert known.metrics.exact_match.tuned == 1.0 and known.metrics.verdicts.no_gain
    assert b.target_verdict(known, None) == "MISS: noGain"
