"""Kopf handlers keep no state of their own: startup puts one Context in the operator's memo
and every handler takes it from the memo Kopf hands it (a shallow copy per object)."""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest

from finetune_operator import handlers
from finetune_operator.taskstate import Context


@pytest.fixture
def memo(monkeypatch: pytest.MonkeyPatch) -> kopf.Memo:
    """The operator memo after startup, with no API config and no metrics server."""
    monkeypatch.setattr(handlers, "load_config", lambda: None)
    monkeypatch.setattr(handlers, "Kube", lambda: "kube")
    monkeypatch.setattr(handlers.SETTINGS, "metrics_port", 0)
    memo = kopf.Memo()
    handlers.configure(settings=kopf.OperatorSettings(), memo=memo)
    return memo


def test_startup_puts_the_context_in_the_memo(memo: kopf.Memo) -> None:
    assert isinstance(memo.ctx, Context) and memo.ctx.kube == "kube"
    assert memo.ctx.settings is handlers.SETTINGS


@pytest.mark.parametrize(("handler", "callee", "kwargs"), [
    (handlers.apply, "apply_now", {"body": {"metadata": {"name": "t", "namespace": "ml"}}}),
    (handlers.suspend, "suspend_changed", {"body": {"metadata": {"name": "t"}}}),
    (handlers.follow_job, "follow", {"body": {"metadata": {"name": "t"}}}),
    (handlers.job_finished, "follow", {"body": {"metadata": {"namespace": "ml", "ownerReferences": [
        {"kind": "FineTuneTask", "name": "t", "uid": "u"}]}}}),
], ids=["apply", "suspend", "follow_job", "job_finished"])
def test_every_handler_uses_the_memos_context(memo: kopf.Memo, monkeypatch: pytest.MonkeyPatch,
                                             handler: Any, callee: str,
                                             kwargs: dict[str, Any]) -> None:
    seen: list[tuple[str, Context]] = []
    monkeypatch.setattr(handlers, callee, lambda task, ctx: seen.append((task.ref.name, ctx)))
    handler(memo=copy.copy(memo), **kwargs)  # what Kopf hands a handler for one object
    assert seen == [("t", memo.ctx)]


def test_no_module_level_state() -> None:
    state = {k for k, v in vars(handlers).items()
             if not k.startswith("__") and isinstance(v, (dict, list, set))}
    assert not state, f"operator state belongs in kopf.Memo: {state}"
