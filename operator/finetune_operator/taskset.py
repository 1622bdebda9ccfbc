"""What a FineTuneTaskSet asks for, as pure functions: no API call, no S3 call.

    discover(prefix, listing)  -> the task keys (immediate sub-prefixes holding an object)
    plan(set, spec, keys)      -> the FineTuneTasks to exist (name -> spec) and one-line problems
    rollup(tasks)              -> the set's counts, improvements and failed tasks

The controller (taskset_reconcile.py) lists S3 and the owned tasks, calls these, and writes
what they return. Rules, also in docs/tasksets.md:
- a task's spec is deep_merge(defaults, {dataset.uri: the folder}, entry.spec): mappings merge
  key by key, anything else (lists included) replaces, and a null removes the key (RFC 7386);
- its name is `<set>-<key>` made DNS-1123-safe, cut to 63 characters with a hash of the
  untouched pair when longer (task names become label values);
- the first of two entries that make one name wins (folders in sorted order, then the explicit
  entries in their order); the other is a DuplicateTaskName problem;
- an entry whose merged spec is not a valid FineTuneTask is a MalformedEntry problem, and its
  task, if it already exists, is kept as it is (neither updated nor deleted).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from finetune_contract import one_line

from .spec import SpecError, parse_spec
from .taskset_spec import (DUPLICATE_NAME, MALFORMED_ENTRY, MAX_LISTED, FailedTask,
                           FineTuneTaskSetSpec, FineTuneTaskSetStatus, PhaseCounts)

MAX_NAME = 63
HASH_LEN = 8
_UNSAFE = re.compile(r"[^a-z0-9]+")


# ---- the source --------------------------------------------------------------------------


def discover(prefix: str, uris: Iterable[str]) -> list[str]:
    """The immediate sub-prefixes of `prefix` that hold at least one object, sorted.

    Objects directly under the prefix are not tasks; a folder's own nesting is its data.
    """
    base = prefix if prefix.endswith("/") else prefix + "/"
    keys = set()
    for uri in uris:
        if not uri.startswith(base):
            continue
        head, sep, _ = uri[len(base):].partition("/")
        if sep and head:
            keys.add(head)
    return sorted(keys)


def folder_uri(prefix: str, key: str) -> str:
    return (prefix if prefix.endswith("/") else prefix + "/") + key + "/"


# ---- merging and naming -------------------------------------------------------------------


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386) of `override` onto `base`; neither argument is changed."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def task_name(set_name: str, key: str) -> str | None:
    """`<set>-<key>` as a DNS-1123 label; None when the key has no letter or digit.

    Lossy on purpose (`Ticket_Triage` and `ticket-triage` make one name, reported as a
    duplicate) so names stay readable; the hash is added only when the name is cut.
    """
    slug = _UNSAFE.sub("-", key.lower()).strip("-")
    if not slug:
        return None
    base = _UNSAFE.sub("-", set_name.lower()).strip("-")
    name = f"{base}-{slug}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(f"{set_name}/{key}".encode()).hexdigest()[:HASH_LEN]
    return f"{name[:MAX_NAME - HASH_LEN - 1].rstrip('-')}-{digest}"


# ---- the plan ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    reason: str   # taskset_spec.MALFORMED_ENTRY or DUPLICATE_NAME
    message: str  # one line, naming the entry


@dataclass
class Plan:
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> spec (camelCase)
    keys: dict[str, str] = field(default_factory=dict)              # name -> key
    problems: list[Problem] = field(default_factory=list)
    keep: set[str] = field(default_factory=set)  # names of malformed entries: left untouched


def plan(set_name: str, spec: FineTuneTaskSetSpec, folders: list[str] | None) -> Plan:
    """The tasks the set asks for. `folders`: discover()'s keys, None when there is no prefix."""
    out = Plan()
    defaults = spec.defaults.wire()
    entries: dict[str, dict[str, Any]] = {}
    order: list[tuple[str, bool]] = [(key, True) for key in folders or []]
    for entry in spec.tasks:
        if entry.key in entries:
            out.problems.append(Problem(DUPLICATE_NAME, f"entry {entry.key!r}: the key appears "
                                        "twice in spec.tasks; the first is used"))
            continue
        entries[entry.key] = entry.spec
        if entry.key not in (folders or []):
            order.append((entry.key, False))
    owner: dict[str, str] = {}
    for key, is_folder in order:
        name = task_name(set_name, key)
        if name is None:
            out.problems.append(Problem(MALFORMED_ENTRY, f"entry {key!r}: the key has no letter "
                                        "or digit to name a task with"))
            continue
        if name in owner:
            first = owner[name]
            out.problems.append(Problem(DUPLICATE_NAME, f"entry {key!r}: makes the task name "
                                        f"{name}, as {first!r} does; {first!r} is used"))
            continue
        owner[name] = key
        merged = defaults
        if is_folder and spec.source.prefix:
            merged = deep_merge(merged, {"dataset": {"uri": folder_uri(spec.source.prefix, key)}})
        merged = deep_merge(merged, entries.get(key, {}))
        problem = _check(key, merged, is_folder, spec.source.prefix)
        if problem:
            out.problems.append(Problem(MALFORMED_ENTRY, problem))
            out.keep.add(name)
            continue
        out.tasks[name] = merged
        out.keys[name] = key
    return out


def _check(key: str, merged: dict[str, Any], is_folder: bool, prefix: str | None) -> str | None:
    dataset = merged.get("dataset")
    if not is_folder and not (isinstance(dataset, Mapping) and dataset.get("uri")):
        where = f"no folder {folder_uri(prefix, key)}" if prefix else "no spec.source.prefix"
        return f"entry {key!r}: {where} and no dataset.uri"
    try:
        parse_spec(merged)
    except SpecError as err:
        return one_line(f"entry {key!r}: {err}")
    return None


# ---- the roll-up -------------------------------------------------------------------------


def rollup(tasks: Iterable[Mapping[str, Any]]) -> FineTuneTaskSetStatus:
    """Counts by phase, improvement over the Succeeded tasks, the Failed ones with a reason."""
    counts = PhaseCounts()
    improvements: list[float] = []
    failed: list[FailedTask] = []
    n = 0
    for task in sorted(tasks, key=lambda t: t["metadata"]["name"]):
        n += 1
        status = task.get("status") or {}
        phase = status.get("phase") or "Pending"
        attr = phase.lower()
        if attr in PhaseCounts.model_fields:
            setattr(counts, attr, getattr(counts, attr) + 1)
        if phase == "Succeeded":
            value = (status.get("metrics") or {}).get("improvement")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                improvements.append(float(value))
        elif phase == "Failed" and len(failed) < MAX_LISTED:
            ready = next((c for c in status.get("conditions") or []
                          if c.get("type") == "Ready"), {})
            failed.append(FailedTask(name=task["metadata"]["name"],
                                     reason=ready.get("reason") or "Failed",
                                     message=one_line(status.get("message") or "", 200)))
    return FineTuneTaskSetStatus(
        tasks=n, counts=counts, failed_tasks=failed,
        mean_improvement=round(sum(improvements) / len(improvements), 6) if improvements else None,
        min_improvement=min(improvements) if improvements else None)
