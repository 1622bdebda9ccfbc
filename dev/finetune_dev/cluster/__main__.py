"""`python -m finetune_dev.cluster up|down [--dir .cluster]`: what `make cluster-up/down` run.

`up` leaves etcd, kube-apiserver and kube-controller-manager running in the background and
writes an admin kubeconfig to `<dir>/kubeconfig`; `down` stops them and removes their state.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from .controlplane import REPO, ControlPlane, ControlPlaneError, stop_recorded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_dev.cluster")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=REPO / ".cluster")
    args = parser.parse_args(argv)
    state = args.dir / "state"
    if args.action == "down":
        stopped = stop_recorded(state)
        time.sleep(1 if stopped else 0)
        shutil.rmtree(state, ignore_errors=True)
        (args.dir / "kubeconfig").unlink(missing_ok=True)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    if (state / "endpoints.json").exists():
        print(f"already up ({state}); `make cluster-down` first", file=sys.stderr)
        return 2
    try:
        plane = ControlPlane(state_dir=state, bin_dir=args.dir / "bin").start()
    except ControlPlaneError as err:
        print(f"cluster-up: {err}", file=sys.stderr)
        return 1
    shutil.copy(plane.admin_kubeconfig, args.dir / "kubeconfig")
    print(f"control plane up at {plane.url}; export KUBECONFIG={args.dir / 'kubeconfig'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
