"""A run over two nodes on the real control plane (issue 16): the apiserver accepts the Indexed
Job and the headless Service, the real Job controller gives each pod its index and stable
hostname, one failed pod fails the whole Job (podFailurePolicy), and the garbage collector takes
the Service with the task."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_contract import TerminationMessage
from finetune_contract.storage import Storage
from finetune_contract.world import NODE_RANK_ENV, RENDEZVOUS_ENV, RENDEZVOUS_PORT
from finetune_dev.cluster.node import Outcome
from finetune_dev.devs3 import S3Server

from .conftest import alpaca_records
from .harness import Cluster, OperatorProcess, ScriptedTrainer, wait_for
from .test_lifecycle import _dataset, _spec, _success, _write_trainer_output

pytestmark = pytest.mark.cluster
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


def _two_nodes(cluster: Cluster, storage: Storage, s3: S3Server, ns: str, name: str,
               bucket: str) -> dict[str, Any]:
    uri = _dataset(storage, bucket, alpaca_records(60), "d.jsonl")
    cluster.apply_task(ns, name, {**_spec(s3, uri, bucket),
                                  "resources": {"gpu": 1, "nodes": 2, "backoffLimit": 1}})
    return cluster.wait_phase(ns, name, "Training")


def _running(cluster: Cluster, ns: str, job: str) -> list[dict[str, Any]]:
    pods = [p for p in cluster.pods(ns, job) if (p.get("status") or {}).get("phase") == "Running"]
    return pods if len(pods) == 2 else []


def _service(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    return cluster._call(cluster.core.read_namespaced_service, name, ns)


def test_two_nodes_are_an_indexed_job_whose_pods_meet_at_pod_0(
        cluster: Cluster, operator: OperatorProcess, trainer: ScriptedTrainer, namespace: str,
        bucket: str, task_storage: Storage, s3_server: S3Server) -> None:
    ns, name = namespace, "wide"
    st = _two_nodes(cluster, task_storage, s3_server, ns, name, bucket)
    job_name = st["job"]["name"]
    assert st["job"]["service"] == job_name
    job = cluster.job(ns, job_name)
    assert job is not None
    assert (job["spec"]["completionMode"], job["spec"]["completions"],
            job["spec"]["parallelism"]) == ("Indexed", 2, 2)
    svc = _service(cluster, ns, job_name)
    assert svc is not None and svc["spec"]["clusterIP"] == "None"
    [owner] = svc["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("FineTuneTask", name)

    # The real Job controller: one pod per index, hostname <job>-<index> under the Service.
    pods = wait_for(lambda: _running(cluster, ns, job_name), 30, "both pods to run")
    by_index = {p["metadata"]["labels"][INDEX_LABEL]: p for p in pods}
    assert sorted(by_index) == ["0", "1"]
    for index, pod in by_index.items():
        assert pod["spec"]["hostname"] == f"{job_name}-{index}"
        assert pod["spec"]["subdomain"] == job_name
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env[RENDEZVOUS_ENV]["value"] == f"{job_name}-0.{job_name}.{ns}.svc:{RENDEZVOUS_PORT}"
        # The node rank is the completion index the controller injects (not in our template).
        rank = env[NODE_RANK_ENV]["valueFrom"]["fieldRef"]["fieldPath"]
        assert "job-completion-index" in rank

    m = _write_trainer_output(task_storage, st, ns, name, bucket, world_size=2, nodes=2,
                              processes_per_node=1)
    trainer.release(job_name, _success(m), _success(m))
    st = cluster.wait_phase(ns, name, "Succeeded", timeout=60)
    assert {k: st["metrics"][k] for k in ("worldSize", "nodes", "processesPerNode")} == {
        "worldSize": 2, "nodes": 2, "processesPerNode": 1}

    cluster.delete_task(ns, name)
    wait_for(lambda: _service(cluster, ns, job_name) is None and cluster.jobs(ns) == [], 60,
             "the garbage collector to remove the Service and the Job")


def test_one_failed_node_fails_the_whole_run_without_a_retry(
        cluster: Cluster, operator: OperatorProcess, trainer: ScriptedTrainer, namespace: str,
        bucket: str, task_storage: Storage, s3_server: S3Server) -> None:
    ns, name = namespace, "split"
    st = _two_nodes(cluster, task_storage, s3_server, ns, name, bucket)
    job_name = st["job"]["name"]
    wait_for(lambda: _running(cluster, ns, job_name), 30, "both pods to run")
    # One node crashes (exit 1): the other cannot go on alone and a replacement could not
    # rejoin a fixed torchrun membership, so the whole Job fails though backoffLimit is 1.
    crash = TerminationMessage(ok=False, reason="TrainingFailed", message="rank 1 lost")
    trainer.release(job_name, Outcome(1, crash.encode()))
    st = cluster.wait_phase(ns, name, "Failed", timeout=60)
    assert cluster.job_condition(ns, job_name, "Failed")["reason"] == "PodFailurePolicy"
    wait_for(lambda: all((p.get("status") or {}).get("phase") in ("Failed", "Succeeded")
                         or p["metadata"].get("deletionTimestamp")
                         for p in cluster.pods(ns, job_name)), 30,
             "the other node's pod to be stopped")
    assert trainer.attempts(job_name) == 2  # one pod per node, none retried
    assert "\n" not in st["message"]
