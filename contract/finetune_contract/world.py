"""The shape of a training run's process group: nodes, processes per node, and where they meet.

The operator writes it into the Job's env (`World.env()`); each trainer pod reads it back
(`World.from_env()`) and hands torchrun the matching arguments (`World.torchrun_args()`). One
model on both sides, so the Job and the launcher cannot disagree about the world size.

Multi-node runs are Indexed Jobs: Kubernetes sets JOB_COMPLETION_INDEX in each pod (0..nodes-1),
which is the node rank; pod 0's stable DNS name (`<job>-0.<service>`) hosts the c10d TCP store
the processes meet at. The rendezvous is torchrun's static one on that store, not the dynamic
c10d backend: the dynamic one hands out ranks in arrival order, so global rank 0 (the process
that saves checkpoints and the adapter) could land on another pod than the one that evaluates
and uploads. Static keeps node rank = pod index, and node 0 alone evaluates, uploads and writes
metrics.json; the other nodes only train.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, model_validator

from .run import _Model

NODES_ENV = "FINETUNE_NODES"
PROCESSES_PER_NODE_ENV = "FINETUNE_PROCESSES_PER_NODE"
RENDEZVOUS_ENV = "FINETUNE_RENDEZVOUS"   # host:port of node 0's c10d store
RUN_ID_ENV = "FINETUNE_RUN_ID"           # names the run in the launcher's logs
NODE_RANK_ENV = "JOB_COMPLETION_INDEX"   # set by Kubernetes in each pod of an Indexed Job
RENDEZVOUS_PORT = 29400                  # torchrun's default c10d port


class World(_Model):
    """How many training processes a run has and how they find each other."""

    nodes: int = Field(1, ge=1, le=256)
    processes_per_node: int = Field(1, ge=1, le=64)
    node_rank: int = Field(0, ge=0)
    rendezvous: str | None = Field(None, description="host:port; needed when nodes > 1.")
    run_id: str = "finetune"

    @model_validator(mode="after")
    def _consistent(self) -> World:
        if self.node_rank >= self.nodes:
            raise ValueError(f"node rank {self.node_rank} is not below the node count {self.nodes}")
        if self.nodes > 1 and not _host_port(self.rendezvous):
            raise ValueError(f"{self.nodes} nodes need a host:port to meet at ({RENDEZVOUS_ENV}), "
                             f"got {self.rendezvous!r}")
        return self

    @property
    def size(self) -> int:
        """The world size: every training process of every node."""
        return self.nodes * self.processes_per_node

    @property
    def is_leader(self) -> bool:
        """Node 0: the pod that evaluates, uploads and reports."""
        return self.node_rank == 0

    def env(self) -> dict[str, str]:
        """The Job's env for this world (JOB_COMPLETION_INDEX comes from Kubernetes)."""
        out = {NODES_ENV: str(self.nodes), PROCESSES_PER_NODE_ENV: str(self.processes_per_node),
               RUN_ID_ENV: self.run_id}
        if self.rendezvous:
            out[RENDEZVOUS_ENV] = self.rendezvous
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> World:
        """The world a trainer pod is in; a single process when nothing says otherwise."""
        def num(key: str, default: int) -> int:
            raw = env.get(key) or ""
            try:
                return int(raw) if raw else default
            except ValueError:
                raise ValueError(f"{key}={raw!r} is not a whole number") from None

        return cls(nodes=num(NODES_ENV, 1), processes_per_node=num(PROCESSES_PER_NODE_ENV, 1),
                   node_rank=num(NODE_RANK_ENV, 0), rendezvous=env.get(RENDEZVOUS_ENV) or None,
                   run_id=env.get(RUN_ID_ENV) or "finetune")

    def launcher_args(self) -> list[str]:
        """Axolotl CLI launcher arguments: plain python for one process, else torchrun with a
        fixed membership (--nnodes N: a run waits for all its nodes and fails as a whole)."""
        if self.size == 1:
            return ["--launcher", "python"]
        args = ["--launcher", "torchrun", "--", f"--nproc-per-node={self.processes_per_node}"]
        if self.nodes == 1:
            # One node: torchrun's standalone rendezvous on a free local port.
            return [*args, "--standalone"]
        host, _, port = (self.rendezvous or "").rpartition(":")
        return [*args, f"--nnodes={self.nodes}", f"--node-rank={self.node_rank}",
                f"--master-addr={host}", f"--master-port={port}"]


def _host_port(value: str | None) -> bool:
    host, sep, port = (value or "").rpartition(":")
    return bool(host and sep and port.isdigit())
