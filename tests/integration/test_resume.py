"""Checkpoints in S3 and resume after a lost trainer, end to end: `finetune run --local`, real
SeaweedFS, real Axolotl training of the tiny offline model. Nothing is mocked.

One uninterrupted run (its progress.json polled while it goes) is the reference. A second run
of the same task is SIGKILLed, the trainer's whole process group, as soon as the first
checkpoint's marker is in S3 (what a preempted node does: no handler runs). Two bogus later
checkpoints are planted next to the real one: a corrupt copy (one file changed after its marker
was written) and one without a marker. `finetune run --local` again must skip both with a line
naming each, resume at the real checkpoint's step, record the resume in metrics.json, and end
within a tolerance of the reference's tuned eval loss.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune_contract import Metrics, RunLayout, RunProgress
from finetune_contract.checkpoint import CheckpointMarker, ResumeHistory, marker_uri, resumes_uri
from finetune_contract.storage import Storage
from finetune_dev import demo_tasks
from finetune_operator import cli
from finetune_operator.taskfile import load_tasks
from test_local_run import s3_env, tiny_model  # noqa: F401 - the fixtures are shared

MAX_STEPS = 20
STAGES = ["fetch", "evaluate-base", "train", "evaluate-tuned", "upload", "done"]
LOSS_TOLERANCE = 0.1  # relative: the resumed run replays the same batches with the same RNG


def _task(storage: Storage, bucket: str, model: str, tmp_path: Path, output: str) -> tuple[Path, RunLayout]:
    task = demo_tasks.generate("ticket-triage", 100)
    [path] = demo_tasks.write_tasks([task], storage, data_root=f"s3://{bucket}/data",
                                    output_uri=f"s3://{bucket}/{output}", base_model=model,
                                    yaml_dir=tmp_path / output, namespace="test",
                                    training={"maxSteps": MAX_STEPS})
    [t] = load_tasks(path)
    return path, RunLayout(root=t.spec.output.uri, namespace=t.namespace, task=t.name,
                           run_id=t.spec.run_id())


def _start(path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "finetune_operator.cli", "run", str(path),
                             "--local", "--profile", "cpu"], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _markers(storage: Storage, layout: RunLayout) -> list[int]:
    """Steps whose checkpoint marker is in S3."""
    try:
        objects = storage.list(layout.checkpoints)
    except Exception:  # noqa: BLE001 - nothing there yet
        return []
    return sorted(int(o.uri.split("/step-")[1].split("/")[0]) for o in objects
                  if o.uri.endswith("/checkpoint.json"))


def _trainer_pid(cli_pid: int) -> int | None:
    """The trainer the local runner started (in a session and process group of its own)."""
    import psutil  # comes with the training stack (accelerate)

    for child in psutil.Process(cli_pid).children():
        try:
            if "finetune_trainer" in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    return None


@pytest.mark.slow
@pytest.mark.s3
def test_killed_trainer_resumes_at_its_checkpoint_and_skips_bad_ones(
        storage: Storage, bucket: str, tiny_model: str, s3_env: dict[str, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # 1. The reference: uninterrupted, progress.json polled while it runs.
    ref_path, ref = _task(storage, bucket, tiny_model, tmp_path, "ref")
    proc, seen = _start(ref_path, s3_env), []
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if storage.exists(ref.progress):
            seen.append(RunProgress.model_validate_json(storage.read_text(ref.progress)))
        time.sleep(0.5)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    reference = Metrics.model_validate_json(storage.read_text(ref.metrics))
    assert reference.resumed_from_step is None and reference.resume_count == 0
    # progress.json moved: stages in order, several distinct training steps, the eval curve,
    # a rate and an ETA while training; it ends done with the last step.
    stages = list(dict.fromkeys(p.stage for p in seen))  # a short stage may fall between polls
    assert stages[-1] == "done" and "train" in stages, stages
    assert stages == sorted(stages, key=STAGES.index), stages
    train_steps = sorted({p.step for p in seen if p.stage == "train" and p.step})
    assert len(train_steps) >= 3, [(p.stage, p.step) for p in seen]
    training = [p for p in seen if p.stage == "train" and p.step]
    assert any(p.eta_seconds is not None for p in training)
    assert any((p.tokens_per_second or 0) > 0 for p in training)
    final = seen[-1]
    assert final.max_steps == MAX_STEPS and final.eval_history
    assert [(e.step, round(e.eval_loss, 4)) for e in final.eval_history] == [
        (e.step, round(e.eval_loss, 4)) for e in reference.eval_history]
    # Only the best and the last checkpoint stay in S3.
    kept = _markers(storage, ref)
    assert set(kept) <= {reference.best_step, reference.eval_history[-1].step} and kept, kept

    # 2. The same task elsewhere, its trainer SIGKILLed right after its first checkpoint.
    path, layout = _task(storage, bucket, tiny_model, tmp_path, "runs")
    proc = _start(path, s3_env)
    deadline, trainer = time.monotonic() + 600, None
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            trainer = trainer or _trainer_pid(proc.pid)
            if trainer and _markers(storage, layout):
                os.killpg(trainer, signal.SIGKILL)  # the trainer and its Axolotl child
                break
            time.sleep(0.1)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert trainer is not None and proc.returncode == 1, out[-3000:]
    assert not storage.exists(layout.complete_marker)
    steps = _markers(storage, layout)
    step = steps[-1]
    assert 0 < step < MAX_STEPS, steps

    # 3. Plant a corrupt later checkpoint (a file changed after its marker) and one whose upload
    #    never finished (no marker): both newer, both must be skipped.
    marker = CheckpointMarker.model_validate_json(storage.read_text(marker_uri(layout, step)))
    corrupt, unfinished = step + 1, step + 3
    for f in marker.files:
        data = storage.read_bytes(layout.checkpoint(step) + f.name)
        storage.write_bytes(layout.checkpoint(unfinished) + f.name, data)
        if f.name == "adapter_model.safetensors":
            data = data[:-8] + b"\0" * 8
        storage.write_bytes(layout.checkpoint(corrupt) + f.name, data)
    storage.write_text(marker_uri(layout, corrupt),
                       marker.model_copy(update={"step": corrupt}).to_json())

    # 4. Run the task again: it resumes at `step`, not at 0.
    assert cli.main(["run", str(path), "--local", "--profile", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"skipping checkpoint step-{unfinished}" in err and "no marker" in err, err
    assert f"skipping checkpoint step-{corrupt}" in err and "sha256 mismatch in " \
        "adapter_model.safetensors" in err, err
    assert f"resuming from checkpoint step-{step} " in err, err
    assert f"resumed_from={step}" in err  # the local display says so too
    # The loop went on from there: every step line of the display (one per evaluation at
    # least) is past the checkpoint; a run from step 0 shows its evaluation at `step` again.
    shown = [int(n) for n in re.findall(rf" train: .*?\| (\d+)/{MAX_STEPS} ", err)]
    assert shown and min(shown) > step, (step, shown)
    metrics = Metrics.model_validate_json(storage.read_text(layout.metrics))
    assert (metrics.resumed_from_step, metrics.resume_count) == (step, 1)
    history = ResumeHistory.model_validate_json(storage.read_text(resumes_uri(layout)))
    assert [r.from_step for r in history.resumes] == [step]
    progress = RunProgress.model_validate_json(storage.read_text(layout.progress))
    assert progress.stage == "done" and progress.resumed_from_step == step
    # The eval curve is whole: the evaluations before the kill come back with the checkpoint.
    assert [e.step for e in metrics.eval_history] == [e.step for e in reference.eval_history]
    print(f"\nreference {reference.eval_loss:.4f} ({reference.wall_seconds:.0f}s), resumed at "
          f"{step}: {metrics.eval_loss:.4f} ({metrics.wall_seconds:.0f}s)")
    assert abs(metrics.eval_loss - reference.eval_loss) <= LOSS_TOLERANCE * reference.eval_loss
    # The planted checkpoints were pruned with the others: the best and the last stay.
    assert set(_markers(storage, layout)) <= {metrics.best_step, metrics.eval_history[-1].step}
    assert not any(s in (corrupt, unfinished) for s in _step_dirs(storage, layout))


def _step_dirs(storage: Storage, layout: RunLayout) -> set[int]:
    return {int(o.uri.split("/step-")[1].split("/")[0]) for o in storage.list(layout.checkpoints)
            if "/step-" in o.uri}
