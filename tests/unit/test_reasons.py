"""Reasons are constants (reasons.py, finetune_contract.reasons), and the docs say the same.

- docs/runbook.md's table of failure reasons names exactly `reasons.FAILURES`, docs/operator.md's
  table exactly every other reason: a new constant without a row, or a row without a constant,
  fails here.
- No module that writes a status, an Event or a metric spells a reason out: the constants are
  the one place (the trainer's and data preparation's raise sites are checked to use values the
  constants define, with the exit code class the runbook states).
- The metric `result` values are the ones the alert rule selects and docs/alerts.md names.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import get_args

import pytest

from finetune_contract import reasons as trainer
from finetune_operator import policy
from finetune_operator import reasons as R
from finetune_operator.prepare.errors import REASONS as PREPARE_REASONS
from finetune_operator.spec import ConditionType, Phase

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "operator" / "finetune_operator"
TRAINER = ROOT / "trainer-image" / "finetune_trainer"


def documented(doc: str, heading: str) -> set[str]:
    """The backticked names in the first column of the first table under `heading`."""
    lines = (ROOT / "docs" / doc).read_text().splitlines()
    start = lines.index(heading)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break  # the table ended
    assert rows and rows[0].split("|")[1].strip() == "Reason", f"{doc}: no Reason table"
    return {name for row in rows[2:] for name in re.findall(r"`([^`]+)`", row.split("|")[1])}


def constants(module: object) -> set[str]:
    return {v for k, v in vars(module).items() if k.isupper() and isinstance(v, str)}


# ---- docs ----------------------------------------------------------------------------------


def test_the_runbook_explains_every_failure_reason_and_no_other() -> None:
    assert documented("runbook.md", "### Reasons a run fails with") == R.FAILURES


def test_the_operator_docs_explain_every_other_reason_and_no_failure() -> None:
    assert documented("operator.md", "## Reasons") == R.ALL - R.FAILURES


def test_the_result_label_values_are_what_the_alert_and_the_docs_use() -> None:
    rule = (ROOT / "helm/finetune-operator/files/alerts.yaml").read_text()
    assert set(re.findall(r'finetune_runs_finished_total\{result="(\w+)"\}', rule)) == {
        R.RESULT_FAILED}
    text = (ROOT / "docs/operator.md").read_text()
    assert all(f"`{value}`" in text for value in R.RESULTS)
    assert set(R.RESULTS) == set(get_args(R.Result))


# ---- the constants -------------------------------------------------------------------------


def test_every_constant_is_in_a_group_and_the_groups_do_not_overlap() -> None:
    results = set(R.RESULTS)
    assert (constants(R) - results) | trainer.ALL == R.ALL
    assert constants(trainer) == trainer.ALL and trainer.BAD_INPUT <= trainer.FAILURES
    others = R.UNDER_WAY | R.VERDICTS | R.SKIPS | R.EVENTS
    assert not R.FAILURES & others
    # A reason is one word the CRD accepts (Condition.reason's pattern).
    assert all(re.fullmatch(r"[A-Z][A-Za-z0-9]*", r) for r in R.ALL)


def test_phases_under_way_are_ready_reasons_and_events_name_conditions() -> None:
    under_way = set(get_args(Phase)) - {"Succeeded", "Failed", "Skipped"}
    assert under_way <= R.UNDER_WAY
    assert {R.DATA_READY, R.JOB_CREATED} <= set(get_args(ConditionType))


def test_the_policy_and_data_preparation_use_these_values() -> None:
    assert policy.REASON == R.POLICY_VIOLATION
    assert set(PREPARE_REASONS) == R.PREPARE


# ---- no literals elsewhere -----------------------------------------------------------------

# Modules that write conditions, Events or metrics. A string equal to a reason that is not also a
# phase or a condition type (those words have their own meaning there) must come from reasons.py.
WRITERS = [OPERATOR / f for f in ("reconcile.py", "taskstate.py", "status.py", "follow.py",
                                  "handlers.py", "kube.py", "metrics.py", "transitions.py",
                                  "podstate.py", "progress.py")] + [
    ROOT / "dev/finetune_dev/local.py", ROOT / "dev/finetune_dev/local_status.py"]
AMBIGUOUS = set(get_args(Phase)) | set(get_args(ConditionType))


def string_literals(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings}


@pytest.mark.parametrize("path", WRITERS, ids=lambda p: p.name)
def test_no_reason_is_spelled_out_where_status_is_written(path: Path) -> None:
    spelled = string_literals(path) & (R.ALL | set(R.RESULTS)) - AMBIGUOUS
    assert not spelled, f"{path.name}: use the reasons.py constants for {sorted(spelled)}"


def raised_reasons(path: Path, callee: str) -> set[str]:
    """First arguments of `callee(...)` calls that are string literals."""
    return {node.args[0].value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == callee
            and node.args and isinstance(node.args[0], ast.Constant)}


def test_the_trainer_raises_only_contract_reasons_with_their_exit_code() -> None:
    sources = sorted(TRAINER.glob("*.py"))
    bad_input = set().union(*(raised_reasons(p, "bad_input") for p in sources))
    other = set().union(*(raised_reasons(p, "TrainerError") for p in sources))
    assert bad_input <= trainer.BAD_INPUT, bad_input - trainer.BAD_INPUT
    assert other <= trainer.FAILURES - trainer.BAD_INPUT, other & trainer.BAD_INPUT
    # Written by __main__ itself: storage errors, the last-resort error, success.
    main = string_literals(TRAINER / "__main__.py")
    assert {trainer.STORAGE, trainer.INTERNAL, trainer.SUCCEEDED} <= main
    # Every contract reason is one the trainer can write: no constant without a use.
    assert bad_input | other | {trainer.STORAGE, trainer.INTERNAL, trainer.SUCCEEDED} == \
        trainer.ALL


def test_data_preparation_raises_only_its_declared_reasons() -> None:
    raised = set().union(*(raised_reasons(p, "PrepareError")
                           for p in (OPERATOR / "prepare").glob("*.py")))
    assert raised <= R.PREPARE
