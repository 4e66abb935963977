"""Facts about a training step that must hold on any device, as assertions shared by the CPU twins
(tests/test_precision.py) and the CUDA tests (tests/test_cuda.py): a CUDA machine checks the same
facts the CPU suite checks here."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vqalab import bench, engine, runs, train
from vqalab.params import RunConfig

EXACT_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_acc", "lr"]


class StepWatch:
    """Forward hooks on every Linear and Conv2d of a model: what its training forward passes computed.

    linear_dtypes: dtypes of the Linear outputs seen in train mode (bf16/fp16 under autocast).
    conv_inputs_nhwc, conv_weights_nhwc: per Conv2d call in train mode, whether its input and its
    weight were stored channels_last; left out where both layouts are the same (1×1 kernels,
    1×1 maps, one channel).
    """

    def __init__(self, model: nn.Module):
        self.linear_dtypes: set[torch.dtype] = set()
        self.conv_inputs_nhwc: list[bool] = []
        self.conv_weights_nhwc: list[bool] = []
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.register_forward_hook(self._linear)
            elif isinstance(module, nn.Conv2d):
                module.register_forward_hook(self._conv)

    def _linear(self, module, inputs, output):
        if module.training:
            self.linear_dtypes.add(output.dtype)

    def _conv(self, module, inputs, output):
        if module.training:
            for tensor, seen in ((inputs[0], self.conv_inputs_nhwc), (module.weight, self.conv_weights_nhwc)):
                nhwc = tensor.is_contiguous(memory_format=torch.channels_last)
                if nhwc != tensor.is_contiguous():  # else the layouts coincide
                    seen.append(nhwc)


def fit_watched(monkeypatch, cfg: RunConfig, data=None, *, resume=None) -> tuple[train.RunResult, StepWatch]:
    """``train.fit`` with a ``StepWatch`` on the model the loop builds (under torch.compile: on
    the module inside, which the compiled code runs hooks of too)."""
    watches = []
    real_build = train.build_model

    def build_and_watch(*args, **kwargs):
        model = real_build(*args, **kwargs)
        watches.append(StepWatch(engine.uncompiled(model)))
        return model

    with monkeypatch.context() as patch:
        patch.setattr(train, "build_model", build_and_watch)
        result = train.fit(cfg, data=data, resume=resume)
    (watch,) = watches
    return result, watch


def assert_autocast_ran(watch: StepWatch, amp: str) -> None:
    """Every Linear of the training steps computed in the AMP dtype (fp32 with amp off)."""
    want = engine.AMP_DTYPES.get(amp, torch.float32)
    assert watch.linear_dtypes == {want}, f"amp {amp}: Linear outputs were {watch.linear_dtypes}"


def assert_memory_format_ran(watch: StepWatch, channels_last: bool) -> None:
    """Every convolution of the training steps read NHWC inputs and weights, or NCHW ones when off."""
    assert watch.conv_inputs_nhwc and watch.conv_weights_nhwc, "no convolution ran in train mode"
    assert set(watch.conv_inputs_nhwc) == {channels_last}, "convolution inputs"
    assert set(watch.conv_weights_nhwc) == {channels_last}, "convolution weights"


def assert_summary_records(summary: dict, *, amp: str, channels_last: bool, device_type: str) -> None:
    assert summary["precision"] == train.precision_name(amp)
    assert summary["memory_format"] == ("channels_last" if channels_last else "contiguous")
    assert summary["device"].split(":")[0] == device_type


def assert_scaler_skips_an_inf_step(cfg: RunConfig, data, device: torch.device) -> None:
    """The loop's fp16 step (``engine.training_step``) with an inf gradient: the enabled GradScaler
    skips it (parameters and optimizer state untouched), halves its scale and restarts its growth
    count; the next, finite step applies at the lowered scale."""
    engine.seed_everything(cfg.seed)
    model = engine.build_model(cfg, data, device)
    optimizer = engine.build_optimizer(model, cfg)
    scaler = engine.make_grad_scaler(device, "fp16")
    assert scaler.is_enabled()
    batch = engine.to_device(bench.fixed_batch(data, 8, cfg.seed), device, cfg.train.channels_last)
    weight = next(p for p in model.parameters() if p.dim() == 2)
    hook = weight.register_hook(lambda grad: torch.full_like(grad, math.inf))
    before = [p.detach().clone() for p in model.parameters()]
    scale = scaler.get_scale()

    def step():
        return engine.training_step(model, optimizer, scaler, batch, input_keys=data.input_keys, task=data.task, cfg=cfg,
                                   device=device, amp="fp16")

    loss, grad_norm = step()
    assert torch.isfinite(loss) and not torch.isfinite(grad_norm)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters())), "a skipped step changed weights"
    assert not optimizer.state, "a skipped step made optimizer state"
    state = scaler.state_dict()
    assert state["scale"] == scale * state["backoff_factor"] == scale / 2 and state["_growth_tracker"] == 0
    hook.remove()
    _, grad_norm = step()
    assert torch.isfinite(grad_norm) and scaler.get_scale() == scale / 2
    assert scaler.state_dict()["_growth_tracker"] == 1
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters())), "the finite step did not apply"


def interrupt_in_epoch(monkeypatch, epoch: int) -> None:
    """From now on ``train_one_epoch`` raises KeyboardInterrupt when it starts ``epoch``."""
    real_epoch = train.train_one_epoch

    def interrupted(*args, **kwargs):
        if args[7] == epoch:  # train_one_epoch(model, opt, sched, scaler, data, cfg, device, epoch, step)
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", interrupted)


def assert_same_tensors(a, b, where: str = "") -> None:
    """Two (nested) states hold bitwise-equal tensors and equal plain values."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), where


