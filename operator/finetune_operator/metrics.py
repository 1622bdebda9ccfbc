"""Prometheus collectors of the operator. Names and labels are a contract with the alert rules
in helm/ and manifests/ (tests run promtool against them): change both together.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

RUNS_STARTED = Counter(
    "finetune_runs_started", "Runs started (data preparation begun).",
    ["namespace", "task"], registry=REGISTRY)
RUNS_FINISHED = Counter(
    "finetune_runs_finished", "Runs finished, by result (succeeded|failed|skipped) and reason.",
    ["namespace", "task", "result", "reason"], registry=REGISTRY)
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
    ["namespace", "task"], registry=REGISTRY)
TASK_BASE_EVAL_LOSS = Gauge(
    "finetune_task_base_eval_loss", "Base model eval loss on the same validation split.",
    ["namespace", "task"], registry=REGISTRY)
TASK_IMPROVEMENT = Gauge(
    "finetune_task_improvement", "Relative eval-loss improvement over the base model.",
    ["namespace", "task"], registry=REGISTRY)
TASK_LAST_SUCCESS = Gauge(
    "finetune_task_last_success_timestamp_seconds", "Unix time of the task's last successful run.",
    ["namespace", "task"], registry=REGISTRY)
TASK_TRAINING_STARTED = Gauge(
    "finetune_task_training_started_timestamp_seconds",
    "Unix time the task's current Job was created; absent when no Job runs.",
    ["namespace", "task"], registry=REGISTRY)
TASK_TRAINING_DEADLINE = Gauge(
    "finetune_task_training_deadline_seconds",
    "activeDeadlineSeconds of the task's current Job; absent when no Job runs.",
    ["namespace", "task"], registry=REGISTRY)
OPERATOR_ERRORS = Counter(
    "finetune_operator_errors", "Unexpected errors in handlers (bugs or API/S3 outages).",
    ["handler", "error"], registry=REGISTRY)


def serve(port: int) -> None:
    """Expose /metrics on all interfaces of the pod (the Service selects it)."""
    if port:
        start_http_server(port, registry=REGISTRY)
