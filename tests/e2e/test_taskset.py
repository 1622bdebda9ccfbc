"""FineTuneTaskSet on a real control plane: a set over an S3 prefix generates one FineTuneTask per
folder, owned by the set (the real garbage collector deletes them with it), their statuses roll
up into the set's counts, a new folder becomes a task on the next resync (2 s here), a removed
one is deleted, and bad entries and an empty prefix each leave a one-line reason on the set
while the rest goes on. The trainer is the ScriptedTrainer; the task controller is untouched."""

from __future__ import annotations

import json
from typing import Any

import pytest

from finetune_contract import ExactMatch, Metrics, RunLayout, TerminationMessage, Verdicts
from finetune_contract.storage import Storage
from finetune_dev.cluster.node import Outcome
from finetune_dev.devs3 import S3Server
from finetune_operator import GROUP, VERSION

from .conftest import alpaca_records
from .harness import Cluster, OperatorProcess, ScriptedTrainer, wait_for

pytestmark = pytest.mark.cluster
SETS = "finetunetasksets"


def _folder(storage: Storage, bucket: str, key: str, n: int) -> None:
    recs = alpaca_records(n, tag=key)
    storage.write_text(f"s3://{bucket}/tasks/{key}/d.jsonl",
                       "".join(json.dumps(r) + "\n" for r in recs))


def _defaults(s3: S3Server, bucket: str) -> dict[str, Any]:
    return {"baseModel": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
            "dataset": {"validationFraction": 0.2, "minSamples": 20, "minValidationSamples": 5},
            "output": {"uri": f"s3://{bucket}/runs/"},
            "storage": {"endpoint": s3.endpoint, "credentialsSecret": "s3-credentials"},
            "resources": {"gpu": 1}}


