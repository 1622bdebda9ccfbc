"""The FineTuneTask CRD as the real kube-apiserver serves it (issue 12 item 6).

Everything here is the apiserver's own work on crds/finetunetasks.finetune.v-sekai.org.yaml
(applied by the session's `cluster` fixture): structural-schema defaulting and pruning, OpenAPI
validation (422 naming the field), the printer columns and `kubectl explain` (the real kubectl,
admin kubeconfig), and the status subresource. No operator may run: the test must be the only
writer of these tasks' status (the `no_session_operator` fixture stops the session's operator if
an earlier test started it).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_operator import GROUP, PLURAL, VERSION
from finetune_operator.spec import FineTuneTaskSpec, TrainingSpec

from .harness import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("no_session_operator")]

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "finetunetasks.finetune.v-sekai.org.yaml"
NAMESPACE = "crd-server"
_names = itertools.count()

MINIMAL: dict[str, Any] = {"baseModel": {"name": "HuggingFaceTB/SmolLM2-135M"},
                           "dataset": {"uri": "s3://datasets/triage/"},
                           "output": {"uri": "s3://adapters/"}}
# Every optional object present and (but for the two search candidates the operator requires)
# empty: the server fills each default beneath it.
WITH_EMPTY_SECTIONS: dict[str, Any] = {
    **copy.deepcopy(MINIMAL),
    "training": {"lora": {}, "search": {"learningRates": [1e-4, 2e-4]}},
    "storage": {}, "resources": {}}

# What a user gets without writing it (dotted path under .spec -> value). The CRD's `default:`s,
# written out: removing or changing one there fails this test.
SPEC_DEFAULTS: dict[str, Any] = {
    "baseModel.revision": "main",
    "dataset.format": "auto",
    "dataset.validationFraction": 0.1,
    "dataset.seed": 42,
    "dataset.minSamples": 100,
    "dataset.minValidationSamples": 10,
    "dataset.maxChars": 16000,
    "dataset.strict": False,
    "dataset.maxBytes": 268435456,
    "training.adapter": "lora",
    "training.lora.r": 16,
    "training.lora.alpha": 32,
    "training.lora.dropout": 0.05,
    "training.trainOnInputs": False,
    "training.earlyStoppingPatience": 2,
    "training.search.selectionFraction": 0.2,
    "storage.endpoint": "",
    "storage.region": "us-east-1",
    "storage.credentialsSecret": "s3-credentials",
    "resources.gpu": 1,
    "resources.gpuResourceName": "nvidia.com/gpu",
    "resources.cpu": "4",
    "resources.memory": "32Gi",
    "resources.activeDeadlineSeconds": 21600,
    "resources.backoffLimit": 1,
    "suspend": False,
    "infrequent": False,
}


# ---- helpers ---------------------------------------------------------------------------------

def _doc(name: str, spec: dict[str, Any] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneTask",
                           "metadata": {"name": name, "namespace": NAMESPACE}}
    if spec is not None:
        doc["spec"] = spec
    return doc


def _name(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def _create(cluster: Cluster, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST a FineTuneTask as the kubernetes client does (no fieldValidation parameter):
    (HTTP status, body) whether the server accepted it or not."""
    from kubernetes.client.exceptions import ApiException

    try:
        resp = cluster.custom.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, body, _preload_content=False)
        return resp.status, json.loads(resp.data)
    except ApiException as err:
        return err.status, json.loads(err.body)


def _patch(cluster: Cluster, name: str, body: dict[str, Any], *, status: bool = False
           ) -> dict[str, Any]:
    fn = (cluster.custom.patch_namespaced_custom_object_status if status
          else cluster.custom.patch_namespaced_custom_object)
    resp = fn(GROUP, VERSION, NAMESPACE, PLURAL, name, body,
              _content_type="application/merge-patch+json", _preload_content=False)
    return json.loads(resp.data)


def _get(cluster: Cluster, name: str) -> dict[str, Any]:
    return json.loads(cluster.custom.get_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, name, _preload_content=False).data)


