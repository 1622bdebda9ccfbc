"""Alert rules checked by the real promtool: `check rules` on the one rules file and
`promtool test rules` with one unit-test file per alert (tests/integration/promtool/<Alert>.yaml:
series that must fire it and series that must not). Also pins the rules to the operator's
real metric names (metrics.REGISTRY) and to the runbook sections their runbook_url names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploytools import ALERTS, ROOT, run, tool

from finetune_operator import metrics

UNIT_TESTS = Path(__file__).parent / "promtool"
RUNBOOK = ROOT / "docs" / "runbook.md"


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


ALERT_NAMES = [rule["alert"] for rule in alert_rules()]


def test_rules_file_passes_promtool_check() -> None:
    out = run(tool("promtool"), "check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in out.stdout


def test_every_alert_has_a_unit_test_file() -> None:
    assert sorted(p.stem for p in UNIT_TESTS.glob("*.yaml")) == sorted(ALERT_NAMES)


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_alert_fires_when_it_should_and_not_otherwise(alert: str) -> None:
    unit = UNIT_TESTS / f"{alert}.yaml"
    tests = yaml.safe_load(unit.read_text())["tests"]
    expectations = [case for t in tests for case in t["alert_rule_test"]]
    assert all(case["alertname"] == alert for case in expectations)
    assert any(case["exp_alerts"] for case in expectations), "no case where it fires"
    assert any(not case["exp_alerts"] for case in expectations), "no case where it is silent"
    run(tool("promtool"), "test", "rules", str(unit), cwd=UNIT_TESTS)


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("rule", alert_rules(), ids=ALERT_NAMES)
def test_alert_is_documented(rule: dict[str, Any]) -> None:
    annotations = rule["annotations"]
    assert annotations["summary"] and annotations["description"]
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    anchors = {_slug(line.lstrip("#")) for line in RUNBOOK.read_text().splitlines()
               if line.startswith("## ")}
    url = annotations["runbook_url"]
    assert url.startswith("https://github.com/v-sekai/finetune-operator/blob/main/docs/runbook.md#")
    assert url.rsplit("#", 1)[1] in anchors, f"docs/runbook.md has no section for {url}"
    assert rule["alert"] in (ROOT / "docs" / "alerts.md").read_text()


def test_rules_use_only_metrics_the_operator_exports() -> None:
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    exported = {family.name + suffix for family in metrics.REGISTRY.collect()
                for suffix in suffixes[family.type]}
    used = {name for rule in alert_rules()
            for name in re.findall(r"\bfinetune_[a-z_]+\b", rule["expr"])}
    assert used, "no operator metric in the rules"
    missing = used - exported
    assert not missing, f"rules use metrics the operator does not export: {missing}"


def test_plain_prometheus_config_in_alerts_md_is_valid(tmp_path: Path) -> None:
    """The prometheus.yml snippet of docs/alerts.md, verbatim, next to a copy of the rules."""
    doc = (ROOT / "docs" / "alerts.md").read_text()
    match = re.search(r"```yaml\n(rule_files:.*?)```", doc, re.S)
    assert match, "docs/alerts.md lost its prometheus.yml example"
    (tmp_path / "prometheus.yml").write_text(match.group(1))
    (tmp_path / "alerts.yaml").write_text(ALERTS.read_text())
    out = run(tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml"))
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in out.stdout
    config = yaml.safe_load(match.group(1))
    [job] = config["scrape_configs"]
    assert job["job_name"] == "finetune-operator" and job["honor_labels"] is True
