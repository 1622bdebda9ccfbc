"""The run's process group (contract World): env round trip, launcher arguments, bad values."""

from __future__ import annotations

import pytest

from finetune_contract.world import NODE_RANK_ENV, World


@pytest.mark.parametrize(("world", "args"), [
    (World(), ["--launcher", "python"]),
    (World(processes_per_node=2),
     ["--launcher", "torchrun", "--", "--nproc-per-node=2", "--standalone"]),
    (World(nodes=3, processes_per_node=4, node_rank=2, rendezvous="job-0.svc:29400"),
     ["--launcher", "torchrun", "--", "--nproc-per-node=4", "--nnodes=3", "--node-rank=2",
      "--master-addr=job-0.svc", "--master-port=29400"]),
])
def test_launcher_args(world: World, args: list[str]) -> None:
    assert world.launcher_args() == args


def test_env_round_trip_with_the_index_kubernetes_sets() -> None:
    world = World(nodes=2, processes_per_node=8, rendezvous="t-0.t:29400", run_id="r1")
    pod1 = World.from_env({**world.env(), NODE_RANK_ENV: "1"})
    assert pod1 == world.model_copy(update={"node_rank": 1})
    assert (pod1.size, pod1.is_leader, world.is_leader) == (16, False, True)
    assert World.from_env({}) == World()


@pytest.mark.parametrize(("env", "message"), [
    ({"FINETUNE_NODES": "2"}, "need a host:port"),
    ({"FINETUNE_NODES": "2", "FINETUNE_RENDEZVOUS": "no-port"}, "need a host:port"),
    ({"FINETUNE_NODES": "2", "FINETUNE_RENDEZVOUS": "h:1", NODE_RANK_ENV: "2"}, "not below"),
    ({"FINETUNE_PROCESSES_PER_NODE": "two"}, "not a whole number"),
])
def test_bad_worlds_say_why(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        World.from_env(env)
