"""The study analyses on small hand-made sweep tables: every findings branch, no training."""

import itertools
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from data_fixtures import write_vqa_v2
from vqalab.bench import recommend_batch_size
from vqalab.config import build_config
from vqalab.memory import predict_memory
from vqalab.params import read_yaml
from vqalab.registry import ConfigError
from vqalab.report.data import notebook_default
from vqalab.report.presets import annotated_type, base_file, load_preset, read_presets
from vqalab.studies import (
    adam_eps_beta,
    batch_size_throughput,
    cls_vs_baseline,
    depth_test,
    lr_search,
    regularisation,
    vqa_models,
)
from vqalab.studies.common import (
    best_per_group,
    diverged_sentence,
    fer_base_config,
    noise_verdict,
    spread_sentence,
    with_values,
)
from vqalab.sweep import RUN_LOG_ENV, seed_stats
from vqalab.sweep_points import FRESH_ENV

REPO = Path(__file__).resolve().parents[1]
FER = {"experiment": "e", "runs_root": "runs", "model": "ir50_vit", "depth": 2, "img_size": 16, "backbone_depth": 18,
       "width": 0.125, "dataset_kwargs": {}, "num_train": 64, "num_val": 32, "face_options": {"clutter": 0},
       "epochs": 3, "batch_size": 32, "lr": 1e-3, "device": "cpu", "amp": "off", "cpu_threads": 0}


def sweep_table(keys: list[str], cells: dict) -> pd.DataFrame:
    """A sweep's table: ``cells`` maps grid values (a tuple, one per key) to the runs' best_val_acc
    (None: a diverged run), one run per seed."""
    rows = []
    for values, accs in cells.items():
        values = values if isinstance(values, tuple) else (values,)
        for seed, acc in enumerate(accs):
            rows.append({**dict(zip(keys, values)), "seed": seed, "status": "diverged" if acc is None else "completed",
                         "best_val_acc": math.nan if acc is None else acc})
    return pd.DataFrame(rows)


def runs(key: str, cells: dict) -> pd.DataFrame:
    return sweep_table([key], cells)


def grid(cells: dict) -> pd.DataFrame:
    """A depth × lr sweep table: ``cells`` maps (depth, lr) to the runs' best_val_acc."""
    return sweep_table(["model.depth", "optim.lr"], cells)


# ---------------------------------------------------------------------------------------------
# Shared parts


def test_fer_base_config_sizes_the_synthetic_faces_only():
    synthetic = fer_base_config(study="s", dataset="synthetic_faces", **FER)
    assert synthetic["data"] == {"name": "synthetic_faces", "num_train": 64, "num_val": 32, "image_size": 16,
                                 "clutter": 0}
    assert synthetic["train"]["checkpoint_every"] == 3 and synthetic["train"]["num_threads"] is None
    assert synthetic["name"] == "s" and synthetic["model"]["backbone_depth"] == 18
    rafdb = fer_base_config(study="s", dataset="rafdb", **{**FER, "dataset_kwargs": {"root": "x"}, "cpu_threads": 2})
    assert rafdb["data"] == {"name": "rafdb", "image_size": 16, "root": "x"}
    assert rafdb["train"]["num_threads"] == 2


def test_with_values_replaces_keys_and_keeps_the_rest():
    base = {"optim": {"lr": 1.0, "eps": 2.0}, "name": "n"}
    assert with_values(base, optim={"lr": 3.0}, train={"epochs": 1}) == {
        "optim": {"lr": 3.0, "eps": 2.0}, "name": "n", "train": {"epochs": 1}}
    assert base["optim"]["lr"] == 1.0


def test_each_study_states_what_its_run_swept_from_its_parameters():
    # the cpu preset's grid, not lab note 002's (the gpu preset's)
    assert adam_eps_beta.swept_text(eps_values=[1e-8, 1e-7, 1e-6], betas_values=[[0.9, 0.999], [0.9, 0.98], [0.95, 0.999]],
                                    seeds=[0, 1]) == [
        "This run swept Adam ε over 1e-08, 1e-07, 1e-06 (β1, β2 at their defaults): 3 point(s) × 2 seed(s) (0, 1).",
        ("This run swept (β1, β2) over (0.9, 0.999), (0.9, 0.98), (0.95, 0.999) (ε at its default): 3 point(s) × "
         "2 seed(s) (0, 1).")]
    assert depth_test.swept_text(depths=[2, 4, 6], lrs=[1e-4, 3.2e-4], seeds=[0, 1], epochs=8) == [
        ("This run swept depth over 2, 4, 6 and learning rate over 0.0001, 0.00032: 6 point(s) × 2 seed(s) (0, 1), "
        "8 epoch(s) per run.")]
    assert cls_vs_baseline.swept_text(models=["ir_vit", "ir_cls"], lrs=[1e-3], seeds=[0, 1]) == [
        ("This run swept model over ir_vit, ir_cls and learning rate over 0.001 (at one learning rate only: a ranking "
        "that may not hold at another): 2 point(s) × 2 seed(s) (0, 1).")]
    assert "5 point(s)" in regularisation.swept_text(FACTORS, seeds=[0, 1])[0]  # four factors of 2 share one baseline
    assert vqa_models.swept_text(models=["a", "b"], dataset="easy_vqa", seed=0, epochs=3) == [
        ("This run swept model over a, b (on easy_vqa): 2 point(s) × 1 seed(s) (0), 3 epoch(s) per run; with one seed "
        "per point the seed noise is unknown, so no difference can be called beyond it.")]


def test_show_sentences_shows_markdown_with_names_escaped(monkeypatch):
    import IPython.display

    from vqalab.notebook import show_sentences

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    show_sentences(["This run swept model over <b>x</b>.", "Second."])
    assert isinstance(shown[0], IPython.display.Markdown)
    assert shown[0].data == "This run swept model over &lt;b&gt;x&lt;/b&gt;. Second."


def test_noise_verdict_words():
    assert [noise_verdict(x) for x in (True, False, None)] == [
        "beyond seed noise", "within seed noise", "seed noise unknown (one seed)"]


