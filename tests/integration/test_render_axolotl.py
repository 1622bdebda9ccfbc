"""Every rendered config passes Axolotl's own validation (the real axolotl 0.19 schema).

Imports the training stack, so it lives here rather than in the unit tier. What is real:
axolotl.utils.config.validate_config on the exact dicts the operator would ship.
"""

from __future__ import annotations

from typing import Any

import pytest
# A plain import: without axolotl this module fails to collect (never a skip). .venv has it.
from axolotl.utils.config import validate_config
from axolotl.utils.dict import DictDefault

from tests.unit.test_render import render

CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("defaults", {}, {}),
    ("packing", {}, {"p50": 200, "p95": 1600, "tmax": 2000}),
    ("completion", {}, {"shape": "text"}),
    ("large-val", {}, {"p50": 200, "p95": 1600, "tmax": 2000, "val": 400, "train": 4000}),
    ("qlora", {"adapter": "qlora"}, {}),
    ("overrides", {"maxSteps": 40, "learningRate": 1e-3, "samplePacking": True,
                   "sequenceLen": 512, "trainOnInputs": True,
                   "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["q_proj"]}}, {}),
    ("axolotl-extra", {"axolotl": {"lr_scheduler": "linear", "weight_decay": 0.01}}, {}),
]


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
@pytest.mark.parametrize("name, training, data", CASES, ids=[c[0] for c in CASES])
def test_rendered_config_passes_axolotl_validation(name: str, training: dict[str, Any],
                                                    data: dict[str, Any], profile: str) -> None:
    cfg = render(training, profile=profile, **data)
    checked = validate_config(DictDefault(cfg))
    for key in ("sequence_len", "max_steps", "eval_steps", "save_steps", "sample_packing",
                "learning_rate", "lora_r", "attn_implementation"):
        assert checked[key] == cfg[key], key
    assert checked["val_set_size"] == 0
    if profile == "cpu":
        assert not checked.get("lora_mlp_kernel") and not checked.get("bf16")
