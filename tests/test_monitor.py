"""Watching runs: TensorBoard event files per run (read back with TensorBoard's own reader), the
HParams entries of sweep points, `vqalab tb` serving them, and the `vqalab runs` table."""

import json
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from vqalab import train
from vqalab.cli import main as cli_main
from vqalab.config import build_config
from vqalab.data import build_data
from vqalab.monitor import (
    HPARAMS_DIR,
    TB_DIR,
    diff_runs,
    link_logdir,
    run_folders,
    runs_overview,
    start_tensorboard,
)
from vqalab.sweep import sweep
from vqalab.train import fit

DATA_SPEC = {"name": "easy_vqa", "max_train_samples": 64, "max_val_samples": 32}
EVERY = 2


def tiny(runs_root, **train_overrides):
    # 64 samples / batch 8 = 8 optimizer steps per epoch.
    return build_config({
        "experiment": "watch", "name": "tiny", "runs_root": str(runs_root),
        "model": {"name": "vqa_mean_mlp", "cnn_channels": [4, 8], "embed_dim": 8, "hidden_dim": 16},
        "data": DATA_SPEC,
        "train": {"epochs": 3, "batch_size": 8, "num_threads": 1, "progress": False,
                  "log_every_steps": EVERY, **train_overrides},
    })


@pytest.fixture(scope="module")
def data():
    return build_data(DATA_SPEC)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    return fit(tiny(tmp_path_factory.mktemp("runs")), data=data)


def events(folder):
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return acc


def test_run_writes_expected_tags_and_steps(run):
    acc = events(run.run_dir / TB_DIR)
    total_steps = run.summary["steps"]
    assert total_steps == 24
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/samples_per_s"):
        assert [e.step for e in acc.Scalars(tag)] == list(range(EVERY, total_steps + 1, EVERY)), tag
    metrics = pd.read_csv(run.run_dir / "metrics.csv")
    for tag, column in (("val/acc", "val_acc"), ("val/loss", "val_loss"), ("train/epoch_loss", "train_loss")):
        scalars = acc.Scalars(tag)
        assert [e.step for e in scalars] == metrics["step"].tolist(), tag
        assert [e.value for e in scalars] == pytest.approx(metrics[column].tolist(), rel=1e-6), tag
    # Peak memory is logged every epoch (0 on the CPU: no allocator statistics there).
    assert len(acc.Scalars("system/peak_memory_mb")) == 3
    # The LR logged at a step is the optimizer's LR for that step: constant schedule here.
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx([1e-3] * 12)


def test_loss_scalar_is_the_mean_over_its_steps(data, tmp_path):
    # With one step per scalar the logged loss is that step's micro-batch loss; their mean over an
    # epoch is the epoch's train_loss in metrics.csv (equal batch sizes).
    result = fit(tiny(tmp_path, epochs=1, log_every_steps=1), data=data)
    losses = [e.value for e in events(result.run_dir / TB_DIR).Scalars("train/loss")]
    assert len(losses) == 8
    epoch_loss = pd.read_csv(result.run_dir / "metrics.csv")["train_loss"].iloc[0]
    assert sum(losses) / len(losses) == pytest.approx(epoch_loss, rel=1e-5)


def test_tensorboard_off_writes_no_event_files(data, tmp_path):
    result = fit(tiny(tmp_path, epochs=1, tensorboard=False), data=data)
    assert not (result.run_dir / TB_DIR).exists()
    assert (result.run_dir / "metrics.csv").is_file()


def test_resumed_run_shows_each_step_once(data, tmp_path, monkeypatch):
    cfg = tiny(tmp_path, epochs=3, checkpoint_every=1)
    real_epoch = train.train_one_epoch

    def crash_in_epoch_3(*args, **kwargs):
        if args[7] == 3:  # epoch
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, data=data)
    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    run_dir = next((tmp_path / "watch").iterdir())
    # Pretend the last epoch's checkpoint was lost: epoch 2 is trained again after resuming.
    (run_dir / "checkpoints" / "epoch_002.pt").unlink()
    fit(cfg, resume=run_dir, data=data)
    steps = [e.step for e in events(run_dir / TB_DIR).Scalars("train/loss")]
    assert steps == list(range(EVERY, 25, EVERY))
    assert [e.step for e in events(run_dir / TB_DIR).Scalars("val/acc")] == [8, 16, 24]


def test_sweep_points_write_hparams(data, tmp_path):
    base = tiny(tmp_path, epochs=1).to_dict()
    df = sweep(base, {"optim.lr": [1e-3, 3e-3]}, seeds=[0], data=data)
    for _, row in df.iterrows():
        folder = Path(row["run_dir"]) / TB_DIR / HPARAMS_DIR
        acc = events(folder)
        content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        assert info.hparams["optim.lr"].number_value == pytest.approx(row["optim.lr"])
        assert info.hparams["seed"].number_value == 0
        assert acc.Scalars("hparam/best_val_acc")[0].value == pytest.approx(row["best_val_acc"])


def test_runs_table_shows_what_differs(data, tmp_path):
    a = fit(tiny(tmp_path, epochs=1), data=data)
    b = fit(build_config({**tiny(tmp_path, epochs=2).to_dict(), "optim": {"lr": 3e-3}}), data=data)
    table = runs_overview(run_folders(["watch"], tmp_path))
    assert table.attrs["differing"] == ["optim.lr", "train.epochs"]
    assert table["optim.lr"].tolist() == [1e-3, 3e-3]
    assert table["epochs"].tolist() == [1, 2]
    assert table["best_val_acc"].tolist() == [a.summary["best_val_acc"], b.summary["best_val_acc"]]
    assert set(table["status"]) == {"completed"}

    diff = diff_runs(a.run_dir, b.run_dir)
    assert diff["key"].tolist()[:2] == ["optim.lr", "train.epochs"]
    row = diff.set_index("key").loc["summary.best_val_acc"]
    assert row[a.run_dir.name] == a.summary["best_val_acc"]


def test_runs_command_json_and_errors(data, tmp_path, capsys):
    fit(tiny(tmp_path, epochs=1), data=data)
    assert cli_main(["runs", "watch", "--runs-root", str(tmp_path), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 1 and records[0]["status"] == "completed" and records[0]["epochs"] == 1
    assert cli_main(["runs", "nope", "--runs-root", str(tmp_path)]) == 2
    assert f"nope: neither a run folder nor an experiment under {tmp_path}" in capsys.readouterr().err


def test_links_name_runs_by_folder(tmp_path):
    a, b = tmp_path / "exp1" / "20261201-run", tmp_path / "exp2" / "20261201-run"
    folder = link_logdir([a, b], tmp_path / "links")
    assert (folder / "20261201-run").readlink() == a / TB_DIR
    assert (folder / "exp2" / "20261201-run").readlink() == b / TB_DIR


@pytest.mark.slow
def test_tb_serves_the_runs(run):
    server = start_tensorboard([run.run_dir])
    try:
        deadline = time.monotonic() + 60
        names = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(server.url + "data/runs", timeout=2) as response:
                    names = json.loads(response.read())
                if names:
                    break
            except OSError:
                pass
            assert server.process.poll() is None, server.process.stderr.read()
            time.sleep(0.5)
        assert names == [run.run_dir.name]
        with urllib.request.urlopen(f"{server.url}data/plugin/scalars/tags", timeout=5) as response:
            tags = json.loads(response.read())
        assert "val/acc" in tags[run.run_dir.name]
    finally:
        server.stop()
    assert not server.logdir.exists()
