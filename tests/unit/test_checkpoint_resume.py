"""Checkpoints, resume and progress.json without training: the marker model, the upload order
and pruning, which stored checkpoint a new pod takes (complete, incomplete, corrupt), the resume
count, early stopping's state across a resume, the tracker's rates and the write throttle.
Storage is a local directory (the same Storage class as S3); clocks are injected, nothing sleeps.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from finetune_contract import EvalPoint, ProgressEvent, RunLayout, RunProgress
from finetune_contract.checkpoint import (CheckpointFile, CheckpointMarker, ResumeHistory,
                                          describe, marker_uri, resumes_uri, step_of)
from finetune_contract.storage import Storage
from finetune_contract.tracker import ProgressTracker
from finetune_trainer import checkpoints, resume
from finetune_trainer.progress_file import ProgressFile, Throttle

SHA = "0" * 64


def _layout(tmp_path: Path) -> RunLayout:
    return RunLayout(root=str(tmp_path / "runs"), namespace="ns", task="t", run_id="r1")


def _saved(out: Path, step: int, *, best: int | None = None, counter: int = 0,
           evals: dict[int, float] | None = None) -> Path:
    """A checkpoint folder as the Trainer writes it (the files resume needs, small)."""
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(f"weights {step}".encode())
    (folder / "optimizer.pt").write_bytes(f"optimizer {step}".encode())
    state = {"global_step": step, "max_steps": 20, "epoch": step / 10,
             "best_global_step": best, "best_metric": (evals or {}).get(best) if best else None,
             "best_model_checkpoint": f"/old/pod/out/checkpoint-{best}" if best else None,
             "log_history": [{"step": s, "eval_loss": v} for s, v in (evals or {}).items()],
             "stateful_callbacks": {"EarlyStoppingCallback": {
                 "args": {"early_stopping_patience": 2, "early_stopping_threshold": 0.005},
                 "attributes": {"early_stopping_patience_counter": counter}}}}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    return folder


# ---- the marker -----------------------------------------------------------------------------


def test_marker_lists_every_file_and_finds_what_differs(tmp_path: Path) -> None:
    folder = _saved(tmp_path, 4, best=4, evals={4: 0.5})
    marker = checkpoints.marker_for(folder, "r1", 4)
    assert {f.name for f in marker.files} == {"adapter_model.safetensors", "optimizer.pt",
                                              "trainer_state.json"}
    assert (marker.eval_loss, marker.best_step, marker.best_eval_loss) == (0.5, 4, 0.5)
    assert marker.early_stopping is not None and marker.early_stopping.patience == 2
    assert CheckpointMarker.model_validate_json(marker.to_json()) == marker
    assert marker.problem(folder) is None
    (folder / "optimizer.pt").write_bytes(b"optimizer 5")  # same size, other bytes
    assert marker.problem(folder) == "sha256 mismatch in optimizer.pt"
    (folder / "optimizer.pt").write_bytes(b"short")
    assert marker.problem(folder) == "size mismatch in optimizer.pt"
    (folder / "optimizer.pt").unlink()
    assert marker.problem(folder) == "missing file optimizer.pt"


@pytest.mark.parametrize("names", [[], ["a", "a"], ["../escape"], ["/abs"], ["checkpoint.json"]])
def test_marker_refuses_files_that_are_not_plain_names(names: list[str]) -> None:
    with pytest.raises(ValidationError):
        CheckpointMarker(run_id="r", step=1, created="2026-01-01T00:00:00Z",
                         files=[CheckpointFile(name=n, bytes=0, sha256=SHA) for n in names])


def test_step_of_reads_only_checkpoint_folders(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    assert step_of(layout, layout.checkpoint(12) + "x/y.bin") == 12
    assert step_of(layout, resumes_uri(layout)) is None
    assert step_of(layout, layout.metrics) is None


# ---- upload and pruning -------------------------------------------------------------------


def test_upload_writes_the_marker_last_and_prune_keeps_best_and_last(tmp_path: Path) -> None:
    storage, layout = Storage(), _layout(tmp_path)
    written: list[str] = []
    real = storage.write_bytes

    def record(uri: str, data: bytes, content_type: str = "") -> None:
        written.append(uri)
        real(uri, data)

    storage.write_bytes = record  # type: ignore[method-assign]
    storage.upload_file = lambda path, uri, content_type="": record(uri, Path(path).read_bytes())  # type: ignore[method-assign]
    out = tmp_path / "out"
    for step in (2, 4, 6):
        checkpoints.upload(storage, layout, _saved(out, step, best=4, evals={2: .9, 4: .5, 6: .6}),
                           step)
    assert written[-1] == marker_uri(layout, 6)  # last of the last upload
    assert all(w != marker_uri(layout, 6) for w in written[-4:-1])
    assert checkpoints.prune(storage, layout, {4, 6}) == [2]
    assert sorted(checkpoints.stored(storage, layout)) == [4, 6]


def test_uploader_callback_uploads_each_save_and_keeps_best_and_last(tmp_path: Path) -> None:
    storage, layout = Storage(), _layout(tmp_path)
    uploader = checkpoints.CheckpointUploader(layout.prefix, storage)
    out = tmp_path / "out"
    evals = {2: 0.9, 4: 0.5, 6: 0.6, 8: 0.7}
    for step in (2, 4, 6, 8):
        _saved(out, step, best=2 if step == 2 else 4, evals={s: evals[s] for s in evals if s <= step})
        uploader.on_save(SimpleNamespace(output_dir=str(out)),
                         SimpleNamespace(global_step=step, is_world_process_zero=True), None)
    assert sorted(checkpoints.stored(storage, layout)) == [4, 8]  # best 4, last 8


# ---- which checkpoint a new pod resumes from ----------------------------------------------


def _store(tmp_path: Path, steps: dict[int, int | None]) -> tuple[Storage, RunLayout]:
    """Upload complete checkpoints {step: best step}."""
    storage, layout = Storage(), _layout(tmp_path)
    evals = {s: 1.0 / s for s in steps}
    for step, best in steps.items():
        folder = _saved(tmp_path / "saved", step, best=best, evals=evals)
        checkpoints.upload(storage, layout, folder, step)
    return storage, layout


def test_resume_takes_the_newest_complete_checkpoint_and_its_best(tmp_path: Path) -> None:
    storage, layout = _store(tmp_path, {2: 2, 4: 2, 6: 2})
    out, lines = tmp_path / "out", []
    got = resume.choose(storage, layout, out, log=lines.append)
    assert got is not None and got.step == 6 and lines == []
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "checkpoint-6"]
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(out / "checkpoint-2")  # this pod's copy
    # The Trainer's rotation sorts by mtime: the resumed checkpoint must be the newest.
    assert (out / "checkpoint-6").stat().st_mtime > (out / "checkpoint-2").stat().st_mtime
    assert got.eval_history() == [EvalPoint(step=s, eval_loss=1.0 / s) for s in (2, 4, 6)]


def test_resume_skips_incomplete_and_corrupt_checkpoints_naming_each(tmp_path: Path) -> None:
    storage, layout = _store(tmp_path, {2: 2, 4: 4, 6: 6, 8: 8})
    storage.delete(marker_uri(layout, 8))                       # upload never finished
    storage.write_bytes(layout.checkpoint(6) + "optimizer.pt", b"optimizer X")  # corrupt
    storage.write_text(marker_uri(layout, 4), "{not json")      # unreadable marker
    lines: list[str] = []
    got = resume.choose(storage, layout, tmp_path / "out", log=lines.append)
    assert got is not None and got.step == 2
    assert [ln.split(" (")[0] for ln in lines] == [
        "skipping checkpoint step-8", "skipping checkpoint step-6", "skipping checkpoint step-4"]
    assert resume.NO_MARKER in lines[0] and "sha256 mismatch in optimizer.pt" in lines[1]
    assert resume.UNREADABLE_MARKER in lines[2]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoint-2"]


def test_resume_skips_a_checkpoint_whose_best_is_gone_and_starts_over_when_none_is_left(
        tmp_path: Path) -> None:
    storage, layout = _store(tmp_path, {2: 2, 4: 2})
    storage.delete(layout.checkpoint(2) + "adapter_model.safetensors")
    lines: list[str] = []
    assert resume.choose(storage, layout, tmp_path / "out", log=lines.append) is None
    assert len(lines) == 2 and resume.BEST_INCOMPLETE in lines[0] and "step-2" in lines[1]
    assert resume.choose(Storage(), _layout(tmp_path / "empty"), tmp_path / "o2") is None


def test_a_marker_of_another_run_does_not_count(tmp_path: Path) -> None:
    storage, layout = _store(tmp_path, {2: 2})
    other = RunLayout(root=layout.root, namespace="ns", task="t", run_id="r2")
    Path(other.checkpoints).parent.mkdir(parents=True, exist_ok=True)
    import shutil

    shutil.copytree(layout.checkpoints, other.checkpoints)
    lines: list[str] = []
    assert resume.choose(storage, other, tmp_path / "out", log=lines.append) is None
    assert resume.OTHER_RUN in lines[0]


# ---- the resume count ---------------------------------------------------------------------


def test_each_resume_is_counted_across_pods(tmp_path: Path) -> None:
    storage, layout = Storage(), _layout(tmp_path)
    assert resume.previous(storage, layout).count == 0
    resume.record(storage, layout, 4, "2026-01-01T00:00:00Z")
    history = resume.record(storage, layout, 8, "2026-01-01T00:05:00Z")
    assert [r.from_step for r in history.resumes] == [4, 8]
    assert resume.previous(storage, layout) == history
    storage.write_text(resumes_uri(layout), "garbage")
    lines: list[str] = []
    assert resume.record(storage, layout, 10, "t", log=lines.append).count == 1 and lines
    assert ResumeHistory().add(3, "t").count == 1


# ---- early stopping survives a resume -----------------------------------------------------


def test_the_patience_counter_and_best_metric_come_back_with_the_checkpoint(tmp_path: Path) -> None:
    """transformers' own restore (Trainer._load_callback_state) with the training arguments our
    plugin sets: the counter saved in trainer_state.json is the live callback's again."""
    from transformers import EarlyStoppingCallback, Trainer, TrainerControl, TrainerState
    from transformers.trainer_callback import CallbackHandler

    from finetune_trainer.stopping import MinDeltaStoppingPlugin

    args = MinDeltaStoppingPlugin().get_training_args(SimpleNamespace())
    folder = _saved(tmp_path, 6, best=2, counter=1, evals={2: 0.4, 4: 0.41, 6: 0.402})
    state = TrainerState.load_from_json(str(folder / "trainer_state.json"))
    assert checkpoints.early_stopping_state(json.loads(
        (folder / "trainer_state.json").read_text())).patience_counter == 1

    def restored(restore: bool) -> EarlyStoppingCallback:
        handler = CallbackHandler([EarlyStoppingCallback(2, 0.005)], None, None, None, None)
        fake = SimpleNamespace(args=SimpleNamespace(restore_callback_states_from_checkpoint=restore),
                               state=state, callback_handler=handler, control=TrainerControl())
        Trainer._load_callback_state(fake)  # type: ignore[arg-type]
        [cb] = [c for c in handler.callbacks if isinstance(c, EarlyStoppingCallback)]
        return cb

    assert args["restore_callback_states_from_checkpoint"] is True
    assert restored(args["restore_callback_states_from_checkpoint"]).early_stopping_patience_counter == 1
    assert restored(False).early_stopping_patience_counter == 0  # transformers' default
    assert (state.best_metric, state.best_global_step) == (0.4, 2)