def test_spread_sentence_every_branch():
    key = "optim.eps"
    text, s = spread_sentence("ε", seed_stats(runs(key, {1e-8: [None], 1e-6: [None]}), [key]), key)
    assert text == "ε: every run diverged." and math.isnan(s["spread"])

    text, s = spread_sentence("ε", seed_stats(runs(key, {1e-8: [0.5], 1e-6: [0.7]}), [key]), key)
    assert text.startswith("ε over 1e-08 | 1e-06: mean best val_acc from 0.500 to 0.700 (spread 0.200, best at 1e-06)")
    assert text.endswith(": seed noise unknown (one seed), so no conclusion.") and s["exceeds"] is None

    # std 0.01414 per group, 2 degrees of freedom: threshold t(2) 4.303 × 0.01414 = 0.061 < 0.3
    text, s = spread_sentence("ε", seed_stats(runs(key, {1e-8: [0.5, 0.52], 1e-6: [0.8, 0.82]}), [key]), key)
    assert s["spread"] == pytest.approx(0.3) and s["threshold"] == pytest.approx(4.303 * 0.02 / math.sqrt(2), rel=1e-3)
    assert "above the 95% threshold 0.061" in text and text.endswith("depends on it beyond seed noise.")

    text, s = spread_sentence("ε", seed_stats(runs(key, {1e-8: [0.5, 0.7], 1e-6: [0.55, 0.65]}), [key]), key)
    assert s["exceeds"] is False and "below the 95% threshold" in text
    assert text.endswith(": within seed noise, no effect.")


def test_best_per_group_skips_groups_where_every_run_diverged():
    stats = seed_stats(grid({(2, 1e-3): [0.5], (2, 1e-2): [0.6], (4, 1e-3): [0.4], (8, 1e-3): [None]}),
                       ["model.depth", "optim.lr"])
    best = best_per_group(stats, "model.depth")
    assert list(best.index) == [2, 4]
    assert best.loc[2, "optim.lr"] == 1e-2 and best.loc[2, "mean"] == 0.6 and best.loc[4, "optim.lr"] == 1e-3


def test_diverged_sentence():
    assert diverged_sentence(runs("x", {1: [0.5, None, None]})) == [
        "2 runs diverged (shown as red ×, not in the means)."]
    assert diverged_sentence(runs("x", {1: [0.5]})) == []


# ---------------------------------------------------------------------------------------------
# Adam ε and β


def betas_table(cells: dict) -> pd.DataFrame:
    df = runs("betas", cells)
    return df.assign(**{"optim.betas": [tuple(float(x) for x in b.split(" / ")) for b in df["betas"]]})


def test_adam_eps_beta_findings_and_summary():
    eps_df = runs("optim.eps", {1e-8: [0.5, 0.52], 1e-6: [0.6, 0.62]})
    betas_df = betas_table({"0.9 / 0.999": [0.5, 0.54], "0.8 / 0.99": [0.5, None]})
    headline, text = adam_eps_beta.findings_of(eps_df, betas_df)
    assert headline["eps spread"] == pytest.approx(0.1) and headline["betas spread"] == pytest.approx(0.02)
    assert headline["seed noise std"] == pytest.approx(0.02 / math.sqrt(2))  # ε grid only: two groups of 2
    assert text[:2] == [  # what ran, read from the tables: the grids in grid order
        "This run swept Adam ε over 1e-08, 1e-06 (β1, β2 at their defaults): 2 point(s) × 2 seed(s) (0, 1).",
        "This run swept (β1, β2) over (0.9, 0.999), (0.8, 0.99) (ε at its default): 2 point(s) × 2 seed(s) (0, 1)."]
    assert text[2].startswith("Adam ε over 1e-08 | 1e-06") and text[3].startswith("β1 / β2 over 0.8 / 0.99 | 0.9 / 0.999")
    assert text[4] == "1 runs diverged (shown as red ×, not in the means)."
    _, text = adam_eps_beta.findings_of(eps_df, betas_table({"0.9 / 0.999": [0.5, 0.54]}))
    assert len(text) == 4  # nothing diverged: no sentence about it
    summary = adam_eps_beta.summary_table(eps_df, betas_df)
    assert summary.to_dict("list") == {
        "parameter": ["ε", "ε", "β1 / β2", "β1 / β2"], "value": ["1e-08", "1e-06", "0.8 / 0.99", "0.9 / 0.999"],
        "best val_acc": ["0.510 ± 0.014", "0.610 ± 0.014", "0.500 (1/2 diverged)", "0.520 ± 0.028"],
        "n": [2, 2, 1, 2], "n_diverged": [0, 0, 1, 0]}


# ---------------------------------------------------------------------------------------------
# Regularisation


FACTORS = regularisation.factors_of(weight_decays=[0.0, 1e-3], schedules=["constant", "cosine"],
                                    mixup_alphas=[0.0, 0.2], attn_drops=[0.0, 0.1])


def factor_runs(cells: dict) -> pd.DataFrame:
    """``cells``: factor label → {value: runs' best_val_acc}; the first value is the baseline."""
    parts = []
    for label, values in cells.items():
        part = runs("value", values)
        first = next(iter(values))
        parts.append(part.assign(factor=label, baseline=part["value"] == first))
    return pd.concat(parts, ignore_index=True)


def test_regularisation_base_and_factors():
    base = fer_base_config(study="regularisation", dataset="synthetic_faces", **FER)
    out = regularisation.regularisation_base(base, optimizer="adamw", weight_decays=[0.0, 1e-3],
                                             schedules=["constant", "step"], step_epochs=5, mixup_alphas=[0.2],
                                             attn_drops=[0.1])
    assert out["model"]["attn_drop"] == 0.1 and out["optim"] == {"lr": 1e-3, "name": "adamw", "weight_decay": 0.0}
    assert out["train"]["mixup_alpha"] == 0.2 and out["schedule"] == {"name": "constant", "step_size": 5}
    out = regularisation.regularisation_base(base, optimizer="adam", weight_decays=[0.0], schedules=["cosine"],
                                             step_epochs=5, mixup_alphas=[0.0], attn_drops=[0.0])
    assert out["schedule"] == {"name": "cosine"}  # no step_size unless a step schedule is swept
    assert list(FACTORS) == ["weight decay", "LR schedule", "mixup α", "attention dropout"]
    assert FACTORS["LR schedule"] == ("schedule.name", ["constant", "cosine"])


