"""A run spread over several pods: an Indexed Job and the headless Service its pods meet through.

Pure builders (no API calls), applied to the one-pod Job of resources.build_job:
- completionMode Indexed, parallelism = completions = nodes: one pod per node, each with its
  index in JOB_COMPLETION_INDEX (the node rank, see finetune_contract.world);
- `subdomain` = the headless Service's name, so pod i is reachable as `<job>-i.<service>` as
  soon as it exists (publishNotReadyAddresses: the pods meet before any of them is ready);
- pod 0's name is the rendezvous endpoint, in the env of every pod;
- any non-zero exit fails the whole Job: the other nodes cannot go on without it, and a
  replacement pod could not rejoin a torchrun group whose membership is fixed. Preemption is
  still ignored (the DisruptionTarget rule comes first), and a rerun resumes from the run's
  last checkpoint.
Gang admission (all pods or none) is the scheduler's job: with Kueue, the queue label already on
the Job admits it whole; without Kueue or an equivalent, a partly scheduled run waits for its
missing pods until activeDeadlineSeconds.
"""

from __future__ import annotations

import copy
from typing import Any

from finetune_contract.world import RENDEZVOUS_PORT, World

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set by the Job controller on its pods


def rendezvous(job_name: str, namespace: str) -> str:
    """host:port of node 0: its stable DNS name under the headless Service."""
    return f"{job_name}-0.{job_name}.{namespace}.svc:{RENDEZVOUS_PORT}"


def world_for(job_name: str, namespace: str, run_id: str, nodes: int,
              processes_per_node: int) -> World:
    return World(nodes=nodes, processes_per_node=processes_per_node, run_id=run_id,
                 rendezvous=rendezvous(job_name, namespace) if nodes > 1 else None)


def build_headless_service(job: dict[str, Any]) -> dict[str, Any]:
    """The Service that gives each pod of `job` a DNS name; same name, labels and owner."""
    meta = job["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                     "labels": dict(meta.get("labels") or {}),
                     "ownerReferences": copy.deepcopy(meta.get("ownerReferences") or [])},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_NAME_LABEL: meta["name"]},
            "ports": [{"name": "c10d", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT,
                       "protocol": "TCP"}],
        },
    }


def with_world(job: dict[str, Any], world: World, container: str) -> dict[str, Any]:
    """A copy of the one-pod `job` that runs `world`: env on the trainer container and, for more
    than one node, the Indexed Job shape described in the module docstring."""
    out = copy.deepcopy(job)
    spec = out["spec"]
    pod = spec["template"]["spec"]
    trainer = next(c for c in pod["containers"] if c["name"] == container)
    trainer["env"] = [e for e in trainer.get("env") or [] if e["name"] not in world.env()]
    trainer["env"] += [{"name": k, "value": v} for k, v in world.env().items()]
    if world.nodes == 1:
        return out
    spec.update(completionMode="Indexed", completions=world.nodes, parallelism=world.nodes)
    pod["subdomain"] = out["metadata"]["name"]
    trainer["ports"] = [{"name": "c10d", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}]
    rules = spec.setdefault("podFailurePolicy", {}).setdefault("rules", [])
    rules.append({"action": "FailJob",
                  "onExitCodes": {"containerName": container, "operator": "NotIn", "values": [0]}})
    return out
