"""FineTuneTask spec + prepared run -> Axolotl config (a plain dict), and why each value is there.

Pure: no torch, no axolotl, no I/O. The trainer's tests check every rendered config against
Axolotl's own validator (tests/integration), the operator never imports the training stack.
Data paths are the run's URIs; the trainer maps them to local copies before calling Axolotl.
Order of precedence: derived defaults < explicit spec.training fields < spec.training.axolotl.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from . import sharding
from .budget import derive_budget
from finetune_contract import (BUDGET_KEY, SEARCH_KEY, Manifest, RunLayout, SearchCandidatePlan,
                               SearchPlan)
from .spec import FineTuneTaskSpec

Profile = Literal["gpu", "cpu"]
MIN_SELECTION_RECORDS = 10      # fewer and the winner is chosen on noise
LORA_KERNELS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")
_TRAINING_OVERRIDES = ("epochs", "max_steps", "learning_rate", "micro_batch_size",
                       "gradient_accumulation_steps", "sequence_len", "sample_packing",
                       "early_stopping_patience")


def _explicit(spec: FineTuneTaskSpec) -> dict[str, Any]:
    """spec.training fields the user actually set (defaults do not count as overrides)."""
    t = spec.training
    return {k: getattr(t, k) for k in _TRAINING_OVERRIDES if k in t.model_fields_set}


def _is_hub_id(name: str) -> bool:
    return not name.startswith(("s3://", "/", ".", "~")) and name.count("/") == 1


def _dataset(uri: str, shape: str, train_on_inputs: bool) -> dict[str, Any]:
    if shape == "messages":
        ds: dict[str, Any] = {
            "path": uri, "ds_type": "json", "type": "chat_template", "field_messages": "messages",
            "roles_to_train": ["system", "user", "assistant"] if train_on_inputs else ["assistant"],
            "train_on_eos": "turn",
        }
    else:
        ds = {"path": uri, "ds_type": "json", "type": "completion", "field": "text"}
    return ds


def _render(spec: FineTuneTaskSpec, manifest: Manifest, layout: RunLayout,
            profile: Profile, gpu_memory_gib: float | None = None
            ) -> tuple[dict[str, Any], dict[str, str]]:
    if profile not in ("gpu", "cpu"):
        raise ValueError(f"profile must be gpu or cpu, got {profile!r}")
    t = spec.training
    adapter = t.adapter if profile == "gpu" else "lora"
    budget, why = derive_budget(manifest, model_name=spec.base_model.name, adapter=t.adapter,
                                profile=profile, overrides=_explicit(spec))
    cfg: dict[str, Any] = {"base_model": spec.base_model.name}
    why["base_model"] = "spec.baseModel.name (the trainer fetches s3:// and reads local paths)"
    if _is_hub_id(spec.base_model.name):
        cfg["revision_of_model"] = spec.base_model.revision
        why["revision_of_model"] = "spec.baseModel.revision"
    cfg["trust_remote_code"] = False
    why["trust_remote_code"] = "never run code shipped with a model"
    shape = manifest.record_shape
    if shape == "messages":
        cfg["chat_template"] = "tokenizer_default"
        why["chat_template"] = "the base model's own template, as it will be prompted after"
    cfg["datasets"] = [_dataset(layout.train, shape, t.train_on_inputs)]
    why["datasets"] = (f"the prepared train split ({manifest.train_samples} records); "
                       + ("chat_template trains on assistant turns + end-of-turn only"
                          if shape == "messages" and not t.train_on_inputs else
                          "completion: every token trained" if shape == "text" else
                          "trainOnInputs: every role trained"))
    cfg["test_datasets"] = [dict(_dataset(layout.validation, shape, t.train_on_inputs), split="train")]
    why["test_datasets"] = (f"the prepared validation split ({manifest.validation_samples} "
                            "records), never a second random split")
    cfg["val_set_size"] = 0
    why["val_set_size"] = "0: validation comes only from test_datasets"
    cfg["train_on_inputs"] = t.train_on_inputs
    why["train_on_inputs"] = "spec.training.trainOnInputs (false: prompt tokens masked)"

    cfg["sequence_len"] = budget.sequence_len
    cfg["excess_length_strategy"] = "drop"
    why["excess_length_strategy"] = "longer records are dropped and counted by the trainer"
    cfg["sample_packing"] = budget.sample_packing
    cfg["eval_sample_packing"] = budget.eval_sample_packing
    cfg["pad_to_sequence_len"] = budget.sample_packing
    why["pad_to_sequence_len"] = "constant-size packs when packing; pad per batch otherwise"

    cfg["adapter"] = adapter
    why["adapter"] = (f"spec.training.adapter ({t.adapter})" if adapter == t.adapter else
                      "qlora needs CUDA 4-bit kernels: lora on the cpu profile")
    if adapter == "qlora":
        cfg["load_in_4bit"] = True
        why["load_in_4bit"] = "qlora: 4-bit base weights"
    cfg["lora_r"], cfg["lora_alpha"], cfg["lora_dropout"] = t.lora.r, t.lora.alpha, t.lora.dropout
    why["lora_r"] = why["lora_alpha"] = why["lora_dropout"] = "spec.training.lora"
    if t.lora.target_modules:
        cfg["lora_target_modules"] = list(t.lora.target_modules)
        why["lora_target_modules"] = "spec.training.lora.targetModules"
    else:
        cfg["lora_target_linear"] = True
        why["lora_target_linear"] = "all linear layers: the most capacity per rank"

    cfg["micro_batch_size"] = budget.micro_batch_size
    cfg["gradient_accumulation_steps"] = budget.gradient_accumulation_steps
    why["gradient_accumulation_steps"] = "small data: every micro-batch is an optimizer step"
    cfg["max_steps"] = budget.max_steps
    cfg["num_epochs"] = max(1, math.ceil(budget.epochs))
    cfg["optimizer"] = "adamw_torch"
    why["optimizer"] = "plain AdamW: no bitsandbytes, same on both profiles"
    cfg["lr_scheduler"] = "cosine"
    why["lr_scheduler"] = "cosine decay after warmup"
    cfg["learning_rate"] = budget.learning_rate
    cfg["warmup_steps"] = budget.warmup_steps
    cfg["weight_decay"] = 0.0
    why["weight_decay"] = "0: LoRA dropout and early stopping regularise"

    cfg["eval_steps"] = cfg["save_steps"] = budget.eval_steps
    why["save_steps"] = "== eval_steps, or the restored best checkpoint could be stale"
    cfg["early_stopping_patience"] = budget.early_stopping_patience
    cfg["load_best_model_at_end"] = True
    cfg["metric_for_best_model"] = "eval_loss"
    cfg["greater_is_better"] = False
    why["load_best_model_at_end"] = why["metric_for_best_model"] = why["greater_is_better"] = (
        "the lowest validation loss is what ships, not the last step")
    cfg["save_total_limit"] = 3
    why["save_total_limit"] = "keeps disk small; the best checkpoint is never deleted"
    cfg["seed"] = spec.dataset.seed
    why["seed"] = "spec.dataset.seed, also the split's seed"
    cfg["logging_steps"] = 1
    why["logging_steps"] = "every step: the train curve goes into metrics.json"
    cfg["output_dir"] = "./outputs/adapter"
    why["output_dir"] = "local to the trainer; the best adapter is uploaded to " + layout.adapter
    cfg["save_safetensors"] = True
    why["save_safetensors"] = "safe, fast-loading adapter files"
    cfg["use_wandb"] = False
    why["use_wandb"] = "no external trackers: metrics.json is the record"

    _profile_keys(cfg, why, profile)
    _world_keys(cfg, why, spec, adapter, profile, gpu_memory_gib)
    cfg[BUDGET_KEY] = budget.wire()
    why[BUDGET_KEY] = ("every derived number, copied by the trainer into metrics.json `budget`; token "
                       "counts are estimated from characters/4 (no tokenizer in the operator); "
                       "the trainer counts them with the model's tokenizer, re-derives the step "
                       "schedule from the count and records both")

    if t.search is not None:
        plan = _search_plan(spec, manifest, budget.learning_rate)
        cfg[SEARCH_KEY] = plan.wire()
        why[SEARCH_KEY] = (
            f"spec.training.search: {len(plan.candidates)} candidates, each trained on "
            f"{manifest.train_samples - plan.selection_records} train records with the same "
            f"budget and early-stopped on a {plan.selection_records}-record slice of the train "
            "split; the lowest slice loss wins, and only the winner meets the validation split")

    if t.axolotl:
        cfg.update(t.axolotl)
        for key in t.axolotl:
            why[key] = "spec.training.axolotl (merged last, overrides the above)"
    return cfg, why


def _world_keys(cfg: dict[str, Any], why: dict[str, str], spec: FineTuneTaskSpec, adapter: str,
                profile: Profile, gpu_memory_gib: float | None) -> None:
    """The sharding of the run's GPUs (sharding.py); the world itself is the Job's env."""
    nodes, per_node = spec.resources.world_shape()
    world = (f"{nodes} node(s) x {per_node} process(es): the trainer divides max_steps, "
             "eval_steps, save_steps and warmup_steps by the world size")
    if profile != "gpu":
        why["sharding"] = f"{world}; none on the cpu profile (gloo DDP)"
        return
    res = spec.resources
    choice = sharding.choose(spec.training.sharding or "auto", adapter=adapter,
                             parameters=(spec.base_model.parameters
                                         or sharding.parameters_from_name(spec.base_model.name)),
                             gpu_memory_gib=res.gpu_memory_gi_b or gpu_memory_gib,
                             gpus=nodes * per_node)
    keys = sharding.axolotl_keys(choice.mode)
    cfg.update(keys)
    for key in keys:
        why[key] = choice.reason
    why["sharding"] = f"{world}; {choice.reason}"


def _search_plan(spec: FineTuneTaskSpec, manifest: Manifest, default_lr: float) -> SearchPlan:
    """The candidates (learning rate x rank) and the size of the selection slice."""
    t = spec.training
    assert t.search is not None
    n_train = manifest.train_samples
    selection = round(t.search.selection_fraction * n_train)
    if selection < MIN_SELECTION_RECORDS or n_train - selection < MIN_SELECTION_RECORDS:
        raise ValueError(
            f"spec.training.search: {n_train} train records x selectionFraction "
            f"{t.search.selection_fraction:g} gives a {selection}-record selection slice; at least "
            f"{MIN_SELECTION_RECORDS} records are needed on each side (raise selectionFraction or "
            "add samples)")
    rates = list(dict.fromkeys(t.search.learning_rates)) or [default_lr]
    ranks = list(dict.fromkeys(t.search.lora_ranks)) or [t.lora.r]
    candidates = [SearchCandidatePlan(learning_rate=lr, lora_r=r,
                                      lora_alpha=max(1, round(r * t.lora.alpha / t.lora.r)))
                  for r in ranks for lr in rates]
    return SearchPlan(selection_fraction=t.search.selection_fraction, selection_records=selection,
                      seed=spec.dataset.seed, candidates=candidates)


def _profile_keys(cfg: dict[str, Any], why: dict[str, str], profile: Profile) -> None:
    gpu = profile == "gpu"
    cfg["bf16"] = "auto" if gpu else False
    cfg["fp16"] = False
    cfg["tf32"] = gpu
    why["bf16"] = "bf16 where the GPU supports it" if gpu else "off: no half precision on CPU"
    why["fp16"] = "off: bf16 or fp32 only (fp16 LoRA needs loss scaling)"
    why["tf32"] = "tensor cores for fp32 matmuls" if gpu else "off: CUDA only"
    # flash-attn is not installed in the image (no wheel for torch 2.13): sdpa on both profiles;
    # it keeps packed samples from attending to each other.
    cfg["attn_implementation"] = "sdpa"
    why["attn_implementation"] = ("sdpa: masks packed samples apart; flash-attn is not in the "
                                  "image" if gpu else "sdpa: flash/flex/xformers need CUDA")
    if not gpu:
        cfg["sdpa_varlen"] = False
        why["sdpa_varlen"] = "off: the varlen kernel path is for CUDA; the block-diagonal mask works"
    for key in LORA_KERNELS:
        cfg[key] = gpu and key != "lora_embedding_kernel"
        why[key] = ("Triton LoRA kernels (CUDA)" if cfg[key] else
                    "off: Triton kernels need CUDA" if not gpu else
                    "off: embedding kernel gains little and breaks tied embeddings")
    cfg["gradient_checkpointing"] = False
    why["gradient_checkpointing"] = "off: small models and short records fit; it costs ~30% time"
    cfg["dataset_num_proc"] = 1 if not gpu else 4
    why["dataset_num_proc"] = ("1: on a few CPU cores, worker processes cost more than they save"
                               if not gpu else "4 tokenizing processes")
    cfg["dataloader_num_workers"] = 0 if not gpu else 2
    why["dataloader_num_workers"] = "2 loader workers" if gpu else "0: CPU cores go to compute"


def render_axolotl_config(spec: FineTuneTaskSpec, manifest: Manifest, layout: RunLayout, *,
                          profile: Profile = "gpu", gpu_memory_gib: float | None = None
                          ) -> dict[str, Any]:
    """The Axolotl config for this run (a dict in key order; yaml.safe_dump it)."""
    return _render(spec, manifest, layout, profile, gpu_memory_gib)[0]


def explain_axolotl_config(spec: FineTuneTaskSpec, manifest: Manifest, layout: RunLayout, *,
                           profile: Profile = "gpu", gpu_memory_gib: float | None = None
                           ) -> list[tuple[str, str]]:
    """(key, why) for every key of the rendered config, in config order, then how the run is
    spread over processes and GPUs (`sharding`, not a config key)."""
    cfg, why = _render(spec, manifest, layout, profile, gpu_memory_gib)
    out = []
    for key, value in cfg.items():
        if key == "datasets" or key == "test_datasets" or isinstance(value, dict):
            shown = "..."
        else:
            shown = value
        out.append((key, f"{shown} - {why.get(key, 'axolotl setting')}"))
    if "sharding" in why:
        out.append(("(world)", why["sharding"]))
    return out
