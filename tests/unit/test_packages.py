"""Packages by what ships: each image installs only the packages it runs, and imports only flow
downwards (dev -> operator -> contract; trainer -> contract). Checked on the real build: the
folders a Dockerfile COPYs are staged and built into a wheel with the project's own pyproject.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"finetune_contract": REPO / "contract/finetune_contract",
            "finetune_operator": REPO / "operator/finetune_operator",
            "finetune_trainer": REPO / "trainer-image/finetune_trainer",
            "finetune_dev": REPO / "dev/finetune_dev"}
# What each package may import of ours (besides itself).
ALLOWED = {"finetune_contract": set(),
           "finetune_trainer": {"finetune_contract"},
           "finetune_operator": {"finetune_contract"},
           "finetune_dev": {"finetune_contract", "finetune_operator"}}
CONTRACT_THIRD_PARTY = {"pydantic", "boto3", "botocore"}
# What the operator image installs (core dependencies + the `operator` extra), by import name.
OPERATOR_THIRD_PARTY = CONTRACT_THIRD_PARTY | {"pydantic_settings", "yaml", "pyarrow", "orjson",
                                               "kopf", "kubernetes", "prometheus_client",
                                               "urllib3"}


def _imports(package: Path) -> set[str]:
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_imports_flow_downwards(package: str) -> None:
    ours = {m for m in _imports(PACKAGES[package]) if m.startswith("finetune_")} - {package}
    assert ours <= ALLOWED[package], f"{package} imports {sorted(ours - ALLOWED[package])}"


def test_contract_needs_pydantic_and_boto3_only() -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    third_party = _imports(PACKAGES["finetune_contract"]) - stdlib - {"finetune_contract"}
    assert third_party <= CONTRACT_THIRD_PARTY, sorted(third_party - CONTRACT_THIRD_PARTY)


def test_operator_imports_only_what_its_image_installs() -> None:
    """pandas, torch, rich...: dev or trainer dependencies, absent from the operator image."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    third_party = (_imports(PACKAGES["finetune_operator"]) - stdlib
                   - {"finetune_operator", "finetune_contract"})
    assert third_party <= OPERATOR_THIRD_PARTY, sorted(third_party - OPERATOR_THIRD_PARTY)


def _copied_folders(dockerfile: Path) -> list[str]:
    return re.findall(r"^COPY (\S+/finetune_\w+) ", dockerfile.read_text(), re.M)


@pytest.mark.parametrize(("dockerfile", "expected"), [
    ("trainer-image/Dockerfile", {"finetune_contract", "finetune_trainer"}),
    ("operator/Dockerfile", {"finetune_contract", "finetune_operator"}),
])
def test_each_image_installs_only_what_it_runs(dockerfile: str, expected: set[str],
                                               tmp_path: Path) -> None:
    """Stage the build context the Dockerfile sees and build the wheel it would install."""
    stage = tmp_path / "src"
    stage.mkdir()
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy(REPO / name, stage / name)
    folders = _copied_folders(REPO / dockerfile)
    assert folders, f"{dockerfile} copies no package folder"
    for folder in folders:
        shutil.copytree(REPO / folder, stage / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"),
                           str(stage)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next((tmp_path / "wheel").glob("*.whl"))
    top = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()
           if not n.split("/")[0].endswith(".dist-info")}
    assert top == expected
