"""The run contract: layout paths (and the layout from a prefix), termination message size
and round trip."""

from __future__ import annotations

import pytest

from finetune_contract import (
    TERMINATION_LOG_LIMIT,
    Metrics,
    RunLayout,
    TerminationMessage,
    one_line,
)


def test_layout_puts_every_artifact_under_the_run_prefix() -> None:
    layout = RunLayout(root="s3://adapters/", namespace="ml", task="triage", run_id="r1234abcd")
    assert layout.prefix == "s3://adapters/ml/triage/r1234abcd/"
    for uri in (layout.train, layout.validation, layout.manifest, layout.config, layout.adapter,
                layout.metrics, layout.complete_marker):
        assert uri.startswith(layout.prefix)
    assert layout.train.endswith("data/train.jsonl")
    assert layout.metrics.endswith("/metrics.json")


@pytest.mark.parametrize("prefix", [
    "s3://adapters/ml/triage/r1234abcd/", "s3://adapters/runs/ml/triage/r1", "/tmp/out/ml/t/r2/",
])
def test_the_trainer_rebuilds_the_layout_from_its_run_prefix(prefix: str) -> None:
    layout = RunLayout.from_prefix(prefix)
    assert layout.prefix == prefix.rstrip("/") + "/"
    assert layout.metrics == layout.prefix + "metrics.json"


@pytest.mark.parametrize("prefix", ["s3://bucket/run/", "s3://b/t/r/", "ns/task/", "s3://a//t/r/"])
def test_a_prefix_that_is_not_a_run_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="not a run prefix"):
        RunLayout.from_prefix(prefix)


def test_termination_message_round_trips_and_stays_under_the_kubernetes_limit() -> None:
    msg = TerminationMessage(ok=False, reason="BadInput", message="line one\nline two " + "x" * 9000)
    text = msg.encode()
    assert len(text.encode()) <= TERMINATION_LOG_LIMIT
    assert "\n" not in text
    back = TerminationMessage.decode(text)
    assert back is not None and back.reason == "BadInput" and back.message.startswith("line one line two")


def test_foreign_termination_messages_are_ignored() -> None:
    assert TerminationMessage.decode("OOMKilled") is None
    assert TerminationMessage.decode("") is None
    assert TerminationMessage.decode('{"unrelated": 1}') is None


def test_relative_improvement() -> None:
    assert Metrics.relative_improvement(2.0, 1.5) == 0.25
    assert Metrics.relative_improvement(0.0, 1.0) == 0.0


def test_one_line_collapses_and_cuts() -> None:
    assert one_line("a\n  b\tc") == "a b c"
    assert len(one_line("y" * 1000, limit=50)) == 50
