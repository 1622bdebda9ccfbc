"""`make bench-quality`: do our training defaults reach the top on every task, untuned?

Nine synthetic task families, 150 records each (120 train / 30 validation), on the real
SmolLM2-135M-Instruct taken from PyPI: demo_tasks' five (few-label classification, extraction to
JSON, date normalisation, a short rewrite, yes/no questions) and task_families' four that the
defaults were never tuned on (JSON with optional fields, 12 imbalanced labels, number and unit
formatting, a rewrite in English or French). Each runs through the local runner (the same code
as a cluster run) with our defaults (no spec.training at all) and with the fixed hand config
that issue 7 measured (LoRA r16, packing, masked inputs, lr 5e-4, 3 epochs, patience 2).
Base loss and exact match come from the same run's metrics.json.

Target: exact match >= 0.95 (or the task-aware equivalent: macro-F1, field accuracy or
character similarity) on every family with the defaults, never below the hand config, tuned
loss below base. Two checks of the verdict (issue 18): a task whose labels are random
(`random-labels`, defaults only) must end noGain naming a trivial baseline, and a learnable
family's EM interval must have its lower bound above every baseline.

This is a benchmark, not a test: it prints the table, the mean and minimum over the families
and the wall time, writes them to out/bench-quality/results.md, and exits 0 unless a run failed
(with --check: also when the target or a check is missed). Data and runs live in local folders
under out/bench-quality/; complete runs are reused on a second invocation unless --force.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Any

from finetune_dev import demo_tasks, task_families
from finetune_dev.local import EXIT_INTERRUPTED, TaskResult, run_tasks
from finetune_dev.smollm import ensure_smollm2
from finetune_contract import Metrics
from finetune_contract.storage import Storage

TARGET_EM = 0.95
HAND_CONFIG: dict[str, Any] = {
    "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
    "samplePacking": True,
    "trainOnInputs": False,
    "learningRate": 5.0e-4,
    "epochs": 3,
    "earlyStoppingPatience": 2,
}
VARIANTS = ("defaults", "hand")
CHECK_TASKS = tuple(task_families.CHECKS)  # defaults only: there is nothing to compare


def _em(r: TaskResult | None, which: str) -> float | None:
    m = r.metrics if r else None
    if m is None or m.exact_match is None:
        return None
    return m.exact_match.base if which == "base" else m.exact_match.tuned


def _aware(r: TaskResult | None, which: str = "tuned") -> float | None:
    """The task-aware headline (macro-F1, field accuracy, character similarity)."""
    m = r.metrics if r else None
    s = m.exact_match.scores if m and m.exact_match else None
    return None if s is None else (s.base if which == "base" else s.tuned).headline


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def above_baselines(m: Metrics | None) -> bool | None:
    """Issue 18's learnable check: the tuned EM interval's lower bound is above every
    baseline's exact match. None without exact match or baselines."""
    em = m.exact_match if m else None
    if em is None or em.tuned_interval is None or not em.baselines:
        return None
    return em.tuned_interval.low > max(b.exact_match for b in em.baselines)


def random_check(r: TaskResult | None) -> str:
    """`met` when the random-label task ends noGain against a named trivial baseline."""
    m = r.metrics if r else None
    if m is None:
        return "not run" if r is None else "failed"
    c = m.exact_match.comparison if m.exact_match else None
    if not m.verdicts.no_gain:
        return "MISS: not noGain"
    if c is None or c.against == "base":
        return "MISS: no baseline named"
    return f"met (no gain over {c.label})"


def target_verdict(d: TaskResult | None, h: TaskResult | None) -> str:
    """`met`, or what misses the target: EM (or the task-aware equivalent) >= 0.95, never below
    the hand config, loss < base, and a verdict that is not noGain; a miss the trainer itself
    called noGain says so."""
    dm = d.metrics if d else None
    if dm is None:
        return "not run" if d is None else f"failed: {d.status.message}"[:60]
    d_em, h_em, aware = _em(d, "tuned"), _em(h, "tuned"), _aware(d)
    misses = []
    if (d_em is None or d_em < TARGET_EM) and (aware is None or aware < TARGET_EM):
        misses.append(f"EM<{TARGET_EM:.2f}")
    if d_em is not None and h_em is not None and d_em < h_em:
        misses.append("below hand")
    if dm.eval_loss >= dm.base_eval_loss:
        misses.append("loss>=base")
    if not misses and dm.verdicts.no_gain:
        misses.append("noGain")  # a score that no paired test backs is not a target met
    if not misses:
        return "met"
    return "MISS: " + ", ".join(misses) + (" (verdict noGain)" if dm.verdicts.no_gain
                                           and "noGain" not in misses else "")


