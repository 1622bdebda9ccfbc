"""QLoRA is scored as it was trained: the decision (`scoring_for`) and what `load_model` asks of
transformers and PEFT for it.

A real 4-bit load needs CUDA (bitsandbytes), so here from_pretrained is replaced by recording
fakes: the tests check the arguments the evaluator passes and that it never merges a 4-bit
adapter. tests/gpu/test_qlora_gpu.py loads the tiny model in 4-bit for real.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from finetune_trainer import evaluate as E
from finetune_trainer.errors import TrainerError
from finetune_trainer.train import local_config

# The rendered config's keys that decide (operator render.py: gpu profile, adapter qlora).
QLORA_GPU = {"adapter": "qlora", "load_in_4bit": True, "bf16": "auto", "fp16": False}
LORA_GPU = {"adapter": "lora", "bf16": "auto", "fp16": False}


# ---- the decision ----------------------------------------------------------------------------


def test_qlora_on_cuda_is_scored_on_the_4bit_base_unmerged() -> None:
    scoring = E.scoring_for(QLORA_GPU, "gpu", cuda=True, bf16_supported=True)
    assert scoring.quantization == "4bit" and not scoring.merge
    assert scoring.compute_dtype == "bfloat16" and scoring.why == E.SCORED_4BIT
    kwargs = scoring.bnb_kwargs()
    assert kwargs["bnb_4bit_quant_type"] == "nf4" and kwargs["bnb_4bit_use_double_quant"] is True
    assert kwargs["bnb_4bit_compute_dtype"] == "bfloat16" and kwargs["load_in_4bit"] is True


def test_qlora_on_the_cpu_profile_is_scored_as_the_lora_it_trained() -> None:
    for cuda in (False, True):  # `--profile cpu` decides, as it does for training
        scoring = E.scoring_for(QLORA_GPU, "cpu", cuda=cuda, bf16_supported=False)
        assert scoring.quantization == "none" and scoring.merge
        assert scoring.why == E.SCORED_AS_LORA
    # The same answer from the config the cpu profile actually trains (train.local_config).
    trained = local_config(
        {**QLORA_GPU, "datasets": [{"type": "chat_template"}],
         "test_datasets": [{"type": "chat_template"}]},
        model_dir=Path("m"), tokenizer_dir=Path("m"), train_parquet=Path("t.parquet"),
        validation_parquet=Path("v.parquet"), work=Path("w"), profile="cpu")
    assert trained["adapter"] == "lora" and not trained["load_in_4bit"]
    assert E.scoring_for(trained, "cpu", cuda=False, bf16_supported=False).merge


def test_lora_is_merged_into_the_full_precision_base() -> None:
    for profile, cuda in (("gpu", True), ("cpu", False)):
        assert E.scoring_for(LORA_GPU, profile, cuda=cuda, bf16_supported=cuda) == E.MERGED
    # qlora without load_in_4bit: Axolotl builds no BitsAndBytesConfig, so neither do we.
    no_4bit = {**QLORA_GPU, "load_in_4bit": False}
    assert E.scoring_for(no_4bit, "gpu", cuda=True, bf16_supported=True) == E.MERGED
    assert E.MERGED.merge and E.MERGED.quantization == "none"


def test_qlora_on_the_gpu_profile_without_cuda_says_so() -> None:
    with pytest.raises(TrainerError) as err:
        E.scoring_for(QLORA_GPU, "gpu", cuda=False, bf16_supported=False)
    assert err.value.reason == "BadConfig" and str(err.value) == E.NO_CUDA_FOR_4BIT


@pytest.mark.parametrize(("keys", "bf16_supported", "dtype"), [
    ({"bf16": "auto", "fp16": False}, True, "bfloat16"),
    ({"bf16": "auto", "fp16": False}, False, "float32"),   # the render's gpu keys, no bf16
    ({"bf16": "auto"}, False, "float16"),                  # Axolotl turns fp16 on
    ({"bf16": True}, False, "bfloat16"),
    ({"fp16": True}, True, "float16"),
    ({}, True, "float32"),
])
def test_compute_dtype_is_axolotls_torch_dtype(keys: dict[str, Any], bf16_supported: bool,
                                               dtype: str) -> None:
    assert E.axolotl_dtype(keys, bf16_supported) == dtype
    scoring = E.scoring_for({**QLORA_GPU, "bf16": None, "fp16": None, **keys}, "gpu", cuda=True,
                            bf16_supported=bf16_supported)
    assert scoring.compute_dtype == dtype


def test_bnb_config_kwargs_of_the_config_apply_as_in_training() -> None:
    config = {**QLORA_GPU, "bnb_config_kwargs": {"bnb_4bit_quant_type": "fp4"}}
    scoring = E.scoring_for(config, "gpu", cuda=True, bf16_supported=True)
    assert scoring.bnb_kwargs()["bnb_4bit_quant_type"] == "fp4"


# ---- what load_model asks for ----------------------------------------------------------------


class FakeModel:
    """Stands in for a loaded model; records what the evaluator does with it."""

    def __init__(self, calls: list[tuple[str, Any]], name: str) -> None:
        self.calls, self.name = calls, name

    def merge_and_unload(self) -> FakeModel:
        self.calls.append(("merge_and_unload", self.name))
        return FakeModel(self.calls, "merged")

    def to(self, device: str) -> FakeModel:
        self.calls.append(("to", device))
        return self

    def eval(self) -> FakeModel:
        self.calls.append(("eval", self.name))
        return self


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recorded: list[tuple[str, Any]] = []

    def base(model_dir: Any, **kwargs: Any) -> FakeModel:
        recorded.append(("base", kwargs))
        return FakeModel(recorded, "base")

    def adapter(model: FakeModel, adapter_dir: str, **kwargs: Any) -> FakeModel:
        recorded.append(("adapter", (model.name, adapter_dir)))
        return FakeModel(recorded, "peft")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", base)
    monkeypatch.setattr(PeftModel, "from_pretrained", adapter)
    return recorded


def test_load_model_4bit_builds_axolotls_bnb_config_and_does_not_merge(
        calls: list[tuple[str, Any]]) -> None:
    import torch
    from transformers import BitsAndBytesConfig

    scoring = E.scoring_for(QLORA_GPU, "gpu", cuda=True, bf16_supported=True)
    model = E.load_model("base-dir", "adapter-dir", scoring)
    (_, kwargs), = [c for c in calls if c[0] == "base"]
    bnb = kwargs["quantization_config"]
    assert isinstance(bnb, BitsAndBytesConfig) and bnb.load_in_4bit and not bnb.load_in_8bit
    assert bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant is True
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16
    assert bnb.bnb_4bit_quant_storage == torch.bfloat16
    assert bnb.llm_int8_threshold == 6.0 and bnb.llm_int8_has_fp16_weight is False
    assert kwargs["dtype"] == torch.bfloat16 and kwargs["device_map"] == "cuda"
    assert ("adapter", ("base", "adapter-dir")) in calls
    assert not [c for c in calls if c[0] in ("merge_and_unload", "to")]
    assert model.name == "peft"  # the PeftModel itself, the adapter unmerged


def test_load_model_4bit_base_is_the_same_4bit_model(calls: list[tuple[str, Any]]) -> None:
    scoring = E.scoring_for(QLORA_GPU, "gpu", cuda=True, bf16_supported=False)
    model = E.load_model("base-dir", None, scoring)
    (_, kwargs), = [c for c in calls if c[0] == "base"]
    assert kwargs["quantization_config"].load_in_4bit and model.name == "base"
    assert not [c for c in calls if c[0] in ("adapter", "merge_and_unload", "to")]


def test_load_model_lora_merges_into_the_unquantized_base(calls: list[tuple[str, Any]]) -> None:
    model = E.load_model("base-dir", "adapter-dir", E.MERGED)
    (_, kwargs), = [c for c in calls if c[0] == "base"]
    assert "quantization_config" not in kwargs and "device_map" not in kwargs
    assert ("merge_and_unload", "peft") in calls and model.name == "merged"


def test_evaluate_loads_with_the_scoring_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    scoring = E.scoring_for(QLORA_GPU, "gpu", cuda=True, bf16_supported=True)
    monkeypatch.setattr(E, "load_model", lambda *args: seen.append(args) or object())
    monkeypatch.setattr(E, "answer_loss", lambda *_: (1.0, 3))
    result = E.evaluate("base-dir", None, [], "text", adapter_dir="adapter-dir", scoring=scoring,
                        with_exact_match=False)
    assert seen == [("base-dir", "adapter-dir", scoring)] and result.loss == 1.0
