"""The FineTuneTask resource as pydantic models: the one source of truth for the CRD schema.

`crdgen.py` turns these models into the CRD's openAPIV3Schema; a test fails when crds/ drifts.
Field names are camelCase on the wire (aliases) and snake_case in Python.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator, model_validator)
from pydantic.alias_generators import to_camel

from . import API_VERSION, KIND
from finetune_contract import DropCounts  # status.data.dropped is the manifest's counts as they are

DatasetFormat = Literal["auto", "alpaca", "chat", "input_output", "completion"]
Phase = Literal["Pending", "Preparing", "Training", "Succeeded", "Failed", "Skipped", "Suspended"]
ConditionType = Literal["DataReady", "ConfigRendered", "JobCreated", "Trained", "Evaluated", "Ready"]


S3_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$"
LOCAL_CONTEXT = {"allow_local_paths": True}


def _check_data_uri(value: str, info: ValidationInfo) -> str:
    """s3:// URIs on a cluster (the CRD's pattern); local runs may also name a local path."""
    if re.match(S3_URI_PATTERN, value):
        return value
    if info.context and info.context.get("allow_local_paths") and not value.startswith(("s3:", "http")):
        return value
    raise ValueError(f"must be an s3://bucket/key URI, got {value!r}")


class CamelModel(BaseModel):
    """Strict camelCase model: unknown keys are errors so typos never pass silently."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_default=True
    )

    def wire(self) -> dict[str, Any]:
        """The Kubernetes (camelCase) form, without unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class BaseModelRef(CamelModel):
    name: str = Field(min_length=1, description="Hub id, s3:// prefix or local path of the base model.")
    revision: str = Field("main", description="Hub revision (branch, tag or commit); ignored for paths.")
    parameters: int | None = Field(
        None, ge=1, description="Parameter count, for training.sharding auto; default: read "
                                "from the name (e.g. -135M, -8B).")


class DatasetSpec(CamelModel):
    uri: str = Field(
        json_schema_extra={"pattern": S3_URI_PATTERN},
        description="One object or a prefix (ending in /) of .jsonl/.json/.csv/.parquet objects.",
    )
    format: DatasetFormat = Field("auto", description="Record format; auto detects it per object.")
    validation_fraction: float = Field(0.1, gt=0, le=0.5, description="Share of records held out.")
    seed: int = Field(42, ge=0, description="Seed of the train/validation split.")
    min_samples: int = Field(100, ge=1, description="Fewer clean records than this: the task is Skipped.")
    min_validation_samples: int = Field(10, ge=1, description="Floor on the validation split size.")
    max_chars: int = Field(16000, ge=16, description="Records longer than this (prompt+output) are dropped.")
    strict: bool = Field(False, description="Any dropped record is an error instead of a count.")
    stratify_by: str | None = Field(None, description="Source field to stratify the split by (e.g. a label).")
    max_bytes: int = Field(256 * 1024 * 1024, ge=1, description="Cap on the dataset's total size.")

    _check_uri = field_validator("uri")(classmethod(lambda cls, v, info: _check_data_uri(v, info)))


class LoraSpec(CamelModel):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha.")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | None = Field(None, description="Modules to adapt; default all linear.")


MAX_SEARCH_CANDIDATES = 6


class SearchSpec(CamelModel):
    """A few candidates trained in the same run, chosen on a slice carved out of the train split.

    The validation split the status reports is never used to choose: each candidate trains on
    the rest of the train split and early-stops on the slice, the lowest slice loss wins, and
    only the winner is measured on the validation split.
    """

    learning_rates: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=list, max_length=MAX_SEARCH_CANDIDATES,
        description="Learning rates to try; empty: the one training would use.")
    lora_ranks: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=list, max_length=MAX_SEARCH_CANDIDATES,
        description="LoRA ranks to try (alpha keeps the lora.alpha/lora.r ratio); empty: lora.r.")
    selection_fraction: float = Field(
        0.2, gt=0, le=0.5, description="Share of the train split held out to choose the winner.")

    def size(self) -> int:
        return max(1, len(set(self.learning_rates))) * max(1, len(set(self.lora_ranks)))


