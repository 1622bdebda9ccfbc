"""`finetune run --local` end to end: real SeaweedFS, real data preparation, real Axolotl training
of the tiny offline model in a real trainer subprocess. Nothing is mocked.

Checks what a user relies on: the printed status and table say what metrics.json says; a second
run of the same task reuses the prepared split (same sha256) and the complete run; Ctrl-C during
training leaves no COMPLETE marker, so the next run trains again; bad input is one line, exit 2;
a task the cluster would skip or hold (infrequent, too few samples, suspended) ends the same way
locally, with the same reason and message, before any trainer starts (local files, no S3).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from finetune_dev import demo_tasks
from finetune_operator import cli
from finetune_contract import Manifest, Metrics, RunLayout
from finetune_dev.devs3 import S3Server
from finetune_dev.local_status import cells, row_for
from finetune_contract.storage import Storage
from finetune_operator.taskfile import load_tasks


@pytest.fixture(scope="module")
def tiny_model() -> str:
    from finetune_dev.smollm import cache_dir
    from finetune_dev.tinymodel import build_tiny_model

    return str(build_tiny_model(cache_dir()))


@pytest.fixture()
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server.env()


def _task_yaml(storage: Storage, bucket: str, model: str, tmp_path: Path) -> Path:
    task = demo_tasks.generate("ticket-triage", 100)
    [path] = demo_tasks.write_tasks([task], storage, data_root=f"s3://{bucket}/data",
                                    output_uri=f"s3://{bucket}/runs", base_model=model,
                                    yaml_dir=tmp_path, namespace="test",
                                    training={"maxSteps": 20})  # plumbing, not quality
    return path


def _layout(path: Path) -> RunLayout:
    [t] = load_tasks(path)
    return RunLayout(root=t.spec.output.uri, namespace=t.namespace, task=t.name,
                     run_id=t.spec.run_id())


def _split_output(text: str) -> tuple[dict, str]:
    """(status document, table text) from what `finetune run --local` printed."""
    status_text, _, table = text.partition("\n\ntask ")
    return yaml.safe_load(status_text)["status"], "task " + table


@pytest.mark.slow
@pytest.mark.s3
def test_local_run_matches_metrics_and_reuses_split(storage: Storage, bucket: str, tiny_model: str,
                                                    s3_env: dict[str, str], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = _task_yaml(storage, bucket, tiny_model, tmp_path)
    layout = _layout(path)

    assert cli.main(["run", str(path), "--local", "--profile", "cpu"]) == 0
    status, table = _split_output(capsys.readouterr().out)
    assert storage.exists(layout.complete_marker)
    m = Metrics.model_validate_json(storage.read_text(layout.metrics))
    manifest = Manifest.model_validate_json(storage.read_text(layout.manifest))

    assert status["phase"] == "Succeeded" and status["runId"] == layout.run_id
    sm = status["metrics"]
    assert sm["baseEvalLoss"] == m.base_eval_loss and sm["evalLoss"] == m.eval_loss
    assert sm["improvement"] == m.improvement and sm["stoppedEarly"] == m.stopped_early
    if m.exact_match is not None:
        assert (sm["exactMatchBase"], sm["exactMatch"]) == (m.exact_match.base, m.exact_match.tuned)
    assert status["adapter"]["uri"] == m.adapter_uri
    assert status["data"]["trainSamples"] == manifest.train_samples
    assert status["data"]["digest"] == manifest.digest
    assert {c["type"]: c["status"] for c in status["conditions"]}["Trained"] == "True"
    # The table's row is the metrics' figures, formatted (wall time aside).
    expected = cells(row_for(layout.task, _status_model(status), manifest, m, None))
    printed = table.splitlines()[2].split()
    for value in expected[:8]:
        for word in value.split():
            assert word in printed, (word, printed)
    assert m.eval_loss < m.base_eval_loss  # the tiny model learns the task

    # Second run, same task and seed: same split (sha256), the complete run is reused.
    before = storage.read_text(layout.manifest)
    assert cli.main(["run", str(path), "--local", "--profile", "cpu"]) == 0
    out = capsys.readouterr()
    status2, _ = _split_output(out.out)
    assert "reusing the complete run" in out.err
    assert storage.read_text(layout.manifest) == before
    again = Manifest.model_validate_json(storage.read_text(layout.manifest))
    assert (again.train.sha256, again.validation.sha256) == (manifest.train.sha256,
                                                             manifest.validation.sha256)
    assert status2["metrics"] == status["metrics"] and status2["data"] == status["data"]


def _status_model(status: dict):  # type: ignore[no-untyped-def]
    from finetune_operator.spec import FineTuneTaskStatus

    return FineTuneTaskStatus.model_validate(status)


@pytest.mark.slow
@pytest.mark.s3
def test_ctrl_c_leaves_no_complete_run(storage: Storage, bucket: str, tiny_model: str,
                                       s3_env: dict[str, str], tmp_path: Path) -> None:
    path = _task_yaml(storage, bucket, tiny_model, tmp_path)
    layout = _layout(path)
    import psutil  # comes with the training stack (accelerate)

    def command(p: psutil.Process) -> str:
        try:
            return " ".join(p.cmdline())
        except psutil.Error:
            return ""  # gone meanwhile

    def trainer_session() -> list[psutil.Process]:
        """The trainer (a child in a session of its own) and every process in its session."""
        sids = {c.pid for c in psutil.Process(proc.pid).children()
                if "finetune_trainer" in command(c)}
        found = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) in sids:
                    found.append(p)
            except OSError:
                continue  # gone meanwhile
        return found

    env = {**os.environ, **s3_env}
    proc = subprocess.Popen([sys.executable, "-m", "finetune_operator.cli", "run", str(path),
                             "--local", "--profile", "cpu"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # A terminal's SIGINT disposition, even when the tests themselves run
                            # in a background job (which starts with SIGINT ignored).
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline, session = time.monotonic() + 300, []
        while time.monotonic() < deadline and proc.poll() is None:
            session = trainer_session()
            if any("axolotl.cli.main" in command(p) for p in session):
                break  # inside training now
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        assert any("axolotl.cli.main" in command(p) for p in session), session  # 300 s passed
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "Interrupted" in out and "Traceback" not in err
    # No orphaned trainer keeps running and finishes the run behind our back: every process of
    # the trainer's session has exited (the deadline only bounds a failure), and no marker.
    _, alive = psutil.wait_procs(session, timeout=60)
    assert not alive, alive
    assert not storage.exists(layout.complete_marker)


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"apiVersion": "finetune.v-sekai.org/v1alpha1",
                                   "kind": "FineTuneTask", "metadata": {"name": "x"},
                                   "spec": {"baseModel": {"name": "m"}}}))
    for args in (["run", str(bad), "--local"], ["run", str(tmp_path / "missing.yaml"), "--local"]):
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize(("change", "phase", "cond_type", "reason", "message"), [
    ({"infrequent": True}, "Skipped", "ConfigRendered", "Infrequent",
     "spec.infrequent is set: data prepared and checked, no GPU spent"),
    ({"dataset": {"minSamples": 500}}, "Skipped", "DataReady", "TooFewSamples",
     "need minSamples 500"),
    ({"suspend": True}, "Suspended", "JobCreated", "Suspended",
     "spec.suspend is true: no Job is created until it is false"),
], ids=["infrequent", "too-few-samples", "suspended"])
def test_local_run_stops_where_the_cluster_would(
        change: dict, phase: str, cond_type: str, reason: str, message: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The phase, condition, reason and message a cluster run writes (the e2e tests check the
    cluster's side), exit 0, and the trainer never started."""
    import io

    from finetune_dev import local

    def no_trainer(*args: object, **kwargs: object) -> None:
        raise AssertionError("the trainer started")

    monkeypatch.setattr(local, "run_trainer", no_trainer)
    task = demo_tasks.generate("ticket-triage", 120)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / task.filename).write_bytes(task.data_bytes())
    doc = demo_tasks.task_document(task, data_uri=str(tmp_path / "data") + "/",
                                   output_uri=str(tmp_path / "runs"), base_model="unused/model",
                                   namespace="test")
    for key, value in change.items():
        doc["spec"][key] = ({**doc["spec"][key], **value} if isinstance(value, dict)
                            else value)
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(doc))

    [res] = local.run_tasks([str(path)], out=io.StringIO(), say=lambda _: None)
    assert res.exit_code == 0 and res.status.phase == phase, res.status.message
    cond = {c.type: c for c in res.status.conditions}
    assert (cond[cond_type].status, cond[cond_type].reason) == ("False", reason)
    assert (cond["Ready"].status, cond["Ready"].reason) == ("False", reason)
    assert message in cond[cond_type].message and message in (res.status.message or "")
    assert cond["DataReady"].status == ("False" if reason == "TooFewSamples" else "True")
    assert not Path(res.layout.complete_marker).exists()
