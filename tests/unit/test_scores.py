"""Task-aware scores (finetune_trainer.scoring, contract TaskScores) against hand computations,
the shape that chooses them, and their compact form in the status and the local table."""

from __future__ import annotations

import json

import pytest

from finetune_contract import ExactMatch, Metrics, TaskScores
from finetune_contract.run import Interval
from finetune_dev.local_status import row_for
from finetune_operator.status import new_run
from finetune_trainer import scoring as S
from finetune_trainer.baselines import answer_shape
from finetune_trainer.evaluate import EvalResult
from finetune_trainer.report import build_metrics


def _chat(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt},
                         {"role": "assistant", "content": answer}]}


# ---- character similarity --------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "distance"), [
    ("kitten", "sitting", 3), ("", "abc", 3), ("abc", "abc", 0), ("flaw", "lawn", 2),
    ("Could you?", "Could you", 1), ("ab", "ba", 2)])
def test_levenshtein_by_hand(a: str, b: str, distance: int) -> None:
    assert S.levenshtein(a, b) == distance == S.levenshtein(b, a)


def test_char_similarity_is_one_minus_edits_over_the_longer_trimmed_string() -> None:
    assert S.char_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert S.char_similarity("  yes ", "yes") == 1.0          # trimmed, as exact match is
    assert S.char_similarity("", "") == 1.0
    assert S.char_similarity("xyz", "") == 0.0
    scores = S.text_scores(["kitten", "abc"], ["sitting", "abd"])
    assert scores.text is not None
    assert scores.headline == scores.text.char_similarity == round(((1 - 3 / 7) + (1 - 1 / 3)) / 2, 4)


# ---- labels: accuracy, macro-F1, per-label table --------------------------------------------


def test_label_scores_by_hand() -> None:
    """refs  a a b b c      a: tp 1, predicted 2 (rec 1, 5): p 1/2, support 2: r 1/2, F1 1/2
       preds a b b zz a     b: tp 1, predicted 2 (rec 2, 3): p 1/2, support 2: r 1/2, F1 1/2
                            c: tp 0, predicted 0, support 1: F1 0
    'zz' is outside the label set: a miss for b, not a row. macro = (1/2 + 1/2 + 0) / 3."""
    s = S.label_scores(["a", "b", "b", "zz", "a"], ["a", "a", "b", "b", "c"], ["a", "b", "c"])
    assert s.labels is not None
    assert s.labels.accuracy == 0.4
    assert s.headline == s.labels.macro_f1 == round((1 / 2 + 1 / 2 + 0) / 3, 4)
    rows = {r.label: r for r in s.labels.per_label}
    assert sorted(rows) == ["a", "b", "c"]
    assert (rows["a"].support, rows["a"].predicted, rows["a"].precision, rows["a"].recall,
            rows["a"].f1) == (2, 2, 0.5, 0.5, 0.5)
    assert (rows["b"].predicted, rows["b"].precision, rows["b"].recall) == (2, 0.5, 0.5)
    assert (rows["c"].support, rows["c"].predicted, rows["c"].f1) == (1, 0, 0.0)
    # One more right 'b' (rec 4): b p 2/3, r 1 -> F1 4/5; accuracy 3/5
    s = S.label_scores(["a", "b", "b", "b", "a"], ["a", "a", "b", "b", "c"], ["a", "b", "c"])
    assert s.labels is not None and s.labels.accuracy == 0.6
    assert s.headline == round((1 / 2 + 4 / 5 + 0) / 3, 4)


def test_macro_f1_exposes_a_majority_label_predictor_on_imbalanced_labels() -> None:
    refs = ["big"] * 8 + ["rare1", "rare2"]
    s = S.label_scores(["big"] * 10, refs, ["big", "rare1", "rare2"])
    assert s.labels is not None and s.labels.accuracy == 0.8
    # big: p 0.8, r 1 -> F1 16/18; the rare labels 0: macro (16/18) / 3
    assert s.headline == round((16 / 18) / 3, 4)


# ---- JSON: validity, per-field accuracy with optional fields --------------------------------


def test_json_scores_by_hand() -> None:
    """rec 1: both fields right; rec 2: 'b' missing where the reference has it (wrong), 'c'
    absent in both (right); rec 3: does not parse -> every field wrong, even 'c' absent in both;
    rec 4: '"7"' is not 7, and an extra 'c' the reference leaves out is wrong."""
    refs = ['{"a": 1, "b": 2}', '{"a": 1, "b": 3}', '{"a": 2}', '{"a": 7}']
    preds = ['{"a": 1, "b": 2}', '{"a": 1}', 'not json', '{"a": "7", "c": 0}']
    s = S.json_scores(preds, refs, ["a", "b", "c"])
    assert s.json_answers is not None
    assert s.json_answers.validity == 0.75
    fields = {f.field: (f.present, f.accuracy) for f in s.json_answers.fields}
    # a: right in recs 1, 2         -> 2/4;  b: right in 1 and 4 (absent in both) -> 2/4
    # c: right in 1, 2 (absent in both), wrong in 3 (unparsed) and 4 (extra)    -> 2/4
    assert fields == {"a": (4, 0.5), "b": (2, 0.5), "c": (0, 0.5)}
    assert s.headline == s.json_answers.field_accuracy == 0.5