def _at(obj: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return KeyError(dotted)  # a value no expectation equals
        obj = obj[key]
    return obj


def _set(obj: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    *parents, last = dotted.split(".")
    for key in parents:
        obj = obj.setdefault(key, {})
    obj[last] = value
    return obj


def _leaves(obj: dict[str, Any], path: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in obj.items():
        here = f"{path}.{key}" if path else key
        out += _leaves(value, here) if isinstance(value, dict) and value else [(here, value)]
    return out


def _crd_defaults(schema: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Dotted path -> `default:` of every property the CRD's schema declares one for."""
    out: dict[str, Any] = {}
    for key, prop in (schema.get("properties") or {}).items():
        here = f"{path}.{key}" if path else key
        if "default" in prop:
            out[here] = prop["default"]
        out.update(_crd_defaults(prop, here))
    return out


@pytest.fixture(scope="module")
def ns(cluster: Cluster) -> Iterator[str]:
    cluster.ensure_namespace(NAMESPACE)
    yield NAMESPACE
    cluster.kubectl("delete", "finetunetasks", "--all", "-n", NAMESPACE, "--wait=false",
                    check=False)


@pytest.fixture(scope="module")
def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_FILE.read_text())
    [version] = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def kubectl_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """kubectl's discovery/OpenAPI cache for this module: what it prints was fetched from this
    apiserver, not left over from another run."""
    return f"--cache-dir={tmp_path_factory.mktemp('kubectl-cache')}"


# ---- defaulting ------------------------------------------------------------------------------

def test_the_table_names_every_default_the_crd_declares(crd_schema: dict[str, Any]) -> None:
    declared = _crd_defaults(crd_schema["properties"]["spec"])
    assert declared == SPEC_DEFAULTS


def test_server_applies_spec_defaults(cluster: Cluster, ns: str) -> None:
    code, task = _create(cluster, _doc(_name("defaults"), copy.deepcopy(WITH_EMPTY_SECTIONS)))
    assert code == 201, task
    spec = _get(cluster, task["metadata"]["name"])["spec"]
    got = {path: _at(spec, path) for path in SPEC_DEFAULTS}
    assert got == SPEC_DEFAULTS


def test_server_defaults_only_fill_objects_the_user_wrote(cluster: Cluster, ns: str) -> None:
    """A minimal task gets its top-level and dataset defaults; absent sections stay absent (the
    server does not invent `training`), so the operator's spec model fills those itself."""
    code, task = _create(cluster, _doc(_name("minimal"), copy.deepcopy(MINIMAL)))
    assert code == 201, task
    spec = _get(cluster, task["metadata"]["name"])["spec"]
    assert spec["baseModel"] == {"name": MINIMAL["baseModel"]["name"], "revision": "main"}
    assert spec["dataset"]["format"] == "auto" and spec["dataset"]["validationFraction"] == 0.1
    assert spec["suspend"] is False and spec["infrequent"] is False
    assert not {"training", "storage", "resources"} & spec.keys()


@pytest.mark.parametrize("spec", [MINIMAL, WITH_EMPTY_SECTIONS], ids=["minimal", "empty-sections"])
def test_server_defaults_equal_the_operator_model_defaults(cluster: Cluster, ns: str,
                                                           spec: dict[str, Any]) -> None:
    """The run id hashes the spec with the model's defaults filled in: the server's defaults
    must be the same values, or a task would get a different run id from the operator than
    from `finetune render` on the YAML the user wrote."""
    code, task = _create(cluster, _doc(_name("runid"), copy.deepcopy(spec)))
    assert code == 201, task
    served = FineTuneTaskSpec.model_validate(_get(cluster, task["metadata"]["name"])["spec"])
    written = FineTuneTaskSpec.model_validate(spec)
    assert served == written
    assert served.run_id() == written.run_id()


# ---- pruning ---------------------------------------------------------------------------------

def test_unknown_fields_are_pruned_and_preserved_where_declared(cluster: Cluster,
                                                                ns: str) -> None:
    spec = copy.deepcopy(MINIMAL)
    spec["notAField"] = "dropped"
    spec["dataset"]["typoFraction"] = 0.3
    spec["training"] = {"bogus": 1, "axolotl": {"weight_decay": 0.01, "nested": {"any": [1]}}}
    spec["resources"] = {"tolerations": [{"key": "gpu", "operator": "Exists",
                                          "effect": "NoSchedule"}]}
    body = _doc(_name("prune"), spec)
    body["status"] = {"phase": "Succeeded"}  # the status subresource owns it: dropped on create
    code, task = _create(cluster, body)
    assert code == 201, task
    served = _get(cluster, task["metadata"]["name"])
    assert "notAField" not in served["spec"]
    assert "typoFraction" not in served["spec"]["dataset"]
    assert "bogus" not in served["spec"]["training"]
    # x-kubernetes-preserve-unknown-fields: passed through untouched.
    assert served["spec"]["training"]["axolotl"] == {"weight_decay": 0.01, "nested": {"any": [1]}}
    assert served["spec"]["resources"]["tolerations"] == spec["resources"]["tolerations"]
    assert "status" not in served


def test_kubectl_strict_validation_names_the_unknown_field(cluster: Cluster, ns: str) -> None:
    """kubectl asks for fieldValidation=Strict: a typo is refused instead of silently pruned."""
    spec = copy.deepcopy(MINIMAL)
    spec["training"] = {"epoch": 3}  # for `epochs`
    out = cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(_doc(_name("typo"), spec)),
                          check=False)
    assert out.returncode != 0
    assert 'unknown field "spec.training.epoch"' in out.stderr


# ---- validation ------------------------------------------------------------------------------

def _without(dotted: str) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL)
    *parents, last = dotted.split(".")
    obj = spec
    for key in parents:
        obj = obj[key]
    del obj[last]
    return spec


def _with(**values: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL)
    for dotted, value in values.items():
        _set(spec, dotted.replace("__", "."), value)
    return spec


# (id, spec, the field the server must name, words of its complaint)
REJECTED: list[tuple[str, dict[str, Any] | None, str, str]] = [
    ("no-spec", None, "spec", "Required value"),
    ("no-baseModel", _without("baseModel"), "spec.baseModel", "Required value"),
    ("no-baseModel-name", _with(baseModel={}), "spec.baseModel.name", "Required value"),
    ("empty-baseModel-name", _with(baseModel__name=""), "spec.baseModel.name",
     "at least 1 chars long"),
    ("no-dataset-uri", _with(dataset={"format": "alpaca"}), "spec.dataset.uri", "Required value"),
    ("no-output", _without("output"), "spec.output", "Required value"),
    ("dataset-uri-not-s3", _with(dataset__uri="https://example.com/data.jsonl"),
     "spec.dataset.uri", "should match"),
    ("output-uri-bad-bucket", _with(output__uri="s3://Adapters/"), "spec.output.uri",
     "should match"),
    ("negative-epochs", _with(training__epochs=-1), "spec.training.epochs",
     "should be greater than 0"),
    ("zero-epochs", _with(training__epochs=0), "spec.training.epochs", "should be greater than 0"),
    ("too-many-epochs", _with(training__epochs=101), "spec.training.epochs",
     "less than or equal to 100"),
    ("epochs-as-string", _with(training__epochs="three"), "spec.training.epochs",
     "must be of type number"),
    ("validationFraction-above-1", _with(dataset__validationFraction=1.5),
     "spec.dataset.validationFraction", "less than or equal to 0.5"),
    ("validationFraction-zero", _with(dataset__validationFraction=0),
     "spec.dataset.validationFraction", "greater than 0"),
    ("adapter-enum", _with(training__adapter="dora"), "spec.training.adapter",
     'Unsupported value: "dora"'),
    ("format-enum", _with(dataset__format="xml"), "spec.dataset.format",
     'Unsupported value: "xml"'),
    ("negative-seed", _with(dataset__seed=-1), "spec.dataset.seed", "greater than or equal to 0"),
    ("seed-not-integer", _with(dataset__seed=1.5), "spec.dataset.seed", "must be of type integer"),
    ("maxChars-too-small", _with(dataset__maxChars=15), "spec.dataset.maxChars",
     "greater than or equal to 16"),
    ("strict-as-string", _with(dataset__strict="yes"), "spec.dataset.strict",
     "must be of type boolean"),
    ("lora-r-zero", _with(training__lora={"r": 0}), "spec.training.lora.r",
     "greater than or equal to 1"),
    ("lora-r-too-big", _with(training__lora={"r": 2048}), "spec.training.lora.r",
     "less than or equal to 1024"),
    ("lora-dropout-one", _with(training__lora={"dropout": 1}), "spec.training.lora.dropout",
     "should be less than 1"),
    ("targetModules-not-strings", _with(training__lora={"targetModules": [1]}),
     "spec.training.lora.targetModules[0]", "must be of type string"),
    ("learningRate-one", _with(training__learningRate=1), "spec.training.learningRate",
     "should be less than 1"),
    ("sequenceLen-too-small", _with(training__sequenceLen=16), "spec.training.sequenceLen",
     "greater than or equal to 32"),
    ("maxSteps-zero", _with(training__maxSteps=0), "spec.training.maxSteps",
     "greater than or equal to 1"),
    ("patience-above-100", _with(training__earlyStoppingPatience=101),
     "spec.training.earlyStoppingPatience", "less than or equal to 100"),
    ("search-too-many-rates", _with(training__search={"learningRates": [1e-4] * 7}),
     "spec.training.search.learningRates", "must have at most 6 items"),
    ("search-rank-zero", _with(training__search={"loraRanks": [8, 0]}),
     "spec.training.search.loraRanks[1]", "greater than or equal to 1"),
    ("search-selection-above-half", _with(training__search={"selectionFraction": 0.6}),
     "spec.training.search.selectionFraction", "less than or equal to 0.5"),
    ("axolotl-not-object", _with(training__axolotl="lr: 1"), "spec.training.axolotl",
     "must be of type object"),
    ("gpu-as-string", _with(resources__gpu="1"), "spec.resources.gpu", "must be of type integer"),
    ("gpu-above-16", _with(resources__gpu=17), "spec.resources.gpu", "less than or equal to 16"),
    ("negative-gpu", _with(resources__gpu=-1), "spec.resources.gpu", "greater than or equal to 0"),
    ("cpu-as-number", _with(resources__cpu=4), "spec.resources.cpu", "must be of type string"),
    ("nodeSelector-value-not-string", _with(resources__nodeSelector={"gpu": True}),
     "spec.resources.nodeSelector.gpu", "must be of type string"),
    ("tolerations-not-list", _with(resources__tolerations={"key": "gpu"}),
     "spec.resources.tolerations", "must be of type array"),
    ("deadline-below-60", _with(resources__activeDeadlineSeconds=59),
     "spec.resources.activeDeadlineSeconds", "greater than or equal to 60"),
    ("backoffLimit-above-10", _with(resources__backoffLimit=11), "spec.resources.backoffLimit",
     "less than or equal to 10"),
    ("suspend-as-string", _with(suspend="true"), "spec.suspend", "must be of type boolean"),
    ("storage-not-object", _with(storage="s3-credentials"), "spec.storage",
     "must be of type object"),
]


@pytest.mark.parametrize(("spec", "field", "complaint"), [r[1:] for r in REJECTED],
                         ids=[r[0] for r in REJECTED])
def test_server_rejects_bad_spec_naming_the_field(cluster: Cluster, ns: str,
                                                  spec: dict[str, Any] | None, field: str,
                                                  complaint: str) -> None:
    name = _name("bad")
    code, body = _create(cluster, _doc(name, spec))
    assert code == 422, body
    assert body["reason"] == "Invalid" and body["details"]["kind"] == "FineTuneTask"
    causes = {c.get("field"): c["message"] for c in body["details"]["causes"]}
    assert field in causes, causes
    assert complaint in causes[field], causes[field]
    assert f"{field}: " in body["message"]  # what kubectl prints names the field too
    assert _created(cluster, name) is False


def _created(cluster: Cluster, name: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        _get(cluster, name)
        return True
    except ApiException as err:
        assert err.status == 404
        return False


# The bounds are exactly where the table says: the values just inside them are accepted.
ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("epochs-fractional", _with(training__epochs=0.5)),
    ("epochs-100", _with(training__epochs=100)),
    ("epochs-null", _with(training__epochs=None)),
    ("validationFraction-half", _with(dataset__validationFraction=0.5)),
    ("gpu-zero-cpu-profile", _with(resources__gpu=0)),
    ("lora-dropout-zero", _with(training__lora={"dropout": 0, "r": 1024})),
    ("qlora-chat", _with(training__adapter="qlora", dataset__format="chat")),
    ("search-six-rates", _with(training__search={"learningRates": [1e-5, 2e-5, 5e-5, 1e-4,
                                                                   2e-4, 5e-4]})),
    ("credentialsSecret-null-irsa", _with(storage={"credentialsSecret": None})),
    ("bucket-with-dots", _with(output__uri="s3://my.adapters-01/team/")),
]


@pytest.mark.parametrize("spec", [a[1] for a in ACCEPTED], ids=[a[0] for a in ACCEPTED])
def test_server_accepts_values_at_the_bounds(cluster: Cluster, ns: str,
                                             spec: dict[str, Any]) -> None:
    code, body = _create(cluster, _doc(_name("ok"), copy.deepcopy(spec)))
    assert code == 201, body.get("message")
    # Stored as written: an explicit null stays null (nullable: true) rather than being pruned
    # and replaced by the default (credentialsSecret: null means "no Secret", e.g. IRSA).
    for path, value in _leaves(spec):
        assert _at(body["spec"], path) == value, path
    FineTuneTaskSpec.model_validate(body["spec"])  # and the operator reads it


# ---- what kubectl shows, from the server -----------------------------------------------------

SUCCEEDED_STATUS = {
    "phase": "Succeeded", "runId": "r1234abcd", "message": "adapter beats base",
    "data": {"trainSamples": 900, "validationSamples": 100, "digest": "sha256:feed"},
    "metrics": {"baseEvalLoss": 2.5, "evalLoss": 1.25, "improvement": 0.5},
}


def _table(text: str) -> list[list[str]]:
    """kubectl's column output: cells are separated by 2+ spaces (headers have single ones)."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]


def test_kubectl_get_prints_the_crd_columns(cluster: Cluster, ns: str,
                                            kubectl_cache: str) -> None:
    name = _name("columns")
    code, body = _create(cluster, _doc(name, copy.deepcopy(MINIMAL)))
    assert code == 201, body
    _patch(cluster, name, {"status": SUCCEEDED_STATUS}, status=True)

    [header, row] = _table(cluster.kubectl(kubectl_cache, "get", "ftt", name, "-n", ns).stdout)
    assert header == ["NAME", "PHASE", "PROGRESS", "TRAIN", "VAL", "BASE LOSS", "EVAL LOSS",
                      "IMPROVEMENT", "AGE"]
    # A finished run's progress is dropped (status.metrics has the outcome): kubectl leaves the
    # PROGRESS cell blank, which the split above folds away.
    assert row[:-1] == [name, "Succeeded", "900", "100", "2.5", "1.25", "0.5"]
    assert re.fullmatch(r"\d+s", row[-1]), row[-1]

    [header, row] = _table(cluster.kubectl(kubectl_cache, "get", "finetunetask", name, "-n", ns,
                                           "-o", "wide").stdout)
    assert header[-2:] == ["MESSAGE", "AGE"]  # priority 1: only with -o wide
    assert row[-2] == "adapter beats base"

    # The `finetune` category lists tasks too (kubectl get finetune).
    listed = _table(cluster.kubectl(kubectl_cache, "get", "finetune", "-n", ns).stdout)
    # With more than one kind in the category (FineTuneTaskSet), kubectl prefixes kind.group/.
    assert name in [r[0].rsplit("/", 1)[-1] for r in listed[1:]]


def test_kubectl_explain_training_comes_from_the_server(cluster: Cluster,
                                                        kubectl_cache: str) -> None:
    out = cluster.kubectl(kubectl_cache, "explain", "ftt.spec.training").stdout
    assert f"GROUP:      {GROUP}" in out and "KIND:       FineTuneTask" in out
    fields = dict(re.findall(r"^  (\w+)\t<(\w+)>", out, flags=re.M))
    # Every field of the operator's TrainingSpec model, with its JSON type.
    aliases = {f.alias or n for n, f in TrainingSpec.model_fields.items()}
    assert set(fields) == aliases
    assert fields["epochs"] == "number" and fields["adapter"] == "string"
    assert fields["lora"] == "Object" and fields["earlyStoppingPatience"] == "integer"
    assert "Epochs; default derived from the data." in out
    assert "Extra Axolotl keys, merged last (advanced)." in out

    adapter = cluster.kubectl(kubectl_cache, "explain", "ftt.spec.training.adapter").stdout
    assert re.search(r"ENUM:\s+lora\s+qlora\s", adapter), adapter
    assert "Adapter kind." in adapter


# ---- the status subresource ------------------------------------------------------------------

def test_spec_and_status_are_written_separately(cluster: Cluster, ns: str) -> None:
    name = _name("subresource")
    code, created = _create(cluster, _doc(name, copy.deepcopy(MINIMAL)))
    assert code == 201, created
    assert created["metadata"]["generation"] == 1

    # Status through the status subresource: generation unchanged, spec unchanged.
    after = _patch(cluster, name, {"status": {"phase": "Training", "runId": "r1"},
                                   "spec": {"suspend": True}}, status=True)
    assert after["status"] == {"phase": "Training", "runId": "r1"}
    assert after["spec"] == created["spec"], "the status subresource changed the spec"
    assert after["metadata"]["generation"] == 1

    # Spec through the main resource: generation bumps, status unchanged.
    after = _patch(cluster, name, {"spec": {"suspend": True}, "status": {"phase": "Failed"}})
    assert after["spec"]["suspend"] is True
    assert after["status"] == {"phase": "Training", "runId": "r1"}, "a spec write changed status"
    assert after["metadata"]["generation"] == 2

    # Metadata only: no bump (the operator's observedGeneration would otherwise lag).
    after = _patch(cluster, name, {"metadata": {"annotations": {"e2e/touch": "1"}}})
    assert after["metadata"]["generation"] == 2

    # More status: still no bump.
    after = _patch(cluster, name, {"status": {"metrics": {"evalLoss": 1.5}}}, status=True)
    assert after["metadata"]["generation"] == 2
    assert after["status"]["metrics"] == {"evalLoss": 1.5}

    # Another spec change: bump, and status is still what the status writes left.
    after = _patch(cluster, name, {"spec": {"training": {"epochs": 2}}})
    assert after["metadata"]["generation"] == 3
    assert after["status"] == {"phase": "Training", "runId": "r1",
                               "metrics": {"evalLoss": 1.5}}


def test_status_is_defaulted_and_validated_by_the_server(cluster: Cluster, ns: str) -> None:
    name = _name("status")
    code, created = _create(cluster, _doc(name, copy.deepcopy(MINIMAL)))
    assert code == 201, created
    after = _patch(cluster, name, {"status": {
        "runId": "r1",
        "data": {"trainSamples": 9, "validationSamples": 1, "digest": "d", "dropped": {}},
        "conditions": [{"type": "DataReady", "status": "True", "reason": "Prepared",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "unknownStatusField": 1}}, status=True)
    assert after["status"]["phase"] == "Pending"
    assert after["status"]["data"]["dropped"] == {"empty": 0, "duplicate": 0, "malformed": 0,
                                                  "tooLong": 0, "leaked": 0}
    assert after["status"]["conditions"][0]["message"] == ""
    assert "unknownStatusField" not in after["status"]

    from kubernetes.client.exceptions import ApiException

    for status, field in [({"phase": "Done"}, "status.phase"),
                          ({"conditions": [{"type": "Ready", "status": "True",
                                            "reason": "not a reason",
                                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
                           "status.conditions[0].reason")]:
        with pytest.raises(ApiException) as err:
            _patch(cluster, name, {"status": status}, status=True)
        assert err.value.status == 422
        assert field in {c.get("field") for c in json.loads(err.value.body)["details"]["causes"]}
    assert _get(cluster, name)["status"]["phase"] == "Pending"
