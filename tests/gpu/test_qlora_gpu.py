"""QLoRA scored as trained, for real: the tiny offline model loaded in 4-bit (bitsandbytes, the
settings Axolotl trains qlora with) and a fresh LoRA adapter on it, unmerged. Needs CUDA."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

QLORA = {"adapter": "qlora", "load_in_4bit": True, "bf16": "auto", "fp16": False}


def test_tiny_model_in_4bit_scores_base_and_a_fresh_adapter(tmp_path: Path) -> None:
    import bitsandbytes as bnb
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_dev.smollm import cache_dir
    from finetune_dev.tinymodel import build_tiny_model, synthetic_task
    from finetune_trainer import evaluate as E

    model_dir = build_tiny_model(cache_dir())
    scoring = E.scoring_for(QLORA, "gpu")
    assert scoring.quantization == "4bit" and not scoring.merge
    # A fresh adapter with non-zero B, so the tuned model differs from the base.
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                      task_type="CAUSAL_LM")
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")
    del base

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = synthetic_task(24, seed=3)
    base_eval = E.evaluate(model_dir, tokenizer, records, "messages", scoring=scoring,
                           with_exact_match=True)
    tuned_eval = E.evaluate(model_dir, tokenizer, records, "messages", scoring=scoring,
                            adapter_dir=tmp_path / "adapter", with_exact_match=True)
    assert math.isfinite(base_eval.loss) and math.isfinite(tuned_eval.loss)
    assert base_eval.tokens == tuned_eval.tokens > 0
    assert tuned_eval.loss != base_eval.loss  # the adapter is applied, not merged away

    model = E.load_model(model_dir, tmp_path / "adapter", scoring)
    assert isinstance(model, PeftModel)  # unmerged
    linear = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
              and "lora_" not in name and not name.endswith("lm_head")}
    assert linear and all(isinstance(m, bnb.nn.Linear4bit) for m in linear.values()), \
        sorted(n for n, m in linear.items() if not isinstance(m, bnb.nn.Linear4bit))
    assert next(model.parameters()).device.type == "cuda"
