"""Hostile and careless input: every case is refused before any compute with a message naming the
file, key or value; signals, locks, disk full and damaged run files end in a clear message."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from vqalab import runs, train
from vqalab.cli import main as cli_main
from vqalab.config import build_config, load_config
from vqalab.registry import ConfigError


def write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(match, path=None, overrides=None):
    with pytest.raises(ConfigError, match=match) as err:
        load_config(path, overrides)
    return str(err.value)


# --- YAML -------------------------------------------------------------------------------------

def billion_laughs(levels: int) -> str:
    text = 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels + 1):
        text += f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n"
    return text + f"train: {{epochs: *a{levels}}}\n"


@pytest.mark.parametrize("levels", [3, 7, 9])
def test_alias_expansion_is_limited_and_the_message_stays_short(tmp_path, levels):
    path = write(tmp_path, billion_laughs(levels))
    message = refused(r"anchors and aliases expand to more than 10000 values", path)
    assert str(path) in message and len(message) < 500


def test_a_small_alias_tree_is_echoed_cut_short(tmp_path):
    # 9 × 9 values: under the expansion limit, but the error must not print the whole tree
    row = "&row [" + ", ".join(["lol"] * 9) + "]"
    path = write(tmp_path, f"train:\n  epochs: [{row}, " + ", ".join(["*row"] * 8) + "]\n")
    message = refused(r"train\.epochs = \[\['lol', ", path)
    assert "..." in message and len(message) < len(str(path)) + 300


def test_duplicate_keys_name_the_file_key_and_both_lines(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 0.1\ntrain:\n  epochs: 2\noptim:\n  eps: 1.0e-7\n")
    message = refused(r"duplicate key 'optim' at lines 1 and 5", path)
    assert str(path) in message
    refused(r"duplicate key 'lr' at lines 2 and 3", write(tmp_path, "optim:\n  lr: 0.1\n  lr: 0.2\n"))


def test_merge_keys_may_still_be_overridden(tmp_path):
    path = write(tmp_path, "base: &base {lr: 0.1, eps: 1.0e-7}\n")
    cfg = load_config(write(tmp_path, "optim:\n  <<: {lr: 0.1, eps: 1.0e-7}\n  lr: 0.2\n"))
    assert cfg.optim.lr == 0.2 and cfg.optim.eps == 1e-7
    assert path.is_file()


def test_non_utf8_params_file_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("optim:\n  lr: 0.1  # taux d'apprentissage élevé\n".encode("latin-1"))
    refused(rf"{path}: not UTF-8 text \(byte 0xe9 at offset \d+\): save the file as UTF-8", path)


def test_binary_params_file_is_refused_quickly(tmp_path):
    path = tmp_path / "random.yaml"
    path.write_bytes(bytes(range(256)) * 64)
    refused(rf"{path}: not UTF-8 text", path)


def test_malformed_override_names_the_override():
    message = refused(r"--set train\.epochs: value '\[1,' is not valid YAML", overrides=["train.epochs=[1,"])
    assert "Traceback" not in message


def test_empty_params_file_is_refused_unless_an_override_confirms(tmp_path):
    path = write(tmp_path, "# nothing here yet\n")
    refused(rf"{path}: the params file is empty: .* give at least one --set", path)
    assert load_config(path, ["train.epochs=1"]).train.epochs == 1


# --- numbers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, match", [
    ("optim:\n  lr: .inf\n", r"optim\.lr = inf: Input should be a finite number"),
    ("optim:\n  lr: 1.0e+400\n", r"optim\.lr = inf: Input should be a finite number"),
    ("optim:\n  eps: .nan\n", r"optim\.eps = nan: Input should be a finite number"),
    ("train:\n  epochs: 99999999999999999999999999999\n", r"train\.epochs = 9999.*less than or equal to 1000000"),
    ("train:\n  max_steps: 99999999999999999999999999999\n", r"train\.max_steps = 9999.*too large"),
    ("seed: 4294967296\n", r"seed = 4294967296: Input should be less than 4294967296"),
    ("optim:\n  betas: [1.5, 0.999]\n", r"optim\.betas\.0 = 1\.5: Input should be less than 1"),
    ("optim:\n  betas: [0.9, -0.1]\n", r"optim\.betas\.1 = -0\.1: Input should be greater than or equal to 0"),
    ("train:\n  device: gpu\n", r"train\.device = 'gpu': .*expected auto, cpu, cuda, cuda:N"),
    ("train:\n  device: 'cuda:x'\n", r"train\.device = 'cuda:x'"),
    ("model:\n  name: vqa_mean_mlp\n  cnn_channels: [-4, 8, 8]\n",
     r"model\.cnn_channels = \(-4, 8, 8\): expected a list of channel counts, each at least 1"),
    ("model:\n  name: vqa_mean_mlp\n  dropout: .nan\n", r"model\.dropout = nan: expected a finite number"),
    ("data:\n  name: easy_vqa\n  max_train_samples: 0\n", r"data\.max_train_samples = 0: expected at least 1"),
    ("data:\n  name: easy_vqa\n  max_val_samples: -3\n", r"data\.max_val_samples = -3: expected at least 1"),
])
def test_out_of_range_numbers_are_refused_naming_file_and_key(tmp_path, text, match):
    path = write(tmp_path, text)
    message = refused(match, path)
    assert message.startswith(str(path))


def test_valid_devices_pass_validation():
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert build_config({"train": {"device": device}}).train.device == device


def test_huge_value_in_an_error_is_cut_short(tmp_path):
    path = write(tmp_path, "name: " + "x" * 100 + "\nexperiment: [" + ", ".join(["1"] * 5000) + "]\n")
    message = refused(r"experiment = \[1, 1, ", path)
    assert len(message) < 400
