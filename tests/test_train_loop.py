"""The training loop: exact resume after SIGKILL, atomic checkpoints, the divergence guard, gradient
accumulation, limits, early stopping and mixup. Tiny easy-VQA runs on the CPU (a few seconds each)."""

import json
import math
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from vqalab import engine, runs, train
from vqalab.cli import main as cli_main
from vqalab.config import build_config
from vqalab.data import build_data
from vqalab.registry import ConfigError
from vqalab.runs import read_metrics_rows
from vqalab.schedules import lr_factor
from vqalab.train import fit

DATA_SPEC = {"name": "easy_vqa", "max_train_samples": 96, "max_val_samples": 64}
# Metrics that must repeat exactly; times and memory do not.
EXACT_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_acc", "lr"]


def tiny_config(runs_root, **train_overrides):
    """A run with every piece of state resume must restore: dropout (RNG), Adam moments, warm-up +
    cosine (scheduler), accumulation over a shorter last group, grouped batch order per epoch."""
    return build_config({
        "experiment": "loop", "name": "tiny", "seed": 3, "runs_root": str(runs_root),
        "model": {"name": "vqa_mean_mlp", "cnn_channels": [4, 8], "embed_dim": 8, "hidden_dim": 16,
                  "dropout": 0.3},
        "data": DATA_SPEC,
        "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
        "schedule": {"name": "cosine", "warmup_steps": 2},
        "train": {"epochs": 4, "batch_size": 16, "grad_accum_steps": 4, "clip_norm": 1.0,
                  "checkpoint_every": 2, "num_threads": 1, "progress": False, **train_overrides},
    })


@pytest.fixture(scope="module")
def data():
    return build_data(DATA_SPEC)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce."""
    return fit(tiny_config(tmp_path_factory.mktemp("reference")), data=data)


def final_state(run_dir):
    ckpt = runs.load_checkpoint(runs.latest_checkpoint(run_dir))  # weights_only=True
    return ckpt


def assert_same_tensors(a, b):
    """Two (nested) state dicts hold bitwise-equal tensors and equal plain values."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_tensors(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tensors(x, y)
    elif torch.is_tensor(a):
        assert torch.equal(a, b)
    else:
        assert a == b