# ---- progress.json ------------------------------------------------------------------------


def test_throttle_lets_one_write_through_per_interval_unless_forced() -> None:
    now = [0.0]
    throttle = Throttle(10.0, clock=lambda: now[0])
    due = []
    for t in (0, 3, 9.9, 10, 12, 19.9, 20.5):
        now[0] = t
        due.append(throttle.due())
    assert due == [True, False, False, True, False, False, True]
    now[0] = 21
    assert throttle.due(force=True) and not throttle.due()


def _tracker(now: list[float]) -> ProgressTracker:
    return ProgressTracker(clock=lambda: now[0], wall=lambda: f"t{now[0]:g}")


def test_progress_file_writes_stage_changes_and_evaluations_at_once_and_steps_every_10s() -> None:
    now, written = [0.0], []
    pf = ProgressFile(written.append, tracker=_tracker(now), throttle=Throttle(10.0, lambda: now[0]))
    pf.update(ProgressEvent(stage="fetch", step=0, max_steps=0))
    now[0] = 5
    pf.update(ProgressEvent(stage="train", step=0, max_steps=20))  # stage change: at once
    for step in range(1, 21):
        now[0] += 1
        pf.update(ProgressEvent(stage="train", step=step, max_steps=20, loss=1 / step,
                                eval_loss=0.5 if step == 12 else None))
    pf.update(ProgressEvent(stage="done", step=20, max_steps=20))
    assert [(p.stage, p.step) for p in written] == [
        ("fetch", 0), ("train", 0), ("train", 10), ("train", 12), ("done", 20)]  # 20: 8 s after 12
    assert written[3].last_eval_loss == 0.5 and written[3].percent == 60.0


