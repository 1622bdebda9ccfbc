"""The trainer process as its callers see it: exit codes, progress lines, environment.

One definition each, used by the trainer (which exits and prints), the operator (the Job's
env and podFailurePolicy), the CLIs and the local runner (which reads the lines and codes).
"""

from __future__ import annotations

from pydantic import ConfigDict, ValidationError

from .run import _Model

EXIT_OK = 0
EXIT_FAILED = 1         # anything else: worth a retry (the Job's backoffLimit)
EXIT_BAD_INPUT = 2      # the input is at fault: the Job's podFailurePolicy fails it, no retry
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143   # SIGTERM: pod deletion, the local runner stopping it (128 + SIGTERM)

# Trackers and telemetry off, unbuffered output (progress lines arrive as they happen). The
# Job sets them, the local runner sets them (the user's own environment wins there), and the
# trainer sets them on itself again for the Axolotl child.
TRAINER_ENV = {
    "WANDB_MODE": "disabled",
    "DO_NOT_TRACK": "1",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}
# Once nothing needs the hub: the trainer after fetching the model, the local runner when the
# base model is a local folder (a hub id must still be able to download).
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

PROGRESS_PREFIX = "FINETUNE_PROGRESS "


class ProgressEvent(_Model):
    """One progress line on the trainer's stdout: `FINETUNE_PROGRESS {"stage": ..., ...}`.
    The training loop's figures are typed (the trainer's TrainerCallback writes them, the local
    runner draws them); stage-specific ones (candidate, learningRate...) ride along as extras."""

    model_config = ConfigDict(extra="allow")

    stage: str
    step: int | None = None
    max_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None       # the training loss last logged
    eval_loss: float | None = None  # set on the line of an evaluation
    tokens: int | None = None       # tokens the training loop has processed so far (tokens/s)
    resumed_from_step: int | None = None  # on the train stage's first line after a resume

    def line(self) -> str:
        return PROGRESS_PREFIX + self.model_dump_json(by_alias=True, exclude_none=True)

    @classmethod
    def parse(cls, line: str) -> ProgressEvent | None:
        """The event on a progress line; None for any other line."""
        if not line.startswith(PROGRESS_PREFIX):
            return None
        try:
            return cls.model_validate_json(line[len(PROGRESS_PREFIX):])
        except ValidationError:
            return None
