"""The pure builders of the ConfigMap and the trainer Job: tables, a golden file, and the
real `kubernetes-validate --strict` (Kubernetes' own OpenAPI schemas) on what they build."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from kubevalidate import validate_objects
import yaml

from finetune_contract import RunLayout
from finetune_operator.render import render_axolotl_config
from finetune_operator.resources import (LABEL_KUEUE_QUEUE, MAX_NAME, TaskRef, build_configmap,
                                         build_job, child_name)
from finetune_operator.settings import OperatorSettings
from finetune_operator.spec import parse_spec
from tests.unit.test_render import manifest

GOLDEN = Path(__file__).parent / "golden"
TASK = TaskRef("ticket-triage", "ml", "11111111-2222-3333-4444-555555555555")
# What the operator process itself may hold (its env, or a Secret it read for data preparation);
# none of it may be copied into a Job or ConfigMap.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIANEVERINAMANIFEST",
               "AWS_SECRET_ACCESS_KEY": "secret-never-in-a-manifest",
               "AWS_SESSION_TOKEN": "token-never-in-a-manifest"}
CREDENTIAL_NAME = re.compile(r"^AWS_.*(KEY|SECRET|TOKEN)")


def _spec(**over: Any) -> Any:
    body: dict[str, Any] = {
        "baseModel": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
        "dataset": {"uri": "s3://tasks/ticket-triage/"},
        "output": {"uri": "s3://adapters/"},
        "storage": {"endpoint": "http://minio.storage:9000", "credentialsSecret": "s3-credentials"},
    }
    for key, value in over.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_spec(body)


def _job(spec: Any, settings: OperatorSettings | None = None) -> dict[str, Any]:
    settings = settings or OperatorSettings(trainer_image="registry.example/trainer:1.2.3")
    run = spec.run_id()
    layout = RunLayout(root=spec.output.uri, namespace=TASK.namespace, task=TASK.name, run_id=run)
    return build_job(TASK, run, spec, layout, settings)


def _container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


def kubernetes_validate(tmp_path: Path, *objs: dict[str, Any]) -> None:
    validate_objects(list(objs))


@pytest.mark.parametrize(("name", "run", "expected"), [
    ("short", "r1234abcd", "short-r1234abcd"),
    ("dotted.name", "r1234abcd", "dotted-name-r1234abcd"),
    ("a" * 80, "r1234abcd", None),
    ("b" * 53 + "x", "r1234abcd", None),
])
def test_child_names_fit_a_label_and_stay_unique(name: str, run: str, expected: str | None) -> None:
    got = child_name(name, run)
    assert len(got) <= MAX_NAME and got.endswith(run)
    if expected:
        assert got == expected
    assert child_name(name, run) == got  # deterministic
    if len(name) > 60:
        assert child_name(name[:-1] + "z", run) != got  # same prefix, different names


@pytest.mark.parametrize(("case", "over", "check"), [
    ("gpu default", {}, lambda j: _container(j)["resources"]["limits"]["nvidia.com/gpu"] == "1"),
    ("gpu resource name", {"resources": {"gpu": 2, "gpuResourceName": "amd.com/gpu"}},
     lambda j: _container(j)["resources"]["limits"] == {"memory": "32Gi", "amd.com/gpu": "2"}),
    ("cpu profile", {"resources": {"gpu": 0}},
     lambda j: "nvidia.com/gpu" not in _container(j)["resources"]["limits"]
     and _container(j)["args"][_container(j)["args"].index("--profile") + 1] == "cpu"),
    ("gpu profile", {}, lambda j: "gpu" in _container(j)["args"]),
    ("kueue label", {"resources": {"queueName": "team-a"}},
     lambda j: j["metadata"]["labels"][LABEL_KUEUE_QUEUE] == "team-a"),
    ("no kueue label", {}, lambda j: LABEL_KUEUE_QUEUE not in j["metadata"]["labels"]),
    ("node selector", {"resources": {"nodeSelector": {"gpu": "a100"}}},
     lambda j: j["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "a100"}),
    ("tolerations", {"resources": {"tolerations": [{"key": "gpu", "operator": "Exists",
                                                    "effect": "NoSchedule"}]}},
     lambda j: j["spec"]["template"]["spec"]["tolerations"][0]["key"] == "gpu"),
    ("priority class", {"resources": {"priorityClassName": "batch-low"}},
     lambda j: j["spec"]["template"]["spec"]["priorityClassName"] == "batch-low"),
    ("deadline and retries", {"resources": {"activeDeadlineSeconds": 600, "backoffLimit": 3}},
     lambda j: (j["spec"]["activeDeadlineSeconds"], j["spec"]["backoffLimit"]) == (600, 3)),
    ("trainer image override", {"trainerImage": "mine/trainer:dev"},
     lambda j: _container(j)["image"] == "mine/trainer:dev"),
    ("no secret name, no secret env", {"storage": {"credentialsSecret": None}},
     lambda j: not any("valueFrom" in e for e in _container(j)["env"])),
])
def test_job_table(case: str, over: dict[str, Any], check: Any) -> None:
    assert check(_job(_spec(**over))), case


def test_job_invariants() -> None:
    job = _job(_spec())
    pod = job["spec"]["template"]["spec"]
    c = _container(job)
    assert job["metadata"]["ownerReferences"] == [TASK.owner_reference()]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [2]
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert job["spec"]["ttlSecondsAfterFinished"] == OperatorSettings().job_ttl_seconds
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory"}
    assert vols["config"]["configMap"]["name"] == job["metadata"]["name"]
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "s3-credentials", "key": "AWS_ACCESS_KEY_ID"}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage:9000"
    assert c["args"][:2] == ["--run-uri", f"s3://adapters/ml/ticket-triage/{_spec().run_id()}/"]
    assert c["args"][c["args"].index("--config") + 1] == "/etc/finetune/axolotl.yaml"


def test_default_endpoint_from_settings() -> None:
    spec = _spec(storage={"endpoint": ""})
    job = _job(spec, OperatorSettings(default_s3_endpoint="http://s3.local:8333"))
    env = {e["name"]: e for e in _container(job)["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://s3.local:8333"


def test_configmap_holds_the_config_only() -> None:
    cm = build_configmap(TASK, "r00000001", {"base_model": "x", "datasets": [{"path": "p"}]})
    assert cm["metadata"]["name"] == "ticket-triage-r00000001"
    assert yaml.safe_load(cm["data"]["axolotl.yaml"]) == {"base_model": "x",
                                                          "datasets": [{"path": "p"}]}
    assert cm["metadata"]["ownerReferences"][0]["uid"] == TASK.uid


def test_golden_job() -> None:
    """The full Job for a spec using every knob. A missing golden file fails; `make golden`
    (UPDATE_GOLDEN=1) rewrites it: review the diff."""
    spec = _spec(resources={"gpu": 2, "nodeSelector": {"pool": "gpu"}, "queueName": "team-a",
                            "priorityClassName": "batch-low",
                            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                             "effect": "NoSchedule"}]})
    got = _job(spec, OperatorSettings(trainer_image="registry.example/trainer:1.2.3",
                                      service_account="trainer"))
    path = GOLDEN / "job_full.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    if not path.exists():
        pytest.fail(f"golden file {path} is missing: run `make golden` and review it")
    assert got == json.loads(path.read_text()), "built Job changed: review, then `make golden`"


def test_manifests_pass_kubernetes_validate_strict(tmp_path: Path) -> None:
    jobs = [_job(_spec()), _job(_spec(resources={"gpu": 0, "queueName": "q",
                                                 "nodeSelector": {"a": "b"},
                                                 "tolerations": [{"key": "k", "operator": "Exists"}],
                                                 "priorityClassName": "p"}))]
    cm = build_configmap(TASK, "r00000001", {"base_model": "x"})
    kubernetes_validate(tmp_path, *jobs, cm)


def test_credentials_reach_the_job_only_by_secret_reference(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    spec = _spec(storage={"credentialsSecret": "team-s3"})
    job = _job(spec)
    layout = RunLayout(root=spec.output.uri, namespace=TASK.namespace, task=TASK.name,
                       run_id=spec.run_id())
    cm = build_configmap(TASK, spec.run_id(),
                         render_axolotl_config(spec, manifest(), layout, profile="gpu"))

    pod = job["spec"]["template"]["spec"]
    env = [e for c in pod.get("initContainers", []) + pod["containers"] for e in c.get("env", [])]
    creds = [e for e in env if CREDENTIAL_NAME.match(e["name"])]
    assert sorted(e["name"] for e in creds) == sorted(CREDENTIALS)  # each once, none renamed
    for entry in creds:
        assert "value" not in entry, f"plain value for {entry['name']}"
        ref = entry["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("team-s3", entry["name"])
    text = json.dumps([job, cm]) + cm["data"]["axolotl.yaml"]
    for value in CREDENTIALS.values():
        assert value not in text and base64.b64encode(value.encode()).decode() not in text