def test_progress_file_keeps_going_when_a_write_fails(capsys: pytest.CaptureFixture[str]) -> None:
    from finetune_contract.storage import StorageError

    def fail(_: RunProgress) -> None:
        raise StorageError("S3 is unavailable")

    pf = ProgressFile(fail, throttle=Throttle(0.0))
    for step in range(3):
        pf.update(ProgressEvent(stage="train", step=step, max_steps=3))
    assert capsys.readouterr().err.count("progress.json not written") == 1


def test_tracker_rates_start_at_the_loop_and_the_curve_is_the_final_trainings() -> None:
    now = [0.0]
    tracker = _tracker(now)
    tracker.update(ProgressEvent(stage="train", step=0, max_steps=10))
    now[0] = 30  # loading the model and the data: not part of the loop's pace
    tracker.update(ProgressEvent(stage="train", step=1, max_steps=10, tokens=100))
    now[0] = 34
    p = tracker.update(ProgressEvent(stage="train", step=3, max_steps=10, tokens=500,
                                     eval_loss=0.7))
    assert (p.eta_seconds, p.tokens_per_second) == (14.0, 100.0)  # 2 s a step, 7 steps left
    assert p.eval_history == [EvalPoint(step=3, eval_loss=0.7)] and p.updated == "t34"
    p = tracker.update(ProgressEvent(stage="evaluate-tuned", step=10, max_steps=10))
    assert p.eta_seconds is None and p.tokens_per_second == 100.0 and p.percent == 100.0
    # A search candidate's evaluations are on the selection slice: not the run's curve.
    p = _tracker(now).update(ProgressEvent(stage="search", step=2, max_steps=10, eval_loss=0.3))
    assert p.eval_history == []


