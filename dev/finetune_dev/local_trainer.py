"""The trainer as a local process: `python -m finetune_trainer` as the Job runs it, its progress
lines drawn for a person, and a clean stop on Ctrl-C. Used by `finetune run --local` (local.py).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from finetune_contract import OFFLINE_ENV, TRAINER_ENV, ProgressEvent, RunLayout, TerminationMessage


# ---- progress -----------------------------------------------------------------------------


class Progress:
    """Draws the trainer's progress lines (the contract's ProgressEvent): a redrawn bar on a
    terminal, else a line per stage and per ~10% of training (logs and CI stay short)."""

    def __init__(self, label: str, out: TextIO = sys.stderr) -> None:
        self.label, self.out = label, out
        self.tty = out.isatty()
        self.stage: str | None = None
        self.last_tenth = -1

    def update(self, event: ProgressEvent) -> None:
        stage, step, total = event.stage, event.step, event.max_steps
        extra = " ".join(f"{k}={_short(v)}" for k, v in (event.model_extra or {}).items()
                         if v is not None)
        if step is not None and total is not None and total > 0:
            frac = min(1.0, step / total)
            bar = "#" * int(frac * 24) + "-" * (24 - int(frac * 24))
            text = f"  {self.label} {stage:<10} [{bar}] {step}/{total} {extra}".rstrip()
            tenth = int(frac * 10)
            changed = stage != self.stage or tenth != self.last_tenth
            self.last_tenth = tenth
        else:
            text = f"  {self.label} {stage} {extra}".rstrip()
            changed = stage != self.stage
        if self.tty:
            end = "\n" if self.stage is not None and stage != self.stage else ""
            self.out.write(f"{end}\r\033[K{text}")
        elif changed:
            self.out.write(text + "\n")
        self.stage = stage
        self.out.flush()

    def close(self) -> None:
        if self.tty and self.stage is not None:
            self.out.write("\n")
            self.out.flush()


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---- the trainer process ------------------------------------------------------------------


def default_profile(spec: Any) -> str:
    """gpu when this machine has CUDA and the task asks for a GPU, else cpu (as gpu=0 does)."""
    if spec.resources.gpu == 0 or importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def trainer_env(endpoint: str, base_model: str) -> dict[str, str]:
    """The user's environment wins over the trainer's defaults (offline ones only for a local
    model: a hub id must still download), except for unbuffered output, which the progress
    lines need."""
    defaults = {**TRAINER_ENV, **(OFFLINE_ENV if Path(base_model).is_dir() else {})}
    env = {**defaults, **os.environ, "PYTHONUNBUFFERED": TRAINER_ENV["PYTHONUNBUFFERED"]}
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
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
