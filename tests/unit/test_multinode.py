"""A run over several pods: the Indexed Job and headless Service built from the one-pod Job,
checked field by field, against a golden file, and by `kubernetes-validate --strict`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from kubevalidate import validate_objects

from finetune_contract.world import NODE_RANK_ENV, World
from finetune_operator.multinode import (JOB_NAME_LABEL, build_headless_service, rendezvous,
                                         with_world, world_for)
from finetune_operator.resources import CONTAINER
from tests.unit.test_resources import _job, _spec

GOLDEN = Path(__file__).parent / "golden" / "multinode.json"


def _built(nodes: int, procs: int) -> tuple[dict[str, Any], World]:
    job = _job(_spec(resources={"gpu": procs}))
    meta = job["metadata"]
    world = world_for(meta["name"], meta["namespace"], "r1", nodes, procs)
    return with_world(job, world, CONTAINER), world


def _env(job: dict[str, Any]) -> dict[str, str]:
    (trainer,) = job["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in trainer["env"]}


def test_one_node_keeps_the_one_pod_job_and_adds_the_world() -> None:
    job, world = _built(1, 4)
    plain = _job(_spec(resources={"gpu": 4}))
    assert "completionMode" not in job["spec"] and "subdomain" not in job["spec"]["template"]["spec"]
    assert job["spec"]["podFailurePolicy"] == plain["spec"]["podFailurePolicy"]
    assert World.from_env(_env(job)) == world and world.size == 4


def test_several_nodes_make_an_indexed_job_that_fails_as_a_whole() -> None:
    job, world = _built(3, 2)
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert spec["template"]["spec"]["subdomain"] == name
    pod1 = World.from_env({**_env(job), NODE_RANK_ENV: "1"})
    assert pod1.size == 6 and pod1.rendezvous == rendezvous(name, ns) == f"{name}-0.{name}.{ns}.svc:29400"
    rules = spec["podFailurePolicy"]["rules"]
    # Preemption is ignored first; then exit 2 and any other failure end the whole Job.
    assert [r["action"] for r in rules] == ["FailJob", "Ignore", "FailJob"]
    assert rules[-1]["onExitCodes"] == {"containerName": CONTAINER, "operator": "NotIn",
                                        "values": [0]}


def test_the_headless_service_selects_the_jobs_pods_and_is_owned_by_the_task() -> None:
    job, _ = _built(2, 1)
    svc = build_headless_service(job)
    assert svc["metadata"]["name"] == job["metadata"]["name"] == job["spec"]["template"]["spec"]["subdomain"]
    assert svc["metadata"]["ownerReferences"] == job["metadata"]["ownerReferences"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
    assert svc["spec"]["selector"] == {JOB_NAME_LABEL: job["metadata"]["name"]}


def test_golden_and_kubernetes_validate_strict() -> None:
    job, _ = _built(2, 4)
    got = {"job": job, "service": build_headless_service(job)}
    validate_objects([got["job"], got["service"]])
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    if not GOLDEN.exists():
        pytest.fail(f"golden file {GOLDEN} is missing: run `make golden` and review it")
    assert got == json.loads(GOLDEN.read_text()), "built objects changed: review, then `make golden`"


@pytest.mark.parametrize("nodes", [2, 11, 64])
def test_the_spec_s_nodes_build_the_indexed_job_with_room_for_every_pod_hostname(nodes: int) -> None:
    """build_job itself applies the world; the Job controller names pod i `<job>-<i>`, a DNS
    label, so a long task name is cut further for a run over several nodes."""
    from finetune_operator.resources import TaskRef, build_job, child_name
    from finetune_contract import RunLayout
    from finetune_operator.settings import OperatorSettings

    spec = _spec(resources={"gpu": 1, "nodes": nodes})
    task = TaskRef("t" * 70, "ml", "11111111-2222-3333-4444-555555555555")
    run = spec.run_id()
    job = build_job(task, run, spec, RunLayout(root=spec.output.uri, namespace="ml",
                                               task=task.name, run_id=run),
                    OperatorSettings(trainer_image="registry.example/trainer:1.2.3"))
    name = job["metadata"]["name"]
    assert job["spec"]["completions"] == nodes and job["spec"]["completionMode"] == "Indexed"
    assert len(f"{name}-{nodes - 1}") <= 63 < len(f"{child_name(task.name, run)}-{nodes - 1}")
    assert name == child_name(task.name, run, nodes) and name.endswith(run)
    assert child_name("short", run, nodes) == child_name("short", run) == f"short-{run}"
