"""CUDA code paths of the lab presets: bf16 / fp16 autocast, the GradScaler, channels_last, CUDA
peak memory, batch_size auto against the GPU's memory. Skipped without a GPU."""

import json
import math

import pytest
import torch
from conftest import TINY

from vqalab import bench, runs, train
from vqalab.config import build_config
from vqalab.data import build_data
from vqalab.data.fixtures import RAFDB_DIR, write_rafdb_official

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")]

FER = {"model": {"name": "ir50_cls", "depth": 1, "backbone_depth": 18, "width": 0.25},
       "data": {"name": "rafdb", "image_size": 32},
       "train": {"epochs": 2, "batch_size": 14, "device": "cuda", "progress": False}}


@pytest.fixture
def rafdb(tmp_path, monkeypatch):
    monkeypatch.setenv("VQALAB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("VQALAB_CACHE", str(tmp_path / "cache"))
    write_rafdb_official(tmp_path / "data" / RAFDB_DIR, size=32)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fer_training_on_cuda_with_amp_and_channels_last(tmp_path, rafdb, amp, channels_last):
    tree = {**FER, "runs_root": str(tmp_path / "runs"),
            "train": {**FER["train"], "amp": amp, "channels_last": channels_last}}
    result = train.fit(build_config(tree))
    assert result.summary["status"] == "completed" and result.summary["device"].startswith("cuda")
    rows = runs.read_metrics_rows(result.run_dir / "metrics.csv")
    assert all(math.isfinite(r["train_loss"]) and r["peak_memory_mb"] > 0 for r in rows)
    ckpt = runs.load_checkpoint(runs.latest_checkpoint(result.run_dir))
    if amp == "fp16":  # the GradScaler ran: its scale is recorded for an exact resume
        assert ckpt["scaler_state"]["scale"] > 0
    else:
        assert ckpt["scaler_state"] == {}  # bf16 needs no scaler


def test_peak_memory_is_this_runs_own(tmp_path, rafdb):
    big = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")  # 256 MiB held before the run
    del big
    result = train.fit(build_config({**FER, "runs_root": str(tmp_path / "runs")}))
    rows = runs.read_metrics_rows(result.run_dir / "metrics.csv")
    assert max(r["peak_memory_mb"] for r in rows) < 256


def test_throughput_on_cuda_reports_allocator_peaks(tmp_path):
    cfg = build_config({**TINY, "train": {**TINY["train"], "device": "cuda"}})
    table = bench.throughput_sweep(cfg, batch_sizes=[4, 8], warmup_steps=1, timed_steps=2, amp="bf16",
                                   channels_last=True)
    assert list(table["status"]) == ["ok", "ok"] and set(table["memory_kind"]) == {"cuda_max_allocated"}
    assert (table["peak_memory_mb"] > 0).all() and set(table["amp"]) == {"bf16"}


def test_batch_size_auto_caps_memory_at_a_fraction_of_the_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "_AUTO_CHOICES", {})
    tree = {**TINY, "runs_root": str(tmp_path), "train": {**TINY["train"], "device": "cuda", "batch_size": "auto",
                                                          "max_memory_fraction": 0.5, "epochs": 1, "progress": False}}
    cfg = build_config(tree)
    result = train.fit(cfg, data=build_data(cfg.data))
    auto = result.summary["batch_size_auto"]
    total = torch.cuda.get_device_properties(0).total_memory / 2**20
    assert auto["memory_cap_mb"] == pytest.approx(0.5 * total)
    assert auto["peak_memory_mb"] <= auto["memory_cap_mb"] and all(r["memory_kind"] == "cuda_max_allocated"
                                                                    for r in auto["rows"] if r["status"] == "ok")
    assert json.loads((result.run_dir / "summary.json").read_text())["batch_size"] == auto["batch_size"]
