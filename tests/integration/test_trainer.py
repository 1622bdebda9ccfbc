"""The trainer end to end: real Axolotl on CPU, a tiny Llama built offline, real SeaweedFS.

What is real: the S3 server (tests/conftest.py), `finetune_operator.prepare.prepare_run` writing
the split and manifest, the rendered config, `python -m finetune_trainer` as a subprocess (the
Job's command), Axolotl training, and an independent transformers+peft script re-measuring the
uploaded adapter. Nothing is mocked. One training run at a time (2 shared cores).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_contract import (PROGRESS_PREFIX, Manifest, Metrics, ProgressEvent, RunLayout,
                               TerminationMessage)
from finetune_operator.prepare import prepare_run
from finetune_operator.render import render_axolotl_config
from finetune_operator.spec import parse_spec
from finetune_contract.storage import Storage
from finetune_dev.tinymodel import build_tiny_model, synthetic_task

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return build_tiny_model(REPO / ".cache" / "tinymodel")


def _env(s3_server: Any) -> dict[str, str]:
    return {**os.environ, "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key, "AWS_ENDPOINT_URL": s3_server.endpoint}


def prepare(storage: Storage, bucket: str, records: list[dict[str, Any]], model: Path, *,
            training: dict[str, Any], fraction: float = 0.2, min_samples: int = 100,
            task: str = "triage") -> tuple[RunLayout, Manifest]:
    """Upload raw records, prepare the run with the real pipeline, render and store the config."""
    raw = f"s3://{bucket}/raw/{task}.jsonl"
    storage.write_text(raw, "".join(json.dumps(r) + "\n" for r in records))
    spec = parse_spec({
        "baseModel": {"name": str(model)},
        "dataset": {"uri": raw, "validationFraction": fraction, "minSamples": min_samples,
                    "seed": 7},
        "output": {"uri": f"s3://{bucket}/runs/"}, "training": training}, local=True)
    layout = RunLayout(root=f"s3://{bucket}/runs", namespace="ns", task=task, run_id=spec.run_id())
    manifest = prepare_run(spec, layout, storage)
    config = render_axolotl_config(spec, manifest, layout, profile="cpu")
    storage.write_text(layout.config, yaml.safe_dump(config, sort_keys=False))
    return layout, manifest


def run_trainer(layout: RunLayout, s3_server: Any, tmp_path: Path,
                timeout: int = 420) -> tuple[int, str, TerminationMessage | None]:
    term = tmp_path / "termination-log"
    proc = subprocess.run(
        [sys.executable, "-m", "finetune_trainer", "--run-uri", layout.prefix, "--profile", "cpu",
         "--termination-log", str(term), "--work-dir", str(tmp_path / "work")],
        env=_env(s3_server), capture_output=True, text=True, timeout=timeout)
    message = TerminationMessage.decode(term.read_text() if term.exists() else None)
    return proc.returncode, proc.stdout + proc.stderr, message


@pytest.mark.slow
@pytest.mark.s3
def test_trainer_beats_the_base_model(storage: Storage, bucket: str, s3_server: Any,
                                      tiny_model: Path, tmp_path: Path) -> None:
    layout, manifest = prepare(storage, bucket, synthetic_task(150, seed=1), tiny_model,
                               training={"learningRate": 2e-3, "maxSteps": 48})
    assert (manifest.train_samples, manifest.validation_samples) == (120, 30)
    rc, out, term = run_trainer(layout, s3_server, tmp_path)
    assert rc == 0, out[-3000:]
    assert term is not None and term.ok and term.reason == "Succeeded"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert storage.exists(layout.adapter + name)
    metrics = Metrics.model_validate_json(storage.read_text(layout.metrics))
    assert storage.exists(layout.complete_marker)
    print(f"\nbase {metrics.base_eval_loss:.4f} tuned {metrics.eval_loss:.4f} "
          f"exact {metrics.exact_match and metrics.exact_match.base} -> "
          f"{metrics.exact_match and metrics.exact_match.tuned} wall {metrics.wall_seconds:.0f}s "
          f"stopped early {metrics.stopped_early} at {metrics.eval_history[-1].step}")
    assert metrics.eval_loss < 0.75 * metrics.base_eval_loss, metrics.to_json()
    assert metrics.validation_samples == 30
    # Not `not noGain`: since issue 18 noGain asks for an exact match beyond the base model AND
    # the trivial baselines by a paired test. Measured on this run: the tiny model learns the
    # answer format in 48 CPU steps, not the labels (EM 0.13 [0.05-0.30] vs the majority
    # label's 0.17, p=0.75), so the verdict is, honestly, noGain; the loss gain over the base
    # is what is asserted above.
    assert metrics.budget["evaluations"] >= 8 and metrics.best_step is not None
    assert len(metrics.eval_history) >= 8 or metrics.stopped_early
    assert metrics.budget["maxSteps"] == 48 and metrics.budget["measured"]["recordsOverSequenceLen"] == 0
    assert any("pad token" in n for n in metrics.budget["measured"]["tokenizerNotes"])
    assert metrics.exact_match is not None and metrics.exact_match.samples == 30
    # Issue 18: a 4-label task's baselines, the 95% intervals and the paired comparison, which
    # the termination message leads with.
    em = metrics.exact_match
    assert em.answer_shape == "labels"
    assert {b.name for b in em.baselines} == {"majorityLabel", "labelPrior"}
    assert em.tuned_interval is not None and em.base_interval is not None
    assert em.tuned_interval.low <= em.tuned <= em.tuned_interval.high
    assert em.comparison is not None and em.comparison.samples == 30
    assert em.comparison.significant == (not metrics.verdicts.no_gain)
    assert term.message.startswith(em.headline() or "-"), term.message
    print(term.message)
    assert 0 < (metrics.packing_efficiency or 0) <= 1
    assert {"axolotl", "torch", "transformers", "peft"} <= set(metrics.versions)
    progress = _progress(out)
    assert {"fetch", "evaluate-base", "train", "evaluate-tuned", "upload", "done"} <= {
        p.stage for p in progress}
    # The training loop's own figures, from our TrainerCallback inside Axolotl: steps moving
    # to the end, the logged loss, and one line per evaluation with the same eval losses
    # metrics.json reports.
    loop = [p for p in progress if p.stage == "train" and p.step]
    last_step = metrics.eval_history[-1].step if metrics.stopped_early else 48
    assert loop and loop[-1].step == last_step and {p.max_steps for p in loop} == {48}
    assert [p.step for p in loop] == sorted(p.step for p in loop), [p.step for p in loop]
    assert loop[-1].loss is not None and loop[-1].epoch
    evals = [(p.step, p.eval_loss) for p in loop if p.eval_loss is not None]
    assert evals == [(e.step, pytest.approx(e.eval_loss, abs=1e-4))
                     for e in metrics.eval_history], (evals, metrics.eval_history)


def _progress(out: str) -> list[ProgressEvent]:
    """The trainer's progress lines; each must parse as the contract's model."""
    lines = [ln for ln in out.splitlines() if ln.startswith(PROGRESS_PREFIX)]
    return [ProgressEvent.model_validate_json(ln[len(PROGRESS_PREFIX):]) for ln in lines]


def _prompts(jsonl_text: str) -> set[str]:
    return {json.dumps(json.loads(line)["messages"][:-1], sort_keys=True)
            for line in jsonl_text.splitlines() if line.strip()}


@pytest.mark.slow
@pytest.mark.s3
def test_search_chooses_on_a_train_slice_and_never_on_the_validation_split(
        storage: Storage, bucket: str, s3_server: Any, tiny_model: Path, tmp_path: Path) -> None:
    # One candidate that learns and one whose rate is too small to move: the slice must tell.
    layout, manifest = prepare(storage, bucket, synthetic_task(150, seed=5), tiny_model,
                               task="search", training={
                                   "maxSteps": 24, "search": {"learningRates": [1e-6, 2e-3]}})
    rc, out, term = run_trainer(layout, s3_server, tmp_path)
    assert rc == 0, out[-3000:]
    metrics = Metrics.model_validate_json(storage.read_text(layout.metrics))
    search = metrics.search
    assert search is not None, metrics.to_json()
    assert (search.fit_samples, search.selection_samples) == (96, 24)
    assert [c.learning_rate for c in search.candidates] == [1e-6, 2e-3]
    losses = [c.selection_loss for c in search.candidates]
    assert search.chosen == 1 and losses[1] < losses[0], losses
    assert all(c.steps_run > 0 and c.wall_seconds > 0 for c in search.candidates)

    # The slice is a part of the train split, shares no prompt with validation, and is the one
    # recorded in metrics.json.
    selection = storage.read_bytes(layout.selection)
    import hashlib

    assert hashlib.sha256(selection).hexdigest() == search.selection_sha256
    chosen_prompts = _prompts(selection.decode())
    assert len(chosen_prompts) == 24
    assert chosen_prompts <= _prompts(storage.read_text(layout.train))
    assert not chosen_prompts & _prompts(storage.read_text(layout.validation))
    assert set(selection.decode().splitlines()) <= set(storage.read_text(layout.train).splitlines())

    # Only the winner met the validation split: its adapter is the shipped one and it beats base.
    assert metrics.eval_loss < metrics.base_eval_loss  # noGain: see test_trainer_beats_the_base_model
    assert metrics.validation_samples == manifest.validation_samples == 30
    assert {"search", "evaluate-base", "evaluate-tuned"} <= set(metrics.stage_seconds)
    progress = _progress(out)
    assert "search" in {p.stage for p in progress}
    # Each candidate's training reports its steps under the search stage (the callback), from
    # its first step to its last.
    runs: list[list[int]] = []
    for p in progress:
        if p.stage == "search" and p.step:
            if not runs or p.step < runs[-1][-1]:
                runs.append([])
            runs[-1].append(p.step)
    assert [(r[0], r[-1]) for r in runs] == [(1, c.steps_run) for c in search.candidates], runs


INDEPENDENT = textwrap.dedent("""
    # Plain transformers + peft, no project code: mean loss over answer tokens + end of turn.
    import json, sys, torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    base, adapter, data = sys.argv[1:4]
    tok = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    total, count = 0.0, 0
    for line in open(data):
        msgs = json.loads(line)["messages"]
        prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(msgs[-1]["content"] + tok.eos_token, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + a])).logits[0, len(p) - 1:-1]
        total += torch.nn.functional.cross_entropy(logits, torch.tensor(a), reduction="sum").item()
        count += len(a)
    print(json.dumps({"loss": total / count, "tokens": count}))
