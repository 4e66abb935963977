import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY

from vqalab import bench, engine, lr_find
from vqalab.cli import main
from vqalab.config import build_config
from vqalab.registry import ConfigError


def test_lr_schedule_is_exponential_from_min_to_max():
    lrs = lr_find.lr_schedule(1e-6, 1e-2, 5)
    assert lrs == pytest.approx([1e-6, 1e-5, 1e-4, 1e-3, 1e-2])
    with pytest.raises(ConfigError, match="min_lr = 0.1, max_lr = 0.01"):
        lr_find.lr_schedule(0.1, 0.01, 5)
    with pytest.raises(ConfigError, match="num_steps = 1"):
        lr_find.lr_schedule(1e-6, 1e-2, 1)


def test_smoothed_loss_is_a_bias_corrected_ema():
    # β = 0.5: a0 = 0.5·1 = 0.5 → 0.5 / (1 − 0.5) = 1; a1 = 0.25 + 0.5·2 = 1.25 → 1.25 / 0.75
    assert lr_find.smooth_losses([1.0, 2.0], beta=0.5) == pytest.approx([1.0, 1.25 / 0.75])
    # bias correction: a constant loss is smoothed to itself from the first step
    assert lr_find.smooth_losses([3.0] * 10, beta=0.98) == pytest.approx([3.0] * 10)


def test_centred_smoothing_has_no_lag_and_drops_spikes():
    lrs = lr_find.lr_schedule(1e-6, 1.0, 121)  # 20 points per decade: median and mean over ±4 points
    x = np.log10(lrs)
    line = 5 - x  # straight in log LR: running median and mean leave it unchanged inside
    inner = slice(8, -8)  # both windows whole
    assert lr_find.centred_smooth(lrs, line)[inner] == pytest.approx(line[inner])
    # the EMA of the stop rule trails it: at the end it reads the loss of ~50 steps earlier
    assert lr_find.smooth_losses(line)[-1] > line[-1] + 1.5
    spiked = line.copy()
    spiked[[30, 60, 90]] += 10.0
    assert lr_find.centred_smooth(lrs, spiked)[inner] == pytest.approx(line[inner], abs=0.05)
    with_nan = line.copy()
    with_nan[-1] = np.nan
    smoothed = lr_find.centred_smooth(lrs, with_nan)
    assert np.isnan(smoothed[-1]) and np.isfinite(smoothed[:-1]).all()


def range_test_curve(lrs: np.ndarray, optimum: float) -> np.ndarray:
    """A synthetic LR range test: the loss falls fastest at ``optimum``, bottoms out a decade above
    it and then blows up (the blow-up term is scaled so that the slope is zero there)."""
    x = np.log10(lrs / optimum)
    blow_up = 2 / np.cosh(2.0) ** 2 / 4 * np.exp(4.0)  # d/dx of both terms cancel at x = 1
    return 2.5 - np.tanh(2 * x) + blow_up * np.exp(4 * (x - 2))


@pytest.mark.parametrize("optimum", [1e-5, 1e-4, 1e-3, 3e-3])
def test_every_rule_lands_within_a_factor_of_2_of_the_known_optimum(optimum):
    lrs = lr_find.lr_schedule(1e-7, 1.0, 100)  # the default test: 100 steps over 7 decades
    clean = range_test_curve(lrs, optimum)
    assert lrs[np.argmin(clean)] == pytest.approx(10 * optimum, rel=0.2)  # the curve is what it claims
    for rule, lr in lr_find.suggest(lrs, clean).items():
        assert optimum / 2 <= lr <= 2 * optimum, (rule, lr)
    # the former reading (minimum/10 of the β = 0.98 EMA) lands several times too high
    former = lr_find.suggest_minimum(*lr_find.trim(lrs, lr_find.smooth_losses(clean)))
    assert former > 4 * optimum
    # noisy: Gaussian noise (5% of the drop) and three spikes, over 20 draws
    rng = np.random.default_rng(0)
    for _ in range(20):
        noisy = clean + 0.1 * rng.standard_normal(len(lrs))
        noisy[rng.choice(len(lrs), 3, replace=False)] += 1.5
        for rule, lr in lr_find.suggest(lrs, noisy).items():
            assert optimum / 2 <= lr <= 2 * optimum, (rule, lr)


def test_rule_definitions_on_a_known_curve():
    lrs = 10 ** np.linspace(-6, 0, 121)  # 20 points per decade
    loss = range_test_curve(lrs, 1e-3)
    kept_lrs, kept = lr_find.trim(lrs, lr_find.centred_smooth(lrs, loss))
    got = lr_find.suggest(lrs, loss)
    assert got["minimum/10"] == pytest.approx(kept_lrs[np.argmin(kept)] / 10)
    # the valley: geometric middle of the stretch from 10% to 90% of the drop
    top, bottom = int(np.argmax(kept[:np.argmin(kept) + 1])), int(np.argmin(kept))
    drop = kept[top] - kept[bottom]
    start = np.flatnonzero(kept[top:] <= kept[top] - 0.1 * drop)[0] + top
    end = np.flatnonzero(kept[top:] <= kept[top] - 0.9 * drop)[0] + top
    assert got["valley"] == pytest.approx(np.sqrt(kept_lrs[start] * kept_lrs[end]))
    assert got["steepest"] == pytest.approx(1e-3, rel=0.13)  # within one grid step (10^0.05)
    assert all(math.isnan(v) for v in lr_find.suggest(lrs[:2], loss[:2]).values())