def _apply_set(cluster: Cluster, ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return cluster._call(cluster.custom.create_namespaced_custom_object, GROUP, VERSION, ns, SETS,
                         {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneTaskSet",
                          "metadata": {"name": name, "namespace": ns}, "spec": spec})


def _set(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    return cluster._call(cluster.custom.get_namespaced_custom_object, GROUP, VERSION, ns, SETS,
                         name)


def _set_status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return (_set(cluster, ns, name) or {}).get("status") or {}


def _tasks(cluster: Cluster, ns: str) -> dict[str, dict[str, Any]]:
    items = cluster._call(cluster.custom.list_namespaced_custom_object, GROUP, VERSION, ns,
                          "finetunetasks")["items"]
    return {t["metadata"]["name"]: t for t in items}


def _cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def _succeed(cluster: Cluster, trainer: ScriptedTrainer, storage: Storage, ns: str, name: str,
             bucket: str) -> None:
    st = cluster.status(ns, name)
    layout = RunLayout(root=f"s3://{bucket}/runs/", namespace=ns, task=name, run_id=st["runId"])
    m = Metrics(run_id=layout.run_id, base_eval_loss=2.0, eval_loss=1.2,
                improvement=Metrics.relative_improvement(2.0, 1.2), train_loss=1.0,
                best_step=40, verdicts=Verdicts(overfit=False, no_gain=False),
                exact_match=ExactMatch(base=0.2, tuned=0.9, samples=12),
                adapter_uri=layout.adapter, adapter_digest="sha256:abc")
    storage.write_text(layout.adapter + "adapter_config.json", "{}")
    storage.write_text(layout.metrics, m.to_json())
    storage.write_text(layout.complete_marker, "ok")
    trainer.release(st["job"]["name"], Outcome(0, TerminationMessage(
        ok=True, reason="Improved", message="done", base_eval_loss=2.0, eval_loss=1.2).encode()))


def test_set_over_a_prefix(cluster: Cluster, operator: OperatorProcess, trainer: ScriptedTrainer,
                           namespace: str, bucket: str, task_storage: Storage,
                           s3_server: S3Server) -> None:
    ns, name = namespace, "team"
    _folder(task_storage, bucket, "alpha", 60)
    _folder(task_storage, bucket, "beta", 60)
    _folder(task_storage, bucket, "gamma", 12)  # below minSamples: the task ends Skipped
    task_storage.write_text(f"s3://{bucket}/tasks/README.txt", "not a task")
    created = _apply_set(cluster, ns, name, {
        "source": {"prefix": f"s3://{bucket}/tasks/"}, "defaults": _defaults(s3_server, bucket),
        "tasks": [{"key": "beta", "spec": {"training": {"epochs": 2}}}]})
    uid = created["metadata"]["uid"]
    names = {"team-alpha", "team-beta", "team-gamma"}
    tasks = wait_for(lambda: (t := _tasks(cluster, ns)) and set(t) == names and t, 30,
                     "the three generated tasks")
    for task_name, task in tasks.items():
        [owner] = task["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "FineTuneTaskSet", name, uid, True)
        key = task_name.removeprefix("team-")
        assert task["spec"]["dataset"]["uri"] == f"s3://{bucket}/tasks/{key}/"
        assert task["spec"]["dataset"]["minSamples"] == 20  # the set's default
    assert tasks["team-beta"]["spec"]["training"]["epochs"] == 2  # the entry's override
    assert "epochs" not in tasks["team-alpha"]["spec"].get("training", {})

    cluster.wait_phase(ns, "team-gamma", "Skipped")
    cluster.wait_phase(ns, "team-alpha", "Training")
    beta = cluster.wait_phase(ns, "team-beta", "Training")
    _succeed(cluster, trainer, task_storage, ns, "team-alpha", bucket)
    trainer.release(beta["job"]["name"], Outcome(2, TerminationMessage(
        ok=False, reason="BaseModelNotFound", message="no such model").encode()))
    st = wait_for(lambda: (s := _set_status(cluster, ns, name)).get("counts", {}).get("failed")
                  == 1 and s["counts"]["succeeded"] == 1 and s, 40, "the roll-up")
    assert st["tasks"] == 3
    assert st["counts"] == {"pending": 0, "preparing": 0, "training": 0, "succeeded": 1,
                            "failed": 1, "skipped": 1, "suspended": 0}
    assert st["meanImprovement"] == pytest.approx(0.4)
    assert st["minImprovement"] == pytest.approx(0.4)
    assert st["failedTasks"] == [{"name": "team-beta", "reason": "BaseModelNotFound",
                                  "message": st["failedTasks"][0]["message"]}]
    assert _cond(st, "SourceListed")["reason"] == "Listed"
    assert _cond(st, "TasksGenerated")["status"] == "True"
    # Each task keeps its own full status, as if applied alone.
    alpha = cluster.status(ns, "team-alpha")
    assert alpha["phase"] == "Succeeded" and alpha["metrics"]["evalLoss"] == pytest.approx(1.2)
    assert cluster.status(ns, "team-gamma")["conditions"]
    out = cluster.kubectl("get", "ftts", "-n", ns).stdout
    assert out.split("\n")[0].split() == ["NAME", "TASKS", "SUCCEEDED", "FAILED", "MEAN",
                                          "IMPROVEMENT", "AGE"]
    assert out.split("\n")[1].split()[:5] == [name, "3", "1", "1", "0.4"]

    # A new folder becomes a task on the next resync; a removed one is deleted.
    _folder(task_storage, bucket, "delta", 60)
    wait_for(lambda: "team-delta" in _tasks(cluster, ns), 20, "the new folder's task")
    task_storage.delete(f"s3://{bucket}/tasks/gamma/d.jsonl")
    wait_for(lambda: "team-gamma" not in _tasks(cluster, ns), 20, "the removed folder's task to go")
    # A change of the set's defaults reaches the generated specs (not the entry's override).
    cluster._call(cluster.custom.patch_namespaced_custom_object, GROUP, VERSION, ns, SETS, name,
                  {"spec": {"defaults": {"training": {"epochs": 3}}}},
                  _content_type="application/merge-patch+json")
    wait_for(lambda: _tasks(cluster, ns)["team-alpha"]["spec"].get("training", {}).get("epochs")
             == 3, 20, "the new default in the generated spec")
    assert _tasks(cluster, ns)["team-beta"]["spec"]["training"]["epochs"] == 2

    # Deleting the set: the real garbage collector deletes its tasks.
    cluster._call(cluster.custom.delete_namespaced_custom_object, GROUP, VERSION, ns, SETS, name)
    wait_for(lambda: _set(cluster, ns, name) is None, 20, "the set to be deleted")
    wait_for(lambda: _tasks(cluster, ns) == {}, 60, "the garbage collector to delete the tasks")


def test_bad_entries_and_an_empty_prefix(cluster: Cluster, operator: OperatorProcess,
                                         namespace: str, bucket: str, task_storage: Storage,
                                         s3_server: S3Server) -> None:
    ns = namespace
    _folder(task_storage, bucket, "ok", 12)
    good = f"s3://{bucket}/tasks/ok/"
    _apply_set(cluster, ns, "listed", {"defaults": _defaults(s3_server, bucket), "tasks": [
        {"key": "ok", "spec": {"dataset": {"uri": good}}},
        {"key": "OK", "spec": {"dataset": {"uri": good}}},  # the same task name: listed-ok
        {"key": "bad", "spec": {"dataset": {"uri": good}, "training": {"epochs": -1}}}]})
    _apply_set(cluster, ns, "empty", {"source": {"prefix": f"s3://{bucket}/nothing-here/"},
                                      "defaults": _defaults(s3_server, bucket)})
    # The good entry goes on: its task is generated and runs (Skipped: 12 < minSamples).
    cluster.wait_phase(ns, "listed-ok", "Skipped")
    st = wait_for(lambda: (s := _set_status(cluster, ns, "listed")).get("counts", {})
                  .get("skipped") == 1 and s, 20, "the listed set's roll-up")
    assert set(_tasks(cluster, ns)) == {"listed-ok"}
    dup, bad = st["problems"]
    assert dup == ("entry 'OK': makes the task name listed-ok, as 'ok' does; 'ok' is used")
    assert bad.startswith("entry 'bad': invalid spec: training.epochs") and "\n" not in bad
    cond = _cond(st, "TasksGenerated")
    assert (cond["status"], cond["reason"]) == ("False", "MalformedEntry")
    assert cond["message"].startswith(dup)
    empty = wait_for(lambda: _cond(s := _set_status(cluster, ns, "empty"), "SourceListed")
                     and s, 20, "the empty set's status")
    cond = _cond(empty, "SourceListed")
    assert (cond["status"], cond["reason"]) == ("False", "EmptyPrefix")
    assert cond["message"] == (f"no task folder under s3://{bucket}/nothing-here/ (each "
                               "immediate sub-prefix is a task)")
    assert empty["tasks"] == 0
    events = wait_for(lambda: {(e["involvedObject"]["name"], e["reason"])
                               for e in cluster.events(ns)
                               if e["involvedObject"]["kind"] == "FineTuneTaskSet"} >= {
        ("listed", "DuplicateTaskName"), ("listed", "MalformedEntry"), ("empty", "EmptyPrefix")}
        and True, 10, "a Warning Event per reason")
    assert events
