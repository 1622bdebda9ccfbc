"""What a local run prints: the task's final status as the operator would write it, and a table.

Why a module of its own: the local runner must not invent a second status vocabulary. Every
status here is built with the operator's own functions (`status.py`: new_run, set_condition,
with_phase, evaluation, metrics_status) in the order `reconcile.py` applies them, with the same
phases, condition types and reasons; only the messages that name a Kubernetes object (ConfigMap,
Job) say what stands in for it locally. The table's figures come from the same metrics.json the
status is built from, so the two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_contract import Manifest, Metrics, RunLayout, one_line
from finetune_operator.resources import child_name
from finetune_operator.spec import AdapterStatus, FineTuneTaskStatus, JobStatus
from finetune_operator.status import (data_status, evaluation, metrics_status, new_run, now_iso, set_condition,
                     with_phase)


class StatusBuilder:
    """Accumulates one local run's status step by step, like reconcile.Writer does."""

    def __init__(self, task: str, run_id: str) -> None:
        self.task, self.run_id = task, run_id
        self.status: FineTuneTaskStatus = new_run(run_id, None, now_iso())

    def cond(self, type_: Any, value: Any, reason: str, message: str) -> FineTuneTaskStatus:
        self.status = set_condition(self.status, type_, value, reason, message, generation=None,
                                    now=now_iso())
        return self.status

    def preparing(self, dataset_uri: str) -> None:
        self.cond("DataReady", "Unknown", "Preparing", f"reading {dataset_uri}")
        self.status = with_phase(self.status, "Preparing", f"preparing data from {dataset_uri}",
                                 generation=None)

    def prepared(self, manifest: Manifest, layout: RunLayout) -> None:
        data, msg = data_status(manifest, layout)
        self.status = self.cond("DataReady", "True", "Prepared", msg).model_copy(
            update={"data": data})

    def rendered(self, layout: RunLayout) -> None:
        self.cond("ConfigRendered", "True", "Rendered", f"config written to {layout.config}")

    def launched(self, start_time: str) -> None:
        name = child_name(self.task, self.run_id)
        msg = f"local trainer process started (Job {name} on a cluster)"
        self.cond("JobCreated", "True", "Created", msg)
        self.status = with_phase(self.status, "Training", msg, generation=None,
                                 job=JobStatus(name=name, config_map=name, start_time=start_time))

    def finish(self, phase: Any, cond: tuple[Any, str, str], message: str, *, ready: bool = False,
               ready_reason: str | None = None, **fields: Any) -> FineTuneTaskStatus:
        """End the run the way reconcile.Writer.finish does: the step's condition, Ready, phase."""
        type_, value, reason = cond
        self.cond(type_, value, reason, message)
        self.cond("Ready", "True" if ready else "False", ready_reason or reason, message)
        self.status = with_phase(self.status, phase, message, generation=None, **fields)
        return self.status

    def succeeded(self, m: Metrics, completion_time: str) -> FineTuneTaskStatus:
        reason, message, ready = evaluation(m)
        self.cond("Trained", "True", "Completed", f"best step {m.best_step}, train loss "
                  f"{m.train_loss}" + (", stopped early" if m.stopped_early else ""))
        self.cond("Evaluated", "True", reason, message)
        job = (self.status.job.model_copy(update={"completion_time": completion_time})
               if self.status.job else None)
        return self.finish("Succeeded", ("Evaluated", "True", reason), message, ready=ready,
                           ready_reason=reason, metrics=metrics_status(m), job=job,
                           adapter=AdapterStatus(uri=m.adapter_uri, digest=m.adapter_digest))

    def failed(self, cond_type: Any, reason: str, message: str) -> FineTuneTaskStatus:
        return self.finish("Failed", (cond_type, "False", reason), message)

    def skipped(self, cond_type: Any, reason: str, message: str) -> FineTuneTaskStatus:
        return self.finish("Skipped", (cond_type, "False", reason), message)


# ---- the table ----------------------------------------------------------------------------


@dataclass
class Row:
    """One task's line in the table (also what the demo report and the benchmark read)."""

    task: str
    phase: str
    kept: int | None = None
    dropped: int | None = None
    base_loss: float | None = None
    tuned_loss: float | None = None
    improvement: float | None = None
    em_base: float | None = None
    em_tuned: float | None = None
    stopped_early: bool | None = None
    verdict: str = ""
    adapter: str = ""
    wall_s: float | None = None
    reused: bool = False


def verdict(m: Metrics) -> str:
    return "no gain" if m.verdicts.no_gain else "overfit" if m.verdicts.overfit else "ok"


def row_for(task: str, status: FineTuneTaskStatus, manifest: Manifest | None,
            m: Metrics | None, wall_s: float | None, reused: bool = False) -> Row:
    row = Row(task=task, phase=status.phase, wall_s=wall_s, reused=reused)
    if manifest is not None:
        row.kept, row.dropped = manifest.records_kept, manifest.dropped.total()
    if m is not None:
        row.base_loss, row.tuned_loss, row.improvement = m.base_eval_loss, m.eval_loss, m.improvement
        if m.exact_match is not None:
            row.em_base, row.em_tuned = m.exact_match.base, m.exact_match.tuned
        row.stopped_early, row.verdict, row.adapter = m.stopped_early, verdict(m), m.adapter_uri
    elif status.message:
        row.verdict = one_line(status.message, 60)
    return row


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


COLUMNS = ("task", "phase", "kept", "dropped", "base loss", "tuned loss", "improvement",
           "exact match", "stopped early", "verdict", "wall", "adapter")


def cells(row: Row) -> list[str]:
    em = ("-" if row.em_tuned is None else f"{_f(row.em_base, '.0%')} -> {_f(row.em_tuned, '.0%')}")
    wall = "-" if row.wall_s is None else f"{row.wall_s:.0f}s" + (" (reused)" if row.reused else "")
    early = "-" if row.stopped_early is None else ("yes" if row.stopped_early else "no")
    return [row.task, row.phase, _f(row.kept, "d"), _f(row.dropped, "d"), _f(row.base_loss, ".4f"),
            _f(row.tuned_loss, ".4f"), _f(row.improvement, "+.1%"), em, early, row.verdict or "-",
            wall, row.adapter or "-"]


def format_table(rows: list[Row], columns: tuple[str, ...] = COLUMNS) -> str:
    """A plain-text table (no terminal library: the core install has none)."""
    body = [cells(r) for r in rows]
    widths = [max(len(columns[i]), *(len(b[i]) for b in body)) for i in range(len(columns))]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, body)])


def markdown_table(rows: list[Row], columns: tuple[str, ...] = COLUMNS) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |" for r in rows]
    return "\n".join(out)
