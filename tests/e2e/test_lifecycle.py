"""The FineTuneTask lifecycle on a real control plane: apply -> prepared data -> ConfigMap -> Job
-> (the real Job controller creates the pod, the node runs it, the test plays the trainer) ->
status with metrics, or a failure reason. Retries, podFailurePolicy, suspend and garbage
collection are the real controllers'."""

from __future__ import annotations

import json
from typing import Any

import pytest

from finetune_contract import ExactMatch, Metrics, RunLayout, TerminationMessage, Verdicts
from finetune_contract.storage import Storage
from finetune_dev.cluster.node import Outcome
from finetune_dev.devs3 import S3Server

from .conftest import alpaca_records
from .harness import Cluster, Identity, OperatorProcess, ScriptedTrainer, free_port, wait_for

pytestmark = pytest.mark.cluster


def _dataset(storage: Storage, bucket: str, records: list[dict[str, Any]], key: str) -> str:
    uri = f"s3://{bucket}/{key}"
    storage.write_text(uri, "".join(json.dumps(r) + "\n" for r in records))
    return uri


def _spec(s3: S3Server, data_uri: str, bucket: str, **dataset: Any) -> dict[str, Any]:
    return {
        "baseModel": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
        "dataset": {"uri": data_uri, "validationFraction": 0.2, "minSamples": 20,
                    "minValidationSamples": 5, **dataset},
        "output": {"uri": f"s3://{bucket}/runs/"},
        "storage": {"endpoint": s3.endpoint, "credentialsSecret": "s3-credentials"},
        "resources": {"gpu": 1, "queueName": "gpu-queue"},
    }


def _write_trainer_output(storage: Storage, status: dict[str, Any], ns: str, name: str,
                          bucket: str, *, base: float = 2.0, tuned: float = 1.2,
                          **extra: Any) -> Metrics:
    """What the trainer leaves in S3 at the end of a run (contract.Metrics, then COMPLETE)."""
    layout = RunLayout(root=f"s3://{bucket}/runs/", namespace=ns, task=name,
                       run_id=status["runId"])
    m = Metrics(run_id=layout.run_id, base_eval_loss=base, eval_loss=tuned,
                improvement=Metrics.relative_improvement(base, tuned), train_loss=1.0,
                best_step=40, verdicts=Verdicts(overfit=False, no_gain=tuned >= base),
                exact_match=ExactMatch(base=0.2, tuned=0.9, samples=12),
                adapter_uri=layout.adapter, adapter_digest="sha256:abc", **extra)
    storage.write_text(layout.adapter + "adapter_config.json", "{}")
    storage.write_text(layout.metrics, m.to_json())
    storage.write_text(layout.complete_marker, "ok")
    return m


def _success(m: Metrics) -> Outcome:
    return Outcome(0, TerminationMessage(ok=True, reason="Improved", message="done",
                                         base_eval_loss=m.base_eval_loss,
                                         eval_loss=m.eval_loss).encode())


def _cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


def _pod_running(cluster: Cluster, ns: str, job: str) -> bool:
    return any(p.get("status", {}).get("phase") == "Running" for p in cluster.pods(ns, job))


def _handled_marker(cluster: Cluster, ns: str, bucket: str, storage: Storage,
                    s3: S3Server, name: str = "marker") -> None:
    """Apply a small task and wait until the operator has skipped it: proof that the operator
    has handled every event queued before it (so a retry or a re-create would have shown)."""
    uri = _dataset(storage, bucket, alpaca_records(6, tag=name), f"{name}.jsonl")
    cluster.apply_task(ns, name, _spec(s3, uri, bucket, minSamples=50))
    cluster.wait_phase(ns, name, "Skipped")


