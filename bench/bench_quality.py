"""`make bench-quality`: do our training defaults reach the top on every task, untuned?

Five synthetic tasks of different kinds (finetune_dev.demo_tasks.BENCH_TASKS: few-label
classification with one-word answers, extraction to JSON, date normalisation, a short rewrite,
yes/no questions), 150 records each (120 train / 30 validation), on the real
SmolLM2-135M-Instruct taken from PyPI. Each task runs twice through the local runner (the same
code as a cluster run): once with our defaults (no spec.training at all) and once with the
fixed hand config that issue 7 measured (LoRA r16, packing, masked inputs, lr 5e-4, 3 epochs,
patience 2), passed as spec.training overrides. Base loss and exact match come from the same
run's metrics.json (the trainer evaluates the base model on the same validation split).

Target: exact match >= 0.95 on every task with the defaults, never below the hand config, tuned
loss below base everywhere. This is a benchmark, not a test: it prints the table and the wall
time, writes them to out/bench-quality/results.md, and exits 0 unless a run failed.
Data and runs live in local folders under out/bench-quality/ (no S3 server needed); complete
runs are reused on a second invocation unless --force.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Any

from finetune_dev import demo_tasks
from finetune_dev.local import EXIT_INTERRUPTED, TaskResult, run_tasks
from finetune_dev.smollm import ensure_smollm2
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


def _em(r: TaskResult | None, which: str) -> float | None:
    m = r.metrics if r else None
    if m is None or m.exact_match is None:
        return None
    return m.exact_match.base if which == "base" else m.exact_match.tuned


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def target_verdict(d: TaskResult | None, h: TaskResult | None) -> str:
    """`met`, or what misses the target: EM >= 0.95, never below the hand config, loss < base."""
    dm = d.metrics if d else None
    if dm is None:
        return "not run" if d is None else f"failed: {d.status.message}"[:60]
    d_em, h_em = _em(d, "tuned"), _em(h, "tuned")
    misses = []
    if d_em is None or d_em < TARGET_EM:
        misses.append(f"EM<{TARGET_EM:.2f}")
    if d_em is not None and h_em is not None and d_em < h_em:
        misses.append("below hand")
    if dm.eval_loss >= dm.base_eval_loss:
        misses.append("loss>=base")
    return "met" if not misses else "MISS: " + ", ".join(misses)


def table(tasks: list[demo_tasks.DemoTask], results: dict[tuple[str, str], TaskResult]) -> str:
    head = ["task", "kind", "base loss", "base EM", "defaults loss", "defaults EM", "defaults steps run/budget",
            "defaults wall", "hand loss", "hand EM", "hand wall", "target"]
    rows = []
    for t in tasks:
        d, h = results.get((t.name, "defaults")), results.get((t.name, "hand"))
        base = d or h
        bm = base.metrics if base else None
        dm, hm = (d.metrics if d else None), (h.metrics if h else None)
        d_em, h_em = _em(d, "tuned"), _em(h, "tuned")
        verdict = target_verdict(d, h)
        budget_steps = dm.budget.get("maxSteps") if dm and dm.budget else None
        ran = dm.eval_history[-1].step if dm and dm.eval_history else None
        steps = None if budget_steps is None else f"{ran if ran is not None else '?'}/{budget_steps}"
        rows.append([t.name, t.kind.split(" (")[0], _f(bm.base_eval_loss if bm else None, ".3f"),
                     _f(_em(base, "base"), ".0%"), _f(dm.eval_loss if dm else None, ".3f"),
                     _f(d_em, ".0%"), steps or "-",
                     _f(d.wall_s if d else None, ".0f"), _f(hm.eval_loss if hm else None, ".3f"),
                     _f(h_em, ".0%"), _f(h.wall_s if h else None, ".0f"), verdict])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(demo_tasks.BENCH_TASKS),
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
    unknown = [n for n in names if n not in demo_tasks.GENERATORS] + [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"bench-quality: unknown task or variant: {', '.join(unknown)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    model = args.model or str(ensure_smollm2())
    tasks = [demo_tasks.generate(n, args.records) for n in names]
    storage = Storage()
    yamls: dict[str, list[Path]] = {}
    for variant in variants:
        yamls[variant] = demo_tasks.write_tasks(
            tasks, storage, data_root=str(root / "data"), output_uri=str(root / "runs"),
            base_model=model, yaml_dir=root / "tasks", namespace="bench",
            training=HAND_CONFIG if variant == "hand" else None,
            suffix="" if variant == "defaults" else "-hand")
    results: dict[tuple[str, str], TaskResult] = {}
    report = root / "results.md"
    # Defaults first: they are what the target is about, should the run be cut short.
    for variant in variants:
        for task, path in zip(tasks, yamls[variant]):
            print(f"\n=== {task.name} / {variant} ({time.monotonic() - started:.0f} s elapsed)",
                  flush=True)
            [res] = run_tasks([str(path)], force=args.force, out=io.StringIO())
            results[(task.name, variant)] = res
            print(f"    {res.status.phase}: {res.status.message} ({res.wall_s:.0f} s)", flush=True)
            text = table(tasks, results)
            report.write_text(f"# bench-quality\n\nModel: `{model}`\n\n{text}\n\nWall time so far: "
                              f"{time.monotonic() - started:.0f} s\n")
            if res.exit_code == EXIT_INTERRUPTED:
                print(text)
                return 130
    wall = time.monotonic() - started
    print("\n" + table(tasks, results))
    print(f"\nwall time: {wall:.0f} s ({wall / 60:.1f} min); table in {report}")
    report.write_text(f"# bench-quality\n\nModel: `{model}`\n\n{table(tasks, results)}\n\n"
                      f"Wall time: {wall:.0f} s\n")
    if not all(r.metrics is not None for r in results.values()):
        return 1
    if args.check:
        missed = [t.name for t in tasks
                  if target_verdict(results.get((t.name, "defaults")), results.get((t.name, "hand"))) != "met"]
        if missed:
            print(f"bench-quality: target missed on {', '.join(missed)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
