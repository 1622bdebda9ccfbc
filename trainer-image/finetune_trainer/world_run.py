"""What a run of several training processes changes in the trainer: the step schedule, and the
part of the work each node does.

The budget (operator, then recount.py) is in optimizer steps of one process's micro-batches.
Under DDP every step takes one micro-batch per process, so the same max_steps would see the data
`world size` times as often: more epochs than the budget chose, and overfitting on ~100
records. The schedule is divided by the world size here, in one place, after the recount, and
metrics.json records the world it ran in.
"""

from __future__ import annotations

import math
import os
from typing import Any

from finetune_contract.world import World

from .errors import bad_input

SCHEDULE_KEYS = ("max_steps", "eval_steps", "save_steps", "warmup_steps")


def world_from_env() -> World:
    """The run's world, from the Job's env; a bad value is bad input (exit 2), not a retry."""
    try:
        return World.from_env(os.environ)
    except ValueError as err:
        raise bad_input("BadWorld", f"the run's process group is misconfigured: {err}") from None


def scale_schedule(config: dict[str, Any], world: World) -> dict[str, int]:
    """The schedule keys of `config` divided by the world size (rounded up, at least 1)."""
    if world.size == 1:
        return {}
    return {key: max(1, math.ceil(int(config[key]) / world.size))
            for key in SCHEDULE_KEYS if config.get(key)}


def scale_step(step: int, world: World) -> int:
    """A step number of the one-process schedule (e.g. the earliest stop) in the world's."""
    return math.ceil(step / world.size) if step else 0
