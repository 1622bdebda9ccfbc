"""The four new bench families and the random-label check (finetune_dev.task_families): sizes
after the real prepare step, determinism, the shape each answer set gets, label imbalance, and
answers that follow from their prompts."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from finetune_contract import Manifest, RunLayout
from finetune_contract.storage import Storage
from finetune_dev import demo_tasks
from finetune_dev import task_families as F
from finetune_operator.prepare import prepare_run
from finetune_operator.spec import FineTuneTaskSpec
from finetune_trainer.baselines import answer_shape

NEW = sorted(F.NEW_FAMILIES)


def _answers(task: demo_tasks.DemoTask) -> list[str]:
    return [r.get("output") or r.get("completion") or r["messages"][-1]["content"]
            for r in task.records]


def _prompts(task: demo_tasks.DemoTask) -> list[str]:
    return [r.get("input") or r.get("prompt") or r["messages"][-2]["content"] for r in task.records]


@pytest.mark.parametrize("name", NEW + list(F.CHECKS))
def test_each_family_prepares_to_120_train_and_30_validation(name: str, tmp_path: Path) -> None:
    task = F.generate(name)
    data = tmp_path / "data"
    data.mkdir()
    (data / task.filename).write_bytes(task.data_bytes())
    doc = demo_tasks.task_document(task, data_uri=str(data) + "/", output_uri=str(tmp_path / "out"),
                                   base_model="x")
    spec = FineTuneTaskSpec.model_validate(doc["spec"], context={"allow_local_paths": True})
    layout = RunLayout(root=str(tmp_path / "out"), namespace="ns", task=name, run_id="r0")
    prepare_run(spec, layout, Storage())
    manifest = Manifest.model_validate_json(Path(layout.manifest).read_text())
    assert (manifest.train_samples, manifest.validation_samples) == (120, 30)
    assert manifest.dropped.total() == 0


@pytest.mark.parametrize("name", NEW + list(F.CHECKS))
def test_families_are_deterministic_and_distinct_from_one_another(name: str) -> None:
    assert F.generate(name).data_bytes() == F.generate(name).data_bytes()
    assert len(set(_prompts(F.generate(name)))) == 150
    others = [F.generate(n) for n in F.ALL_GENERATORS if n != name]
    assert not set(_prompts(F.generate(name))) & {p for t in others for p in _prompts(t)}


@pytest.mark.parametrize(("name", "shape"), [("contact-extraction", "json"),
                                             ("product-routing", "labels"),
                                             ("unit-format", "text"),
                                             ("bilingual-polite", "text"),
                                             ("random-labels", "labels")])
def test_each_family_gets_the_answer_shape_it_was_built_for(name: str, shape: str) -> None:
    assert answer_shape(_answers(F.generate(name))) == shape


def test_product_routing_has_12_imbalanced_labels() -> None:
    counts = Counter(_answers(F.product_routing()))
    assert len(counts) == 12
    assert sorted(counts.values(), reverse=True) == list(F.ROUTING_COUNTS)
    assert max(counts.values()) >= 6 * min(counts.values())  # 34 vs 5


def test_contact_extraction_leaves_out_the_fields_a_text_does_not_state() -> None:
    answers = [json.loads(a) for a in _answers(F.contact_extraction())]
    for key in ("role", "city", "phone"):
        present = sum(key in a for a in answers)
        assert 40 <= present <= 110, (key, present)  # optional: neither always nor never there
    assert all(list(a) == [k for k in F.CONTACT_KEYS if k in a] for a in answers)
    for prompt, answer in zip(_prompts(F.contact_extraction()), answers):
        assert all(str(v) in prompt for v in answer.values())


def test_unit_format_writes_one_canonical_form() -> None:
    assert F.format_number(1234567.5, 2) == "1,234,567.5"
    assert F.format_number(12.0, 1) == "12" and F.format_number(0.0, 2) == "0"
    assert F.format_number(1000, 0) == "1,000"
    task = F.unit_format()
    symbols = dict(F._UNITS)
    for prompt, answer in zip(_prompts(task), _answers(task)):
        found = re.search(r"(\d[\d ]*(?:\.\d+)?) (" + "|".join(symbols) + ")", prompt)
        assert found, prompt
        value, unit = float(found.group(1).replace(" ", "")), found.group(2)
        number = answer[: -len(symbols[unit])].strip()
        assert answer.endswith(symbols[unit]) and float(number.replace(",", "")) == value
        assert number == F.format_number(value, 2) or number == F.format_number(value, 0)


def test_bilingual_polite_answers_in_the_language_of_the_order() -> None:
    task = F.bilingual_polite()
    langs = Counter()
    for prompt, answer in zip(_prompts(task), _answers(task)):
        french = answer.startswith("Pourriez-vous")
        langs[french] += 1
        assert french == any(fr.lower() in prompt.lower() for _, _, fr, _ in F._ACTIONS)
    assert langs[True] >= 50 and langs[False] >= 50  # both languages, about half each


def test_random_labels_do_not_follow_the_text() -> None:
    """No feature of the text predicts the label: the most common label per value of the topic,
    the name, the month or the length, learnt on 120 records, is near chance on the other 30."""
    task = F.random_labels()
    prompts, labels = _prompts(task), _answers(task)
    features = {"topic": lambda p: p.split(" about the ")[1].split(",")[0],
                "name": lambda p: p.split()[2], "month": lambda p: p.split(", ")[-1].split()[0],
                "length": len}
    for name, feature in features.items():
        seen: dict[object, Counter] = {}
        for p, lab in zip(prompts[:120], labels[:120]):
            seen.setdefault(feature(p), Counter())[lab] += 1
        majority = Counter(labels[:120]).most_common(1)[0][0]
        right = sum((seen[feature(p)].most_common(1)[0][0] if feature(p) in seen else majority) == lab
                    for p, lab in zip(prompts[120:], labels[120:]))
        assert right / 30 < 0.6, (name, right)
    assert set(labels) == set(F.RANDOM_LABELS)