class TrainingSpec(CamelModel):
    adapter: Literal["lora", "qlora"] = Field("lora", description="Adapter kind.")
    lora: LoraSpec = Field(default_factory=LoraSpec)
    epochs: float | None = Field(None, gt=0, le=100, description="Epochs; default derived from the data.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; default derived from the data.")
    learning_rate: float | None = Field(None, gt=0, lt=1, description="Default chosen by adapter.")
    micro_batch_size: int | None = Field(None, ge=1, le=1024)
    gradient_accumulation_steps: int | None = Field(None, ge=1, le=1024)
    sequence_len: int | None = Field(None, ge=32, le=131072, description="Default from record lengths.")
    sample_packing: bool | None = Field(None, description="Default: on where it saves compute.")
    train_on_inputs: bool = Field(False, description="Train on prompt tokens too (normally masked).")
    early_stopping_patience: int = Field(2, ge=0, le=100, description="Evaluations without gain before stop.")
    sharding: Literal["auto", "none", "fsdp", "deepspeed-zero2", "deepspeed-zero3"] | None = Field(
        None, description="How the base model is split over the run's GPUs; default auto: none "
                          "while it fits on one GPU, else fsdp (see finetune render --explain).")
    search: SearchSpec | None = Field(
        None, description="Try a few learning rates or ranks; chosen on a slice of the train split.")
    axolotl: dict[str, Any] = Field(
        default_factory=dict, description="Extra Axolotl keys, merged last (advanced)."
    )

    @field_validator("search")
    @classmethod
    def _search_size(cls, v: SearchSpec | None) -> SearchSpec | None:
        if v is not None and not 2 <= v.size() <= MAX_SEARCH_CANDIDATES:
            raise ValueError(f"search must give 2 to {MAX_SEARCH_CANDIDATES} candidates "
                             f"(learningRates x loraRanks), got {v.size()}")
        return v


class OutputSpec(CamelModel):
    uri: str = Field(json_schema_extra={"pattern": S3_URI_PATTERN},
                     description="Prefix under which runs, adapters and metrics are written.")

    _check_uri = field_validator("uri")(classmethod(lambda cls, v, info: _check_data_uri(v, info)))


class StorageSpec(CamelModel):
    endpoint: str = Field("", description="S3 endpoint URL; empty for AWS.")
    region: str = Field("us-east-1", description="S3 region.")
    credentials_secret: str | None = Field(
        "s3-credentials", description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
    )


class ResourcesSpec(CamelModel):
    gpu: int = Field(1, ge=0, le=16, description="GPUs for the trainer; 0 runs the CPU profile.")
    gpu_resource_name: str = Field("nvidia.com/gpu", description="Extended resource name of the GPU.")
    cpu: str = Field("4", description="CPU request.")
    memory: str = Field("32Gi", description="Memory request and limit.")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    priority_class_name: str | None = None
    queue_name: str | None = Field(None, description="Kueue LocalQueue; sets kueue.x-k8s.io/queue-name.")
    active_deadline_seconds: int = Field(6 * 3600, ge=60, description="Hard wall-clock cap of the Job.")
    backoff_limit: int = Field(1, ge=0, le=10, description="Retries of a failed trainer pod.")
    # None-defaults (not 1): a field at None stays out of run_id, so existing tasks keep theirs.
    nodes: int | None = Field(
        None, ge=1, le=64, description="Pods the run spreads over (an Indexed Job); default 1.")
    processes_per_node: int | None = Field(
        None, ge=1, le=64, description="Training processes per pod (torchrun); default: the GPU "
                                       "count, or 1 on CPU.")
    gpu_memory_gi_b: float | None = Field(
        None, gt=0, alias="gpuMemoryGiB",
        description="Memory of one GPU, for training.sharding auto; default: the operator's "
                    "FINETUNE_GPU_MEMORY_GIB.")

    def world_shape(self) -> tuple[int, int]:
        """(nodes, processes per node) of the run."""
        return self.nodes or 1, self.processes_per_node or max(1, self.gpu)


