"""The training budget and the search plan: typed on both sides of the rendered config.

The operator derives them (operator budget.py and render.py) and writes them into the Axolotl
config under `finetune_budget` and `finetune_search`; the trainer parses them back with these
models (never by camelCase key) and copies the budget, with what it measured, into metrics.json
`budget`. The sequence_len rules live here once: the operator's estimate and the trainer's fit
to the measured records both go through `sequence_len_for`.

The step schedule (`schedule`) lives here once too. The operator loads no tokenizer, so it
renders the schedule from answer tokens estimated at ~4 characters per token; digits and JSON
take ~3x more tokens than that (a date task: 420 estimated, 1,320 counted). The trainer counts
them with the model's own tokenizer and re-derives the schedule through the same function, so
the budget that trains rests on the count; metrics.json `budget` records both numbers and which
one was used (`answerTokensEstimated`, `answerTokensCounted`, `answerTokensUsed`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from .run import _Model

SEQ_ROUND = 64       # sequence_len is a multiple of this
SEQ_MIN = 128        # never render a shorter one: chat templates alone take ~16 tokens
SEQ_FIT_CAP = 8192   # the trainer never raises a derived sequence_len past this
# Answer tokens the model should see over the run. Measured on SmolLM2-135M (bench-quality):
# triage's eval loss was 0.02 after one epoch and date-normalise reached 97% exact match by its
# best step 168 of 286; 12 epochs and 4000 tokens cost 30+ minutes per task on CPU for no gain.
TARGET_ANSWER_TOKENS = 2000
MIN_EPOCHS, MAX_EPOCHS = 3.0, 6.0
MIN_STEPS, MAX_STEPS = 30, 2000
MIN_EVALS = 10              # >= 8 evaluations even if the last cadence step falls short
MIN_STOP_FRACTION = 0.3     # early stopping cannot end a run before this share of steps
# The spec.training fields that fix the schedule; the trainer re-derives none of what they set.
SCHEDULE_FIELDS = ("max_steps", "epochs", "early_stopping_patience")


def round_up(value: float, step: int = SEQ_ROUND) -> int:
    return int(math.ceil(max(value, 1) / step) * step)


def sequence_len_for(tokens: float) -> int:
    """The sequence_len that holds a record of `tokens` tokens."""
    return max(SEQ_MIN, round_up(tokens))


class Schedule(_Model):
    """Steps, cadence and patience derived from answer tokens (or from the spec's values)."""

    epochs: float
    raw_steps: int = Field(description="train records x epochs / records per step, unclamped.")
    max_steps: int
    eval_steps: int
    evaluations: int
    early_stopping_patience: int
    earliest_stop_step: int
    warmup_steps: int


def schedule(answer_tokens: int, train_records: int, records_per_step: float, *,
             epochs: float | None = None, max_steps: int | None = None,
             patience: int | None = None) -> Schedule:
    """The step schedule: enough passes that the run sees ~TARGET_ANSWER_TOKENS answer tokens
    (MIN_EPOCHS-MAX_EPOCHS, MIN_STEPS-MAX_STEPS), MIN_EVALS evaluations, and a patience that
    cannot stop a run before MIN_STOP_FRACTION of it (eval loss on ~30 records is noisy).
    `epochs`, `max_steps` and `patience` are the user's values when set."""
    per_step = max(records_per_step, 1e-9)
    if max_steps is not None:
        steps = raw = int(max_steps)
        epochs = round(steps * records_per_step / max(train_records, 1), 2)
    else:
        if epochs is None:
            epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, TARGET_ANSWER_TOKENS / max(answer_tokens, 1)))
        epochs = round(float(epochs), 2)
        raw = math.ceil(train_records * epochs / per_step)
        steps = min(MAX_STEPS, max(MIN_STEPS, raw))
    eval_steps = max(1, steps // MIN_EVALS)
    if patience is None:
        patience = max(2, math.ceil(MIN_STOP_FRACTION * steps / eval_steps) - 1)
    return Schedule(epochs=epochs, raw_steps=raw, max_steps=steps, eval_steps=eval_steps,
                    evaluations=steps // eval_steps, early_stopping_patience=int(patience),
                    earliest_stop_step=(int(patience) + 1) * eval_steps,
                    warmup_steps=max(1, round(0.05 * steps)))


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
    answer_tokens_estimated: int | None = Field(
        None, description="The operator's estimate (characters/4 + one end-of-turn token each).")
    answer_tokens_counted: int | None = Field(
        None, description="Written by the trainer: counted with the model's tokenizer.")
    answer_tokens_used: Literal["estimated", "counted", "spec"] | None = Field(
        None, description="Which count `answerTokens` and the schedule rest on; 'spec' when "
                          "spec.training fixed the steps (maxSteps or epochs).")
    estimated_max_steps: int | None = Field(
        None, description="Written by the trainer when it re-derived the schedule: the "
                          "rendered maxSteps, from the estimate.")
    schedule_set: list[str] = Field(
        default_factory=list, description="spec.training fields that fixed the schedule.")

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)

    def recount(self, counted: int, configured: dict[str, Any]) -> Budget:
        """This budget with its schedule re-derived from `counted` answer tokens (the trainer's
        tokenizer), where the render derived it: a value the user fixed (spec.training maxSteps,
        epochs, earlyStoppingPatience, or spec.training.axolotl making the `configured` max_steps
        differ) stays. Both counts and the one used are recorded."""
        estimated = self.answer_tokens_estimated or self.answer_tokens
        base = self.model_copy(update={"answer_tokens_estimated": estimated,
                                       "answer_tokens_counted": counted})
        fixed = {"max_steps", "epochs"} & set(self.schedule_set)
        if fixed or int(configured.get("max_steps") or 0) != self.max_steps:
            return base.model_copy(update={"answer_tokens_used": "spec" if fixed else "estimated"})
        patience = (self.early_stopping_patience if "early_stopping_patience" in self.schedule_set
                    else None)
        new = schedule(counted, self.train_records, self.records_per_step, patience=patience)
        return base.model_copy(update={
            "answer_tokens": counted, "answer_tokens_used": "counted",
            "estimated_max_steps": self.max_steps,
            **new.model_dump(exclude={"raw_steps"})})

    def config_updates(self, previous: Budget, configured: dict[str, Any]) -> dict[str, Any]:
        """Axolotl config keys to change after `recount`: each key still holding the value
        `previous` derived (a key spec.training.axolotl set is left alone)."""
        pairs = {"max_steps": "max_steps", "eval_steps": "eval_steps", "save_steps": "eval_steps",
                 "early_stopping_patience": "early_stopping_patience",
                 "warmup_steps": "warmup_steps"}
        out: dict[str, Any] = {}
        for key, field in pairs.items():
            old, new = getattr(previous, field), getattr(self, field)
            if configured.get(key) == old and new != old:
                out[key] = new
        epochs = max(1, math.ceil(self.epochs))
        if configured.get("num_epochs") == max(1, math.ceil(previous.epochs)) and \
                epochs != configured.get("num_epochs"):
            out["num_epochs"] = epochs
        return out

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
