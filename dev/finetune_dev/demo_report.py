"""The demo's report: a Markdown page with the results table and one loss-curve PNG per task.

Why Markdown + PNG: it reads in a terminal, renders on GitHub, and needs no server. Curves come
from metrics.json only (train loss and eval loss per step, the base model's eval loss as a
line), so the picture and the table show the same run. matplotlib is optional (the `dev` extra
has it); without it the report keeps the tables and says how to get the plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune_contract import Metrics
from .local_status import markdown_table


def plot_curves(m: Metrics, title: str, path: Path) -> bool:
    """Write a PNG of train/eval loss vs step with the base eval loss; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    if m.train_history:
        ax.plot([p.step for p in m.train_history], [p.loss for p in m.train_history],
                label="train loss", color="#9ab", linewidth=1.2)
    if m.eval_history:
        ax.plot([p.step for p in m.eval_history], [p.eval_loss for p in m.eval_history],
                marker="o", label="eval loss", color="#c40", linewidth=1.6)
    ax.axhline(m.base_eval_loss, linestyle="--", color="#444",
               label=f"base model eval loss ({m.base_eval_loss:.3f})")
    ax.axhline(m.eval_loss, linestyle=":", color="#c40",
               label=f"tuned eval loss, all records ({m.eval_loss:.3f})")
    if m.best_step is not None:
        ax.axvline(m.best_step, color="#2a2", linewidth=0.8, label=f"best step {m.best_step}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(results: list[Any], tasks: dict[str, Any], out_dir: Path, *, model: str,
                 wall_s: float, title: str = "FineTune demo") -> Path:
    """`results`: local.TaskResult list; `tasks`: name -> demo_tasks.DemoTask. Returns the .md path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "",
             f"Base model: `{model}`. Wall time: {wall_s:.0f} s for {len(results)} tasks. Every "
             "figure below comes from the run's `metrics.json` (the same file the operator reads "
             "into the task's status). Exact match is the share of validation records whose "
             "generated answer equals the reference exactly; [low-high] is its 95% Wilson "
             "interval, and 'vs strongest' is the paired test against the best of the base "
             "model and the trivial baselines (docs/trainer.md, Verdicts).", "",
             markdown_table([r.row for r in results]), ""]
    for res in results:
        task = tasks.get(res.name)
        lines += [f"## {res.name}", ""]
        if task is not None:
            lines += [f"*{task.kind}*: {task.summary}", ""]
            sample = task.records[0]
            lines += ["Sample record (as uploaded):", "", "```json", _json(sample), "```", ""]
        lines += [f"Phase **{res.status.phase}**: {res.status.message}", ""]
        m = res.metrics
        if m is None:
            continue
        png = out_dir / f"{res.name}.png"
        if plot_curves(m, res.name, png):
            lines += [f"![loss curves of {res.name}]({png.name})", ""]
        else:
            lines += ["(install matplotlib, e.g. `pip install 'finetune-operator[dev]'`, for the "
                      "loss curves)", ""]
        em = m.exact_match
        lead = em.headline() if em else None
        if em and lead:  # the comparison against the strongest reference leads
            lines += [f"- **{lead}**"]
            lines += [f"- baseline {b.label}: exact match {b.exact_match:.2f}"
                      + (f" (expected {b.expected_exact_match:.2f})"
                         if b.expected_exact_match is not None else "")
                      for b in em.baselines]
        lines += [f"- eval loss {m.base_eval_loss:.4f} (base) -> {m.eval_loss:.4f} (tuned), "
                  f"improvement {m.improvement:+.1%}",
                  f"- exact match {em.base:.0%} -> {em.tuned:.0%} on {em.samples} validation records"
                  + (f", tuned 95% interval {em.tuned_interval}" if em.tuned_interval else "")
                  if em else "- exact match: not measured",
                  f"- best step {m.best_step}, epochs run {m.epochs_run}, stopped early: "
                  f"{'yes' if m.stopped_early else 'no'}, overfit gap {m.overfit_gap:.4f}",
                  f"- adapter: `{m.adapter_uri}`"]
        if m.budget:
            lines.append("- training budget: " + ", ".join(f"{k}={v}" for k, v in m.budget.items()
                                                           if not isinstance(v, (dict, list))))
        lines.append("")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _json(record: Any) -> str:
    import json

    return json.dumps(record, indent=2, ensure_ascii=False)