""")


@pytest.mark.slow
@pytest.mark.s3
def test_early_stopping_on_tiny_noisy_data_and_reported_loss_is_the_shipped_adapter(
        storage: Storage, bucket: str, s3_server: Any, tiny_model: Path, tmp_path: Path) -> None:
    records = synthetic_task(40, seed=2)
    rng = random.Random(3)
    for r in records:  # noisy labels: nothing to generalise, only to memorise
        r["messages"][-1]["content"] = rng.choice(["billing", "bug", "login", "other"])
    layout, manifest = prepare(storage, bucket, records, tiny_model, fraction=0.3, min_samples=20,
                               task="noisy", training={"learningRate": 8e-3, "maxSteps": 100,
                                                       "earlyStoppingPatience": 1})
    rc, out, term = run_trainer(layout, s3_server, tmp_path)
    assert rc == 0, out[-3000:]
    metrics = Metrics.model_validate_json(storage.read_text(layout.metrics))
    print("\neval history:", [(e.step, round(e.eval_loss, 4)) for e in metrics.eval_history])
    assert metrics.stopped_early, metrics.to_json()
    assert metrics.overfit_gap >= 0
    # The stop came from a rise (the best is behind the last evaluation) or from a gain under
    # the minimum delta (CPU runs are not bit-repeatable: either can end this noisy run).
    last, earlier = metrics.eval_history[-1], metrics.eval_history[:-1]
    assert metrics.best_step is not None and earlier
    if metrics.best_step == last.step:
        gain = min(e.eval_loss for e in earlier) - last.eval_loss
        assert 0 <= gain < metrics.budget["measured"]["earlyStoppingMinDelta"], metrics.eval_history
    else:
        assert metrics.best_step < last.step
    assert metrics.verdicts.overfit == (metrics.overfit_gap > 0.01 * min(
        e.eval_loss for e in metrics.eval_history))

    adapter = tmp_path / "adapter"
    storage.download_prefix(layout.adapter, adapter)
    data = tmp_path / "validation.jsonl"
    data.write_bytes(storage.read_bytes(layout.validation))
    script = tmp_path / "remeasure.py"
    script.write_text(INDEPENDENT)
    proc = subprocess.run([sys.executable, str(script), str(tiny_model), str(adapter), str(data)],
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    remeasured = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(remeasured["loss"] - metrics.eval_loss) < 1e-3, (remeasured, metrics.eval_loss)


# ---- bad input: exit 2 and one line in the termination message ----------------------------

def _corrupt_split(storage: Storage, layout: RunLayout, tmp: Path) -> str:
    storage.write_text(layout.train, storage.read_text(layout.train) + "\n")
    return "SplitMismatch"


def _model_without_weights(storage: Storage, layout: RunLayout, tmp: Path) -> str:
    empty = tmp / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_text('{"model_type": "llama"}')
    config = yaml.safe_load(storage.read_text(layout.config))
    config["base_model"] = str(empty)
    storage.write_text(layout.config, yaml.safe_dump(config))
    return "NoWeights"


def _chat_without_assistant(storage: Storage, layout: RunLayout, tmp: Path) -> str:
    import hashlib

    lines = storage.read_text(layout.validation).splitlines()
    rec = json.loads(lines[0])
    rec["messages"] = rec["messages"][:1]  # the user turn only: no answer to train on
    lines[0] = json.dumps(rec)
    body = "\n".join(lines) + "\n"
    storage.write_text(layout.validation, body)
    manifest = Manifest.model_validate_json(storage.read_text(layout.manifest))
    manifest.validation.sha256 = hashlib.sha256(body.encode()).hexdigest()
    storage.write_text(layout.manifest, manifest.to_json())
    return "BadRoles"


@pytest.mark.s3
@pytest.mark.parametrize("breaker", [_corrupt_split, _model_without_weights, _chat_without_assistant],
                         ids=["sha-mismatch", "no-weights", "no-assistant-role"])
def test_bad_input_exits_2_with_one_line(storage: Storage, bucket: str, s3_server: Any,
                                         tiny_model: Path, tmp_path: Path, breaker: Any) -> None:
    layout, _ = prepare(storage, bucket, synthetic_task(120, seed=4), tiny_model,
                        training={"maxSteps": 30})
    reason = breaker(storage, layout, tmp_path)
    rc, out, term = run_trainer(layout, s3_server, tmp_path, timeout=120)
    assert rc == 2, out[-2000:]
    assert term is not None and not term.ok and term.reason == reason, term
    assert "\n" not in term.message and len(term.message) <= 400
    assert "Traceback" not in out
    assert not storage.exists(layout.complete_marker)
    assert s3_server.secret_key not in out and s3_server.secret_key not in term.message


@pytest.mark.parametrize("loss, best, step, stops", [
    (0.004, None, 40, True),     # solved: nothing left to gain by more than the minimum delta
    (0.02, 0.003, 40, True),     # an earlier evaluation already solved it
    (0.004, None, 20, False),    # solved, but before the budget's earliest stop step
    (0.02, 0.01, 40, False),     # not solved: patience decides
])
def test_a_solved_run_stops_but_never_before_the_earliest_step(
        loss: float, best: float | None, step: int, stops: bool) -> None:
    from types import SimpleNamespace

    from finetune_trainer.stopping import SolvedStopping

    control = SimpleNamespace(should_training_stop=False)
    SolvedStopping(0.005, earliest_step=36).on_evaluate(
        None, SimpleNamespace(global_step=step, best_metric=best), control,
        metrics={"eval_loss": loss})
    assert control.should_training_stop is stops
