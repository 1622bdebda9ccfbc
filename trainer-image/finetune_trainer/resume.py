"""Resume a run from its last complete checkpoint in S3: a retry after exit 1, an evicted or
preempted pod, a deleted pod, a local run started again.

Why here (the trainer's parent) and not by Axolotl's auto-resume: Axolotl resumes only from
its local output_dir, and a new pod starts with an empty disk. So before training, the newest
checkpoint whose marker parses and whose every file matches the marker's sha256 is downloaded
into output_dir as `checkpoint-N/` (with its best checkpoint, which load_best_model_at_end
restores at the end) and handed to Axolotl as `resume_from_checkpoint`. Optimizer, scheduler,
RNG state and data position come back with it, and so does early stopping: the Trainer's best
metric from trainer_state.json, the patience counter from its stateful callbacks (stopping.py
turns restore_callback_states_from_checkpoint on). Anything else is skipped with one log line
naming it, and the next older checkpoint is tried; none left means step 0.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from finetune_contract import EvalPoint, RunLayout, one_line
from finetune_contract.checkpoint import CheckpointMarker, ResumeHistory, marker_uri, resumes_uri
from finetune_contract.storage import Storage, StorageError

from .checkpoints import TRAINER_STATE, stored

MARKER_MAX_BYTES = 1024 * 1024
# Why a stored checkpoint is skipped (each log line names the checkpoint and one of these).
NO_MARKER = "no marker: its upload did not finish"
UNREADABLE_MARKER = "unreadable marker"
OTHER_RUN = "its marker names another run or step"
UNREADABLE_FILE = "a file cannot be read"
BEST_INCOMPLETE = "its best checkpoint is not complete"


def _log(message: str) -> None:
    print(f"finetune-trainer: {message}", file=sys.stderr, flush=True)


@dataclass
class Resume:
    """The checkpoint this pod goes on from, downloaded into output_dir."""

    step: int
    folder: Path
    marker: CheckpointMarker

    def eval_history(self) -> list[EvalPoint]:
        """The eval curve up to the checkpoint (progress.json starts from it)."""
        state = json.loads((self.folder / TRAINER_STATE).read_text())
        return [EvalPoint(step=int(e["step"]), epoch=e.get("epoch"), eval_loss=float(e["eval_loss"]))
                for e in state.get("log_history", []) if "eval_loss" in e and e.get("step")]


def fetch(storage: Storage, layout: RunLayout, step: int, uris: list[str],
          out_dir: Path) -> CheckpointMarker | str:
    """Download checkpoint `step` into `out_dir/checkpoint-<step>/` and verify it against its
    marker: the marker, or why it does not count (the folder is then removed)."""
    marker_at = marker_uri(layout, step)
    if marker_at not in uris:
        return NO_MARKER
    try:
        marker = CheckpointMarker.model_validate_json(storage.read_text(marker_at, MARKER_MAX_BYTES))
    except (ValueError, StorageError) as err:
        return f"{UNREADABLE_MARKER}: {one_line(str(err), 160)}"
    if marker.step != step or marker.run_id != layout.run_id:
        return OTHER_RUN
    folder = out_dir / f"checkpoint-{step}"
    shutil.rmtree(folder, ignore_errors=True)
    try:
        for f in marker.files:
            storage.download_file(layout.checkpoint(step) + f.name, folder / f.name)
        problem = marker.problem(folder)
    except (StorageError, OSError) as err:
        problem = f"{UNREADABLE_FILE}: {one_line(str(err), 160)}"
    if problem:
        shutil.rmtree(folder, ignore_errors=True)
        return problem
    return marker


def choose(storage: Storage, layout: RunLayout, out_dir: Path,
           log: Callable[[str], None] = _log) -> Resume | None:
    """The newest complete checkpoint (and its best), downloaded; None to start from step 0."""
    by_step = stored(storage, layout)
    fetched: dict[int, CheckpointMarker | str] = {}

    def get(step: int) -> CheckpointMarker | str:
        if step not in fetched:
            fetched[step] = fetch(storage, layout, step, by_step.get(step, []), out_dir)
        return fetched[step]

    for step in sorted(by_step, reverse=True):
        got = get(step)
        if isinstance(got, str):
            log(f"skipping checkpoint step-{step} ({layout.checkpoint(step)}): {got}")
            continue
        best = got.best_step if got.best_step and got.best_step != step else None
        if best is not None and isinstance(get(best), str):
            log(f"skipping checkpoint step-{step} ({layout.checkpoint(step)}): {BEST_INCOMPLETE} "
                f"(step-{best}: {get(best)})")
            continue
        folder = out_dir / f"checkpoint-{step}"
        _settle(out_dir, keep=[s for s in (best, step) if s is not None])
        _point_best_at(folder, out_dir / f"checkpoint-{best or step}")
        return Resume(step=step, folder=folder, marker=got)
    return None


def _settle(out_dir: Path, keep: list[int]) -> None:
    """Only the kept folders stay, dated in step order: the Trainer's checkpoint rotation sorts
    by modification time and must see the resumed checkpoint as the newest."""
    for path in out_dir.glob("checkpoint-*"):
        if path.name.split("-")[-1] not in {str(s) for s in keep}:
            shutil.rmtree(path, ignore_errors=True)
    for i, step in enumerate(sorted(keep)):
        stamp = 1_000_000_000 + i
        os.utime(out_dir / f"checkpoint-{step}", (stamp, stamp))


def _point_best_at(folder: Path, best: Path) -> None:
    """trainer_state.json names the best checkpoint by the old pod's path; the Trainer restores
    the best model from it at the end, so it must name this pod's copy."""
    path = folder / TRAINER_STATE
    state = json.loads(path.read_text())
    if state.get("best_model_checkpoint"):
        state["best_model_checkpoint"] = str(best)
        path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


def record(storage: Storage, layout: RunLayout, from_step: int, at: str,
           log: Callable[[str], None] = _log) -> ResumeHistory:
    """Add this resume to checkpoints/resumes.json; the history with it."""
    uri = resumes_uri(layout)
    history = ResumeHistory()
    try:
        if storage.exists(uri):
            history = ResumeHistory.model_validate_json(storage.read_text(uri, MARKER_MAX_BYTES))
    except (ValueError, StorageError) as err:
        log(f"{uri} unreadable, counting resumes from here: {one_line(str(err), 160)}")
    history = history.add(from_step, at)
    storage.write_text(uri, history.to_json(), "application/json")
    return history


def previous(storage: Storage, layout: RunLayout) -> ResumeHistory:
    """The resumes recorded so far (empty when none or unreadable)."""
    uri = resumes_uri(layout)
    try:
        if storage.exists(uri):
            return ResumeHistory.model_validate_json(storage.read_text(uri, MARKER_MAX_BYTES))
    except (ValueError, StorageError):
        pass
    return ResumeHistory()
