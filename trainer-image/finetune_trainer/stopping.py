"""An Axolotl plugin that makes early stopping ignore negligible gains (a minimum delta).

Why: Axolotl passes only `early_stopping_patience` to transformers' EarlyStoppingCallback, so
any decrease counts as progress. Measured on SmolLM2-135M (ticket triage, CPU): eval loss went
4.40 -> 0.022 -> 0.0017 -> 0.00023 at steps 0/36/72/108 of a 360-step budget, and each
vanishing gain reset the patience. With a minimum delta of 0.005 nats per answer token such a
run stops once the loss has settled, and the best checkpoint (restored as before) is the same.
Loaded only inside the Axolotl subprocess (`plugins:` in the trainer's local config).
"""

from __future__ import annotations

import os
from typing import Any

from axolotl.integrations.base import BasePlugin
from transformers import EarlyStoppingCallback

MIN_DELTA_ENV = "FINETUNE_EARLY_STOPPING_MIN_DELTA"
DEFAULT_MIN_DELTA = 0.005
PLUGIN = "finetune_trainer.stopping.MinDeltaStoppingPlugin"


def min_delta() -> float:
    return float(os.environ.get(MIN_DELTA_ENV) or DEFAULT_MIN_DELTA)


class MinDeltaStoppingPlugin(BasePlugin):
    def add_callbacks_post_trainer(self, cfg: Any, trainer: Any) -> list[Any]:
        patience = int(cfg.early_stopping_patience or 0)
        if not patience:
            return []
        return [EarlyStoppingCallback(early_stopping_patience=patience,
                                      early_stopping_threshold=min_delta())]
