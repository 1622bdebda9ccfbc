"""Render and budget: pure functions, parametrized tables and one golden file.

Axolotl's own validation of these configs runs in tests/integration/test_render_axolotl.py
(it imports the training stack).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_operator.budget import MIN_STOP_FRACTION, derive_budget, model_size_billions
from finetune_contract import FileDigest, LengthStats, Manifest, RunLayout
from finetune_operator.render import BUDGET_KEY, explain_axolotl_config, render_axolotl_config
from finetune_operator.spec import parse_spec

GOLDEN = Path(__file__).parent / "golden" / "axolotl_cpu.yaml"
LAYOUT = RunLayout(root="s3://adapters", namespace="ml", task="triage", run_id="r0123abcd")


def manifest(*, train: int = 120, val: int = 30, shape: str = "messages", p50: int = 120,
             p95: int = 160, tmax: int = 180, out_chars: int = 1100) -> Manifest:
    def digest(uri: str, n: int) -> FileDigest:
        return FileDigest(uri=uri, sha256="0" * 64, records=n, bytes=100 * n)

    return Manifest(
        run_id=LAYOUT.run_id, created_at="2026-01-01T00:00:00Z", seed=42, validation_fraction=0.2,
        format="chat" if shape == "messages" else "completion", record_shape=shape, sources=[],
        records_read=train + val, records_kept=train + val, train_samples=train,
        validation_samples=val,
        lengths=LengthStats(total_p50=p50, total_p95=p95, total_max=tmax, output_chars_train=out_chars),
        train=digest(LAYOUT.train, train), validation=digest(LAYOUT.validation, val))


def spec(training: dict[str, Any] | None = None, model: str = "HuggingFaceTB/SmolLM2-135M-Instruct",
         seed: int = 42):  # type: ignore[no-untyped-def]
    return parse_spec({"baseModel": {"name": model}, "dataset": {"uri": "s3://tasks/t/", "seed": seed},
                       "output": {"uri": "s3://adapters/"}, "training": training or {}})


def render(training: dict[str, Any] | None = None, profile: str = "cpu", **kw: Any) -> dict[str, Any]:
    return render_axolotl_config(spec(training), manifest(**kw), LAYOUT, profile=profile)  # type: ignore[arg-type]


# ---- defaults ------------------------------------------------------------------------------

@pytest.mark.parametrize("key, expected", [
    ("adapter", "lora"), ("lora_r", 16), ("lora_alpha", 32), ("lora_dropout", 0.05),
    ("lora_target_linear", True), ("train_on_inputs", False), ("val_set_size", 0),
    ("load_best_model_at_end", True), ("metric_for_best_model", "eval_loss"),
    ("greater_is_better", False), ("early_stopping_patience", 3), ("seed", 42),
    ("excess_length_strategy", "drop"), ("trust_remote_code", False),
])
def test_small_data_safe_defaults(key: str, expected: Any) -> None:
    assert render()[key] == expected


def test_datasets_are_the_prepared_split_with_masked_prompts() -> None:
    cfg = render()
    assert cfg["datasets"] == [{"path": LAYOUT.train, "ds_type": "json", "type": "chat_template",
                                "field_messages": "messages", "roles_to_train": ["assistant"],
                                "train_on_eos": "turn"}]
    assert cfg["test_datasets"][0]["path"] == LAYOUT.validation
    assert cfg["test_datasets"][0]["type"] == "chat_template"
    assert cfg["chat_template"] == "tokenizer_default"


def test_completion_records_train_on_every_token() -> None:
    cfg = render(shape="text")
    assert cfg["datasets"][0]["type"] == "completion" and cfg["datasets"][0]["field"] == "text"
    assert "chat_template" not in cfg


def test_train_on_inputs_trains_every_role() -> None:
    cfg = render({"trainOnInputs": True})
    assert cfg["train_on_inputs"] is True
    assert cfg["datasets"][0]["roles_to_train"] == ["system", "user", "assistant"]


# ---- cadence and budget --------------------------------------------------------------------

@pytest.mark.parametrize("train, out_chars", [(100, 300), (120, 1100), (150, 20000), (2000, 400000),
                                              (20, 100)])
def test_cadence_gives_enough_evaluations_and_saves_with_them(train: int, out_chars: int) -> None:
    cfg = render(train=train, out_chars=out_chars)
    assert cfg["save_steps"] == cfg["eval_steps"]
    assert cfg["max_steps"] // cfg["eval_steps"] >= 8
    assert cfg[BUDGET_KEY]["evaluations"] >= 8


@pytest.mark.parametrize("train, out_chars, more_than", [
    (120, 300, (120, 20000)),     # few answer tokens -> more steps than a rich task of equal size
    (120, 1100, (120, 20000)),
])
def test_small_signal_tasks_get_more_steps(train: int, out_chars: int, more_than: tuple[int, int]) -> None:
    rich = render(train=more_than[0], out_chars=more_than[1])
    assert render(train=train, out_chars=out_chars)["max_steps"] > rich["max_steps"]


@pytest.mark.parametrize("train, lo, hi", [(5, 30, 30), (100_000, 2000, 2000)])
def test_step_budget_has_a_floor_and_a_cap(train: int, lo: int, hi: int) -> None:
    assert lo <= render(train=train, val=max(10, train // 10))["max_steps"] <= hi


@pytest.mark.parametrize("model, lr", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", 5e-4), ("Qwen/Qwen2.5-0.5B-Instruct", 5e-4),
    ("meta-llama/Llama-3.1-8B", 2e-4), ("Qwen/Qwen2.5-72B", 1e-4), ("/models/mine", 2e-4),
])
def test_learning_rate_by_model_size(model: str, lr: float) -> None:
    cfg = render_axolotl_config(spec(model=model), manifest(), LAYOUT, profile="cpu")
    assert cfg["learning_rate"] == lr
    assert 1 <= cfg["warmup_steps"] < cfg["max_steps"] // 5


@pytest.mark.parametrize("name, size", [("SmolLM2-135M", 0.135), ("Qwen2.5-0.5B", 0.5),
                                        ("Llama-3.1-8B-Instruct", 8.0), ("my-model", None)])
def test_model_size_from_name(name: str, size: float | None) -> None:
    assert model_size_billions(name) == size


# ---- sequence_len and packing --------------------------------------------------------------

@pytest.mark.parametrize("p50, p95, tmax, packing", [
    (400, 420, 440, False),     # near-equal lengths: padding wastes little, packing does not pay
    (200, 1600, 2000, True),    # widely varying: padding dominates, packing pays
    (60, 70, 80, False),        # short and even
])
def test_packing_only_where_it_cuts_computed_tokens(p50: int, p95: int, tmax: int, packing: bool) -> None:
    cfg = render(p50=p50, p95=p95, tmax=tmax)
    assert cfg["sample_packing"] is packing
    assert cfg["pad_to_sequence_len"] is packing
    assert cfg["eval_sample_packing"] is False  # 30 validation records: small


@pytest.mark.parametrize("p95, tmax", [(400, 440), (800, 4000)])
def test_sequence_len_covers_a_high_percentile_rounded_up(p95: int, tmax: int) -> None:
    cfg = render(p50=p95 - 40, p95=p95, tmax=tmax)
    assert cfg["sequence_len"] % 64 == 0
    assert cfg["sequence_len"] >= p95 / 4
    budget = cfg[BUDGET_KEY]
    assert budget["recordsOverSequenceLenMax"] == ("0" if tmax <= 1.5 * p95 else "<= 5% of records")


def test_large_validation_split_packs_its_eval() -> None:
    assert render(p50=200, p95=1600, tmax=2000, val=400, train=4000)["eval_sample_packing"] is True


# ---- profiles ------------------------------------------------------------------------------

@pytest.mark.parametrize("profile, kernels, bf16, tf32", [("cpu", False, False, False),
                                                          ("gpu", True, "auto", True)])
def test_profile_sets_device_only_keys(profile: str, kernels: bool, bf16: Any, tf32: bool) -> None:
    cfg = render(profile=profile)
    for key in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel"):
        assert cfg[key] is kernels
    assert cfg["lora_embedding_kernel"] is False
    assert cfg["bf16"] == bf16 and cfg["fp16"] is False and cfg["tf32"] is tf32
    assert cfg["attn_implementation"] == "sdpa"
    assert "flash_attention" not in cfg and "flex_attention" not in cfg


@pytest.mark.parametrize("profile, adapter, four_bit", [("gpu", "qlora", True), ("cpu", "lora", None)])
def test_qlora_only_on_gpu(profile: str, adapter: str, four_bit: bool | None) -> None:
    cfg = render({"adapter": "qlora"}, profile=profile)
    assert cfg["adapter"] == adapter and cfg.get("load_in_4bit") is four_bit


# ---- overrides -----------------------------------------------------------------------------

@pytest.mark.parametrize("training, key, value", [
    ({"maxSteps": 77}, "max_steps", 77),
    ({"learningRate": 1e-3}, "learning_rate", 1e-3),
    ({"samplePacking": True}, "sample_packing", True),
    ({"sequenceLen": 1024}, "sequence_len", 1024),
    ({"microBatchSize": 2}, "micro_batch_size", 2),
    ({"earlyStoppingPatience": 5}, "early_stopping_patience", 5),
    ({"lora": {"r": 8, "alpha": 16, "dropout": 0.0}}, "lora_r", 8),
    ({"lora": {"targetModules": ["q_proj", "v_proj"]}}, "lora_target_modules", ["q_proj", "v_proj"]),
    ({"axolotl": {"lr_scheduler": "linear", "max_steps": 9}}, "max_steps", 9),
])
def test_spec_training_overrides_the_derived_values(training: dict[str, Any], key: str, value: Any) -> None:
    assert render(training)[key] == value


def test_epochs_override_sets_the_step_budget() -> None:
    cfg = render({"epochs": 2})
    assert cfg[BUDGET_KEY]["epochs"] == 2.0
    per_step = cfg[BUDGET_KEY]["recordsPerStep"]
    assert cfg["max_steps"] == max(30, math.ceil(120 * 2 / per_step))


def test_axolotl_overrides_are_merged_last() -> None:
    cfg = render({"axolotl": {"bf16": True, "sample_packing": True}}, profile="cpu")
    assert cfg["bf16"] is True and cfg["sample_packing"] is True


def test_early_stop_never_before_a_minimum_share_of_the_budget() -> None:
    budget = render()[BUDGET_KEY]
    assert budget["earliestStopStep"] >= MIN_STOP_FRACTION * budget["maxSteps"]


def test_budget_overrides_are_recorded() -> None:
    budget, why = derive_budget(manifest(), model_name="x", adapter="lora", profile="cpu",
                                overrides={"max_steps": 50})
    assert budget.max_steps == 50 and "spec.training" in why["max_steps"]


# ---- explain, purity, golden --------------------------------------------------------------

@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_explain_covers_every_key_in_order(profile: str) -> None:
    cfg = render(profile=profile)
    explained = explain_axolotl_config(spec(), manifest(), LAYOUT, profile=profile)  # type: ignore[arg-type]
    assert [k for k, _ in explained] == [*cfg, "(world)"]
    assert all(why and "axolotl setting" not in why for _, why in explained)
    text = dict(explained)
    assert "characters" in text[BUDGET_KEY] or "(est.)" in text["sequence_len"]


@pytest.mark.parametrize(("resources", "model", "keys", "says"), [
    ({"gpu": 8, "gpuMemoryGiB": 80}, "meta-llama/Llama-3.1-70B-Instruct", {"fsdp_version", "fsdp_config"},
     "FSDP over 8 GPUs"),
    ({"gpu": 4, "nodes": 2, "gpuMemoryGiB": 80}, "Qwen/Qwen2.5-0.5B-Instruct", set(), "plain DDP"),
    ({"gpu": 1}, "Qwen/Qwen2.5-0.5B-Instruct", set(), "GPU memory is unknown"),
])
def test_sharding_auto_is_explained(resources: dict[str, Any], model: str, keys: set[str],
                                    says: str) -> None:
    task = parse_spec({"baseModel": {"name": model}, "dataset": {"uri": "s3://tasks/t/"},
                       "output": {"uri": "s3://adapters/"}, "resources": resources})
    cfg = render_axolotl_config(task, manifest(), LAYOUT, profile="gpu")
    assert keys == {"fsdp_version", "fsdp_config", "deepspeed"} & set(cfg)
    world = dict(explain_axolotl_config(task, manifest(), LAYOUT, profile="gpu"))["(world)"]
    assert says in world and "divides max_steps" in world, world


def test_render_imports_no_training_stack() -> None:
    code = ("import sys, finetune_operator.render, finetune_operator.budget;"
            "bad = [m for m in ('torch', 'axolotl', 'transformers') if m in sys.modules];"
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_render_is_deterministic() -> None:
    assert render() == render()


def test_golden_cpu_config() -> None:
    """A missing golden file fails; `make golden` (UPDATE_GOLDEN=1) rewrites it: review the diff."""
    text = yaml.safe_dump(render(), sort_keys=False)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    if not GOLDEN.exists():
        pytest.fail(f"golden file {GOLDEN} is missing: run `make golden` and review it")
    assert text == GOLDEN.read_text(), "rendered config changed: review, then `make golden`"
