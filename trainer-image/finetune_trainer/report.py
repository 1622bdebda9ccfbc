"""metrics.json (contract.Metrics) from the evaluations and Axolotl's trainer state, verdicts,
and the upload in the order the operator relies on: adapter, then metrics.json, then COMPLETE.

Verdicts (issue 3/7/18): `overfit` when early stopping fired and the eval loss at the end sits
above the best by more than 1% (it rose for the patience window rather than plateaued). `noGain`,
with exact match: the tuned model does not beat the base model and every trivial baseline by the
paired test of baselines.py (a lower loss than the base's is almost free: the base does not know
the answer format); without exact match (long answers): tuned loss not below the base's.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path
from typing import Any

from finetune_contract import (Budget, EvalPoint, ExactMatch, Metrics, RunLayout, TrainPoint,
                               Verdicts)
from finetune_contract.run import Baseline, Comparison
from finetune_contract.scores import TaskScores
from finetune_contract.storage import Storage

from . import baselines as B
from .recount import disagreement

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
OVERFIT_RISE = 0.01


def versions() -> dict[str, str]:
    out = {}
    for name in ("axolotl", "torch", "transformers", "peft", "datasets"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def histories(state: dict[str, Any]) -> tuple[list[EvalPoint], list[TrainPoint]]:
    evals, trains = [], []
    for entry in state.get("log_history", []):
        if "eval_loss" in entry:
            evals.append(EvalPoint(step=int(entry.get("step", 0)), epoch=entry.get("epoch"),
                                   eval_loss=float(entry["eval_loss"])))
        elif "loss" in entry:
            trains.append(TrainPoint(step=int(entry.get("step", 0)), epoch=entry.get("epoch"),
                                     loss=float(entry["loss"])))
    return evals, trains


def verdicts(evals: list[EvalPoint], *, stopped_early: bool, base: float, tuned: float,
             patience: int, comparison: Comparison | None = None) -> Verdicts:
    overfit = False
    if evals and stopped_early:
        best = min(e.eval_loss for e in evals)
        after = evals[[e.eval_loss for e in evals].index(best) + 1:]
        overfit = len(after) >= max(patience, 1) and after[-1].eval_loss > best * (1 + OVERFIT_RISE)
    no_gain = not comparison.significant if comparison else not tuned < base
    return Verdicts(overfit=overfit, no_gain=no_gain)


Scored = tuple[B.Shape, list[Baseline], dict[str, list[bool]]]


def exact_match(base: Any, tuned: Any, scored: Scored | None,
                scores: TaskScores | None = None) -> ExactMatch | None:
    """Exact match of base and tuned with their intervals, the baselines (`scored`, from
    baselines.baselines on the same validation records), the paired comparison and the
    task-aware `scores` (scoring.task_scores)."""
    if base.exact_match is None or tuned.exact_match is None:
        return None
    n = tuned.records
    shape, found, per_record = scored or (None, [], {})
    comparison = None
    if base.correct is not None and tuned.correct is not None:
        comparison = B.compare(tuned.correct, {"base": base.correct, **per_record})
    return ExactMatch(
        base=base.exact_match, tuned=tuned.exact_match, samples=n,
        base_interval=B.wilson(round(base.exact_match * n), n),
        tuned_interval=B.wilson(round(tuned.exact_match * n), n),
        answer_shape=shape, baselines=found, comparison=comparison, scores=scores)


def headline(m: Metrics) -> str:
    """The termination message's summary: the comparison first, the loss after it, and the
    budget's token counts when the estimate and the count disagree."""
    loss = (f"eval loss {m.base_eval_loss:.4f} -> {m.eval_loss:.4f} ({m.improvement:+.1%}), "
            f"best step {m.best_step}")
    lead = m.exact_match.headline() if m.exact_match else None
    text = f"{lead}; {loss}" if lead else loss
    try:
        note = disagreement(Budget.model_validate(m.budget)) if m.budget.get("maxSteps") else None
    except ValueError:
        note = None
    return f"{text}; {note}" if note else text


def build_metrics(*, run_id: str, base: Any, tuned: Any, state: dict[str, Any], config: dict[str, Any],
                  budget: dict[str, Any], wall_seconds: float, adapter_uri: str,
                  adapter_digest: str | None, real_train_tokens: int,
                  search: Any = None, stage_seconds: dict[str, float] | None = None,
                  baselines: Scored | None = None, scores: TaskScores | None = None) -> Metrics:
    evals, trains = histories(state)
    # Axolotl evaluates at step 0 too: that is the base model on its packed eval, not training.
    evals = [e for e in evals if e.step > 0] or evals
    max_steps = int(config.get("max_steps") or state.get("max_steps") or 0)
    global_step = int(state.get("global_step") or 0)
    stopped_early = bool(max_steps and global_step < max_steps)
    patience = int(config.get("early_stopping_patience") or 0)
    best_eval = min(evals, key=lambda e: e.eval_loss) if evals else None
    computed = _last(state, "tokens/total")
    epochs = float(state.get("epoch") or 0.0)
    efficiency = None
    if computed and real_train_tokens:
        # real tokens seen = epochs run x real tokens of the split; computed = token slots filled
        efficiency = round(min(1.0, epochs * real_train_tokens / computed), 4)
    train_summary = next((e for e in reversed(state.get("log_history", [])) if "train_loss" in e), {})
    exact = exact_match(base, tuned, baselines, scores)
    return Metrics(
        run_id=run_id, base_eval_loss=base.loss, eval_loss=tuned.loss,
        improvement=Metrics.relative_improvement(base.loss, tuned.loss),
        train_loss=train_summary.get("train_loss", trains[-1].loss if trains else None),
        best_step=best_eval.step if best_eval else None, epochs_run=round(epochs, 4),
        stopped_early=stopped_early,
        overfit_gap=round(evals[-1].eval_loss - best_eval.eval_loss, 6) if best_eval else 0.0,
        eval_history=evals, train_history=trains, validation_samples=tuned.records,
        trained_tokens=int(epochs * real_train_tokens) if real_train_tokens else None,
        packing_efficiency=efficiency, wall_seconds=round(wall_seconds, 2), versions=versions(),
        exact_match=exact,
        verdicts=verdicts(evals, stopped_early=stopped_early, base=base.loss, tuned=tuned.loss,
                          patience=patience, comparison=exact.comparison if exact else None),
        adapter_uri=adapter_uri, adapter_digest=adapter_digest, budget=budget, search=search,
        stage_seconds=stage_seconds or {},
    )


def _last(state: dict[str, Any], key: str) -> int | None:
    for entry in reversed(state.get("log_history", [])):
        if key in entry:
            return int(entry[key])
    return None


def adapter_digest(adapter_dir: Path) -> str:
    with (adapter_dir / "adapter_model.safetensors").open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def upload(storage: Storage, layout: RunLayout, adapter_dir: Path, metrics: Metrics,
           extra: dict[str, bytes] | None = None) -> None:
    """`extra` run files (URIs of `layout`) and the adapter files first, metrics.json next,
    COMPLETE last: a reader never sees a half run. Adapter files stream from disk (multipart
    when large), never whole in memory."""
    for uri, data in (extra or {}).items():
        storage.write_bytes(uri, data)
    for name in ADAPTER_FILES:
        path = adapter_dir / name
        if path.is_file():
            storage.upload_file(path, layout.adapter + name)
    storage.write_text(layout.metrics, metrics.to_json(), "application/json")
    storage.write_text(layout.complete_marker, metrics.run_id + "\n")