def assert_same_run(run_dir, reference_dir):
    got, want = final_state(run_dir), final_state(reference_dir)
    assert got["epoch"] == want["epoch"] == 4
    assert_same_tensors(got["model_state"], want["model_state"])
    assert_same_tensors(got["optimizer_state"], want["optimizer_state"])
    assert_same_tensors(got["scheduler_state"], want["scheduler_state"])
    rows, ref_rows = read_metrics_rows(run_dir / "metrics.csv"), read_metrics_rows(reference_dir / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]  # nothing duplicated, nothing missing
    assert [[r[c] for c in EXACT_COLUMNS] for r in rows] == [[r[c] for c in EXACT_COLUMNS] for r in ref_rows]
    for record in ("confusion_matrix.csv", "val_predictions.csv"):
        assert (run_dir / record).read_text() == (reference_dir / record).read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    ref_summary = json.loads((reference_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    for key in ("best_val_acc", "best_epoch", "final_val_acc", "steps", "per_class_acc", "config_hash"):
        assert summary[key] == ref_summary[key], key
    return summary


def test_reference_run_writes_a_complete_run_folder(reference):
    run_dir = reference.run_dir
    assert reference.summary["status"] == "completed"
    # 96 samples / 16 = 6 micro-batches; accumulation 4 → steps of 4 and 2 micro-batches
    assert reference.summary["steps_per_epoch"] == 2 and reference.summary["steps"] == 8
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_002.pt", "epoch_004.pt"]
    rows = read_metrics_rows(run_dir / "metrics.csv")
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    # the LR logged after epoch e is the schedule's value at the next step
    cfg = tiny_config(run_dir.parent)
    assert [r["lr"] for r in rows] == pytest.approx(
        [cfg.optim.lr * lr_factor(s, cfg.schedule, 2, 8) for s in (2, 4, 6, 8)])
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["best_val_acc"] == max(r["val_acc"] for r in rows)
    assert saved["config_hash"] == runs.config_hash(cfg)


CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import vqalab.engine as engine
    import vqalab.train as train
    from vqalab.config import build_config

    cfg = build_config(json.loads(open(sys.argv[1]).read()))
    kill_epoch, kill_call = int(sys.argv[2]), int(sys.argv[3])
    original_epoch, original_loss = train.train_one_epoch, train.compute_loss
    calls = []

    def killing_loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == kill_call:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally blocks: a hard kill
        return original_loss(*args, **kwargs)

    def epoch_then_kill(*args, **kwargs):
        if args[7] == kill_epoch:  # train_one_epoch(model, opt, sched, scaler, data, cfg, device, epoch, step)
            engine.compute_loss = train.compute_loss = killing_loss  # the step's and validation's
        return original_epoch(*args, **kwargs)

    train.train_one_epoch = epoch_then_kill
    train.fit(cfg)
""")


def test_run_killed_with_sigkill_resumes_to_identical_weights_and_metrics(tmp_path, data, reference):
    cfg = tiny_config(tmp_path / "runs")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "child.py").write_text(CHILD)
    # killed in the middle of epoch 4 (3rd micro-batch): epoch 3's metrics row is written, its
    # checkpoint is not (checkpoint_every 2), so resuming must drop that row and redo epochs 3-4
    proc = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "cfg.json"), "4", "3"],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    (killed,) = list((tmp_path / "runs" / "loop").iterdir())
    assert json.loads((killed / "summary.json").read_text())["status"] == "running"
    assert [r["epoch"] for r in read_metrics_rows(killed / "metrics.csv")] == [1, 2, 3]
    assert runs.latest_checkpoint(killed).name == "epoch_002.pt"

    result = fit(cfg, data=data, resume=killed)

    assert result.run_dir == killed
    assert list((tmp_path / "runs" / "loop").iterdir()) == [killed]  # same folder, no new run
    summary = assert_same_run(killed, reference.run_dir)
    assert [r["from_epoch"] for r in summary["resumed"]] == [2]


def test_resume_needs_restored_rng_to_be_exact(tmp_path, data, reference, monkeypatch):
    """Guard against a vacuous resume test: without the RNG restore (dropout masks change), the
    resumed run's weights differ from the reference."""
    cfg = tiny_config(tmp_path / "runs")
    # a run that stops after epoch 2 (its checkpoint written), then resumed without set_rng_state
    monkeypatch.setattr(train, "should_stop_early", lambda history, c: len(history) == 2)
    stopped = fit(cfg, data=data)
    summary_file = stopped.run_dir / "summary.json"
    runs.write_json(summary_file, {**json.loads(summary_file.read_text()), "status": "running"})
    monkeypatch.setattr(train, "should_stop_early", lambda history, c: False)
    monkeypatch.setattr(train, "set_rng_state", lambda state: None)
    fit(cfg, data=data, resume=stopped.run_dir)
    got = final_state(stopped.run_dir)["model_state"]
    want = final_state(reference.run_dir)["model_state"]
    assert not all(torch.equal(got[k], want[k]) for k in want)


def test_failed_checkpoint_save_keeps_the_previous_one_and_the_cli_resumes(tmp_path, data, reference,
                                                                         monkeypatch, capsys):
    cfg = tiny_config(tmp_path / "runs")
    real_save = torch.save
    saves = []

    def save_then_crash(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:  # the epoch-4 checkpoint: write part of it, then fail
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_crash)
    with pytest.raises(OSError, match="disk full"):
        fit(cfg, data=data)
    monkeypatch.setattr(torch, "save", real_save)
    (run_dir,) = list((tmp_path / "runs" / "loop").iterdir())
    files = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert files == ["epoch_002.pt"]  # no epoch_004.pt, no temporary left behind
    previous = torch.load(run_dir / "checkpoints" / "epoch_002.pt", weights_only=True)
    assert previous["epoch"] == 2 and previous["step"] == 4
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "disk full" in summary["error"]
    assert [r["epoch"] for r in read_metrics_rows(run_dir / "metrics.csv")] == [1, 2, 3, 4]

    assert cli_main(["train", "--resume", str(run_dir), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run_dir)
    assert_same_run(run_dir, reference.run_dir)


def test_atomic_save_over_an_existing_file_keeps_it_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    runs.save_checkpoint(path, {"w": torch.arange(3.0), "epoch": 1})

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"garbage")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runs.save_checkpoint(path, {"w": torch.zeros(3), "epoch": 2})
    kept = torch.load(path, weights_only=True)
    assert kept["epoch"] == 1 and torch.equal(kept["w"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_resume_refuses_a_different_config_and_returns_a_finished_run(reference):
    cfg = tiny_config(reference.run_dir.parents[1])
    other = cfg.model_copy(deep=True)
    other.optim.lr = 1e-2
    with pytest.raises(ConfigError, match=r"optim\.lr: run has 0\.003, config has 0\.01"):
        fit(other, resume=reference.run_dir)
    with pytest.raises(ConfigError, match="not a run folder"):
        fit(cfg, resume=reference.run_dir / "checkpoints")
    before = (reference.run_dir / "metrics.csv").read_text()
    result = fit(cfg, resume=reference.run_dir)  # completed: nothing to do, nothing rewritten
    assert result.summary["status"] == "completed"
    assert (reference.run_dir / "metrics.csv").read_text() == before


def test_forced_nan_loss_stops_the_run_as_diverged_with_step_and_lr(tmp_path, data, monkeypatch):
    cfg = tiny_config(tmp_path, grad_accum_steps=1)  # 6 steps per epoch
    original = train.compute_loss
    calls = []

    def nan_on_tenth_training_call(logits, batch, c, task):
        loss = original(logits, batch, c, task)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 10:
                return loss * math.nan
        return loss

    monkeypatch.setattr(engine, "compute_loss", nan_on_tenth_training_call)  # the training step's
    monkeypatch.setattr(train, "compute_loss", nan_on_tenth_training_call)  # validation's
    result = fit(cfg, data=data)
    s = json.loads((result.run_dir / "summary.json").read_text())
    assert s["status"] == "diverged"
    assert s["diverged_step"] == 9 and s["diverged_epoch"] == 2  # steps 0-8 done, step 9 is the 4th of epoch 2
    assert s["diverged_lr"] == pytest.approx(cfg.optim.lr * lr_factor(9, cfg.schedule, 6, 24))
    assert "non-finite loss at step 9" in s["error"]
    assert [r["epoch"] for r in read_metrics_rows(result.run_dir / "metrics.csv")] == [1]
    assert s["best_val_acc"] is not None and s["epochs"] == 1  # what finished before still counts


def test_non_finite_gradient_is_caught(tmp_path, data, monkeypatch):
    cfg = tiny_config(tmp_path)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm: torch.tensor(math.inf))
    result = fit(cfg, data=data)
    assert result.summary["status"] == "diverged" and result.summary["diverged_step"] == 0
    assert "non-finite gradient" in result.summary["error"]


def two_weight_model():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 4.0]]))
    return model, torch.optim.SGD(model.parameters(), lr=1.0)


