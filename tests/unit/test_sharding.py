"""spec.training.sharding: the parameter count read from a model name, what `auto` picks from the
count and one GPU's memory (with the reason render --explain prints), and the Axolotl keys."""

from __future__ import annotations

import pytest

from finetune_operator.sharding import axolotl_keys, choose, parameters_from_name


@pytest.mark.parametrize(("name", "parameters"), [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", 135_000_000),
    ("meta-llama/Llama-3.1-8B-Instruct", 8_000_000_000),
    ("Qwen/Qwen2.5-0.5B", 500_000_000),
    ("mistralai/Mixtral-8x7B-v0.1", 56_000_000_000),
    ("s3://models/my-finetune/", None),
    ("/models/gpt2", None),
])
def test_parameters_from_name(name: str, parameters: int | None) -> None:
    assert parameters_from_name(name) == parameters


@pytest.mark.parametrize(("adapter", "parameters", "gib", "gpus", "mode", "says"), [
    ("lora", 8_000_000_000, 80, 4, "none", "fits on each GPU"),      # 14.9 GiB of 48
    ("lora", 70_000_000_000, 80, 8, "fsdp", "FSDP over 8 GPUs"),      # 130 GiB of 48
    ("qlora", 70_000_000_000, 80, 1, "none", "fits on each GPU"),     # 32.6 GiB of 48
    ("lora", 70_000_000_000, 80, 1, "none", "no second one"),
    ("lora", None, 80, 4, "none", "parameter count is unknown"),
    ("lora", 8_000_000_000, None, 4, "none", "GPU memory is unknown"),
])
def test_auto(adapter: str, parameters: int | None, gib: float | None, gpus: int, mode: str,
              says: str) -> None:
    choice = choose("auto", adapter=adapter, parameters=parameters, gpu_memory_gib=gib, gpus=gpus)
    assert choice.mode == mode and says in choice.reason, choice


def test_an_explicit_choice_is_kept() -> None:
    choice = choose("deepspeed-zero3", adapter="lora", parameters=None, gpu_memory_gib=None, gpus=2)
    assert choice.mode == "deepspeed-zero3" and "spec.training.sharding" in choice.reason


def test_axolotl_keys() -> None:
    assert axolotl_keys("none") == {}
    fsdp = axolotl_keys("fsdp", "LlamaDecoderLayer")
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_config"]["transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    assert axolotl_keys("deepspeed-zero2")["deepspeed"]["zero_optimization"]["stage"] == 2
    assert axolotl_keys("deepspeed-zero3")["deepspeed"]["zero_optimization"]["stage"] == 3
