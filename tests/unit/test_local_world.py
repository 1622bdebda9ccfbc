"""`finetune run --local` and the run's world: spec.resources.processesPerNode reaches the
trainer process as the Job's env does (so it runs under torchrun, gloo on CPUs), one process
when unset, and a spec asking for several nodes is refused before anything runs (exit 2, one
line). The trainer itself is replaced by a recorder: nothing trains here."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_contract import EXIT_BAD_INPUT
from finetune_contract.world import NODES_ENV, PROCESSES_PER_NODE_ENV, RENDEZVOUS_ENV, World
from finetune_dev import local
from finetune_dev.local_trainer import TrainerOutcome, trainer_env
from finetune_dev.tinymodel import synthetic_task


def _task_file(tmp_path: Path, resources: dict[str, Any]) -> Path:
    raw = tmp_path / "triage.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in synthetic_task(150, seed=1)))
    doc = {"apiVersion": "finetune.v-sekai.org/v1alpha1", "kind": "FineTuneTask",
           "metadata": {"name": "triage", "namespace": "ml"},
           "spec": {"baseModel": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
                    "dataset": {"uri": str(raw)}, "output": {"uri": str(tmp_path / "out")},
                    "training": {"learningRate": 1e-3}, "resources": resources}}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _recorded_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  resources: dict[str, Any]) -> dict[str, str]:
    seen: list[dict[str, str]] = []

    def fake_run_trainer(layout: Any, config_path: Path, profile: str, work: Path,
                         env: dict[str, str], progress: Any) -> TrainerOutcome:
        seen.append(env)
        return TrainerOutcome(1, None, work / "trainer.log")

    monkeypatch.setattr(local, "run_trainer", fake_run_trainer)
    local.run_tasks([str(_task_file(tmp_path, resources))], profile="cpu", out=io.StringIO(),
                    say=lambda _: None)
    [env] = seen
    return env


@pytest.mark.parametrize(("resources", "processes"), [
    ({"gpu": 0, "processesPerNode": 2}, "2"),
    ({"gpu": 4}, "1"),  # unset: one process on this machine, not world_shape()'s one per GPU
])
def test_the_trainer_env_carries_the_specs_processes(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     resources: dict[str, Any],
                                                     processes: str) -> None:
    monkeypatch.setenv(PROCESSES_PER_NODE_ENV, "7")  # the spec wins over a stray shell value
    monkeypatch.setenv(RENDEZVOUS_ENV, "10.0.0.1:29400")
    env = _recorded_env(tmp_path, monkeypatch, resources)
    assert (env[NODES_ENV], env[PROCESSES_PER_NODE_ENV]) == ("1", processes)
    assert RENDEZVOUS_ENV not in env
    assert World.from_env(env).launcher_args()[:2] == (
        ["--launcher", "torchrun"] if processes == "2" else ["--launcher", "python"])


def test_trainer_env_defaults_to_one_process() -> None:
    env = trainer_env("", "Qwen/Qwen2.5-0.5B-Instruct")
    assert World.from_env(env).size == 1


def test_several_nodes_are_refused_in_one_line_with_exit_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(local, "run_trainer", lambda *a: pytest.fail("the trainer started"))
    path = _task_file(tmp_path, {"gpu": 0, "nodes": 2})
    assert local.run_local([str(path)], profile="cpu") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"finetune run: {path}: task ml/triage asks for "
                          "spec.resources.nodes 2, but a local run has one node"), err
    assert not (tmp_path / "out").exists()  # nothing prepared
