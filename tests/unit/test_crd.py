"""The CRD in crds/ is what crdgen prints from spec.py, and its schema accepts good tasks and
rejects bad ones the way the API server would (jsonschema over crdgen.to_jsonschema)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from finetune_operator.crdgen import CRD_FILE, build_crd, render_crd, to_jsonschema

ROOT = Path(__file__).resolve().parents[2]


def crd_validator() -> jsonschema.Draft202012Validator:
    crd = yaml.safe_load((ROOT / "crds" / CRD_FILE).read_text())
    schema = to_jsonschema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    return jsonschema.Draft202012Validator(schema)


GOOD: dict[str, Any] = {
    "apiVersion": "finetune.v-sekai.org/v1alpha1", "kind": "FineTuneTask",
    "metadata": {"name": "ticket-triage", "namespace": "ml"},
    "spec": {
        "baseModel": {"name": "Qwen/Qwen2.5-0.5B-Instruct", "revision": "main"},
        "dataset": {"uri": "s3://tasks/ticket-triage/", "format": "auto",
                    "validationFraction": 0.1, "seed": 42, "minSamples": 100},
        "training": {"adapter": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
                     "epochs": 3, "learningRate": 2.0e-4, "samplePacking": True,
                     "trainOnInputs": False, "earlyStoppingPatience": 2, "axolotl": {"x": 1}},
        "output": {"uri": "s3://adapters/"},
        "storage": {"endpoint": "", "credentialsSecret": "s3-credentials"},
        "resources": {"gpu": 1, "gpuResourceName": "nvidia.com/gpu", "nodeSelector": {},
                      "tolerations": [{"key": "gpu", "operator": "Exists"}]},
        "suspend": False,
    },
}


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    node = doc
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DELETE:
        node.pop(last)
    else:
        node[last] = value
    return doc


_DELETE = object()


def test_committed_crd_matches_crdgen() -> None:
    assert (ROOT / "crds" / CRD_FILE).read_text() == render_crd(), "run `make crds`"


def test_crd_shape() -> None:
    crd = build_crd()
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["ftt"]
    assert "finetune" in crd["spec"]["names"]["categories"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    for col in ("Phase", "Progress", "Train", "Val", "Base loss", "Eval loss", "Improvement",
                "Age"):
        assert col in columns


def test_good_task_and_minimal_task_validate() -> None:
    v = crd_validator()
    v.validate(GOOD)
    v.validate({"apiVersion": GOOD["apiVersion"], "kind": "FineTuneTask",
                "metadata": {"name": "m"},
                "spec": {"baseModel": {"name": "m"}, "dataset": {"uri": "s3://bkt/k.jsonl"},
                         "output": {"uri": "s3://out/"}}})


def test_repo_example_tasks_validate() -> None:
    v = crd_validator()
    found = 0
    for path in [*ROOT.glob("examples/**/*.yaml"), *ROOT.glob("manifests/**/*.yaml")]:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "FineTuneTask":
                v.validate(doc)
                found += 1
    assert found >= 0  # none yet is fine; every one present must validate


@pytest.mark.parametrize(("path", "value"), [
    ("spec.dataset.uri", "http://example.com/data.jsonl"),
    ("spec.dataset.uri", "/local/path"),
    ("spec.output.uri", "gs://bucket/"),
    ("spec.dataset.validationFraction", 0.0),
    ("spec.dataset.validationFraction", 0.6),
    ("spec.dataset.format", "xml"),
    ("spec.training.adapter", "full"),
    ("spec.training.lora.r", 0),
    ("spec.resources.gpu", -1),
    ("spec.resources.gpu", "1"),
    ("spec.dataset.minSamples", 0),
    ("spec.dataset.typo", 1),
    ("spec.baseModel", _DELETE),
    ("spec", _DELETE),
])
def test_bad_tasks_are_rejected(path: str, value: Any) -> None:
    with pytest.raises(jsonschema.ValidationError):
        crd_validator().validate(_with(path, value))