def test_happy_path_to_succeeded(cluster: Cluster, operator: OperatorProcess,
                                 trainer: ScriptedTrainer, namespace: str, bucket: str,
                                 task_storage: Storage, s3_server: S3Server) -> None:
    ns, name = namespace, "triage"
    uri = _dataset(task_storage, bucket, alpaca_records(60), "data/triage.jsonl")
    cluster.apply_task(ns, name, _spec(s3_server, uri, bucket))
    st = cluster.wait_phase(ns, name, "Training")
    assert st["observedGeneration"] == 1
    assert st["data"]["trainSamples"] + st["data"]["validationSamples"] == 60
    for type_ in ("DataReady", "ConfigRendered", "JobCreated"):
        assert _cond(st, type_)["status"] == "True"
    job_name = st["job"]["name"]
    [job] = cluster.jobs(ns)
    [cm] = cluster.configmaps(ns)
    assert job["metadata"]["name"] == cm["metadata"]["name"] == job_name
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert "runs/" in cm["data"]["axolotl.yaml"]  # paths point at the prepared split

    # The real Job controller made a pod; the node bound and started it.
    wait_for(lambda: _pod_running(cluster, ns, job_name), 30, "the trainer pod to run")
    wait_for(lambda: cluster.status(ns, name).get("job", {}).get("startTime"), 15,
             "the timer to record the Job's start")
    m = _write_trainer_output(task_storage, st, ns, name, bucket)
    trainer.release(job_name, _success(m))
    st = cluster.wait_phase(ns, name, "Succeeded")
    assert cluster.job_condition(ns, job_name, "Complete") is not None
    assert st["metrics"]["evalLoss"] == pytest.approx(m.eval_loss)
    assert st["metrics"]["baseEvalLoss"] == pytest.approx(m.base_eval_loss)
    assert st["metrics"]["improvement"] == pytest.approx(0.4)
    assert st["adapter"]["uri"] == m.adapter_uri
    assert st["job"]["completionTime"]
    assert _cond(st, "Ready")["status"] == "True"
    assert _cond(st, "Evaluated")["reason"] == "Improved"
    # Events follow the status write that they announce: poll for them.
    wait_for(lambda: {"RunStarted", "DataReady", "JobCreated", "Improved"}
             <= {e["reason"] for e in cluster.events(ns)}, 10, "an Event per transition")
    metrics = operator.metrics_text()
    assert f'finetune_task_eval_loss{{namespace="{ns}",task="{name}"}} 1.2' in metrics
    assert f'finetune_runs_finished_total{{namespace="{ns}",reason="Improved",result="succeeded"' \
           in metrics


def test_spec_change_starts_a_second_run(cluster: Cluster, operator: OperatorProcess,
                                         namespace: str, bucket: str, task_storage: Storage,
                                         s3_server: S3Server) -> None:
    ns, name = namespace, "change"
    uri = _dataset(task_storage, bucket, alpaca_records(60), "d.jsonl")
    cluster.apply_task(ns, name, _spec(s3_server, uri, bucket))
    first = cluster.wait_phase(ns, name, "Training")
    wait_for(lambda: _pod_running(cluster, ns, first["job"]["name"]), 30, "the first run's pod")
    cluster.patch_spec(ns, name, {"training": {"epochs": 2}})
    second = wait_for(lambda: (s := cluster.status(ns, name)).get("runId") != first["runId"]
                      and s.get("phase") == "Training" and s, 30, "the second run's Job")
    assert second["observedGeneration"] == 2
    # The superseded run's Job, its pod and its ConfigMap go (background deletion, real GC):
    # one Job per task at a time.
    wait_for(lambda: [j["metadata"]["name"] for j in cluster.jobs(ns)] == [second["job"]["name"]],
             30, "only the second run's Job")
    wait_for(lambda: cluster.pods(ns, first["job"]["name"]) == [], 30,
             "the first run's pod to be deleted")
    assert [c["metadata"]["name"] for c in cluster.configmaps(ns)] == [second["job"]["name"]]
    wait_for(lambda: any(e["reason"] == "Superseded" for e in cluster.events(ns)), 10,
             "the Superseded Event")


def test_duplicate_delivery_and_restart_keep_one_job(
        cluster: Cluster, operator: OperatorProcess, identity: Identity,
        trainer: ScriptedTrainer, namespace: str, bucket: str, task_storage: Storage,
        s3_server: S3Server) -> None:
    ns, name = namespace, "restart"
    since = cluster.audit.mark()
    uri = _dataset(task_storage, bucket, alpaca_records(60), "d.jsonl")
    cluster.apply_task(ns, name, _spec(s3_server, uri, bucket))
    st = cluster.wait_phase(ns, name, "Training")
    # Duplicate delivery: an annotation-only change re-triggers a watch event; a restart
    # replays every object as ADDED.
    cluster.touch(ns, name, "1")
    operator.kill()
    # While the operator is down the trainer finishes: the restarted operator must notice.
    m = _write_trainer_output(task_storage, st, ns, name, bucket)
    trainer.release(st["job"]["name"], _success(m))
    wait_for(lambda: cluster.job_condition(ns, st["job"]["name"], "Complete"), 30,
             "the Job to complete while the operator is down")
    restarted = cluster.audit.mark()
    operator.start()
    cluster.wait_phase(ns, name, "Succeeded")
    assert any(c.rbac == ("get", "batch", "jobs")
               for c in cluster.audit.calls(identity.username, restarted) if c.namespace == ns)
    assert len(cluster.jobs(ns)) == 1
    creates = [c for c in cluster.audit.calls(identity.username, since)
               if c.rbac == ("create", "batch", "jobs") and c.namespace == ns]
    assert len(creates) == 1


