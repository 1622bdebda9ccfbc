"""The training budget and the search plan: typed on both sides of the rendered config.

The operator derives them (operator budget.py and render.py) and writes them into the Axolotl
config under `finetune_budget` and `finetune_search`; the trainer parses them back with these
models (never by camelCase key) and copies the budget, with what it measured, into metrics.json
`budget`. The sequence_len rules live here once: the operator's estimate and the trainer's fit
to the measured records both go through `sequence_len_for`.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from .run import _Model

SEQ_ROUND = 64       # sequence_len is a multiple of this
SEQ_MIN = 128        # never render a shorter one: chat templates alone take ~16 tokens
SEQ_FIT_CAP = 8192   # the trainer never raises a derived sequence_len past this


def round_up(value: float, step: int = SEQ_ROUND) -> int:
    return int(math.ceil(max(value, 1) / step) * step)


def sequence_len_for(tokens: float) -> int:
    """The sequence_len that holds a record of `tokens` tokens."""
    return max(SEQ_MIN, round_up(tokens))


class MeasuredBudget(_Model):
    """What the trainer measured with the real tokenizer (the operator only estimated)."""

    record_tokens_p50: int
    record_tokens_p95: int
    record_tokens_max: int
    answer_tokens: int
    records_over_sequence_len: int
    tokenizer_notes: list[str] = Field(default_factory=list)
    profile: str
    early_stopping_min_delta: float

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


class Budget(_Model):
    """Every derived number, camelCase on the wire (config `finetune_budget`, metrics.json
    `budget`). The last three fields are absent from the wire until set."""

    tokens_estimated_from: str
    train_records: int
    validation_records: int
    answer_tokens: int
    record_tokens_p50: int
    record_tokens_p95: int
    record_tokens_max: int
    sequence_len: int
    records_over_sequence_len_max: str
    sample_packing: bool
    packing_gain_estimate: float
    micro_batch_size: int
    gradient_accumulation_steps: int
    records_per_step: float
    epochs: float
    max_steps: int
    eval_steps: int
    evaluations: int
    early_stopping_patience: int
    earliest_stop_step: int
    learning_rate: float
    warmup_steps: int
    eval_sample_packing: bool
    sequence_len_set: bool | None = Field(
        None, description="True when spec.training.sequenceLen set it: the trainer keeps it.")
    sequence_len_fitted: int | None = Field(
        None, description="Written by the trainer when it raised sequence_len to fit every record.")
    measured: MeasuredBudget | None = Field(None, description="Written by the trainer.")

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)

    def fitted_sequence_len(self, configured: int, longest: int) -> int:
        """sequence_len that holds every record as the real tokenizer counts it.

        The operator estimates sequence_len from character counts (it loads no tokenizer);
        digits, JSON and non-English text take more tokens per character than it assumes, and
        Axolotl drops records longer than sequence_len, which can empty the validation split.
        So a derived value (`configured` equal to this budget's) is raised to the longest
        measured record, up to SEQ_FIT_CAP; one the user set (spec.training.sequenceLen, or
        spec.training.axolotl, which makes `configured` differ) is kept as they asked.
        """
        if (not configured or self.sequence_len_set or configured != self.sequence_len
                or longest <= configured):
            return configured
        return max(configured, min(SEQ_FIT_CAP, sequence_len_for(longest)))


class SearchCandidatePlan(_Model):
    learning_rate: float
    lora_r: int
    lora_alpha: int


class SearchPlan(_Model):
    """spec.training.search as rendered (config `finetune_search`): the candidates and the size
    of the selection slice the trainer carves from the train split."""

    selection_fraction: float
    selection_records: int
    seed: int
    candidates: list[SearchCandidatePlan]

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)
