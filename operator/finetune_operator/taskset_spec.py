"""The FineTuneTaskSet resource as pydantic models: the source of truth of its CRD.

A set generates one FineTuneTask per task (taskset.py); each generated spec is the deep merge
of the set's `defaults` and the task's own `spec`, validated by the FineTuneTaskSpec of
spec.py, so nothing here repeats the task's schema. `defaults` and each entry's `spec` are kept
free-form in the CRD on purpose: the API server would otherwise fill the task's defaults into
every override (and an override would then reset the set's defaults), and a malformed entry
would refuse the whole set instead of being reported on it while the rest goes on.
`taskset_crdgen.py` turns these models into the CRD.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import Field

from .spec import S3_URI_PATTERN, CamelModel

SET_KIND: Final = "FineTuneTaskSet"
SET_PLURAL: Final = "finetunetasksets"
MAX_LISTED: Final = 20  # failedTasks and problems: the status stays small however many tasks

# ---- condition types and reasons of a set (docs/tasksets.md has the table) -----------------
SetConditionType = Literal["SourceListed", "TasksGenerated"]
LISTED: Final = "Listed"                  # SourceListed=True
EMPTY_PREFIX: Final = "EmptyPrefix"       # SourceListed=False: the prefix holds no task folder
SOURCE_UNREADABLE: Final = "SourceUnreadable"  # SourceListed=False: S3 refused or is down
NO_SOURCE: Final = "NoSource"             # SourceListed=True: no prefix, the entries are the list
GENERATED: Final = "Generated"            # TasksGenerated=True: every entry became a task
MALFORMED_ENTRY: Final = "MalformedEntry"  # TasksGenerated=False: an entry is not a valid task
DUPLICATE_NAME: Final = "DuplicateTaskName"  # TasksGenerated=False: two entries, one name
REASONS: Final = (LISTED, EMPTY_PREFIX, SOURCE_UNREADABLE, NO_SOURCE, GENERATED,
                  MALFORMED_ENTRY, DUPLICATE_NAME)

FREE_FORM = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def _free(description: str) -> Any:
    return Field(None, description=description, json_schema_extra=FREE_FORM)


class TaskTemplate(CamelModel):
    """A partial FineTuneTask spec: the set's defaults, or one task's overrides."""

    base_model: dict[str, Any] | None = _free("FineTuneTask spec.baseModel fields.")
    dataset: dict[str, Any] | None = _free(
        "FineTuneTask spec.dataset fields (minSamples, format...); uri comes from the source.")
    training: dict[str, Any] | None = _free("FineTuneTask spec.training fields.")
    output: dict[str, Any] | None = _free("FineTuneTask spec.output fields.")
    storage: dict[str, Any] | None = _free(
        "FineTuneTask spec.storage fields; the set's own storage also lists the prefix.")
    resources: dict[str, Any] | None = _free("FineTuneTask spec.resources fields.")
    trainer_image: str | None = None
    suspend: bool | None = None
    infrequent: bool | None = None


class TaskEntry(CamelModel):
    key: str = Field(min_length=1, max_length=253,
                     description="The task's key: a folder under the prefix, or a name of its "
                                 "own; the task is named <set>-<key>.")
    spec: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra=FREE_FORM,
        description="Overrides of the set's defaults (FineTuneTask spec fields, deep-merged). "
                    "A key with no folder under the prefix needs dataset.uri.")


class TaskSource(CamelModel):
    prefix: str | None = Field(
        None, json_schema_extra={"pattern": S3_URI_PATTERN},
        description="s3:// prefix; each immediate sub-prefix (folder) is one task, its data "
                    "the folder. Read again every FINETUNE_TASKSET_RESYNC_INTERVAL seconds.")


class FineTuneTaskSetSpec(CamelModel):
    source: TaskSource = Field(default_factory=TaskSource)
    defaults: TaskTemplate = Field(default_factory=TaskTemplate)
    tasks: list[TaskEntry] = Field(
        default_factory=list, description="Explicit tasks, and overrides of the prefix's tasks.")


class SetCondition(CamelModel):
    type: SetConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class PhaseCounts(CamelModel):
    pending: int = 0
    preparing: int = 0
    training: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    suspended: int = 0


class FailedTask(CamelModel):
    name: str
    reason: str
    message: str = ""


class FineTuneTaskSetStatus(CamelModel):
    observed_generation: int | None = None
    tasks: int = Field(0, description="FineTuneTasks the set owns.")
    counts: PhaseCounts = Field(default_factory=PhaseCounts)
    mean_improvement: float | None = Field(
        None, description="Mean status.metrics.improvement of the Succeeded tasks.")
    min_improvement: float | None = Field(
        None, description="Lowest status.metrics.improvement of the Succeeded tasks.")
    failed_tasks: list[FailedTask] = Field(
        default_factory=list, description=f"The first {MAX_LISTED} Failed tasks, by name.")
    problems: list[str] = Field(
        default_factory=list, description=f"One line per entry that made no task (first "
                                          f"{MAX_LISTED}); the rest of the set goes on.")
    conditions: list[SetCondition] = Field(default_factory=list)
    last_listed: str | None = Field(None, description="When the prefix was last listed.")

