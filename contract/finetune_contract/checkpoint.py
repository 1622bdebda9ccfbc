"""Checkpoints of a run in S3: the marker that makes one count, and the resume history.

Why a marker: an upload can stop anywhere (a preempted node, a deleted pod), and S3 has no
multi-object commit. The trainer uploads every file of `checkpoints/step-N/` first and
`checkpoint.json` (CheckpointMarker: each file's size and sha256, the step, the eval losses and
the early-stopping state) last; a reader trusts a checkpoint only when the marker parses and
every file matches it. Deleting goes the other way round: marker first. Layout:

    checkpoints/step-N/...            the Trainer's checkpoint folder, file for file
    checkpoints/step-N/checkpoint.json  CheckpointMarker, written last
    checkpoints/resumes.json          ResumeHistory: every resume of this run, oldest first
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath

from pydantic import Field, model_validator

from .run import RunLayout, _Model

MARKER_NAME = "checkpoint.json"
RESUMES_NAME = "resumes.json"
MARKER_SCHEMA_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)/")

# Why a local copy of a checkpoint does not count (the trainer logs one of these, naming it).
MISSING_FILE = "missing file"
SIZE_MISMATCH = "size mismatch"
SHA_MISMATCH = "sha256 mismatch"


class CheckpointFile(_Model):
    """One file of a checkpoint folder, relative to it."""

    name: str
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class EarlyStoppingState(_Model):
    """What early stopping needs to go on where it stopped (transformers' EarlyStoppingCallback
    keeps the counter; the best metric is the Trainer's)."""

    patience: int | None = None
    threshold: float | None = None
    patience_counter: int = Field(0, description="Evaluations since the last gain that counted.")
    best_metric: float | None = None
    best_step: int | None = None


class CheckpointMarker(_Model):
    """checkpoint.json: written last into `checkpoints/step-N/`; lists what must be there."""

    schema_version: int = MARKER_SCHEMA_VERSION
    run_id: str
    step: int = Field(ge=1)
    max_steps: int | None = None
    epoch: float | None = None
    eval_loss: float | None = Field(None, description="The evaluation taken at this step.")
    best_step: int | None = Field(None, description="The best checkpoint's step so far.")
    best_eval_loss: float | None = None
    early_stopping: EarlyStoppingState | None = None
    files: list[CheckpointFile]
    created: str = Field(description="RFC 3339 UTC time the upload finished.")

    @model_validator(mode="after")
    def _files_are_plain_and_unique(self) -> CheckpointMarker:
        names = [f.name for f in self.files]
        if not names:
            raise ValueError("a checkpoint marker lists no files")
        if len(set(names)) != len(names):
            raise ValueError("a checkpoint marker lists a file twice")
        for name in names:
            parts = PurePosixPath(name).parts
            if name.startswith("/") or ".." in parts or name == MARKER_NAME or not parts:
                raise ValueError(f"not a checkpoint file name: {name!r}")
        return self

    def problem(self, folder: Path) -> str | None:
        """Why the local copy in `folder` is not this checkpoint ('sha256 mismatch in X'), or
        None when every listed file is there with its size and sha256."""
        for f in self.files:
            path = folder / f.name
            if not path.is_file():
                return f"{MISSING_FILE} {f.name}"
            if path.stat().st_size != f.bytes:
                return f"{SIZE_MISMATCH} in {f.name}"
            with path.open("rb") as fh:
                if hashlib.file_digest(fh, "sha256").hexdigest() != f.sha256:
                    return f"{SHA_MISMATCH} in {f.name}"
        return None


def describe(folder: Path) -> list[CheckpointFile]:
    """Every file under `folder` with its size and sha256 (what a marker lists)."""
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with path.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        out.append(CheckpointFile(name=path.relative_to(folder).as_posix(),
                                  bytes=path.stat().st_size, sha256=digest))
    return out


class ResumeRecord(_Model):
    from_step: int
    at: str = Field(description="RFC 3339 UTC time the trainer resumed.")


class ResumeHistory(_Model):
    """checkpoints/resumes.json: one record per resume, so a later pod knows how many came
    before it (metrics.json resumeCount)."""

    resumes: list[ResumeRecord] = Field(default_factory=list)

    def add(self, from_step: int, at: str) -> ResumeHistory:
        return ResumeHistory(resumes=[*self.resumes, ResumeRecord(from_step=from_step, at=at)])

    @property
    def count(self) -> int:
        return len(self.resumes)


def marker_uri(layout: RunLayout, step: int) -> str:
    return layout.checkpoint(step) + MARKER_NAME


def resumes_uri(layout: RunLayout) -> str:
    return layout.checkpoints + RESUMES_NAME


def step_of(layout: RunLayout, uri: str) -> int | None:
    """The step of the checkpoint an object under `checkpoints/` belongs to; None otherwise."""
    if not uri.startswith(layout.checkpoints):
        return None
    match = _STEP_DIR.match(uri[len(layout.checkpoints):])
    return int(match.group(1)) if match else None
