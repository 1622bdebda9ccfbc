"""GPU tier: real CUDA work (bitsandbytes 4-bit kernels). A test marked `gpu` is skipped, with
the reason, where torch sees no CUDA device: CI machines have none, so these run only where one
is present (`pytest -m gpu tests/gpu`)."""

from __future__ import annotations

import pytest

NO_CUDA = "needs a CUDA device: torch.cuda.is_available() is False here"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("gpu")]
    if not marked:
        return
    import torch  # only when a gpu test was collected: importing torch costs seconds

    if torch.cuda.is_available():
        return
    for item in marked:
        item.add_marker(pytest.mark.skip(reason=NO_CUDA))
