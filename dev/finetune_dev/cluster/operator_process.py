"""The operator as a real process (`python -m finetune_operator operator`), configured through
FINETUNE_* env as the chart's Deployment configures it, logging to a file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from .controlplane import REPO, free_port


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log: Path, **settings: Any) -> None:
        self.kubeconfig, self.log = kubeconfig, log
        self.metrics_port = free_port()
        self.settings = {"metrics_port": self.metrics_port, "health_port": 0,
                         "poll_interval": 1.0, "trainer_image": "registry.example/trainer:e2e",
                         **settings}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> OperatorProcess:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "FINETUNE_", "KUBECONFIG"))}
        env.update({f"FINETUNE_{k.upper()}": str(v) for k, v in self.settings.items()})
        env["KUBECONFIG"] = str(self.kubeconfig)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "finetune_operator", "operator"], env=env,
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        if wait:
            deadline = time.monotonic() + 60
            while not self._serving():
                if time.monotonic() > deadline:
                    raise RuntimeError("the operator's /metrics endpoint did not come up in 60s")
                time.sleep(0.2)
        return self

    def _serving(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"operator exited {self.proc.returncode}: "
                               f"{self.log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=0.5):
                return True
        except OSError:
            return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as resp:
            return resp.read().decode()

    def kill(self) -> None:
        """A crash: SIGKILL, no graceful shutdown."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