def assert_exact_resume(monkeypatch, cfg: RunConfig, data=None, *, interrupt_epoch: int, exact: bool = True) -> dict:
    """A run interrupted when it starts ``interrupt_epoch`` and resumed ends as the same run
    uninterrupted: weights, optimizer, scheduler and GradScaler states and the metrics, bitwise
    (``exact``, the CPU) or with the same step count and scaler state and tensors within fp16 noise
    (CUDA: cuDNN autotuning and atomic adds need not repeat bitwise).
    Returns the resumed run's last checkpoint."""
    reference = train.fit(cfg, data=data)
    assert reference.summary["status"] == "completed"
    with monkeypatch.context() as patch:
        interrupt_in_epoch(patch, interrupt_epoch)
        with pytest.raises(KeyboardInterrupt):
            train.fit(cfg, data=data)
    (run_dir,) = [p for p in reference.run_dir.parent.iterdir() if p != reference.run_dir]
    resumed = train.fit(cfg, data=data, resume=run_dir)
    assert resumed.summary["status"] == "completed"
    assert [r["from_epoch"] for r in resumed.summary["resumed"]] == [interrupt_epoch - 1]
    got = runs.load_checkpoint(runs.latest_checkpoint(resumed.run_dir))
    want = runs.load_checkpoint(runs.latest_checkpoint(reference.run_dir))
    rows = runs.read_metrics_rows(resumed.run_dir / "metrics.csv")
    want_rows = runs.read_metrics_rows(reference.run_dir / "metrics.csv")
    assert (got["epoch"], got["step"]) == (want["epoch"], want["step"])
    assert got["scaler_state"] == want["scaler_state"]
    if exact:
        for key in ("model_state", "optimizer_state", "scheduler_state"):
            assert_same_tensors(got[key], want[key], key)
        assert [[r[c] for c in EXACT_COLUMNS] for r in rows] == [[r[c] for c in EXACT_COLUMNS] for r in want_rows]
    else:
        torch.testing.assert_close(got["model_state"], want["model_state"], rtol=1e-2, atol=1e-3)
        assert [r["val_loss"] for r in rows] == pytest.approx([r["val_loss"] for r in want_rows], rel=1e-2)
    return got
