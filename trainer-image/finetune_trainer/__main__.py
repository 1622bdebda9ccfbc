"""`python -m finetune_trainer --run-uri PREFIX`: the trainer Job's entrypoint (and the local runner's).

Steps: fetch (verified; the last complete checkpoint too, to resume) -> evaluate base -> train
with Axolotl (a checkpoint to S3 at each evaluation) -> evaluate the best adapter with the same
evaluator -> upload adapter, metrics.json, COMPLETE -> termination message. progress.json
follows the run throughout.
Exit codes are the contract's: EXIT_OK; EXIT_BAD_INPUT (no retry: the Job's podFailurePolicy
fails it); EXIT_FAILED anything else. Every failure is one line on stderr and in the termination
log; the full log stays in the work dir.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_contract import (EXIT_FAILED, EXIT_OK, EXIT_TERMINATED, OFFLINE_ENV, TRAINER_ENV,
                               MeasuredBudget, RunLayout)

from .errors import TrainerError, bad_input


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="finetune_trainer", description=__doc__.splitlines()[0])
    p.add_argument("--run-uri", required=True, help="The run prefix (s3:// or a local directory)")
    p.add_argument("--config", help="Axolotl config; default <run-uri>config/axolotl.yaml")
    p.add_argument("--profile", choices=["gpu", "cpu"], help="Default: gpu when CUDA is present")
    p.add_argument("--termination-log", default="/dev/termination-log")
    p.add_argument("--work-dir", help="Scratch directory (default: a fresh temp dir)")
    return p.parse_args(argv)


def write_termination(path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError:
        pass  # not in a pod (no /dev/termination-log): stderr still has the line


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(TRAINER_ENV)
    # SIGTERM (pod deletion, local runner) unwinds like Ctrl-C so the Axolotl child is reaped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_TERMINATED))
    from finetune_contract import TerminationMessage, one_line
    from finetune_contract.storage import StorageError

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="finetune-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        layout = _layout(args.run_uri)
        metrics = run(args, layout, work)
        if metrics is None:  # a node other than 0: it trained its share; node 0 reports
            print("finetune-trainer: this node's share of the training is done",
                  file=sys.stderr, flush=True)
            return EXIT_OK
    except (TrainerError, StorageError) as err:
        reason = getattr(err, "reason", "Storage")
        code = err.exit_code if isinstance(err, TrainerError) else EXIT_FAILED
        message = TerminationMessage(ok=False, reason=reason, message=str(err))
        write_termination(args.termination_log, message.encode())
        print(f"finetune-trainer: {reason}: {one_line(str(err))}", file=sys.stderr, flush=True)
        return code
    except Exception as err:  # noqa: BLE001 - last resort: one line out, traceback to a file
        (work / "traceback.txt").write_text(traceback.format_exc())
        text = f"{type(err).__name__}: {err} (traceback in {work / 'traceback.txt'})"
        write_termination(args.termination_log,
                          TerminationMessage(ok=False, reason="Internal", message=text).encode())
        print(f"finetune-trainer: Internal: {one_line(text)}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    from .report import headline

    summary = headline(metrics)
    write_termination(args.termination_log, TerminationMessage(
        ok=True, reason="Succeeded", message=summary, base_eval_loss=metrics.base_eval_loss,
        eval_loss=metrics.eval_loss, metrics_uri=layout.metrics).encode())
    print(f"finetune-trainer: {summary}", file=sys.stderr, flush=True)
    return EXIT_OK


def _layout(run_uri: str) -> RunLayout:
    try:
        return RunLayout.from_prefix(run_uri)
    except ValueError as err:
        raise bad_input("BadRunUri", f"--run-uri: {err}") from None


def run(args: argparse.Namespace, layout: RunLayout, work: Path):  # type: ignore[no-untyped-def]
    from finetune_contract.storage import Storage

    from finetune_contract.tracker import utc_now

    from . import (baselines, evaluate, fetch, progress_file, report, resume, scoring, search,
                   train, world_run)

    world = world_run.world_from_env()
    if not world.is_leader:
        return _follow(args, layout, work, world)
    started = time.monotonic()
    clock = train.StageClock()
    storage = Storage()
    live = progress_file.ProgressFile.for_run(storage, layout)
    train.listeners[:] = [live.update]  # one run per process: progress.json is this run's
    clock.enter("fetch", step=0, maxSteps=0)
    inputs = fetch.fetch_run(storage, layout, args.config, work)
    # The final training resumes from the last complete checkpoint (search candidates never do).
    resumed = None if inputs.search else resume.choose(storage, layout, work / "out")
    history = (resume.record(storage, layout, resumed.step, utc_now()) if resumed
               else resume.previous(storage, layout))
    if resumed:
        fetch.log(f"resuming from checkpoint step-{resumed.step} ({layout.checkpoint(resumed.step)}),"
                  f" resume {history.count} of this run")
        live.tracker.seed(resumed.eval_history(), resumed.step)
    shape = inputs.manifest.record_shape
    model_name = str(inputs.config.get("base_model") or "")
    if not model_name:
        raise bad_input("BadConfig", "the config has no base_model")
    model_dir = fetch.fetch_model(storage, model_name, str(inputs.config.get("revision_of_model") or ""),
                                  work)
    os.environ.update(OFFLINE_ENV)  # everything is local from here on
    tokenizer_dir, notes = fetch.prepare_tokenizer(model_dir, shape, work)

    profile = _profile(args)
    scored_as = evaluate.scoring_for(inputs.config, profile)  # base and tuned alike
    fetch.log(f"scoring: {scored_as.why}")
    sched = _schedule(inputs, tokenizer_dir, notes, profile, world)
    tokenizer, encoded_train, budget, measured = (sched.tokenizer, sched.encoded_train,
                                                  sched.budget, sched.measured)
    seq_len, configured, earliest = sched.seq_len, sched.configured, sched.earliest

    max_steps = int(inputs.config.get("max_steps") or 0)
    clock.enter("evaluate-base", step=0, maxSteps=max_steps)
    base = evaluate.evaluate(model_dir, tokenizer, inputs.validation_records, shape,
                             scoring=scored_as)
    plan = inputs.search
    outcome, trained_idx, extra = None, range(len(encoded_train)), {}
    clock.enter("search" if plan else "train", step=resumed.step if resumed else 0,
                maxSteps=max_steps, resumedFromStep=resumed.step if resumed else None)
    if plan:
        outcome = search.run_search(plan, inputs.config, records=inputs.train_records, shape=shape,
                                    model_dir=model_dir, tokenizer=tokenizer,
                                    tokenizer_dir=tokenizer_dir, work=work, profile=profile,
                                    earliest_stop_step=earliest, scoring=scored_as)
        result, cfg, trained_idx = outcome.result, outcome.config, outcome.fit_indices
        extra = {layout.selection: outcome.selection_jsonl}
    else:
        cfg = _training_config(inputs, model_dir, tokenizer_dir, work, profile, resumed)
        result = train.run_axolotl(cfg, work, earliest_stop_step=earliest,
                                   checkpoint_run=layout.prefix, world=world)
    step = int(result.state.get("global_step") or 0)
    clock.enter("evaluate-tuned", step=step, maxSteps=max_steps)
    tuned = evaluate.evaluate(model_dir, tokenizer, inputs.validation_records, shape,
                              adapter_dir=result.best_checkpoint, scoring=scored_as,
                              with_exact_match=base.exact_match is not None)
    real_tokens = sum(n for n in (len(encoded_train[i].input_ids) for i in trained_idx)
                      if not seq_len or n <= seq_len)
    # metrics.json `budget`: the operator's budget with what the trainer fitted and measured.
    reported = ({"measured": measured.wire()} if budget is None else budget.model_copy(update={
        "measured": measured, "sequence_len_fitted": seq_len if seq_len != configured else None,
    }).wire())
    scored = (baselines.baselines(inputs.train_records, inputs.validation_records)
              if tuned.correct is not None else None)
    scores = (scoring.task_scores(inputs.train_records, inputs.validation_records, base.answers,
                                  tuned.answers) if base.answers and tuned.answers else None)
    metrics = report.build_metrics(
        run_id=inputs.manifest.run_id, base=base, tuned=tuned, state=result.state, config=cfg,
        budget=reported, wall_seconds=time.monotonic() - started, adapter_uri=layout.adapter,
        adapter_digest=report.adapter_digest(result.best_checkpoint), real_train_tokens=real_tokens,
        search=outcome.report if outcome else None, stage_seconds=clock.seconds(),
        baselines=scored, scores=scores)
    metrics = metrics.model_copy(update={"resumed_from_step": resumed.step if resumed else None,
                                         "resume_count": history.count,
                                         "world_size": world.size, "nodes": world.nodes,
                                         "processes_per_node": world.processes_per_node,
                                         "sharding": _sharding(cfg)})
    clock.enter("upload", step=step, maxSteps=max_steps)
    report.upload(storage, layout, result.best_checkpoint, metrics, extra)
    clock.enter("done", step=step, maxSteps=max_steps)
    live.flush()
    return metrics


@dataclass
class _Schedule:
    tokenizer: Any
    encoded_train: list[Any]
    budget: Any
    measured: MeasuredBudget
    seq_len: int
    configured: int
    earliest: int


def _profile(args: argparse.Namespace) -> str:
    import torch

    return args.profile or ("gpu" if torch.cuda.is_available() else "cpu")


def _schedule(inputs: Any, tokenizer_dir: Path, notes: list[str], profile: str,
              world: Any) -> _Schedule:
    """Fit sequence_len and the step schedule to the tokens counted with the model's tokenizer,
    then to the world size; updates inputs.config. Every node runs it on the same inputs, so all
    processes of a run agree on the schedule without a message between them."""
    from transformers import AutoTokenizer

    from . import evaluate, recount, train, world_run

    shape = inputs.manifest.record_shape
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    try:
        encoded_train = [evaluate.encode(tokenizer, r, shape) for r in inputs.train_records]
        encoded_validation = [evaluate.encode(tokenizer, r, shape) for r in inputs.validation_records]
    except Exception as err:  # noqa: BLE001 - jinja raises its own types (e.g. role order)
        raise bad_input("BadChatTemplate", f"the base model's chat template cannot render "
                                           f"a record: {err}") from None
    budget = inputs.budget
    configured = int(inputs.config.get("sequence_len") or 0)
    longest = max((len(e.input_ids) for e in encoded_train + encoded_validation), default=0)
    seq_len = budget.fitted_sequence_len(configured, longest) if budget else configured
    if seq_len != configured:
        print(f"finetune-trainer: sequence_len {configured} (estimated from characters) raised "
              f"to {seq_len} to fit every record measured with the tokenizer",
              file=sys.stderr, flush=True)
        inputs.config["sequence_len"] = seq_len
    measured = _measured(encoded_train, seq_len, notes, profile, train.min_delta())
    if budget:  # the schedule from the answer tokens counted here, not the render's estimate
        budget, updates = recount.apply(budget, measured.answer_tokens, inputs.config)
        inputs.config.update(updates)
    inputs.config.update(world_run.scale_schedule(inputs.config, world))
    earliest = world_run.scale_step(budget.earliest_stop_step if budget else 0, world)
    return _Schedule(tokenizer, encoded_train, budget, measured, seq_len, configured, earliest)


def _sharding(cfg: dict[str, Any]) -> str:
    if cfg.get("fsdp_config"):
        return "fsdp"
    stage = ((cfg.get("deepspeed") or {}).get("zero_optimization") or {}).get("stage")
    return f"deepspeed-zero{stage}" if stage else "none"


def _training_config(inputs: Any, model_dir: Path, tokenizer_dir: Path, work: Path, profile: str,
                     resumed: Any) -> dict[str, Any]:
    """Axolotl's config for this pod: the same on every node, so their processes agree."""
    from . import train

    cfg = train.local_config(inputs.config, model_dir=model_dir, tokenizer_dir=tokenizer_dir,
                             train_parquet=inputs.train_parquet,
                             validation_parquet=inputs.validation_parquet, work=work,
                             profile=profile)
    if resumed:
        cfg["resume_from_checkpoint"] = str(resumed.folder)
    return cfg


