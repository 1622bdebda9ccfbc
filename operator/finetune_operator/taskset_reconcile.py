"""The FineTuneTaskSet controller as plain functions: what the Kopf handlers call, nothing more.

    resync(set)       list the prefix, plan (taskset.py), apply the tasks, delete removed
                      ones, write the set's status: on create/update/resume and on a timer
    task_changed(t)   a generated task changed: roll its set's status up again

Generated tasks are ordinary FineTuneTasks owned by the set (controller ownerReference: the
garbage collector deletes them with the set); the task controller (reconcile.py) runs them
untouched. Deletion of a task removed from the source is safe to repeat (uid precondition)
and never follows an empty or failed listing: a prefix that lists no task keeps the tasks it
had (EmptyPrefix), as a wrong endpoint or prefix looks the same as a wish to delete them all.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from . import API_VERSION, policy
from .kube import ApiError
from .resources import DOMAIN, LABEL_MANAGED_BY, MANAGED_BY
from .spec import FineTuneTaskSpec, StorageSpec
from .status import now_iso
from .taskset import Plan, Problem, discover, plan, rollup
from .taskset_kube import SetKube
from .taskset_spec import (DUPLICATE_NAME, EMPTY_PREFIX, GENERATED, LISTED, MALFORMED_ENTRY,
                           MAX_LISTED, NO_SOURCE, SET_KIND, SOURCE_UNREADABLE,
                           FineTuneTaskSetSpec, FineTuneTaskSetStatus, SetCondition,
                           SetConditionType)
from .taskstate import Context, api
from finetune_contract import one_line
from finetune_contract.storage import Credentials, StorageError

LABEL_SET = f"{DOMAIN}/taskset"
ROLLUP_FIELDS = ("tasks", "counts", "meanImprovement", "minImprovement", "failedTasks")


@dataclass(frozen=True)
class SetRef:
    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: Any) -> SetRef:
        meta = body.get("metadata") or {}
        return cls(meta["name"], meta.get("namespace") or "default", meta.get("uid", ""))

    def owner_reference(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": SET_KIND, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}

    def involved(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": SET_KIND, "name": self.name,
                "namespace": self.namespace, "uid": self.uid}

    @property
    def selector(self) -> str:
        return f"{LABEL_SET}={set_label(self.name)}"


def set_label(name: str) -> str:
    """Label values stop at 63 characters; the owner's uid tells sets with one prefix apart."""
    return name[:63].rstrip("-.") or "x"


@dataclass
class SetContext:
    """The set controller's state in the operator's memo: the shared Context and one lock per set
    (resync and roll-ups of one set never interleave their status writes)."""

    ctx: Context
    _locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    @property
    def api(self) -> SetKube:
        return SetKube(self.ctx.kube)

    def lock(self, ref: SetRef) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((ref.namespace, ref.name), threading.Lock())


# ---- resync --------------------------------------------------------------------------------


def resync(body: Any, sc: SetContext) -> None:
    ref = SetRef.from_body(body)
    spec = FineTuneTaskSetSpec.model_validate(dict(body.get("spec") or {}))
    generation = (body.get("metadata") or {}).get("generation")
    with sc.lock(ref):
        folders, listed = _list_source(ref, spec, sc)
        owned = _owned(ref, sc)
        old = body.get("status") or {}
        if listed.reason == SOURCE_UNREADABLE:  # change nothing until S3 answers again
            _write(ref, sc, old, owned.values(), generation, listed, None)
            return
        wanted = plan(ref.name, spec, folders)
        owned = _apply(ref, wanted, owned, sc)
        if listed.status == "True":  # never delete after an empty listing
            owned = _delete_removed(ref, wanted, owned, sc)
        _write(ref, sc, old, owned.values(), generation, listed, wanted.problems)


