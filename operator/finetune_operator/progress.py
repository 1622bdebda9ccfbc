"""status.progress from the trainer's `<run>/progress.json` (contract.RunProgress).

Why a summary and a throttle: the status is what `kubectl get` and every watcher of the task
receives, so it carries the few figures a person reads (percent, step, ETA, last eval loss), not
the eval curve, and changes at most once per interval per task (the trainer rewrites the file
every few seconds). A missing, oversized or invalid file is no error: the run simply has no
progress yet (an older trainer image, or a trainer still fetching the model).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

from finetune_contract import RunLayout, RunProgress
from finetune_contract.storage import Storage, StorageError
from .spec import ProgressStatus

MAX_BYTES = 64 * 1024  # a report with a long eval history is a few KiB


def parse(text: str | None) -> RunProgress | None:
    """The report, or None when there is none or it does not match the contract."""
    if not text:
        return None
    try:
        return RunProgress.model_validate_json(text)
    except ValueError:
        return None


def read(storage: Storage, layout: RunLayout) -> RunProgress | None:
    """Bounded read of the run's progress.json; None on any storage error (retried next tick)."""
    try:
        return parse(storage.read_text(layout.progress, MAX_BYTES))
    except (StorageError, UnicodeDecodeError):
        return None


def summary(p: RunProgress) -> ProgressStatus:
    """The figures status.progress keeps of a report."""
    return ProgressStatus(
        stage=p.stage, percent=p.percent, step=p.step, max_steps=p.max_steps,
        eta_seconds=round(p.eta_seconds) if p.eta_seconds is not None else None,
        last_eval_loss=p.last_eval_loss, resumed_from_step=p.resumed_from_step,
        updated=p.updated)


class Throttle:
    """At most one progress read (and so one patch) per task per `interval` seconds.

    Kept in the operator's Context (kopf.Memo), not in the status: a restarted operator just
    reads once more. The clock is injected so tests need no sleeps."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.clock = interval, clock
        self._last: dict[Hashable, float] = {}
        self._guard = threading.Lock()

    def due(self, key: Hashable) -> bool:
        """True (and the time is taken) when the task's last read is `interval` ago or more."""
        now = self.clock()
        with self._guard:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                return False
            self._last[key] = now
            return True

    def forget(self, key: Hashable) -> None:
        """The run ended: the next run's first report is read at once."""
        with self._guard:
            self._last.pop(key, None)