def test_regularisation_findings_every_branch():
    df = factor_runs({
        "weight decay": {"0": [0.5, 0.52], "0.001": [0.6, 0.62]},  # a gain beyond the noise
        "LR schedule": {"constant": [0.5], "cosine": [0.45]},  # no gain, one seed
        "mixup α": {"0": [None], "0.2": [0.6]},  # the baseline diverged
        "attention dropout": {"0": [0.5], "0.1": [None]},  # no other value completed
    })
    table = regularisation.against_baseline(df, FACTORS)
    assert list(table["value"]) == ["0", "0.001", "constant", "cosine", "0", "0.2", "0", "0.1"]
    assert table.loc[1, "vs baseline"] == pytest.approx(0.1) and table.loc[1, "seed noise"] == "beyond seed noise"
    assert table.loc[3, "seed noise"] == "seed noise unknown (one seed)" and table.loc[7, "diverged"] == 1
    headline, text = regularisation.findings_of(df, table)
    assert headline == {"weight decay best gain": pytest.approx(0.1), "LR schedule best gain": pytest.approx(-0.05)}
    assert text == [
        ("This run swept weight decay over 0, 0.001; LR schedule over constant, cosine; mixup α over 0, 0.2; "
         "attention dropout over 0, 0.1 (one at a time, the others at their first value): 5 point(s) × 2 seed(s) "
         "(0, 1)."),
        "weight decay: the best change is 0.001 instead of 0, +0.100 best val_acc (beyond seed noise).",
        ("LR schedule: no value beats the baseline constant; the closest, cosine, is -0.050 best val_acc "
         "(seed noise unknown (one seed))."),
        "mixup α: the baseline run did not complete (diverged (1/1)).",
        "attention dropout: no other value completed.",
        "2 runs diverged (shown as red ×, not in the means).",
    ]


# ---------------------------------------------------------------------------------------------
# Depth × learning rate


def curve_table(cells: dict) -> pd.DataFrame:
    """``cells``: depth → val_acc per epoch."""
    return pd.DataFrame([{"model.depth": d, "epoch": e + 1, "val_acc": v}
                         for d, accs in cells.items() for e, v in enumerate(accs)])


def test_depth_test_long_runs_show_the_deeper_model_gains_more():
    df = grid({(2, 1e-3): [0.5], (2, 1e-2): [0.6], (4, 1e-3): [0.55], (4, 1e-2): [None]})
    long_df = runs("model.depth", {2: [0.62], 4: [0.7]})
    headline, text = depth_test.findings_of(df, long_df, curve_table({}), epochs=1, long_epochs=5)
    assert headline == {"best short val_acc": 0.6, "long-run gain depth 2": pytest.approx(0.02),
                        "long-run gain depth 4": pytest.approx(0.15)}
    assert text[0] == ("This run swept depth over 2, 4 and learning rate over 0.001, 0.01: 4 point(s) × 1 seed(s) (0), "
                       "1 epoch(s) per run; with one seed per point the seed noise is unknown, so no difference can "
                       "be called beyond it.")
    assert text[1] == "Best short-run cell: depth 2 at learning rate 0.01, best val_acc 0.600 after 1 epoch(s)."
    assert text[2] == "Best learning rate per depth: depth 2: 0.01 (0.600); depth 4: 0.001 (0.550)."
    assert text[3] == "Cells where no run completed (diverged): depth 4 at 0.01."
    assert text[4] == "Training 5 instead of 1 epoch(s) changes the best val_acc by +0.020 at depth 2; +0.150 at depth 4."
    assert text[5].startswith("Depth 4 vs depth 2: -0.050 after 1 epoch(s), +0.080 after 5: the deeper model gains more")


def test_depth_test_long_runs_without_a_sign_and_short_run_curves():
    df = grid({(2, 1e-3): [0.6], (4, 1e-3): [0.5]})
    _, text = depth_test.findings_of(df, runs("model.depth", {2: [0.7], 4: [0.55]}), curve_table({}),
                                     epochs=1, long_epochs=5)
    assert text[-1].endswith("no sign here that the deeper model needs longer training to show an advantage.")
    headline, text = depth_test.findings_of(df, None, curve_table({2: [0.3, 0.6], 4: [0.5, 0.4]}), epochs=2,
                                            long_epochs=0)
    assert headline == {"best short val_acc": 0.6}
    assert text[-1] == ("Validation accuracy was still at its best in the last epoch for depth(s) 2: "
                        "longer runs (long_epochs) are needed to compare them fairly.")
    _, text = depth_test.findings_of(df, None, curve_table({2: [0.6, 0.3], 4: [0.5, 0.4]}), epochs=2, long_epochs=0)
    assert text[-1] == "Every depth peaked before its last epoch: the short runs are long enough to rank them."
    headline, text = depth_test.findings_of(grid({(2, 1e-3): [None]}), None, curve_table({}), epochs=1, long_epochs=0)
    assert math.isnan(headline["best short val_acc"])
    assert text[1:] == ["Cells where no run completed (diverged): depth 2 at 0.001."]


def test_depth_test_curve_runs_and_still_improving():
    df = grid({(2, 1e-3): [0.5], (2, 1e-2): [0.6], (4, 1e-3): [0.55]})
    picked = depth_test.curve_runs(df, None, {2: 1e-2, 4: 1e-3})
    assert list(zip(picked["model.depth"], picked["optim.lr"])) == [(2, 1e-2), (4, 1e-3)]
    long_df = runs("model.depth", {2: [0.7]})
    assert depth_test.curve_runs(df, long_df, {2: 1e-2}) is long_df
    assert depth_test.still_improving(curve_table({2: [0.1, 0.2], 4: [0.3, 0.2], 8: [0.1, 0.1]})) == [2]


# ---------------------------------------------------------------------------------------------
# LR search


def test_grid_lrs_are_log_spaced_with_two_digits():
    assert lr_search.grid_lrs(1e-4, 1e-2, 3) == [1e-4, 1e-3, 1e-2]
    assert lr_search.grid_lrs(1e-5, 1e-3, 4) == [1e-5, 4.6e-5, 0.00022, 0.001]


def test_range_tests_are_skipped_with_zero_steps():
    base = fer_base_config(study="lr_search", dataset="synthetic_faces", **FER)
    results, table = lr_search.range_tests(base, depths=[2, 4], data=None, min_lr=1e-6, max_lr=1.0, num_steps=0)
    assert results == {} and list(table.columns) == lr_search.RANGE_COLUMNS and table.empty


def test_suggest_lr_averages_depths_and_skips_any_divergence():
    stats = seed_stats(grid({(2, 1e-3): [0.5], (4, 1e-3): [0.7], (2, 1e-2): [0.9], (4, 1e-2): [0.2, None],
                             (2, 1e-4): [0.55], (4, 1e-4): [0.55]}), ["model.depth", "optim.lr"])
    suggested, by_lr = lr_search.suggest_lr(stats)
    assert suggested == 1e-3 and by_lr.to_dict() == {1e-4: pytest.approx(0.55), 1e-3: pytest.approx(0.6)}
    suggested, by_lr = lr_search.suggest_lr(seed_stats(grid({(2, 1e-3): [None]}), ["model.depth", "optim.lr"]))
    assert math.isnan(suggested) and by_lr.empty


