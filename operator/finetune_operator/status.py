"""Phase and condition transitions of a FineTuneTask's status (pure: no API, no clock reads).

Conditions are keyed by `type` (one entry per type, in a fixed order); a condition's
`lastTransitionTime` moves only when its `status` changes, as Kubernetes conventions ask, so a
repeated reconcile yields an identical status and `status_patch` returns None: nothing is sent.
"""

from __future__ import annotations

import datetime
from typing import Any, Literal

from finetune_contract import Manifest, Metrics, RunLayout, one_line
from . import reasons as R
from .spec import (Condition, ConditionType, DataStatus, FineTuneTaskStatus,
                   MetricsStatus, Phase)

CONDITION_ORDER: tuple[ConditionType, ...] = (
    "DataReady", "ConfigRendered", "JobCreated", "Trained", "Evaluated", "Ready")
FINAL_PHASES: frozenset[str] = frozenset({"Succeeded", "Failed", "Skipped"})
ACTIVE_PHASES: frozenset[str] = frozenset({"Pending", "Preparing", "Training", "Suspended"})
CondStatus = Literal["True", "False", "Unknown"]


def now_iso(moment: datetime.datetime | None = None) -> str:
    """RFC 3339 UTC with second precision, the form Kubernetes writes."""
    moment = moment or datetime.datetime.now(datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def load(raw: dict[str, Any] | None) -> FineTuneTaskStatus:
    """The typed status from the object's `status`; foreign keys (e.g. kopf's) are ignored."""
    raw = dict(raw or {})
    known = {f.alias or n for n, f in FineTuneTaskStatus.model_fields.items()}
    try:
        return FineTuneTaskStatus.model_validate({k: v for k, v in raw.items() if k in known})
    except ValueError:
        # A status we cannot read (hand-edited, older schema): start over rather than crash.
        return FineTuneTaskStatus()


def set_condition(status: FineTuneTaskStatus, type_: ConditionType, value: CondStatus,
                  reason: str, message: str, *, generation: int | None, now: str
                  ) -> FineTuneTaskStatus:
    """Upsert one condition; keep lastTransitionTime unless the status value changed."""
    by_type = {c.type: c for c in status.conditions}
    old = by_type.get(type_)
    since = old.last_transition_time if old is not None and old.status == value else now
    by_type[type_] = Condition(type=type_, status=value, reason=reason,
                               message=one_line(message), last_transition_time=since,
                               observed_generation=generation)
    ordered = [by_type[t] for t in CONDITION_ORDER if t in by_type]
    return status.model_copy(update={"conditions": ordered})


def condition(status: FineTuneTaskStatus, type_: ConditionType) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def is_true(status: FineTuneTaskStatus, type_: ConditionType) -> bool:
    cond = condition(status, type_)
    return cond is not None and cond.status == "True"


def with_phase(status: FineTuneTaskStatus, phase: Phase, message: str, *,
               generation: int | None, now: str | None = None, **fields: Any
               ) -> FineTuneTaskStatus:
    """Set phase, message and observedGeneration (plus any typed fields) in one step.

    Until a run ends, Ready is False with the phase as its reason, so `kubectl wait
    --for=condition=Ready` and dashboards read the same story as the phase. A final phase
    leaves Ready to the caller, which sets it from the outcome.
    """
    if phase not in FINAL_PHASES:
        status = set_condition(status, "Ready", "False", phase, message, generation=generation,
                               now=now or now_iso())
    return status.model_copy(update={"phase": phase, "message": one_line(message),
                                     "observed_generation": generation, **fields})


def new_run(run_id: str, generation: int | None, now: str) -> FineTuneTaskStatus:
    """Fresh status of a new run: nothing of the previous run's results survives."""
    status = FineTuneTaskStatus(phase="Pending", run_id=run_id, observed_generation=generation,
                                message=f"run {run_id} accepted")
    return set_condition(status, "Ready", "False", R.PENDING, "run accepted",
                         generation=generation, now=now)


def run_started_at(status: FineTuneTaskStatus) -> str | None:
    """When this run began: conditions are reset per run, so the oldest one marks it."""
    times = [c.last_transition_time for c in status.conditions]
    return min(times) if times else None


# ---- data ---------------------------------------------------------------------------------


def data_status(manifest: Manifest, layout: RunLayout) -> tuple[DataStatus, str]:
    """status.data of a prepared run and the DataReady message (operator and local runs)."""
    d = manifest.dropped
    data = DataStatus(train_samples=manifest.train_samples,
                      validation_samples=manifest.validation_samples,
                      dropped=d.model_copy(),
                      digest=manifest.digest, manifest_uri=layout.manifest)
    message = (f"{manifest.train_samples} train / {manifest.validation_samples} validation "
               f"samples, {d.total()} dropped")
    return data, message


# ---- verdicts ------------------------------------------------------------------------------

OVERFIT_ADVICE = ("eval loss rose for the whole patience window (overfit gap {gap:.3f}); the best "
                  "checkpoint was kept. Try fewer epochs or a lower learningRate, a smaller lora.r, "
                  "or more varied samples")
NO_GAIN_ADVICE = ("the tuned adapter does not beat the base model (eval loss {tuned:.4f} vs base "
                  "{base:.4f}). Check that the outputs are consistent and the format detected is "
                  "right, add samples, or raise epochs/learningRate; the base may already know it")
NO_GAIN_OVER_BASELINE_ADVICE = ("the adapter is not worth serving: it may have learned the answer "
                                "format, not the task. Try more or cleaner samples, a larger base "
                                "model, or no fine-tune at all (spec.infrequent)")


def metrics_status(m: Metrics) -> MetricsStatus:
    """The figures of metrics.json a person reads in the status; the rest stays in S3."""
    won = m.search.candidates[m.search.chosen] if m.search else None
    em = m.exact_match
    interval = em.tuned_interval if em else None
    best = max(em.baselines, key=lambda b: b.exact_match) if em and em.baselines else None
    return MetricsStatus(
        base_eval_loss=m.base_eval_loss, eval_loss=m.eval_loss, improvement=m.improvement,
        train_loss=m.train_loss, best_step=m.best_step, stopped_early=m.stopped_early,
        overfit_gap=m.overfit_gap,
        exact_match_base=em.base if em else None,
        exact_match=em.tuned if em else None,
        exact_match_low=interval.low if interval else None,
        exact_match_high=interval.high if interval else None,
        best_baseline=best.name if best else None,
        best_baseline_exact_match=best.exact_match if best else None,
        headline=em.headline() if em else None,
        overfit=m.verdicts.overfit, no_gain=m.verdicts.no_gain,
        chosen_learning_rate=won.learning_rate if won else None,
        chosen_lora_r=won.lora_r if won else None,
        resumed_from_step=m.resumed_from_step,
        resume_count=m.resume_count or None,
        **_world(m))


def _world(m: Metrics) -> dict[str, object]:
    """How the run was spread; left out for a one-process run, so its status stays as it was."""
    if m.world_size == 1 and m.sharding == "none":
        return {}
    return {"world_size": m.world_size, "nodes": m.nodes,
            "processes_per_node": m.processes_per_node, "sharding": m.sharding}


def evaluation(m: Metrics) -> tuple[str, str, bool]:
    """(reason, message, ready) of the Evaluated/Ready conditions for a finished run.

    A run with no gain succeeded as a run but its adapter is not worth serving: Ready=False.
    An overfit run kept its best checkpoint, so it is Ready, with advice in the message.
    The message leads with the comparison against the strongest of the base model and the
    trivial baselines (exact match, paired test); the eval loss follows it.
    """
    summary = (f"eval loss {m.eval_loss:.4f} vs base {m.base_eval_loss:.4f} "
               f"({m.improvement:+.1%})")
    lead = m.exact_match.headline() if m.exact_match else None
    if lead:
        summary = f"{lead}; {summary}"
    if m.verdicts.no_gain:
        if lead:
            return R.NO_GAIN, f"{summary}; {NO_GAIN_OVER_BASELINE_ADVICE}", False
        return R.NO_GAIN, NO_GAIN_ADVICE.format(tuned=m.eval_loss, base=m.base_eval_loss), False
    if m.search:
        won = m.search.candidates[m.search.chosen]
        summary += (f"; search chose lr {won.learning_rate:g}, r {won.lora_r} of "
                    f"{len(m.search.candidates)} on a {m.search.selection_samples}-record train slice")
    if m.verdicts.overfit:
        return R.OVERFIT, f"{summary}; " + OVERFIT_ADVICE.format(gap=m.overfit_gap), True
    return R.IMPROVED, summary, True


# ---- patches -------------------------------------------------------------------------------


def wire(status: FineTuneTaskStatus) -> dict[str, Any]:
    return status.wire()


def status_patch(old_raw: dict[str, Any] | None, new: FineTuneTaskStatus) -> dict[str, Any] | None:
    """A JSON merge patch turning the stored status into `new`; None when nothing changed.

    Keys of ours that the new status drops are sent as null (merge-patch deletion), so a new
    run never shows the previous run's metrics. Foreign keys are left alone.
    """
    old = {k: v for k, v in (old_raw or {}).items()}
    target = wire(new)
    ours = {f.alias or n for n, f in FineTuneTaskStatus.model_fields.items()}
    patch: dict[str, Any] = {}
    for key in ours:
        if key in target:
            if old.get(key) != target[key]:
                patch[key] = target[key]
        elif key in old and old[key] is not None:
            patch[key] = None
    return patch or None
