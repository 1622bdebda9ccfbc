"""Checkpoints to S3 at each evaluation, so a new pod can go on where a lost one stopped.

Why a TrainerCallback inside the Axolotl process: `on_save` runs right after the Trainer has
written `checkpoint-N/` (save_steps == eval_steps, so after each evaluation) and before training
goes on, so the folder is whole and nothing rotates it away during the upload. The upload is
synchronous: a LoRA checkpoint (adapter, optimizer, scheduler, RNG state, trainer_state.json
with the early-stopping counter) is a few MB, and a marker that says "done" must mean it.

Order (contract.checkpoint): the old marker is deleted, every file is uploaded, the marker goes
last; then every other checkpoint but the best and this one is deleted, marker first. Only the
final training uploads (train.py sets CHECKPOINT_RUN_ENV for it, never for search candidates).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetune_contract import RunLayout
from finetune_contract.checkpoint import (CheckpointMarker, EarlyStoppingState, describe,
                                          marker_uri, step_of)
from finetune_contract.storage import Storage, StorageError, is_s3
from finetune_contract.tracker import utc_now

from .train import CHECKPOINT_RUN_ENV

TRAINER_STATE = "trainer_state.json"
EARLY_STOPPING = "EarlyStoppingCallback"


def _log(message: str) -> None:
    print(f"finetune-trainer: {message}", file=sys.stderr, flush=True)


def early_stopping_state(trainer_state: dict[str, Any]) -> EarlyStoppingState | None:
    """The early-stopping part of a saved trainer_state.json: the callback's counter (transformers
    keeps it under stateful_callbacks) and the Trainer's best metric and step."""
    stored = (trainer_state.get("stateful_callbacks") or {}).get(EARLY_STOPPING)
    if isinstance(stored, list):
        stored = stored[-1] if stored else None
    if not stored:
        return None
    args, attributes = stored.get("args") or {}, stored.get("attributes") or {}
    return EarlyStoppingState(
        patience=args.get("early_stopping_patience"),
        threshold=args.get("early_stopping_threshold"),
        patience_counter=int(attributes.get("early_stopping_patience_counter") or 0),
        best_metric=trainer_state.get("best_metric"),
        best_step=trainer_state.get("best_global_step"))


def marker_for(folder: Path, run_id: str, step: int) -> CheckpointMarker:
    """The marker of a saved checkpoint folder, from its files and its trainer_state.json."""
    state = json.loads((folder / TRAINER_STATE).read_text())
    evals = {int(e["step"]): float(e["eval_loss"]) for e in state.get("log_history", [])
             if "eval_loss" in e}
    best_step = state.get("best_global_step")
    return CheckpointMarker(
        run_id=run_id, step=step, max_steps=state.get("max_steps") or None,
        epoch=state.get("epoch"), eval_loss=evals.get(step), best_step=best_step,
        best_eval_loss=state.get("best_metric"), early_stopping=early_stopping_state(state),
        files=describe(folder), created=utc_now())


def upload(storage: Storage, layout: RunLayout, folder: Path, step: int) -> CheckpointMarker:
    """Upload `folder` as `checkpoints/step-<step>/`, the marker last."""
    marker = marker_for(folder, layout.run_id, step)
    storage.delete(marker_uri(layout, step))  # a stale marker must not vouch for new files
    for f in marker.files:
        storage.upload_file(folder / f.name, layout.checkpoint(step) + f.name)
    storage.write_text(marker_uri(layout, step), marker.to_json(), "application/json")
    return marker


def stored(storage: Storage, layout: RunLayout) -> dict[int, list[str]]:
    """The run's checkpoint objects by step (complete or not)."""
    if not is_s3(layout.checkpoints) and not Path(layout.checkpoints).is_dir():
        return {}
    by_step: dict[int, list[str]] = {}
    for obj in storage.list(layout.checkpoints):
        step = step_of(layout, obj.uri)
        if step is not None:
            by_step.setdefault(step, []).append(obj.uri)
    return by_step


def prune(storage: Storage, layout: RunLayout, keep: set[int]) -> list[int]:
    """Delete every checkpoint whose step is not in `keep`, each marker first; the steps gone."""
    gone = {step: uris for step, uris in stored(storage, layout).items() if step not in keep}
    for step, uris in sorted(gone.items()):
        marker = marker_uri(layout, step)
        for uri in sorted(uris, key=lambda u: u != marker):  # the marker first
            storage.delete(uri)
    return sorted(gone)


class CheckpointUploader(TrainerCallback):
    """Uploads each checkpoint the Trainer saves, keeps the best and the last in S3."""

    def __init__(self, run_uri: str, storage: Storage | None = None) -> None:
        self.layout = RunLayout.from_prefix(run_uri)
        self.storage = storage or Storage()

    @classmethod
    def from_env(cls) -> CheckpointUploader | None:
        run_uri = os.environ.get(CHECKPOINT_RUN_ENV)
        return cls(run_uri) if run_uri else None

    def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if not state.is_world_process_zero:
            return
        step = int(state.global_step)
        folder = Path(args.output_dir) / f"checkpoint-{step}"
        started = time.monotonic()
        try:
            marker = upload(self.storage, self.layout, folder, step)
            keep = {step} | ({int(marker.best_step)} if marker.best_step else set())
            gone = prune(self.storage, self.layout, keep)
        except (StorageError, OSError, ValueError) as err:
            # A lost upload costs only the resume point, never the run.
            _log(f"checkpoint step-{step} not uploaded: {err}")
            return
        size = sum(f.bytes for f in marker.files)
        _log(f"checkpoint step-{step} uploaded to {self.layout.checkpoint(step)} "
             f"({size / 1e6:.1f} MB, {time.monotonic() - started:.1f}s; best step "
             f"{marker.best_step}; removed {', '.join(f'step-{s}' for s in gone) or 'none'})")