def test_lr_search_findings_every_branch():
    df = grid({(2, 1e-4): [0.5], (2, 1e-3): [0.6], (4, 1e-4): [0.4], (4, 1e-3): [0.45]})
    range_table = pd.DataFrame([{"depth": 2, "rule": "valley", "suggested lr": 3e-4},
                                {"depth": 4, "rule": "valley", "suggested lr": math.nan},
                                {"depth": 4, "rule": "steepest", "suggested lr": 1e-4}])
    headline, text = lr_search.findings_of(df, range_table, lrs=[1e-4, 1e-3])
    assert headline == {"suggested lr": 1e-3, "best val_acc": 0.6, "diverged runs": 0}
    assert text == [
        ("This run swept depth over 2, 4 and learning rate over 0.0001, 0.001: 4 point(s) × 1 seed(s) (0); with one "
        "seed per point the seed noise is unknown, so no difference can be called beyond it."),
        "Suggested learning rate: 0.001 (highest best val_acc averaged over depths 2, 4: 0.525, with no diverged run).",
        "Depth 2: best learning rate 0.001 with best val_acc 0.600; the range test's valley rule suggests 0.0003.",
        "Depth 4: best learning rate 0.001 with best val_acc 0.450.",  # the valley rule gave NaN
        "Across the grid (0.0001 to 0.001) the mean best val_acc spans 0.400 to 0.600 (a spread of 0.200).",
        "No run diverged between 0.0001 and 0.001.",
    ]
    df = grid({(2, 1e-4): [0.5, None], (2, 1e-3): [None]})
    headline, text = lr_search.findings_of(df, pd.DataFrame(columns=lr_search.RANGE_COLUMNS), lrs=[1e-4, 1e-3])
    assert math.isnan(headline["suggested lr"]) and headline["diverged runs"] == 2
    assert text[1] == "No learning rate of the grid trained every depth without diverging: lower lr_min."
    assert text[2] == "Depth 2: best learning rate 0.0001 with best val_acc 0.500 (1/2 diverged)."
    assert text[-1] == "2 of 3 runs diverged; the lowest diverging learning rate was 0.0001."


# ---------------------------------------------------------------------------------------------
# CLS vs baseline


MODELS = ["ir50_vit", "ir50_cls"]


def model_runs(cells: dict) -> pd.DataFrame:
    """``cells``: (lr, model) → runs' best_val_acc."""
    return sweep_table(["optim.lr", "model.name"], cells)


def efficiency_rows(status: str = "ok") -> pd.DataFrame:
    return pd.DataFrame([
        {"name": "ir50_vit", "samples_per_s": 100.0, "forward_gflops_per_sample": 2.0, "params_m": 1.0,
         "device": "cpu", "status": "ok"},
        {"name": "ir50_cls", "samples_per_s": 150.0, "forward_gflops_per_sample": 1.0, "params_m": 1.5,
         "device": "cpu", "status": status},
    ])


def test_winner_table_marks_winner_gap_and_verdict():
    df = model_runs({(1e-3, "ir50_vit"): [0.5, 0.52], (1e-3, "ir50_cls"): [0.6, 0.62],
                     (1e-4, "ir50_vit"): [0.5, 0.7], (1e-4, "ir50_cls"): [0.52, 0.64],
                     (1e-2, "ir50_vit"): [None], (1e-2, "ir50_cls"): [None]})
    table = cls_vs_baseline.winner_table(df, MODELS)
    assert list(table["learning rate"]) == ["0.0001", "0.001", "0.01"]
    assert list(table["winner"]) == ["ir50_vit", "ir50_cls", "–"]  # "–": no run completed
    assert list(table["seed noise"]) == ["within seed noise", "beyond seed noise", "seed noise unknown (one seed)"]
    assert table.loc[1, "gap (ir50_cls − ir50_vit)"] == pytest.approx(0.1)
    assert table.loc[1, "ir50_cls"] == "0.610 ± 0.014" and table.loc[2, "ir50_vit"] == "diverged (1/1)"
    html = cls_vs_baseline.style_winner_table(table, MODELS).to_html()
    bold = re.search(r"<style[^>]*>(.*?)\{\s*font-weight: bold;", html, flags=re.DOTALL).group(1)
    # cls's lead at 1e-3 is beyond seed noise: bold; vit's at 1e-4 is within it: not bold
    assert re.findall(r"row\d+_col\d+", bold) == ["row1_col2"]


def test_cls_vs_baseline_findings_every_branch():
    df = model_runs({(1e-3, "ir50_vit"): [0.5, 0.52], (1e-3, "ir50_cls"): [0.6, 0.62, None]})
    table = cls_vs_baseline.winner_table(df, MODELS)
    headline, text = cls_vs_baseline.findings_of(df, table, efficiency_rows(), models=MODELS, bench_batch_size=8)
    assert headline == {"ir50_vit best val_acc": pytest.approx(0.51), "ir50_cls best val_acc": pytest.approx(0.61),
                        "ir50_cls wins": 1}
    assert text == [
        ("This run swept model over ir50_vit, ir50_cls and learning rate over 0.001 (at one learning rate only: a "
         "ranking that may not hold at another): 2 point(s) × 3 seed(s) (0, 1, 2)."),
        "Across 1 learning rates × 3 seeds: ir50_vit wins at 0, ir50_cls wins at 1.",
        "Gaps beyond seed noise (t-test, 95%) at learning rate(s) 0.001 (+0.100).",
        "Best overall: ir50_cls at learning rate 0.001 (0.610 ± 0.014 (1/3 diverged)).",
        "ir50_cls vs ir50_vit: throughput ×1.50, forward FLOPs ×0.50, parameters ×1.500 (measured on cpu, batch 8).",
        "1 runs diverged (shown as red ×, not in the means).",
    ]
    df = model_runs({(1e-3, "ir50_vit"): [0.5, 0.7], (1e-3, "ir50_cls"): [0.55, 0.65]})
    _, text = cls_vs_baseline.findings_of(df, cls_vs_baseline.winner_table(df, MODELS), efficiency_rows("oom"),
                                          models=MODELS, bench_batch_size=8)
    assert text[2] == "No gap exceeds the 95% threshold of the seed noise (t-test): the two models tie on this data."
    assert len(text) == 4  # no efficiency ratios with an out-of-memory row, nothing diverged
    df = model_runs({(1e-3, "ir50_vit"): [0.5], (1e-3, "ir50_cls"): [None]})
    headline, text = cls_vs_baseline.findings_of(df, cls_vs_baseline.winner_table(df, MODELS), efficiency_rows(),
                                                 models=MODELS, bench_batch_size=8)
    assert text[2] == "One seed per point: the seed noise is unknown, so no gap can be called beyond it."
    assert math.isnan(headline["ir50_cls best val_acc"]) and headline["ir50_cls wins"] == 0


