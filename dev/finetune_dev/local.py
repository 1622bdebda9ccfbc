"""`finetune run --local`: the cluster's steps on one machine, with the trainer in a local process.

Same modules as the operator and the trainer image, in the same order: prepare_run ->
render_axolotl_config -> config written to the run prefix -> `python -m finetune_trainer` (the
Job's command) -> metrics.json -> status (local_status, built with the operator's functions).
Nothing here trains or evaluates by itself, so what a local run shows is what a cluster run does.

Safe to repeat and to interrupt: prepare_run reuses a split whose files still match the
manifest's sha256; a run counts as done only when its COMPLETE marker (written last by the
trainer) is there, and a forced rerun removes that marker before training starts, so Ctrl-C at
any moment never leaves a run a later invocation would take as complete. A run stopped during
training resumes from its last complete checkpoint when started again (the trainer does it);
`--force` deletes the checkpoints first, so it trains from step 0.
"""

from __future__ import annotations

import importlib.util
import shutil
import signal
import sys
import tempfile
import time
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from finetune_contract import (EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, Manifest,
                               Metrics, RunLayout, one_line)
from .local_status import LocalStatus, Row, format_table, row_for
from .local_trainer import Progress, default_profile, run_trainer, tail, trainer_env
from finetune_operator import policy, transitions
from finetune_operator import reasons as R
from finetune_operator.resources import child_name
from finetune_operator.spec import ConditionType, FineTuneTaskStatus, JobStatus, SpecError
from finetune_operator.status import now_iso
from finetune_contract.storage import Credentials, Storage, StorageError, is_s3, parse_s3
from finetune_contract.world import World

METRICS_MAX_BYTES = 8 * 1024 * 1024


class BadInput(Exception):
    """A problem with what the user gave us (exit 2); the message is the whole story."""


@dataclass
class TaskResult:
    """One task's outcome: what the table, the demo report and the benchmark read."""

    name: str
    namespace: str
    layout: RunLayout
    status: FineTuneTaskStatus
    manifest: Manifest | None = None
    metrics: Metrics | None = None
    wall_s: float = 0.0
    reused: bool = False
    exit_code: int = EXIT_OK
    log_path: str | None = None
    row: Row = field(init=False)

    def __post_init__(self) -> None:
        self.row = row_for(self.name, self.status, self.manifest, self.metrics, self.wall_s,
                           self.reused)


# ---- storage helpers ----------------------------------------------------------------------


def remove(storage: Storage, uri: str) -> None:
    """Delete one object or file if present (Storage has no delete: the operator never needs one)."""
    if is_s3(uri):
        loc = parse_s3(uri)
        storage._call(uri, storage.client.delete_object, Bucket=loc.bucket, Key=loc.key)
    else:
        Path(uri).unlink(missing_ok=True)


def remove_prefix(storage: Storage, prefix: str) -> None:
    """Delete every object or file under `prefix` (none there is fine)."""
    if not is_s3(prefix) and not Path(prefix).is_dir():
        return
    for obj in storage.list(prefix):
        remove(storage, obj.uri)


def completed_metrics(storage: Storage, layout: RunLayout) -> Metrics | None:
    """The run's metrics if, and only if, the trainer finished it (COMPLETE marker present)."""
    if not storage.exists(layout.complete_marker) or not storage.exists(layout.metrics):
        return None
    try:
        m = Metrics.model_validate_json(storage.read_text(layout.metrics, METRICS_MAX_BYTES))
    except ValueError:
        return None
    return m if m.run_id == layout.run_id else None


# ---- one task -----------------------------------------------------------------------------


def _storage(spec: Any) -> Storage:
    return Storage(endpoint=spec.storage.endpoint, credentials=Credentials.from_env(),
                   region=spec.storage.region)


