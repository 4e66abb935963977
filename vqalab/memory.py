"""Peak CUDA memory of a training step, predicted on the CPU before a GPU is rented.

The model is built for real on the CPU (its initialisation needs values); the step then runs in
torch's ``FakeTensorMode``, where tensors have shapes, dtypes and strides but no data, so an IR-50
step at batch 256 allocates nothing and does no arithmetic. torch's ``MemTracker``
(``torch.distributed._tools.mem_tracker``) counts every storage the step creates by kind
(parameters, gradients, optimizer state, activations, backward temporaries) and keeps the
snapshot at the peak. The step is the training loop's own: ``engine.micro_batch_loss`` per
micro-batch (``train.grad_accum_steps`` of them), backward, ``engine.optimizer_step`` (clip, step),
twice: Adam's state appears at the first step, the second is the steady state a run repeats.

What stands in for CUDA, since no GPU is needed:
- The fake tensors live on the CPU device: a backward pass over fake *CUDA* tensors needs a CUDA
  context (pytorch/pytorch#92627), which a machine without a GPU cannot create.
- Mixed precision: CPU autocast lowers the same matmuls and convolutions as CUDA autocast; the ops
  CUDA autocast runs in float32 (norms, softmax, losses) are cast to float32 here as well
  (``CUDA_FP32_FUNCTIONS``).
- Optimizers take CUDA's default multi-tensor (``foreach``) path and its temporaries.
- A GradScaler's loss scaling holds a few scalars: left out (fake tensors cannot say whether a
  gradient is finite, so the predicted step always steps).
- The batch's integer tensors (token ids, lengths, image ids) keep their values through the ops
  that read only them (``IndexValues``): ``torch.unique`` of the image ids (each image encoded once)
  has a shape that depends on them. Recurrent question encoders run over the padded questions
  (``padded_recurrences``): a packed sequence's shape depends on the lengths inside the model, and a
  padded run holds at least the packed run's memory.
Not counted: the CUDA context and cuDNN/cuBLAS workspaces (a few hundred MiB, outside PyTorch's
allocator), the caching allocator's 512-byte rounding and fragmentation. ``train.max_memory_fraction``
of the device leaves room for them. Lab note 002 measured IR-50 + ViT blocks at 21,580 MiB and
IR-50 + CLS blocks at 18,479 MiB (depth 8, 112 px, batch 256, fp32, Adam); this predicts 21,404 and
18,991 MiB, the batch included (``tests/test_memory.py``).
"""

from __future__ import annotations

import contextlib
import re
import time

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten, tree_map_only, tree_unflatten

from vqalab.bench import fixed_batch
from vqalab.data import DataSplits, build_data
from vqalab.engine import (
    build_model,
    build_optimizer,
    micro_batch_loss,
    optimizer_step,
    seed_everything,
    to_device,
)
from vqalab.params import RunConfig
from vqalab.registry import ConfigError

PRECISIONS = {"off": "fp32", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}  # --amp / train.amp → precision
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PREDICTED_STEPS = 2  # the first creates the optimizer state; the second runs with it in place
MIB = 2**20
# The MemTracker kind of each part of the prediction (``_MemRefType`` values).
PARTS = {"parameters": "Parameter", "buffers": "Buffer", "gradients": "Gradient", "optimizer_state": "Optstate",
         "activations": "Activation", "temporaries": "Temp", "inputs": "Other"}
# Ops CUDA autocast runs in float32 whatever their input (aten's autocast_mode.cpp, "fp32" and
# "fp32_set_opt_dtype" lists) that CPU autocast leaves in the lower precision.
CUDA_FP32_FUNCTIONS = frozenset({
    F.layer_norm, F.group_norm, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax,
    torch.Tensor.softmax, torch.Tensor.log_softmax, F.cross_entropy, F.nll_loss, F.mse_loss, F.l1_loss,
    F.smooth_l1_loss, F.kl_div, F.binary_cross_entropy_with_logits, F.cosine_similarity, F.softplus,
    torch.exp, torch.log, torch.cumsum, torch.sum, torch.norm, torch.logsumexp, torch.pow, torch.rsqrt,
})
DEVICE_MEMORY_UNITS = {"": 1, "mb": 1, "mib": 1, "gb": 1024, "gib": 1024}


def predicted_column(batch_size: int) -> str:
    """The label of a table column of predicted peaks: a prediction, at the batch size it is for."""
    return f"predicted CUDA MiB @ batch {batch_size}"


