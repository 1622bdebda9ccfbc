"""What a local run prints: the task's final status as the operator would write it, and a table.

Why a module of its own: the local runner must not invent a second status vocabulary. Every
status here comes from the operator's own state machine (`finetune_operator.transitions`: one
function per step and per outcome, with the reasons of `finetune_operator.reasons`), called in
the order `reconcile.py` calls it, so a local run ends in the phase a cluster run would, with the
same conditions, reasons and messages; only the messages that name a Kubernetes object
(ConfigMap, Job) say what stands in for it locally. The table's figures come from the same
metrics.json the status is built from, so the two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from finetune_contract import Manifest, Metrics, one_line
from finetune_operator import transitions
from finetune_operator.spec import FineTuneTaskStatus
from finetune_operator.status import now_iso
from finetune_operator.transitions import At, Ending, Step


class LocalStatus:
    """One local run's status, moved by the operator's transitions (what taskstate.Writer is
    to the operator, without the API: no patch, no Event, no metrics)."""

    def __init__(self, run_id: str) -> None:
        self.status: FineTuneTaskStatus = transitions.start(run_id, self.at())

    @staticmethod
    def at() -> At:
        return At(generation=None, now=now_iso())

    def step(self, step: Step) -> None:
        self.status = step.status

    def end(self, ending: Ending) -> Ending:
        self.status = ending.status
        return ending


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
    em: str = ""             # "EM 0.90 [0.74-0.97]": the tuned score and its 95% interval
    versus: str = ""         # the strongest reference it was tested against, e.g.
                             # "the majority label 0.30, p<0.001"
    stopped_early: bool | None = None
    verdict: str = ""
    adapter: str = ""
    wall_s: float | None = None
    reused: bool = False


def verdict(m: Metrics) -> str:
    return "no gain" if m.verdicts.no_gain else "overfit" if m.verdicts.overfit else "ok"


def versus(m: Metrics) -> str:
    """The comparison the verdict follows, compactly: what the tuned model was tested against."""
    c = m.exact_match.comparison if m.exact_match else None
    if c is None:
        return ""
    p = f"p={c.p_value:.2g}" if c.p_value >= 0.001 else "p<0.001"
    return f"{c.label} {c.reference:.2f}, {p}"


def row_for(task: str, status: FineTuneTaskStatus, manifest: Manifest | None,
            m: Metrics | None, wall_s: float | None, reused: bool = False) -> Row:
    row = Row(task=task, phase=status.phase, wall_s=wall_s, reused=reused)
    if manifest is not None:
        row.kept, row.dropped = manifest.records_kept, manifest.dropped.total()
    if m is not None:
        row.base_loss, row.tuned_loss, row.improvement = m.base_eval_loss, m.eval_loss, m.improvement
        if m.exact_match is not None:
            row.em_base, row.em_tuned = m.exact_match.base, m.exact_match.tuned
            row.em, row.versus = m.exact_match.compact(), versus(m)
        row.stopped_early, row.verdict, row.adapter = m.stopped_early, verdict(m), m.adapter_uri
    elif status.message:
        row.verdict = one_line(status.message, 60)
    return row


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


# The comparison against the strongest reference leads; the loss figures follow.
COLUMNS = ("task", "phase", "kept", "dropped", "exact match", "vs strongest", "verdict",
           "base loss", "tuned loss", "improvement", "stopped early", "wall", "adapter")


def cells(row: Row) -> list[str]:
    em = row.em or ("-" if row.em_tuned is None
                    else f"{_f(row.em_base, '.0%')} -> {_f(row.em_tuned, '.0%')}")
    wall = "-" if row.wall_s is None else f"{row.wall_s:.0f}s" + (" (reused)" if row.reused else "")
    early = "-" if row.stopped_early is None else ("yes" if row.stopped_early else "no")
    return [row.task, row.phase, _f(row.kept, "d"), _f(row.dropped, "d"), em, row.versus or "-",
            row.verdict or "-", _f(row.base_loss, ".4f"), _f(row.tuned_loss, ".4f"),
            _f(row.improvement, "+.1%"), early, wall, row.adapter or "-"]


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