def run_task(task: Any, *, output: str | None, profile: str | None, force: bool,
             say: Callable[[str], None], rules: policy.Policy | None = None) -> TaskResult:
    """Prepare, render, train and report one task; never raises for expected failures.

    Every status change is a `finetune_operator.transitions` function, called where
    reconcile.py calls it, so the run ends where a cluster run would: Failed on a policy
    violation (`rules`, default from the FINETUNE_* env as `finetune render` reads it) before
    anything is read, Skipped for too few samples or `spec.infrequent`, Suspended with
    `spec.suspend` before the trainer starts."""
    from finetune_operator.prepare import PrepareError, prepare_run
    from finetune_operator.render import render_axolotl_config

    spec = task.spec
    run_id = spec.run_id()
    layout = RunLayout(root=output or spec.output.uri, namespace=task.namespace, task=task.name,
                       run_id=run_id)
    ls = LocalStatus(run_id)
    start = time.monotonic()

    def result(**kw: Any) -> TaskResult:
        return TaskResult(task.name, task.namespace, layout, ls.status,
                          wall_s=time.monotonic() - start, **kw)

    def failed(cond_type: ConditionType, reason: str, message: str, code: int,
               **kw: Any) -> TaskResult:
        ls.end(transitions.fail(ls.status, cond_type, reason, message, ls.at()))
        return result(exit_code=code, **kw)

    say(f"{task.namespace}/{task.name}: run {run_id} at {layout.prefix}")
    violation = policy.check_spec(spec, rules or policy.from_env(local=True))
    if violation is not None:
        return failed("DataReady", R.POLICY_VIOLATION, violation.message, EXIT_BAD_INPUT)
    storage = _storage(spec)
    ls.step(transitions.preparing(ls.status, run_id, spec.dataset.uri, ls.at()))
    try:
        manifest = prepare_run(spec, layout, storage)
    except PrepareError as err:
        ending = ls.end(transitions.data_not_prepared(ls.status, err.reason, str(err), ls.at()))
        if ending.phase == "Skipped":
            return result()
        return result(exit_code=EXIT_FAILED if err.transient else EXIT_BAD_INPUT)
    except StorageError as err:
        return failed("DataReady", R.STORAGE, str(err),
                      EXIT_FAILED if err.transient else EXIT_BAD_INPUT)
    ls.step(transitions.prepared(ls.status, manifest, layout, ls.at()))
    say(f"  data: {manifest.train_samples} train / {manifest.validation_samples} validation, "
        f"{manifest.dropped.total()} dropped, split sha256 {manifest.train.sha256[:12]}")
    skipped = transitions.skip_before_training(spec, ls.status, ls.at())
    if skipped is not None:
        ls.end(skipped)
        return result(manifest=manifest)

    job = JobStatus(name=child_name(task.name, run_id), config_map=child_name(task.name, run_id))
    launched = f"local trainer process started (Job {job.name} on a cluster)"
    done = None if force else completed_metrics(storage, layout)
    if done is not None:
        say("  training: reusing the complete run (--force retrains)")
        ls.step(transitions.rendered(ls.status, f"config written to {layout.config}", ls.at()))
        ls.step(transitions.launched(ls.status, job.model_copy(update={"start_time": now_iso()}),
                                     launched, ls.at()))
        ls.end(transitions.succeed(ls.status, done, ls.at(), job=_completed(ls.status.job)))
        res = result(manifest=manifest, metrics=done, reused=True)
        res.wall_s = done.wall_seconds
        res.row = row_for(task.name, res.status, manifest, done, done.wall_seconds, True)
        return res

    profile = profile or default_profile(spec)
    try:
        config = render_axolotl_config(spec, manifest, layout, profile=profile)  # type: ignore[arg-type]
    except (ValueError, TypeError, KeyError) as err:
        return failed("ConfigRendered", R.INVALID_CONFIG,
                      f"{one_line(str(err))}; check spec.training", EXIT_BAD_INPUT,
                      manifest=manifest)
    text = yaml.safe_dump(config, sort_keys=False)
    work = Path(tempfile.mkdtemp(prefix=f"finetune-{task.name}-{run_id}-"))
    config_path = work / "axolotl.yaml"  # stands in for the Job's mounted ConfigMap
    config_path.write_text(text)
    try:
        remove(storage, layout.complete_marker)  # a forced rerun is not complete until it ends
        if force:  # retrain from step 0: the earlier training's checkpoints are not resumed
            remove_prefix(storage, layout.checkpoints)
            remove(storage, layout.progress)
        storage.write_text(layout.config, text, "application/yaml")
    except StorageError as err:
        return failed("ConfigRendered", R.STORAGE, str(err), EXIT_FAILED, manifest=manifest)
    ls.step(transitions.rendered(ls.status, f"config written to {layout.config}", ls.at()))
    if spec.suspend:
        shutil.rmtree(work, ignore_errors=True)
        ls.step(transitions.suspended_before_launch(ls.status, ls.at()))
        return result(manifest=manifest)
    ls.step(transitions.launched(ls.status, job.model_copy(update={"start_time": now_iso()}),
                                 launched, ls.at()))
    say(f"  training ({profile} profile, log {work / 'trainer.log'})")

    env = trainer_env(storage.endpoint, spec.base_model.name, local_world(task, run_id))
    outcome = run_trainer(layout, config_path, profile, work, env, Progress(task.name))
    if outcome.interrupted:
        shutil.rmtree(work, ignore_errors=True)  # the user stopped it: no scratch left behind
        return failed("Trained", R.INTERRUPTED, f"interrupted: {layout.prefix} has no COMPLETE "
                      "marker, so the next run trains again (the prepared split is reused)",
                      EXIT_INTERRUPTED, manifest=manifest)
    metrics = completed_metrics(storage, layout) if outcome.returncode == 0 else None
    if metrics is None:
        term = outcome.termination
        if term is not None and not term.ok:
            reason, message = term.reason, term.message
        elif outcome.returncode == 0:
            reason, message = R.METRICS_MISSING, (f"the trainer exited 0 but {layout.metrics} or "
                                                  f"{layout.complete_marker} is missing")
        else:
            reason = R.TRAINER_FAILED
            message = (f"trainer exited {outcome.returncode}; last output: "
                       f"{one_line(tail(outcome.log_path), 200)}")
        code = EXIT_BAD_INPUT if outcome.returncode == EXIT_BAD_INPUT else EXIT_FAILED
        return failed("Trained", reason, f"{message} (log: {outcome.log_path})", code,
                      manifest=manifest, log_path=str(outcome.log_path))
    ls.end(transitions.succeed(ls.status, metrics, ls.at(), job=_completed(ls.status.job)))
    shutil.rmtree(work, ignore_errors=True)
    return result(manifest=manifest, metrics=metrics)


