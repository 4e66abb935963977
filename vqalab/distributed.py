"""One run over several processes with DistributedDataParallel, as started by ``torchrun``.

``torchrun --nproc-per-node=N -m vqalab train PARAMS.yaml`` starts N copies of ``vqalab train``;
``fit`` calls the hooks here, which do nothing in a single process (no ``WORLD_SIZE`` > 1):

- ``setup``: the process group (nccl on GPUs, gloo on the CPU) and this rank's device.
- ``epoch_batches``: the seeded batch order of a single-process run with batch ``B × N`` (a pure
  function of seed and epoch, so resume stays exact); each global batch is cut into N contiguous
  parts and rank r trains part r. ``train.batch_size`` is the batch of one process.
- ``val_batches`` / ``sum_over_ranks`` / ``gather_predictions``: each rank evaluates a contiguous
  share of the validation split; sums and predictions are combined, so every rank sees the metrics
  of the whole split.
- Only rank 0 writes: ``runs`` skips file writes on other ranks (``is_main``) and the run folder
  rank 0 creates is broadcast to the others (``share_run_dir``).

Notebooks do not start process groups themselves (spawn and fork break in kernels): they run the
command in a subprocess.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

TIMEOUT = timedelta(minutes=30)  # a rank waiting longer than this for the others gives up


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launch_rank() -> int:
    """This process's rank as torchrun set it (known before the process group is joined)."""
    return int(os.environ.get("RANK", "0"))


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (once) and return this rank's device (``cuda:LOCAL_RANK``)."""
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
        log.info("rank %d of %d on %s (%s)", rank(), world_size(), device, backend)
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` (which stays the one to save and evaluate)."""
    if world_size() == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int,
                  groups: list[int] | None = None) -> list[list[int]]:
    """This rank's training batches of one epoch: its part of each seeded global batch.

    A last global batch smaller than the number of ranks is dropped (every rank must make the same
    number of steps, or the gradient all-reduce would wait forever).
    """
    from vqalab.data import samplers

    n = world_size()
    global_batches = samplers.epoch_batches(num_samples, batch_size * n, seed, epoch, groups)
    if n == 1:
        return global_batches
    return [split_evenly(batch, n)[rank()] for batch in global_batches if len(batch) >= n]


def split_evenly(items: list, parts: int) -> list[list]:
    """``parts`` contiguous slices whose sizes differ by at most one (the first ones longer)."""
    size, extra = divmod(len(items), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [items[bounds[i]:bounds[i + 1]] for i in range(parts)]


def val_batches(num_samples: int, batch_size: int) -> list[list[int]]:
    """This rank's contiguous share of the validation split, in batches (ranks in order)."""
    share = split_evenly(list(range(num_samples)), world_size())[rank()]
    return [share[i:i + batch_size] for i in range(0, len(share), batch_size)]


def sum_over_ranks(*values: float) -> tuple[float, ...]:
    """Element-wise sums of ``values`` over all ranks (float64; unchanged in one process)."""
    if world_size() == 1:
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return tuple(totals.tolist())


def all_finite(value: torch.Tensor) -> bool:
    """True when ``value`` is finite on every rank, so that all ranks stop at the same step."""
    finite = bool(torch.isfinite(value).all())
    if world_size() == 1:
        return finite
    return sum_over_ranks(float(finite))[0] == world_size()


def gather_predictions(preds: torch.Tensor) -> torch.Tensor:
    """The validation predictions of all ranks, concatenated in rank order (= sample order)."""
    if world_size() == 1:
        return preds
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, preds.cpu())
    return torch.cat(parts)


def share_run_dir(create: Callable[[], Path]) -> Path:
    """Rank 0 creates the run folder; every rank returns its path."""
    if world_size() == 1:
        return create()
    box = [str(create()) if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def summary_fields(batch_size: int, grad_accum_steps: int) -> dict:
    """``world_size`` and ``global_batch`` (samples per optimizer step over all ranks) for summary.json."""
    return {"world_size": world_size(), "global_batch": batch_size * world_size() * grad_accum_steps}
