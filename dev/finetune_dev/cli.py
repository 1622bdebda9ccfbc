"""`finetune run --local`: the dev package's subcommand, registered through the `finetune.cli`
entry point so the operator's CLI never imports dev code."""

from __future__ import annotations

import argparse
from typing import Any

from finetune_operator.cli import UserError


def cmd_run(args: argparse.Namespace) -> int:
    if not args.local:
        raise UserError("only --local runs are supported from the CLI; on a cluster, kubectl apply")
    from .local import run_local

    return run_local(args.tasks, output=args.output, profile=args.profile, force=args.force)


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="Run tasks end to end (local, no cluster)")
    p.add_argument("tasks", nargs="+")
    p.add_argument("--local", action="store_true", help="Train in a local process, no cluster")
    p.add_argument("--output")
    p.add_argument("--profile", choices=["gpu", "cpu"], default=None,
                   help="Default: gpu when CUDA is available, else cpu")
    p.add_argument("--force", action="store_true", help="Retrain even if the run is complete")
    p.set_defaults(func=cmd_run)