def test_optimizer_step_unscales_then_clips_then_steps():
    model, optimizer = two_weight_model()
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)  # stands for the CUDA fp16 scaler
    scaler.scale(model(torch.tensor([[3.0, 4.0]])).sum()).backward()  # gradient (3, 4) × 8
    grad_norm = engine.optimizer_step(model, optimizer, scaler, clip_norm=1.0)
    assert grad_norm.item() == pytest.approx(5.0)  # measured on the unscaled gradient
    # clipped to norm 1 before the step: (3, 4) / 5
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[3.0 - 0.6, 4.0 - 0.8]]))
    model, optimizer = two_weight_model()
    model(torch.tensor([[3.0, 4.0]])).sum().backward()
    assert engine.optimizer_step(model, optimizer, engine.make_grad_scaler(torch.device("cpu"), "off"),
                                clip_norm=None).item() == pytest.approx(5.0)
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[0.0, 0.0]]))  # None: not clipped


def test_optimizer_step_skips_a_non_finite_gradient():
    model, optimizer = two_weight_model()
    model(torch.tensor([[math.inf, 1.0]])).sum().backward()
    grad_norm = engine.optimizer_step(model, optimizer, engine.make_grad_scaler(torch.device("cpu"), "off"), 1.0)
    assert not torch.isfinite(grad_norm)
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[3.0, 4.0]]))  # untouched


