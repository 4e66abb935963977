"""CPU threads chosen from the cores free to a run (vqalab.threads), recorded in its summary."""

import json
from types import SimpleNamespace

import pytest
import torch

from vqalab import threads, train
from vqalab.config import build_config
from vqalab.threads import SHARE_ENV, choose_threads


@pytest.fixture
def machine(monkeypatch):
    """A fake machine: set ``cores`` (affinity) and ``busy`` (other processes' cores, None: no
    /proc/stat) and ``load``; counts the load samples taken."""
    state = SimpleNamespace(cores={0, 1}, busy=0.0, load=0.5, samples=0)

    def busy_cores(cores, sample_s=threads.SAMPLE_S):
        state.samples += 1
        assert cores == state.cores
        return state.busy

    for name in ("OMP_NUM_THREADS", SHARE_ENV, "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "affinity_cores", lambda: set(state.cores))
    monkeypatch.setattr(threads, "busy_cores", busy_cores)
    monkeypatch.setattr(threads, "load_average", lambda: state.load)
    return state


@pytest.mark.parametrize(("cores", "busy", "expected"), [
    (2, 0.0, 2),    # quiet: every core
    (2, 0.2, 2),    # a core 80% idle counts as free
    (2, 1.0, 1),    # one core kept busy by another process
    (2, 0.3, 1),    # 70% idle is not free: one thread too many stalls the others
    (2, 4.1, 1),    # more busy than cores: still one thread
    (8, 3.0, 5),
    (8, 2.8, 5),
    (8, 2.7, 5),
    (8, 2.2, 6),    # 5.8 free: 0.8 of a core is free enough
    (8, 2.26, 5),
])
def test_threads_are_the_free_cores(machine, cores, busy, expected):
    machine.cores, machine.busy, machine.load = set(range(cores)), busy, busy + 0.7
    choice = choose_threads(None)
    assert choice.threads == expected
    assert choice.reason == (f"{cores} cores in affinity, {busy:.1f} busy with other processes, "
                             f"load {busy + 0.7:.1f}: {expected} free")
    assert machine.samples == 1


def test_affinity_not_cpu_count_bounds_the_threads(machine):
    machine.cores, machine.busy = {3}, 0.0  # pinned to one CPU of a bigger machine
    choice = choose_threads(None)
    assert choice.threads == 1 and choice.reason.startswith("1 core(s) in affinity")
    assert machine.samples == 0  # one core: nothing to measure


def test_explicit_num_threads_wins(machine):
    machine.cores, machine.busy = {0, 1}, 1.9
    choice = choose_threads(4)
    assert choice.threads == 4 and choice.reason == "train.num_threads = 4 (set in the config)"
    assert machine.samples == 0


def test_fixed_share_when_runs_share_the_machine(machine, monkeypatch):
    machine.cores, machine.busy = set(range(8)), 7.0  # the other lanes: not counted against this one
    monkeypatch.setenv(SHARE_ENV, "3")
    choice = choose_threads(None)
    assert choice.threads == 2 and choice.reason == "8 cores in affinity shared by 3 runs: 2 each"
    monkeypatch.setenv(SHARE_ENV, "16")  # more runs than cores: one thread each
    assert choose_threads(None).threads == 1
    monkeypatch.delenv(SHARE_ENV)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's ranks on this machine
    assert choose_threads(None).threads == 2
    assert machine.samples == 0


def test_omp_num_threads_caps_the_choice(machine, monkeypatch):
    machine.cores, machine.busy = set(range(8)), 0.0
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    choice = choose_threads(None)
    assert choice.threads == 3 and choice.reason.endswith("8 free; OMP_NUM_THREADS=3 caps it")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_threads(None).threads == 1 and machine.samples == 1  # a cap of 1: no sample needed


def test_load_average_when_proc_stat_cannot_be_read(machine):
    machine.cores, machine.busy, machine.load = {0, 1, 2, 3}, None, 2.0
    choice = choose_threads(None)
    assert choice.threads == 2 and choice.reason == "4 cores in affinity, load 2.0: 2 free"


def test_busy_cores_from_proc_stat_deltas(monkeypatch):
    # (busy, total) ticks per CPU, before and after the sample
    snapshots = iter([{0: (100, 1000), 1: (0, 1000), 2: (0, 1000)},
                      {0: (200, 1100), 1: (50, 1100), 2: (0, 1100)}])
    monkeypatch.setattr(threads, "read_cpu_times", lambda path=threads.PROC_STAT: next(snapshots))
    busy = threads.busy_cores({0, 1}, sample_s=0.01)  # CPU 2 is outside the affinity
    assert busy == pytest.approx(1.5, abs=0.1)  # this process slept: its own share is ~0


def test_read_cpu_times_parses_per_cpu_lines(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 0 10 100 5 0 0 0 0 0\ncpu0 4 1 3 40 2 0 1 0 0 0\ncpu1 6 0 7 60 3 0 0 0 0 0\n"
                    "intr 1 2 3\nctxt 99\n")
    # busy = user + nice + system + irq + softirq + steal; idle = idle + iowait
    assert threads.read_cpu_times(str(stat)) == {0: (9, 51), 1: (13, 76)}
    assert threads.read_cpu_times(str(tmp_path / "missing")) is None


def tiny_run(runs_root, **train_overrides):
    return build_config({
        "experiment": "threads", "name": "tiny", "seed": 0, "runs_root": str(runs_root),
        "model": {"name": "vqa_mean_mlp", "cnn_channels": [4, 8], "embed_dim": 8, "hidden_dim": 16},
        "data": {"name": "easy_vqa", "max_train_samples": 32, "max_val_samples": 16},
        "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "progress": False, "tensorboard": False,
                  **train_overrides},
    })


def test_a_run_trains_with_the_chosen_threads_and_records_why(tmp_path, machine, monkeypatch):
    machine.cores, machine.busy, machine.load = {0, 1}, 1.0, 3.2
    seen = []
    real_epoch = train.train_one_epoch
    monkeypatch.setattr(train, "train_one_epoch",
                        lambda *a, **k: seen.append(torch.get_num_threads()) or real_epoch(*a, **k))
    torch.set_num_threads(2)
    result = train.fit(tiny_run(tmp_path))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert seen == [1] and torch.get_num_threads() == 2  # one thread for the run, then restored
    assert summary["threads"] == 1
    assert summary["threads_reason"] == "2 cores in affinity, 1.0 busy with other processes, load 3.2: 1 free"
    assert summary["interop_threads"] == torch.get_num_interop_threads() == 1

    explicit = train.fit(tiny_run(tmp_path, num_threads=2))
    summary = json.loads((explicit.run_dir / "summary.json").read_text())
    assert (summary["threads"], summary["threads_reason"]) == (2, "train.num_threads = 2 (set in the config)")


def test_dataloader_workers_use_one_thread(tmp_path):
    class ThreadsSeen(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.get_num_threads()

    cfg = tiny_run(tmp_path, num_workers=2)
    data = SimpleNamespace(collate=list)
    torch.set_num_threads(2)
    loader = train.make_loader(ThreadsSeen(), [[0, 1], [2, 3]], data, cfg, torch.device("cpu"))
    assert [n for batch in loader for n in batch] == [1, 1, 1, 1]  # not the parent's 2 each
