"""A real Prometheus server (.tools/bin/prometheus, `make tools`) scrapes the running operator's
/metrics on loopback, with the shipped alert rules loaded, while a task runs and fails: the run
counters move in Prometheus's own query API, and FineTuneRunFailed fires there with the task's
labels while FineTuneOperatorDown stays silent. Nothing is mocked between operator and
Prometheus; the API server is the real control plane (see conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_dev.devs3 import S3Server
from finetune_contract.storage import Storage

from .harness import ROOT, Cluster, OperatorProcess, free_port, wait_for

ALERTS = ROOT / "helm" / "finetune-operator" / "files" / "alerts.yaml"


def prometheus_binary() -> str:
    for candidate in (ROOT / ".tools" / "bin" / "prometheus", shutil.which("prometheus")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail("prometheus is not installed: run `make tools`", pytrace=False)


class Prometheus:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url, self.proc, self.log = url, proc, log

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def value(self, promql: str) -> float | None:
        result = self.get("/api/v1/query", query=promql)["result"]
        return float(result[0]["value"][1]) if result else None

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.get("/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"] == name]

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False


@pytest.fixture()
def prometheus(operator: OperatorProcess, tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port, scraping the operator every second with the shipped
    rules (job name and honor_labels as docs/alerts.md tells a plain Prometheus to use)."""
    binary = prometheus_binary()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "finetune-operator", "honor_labels": True,
                            "static_configs": [{"targets": [
                                f"127.0.0.1:{operator.metrics_port}"]}]}]}))
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_for(server.ready, 60, "prometheus /-/ready", interval=0.2)
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_prometheus_sees_the_run_counters_move_and_the_failure_alert(
        prometheus: Prometheus, cluster: Cluster, namespace: str, s3_server: S3Server,
        task_storage: Storage) -> None:
    wait_for(lambda: prometheus.value('up{job="finetune-operator"}') == 1.0, 30,
             "a successful scrape of the operator")
    started = f'sum(finetune_runs_started_total{{namespace="{namespace}"}})'
    assert prometheus.value(started) is None  # this namespace has never run

    bucket = f"prom-{namespace}"
    task_storage.ensure_bucket(f"s3://{bucket}/")
    cluster.apply_task(namespace, "scraped", {
        "baseModel": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
        "dataset": {"uri": f"s3://{bucket}/no-such-prefix/"},   # no data: the run fails
        "output": {"uri": f"s3://{bucket}/out/"},
        "storage": {"endpoint": s3_server.endpoint, "credentialsSecret": "s3-credentials"}})
    cluster.wait_phase(namespace, "scraped", "Failed", timeout=60)

    assert wait_for(lambda: (prometheus.value(started) or 0) >= 1, 30,
                    "finetune_runs_started_total to increase in Prometheus")
    failed = (f'sum(finetune_runs_finished_total{{namespace="{namespace}",task="scraped",'
              f'result="failed"}})')
    assert wait_for(lambda: (prometheus.value(failed) or 0) >= 1, 30,
                    "finetune_runs_finished_total{result=failed} in Prometheus")
    assert prometheus.value(started) == 1.0 and prometheus.value(failed) == 1.0  # counted once

    firing = wait_for(lambda: [a for a in prometheus.alerts("FineTuneRunFailed")
                               if a["state"] == "firing"
                               and a["labels"].get("namespace") == namespace], 30,
                      "FineTuneRunFailed firing in Prometheus")
    labels = firing[0]["labels"]
    assert labels["task"] == "scraped" and labels["reason"]
    assert firing[0]["annotations"]["runbook_url"].endswith("#finetunerunfailed")
    assert not prometheus.alerts("FineTuneOperatorDown")