@pytest.mark.slow  # two small models measured, and three CUDA steps predicted at batch 256 (seconds each)
def test_cls_vs_baseline_efficiency_predicts_cuda_memory_at_the_lab_batch_size():
    base = fer_base_config(study="cls", dataset="synthetic_faces", **{**FER, "depth": 1, "num_train": 8, "num_val": 8})
    eff = cls_vs_baseline.efficiency(base, ["ir_vit", "ir_cls"], batch_size=2, timed_steps=1).set_index("name")
    column = cls_vs_baseline.PREDICTED_COLUMN
    assert column == "predicted CUDA MiB @ batch 256" and column in cls_vs_baseline.EFFICIENCY_COLUMNS
    cls = predict_memory(build_config(with_values(base, model={"name": "ir_cls"})), batch_size=256)
    assert eff.loc["ir_cls", column] == cls["peak_mb"]
    assert eff.loc["ir_vit", column] != eff.loc["ir_cls", column]  # each row its own model


# ---------------------------------------------------------------------------------------------
# Batch size throughput


def throughput_rows(device: str = "cpu", oom_at: int | None = None) -> pd.DataFrame:
    rows = [{"batch_size": b, "status": "ok", "samples_per_s": s, "step_time_median_s": b / s,
             "step_time_p95_s": b / s, "peak_memory_mb": 100.0 * b, "memory_kind": "cpu_peak_rss",
             "device": device, "amp": "off", "cpu_threads": 1} for b, s in ((1, 10.0), (2, 19.5), (4, 20.0))]
    if oom_at:
        rows.append({**rows[-1], "batch_size": oom_at, "status": "oom", "samples_per_s": math.nan,
                     "step_time_median_s": math.nan, "peak_memory_mb": math.nan, "memory_kind": ""})
    return pd.DataFrame(rows)


def test_batch_size_throughput_findings_every_branch():
    table = throughput_rows(oom_at=8)
    choice = recommend_batch_size(table, 0.95)
    settings = {"model_name": "m", "channels_last": False, "compile_model": False, "warmup_steps": 1, "timed_steps": 3}
    headline, text = batch_size_throughput.findings_of(table, choice, **settings)
    assert headline == {"recommended batch size": 2, "throughput at recommended (samples/s)": 19.5,
                        "best throughput (samples/s)": 20.0, "best batch size": 4, "out-of-memory batch size": 8}
    assert text[0] == choice["sentence"]
    assert text[1] == ("Model m on cpu (AMP off, channels_last False, compile False); per batch size 1 warm-up "
                       "then 3 timed steps in one round for the model step only, batch sizes 1 to 8.")
    measured = table.assign(rounds=3, e2e_samples_per_s=table["samples_per_s"] * 0.8)
    assert batch_size_throughput.findings_of(measured, choice, **settings)[1][1] == (
        "Model m on cpu (AMP off, channels_last False, compile False); per batch size 1 warm-up then 3 timed steps "
        "in each of 3 interleaved rounds for the model step and end to end, batch sizes 1 to 8.")
    assert text[2] == "At batch size 2 a step takes 0.103 s (median) and peak memory is 200 MiB (process peak RSS)."
    assert text[3].startswith("CPU timings (torch CPU threads: 1)")
    table = throughput_rows(device="cuda").assign(memory_kind="cuda_max_allocated")
    headline, text = batch_size_throughput.findings_of(table, recommend_batch_size(table, 0.95), **settings)
    assert headline["out-of-memory batch size"] == "none" and len(text) == 3 and "CUDA allocator peak" in text[2]
    table = throughput_rows().iloc[:0]
    no_choice = recommend_batch_size(table, 0.95)
    oom_only = pd.DataFrame([{**throughput_rows(oom_at=1).iloc[-1]}])
    headline, text = batch_size_throughput.findings_of(oom_only, no_choice, **settings)
    assert headline["recommended batch size"] is None and headline["out-of-memory batch size"] == 1
    assert len(text) == 3  # no step time without a recommendation


def test_throughput_config_settings_and_errors():
    cfg = batch_size_throughput.throughput_config(params_file="", model_name="vqa_mean_mlp", device="cpu",
                                                  cpu_threads=0, overrides={"data.max_train_samples": 64})
    assert cfg.model["name"] == "vqa_mean_mlp" and cfg.train.num_threads is None
    assert cfg.data["max_train_samples"] == 64
    cfg = batch_size_throughput.throughput_config(params_file="params/train/easy_vqa_model1.yaml",
                                                  model_name="vqa_mean_mlp", device="cpu", cpu_threads=2,
                                                  overrides={})
    assert cfg.train.num_threads == 2
    with pytest.raises(ConfigError, match="vqa_mean_mpl"):
        batch_size_throughput.throughput_config(params_file="", model_name="vqa_mean_mpl", device="cpu",
                                                cpu_threads=0, overrides={})
    view = batch_size_throughput.table_view(throughput_rows()).data
    assert list(view.columns) == list(batch_size_throughput.VIEW_COLUMNS.values())
    line = batch_size_throughput.setting_line(throughput_rows(), channels_last=True, compile_model=False)
    assert line == ("device cpu (torch CPU threads: 1), amp off, channels_last True, compile False; "
                    "memory: process peak RSS")


# ---------------------------------------------------------------------------------------------
# VQA models


def test_vqa_model_configs_use_the_data_set_parameters():
    configs = vqa_models.model_configs(models=["vqa_mean_mlp", "vqa_lstm_mlp"],
                                       model_kwargs={"vqa_mean_mlp": {"cnn_channels": [4, 8, 8]}},
                                       dataset="easy_vqa", dataset_kwargs={"max_train_samples": 10}, epochs=2,
                                       batch_size=4, lr=1e-3, seed=3, experiment="e", runs_root="r")
    assert [c.name for c in configs] == ["vqa_mean_mlp", "vqa_lstm_mlp"]
    assert configs[0].model["cnn_channels"] == (4, 8, 8) and configs[1].model == {"name": "vqa_lstm_mlp"}
    assert configs[1].data == {"name": "easy_vqa", "max_train_samples": 10} and configs[1].seed == 3
    with pytest.raises(ConfigError, match="easy_vq"):
        vqa_models.model_configs(models=["vqa_mean_mlp"], model_kwargs={}, dataset="easy_vq", dataset_kwargs={},
                                 epochs=1, batch_size=4, lr=1e-3, seed=0, experiment="e", runs_root="r")


