"""One run over two processes (torchrun, gloo on the CPU): the seeded batch order split between
ranks, identical weights on both, an epoch (its last global batch split unevenly) equal to a single
process with twice the batch, one run folder written by rank 0, resume under torchrun, the auto
batch size chosen on rank 0, one gradient all-reduce per accumulated step, a resume with another
world size refused, train-mode BatchNorm refused on the CPU. Tiny easy-VQA runs."""

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
from vqalab.registry import ConfigError

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

if os.environ.get("VQALAB_TEST_DUMP") and "RANK" in os.environ:  # torchrun's workers, not its launcher
    import json
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    import vqalab.bench as _bench
    import vqalab.distributed as _distributed
    import vqalab.train as _train

    _dump = os.environ["VQALAB_TEST_DUMP"]
    _rank = os.environ["RANK"]

    def _disagreeing_choice(cfg, data, device):  # each rank would measure another batch size
        return {"batch_size": 8 if _rank == "0" else 4, "sentence": f"measured on rank {_rank}"}

    _bench.choose_batch_size = _disagreeing_choice
    _resolve = _train.resolve_auto_batch

    def _recording_resolve(*args):
        choice = _resolve(*args)
        with open(os.path.join(_dump, f"rank{_rank}_auto.json"), "w") as f:
            json.dump(choice, f)
        return choice

    _train.resolve_auto_batch = _recording_resolve
    _wrap = _distributed.wrap
    _calls = [0]

    def _counting_allreduce(state, bucket):  # one call per gradient bucket all-reduced
        _calls[0] += 1
        with open(os.path.join(_dump, f"rank{_rank}_allreduce.json"), "w") as f:
            json.dump(_calls[0], f)
        return default_hooks.allreduce_hook(None, bucket)

    def _counting_wrap(model, device):
        wrapped = _wrap(model, device)
        wrapped.register_comm_hook(None, _counting_allreduce)
        return wrapped

    _distributed.wrap = _counting_wrap
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


def test_each_part_is_weighted_by_its_share_of_the_global_batch(monkeypatch):
    weights = []
    for r in range(2):  # 37 samples: global batches 16, 16, 5 → the last split 3 + 2
        as_ranks(monkeypatch, r, 2)
        weights.append(distributed.loss_weights(37, B, seed=3, epoch=2))
    assert weights == [[1.0, 1.0, 2 * 3 / 5], [1.0, 1.0, 2 * 2 / 5]]
    # the average over ranks of weight × part mean is the mean over the global batch
    loss = torch.arange(5.0)
    assert (1.2 * loss[:3].mean() + 0.8 * loss[3:].mean()) / 2 == pytest.approx(loss.mean().item())


def test_a_resume_with_another_world_size_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"started with world size 1, this resume has world size 2.*without torchrun"):
        distributed.check_resume(tmp_path, {"status": "running", "world_size": 1})
    with pytest.raises(ConfigError, match="started with world size 1"):  # recorded before DDP runs: one process
        distributed.check_resume(tmp_path, {"status": "running"})
    distributed.check_resume(tmp_path, {"status": "running", "world_size": 2})
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match=r"world size 2, this resume has world size 4.*--nproc-per-node=2"):
        distributed.check_resume(tmp_path, {"world_size": 2})


def bn_model():  # (B, 3, 8, 8) → (B, 2), one BatchNorm2d
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.LazyLinear(2))


class FrozenBatchNorm(torch.nn.Sequential):
    """Keeps its BatchNorm in eval mode, as a frozen encoder does: nothing to synchronise."""

    def train(self, mode: bool = True):
        super().train(mode)
        self[1].eval()
        return self


def test_train_mode_batchnorm_is_synchronised_on_cuda_and_refused_on_the_cpu(monkeypatch):
    model = bn_model()
    assert distributed.sync_batchnorm(model, torch.device("cpu"), "m") is model  # one process: unchanged
    as_ranks(monkeypatch, 0, 2)
    with pytest.raises(ConfigError, match=r"model 'm' has BatchNorm in train mode \(1\).*SyncBatchNorm needs CUDA"):
        distributed.sync_batchnorm(model, torch.device("cpu"), "m")
    weight = model[1].weight
    # converting moves no tensor, so the CUDA branch is checked here on the CPU
    converted = distributed.sync_batchnorm(model, torch.device("cuda"), "m")
    assert converted is model and type(model[1]) is torch.nn.SyncBatchNorm and model[1].weight is weight
    assert list(model.state_dict()) == list(bn_model().state_dict())  # checkpoints keep their keys

    frozen = FrozenBatchNorm(*bn_model())
    assert distributed.sync_batchnorm(frozen, torch.device("cpu"), "m") is frozen
    assert type(frozen[1]) is torch.nn.BatchNorm2d