def _list_source(ref: SetRef, spec: FineTuneTaskSetSpec, sc: SetContext
                 ) -> tuple[list[str] | None, SetCondition]:
    """The prefix's task folders (None without a prefix) and the SourceListed condition."""
    prefix = spec.source.prefix
    if not prefix:
        return None, _cond("SourceListed", "True", NO_SOURCE, "no prefix: spec.tasks is the list")
    try:
        storage = _storage(ref, spec, sc)
        listing = storage.list(prefix if prefix.endswith("/") else prefix + "/")
    except (StorageError, ValueError) as err:
        return [], _cond("SourceListed", "False", SOURCE_UNREADABLE, one_line(str(err), 300))
    folders = discover(prefix, (o.uri for o in listing))
    if not folders:
        return [], _cond("SourceListed", "False", EMPTY_PREFIX,
                         f"no task folder under {prefix} (each immediate sub-prefix is a task)")
    return folders, _cond("SourceListed", "True", LISTED, f"{len(folders)} task folders")


def _storage(ref: SetRef, spec: FineTuneTaskSetSpec, sc: SetContext) -> Any:
    """The S3 client of the set's default storage, under the same endpoint policy as tasks."""
    storage = StorageSpec.model_validate(spec.defaults.storage or {})
    settings = sc.ctx.settings
    endpoint = storage.endpoint or settings.default_s3_endpoint
    violation = policy.check_endpoint(endpoint, policy.from_settings(settings, local=False))
    if violation is not None:
        raise ValueError(violation.message)
    creds = Credentials()
    if storage.credentials_secret:
        data = api(lambda: sc.ctx.kube.read_secret_data(ref.namespace, storage.credentials_secret))
        if data is None:
            raise ValueError(f"Secret {ref.namespace}/{storage.credentials_secret} not found")
        creds = Credentials.from_secret_data(data, secret_name=storage.credentials_secret)
    return sc.ctx.storage(endpoint, storage.region, creds)


def _owned(ref: SetRef, sc: SetContext) -> dict[str, dict[str, Any]]:
    items = api(lambda: sc.api.list_tasks(ref.namespace, ref.selector))
    return {t["metadata"]["name"]: t for t in items if _owner_uid(t) == ref.uid}


def _owner_uid(task: dict[str, Any]) -> str | None:
    for owner in (task.get("metadata") or {}).get("ownerReferences") or []:
        if owner.get("kind") == SET_KIND and owner.get("controller"):
            return owner.get("uid")
    return None