def test_huge_sgd_learning_rate_really_diverges(tmp_path, data):
    cfg = tiny_config(tmp_path)
    cfg.optim.name, cfg.optim.lr, cfg.train.clip_norm = "sgd", 1e12, None
    cfg.schedule.warmup_steps = 0
    result = fit(cfg, data=data)
    assert result.summary["status"] == "diverged"
    assert result.summary["diverged_lr"] == pytest.approx(1e12 * lr_factor(result.summary["diverged_step"], cfg.schedule, 2, 8))


def test_gradient_accumulation_equals_the_large_batch(tmp_path, data):
    """64-sample batches vs 32-sample micro-batches accumulated in pairs: the same updates. The
    last group is one short batch of 32 in both. The image encoder is frozen (BatchNorm in eval
    mode) and dropout off, so the batch split changes nothing but float rounding."""
    def run(batch_size, accum):
        cfg = tiny_config(tmp_path / f"b{batch_size}", epochs=1, batch_size=batch_size, grad_accum_steps=accum)
        cfg.model.update(freeze_image=True, dropout=0.0)
        cfg.optim.name = "sgd"
        cfg.schedule.name, cfg.schedule.warmup_steps = "constant", 0
        result = fit(cfg, data=data)
        return result, final_state(result.run_dir)["model_state"]

    (big, big_state), (small, small_state) = run(64, 1), run(32, 2)
    assert big.summary["steps"] == small.summary["steps"] == 2
    for key in big_state:
        torch.testing.assert_close(small_state[key], big_state[key], rtol=1e-5, atol=1e-6)
    # and it is not vacuous: without accumulation the 32-sample run takes 3 different steps
    plain = fit(tiny_config(tmp_path / "plain", epochs=1, batch_size=32, grad_accum_steps=1), data=data)
    assert plain.summary["steps"] == 3


def test_max_steps_stops_mid_epoch_and_checkpoints_the_last_epoch(tmp_path, data, monkeypatch):
    threads_seen = []
    real_epoch = train.train_one_epoch
    monkeypatch.setattr(train, "train_one_epoch",
                        lambda *a, **k: threads_seen.append(torch.get_num_threads()) or real_epoch(*a, **k))
    before = torch.get_num_threads()
    result = fit(tiny_config(tmp_path, max_steps=3, num_threads=1), data=data)  # 2 steps per epoch
    assert threads_seen == [1, 1] and torch.get_num_threads() == before  # set for the run, then restored
    assert result.summary["status"] == "completed"
    assert result.summary["steps"] == 3 and result.summary["epochs"] == 2
    assert runs.latest_checkpoint(result.run_dir).name == "epoch_002.pt"


def test_early_stopping_waits_patience_epochs_after_the_best(tmp_path, data, monkeypatch):
    accuracies = iter([0.3, 0.5, 0.4, 0.45, 0.9, 0.9])
    monkeypatch.setattr(train, "evaluate",
                        lambda model, d, c, device: (1.0, next(accuracies), torch.zeros(len(d.val), dtype=torch.long)))
    cfg = tiny_config(tmp_path, epochs=6, early_stop_patience=2)
    result = fit(cfg, data=data)
    assert result.summary["best_epoch"] == 2 and result.summary["epochs"] == 4  # epochs 3, 4 no better
    assert runs.latest_checkpoint(result.run_dir).name == "epoch_004.pt"


