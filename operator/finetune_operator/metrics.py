"""Prometheus collectors of the operator. Names and labels are a contract with the alert rules
in helm/ and manifests/ (tests run promtool against them): change both together.

Every series labelled with a task lives until that task is deleted (`forget_task`): a series left
behind would keep alerting about a task that no longer exists.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)
TASK_LABELS = ("namespace", "task")
FINISHED_LABELS = (*TASK_LABELS, "result", "reason")

RUNS_STARTED = Counter(
    "finetune_runs_started", "Runs started (data preparation begun).",
    TASK_LABELS, registry=REGISTRY)
RUNS_FINISHED = Counter(
    "finetune_runs_finished", "Runs finished, by result (succeeded|failed|skipped) and reason.",
    FINISHED_LABELS, registry=REGISTRY)
RUN_DURATION = Histogram(
    "finetune_run_duration_seconds", "Wall time from run start to a final phase.",
    ["namespace", "result"], registry=REGISTRY,
    buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400))
ACTIVE_RUNS = Gauge(
    "finetune_active_runs", "Runs between start and a final phase.", ["namespace"], registry=REGISTRY)
DATA_PREP_DURATION = Histogram(
    "finetune_data_prep_duration_seconds", "Time to read, clean, split and write a task's data.",
    ["namespace"], registry=REGISTRY, buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300))
TASK_EVAL_LOSS = Gauge(
    "finetune_task_eval_loss", "Tuned eval loss of the task's last successful run.",
    TASK_LABELS, registry=REGISTRY)
TASK_BASE_EVAL_LOSS = Gauge(
    "finetune_task_base_eval_loss", "Base model eval loss on the same validation split.",
    TASK_LABELS, registry=REGISTRY)
TASK_IMPROVEMENT = Gauge(
    "finetune_task_improvement", "Relative eval-loss improvement over the base model.",
    TASK_LABELS, registry=REGISTRY)
TASK_NO_GAIN = Gauge(
    "finetune_task_no_gain",
    "1 when the task's last successful run did not beat the base model and every trivial "
    "baseline (verdicts.noGain: its adapter is not worth serving), else 0.",
    TASK_LABELS, registry=REGISTRY)
TASK_LAST_SUCCESS = Gauge(
    "finetune_task_last_success_timestamp_seconds", "Unix time of the task's last successful run.",
    TASK_LABELS, registry=REGISTRY)
TASK_TRAINING_STARTED = Gauge(
    "finetune_task_training_started_timestamp_seconds",
    "Unix time the task's current Job was created; absent when no Job runs.",
    TASK_LABELS, registry=REGISTRY)
TASK_TRAINING_DEADLINE = Gauge(
    "finetune_task_training_deadline_seconds",
    "activeDeadlineSeconds of the task's current Job; absent when no Job runs.",
    TASK_LABELS, registry=REGISTRY)
OPERATOR_ERRORS = Counter(
    "finetune_operator_errors", "Unexpected errors in handlers (bugs or API/S3 outages).",
    ["handler", "error"], registry=REGISTRY)

# Every collector with a `task` label and its label names: forget_task removes their series.
# Kept next to the collectors so that a new per-task metric lands here too (test_metrics.py
# fails on a `task`-labelled collector missing from this table).
PER_TASK: tuple[tuple[Counter | Gauge, tuple[str, ...]], ...] = (
    (RUNS_STARTED, TASK_LABELS), (RUNS_FINISHED, FINISHED_LABELS),
    (TASK_EVAL_LOSS, TASK_LABELS), (TASK_BASE_EVAL_LOSS, TASK_LABELS),
    (TASK_IMPROVEMENT, TASK_LABELS), (TASK_NO_GAIN, TASK_LABELS), (TASK_LAST_SUCCESS, TASK_LABELS),
    (TASK_TRAINING_STARTED, TASK_LABELS), (TASK_TRAINING_DEADLINE, TASK_LABELS),
)


def forget_task(namespace: str, task: str) -> None:
    """Remove every series of a deleted task, of every result and reason for the run counters.

    Its alerts then resolve (Prometheus marks the vanished series stale at the next scrape)
    instead of firing for a task that no longer exists.
    """
    for metric, names in PER_TASK:
        series = {tuple(sample.labels[name] for name in names)
                  for family in metric.collect() for sample in family.samples
                  if sample.labels["namespace"] == namespace and sample.labels["task"] == task}
        for labelvalues in series:
            with contextlib.suppress(KeyError):  # older prometheus-client raises when already gone
                metric.remove(*labelvalues)


def serve(port: int) -> None:
    """Expose /metrics on all interfaces of the pod (the Service selects it)."""
    if port:
        start_http_server(port, registry=REGISTRY)
