"""Training progress end to end without training: the TrainerCallback driven with transformers'
own TrainerState/TrainerControl and an injected clock, the trainer passing its lines on through
a console full of tqdm frames, and the local runner's display on a terminal and in a log."""

from __future__ import annotations

import collections
import io
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from finetune_contract import PROGRESS_PREFIX, ProgressEvent
from finetune_trainer.progress import ProgressCallback


def _events(text: str) -> list[ProgressEvent]:
    """Every non-blank line must be a progress line that parses as the contract's model."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert all(ln.startswith(PROGRESS_PREFIX) for ln in lines), lines
    return [ProgressEvent.model_validate_json(ln[len(PROGRESS_PREFIX):]) for ln in lines]


def _drive(callback: ProgressCallback, now: list[float], state: TrainerState,
           steps: int = 10) -> None:
    """Steps of 0.5 s as the Trainer calls the hooks: on_step_end, then the step's logs
    (training loss every 2 steps), an evaluation at step 6; on_train_end after the last."""
    control = TrainerControl()
    for step in range(1, steps + 1):
        now[0] += 0.5
        state.global_step, state.epoch = step, step / 4
        callback.on_step_end(None, state, control)
        if step % 2 == 0:
            callback.on_log(None, state, control, logs={"loss": 1.0 / step, "epoch": state.epoch})
        if step == 6:
            callback.on_log(None, state, control, logs={"eval_loss": 0.25})  # not a 2nd line
            callback.on_evaluate(None, state, control, metrics={"eval_loss": 0.25})
    callback.on_train_end(None, state, control)


def test_callback_lines_parse_as_progress_events_at_a_limited_rate() -> None:
    now, out = [100.0], io.StringIO()
    callback = ProgressCallback("train", interval=2.0, clock=lambda: now[0], out=out)
    _drive(callback, now, TrainerState(max_steps=10))
    events = _events(out.getvalue())

    assert {e.stage for e in events} == {"train"} and {e.max_steps for e in events} == {10}
    # Steps at most every 2 s (the first at once), every evaluation, the last step and the
    # loss logged after it.
    assert [(e.step, e.eval_loss) for e in events] == [
        (1, None), (5, None), (6, 0.25), (10, None), (10, None)]
    assert [e.loss for e in events] == [None, 0.25, 1 / 6, 1 / 8, 1 / 10]
    assert events[2].epoch == 1.5 and events[-1].epoch == 2.5
    # Each line is written whole and starts on a line of its own (tqdm leaves its bar open).
    assert out.getvalue().count("\n" + PROGRESS_PREFIX) == len(events)


def test_an_early_stop_still_reports_its_last_step() -> None:
    now, out = [0.0], io.StringIO()
    _drive(ProgressCallback(interval=2.0, clock=lambda: now[0], out=out), now,
           TrainerState(max_steps=10), steps=8)  # stopped at step 8: not max_steps
    assert [(e.step, e.loss) for e in _events(out.getvalue())][-1] == (8, 1 / 8)


def test_only_the_main_process_reports() -> None:
    now, out = [0.0], io.StringIO()
    _drive(ProgressCallback(clock=lambda: now[0], out=out), now,
           TrainerState(max_steps=10, is_world_process_zero=False))
    assert out.getvalue() == ""


def test_the_plugin_adds_the_callback_with_the_stage_train_py_sets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_trainer.stopping import MinDeltaStoppingPlugin
    from finetune_trainer.train import PROGRESS_STAGE_ENV

    monkeypatch.setenv(PROGRESS_STAGE_ENV, "search")
    for patience in (None, 2):  # with or without early stopping
        callbacks = MinDeltaStoppingPlugin().add_callbacks_post_trainer(
            SimpleNamespace(early_stopping_patience=patience), None)
        [progress] = [c for c in callbacks if isinstance(c, ProgressCallback)]
        assert progress.stage == "search"


def test_the_trainer_passes_on_progress_lines_and_reads_nothing_else_of_the_console(
        capsys: pytest.CaptureFixture[str]) -> None:
    from finetune_trainer.train import follow

    class Writes(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[str] = []

        def write(self, text: str) -> int:
            self.writes.append(text)
            return super().write(text)

    callback_out, now = Writes(), [0.0]
    _drive(ProgressCallback(interval=2.0, clock=lambda: now[0], out=callback_out), now,
           TrainerState(max_steps=10))
    # What Axolotl's console looks like: a tqdm frame before each of our writes, ending without
    # a newline; its printed log dicts (the loss and eval loss the old parser read).
    console = "".join(f"\r{i * 10:3d}%|#  | {i}/10 [00:0{i}<00:01,  1.0it/s]" + ours
                      for i, ours in enumerate(callback_out.writes, 1))
    console += ("{'loss': 0.5, 'grad_norm': 1.0, 'epoch': 0.5}\n{'eval_loss': '0.7'}\n"
                "\r100%|##########| 10/10 [00:10<00:00]\nValueError: boom")
    log, tail = io.BytesIO(), collections.deque[str](maxlen=60)
    follow(io.BytesIO(console.encode()), log, tail)

    assert log.getvalue() == console.encode()  # the log keeps everything
    passed = _events(capsys.readouterr().out)
    assert passed == _events(callback_out.getvalue())  # ours, whole, and nothing else
    assert not any(PROGRESS_PREFIX in ln for ln in tail) and tail[-1] == "ValueError: boom"


# ---- the local runner's display -----------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


RUN = [ProgressEvent(stage="fetch", step=0, max_steps=0),
       ProgressEvent(stage="train", step=0, max_steps=48),
       *(ProgressEvent(stage="train", step=s, max_steps=48, loss=1 / s, epoch=s / 16)
         for s in range(1, 49)),
       ProgressEvent(stage="evaluate-tuned", step=48, max_steps=48)]
RUN.insert(30, ProgressEvent(stage="train", step=28, max_steps=48, eval_loss=0.125))


def _show(out: io.StringIO, seconds_per_event: float) -> str:
    from finetune_dev.local_trainer import Progress

    now = [0.0]
    progress = Progress("triage", out, interval=30.0, clock=lambda: now[0])
    for event in RUN:
        now[0] += seconds_per_event
        progress.update(event)
    progress.close()
    return out.getvalue()


def test_display_in_a_log_is_plain_lines_at_a_modest_rate() -> None:
    text = _show(io.StringIO(), seconds_per_event=2.0)
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    # A line per stage, per 30 s of steps, per evaluation and for the last step (7 of 52).
    steps = [ln.split("| ")[1].split()[0] for ln in lines if "|" in ln]
    assert [ln.split()[1] for ln in lines] == ["fetch", "train", *["train:"] * 4,
                                               "evaluate-tuned"], lines
    assert steps == ["15/48", "28/48", "43/48", "48/48"], lines
    assert "eval_loss=0.125" in lines[3] and "eval_loss=0.125" in lines[5]
    assert "loss=0.02083" in lines[5] and "epoch=3" in lines[5]


def test_display_on_a_terminal_is_a_tqdm_bar_per_stage() -> None:
    text = _show(_Terminal(), seconds_per_event=0.01)
    frames = text.split("\r")
    assert len(frames) > 48  # redrawn in place, not a line per update
    assert [ln for ln in text.replace("\r", "\n").splitlines() if "train" in ln][-1].startswith(
        "  triage train: 100%")
    assert text.count("\n") == 3  # each finished stage stays on screen, one line each


def test_display_on_a_terminal_that_reports_no_size_still_draws() -> None:
    import os

    from finetune_dev.local_trainer import Progress

    master, slave = os.openpty()  # a fresh pty reports 0 columns and 0 rows, like `script`
    try:
        with os.fdopen(slave, "w") as out:
            progress = Progress("triage", out)
            for step in range(4):
                progress.update(ProgressEvent(stage="train", step=step, max_steps=3, loss=0.5))
            progress.close()
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the writer's side is closed and everything has been read
                break
            if not chunk:
                break
            chunks.append(chunk)
        text = b"".join(chunks).decode()
    finally:
        os.close(master)
    assert "triage train: 100%" in text and "3/3" in text and "loss=0.5" in text, repr(text)
