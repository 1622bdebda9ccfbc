"""`make demo` / `make demo-quick`: the whole product on one machine, no cluster, no model hub.

Starts the embedded S3 server (SeaweedFS on free loopback ports, data in `.demo/s3`), uploads
three synthetic tasks of different kinds (demo_tasks), writes their FineTuneTask YAMLs to
`.demo/tasks/`, runs them through `finetune run --local`'s code (local.run_tasks) on
SmolLM2-135M-Instruct from PyPI (or, with --quick, the tiny offline model), prints the table and
writes `.demo/report/report.md` with loss curves. The server is always stopped at the end.

The task YAMLs leave `spec.storage.endpoint` empty and the endpoint comes from
AWS_ENDPOINT_URL: the server's port changes per start, and a port in the spec would change
the run id and defeat the reuse of prepared splits and complete runs across invocations.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from . import demo_tasks
from finetune_contract import one_line

DEMO_DIR = Path(".demo")
DATA_URI = "s3://demo-data"
OUTPUT_URI = "s3://demo-runs"
# --quick shows the plumbing, not quality: the tiny model gains little from a long budget, and a
# fixed short run keeps the whole demo to a few minutes on 2 cores.
QUICK_TRAINING = {"maxSteps": 20}
QUICK_RECORDS = 100


def base_model(quick: bool) -> str:
    from .smollm import cache_dir, ensure_smollm2

    if quick:
        from .tinymodel import build_tiny_model

        return str(build_tiny_model(cache_dir()))
    return str(ensure_smollm2())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finetune-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny offline model (under 3 minutes)")
    parser.add_argument("--fresh", action="store_true",
                        help="wipe .demo/ first (otherwise complete runs are reused)")
    parser.add_argument("--dir", default=str(DEMO_DIR), help="working folder (default .demo)")
    parser.add_argument("--records", type=int, help=f"records per task (default "
                        f"{demo_tasks.DEFAULT_RECORDS}, {QUICK_RECORDS} with --quick)")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    if args.fresh and root.exists():
        shutil.rmtree(root)
    started = time.monotonic()
    try:
        model = base_model(args.quick)
    except Exception as err:  # noqa: BLE001 - one line, whatever broke in the fetch
        print(f"demo: cannot get the base model: {one_line(str(err))}", file=sys.stderr)
        return 2
    records = args.records or (QUICK_RECORDS if args.quick else demo_tasks.DEFAULT_RECORDS)
    return run_demo(root, model, quick=args.quick, records=records, started=started)


def run_demo(root: Path, model: str, *, quick: bool, records: int, started: float) -> int:
    from .devs3 import start_s3
    from .local import interrupt_on_sigterm

    print(f"demo: starting the embedded S3 server (data in {root / 's3'})", flush=True)
    with interrupt_on_sigterm():
        return _with_server(start_s3(root / "s3"), root, model, quick=quick, records=records,
                            started=started)


def _with_server(server: Any, root: Path, model: str, *, quick: bool, records: int,
                 started: float) -> int:
    from .demo_report import write_report
    from .local import EXIT_INTERRUPTED, BadInput, run_tasks
    from finetune_operator.spec import SpecError
    from finetune_contract.storage import Credentials, Storage, StorageError

    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        storage = Storage(endpoint=server.endpoint, credentials=Credentials.from_env())
        tasks = [demo_tasks.generate(n, records) for n in demo_tasks.DEMO_TASKS]
        label = "quick" if quick else "smollm2"
        paths = demo_tasks.write_tasks(tasks, storage, data_root=DATA_URI,
                                       output_uri=f"{OUTPUT_URI}", base_model=model,
                                       yaml_dir=root / "tasks" / label,
                                       training=QUICK_TRAINING if quick else None)
        print(f"demo: {server.endpoint}: uploaded {', '.join(t.name for t in tasks)} "
              f"({records} records each); task files in {paths[0].parent}", flush=True)
        results = run_tasks([str(p) for p in paths])
        wall = time.monotonic() - started
        report = write_report(results, {t.name: t for t in tasks}, root / "report" / label,
                              model=model, wall_s=wall,
                              title="FineTune demo" + (" (quick, tiny model)" if quick else ""))
        print(f"\ndemo: {len(results)} tasks in {wall:.0f} s; report: {report}", flush=True)
        if any(r.exit_code == EXIT_INTERRUPTED for r in results):
            return 130
        bad = [r.name for r in results if r.metrics is None or r.metrics.improvement <= 0]
        if bad:
            print(f"demo: no improvement (or no result) on: {', '.join(bad)}", file=sys.stderr)
            return 1
        return 0
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    except (BadInput, SpecError, StorageError) as err:
        print(f"demo: {one_line(str(err))}", file=sys.stderr)
        return 2
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


if __name__ == "__main__":
    sys.exit(main())
