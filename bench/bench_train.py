"""`make bench-train`: the same task trained with and without sample packing, real Axolotl on CPU.

For each length profile (short records of widely varying length, and near-uniform ones) the
config comes from our own renderer with `samplePacking` forced on or off (so the packed run uses
the renderer's pack length and micro-batch); evaluation is removed so only training is timed.
Reports the real-token fraction (real tokens / token slots computed, from Axolotl's own
`tokens/total` counter) and real tokens per second, and the packed/unpacked ratio.

    python bench/bench_train.py [--steps 30] [--lengths varying,uniform] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lengths", default="varying,uniform")
    parser.add_argument("--keep", help="Keep the work dir here (default: a temp dir, removed)")
    args = parser.parse_args()
    model = build_tiny_model(REPO / ".cache" / "tinymodel")
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-train-"))
    rows = []
    try:
        for lengths in args.lengths.split(","):
            for packing in (False, True):
                rows.append(run(model, work, lengths, packing, args.steps))
                print(f"done: {lengths} packing={packing}", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
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
