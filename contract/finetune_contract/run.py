"""The run contract shared by the operator and the trainer: S3 layout, manifest, metrics.

No heavy imports here (pydantic only): the trainer image imports this module as is. Every run
lives under `<output>/<namespace>/<task>/<run>/`:

    data/train.jsonl        prepared train split (one JSON record per line)
    data/validation.jsonl   prepared validation split
    data/manifest.json      Manifest: counts, drops by reason, sha256 of each file, sources
    config/axolotl.yaml     the rendered Axolotl config (also in the Job's ConfigMap)
    adapter/                the best LoRA adapter (adapter_config.json, adapter_model.safetensors)
    search/selection.jsonl  with spec.training.search: the slice of the train split that chose
                            the winner (never the validation split)
    progress.json           RunProgress: the live figures of a running trainer (stage, step,
                            eval curve, ETA); rewritten as it goes, read by the operator
    checkpoints/step-N/     resumable training state at evaluation N (see the trainer)
    metrics.json            Metrics: base vs tuned on the validation split, history, verdicts
    COMPLETE                marker written last: a run without it is not finished

Prepared records are `{"messages": [{"role": ..., "content": ...}, ...]}` (the last message is
the assistant answer, trained on; the rest is the prompt, masked) or `{"text": ...}` for the
completion format (trained on whole).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from .scores import TaskScores

SCHEMA_VERSION = 1
# Keys of ours in the rendered Axolotl config (the trainer strips every `finetune_` key before
# Axolotl sees the config): the derived budget, copied into metrics.json `budget`, and the
# spec.training.search plan.
CONFIG_KEY_PREFIX = "finetune_"
BUDGET_KEY = CONFIG_KEY_PREFIX + "budget"
SEARCH_KEY = CONFIG_KEY_PREFIX + "search"
TERMINATION_LOG_LIMIT = 4096  # bytes Kubernetes keeps of /dev/termination-log
DROP_REASONS = ("empty", "duplicate", "malformed", "tooLong", "leaked")


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2) + "\n"


class RunLayout(_Model):
    """Where one run's artifacts live. `root` is an s3:// URI or a local directory. Every path
    of a run comes from here, on both sides (the trainer builds its layout from `--run-uri`)."""

    root: str
    namespace: str
    task: str
    run_id: str

    @classmethod
    def from_prefix(cls, prefix: str) -> RunLayout:
        """The layout whose `prefix` is `prefix` (`<root>/<namespace>/<task>/<run>/`)."""
        parts = prefix.rstrip("/").rsplit("/", 3)
        layout = None
        if len(parts) == 4 and all(parts):
            layout = cls(root=parts[0], namespace=parts[1], task=parts[2], run_id=parts[3])
        if layout is None or layout.prefix != prefix.rstrip("/") + "/":
            raise ValueError(f"not a run prefix <root>/<namespace>/<task>/<run>/: {prefix}")
        return layout

    @property
    def prefix(self) -> str:
        return f"{self.root.rstrip('/')}/{self.namespace}/{self.task}/{self.run_id}/"

    def _at(self, rel: str) -> str:
        return self.prefix + rel

    @property
    def train(self) -> str:
        return self._at("data/train.jsonl")

    @property
    def validation(self) -> str:
        return self._at("data/validation.jsonl")

    @property
    def manifest(self) -> str:
        return self._at("data/manifest.json")

    @property
    def config(self) -> str:
        return self._at("config/axolotl.yaml")

    @property
    def adapter(self) -> str:
        return self._at("adapter/")

    @property
    def selection(self) -> str:
        return self._at("search/selection.jsonl")

    @property
    def metrics(self) -> str:
        return self._at("metrics.json")

    @property
    def progress(self) -> str:
        return self._at("progress.json")

    @property
    def checkpoints(self) -> str:
        return self._at("checkpoints/")

    def checkpoint(self, step: int) -> str:
        """The folder of the checkpoint taken at global step `step`."""
        return self._at(f"checkpoints/step-{step}/")

    @property
    def complete_marker(self) -> str:
        return self._at("COMPLETE")


# ---- manifest.json ------------------------------------------------------------------------


class SourceObject(_Model):
    uri: str
    etag: str | None = None
    size: int
    format: str
    records: int = 0


class FileDigest(_Model):
    uri: str
    sha256: str
    records: int
    bytes: int


class DropCounts(_Model):
    empty: int = 0
    duplicate: int = 0
    malformed: int = 0
    too_long: int = 0
    leaked: int = 0

    def total(self) -> int:
        return self.empty + self.duplicate + self.malformed + self.too_long + self.leaked


class LengthStats(_Model):
    """Character lengths of kept records; the trainer's budget and sequence_len use them."""

    prompt_p50: int = 0
    prompt_p95: int = 0
    output_p50: int = 0
    output_p95: int = 0
    total_p50: int = 0
    total_p95: int = 0
    total_max: int = 0
    output_chars_train: int = 0


