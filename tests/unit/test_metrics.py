"""The operator's metric series, read as Prometheus reads them: the text exposition of the real
prometheus_client registry. A deleted task's series must leave /metrics (or its alerts fire
forever, for a task that no longer exists); other tasks' series must stay.
"""

from __future__ import annotations

from typing import Any

import kopf
import pytest
from prometheus_client import Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from finetune_operator import handlers, metrics


def scraped() -> set[tuple[str, str, str]]:
    """(sample name, namespace, task) of every per-task sample on /metrics right now."""
    text = generate_latest(metrics.REGISTRY).decode()
    return {(s.name, s.labels["namespace"], s.labels["task"])
            for family in text_string_to_metric_families(text) for s in family.samples
            if "task" in s.labels}


def record_everything(namespace: str, task: str) -> None:
    """What a task's runs leave behind: both results and two reasons, plus a running Job."""
    metrics.RUNS_STARTED.labels(namespace, task).inc()
    metrics.RUNS_FINISHED.labels(namespace, task, "failed", "TrainingFailed").inc()
    metrics.RUNS_FINISHED.labels(namespace, task, "succeeded", "Succeeded").inc()
    metrics.TASK_EVAL_LOSS.labels(namespace, task).set(1.2)
    metrics.TASK_BASE_EVAL_LOSS.labels(namespace, task).set(1.5)
    metrics.TASK_IMPROVEMENT.labels(namespace, task).set(0.2)
    metrics.TASK_LAST_SUCCESS.labels(namespace, task).set(1.7e9)
    metrics.TASK_TRAINING_STARTED.labels(namespace, task).set(1.7e9)
    metrics.TASK_TRAINING_DEADLINE.labels(namespace, task).set(3600)


def of(namespace: str, task: str) -> set[tuple[str, str, str]]:
    return {s for s in scraped() if s[1:] == (namespace, task)}


@pytest.fixture
def tasks() -> Any:
    """Three tasks with series; forgotten afterwards so other tests see a clean registry."""
    names = [("ml", "gone"), ("ml", "kept"), ("other", "gone")]
    for ns, task in names:
        record_everything(ns, task)
    yield names
    for ns, task in names:
        metrics.forget_task(ns, task)


def test_forget_task_removes_every_series_of_that_task_only(tasks: Any) -> None:
    before = scraped()
    # Every per-task collector shows up for each task (both RUNS_FINISHED label sets too).
    assert {name for name, *_ in of("ml", "gone")} == {
        name for name, *_ in of("ml", "kept")} == {name for name, *_ in of("other", "gone")}
    assert len({s for s in of("ml", "gone") if s[0] == "finetune_runs_finished_total"}) == 1
    assert 'reason="TrainingFailed"' in generate_latest(metrics.REGISTRY).decode()

    metrics.forget_task("ml", "gone")

    assert of("ml", "gone") == set()
    text = generate_latest(metrics.REGISTRY).decode()
    assert not any('namespace="ml"' in line and 'task="gone"' in line
                   for line in text.splitlines())
    # Same name in another namespace, another task in the same namespace: untouched.
    assert scraped() == before - {s for s in before if s[1:] == ("ml", "gone")}
    assert of("ml", "kept") and of("other", "gone")


def test_forget_task_of_a_task_without_series_is_a_no_op(tasks: Any) -> None:
    before = scraped()
    metrics.forget_task("ml", "never-ran")
    metrics.forget_task("ml", "gone")
    metrics.forget_task("ml", "gone")  # twice: a repeated DELETED event
    assert scraped() == before - {s for s in before if s[1:] == ("ml", "gone")}


def test_every_collector_with_a_task_label_is_forgotten() -> None:
    """A new per-task metric must join PER_TASK, or it outlives its task again."""
    collectors = [v for v in vars(metrics).values() if isinstance(v, (Counter, Gauge, Histogram))]
    with_task = {id(c) for c in collectors if "task" in c._labelnames}  # no public accessor
    assert with_task == {id(c) for c, _ in metrics.PER_TASK}
    for collector, names in metrics.PER_TASK:
        assert tuple(collector._labelnames) == names


def _deletion_handler() -> Any:
    watching = kopf.get_default_registry()._watching.get_all_handlers()
    [handler] = [h for h in watching if h.fn is handlers.task_deleted]
    return handler


def test_the_tasks_deleted_event_forgets_its_series(tasks: Any) -> None:
    handler = _deletion_handler()
    assert (handler.selector.group, handler.selector.any_name) == (
        "finetune.v-sekai.org", "finetunetasks")
    assert handler.when(type="DELETED") and not handler.when(type="MODIFIED")
    assert not handler.when(type=None)  # the initial listing: the task still exists
    handler.fn(name="gone", namespace="ml", type="DELETED")
    assert of("ml", "gone") == set() and of("ml", "kept")