def test_early_stopping_on_val_loss_watches_the_lowest_loss(tmp_path, data, monkeypatch):
    # val_acc keeps rising; val_loss is lowest at epoch 2: the run stops 2 epochs later anyway
    results = iter([(0.9, 0.1), (0.5, 0.2), (0.7, 0.3), (0.6, 0.4), (0.8, 0.5), (0.4, 0.6)])
    monkeypatch.setattr(train, "evaluate",
                        lambda model, d, c, device: (*next(results), torch.zeros(len(d.val), dtype=torch.long)))
    cfg = tiny_config(tmp_path, epochs=6, early_stop_patience=2, early_stop_metric="val_loss")
    result = fit(cfg, data=data)
    assert result.summary["best_epoch"] == 2 and result.summary["epochs"] == 4
    assert result.summary["best_val_loss"] == 0.5 and result.summary["best_val_acc"] == 0.4
    assert runs.latest_checkpoint(result.run_dir).name == "epoch_004.pt"
    assert not train.should_stop_early([{"epoch": 1, "val_loss": 1.0, "val_acc": 0.0},
                                        {"epoch": 2, "val_loss": 0.9, "val_acc": 0.0}], cfg)


def test_a_run_resumes_on_another_device(tmp_path, data, reference, monkeypatch):
    """train.device may change between a run and its resumption: the checkpoint is mapped to the
    CPU and its states copied to the new device (here from 'auto' to 'cpu', the same CPU
    without CUDA)."""
    cfg = tiny_config(tmp_path / "runs")  # device "auto", as the reference
    real_epoch = train.train_one_epoch

    def interrupted_in_epoch_3(*args, **kwargs):
        if args[7] == 3:  # train_one_epoch(model, opt, sched, scaler, data, cfg, device, epoch, step)
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", interrupted_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, data=data)
    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    (run_dir,) = list((tmp_path / "runs" / "loop").iterdir())
    mapped_to = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: mapped_to.append(kw["map_location"]) or real_load(*a, **kw))
    resumed = fit(tiny_config(tmp_path / "runs", device="cpu"), data=data, resume=run_dir)
    assert mapped_to == ["cpu"]  # whatever device saved the tensors
    summary = assert_same_run(resumed.run_dir, reference.run_dir)
    assert summary["device"] == "cpu" and [r["from_epoch"] for r in summary["resumed"]] == [2]


def test_mixup_blends_images_and_is_a_function_of_the_seed():
    batch = {"image": torch.arange(4 * 3 * 2 * 2, dtype=torch.float).reshape(4, 3, 2, 2),
             "target": torch.tensor([0, 1, 2, 3])}
    mixed, lam, perm = train.mix_batch(batch, np.random.default_rng([7, 1, train.MIXUP_STREAM]), alpha=0.4)
    assert 0 <= lam <= 1 and sorted(perm.tolist()) == [0, 1, 2, 3]
    torch.testing.assert_close(mixed["image"], lam * batch["image"] + (1 - lam) * batch["image"][perm])
    assert torch.equal(mixed["target"], batch["target"])  # labels are mixed in the loss, not here
    again, lam2, perm2 = train.mix_batch(batch, np.random.default_rng([7, 1, train.MIXUP_STREAM]), alpha=0.4)
    assert lam2 == lam and torch.equal(perm2, perm) and torch.equal(again["image"], mixed["image"])


def test_mixup_on_a_vqa_data_set_is_refused_before_training(tmp_path, data):
    cfg = tiny_config(tmp_path, mixup_alpha=0.2)
    with pytest.raises(ConfigError, match=r"train\.mixup_alpha = 0\.2: .*data 'easy_vqa'"):
        fit(cfg, data=data)
    assert not (tmp_path / "loop").exists()  # no run folder was created


