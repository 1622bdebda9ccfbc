"""How a run splits the model over its GPUs: `spec.training.sharding`, and what `auto` picks.

LoRA trains a few million parameters, so with plain DDP every GPU holds the whole frozen base
plus activations; that is the cheapest layout while the base fits. When it does not, the base's
weights are sharded: FSDP (Axolotl's `fsdp_config`, FSDP2) or DeepSpeed ZeRO (`deepspeed`, an
inline config). `auto` decides from the base's parameter count and the memory of one GPU:

    weights = parameters x bytes per parameter (2 for bf16 LoRA, 0.5 for 4-bit QLoRA)
    fits    = weights <= FIT_SHARE x GPU memory (the rest: activations, LoRA optimizer state,
              CUDA context)

It fits: `none`. It does not, and there is more than one GPU: `fsdp` (Axolotl documents FSDP
with QLoRA; ZeRO-3 with 4-bit weights is not supported there). One GPU that is too small: `none`
with a warning: sharding needs a second GPU, so the choice is a bigger GPU, QLoRA or a smaller
model. The parameter count comes from `spec.baseModel.parameters` or from the model's name
(`...-135M`, `...-8B`); when neither says, `auto` keeps `none` and says why.
"""

from __future__ import annotations

import re
from typing import Any, Literal, NamedTuple

Sharding = Literal["auto", "none", "fsdp", "deepspeed-zero2", "deepspeed-zero3"]
FIT_SHARE = 0.6
BYTES_PER_PARAMETER = {"lora": 2.0, "qlora": 0.5}
_SIZE_IN_NAME = re.compile(r"(?<![\w.])(?:(\d+)x)?(\d+(?:\.\d+)?)([BbMm])(?![a-zA-Z])")


class Choice(NamedTuple):
    mode: Literal["none", "fsdp", "deepspeed-zero2", "deepspeed-zero3"]
    reason: str


def parameters_from_name(name: str) -> int | None:
    """135M -> 135e6, Llama-3.1-8B -> 8e9, 8x7B -> 56e9 (experts counted whole: an upper bound,
    which is the safe side for memory); the last size in the name."""
    sizes = _SIZE_IN_NAME.findall(name.rsplit("/", 1)[-1].replace("_", "-").replace("-", " "))
    if not sizes:
        return None
    experts, number, unit = sizes[-1]
    return int(int(experts or 1) * float(number) * (1e9 if unit in "Bb" else 1e6))


def choose(requested: Sharding, *, adapter: str, parameters: int | None,
           gpu_memory_gib: float | None, gpus: int) -> Choice:
    """The layout for a run of `gpus` GPUs in all; `reason` is one line for render --explain."""
    if requested != "auto":
        return Choice(requested, f"set in spec.training.sharding ({requested})")
    if parameters is None:
        return Choice("none", "auto: the parameter count is unknown (set spec.baseModel.parameters "
                              "or spec.training.sharding); kept none")
    if gpu_memory_gib is None:
        return Choice("none", "auto: the GPU memory is unknown (set spec.resources.gpuMemoryGiB "
                              "or the operator's FINETUNE_GPU_MEMORY_GIB); kept none")
    weights = parameters * BYTES_PER_PARAMETER.get(adapter, 2.0) / 2**30
    budget = FIT_SHARE * gpu_memory_gib
    sizes = (f"{parameters / 1e9:.2g}B parameters = {weights:.1f} GiB of {adapter} weights vs "
             f"{budget:.1f} GiB ({FIT_SHARE:.0%} of {gpu_memory_gib:g} GiB)")
    if weights <= budget:
        return Choice("none", f"auto: {sizes}: fits on each GPU, plain DDP")
    if gpus > 1:
        return Choice("fsdp", f"auto: {sizes}: too big for one GPU, FSDP over {gpus} GPUs")
    return Choice("none", f"auto: {sizes}: too big for one GPU and there is no second one to "
                          f"shard over; use a bigger GPU, qlora or a smaller model")


def axolotl_keys(mode: str, layer_class: str | None = None) -> dict[str, Any]:
    """The Axolotl config keys of a layout (none: no keys)."""
    if mode == "fsdp":
        cfg: dict[str, Any] = {"offload_params": False,
                               "state_dict_type": "FULL_STATE_DICT",
                               "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                               "reshard_after_forward": True}
        if layer_class:
            cfg["transformer_layer_cls_to_wrap"] = layer_class
        return {"fsdp_version": 2, "fsdp_config": cfg}
    if mode in ("deepspeed-zero2", "deepspeed-zero3"):
        stage = 2 if mode.endswith("2") else 3
        zero: dict[str, Any] = {"stage": stage, "overlap_comm": True,
                                "contiguous_gradients": True}
        if stage == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        return {"deepspeed": {"zero_optimization": zero, "bf16": {"enabled": "auto"},
                              "gradient_accumulation_steps": "auto",
                              "train_micro_batch_size_per_gpu": "auto",
                              "train_batch_size": "auto", "gradient_clipping": "auto"}}
    return {}
