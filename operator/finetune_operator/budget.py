"""The training budget derived from a prepared run's data: steps, cadence, sequence_len, packing.

Pure arithmetic on the manifest's counts and character-length stats (no tokenizer here: the
operator never loads one, and a hub model's files are not reachable without a download).
Tokens are estimated at ~4 characters per token plus a fixed chat template overhead. The step
schedule is the contract's `schedule`: the trainer counts the answer tokens with the model's
tokenizer and re-derives it from the count through the same function (digits and JSON take ~3x
the estimate), unless spec.training fixed it; metrics.json `budget` records both counts.

Why a budget from the data and not a fixed epoch count: a 4-label task with ~275 answer tokens
reached 73% exact match in 3 epochs while richer tasks reached 83-100% (DESIGN.md, measured
pitfalls). Small-signal tasks need more passes; early stopping on the held-out split guards the
extra steps, and the best checkpoint is what ships.

The Budget model itself is the contract's (finetune_contract.budget): the trainer reads it back
typed; the rounding of sequence_len lives there too, shared with the trainer's fit.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from finetune_contract import Budget, Manifest, round_up, sequence_len_for
from finetune_contract.budget import (MAX_EPOCHS, MAX_STEPS, MIN_EPOCHS, MIN_STEPS,
                                      MIN_STOP_FRACTION, SCHEDULE_FIELDS, SEQ_MIN, SEQ_ROUND,
                                      TARGET_ANSWER_TOKENS, schedule)

from .sharding import parameters_from_name

__all__ = ["MIN_STOP_FRACTION", "TARGET_ANSWER_TOKENS", "derive_budget", "model_size_billions"]

CHARS_PER_TOKEN = 4.0
TEMPLATE_TOKENS = 16          # role markers, newlines and end-of-turn tokens of a short chat
PACK_GAIN = 1.15              # pack only when it cuts computed tokens by >= ~13%

Profile = Literal["gpu", "cpu"]


def tokens(chars: int | float) -> int:
    return int(math.ceil(chars / CHARS_PER_TOKEN))


def model_size_billions(name: str) -> float | None:
    """Parameter count from a hub-style name (`SmolLM2-135M`, `Qwen2.5-0.5B`); None if absent."""
    parameters = parameters_from_name(name)
    return parameters / 1e9 if parameters is not None else None


def default_learning_rate(model_name: str, adapter: str) -> tuple[float, str]:
    """LoRA wants a higher rate than full fine-tuning; smaller models tolerate more."""
    size = model_size_billions(model_name)
    if size is None:
        lr, why = 2e-4, "model size unknown from its name: the common LoRA rate"
    elif size < 1:
        lr, why = 5e-4, f"~{size:g}B parameters (<1B): small models take a higher LoRA rate"
    elif size <= 10:
        lr, why = 2e-4, f"~{size:g}B parameters: the common LoRA rate"
    else:
        lr, why = 1e-4, f"~{size:g}B parameters (>10B): a gentler rate"
    if adapter == "qlora":
        why += "; same for qlora (4-bit base, bf16 adapter)"
    return lr, why


def derive_budget(manifest: Manifest, *, model_name: str, adapter: str, profile: Profile,
                  overrides: dict[str, Any] | None = None) -> tuple[Budget, dict[str, str]]:
    """The budget and, per field, one line saying why. `overrides` are the user's explicit
    spec.training values (snake_case): they win, and the rest is derived around them."""
    o = {k: v for k, v in (overrides or {}).items() if v is not None}
    why: dict[str, str] = {}
    n_train, n_val = manifest.train_samples, manifest.validation_samples
    lengths = manifest.lengths
    p50 = tokens(lengths.total_p50) + TEMPLATE_TOKENS
    p95 = tokens(lengths.total_p95) + TEMPLATE_TOKENS
    tmax = tokens(lengths.total_max) + TEMPLATE_TOKENS
    if manifest.record_shape == "messages":
        answer = tokens(lengths.output_chars_train) + n_train  # + one end-of-turn token each
        answer_why = "answer characters of the train split / 4, plus one end-of-turn token each"
    else:
        answer = tokens(lengths.total_p50 * n_train)
        answer_why = "completion records train on every token: median length x records"

    # sequence_len: cover every record when the longest is within 1.5x the p95, else the p95.
    if "sequence_len" in o:
        seq = max(SEQ_MIN, int(o["sequence_len"]))
        why["sequence_len"] = "set in spec.training.sequenceLen"
    elif tmax <= 1.5 * p95:
        seq = sequence_len_for(tmax * 1.1)
        why["sequence_len"] = (f"longest record ~{tmax} tokens (est.) is within 1.5x the p95 "
                               f"(~{p95}): +10% and rounded up to {SEQ_ROUND} covers every record")
    else:
        seq = sequence_len_for(p95 * 1.1)
        why["sequence_len"] = (f"p95 record ~{p95} tokens (est.), +10%, rounded up to {SEQ_ROUND}; "
                               f"the longest (~{tmax}) is an outlier")
    over = "0" if tmax <= seq else ("<= 5% of records" if p95 <= seq else "> 5% of records")
    why["records_over_sequence_len_max"] = (
        "estimate from the manifest; the trainer counts them exactly with the tokenizer and "
        "reports them (axolotl drops them, never silently: see metrics.json budget)")

    # Packing: without it each micro-batch pads to its longest record (~p95 for batches of 4+);
    # with it padding nearly vanishes. Pack only when that cuts computed tokens meaningfully,
    # since packing costs memory and, on uniform lengths, measured x0.98 throughput.
    mbs_unpacked = int(o.get("micro_batch_size") or (8 if profile == "gpu" else 4))
    unpacked_eff = min(1.0, p50 / max(p95, 1))
    packed_eff = 0.95
    gain = round(packed_eff / unpacked_eff, 3)
    if "sample_packing" in o:
        packing = bool(o["sample_packing"])
        why["sample_packing"] = "set in spec.training.samplePacking"
    else:
        packing = gain >= PACK_GAIN
        why["sample_packing"] = (
            f"estimated computed-token cut x{gain:.2f} (median ~{p50} vs p95 ~{p95} tokens) "
            + (f">= x{PACK_GAIN}: packing pays" if packing else
               f"< x{PACK_GAIN}: lengths too even for packing to pay for its memory"))

    if packing:
        # One pack per micro-batch holding about as many records as an unpacked batch would:
        # same memory and the same records per step, minus the padding.
        pack_len = max(seq, round_up(p50 * mbs_unpacked / packed_eff))
        if "sequence_len" not in o:
            if pack_len > seq:
                why["sequence_len"] += f"; packs of {pack_len} tokens hold ~{mbs_unpacked} records"
            seq = pack_len
        mbs = int(o.get("micro_batch_size") or 1)
        records_per_micro = max(1.0, seq * packed_eff / p50) * mbs
    else:
        mbs = mbs_unpacked
        records_per_micro = float(mbs)
    gas = int(o.get("gradient_accumulation_steps") or 1)
    records_per_step = round(records_per_micro * gas, 2)
    why["micro_batch_size"] = ("set in spec.training" if "micro_batch_size" in o else
                               ("one pack per micro-batch" if packing else
                                f"{mbs} records per micro-batch on {profile}"))

    # Steps: enough passes that the run sees ~TARGET_ANSWER_TOKENS answer tokens (the
    # contract's schedule; the trainer re-derives it from counted tokens).
    plan = schedule(answer, n_train, records_per_step, epochs=o.get("epochs"),
                    max_steps=o.get("max_steps"), patience=o.get("early_stopping_patience"))
    steps, epochs, raw = plan.max_steps, plan.epochs, plan.raw_steps
    recount = "; the trainer re-derives it from the answer tokens its tokenizer counts"
    if "max_steps" in o:
        why["max_steps"] = "set in spec.training.maxSteps"
    else:
        if "epochs" in o:
            why_epochs = "set in spec.training.epochs"
        else:
            why_epochs = (f"~{answer} answer tokens ({answer_why}); {TARGET_ANSWER_TOKENS} "
                          f"answer tokens wanted -> {epochs:g} epochs (clamped to "
                          f"{MIN_EPOCHS:g}-{MAX_EPOCHS:g})")
        why["max_steps"] = (f"{why_epochs}; {n_train} records x {epochs:g} epochs / "
                            f"~{records_per_step:g} records per step = {raw}, kept within "
                            f"{MIN_STEPS}-{MAX_STEPS}" + ("" if "epochs" in o else recount))
    why["num_epochs"] = "upper bound only: max_steps decides, early stopping may end sooner"

    eval_steps, evaluations = plan.eval_steps, plan.evaluations
    why["eval_steps"] = (f"every {eval_steps} steps -> {evaluations} evaluations over {steps} "
                         "steps; save_steps is equal so the best checkpoint is on disk")
    patience, earliest = plan.early_stopping_patience, plan.earliest_stop_step
    how = ("spec.training.earlyStoppingPatience" if "early_stopping_patience" in o else
           f"derived so no stop comes before ~{MIN_STOP_FRACTION:.0%} of the budget")
    why["early_stopping_patience"] = (
        f"{patience} evaluations without a new best eval_loss ({how}); cannot stop before step "
        f"{earliest} ({earliest * 100 // max(steps, 1)}% of the budget)")

    if "learning_rate" in o:
        lr, lr_why = float(o["learning_rate"]), "set in spec.training.learningRate"
    else:
        lr, lr_why = default_learning_rate(model_name, adapter)
    why["learning_rate"] = lr_why
    warmup = plan.warmup_steps
    why["warmup_steps"] = f"5% of {steps} steps, then cosine decay"

    eval_packing = packing and n_val >= 100
    why["eval_sample_packing"] = (
        f"{n_val} validation records: " + ("large enough to pack" if eval_packing else
        "off (small or unpacked eval sets lose records in packed eval, axolotl #999/#1644)"))

    budget = Budget(
        tokens_estimated_from=f"characters/{CHARS_PER_TOKEN:g}", train_records=n_train, validation_records=n_val, answer_tokens=answer,
        record_tokens_p50=p50, record_tokens_p95=p95, record_tokens_max=tmax,
        sequence_len=seq, records_over_sequence_len_max=over, sample_packing=packing,
        packing_gain_estimate=gain, micro_batch_size=mbs, gradient_accumulation_steps=gas,
        records_per_step=records_per_step, epochs=epochs, max_steps=steps, eval_steps=eval_steps,
        evaluations=evaluations, early_stopping_patience=patience, earliest_stop_step=earliest,
        learning_rate=lr, warmup_steps=warmup, eval_sample_packing=eval_packing,
        sequence_len_set=True if "sequence_len" in o else None,
        answer_tokens_estimated=answer, answer_tokens_used="estimated",
        schedule_set=[k for k in SCHEDULE_FIELDS if k in o],
    )
    return budget, why
