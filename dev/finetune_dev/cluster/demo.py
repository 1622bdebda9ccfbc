"""`make demo-cluster`: the user journey on one machine, on a real Kubernetes control plane.

Starts etcd + kube-apiserver + kube-controller-manager (make controlplane), the embedded S3
server and the operator (as the chart's ServiceAccount, under the chart's RBAC); installs the CRD
and RBAC from the chart; `kubectl apply`s the three demo tasks; a node plays the kubelet and runs
each trainer pod's command as a local process (the tiny offline model by default, SmolLM2-135M
with --smollm); ends by printing `kubectl get ftt -o wide` from the real server. Everything is
stopped at the end; state lives in `.demo/cluster/`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from finetune_contract import one_line

from .. import demo_tasks
from ..demo import DATA_URI, OUTPUT_URI, QUICK_RECORDS, QUICK_TRAINING, base_model
from .controlplane import ControlPlane, ControlPlaneError
from .install import (InstallError, apply, chart_rbac, ensure_namespace, install_crd, kubectl,
                      operator_identity)
from .node import Node
from .operator_process import OperatorProcess

NAMESPACE = "demo"
FINAL_PHASES = ("Succeeded", "Failed", "Skipped")
TIMEOUT_S = {"quick": 900, "smollm2": 3600}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finetune-demo-cluster",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--smollm", action="store_true",
                        help="train SmolLM2-135M-Instruct (from PyPI) instead of the tiny model")
    parser.add_argument("--dir", default=".demo/cluster", help="working folder")
    parser.add_argument("--records", type=int, help="records per task")
    args = parser.parse_args(argv)
    root = Path(args.dir).resolve()
    shutil.rmtree(root, ignore_errors=True)  # a fresh cluster each time
    root.mkdir(parents=True)
    quick = not args.smollm
    try:
        model = base_model(quick)
    except Exception as err:  # noqa: BLE001 - one line, whatever broke in the fetch
        print(f"demo-cluster: cannot get the base model: {one_line(str(err))}", file=sys.stderr)
        return 2
    records = args.records or (QUICK_RECORDS if quick else demo_tasks.DEFAULT_RECORDS)
    try:
        return run(root, model, quick=quick, records=records)
    except (ControlPlaneError, InstallError) as err:
        print(f"demo-cluster: {one_line(str(err), 600)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo-cluster: interrupted", file=sys.stderr)
        return 130


def run(root: Path, model: str, *, quick: bool, records: int) -> int:
    from kubernetes import config

    from finetune_contract.storage import Credentials, Storage

    from ..devs3 import start_s3

    started = time.monotonic()
    plane = ControlPlane(state_dir=root / "state")
    s3 = node = operator = None
    try:
        print("demo-cluster: starting etcd, kube-apiserver, kube-controller-manager", flush=True)
        plane.start()
        admin = plane.admin_kubeconfig
        s3 = start_s3(root / "s3")
        print(f"demo-cluster: control plane {plane.url}, S3 {s3.endpoint}", flush=True)
        install_crd(admin)
        identity = operator_identity(plane, root, chart_rbac())
        print(f"demo-cluster: CRD and RBAC installed from the chart; the operator runs as "
              f"{identity.username}", flush=True)

        node = Node(config.new_client_from_config(config_file=str(admin)),
                    work_root=root / "node", max_running=1).start()
        operator = OperatorProcess(
            identity.kubeconfig, root / "operator.log", default_s3_endpoint=s3.endpoint,
            allow_loopback_endpoints="true", device_profile="cpu", poll_interval=2.0,
            trainer_image="finetune-trainer:local", trainer_image_pull_policy="Never").start()

        ensure_namespace(admin, NAMESPACE)
        apply(admin, [{"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                       "metadata": {"name": "s3-credentials", "namespace": NAMESPACE},
                       "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key,
                                      "AWS_SECRET_ACCESS_KEY": s3.secret_key}}])
        storage = Storage(endpoint=s3.endpoint,
                          credentials=Credentials.from_env(s3.env()))
        tasks = [demo_tasks.generate(n, records) for n in demo_tasks.DEMO_TASKS]
        paths = demo_tasks.write_tasks(tasks, storage, data_root=DATA_URI,
                                       output_uri=OUTPUT_URI, base_model=model,
                                       yaml_dir=root / "tasks", namespace=NAMESPACE,
                                       training=QUICK_TRAINING if quick else None)
        for path in paths:
            print(f"$ kubectl apply -f {path}\n"
                  f"{kubectl(admin, 'apply', '-f', str(path)).stdout.strip()}", flush=True)
        phases = _follow(admin, [t.name for t in tasks],
                         TIMEOUT_S["quick" if quick else "smollm2"], operator)
        print(f"\n$ kubectl get ftt -n {NAMESPACE} -o wide")
        print(kubectl(admin, "get", "ftt", "-n", NAMESPACE, "-o", "wide").stdout, flush=True)
        print(f"demo-cluster: {len(tasks)} tasks in {time.monotonic() - started:.0f} s; "
              f"operator log {operator.log}", flush=True)
        return 0 if all(p == "Succeeded" for p in phases.values()) else 1
    finally:
        for part in (operator, node):
            if part is not None:
                part.stop()
        if s3 is not None:
            s3.stop()
        plane.stop()


def _follow(admin: Path, names: list[str], timeout: float, operator: OperatorProcess
            ) -> dict[str, str]:
    """Print each phase change until every task is final (or the timeout)."""
    import json

    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = json.loads(kubectl(admin, "get", "ftt", "-n", NAMESPACE, "-o", "json").stdout)
        for item in items["items"]:
            name, status = item["metadata"]["name"], item.get("status") or {}
            phase = status.get("phase", "")
            if phase and seen.get(name) != phase:
                seen[name] = phase
                print(f"  {name}: {phase}" + (f" ({status['message']})"
                                              if status.get("message") else ""), flush=True)
        if all(seen.get(n) in FINAL_PHASES for n in names):
            return seen
        if not operator.running:
            raise InstallError(f"the operator exited; see {operator.log}")
        time.sleep(2)
    raise InstallError(f"tasks not final after {timeout:.0f}s: {seen}")


if __name__ == "__main__":
    sys.exit(main())
