"""Run Axolotl on the local copies and read back what it did.

`axolotl train CONFIG --launcher python` in a subprocess: its memory is gone before the tuned
evaluation loads the model again, and a crash inside it cannot take the trainer's reporting
down with it. Progress comes from our TrainerCallback inside it (progress.py) as the contract's
progress lines (finetune_contract.ProgressEvent), which are passed on to our stdout; the rest of
its output (tqdm bars included) only goes to axolotl.log and the tail kept for error messages.
`trainer_state.json` lives only inside the `checkpoint-N/` folders: the one of the last
checkpoint names the best checkpoint and holds the whole log history.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finetune_contract import CONFIG_KEY_PREFIX, ProgressEvent
from finetune_contract.world import World

from .errors import TrainerError, bad_input

EARLIEST_STOP_ENV = "FINETUNE_EARLIEST_STOP_STEP"  # read by stopping.py inside Axolotl
MIN_DELTA_ENV = "FINETUNE_EARLY_STOPPING_MIN_DELTA"  # read by stopping.py, reported in the budget
PROGRESS_STAGE_ENV = "FINETUNE_PROGRESS_STAGE"  # read by progress.py: the stage its lines name
CHECKPOINT_RUN_ENV = "FINETUNE_CHECKPOINT_RUN_URI"  # read by checkpoints.py: upload to this run
ACCELERATE_USE_CPU_ENV = "ACCELERATE_USE_CPU"  # Accelerate's switch to gloo DDP on CPUs
CPU_PLUGIN = "finetune_trainer.cpu_distributed.CpuDistributedPlugin"
DEFAULT_MIN_DELTA = 0.005
CPU_SAFE = {"bf16": False, "fp16": False, "tf32": False, "attn_implementation": "sdpa",
            "sdpa_varlen": False, "lora_mlp_kernel": False, "lora_qkv_kernel": False,
            "lora_o_kernel": False, "lora_embedding_kernel": False, "load_in_4bit": False,
            "load_in_8bit": False}


# Who else sees each progress line the trainer prints (progress_file.ProgressFile: progress.json).
listeners: list[Callable[[ProgressEvent], None]] = []


def publish(event: ProgressEvent) -> None:
    """Print one progress line and hand it to the listeners."""
    print(event.line(), flush=True)
    for listener in listeners:
        listener(event)


def progress(stage: str, **fields: Any) -> None:
    """One progress line on stdout (the contract's ProgressEvent: stage, step, maxSteps, extras)."""
    publish(ProgressEvent(stage=stage, **fields))


def min_delta() -> float:
    """The early-stopping minimum delta (stopping.py applies it; metrics.json reports it)."""
    return float(os.environ.get(MIN_DELTA_ENV) or DEFAULT_MIN_DELTA)


class StageClock:
    """Seconds per trainer stage (metrics.json `stageSeconds`): where a run's time goes."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.totals: dict[str, float] = {}
        self._stage: str | None = None
        self._since = clock()

    def enter(self, stage: str, **fields: Any) -> None:
        """Close the running stage, start `stage` and report it as progress."""
        self.totals = self.seconds()
        self._stage, self._since = stage, self.clock()
        progress(stage, **fields)

    def seconds(self) -> dict[str, float]:
        """Totals so far, the running stage included up to now."""
        out = dict(self.totals)
        if self._stage is not None:
            out[self._stage] = round(out.get(self._stage, 0.0) + self.clock() - self._since, 2)
        return out


def local_config(config: dict[str, Any], *, model_dir: Path, tokenizer_dir: Path,
                 train_parquet: Path, validation_parquet: Path, work: Path,
                 profile: str) -> dict[str, Any]:
    """The rendered config pointed at local copies; the CPU profile forces CUDA-only keys off."""
    cfg = {k: v for k, v in config.items() if not k.startswith(CONFIG_KEY_PREFIX)}
    cfg["base_model"] = str(model_dir)
    cfg.pop("revision_of_model", None)
    if tokenizer_dir != model_dir:
        cfg["tokenizer_config"] = str(tokenizer_dir)
    for key, path in (("datasets", train_parquet), ("test_datasets", validation_parquet)):
        if not cfg.get(key):
            raise bad_input("BadConfig", f"the config has no {key}")
        cfg[key] = [dict(cfg[key][0], path=str(path), ds_type="parquet")]
    cfg["test_datasets"][0]["split"] = "train"
    # Gains below a minimum delta do not reset the patience, a solved run stops, and Axolotl's
    # step-0 evaluation is skipped (see stopping.py).
    cfg["plugins"] = [*(cfg.get("plugins") or []), "finetune_trainer.stopping.MinDeltaStoppingPlugin"]
    if profile == "cpu":  # more than one process on CPUs needs it (cpu_distributed.py); one does not
        cfg["plugins"].append(CPU_PLUGIN)
    cfg["output_dir"] = str(work / "out")
    cfg["dataset_prepared_path"] = str(work / "prepared")
    if profile == "cpu":
        cfg.update(CPU_SAFE)
        if cfg.get("adapter") == "qlora":
            cfg["adapter"] = "lora"
    return cfg


@dataclass
class TrainResult:
    best_checkpoint: Path
    state: dict[str, Any]
    log_tail: list[str] = field(default_factory=list)


def run_axolotl(cfg: dict[str, Any], work: Path, *, earliest_stop_step: int = 0,
                stage: str = "train", checkpoint_run: str | None = None,
                world: World | None = None) -> TrainResult:
    """Train and read back the best checkpoint; `stage` names the progress lines (a search
    candidate's are "search"); `checkpoint_run` (a run prefix) gets each checkpoint uploaded
    (checkpoints.py). Node 0 only: global rank 0 is the process that saves checkpoints."""
    tail = launch_axolotl(cfg, work, earliest_stop_step=earliest_stop_step, stage=stage,
                          checkpoint_run=checkpoint_run, world=world)
    return read_state(work / "out", tail)


def launch_axolotl(cfg: dict[str, Any], work: Path, *, earliest_stop_step: int = 0,
                   stage: str = "train", checkpoint_run: str | None = None,
                   world: World | None = None) -> list[str]:
    """Run `axolotl train` to its end; the tail of its output. With a `world` of several
    processes it runs under torchrun (the other nodes of a run call this alone)."""
    world = world or World()
    path = work / "axolotl.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "axolotl.cli.main", "train", str(path), *world.launcher_args()]
    # Axolotl starts torchrun by name: the one next to our interpreter.
    path_env = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path_env, EARLIEST_STOP_ENV: str(earliest_stop_step),
           PROGRESS_STAGE_ENV: stage, CHECKPOINT_RUN_ENV: checkpoint_run or ""}
    if world.size > 1 and CPU_PLUGIN in (cfg.get("plugins") or []):
        # Without it Accelerate leaves a CPU run out of DDP: every rank trains alone on all the
        # data (transformers: "process group is initialized, but parallel_mode != DISTRIBUTED").
        env[ACCELERATE_USE_CPU_ENV] = "true"
    tail: collections.deque[str] = collections.deque(maxlen=60)
    with open(work / "axolotl.log", "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                cwd=work, env=env)
        try:
            assert proc.stdout is not None
            follow(proc.stdout, logf, tail)
        finally:
            _reap(proc)  # Ctrl-C or SIGTERM on us must not orphan the training process
        rc = proc.wait()
    if rc != 0:
        raise _axolotl_failure(list(tail), rc)
    return list(tail)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def follow(stream: Any, logf: Any, tail: collections.deque[str]) -> None:
    """Copy Axolotl's output to the log; pass our callback's progress lines on to stdout (they
    are parsed as the contract's model; nothing else of the console is read for progress)."""
    buf = b""
    while True:
        chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(4096)
        logf.write(chunk)
        buf += chunk
        *pieces, buf = re.split(rb"[\r\n]", buf) if chunk else (buf, b"")
        for raw in pieces:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            event = ProgressEvent.parse(line)
            if event is not None:
                publish(event)
            else:
                tail.append(line)
        if not chunk:
            return


def _axolotl_failure(tail: list[str], rc: int) -> TrainerError:
    errors = [ln for ln in tail if re.search(r"(Error|Exception)\b", ln) and "Warning" not in ln]
    line = errors[-1] if errors else (tail[-1] if tail else f"exit status {rc}")
    if "ValidationError" in " ".join(tail[-20:]) or "validation error" in line.lower():
        return bad_input("BadConfig", f"axolotl rejected the config: {line}")
    if "out of memory" in line.lower():
        return TrainerError("OutOfMemory", f"axolotl ran out of memory: {line}")
    return TrainerError("TrainingFailed", f"axolotl exited {rc}: {line}")


def read_state(out_dir: Path, tail: list[str] | None = None) -> TrainResult:
    checkpoints = sorted(out_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not checkpoints:
        raise TrainerError("NoCheckpoint", f"axolotl wrote no checkpoint under {out_dir}")
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    best = state.get("best_model_checkpoint")
    best_dir = out_dir / Path(best).name if best else checkpoints[-1]
    if not (best_dir / "adapter_model.safetensors").is_file():
        raise TrainerError("NoCheckpoint", f"best checkpoint {best_dir.name} has no adapter")
    return TrainResult(best_checkpoint=best_dir, state=state, log_tail=tail or [])
