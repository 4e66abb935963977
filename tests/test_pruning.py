"""Successive halving: a pruner stops a hopeless sweep point, which is recorded as pruned, kept out
of means and winners, reused only by a sweep with the same pruner. Tiny easy-VQA runs on the CPU."""

import json
import math
from pathlib import Path

import matplotlib
import optuna
import pandas as pd
import pytest

matplotlib.use("Agg")

from vqalab import runs, train
from vqalab import sweep as sweep_module
from vqalab.config import load_config
from vqalab.plots import plot_heatmap, plot_vs
from vqalab.pruning import PointTrial, SweepPruner, make_pruner
from vqalab.registry import ConfigError
from vqalab.studies import depth_test
from vqalab.sweep import format_stat, seed_stats, sweep

HOPELESS_LR = 2e-3  # validation accuracy 0 at every epoch (monkeypatched below)
GOOD_LR = 1e-3
EPOCHS = 3  # ASHA's rungs at epochs 1 and 3: a point behind the best at epoch 1 stops there


def base(runs_root):
    return {
        "experiment": "halving", "name": "pt", "runs_root": str(runs_root),
        "model": {"name": "vqa_mean_mlp", "cnn_channels": [4, 8], "embed_dim": 8, "hidden_dim": 16},
        "data": {"name": "easy_vqa", "max_train_samples": 64, "max_val_samples": 32},
        "train": {"epochs": EPOCHS, "batch_size": 16, "num_threads": 1, "progress": False},
    }


@pytest.fixture
def hopeless_at_one_lr(monkeypatch):
    """val_acc 0 at HOPELESS_LR, at least 0.5 elsewhere: the pruner's choice does not hang on a tie."""
    real = train.evaluate

    def evaluate(model, data, cfg, device):
        loss, acc, preds = real(model, data, cfg, device)
        return loss, 0.0 if cfg.optim.lr == HOPELESS_LR else 0.5 + acc / 2, preds

    monkeypatch.setattr(train, "evaluate", evaluate)


def test_asha_stops_a_hopeless_point_and_records_it(tmp_path, hopeless_at_one_lr):
    df = sweep(base(tmp_path), {"optim.lr": [GOOD_LR, HOPELESS_LR]}, seeds=[0], pruner="asha")
    assert list(df["status"]) == ["completed", "pruned"]
    assert list(df["epochs"]) == [EPOCHS, 1]
    assert math.isnan(df["pruned_at_epoch"][0]) and df["pruned_at_epoch"][1] == 1
    good, pruned = (Path(d) for d in df["run_dir"])
    summary = json.loads((pruned / "summary.json").read_text())
    assert (summary["status"], summary["pruned_by"], summary["pruned_at_epoch"]) == ("pruned", "asha", 1)
    assert [row["epoch"] for row in runs.read_metrics_rows(pruned / runs.METRICS_FILE)] == [1]
    assert runs.latest_checkpoint(pruned).name == "epoch_001.pt"  # its last epoch is kept
    assert [row["epoch"] for row in runs.read_metrics_rows(good / runs.METRICS_FILE)] == [1, 2, 3]
    # ended: a resume returns it unchanged instead of training it on
    again = train.fit(load_config(pruned / "params.yaml"), resume=pruned)
    assert again.summary["status"] == "pruned" and again.summary["epochs"] == 1


def test_a_full_sweep_keeps_every_point(tmp_path, hopeless_at_one_lr):
    df = sweep(base(tmp_path), {"optim.lr": [GOOD_LR, HOPELESS_LR]}, seeds=[0])
    assert list(df["status"]) == ["completed", "completed"] and list(df["epochs"]) == [EPOCHS, EPOCHS]


def test_same_pruner_reuses_pruned_points_and_no_pruner_retrains_them(tmp_path, hopeless_at_one_lr, monkeypatch):
    grid = {"optim.lr": [GOOD_LR, HOPELESS_LR]}
    first = sweep(base(tmp_path), grid, seeds=[0], pruner="asha")
    folders = sorted((tmp_path / "halving").iterdir())

    trained = []

    def no_training(cfg, **kwargs):
        trained.append(cfg.optim.lr)
        raise RuntimeError("not trained in this test")

    monkeypatch.setattr(sweep_module, "fit", no_training)
    again = sweep(base(tmp_path), grid, seeds=[0], pruner="asha")
    assert trained == [] and list(again["reused"]) == [True, True]
    assert list(again["status"]) == ["completed", "pruned"] and again["pruned_at_epoch"][1] == 1
    assert list(again["run_dir"]) == list(first["run_dir"])
    assert sorted((tmp_path / "halving").iterdir()) == folders
    other = sweep(base(tmp_path), grid, seeds=[0], pruner="median")  # another pruner's pruned run is not reused
    assert trained == [HOPELESS_LR] and list(other["reused"]) == [True, False]

    monkeypatch.setattr(sweep_module, "fit", train.fit)
    full = sweep(base(tmp_path), grid, seeds=[0])  # no pruner: the pruned point trains in full
    assert list(full["reused"]) == [True, False] and list(full["status"]) == ["completed", "completed"]
    assert full["epochs"][1] == EPOCHS and full["run_dir"][1] != first["run_dir"][1]
    assert len(list((tmp_path / "halving").iterdir())) == 3  # a new folder; the pruned run is kept


def test_a_pruned_point_the_pruner_would_now_keep_is_trained_again(tmp_path, hopeless_at_one_lr):
    sweep(base(tmp_path), {"optim.lr": [GOOD_LR, HOPELESS_LR]}, seeds=[0], pruner="asha")
    # alone, the hopeless point is ASHA's first trial: nothing to lose to, so it is not pruned
    alone = sweep(base(tmp_path), {"optim.lr": [HOPELESS_LR]}, seeds=[0], pruner="asha")
    assert list(alone["reused"]) == [False] and list(alone["status"]) == ["completed"]
    assert alone["epochs"][0] == EPOCHS


