"""The `finetune` command: prepare, render, operator, crd (plus `run --local` where the dev
package is installed).

Every expected failure (bad YAML, bad spec, bad data, storage errors) prints one line to stderr
and exits 2; no traceback reaches the user. Heavy modules are imported per subcommand.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from finetune_contract import EXIT_BAD_INPUT, RunLayout, one_line


class UserError(Exception):
    """Any error whose message is the whole story (exit 2)."""


CLI_PLUGIN_GROUP = "finetune.cli"


def _layout(task: Any, output: str | None) -> RunLayout:
    root = output or task.spec.output.uri
    return RunLayout(root=root, namespace=task.namespace, task=task.name, run_id=task.spec.run_id())


def _storage(task: Any) -> Any:
    from finetune_contract.storage import Credentials, Storage

    return Storage(endpoint=task.spec.storage.endpoint, credentials=Credentials.from_env(),
                   region=task.spec.storage.region)


def _load_allowed(path: str) -> list[Any]:
    """The file's tasks, each checked against the admin's policy (FINETUNE_* env, as the
    operator reads it; loopback endpoints allowed unless FINETUNE_ALLOW_LOOPBACK_ENDPOINTS says
    otherwise) before anything is read or written."""
    from . import policy
    from .taskfile import load_tasks

    tasks = load_tasks(path)
    rules = policy.from_env(local=True)
    for task in tasks:
        violation = policy.check_spec(task.spec, rules)
        if violation is not None:
            raise UserError(f"{task.source}: {violation.message}")
    return tasks


def cmd_prepare(args: argparse.Namespace) -> int:
    from .prepare import prepare_run

    for task in _load_allowed(args.task):
        manifest = prepare_run(task.spec, _layout(task, args.output), _storage(task))
        print(manifest.model_dump_json(by_alias=True, indent=2))
    return 0


def _gpu_memory_gib(args: argparse.Namespace) -> float | None:
    """--gpu-memory-gib, else FINETUNE_GPU_MEMORY_GIB (the operator's setting), else unknown."""
    raw = args.gpu_memory_gib if args.gpu_memory_gib is not None else \
        os.environ.get("FINETUNE_GPU_MEMORY_GIB") or None
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise UserError(f"GPU memory must be a positive number of GiB, got {raw!r}")
    return value


def cmd_render(args: argparse.Namespace) -> int:
    import yaml

    from .prepare import prepare_run
    from .render import explain_axolotl_config, render_axolotl_config

    for task in _load_allowed(args.task):
        layout = _layout(task, args.output)
        manifest = prepare_run(task.spec, layout, _storage(task))
        sized = {"profile": args.profile, "gpu_memory_gib": _gpu_memory_gib(args)}
        config = render_axolotl_config(task.spec, manifest, layout, **sized)
        if args.explain:
            for key, why in explain_axolotl_config(task.spec, manifest, layout, **sized):
                print(f"{key}: {why}")
        else:
            sys.stdout.write(yaml.safe_dump(config, sort_keys=False))
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    from .handlers import run_operator

    return run_operator()


def cmd_crd(args: argparse.Namespace) -> int:
    from .crdgen import render_crd

    sys.stdout.write(render_crd())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="Clean and split a task's data; print the manifest")
    p.add_argument("task", help="FineTuneTask YAML file")
    p.add_argument("--output", help="Override spec.output.uri (s3:// URI or local directory)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("render", help="Print the Axolotl config for a task")
    p.add_argument("task")
    p.add_argument("--output")
    p.add_argument("--profile", choices=["gpu", "cpu"], default="gpu")
    p.add_argument("--explain", action="store_true", help="Say why each value was chosen")
    p.add_argument("--gpu-memory-gib", type=float, default=None,
                   help="Memory of one GPU, for training.sharding auto "
                        "(default: FINETUNE_GPU_MEMORY_GIB, as the operator)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("operator", help="Run the Kopf operator (settings from FINETUNE_* env)")
    p.set_defaults(func=cmd_operator)

    p = sub.add_parser("crd", help="Print the CustomResourceDefinition")
    p.set_defaults(func=cmd_crd)
    _add_plugin_commands(sub)
    return parser


def _add_plugin_commands(sub: Any) -> None:
    """Subcommands of packages installed beside this one (entry point group `finetune.cli`):
    the dev package adds `run --local` and `demo` this way, so the operator never imports dev
    code and an image without the dev package simply has no such subcommands."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=CLI_PLUGIN_GROUP):
        try:
            register = entry.load()
        except ImportError:  # declared by the distribution, but that package is not installed
            continue
        register(sub)


def _is_user_error(err: BaseException) -> bool:
    from .policy import PolicyError
    from .spec import SpecError
    from finetune_contract.storage import StorageError

    known: tuple[type[BaseException], ...] = (UserError, SpecError, StorageError, PolicyError)
    try:
        from .prepare import PrepareError

        known += (PrepareError,)
    except ImportError:
        pass
    return isinstance(err, known)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("finetune: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place that turns errors into exit codes
        if _is_user_error(err):
            print(f"finetune {args.command}: {one_line(str(err))}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise


if __name__ == "__main__":
    sys.exit(main())
