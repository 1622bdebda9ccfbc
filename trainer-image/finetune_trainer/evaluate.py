"""One evaluator for the base model and the tuned adapter: the same code, the same records.

Mean loss over answer tokens only, masked as in training (Axolotl's chat_template with
roles_to_train [assistant] and train_on_eos turn: the answer content and its end-of-turn token;
completion records: every token), token-weighted over EVERY validation record. Axolotl's own
packed evaluation drops the last incomplete batch, so its numbers are not what we report.
Greedy exact match is added when answers are short, with each record's hit or miss: the noGain
verdict pairs them with the trivial baselines' on the same records (baselines.py); the greedy
answers themselves feed the task-aware scores (scoring.py).

Both are scored on the model the adapter was trained on (`scoring_for`): a LoRA adapter merged
into the full-precision base, a QLoRA adapter unmerged on the same 4-bit base, and the base
model of the comparison loaded the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .baselines import same_answer
from .errors import bad_input

EXACT_MATCH_MAX_TOKENS = 96  # covers short JSON extractions (~60 tokens), not free prose
BATCH = 8
GENERATE_BATCH = 16

Quantization = Literal["none", "4bit"]

# Why base and tuned are loaded the way they are (the trainer logs it).
SCORED_MERGED = "lora: the adapter merged into the full-precision base"
SCORED_4BIT = ("qlora: scored on the 4-bit base it trained on (nf4, double quant), "
               "the adapter unmerged")
SCORED_AS_LORA = ("qlora on the cpu profile: it trained as plain lora (4-bit training needs "
                  "CUDA), so it is scored as lora")
NO_CUDA_FOR_4BIT = ("adapter qlora with load_in_4bit on the gpu profile, but no CUDA device: "
                    "its 4-bit base cannot be built as training builds it (the cpu profile "
                    "trains and scores qlora as lora)")

# Axolotl 0.19's BitsAndBytesConfig for `adapter: qlora` + `load_in_4bit` (loaders/model.py),
# less bnb_4bit_compute_dtype (its torch_dtype, `axolotl_dtype`).
AXOLOTL_QLORA_BNB: Mapping[str, Any] = {
    "load_in_4bit": True, "llm_int8_threshold": 6.0, "llm_int8_has_fp16_weight": False,
    "bnb_4bit_use_double_quant": True, "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_quant_storage": "bfloat16"}


@dataclass(frozen=True)
class Scoring:
    """How base and tuned are loaded: one choice for both, the one training made."""

    quantization: Quantization = "none"
    compute_dtype: str = "float32"  # bnb_4bit_compute_dtype (4-bit only)
    bnb_overrides: tuple[tuple[str, Any], ...] = ()  # the config's bnb_config_kwargs
    why: str = SCORED_MERGED

    @property
    def merge(self) -> bool:
        """Merge the adapter only into a full-precision base: merged into 4-bit weights, the
        update would be re-quantized (mostly rounded away), which is not the model trained."""
        return self.quantization == "none"

    def bnb_kwargs(self) -> dict[str, Any]:
        """BitsAndBytesConfig's arguments, as Axolotl builds them for the training."""
        return {**AXOLOTL_QLORA_BNB, "bnb_4bit_compute_dtype": self.compute_dtype,
                **dict(self.bnb_overrides)}


MERGED = Scoring()


def axolotl_dtype(config: Mapping[str, Any], bf16_supported: bool) -> str:
    """Axolotl's torch_dtype for `config` (utils/config resolve_dtype): `bf16: auto` is bf16
    where supported, else fp16 unless fp16 is set; load_in_8bit or fp16 is fp16; else fp32."""
    bf16, fp16 = config.get("bf16"), config.get("fp16")
    if bf16 == "auto":
        bf16 = bool(bf16_supported and not fp16)
        if not bf16 and fp16 is None and not config.get("float16"):
            fp16 = True
    if bf16 or config.get("bfloat16"):
        return "bfloat16"
    if config.get("load_in_8bit") or fp16 or config.get("float16"):
        return "float16"
    return "float32"


def scoring_for(config: Mapping[str, Any], profile: str, *, cuda: bool | None = None,
                bf16_supported: bool | None = None) -> Scoring:
    """How to score a run of the rendered `config` on `profile` (cuda / bf16: this machine's,
    asked of torch when None). QLoRA is 4-bit only where it trained 4-bit: the cpu profile
    trains it as lora (train.local_config), so it is scored as lora there; a gpu profile without
    CUDA fails here rather than scoring an unquantized merge that was never trained."""
    if config.get("adapter") != "qlora" or not config.get("load_in_4bit"):
        return MERGED
    if profile == "cpu":
        return Scoring(why=SCORED_AS_LORA)
    if cuda is None or bf16_supported is None:
        import torch

        cuda = torch.cuda.is_available() if cuda is None else cuda
        bf16_supported = (cuda and torch.cuda.is_bf16_supported() if bf16_supported is None
                          else bf16_supported)
    if not cuda:
        raise bad_input("BadConfig", NO_CUDA_FOR_4BIT)
    overrides = tuple(sorted((config.get("bnb_config_kwargs") or {}).items()))
    return Scoring("4bit", axolotl_dtype(config, bf16_supported), overrides, SCORED_4BIT)


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


def load_model(model_dir: str | Path, adapter_dir: str | Path | None = None,
               scoring: Scoring = MERGED) -> Any:
    """The base model (with the adapter when `adapter_dir`), loaded as `scoring` says."""
    import torch
    from transformers import AutoModelForCausalLM

    if scoring.quantization == "4bit":
        from transformers import BitsAndBytesConfig

        # Placed on the GPU while loading: bitsandbytes quantizes there (no .to() afterwards).
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, scoring.compute_dtype), attn_implementation="sdpa",
            quantization_config=BitsAndBytesConfig(**scoring.bnb_kwargs()), device_map="cuda")
    else:
        dtype = torch.float32
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            dtype = torch.bfloat16
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype,
                                                     attn_implementation="sdpa")
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
        if scoring.merge:
            # Merged, the tuned model runs exactly the base model's code and cost (greedy
            # decoding through unmerged LoRA layers was the slowest part of a CPU evaluation).
            model = model.merge_and_unload()
    if scoring.merge and torch.cuda.is_available():
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
             adapter_dir: str | Path | None = None, with_exact_match: bool | None = None,
             scoring: Scoring = MERGED) -> EvalResult:
    """Loss (and exact match for short chat answers) of base or base+adapter on `records`;
    pass base and tuned the same `scoring` (`scoring_for`)."""
    encoded = [encode(tokenizer, r, shape) for r in records]
    model = load_model(model_dir, adapter_dir, scoring)
    loss, tokens = answer_loss(model, tokenizer, encoded)
    if with_exact_match is None:
        with_exact_match = shape == "messages" and short_answers(encoded)
    hits, answers = (greedy_answers(model, tokenizer, encoded) if with_exact_match and encoded
                     else (None, None))
    del model
    return EvalResult(loss=loss, tokens=tokens, records=len(records),
                      exact_match=sum(hits) / len(hits) if hits else None, correct=hits,
                      answers=answers)
