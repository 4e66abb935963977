"""``train.compile``: one function (``engine.build_model``) wraps the model in ``torch.compile`` for
fit, bench and lr-find alike; checkpoints hold the plain module's weights. The real inductor runs
once per model family on the CPU (slow: each compile takes CPU time)."""

import shutil

import pytest
import torch
import yaml
from conftest import TINY
from device_checks import interrupt_in_epoch
from torch import nn

from vqalab import bench, engine, lr_find, runs, train
from vqalab.config import build_config
from vqalab.data import build_data
from vqalab.registry import ConfigError

FER_DATA = {"name": "synthetic_faces", "num_train": 16, "num_val": 8, "image_size": 16}
FER_MODEL = {"name": "ir_cls", "backbone_depth": 18, "width": 0.125, "depth": 1}


class FakeCompiled(nn.Module):
    """Stands for ``torch.compile``'s OptimizedModule: the module as ``_orig_mod`` (state_dict keys
    prefixed ``_orig_mod.``), calls passed through."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self._orig_mod = model

    def forward(self, *args, **kwargs):
        return self._orig_mod(*args, **kwargs)


@pytest.fixture
def compile_calls(monkeypatch):
    calls = []

    def fake_compile(model, *, mode=None, **kwargs):
        calls.append(mode)
        return FakeCompiled(model)

    monkeypatch.setattr(torch, "compile", fake_compile)
    return calls


def compiled_config(tmp_path, mode="reduce-overhead", **train_overrides):
    return build_config({**TINY, "runs_root": str(tmp_path / "runs"), "experiment": "compile",
                         "train": {**TINY["train"], "compile": True, "compile_mode": mode, "epochs": 1,
                                   "max_steps": 2, "num_threads": 1, "progress": False, "tensorboard": False,
                                   **train_overrides}})


def test_fit_compiles_records_it_and_saves_plain_weights(tmp_path, compile_calls, data):
    result = train.fit(compiled_config(tmp_path), data=data)
    assert compile_calls == ["reduce-overhead"]
    assert (result.summary["compile"], result.summary["compile_mode"]) == (True, "reduce-overhead")
    path = runs.latest_checkpoint(result.run_dir)
    keys = runs.load_checkpoint(path)["model_state"].keys()
    assert keys and not any(k.startswith("_orig_mod.") for k in keys)
    plain, _ = runs.model_from_checkpoint(path)  # an uncompiled model takes the weights as they are
    assert not isinstance(plain, FakeCompiled) and plain.state_dict().keys() == keys


def test_a_compiled_run_resumes_compiled_or_not(tmp_path, compile_calls, data, monkeypatch):
    """The checkpoint's plain keys load into the module inside the wrapper; a resume may also drop
    torch.compile (a machine without a C compiler), and summary.json then says so."""
    for resume_compiled in (True, False):
        cfg = compiled_config(tmp_path / str(resume_compiled), mode="default", epochs=2, max_steps=None)
        with monkeypatch.context() as patch:
            interrupt_in_epoch(patch, 2)
            with pytest.raises(KeyboardInterrupt):
                train.fit(cfg, data=data)
        (run_dir,) = (tmp_path / str(resume_compiled) / "runs" / "compile").iterdir()
        again = cfg.model_copy(deep=True)
        again.train.compile = resume_compiled
        resumed = train.fit(again, data=data, resume=run_dir)
        assert resumed.summary["status"] == "completed" and resumed.summary["compile"] is resume_compiled
    assert compile_calls == ["default", "default", "default"]


def test_a_run_started_before_train_compile_existed_resumes(tmp_path, data, monkeypatch):
    cfg = compiled_config(tmp_path, compile=False, epochs=2, max_steps=None)
    with monkeypatch.context() as patch:
        interrupt_in_epoch(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            train.fit(cfg, data=data)
    (run_dir,) = (tmp_path / "runs" / "compile").iterdir()
    params = yaml.safe_load((run_dir / "params.yaml").read_text())
    del params["train"]["compile"], params["train"]["compile_mode"]  # as an older vqalab wrote it
    (run_dir / "params.yaml").write_text(yaml.safe_dump(params))
    assert train.fit(build_config(params), data=data, resume=run_dir).summary["status"] == "completed"
    params["train"]["clip_norm"] = 2.0
    (run_dir / "params.yaml").write_text(yaml.safe_dump(params))  # a real difference is still refused
    with pytest.raises(ConfigError, match=r"train\.clip_norm: run has 2\.0, config has None"):
        train.prepare_resume(cfg, run_dir)


def test_bench_and_lr_find_compile_through_the_same_function(tmp_path, compile_calls, data):
    cfg = compiled_config(tmp_path, mode="max-autotune")
    rows = bench.throughput_sweep(cfg, batch_sizes=[4], warmup_steps=0, timed_steps=1, rounds=1,
                                  end_to_end=False, data=data)
    assert compile_calls == ["max-autotune"] and rows["compile"].tolist() == [True]
    found = lr_find.lr_range_test(cfg, num_steps=3, data=data)
    assert compile_calls == ["max-autotune"] * 2
    assert (found.settings["compile"], found.settings["compile_mode"]) == (True, "max-autotune")
    bench.flops_report(cfg, data=data)  # FLOPs are counted on the eager model
    assert len(compile_calls) == 2
    off = bench.throughput_sweep(cfg, batch_sizes=[4], warmup_steps=0, timed_steps=1, rounds=1,
                                 end_to_end=False, compile_model=False, data=data)
    assert len(compile_calls) == 2 and off["compile"].tolist() == [False]


def test_compile_mode_is_validated():
    with pytest.raises(ConfigError, match=r"train\.compile_mode = 'fast'.*'default', 'reduce-overhead' or 'max-autotune'"):
        build_config({"train": {"compile": True, "compile_mode": "fast"}})


needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile's inductor needs a C compiler (cc)")


@pytest.mark.heavy
@needs_cc
@pytest.mark.parametrize("family", ["vqa", "fer"])
def test_inductor_steps_like_eager_on_the_cpu(family):
    """A real torch.compile (inductor, CPU) of one model per family, built as fit builds it: dynamo
    made graphs, and one training step gives the eager step's loss, gradient norm and weights.
    Slow: a cold compile of one step takes tens of seconds on two cores (FX graph cache: less again)."""
    if family == "vqa":
        tree = {**TINY, "data": {**TINY["data"], "max_train_samples": 16, "max_val_samples": 8}}
    else:
        tree = {"model": FER_MODEL, "data": FER_DATA}
    # plain SGD: the step moves each weight by lr × its gradient (Adam's first step is about ±lr
    # wherever a gradient is not zero, whatever its size)
    cfg = build_config({**tree, "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.0},
                        "train": {"batch_size": 8, "device": "cpu", "compile": True}})
    data = build_data(cfg.data)
    batch = engine.to_device(bench.fixed_batch(data, 8, cfg.seed), torch.device("cpu"))
    steps = {}
    for compiled in (False, True):
        engine.seed_everything(cfg.seed)
        model = engine.build_model(cfg, data, torch.device("cpu"), compile_model=compiled)
        optimizer = engine.build_optimizer(model, cfg)
        graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        loss, grad_norm = engine.training_step(model, optimizer, engine.make_grad_scaler(torch.device("cpu"), "off"),
                                              batch, input_keys=data.input_keys, task=data.task, cfg=cfg, device=torch.device("cpu"),
                                              amp="off")
        assert (torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs_before) == compiled
        steps[compiled] = (loss, grad_norm, engine.uncompiled(model).state_dict())
    (eager_loss, eager_norm, eager_state), (loss, norm, state) = steps[False], steps[True]
    assert state.keys() == eager_state.keys()  # no _orig_mod. prefix: loads into a plain model
    torch.testing.assert_close(loss, eager_loss, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(norm, eager_norm, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(state, eager_state, rtol=1e-3, atol=1e-5)
