"""An Axolotl plugin that lets a multi-process run train on CPUs (gloo), for the CPU profile.

Why: Axolotl 0.19 assumes a GPU per process once WORLD_SIZE > 1. Two places break without one:
`prepare_optim_env` probes CUDA peer-to-peer access (torch.cuda.can_device_access_peer raises
"Found no NVIDIA driver"), and `normalize_config` pins the model to `{"": LOCAL_RANK}`, which
transformers reads as cuda:LOCAL_RANK. Measured here: `axolotl train --launcher torchrun --
--nproc-per-node 2` on the tiny model dies at model load without this plugin and trains with
it (gloo DDP, identical losses on both ranks). On a GPU the plugin does nothing.

The probe is replaced when this module is imported: Axolotl imports plugins (prepare_plugins)
before it calls prepare_optim_env, and no plugin hook runs in between. The device map is fixed
in pre_model_load, the hook that runs after Axolotl has copied it into the loader's kwargs:
the map is changed in place, the one object both hold.
"""

from __future__ import annotations

from typing import Any

import torch
from axolotl.integrations.base import BasePlugin

PLUGIN = "finetune_trainer.cpu_distributed.CpuDistributedPlugin"


def _no_gpu_p2p_to_check() -> bool:
    return True  # no GPUs, so no peer-to-peer path to disable


if not torch.cuda.is_available():
    import axolotl.utils.trainer as _axolotl_trainer

    _axolotl_trainer.check_cuda_p2p_ib_support = _no_gpu_p2p_to_check


def cpu_device_map(device_map: Any) -> Any:
    """The same map with every entry on the CPU (in place, see the module docstring)."""
    if isinstance(device_map, dict):
        for key in list(device_map):
            device_map[key] = "cpu"
    return device_map


class CpuDistributedPlugin(BasePlugin):  # type: ignore[misc]
    """Keeps each process of a CPU run on the CPU."""

    def pre_model_load(self, cfg: Any) -> None:
        if not torch.cuda.is_available():
            cpu_device_map(cfg.device_map)