def faces_config(runs_root, mixup_alpha):
    return build_config({
        "experiment": "mixup", "seed": 1, "runs_root": str(runs_root),
        "model": {"name": "fer_pixel_linear"},
        "data": {"name": "synthetic_faces", "num_train": 64, "num_val": 32, "image_size": 16, "use_cache": False},
        "train": {"epochs": 2, "batch_size": 16, "mixup_alpha": mixup_alpha, "num_threads": 1, "progress": False},
    })


def test_mixup_trains_image_classifiers_reproducibly(tmp_path, monkeypatch):
    seen = []
    real_mix = train.mix_batch

    def spy(batch, rng, alpha):
        mixed, lam, perm = real_mix(batch, rng, alpha)
        seen.append(lam)
        return mixed, lam, perm

    monkeypatch.setattr(train, "mix_batch", spy)
    plain = fit(faces_config(tmp_path, 0.0))
    assert seen == []  # alpha 0: mixup off
    mixed = fit(faces_config(tmp_path, 0.4))
    assert len(seen) == 8 and len(set(seen)) == 8  # 2 epochs × 4 batches, a new λ each
    again = fit(faces_config(tmp_path, 0.4))
    assert seen[8:] == seen[:8]  # λ and the pairing are a function of (seed, epoch)
    w_plain, w_mixed, w_again = (final_state(r.run_dir)["model_state"] for r in (plain, mixed, again))
    assert all(torch.equal(w_mixed[k], w_again[k]) for k in w_mixed)
    assert not torch.equal(w_mixed["head.weight"], w_plain["head.weight"])
    assert mixed.summary["status"] == "completed" and mixed.summary["data"]["dataset"] == "synthetic_faces"


# --- Segmentation (map-view masks) -----------------------------------------------------------------

def segmentation_config(runs_root, **train_overrides):
    return build_config({
        "experiment": "seg", "name": "tiny_cvt", "runs_root": str(runs_root),
        "model": {"name": "cvt", "dim": 16, "num_heads": 2, "bev_size": 4, "backbone_channels": 8},
        "data": {"name": "synthetic_views", "num_train": 16, "num_val": 8, "num_cameras": 2, "image_size": 16,
                 "map_size": 8},
        "optim": {"lr": 3e-3},
        "train": {"epochs": 2, "batch_size": 8, "loss": "bce", "num_threads": 1, "progress": False,
                  **train_overrides},
    })


def test_segmentation_run_scores_iou_over_the_validation_split(tmp_path):
    from vqalab.metrics import iou_counts
    from vqalab.runs import model_from_checkpoint

    cfg = segmentation_config(tmp_path)
    result = fit(cfg)
    assert result.summary["status"] == "completed" and result.summary["task"] == "segmentation"
    assert not (result.run_dir / "confusion_matrix.csv").exists() and not (result.run_dir / "val_predictions.csv").exists()
    rows = runs.read_metrics_rows(result.run_dir / "metrics.csv")
    model, _ = model_from_checkpoint(result.run_dir / "checkpoints" / "epoch_002.pt")
    data = build_data(cfg.data)
    batch = data.collate([data.val[i] for i in range(len(data.val))])
    with torch.no_grad():
        logits = model.eval()(batch["images"], batch["intrinsics"], batch["extrinsics"])
    inter, union = iou_counts(torch.sigmoid(logits), batch["mask"])
    assert rows[-1]["val_acc"] == pytest.approx(inter / union)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["mask"]).item()
    assert rows[-1]["val_loss"] == pytest.approx(bce, rel=1e-5)


def test_segmentation_with_cross_entropy_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="train.loss = 'ce': data 'synthetic_views' is a segmentation data set"):
        fit(segmentation_config(tmp_path, loss="ce"))
    assert not list(tmp_path.rglob("params.yaml"))


# --- Device reads: the loop waits for the device only every train.log_every_steps steps ----------

# Tensor methods that copy a value to the host, so the caller waits for the device to finish.
HOST_SYNC_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")
LOOP_FILES = {str(Path(train.__file__).resolve()), str(Path(engine.__file__).resolve())}


