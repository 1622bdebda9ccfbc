"""One evaluator for the base model and the tuned adapter: the same code, the same records.

Mean loss over answer tokens only, masked as in training (Axolotl's chat_template with
roles_to_train [assistant] and train_on_eos turn: the answer content and its end-of-turn token;
completion records: every token), token-weighted over EVERY validation record. Axolotl's own
packed evaluation drops the last incomplete batch, so its numbers are not what we report.
Greedy exact match is added when answers are short, with each record's hit or miss: the noGain
verdict pairs them with the trivial baselines' on the same records (baselines.py); the greedy
answers themselves feed the task-aware scores (scoring.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

from .baselines import same_answer

EXACT_MATCH_MAX_TOKENS = 96  # covers short JSON extractions (~60 tokens), not free prose
BATCH = 8
GENERATE_BATCH = 16


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_len: int
    answer: str


@dataclass
class EvalResult:
    loss: float
    tokens: int
    records: int
    exact_match: float | None = None
    correct: list[bool] | None = None  # per validation record, in order (with exact_match)
    answers: list[str] | None = None  # the greedy answers, in order (with exact_match)


def encode(tokenizer: Any, record: dict[str, Any], shape: str) -> Encoded:
    """Token ids and loss labels (-100 = masked) of one record."""
    if shape == "text":
        ids = tokenizer(record["text"], add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        return Encoded(ids, list(ids), 0, record["text"])
    msgs = record["messages"]
    answer = msgs[-1]["content"]
    prompt = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    if not full.startswith(prompt) or answer not in full[len(prompt):]:
        raise ValueError("the chat template does not render the answer after the prompt")
    target = answer
    rest = full[len(prompt) + full[len(prompt):].index(answer) + len(answer):]
    if tokenizer.eos_token and rest.startswith(tokenizer.eos_token):
        target += tokenizer.eos_token  # train_on_eos: turn
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    return Encoded(prompt_ids + target_ids, [-100] * len(prompt_ids) + target_ids,
                   len(prompt_ids), answer)


def load_model(model_dir: str | Path, adapter_dir: str | Path | None = None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    if adapter_dir is not None:
        from peft import PeftModel

        # Merged, the tuned model runs exactly the base model's code and cost (greedy decoding
        # through unmerged LoRA layers was the slowest part of a CPU evaluation).
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return model


def answer_loss(model: Any, tokenizer: Any, encoded: list[Encoded]) -> tuple[float, int]:
    """Token-weighted mean cross-entropy over unmasked labels of every record."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(encoded), BATCH):
            batch = encoded[start:start + BATCH]
            width = max(len(e.input_ids) for e in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, e in enumerate(batch):
                n = len(e.input_ids)
                ids[i, :n] = torch.tensor(e.input_ids)
                labels[i, :n] = torch.tensor(e.labels)
                mask[i, :n] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(device)
            total += float(F.cross_entropy(shift_logits, shift_labels, ignore_index=-100,
                                           reduction="sum"))
            count += int((shift_labels != -100).sum())
    return (total / count if count else math.nan), count


def judge(generated: list[int], reference: list[int], eos_token_id: int | None,
          decode: Callable[[list[int]], str], answer: str) -> tuple[bool, str]:
    """One row of a greedy decode: (exact match, the answer as generated).

    Exact match keeps its definition: the tokens up to and including the first one that differs
    from the reference, decoded, equal the reference after trimming (a right answer that runs
    on past its end-of-turn token is a miss). The answer for the task-aware scores is every
    token before the first end-of-turn token (or the length cap).
    """
    cut = next((k for k, tok in enumerate(generated) if k >= len(reference) or tok != reference[k]),
               len(generated))
    hit = same_answer(decode(generated[: cut + 1]), answer)
    end = next((k for k, tok in enumerate(generated) if tok == eos_token_id), len(generated))
    return hit, decode(generated[:end]).strip()


def greedy_answers(model: Any, tokenizer: Any, encoded: list[Encoded]) -> tuple[list[bool], list[str]]:
    """Per record: exact match (see `judge`) and the greedy answer.

    Prompts are decoded in left-padded batches: one record at a time, a CPU spends its time
    reading the weights once per token per record. Rows stop at their end-of-turn token or at
    the longest reference + 2 tokens (decoding used to stop each row at its first wrong token,
    which was cheaper but left nothing to score beyond exact match).
    """
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    max_new = max(len(e.input_ids) - e.prompt_len for e in encoded) + 2
    hits: list[bool] = []
    answers: list[str] = []

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    with torch.no_grad():
        for start in range(0, len(encoded), GENERATE_BATCH):
            batch = encoded[start:start + GENERATE_BATCH]
            width = max(e.prompt_len for e in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, e in enumerate(batch):
                ids[i, width - e.prompt_len:] = torch.tensor(e.input_ids[: e.prompt_len])
                mask[i, width - e.prompt_len:] = 1
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
            for i, e in enumerate(batch):
                hit, text = judge(out[i, width:].tolist(), e.input_ids[e.prompt_len:],
                                  tokenizer.eos_token_id, decode, e.answer)
                hits.append(hit)
                answers.append(text)
    return hits, answers


def short_answers(encoded: list[Encoded]) -> bool:
    lengths = sorted(len(e.input_ids) - e.prompt_len for e in encoded)
    return bool(lengths) and lengths[int(0.95 * (len(lengths) - 1))] <= EXACT_MATCH_MAX_TOKENS


def evaluate(model_dir: str | Path, tokenizer: Any, records: list[dict[str, Any]], shape: str, *,
             adapter_dir: str | Path | None = None, with_exact_match: bool | None = None) -> EvalResult:
    """Loss (and exact match for short chat answers) of base or base+adapter on `records`."""
    encoded = [encode(tokenizer, r, shape) for r in records]
    model = load_model(model_dir, adapter_dir)
    loss, tokens = answer_loss(model, tokenizer, encoded)
    if with_exact_match is None:
        with_exact_match = shape == "messages" and short_answers(encoded)
    hits, answers = (greedy_answers(model, tokenizer, encoded) if with_exact_match and encoded
                     else (None, None))
    del model
    return EvalResult(loss=loss, tokens=tokens, records=len(records),
                      exact_match=sum(hits) / len(hits) if hits else None, correct=hits,
                      answers=answers)
