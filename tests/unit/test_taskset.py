"""FineTuneTaskSet's pure parts (taskset.py): task discovery from a listing, the merge of
defaults and overrides, names and collisions, the plan and the status roll-up; and its CRD,
generated from taskset_spec.py, must match crds/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from finetune_operator.taskset import deep_merge, discover, plan, rollup, task_name
from finetune_operator.taskset_crdgen import SET_CRD_FILE, build_taskset_crd, render_taskset_crd
from finetune_operator.taskset_spec import FineTuneTaskSetSpec

ROOT = Path(__file__).resolve().parents[2]
P = "s3://bkt/tasks/"


@pytest.mark.parametrize(("name", "listing", "expected"), [
    ("folders", [P + "a/x.jsonl", P + "b/y.jsonl", P + "a/z.jsonl"], ["a", "b"]),
    ("sorted", [P + "zeta/1", P + "Alpha/1"], ["Alpha", "zeta"]),
    ("files-at-the-top-are-not-tasks", [P + "README.md", P + "a/d.jsonl"], ["a"]),
    ("nesting-is-data", [P + "a/part/1.jsonl", P + "a/part/2.jsonl"], ["a"]),
    ("other-prefixes-ignored", ["s3://bkt/other/a/d.jsonl", "s3://bkt/tasks2/b/d"], []),
    ("empty", [], []),
])
def test_discover(name: str, listing: list[str], expected: list[str]) -> None:
    assert discover(P, listing) == expected
    assert discover(P.rstrip("/"), listing) == expected  # with or without the slash


@pytest.mark.parametrize(("name", "base", "override", "expected"), [
    ("nested-merge", {"training": {"epochs": 3, "lora": {"r": 8}}},
     {"training": {"lora": {"alpha": 16}}},
     {"training": {"epochs": 3, "lora": {"r": 8, "alpha": 16}}}),
    ("scalar-replaces", {"baseModel": {"name": "a"}}, {"baseModel": {"name": "b"}},
     {"baseModel": {"name": "b"}}),
    ("list-replaces", {"resources": {"tolerations": [{"key": "a"}]}},
     {"resources": {"tolerations": [{"key": "b"}]}},
     {"resources": {"tolerations": [{"key": "b"}]}}),
    ("null-removes", {"training": {"epochs": 3, "learningRate": 0.1}},
     {"training": {"epochs": None}}, {"training": {"learningRate": 0.1}}),
    ("mapping-over-scalar", {"dataset": "x"}, {"dataset": {"uri": "u"}}, {"dataset": {"uri": "u"}}),
    ("new-key", {}, {"suspend": True}, {"suspend": True}),
])
def test_deep_merge(name: str, base: dict[str, Any], override: dict[str, Any],
                    expected: dict[str, Any]) -> None:
    before = repr(base), repr(override)
    assert deep_merge(base, override) == expected
    assert (repr(base), repr(override)) == before  # neither argument changes


@pytest.mark.parametrize(("set_name", "key", "expected"), [
    ("team", "triage", "team-triage"),
    ("team", "Ticket_Triage v2", "team-ticket-triage-v2"),
    ("team", "--a..b--", "team-a-b"),
    ("team", "___", None),
    ("t", "x" * 70, "cut"),  # 72 characters: cut to 63 with a hash
])
def test_task_name(set_name: str, key: str, expected: str | None) -> None:
    name = task_name(set_name, key)
    if expected != "cut":
        assert name == expected
        return
    assert name is not None and len(name) == 63 and name.startswith("t-" + "x" * 52 + "-")
    assert name != task_name(set_name, "x" * 71)  # the hash keeps long keys apart
    assert name == task_name(set_name, key)  # deterministic


def _spec(**kw: Any) -> FineTuneTaskSetSpec:
    defaults = {"baseModel": {"name": "m"}, "output": {"uri": "s3://bkt/runs/"},
                "dataset": {"minSamples": 20}}
    return FineTuneTaskSetSpec.model_validate({"defaults": defaults, **kw})


def test_plan_from_a_prefix_with_an_override() -> None:
    p = plan("s", _spec(source={"prefix": P}, tasks=[{"key": "b", "spec": {
        "training": {"epochs": 2}, "dataset": {"minSamples": 5}}}]), ["a", "b"])
    assert p.problems == []
    assert p.tasks == {
        "s-a": {"baseModel": {"name": "m"}, "output": {"uri": "s3://bkt/runs/"},
                "dataset": {"minSamples": 20, "uri": P + "a/"}},
        "s-b": {"baseModel": {"name": "m"}, "output": {"uri": "s3://bkt/runs/"},
                "dataset": {"minSamples": 5, "uri": P + "b/"}, "training": {"epochs": 2}}}
    assert p.keys == {"s-a": "a", "s-b": "b"}


@pytest.mark.parametrize(("name", "tasks", "folders", "made", "problems", "keep"), [
    ("explicit-list", [{"key": "a", "spec": {"dataset": {"uri": "s3://bkt/a.jsonl"}}}], None,
     ["s-a"], [], set()),
    ("same-key-twice", [{"key": "a", "spec": {"dataset": {"uri": "s3://bkt/a"}}},
                        {"key": "a", "spec": {"dataset": {"uri": "s3://bkt/b"}}}], None,
     ["s-a"], [("DuplicateTaskName", "entry 'a': the key appears twice in spec.tasks; the first "
                "is used")], set()),
    ("same-name", [{"key": "a_b", "spec": {"dataset": {"uri": "s3://bkt/a"}}},
                   {"key": "A-B", "spec": {"dataset": {"uri": "s3://bkt/b"}}}], None,
     ["s-a-b"], [("DuplicateTaskName", "entry 'A-B': makes the task name s-a-b, as 'a_b' does; "
                  "'a_b' is used")], set()),
    ("folders-colliding", [], ["x.y", "x_y"], ["s-x-y"],
     [("DuplicateTaskName", "entry 'x_y': makes the task name s-x-y, as 'x.y' does; 'x.y' is "
       "used")], set()),
    ("malformed-goes-on", [{"key": "bad", "spec": {"dataset": {"uri": "s3://bkt/a"},
                                                   "training": {"epochs": -1}}},
                           {"key": "ok", "spec": {"dataset": {"uri": "s3://bkt/b"}}}], None,
     ["s-ok"], [("MalformedEntry", "entry 'bad': invalid spec: training.epochs: Input should be "
                 "greater than 0")], {"s-bad"}),
    ("unknown-field", [{"key": "t", "spec": {"dataset": {"uri": "s3://bkt/a"}, "epochs": 2}}],
     None, [], [("MalformedEntry", "entry 't': invalid spec: epochs: Extra inputs are not "
                 "permitted")], {"s-t"}),
    ("no-uri-no-prefix", [{"key": "t"}], None, [],
     [("MalformedEntry", "entry 't': no spec.source.prefix and no dataset.uri")], {"s-t"}),
    ("no-folder", [{"key": "gone"}], ["a"], ["s-a"],
     [("MalformedEntry", f"entry 'gone': no folder {P}gone/ and no dataset.uri")], {"s-gone"}),
    ("unnameable", [{"key": "__", "spec": {"dataset": {"uri": "s3://bkt/a"}}}], None, [],
     [("MalformedEntry", "entry '__': the key has no letter or digit to name a task with")],
     set()),
])
def test_plan_problems(name: str, tasks: list[dict[str, Any]], folders: list[str] | None,
                       made: list[str], problems: list[tuple[str, str]], keep: set[str]) -> None:
    source = {"prefix": P} if folders is not None else {}
    p = plan("s", _spec(source=source, tasks=tasks), folders)
    assert sorted(p.tasks) == made
    assert [(x.reason, x.message) for x in p.problems] == problems
    assert p.keep == keep


def _task(name: str, phase: str | None, improvement: float | None = None,
          reason: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    if improvement is not None:
        status["metrics"] = {"improvement": improvement}
    if reason:
        status["conditions"] = [{"type": "DataReady", "status": "False", "reason": reason},
                                {"type": "Ready", "status": "False", "reason": reason}]
        status["message"] = f"{reason} happened"
    return {"metadata": {"name": name}, "status": status}


@pytest.mark.parametrize(("name", "tasks", "counts", "mean", "low", "failed"), [
    ("none", [], {}, None, None, []),
    ("new-tasks-are-pending", [_task("a", None), _task("b", "Preparing")],
     {"pending": 1, "preparing": 1}, None, None, []),
    ("improvements-over-succeeded-only",
     [_task("a", "Succeeded", 0.4), _task("b", "Succeeded", 0.1), _task("c", "Failed", None,
                                                                         "BadFormat"),
      _task("d", "Skipped"), _task("e", "Succeeded")],
     {"succeeded": 3, "failed": 1, "skipped": 1}, 0.25, 0.1, [("c", "BadFormat")]),
    ("negative-improvement", [_task("a", "Succeeded", -0.2), _task("b", "Succeeded", 0.6)],
     {"succeeded": 2}, 0.2, -0.2, []),
    ("failed-listed-by-name", [_task("z", "Failed", None, "OOMKilled"),
                               _task("a", "Failed", None, "JobFailed")],
     {"failed": 2}, None, None, [("a", "JobFailed"), ("z", "OOMKilled")]),
])
def test_rollup(name: str, tasks: list[dict[str, Any]], counts: dict[str, int],
                mean: float | None, low: float | None, failed: list[tuple[str, str]]) -> None:
    st = rollup(tasks)
    assert st.tasks == len(tasks)
    assert {k: v for k, v in st.counts.model_dump().items() if v} == counts
    assert st.mean_improvement == (pytest.approx(mean) if mean is not None else None)
    assert st.min_improvement == low
    assert [(f.name, f.reason) for f in st.failed_tasks] == failed


def test_rollup_bounds_the_failed_list() -> None:
    st = rollup([_task(f"t{i:03}", "Failed", None, "JobFailed") for i in range(50)])
    assert st.counts.failed == 50 and len(st.failed_tasks) == 20
    assert st.failed_tasks[0].message == "JobFailed happened"


def test_committed_set_crd_matches_the_models() -> None:
    assert (ROOT / "crds" / SET_CRD_FILE).read_text() == render_taskset_crd(), "run `make crds`"


def test_set_crd_shape() -> None:
    crd = build_taskset_crd()
    assert crd["spec"]["names"]["shortNames"] == ["ftts"]
    [version] = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Tasks", "Succeeded", "Failed", "Mean improvement", "Age"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    # Entries stay free-form: the API server must neither default them nor refuse the set.
    entry = spec["tasks"]["items"]["properties"]["spec"]
    assert entry["x-kubernetes-preserve-unknown-fields"] is True and "properties" not in entry
    assert not _keys(spec["defaults"]) & {"default", "required"}


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keys(v)}
    return set()
