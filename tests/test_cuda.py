"""CUDA code paths of the lab presets, checked with the same assertions as their CPU twins
(tests/device_checks.py, tests/test_precision.py): bf16 / fp16 autocast seen in the Linear outputs,
channels_last seen in every convolution, the GradScaler's skip on an inf gradient, a resume on the
GPU, CUDA peak memory, and batch_size auto held under a memory cap that binds. Skipped without a GPU."""

import json
import math

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
)

from data_fixtures import RAFDB_DIR, write_rafdb_official
from vqalab import bench, runs, train
from vqalab.config import build_config
from vqalab.data import build_data

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")]

FER = {"model": {"name": "ir50_cls", "depth": 1, "backbone_depth": 18, "width": 0.25},
       "data": {"name": "rafdb", "image_size": 32},
       "train": {"epochs": 2, "batch_size": 14, "device": "cuda", "progress": False, "tensorboard": False}}
CUDA_TINY = {**TINY, "train": {**TINY["train"], "device": "cuda", "progress": False, "tensorboard": False}}


@pytest.fixture
def rafdb(tmp_path, monkeypatch):
    monkeypatch.setenv("VQALAB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("VQALAB_CACHE", str(tmp_path / "cache"))
    write_rafdb_official(tmp_path / "data" / RAFDB_DIR, size=32)


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fer_training_on_cuda_computes_in_the_amp_dtype_and_memory_format(tmp_path, rafdb, monkeypatch, amp,
                                                                            channels_last):
    tree = {**FER, "runs_root": str(tmp_path / "runs"),
            "train": {**FER["train"], "amp": amp, "channels_last": channels_last}}
    result, watch = fit_watched(monkeypatch, build_config(tree))
    assert result.summary["status"] == "completed"
    assert_autocast_ran(watch, amp)
    assert_memory_format_ran(watch, channels_last)
    assert_summary_records(result.summary, amp=amp, channels_last=channels_last, device_type="cuda")
    rows = runs.read_metrics_rows(result.run_dir / "metrics.csv")
    assert all(math.isfinite(r["train_loss"]) and r["peak_memory_mb"] > 0 for r in rows)
    scaler_state = runs.load_checkpoint(runs.latest_checkpoint(result.run_dir))["scaler_state"]
    assert bool(scaler_state) == (amp == "fp16")  # bf16 and fp32 need no scaler


def test_the_cuda_grad_scaler_skips_an_inf_step_and_lowers_its_scale():
    cfg = build_config(CUDA_TINY)
    assert_scaler_skips_an_inf_step(cfg, build_data(cfg.data), torch.device("cuda"))


def test_an_fp16_run_resumes_on_cuda(tmp_path, rafdb, monkeypatch):
    """Interrupted in epoch 2 and resumed on the GPU: the same scaler state as the uninterrupted run
    and weights within fp16 noise (cuDNN autotuning and atomics need not repeat bitwise)."""
    tree = {**FER, "runs_root": str(tmp_path / "runs"), "seed": 3,
            "train": {**FER["train"], "epochs": 3, "amp": "fp16", "channels_last": True}}
    ckpt = assert_exact_resume(monkeypatch, build_config(tree), interrupt_epoch=2, exact=False)
    assert ckpt["scaler_state"]["scale"] > 0


def test_peak_memory_is_this_runs_own(tmp_path, rafdb):
    big = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")  # 256 MiB held before the run
    del big
    result = train.fit(build_config({**FER, "runs_root": str(tmp_path / "runs")}))
    rows = runs.read_metrics_rows(result.run_dir / "metrics.csv")
    assert max(r["peak_memory_mb"] for r in rows) < 256


def test_throughput_on_cuda_reports_allocator_peaks(tmp_path):
    cfg = build_config(CUDA_TINY)
    table = bench.throughput_sweep(cfg, batch_sizes=[4, 8], warmup_steps=1, timed_steps=2, amp="bf16",
                                   channels_last=True)
    assert list(table["status"]) == ["ok", "ok"] and set(table["memory_kind"]) == {"cuda_max_allocated"}
    assert (table["peak_memory_mb"] > 0).all() and set(table["amp"]) == {"bf16"}


def test_batch_size_auto_is_held_under_a_memory_cap_that_binds(tmp_path, monkeypatch):
    """max_memory_fraction set between the measured peaks of the two largest batch sizes: the
    largest no longer fits, so auto picks a smaller one whose peak is under the cap."""
    tree = {**CUDA_TINY, "runs_root": str(tmp_path),
            "data": {**TINY["data"], "max_train_samples": 512},
            "train": {**CUDA_TINY["train"], "batch_size": "auto", "epochs": 1, "max_steps": 1}}
    cfg = build_config(tree)
    data = build_data(cfg.data)
    sizes = [b for b in bench.AUTO_BATCH_SIZES if b <= len(data.train)]
    peaks = bench.throughput_sweep(cfg, batch_sizes=sizes, warmup_steps=1, timed_steps=1, rounds=1,
                                   end_to_end=False, data=data).set_index("batch_size")["peak_memory_mb"]
    largest, second = sizes[-1], sizes[-2]
    assert peaks[largest] > 1.5 * peaks[second], peaks.to_dict()  # room for the allocator's noise
    total = torch.cuda.get_device_properties(0).total_memory / 2**20
    cap = (peaks[largest] + peaks[second]) / 2
    monkeypatch.setattr(bench, "_AUTO_CHOICES", {})
    result = train.fit(build_config({**tree, "train": {**tree["train"], "max_memory_fraction": cap / total}}),
                       data=data)
    auto = result.summary["batch_size_auto"]
    assert auto["memory_cap_mb"] == pytest.approx(cap)
    assert auto["batch_size"] < largest and auto["peak_memory_mb"] <= cap
    rows = {r["batch_size"]: r for r in auto["rows"]}
    assert rows[largest]["peak_memory_mb"] > cap  # measured, and ruled out by the cap
    assert all(r["memory_kind"] == "cuda_max_allocated" for r in auto["rows"] if r["status"] == "ok")
    assert json.loads((result.run_dir / "summary.json").read_text())["batch_size"] == auto["batch_size"]
