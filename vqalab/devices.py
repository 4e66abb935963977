"""What ``train.device: auto`` means on this machine, and torch's CPU threads for a run.

``$VQALAB_DEVICE`` when set (``cpu``, ``cuda``, ``cuda:N`` or ``mps``), else CUDA when available,
else the CPU. The variable is inherited by subprocesses, notebook kernels and ``torchrun`` workers,
so one setting moves everything started from a shell: the test suite sets ``VQALAB_DEVICE=cpu`` for
every test not marked ``cuda``, so its CPU results hold on a CUDA machine too.

``torch_threads`` applies the CPU thread count ``vqalab.threads`` chose (that choice needs no torch).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from vqalab.params import DEVICE_PATTERN
from vqalab.registry import ConfigError

DEVICE_ENV = "VQALAB_DEVICE"


def auto_device_name() -> str:
    """The device ``auto`` stands for: ``$VQALAB_DEVICE``, else ``cuda`` when available, else ``cpu``."""
    chosen = os.environ.get(DEVICE_ENV, "").strip()
    if chosen:
        if chosen == "auto" or not DEVICE_PATTERN.fullmatch(chosen):
            raise ConfigError(f"${DEVICE_ENV} = {chosen!r}: expected cpu, cuda, cuda:N (N = GPU index) or mps, "
                              f"or unset it (auto: CUDA when available, else the CPU)")
        return chosen
    return "cuda" if torch.cuda.is_available() else "cpu"


def set_interop_threads(threads: int = 1) -> int:
    """Inter-op threads (parallel independent operations; eager training hardly uses them) may be
    set once per process, before any such work: 1 keeps them from competing with the intra-op
    threads. Returns the count in force."""
    if torch.get_num_interop_threads() != threads:
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # already set, or inter-op work already ran: keep what there is
            pass
    return torch.get_num_interop_threads()


@contextmanager
def torch_threads(num_threads: int | None):
    """Run the block with ``num_threads`` torch CPU threads (None: torch's current setting), then
    restore the caller's setting: the thread count is process-wide. ``choose_threads`` decides the
    count; inter-op threads are set to 1 the first time (once per process)."""
    set_interop_threads(1)
    before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