def test_per_model_data_keywords_and_stray_model_entries():
    configs = vqa_models.model_configs(models=["vqa_question_only", "vqa_aoa"], model_kwargs={},
                                       dataset="synthetic_scenes", dataset_kwargs={"inputs": "scene_graph", "num_train": 8},
                                       model_data_kwargs={"vqa_aoa": {"inputs": "regions"}}, epochs=1,
                                       batch_size=4, lr=1e-3, seed=0, experiment="e", runs_root="r")
    assert [c.data for c in configs] == [{"name": "synthetic_scenes", "inputs": "scene_graph", "num_train": 8},
                                         {"name": "synthetic_scenes", "inputs": "regions", "num_train": 8}]
    for parameter in ("model_kwargs", "model_data_kwargs"):
        with pytest.raises(ConfigError, match=f"{parameter} names 'vqa_san', which is not in models"):
            vqa_models.model_configs(**{"model_kwargs": {}, parameter: {"vqa_san": {}}}, models=["vqa_aoa"],
                                     dataset="synthetic_scenes", dataset_kwargs={}, epochs=1, batch_size=4, lr=1e-3,
                                     seed=0, experiment="e", runs_root="r")


def test_the_scenes_preset_trains_each_model_on_the_input_it_reads(repo_root, tmp_path):
    preset = yaml.safe_load((repo_root / "params" / "vqa_models.yaml").read_text())["presets"]["scenes-cpu"]
    configs = vqa_models.model_configs(
        models=preset["models"], model_kwargs=preset["model_kwargs"], dataset=preset["dataset"],
        dataset_kwargs={**preset["dataset_kwargs"], "num_train": 44, "num_val": 22},
        model_data_kwargs=preset["model_data_kwargs"], epochs=1, batch_size=22, lr=preset["lr"], seed=0,
        experiment="scenes", runs_root=str(tmp_path))
    points = vqa_models.train_models(configs)
    assert list(points["name"]) == preset["models"]
    inputs = {}
    for run_dir in points["run_dir"]:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        assert summary["status"] == "completed", summary.get("error")
        inputs[summary["model"]] = summary["data"]["inputs"]
    assert inputs == {"vqa_question_only": "scene_graph", "vqa_mean_mlp": "image", "vqa_aoa": "regions",
                      "vqa_ban": "regions", "vqa_subgraph": "scene_graph"}


def test_a_frozen_resnet_encoder_runs_once_per_image_through_the_feature_cache():
    frozen = {"image_encoder": "resnet18", "image_weights": "weights/resnet18.pth", "freeze_image": True,
              "hidden_dim": 32}
    model, data = vqa_models.run_sections("vqa_san", frozen, "vqa_v2", {"max_train_samples": 10})
    assert model == {"name": "vqa_san", "hidden_dim": 32}  # the model takes the cached maps
    assert data == {"name": "frozen_features", "source": {"name": "vqa_v2", "max_train_samples": 10},
                    "encoder": "resnet18", "weights": "weights/resnet18.pth"}
    trained = {"image_encoder": "resnet18", "freeze_image": False}  # a trained encoder sees the images
    assert vqa_models.run_sections("vqa_san", trained, "vqa_v2", {}) == ({"name": "vqa_san", **trained},
                                                                         {"name": "vqa_v2"})
    cached = {"name": "frozen_features", "source": {"name": "vqa_v2"}}
    assert vqa_models.run_sections("vqa_san", {}, "frozen_features", {"source": {"name": "vqa_v2"}})[1] == cached


def tiny_model_configs(runs_root, lr=1e-3):
    return vqa_models.model_configs(models=["vqa_mean_mlp", "vqa_lstm_mlp"],
                                    model_kwargs={"vqa_mean_mlp": {"cnn_channels": [4, 8, 8]}},
                                    dataset="easy_vqa", dataset_kwargs={"max_train_samples": 16, "max_val_samples": 8},
                                    epochs=1, batch_size=8, lr=lr, seed=0, experiment="e", runs_root=str(runs_root))


