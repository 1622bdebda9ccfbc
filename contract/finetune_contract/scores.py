"""Task-aware scores beside exact match (metrics.json `exactMatch.scores`), by answer shape.

Why: exact match alone hides how a model misses. A JSON answer with one wrong field and one
that does not parse both score 0; so do a rewrite with one word changed and gibberish; and on
imbalanced labels a model that always answers the majority label can look fine on accuracy.
The train answers' shape (the trainer's `baselines.answer_shape`) picks what is measured:

    labels  accuracy and macro-F1 over the label set, with a per-label table
    json    the share of answers that parse as a JSON object, and each field's accuracy
    text    the mean character similarity (1 - Levenshtein distance / the longer length)

Each shape has one headline number (macro-F1, mean field accuracy, character similarity),
recorded for the base model, the tuned model and every trivial baseline, and shown compactly
beside exact match: `EM 0.90 [0.74-0.97] F1 0.88`. Models only; the trainer computes them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

Metric = Literal["macroF1", "fieldAccuracy", "charSimilarity"]
METRIC_FOR_SHAPE: dict[str, Metric] = {"labels": "macroF1", "json": "fieldAccuracy",
                                       "text": "charSimilarity"}
ABBREVIATION: dict[str, str] = {"macroF1": "F1", "fieldAccuracy": "fields",
                                "charSimilarity": "chars"}


class _Model(BaseModel):
    # The same wire style as run.py's models (camelCase, strict); its own base so run.py can
    # import this module without a cycle.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class LabelRow(_Model):
    """One label of a label task: how often it was the reference and the prediction."""

    label: str
    support: int = Field(description="Validation references with this label.")
    predicted: int = Field(description="Predictions of this label.")
    precision: float
    recall: float
    f1: float


class LabelScores(_Model):
    accuracy: float
    macro_f1: float = Field(description="Mean F1 over the labels that were a reference or a "
                                        "prediction; predictions outside the label set count "
                                        "as misses, not as labels.")
    per_label: list[LabelRow] = Field(default_factory=list)


class FieldScore(_Model):
    """One field of a JSON task over every validation record."""

    field: str
    present: int = Field(description="Validation references that have this field.")
    accuracy: float = Field(description="Share of records where the prediction parses and has "
                                        "the reference's value, or omits a field the reference "
                                        "omits.")


class JsonScores(_Model):
    validity: float = Field(description="Share of predictions that parse as a JSON object.")
    field_accuracy: float = Field(description="Mean of the fields' accuracies.")
    fields: list[FieldScore] = Field(default_factory=list)


class TextScores(_Model):
    char_similarity: float = Field(description="Mean over records of 1 - Levenshtein(answer, "
                                               "reference) / max(len), after trimming.")


class ShapeScores(_Model):
    """One predictor's task-aware scores on the validation records (one of the three is set)."""

    headline: float = Field(description="The shape's one number: macro-F1, mean field accuracy "
                                        "or character similarity.")
    labels: LabelScores | None = None
    json_answers: JsonScores | None = None
    text: TextScores | None = None


class TaskScores(_Model):
    """Base and tuned on the same validation records, and every trivial baseline's headline."""

    shape: Literal["labels", "json", "text"]
    metric: Metric
    base: ShapeScores
    tuned: ShapeScores
    baselines: dict[str, float] = Field(
        default_factory=dict, description="Each trivial baseline's headline metric, by name.")

    def compact(self) -> str:
        """'F1 0.88', 'fields 0.93 valid 1.00' or 'chars 0.97': the tuned model's headline."""
        text = f"{ABBREVIATION[self.metric]} {self.tuned.headline:.2f}"
        if self.tuned.json_answers is not None:
            text += f" valid {self.tuned.json_answers.validity:.2f}"
        return text
