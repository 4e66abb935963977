"""One run over two processes (torchrun, gloo on the CPU): the seeded batch order split between
ranks, identical weights on both, one step equal to a single process with twice the batch, one run
folder written by rank 0, resume under torchrun. Tiny easy-VQA runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vqalab import distributed, runs, train
from vqalab.config import build_config
from vqalab.data import samplers

REPO = Path(__file__).resolve().parents[1]
B = 8  # batch of one process

# The frozen image encoder keeps its BatchNorm in eval mode: no statistic depends on the batch split.
PARAMS = {
    "experiment": "ddp", "name": "two_ranks",
    "model": {"name": "vqa_mean_mlp", "cnn_channels": [4, 8], "embed_dim": 8, "hidden_dim": 16, "freeze_image": True},
    "data": {"name": "easy_vqa", "max_train_samples": 64, "max_val_samples": 20},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "train": {"batch_size": B, "num_threads": 1, "device": "cpu", "progress": False},
}

DUMP_SITECUSTOMIZE = '''
import os
if os.environ.get("VQALAB_TEST_DUMP"):  # every rank saves the weights it would checkpoint
    import torch
    import vqalab.runs as _runs
    _save = _runs.save_checkpoint

    def _dumping_save(path, payload):
        _save(path, payload)
        torch.save(payload["model_state"], os.path.join(
            os.environ["VQALAB_TEST_DUMP"], f"rank{os.environ['RANK']}_epoch{payload['epoch']}.pt"))

    _runs.save_checkpoint = _dumping_save
'''


def as_ranks(monkeypatch, rank, world):
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "world_size", lambda: world)


def test_ranks_split_each_seeded_global_batch_in_order(monkeypatch):
    n, world = 37, 2  # global batches of 16: 16, 16, 5 → the last one split 3 + 2
    parts = []
    for r in range(world):
        as_ranks(monkeypatch, r, world)
        parts.append(distributed.epoch_batches(n, B, seed=3, epoch=2))
    single = samplers.epoch_batches(n, B * world, seed=3, epoch=2)
    assert [a + b for a, b in zip(*parts)] == single
    assert [len(b) for b in parts[0]] == [8, 8, 3] and [len(b) for b in parts[1]] == [8, 8, 2]

    as_ranks(monkeypatch, 1, 3)  # 33 samples, world 3: the last global batch (9) gives 3 each ...
    assert [len(b) for b in distributed.epoch_batches(33, B, seed=0, epoch=1)] == [8, 3]
    assert len(distributed.epoch_batches(26, B, seed=0, epoch=1)) == 1  # ... 2 < 3 ranks: dropped


def test_ranks_share_the_validation_split_in_order(monkeypatch):
    shares = []
    for r in range(3):
        as_ranks(monkeypatch, r, 3)
        shares.append([i for batch in distributed.val_batches(10, 3) for i in batch])
    assert shares == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert distributed.split_evenly(list(range(5)), 2) == [[0, 1, 2], [3, 4]]


def test_one_process_is_unchanged():
    assert distributed.world_size() == 1 and distributed.is_main()
    assert distributed.epoch_batches(20, 4, 1, 1) == samplers.epoch_batches(20, 4, 1, 1)
    assert distributed.sum_over_ranks(1.5, 2.0) == (1.5, 2.0)
    assert distributed.summary_fields(8, 2) == {"world_size": 1, "global_batch": 16}


def torchrun(tmp_path, *args, dump=None):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(DUMP_SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(site)]), "OMP_NUM_THREADS": "1"}
    if dump:
        env["VQALAB_TEST_DUMP"] = str(dump)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "vqalab", "train", *args], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return Path(out.stdout.strip().splitlines()[-1])


def params_file(tmp_path, **train_keys):
    tree = {**PARAMS, "runs_root": str(tmp_path / "runs"), "train": {**PARAMS["train"], **train_keys}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path, tree


@pytest.mark.slow
def test_two_ranks_one_step_equals_one_process_with_twice_the_batch(tmp_path):
    path, tree = params_file(tmp_path, epochs=1, max_steps=1)
    dump = tmp_path / "dump"
    dump.mkdir()
    run_dir = torchrun(tmp_path, str(path), dump=dump)

    rank0, rank1 = (torch.load(dump / f"rank{r}_epoch1.pt") for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # both ranks hold the same weights

    single = train.fit(build_config({**tree, "runs_root": str(tmp_path / "single"),
                                     "train": {**tree["train"], "batch_size": 2 * B}}))
    reference = runs.load_checkpoint(train.latest_checkpoint(single.run_dir))["model_state"]
    for key in reference:
        torch.testing.assert_close(rank0[key], reference[key], rtol=1e-5, atol=1e-6)

    # rank 0's half of the batch alone makes another step: the ranks' gradients were averaged
    half = train.fit(build_config({**tree, "runs_root": str(tmp_path / "half")}))
    half_weights = runs.load_checkpoint(train.latest_checkpoint(half.run_dir))["model_state"]
    assert not all(torch.allclose(half_weights[k], rank0[k], rtol=1e-5, atol=1e-6) for k in rank0)

    assert [p for p in (tmp_path / "runs" / "ddp").iterdir()] == [run_dir]  # one folder, rank 0's
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "checkpoints", "confusion_matrix.csv", "metrics.csv",
                                                         "params.yaml", "summary.json", "tb"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 1
    assert summary["world_size"] == 2 and summary["global_batch"] == 2 * B
    assert summary["best_val_acc"] == pytest.approx(single.summary["best_val_acc"])  # the whole split, all-reduced
    assert summary["best_val_loss"] == pytest.approx(single.summary["best_val_loss"], rel=1e-5)


@pytest.mark.slow
def test_resume_under_torchrun_ends_with_the_same_weights(tmp_path):
    path, _ = params_file(tmp_path, epochs=2)
    run_dir = torchrun(tmp_path, str(path))
    last = run_dir / "checkpoints" / "epoch_002.pt"
    uninterrupted = runs.load_checkpoint(last)["model_state"]
    last.unlink()  # as if killed during epoch 2
    summary = json.loads((run_dir / "summary.json").read_text())
    runs.write_json(run_dir / "summary.json", {**summary, "status": "running"})

    assert torchrun(tmp_path, "--resume", str(run_dir)) == run_dir
    resumed = runs.load_checkpoint(last)["model_state"]
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and [r["from_epoch"] for r in summary["resumed"]] == [1]
    assert summary["world_size"] == 2 and len(list((tmp_path / "runs" / "ddp").iterdir())) == 1
