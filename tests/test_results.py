"""Run folders read back: overfitting flags, the runs table and curves, on hand-written folders."""

import json
import math

import pandas as pd
import pytest

from vqalab.notebook import headline_value
from vqalab.results import curves, metrics_table, overfitting_epoch, runs_table
from vqalab.runs import METRIC_COLUMNS, write_metrics


def metrics(val_loss, train_loss):
    return pd.DataFrame({"epoch": range(1, len(val_loss) + 1), "val_loss": val_loss, "train_loss": train_loss})


@pytest.mark.parametrize(("val_loss", "train_loss", "expected"), [
    ([1.0, 0.8, 0.9, 1.0, 1.1], [1.0, 0.9, 0.8, 0.7, 0.6], 2),  # lowest at 2, rising twice after
    ([1.0, 0.8, 0.9, 0.85, 1.0], [1.0, 0.9, 0.8, 0.7, 0.6], None),  # the rise is interrupted
    ([1.0, 0.8, 0.9, 1.0], [1.0, 0.9, 1.0, 1.1], None),  # train loss rises too: not overfitting
    ([1.0], [1.0], None),
])
def test_overfitting_epoch(val_loss, train_loss, expected):
    assert overfitting_epoch(metrics(val_loss, train_loss)) == expected


def test_overfitting_patience():
    m = metrics([1.0, 0.8, 0.9, 1.0, 1.1], [1.0, 0.9, 0.8, 0.7, 0.6])
    assert overfitting_epoch(m, patience=3) == 2 and overfitting_epoch(m, patience=4) is None
    assert overfitting_epoch(m, patience=1) == 2


def write_run(folder, name, val_loss, status="completed"):
    folder.mkdir(parents=True)
    n = len(val_loss)
    history = [{c: 0.0 for c in METRIC_COLUMNS} | {"epoch": i + 1, "step": i + 1, "val_loss": v,
                                                   "train_loss": 1.0 - 0.1 * i, "val_acc": 0.1 * (i + 1)}
               for i, v in enumerate(val_loss)]
    write_metrics(folder / "metrics.csv", history)
    (folder / "summary.json").write_text(json.dumps({
        "name": name, "model": "m", "status": status, "seed": 0, "best_epoch": n, "best_val_acc": 0.1 * n,
        "best_val_loss": min(val_loss), "epoch_time_s": 1.5, "params": 2_500_000}))
    return folder


def test_runs_table_and_curves(tmp_path):
    a = write_run(tmp_path / "a", "first", [1.0, 0.8, 0.9, 1.0])
    b = write_run(tmp_path / "b", "second", [1.0, 0.9], status="diverged")
    table = runs_table([a, b])
    assert list(table["name"]) == ["first", "second"] and list(table["status"]) == ["completed", "diverged"]
    assert table["params_M"].tolist() == [2.5, 2.5] and table["best_val_loss"].tolist() == [0.8, 0.9]
    assert table.loc[0, "overfitting_from_epoch"] == 2 and pd.isna(table.loc[1, "overfitting_from_epoch"])
    assert table["run_dir"].tolist() == [str(a), str(b)]
    long = curves([a, b])
    assert long["name"].tolist() == ["first"] * 4 + ["second"] * 2 and long["epoch"].tolist() == [1, 2, 3, 4, 1, 2]
    assert metrics_table(a)["val_loss"].tolist() == [1.0, 0.8, 0.9, 1.0]
    assert curves([]).empty


def test_headline_values_are_json_safe():
    np = pytest.importorskip("numpy")
    assert headline_value(np.float32(0.5)) == 0.5 and type(headline_value(np.int64(3))) is int
    assert headline_value(math.nan) is None and headline_value(math.inf) is None
    assert headline_value("ir50_vit") == "ir50_vit" and headline_value(True) is True and headline_value(None) is None
    with pytest.raises(TypeError, match=r"headline values must be numbers or strings, got list: \[1\]"):
        headline_value([1])