class Manifest(_Model):
    schema_version: int = SCHEMA_VERSION
    run_id: str
    created_at: str
    seed: int
    validation_fraction: float
    format: str
    record_shape: Literal["messages", "text"]
    sources: list[SourceObject]
    records_read: int
    records_kept: int
    train_samples: int
    validation_samples: int
    dropped: DropCounts = Field(default_factory=DropCounts)
    drop_refs: dict[str, list[str]] = Field(
        default_factory=dict, description="Up to 5 `object:line` references per drop reason."
    )
    stratify_by: str | None = None
    lengths: LengthStats = Field(default_factory=LengthStats)
    train: FileDigest
    validation: FileDigest

    @property
    def digest(self) -> str:
        """One digest for the split: changes when either file changes."""
        import hashlib

        return hashlib.sha256((self.train.sha256 + self.validation.sha256).encode()).hexdigest()


# ---- metrics.json -------------------------------------------------------------------------


class EvalPoint(_Model):
    step: int
    epoch: float | None = None
    eval_loss: float


class TrainPoint(_Model):
    step: int
    epoch: float | None = None
    loss: float


class RunProgress(_Model):
    """progress.json: what a running trainer last reported. The trainer rewrites it at most every
    few seconds and at each evaluation; the operator copies a summary into status.progress and
    the local runner draws the same figures. Absent fields are not known yet."""

    stage: str = Field(description="fetch, evaluate-base, search, train, evaluate-tuned, upload.")
    step: int | None = None
    max_steps: int | None = None
    epoch: float | None = None
    loss: float | None = Field(None, description="The training loss last logged.")
    eval_history: list[EvalPoint] = Field(default_factory=list)
    tokens_per_second: float | None = None
    eta_seconds: float | None = Field(None, description="Training time left at the current rate.")
    resumed_from_step: int | None = Field(None, description="The checkpoint this pod started from.")
    updated: str = Field(description="RFC 3339 UTC time of this report.")

    @property
    def percent(self) -> float | None:
        """Share of the training steps done, 0-100; None before the total is known."""
        if self.step is None or not self.max_steps:
            return None
        return round(min(100.0, 100.0 * self.step / self.max_steps), 1)

    @property
    def last_eval_loss(self) -> float | None:
        return self.eval_history[-1].eval_loss if self.eval_history else None


class Interval(_Model):
    """A 95% Wilson score interval of a proportion (exact match is one: a share of records)."""

    low: float
    high: float

    def __str__(self) -> str:
        return f"[{self.low:.2f}-{self.high:.2f}]"


class Baseline(_Model):
    """A trivial predictor built from the train split alone, scored on the validation split by
    the evaluator's own comparison (trimmed answer equals trimmed reference)."""

    name: str = Field(description="majorityLabel, labelPrior, copyInput, commonAnswer, fieldModes.")
    label: str = Field(description="What a message calls it, e.g. 'the majority label'.")
    exact_match: float
    correct: int = Field(description="Validation records it answered exactly.")
    expected_exact_match: float | None = Field(
        None, description="labelPrior only: exact match expected when sampling the train prior "
                          "(exactMatch is one seeded sample of it).")


class Comparison(_Model):
    """The tuned model against its strongest reference (the base model or a baseline): an exact
    one-sided sign test (McNemar) on the records where exactly one of the two is right."""

    against: str = Field(description="'base' or a Baseline name.")
    label: str = Field(description="What a message calls it, e.g. 'the majority label'.")
    reference: float = Field(description="Its exact match.")
    tuned: float
    samples: int
    tuned_only: int = Field(description="Records the tuned model got right and it got wrong.")
    reference_only: int = Field(description="Records it got right and the tuned model wrong.")
    p_value: float = Field(description="P(tunedOnly or more of the discordant records | no "
                                       "difference), exact binomial with p = 1/2.")
    alpha: float = 0.05
    significant: bool = Field(description="pValue < alpha: the tuned model beats it.")


class ExactMatch(_Model):
    base: float
    tuned: float
    samples: int
    base_interval: Interval | None = None
    tuned_interval: Interval | None = None
    answer_shape: Literal["labels", "json", "text"] | None = Field(
        None, description="The train answers' shape, which chose the baselines.")
    baselines: list[Baseline] = Field(default_factory=list)
    comparison: Comparison | None = Field(
        None, description="Against the reference the tuned model beats least convincingly "
                          "(highest p-value); the noGain verdict follows it.")
    scores: TaskScores | None = Field(
        None, description="Task-aware scores by answer shape (macro-F1, field accuracy or "
                          "character similarity) of base, tuned and the baselines.")

    def compact(self) -> str:
        """'EM 0.90 [0.74-0.97] F1 0.88': the tuned score, its interval and the task-aware one."""
        text = f"EM {self.tuned:.2f}" + (f" {self.tuned_interval}" if self.tuned_interval else "")
        return text + (f" {self.scores.compact()}" if self.scores else "")

    def headline(self) -> str | None:
        """The tuned model against its strongest reference, the line a status, an Event, the
        table and the report lead with, e.g. 'no gain over the majority label (0.30 vs 0.30 on
        30 records, p=0.59); EM 0.30 [0.17-0.48]'. None without a comparison."""
        c = self.comparison
        if c is None:
            return None
        p = f"p={c.p_value:.2g}" if c.p_value >= 0.001 else "p<0.001"
        stats = f"{c.tuned:.2f} vs {c.reference:.2f} on {c.samples} records, {p}"
        if not c.significant:
            return f"no gain over {c.label} ({stats}); {self.compact()}"
        return f"{self.compact()}, beats {c.label} by {c.tuned - c.reference:+.2f} ({stats})"