def _follow(args: argparse.Namespace, layout: RunLayout, work: Path, world: Any) -> None:
    """A node other than 0: fetch what training reads, resume from the same checkpoint as node 0
    and train its share under torchrun. No evaluation, no upload, no metrics: node 0's job."""
    from finetune_contract.storage import Storage

    from . import fetch, resume, train

    storage = Storage()
    inputs = fetch.fetch_run(storage, layout, args.config, work)
    if inputs.search:
        raise bad_input("BadWorld", "spec.training.search runs on one node only")
    resumed = resume.choose(storage, layout, work / "out")
    model_dir = fetch.fetch_model(storage, str(inputs.config.get("base_model") or ""),
                                  str(inputs.config.get("revision_of_model") or ""), work)
    os.environ.update(OFFLINE_ENV)
    tokenizer_dir, notes = fetch.prepare_tokenizer(model_dir, inputs.manifest.record_shape, work)
    profile = _profile(args)
    sched = _schedule(inputs, tokenizer_dir, notes, profile, world)
    cfg = _training_config(inputs, model_dir, tokenizer_dir, work, profile, resumed)
    train.launch_axolotl(cfg, work, earliest_stop_step=sched.earliest, world=world)


def _measured(encoded: list, seq_len: int, notes: list[str], profile: str,  # type: ignore[type-arg]
              min_delta: float) -> MeasuredBudget:
    """Budget facts measured with the real tokenizer (the render only estimated them)."""
    lengths = sorted(len(e.input_ids) for e in encoded)
    answers = sum(sum(1 for x in e.labels if x != -100) for e in encoded)
    over = sum(1 for n in lengths if seq_len and n > seq_len)
    if over:
        print(f"finetune-trainer: {over} train record(s) longer than sequence_len {seq_len} "
              "are dropped by axolotl", file=sys.stderr, flush=True)
    return MeasuredBudget(
        record_tokens_p50=lengths[len(lengths) // 2],
        record_tokens_p95=lengths[int(0.95 * (len(lengths) - 1))], record_tokens_max=lengths[-1],
        answer_tokens=answers, records_over_sequence_len=over, tokenizer_notes=notes,
        profile=profile, early_stopping_min_delta=min_delta)


if __name__ == "__main__":
    sys.exit(main())
