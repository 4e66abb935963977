"""Sweeps: one run per grid point × seed, reuse of finished points, divergence recorded and passed
over, seeds that differ and repeat exactly. Tiny easy-VQA runs on the CPU."""

import json
import math

import matplotlib
import pandas as pd
import pytest
import torch

matplotlib.use("Agg")

from vqalab import engine, runs, train
from vqalab import sweep as sweep_module
from vqalab.plots import plot_vs
from vqalab.registry import ConfigError
from vqalab.sweep import (
    expand_grid,
    format_stat,
    gap_vs_noise,
    load_curves,
    seed_stats,
    spread_vs_noise,
    sweep,
    t_critical,
)

DATA_SPEC = {"name": "easy_vqa", "max_train_samples": 64, "max_val_samples": 32}
NAN_LR = 5e-3  # the monkeypatched loss turns NaN at this learning rate


def base(runs_root):
    return {
        "experiment": "sweep", "name": "pt", "runs_root": str(runs_root),
        "model": {"name": "vqa_mean_mlp", "cnn_channels": [4, 8], "embed_dim": 8, "hidden_dim": 16,
                  "dropout": 0.2},
        "data": DATA_SPEC,
        "train": {"epochs": 2, "batch_size": 16, "num_threads": 1, "progress": False},
    }


@pytest.fixture
def nan_at_high_lr(monkeypatch):
    original = train.compute_loss

    def loss(logits, batch, cfg, task):
        value = original(logits, batch, cfg, task)
        return value * math.nan if cfg.optim.lr == NAN_LR else value

    monkeypatch.setattr(engine, "compute_loss", loss)  # the training step's
    monkeypatch.setattr(train, "compute_loss", loss)  # validation's


@pytest.fixture
def count_data_loads(monkeypatch):
    calls = []
    real = sweep_module.build_data

    def counting(spec):
        calls.append(dict(spec))
        return real(spec)

    monkeypatch.setattr(sweep_module, "build_data", counting)
    return calls


def weights(run_dir):
    return runs.load_checkpoint(runs.latest_checkpoint(run_dir))["model_state"]


def test_diverged_point_is_recorded_and_the_sweep_goes_on(tmp_path, nan_at_high_lr, count_data_loads):
    df = sweep(base(tmp_path), {"optim.lr": [NAN_LR, 1e-3]}, seeds=[0])
    assert list(df["optim.lr"]) == [NAN_LR, 1e-3]
    assert list(df["status"]) == ["diverged", "completed"]  # the point after the diverged one ran
    bad, good = df.iloc[0], df.iloc[1]
    assert bad["diverged_step"] == 0 and bad["diverged_lr"] == pytest.approx(NAN_LR)
    assert math.isnan(bad["best_val_acc"])  # diverged in epoch 1: no finished epoch
    assert good["epochs"] == 2 and 0 <= good["best_val_acc"] <= 1 and math.isnan(good["diverged_step"])
    assert json.loads((tmp_path / "sweep" / bad["run_dir"].split("/")[-1] / "summary.json").read_text())["status"] == "diverged"
    assert len(count_data_loads) == 1  # one data spec, loaded once for both points
    assert df.attrs["grid_keys"] == ["optim.lr"]

    # tables and plots show the diverged point as diverged, not as a gap
    stats = seed_stats(df, ["optim.lr"]).set_index("optim.lr")
    assert stats.loc[NAN_LR, "n_diverged"] == 1 and stats.loc[NAN_LR, "n"] == 0
    assert format_stat(stats.loc[NAN_LR]) == "diverged (1/1)"
    assert format_stat(stats.loc[1e-3]) == f"{good['best_val_acc']:.3f}"
    ax = plot_vs(df, x="optim.lr", logx=True)
    crosses = [c for c in ax.collections if "diverged" in str(c.get_label())]
    assert len(crosses) == 1 and crosses[0].get_offsets()[0][0] == pytest.approx(NAN_LR)


