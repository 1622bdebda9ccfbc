"""The trainer as a local process: `python -m finetune_trainer` as the Job runs it, its progress
lines drawn for a person, and a clean stop on Ctrl-C. Used by `finetune run --local` (local.py).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

# tqdm comes with the trainer's stack (transformers, huggingface_hub), which a local run needs.
from tqdm import tqdm

from finetune_contract import OFFLINE_ENV, TRAINER_ENV, ProgressEvent, RunLayout, TerminationMessage
from finetune_contract.tracker import LOOP_STAGES, ProgressTracker
from finetune_contract.world import NODE_RANK_ENV, RENDEZVOUS_ENV, World


# The trainer's own log lines about checkpoints (resuming, skipping one) are shown too.
TRAINER_LOG_PREFIX = "finetune-trainer: "
CHECKPOINT_WORD = "checkpoint"

# ---- progress -----------------------------------------------------------------------------


class Progress:
    """Draws the trainer's progress lines (the contract's ProgressEvent) with tqdm.

    A stage shows its time until its steps move (fetch, evaluations, upload), then a step bar
    (train, search). On a terminal a tqdm bar per stage, left on screen when the stage ends.
    Elsewhere (a log file, CI) a redrawn bar would be one endless line, so plain lines in tqdm's
    format: one when a stage starts, one per evaluation, per search candidate and for the last
    step, and other step lines at most every `interval` seconds. The ETA, tokens/s and a resume
    come from the contract's ProgressTracker, the code the trainer writes progress.json with, so
    the figures here are the ones the operator's status shows."""

    def __init__(self, label: str, out: TextIO | None = None, *, interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        out = out or sys.stderr  # per call, not bound at import (a replaced stderr would linger)
        self.label, self.out, self.interval, self.clock = label, out, interval, clock
        self.tty = out.isatty()
        self.stage: str | None = None
        self.bar: tqdm | None = None  # the terminal's bar for the running stage
        self._since = clock()
        self._first_step: int | None = None
        self._stepping = False
        self._shown: dict[str, Any] = {}  # the stage's latest loss, eval loss, epoch, extras
        self._printed: tuple[float, int | None] = (float("-inf"), None)  # when, which step
        self.tracker = ProgressTracker(clock=clock)

    def update(self, event: ProgressEvent) -> None:
        run = self.tracker.update(event)
        if event.stage != self.stage:
            self._close_bar()
            self.stage, self._since, self._first_step = event.stage, self.clock(), event.step
            self._stepping, self._shown = False, {}
            self._printed = (float("-inf"), None)
            due = True
        else:
            at, step = self._printed
            due = (event.eval_loss is not None or bool(event.model_extra)
                   or (event.step == event.max_steps and event.step != step)
                   or self.clock() - at >= self.interval)
        self._shown.update((k, v) for k, v in {
            "loss": event.loss, "eval_loss": event.eval_loss, "epoch": event.epoch,
            "resumed_from": event.resumed_from_step, **(event.model_extra or {})}.items()
            if v is not None)
        if event.stage in LOOP_STAGES:
            self._shown.update((k, v) for k, v in {
                "eta": tqdm.format_interval(run.eta_seconds) if run.eta_seconds is not None
                else None,
                "tok/s": round(run.tokens_per_second) if run.tokens_per_second is not None
                else None}.items() if v is not None)
        if not self._stepping and event.max_steps and event.step not in (None, self._first_step):
            self._stepping, self._since = True, self.clock()  # rates and ETA from the loop's start
        if self.tty:
            self._draw(event)
        elif due:
            self.out.write(self._line(event) + "\n")
            self.out.flush()
            self._printed = (self.clock(), event.step)

    def close(self) -> None:
        self._close_bar()

    def note(self, text: str) -> None:
        """A line of the trainer's worth a person's eye (a resume, a skipped checkpoint)."""
        if self.bar is not None:
            self.bar.clear()  # the line goes above the running bar, which is drawn again
        self.out.write(f"  {self.label}: {text}\n")
        self.out.flush()
        if self.bar is not None:
            self.bar.refresh()

    def _desc(self, event: ProgressEvent) -> str:
        return f"  {self.label} {event.stage}"

    def _draw(self, event: ProgressEvent) -> None:
        if self.bar is None:
            cols, rows = _screen(self.out)
            self.bar = tqdm(desc=self._desc(event), unit="step", file=self.out, leave=True,
                            ncols=cols, nrows=rows, bar_format="{desc} [{elapsed}{postfix}]")
        if self._stepping and event.step is not None and event.max_steps:
            if self.bar.total != event.max_steps or event.step < self.bar.n:  # a new candidate
                self.bar.bar_format = None  # from the stage's timer to tqdm's step bar
                self.bar.reset(total=event.max_steps)
            self.bar.update(event.step - self.bar.n)
        self.bar.set_postfix_str(self._postfix(), refresh=True)

    def _line(self, event: ProgressEvent) -> str:
        if self._stepping and event.step is not None and event.max_steps:
            return tqdm.format_meter(event.step, event.max_steps, self.clock() - self._since,
                                     prefix=self._desc(event), ascii=True, unit="step",
                                     postfix=self._postfix() or None)
        return f"{self._desc(event)} {self._postfix()}".rstrip()

    def _postfix(self) -> str:
        return " ".join(f"{k}={_short(v)}" for k, v in self._shown.items())

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _screen(out: TextIO) -> tuple[int, int]:
    """The terminal's columns and rows; 80x24 where it reports none (a pty opened without a
    size draws nothing in tqdm's own detection)."""
    try:
        size = os.get_terminal_size(out.fileno())
    except (AttributeError, OSError, ValueError):
        return 80, 24
    return size.columns or 80, size.lines or 24


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---- the trainer process ------------------------------------------------------------------


def default_profile(spec: Any) -> str:
    """gpu when this machine has CUDA and the task asks for a GPU, else cpu (as gpu=0 does)."""
    if spec.resources.gpu == 0 or importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def trainer_env(endpoint: str, base_model: str, world: World | None = None) -> dict[str, str]:
    """The user's environment wins over the trainer's defaults (offline ones only for a local
    model: a hub id must still download), except for unbuffered output, which the progress
    lines need, and the run's world (one node; its processes from the spec), which the trainer
    reads as a Job's pod does and runs under torchrun when it has more than one process."""
    defaults = {**TRAINER_ENV, **(OFFLINE_ENV if Path(base_model).is_dir() else {})}
    env = {**defaults, **os.environ, "PYTHONUNBUFFERED": TRAINER_ENV["PYTHONUNBUFFERED"]}
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    for key in (NODE_RANK_ENV, RENDEZVOUS_ENV):  # one node: rank 0, torchrun's own rendezvous
        env.pop(key, None)
    env.update((world or World()).env())
    return env


@dataclass
class TrainerOutcome:
    returncode: int
    termination: TerminationMessage | None
    log_path: Path
    interrupted: bool = False


def run_trainer(layout: RunLayout, config_path: Path, profile: str, work: Path, env: dict[str, str],
                progress: Progress) -> TrainerOutcome:
    """`python -m finetune_trainer ...` as the Job runs it; stdout to a log, progress drawn.

    Its own session, so Ctrl-C reaches us only: we pass SIGINT on and wait for it to stop
    (then SIGTERM, then SIGKILL), never leaving an orphan trainer.
    """
    term_log = work / "termination-log"
    log_path = work / "trainer.log"
    cmd = [sys.executable, "-m", "finetune_trainer", "--run-uri", layout.prefix,
           "--config", str(config_path), "--profile", profile,
           "--termination-log", str(term_log), "--work-dir", str(work / "trainer")]
    interrupted = False
    with log_path.open("w", encoding="utf-8", buffering=1) as log:  # line-buffered: tail -f works
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                text=True, bufsize=1, start_new_session=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                event = ProgressEvent.parse(line)
                if event is not None:
                    progress.update(event)
                elif line.startswith(TRAINER_LOG_PREFIX) and CHECKPOINT_WORD in line:
                    progress.note(line[len(TRAINER_LOG_PREFIX):].strip())
            proc.wait()
        except KeyboardInterrupt:
            interrupted = True
            _stop(proc)
        finally:
            progress.close()
    text = term_log.read_text(errors="replace") if term_log.exists() else None
    return TrainerOutcome(proc.returncode if proc.returncode is not None else -1,
                          TerminationMessage.decode(text), log_path, interrupted)


def _stop(proc: subprocess.Popen[str]) -> None:
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""
