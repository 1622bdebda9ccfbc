"""Read FineTuneTask YAML files for the CLI and local runs (one or many documents per file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from .spec import FineTuneTaskSpec, SpecError, parse_task_document


@dataclass(frozen=True)
class TaskFile:
    name: str
    namespace: str
    spec: FineTuneTaskSpec
    source: str


def load_tasks(path: str | Path) -> list[TaskFile]:
    """Every FineTuneTask in a YAML file; SpecError (one line, names the file) otherwise."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"{p}: cannot read: {err}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise SpecError(f"{p}{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    if not docs:
        raise SpecError(f"{p}: no FineTuneTask in the file")
    out = []
    for doc in docs:
        try:
            meta, spec = parse_task_document(doc, local=True)
        except SpecError as err:
            raise SpecError(f"{p}: {err}") from None
        out.append(TaskFile(meta["name"], meta.get("namespace") or "default", spec, str(p)))
    return out