def test_finished_points_are_reused_not_retrained(tmp_path, nan_at_high_lr, count_data_loads, monkeypatch):
    first = sweep(base(tmp_path), {"optim.lr": [NAN_LR, 1e-3]}, seeds=[0])
    assert not first["reused"].any()
    folders = sorted((tmp_path / "sweep").iterdir())

    def no_training(*args, **kwargs):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(sweep_module, "fit", no_training)
    renamed = {**base(tmp_path), "name": "another-name"}  # the run name is not part of the identity
    again = sweep(renamed, {"optim.lr": [NAN_LR, 1e-3]}, seeds=[0])
    assert again["reused"].all()
    assert list(again["run_dir"]) == list(first["run_dir"])
    assert list(again["status"]) == ["diverged", "completed"]  # a diverged point is finished too
    assert again["best_val_acc"].equals(first["best_val_acc"])
    assert sorted((tmp_path / "sweep").iterdir()) == folders
    assert len(count_data_loads) == 1  # nothing to train: no data loaded the second time

    # a new point is trained, the old ones still reused
    monkeypatch.setattr(sweep_module, "fit", train.fit)
    grown = sweep(base(tmp_path), {"optim.lr": [NAN_LR, 1e-3, 2e-3]}, seeds=[0])
    assert list(grown["reused"]) == [True, True, False]
    assert len(list((tmp_path / "sweep").iterdir())) == 3


def test_two_seeds_differ_and_one_seed_repeats_exactly(tmp_path):
    df = sweep(base(tmp_path), {"optim.lr": [1e-3]}, seeds=[0, 1])
    seed0, seed1 = (weights(d) for d in df["run_dir"])
    assert not all(torch.equal(seed0[k], seed1[k]) for k in seed0)

    repeat = sweep(base(tmp_path), {"optim.lr": [1e-3]}, seeds=[0], reuse=False)
    assert repeat["run_dir"][0] != df["run_dir"][0]  # trained again into a new folder ...
    again = weights(repeat["run_dir"][0])
    assert all(torch.equal(again[k], seed0[k]) for k in seed0)  # ... to the same weights
    assert repeat["best_val_acc"][0] == df["best_val_acc"][0]
    assert repeat["config_hash"][0] == df["config_hash"][0] != df["config_hash"][1]

    curves = load_curves(df)
    assert len(curves) == 4 and set(curves["seed"]) == {0, 1}
    assert list(curves.columns[:3]) == ["epoch", "step", "train_loss"] and "optim.lr" in curves


