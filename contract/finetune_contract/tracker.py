"""RunProgress (progress.json) folded from the trainer's progress lines: rates, ETA, eval curve.

Why here and not in the trainer: the trainer writes what this computes to progress.json (the
operator's status.progress copies it) and the local runner draws the same figures from the same
lines, so a percent, an ETA or a last eval loss cannot differ between the two. Pure: the clocks
are injected.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

from .process import ProgressEvent
from .run import EvalPoint, RunProgress

LOOP_STAGES = ("train", "search")  # stages whose steps move; the others are one block each
CURVE_STAGE = "train"  # the eval curve is the final training's (search evaluates on a slice)


def utc_now() -> str:
    """RFC 3339 UTC with second precision, as the operator writes times."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ProgressTracker:
    """Feed it every progress line; `progress` is the run's RunProgress after the last one.

    Rates start at the loop's first step (not at the stage's start, which includes loading the
    model and the data), so the ETA is steps left at the loop's own pace, evaluations included.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], str] = utc_now) -> None:
        self.clock, self.wall = clock, wall
        self.progress = RunProgress(stage="fetch", updated=wall())
        self._entry_step: int | None = None  # the step the running stage started at
        self._anchor: tuple[float, int, int | None] | None = None  # (time, step, tokens)

    def seed(self, history: list[EvalPoint], resumed_from_step: int | None = None) -> None:
        """Start from a resumed run's eval curve (the checkpoint's, up to its step)."""
        self.progress = self.progress.model_copy(update={
            "eval_history": list(history), "resumed_from_step": resumed_from_step})

    def update(self, event: ProgressEvent) -> RunProgress:
        p = self.progress
        now = self.clock()
        new_stage = event.stage != p.stage
        if new_stage or (event.step is not None and p.step is not None and event.step < p.step):
            self._entry_step, self._anchor = event.step, None  # a new stage or search candidate
        fields: dict = {"stage": event.stage, "updated": self.wall()}
        for name in ("step", "max_steps", "epoch", "loss", "resumed_from_step"):
            value = getattr(event, name)
            if value is not None:
                fields[name] = value
        if new_stage and event.stage in LOOP_STAGES:
            fields["loss"] = event.loss  # the loop's own loss, not an earlier one's
        if event.eval_loss is not None and event.stage == CURVE_STAGE and event.step is not None:
            history = [e for e in p.eval_history if e.step < event.step]
            fields["eval_history"] = [*history, EvalPoint(step=event.step, epoch=event.epoch,
                                                          eval_loss=event.eval_loss)]
        fields.update(self._rates(event, now))
        self.progress = p.model_copy(update=fields)
        return self.progress

    def _rates(self, event: ProgressEvent, now: float) -> dict:
        if event.stage not in LOOP_STAGES:
            return {"eta_seconds": None}
        step = event.step
        if step is None or step == self._entry_step:
            return {}
        if self._anchor is None:
            self._anchor = (now, step, event.tokens)
            return {}
        t0, step0, tokens0 = self._anchor
        elapsed = now - t0
        if elapsed <= 0 or step <= step0:
            return {}
        out: dict = {}
        if event.max_steps:
            out["eta_seconds"] = round(max(0, event.max_steps - step) * elapsed / (step - step0), 1)
        if event.tokens is not None and tokens0 is not None and event.tokens >= tokens0:
            out["tokens_per_second"] = round((event.tokens - tokens0) / elapsed, 1)
        return out
