"""An Axolotl plugin that makes early stopping ignore negligible gains (a minimum delta).

Why: Axolotl passes only `early_stopping_patience` to transformers' EarlyStoppingCallback, so
any decrease counts as progress. Measured on SmolLM2-135M (ticket triage, CPU): eval loss went
4.40 -> 0.022 -> 0.0017 -> 0.00023 at steps 0/36/72/108 of a 360-step budget, and each
vanishing gain reset the patience. With a minimum delta of 0.005 nats per answer token such a
run stops once the loss has settled, and the best checkpoint (restored as before) is the same.
Once the best loss is itself below the minimum delta the run is solved and stops at the next
evaluation from the budget's earliest stop step on (SolvedStopping). The plugin also drops
Axolotl's forced evaluation at step 0, adds the callback that reports training progress
(progress.py) and, for the final training, the one that uploads each checkpoint
(checkpoints.py); it has the patience counter restored on a resume (resume.py).
Loaded only inside the Axolotl subprocess (`plugins:` in the trainer's local config).
"""

from __future__ import annotations

import os
from typing import Any

from axolotl.integrations.base import BasePlugin
from transformers import EarlyStoppingCallback, TrainerCallback

# EARLIEST_STOP_ENV: the budget's floor, no stop of ours before it; min_delta(): the gain that
# counts (train.py owns both: the trainer reports the minimum delta in metrics.json).
from .checkpoints import CheckpointUploader
from .progress import ProgressCallback
from .train import EARLIEST_STOP_ENV, min_delta

PLUGIN = "finetune_trainer.stopping.MinDeltaStoppingPlugin"


class SolvedStopping(TrainerCallback):
    """Stop once the best eval loss is at or below the minimum delta.

    No later evaluation can then improve by more than the minimum delta (a loss is never below
    0), so waiting out the patience only spends compute: measured on SmolLM2-135M invoice
    extraction, eval loss 0.0022 at step 27 of 90 already gave 100% exact match, and the run
    went on to step 54 for gains of 0.001.
    """

    def __init__(self, threshold: float, earliest_step: int) -> None:
        self.threshold = threshold
        self.earliest_step = max(1, earliest_step)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **_: Any) -> None:
        # state.best_metric is updated after the callbacks run: take this evaluation in too.
        seen = [x for x in ((metrics or {}).get("eval_loss"), state.best_metric) if x is not None]
        if seen and state.global_step >= self.earliest_step and min(seen) <= self.threshold:
            control.should_training_stop = True


class MinDeltaStoppingPlugin(BasePlugin):
    """The one plugin the trainer loads: progress reporting, no step-0 evaluation, and early
    stopping with a minimum delta."""

    def get_training_args(self, cfg: Any) -> dict[str, Any]:
        # Axolotl forces an evaluation at step 0; the trainer has already measured the base
        # model on every validation record with its own evaluator, so that pass is only cost.
        # A resumed run restores EarlyStoppingCallback's patience counter from the checkpoint's
        # trainer_state.json (transformers' default is a fresh counter).
        return {"eval_on_start": False, "restore_callback_states_from_checkpoint": True}

    def add_callbacks_post_trainer(self, cfg: Any, trainer: Any) -> list[Any]:
        callbacks: list[Any] = [ProgressCallback.from_env()]
        uploader = CheckpointUploader.from_env()
        if uploader is not None:
            callbacks.append(uploader)
        patience = int(cfg.early_stopping_patience or 0)
        if patience:
            callbacks += [EarlyStoppingCallback(early_stopping_patience=patience,
                                                early_stopping_threshold=min_delta()),
                          SolvedStopping(min_delta(), int(os.environ.get(EARLIEST_STOP_ENV) or 0))]
        return callbacks
