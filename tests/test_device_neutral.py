"""The suite is device-neutral: a test not marked ``cuda`` runs on the CPU on a CUDA machine too.

conftest.py sets ``VQALAB_DEVICE=cpu`` for such tests (and for fixtures of every scope); here CUDA is reported as
available (``torch.cuda.is_available`` patched) and every way a test reaches a device must still
give the CPU: ``train.device: auto`` in-process, in a child process, the run environment, every
params file and every notebook's quick preset."""

import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO, SHELL_DEVICE

from vqalab import runs
from vqalab.config import load_config
from vqalab.devices import DEVICE_ENV, auto_device_name
from vqalab.registry import ConfigError
from vqalab.train import select_device

CPU = torch.device("cpu")


@pytest.fixture
def pretend_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_auto_is_the_cpu_in_an_unmarked_test_even_with_cuda(pretend_cuda):
    assert os.environ[DEVICE_ENV] == "cpu"
    assert select_device("auto") == CPU and auto_device_name() == "cpu"
    assert runs.environment(root=REPO)["device"] == "cpu"


def test_without_the_variable_auto_would_take_cuda(pretend_cuda, monkeypatch):
    """The check above is not vacuous: unpinned, the same patched machine resolves to CUDA."""
    monkeypatch.delenv(DEVICE_ENV)
    assert select_device("auto") == torch.device("cuda") and auto_device_name() == "cuda"


def test_child_processes_inherit_the_cpu(tmp_path):
    """Subprocesses, notebook kernels and torchrun workers inherit the environment, not a patch."""
    # a stand-in torch whose CUDA is available (and a quick child: no real torch to import)
    code = ("import sys, types\n"
            "torch = sys.modules['torch'] = types.ModuleType('torch')\n"
            "torch.cuda = types.SimpleNamespace(is_available=lambda: True)\n"
            "from vqalab.devices import auto_device_name; print(auto_device_name())")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "cpu"


@pytest.mark.parametrize("params_file", sorted((REPO / "params" / "train").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_params_file_trains_on_the_cpu_in_the_suite(params_file, pretend_cuda):
    assert select_device(load_config(params_file).train.device) == CPU, params_file


def test_every_quick_preset_runs_on_the_cpu_in_the_suite(pretend_cuda):
    """The notebook tests run the quick presets; a notebook's device defaults to auto."""
    presets = sorted((REPO / "params").glob("*.yaml"))
    assert presets
    for file in presets:
        quick = (yaml.safe_load(file.read_text()).get("presets") or {}).get("quick") or {}
        assert select_device(quick.get("device", "auto")) == CPU, f"{file.name}: quick preset device"


def test_a_bad_variable_is_refused_naming_it(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "gpu")
    with pytest.raises(ConfigError, match=r"\$VQALAB_DEVICE = 'gpu': expected cpu, cuda, cuda:N"):
        select_device("auto")


def test_an_explicit_device_is_not_overridden(pretend_cuda):
    """Only auto follows the variable: a config asking for cuda (test_cuda.py) gets it."""
    assert select_device("cuda") == torch.device("cuda") and select_device("cpu") == CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_a_cuda_variable_without_a_gpu_names_where_cuda_came_from(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(ConfigError, match=r"train\.device = 'auto' \(\$VQALAB_DEVICE = 'cuda'\): CUDA is not"):
        select_device("auto")


@pytest.mark.cuda
def test_a_cuda_marked_test_is_not_pinned():
    assert os.environ.get(DEVICE_ENV) == SHELL_DEVICE



@pytest.fixture(scope="module")
def device_of_a_module_fixture():
    """As a module-scoped reference run sees it: set up before any function-scoped fixture."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: True)
        return select_device("auto")


def test_fixtures_of_wider_scope_are_pinned_too(device_of_a_module_fixture):
    assert device_of_a_module_fixture == CPU
