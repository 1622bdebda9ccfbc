"""Training progress from transformers' own callback hooks, as the contract's progress lines.

Why a callback: the Trainer hands its callbacks the step, the total, the epoch and every logged
loss as numbers (TrainerState, the `logs` and `metrics` dicts); reading them back out of
Axolotl's console (tqdm bars, printed dicts) broke whenever that text changed. The plugin
(stopping.py) adds this callback inside the Axolotl subprocess; its lines go to that process's
stdout and train.py passes every line that parses as a ProgressEvent on to the trainer's stdout.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from transformers import TrainerCallback

from finetune_contract import ProgressEvent

from .train import PROGRESS_STAGE_ENV

DEFAULT_INTERVAL = 2.0  # seconds between step lines (evaluations and the last step always)


class ProgressCallback(TrainerCallback):
    """Emits a ProgressEvent line on every evaluation, and on steps at most every `interval`
    seconds (the first step and the last always), with the last logged training loss and epoch."""

    def __init__(self, stage: str = "train", *, interval: float = DEFAULT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic, out: TextIO | None = None) -> None:
        self.stage, self.interval, self.clock, self.out = stage, interval, clock, out
        self.loss: float | None = None
        self._last_at: float | None = None
        self._last: tuple[int, float | None] | None = None  # (step, loss) on the last line

    @classmethod
    def from_env(cls) -> ProgressCallback:
        return cls(os.environ.get(PROGRESS_STAGE_ENV) or "train")

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self._step(state)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **_: Any) -> None:
        # The Trainer logs the training loss just after on_step_end; evaluations come to
        # on_evaluate as well, so only the training loss is taken here.
        if logs and logs.get("loss") is not None:
            self.loss = float(logs["loss"])
            self._step(state)

    def on_evaluate(self, args: Any, state: Any, control: Any,
                    metrics: dict[str, float] | None = None, **_: Any) -> None:
        loss = (metrics or {}).get("eval_loss")
        if loss is not None:
            self._emit(state, eval_loss=float(loss))

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self._step(state, force=True)  # an early stop ends before max_steps

    def _step(self, state: Any, force: bool = False) -> None:
        now = self.clock()
        due = self._last_at is None or now - self._last_at >= self.interval
        last = bool(state.max_steps) and state.global_step >= state.max_steps
        if (due or last or force) and (state.global_step, self.loss) != self._last:
            self._emit(state)

    def _emit(self, state: Any, **fields: Any) -> None:
        if not state.is_world_process_zero:
            return
        event = ProgressEvent(stage=self.stage, step=state.global_step,
                              max_steps=state.max_steps or None,
                              epoch=round(state.epoch, 3) if state.epoch is not None else None,
                              loss=self.loss, tokens=_tokens(state), **fields)
        out = self.out or sys.stdout
        # One write, starting on a line of its own: tqdm's bar on the shared console ends
        # without a newline, and the reader only takes lines that start with the prefix.
        out.write("\n" + event.line() + "\n")
        out.flush()
        self._last_at, self._last = self.clock(), (state.global_step, self.loss)


def _tokens(state: Any) -> int | None:
    """Token slots the loop has computed so far: Axolotl's running count (`tokens/total` in its
    logs), which a resume restores; None when it does not count them."""
    total = (getattr(state, "tokens", None) or {}).get("total")
    try:
        return int(total.item() if hasattr(total, "item") else total) if total is not None else None
    except (TypeError, ValueError, RuntimeError):
        return None
