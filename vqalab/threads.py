"""How many CPU threads a run's torch operations use: one decision for training runs, the
throughput sweep and the LR range test, recorded with its reason (``summary.json``: ``threads``,
``threads_reason``).

Asking for every core on a machine others use is the slow choice: torch's intra-op threads meet at
the end of every parallel operation, so one thread descheduled behind another process stalls the
others at each of the thousands of small operations of a step (the vqa_models study on 2 cores
under a load of 4-5 ran ~25× slower than quiet, not ~2.5×). A run therefore takes the cores free
to it, in this order:

1. ``train.num_threads`` when the config sets it;
2. a fixed share, ``cores // n``, when n runs share the machine on purpose (``VQALAB_CPU_SHARE=n``,
   set by sweep worker lanes; ``LOCAL_WORLD_SIZE`` under torchrun);
3. otherwise the cores in this process's affinity (``os.sched_getaffinity``) less those other
   processes keep busy, measured over a short sample of ``/proc/stat`` (this process's own CPU
   time taken out; where it cannot be read, the 1-minute load average). A core counts as free
   when at least ``FREE_CORE_IDLE`` of it is idle: one thread too many costs far more than one too few.

``OMP_NUM_THREADS`` in the environment caps 2 and 3, as it caps torch's own default.

The decision needs no torch (the report asks it for its lanes); ``vqalab.devices.torch_threads``
applies it to torch.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

SHARE_ENV = "VQALAB_CPU_SHARE"  # n runs share this machine's cores: each takes cores // n
SAMPLE_S = 0.2  # seconds of /proc/stat sampled for the other processes' load
FREE_CORE_IDLE = 0.75  # share of a core that must be idle for it to count as free
PROC_STAT = "/proc/stat"


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str

    def record(self) -> dict:
        """The fields a run's ``summary.json`` (and bench / lr-find records) carry."""
        return {"threads": self.threads, "threads_reason": self.reason}


def affinity_cores() -> set[int]:
    """The CPUs this process may run on (all of them where affinity is not supported)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def read_cpu_times(path: str = PROC_STAT) -> dict[int, tuple[int, int]] | None:
    """Per CPU number: (busy, total) clock ticks since boot, from ``/proc/stat``; None if unreadable."""
    try:
        with open(path, encoding="ascii") as stream:
            lines = stream.read().splitlines()
    except OSError:
        return None
    times = {}
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()) or len(fields) < 4:
            continue
        ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        times[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return times or None


@dataclass(frozen=True)
class CpuSnapshot:
    """Per-CPU clock ticks, this process's CPU time (with its ended children's) and the wall clock."""

    ticks: dict[int, tuple[int, int]]
    own_s: float
    wall_s: float


def cpu_snapshot() -> CpuSnapshot | None:
    """Now, for ``others_busy_since``; None where ``/proc/stat`` cannot be read."""
    ticks = read_cpu_times()
    if ticks is None:
        return None
    t = os.times()  # this process and its finished child processes (e.g. DataLoader workers)
    return CpuSnapshot(ticks, t.user + t.system + t.children_user + t.children_system, time.perf_counter())


def others_busy_since(before: CpuSnapshot | None, cores: set[int]) -> float | None:
    """How many of ``cores`` other processes kept busy since ``before`` (this process's own CPU
    time taken out: its threads, and its child processes once they have ended); None without a reading."""
    after = cpu_snapshot()
    if before is None or after is None or after.wall_s <= before.wall_s:
        return None
    busy = 0.0
    for cpu in cores & before.ticks.keys() & after.ticks.keys():
        total = after.ticks[cpu][1] - before.ticks[cpu][1]
        if total > 0:
            busy += (after.ticks[cpu][0] - before.ticks[cpu][0]) / total
    return max(0.0, busy - (after.own_s - before.own_s) / (after.wall_s - before.wall_s))


def busy_cores(cores: set[int], sample_s: float = SAMPLE_S) -> float | None:
    """How many of ``cores`` other processes keep busy, over the next ``sample_s`` seconds."""
    before = cpu_snapshot()
    if before is None:
        return None
    time.sleep(sample_s)
    return others_busy_since(before, cores)


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def positive_int_env(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


def choose_threads(requested: int | None = None) -> ThreadChoice:
    """The CPU threads for a run (see the module docstring for the order); ``requested`` is
    ``train.num_threads``."""
    if requested:
        return ThreadChoice(int(requested), f"train.num_threads = {requested} (set in the config)")
    cores = affinity_cores()
    n = len(cores)
    cap = positive_int_env("OMP_NUM_THREADS")
    capped = f"; OMP_NUM_THREADS={cap} caps it" if cap is not None and cap < n else ""
    share = positive_int_env(SHARE_ENV) or positive_int_env("LOCAL_WORLD_SIZE") or 1
    if share > 1:
        threads = max(1, min(n // share, cap or n))
        return ThreadChoice(threads, f"{n} cores in affinity shared by {share} runs: {max(1, n // share)} each{capped}")
    load = load_average()
    load_text = f"load {load:.1f}" if load is not None else "load unknown"
    limit = min(n, cap or n)
    if limit == 1:  # nothing to decide: no need to sample the load
        return ThreadChoice(1, f"{n} core(s) in affinity, {load_text}: 1{capped}")
    busy = busy_cores(cores)
    if busy is None:  # no /proc/stat: the load average, which counts this process too
        busy, measured = load or 0.0, load_text
    else:
        measured = f"{busy:.1f} busy with other processes, {load_text}"
    free = max(1, min(n, math.floor(n - busy + (1 - FREE_CORE_IDLE))))
    threads = min(free, limit)
    return ThreadChoice(threads, f"{n} cores in affinity, {measured}: {free} free{capped}")