def hparams_of(run_dir) -> dict:
    """The HParams entry a sweep wrote for a run (TensorBoard's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from vqalab.monitor import HPARAMS_DIR, TB_DIR

    acc = EventAccumulator(str(Path(run_dir) / TB_DIR / HPARAMS_DIR))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {key: value.string_value or value.number_value for key, value in info.hparams.items()}


def test_vqa_models_reuse_finished_runs_of_the_same_config_code_and_data(tmp_path, monkeypatch):
    from vqalab import sweep as sweep_module
    from vqalab.results import runs_table

    loads: list[str] = []
    real_build_data = sweep_module.build_data
    monkeypatch.setattr(sweep_module, "build_data", lambda spec: loads.append(spec["name"]) or real_build_data(spec))
    first = vqa_models.train_models(tiny_model_configs(tmp_path / "runs"))
    assert list(first["name"]) == ["vqa_mean_mlp", "vqa_lstm_mlp"] and list(first["status"]) == ["completed"] * 2
    assert loads == ["easy_vqa"]  # one data section, loaded once for both models
    assert len(set(first["run_dir"])) == 2 and all((Path(d) / "summary.json").is_file() for d in first["run_dir"])
    # the sweeps' HParams entry: the point's run name (here the model's) and seed
    assert [hparams_of(d) for d in first["run_dir"]] == [{"name": "vqa_mean_mlp", "seed": 0},
                                                         {"name": "vqa_lstm_mlp", "seed": 0}]
    # the study table is results.runs_table of the runs, with the sweep's error column
    table = vqa_models.models_table(first)
    assert list(table.columns) == list(vqa_models.TABLE_COLUMNS)
    pd.testing.assert_frame_equal(table.drop(columns="error"), runs_table(list(first["run_dir"])))

    trained: list[str] = []
    real_fit = sweep_module.fit
    monkeypatch.setattr(sweep_module, "fit", lambda cfg, data, on_epoch: trained.append(cfg.name)
                        or real_fit(cfg, data=data, on_epoch=on_epoch))
    run_log = tmp_path / "runs.jsonl"
    monkeypatch.setenv(RUN_LOG_ENV, str(run_log))
    again = vqa_models.train_models(tiny_model_configs(tmp_path / "runs"))
    assert list(again["run_dir"]) == list(first["run_dir"]) and again["reused"].all()
    assert trained == [] and loads == ["easy_vqa"]  # a second call trains nothing and loads no data
    lines = [json.loads(line) for line in run_log.read_text().splitlines()]
    assert [(e["run_dir"], e["reused"]) for e in lines] == [(d, True) for d in first["run_dir"]]
    assert all(e["finished"] for e in lines)
    other = vqa_models.train_models(tiny_model_configs(tmp_path / "runs", lr=2e-3))  # both train, in new folders
    assert trained == ["vqa_mean_mlp", "vqa_lstm_mlp"] and not set(other["run_dir"]) & set(first["run_dir"])
    monkeypatch.setenv(FRESH_ENV, "1")
    vqa_models.train_models(tiny_model_configs(tmp_path / "runs"))
    assert trained[2:] == ["vqa_mean_mlp", "vqa_lstm_mlp"]  # VQALAB_FRESH=1 retrains
    assert len(list((tmp_path / "runs" / "e").iterdir())) == 6


def test_a_failed_model_is_a_failed_row_and_the_others_still_train(tmp_path, monkeypatch):
    from vqalab import sweep as sweep_module

    real_fit = sweep_module.fit

    def fit_failing_lstm(cfg, data, on_epoch):
        if cfg.name == "vqa_lstm_mlp":
            raise RuntimeError("out of memory")
        return real_fit(cfg, data=data, on_epoch=on_epoch)

    monkeypatch.setattr(sweep_module, "fit", fit_failing_lstm)
    points = vqa_models.train_models(tiny_model_configs(tmp_path / "runs"))
    assert list(points["status"]) == ["completed", "failed"]
    assert points["error"].iloc[1] == "RuntimeError: out of memory" and pd.isna(points["run_dir"].iloc[1])
    table = vqa_models.models_table(points)
    assert list(table["name"]) == ["vqa_mean_mlp", "vqa_lstm_mlp"] and list(table["status"]) == ["completed", "failed"]
    assert table["best_val_acc"].iloc[0] >= 0 and math.isnan(table["best_val_acc"].iloc[1])
    headline, text = vqa_models.findings_of(table, epochs=1)
    assert headline["best model"] == "vqa_mean_mlp"
    assert text[-1] == "vqa_lstm_mlp failed: RuntimeError: out of memory"
    headline, text = vqa_models.findings_of(table.iloc[1:], epochs=1)
    assert headline["best model"] == "none" and math.isnan(headline["best val_acc"])
    assert text[0] == "No model finished an epoch: no accuracy to compare."


def test_vqa_models_findings_with_and_without_overfitting():
    table = pd.DataFrame([
        {"name": "a", "best_val_acc": 0.6, "best_epoch": 3, "overfitting_from_epoch": 3.0, "epoch_time_s": 1.25,
         "params_M": 0.1},
        {"name": "b", "best_val_acc": 0.7, "best_epoch": 5, "overfitting_from_epoch": None, "epoch_time_s": 2.0,
         "params_M": 0.2},
    ])
    headline, text = vqa_models.findings_of(table, epochs=8)
    assert headline == {"best val_acc": 0.7, "best model": "b", "best epoch": 5}
    assert text == ["Best model: b with validation accuracy 0.7000 at epoch 5 of 8.",
                    "a overfits after epoch 3: validation loss rises while training loss falls.",
                    "a: 1.2 s per epoch, 0.100 M parameters.", "b: 2.0 s per epoch, 0.200 M parameters."]
    _, text = vqa_models.findings_of(table.assign(overfitting_from_epoch=None), epochs=8)
    assert text[1] == "No model shows overfitting within these epochs."


def test_accuracy_per_answer_type_matches_a_hand_computation():
    def ten(*answers):  # ten human answers from (answer, how many gave it) pairs
        return [a for a, n in answers for _ in range(n)]

    split = Questions(SimpleNamespace(
        answers=[ten(("red", 10)), ten(("2", 2), ("3", 8)), ten(("yes", 10)), ten(("yes", 10))],
        answer_types=["other", "number", "yes/no", "yes/no"]))
    cached = SimpleNamespace(base=split)  # a feature cache's split reads its source's annotations
    row = vqa_models.type_accuracy("vqa_v2", ["red", "2", "no", "yes"], cached)
    # "2" is given by 2 of 10: leaving one of those 2 out leaves 1 match (1/3), leaving one of the
    # other 8 out leaves 2 (2/3): (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert list(row) == ["yes/no", "number", "other", "overall", "questions"]  # the papers' order
    assert row == pytest.approx({"yes/no": 0.5, "number": 0.6, "other": 1.0, "overall": 2.6 / 4, "questions": 4})
    with pytest.raises(ConfigError, match="3 predictions for the 4 questions of the vqa_v2 validation split"):
        vqa_models.type_accuracy("vqa_v2", ["red", "2", "no"], cached)
    with pytest.raises(ConfigError, match="easy_vqa types no question"):
        vqa_models.type_accuracy("easy_vqa", ["red"], cached)


def test_accuracy_per_structural_type_matches_a_hand_computation():
    split = Questions(SimpleNamespace(answers=["yes", "blue", "cat", "no", "left", "yes"],
                                      structural_types=["verify", "query", "query", "logical", "choose", "spatial"]))
    row = vqa_models.type_accuracy("gqa", ["yes", "red", "cat", "yes", "left", "yes"], split)
    assert list(row) == ["verify", "query", "choose", "logical", "spatial", "overall", "questions"]
    assert row == {"verify": 1.0, "query": 0.5, "choose": 1.0, "logical": 0.0, "spatial": 1.0, "overall": 4 / 6,
                   "questions": 6}


class Questions:
    """A validation split's annotations alone (``len`` and the attributes of ``fields``)."""

    def __init__(self, fields: SimpleNamespace):
        self.__dict__.update(vars(fields))
        self.count = len(next(iter(vars(fields).values())))

    def __len__(self) -> int:
        return self.count


def test_easy_vqa_page_says_in_one_line_that_it_has_no_answer_types(tmp_path):
    configs = vqa_models.model_configs(models=["vqa_lstm_mlp"], model_kwargs={}, dataset="easy_vqa", dataset_kwargs={},
                                       epochs=1, batch_size=4, lr=1e-3, seed=0, experiment="e", runs_root="r")
    assert vqa_models.type_accuracy_text(configs) == [
        "easy_vqa gives its questions no answer or structural types: no accuracy per type."]
    table = vqa_models.type_accuracy_table(configs, [tmp_path / "no-run"])  # nothing is read
    assert table.empty