def test_bad_data_fails_once_without_retry_storm(
        cluster: Cluster, operator: OperatorProcess, identity: Identity, namespace: str,
        bucket: str, task_storage: Storage, s3_server: S3Server) -> None:
    ns, name = namespace, "bad"
    uri = f"s3://{bucket}/bad.jsonl"
    task_storage.write_text(uri, "".join("{not json at all\n" for _ in range(50)))
    cluster.apply_task(ns, name, _spec(s3_server, uri, bucket, strict=True))
    st = cluster.wait_phase(ns, name, "Failed")
    cond = _cond(st, "DataReady")
    assert cond["status"] == "False" and cond["reason"] in ("Malformed", "BadFormat", "NoData")
    assert st["message"] and "\n" not in st["message"]
    wait_for(lambda: any(e["type"] == "Warning" for e in cluster.events(ns)), 10,
             "a Warning Event")
    assert cluster.jobs(ns) == []
    # Kopf records the handled spec (its last write for this cause) before the window opens.
    wait_for(lambda: "finetune.v-sekai.org/last-handled-configuration" in (
        (cluster.task(ns, name) or {}).get("metadata", {}).get("annotations") or {}), 10,
        "Kopf to record the handled spec")
    since = cluster.audit.mark()
    _handled_marker(cluster, ns, bucket, task_storage, s3_server)
    writes = [c for c in cluster.audit.calls(identity.username, since)
              if c.name == name and c.verb in ("patch", "create", "update")]
    assert writes == []


def test_below_min_samples_is_skipped(cluster: Cluster, operator: OperatorProcess,
                                      namespace: str, bucket: str, task_storage: Storage,
                                      s3_server: S3Server) -> None:
    ns, name = namespace, "small"
    uri = _dataset(task_storage, bucket, alpaca_records(12), "small.jsonl")
    cluster.apply_task(ns, name, _spec(s3_server, uri, bucket, minSamples=50))
    st = cluster.wait_phase(ns, name, "Skipped")
    assert _cond(st, "DataReady")["reason"] == "TooFewSamples"
    assert "50" in st["message"]
    assert cluster.jobs(ns) == []


def test_infrequent_is_skipped_after_preparing(cluster: Cluster, operator: OperatorProcess,
                                               namespace: str, bucket: str,
                                               task_storage: Storage, s3_server: S3Server) -> None:
    ns, name = namespace, "rare"
    uri = _dataset(task_storage, bucket, alpaca_records(60), "d.jsonl")
    cluster.apply_task(ns, name, {**_spec(s3_server, uri, bucket), "infrequent": True})
    st = cluster.wait_phase(ns, name, "Skipped")
    assert _cond(st, "DataReady")["status"] == "True"
    assert "infrequent" in st["message"]
    assert cluster.jobs(ns) == []


def test_exit_2_fails_the_job_at_once_with_the_termination_message(
        cluster: Cluster, operator: OperatorProcess, trainer: ScriptedTrainer, namespace: str,
        bucket: str, task_storage: Storage, s3_server: S3Server) -> None:
    ns, name = namespace, "fails"
    uri = _dataset(task_storage, bucket, alpaca_records(60), "d.jsonl")
    cluster.apply_task(ns, name, {**_spec(s3_server, uri, bucket),
                                  "resources": {"gpu": 1, "backoffLimit": 3}})
    st = cluster.wait_phase(ns, name, "Training")
    job = st["job"]["name"]
    msg = TerminationMessage(ok=False, reason="BaseModelNotFound",
                             message="base model Qwen/nope not found on the hub: check baseModel")
    trainer.release(job, Outcome(2, msg.encode()))
    st = cluster.wait_phase(ns, name, "Failed")
    cond = _cond(st, "Trained")
    assert (cond["status"], cond["reason"]) == ("False", "BaseModelNotFound")
    assert "check baseModel" in st["message"]
    # podFailurePolicy's FailJob rule: one pod, no retry, although backoffLimit allows three.
    assert cluster.job_condition(ns, job, "Failed")["reason"] == "PodFailurePolicy"
    assert trainer.attempts(job) == 1 and len(cluster.pods(ns, job)) == 1
    wait_for(lambda: any(e["reason"] == "BaseModelNotFound" and e["type"] == "Warning"
                         for e in cluster.events(ns)), 10, "a Warning Event with the reason")


