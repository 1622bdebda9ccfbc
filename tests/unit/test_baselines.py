"""Trivial baselines, the Wilson interval and the paired sign test (finetune_trainer.baselines),
checked against hand computations on small splits. No model: predictions are strings."""

from __future__ import annotations

import json

import pytest

from finetune_trainer.baselines import (answer_shape, baselines, compare, sign_test, wilson)


def _chat(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": prompt},
                         {"role": "assistant", "content": answer}]}


def _split(pairs: list[tuple[str, str]]) -> list[dict]:
    return [_chat(p, a) for p, a in pairs]


@pytest.mark.parametrize(("answers", "shape"), [
    (["a", "a", "b", "b", "c", "a"], "labels"),                 # 3 labels, each repeats
    (["a", "b", "c", "d"], "text"),                              # distinct: not a label set
    ([str(i % 21) for i in range(200)], "text"),                 # 21 values: too many labels
    ([str(i % 20) for i in range(200)], "labels"),
    (['{"a": 1}', '{"a": 2}', '{"a": 3}'], "json"),
    (['{"a": 1}', '[1, 2]', '{"a": 3}'], "text"),                # a list is not an object
    (["fix it", "fixed it", "fixing"], "text"),
])
def test_answer_shape(answers: list[str], shape: str) -> None:
    assert answer_shape(answers) == shape


def test_label_baselines_by_hand() -> None:
    train = _split([("q1", "a"), ("q2", "a"), ("q3", "a"), ("q4", "b"), ("q5", "b"), ("q6", "c")])
    validation = _split([("v1", "a"), ("v2", " b "), ("v3", "c"), ("v4", "a")])
    shape, scores, correct = baselines(train, validation)
    assert shape == "labels"
    by = {b.name: b for b in scores}
    assert set(by) == {"majorityLabel", "labelPrior"}
    # majority "a": right on v1 and v4
    assert (by["majorityLabel"].exact_match, by["majorityLabel"].correct) == (0.5, 2)
    assert correct["majorityLabel"] == [True, False, False, True]
    assert by["majorityLabel"].label == "the majority label"
    # prior a 3/6, b 2/6, c 1/6: expected (3/6 + 2/6 + 1/6 + 3/6) / 4 = 0.375
    assert by["labelPrior"].expected_exact_match == pytest.approx(0.375)
    assert by["labelPrior"].correct == sum(correct["labelPrior"])  # one seeded sample
    assert baselines(train, validation) == (shape, scores, correct)  # and always the same one


def test_text_baselines_by_hand() -> None:
    train = _split([("teh cat", "the cat"), ("a dog", "a dog"), ("hte sun", "the sun"),
                    ("moon", "the moon"), ("sky", "the moon")])
    validation = _split([("a bird", "a bird"), ("x", "the moon"), ("y", "the sky")])
    shape, scores, correct = baselines(train, validation)
    assert shape == "text"
    by = {b.name: b for b in scores}
    assert correct == {"copyInput": [True, False, False], "commonAnswer": [False, True, False]}
    assert by["copyInput"].exact_match == pytest.approx(1 / 3)
    assert by["commonAnswer"].exact_match == pytest.approx(1 / 3)


@pytest.mark.parametrize("separators", [(", ", ": "), (",", ":")])
def test_json_baselines_take_each_field_mode_in_the_train_format(
        separators: tuple[str, str]) -> None:
    def dump(obj: dict) -> str:
        return json.dumps(obj, separators=separators)

    rows = [{"name": "Ann", "age": 3}, {"name": "Bob", "age": 3}, {"name": "Ann", "age": 4},
            {"name": "Cy", "age": 5}]
    train = _split([(f"p{i}", dump(r)) for i, r in enumerate(rows)])
    # The modes: name Ann (2 of 4), age 3 (2 of 4), keys in the train order and separators.
    validation = _split([("v1", dump({"name": "Ann", "age": 3})),
                         ("v2", dump({"name": "Ann", "age": 4})),
                         ("v3", dump({"age": 3, "name": "Ann"}))])  # other key order: a miss
    shape, scores, correct = baselines(train, validation)
    assert shape == "json" and [b.name for b in scores] == ["fieldModes"]
    assert correct["fieldModes"] == [True, False, False]


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (27, 30, 0.7438, 0.9654),   # the example: EM 0.90 [0.74-0.97]
    (9, 30, 0.1667, 0.4788),
    (0, 30, 0.0, 0.1135),
    (30, 30, 0.8865, 1.0),
    (1, 1, 0.2065, 1.0),
])
def test_wilson_interval(k: int, n: int, low: float, high: float) -> None:
    got = wilson(k, n)
    assert got is not None
    assert (got.low, got.high) == (pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4))
    assert str(wilson(27, 30)) == "[0.74-0.97]"
    assert wilson(0, 0) is None


@pytest.mark.parametrize(("tuned_only", "reference_only", "p"), [
    (0, 0, 1.0),
    (5, 0, 1 / 32),              # the fewest discordant records that can be significant
    (4, 0, 1 / 16),
    (8, 2, 56 / 1024),           # P(X >= 8), X ~ Bin(10, 1/2) = (45 + 10 + 1) / 1024
    (9, 1, 11 / 1024),
    (3, 3, 42 / 64),
    (0, 6, 1.0),
])
def test_sign_test_by_hand(tuned_only: int, reference_only: int, p: float) -> None:
    assert sign_test(tuned_only, reference_only) == pytest.approx(p)


def test_compare_reports_the_reference_beaten_least_convincingly() -> None:
    tuned = [True] * 12 + [False] * 8
    base = [False] * 20                                  # beaten 12-0: p = 1/4096
    majority = [True] * 6 + [False] * 6 + [True] * 6 + [False] * 2  # tuned 6 vs it 6
    c = compare(tuned, {"base": base, "majorityLabel": majority})
    assert c is not None
    assert (c.against, c.tuned_only, c.reference_only) == ("majorityLabel", 6, 6)
    assert not c.significant and c.label == "the majority label"
    c = compare(tuned, {"base": base})
    assert c is not None and c.against == "base" and c.significant
    assert c.p_value == pytest.approx(1 / 4096, abs=1e-6)
    # A tie in p-value and score names the trivial baseline, not the base model.
    c = compare([False] * 4, {"base": [False] * 4, "commonAnswer": [False] * 4})
    assert c is not None and c.against == "commonAnswer"
    with pytest.raises(ValueError):
        compare([True], {"base": [True, False]})
    assert compare([], {"base": []}) is None
