"""The Argo CD health check of FineTuneTask, run by a real Lua 5.1 interpreter (lupa's lua51, the
language level of Argo CD's gopher-lua) exactly as shipped: taken out of the argocd-cm patch
after `kubectl patch --local` merges it into a stock argocd-cm, with `obj` set to a FineTuneTask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lupa.lua51 as lua51  # dev extra (make venv); a missing lupa fails, never skips
import pytest
import yaml
from deploytools import ROOT, run, tool

PATCH = ROOT / "manifests" / "argocd" / "argocd-cm-patch.yaml"
KEY = "resource.customizations.health.finetune.v-sekai.org_FineTuneTask"
STOCK_ARGOCD_CM = {"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "argocd-cm", "namespace": "argocd"},
                   "data": {"url": "https://argocd.example.com", "admin.enabled": "false"}}


@pytest.fixture(scope="module")
def health_lua(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Lua as Argo CD reads it after the documented `kubectl patch --type merge`."""
    base = tmp_path_factory.mktemp("argocd") / "argocd-cm.yaml"
    base.write_text(yaml.safe_dump(STOCK_ARGOCD_CM))
    out = run(tool("kubectl"), "patch", "--local", "-f", str(base), "--type", "merge",
              "--patch-file", str(PATCH), "-o", "yaml")
    merged = yaml.safe_load(out.stdout)
    assert merged["data"]["url"] == "https://argocd.example.com"  # the patch keeps other keys
    return merged["data"][KEY]


def task(status: dict[str, Any] | None, generation: int = 2) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "finetune.v-sekai.org/v1alpha1", "kind": "FineTuneTask",
                           "metadata": {"name": "triage", "namespace": "ml", "generation": generation},
                           "spec": {"baseModel": {"name": "m"}}}
    if status is not None:
        obj["status"] = status
    return obj


def health(lua_source: str, obj: dict[str, Any]) -> dict[str, Any]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    assert lua.eval("_VERSION") == "Lua 5.1"
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(lua_source)
    return dict(result.items())


CASES = [
    ("succeeded", {"phase": "Succeeded", "observedGeneration": 2,
                   "message": "eval loss 0.91 (base 1.40, -35%)"},
     "Healthy", "eval loss 0.91 (base 1.40, -35%)"),
    ("failed", {"phase": "Failed", "observedGeneration": 2,
                "message": "s3://tasks/t/a.jsonl line 3: not JSON"},
     "Degraded", "s3://tasks/t/a.jsonl line 3: not JSON"),
    ("suspended", {"phase": "Suspended", "observedGeneration": 2, "message": "spec.suspend is true"},
     "Suspended", "spec.suspend is true"),
    ("skipped", {"phase": "Skipped", "observedGeneration": 2,
                 "message": "42 clean samples, fewer than minSamples 100"},
     "Healthy", "Skipped: 42 clean samples, fewer than minSamples 100"),
    ("skipped-no-message", {"phase": "Skipped", "observedGeneration": 2},
     "Healthy", "Skipped: Skipped"),
    ("pending", {"phase": "Pending", "observedGeneration": 2}, "Progressing", "Pending"),
    ("preparing", {"phase": "Preparing", "observedGeneration": 2, "message": "reading 3 objects"},
     "Progressing", "Preparing: reading 3 objects"),
    ("training", {"phase": "Training", "observedGeneration": 2, "message": "step 40/120"},
     "Progressing", "Training: step 40/120"),
    ("unknown-future-phase", {"phase": "Evaluating", "observedGeneration": 2},
     "Progressing", "Evaluating"),
    ("no-status", None, "Progressing", "Waiting for the operator to pick up the task"),
    ("empty-status", {}, "Progressing", "Waiting for the operator to pick up the task"),
    ("stale-succeeded", {"phase": "Succeeded", "observedGeneration": 1, "message": "old run"},
     "Progressing", "Waiting for the operator to observe generation 2"),
    ("stale-failed", {"phase": "Failed", "observedGeneration": 1, "message": "old run"},
     "Progressing", "Waiting for the operator to observe generation 2"),
]