def test_exit_1_is_retried_up_to_the_backoff_limit(
        cluster: Cluster, operator: OperatorProcess, trainer: ScriptedTrainer, namespace: str,
        bucket: str, task_storage: Storage, s3_server: S3Server) -> None:
    ns, name = namespace, "flaky"
    uri = _dataset(task_storage, bucket, alpaca_records(60), "d.jsonl")
    cluster.apply_task(ns, name, {**_spec(s3_server, uri, bucket),
                                  "resources": {"gpu": 1, "backoffLimit": 1}})
    st = cluster.wait_phase(ns, name, "Training")
    job = st["job"]["name"]
    # A crash (exit 1, no termination message: the log's tail stands in) on every attempt.
    trainer.release(job, Outcome(1, "CUDA error: an illegal memory access"),
                    Outcome(1, "CUDA error: an illegal memory access"))
    st = cluster.wait_phase(ns, name, "Failed", timeout=90)
    assert cluster.job_condition(ns, job, "Failed")["reason"] == "BackoffLimitExceeded"
    assert trainer.attempts(job) == 2  # the first try and one retry (backoffLimit 1)
    assert _cond(st, "Trained")["status"] == "False"
    assert "\n" not in st["message"]


def test_suspend_before_launch_then_resume(cluster: Cluster, operator: OperatorProcess,
                                           namespace: str, bucket: str, task_storage: Storage,
                                           s3_server: S3Server) -> None:
    ns, name = namespace, "paused"
    uri = _dataset(task_storage, bucket, alpaca_records(60), "d.jsonl")
    cluster.apply_task(ns, name, {**_spec(s3_server, uri, bucket), "suspend": True})
    st = cluster.wait_phase(ns, name, "Suspended")
    assert _cond(st, "JobCreated")["reason"] == "Suspended" and cluster.jobs(ns) == []
    cluster.patch_spec(ns, name, {"suspend": False})
    st = cluster.wait_phase(ns, name, "Training")
    job = st["job"]["name"]
    assert len(cluster.jobs(ns)) == 1
    wait_for(lambda: _pod_running(cluster, ns, job), 30, "the trainer pod to run")
    cluster.patch_spec(ns, name, {"suspend": True})
    cluster.wait_phase(ns, name, "Suspended")
    assert cluster.jobs(ns)[0]["spec"]["suspend"] is True
    # The real Job controller stops a suspended Job's pods (the node confirms the deletion).
    wait_for(lambda: cluster.job_condition(ns, job, "Suspended"), 30, "the Job's Suspended")
    wait_for(lambda: cluster.pods(ns, job) == [], 30, "the running pod to be removed")


def test_deletion_leaves_children_to_the_garbage_collector(
        cluster: Cluster, operator: OperatorProcess, namespace: str, bucket: str,
        task_storage: Storage, s3_server: S3Server) -> None:
    ns, name = namespace, "gone"
    uri = _dataset(task_storage, bucket, alpaca_records(60), "d.jsonl")
    cluster.apply_task(ns, name, _spec(s3_server, uri, bucket))
    st = cluster.wait_phase(ns, name, "Training")
    wait_for(lambda: _pod_running(cluster, ns, st["job"]["name"]), 30, "the trainer pod to run")
    task = cluster.task(ns, name)
    assert task is not None
    uid = task["metadata"]["uid"]
    # Only Kopf's own finalizer (its timer follows running Jobs), lifted when the task goes.
    assert task["metadata"].get("finalizers", []) in ([], ["finetune.v-sekai.org/finalizer"])
    for child in cluster.jobs(ns) + cluster.configmaps(ns):
        [owner] = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "FineTuneTask", name, uid, True)
    cluster.delete_task(ns, name)
    wait_for(lambda: cluster.task(ns, name) is None, 20, "the task to be deleted")
    # The real garbage collector removes the Job, its pod and the ConfigMap.
    wait_for(lambda: cluster.jobs(ns) == [] and cluster.configmaps(ns) == []
             and cluster.pods(ns) == [], 60, "the garbage collector to remove the children")
    _handled_marker(cluster, ns, bucket, task_storage, s3_server)
    assert cluster.jobs(ns) == [] and cluster.configmaps(ns) == []  # nothing was recreated


def test_missing_secret_waits_instead_of_failing(cluster: Cluster, operator: OperatorProcess,
                                                 namespace: str, bucket: str,
                                                 task_storage: Storage,
                                                 s3_server: S3Server) -> None:
    """Argo CD may sync the task before its Secret: wait with a reason, never fail."""
    ns, name = namespace, "early"
    uri = _dataset(task_storage, bucket, alpaca_records(60), "d.jsonl")
    spec = _spec(s3_server, uri, bucket)
    spec["storage"]["credentialsSecret"] = "not-yet-there"
    cluster.apply_task(ns, name, spec)
    st = wait_for(lambda: (s := cluster.status(ns, name)).get("conditions") and s, 20,
                  "a status naming the missing Secret")
    assert st["phase"] == "Pending"
    assert _cond(st, "DataReady")["reason"] == "SecretNotFound"
    assert "not-yet-there" in st["message"] and "\n" not in st["message"]


