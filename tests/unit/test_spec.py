"""The FineTuneTask spec: defaults, bounds, one-line errors, deterministic run ids."""

from __future__ import annotations

import pytest

from finetune_operator.spec import SpecError, parse_spec, parse_task_document

BASE = {"baseModel": {"name": "Qwen/Qwen2.5-0.5B-Instruct"}, "dataset": {"uri": "s3://tasks/a/"},
        "output": {"uri": "s3://adapters/"}}


def with_(path: str, value: object) -> dict:
    body = {k: dict(v) for k, v in BASE.items()}
    section, _, key = path.partition(".")
    body.setdefault(section, {})[key] = value
    return body


def test_defaults_are_small_data_safe() -> None:
    spec = parse_spec(BASE)
    assert spec.dataset.validation_fraction == 0.1
    assert spec.dataset.min_samples == 100
    assert spec.training.adapter == "lora"
    assert (spec.training.lora.r, spec.training.lora.alpha) == (16, 32)
    assert spec.training.train_on_inputs is False
    assert spec.resources.gpu_resource_name == "nvidia.com/gpu"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("dataset.validationFraction", 0.7, "dataset.validationFraction"),
        ("dataset.validationFraction", 0, "dataset.validationFraction"),
        ("dataset.format", "xml", "dataset.format"),
        ("dataset.uri", "/local/path", "must be an s3://bucket/key URI"),
        ("dataset.uri", "http://x/y", "must be an s3://bucket/key URI"),
        ("output.uri", "gs://b/", "output.uri"),
        ("dataset.unknownKey", 1, "dataset.unknownKey"),
        ("training.adapter", "full", "training.adapter"),
    ],
)
def test_bad_spec_gives_one_line_naming_the_field(path: str, value: object, message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(with_(path, value))
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_local_runs_accept_paths_but_clusters_do_not() -> None:
    body = with_("dataset.uri", "./data/task.jsonl")
    body["output"] = {"uri": "./out"}
    assert parse_spec(body, local=True).dataset.uri == "./data/task.jsonl"
    with pytest.raises(SpecError):
        parse_spec(body)


def test_run_id_is_stable_and_changes_with_the_spec_but_not_suspend() -> None:
    a = parse_spec(BASE)
    assert a.run_id() == parse_spec(BASE).run_id()
    assert a.run_id() != parse_spec(with_("dataset.seed", 7)).run_id()
    suspended = dict(BASE, suspend=True)
    assert parse_spec(suspended).run_id() == a.run_id()
    assert a.run_id().startswith("r") and len(a.run_id()) == 9


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([1, 2], "not a mapping"),
        ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}, "kind='ConfigMap'"),
        ({"apiVersion": "finetune.v-sekai.org/v1alpha1", "kind": "FineTuneTask", "spec": BASE},
         "metadata.name"),
        ({"apiVersion": "finetune.v-sekai.org/v1alpha1", "kind": "FineTuneTask",
          "metadata": {"name": "x"}}, "spec is missing"),
    ],
)
def test_a_document_that_is_not_a_finetunetask_is_refused(doc: object, message: str) -> None:
    with pytest.raises(SpecError, match="not a FineTuneTask") as err:
        parse_task_document(doc)
    assert message in str(err.value)


def test_search_on_several_nodes_is_refused_in_one_line() -> None:
    body = {**BASE, "training": {"search": {"learningRates": [1e-4, 2e-4]}},
            "resources": {"nodes": 2}}
    with pytest.raises(SpecError, match="training.search runs on one node") as err:
        parse_spec(body)
    assert "\n" not in str(err.value)
    assert parse_spec({**body, "resources": {"nodes": 1}}).training.search is not None