def _tokens(m: Metrics | None) -> str:
    """'1320/420 counted': the answer tokens the budget used, and the other count."""
    b = m.budget if m else {}
    est, cnt, used = b.get("answerTokensEstimated"), b.get("answerTokensCounted"), b.get("answerTokensUsed")
    if est is None or cnt is None:
        return "-"
    return f"{cnt}/{est} ({used})"


def table(tasks: list[demo_tasks.DemoTask], results: dict[tuple[str, str], TaskResult]) -> str:
    head = ["task", "kind", "base loss", "base EM", "defaults loss", "defaults EM",
            "task-aware base -> tuned", "steps run/budget", "answer tokens counted/est.",
            "defaults wall s", "hand loss", "hand EM", "hand wall s", "EM low > baselines",
            "verdict", "target"]
    rows = []
    for t in tasks:
        d, h = results.get((t.name, "defaults")), results.get((t.name, "hand"))
        base = d or h
        bm = base.metrics if base else None
        dm, hm = (d.metrics if d else None), (h.metrics if h else None)
        h_em = _em(h, "tuned")
        em = dm.exact_match if dm else None
        scores = em.scores if em else None
        aware = (f"{_f(scores.base.headline, '.2f')} -> {scores.compact()}" if scores else "-")
        budget_steps = dm.budget.get("maxSteps") if dm and dm.budget else None
        ran = dm.eval_history[-1].step if dm and dm.eval_history else None
        steps = None if budget_steps is None else f"{ran if ran is not None else '?'}/{budget_steps}"
        above = above_baselines(dm)
        verdict = "-" if dm is None else (
            (em.headline() or "") if em else ("noGain" if dm.verdicts.no_gain else "ok"))
        target = random_check(d) if t.name in CHECK_TASKS else target_verdict(d, h)
        rows.append([t.name, t.kind.split(" (")[0], _f(bm.base_eval_loss if bm else None, ".3f"),
                     _f(_em(base, "base"), ".0%"), _f(dm.eval_loss if dm else None, ".3f"),
                     em.compact() if em else "-", aware, steps or "-", _tokens(dm),
                     _f(d.wall_s if d else None, ".0f"), _f(hm.eval_loss if hm else None, ".3f"),
                     _f(h_em, ".0%"), _f(h.wall_s if h else None, ".0f"),
                     "-" if above is None else ("yes" if above else "no"), verdict, target])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _stats(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "-"
    return f"mean {sum(got) / len(got):.3f}, min {min(got):.3f} (over {len(got)})"


def summary(tasks: list[demo_tasks.DemoTask], results: dict[tuple[str, str], TaskResult]) -> str:
    """Mean and minimum over the families (the checks excluded), wall time, and the checks."""
    fams = [t.name for t in tasks if t.name not in CHECK_TASKS]
    d = [results.get((n, "defaults")) for n in fams]
    h = [results.get((n, "hand")) for n in fams]
    lines = [f"- defaults exact match: {_stats([_em(r, 'tuned') for r in d])}",
             f"- defaults task-aware headline: {_stats([_aware(r) for r in d])}",
             f"- hand config exact match: {_stats([_em(r, 'tuned') for r in h])}",
             f"- base exact match: {_stats([_em(r, 'base') for r in d])}",
             f"- wall s per task, defaults: {_stats([r.wall_s if r else None for r in d])}; "
             f"hand: {_stats([r.wall_s if r else None for r in h])}"]
    met = sum(target_verdict(results.get((n, "defaults")), results.get((n, "hand"))) == "met"
              for n in fams)
    lines.append(f"- target met on {met} of {len(fams)} families")
    above = [above_baselines(r.metrics if r else None) for r in d]
    lines.append(f"- learnable check (EM interval low > every baseline): "
                 f"{sum(a is True for a in above)} of {sum(a is not None for a in above)} families")
    for name in CHECK_TASKS:
        if (name, "defaults") in results:
            lines.append(f"- {name}: {random_check(results[(name, 'defaults')])}")
    return "\n".join(lines)


def failed_checks(tasks: list[demo_tasks.DemoTask],
                  results: dict[tuple[str, str], TaskResult]) -> list[str]:
    """What --check fails on: a family missing the target, a random-label task that is not
    noGain against a baseline, a run of the families where no EM interval clears the baselines."""
    out = []
    for t in tasks:
        d, h = results.get((t.name, "defaults")), results.get((t.name, "hand"))
        if t.name in CHECK_TASKS:
            if not random_check(d).startswith("met"):
                out.append(t.name)
        elif target_verdict(d, h) != "met":
            out.append(t.name)
    above = [above_baselines(results[(t.name, "defaults")].metrics)
             for t in tasks if t.name not in CHECK_TASKS and (t.name, "defaults") in results]
    if above and not any(above):
        out.append("learnable check")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The four new families and the random-label check first: should the run be cut short,
    # the figures nobody has yet come first.
    order = tuple(task_families.NEW_FAMILIES) + CHECK_TASKS + tuple(demo_tasks.GENERATORS)
    parser.add_argument("--tasks", default=",".join(order),
                        help="comma-separated subset (CI runs one small task)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--records", type=int, default=demo_tasks.DEFAULT_RECORDS)
    parser.add_argument("--dir", default="out/bench-quality")
    parser.add_argument("--force", action="store_true", help="retrain complete runs")
    parser.add_argument("--model", help="base model folder (default: SmolLM2-135M-Instruct from PyPI)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a task misses the target (CI's one-task smoke run)")
    args = parser.parse_args(argv)
    root = Path(args.dir).resolve()
    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = ([n for n in names if n not in task_families.ALL_GENERATORS]
               + [v for v in variants if v not in VARIANTS])
    if unknown:
        print(f"bench-quality: unknown task or variant: {', '.join(unknown)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    model = args.model or str(ensure_smollm2())
    tasks = [task_families.generate(n, args.records) for n in names]
    storage = Storage()
    yamls: dict[str, list[Path]] = {}
    runs: dict[str, list[demo_tasks.DemoTask]] = {}
    for variant in variants:
        runs[variant] = [t for t in tasks if variant == "defaults" or t.name not in CHECK_TASKS]
        yamls[variant] = demo_tasks.write_tasks(
            runs[variant], storage, data_root=str(root / "data"), output_uri=str(root / "runs"),
            base_model=model, yaml_dir=root / "tasks", namespace="bench",
            training=HAND_CONFIG if variant == "hand" else None,
            suffix="" if variant == "defaults" else "-hand")
    results: dict[tuple[str, str], TaskResult] = {}
    report = root / "results.md"
    # Defaults first: they are what the target is about, should the run be cut short.
    for variant in variants:
        for task, path in zip(runs[variant], yamls[variant]):
            print(f"\n=== {task.name} / {variant} ({time.monotonic() - started:.0f} s elapsed)",
                  flush=True)
            [res] = run_tasks([str(path)], force=args.force, out=io.StringIO())
            results[(task.name, variant)] = res
            print(f"    {res.status.phase}: {res.status.message} ({res.wall_s:.0f} s)", flush=True)
            text = table(tasks, results) + "\n\n" + summary(tasks, results)
            report.write_text(f"# bench-quality\n\nModel: `{model}`\n\n{text}\n\nWall time so far: "
                              f"{time.monotonic() - started:.0f} s\n")
            if res.exit_code == EXIT_INTERRUPTED:
                print(text)
                return 130
    wall = time.monotonic() - started
    text = table(tasks, results) + "\n\n" + summary(tasks, results)
    print("\n" + text)
    print(f"\nwall time: {wall:.0f} s ({wall / 60:.1f} min); table in {report}")
    report.write_text(f"# bench-quality\n\nModel: `{model}`\n\n{text}\n\nWall time: {wall:.0f} s\n")
    if not all(r.metrics is not None for r in results.values()):
        return 1
    if args.check:
        missed = failed_checks(tasks, results)
        if missed:
            print(f"bench-quality: target missed on {', '.join(missed)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