class Verdicts(_Model):
    overfit: bool = Field(description="Eval loss rose for the whole patience window.")
    no_gain: bool = Field(description="With exact match: the tuned model does not beat the base "
                                      "model and every trivial baseline by a paired test "
                                      "(exactMatch.comparison). Without: tuned eval loss is not "
                                      "below the base model's.")


class SearchCandidate(_Model):
    learning_rate: float
    lora_r: int
    lora_alpha: int
    selection_loss: float = Field(description="Our evaluator's answer loss on the selection slice.")
    best_step: int | None = None
    steps_run: int = 0
    wall_seconds: float = 0.0


class SearchReport(_Model):
    """spec.training.search: every candidate and the one kept. Chosen on the selection slice
    (carved from the train split), so the validation figures stay an honest held-out measure."""

    fit_samples: int
    selection_samples: int
    selection_sha256: str
    candidates: list[SearchCandidate]
    chosen: int = Field(description="Index into candidates: the lowest selection loss.")

    @model_validator(mode="after")
    def _chosen_is_a_candidate(self) -> SearchReport:
        if not 0 <= self.chosen < len(self.candidates):
            raise ValueError(f"search.chosen {self.chosen} is not one of "
                             f"{len(self.candidates)} candidates")
        return self


class Metrics(_Model):
    schema_version: int = SCHEMA_VERSION
    run_id: str
    base_eval_loss: float
    eval_loss: float
    improvement: float = Field(description="(base - tuned) / base, on the same validation split.")
    train_loss: float | None = None
    best_step: int | None = None
    epochs_run: float | None = None
    stopped_early: bool = False
    overfit_gap: float = Field(0.0, description="Last eval loss minus best eval loss.")
    eval_history: list[EvalPoint] = Field(default_factory=list)
    train_history: list[TrainPoint] = Field(default_factory=list)
    validation_samples: int = 0
    trained_tokens: int | None = None
    packing_efficiency: float | None = Field(None, description="Real tokens / tokens computed.")
    wall_seconds: float = 0.0
    stage_seconds: dict[str, float] = Field(
        default_factory=dict, description="Seconds per trainer stage (fetch, evaluate-base, train...).")
    versions: dict[str, str] = Field(default_factory=dict)
    exact_match: ExactMatch | None = None
    verdicts: Verdicts
    adapter_uri: str
    adapter_digest: str | None = None
    budget: dict[str, Any] = Field(default_factory=dict, description="Derived training budget.")
    search: SearchReport | None = None
    resumed_from_step: int | None = Field(
        None, description="The checkpoint step the last pod resumed from; None for a run that "
                          "never resumed.")
    resume_count: int = Field(0, description="How many times the run resumed from a checkpoint.")
    world_size: int = Field(1, description="Training processes in all (nodes x processesPerNode).")
    nodes: int = 1
    processes_per_node: int = 1
    sharding: str = Field("none", description="none (DDP when worldSize > 1), fsdp or "
                                              "deepspeed-zero2/3: how the base was split.")

    @staticmethod
    def relative_improvement(base: float, tuned: float) -> float:
        return (base - tuned) / base if base > 0 else 0.0


# ---- termination message ------------------------------------------------------------------


class TerminationMessage(_Model):
    """What the trainer writes to /dev/termination-log; the operator reads it from the pod."""

    ok: bool
    reason: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$")
    message: str
    base_eval_loss: float | None = None
    eval_loss: float | None = None
    metrics_uri: str | None = None

    def encode(self) -> str:
        """One JSON line, always under Kubernetes' 4 KiB limit (the message is cut, not the JSON)."""
        body = self.model_copy(update={"message": one_line(self.message)})
        text = body.model_dump_json(by_alias=True, exclude_none=True)
        while len(text.encode()) > TERMINATION_LOG_LIMIT and body.message:
            body = body.model_copy(update={"message": body.message[: len(body.message) // 2] + "..."})
            text = body.model_dump_json(by_alias=True, exclude_none=True)
        return text

    @classmethod
    def decode(cls, text: str | None) -> TerminationMessage | None:
        """Parse a termination message; None when absent or not ours (e.g. an OOM kill)."""
        if not text:
            return None
        try:
            return cls.model_validate(json.loads(text))
        except (ValueError, TypeError):
            return None


def one_line(text: str, limit: int = 400) -> str:
    """Collapse whitespace and cut: status messages, events and the CLI print one line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
