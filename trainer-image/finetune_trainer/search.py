"""spec.training.search: train each candidate, choose on a slice of the train split, keep the winner.

Why a slice of the train split and not the validation split: the validation split is the
held-out proof the status reports; choosing on it would make the reported gain optimistic. So
each candidate trains on the train split minus the slice and early-stops on the slice (Axolotl's
eval), our evaluator (the code that scores base and tuned) scores its best checkpoint on the
slice, and the lowest loss wins. Only the winner ever meets the validation split. Records that
share a prompt stay on one side, as in the operator's split, so the slice never holds a prompt
a candidate trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_contract import SEARCH_KEY, SearchCandidate, SearchPlan, SearchReport

from . import evaluate, train
from .errors import bad_input
from .fetch import log, write_parquet


def prompt_key(record: dict[str, Any], shape: str) -> str:
    """What must not be on both sides: the prompt (a completion record is all prompt)."""
    if shape == "text":
        return str(record["text"])
    return json.dumps(record["messages"][:-1], sort_keys=True, ensure_ascii=False)


def carve_selection(records: list[dict[str, Any]], size: int, seed: int,
                    shape: str) -> tuple[list[int], list[int]]:
    """(fit, selection) record indices: whole prompt groups, ranked by a seeded hash, until the
    selection holds at least `size` records. Independent of record order and PYTHONHASHSEED."""
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(prompt_key(record, shape), []).append(i)
    ranked = sorted(groups, key=lambda k: hashlib.sha256(f"{seed}\0{k}".encode()).hexdigest())
    chosen: set[int] = set()
    for key in ranked:
        if len(chosen) >= size:
            break
        chosen.update(groups[key])
    fit = [i for i in range(len(records)) if i not in chosen]
    return fit, sorted(chosen)


def jsonl(records: list[dict[str, Any]]) -> bytes:
    """The records in the prepared splits' line form (prepare/serialize.py), so each line of the
    slice is byte-identical to its line in train.jsonl."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n"
                   for r in records).encode("utf-8")


def winner(candidates: list[SearchCandidate]) -> int:
    """Index of the lowest selection loss (a NaN loss never wins)."""
    def key(i: int) -> float:
        loss = candidates[i].selection_loss
        return math.inf if math.isnan(loss) else loss
    return min(range(len(candidates)), key=key)


@dataclass
class SearchOutcome:
    result: train.TrainResult
    config: dict[str, Any]
    report: SearchReport
    fit_indices: list[int]
    selection_jsonl: bytes


def run_search(plan: SearchPlan, config: dict[str, Any], *, records: list[dict[str, Any]],
               shape: str, model_dir: Path, tokenizer: Any, tokenizer_dir: Path, work: Path,
               profile: str, earliest_stop_step: int = 0,
               scoring: evaluate.Scoring = evaluate.MERGED) -> SearchOutcome:
    """Train every candidate of `plan` (the rendered finetune_search) and return the winner;
    each candidate stops early no sooner than the budget's `earliest_stop_step` and is scored
    as base and tuned are (`scoring`)."""
    candidates_plan = plan.candidates
    if len(candidates_plan) < 2:
        raise bad_input("BadConfig", f"{SEARCH_KEY} needs at least 2 candidates")
    fit_idx, sel_idx = carve_selection(records, plan.selection_records, plan.seed, shape)
    if not sel_idx or not fit_idx:
        raise bad_input("BadConfig", f"{SEARCH_KEY}: the selection slice of {len(records)} train "
                                     "records leaves one side empty")
    fit = [records[i] for i in fit_idx]
    selection = [records[i] for i in sel_idx]
    fit_parquet = write_parquet(fit, shape, work / "search" / "fit.parquet")
    selection_parquet = write_parquet(selection, shape, work / "search" / "selection.parquet")
    selection_jsonl = jsonl(selection)

    scored: list[SearchCandidate] = []
    runs: list[tuple[train.TrainResult, dict[str, Any]]] = []
    for i, cand in enumerate(candidates_plan):
        lr, rank, alpha = cand.learning_rate, cand.lora_r, cand.lora_alpha
        train.progress("search", step=0, maxSteps=int(config.get("max_steps") or 0),
                       candidate=f"{i + 1}/{len(candidates_plan)}", learningRate=lr, loraR=rank)
        cand_work = work / "search" / f"candidate-{i}"
        cand_work.mkdir(parents=True, exist_ok=True)
        cfg = train.local_config({**config, "learning_rate": lr, "lora_r": rank, "lora_alpha": alpha},
                                 model_dir=model_dir, tokenizer_dir=tokenizer_dir,
                                 train_parquet=fit_parquet, validation_parquet=selection_parquet,
                                 work=cand_work, profile=profile)
        started = time.monotonic()
        result = train.run_axolotl(cfg, cand_work, earliest_stop_step=earliest_stop_step,
                                   stage="search")
        score = evaluate.evaluate(model_dir, tokenizer, selection, shape,
                                  adapter_dir=result.best_checkpoint, with_exact_match=False,
                                  scoring=scoring)
        best = result.best_checkpoint.name.split("-")[-1]
        scored.append(SearchCandidate(
            learning_rate=lr, lora_r=rank, lora_alpha=alpha, selection_loss=score.loss,
            best_step=int(best) if best.isdigit() else None,
            steps_run=int(result.state.get("global_step") or 0),
            wall_seconds=round(time.monotonic() - started, 2)))
        runs.append((result, cfg))
        log(f"search candidate {i + 1}/{len(candidates_plan)} lr {lr:g} r {rank}: selection loss "
            f"{score.loss:.4f} (best step {scored[-1].best_step})")
        # Disk stays at one candidate's checkpoints (plus the one training): drop the loser's.
        leader = winner(scored)
        for j, (run, _) in enumerate(runs):
            if j != leader:
                shutil.rmtree(run.best_checkpoint.parent, ignore_errors=True)
    chosen = winner(scored)
    report = SearchReport(
        fit_samples=len(fit), selection_samples=len(selection),
        selection_sha256=hashlib.sha256(selection_jsonl).hexdigest(), candidates=scored,
        chosen=chosen)
    result, cfg = runs[chosen]
    return SearchOutcome(result=result, config=cfg, report=report, fit_indices=fit_idx,
                         selection_jsonl=selection_jsonl)
