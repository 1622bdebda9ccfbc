"""`make bench-train`: the same task trained with and without sample packing, real Axolotl on CPU.

For each length profile (short records of widely varying length, and near-uniform ones) the
config comes from our own renderer with `samplePacking` forced on or off (so the packed run uses
the renderer's pack length and micro-batch); evaluation is removed so only training is timed.
Reports the real-token fraction (real tokens / token slots computed, from Axolotl's own
`tokens/total` counter) and real tokens per second, and the packed/unpacked ratio.

The interruption row (issue 15): the whole trainer (`python -m finetune_trainer`, checkpoints
and all, on a local run folder) once uninterrupted, and once SIGKILLed (its process group, as a
lost node would) when its progress lines pass 50% of the steps, then started again on the same
run, which resumes from its last complete checkpoint. The wall times compare against the target
of 1.2x the uninterrupted run.

    python bench/bench_train.py [--steps 30] [--lengths varying,uniform] [--keep DIR]
                                [--rows packing,interruption] [--interrupt-steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO / "trainer-image"))

from finetune_contract import FileDigest, LengthStats, Manifest, RunLayout  # noqa: E402
from finetune_operator.render import render_axolotl_config  # noqa: E402
from finetune_operator.spec import parse_spec  # noqa: E402
from finetune_dev.tinymodel import build_tiny_model, synthetic_task  # noqa: E402

FILLER = {"varying": (1, 60), "uniform": (20, 22)}
EVAL_KEYS = ("test_datasets", "eval_steps", "early_stopping_patience", "load_best_model_at_end",
             "metric_for_best_model", "greater_is_better", "eval_sample_packing")
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "WANDB_MODE": "disabled", "AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1",
       "HF_HUB_DISABLE_TELEMETRY": "1"}


def _pct(values: list[int], q: float) -> int:
    values = sorted(values)
    return values[int(q * (len(values) - 1))]


def prepare(work: Path, lengths: str, n: int = 240) -> tuple[Manifest, RunLayout, list[dict]]:
    records = synthetic_task(n, seed=11, filler=FILLER[lengths])
    layout = RunLayout(root=str(work / "runs"), namespace="bench", task=lengths, run_id="r1")
    chars = [sum(len(m["content"]) for m in r["messages"]) for r in records]
    digest = FileDigest(uri=layout.train, sha256="0" * 64, records=n, bytes=0)
    manifest = Manifest(
        run_id="r1", created_at="2026-01-01T00:00:00Z", seed=1, validation_fraction=0.1,
        format="chat", record_shape="messages", sources=[], records_read=n, records_kept=n,
        train_samples=n, validation_samples=10,
        lengths=LengthStats(total_p50=_pct(chars, 0.5), total_p95=_pct(chars, 0.95),
                            total_max=max(chars),
                            output_chars_train=sum(len(r["messages"][-1]["content"]) for r in records)),
        train=digest, validation=digest)
    return manifest, layout, records


def real_tokens(model: Path, records: list[dict], seq_len: int) -> int:
    from transformers import AutoTokenizer

    from finetune_trainer.evaluate import encode

    tok = AutoTokenizer.from_pretrained(model)
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>"
    lengths = [len(encode(tok, r, "messages").input_ids) for r in records]
    return sum(n for n in lengths if n <= seq_len)


def run(model: Path, work: Path, lengths: str, packing: bool, steps: int) -> dict:
    from finetune_trainer.fetch import write_parquet

    manifest, layout, records = prepare(work, lengths)
    spec = parse_spec({"baseModel": {"name": str(model)}, "dataset": {"uri": "s3://bench/x/"},
                       "output": {"uri": "s3://bench/out/"},
                       "training": {"samplePacking": packing, "maxSteps": steps,
                                    "learningRate": 1e-3}})
    cfg = render_axolotl_config(spec, manifest, layout, profile="cpu")
    cfg.pop("finetune_budget")
    for key in EVAL_KEYS:
        cfg.pop(key, None)
    run_dir = work / f"{lengths}-{'packed' if packing else 'unpacked'}"
    parquet = write_parquet(records, "messages", run_dir / "train.parquet")
    tokdir = run_dir / "tokenizer"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    tok.pad_token = "<|endoftext|>"
    tok.save_pretrained(tokdir)
    cfg.update(base_model=str(model), tokenizer_config=str(tokdir), save_steps=steps,
               output_dir=str(run_dir / "out"), dataset_prepared_path=str(run_dir / "prepared"))
    cfg["datasets"] = [dict(cfg["datasets"][0], path=str(parquet), ds_type="parquet")]
    (run_dir / "axolotl.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "axolotl.cli.main", "train",
                           str(run_dir / "axolotl.yaml"), "--launcher", "python"],
                          capture_output=True, text=True, env={**os.environ, **ENV}, cwd=run_dir)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"axolotl failed ({lengths}, packing={packing}): "
                         + (proc.stdout + proc.stderr)[-1500:])
    ckpt = sorted((run_dir / "out").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))[-1]
    state = json.loads((ckpt / "trainer_state.json").read_text())
    logs = state["log_history"]
    computed = next(e["tokens/total"] for e in reversed(logs) if "tokens/total" in e)
    # train_runtime is logged after the last checkpoint is written: read it from the output.
    found = re.findall(r"'train_runtime': '?([0-9.]+)", proc.stdout + proc.stderr)
    runtime = float(found[-1]) if found else wall
    real = state["epoch"] * real_tokens(model, records, cfg["sequence_len"])
    return {"lengths": lengths, "packing": packing, "sequence_len": cfg["sequence_len"],
            "micro_batch": cfg["micro_batch_size"], "steps": state["global_step"],
            "epochs": round(state["epoch"], 2), "real": int(real), "computed": int(computed),
            "fraction": real / computed, "train_s": runtime, "wall_s": wall,
            "tok_s": real / runtime}


RESUME_TARGET = 1.2  # issue 15: an interrupted run costs under 1.2x the uninterrupted one
KILL_AT = 0.5         # share of the steps done when the trainer is killed


def prepare_trainer_run(model: Path, work: Path, name: str, steps: int) -> RunLayout:
    """A run folder as the operator leaves it: the prepared split, manifest and config."""
    from finetune_contract.storage import Storage
    from finetune_operator.prepare import prepare_run

    raw = work / "raw" / "triage.jsonl"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text("".join(json.dumps(r) + "\n" for r in synthetic_task(150, seed=1)))
    spec = parse_spec({"baseModel": {"name": str(model)},
                       "dataset": {"uri": str(raw), "validationFraction": 0.2, "seed": 7},
                       "output": {"uri": str(work / "runs")},
                       "training": {"maxSteps": steps, "learningRate": 2e-3,
                                    "earlyStoppingPatience": 100}}, local=True)
    layout = RunLayout(root=str(work / "runs"), namespace="bench", task=name, run_id=spec.run_id())
    storage = Storage()
    manifest = prepare_run(spec, layout, storage)
    config = render_axolotl_config(spec, manifest, layout, profile="cpu")
    storage.write_text(layout.config, yaml.safe_dump(config, sort_keys=False))
    return layout


def _session_cpu(pid: int) -> float:
    """CPU seconds of every live process in the session `pid` leads (the trainer, Axolotl)."""
    import psutil  # comes with the training stack (accelerate)

    total = 0.0
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == pid:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        except (OSError, psutil.Error):
            continue
    return total


def trainer(layout: RunLayout, work: Path, kill_at: int | None = None) -> dict:
    """Run the trainer; SIGKILL its process group once a progress line reaches step `kill_at`.
    Wall and CPU seconds, the start-up before the first training step, exit code, output."""
    import resource

    from finetune_contract import ProgressEvent

    cmd = [sys.executable, "-m", "finetune_trainer", "--run-uri", layout.prefix, "--profile", "cpu",
           "--termination-log", str(work / "termination-log"), "--work-dir", str(work)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **ENV}, start_new_session=True)
    out, first_step, entry, cpu = [], None, None, None
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line)
        event = ProgressEvent.parse(line)
        if event is None or event.stage != "train":
            continue
        entry = event.step if entry is None else entry
        if first_step is None and (event.step or 0) > (entry or 0):
            first_step = time.monotonic() - started
        if kill_at is not None and (event.step or 0) >= kill_at:
            cpu = _session_cpu(proc.pid)
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    wall = time.monotonic() - started
    if cpu is None:
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "startup": first_step or wall, "rc": proc.returncode,
            "out": "".join(out)}


def interruption(model: Path, work: Path, steps: int) -> dict:
    """An uninterrupted run against one killed at 50% of its steps and resumed."""
    from finetune_contract import Metrics

    rows = {}
    for name in ("whole", "resumed"):
        layout = prepare_trainer_run(model, work / name, name, steps)
        if name == "whole":
            parts = [trainer(layout, work / name / "t1")]
        else:
            killed = trainer(layout, work / name / "t1", kill_at=int(steps * KILL_AT))
            if killed["rc"] != -signal.SIGKILL:
                raise SystemExit(f"the trainer was not killed (exit {killed['rc']}): "
                                 + killed["out"][-1500:])
            parts = [killed, trainer(layout, work / name / "t2")]
        if parts[-1]["rc"] != 0:
            raise SystemExit(f"trainer failed ({name}): {parts[-1]['out'][-1500:]}")
        metrics = Metrics.model_validate_json(Path(layout.metrics).read_text())
        rows[name] = {"parts": parts, "metrics": metrics,
                      "wall": sum(p["wall"] for p in parts), "cpu": sum(p["cpu"] for p in parts)}
        print(f"done: interruption {name}", file=sys.stderr, flush=True)
    return rows


def print_interruption(rows: dict, steps: int) -> None:
    whole, resumed = rows["whole"], rows["resumed"]
    m, w = resumed["metrics"], whole["metrics"]
    print(f"\ninterruption: killed at {int(steps * KILL_AT)}/{steps} steps, resumed from step "
          f"{m.resumed_from_step} (resumeCount {m.resume_count}); start-up = seconds before "
          "the first training step (imports, data, base model, base evaluation)")
    head = (f"{'run':16} {'wall s':>7} {'cpu s':>7} {'start-up s':>10} {'eval loss':>10}")
    print(head)
    print("-" * len(head))
    print(f"{'whole':16} {whole['wall']:>7.1f} {whole['cpu']:>7.1f} "
          f"{whole['parts'][0]['startup']:>10.1f} {w.eval_loss:>10.4f}")
    for label, part in zip(("killed pod", "resumed pod"), resumed["parts"]):
        print(f"{label:16} {part['wall']:>7.1f} {part['cpu']:>7.1f} {part['startup']:>10.1f} "
              f"{'-' if label == 'killed pod' else f'{m.eval_loss:.4f}':>10}")
    print(f"{'interrupted':16} {resumed['wall']:>7.1f} {resumed['cpu']:>7.1f}")
    for what in ("wall", "cpu"):
        ratio = resumed[what] / whole[what]
        verdict = "met" if ratio < RESUME_TARGET else "NOT met"
        print(f"interrupted/whole {what} time x{ratio:.2f} (target < x{RESUME_TARGET}: {verdict})")
    print(f"stage seconds, whole: {w.stage_seconds}; resumed pod: {m.stage_seconds}")
    # Where the ratio comes from: each pod pays the start-up S once, and the steps after the
    # last checkpoint (a share r of the loop L) are trained twice: (2S + (1 + r)L) / (S + L).
    start_up = whole["parts"][0]["startup"]
    loop = whole["wall"] - start_up
    redone = (int(steps * KILL_AT) - (m.resumed_from_step or 0)) / steps
    if redone < RESUME_TARGET - 1:
        need = (2 - RESUME_TARGET) * start_up / (RESUME_TARGET - 1 - redone)
        print(f"start-up S {start_up:.0f}s, rest L {loop:.0f}s, redone r {redone:.0%} of the steps: "
              f"x{RESUME_TARGET} holds once L > {need:.0f}s ({need / max(start_up, 1e-9):.0f}x "
              "the start-up)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lengths", default="varying,uniform")
    parser.add_argument("--keep", help="Keep the work dir here (default: a temp dir, removed)")
    parser.add_argument("--rows", default="packing,interruption")
    parser.add_argument("--interrupt-steps", type=int, default=40)
    args = parser.parse_args()
    wanted = args.rows.split(",")
    model = build_tiny_model(REPO / ".cache" / "tinymodel")
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-train-"))
    rows, resumed = [], None
    try:
        for lengths in args.lengths.split(",") if "packing" in wanted else []:
            for packing in (False, True):
                rows.append(run(model, work, lengths, packing, args.steps))
                print(f"done: {lengths} packing={packing}", file=sys.stderr, flush=True)
        if "interruption" in wanted:
            resumed = interruption(model, work / "interruption", args.interrupt_steps)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if resumed is not None:
        print_interruption(resumed, args.interrupt_steps)
    if not rows:
        return 0
    head = (f"{'lengths':9} {'packing':8} {'seq_len':>7} {'mbs':>4} {'steps':>5} {'epochs':>6} "
            f"{'real tok':>9} {'computed':>9} {'real frac':>9} {'train s':>8} {'real tok/s':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['lengths']:9} {'on' if r['packing'] else 'off':8} {r['sequence_len']:>7} "
              f"{r['micro_batch']:>4} {r['steps']:>5} {r['epochs']:>6} {r['real']:>9} "
              f"{r['computed']:>9} {r['fraction']:>9.3f} {r['train_s']:>8.1f} {r['tok_s']:>10.0f}")
    for lengths in args.lengths.split(","):
        off, on = (next(r for r in rows if r["lengths"] == lengths and r["packing"] is p)
                   for p in (False, True))
        print(f"{lengths}: packed/unpacked real tokens/s x{on['tok_s'] / off['tok_s']:.2f}, "
              f"real-token fraction {off['fraction']:.3f} -> {on['fraction']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
