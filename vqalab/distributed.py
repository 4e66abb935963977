"""One run over several processes with DistributedDataParallel, as started by ``torchrun``.

``torchrun --nproc-per-node=N -m vqalab train PARAMS.yaml`` starts N copies of ``vqalab train``;
``fit`` calls the hooks here, which do nothing in a single process (no ``WORLD_SIZE`` > 1):

- ``setup``: the process group (nccl on GPUs, gloo on the CPU) and this rank's device.
- ``epoch_batches``: the seeded batch order of a single-process run with batch ``B × N`` (a pure
  function of seed and epoch, so resume stays exact); each global batch is cut into N contiguous
  parts and rank r trains part r. ``train.batch_size`` is the batch of one process.
  ``loss_weights`` scales each part's mean loss by its share of the global batch, so that DDP's
  average over ranks is the mean over the global batch even when the parts differ in size.
- ``from_main``: rank 0's value on every rank (``batch_size: auto`` is measured there only).
- ``check_resume``: a run resumes only with the number of processes it started with.
- ``sync_batchnorm``: train-mode BatchNorm becomes ``SyncBatchNorm`` (CUDA), or is refused on the
  CPU, where this torch's ``SyncBatchNorm`` does not run.
- ``no_sync``: the gradient all-reduce is skipped on the micro-batches before an optimizer step.
- ``val_batches`` / ``sum_over_ranks`` / ``gather_predictions``: each rank evaluates a contiguous
  share of the validation split; sums and predictions are combined, so every rank sees the metrics
  of the whole split.
- Only rank 0 writes: ``runs`` skips file writes on other ranks (``is_main``) and the run folder
  rank 0 creates is broadcast to the others (``share_run_dir``).

Notebooks do not start process groups themselves (spawn and fork break in kernels): they run the
command in a subprocess.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from vqalab.registry import ConfigError

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


def launch_world_size() -> int:
    """The number of processes torchrun started (known before the process group is joined)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


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
    return [part for part, _ in _rank_parts(num_samples, batch_size, seed, epoch, groups)]


def loss_weights(num_samples: int, batch_size: int, seed: int, epoch: int,
                 groups: list[int] | None = None) -> list[float]:
    """The factor on this rank's mean loss of each of its ``epoch_batches``: N × part / global batch.

    DDP averages the ranks' gradients equally; with these factors the average is the gradient of
    the mean loss over the whole global batch, as one process would take it, also when the parts
    differ in size (the last global batch 5 over 2 ranks: 3 and 2 samples, factors 1.2 and 0.8).
    All 1.0 in one process and for parts of equal size.
    """
    n = world_size()
    return [n * len(part) / size for part, size in _rank_parts(num_samples, batch_size, seed, epoch, groups)]


def _rank_parts(num_samples: int, batch_size: int, seed: int, epoch: int,
                groups: list[int] | None) -> list[tuple[list[int], int]]:
    """(this rank's part, the global batch's size) for each kept global batch of the epoch."""
    from vqalab.data import samplers

    n = world_size()
    global_batches = samplers.epoch_batches(num_samples, batch_size * n, seed, epoch, groups)
    if n == 1:
        return [(batch, len(batch)) for batch in global_batches]
    return [(split_evenly(batch, n)[rank()], len(batch)) for batch in global_batches if len(batch) >= n]


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


def all_finite(values: list[float]) -> list[bool]:
    """For each of this rank's ``values``, whether it is finite on every rank (one all-reduce for
    them all), so that all ranks stop at the same step."""
    finite = [math.isfinite(v) for v in values]
    if world_size() == 1 or not values:
        return finite
    return [count == world_size() for count in sum_over_ranks(*map(float, finite))]


def gather_predictions(preds: torch.Tensor) -> torch.Tensor:
    """The validation predictions of all ranks, concatenated in rank order (= sample order)."""
    if world_size() == 1:
        return preds
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, preds.cpu())
    return torch.cat(parts)


def from_main(value):
    """Rank 0's ``value`` (any picklable object) on every rank; ``value`` itself in one process."""
    if world_size() == 1:
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_resume(run_dir: Path, summary: dict | None) -> None:
    """Refuse to resume ``run_dir`` with another number of processes than it started with: the
    global batch, the batch order and the LR schedule's steps per epoch would change mid-run.

    Checked before the process group is joined (torchrun's ``WORLD_SIZE``). A summary without
    ``world_size`` (written before DDP runs recorded it) was one process; none (missing, rebuilt
    from the checkpoint on resume): nothing to check against.
    """
    if not summary:
        return
    started, now = int(summary.get("world_size", 1)), launch_world_size()
    if started != now:
        how = "without torchrun" if started == 1 else f"with torchrun --nproc-per-node={started}"
        raise ConfigError(f"resume {run_dir}: the run started with world size {started}, this resume has "
                          f"world size {now} (the global batch and the schedule would change): resume it {how}")


def train_mode_batchnorms(model: torch.nn.Module) -> list[str]:
    """Names of the BatchNorm layers that normalise with batch statistics in ``model.train()``
    (a frozen encoder keeps its BatchNorm in eval mode). Leaves ``model`` in train mode."""
    model.train()
    return [name for name, m in model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]


def sync_batchnorm(model: torch.nn.Module, device: torch.device, model_name: str) -> torch.nn.Module:
    """Under DDP, train-mode BatchNorm normalises over the global batch (``SyncBatchNorm``), so a
    step is the step of one process on that batch; unchanged in one process or without such layers.

    On the CPU this torch's ``SyncBatchNorm`` does not run (it needs a GPU), so such a model is
    refused there rather than trained with per-rank statistics. The layers are converted in place:
    the parameters and buffers stay the same objects (optimizer and state-dict keys unchanged).
    """
    if world_size() == 1:
        return model
    layers = train_mode_batchnorms(model)
    if not layers:
        return model
    if device.type != "cuda":
        raise ConfigError(f"model '{model_name}' has BatchNorm in train mode ({', '.join(layers[:3])}"
                          f"{', …' if len(layers) > 3 else ''}): DDP on the CPU cannot synchronise its "
                          "statistics (SyncBatchNorm needs CUDA): train it in one process, on GPUs, or "
                          "with a frozen encoder")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def no_sync(model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Around the forward and backward of a micro-batch: DDP's gradient all-reduce only when
    ``sync`` (the last micro-batch before an optimizer step); the others accumulate locally."""
    if sync or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


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
