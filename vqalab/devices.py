"""What ``train.device: auto`` means on this machine.

``$VQALAB_DEVICE`` when set (``cpu``, ``cuda``, ``cuda:N`` or ``mps``), else CUDA when available,
else the CPU. The variable is inherited by subprocesses, notebook kernels and ``torchrun`` workers,
so one setting moves everything started from a shell: the test suite sets ``VQALAB_DEVICE=cpu`` for
every test not marked ``cuda``, so its CPU results hold on a CUDA machine too.
"""

from __future__ import annotations

import os
import re

import torch

from vqalab.registry import ConfigError

DEVICE_ENV = "VQALAB_DEVICE"
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def auto_device_name() -> str:
    """The device ``auto`` stands for: ``$VQALAB_DEVICE``, else ``cuda`` when available, else ``cpu``."""
    chosen = os.environ.get(DEVICE_ENV, "").strip()
    if chosen:
        if chosen == "auto" or not DEVICE_PATTERN.fullmatch(chosen):
            raise ConfigError(f"${DEVICE_ENV} = {chosen!r}: expected cpu, cuda, cuda:N (N = GPU index) or mps, "
                              f"or unset it (auto: CUDA when available, else the CPU)")
        return chosen
    return "cuda" if torch.cuda.is_available() else "cpu"