def _completed(job: JobStatus | None) -> JobStatus | None:
    """The local stand-in's JobStatus, finished now (a Job's completionTime on a cluster)."""
    return job.model_copy(update={"completion_time": now_iso()}) if job else None


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Treat SIGTERM (`timeout`, `kill`, a CI cancel) like Ctrl-C: stop the trainer cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---- the command --------------------------------------------------------------------------


def local_world(task: Any, run_id: str = "finetune") -> World:
    """The run's world on this machine: one node, `spec.resources.processesPerNode` training
    processes (torchrun, gloo on CPUs), 1 when unset: not world_shape()'s one per GPU, since a
    local run trains on the CPUs unless asked otherwise. More nodes are bad input."""
    res = task.spec.resources
    if (res.nodes or 1) > 1:
        raise BadInput(f"{task.source}: task {task.namespace}/{task.name} asks for "
                       f"spec.resources.nodes {res.nodes}, but a local run has one node; use "
                       "processesPerNode for several processes here, or run it on a cluster")
    return World(nodes=1, processes_per_node=res.processes_per_node or 1, run_id=run_id)


def load_all(task_paths: list[str]) -> list[Any]:
    from finetune_operator.taskfile import load_tasks

    tasks = [t for p in task_paths for t in load_tasks(p)]
    seen: set[tuple[str, str]] = set()
    for t in tasks:
        if (t.namespace, t.name) in seen:
            raise BadInput(f"{t.source}: task {t.namespace}/{t.name} appears twice")
        seen.add((t.namespace, t.name))
        local_world(t)  # refused before anything runs
    return tasks


def print_status(res: TaskResult, out: TextIO | None = None) -> None:
    out = out or sys.stdout  # per call, not bound at import (a replaced stdout would linger)
    out.write(f"# {res.namespace}/{res.name}\n")
    out.write(yaml.safe_dump({"status": res.status.wire()}, sort_keys=False))


def run_tasks(task_paths: list[str], *, output: str | None = None, profile: str | None = None,
              force: bool = False, out: TextIO | None = None,
              say: Callable[[str], None] | None = None) -> list[TaskResult]:
    """Run every task in the files; raise BadInput/SpecError only before anything ran."""
    out = out or sys.stdout
    tasks = load_all(task_paths)
    if importlib.util.find_spec("finetune_trainer") is None:
        raise BadInput("the trainer is not installed here: pip install 'finetune-operator[trainer]'")
    try:
        rules = policy.from_env(local=True)
    except policy.PolicyError as err:
        raise BadInput(str(err)) from None
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    results = []
    for task in tasks:
        res = run_task(task, output=output, profile=profile, force=force, say=say, rules=rules)
        results.append(res)
        print_status(res, out)
        if res.status.phase in ("Failed", "Skipped", "Suspended"):
            say(f"  {res.status.phase.lower()}: {res.status.message}")
        if res.exit_code == EXIT_INTERRUPTED:
            break
    out.write("\n" + format_table([r.row for r in results]) + "\n")
    out.flush()
    return results


def run_local(task_paths: list[str], *, output: str | None = None, profile: str | None = None,
              force: bool = False) -> int:
    """The `finetune run --local` command: 0 all succeeded, skipped or suspended, 2 bad input,
    1 other failures, 130 interrupted. Bad input prints one line, never a traceback."""
    try:
        with interrupt_on_sigterm():
            results = run_tasks(list(task_paths), output=output, profile=profile, force=force)
    except (BadInput, SpecError, StorageError) as err:
        print(f"finetune run: {one_line(str(err))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("finetune run: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    codes = [r.exit_code for r in results]
    for code in (EXIT_INTERRUPTED, EXIT_FAILED, EXIT_BAD_INPUT):
        if code in codes:
            return code
    return EXIT_OK