@pytest.fixture
def loop_device_reads(monkeypatch):
    """Counts the calls of ``HOST_SYNC_METHODS`` made from the loop's own code (train.py and
    engine.py), not those made inside torch: a list of (method name, calling function)."""
    reads = []

    def counted(name, original):
        def method(self, *args, **kwargs):
            caller = sys._getframe(1).f_code
            if str(Path(caller.co_filename).resolve()) in LOOP_FILES:
                reads.append((name, caller.co_name))
            return original(self, *args, **kwargs)
        return method

    for name in HOST_SYNC_METHODS:
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    return reads


def three_step_training(tmp_path, data, log_every_steps):
    """What ``fit`` trains with for 3 optimizer steps: 96 samples, micro-batches of 16, 2 per step."""
    cfg = tiny_config(tmp_path, epochs=1, grad_accum_steps=2, log_every_steps=log_every_steps)
    return train.prepare_training(cfg, data, engine.select_device("cpu"), None)


def run_epoch(t):
    return train.train_one_epoch(t.model, t.optimizer, t.scheduler, t.scaler, t.data, t.cfg, t.device,
                                 epoch=1, step=0)


def test_the_read_counter_counts_the_loop_codes_reads_only(loop_device_reads):
    """Guard against a vacuous count: a read in train.py is counted; one in torch's own code
    (clip_grad_norm_ checking its norm) or in this file is not."""
    log = train.DeviceLog(1, check_gradients=True, monitor=None)
    log.micro_batch(torch.tensor(0.5), 4, step=0, lr=1e-3)
    log.read()
    weight = torch.nn.Parameter(torch.ones(2))
    weight.grad = torch.ones(2)
    torch.nn.utils.clip_grad_norm_([weight], 1.0, error_if_nonfinite=True)  # `if` on a tensor, in torch
    assert bool(torch.tensor(1.0)) and weight.grad.sum().item() == pytest.approx(2**0.5)  # in this file
    assert loop_device_reads == [("tolist", "read")]
    assert log.loss_sum == pytest.approx(2.0)


@pytest.mark.parametrize(("log_every_steps", "reads"), [(2, 2), (1, 3)])
def test_the_loop_reads_the_device_every_log_every_steps_and_at_the_epochs_end(
        tmp_path, data, loop_device_reads, log_every_steps, reads):
    """3 steps with log_every_steps 2: one read after step 2, one at the epoch's end; with 1: one
    after each step (the end then has nothing left to read)."""
    t = three_step_training(tmp_path, data, log_every_steps)
    loop_device_reads.clear()  # building the model may read values
    row, step = run_epoch(t)
    assert step == 3 and row["step"] == 3
    assert loop_device_reads == [("tolist", "read")] * reads
    assert math.isfinite(row["train_loss"]) and row["train_loss"] > 0  # the reads carried the losses


@pytest.mark.parametrize("nan_step", [0, 1])
def test_a_nan_between_two_reads_is_reported_at_its_own_step(tmp_path, data, monkeypatch, nan_step):
    """The NaN is seen at the read after step 2 (0-based steps 0, 1): ``Diverged`` names the step
    whose loss it was and that step's LR, not the step of the read."""
    t = three_step_training(tmp_path, data, log_every_steps=2)
    original = engine.compute_loss
    losses, steps_taken = [], []

    def nan_in_step(logits, batch, c, task):
        loss = original(logits, batch, c, task)
        losses.append(1)
        return loss * math.nan if len(losses) == 2 * nan_step + 1 else loss  # its first micro-batch

    real_step = train.optimizer_step
    monkeypatch.setattr(engine, "compute_loss", nan_in_step)
    monkeypatch.setattr(train, "optimizer_step", lambda *a, **k: steps_taken.append(1) or real_step(*a, **k))
    with pytest.raises(train.Diverged) as raised:
        run_epoch(t)
    assert len(steps_taken) == 2  # the run went on to the read after step 2
    err = raised.value
    assert (err.step, err.what, err.epoch) == (nan_step, "loss", 1)
    assert err.lr == pytest.approx(t.cfg.optim.lr * lr_factor(nan_step, t.cfg.schedule, 3, 3))