def test_fit_refuses_train_mode_batchnorm_under_ddp_on_the_cpu_before_a_run_folder(monkeypatch, tmp_path):
    as_ranks(monkeypatch, 0, 2)  # no process group is joined: WORLD_SIZE is not set
    tree = {**PARAMS, "runs_root": str(tmp_path / "runs"),
            "model": {**PARAMS["model"], "freeze_image": False}}  # the image CNN's BatchNorm trains
    with pytest.raises(ConfigError, match="model 'vqa_mean_mlp' has BatchNorm in train mode"):
        train.fit(build_config(tree))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("params.yaml"))


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
def test_two_ranks_equal_one_process_with_twice_the_batch_also_on_an_uneven_last_batch(tmp_path):
    # 37 samples: global batches 16, 16, 5; the last is split 3 + 2 and must still be its mean
    path, tree = params_file(tmp_path, epochs=1)
    tree["data"] = {**tree["data"], "max_train_samples": 37}
    path.write_text(yaml.safe_dump(tree))
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

    # rank 0's share alone (batch B, 3 steps) ends elsewhere: the ranks' gradients were combined
    half = train.fit(build_config({**tree, "runs_root": str(tmp_path / "half")}))
    half_weights = runs.load_checkpoint(train.latest_checkpoint(half.run_dir))["model_state"]
    assert not all(torch.allclose(half_weights[k], rank0[k], rtol=1e-5, atol=1e-6) for k in rank0)

    assert [p for p in (tmp_path / "runs" / "ddp").iterdir()] == [run_dir]  # one folder, rank 0's
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "checkpoints", "confusion_matrix.csv", "metrics.csv",
                                                         "params.yaml", "summary.json", "tb", "val_predictions.csv"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3
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


@pytest.mark.slow
def test_auto_batch_from_rank_0_one_all_reduce_per_accumulated_step_resume_needs_the_world_size(tmp_path):
    # rank 0 would choose 8, rank 1 4 (sitecustomize above); 64 samples, global 16, 2 micro-batches a step
    path, tree = params_file(tmp_path, epochs=1, batch_size="auto", grad_accum_steps=2)
    dump = tmp_path / "dump"
    dump.mkdir()
    run_dir = torchrun(tmp_path, str(path), dump=dump)

    for r in (0, 1):  # both ranks trained rank 0's choice, the same steps, one all-reduce per step
        assert json.loads((dump / f"rank{r}_auto.json").read_text())["batch_size"] == B
        assert json.loads((dump / f"rank{r}_allreduce.json").read_text()) == 2  # not 4: no_sync
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["batch_size"] == B and summary["batch_size_auto"]["sentence"] == "measured on rank 0"
    assert summary["steps"] == 2 and summary["global_batch"] == 2 * B * 2

    rank0 = torch.load(dump / "rank0_epoch1.pt")  # equal to one process accumulating batches of 2B
    single = train.fit(build_config({**tree, "runs_root": str(tmp_path / "single"),
                                     "train": {**tree["train"], "batch_size": 2 * B}}))
    reference = runs.load_checkpoint(train.latest_checkpoint(single.run_dir))["model_state"]
    for key in reference:
        torch.testing.assert_close(rank0[key], reference[key], rtol=1e-5, atol=1e-6)

    # resumed in one process, the global batch would halve: refused before anything changes
    runs.write_json(run_dir / "summary.json", {**summary, "status": "running"})
    def files():  # every file and its bytes (the lock is taken, then released)
        return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}

    before = files()
    with pytest.raises(ConfigError, match="started with world size 2, this resume has world size 1"):
        train.fit(build_config(tree), resume=run_dir)
    assert files() == before
