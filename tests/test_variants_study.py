"""Lab note 004's variant study: variant configs, divergence marks, the cost table and the finding."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from vqalab.models import create_model
from vqalab.params import read_yaml
from vqalab.registry import ConfigError
from vqalab.runs import read_summary
from vqalab.studies import variants as study

TINY = {
    "experiment": "variants_test",
    "model": {"dim": 16, "num_heads": 2, "bev_size": 4, "backbone_channels": 8},
    "data": {"name": "synthetic_views", "num_train": 16, "num_val": 8, "num_cameras": 2, "image_size": 16, "map_size": 8},
    "train": {"epochs": 1, "max_steps": None, "batch_size": 8, "num_threads": 1, "progress": False, "device": "cpu"},
}


def tiny(tmp_path) -> dict:
    return {**TINY, "runs_root": str(tmp_path / "runs")}


def test_a_variant_keeps_its_keywords_and_learning_rate_and_takes_the_study_sizes(tmp_path):
    tree = study.variant_config("cvt_io_v2_4", tiny(tmp_path))
    assert tree["model"] == {"name": "cvt_io", "num_latents": 10, "latent_layers": 6, "latent_attention": "pooled",
                             "share_weights": False, "dim": 16, "num_heads": 2, "bev_size": 4, "backbone_channels": 8}
    assert tree["optim"]["lr"] == 1e-3 and tree["optim"]["weight_decay"] == 1e-7
    assert tree["train"]["epochs"] == 1 and tree["train"]["max_steps"] is None
    assert study.variant_config("cvt_io_v2_4", tiny(tmp_path), lr=0.5)["optim"]["lr"] == 0.5


def test_unknown_variant_and_stray_lr_override_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"variant 'cvt_io_v3': no params file .*cvt_io_v2_9"):
        study.variant_config("cvt_io_v3", tiny(tmp_path))
    with pytest.raises(ConfigError, match="lr_overrides: cvt_io_v2_3 not among the variants"):
        study.variant_configs(["cvt"], tiny(tmp_path), lr_overrides={"cvt_io_v2_3": 1.0})


def curve(steps, train, val) -> pd.DataFrame:
    return pd.DataFrame({"step": steps, "train_loss": train, "val_loss": val})


@pytest.mark.parametrize("run, losses, expected", [
    ({"status": "diverged", "diverged_step": 37}, None, 37.0),  # the loop's own guard
    ({"status": "completed"}, ([10, 20, 30], [0.6, 0.5, 9.0], [0.5, 0.4, 0.4]), 30.0),  # train loss > 10 ln 2
    ({"status": "completed"}, ([10, 20], [0.6, 0.5], [80.0, 0.4]), 10.0),  # validation loss
    ({"status": "completed"}, ([10, 20], [0.6, math.nan], [0.5, 0.4]), 20.0),  # NaN
    ({"status": "completed"}, ([10, 20], [0.6, 6.5], [0.5, 0.4]), math.nan),  # high, below 10 ln 2 = 6.93
])
def test_divergence_step(run, losses, expected):
    found = study.divergence_step(run, curve(*losses) if losses else None)
    assert (math.isnan(found) and math.isnan(expected)) or found == expected


def test_a_run_diverged_before_its_first_epoch_is_drawn_not_dropped():
    runs = pd.DataFrame([{"variant": "calm", "status": "completed", "diverged_at": math.nan},
                         {"variant": "blown", "status": "diverged", "diverged_at": 3.0}])
    curves = pd.DataFrame({"variant": ["calm", "calm"], "step": [4, 8], "train_loss": [0.5, 0.4], "val_acc": [0.1, 0.2]})
    fig = study.plot_curves(runs, curves)
    ax_loss, ax_iou = fig.axes
    crosses = [line for line in ax_loss.lines if line.get_marker() == "X"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [3.0]
    assert "blown diverged (step 3)" in [t.get_text() for t in ax_loss.get_legend().get_texts()]
    assert any(list(line.get_xdata()) == [3.0, 3.0] for line in ax_iou.lines)  # the dotted step line


def test_the_swept_sentence_names_the_variants_and_the_replaced_learning_rates():
    text = study.swept_text(variants=["cvt", "cvt_io_v2_3"], lr_overrides={"cvt_io_v2_3": 30.0}, seed=0, epochs=2)
    assert text == [("This run swept variant over cvt, cvt_io_v2_3 (learning rates from their params files, "
                    "cvt_io_v2_3 at lr 30 instead): 2 point(s) × 1 seed(s) (0), 2 epoch(s) per run; with one seed "
                    "per point the seed noise is unknown, so no difference can be called beyond it.")]
    assert "instead" not in study.swept_text(variants=["cvt"], lr_overrides={}, seed=0, epochs=2)[0]


def test_best_iou_per_ms_leaves_diverged_variants_out():
    table = pd.DataFrame([
        {"variant": "a", "lr": 4e-3, "status": "completed", "diverged_at_step": math.nan, "iou@0.50": 0.30,
         "latency_ms": 3.0},
        {"variant": "b", "lr": 4e-3, "status": "completed", "diverged_at_step": math.nan, "iou@0.50": 0.36,
         "latency_ms": 6.0},
        {"variant": "c", "lr": 3.0, "status": "diverged", "diverged_at_step": 16.0, "iou@0.50": 0.2, "latency_ms": 0.5},
    ]).assign(latency_batch_size=1, device="cpu")
    table["iou_per_ms"] = table["iou@0.50"] / table["latency_ms"]
    assert study.best_per_ms(table)["variant"] == "a"  # 0.1 per ms; c has 0.4 but diverged
    text = study.findings_text(table)
    assert text[0].startswith("Best IoU@0.50 per millisecond: a (0.300 IoU at 3.00 ms, batch 1 on cpu")
    assert text[1] == "Highest IoU@0.50: b (0.360) at 6.00 ms."
    assert text[2].startswith("c at lr 3 diverged at step 16")
    by_threshold = pd.DataFrame({"iou@0.30": [0.41, 0.37, 0.5], "iou@0.50": [0.30, 0.36, 0.2]}, index=["a", "b", "c"])
    text = study.findings_text(table, by_threshold)
    assert len(text) == 4  # b (0.37 vs 0.36) and the diverged c are not flagged
    assert text[3].startswith("IoU@0.50 understates a: 0.410 at threshold 0.30 against 0.300")


def test_trained_variants_table_matches_the_runs_and_the_models(tmp_path, repo_root):
    configs = study.variant_configs(["cvt", "cvt_io_v2_5"], tiny(tmp_path))
    data = study.study_data(configs)
    runs, curves = study.mark_divergence(study.train_variants(configs, data))
    assert list(runs["variant"]) == ["cvt", "cvt_io_v2_5"] and list(runs["status"]) == ["completed"] * 2
    assert set(curves["variant"]) == {"cvt", "cvt_io_v2_5"}
    # one sweep of both variants: each run named after its params file and seed, as a sweep names it
    assert list(runs["name"]) == ["cvt_s0", "cvt_io_v2_5_s0"] and list(runs["lr"]) == [4e-3, 4e-3]
    assert [read_summary(d)["name"] for d in runs["run_dir"]] == ["cvt_s0", "cvt_io_v2_5_s0"]
    again = study.train_variants(configs, data)
    assert again["reused"].all() and list(again["run_dir"]) == list(runs["run_dir"])  # nothing trains again
    table = study.cost_table(runs, configs, data, latency_batch_size=2, device="cpu", warmup=0, repeats=1)
    expected_params = create_model("cvt_io", **{k: v for k, v in configs["cvt_io_v2_5"]["model"].items() if k != "name"},
                                   map_size=8, map_extent=6.0)
    row = table.set_index("variant").loc["cvt_io_v2_5"]
    assert row["params_k"] * 1e3 == pytest.approx(sum(p.numel() for p in expected_params.parameters()))
    assert row["iou@0.50"] == runs.set_index("variant").loc["cvt_io_v2_5", "best_val_acc"]
    assert row["iou_per_ms"] == pytest.approx(row["iou@0.50"] / row["latency_ms"])
    assert (table["gflops"] > 0).all() and (table["latency_batch_size"] == 2).all()
    # The predicted CUDA step holds at least the weights and Adam's two moments (and the step's activations).
    assert study.PREDICTED_COLUMN == "predicted CUDA MiB @ batch 16"
    weights_mb = 4 * sum(p.numel() for p in expected_params.parameters()) / 2**20
    assert row[study.PREDICTED_COLUMN] > 3 * weights_mb
    assert table[study.PREDICTED_COLUMN].nunique() == 2  # each variant its own prediction
    assert {read_yaml(f)["train"]["batch_size"] for f in (repo_root / "params" / "train").glob("cvt*.yaml")} == {16}
    sweep = study.iou_by_threshold(runs, data)
    # One epoch: the last checkpoint is the best epoch, so its IoU@0.50 is the run's.
    assert sweep.loc["cvt", "iou@0.50"] == pytest.approx(runs.set_index("variant").loc["cvt", "best_val_acc"])
    assert list(sweep.columns) == ["iou@0.30", "iou@0.40", "iou@0.50", "iou@0.60", "iou@0.70"]
