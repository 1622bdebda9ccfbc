"""Trivial baselines, the Wilson interval and the paired test behind the noGain verdict.

Pure functions, no model: "better than the base model" is almost free (the base does not know the
answer format), so a tuned model must also beat what a predictor built from the train split
alone scores on the same validation records, under the evaluator's own comparison
(`same_answer`). Which baselines fit depends on the shape of the train answers:

    labels  few distinct answers that repeat  -> the majority label, a sample of the label prior
    json    every answer is a JSON object     -> the most common value of each field
    text    anything else (rewrites, prose)   -> copying the input, the most common answer

The verdict is a paired test over the same records (docs/trainer.md, "Verdicts"): an exact
one-sided sign test on the records where exactly one of the two predictors is right (McNemar's
exact test), at alpha 0.05, against every reference; the one it beats least convincingly is
reported.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from typing import Any, Literal

from finetune_contract.run import Baseline, Comparison, Interval

Shape = Literal["labels", "json", "text"]
MAX_LABELS = 20  # a label set: at most this many distinct answers ...
LABEL_REPEAT = 2  # ... each seen this many times on average in the train split
ALPHA = 0.05
Z95 = 1.959963984540054
PRIOR_SEED = 0
LABELS = {"base": "the base model", "majorityLabel": "the majority label",
          "labelPrior": "the label prior", "copyInput": "copying the input",
          "commonAnswer": "the most common answer", "fieldModes": "the most common field values"}


def same_answer(generated: str, reference: str) -> bool:
    """The evaluator's exact match: equal after trimming whitespace."""
    return generated.strip() == reference.strip()


def prompt_and_answer(record: dict[str, Any]) -> tuple[str, str]:
    """A prepared chat record's input (its last non-assistant message) and answer."""
    msgs = record["messages"]
    prompt = next((m["content"] for m in reversed(msgs[:-1]) if m["role"] != "assistant"), "")
    return prompt, msgs[-1]["content"]


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def answer_shape(answers: list[str]) -> Shape:
    counts = Counter(a.strip() for a in answers)
    if answers and len(counts) <= MAX_LABELS and len(answers) >= LABEL_REPEAT * len(counts):
        return "labels"
    if answers and all(_json_object(a) is not None for a in answers):
        return "json"
    return "text"


def _mode(values: list[str]) -> str:
    """The most common value; ties go to the one seen first (deterministic)."""
    counts = Counter(values)
    return max(counts, key=lambda v: (counts[v], -values.index(v)))


def _field_modes(answers: list[str]) -> str:
    """One JSON answer made of each field's most common value, in the most common key order
    and the separators that reproduce most train answers verbatim."""
    objects = [_json_object(a) for a in answers]
    keys = json.loads(_mode([json.dumps(list(o)) for o in objects if o is not None]))
    value = {k: json.loads(_mode([json.dumps(o[k], sort_keys=True) for o in objects
                                  if o is not None and k in o])) for k in keys}
    styles = [(", ", ": "), (",", ":")]
    hits = [sum(json.dumps(o, ensure_ascii=False, separators=s) == a.strip()
                for o, a in zip(objects, answers)) for s in styles]
    return json.dumps(value, ensure_ascii=False, separators=styles[hits.index(max(hits))])


def _scored(name: str, predictions: list[str], answers: list[str], **extra: Any) -> Baseline:
    correct = sum(same_answer(p, a) for p, a in zip(predictions, answers))
    return Baseline(name=name, label=LABELS[name], exact_match=correct / len(answers),
                    correct=correct, **extra)


def baseline_predictions(train: list[dict[str, Any]], validation: list[dict[str, Any]]
                         ) -> tuple[Shape, dict[str, list[str]], dict[str, dict[str, Any]]]:
    """The shape of the train answers, each fitting baseline's answer to every validation
    record (by name), and extra fields of a baseline's score. Chat records only."""
    train_answers = [prompt_and_answer(r)[1] for r in train]
    pairs = [prompt_and_answer(r) for r in validation]
    prompts, answers = [p for p, _ in pairs], [a for _, a in pairs]
    shape = answer_shape(train_answers)
    predicted: dict[str, list[str]] = {}
    extra: dict[str, dict[str, Any]] = {}
    if shape == "labels":
        labels = [a.strip() for a in train_answers]
        predicted["majorityLabel"] = [_mode(labels)] * len(answers)
        prior = Counter(labels)
        names = sorted(prior)
        rng = random.Random(PRIOR_SEED)
        predicted["labelPrior"] = rng.choices(names, weights=[prior[n] for n in names],
                                              k=len(answers))
        expected = sum(prior[a.strip()] for a in answers) / len(labels) / max(len(answers), 1)
        extra["labelPrior"] = {"expected_exact_match": round(expected, 6)}
    elif shape == "json":
        predicted["fieldModes"] = [_field_modes(train_answers)] * len(answers)
    else:
        predicted["copyInput"] = prompts
        predicted["commonAnswer"] = [_mode([a.strip() for a in train_answers])] * len(answers)
    return shape, predicted, extra


def baselines(train: list[dict[str, Any]], validation: list[dict[str, Any]]
              ) -> tuple[Shape, list[Baseline], dict[str, list[bool]]]:
    """The shape of the train answers, each fitting baseline's score on `validation`, and its
    per-record correctness (for the paired test). Chat records only."""
    shape, predicted, extra = baseline_predictions(train, validation)
    answers = [prompt_and_answer(r)[1] for r in validation]
    if not answers:
        return shape, [], {}
    scored = [_scored(n, p, answers, **extra.get(n, {})) for n, p in predicted.items()]
    correct = {n: [same_answer(x, a) for x, a in zip(p, answers)] for n, p in predicted.items()}
    return shape, scored, correct


def wilson(successes: int, n: int, z: float = Z95) -> Interval | None:
    """The Wilson score interval of successes/n (sound at 0, at n and for small n)."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(low=round(max(0.0, center - half), 4), high=round(min(1.0, center + half), 4))


def sign_test(tuned_only: int, reference_only: int) -> float:
    """One-sided exact p-value that the tuned model is no better: P(X >= tuned_only) for X ~
    Binomial(tuned_only + reference_only, 1/2). 1.0 when the two never disagree."""
    n = tuned_only + reference_only
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(tuned_only, n + 1)) / 2 ** n


def compare(tuned: list[bool], references: dict[str, list[bool]], alpha: float = ALPHA
            ) -> Comparison | None:
    """The tuned model's per-record correctness against each reference's on the same records;
    the comparison it wins least convincingly (highest p-value, then the highest reference
    score; a trivial baseline before the base model on a tie). None without records."""
    if not tuned or not references:
        return None
    out = []
    for name, ref in references.items():
        if len(ref) != len(tuned):
            raise ValueError(f"{name}: {len(ref)} records, the tuned model has {len(tuned)}")
        t_only = sum(t and not r for t, r in zip(tuned, ref))
        r_only = sum(r and not t for t, r in zip(tuned, ref))
        p = sign_test(t_only, r_only)
        out.append(Comparison(
            against=name, label=LABELS.get(name, name), reference=sum(ref) / len(ref),
            tuned=sum(tuned) / len(tuned), samples=len(tuned), tuned_only=t_only,
            reference_only=r_only, p_value=round(p, 6), alpha=alpha, significant=p < alpha))
    return max(out, key=lambda c: (c.p_value, c.reference, c.against != "base"))

