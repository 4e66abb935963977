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


# Tests not marked ``cuda`` run on the CPU, on a CUDA machine too: ``train.device: auto`` (and every
# other "CUDA when available" choice in vqalab) resolves through $VQALAB_DEVICE, which subprocesses,
# notebook kernels and torchrun workers inherit. Set here, before any fixture of any scope runs (a
# module-scoped reference run too); tests/test_device_neutral.py checks it with CUDA reported as available.
SHELL_DEVICE = os.environ.get("VQALAB_DEVICE")  # the shell's own setting, for the tests marked cuda
os.environ["VQALAB_DEVICE"] = "cpu"


@pytest.fixture(autouse=True)
def cpu_unless_marked_cuda(request, monkeypatch):
    """Unmarked tests: $VQALAB_DEVICE = cpu (again, should an earlier test have changed it);
    tests marked ``cuda``: the shell's own setting."""
    if request.node.get_closest_marker("cuda") is None:
        monkeypatch.setenv("VQALAB_DEVICE", "cpu")
    elif SHELL_DEVICE is None:
        monkeypatch.delenv("VQALAB_DEVICE", raising=False)
    else:
        monkeypatch.setenv("VQALAB_DEVICE", SHELL_DEVICE)


@pytest.fixture(scope="session", autouse=True)
def no_report_pdf():
    """A report's PDF costs a Chromium start (seconds on 2 cores) per ``run_report``: tests that do
    not read it get a stand-in record; tests/test_report_print.py prints for real."""
    from vqalab.report import build

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(build, "write_pdf", lambda week_dir: {"file": None, "skipped": "not printed in tests"})
        yield


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


def pytest_terminal_summary(terminalreporter, config):
    """Say which lab-size checks `make test` left to `make test-heavy`, so none is left out silently."""
    if "not heavy" in (config.option.markexpr or ""):
        heavy = [item for item in terminalreporter.stats.get("deselected", []) if item.get_closest_marker("heavy")]
        if heavy:
            terminalreporter.write_line(f"{len(heavy)} heavy tests (lab-size GPU memory predictions, real torch.compile) "
                                        "not run here: `make test-heavy` runs them, as CI does after `make test`")
