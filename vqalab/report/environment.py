"""Where the report ran: device, GPU, CPU, versions, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], check=False, capture_output=True, text=True, cwd=root, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(preset: str, root: Path) -> dict:
    """Where the report ran: device, GPU, CPU, torch and CUDA versions, git commit, preset.

    ``root``: the project folder whose git commit (and whether tracked files were changed
    since it) is recorded.
    """
    import torch

    cuda = torch.cuda.is_available()
    changes = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {
        "device": "cuda" if cuda else "cpu",
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "git_commit": _git(root, "rev-parse", "--short", "HEAD") or None,
        "git_dirty": bool(changes),  # tracked files differ from the commit
        "preset": preset,
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
