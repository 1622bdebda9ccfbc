"""`kubernetes-validate --strict` over Kubernetes objects: the one helper every tier uses to check
what the operator or the chart would send to a real API server (unknown fields are errors)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

CLI = Path(sys.executable).parent / "kubernetes-validate"


def validate_objects(objs: list[dict[str, Any]]) -> None:
    """Assert every object passes strict validation; the message is the validator's output."""
    assert CLI.exists(), "kubernetes-validate missing: run `make venv`"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump_all(objs, f)
        f.flush()
        proc = subprocess.run([str(CLI), "--strict", "--quiet", f.name], capture_output=True,
                              text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