def parse_device_memory(text: str) -> float:
    """``24GB`` → MiB. GPU memory sizes are binary: a "24 GB" card holds 24 GiB (24,576 MiB)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in DEVICE_MEMORY_UNITS or float(match.group(1)) <= 0:
        raise ConfigError(f"--device-memory {text!r}: expected a positive size such as 24GB, 80GB or 8192MB")
    return float(match.group(1)) * DEVICE_MEMORY_UNITS[match.group(2).lower()]


def precision_of(amp: str) -> str:
    if amp not in PRECISIONS:
        raise ConfigError(f"amp = {amp!r}: expected one of fp32 (off), bf16, fp16")
    return PRECISIONS[amp]


class CudaFp32Ops(torch.overrides.TorchFunctionMode):
    """Under CPU autocast, run ``CUDA_FP32_FUNCTIONS`` in float32 as CUDA autocast does: their
    half-precision inputs are cast (a float32 copy, as on CUDA) and their outputs are float32."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in CUDA_FP32_FUNCTIONS and torch.is_autocast_enabled("cpu"):
            def to_fp32(x):
                return x.float() if torch.is_tensor(x) and x.dtype in (torch.float16, torch.bfloat16) else x
            args = tuple(to_fp32(a) for a in args)
            kwargs = {k: to_fp32(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


class IndexValues(torch.overrides.TorchFunctionMode):
    """Integer tensors keep their values: the batch's (token ids, lengths, masks, image ids), those
    made from nothing (``arange``, ``zeros``) and the results of ops that read only such tensors run
    on real values, wrapped in fake tensors. Fake tensors carry no values, but some integer ops
    have shapes that depend on them (``unique`` of the image ids, a mask's ``nonzero``, boolean
    indexing of edges). These small tensors run outside the fake mode: their memory is not counted."""

    def __init__(self, fake_mode, pairs):
        super().__init__()
        self.fake_mode = fake_mode
        self.real = {id(fake): (fake, real) for fake, real in pairs}  # the fake kept alive: ids stay unique

    def _keep(self, real: torch.Tensor) -> torch.Tensor:
        fake = self.fake_mode.from_tensor(real)
        self.real[id(fake)] = (fake, real)
        return fake

    def _known(self, t: torch.Tensor) -> bool:
        return self.real.get(id(t), (None,))[0] is t

    def __torch_function__(self, func, types, args=(), kwargs=None):
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        kwargs = kwargs or {}
        flat, spec = tree_flatten((args, kwargs))
        tensors = [x for x in flat if torch.is_tensor(x)]
        if not tensors:  # a tensor made from nothing: real values too when it holds integers
            out = func(*args, **kwargs)
            made = [t for t in tree_flatten(out)[0] if torch.is_tensor(t)]
            if not made or any(t.is_floating_point() or t.is_complex() for t in made):
                return out
            with unset_fake_temporarily():
                return tree_map_only(torch.Tensor, self._keep, func(*args, **kwargs))
        if not all(self._known(t) for t in tensors):
            return func(*args, **kwargs)
        real_args, real_kwargs = tree_unflatten([self.real[id(x)][1] if torch.is_tensor(x) else x for x in flat], spec)
        with unset_fake_temporarily():
            out = func(*real_args, **real_kwargs)
        return tree_map_only(torch.Tensor, self._keep, out)


@contextlib.contextmanager
def padded_recurrences():
    """The question encoders' LSTM/GRU over the padded questions instead of packed ones: packing
    needs the lengths inside the model, and the packed recurrence its batch sizes, as values."""
    from vqalab.models import encoders

    saved = encoders.pack_padded_sequence, encoders.pad_packed_sequence
    encoders.pack_padded_sequence = lambda x, lengths, batch_first=False, enforce_sorted=True: x
    encoders.pad_packed_sequence = lambda x, batch_first=False, padding_value=0.0, total_length=None: (x, None)
    try:
        yield
    finally:
        encoders.pack_padded_sequence, encoders.pad_packed_sequence = saved


def peak_tracker():
    """torch's MemTracker keeping the step's peak only: the per-module peaks it also keeps cost a
    pass over every tracked module at every op (most of an IR-50 prediction's time)."""
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker

    class PeakTracker(MemTracker):
        def _update_peak_stats(self, peak_state) -> None:
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap[_TOTAL_KEY]:
                    self._peak_mem[dev] = snap[_TOTAL_KEY]
                    self._peak_mem_snap[dev] = dict(snap)

    return PeakTracker()


class PassThroughScaler:
    """The GradScaler of the predicted step: fake tensors carry no values, so whether the gradients
    are finite cannot be known and the step always steps. Loss scaling itself holds a few scalars."""

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    def is_enabled(self) -> bool:
        return True  # engine.optimizer_step then steps without testing the norm

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    def update(self) -> None:
        pass


def precision_context(precision: str):
    """CPU autocast to the precision with CUDA's float32 ops; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast("cpu", dtype=AUTOCAST_DTYPES[precision]))
    stack.enter_context(CudaFp32Ops())
    return stack


def predict_memory(cfg: RunConfig, *, batch_size: int | None = None, amp: str | None = None,
                   device_memory_mb: float | None = None, data: DataSplits | None = None) -> dict:
    """The predicted peak CUDA memory (MiB) of a training step of ``cfg`` and its parts.

    batch_size: items per micro-batch (default ``train.batch_size``; ``auto`` needs one given).
    amp: off/fp32, bf16 or fp16 (default ``train.amp``). device_memory_mb: the GPU's memory; with
    it, ``fits`` says whether the peak is within ``train.max_memory_fraction`` of it.
    data: loaded splits (None: built from ``cfg.data``); only one batch's shapes and the keywords the
    data fixes for the model (classes, vocabulary) matter.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    batch_size = cfg.train.batch_size if batch_size is None else batch_size
    if batch_size == "auto" or isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size {batch_size!r}: expected a whole number ≥ 1 (train.batch_size auto "
                          "needs --batch-size)")
    precision = precision_of(cfg.train.amp if amp is None else amp)
    if device_memory_mb is not None and device_memory_mb <= 0:
        raise ConfigError(f"device memory {device_memory_mb!r} MiB: expected a positive size")
    started = time.perf_counter()
    data = data or build_data(cfg.data)
    cpu = torch.device("cpu")
    seed_everything(cfg.seed)
    model = build_model(cfg, data, cpu, compile_model=False)  # real weights, on the CPU; fake tensors are not compiled
    model.train()
    optimizer = build_optimizer(model, cfg)
    for group in optimizer.param_groups:
        if group.get("foreach", False) is None:
            group["foreach"] = True  # torch's default for CUDA parameters
    accum = cfg.train.grad_accum_steps
    scaler = PassThroughScaler()
    real_batch = to_device(fixed_batch(data, batch_size, cfg.seed), cpu, cfg.train.channels_last)
    with FakeTensorMode(allow_non_fake_inputs=True) as fake:
        batch = {k: fake.from_tensor(v) if torch.is_tensor(v) else v for k, v in real_batch.items()}
        integers = [(batch[k], v) for k, v in real_batch.items() if torch.is_tensor(v) and not v.is_floating_point()]
        tracker = peak_tracker()
        tracker.track_external(model, optimizer, [v for v in batch.values() if torch.is_tensor(v)])
        with tracker, IndexValues(fake, integers), padded_recurrences():
            for _ in range(PREDICTED_STEPS):
                optimizer.zero_grad(set_to_none=True)
                for _ in range(accum):
                    with precision_context(precision):
                        loss = micro_batch_loss(model, batch, input_keys=data.input_keys, task=data.task, cfg=cfg,
                                                device=cpu, amp="off")  # autocast: precision_context
                    scaler.scale(loss / accum).backward()
                    tracker.reset_mod_stats()  # MemTracker follows one forward of the model at a time
                optimizer_step(model, optimizer, scaler, cfg.train.clip_norm)
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()), {})
    by_kind = {str(kind.value) if hasattr(kind, "value") else str(kind): size for kind, size in peak.items()}
    parts = {part: by_kind.get(kind, 0) / MIB for part, kind in PARTS.items()}
    peak_mb = by_kind.get("Total", 0) / MIB
    fraction = cfg.train.max_memory_fraction
    result = {
        "model": cfg.model["name"], "data": cfg.data.get("name"), "batch_size": batch_size,
        "grad_accum_steps": accum, "precision": precision, "optimizer": cfg.optim.name,
        "peak_mb": peak_mb, "parts_mb": parts,
        "params": sum(p.numel() for p in model.parameters()),
        "device_memory_mb": device_memory_mb, "max_memory_fraction": fraction,
        "memory_cap_mb": None if device_memory_mb is None else fraction * device_memory_mb,
        "fits": None if device_memory_mb is None else peak_mb <= fraction * device_memory_mb,
        "predicted_in_s": time.perf_counter() - started,
        "method": "torch MemTracker under FakeTensorMode: two training steps (forward, loss, backward, clip, "
                  "optimizer step) on shape-only tensors; CUDA context, library workspaces and allocator "
                  "rounding not counted",
    }
    return result


def _mb(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def format_prediction(result: dict) -> str:
    """The prediction as a few lines for the terminal."""
    parts = ", ".join(f"{name.replace('_', ' ')} {_mb(mb)}" for name, mb in result["parts_mb"].items() if mb > 0)
    accum = f" ({result['grad_accum_steps']} micro-batches per step)" if result["grad_accum_steps"] > 1 else ""
    head = (f"{result['model']} at batch {result['batch_size']}{accum}, {result['precision']}, {result['optimizer']}: "
            f"predicted CUDA peak {_mb(result['peak_mb'])} MiB")
    lines = [head, f"  parts (MiB): {parts}"]
    if result["device_memory_mb"] is not None:
        verdict = "fits" if result["fits"] else "does NOT fit"
        lines.append(f"  {verdict} in {result['max_memory_fraction']:.0%} of {_mb(result['device_memory_mb'])} MiB "
                     f"= {_mb(result['memory_cap_mb'])} MiB (train.max_memory_fraction)")
    lines.append(f"  predicted in {result['predicted_in_s']:.1f} s on the CPU")
    return "\n".join(lines)
