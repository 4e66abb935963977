"""The CPU twins of the CUDA paths: bf16 / fp16 autocast and the fp16 GradScaler apply on the CPU
too, channels_last reaches every convolution, summary.json says what ran, and an fp16 run resumes
exactly. The assertions are shared with tests/test_cuda.py (tests/device_checks.py)."""

import pytest
import torch
from conftest import TINY
from device_checks import (
    assert_autocast_ran,
    assert_exact_resume,
    assert_memory_format_ran,
    assert_scaler_skips_an_inf_step,
    assert_summary_records,
    fit_watched,
    interrupt_in_epoch,
)

from vqalab import runs, train
from vqalab.config import build_config
from vqalab.registry import ConfigError

CPU = torch.device("cpu")
# The tiniest FER model on 32 px synthetic faces: the IR-18 backbone ends at 2×2 maps.
FER_MODEL = {"name": "ir_cls", "backbone_depth": 18, "width": 0.125, "depth": 1}
FER_DATA = {"name": "synthetic_faces", "num_train": 8, "num_val": 4, "image_size": 32}


def short_run(tmp_path, **train_overrides):
    """Two optimizer steps per epoch of the tiny easy-VQA model (convolutions and Linears)."""
    return build_config({**TINY, "runs_root": str(tmp_path / "runs"), "experiment": "precision",
                         "train": {**TINY["train"], "epochs": 1, "max_steps": 2, "num_threads": 1,
                                   "progress": False, "tensorboard": False, **train_overrides}})


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_amp_and_memory_format_apply_in_the_cpu_training_step(tmp_path, monkeypatch, data, amp, channels_last):
    result, watch = fit_watched(monkeypatch, short_run(tmp_path, amp=amp, channels_last=channels_last), data)
    assert result.summary["status"] == "completed"
    assert_autocast_ran(watch, amp)
    assert_memory_format_ran(watch, channels_last)
    assert_summary_records(result.summary, amp=amp, channels_last=channels_last, device_type="cpu")
    ckpt = runs.load_checkpoint(runs.latest_checkpoint(result.run_dir))
    assert bool(ckpt["scaler_state"]) == (amp == "fp16")  # the CPU GradScaler ran and was saved


@pytest.mark.parametrize(("amp", "channels_last"), [("bf16", True), ("off", False)])
def test_the_fer_model_computes_in_the_amp_dtype_and_nhwc_throughout(tmp_path, monkeypatch, amp, channels_last):
    """IR backbone convolutions (NHWC kept through BN, PReLU and the residual adds) and the CLS blocks' Linears."""
    cfg = build_config({"runs_root": str(tmp_path / "runs"), "model": FER_MODEL, "data": FER_DATA,
                        "train": {"epochs": 1, "max_steps": 1, "batch_size": 8, "device": "cpu", "num_threads": 1,
                                  "progress": False, "tensorboard": False, "amp": amp,
                                  "channels_last": channels_last}})
    result, watch = fit_watched(monkeypatch, cfg)
    assert_autocast_ran(watch, amp)
    assert_memory_format_ran(watch, channels_last)
    assert_summary_records(result.summary, amp=amp, channels_last=channels_last, device_type="cpu")


def test_summary_names_the_precision_memory_format_and_compilation():
    cfg = build_config({"train": {"amp": "fp16", "channels_last": True}})
    assert train.execution_fields(cfg) == {"precision": "fp16-autocast+scaler", "memory_format": "channels_last",
                                           "compile": False, "compile_mode": None}
    cfg = build_config({"train": {"amp": "bf16", "compile": True, "compile_mode": "max-autotune"}})
    assert train.execution_fields(cfg) == {"precision": "bf16-autocast", "memory_format": "contiguous",
                                           "compile": True, "compile_mode": "max-autotune"}
    assert train.precision_name("off") == "fp32"


def test_the_cpu_grad_scaler_skips_an_inf_step_and_lowers_its_scale(cfg, data):
    assert_scaler_skips_an_inf_step(cfg, data, CPU)


def resume_config(tmp_path, **train_overrides):
    """Every piece of state resume restores: dropout, Adam moments, warm-up + cosine, accumulation
    over a shorter last group, and here the fp16 GradScaler."""
    return build_config({
        "experiment": "resume", "name": "fp16", "seed": 3, "runs_root": str(tmp_path / "runs"),
        "model": {"name": "vqa_mean_mlp", "cnn_channels": [4, 8], "embed_dim": 8, "hidden_dim": 16, "dropout": 0.3},
        "data": {"name": "easy_vqa", "max_train_samples": 48, "max_val_samples": 16},
        "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
        "schedule": {"name": "cosine", "warmup_steps": 2},
        "train": {"epochs": 3, "batch_size": 16, "grad_accum_steps": 2, "clip_norm": 1.0, "amp": "fp16",
                  "device": "cpu", "num_threads": 1, "progress": False, "tensorboard": False, **train_overrides},
    })


def test_an_fp16_run_with_its_scaler_resumes_exactly_on_the_cpu(tmp_path, monkeypatch):
    ckpt = assert_exact_resume(monkeypatch, resume_config(tmp_path), interrupt_epoch=2)
    assert ckpt["scaler_state"]["scale"] > 0 and set(ckpt["scaler_state"]) >= {"scale", "_growth_tracker"}


def test_resume_refuses_an_fp16_checkpoint_without_scaler_state(tmp_path, monkeypatch):
    cfg = resume_config(tmp_path, epochs=2)
    with monkeypatch.context() as patch:
        interrupt_in_epoch(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            train.fit(cfg)
    (run_dir,) = (tmp_path / "runs" / "resume").iterdir()
    path = runs.latest_checkpoint(run_dir)
    ckpt = runs.load_checkpoint(path)
    runs.save_checkpoint(path, {**ckpt, "scaler_state": {}})  # as written when fp16 did not apply on the CPU
    with pytest.raises(ConfigError, match="holds no fp16 loss-scaler state .* start the run again"):
        train.fit(cfg, resume=run_dir)
