"""The README says what the code does: each `vqalab ...` command it shows parses with the real
command line and its subcommand answers --help; each preset it names exists where it says."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vqalab import cli

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
FER_STUDIES = ("adam_eps_beta", "cls_vs_baseline", "depth_test", "lr_search", "regularisation")


def readme_commands() -> list[list[str]]:
    """The arguments after ``vqalab`` of every command line in the README's code blocks and of
    every inline ``.venv/bin/vqalab ...`` span (also ``torchrun ... -m vqalab ...``)."""
    lines, in_block = [], False
    for line in README.splitlines():
        if line.startswith("```"):
            in_block = not in_block
        elif in_block:
            lines.append(line)
    lines += re.findall(r"`(\.venv/bin/vqalab [^`]+)`", README)
    commands = []
    for line in lines:
        if not line.lstrip().startswith((".venv/bin/", "vqalab ")):
            continue  # Python, YAML or a folder tree
        tokens = shlex.split(line.split("  #")[0].split(" # ")[0])
        for i, token in enumerate(tokens):
            if token == "vqalab" and i > 0 and tokens[i - 1] == "-m" or token.endswith("bin/vqalab"):
                commands.append(tokens[i + 1:])
                break
    return commands


COMMANDS = readme_commands()


def subcommand_path(argv: list[str]) -> list[str]:
    """``["sweep", "work", "depth_lr", ...]`` → ``["sweep", "work"]``: the (sub)commands named."""
    parser, path = cli.build_parser(), []
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or len(argv) == len(path) or argv[len(path)] not in subs[0].choices:
            return path
        name = argv[len(path)]
        parser = subs[0].choices[name]
        path.append(name)


def test_the_readme_shows_the_commands_of_every_family():
    named = {" ".join(subcommand_path(c)) for c in COMMANDS}
    assert {"train", "report", "data", "bench throughput", "bench flops", "lr-find", "runs", "tb",
            "sweep create", "sweep work", "sweep status", "sweep table"} <= named


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_each_readme_command_parses_and_answers_help(argv, capsys):
    args = cli.build_parser().parse_args(argv)  # every option and argument shown exists
    assert callable(args.func)
    path = subcommand_path(argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*path, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: vqalab {' '.join(path)}" in capsys.readouterr().out
    for token in argv:  # params files it names are in the project
        if token.startswith("params/"):
            assert (REPO / token).is_file(), token


def test_the_module_entry_point_answers_help():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "vqalab", "--help"], capture_output=True, text=True, env=env,
                         check=True, timeout=120).stdout
    assert out.startswith("usage: vqalab")


def study_presets() -> dict[str, set[str]]:
    return {path.stem: set(yaml.safe_load(path.read_text())["presets"])
            for path in sorted((REPO / "params").glob("*.yaml")) if (REPO / "notebooks" / f"{path.stem}.ipynb").is_file()}


def test_every_preset_the_readme_names_is_where_it_says():
    presets = study_presets()
    assert set(FER_STUDIES) < set(presets)
    named = set(re.findall(r"--preset ([\w-]+)", README))
    params_line = re.search(r"holds each notebook's presets \((.*?)\);", README, re.DOTALL).group(1)
    named |= set(re.findall(r"`([\w-]+)`", params_line)) - {"vqa_models"}
    assert named == {"quick", "cpu", "gpu", "gpu-smoke", "rafdb-24gb", "rafdb-80gb", "vqa2-24gb", "vqa2-80gb",
                     "scenes-cpu"}
    where = {"quick": set(presets), "cpu": set(presets), "gpu": set(presets), "gpu-smoke": set(presets),
             "rafdb-24gb": set(FER_STUDIES), "rafdb-80gb": set(FER_STUDIES), "vqa2-24gb": {"vqa_models"},
             "vqa2-80gb": {"vqa_models"}, "scenes-cpu": {"vqa_models"}}
    for preset in named:
        assert {s for s, names in presets.items() if preset in names} == where[preset], preset
