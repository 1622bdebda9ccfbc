"""Training on torch.distributed through the real trainer path (tiny model, real S3, CPUs):
two processes in one pod (torchrun --nproc-per-node 2, gloo DDP), and two "nodes" on this
machine (two trainer processes, two torchrun agents meeting at 127.0.0.1), as an Indexed Job's
pods would. Node 0 alone evaluates and writes metrics.json, which has the single-process shape
plus the world it ran in; the schedule is divided by the world size.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from finetune_contract import Metrics, RunLayout, TerminationMessage
from finetune_contract.storage import Storage
from finetune_contract.world import NODE_RANK_ENV, World
from finetune_dev.devs3 import free_port
from finetune_dev.tinymodel import synthetic_task

from test_trainer import _env, prepare, tiny_model  # noqa: F401 - the fixture is shared

STEPS = 24
# transformers, when the ranks of a CPU run do not form one DDP group (each trains alone).
NOT_ONE_GROUP = "process group is initialized, but parallel_mode != ParallelMode.DISTRIBUTED"


def _trainer(layout: RunLayout, s3_server: Any, work: Path, world_env: dict[str, str]
             ) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "finetune_trainer", "--run-uri", layout.prefix, "--profile", "cpu",
         "--termination-log", str(work / "termination-log"), "--work-dir", str(work / "work")],
        env={**_env(s3_server), **world_env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def _finish(proc: subprocess.Popen[str], timeout: int = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _check(metrics: Metrics, world: World) -> None:
    assert (metrics.world_size, metrics.nodes, metrics.processes_per_node) == (
        world.size, world.nodes, world.processes_per_node)
    assert metrics.sharding == "none"
    assert metrics.eval_loss < metrics.base_eval_loss, metrics.to_json()
    # The schedule is the one-process budget divided by the world size.
    assert metrics.eval_history and metrics.eval_history[-1].step <= STEPS // world.size
    assert metrics.exact_match is not None and metrics.exact_match.samples == 30


@pytest.mark.slow
@pytest.mark.s3
def test_two_processes_in_one_pod(storage: Storage, bucket: str, s3_server: Any,
                                  tiny_model: Path, tmp_path: Path) -> None:
    layout, _ = prepare(storage, bucket, synthetic_task(150, seed=1), tiny_model,
                        training={"learningRate": 2e-3, "maxSteps": STEPS}, task="ddp")
    world = World(processes_per_node=2)
    rc, out = _finish(_trainer(layout, s3_server, tmp_path, world.env()))
    assert rc == 0, out[-3000:]
    _check(Metrics.model_validate_json(storage.read_text(layout.metrics)), world)
    # Axolotl's own account: a world of 2 that is ONE DDP group: rank 0 alone logs the train
    # loss, and transformers does not warn that the ranks train apart (each on all the data).
    log = (tmp_path / "work" / "axolotl.log").read_text(errors="replace")
    assert '"world_size": 2' in log and log.count("'train_loss'") == 1, log[-2000:]
    assert NOT_ONE_GROUP not in log


@pytest.mark.slow
@pytest.mark.s3
def test_two_nodes_meet_at_node_zero(storage: Storage, bucket: str, s3_server: Any,
                                     tiny_model: Path, tmp_path: Path) -> None:
    layout, _ = prepare(storage, bucket, synthetic_task(150, seed=1), tiny_model,
                        training={"learningRate": 2e-3, "maxSteps": STEPS}, task="two-nodes")
    world = World(nodes=2, rendezvous=f"127.0.0.1:{free_port()}", run_id="two-nodes")
    procs = {rank: _trainer(layout, s3_server, tmp_path / f"node{rank}",
                            {**world.env(), NODE_RANK_ENV: str(rank)})
             for rank in (1, 0)}  # node 1 first: it waits for node 0 at the rendezvous
    results = {rank: _finish(proc) for rank, proc in procs.items()}
    for rank, (rc, out) in results.items():
        assert rc == 0, f"node {rank}: {out[-3000:]}"
    assert "this node's share of the training is done" in results[1][1]
    term = TerminationMessage.decode((tmp_path / "node0" / "termination-log").read_text())
    assert term is not None and term.ok
    assert not (tmp_path / "node1" / "termination-log").exists()
    for rank in (0, 1):  # one process group of 2, not two runs of 1
        log = (tmp_path / f"node{rank}" / "work" / "axolotl.log").read_text(errors="replace")
        assert '"world_size": 2' in log and NOT_ONE_GROUP not in log, log[-2000:]
        assert log.count("'train_loss'") == (1 if rank == 0 else 0), log[-2000:]
    _check(Metrics.model_validate_json(storage.read_text(layout.metrics)), world)
