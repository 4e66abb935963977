import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY
from vqalab import bench, lr_find, train
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


def test_suggestions_on_a_known_curve():
    lrs = 10 ** np.linspace(-6, 0, 121)  # 20 points per decade
    x = np.log10(lrs)
    # falls fastest at lr 1e-3 (tanh is steepest at 0), bottoms out near 1e-1, then blows up
    loss = 2 - np.tanh(2 * (x + 3)) + np.exp(4 * (x + 1)) * 0.01
    got = lr_find.suggest(lrs, loss)
    assert got["steepest"] == pytest.approx(1e-3, rel=0.13)  # within one grid step (10^0.05)
    lowest = lrs[np.argmin(loss)]
    assert got["minimum/10"] == pytest.approx(lowest / 10)
    # the longest falling stretch runs from the trimmed start to the minimum: its middle
    kept_lrs, _ = lr_find.trim(lrs, loss)
    start, end = 0, int(np.argmin(lr_find.trim(lrs, loss)[1]))
    assert got["valley"] == pytest.approx(kept_lrs[start + (end - start) // 2])
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
    model = train.build_model(cfg, data, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    # two real steps first, so the Adam moments and step counts and BatchNorm statistics are not empty
    batch = bench.fixed_batch(data, 8, cfg.seed)
    scaler = train.make_grad_scaler(device, "off")
    for _ in range(2):
        train.training_step(model, optimizer, scaler, batch, input_keys=data.input_keys, cfg=cfg, device=device,
                            amp="off")
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
    model = train.build_model(cfg, data, torch.device("cpu"))
    model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    one = build_config({**TINY, "train": {**TINY["train"], "num_threads": threads}})
    lr_find.lr_range_test(one, num_steps=2, data=data, model=model, optimizer=torch.optim.SGD(model.parameters()))
    assert seen == [threads, threads]
    assert torch.get_num_threads() == before


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