def task_body(ref: SetRef, name: str, key: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The generated FineTuneTask as the set applies it (every field the set owns)."""
    return {"apiVersion": API_VERSION, "kind": "FineTuneTask",
            "metadata": {"name": name, "namespace": ref.namespace,
                         "labels": {LABEL_SET: set_label(ref.name), LABEL_MANAGED_BY: MANAGED_BY},
                         "annotations": {f"{DOMAIN}/taskset-key": key},
                         "ownerReferences": [ref.owner_reference()]},
            "spec": spec}


def _same(current: dict[str, Any], body: dict[str, Any]) -> bool:
    """Nothing to apply: same spec once the CRD's defaults are filled in, labels and owner set."""
    meta = current.get("metadata") or {}
    try:
        same_spec = (FineTuneTaskSpec.model_validate(current.get("spec") or {})
                     == FineTuneTaskSpec.model_validate(body["spec"]))
    except ValueError:
        return False
    labels = meta.get("labels") or {}
    return same_spec and all(labels.get(k) == v for k, v in body["metadata"]["labels"].items())


def _apply(ref: SetRef, wanted: Plan, owned: dict[str, dict[str, Any]], sc: SetContext
           ) -> dict[str, dict[str, Any]]:
    out = dict(owned)
    for name, spec in wanted.tasks.items():
        key = wanted.keys[name]
        body = task_body(ref, name, key, spec)
        if name in owned and _same(owned[name], body):
            continue
        if name not in owned and api(lambda: sc.ctx.kube.get_task(ref.namespace, name)):
            # Never take over a task applied on its own (or one of another set's).
            wanted.problems.append(Problem(DUPLICATE_NAME, f"entry {key!r}: a FineTuneTask "
                                           f"{name} exists that this set does not own"))
            continue
        try:
            out[name] = api(lambda: sc.api.apply_task(body))
        except ApiError as err:  # the apiserver refused the task (e.g. 422): that entry only
            wanted.problems.append(Problem(MALFORMED_ENTRY, f"entry {key!r}: {err}"))
    return out


def _delete_removed(ref: SetRef, wanted: Plan, owned: dict[str, dict[str, Any]],
                    sc: SetContext) -> dict[str, dict[str, Any]]:
    out = dict(owned)
    for name, task in owned.items():
        if name in wanted.tasks or name in wanted.keep:
            continue
        api(lambda: sc.api.delete_task(ref.namespace, name, task["metadata"]["uid"]))
        sc.api.post_event(ref.involved(), "Normal", "TaskDeleted",
                          f"deleted FineTuneTask {name}: its entry left the set")
        del out[name]
    return out


# ---- status --------------------------------------------------------------------------------


def _cond(type_: SetConditionType, status: Literal["True", "False", "Unknown"], reason: str,
          message: str) -> SetCondition:
    return SetCondition(type=type_, status=status, reason=reason, message=message,
                        last_transition_time=now_iso())


def _generated(problems: list[Problem]) -> SetCondition:
    if not problems:
        return _cond("TasksGenerated", "True", GENERATED, "every entry made a task")
    reason = DUPLICATE_NAME if all(p.reason == DUPLICATE_NAME for p in problems) \
        else MALFORMED_ENTRY
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return _cond("TasksGenerated", "False", reason, problems[0].message + more)


def _merge_conditions(old: list[dict[str, Any]], new: list[SetCondition], generation: int | None
                      ) -> list[SetCondition]:
    """lastTransitionTime moves only when a condition's status changes."""
    before = {c.get("type"): c for c in old}
    out = []
    for cond in new:
        prev = before.get(cond.type)
        stamp = prev["lastTransitionTime"] if prev and prev.get("status") == cond.status \
            and prev.get("lastTransitionTime") else cond.last_transition_time
        out.append(cond.model_copy(update={"last_transition_time": stamp,
                                           "observed_generation": generation}))
    return out


def _write(ref: SetRef, sc: SetContext, old: dict[str, Any], tasks: Any,
           generation: int | None, listed: SetCondition, problems: list[Problem] | None) -> None:
    """The whole status; `problems` None (S3 unreadable): the last plan's problems stay."""
    new = rollup(tasks)
    new.observed_generation = generation
    conds = [listed]
    if problems is None:
        new.problems = list(old.get("problems") or [])
        conds += [SetCondition.model_validate(c) for c in old.get("conditions") or []
                  if c.get("type") == "TasksGenerated"]
    else:
        new.problems = [p.message for p in problems][:MAX_LISTED]
        conds.append(_generated(problems))
    new.conditions = _merge_conditions(old.get("conditions") or [], conds, generation)
    new.last_listed = now_iso() if listed.reason != NO_SOURCE else None
    _commit(ref, sc, old, new.wire())
    before = set(old.get("problems") or [])
    for p in (problems or [])[:MAX_LISTED]:  # the ones the status keeps: each evented once
        if p.message not in before:
            sc.api.post_event(ref.involved(), "Warning", p.reason, p.message)
    old_listed = next((c for c in old.get("conditions") or [] if c.get("type") == "SourceListed"),
                      {})
    if listed.status == "False" and old_listed.get("reason") != listed.reason:
        sc.api.post_event(ref.involved(), "Warning", listed.reason, listed.message)


def _commit(ref: SetRef, sc: SetContext, old: dict[str, Any], new: dict[str, Any],
            only: tuple[str, ...] | None = None) -> None:
    keys = only or tuple(set(old) | set(new))
    patch = {k: new.get(k) for k in keys if old.get(k) != new.get(k)}
    if patch:
        api(lambda: sc.api.patch_set_status(ref.namespace, ref.name, patch))


# ---- a generated task changed --------------------------------------------------------------


def task_changed(body: Any, sc: SetContext) -> None:
    """Roll the set's status up from its tasks; the set's own conditions stay as resync wrote."""
    meta = body.get("metadata") or {}
    owner = next((o for o in meta.get("ownerReferences") or []
                  if o.get("kind") == SET_KIND and o.get("controller")), None)
    if owner is None:
        return
    ref = SetRef(owner["name"], meta.get("namespace") or "default", owner.get("uid", ""))
    with sc.lock(ref):
        current = api(lambda: sc.api.get_set(ref.namespace, ref.name))
        if current is None or current["metadata"].get("uid") != ref.uid:
            return  # the set is gone (the garbage collector follows)
        new = rollup(_owned(ref, sc).values()).wire()
        old = current.get("status") or {}
        _commit(ref, sc, old, new, only=ROLLUP_FIELDS)