def state_snapshot(model, optimizer):
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()),
            [None if p.grad is None else p.grad.clone() for p in model.parameters()], torch.get_rng_state())


def assert_same_tree(a, b):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_tree(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tree(x, y)
    else:
        assert a == b


def test_range_test_restores_model_and_optimizer_exactly(cfg, data):
    device = torch.device("cpu")
    model = engine.build_model(cfg, data, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    # two real steps first, so the Adam moments and step counts and BatchNorm statistics are not empty
    batch = bench.fixed_batch(data, 8, cfg.seed)
    scaler = engine.make_grad_scaler(device, "off")
    for _ in range(2):
        engine.training_step(model, optimizer, scaler, batch, input_keys=data.input_keys, task=data.task, cfg=cfg,
                            device=device, amp="off")
    model.eval()
    before = state_snapshot(model, optimizer)

    changed = []  # the test really trains: weights move during it
    hook = optimizer.register_step_post_hook(lambda opt, args, kwargs: changed.append(
        any(not torch.equal(p, before[0][name]) for name, p in model.named_parameters())))
    result = lr_find.lr_range_test(cfg, min_lr=1e-4, max_lr=1e-1, num_steps=6, model=model,
                                   optimizer=optimizer, data=data)
    hook.remove()
    assert len(changed) >= 1 and all(changed)

    after = state_snapshot(model, optimizer)
    assert_same_tree(before[0], after[0])  # weights and BatchNorm buffers
    assert_same_tree(before[1], after[1])  # Adam moments, step counts, param groups with their lr
    assert_same_tree(before[2], after[2])  # gradients left from the last step
    assert torch.equal(before[3], after[3])  # random-number state
    assert not model.training  # its mode too
    assert result.history["lr"].iloc[0] == pytest.approx(1e-4)
    assert optimizer.param_groups[0]["lr"] == 3e-4


def test_range_test_runs_with_the_configured_threads_and_restores_them(cfg, data):
    before = torch.get_num_threads()
    threads = 1 if before > 1 else 2
    seen = []
    model = engine.build_model(cfg, data, torch.device("cpu"))
    model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    one = build_config({**TINY, "train": {**TINY["train"], "num_threads": threads}})
    result = lr_find.lr_range_test(one, num_steps=2, data=data, model=model,
                                   optimizer=torch.optim.SGD(model.parameters()))
    assert seen == [threads, threads]
    assert torch.get_num_threads() == before
    # the record says how many and why
    assert result.settings["threads"] == threads
    assert result.settings["threads_reason"] == f"train.num_threads = {threads} (set in the config)"


def test_range_test_stops_when_the_loss_explodes(cfg, data):
    sgd = build_config({**TINY, "optim": {"name": "sgd", "momentum": 0.9}})
    result = lr_find.lr_range_test(sgd, min_lr=1e-3, max_lr=1e6, num_steps=60, data=data)
    h = result.history
    assert len(h) < 60
    if result.stop_reason == "non-finite loss":
        assert not math.isfinite(h["loss"].iloc[-1])
    else:
        assert result.stop_reason == "loss above 4× best"
        assert h["smoothed_loss"].iloc[-1] > 4 * h["smoothed_loss"].iloc[:-1].min()
    finite = h[np.isfinite(h["smoothed_loss"])]
    assert finite["smoothed_loss"].to_numpy() == pytest.approx(lr_find.smooth_losses(finite["loss"]))
    assert h["centred_loss"].to_numpy() == pytest.approx(lr_find.centred_smooth(h["lr"], h["loss"]), nan_ok=True)
    assert np.diff(np.log(h["lr"])) == pytest.approx(np.full(len(h) - 1, np.log(1e9) / 59))


def test_save_never_overwrites_and_the_cli_writes_a_folder(tmp_path, cfg, capsys):
    result = lr_find.LRFindResult(
        history=pd.DataFrame({"step": [0, 1, 2], "lr": [1e-3, 1e-2, 1e-1], "loss": [2.0, 1.5, 3.0],
                              "smoothed_loss": [2.0, 1.7, 2.2]}),
        suggestions={"steepest": 1e-2, "valley": 1e-2, "minimum/10": 1e-3}, stop_reason="completed")
    local = cfg.model_copy(update={"runs_root": str(tmp_path)})
    first, second = lr_find.save_lr_find(result, local), lr_find.save_lr_find(result, local)
    assert first != second
    assert json.loads((first / "lr_find.json").read_text())["suggestions"]["valley"] == 1e-2
    assert pd.read_csv(first / "lr_find.csv")["loss"].tolist() == [2.0, 1.5, 3.0]

    params = tmp_path / "p.yaml"
    params.write_text(json.dumps({**TINY, "runs_root": str(tmp_path / "cli"), "experiment": "lr"}))
    assert main(["lr-find", str(params), "--steps", "4", "--min-lr", "1e-4", "--max-lr", "1e-2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    folder = out[-1]
    payload = json.loads("\n".join(out[:-1]))
    assert payload["folder"] == folder and payload["steps"] == 4
    assert {p.name for p in (tmp_path / "cli" / "lr").iterdir()} == {folder.rsplit("/", 1)[-1]}
    assert sorted(p.name for p in Path(folder).iterdir()) == ["lr_find.csv", "lr_find.json", "lr_find.png",
                                                               "params.yaml"]
