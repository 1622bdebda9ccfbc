"""Task-aware scores (contract `TaskScores`) from greedy answers, chosen by the answers' shape.

Pure functions, no model. The shape comes from the train answers (baselines.answer_shape, the
same choice that picks the baselines), so base, tuned and every baseline are scored the same way
on the same validation records. Answers are compared trimmed, as exact match compares them.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from finetune_contract.scores import (METRIC_FOR_SHAPE, FieldScore, JsonScores, LabelRow,
                                      LabelScores, ShapeScores, TaskScores, TextScores)

from . import baselines as B

DIGITS = 4


def _r(x: float) -> float:
    return round(x, DIGITS)


def levenshtein(a: str, b: str) -> int:
    """Edits (insert, delete, substitute one character) that turn a into b."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def char_similarity(answer: str, reference: str) -> float:
    """1 - Levenshtein / the longer length, on trimmed strings; 1.0 for two empty ones."""
    a, b = answer.strip(), reference.strip()
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else 1.0 - levenshtein(a, b) / longest


def text_scores(answers: list[str], references: list[str]) -> ShapeScores:
    sims = [char_similarity(a, r) for a, r in zip(answers, references)]
    mean = _r(sum(sims) / len(sims)) if sims else 0.0
    return ShapeScores(headline=mean, text=TextScores(char_similarity=mean))


def label_scores(answers: list[str], references: list[str], label_set: list[str]) -> ShapeScores:
    """Accuracy and macro-F1. Rows: every label that was a reference or a prediction; an answer
    outside the label set is a miss for its reference's label, not a label of its own (a base
    model's free text would otherwise add a zero row per distinct sentence)."""
    preds = [a.strip() for a in answers]
    refs = [r.strip() for r in references]
    known = set(label_set) | set(refs)
    support, predicted = Counter(refs), Counter(p for p in preds if p in known)
    hits = Counter(r for p, r in zip(preds, refs) if p == r)
    rows, f1s = [], []
    for label in sorted(set(support) | set(predicted)):
        tp = hits[label]
        precision = tp / predicted[label] if predicted[label] else 0.0
        recall = tp / support[label] if support[label] else 0.0
        f1 = 2 * tp / (support[label] + predicted[label])
        f1s.append(f1)
        rows.append(LabelRow(label=label, support=support[label], predicted=predicted[label],
                             precision=_r(precision), recall=_r(recall), f1=_r(f1)))
    macro = _r(sum(f1s) / len(f1s)) if f1s else 0.0
    accuracy = _r(sum(hits.values()) / len(refs)) if refs else 0.0
    return ShapeScores(headline=macro, labels=LabelScores(accuracy=accuracy, macro_f1=macro,
                                                          per_label=rows))


def _object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def json_scores(answers: list[str], references: list[str], fields: list[str]) -> ShapeScores:
    """Validity and per-field accuracy. A field is right when the answer parses and holds the
    reference's value (JSON equality: 12 is not "12"), or both leave it out (optional fields);
    an answer that does not parse gets every field wrong."""
    preds = [_object(a.strip()) for a in answers]
    refs = [_object(r.strip()) or {} for r in references]
    names = list(dict.fromkeys(fields + [k for r in refs for k in r]))
    out = []
    for name in names:
        right = sum(p is not None and (name in p) == (name in r) and p.get(name) == r.get(name)
                    for p, r in zip(preds, refs))
        out.append(FieldScore(field=name, present=sum(name in r for r in refs),
                              accuracy=_r(right / len(refs)) if refs else 0.0))
    mean = _r(sum(f.accuracy for f in out) / len(out)) if out else 0.0
    validity = _r(sum(p is not None for p in preds) / len(preds)) if preds else 0.0
    return ShapeScores(headline=mean, json_answers=JsonScores(validity=validity,
                                                              field_accuracy=mean, fields=out))


def shape_scores(shape: B.Shape, answers: list[str], references: list[str],
                 train_answers: list[str]) -> ShapeScores:
    """The scores `shape` calls for; the label set and field names come from the train split."""
    if shape == "labels":
        return label_scores(answers, references, sorted({a.strip() for a in train_answers}))
    if shape == "json":
        keys = [k for a in train_answers for k in (_object(a.strip()) or {})]
        return json_scores(answers, references, list(dict.fromkeys(keys)))
    return text_scores(answers, references)


def task_scores(train: list[dict[str, Any]], validation: list[dict[str, Any]],
                base_answers: list[str], tuned_answers: list[str]) -> TaskScores | None:
    """Base, tuned and every trivial baseline scored for the train answers' shape (chat records;
    the answers are the evaluator's greedy decodes, in validation order). None without records."""
    if not validation or len(base_answers) != len(validation) or len(tuned_answers) != len(validation):
        return None
    train_answers = [B.prompt_and_answer(r)[1] for r in train]
    references = [B.prompt_and_answer(r)[1] for r in validation]
    shape, predicted, _ = B.baseline_predictions(train, validation)

    def score(answers: list[str]) -> ShapeScores:
        return shape_scores(shape, answers, references, train_answers)

    return TaskScores(shape=shape, metric=METRIC_FOR_SHAPE[shape], base=score(base_answers),
                      tuned=score(tuned_answers),
                      baselines={name: score(p).headline for name, p in predicted.items()})