def test_tracker_after_a_resume_keeps_the_curve_and_says_where_it_resumed() -> None:
    now = [0.0]
    tracker = _tracker(now)
    tracker.seed([EvalPoint(step=2, eval_loss=0.9), EvalPoint(step=4, eval_loss=0.8)], 4)
    tracker.update(ProgressEvent(stage="train", step=4, max_steps=10, resumed_from_step=4))
    now[0] = 1
    tracker.update(ProgressEvent(stage="train", step=5, max_steps=10))
    now[0] = 2
    p = tracker.update(ProgressEvent(stage="train", step=6, max_steps=10, eval_loss=0.7))
    assert [e.step for e in p.eval_history] == [2, 4, 6] and p.resumed_from_step == 4
    assert p.eta_seconds == 4.0  # the pace since the resume, not since step 0


def test_the_local_display_shows_the_trackers_eta_rate_and_resume() -> None:
    """`finetune run --local` draws the figures progress.json holds, from the same tracker."""
    import io

    from tqdm import tqdm

    from finetune_dev.local_trainer import Progress

    now, out = [0.0], io.StringIO()
    progress = Progress("triage", out, interval=30.0, clock=lambda: now[0])
    progress.update(ProgressEvent(stage="train", step=4, max_steps=10, resumed_from_step=4))
    for step in range(5, 9):
        now[0] += 2
        progress.update(ProgressEvent(stage="train", step=step, max_steps=10, tokens=50 * step,
                                      eval_loss=0.5 if step == 8 else None))
    last = out.getvalue().splitlines()[-1]
    run = progress.tracker.progress
    assert (run.eta_seconds, run.tokens_per_second, run.last_eval_loss) == (4.0, 25.0, 0.5)
    assert f"eta={tqdm.format_interval(4.0)}" in last and "tok/s=25" in last, last
    assert "eval_loss=0.5" in last and "resumed_from=4" in last and "8/10" in last, last