def test_per_type_table_of_trained_vqa_v2_runs_agrees_with_their_validation_accuracy(tmp_path):
    root = write_vqa_v2(tmp_path / "vqa_v2", train_images=8, val_images=4)
    configs = vqa_models.model_configs(models=["vqa_mean_mlp", "vqa_lstm_mlp"],
                                       model_kwargs={"vqa_mean_mlp": {"cnn_channels": [4, 8, 8]},
                                                     "vqa_lstm_mlp": {"cnn_channels": [4, 8, 8]}},
                                       dataset="vqa_v2", dataset_kwargs={"root": str(root), "image_size": 32},
                                       epochs=2, batch_size=8, lr=1e-2, seed=0, experiment="e",
                                       runs_root=str(tmp_path / "runs"))
    run_dirs = [Path(d) for d in vqa_models.train_models(configs)["run_dir"]]
    table = vqa_models.type_accuracy_table(configs, run_dirs)
    assert list(table.columns) == ["name", "yes/no", "number", "other", "overall", "questions"]
    # 12 validation questions, 2 of them without an answer in the training vocabulary: left out, as in val_acc
    assert list(table["name"]) == ["vqa_mean_mlp", "vqa_lstm_mlp"] and set(table["questions"]) == {10}
    for run_dir, (_, row) in zip(run_dirs, table.iterrows()):
        summary = json.loads((run_dir / "summary.json").read_text())
        # the official accuracy of the best epoch's answers is the soft score the loop averaged
        assert row["overall"] == pytest.approx(summary["best_val_acc"])
        assert all(0.0 <= row[kind] <= 1.0 for kind in ("yes/no", "number", "other"))
    assert vqa_models.type_accuracy_text(configs) == [(
        "Validation accuracy per answer type on vqa_v2 at each model's best epoch, as the data set's paper "
        "reports it, over the questions val_acc counts (those with an answer in the vocabulary).")]


# The FER base (params/fer_base.yaml): one definition that the five FER studies extend.
FER_BASE = REPO / "params" / "fer_base.yaml"


def fer_notebooks() -> list[Path]:
    """The study notebooks whose runs start from ``fer_base_config``."""
    return [nb for nb in sorted((REPO / "notebooks").glob("*.ipynb")) if "fer_base_config(" in nb.read_text()]


def notebook_values(notebook: Path, preset: str) -> dict:
    """A notebook's parameter defaults with the preset's values (its base's included) over them."""
    import papermill

    defaults = {k: notebook_default(p) for k, p in papermill.inspect_notebook(str(notebook)).items()}
    return {**defaults, **read_presets(REPO / "params" / f"{notebook.stem}.yaml")[preset]}


def test_every_fer_study_extends_the_fer_base_and_nothing_else_does():
    studies = [nb.stem for nb in fer_notebooks()]
    assert studies == ["adam_eps_beta", "cls_vs_baseline", "depth_test", "lr_search", "regularisation"]
    extending = sorted(p.stem for p in (REPO / "params").glob("*.yaml") if base_file(p) is not None)
    assert extending == studies
    assert all(base_file(REPO / "params" / f"{s}.yaml") == FER_BASE for s in studies)


def test_fer_notebook_defaults_are_the_quick_base():
    """The quick base is the notebooks' own defaults: a notebook opened in JupyterLab trains the
    same runs as the quick preset."""
    import papermill

    quick = read_yaml(FER_BASE)["presets"]["quick"]
    for notebook in fer_notebooks():
        declared = papermill.inspect_notebook(str(notebook))
        drift = {k: (notebook_default(declared[k]), v) for k, v in quick.items()
                 if k not in declared or notebook_default(declared[k]) != v}
        assert not drift, f"{notebook.name}: defaults (notebook, base) differ from params/fer_base.yaml quick: {drift}"


def trained_points(study: str, p: dict) -> set[tuple[str, int, float]]:
    """(model, depth, lr) of every run a FER study trains at its base settings (the other grids:
    ε, β, regularisation values at their defaults)."""
    if study == "depth_test":
        return set(itertools.product([p["model"]], p["depths"], p["lrs"]))
    if study == "cls_vs_baseline":
        return set(itertools.product(p["models"], [p["depth"]], p["lrs"]))
    if study == "lr_search":
        return set(itertools.product([p["model"]], p["depths"], lr_search.grid_lrs(p["lr_min"], p["lr_max"],
                                                                                  p["lr_points"])))
    return {(p["model"], p["depth"], p["lr"])}  # adam_eps_beta's default ε and β, regularisation's baseline


def test_fer_studies_share_the_base_point_at_the_cpu_preset():
    """make report trains the base point once: every FER study's grid holds it, with the same base
    (experiment, data, epochs, seeds), so the later studies reuse its runs."""
    values = {nb.stem: notebook_values(nb, "cpu") for nb in fer_notebooks()}
    shared = set.intersection(*(trained_points(s, p) for s, p in values.items()))
    assert ("ir_vit", 2, 1e-3) in shared, {s: sorted(trained_points(s, p)) for s, p in values.items()}
    base_keys = read_yaml(FER_BASE)["presets"]["cpu"]
    assert len({json.dumps({k: p[k] for k in [*base_keys, "experiment"]}, sort_keys=True)
                for p in values.values()}) == 1


def test_every_fer_preset_loads_over_its_base_against_its_notebook():
    """Each base key is a parameter of every FER notebook, of the annotated type; no study repeats one."""
    import papermill

    for notebook in fer_notebooks():
        declared = papermill.inspect_notebook(str(notebook))
        for key, parameter in declared.items():
            parameter["type"] = annotated_type(key, parameter, notebook)
        params_file = REPO / "params" / f"{notebook.stem}.yaml"
        for preset in read_yaml(params_file)["presets"]:
            values = load_preset(params_file, preset, declared)
            assert set(read_yaml(FER_BASE)["presets"].get(preset) or {}) <= set(values), (notebook.stem, preset)


def test_cpu_presets_keep_each_study_shape():
    """make report's studies are the lab's studies in small: at least three values on every swept
    axis (the regularisation factors: a value against each baseline)."""
    values = {nb.stem: notebook_values(nb, "cpu") for nb in fer_notebooks()}
    axes = {"depth_test": ["depths", "lrs"], "adam_eps_beta": ["eps_values", "betas_values"],
            "cls_vs_baseline": ["lrs"]}
    for study, keys in axes.items():
        for key in keys:
            assert len(values[study][key]) >= 3, (study, key, values[study][key])
    assert values["lr_search"]["lr_points"] >= 3
    for key in ("weight_decays", "schedules", "mixup_alphas", "attn_drops"):
        assert len(values["regularisation"][key]) >= 2, key
