import os
from pathlib import Path

import nbformat
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# A model and data small enough for a training step in milliseconds (measurement tests).
TINY = {
    "model": {"name": "vqa_mean_mlp", "cnn_channels": [4, 8, 8], "embed_dim": 8, "hidden_dim": 16},
    "data": {"name": "easy_vqa", "max_train_samples": 64, "max_val_samples": 16},
    "train": {"batch_size": 8, "device": "cpu"},
}

# Two cores: more threads than cores only adds contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def cpu_unless_marked_cuda(request, monkeypatch):
    """Tests not marked ``cuda`` run on the CPU, on a CUDA machine too: ``train.device: auto`` (and
    every other "CUDA when available" choice in vqalab) resolves through $VQALAB_DEVICE, which
    subprocesses, notebook kernels and torchrun workers inherit. tests/test_device_neutral.py
    checks it with CUDA reported as available."""
    if request.node.get_closest_marker("cuda") is None:
        monkeypatch.setenv("VQALAB_DEVICE", "cpu")


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="module")
def cfg():
    from vqalab.config import build_config

    return build_config(TINY)


@pytest.fixture(scope="module")
def data(cfg):
    from vqalab.data import build_data

    return build_data(cfg.data)


def write_notebook(path: Path, title: str, parameters: str, *cells: str) -> None:
    """A study notebook: a title cell, a ``parameters`` cell, then code cells (python3 kernel)."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}"), params]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
