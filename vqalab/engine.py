"""The training step and what it is built from, shared by ``train.fit``, ``bench``, ``lr_find`` and
``memory``: seeding, the device, CPU threads, autocast, the optimizer, the loss, the model
(``build_model``: the one model builder), the GradScaler, one micro-batch's loss, the optimizer step
(unscale → clip → step), ``training_step``, batches to the device and the loader.

It sits below the training loop and the measurement tools alike: ``bench`` times the loop's own
step without importing ``train``, and ``train`` calls ``bench.choose_batch_size`` for
``batch_size: auto`` without an import circle (docs/ARCHITECTURE.md, "Layers").
"""

from __future__ import annotations

import math
import os
import random
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vqalab.data import DataSplits
from vqalab.devices import DEVICE_ENV, auto_device_name
from vqalab.models import MODELS, create_model
from vqalab.params import RunConfig
from vqalab.registry import ConfigError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def select_device(name: str) -> torch.device:
    """``train.device`` as a torch device; refused (before any data is loaded) when not present here.

    auto: ``$VQALAB_DEVICE`` when set, else CUDA when available, else the CPU (``devices``).
    """
    asked = f"train.device = {name!r}"
    if name == "auto":
        name = auto_device_name()
        if os.environ.get(DEVICE_ENV):
            asked = f"train.device = 'auto' (${DEVICE_ENV} = {name!r})"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{asked}: CUDA is not available on this machine "
                              "(no GPU or no CUDA build of torch): use train.device=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{asked}: this machine has {torch.cuda.device_count()} "
                              f"GPU(s), numbered 0-{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{asked}: Apple MPS is not available on this machine: use cpu or auto")
    return device


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(device: torch.device, amp: str):
    """bf16/fp16 autocast on the run's device, CUDA and the CPU alike; nothing for ``amp`` off."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def peak_memory_mb(device: torch.device) -> float:
    """CUDA allocator peak on a GPU; the process's peak resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def compute_loss(logits: torch.Tensor, batch: dict, cfg: RunConfig, task: str) -> torch.Tensor:
    """The loss the data set's ``task`` (``DataSplits.task``) trains with: segmentation: binary
    cross-entropy per mask cell, the mean (``check_task`` requires train.loss bce); classification:
    ``train.loss``, cross-entropy on the class or bce on the soft scores (``check_task``: the data
    has them)."""
    if task == "segmentation":
        return F.binary_cross_entropy_with_logits(logits.float(), batch["mask"])
    if cfg.train.loss == "bce":
        # Soft VQA scores; scaled by the number of answers as in the bottom-up-attention recipe.
        return F.binary_cross_entropy_with_logits(logits.float(), batch["soft_target"]) * logits.shape[1]
    return F.cross_entropy(logits.float(), batch["target"], label_smoothing=cfg.train.label_smoothing)


def check_model_fits_data(cfg: RunConfig, data: DataSplits) -> None:
    """The data fixes some model keywords (vocab_size, num_classes…); the model must accept them."""
    name = cfg.model["name"]
    accepted = MODELS.parameters(name)
    foreign = [k for k in data.model_kwargs if k not in accepted]
    if foreign:
        raise ConfigError(
            f"model '{name}' does not take {', '.join(foreign)} from data '{cfg.data.get('name')}': "
            f"choose a data set for this model (params file data.name, or --set data.name=...)")


def model_spec(cfg: RunConfig, data: DataSplits) -> tuple[str, dict]:
    """The model's registered name and keywords: the config's ``model`` section and those the data fixes."""
    check_model_fits_data(cfg, data)
    spec = dict(cfg.model)
    name = spec.pop("name")
    return name, {**spec, **data.model_kwargs}


def build_model(cfg: RunConfig, data: DataSplits, device: torch.device, *, channels_last: bool | None = None,
                compile_model: bool | None = None) -> torch.nn.Module:
    """The configured model, with the keywords the data fixes, on ``device``: the one place where a
    model is built for training, bench and lr-find.

    channels_last: store 4-D weights as NHWC (None: ``train.channels_last``).
    compile_model: wrap in ``torch.compile`` with ``train.compile_mode`` (None: ``train.compile``);
        the first calls compile. ``uncompiled`` gives the module itself (its parameters are shared).
    """
    name, kwargs = model_spec(cfg, data)
    model = create_model(name, **kwargs).to(device)
    if cfg.train.channels_last if channels_last is None else channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.train.compile if compile_model is None else compile_model:
        model = torch.compile(model, mode=cfg.train.compile_mode)
    return model


def uncompiled(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``torch.compile`` wrapper (else ``model``): checkpoints hold its
    state_dict, whose keys have no ``_orig_mod.`` prefix, so they load into a plain model."""
    return getattr(model, "_orig_mod", model)


def make_grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (CUDA and the CPU alike); otherwise a disabled scaler, which passes
    everything through."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def micro_batch_loss(model: torch.nn.Module, batch: dict, *, input_keys, task: str, cfg: RunConfig,
                     device: torch.device, amp: str, mix: tuple[float, torch.Tensor] | None = None) -> torch.Tensor:
    """Forward pass under autocast and the loss of one micro-batch (``task``: the data set's).

    mix: ``(lam, perm)`` of a mixup batch (``mix_batch``): the loss mixes the targets alike.
    """
    with autocast_context(device, amp):
        logits = model(**{k: batch[k] for k in input_keys})
    loss = compute_loss(logits, batch, cfg, task)
    if mix is not None:
        lam, perm = mix
        loss = lam * loss + (1 - lam) * compute_loss(logits, {**batch, "target": batch["target"][perm]}, cfg, task)
    return loss


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   clip_norm: float | None, *, skip_non_finite: bool = True) -> torch.Tensor:
    """Unscale the gradients, clip their global norm at ``clip_norm`` (None: measure it only), step
    and update the loss scale; returns the norm before clipping.

    A non-finite norm skips the step: with fp16 the scaler does so itself (and lowers the scale);
    without it the caller decides what a non-finite gradient means (the training loop: diverged).
    skip_non_finite: False steps without a scaler whatever the norm, so that the norm is not read
        here (a host sync); the training loop reads the norms in bulk later and stops the run there.
    """
    scaler.unscale_(optimizer)  # clipping must see the true gradients
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm if clip_norm else math.inf)
    if scaler.is_enabled() or not skip_non_finite or torch.isfinite(grad_norm):
        scaler.step(optimizer)
        scaler.update()
    return grad_norm


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                  batch: dict, *, input_keys, task: str, cfg: RunConfig, device: torch.device,
                  amp: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on one micro-batch, as the training loop takes it (without accumulation
    and mixup): forward, loss, backward, then ``optimizer_step``. Returns the loss and the norm."""
    optimizer.zero_grad(set_to_none=True)
    loss = micro_batch_loss(model, batch, input_keys=input_keys, task=task, cfg=cfg, device=device, amp=amp)
    scaler.scale(loss).backward()
    return loss.detach(), optimizer_step(model, optimizer, scaler, cfg.train.clip_norm)


def to_device(batch: dict, device: torch.device, channels_last: bool = False) -> dict:
    """Tensors to ``device``; with ``channels_last``, images (4-D float tensors) stored NHWC."""
    batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    if channels_last:
        batch = {k: v.contiguous(memory_format=torch.channels_last)
                 if torch.is_tensor(v) and v.dim() == 4 and v.is_floating_point() else v
                 for k, v in batch.items()}
    return batch


def make_loader(dataset, batches, data: DataSplits, cfg: RunConfig, device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batches, collate_fn=data.collate,
                      num_workers=cfg.train.num_workers, pin_memory=device.type == "cuda")