def test_unreachable_s3_is_retried_not_failed(cluster: Cluster, operator: OperatorProcess,
                                              namespace: str, bucket: str,
                                              s3_server: S3Server) -> None:
    ns, name = namespace, "outage"
    spec = _spec(s3_server, f"s3://{bucket}/d.jsonl", bucket)
    spec["storage"]["endpoint"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cluster.apply_task(ns, name, spec)
    st = wait_for(lambda: (s := cluster.status(ns, name)).get("conditions") and
                  _cond_or_none(s, "DataReady", "Retrying") and s, 60,
                  "the DataReady condition to say it retries")
    assert st["phase"] == "Preparing"
    assert "retrying" in _cond(st, "DataReady")["message"]
    assert "\n" not in st["message"]


def _cond_or_none(status: dict[str, Any], type_: str, reason: str) -> bool:
    return any(c["type"] == type_ and c["reason"] == reason for c in status.get("conditions", []))


def test_two_operators_at_once_still_make_one_job(
        cluster: Cluster, operator: OperatorProcess, identity: Identity, namespace: str,
        bucket: str, task_storage: Storage, s3_server: S3Server, tmp_path: Any) -> None:
    """Every event delivered twice (e.g. an overlapping rollout): names are deterministic and a
    second create gets 409, so there is still one ConfigMap and one Job."""
    second = OperatorProcess(operator.kubeconfig, tmp_path / "second.log",
                             **{k: v for k, v in operator.settings.items()
                                if k != "metrics_port"}).start()
    try:
        ns, name = namespace, "twice"
        since = cluster.audit.mark()
        uri = _dataset(task_storage, bucket, alpaca_records(60), "d.jsonl")
        cluster.apply_task(ns, name, _spec(s3_server, uri, bucket))
        st = cluster.wait_phase(ns, name, "Training")
        # Each operator handles the task (each reads its Secret once); whichever comes second
        # finds the children there, or gets 409 creating them.
        wait_for(lambda: len([c for c in cluster.audit.calls(identity.username, since)
                              if c.rbac == ("get", "", "secrets") and c.namespace == ns]) >= 2,
                 20, "both operators to handle the task")
        assert [j["metadata"]["name"] for j in cluster.jobs(ns)] == [st["job"]["name"]]
        assert len(cluster.configmaps(ns)) == 1
    finally:
        second.stop()
    assert s3_server.secret_key not in second.log.read_text(errors="replace")


@pytest.mark.apiserver_restart
def test_apiserver_outage_mid_run_loses_and_duplicates_nothing(
        cluster: Cluster, operator: OperatorProcess, identity: Identity,
        trainer: ScriptedTrainer, namespace: str, bucket: str, task_storage: Storage,
        s3_server: S3Server) -> None:
    """The apiserver process is stopped while the trainer runs and finishes, then restarted
    (etcd keeps the state): the task still ends Succeeded with one Job, the operator is up."""
    ns, name = namespace, "outage-mid-run"
    since = cluster.audit.mark()
    uri = _dataset(task_storage, bucket, alpaca_records(60), "d.jsonl")
    cluster.apply_task(ns, name, _spec(s3_server, uri, bucket))
    st = cluster.wait_phase(ns, name, "Training")
    job = st["job"]["name"]
    wait_for(lambda: _pod_running(cluster, ns, job), 30, "the trainer pod to run")
    cluster.plane.stop_component("kube-apiserver")
    try:
        m = _write_trainer_output(task_storage, st, ns, name, bucket)
        trainer.release(job, _success(m))  # the node reports once the apiserver is back
        wait_for(lambda: trainer.outcomes.get(job) == [], 10, "the pod to finish meanwhile")
    finally:
        cluster.plane.start_apiserver()
    st = cluster.wait_phase(ns, name, "Succeeded", timeout=90)
    assert st["metrics"]["evalLoss"] == pytest.approx(m.eval_loss)
    assert operator.running, "the operator must ride out an apiserver outage"
    creates = [c for c in cluster.audit.calls(identity.username, since)
               if c.rbac == ("create", "batch", "jobs") and c.namespace == ns]
    assert len(creates) == 1 and len(cluster.jobs(ns)) == 1 and len(cluster.pods(ns, job)) == 1
