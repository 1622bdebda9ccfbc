"""`make bench-scale`: the same task through the whole trainer with 1 and with 2 processes.

The trainer (`python -m finetune_trainer`, as a Job's pod runs it) on a local run folder, once
with the default world (one process, `axolotl train --launcher python`) and once with the world
env of `spec.resources.processesPerNode: 2` (FINETUNE_PROCESSES_PER_NODE=2: torchrun
--nproc-per-node 2, gloo DDP on the CPUs), the same split, config and step budget. The trainer
divides the schedule by the world size, so both rows train the same tokens: 2 processes take
half the optimizer steps, each step one micro-batch per process. The 1-process row is the
baseline, measured in the same invocation.

Per row: wall seconds of the trainer; start-up (seconds before the first training step: imports,
data, base model, base evaluation); the training loop's seconds (Axolotl's own `train_runtime`,
the slowest rank's, evaluations inside the loop included; wall minus start-up where it is
missing); train tokens (metrics.json `trainedTokens`: real tokens of the records trained times
the epochs run); tokens/s = train tokens / loop seconds; the tuned eval loss. Then the ratio of
2 processes to 1 for wall time and tokens/s.

The threads: a process uses one torch thread per core by default; torchrun sets
OMP_NUM_THREADS=1 in each process it starts. So the row `1x1` (one process, OMP_NUM_THREADS=1)
is there too: with it, 1 against 2 processes is the same thread count per process, and the
default `1` row shows what one process gets from both cores. A row is PROCESSES[xTHREADS].

    python bench/bench_scale.py [--steps 48] [--rows 1,1x1,2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO / "trainer-image"))
sys.path.insert(0, str(REPO / "bench"))

from bench_train import ENV, prepare_trainer_run  # noqa: E402
from finetune_contract import Metrics, ProgressEvent, RunLayout  # noqa: E402
from finetune_contract.world import World  # noqa: E402
from finetune_dev.tinymodel import build_tiny_model  # noqa: E402

RUNTIME = re.compile(r"'train_runtime': '?([0-9.]+)")
# transformers' own word that it did not wrap the model in DDP: each rank then trains alone on
# the whole data (no gradient all-reduce, no sharded sampler), however many processes started.
NOT_DDP = "parallel_mode != ParallelMode.DISTRIBUTED"


def trainer(layout: RunLayout, work: Path, row: str) -> dict:
    """Run the whole trainer in a world of PROCESSES processes on this node (`row`:
    PROCESSES[xTHREADS], THREADS as OMP_NUM_THREADS)."""
    import resource

    processes, _, threads = row.partition("x")
    world = World(processes_per_node=int(processes), run_id=f"bench-scale-{processes}")
    env = {**os.environ, **ENV, **world.env()}
    if threads:
        env["OMP_NUM_THREADS"] = threads
    cmd = [sys.executable, "-m", "finetune_trainer", "--run-uri", layout.prefix, "--profile", "cpu",
           "--termination-log", str(work / "termination-log"), "--work-dir", str(work / "work")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    out, entry, first_step, steps = [], None, None, None
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line)
        event = ProgressEvent.parse(line)
        if event is not None and event.stage == "evaluate-tuned":
            steps = event.step  # the optimizer steps the loop ran
        if event is None or event.stage != "train":
            continue
        entry = event.step if entry is None else entry
        if first_step is None and (event.step or 0) > (entry or 0):
            first_step = time.monotonic() - started
    proc.wait()
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"trainer failed ({processes} processes, exit {proc.returncode}): "
                         + "".join(out)[-2000:])
    metrics = Metrics.model_validate_json(Path(layout.metrics).read_text())
    log = (work / "work" / "axolotl.log").read_text(errors="replace")
    runtimes = [float(x) for x in RUNTIME.findall(log)]
    startup = first_step or wall
    loop = max(runtimes) if runtimes else wall - startup
    tokens = metrics.trained_tokens or 0
    return {"row": row, "processes": world.size, "world_size": metrics.world_size,
            "steps": steps,
            "epochs": metrics.epochs_run, "wall": wall, "startup": startup, "loop": loop,
            "loop_from": "axolotl" if runtimes else "wall-startup", "ranks": len(runtimes),
            "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "tokens": tokens, "tok_s": tokens / loop if loop > 0 else 0.0,
            "eval_loss": metrics.eval_loss, "base_eval_loss": metrics.base_eval_loss,
            "ddp": world.size == 1 or NOT_DDP not in log,
            "stages": metrics.stage_seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=48,
                        help="Optimizer steps of the one-process schedule (divided by the world)")
    parser.add_argument("--rows", default="1,1x1,2",
                        help="PROCESSES[xTHREADS] per row; the first 1-process row is the baseline")
    parser.add_argument("--keep", help="Keep the work dir here (default: a temp dir, removed)")
    args = parser.parse_args()
    wanted = args.rows.split(",")
    model = build_tiny_model(REPO / ".cache" / "tinymodel")
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-scale-"))
    rows = []
    try:
        for row in wanted:  # one run folder each: the same split and config, no shared checkpoints
            layout = prepare_trainer_run(model, work / f"p{row}", f"p{row}", args.steps)
            rows.append(trainer(layout, work / f"p{row}" / "t", row))
            print(f"done: {row}", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nthe same task (tiny model, 120 train records, {args.steps} steps of one process's "
          f"schedule) through the whole trainer; {os.cpu_count()} CPU cores; loop = Axolotl's "
          "train_runtime (evaluations in the loop included); tokens = metrics.json trainedTokens; "
          "PxT = P processes with OMP_NUM_THREADS=T")
    head = (f"{'processes':>9} {'steps':>5} {'epochs':>6} {'wall s':>7} {'start-up s':>10} "
            f"{'loop s':>7} {'cpu s':>7} {'tokens':>7} {'tok/s':>7} {'eval loss':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['row']:>9} {r['steps'] or '-':>5} {r['epochs'] or 0:>6.2f} "
              f"{r['wall']:>7.1f} {r['startup']:>10.1f} {r['loop']:>7.1f} {r['cpu']:>7.1f} "
              f"{r['tokens']:>7} {r['tok_s']:>7.1f} {r['eval_loss']:>9.4f}")
    for r, base in ((r, b) for r in rows for b in rows
                    if r["processes"] > 1 and b["processes"] == 1):
        print(f"{r['row']} / {base['row']}: wall x{r['wall'] / base['wall']:.2f}, "
              f"loop x{r['loop'] / base['loop']:.2f}, tokens/s x{r['tok_s'] / base['tok_s']:.2f} "
              f"(world size {r['world_size']}, loop from {r['loop_from']} of {r['ranks']} ranks)")
    for r in rows:
        if not r["ddp"]:
            print(f"WARNING {r['row']}: not one DDP group: axolotl.log has "
                  f"transformers' '{NOT_DDP}'; each rank trained the whole schedule alone (no "
                  "gradient all-reduce, no sharded data), so its tokens are one rank's work")
    for r in rows:
        print(f"stage seconds, {r['row']}: {r['stages']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