def test_bad_grids_fail_before_any_training(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr'.*did you mean 'optim.lr'"):
        sweep(base(tmp_path), {"optim.lr": [1e-3], "optim.lrr": [1e-3]})
    with pytest.raises(ConfigError, match=r"model: unknown key 'dept'"):
        sweep(base(tmp_path), {"model.dept": [2]})
    with pytest.raises(ConfigError, match="pass seeds="):
        sweep(base(tmp_path), {"seed": [0, 1]})
    with pytest.raises(ConfigError, match="non-empty list"):
        sweep(base(tmp_path), {"optim.lr": []})
    with pytest.raises(ConfigError, match="seeds"):
        sweep(base(tmp_path), {"optim.lr": [1e-3]}, seeds=[])
    # the second point is invalid (lr must be > 0): nothing ran, not even the valid first point
    with pytest.raises(ConfigError, match="optim.lr = -1"):
        sweep(base(tmp_path), {"optim.lr": [1e-3, -1.0]})
    assert not (tmp_path / "sweep").exists()


def test_explicit_configs_are_points_as_given_and_bad_ones_fail_before_any_training(tmp_path):
    from vqalab.config import build_config
    from vqalab.sweep_points import config_points

    images = {**base(tmp_path), "name": "images", "seed": 3}
    scenes = {**base(tmp_path), "name": "scenes", "model": {"name": "vqa_question_only"},
              "data": {"name": "synthetic_scenes", "inputs": "scene_graph"}}
    points = config_points([build_config(images), scenes])
    assert [(p.values, p.seed, p.cfg.name) for p in points] == [({"name": "images"}, 3, "images"),
                                                                 ({"name": "scenes"}, 0, "scenes")]
    assert points[1].cfg.data == {"name": "synthetic_scenes", "inputs": "scene_graph"}
    assert points[0].hash == runs.config_hash(build_config(images)) != points[1].hash
    with pytest.raises(ConfigError, match="run name lists 'images' twice"):
        sweep(configs=[images, {**images, "seed": 4}])
    with pytest.raises(ConfigError, match="sweep config 2: unknown key 'optim.lrr'"):
        sweep(configs=[images, {**images, "name": "b", "optim": {"lrr": 1.0}}])
    with pytest.raises(ConfigError, match="sweep config 1: expected a RunConfig or a params tree, got str"):
        sweep(configs=["params/train/cvt.yaml"])
    with pytest.raises(ConfigError, match="expected a non-empty list of configs"):
        sweep(configs=[])
    with pytest.raises(ConfigError, match="leave base, grid and seeds out"):
        sweep(base(tmp_path), {}, configs=[images])
    with pytest.raises(ConfigError, match="leave base, grid and seeds out"):
        sweep(configs=[images], seeds=[0, 1])
    with pytest.raises(ConfigError, match="leave workers and storage out"):
        sweep(configs=[images], workers=2)
    with pytest.raises(ConfigError, match="expected a base config and a grid, or configs"):
        sweep(base(tmp_path))
    assert not (tmp_path / "sweep").exists()


def test_curves_pass_over_a_failed_point_without_a_run(tmp_path):
    df = sweep(base(tmp_path), {"optim.lr": [1e-3]}, seeds=[0])
    failed = {"optim.lr": 2e-3, "seed": 0, "status": "failed", "run_dir": None, "error": "RuntimeError: x"}
    table = pd.DataFrame([*df.to_dict("records"), failed])  # as sweep builds its table
    assert isinstance(table["run_dir"].iloc[1], float)  # pandas holds the missing folder as NaN
    curves = load_curves(table, keys=["optim.lr"])
    assert list(curves["optim.lr"]) == [1e-3, 1e-3]  # the completed point's two epochs only


def test_grid_expansion_order_names_and_tuple_values():
    points = expand_grid({"name": "g"}, {"optim.lr": [1e-4, 1e-3], "optim.betas": [[0.9, 0.99]]}, seeds=[0, 5])
    assert [(p.values["optim.lr"], p.seed) for p in points] == [(1e-4, 0), (1e-4, 5), (1e-3, 0), (1e-3, 5)]
    assert points[0].cfg.name == "g-lr=0.0001_betas=0.9-0.99_s0"
    assert points[0].cfg.optim.betas == (0.9, 0.99) and points[0].values["optim.betas"] == (0.9, 0.99)
    assert len({p.hash for p in points}) == 4


def test_switching_model_name_keeps_the_other_model_keys():
    points = expand_grid({"model": {"name": "ir_vit", "depth": 2, "width": 0.5}},
                         {"model.name": ["ir_vit", "ir_cls"]})
    assert [p.cfg.model for p in points] == [{"name": n, "depth": 2, "width": 0.5} for n in ("ir_vit", "ir_cls")]


def test_seed_stats_mean_std_against_pandas():
    df = pd.DataFrame({"k": [1, 1, 1, 2, 2], "status": ["completed", "completed", "diverged", "completed", "completed"],
                       "best_val_acc": [0.5, 0.7, math.nan, 0.2, 0.2]})
    stats = seed_stats(df, ["k"]).set_index("k")
    assert stats.loc[1, "mean"] == pytest.approx(0.6) and stats.loc[1, "std"] == pytest.approx(0.1414213, rel=1e-5)
    assert stats.loc[1, "n"] == 2 and stats.loc[1, "n_diverged"] == 1 and stats.loc[1, "runs"] == 3
    assert format_stat(stats.loc[1]) == "0.600 ± 0.141 (1/3 diverged)"
    assert format_stat(stats.loc[2]) == "0.200 ± 0.000"


def test_gap_vs_noise_is_a_pooled_t_test():
    # a = [0.5, 0.7], b = [0.2, 0.2]: gap -0.4; pooled variance (0.02 + 0) / 2 = 0.01; se = 0.1;
    # t(95%, 2 dof) = 4.303, so the threshold is 0.430 and the gap is NOT beyond noise
    # (the normal 1.96 would have called it real).
    out = gap_vs_noise([0.5, 0.7], [0.2, 0.2])
    assert out["gap"] == pytest.approx(-0.4) and out["se"] == pytest.approx(0.1)
    assert out["threshold"] == pytest.approx(0.4303) and out["exceeds"] is False
    # five seeds each: dof 8, t = 2.306
    a, b = [0.50, 0.52, 0.48, 0.51, 0.49], [0.60, 0.62, 0.58, 0.61, 0.59]
    out = gap_vs_noise(a, b)
    assert out["se"] == pytest.approx(math.sqrt(2 * pd.Series(a).var() / 5))
    assert out["exceeds"] is True and out["threshold"] == pytest.approx(2.306 * out["se"])
    assert gap_vs_noise([0.5], [0.6, 0.7])["exceeds"] is None  # one seed: noise unknown


def test_spread_vs_noise_and_t_table():
    assert t_critical(1) == 12.706 and t_critical(11) == 2.228 and t_critical(1000) == 1.96
    assert math.isnan(t_critical(0))
    df = pd.DataFrame({"k": [1, 1, 2, 2, 3, 3], "status": ["completed"] * 6,
                       "best_val_acc": [0.40, 0.42, 0.50, 0.52, 0.41, 0.43]})
    out = spread_vs_noise(seed_stats(df, ["k"]))
    # every group has std √0.0002; 3 dof → t 3.182; se of a difference √0.0002 · √(2/2)
    assert out["spread"] == pytest.approx(0.10) and out["dof"] == 3
    assert out["noise_std"] == pytest.approx(math.sqrt(0.0002))
    assert out["threshold"] == pytest.approx(3.182 * math.sqrt(0.0002)) and out["exceeds"] is True
    single = spread_vs_noise(seed_stats(df[df.index % 2 == 0], ["k"]))
    assert single["exceeds"] is None and single["dof"] == 0


def test_config_hash_ignores_names_and_spelled_out_defaults():
    from vqalab.config import build_config

    plain = build_config({"name": "a", "model": {"name": "vqa_mean_mlp"}})
    spelled = build_config({"name": "b", "runs_root": "elsewhere",
                            "model": {"name": "vqa_mean_mlp", "dropout": 0.0, "cnn_channels": [32, 64, 128]},
                            "train": {"progress": False}})
    changed = build_config({"model": {"name": "vqa_mean_mlp", "dropout": 0.1}})
    assert runs.config_hash(plain) == runs.config_hash(spelled) == runs.config_hash(plain.to_dict())
    assert runs.config_hash(changed) != runs.config_hash(plain)
    assert runs.config_hash(build_config({"seed": 1})) != runs.config_hash(build_config({"seed": 2}))


def test_an_edit_to_the_package_source_retrains_and_unchanged_code_reuses(tmp_path, monkeypatch):
    import shutil

    from vqalab import provenance

    copy = tmp_path / "vqalab_copy"
    shutil.copytree(provenance.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "PACKAGE_DIR", copy)  # the fingerprint is taken over the copy
    grid = {"optim.lr": [1e-3]}
    first = sweep(base(tmp_path), grid)
    assert not first["reused"].any()
    summary = json.loads((tmp_path / "sweep").glob("*/summary.json").__next__().read_text())
    assert summary["code_fingerprint"] == provenance.code_fingerprint(copy)
    assert summary["data_identity"]["name"] == "easy_vqa" and summary["data_identity"]["fingerprint"]

    unchanged = sweep(base(tmp_path), grid)
    assert unchanged["reused"].all() and list(unchanged["run_dir"]) == list(first["run_dir"])
    assert unchanged["finished"].iloc[0] == summary["finished"]  # the date the reused run ended

    model_file = copy / "models" / "vqa.py"
    source = model_file.read_text()
    assert "dropout" in source
    model_file.write_text(source.replace("dropout", "dropout ", 1))  # one changed line in a model's source
    edited = sweep(base(tmp_path), grid)
    assert not edited["reused"].any() and edited["run_dir"].iloc[0] != first["run_dir"].iloc[0]
    assert sweep(base(tmp_path), grid)["reused"].all()  # the new code's run is reused in turn

    monkeypatch.setenv("VQALAB_FRESH", "1")  # vqalab report --fresh
    assert not sweep(base(tmp_path), grid)["reused"].any()
    assert len(list((tmp_path / "sweep").iterdir())) == 3


def test_a_changed_data_file_retrains(tmp_path, monkeypatch):
    from data_fixtures import write_rafdb_official

    monkeypatch.setenv("VQALAB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("VQALAB_CACHE", str(tmp_path / "cache"))
    write_rafdb_official(tmp_path / "data" / "RAF-DB" / "basic", train_per_class=2, test_per_class=1, size=16)
    fer = {"experiment": "fer", "runs_root": str(tmp_path), "model": {"name": "fer_pixel_linear"},
           "data": {"name": "rafdb", "image_size": 16}, "train": {"epochs": 1, "batch_size": 7, "progress": False}}
    first = sweep(fer, {"optim.lr": [1e-3]})
    assert sweep(fer, {"optim.lr": [1e-3]})["reused"].all()
    image = next((tmp_path / "data" / "RAF-DB" / "basic" / "Image" / "aligned").glob("train_*"))
    image.write_bytes(image.read_bytes() + b"\0")
    again = sweep(fer, {"optim.lr": [1e-3]})
    assert not again["reused"].any() and again["run_dir"].iloc[0] != first["run_dir"].iloc[0]