def test_bad_pruner_names_fail_before_any_training(tmp_path):
    with pytest.raises(ConfigError, match=r"pruner = 'ashaa': expected one of asha, hyperband, median"):
        sweep(base(tmp_path), {"optim.lr": [GOOD_LR]}, pruner="ashaa")
    with pytest.raises(ConfigError, match=r"pruner = 'ashaa'"):
        sweep(base(tmp_path), {"optim.lr": [GOOD_LR]}, pruner="ashaa", workers=2)
    assert not (tmp_path / "halving").exists()
    with pytest.raises(ConfigError, match="pruner = 'x'"):
        depth_test.run_grid(base(tmp_path), depths=[2], lrs=[GOOD_LR], seeds=[0], pruner="x")


@pytest.mark.parametrize("name, kind", [("asha", optuna.pruners.SuccessiveHalvingPruner),
                                        ("hyperband", optuna.pruners.HyperbandPruner),
                                        ("median", optuna.pruners.MedianPruner)])
def test_pruner_names_build_optuna_pruners(name, kind):
    assert isinstance(make_pruner(name, max_epochs=9), kind)


def test_median_pruner_stops_a_curve_below_the_median():
    pruning = SweepPruner("median", max_epochs=3)
    for _ in range(4):  # the start-up trials run in full
        trial = pruning.trial()
        assert [trial.on_epoch({"epoch": e, "val_acc": 0.8}) for e in (1, 2, 3)] == [None] * 3
        trial.end({"status": "completed", "best_val_acc": 0.8})
    low: PointTrial = pruning.trial()
    assert low.on_epoch({"epoch": 1, "val_acc": 0.1}) == "median"


def table() -> pd.DataFrame:
    """Depth 2: one completed, one pruned run; depth 4: both pruned; depth 8: completed twice."""
    rows = [(2, 0, "completed", 0.8), (2, 1, "pruned", 0.3), (4, 0, "pruned", 0.2), (4, 1, "pruned", 0.25),
            (8, 0, "completed", 0.6), (8, 1, "completed", 0.7)]
    return pd.DataFrame([{"model.depth": d, "optim.lr": 1e-3, "seed": s, "status": st, "best_val_acc": a,
                          "epochs": 3 if st == "completed" else 1, "pruned_at_epoch": math.nan if st == "completed" else 1}
                         for d, s, st, a in rows])


def test_means_and_winners_leave_pruned_points_out():
    stats = seed_stats(table(), ["model.depth"]).set_index("model.depth")
    assert stats.loc[2, "mean"] == 0.8 and stats.loc[2, "n"] == 1 and stats.loc[2, "n_pruned"] == 1
    assert math.isnan(stats.loc[4, "mean"]) and stats.loc[4, "n_pruned"] == 2
    assert stats.loc[8, "mean"] == pytest.approx(0.65)
    assert format_stat(stats.loc[2]) == "0.800 (1/2 pruned)"
    assert format_stat(stats.loc[4]) == "pruned (2/2)"
    headline, text = depth_test.findings_of(table(), None, pd.DataFrame(), epochs=3, long_epochs=0)
    assert headline == {"best short val_acc": 0.8}
    assert text[0].startswith("This run swept depth over 2, 4, 8")
    assert text[1].startswith("Best short-run cell: depth 2 at learning rate 0.001, best val_acc 0.800 (1/2 pruned)")
    assert "depth 4" not in text[2]  # no completed run: no best learning rate
    assert text[3] == ("3 of 6 runs were pruned (stopped after epoch 1; grey ▽, not in the means or the best "
                       "cells): the grid trained 12 of 18 epochs.")
    assert not any("diverged" in line for line in text)
    assert list(depth_test.curve_runs(table(), None, {2: 1e-3})["seed"]) == [0]  # the pruned curve is cut short
    assert depth_test.grid_columns(table())[-1] == "pruned_at_epoch"


def test_plots_draw_pruned_points_apart():
    ax = plot_vs(table(), x="model.depth")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "pruned (3)" in labels and not any("diverged" in label for label in labels)
    mean_line = ax.get_lines()[0]
    assert list(mean_line.get_ydata()) == pytest.approx([0.8, 0.65])  # depths 2 and 8: no pruned run in a mean
    heat = plot_heatmap(table(), index="model.depth", columns="optim.lr")
    assert "pruned (2/2)" in [t.get_text() for t in heat.texts]


def test_a_queued_sweep_spec_reads_its_pruner_and_refuses_an_unknown_one_before_anything_is_queued(tmp_path):
    from vqalab.sweep_queue import load_spec

    spec = tmp_path / "halving.yaml"
    spec.write_text(json.dumps({"base": base(tmp_path), "grid": {"optim.lr": [GOOD_LR]}, "pruner": "asha"}))
    assert load_spec(spec).pruner == "asha"
    spec.write_text(json.dumps({"base": base(tmp_path), "grid": {"optim.lr": [GOOD_LR]}}))
    assert load_spec(spec).pruner is None
    spec.write_text(json.dumps({"base": base(tmp_path), "grid": {"optim.lr": [GOOD_LR]}, "pruner": "hyper"}))
    with pytest.raises(ConfigError, match=r"halving.yaml: pruner = 'hyper': expected one of asha, hyperband, median"):
        load_spec(spec)
    assert not (tmp_path / "halving").exists()