def test_leaving_out_a_field_is_not_the_same_as_null() -> None:
    s = S.json_scores(["{}", '{"a": null}', '{"a": null}'], ['{"a": null}', "{}", '{"a": null}'], ["a"])
    assert s.json_answers is not None
    assert [(f.field, f.present, f.accuracy) for f in s.json_answers.fields] == [("a", 2, 0.3333)]


def test_a_json_array_is_not_a_valid_answer() -> None:
    s = S.json_scores(['[1, 2]'], ['{"a": 1}'], ["a"])
    assert s.json_answers is not None and s.json_answers.validity == 0.0 and s.headline == 0.0


# ---- the shape chooses the metric -------------------------------------------------------------


@pytest.mark.parametrize(("answers", "shape", "metric"), [
    (["yes", "no"] * 10, "labels", "macroF1"),
    ([json.dumps({"k": i}) for i in range(20)], "json", "fieldAccuracy"),
    ([f"Could you call {i}, please?" for i in range(20)], "text", "charSimilarity"),
])
def test_the_train_answers_shape_chooses_the_metric(answers: list[str], shape: str,
                                                    metric: str) -> None:
    train = [_chat(f"q{i}", a) for i, a in enumerate(answers)]
    validation = train[:4]
    refs = [r["messages"][-1]["content"] for r in validation]
    scores = S.task_scores(train, validation, ["?"] * 4, refs)
    assert answer_shape(answers) == shape
    assert scores is not None and (scores.shape, scores.metric) == (shape, metric)
    assert scores.tuned.headline == 1.0 and scores.base.headline < 1.0
    kind = {"labels": scores.tuned.labels, "json": scores.tuned.json_answers,
            "text": scores.tuned.text}
    assert [k for k, v in kind.items() if v is not None] == [shape]
    assert set(scores.baselines) == {"labels": {"majorityLabel", "labelPrior"},
                                     "json": {"fieldModes"},
                                     "text": {"copyInput", "commonAnswer"}}[shape]


def test_baselines_get_the_task_aware_score_too() -> None:
    train = [_chat(f"t{i}", "a") for i in range(6)] + [_chat(f"u{i}", "b") for i in range(2)]
    validation = [_chat("v1", "a"), _chat("v2", "b")]
    scores = S.task_scores(train, validation, ["x", "x"], ["a", "b"])
    assert scores is not None
    # majority label 'a' on refs a, b: a F1 2/3, b F1 0 -> macro 1/3
    assert scores.baselines["majorityLabel"] == round((2 / 3) / 2, 4)
    assert S.task_scores(train, [], [], []) is None


# ---- compact form: metrics.json, status, local table -----------------------------------------


def _result(loss: float, correct: list[bool], answers: list[str]) -> EvalResult:
    return EvalResult(loss=loss, tokens=10, records=len(correct),
                      exact_match=sum(correct) / len(correct), correct=correct, answers=answers)


def test_metrics_json_carries_the_scores_and_the_table_and_status_show_them() -> None:
    train = [_chat(f"t{i}", lab) for i, lab in enumerate(["a", "b", "c"] * 10)]
    validation = [_chat(f"v{i}", lab) for i, lab in enumerate(["a", "b", "c"] * 10)]
    refs = [r["messages"][-1]["content"] for r in validation]
    tuned_answers = refs[:27] + ["a", "a", "a"]   # 28 of 30 right (the last 'a' is right)
    base = _result(3.0, [False] * 30, ["?"] * 30)
    tuned = _result(0.1, [a == r for a, r in zip(tuned_answers, refs)], tuned_answers)
    scores = S.task_scores(train, validation, base.answers or [], tuned.answers or [])
    m = build_metrics(run_id="r1", base=base, tuned=tuned, state={}, config={}, budget={},
                      wall_seconds=1.0, adapter_uri="s3://o/ns/t/r1/adapter/", adapter_digest=None,
                      real_train_tokens=0, scores=scores)
    back = Metrics.model_validate_json(m.to_json())
    assert back.exact_match is not None and back.exact_match.scores == scores
    wire = json.loads(m.to_json())["exactMatch"]["scores"]
    assert wire["metric"] == "macroF1" and wire["tuned"]["labels"]["perLabel"][0]["label"] == "a"
    f1 = scores.tuned.headline if scores else None
    assert back.exact_match.compact() == f"EM 0.93 [0.79-0.98] F1 {f1:.2f}"
    row = row_for("t", new_run("r1", 1, "2026-01-01T00:00:00Z"), None,
                  back, 1.0, False)
    assert row.em == back.exact_match.compact()


def test_compact_forms_by_shape_and_without_scores() -> None:
    em = ExactMatch(base=0.0, tuned=0.9, samples=30, tuned_interval=Interval(low=0.74, high=0.97))
    assert em.compact() == "EM 0.90 [0.74-0.97]"  # unchanged without scores
    json_scores = S.json_scores(['{"a": 1}', "x"], ['{"a": 1}', '{"a": 2}'], ["a"])
    ts = TaskScores(shape="json", metric="fieldAccuracy", base=json_scores, tuned=json_scores)
    assert em.model_copy(update={"scores": ts}).compact() == "EM 0.90 [0.74-0.97] fields 0.50 valid 0.50"
    text = S.text_scores(["abcd"], ["abce"])
    ts = TaskScores(shape="text", metric="charSimilarity", base=text, tuned=text)
    assert ts.compact() == "chars 0.75"
