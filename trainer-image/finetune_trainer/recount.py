"""The step budget from the answer tokens the model's tokenizer counts, not the render's estimate.

Why here: the operator loads no tokenizer (its image has none, and a hub model's files cannot
be fetched at render time without a download), so it renders the schedule from characters/4.
Digits and JSON take ~3x that (a date task: 420 estimated, 1,320 counted), so the trainer,
which has the tokenizer anyway, re-derives the schedule with the contract's own `schedule`
(Budget.recount) before training, and says so when the two counts disagree. Values the user
fixed are kept; metrics.json `budget` records both counts and which one was used.
"""

from __future__ import annotations

import sys
from typing import Any

from finetune_contract import Budget

DISAGREE = 1.25  # counted/estimated outside [1/1.25, 1.25] is worth a line in the log


def disagreement(budget: Budget) -> str | None:
    """One line when the estimate and the count differ by more than DISAGREE, else None."""
    est, counted = budget.answer_tokens_estimated, budget.answer_tokens_counted
    if not est or not counted or 1 / DISAGREE <= counted / est <= DISAGREE:
        return None
    line = f"answer tokens counted {counted} vs {est} estimated (x{counted / est:.2f})"
    if budget.answer_tokens_used == "counted":
        if budget.estimated_max_steps == budget.max_steps:
            return line + f": max_steps {budget.max_steps} either way (clamped)"
        return line + f": max_steps {budget.estimated_max_steps} -> {budget.max_steps} from the count"
    where = "spec.training" if budget.answer_tokens_used == "spec" else "spec.training.axolotl"
    return line + f": max_steps {budget.max_steps} kept (set in {where})"


def apply(budget: Budget, counted: int, config: dict[str, Any]) -> tuple[Budget, dict[str, Any]]:
    """The budget re-derived from `counted` answer tokens, and the config keys to change."""
    fresh = budget.recount(counted, config)
    updates = fresh.config_updates(budget, config)
    note = disagreement(fresh)
    if note:
        print(f"finetune-trainer: {note}", file=sys.stderr, flush=True)
    return fresh, updates