class FineTuneTaskSpec(CamelModel):
    base_model: BaseModelRef
    dataset: DatasetSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    output: OutputSpec
    storage: StorageSpec = Field(default_factory=StorageSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    trainer_image: str | None = Field(None, description="Override of the operator's trainer image.")
    suspend: bool = Field(False, description="Stop before creating a Job, or suspend a running one.")
    infrequent: bool = Field(False, description="Prepare and report, but spend no GPU: ends Skipped.")

    @model_validator(mode="after")
    def _search_on_one_node(self) -> FineTuneTaskSpec:
        """The search trains its candidates one after another in node 0's process; the other
        nodes of a multi-node run would have nothing to join."""
        if self.training.search is not None and (self.resources.nodes or 1) > 1:
            raise ValueError("training.search runs on one node: drop it or set resources.nodes 1")
        return self

    def run_id(self) -> str:
        """Deterministic id of the run this spec asks for.

        A digest of the spec (minus `suspend`, which pauses rather than changes a run): re-delivery
        and operator restarts map to the same run, any real spec change to a new one. Fields left
        at None are left out, so a new optional field in a later version (e.g.
        `training.search`) does not restart every existing task.
        """
        body = self.model_dump(by_alias=True, mode="json", exclude={"suspend"}, exclude_none=True)
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return "r" + hashlib.sha256(canonical.encode()).hexdigest()[:8]


# ---- status -------------------------------------------------------------------------------


class Condition(CamelModel):
    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class DataStatus(CamelModel):
    train_samples: int
    validation_samples: int
    dropped: DropCounts = Field(default_factory=DropCounts)
    digest: str
    manifest_uri: str | None = None


class JobStatus(CamelModel):
    name: str
    config_map: str
    service: str | None = Field(None, description="The headless Service of a multi-node run.")
    start_time: str | None = None
    completion_time: str | None = None


class MetricsStatus(CamelModel):
    base_eval_loss: float | None = None
    eval_loss: float | None = None
    improvement: float | None = None
    train_loss: float | None = None
    best_step: int | None = None
    stopped_early: bool | None = None
    overfit_gap: float | None = None
    exact_match_base: float | None = None
    exact_match: float | None = None
    overfit: bool | None = None
    no_gain: bool | None = None
    chosen_learning_rate: float | None = Field(None, description="spec.training.search's winner.")
    chosen_lora_r: int | None = Field(None, description="spec.training.search's winner.")
    exact_match_low: float | None = Field(None, description="95% Wilson interval of exactMatch.")
    exact_match_high: float | None = Field(None, description="95% Wilson interval of exactMatch.")
    best_baseline: str | None = Field(
        None, description="The trivial baseline with the highest exact match (e.g. majorityLabel).")
    best_baseline_exact_match: float | None = None
    headline: str | None = Field(
        None, description="The tuned model against its strongest reference (base or baseline).")
    resumed_from_step: int | None = Field(
        None, description="The checkpoint step the last trainer pod resumed from.")
    resume_count: int | None = Field(None, description="Times the run resumed from a checkpoint.")
    world_size: int | None = Field(
        None, description="Training processes in all (nodes x processesPerNode); absent for one.")
    nodes: int | None = None
    processes_per_node: int | None = None
    sharding: str | None = Field(None, description="none (DDP), fsdp or deepspeed-zero2/3.")


class ProgressStatus(CamelModel):
    """A summary of the running trainer's progress.json; the eval curve stays in S3."""

    stage: str
    percent: float | None = Field(None, description="Share of the training steps done, 0-100.")
    step: int | None = None
    max_steps: int | None = None
    eta_seconds: int | None = Field(None, description="Training time left at the current rate.")
    last_eval_loss: float | None = None
    resumed_from_step: int | None = Field(None, description="The checkpoint this pod started from.")
    updated: str = Field(description="When the trainer wrote the report (RFC 3339).")


class AdapterStatus(CamelModel):
    uri: str
    digest: str | None = None


class FineTuneTaskStatus(CamelModel):
    phase: Phase = "Pending"
    run_id: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    data: DataStatus | None = None
    job: JobStatus | None = None
    progress: ProgressStatus | None = None
    metrics: MetricsStatus | None = None
    adapter: AdapterStatus | None = None
    message: str | None = None


class SpecError(ValueError):
    """A FineTuneTask that cannot be accepted; the message is one readable line."""


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"]) or "spec"
    return f"{where}: {e['msg']}"


def parse_spec(body: dict[str, Any], *, local: bool = False) -> FineTuneTaskSpec:
    """Validate a spec dict; raise SpecError with one line naming the field at fault.

    `local=True` (CLI and local runs) also accepts local paths for the data and output URIs.
    """
    try:
        return FineTuneTaskSpec.model_validate(body, context=LOCAL_CONTEXT if local else None)
    except ValidationError as err:
        raise SpecError(f"invalid spec: {_first_error(err)}") from None


def parse_task_document(doc: Any, *, local: bool = False) -> tuple[dict[str, Any], FineTuneTaskSpec]:
    """Check that a YAML document is a FineTuneTask; return (metadata, spec)."""
    if not isinstance(doc, dict):
        raise SpecError("not a FineTuneTask: the document is not a mapping")
    if doc.get("kind") != KIND or doc.get("apiVersion") != API_VERSION:
        raise SpecError(
            f"not a FineTuneTask: kind={doc.get('kind')!r} apiVersion={doc.get('apiVersion')!r} "
            f"(expected kind {KIND}, apiVersion {API_VERSION})"
        )
    meta = doc.get("metadata") or {}
    if not isinstance(meta, dict) or not meta.get("name"):
        raise SpecError("not a FineTuneTask: metadata.name is missing")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise SpecError("not a FineTuneTask: spec is missing")
    return meta, parse_spec(spec, local=local)
