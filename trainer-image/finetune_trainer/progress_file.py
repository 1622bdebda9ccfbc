"""progress.json: the trainer's live figures in the run prefix, for the operator and people.

Why the parent process writes it: every progress line already passes through it (its own stage
changes and the TrainerCallback's lines from the Axolotl child, see train.follow), so one
ProgressTracker sees the whole run, fetch to upload, and S3 is written from one place. Written
at most every INTERVAL seconds, and at once on a stage change and on an evaluation (rare, and
what a reader waits for). A failed write costs a stale progress.json, never the run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from finetune_contract import ProgressEvent, RunLayout, RunProgress, one_line
from finetune_contract.storage import Storage, StorageError
from finetune_contract.tracker import ProgressTracker

INTERVAL = 10.0  # seconds between writes, evaluations and stage changes aside


class Throttle:
    """Says when a write is due: the first at once, then at most every `interval` seconds,
    unless forced."""

    def __init__(self, interval: float = INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.clock = interval, clock
        self._last: float | None = None

    def due(self, force: bool = False) -> bool:
        now = self.clock()
        if force or self._last is None or now - self._last >= self.interval:
            self._last = now
            return True
        return False


class ProgressFile:
    """Folds each progress line into RunProgress and writes it through `write` when due."""

    def __init__(self, write: Callable[[RunProgress], None], *, tracker: ProgressTracker | None = None,
                 throttle: Throttle | None = None) -> None:
        self.write, self.tracker = write, tracker or ProgressTracker()
        self.throttle = throttle or Throttle()
        self.pending: RunProgress | None = None
        self._failed = False

    @classmethod
    def for_run(cls, storage: Storage, layout: RunLayout) -> ProgressFile:
        return cls(lambda p: storage.write_text(layout.progress, p.to_json(), "application/json"))

    def update(self, event: ProgressEvent) -> None:
        stage = self.tracker.progress.stage
        self.pending = self.tracker.update(event)
        self._flush(force=event.stage != stage or event.eval_loss is not None)

    def flush(self) -> None:
        """Write what is pending now (the run's end)."""
        self._flush(force=True)

    def _flush(self, force: bool) -> None:
        if self.pending is None or not self.throttle.due(force):
            return
        try:
            self.write(self.pending)
            self.pending = None
        except (StorageError, OSError) as err:
            if not self._failed:  # one line, not one per step
                print(f"finetune-trainer: progress.json not written: {one_line(str(err))}",
                      file=sys.stderr, flush=True)
            self._failed = True