@pytest.mark.parametrize(("status", "expected", "message"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_health(health_lua: str, status: dict[str, Any] | None, expected: str,
                message: str) -> None:
    assert health(health_lua, task(status)) == {"status": expected, "message": message}


def test_without_generation_the_phase_decides(health_lua: str) -> None:
    obj = task({"phase": "Failed", "message": "boom"})
    del obj["metadata"]["generation"]
    assert health(health_lua, obj) == {"status": "Degraded", "message": "boom"}


def test_patch_carries_the_lua_source_verbatim(health_lua: str) -> None:
    assert health_lua == (ROOT / "manifests" / "argocd" / "finetunetask-health.lua").read_text()
    assert list(yaml.safe_load(Path(PATCH).read_text())["data"]) == [KEY, SET_KEY]


# ---- FineTuneTaskSet ------------------------------------------------------------------------

SET_KEY = "resource.customizations.health.finetune.v-sekai.org_FineTuneTaskSet"


@pytest.fixture(scope="module")
def set_health_lua(health_lua: str) -> str:
    merged = yaml.safe_load(Path(PATCH).read_text())["data"][SET_KEY]
    assert merged == (ROOT / "manifests" / "argocd" / "finetunetaskset-health.lua").read_text()
    return merged


def _counts(**n: int) -> dict[str, int]:
    return {k: n.get(k, 0) for k in ("pending", "preparing", "training", "succeeded", "failed",
                                      "skipped", "suspended")}


LISTED = {"type": "SourceListed", "status": "True", "reason": "Listed", "message": "3 folders"}
GENERATED = {"type": "TasksGenerated", "status": "True", "reason": "Generated", "message": ""}
DUP = {"type": "TasksGenerated", "status": "False", "reason": "DuplicateTaskName",
       "message": "entry 'B': makes the task name s-b, as 'b' does; 'b' is used"}
EMPTY = {"type": "SourceListed", "status": "False", "reason": "EmptyPrefix",
         "message": "no task folder under s3://b/t/"}
SET_CASES = [
    ("new", None, "Progressing", "Waiting for the operator to pick up the set"),
    ("old-generation", {"observedGeneration": 1, "tasks": 3, "counts": _counts(succeeded=3)},
     "Progressing", "Waiting for the operator to observe generation 2"),
    ("running", {"observedGeneration": 2, "tasks": 3, "counts": _counts(succeeded=1, training=2),
                 "conditions": [LISTED, GENERATED]},
     "Progressing", "1/3 tasks done, 0 failed"),
    ("all-done", {"observedGeneration": 2, "tasks": 3,
                  "counts": _counts(succeeded=2, skipped=1), "conditions": [LISTED, GENERATED]},
     "Healthy", "3/3 tasks done, 0 failed"),
    ("one-failed", {"observedGeneration": 2, "tasks": 3,
                    "counts": _counts(succeeded=2, failed=1), "conditions": [LISTED, GENERATED]},
     "Degraded", "3/3 tasks done, 1 failed"),
    ("duplicate-entry", {"observedGeneration": 2, "tasks": 1, "counts": _counts(succeeded=1),
                         "conditions": [LISTED, DUP]},
     "Degraded", "DuplicateTaskName: " + DUP["message"]),
    ("empty-prefix", {"observedGeneration": 2, "tasks": 0, "counts": _counts(),
                      "conditions": [EMPTY, GENERATED]},
     "Degraded", "EmptyPrefix: no task folder under s3://b/t/"),
    ("running-with-a-problem", {"observedGeneration": 2, "tasks": 2,
                                "counts": _counts(training=2), "conditions": [LISTED, DUP]},
     "Progressing", "0/2 tasks done, 0 failed; DuplicateTaskName: " + DUP["message"]),
    ("suspended", {"observedGeneration": 2, "tasks": 2,
                   "counts": _counts(suspended=1, succeeded=1)},
     "Suspended", "1/2 tasks done, 0 failed, 1 suspended"),
]


@pytest.mark.parametrize(("status", "expected", "message"), [c[1:] for c in SET_CASES],
                         ids=[c[0] for c in SET_CASES])
def test_set_health(set_health_lua: str, status: dict[str, Any] | None, expected: str,
                    message: str) -> None:
    obj = task(status)
    obj["kind"] = "FineTuneTaskSet"
    assert health(set_health_lua, obj) == {"status": expected, "message": message}
