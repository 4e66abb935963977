import json
import math
import weakref
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
import yaml
from conftest import TINY
from torch import nn

from vqalab import bench, engine
from vqalab.bench import auto_batch_size
from vqalab.cli import main
from vqalab.config import build_config
from vqalab.data import build_data
from vqalab.data.samplers import epoch_batches
from vqalab.models import create_model
from vqalab.models.layers import ClassAttention, SelfAttention
from vqalab.registry import ConfigError
from vqalab.threads import ThreadChoice

# Lab note 002's batch-size table (images/s): the lab picked 256 by eye.
LAB_NOTE_002 = {1: 125, 2: 248, 4: 509, 8: 959, 16: 1279, 32: 1359, 64: 1449, 128: 1543, 256: 1591, 512: 1602}


def table(throughputs: dict, status: dict | None = None) -> pd.DataFrame:
    status = status or {}
    return pd.DataFrame([{"batch_size": b, "status": status.get(b, "ok"),
                          "samples_per_s": math.nan if status.get(b) == "oom" else v}
                         for b, v in throughputs.items()])


# --- FLOP counter against hand counts --------------------------------------------------------


def test_flops_of_a_linear_layer_match_the_hand_count():
    layer = nn.Linear(3, 4)
    x = torch.randn(5, 3)
    # forward: 5×3×4 = 60 multiply-adds = 120 FLOPs (the bias add is element-wise: not counted)
    assert bench.count_flops(lambda: layer(x)) == 120
    # backward without an input gradient: only dW = dYᵀ X, another 60 multiply-adds
    assert bench.count_flops(lambda: layer(x).sum().backward()) == 240
    # with an input gradient: dX = dY W as well
    x.requires_grad_(True)
    assert bench.count_flops(lambda: layer(x).sum().backward()) == 360


def test_flops_of_a_convolution_match_the_hand_count():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    x = torch.randn(2, 3, 10, 10)
    macs = 2 * 8 * 10 * 10 * (3 * 3 * 3)  # batch × C_out × H_out × W_out × (C_in × k × k)
    assert bench.count_flops(lambda: conv(x)) == 2 * macs


def test_model_flops_per_sample_and_gmacs():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 5)

        def forward(self, image, extra):
            return self.fc(torch.cat([image, extra], dim=1))

    cfg = build_config({})
    batch = {"image": torch.randn(4, 4), "extra": torch.randn(4, 2), "target": torch.tensor([0, 1, 2, 3])}
    flops = bench.model_flops(TwoInputs(), batch, ("image", "extra"), cfg, "classification")
    assert flops == {"forward_flops": 2 * 4 * 6 * 5, "train_flops": 2 * (2 * 4 * 6 * 5)}
    summary = bench.flops_summary(flops, batch_size=4)
    assert summary["forward_gflops_per_sample"] == pytest.approx(2 * 6 * 5 / 1e9)
    assert summary["forward_gmacs_per_sample"] == pytest.approx(6 * 5 / 1e9)
    assert summary["train_gmacs_per_sample"] == pytest.approx(2 * 6 * 5 / 1e9)


def attention_macs(batch: int, queries: int, tokens: int, dim: int) -> int:
    """Multiply-adds of the products Q Kᵀ and P V over all heads (heads × d_head = dim)."""
    return batch * 2 * queries * tokens * dim


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_self_attention_flops_count_the_attention_products(device):
    b, t, dim, heads = 2, 50, 512, 8
    with torch.device(device):
        block = SelfAttention(dim=dim, num_heads=heads)
        x = torch.randn(b, t, dim)
    linear = b * t * dim * 3 * dim + b * t * dim * dim  # qkv and proj
    assert bench.count_flops(lambda: block(x)) == 2 * (linear + attention_macs(b, t, t, dim))
    # one block at batch 1: 54.99 M multiply-adds, of which 2.56 M in attention
    with torch.device(device):
        one = torch.randn(1, t, dim)
    assert bench.count_flops(lambda: block(one)) / 2 == 54_988_800
    # backward: weight and input gradients of both linears (2× their forward) and four attention
    # products (2× the forward's two), the same on every device
    x.requires_grad_(True)
    assert bench.count_flops(lambda: block(x).sum().backward()) == 2 * 3 * (linear + attention_macs(b, t, t, dim))


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_class_attention_flops_count_the_attention_products(device):
    b, t, dim, heads = 2, 17, 64, 4
    with torch.device(device):
        block = ClassAttention(dim=dim, num_heads=heads)
        x = torch.randn(b, t, dim)
    # query from the class token only; keys and values from all tokens; proj of the one output token
    linear = b * 1 * dim * dim + b * t * dim * 2 * dim + b * 1 * dim * dim
    assert bench.count_flops(lambda: block(x)) == 2 * (linear + attention_macs(b, 1, t, dim))


@pytest.mark.parametrize("name", ["ir50_vit", "ir50_cls"])
def test_fer_models_build_and_count_on_the_meta_device(name):
    kwargs = {"num_classes": 7, "img_size": 32, "backbone_depth": 18, "width": 0.125, "depth": 2, "drop_path": 0.1}
    with torch.device("meta"):
        meta_model = create_model(name, **kwargs)
        meta_x = torch.empty(1, 3, 32, 32)
    torch.manual_seed(0)
    cpu_model = create_model(name, **kwargs)
    assert next(meta_model.parameters()).is_meta
    assert [blk.drop_path.rate for blk in meta_model.blocks] == [blk.drop_path.rate for blk in cpu_model.blocks]
    assert meta_model.blocks[-1].drop_path.rate == pytest.approx(0.1)
    meta_model.eval(), cpu_model.eval()
    with torch.no_grad():
        assert bench.count_flops(lambda: meta_model(meta_x)) == bench.count_flops(
            lambda: cpu_model(torch.randn(1, 3, 32, 32)))


@pytest.mark.parametrize("arch, weights", [("resnet18", "ResNet18_Weights"), ("resnet50", "ResNet50_Weights")])
def test_resnet_flops_match_torchvision_published_ops(arch, weights):
    # torchvision's meta "_ops" is called GFLOPS but counts multiply-adds (GMACs).
    published = getattr(torchvision.models, weights).IMAGENET1K_V1.meta["_ops"]
    with torch.device("meta"):  # shapes only: no compute, no weights
        model = getattr(torchvision.models, arch)()
        x = torch.empty(1, 3, 224, 224)
    gmacs = bench.count_flops(lambda: model(x)) / 2e9
    assert gmacs == pytest.approx(published, rel=0.01)


# --- inputs, clocks, memory ------------------------------------------------------------------


def test_fixed_batch_is_the_training_loops_first_batch(cfg, data):
    first = epoch_batches(len(data.train), 8, cfg.seed, 1, data.train_groups)[0]
    batch = bench.fixed_batch(data, 8, cfg.seed)
    expected = data.collate([data.train[i] for i in first])
    assert torch.equal(batch["target"], expected["target"])
    assert torch.equal(batch["image"], expected["image"])
    big = bench.fixed_batch(data, len(data.train) + 3, cfg.seed)  # wraps around the split
    assert len(big["target"]) == len(data.train) + 3
    assert torch.equal(big["target"][-3:], big["target"][:3])


def test_representative_batches_are_the_first_training_batches(cfg, data):
    order = epoch_batches(len(data.train), 8, cfg.seed, 1, data.train_groups)
    batches = bench.training_batches_at(data, 8, cfg.seed, 3)
    for batch, indices in zip(batches, order[:3]):
        assert torch.equal(batch["target"], data.collate([data.train[i] for i in indices])["target"])
    assert not torch.equal(batches[0]["image"], batches[1]["image"])  # distinct batches, not one repeated


def record_steps(monkeypatch) -> list[dict]:
    """Spy on ``bench.training_step``: the batches each measured step gets."""
    seen, step = [], bench.training_step

    def spy(model, optimizer, scaler, batch, **kwargs):
        seen.append(batch)
        return step(model, optimizer, scaler, batch, **kwargs)

    monkeypatch.setattr(bench, "training_step", spy)
    return seen


def test_model_step_cycles_through_distinct_batches(monkeypatch, cfg, data):
    seen = record_steps(monkeypatch)
    measured = bench.measure_training(cfg, 4, data=data, device=torch.device("cpu"), warmup_steps=1,
                                      timed_steps=4, num_batches=3)
    assert len(measured["times"]) == 4 and measured["peak_memory_mb"] > 0
    expected = bench.training_batches_at(data, 4, cfg.seed, 3)
    # warm-up step + 4 timed steps: batches 0, 1, 2, 0, 1
    assert [b["target"].tolist() for b in seen] == [expected[k]["target"].tolist() for k in (0, 1, 2, 0, 1)]


def test_end_to_end_steps_take_the_loaders_batches_in_training_order(monkeypatch, cfg, data):
    seen = record_steps(monkeypatch)
    n = len(data.train)
    batch_size = 24  # 64 items: batches of 24, 24, 16, then epoch 2
    times = bench.measure_end_to_end(cfg, batch_size, data=data, device=torch.device("cpu"), warmup_steps=1,
                                     timed_steps=3)
    assert len(times) == 3 and all(t > 0 for t in times)
    epoch1 = epoch_batches(n, batch_size, cfg.seed, 1, data.train_groups)
    epoch2 = epoch_batches(n, batch_size, cfg.seed, 2, data.train_groups)
    expected = [data.collate([data.train[i] for i in idx])["target"].tolist() for idx in epoch1 + epoch2[:1]]
    assert [b["target"].tolist() for b in seen] == expected


def test_sweep_rows_give_median_spread_and_end_to_end(cfg, data):
    rows = bench.throughput_sweep(cfg, batch_sizes=[2, 4], warmup_steps=0, timed_steps=2, rounds=3, data=data)
    assert rows["batch_size"].tolist() == [2, 4] and (rows["rounds"] == 3).all()
    for _, r in rows.iterrows():
        for prefix in ("", "e2e_"):
            per_round = np.array(r[f"{prefix}samples_per_s_rounds"])
            assert len(per_round) == 3 and (per_round > 0).all()
            assert r[f"{prefix}samples_per_s"] == pytest.approx(np.median(per_round))
            assert r[f"{prefix}samples_per_s_min"] <= r[f"{prefix}samples_per_s_q1"] <= r[f"{prefix}samples_per_s"]
            assert r[f"{prefix}samples_per_s"] <= r[f"{prefix}samples_per_s_q3"] <= r[f"{prefix}samples_per_s_max"]
            q1, q3 = np.percentile(per_round, [25, 75])
            assert r[f"{prefix}spread"] == pytest.approx((q3 - q1) / np.median(per_round))
        assert r["input_share"] == pytest.approx(1 - r["e2e_samples_per_s"] / r["samples_per_s"])
    text = bench.format_throughput_table(rows)
    assert text.splitlines()[0].split()[:4] == ["batch", "status", "model", "samples/s"]
    assert "end-to-end" in text and "%" in text
    assert bench.limiting_part(rows, 4)["limit"] in {"model step", "input pipeline"}
    model_only = bench.throughput_sweep(cfg, batch_sizes=[2], warmup_steps=0, timed_steps=1, rounds=1,
                                        end_to_end=False, data=data)
    assert "e2e_samples_per_s" not in model_only and model_only["spread"].iloc[0] == 0
    with pytest.raises(ConfigError, match="rounds = 0: expected an integer ≥ 1"):
        bench.throughput_sweep(cfg, batch_sizes=[2], rounds=0, data=data)


def test_time_calls_synchronises_before_every_clock_read(monkeypatch):
    events = []
    monkeypatch.setattr(bench, "synchronize", lambda device: events.append("sync"))
    ticks = iter(range(100))

    def clock():
        events.append("clock")
        return float(next(ticks)) ** 2  # call k lasts (2k+1)² − (2k)² = 4k + 1 ticks

    times = bench.time_calls(lambda: events.append("call"), torch.device("cuda"), warmup=2, repeats=3, clock=clock)
    assert events == ["call", "call"] + ["sync", "clock", "call", "sync", "clock"] * 3
    assert times == [1.0, 5.0, 9.0]


def test_synchronize_waits_for_cuda_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    bench.synchronize(torch.device("cpu"))
    assert calls == []
    bench.synchronize(torch.device("cuda", 0))
    assert calls == [torch.device("cuda", 0)]


def test_amp_applies_on_the_cpu_too_and_is_checked():
    assert bench.effective_amp("bf16", torch.device("cpu")) == "bf16"
    assert bench.effective_amp("fp16", torch.device("cuda")) == "fp16"
    with pytest.raises(ConfigError, match="amp = 'fp8'"):
        bench.effective_amp("fp8", torch.device("cpu"))


@pytest.mark.parametrize("err, expected", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
    (ValueError("out of memory"), False),
])
def test_is_out_of_memory(err, expected):
    assert bench.is_out_of_memory(err) is expected


def test_model_and_data_mismatch_is_a_clear_error():
    cfg = build_config({"model": {"name": "ir50_vit"}, "data": {"name": "easy_vqa"}})
    with pytest.raises(ConfigError, match="model 'ir50_vit' does not take vocab_size, num_answers from data 'easy_vqa'"):
        engine.check_model_fits_data(cfg, SimpleNamespace(model_kwargs={"vocab_size": 9, "num_answers": 3}))


# --- the sweep -------------------------------------------------------------------------------

OOM_FROM = 8  # the simulated allocator fails from this batch size on


def failing_allocator(monkeypatch, make_error):
    """Models whose forward fails like the allocator does once the batch reaches OOM_FROM."""
    built = []

    def create(name, **kwargs):
        model = create_model(name, **kwargs)

        def allocate(module, args, kwargs):
            if kwargs["image"].shape[0] >= OOM_FROM:
                raise make_error()

        model.register_forward_pre_hook(allocate, with_kwargs=True)
        built.append(weakref.ref(model))
        return model

    monkeypatch.setattr(engine, "create_model", create)
    return built


@pytest.mark.parametrize("make_error", [lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
                                        lambda: RuntimeError("CUDA error: out of memory")])
def test_sweep_records_oom_and_stops_going_up(monkeypatch, cfg, data, make_error):
    built = failing_allocator(monkeypatch, make_error)
    monkeypatch.setattr(bench, "choose_threads", lambda requested: ThreadChoice(1, "1 free (a fake machine)"))
    rows = bench.throughput_sweep(cfg, batch_sizes=[16, 1, 4, 8, 32], warmup_steps=1, timed_steps=2,
                                  rounds=2, amp="bf16", data=data)
    assert rows["batch_size"].tolist() == [1, 4, 8]  # sorted; 16 and 32 never tried
    assert rows["status"].tolist() == ["ok", "ok", "oom"]
    # round 1 (ascending): model step and end to end at 1 and 4, then 8 fails; round 2 (descending): 4, 1
    assert len(built) == 2 + 2 + 1 + 2 + 2
    assert rows["rounds"].tolist() == [2, 2, 0]
    oom = rows.iloc[-1]
    assert math.isnan(oom["samples_per_s"]) and "out of memory" in oom["error"]
    ok = rows[rows["status"] == "ok"]
    assert (ok["samples_per_s"] > 0).all() and (ok["peak_memory_mb"] > 0).all()
    # each round's throughput is the batch over its mean step time; the row gives their median
    assert ok["samples_per_s"].tolist() == pytest.approx([np.median(r) for r in ok["samples_per_s_rounds"]])
    assert set(ok["memory_kind"]) == {"cpu_peak_rss"}  # reset per batch size on Linux
    # options are recorded in every row, AMP as actually used (CPU autocast)
    assert set(rows["amp"]) == {"bf16"} and set(rows["channels_last"]) == {False} and set(rows["compile"]) == {False}
    assert set(rows["cpu_threads"]) == {1} and set(rows["threads_reason"]) == {"1 free (a fake machine)"}
    # the model that ran out of memory was released
    assert built[4]() is None
    assert bench.recommend_batch_size(rows)["sentence"].endswith("Batch size 8 ran out of memory.")


def test_sweep_does_not_hide_other_errors(monkeypatch, cfg, data):
    failing_allocator(monkeypatch, lambda: RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        bench.throughput_sweep(cfg, batch_sizes=[8], warmup_steps=0, timed_steps=1, data=data)


def test_sweep_runs_with_the_configured_threads_and_restores_them(cfg, data):
    before = torch.get_num_threads()
    threads = 1 if before > 1 else 2
    one = build_config({**TINY, "train": {**TINY["train"], "num_threads": threads}})
    rows = bench.throughput_sweep(one, batch_sizes=[2], warmup_steps=0, timed_steps=1, data=data)
    assert rows["cpu_threads"].tolist() == [threads]
    assert torch.get_num_threads() == before


def test_sweep_rejects_bad_arguments_before_compute(cfg):
    with pytest.raises(ConfigError, match=r"batch_sizes = \[0, 2\]: expected a list of positive integers"):
        bench.throughput_sweep(cfg, batch_sizes=[0, 2])
    with pytest.raises(ConfigError, match="batch_sizes = '\\[1,2\\]'"):
        bench.throughput_sweep(cfg, batch_sizes="[1,2]")
    with pytest.raises(ConfigError, match="timed_steps = 0"):
        bench.throughput_sweep(cfg, batch_sizes=[2], timed_steps=0)


def test_training_step_updates_the_weights(cfg, data):
    model = engine.build_model(cfg, data, torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = engine.make_grad_scaler(torch.device("cpu"), "off")
    assert not scaler.is_enabled()  # loss scaling is for fp16 only
    batch = bench.fixed_batch(data, 4, cfg.seed)
    before = [p.detach().clone() for p in model.parameters()]
    loss, grad_norm = engine.training_step(model, optimizer, scaler, batch, input_keys=data.input_keys, task=data.task,
                                          cfg=cfg, device=torch.device("cpu"), amp="off")
    assert torch.isfinite(loss) and torch.isfinite(grad_norm) and grad_norm > 0
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()) if p.requires_grad)


# --- the recommendation rule -----------------------------------------------------------------

# A curve with a knee: 64 and above are within 3% of the best (128), 32 is 20% below it.
KNEE = {1: 300, 2: 590, 4: 1150, 8: 2100, 16: 2900, 32: 3650, 64: 4480, 128: 4550, 256: 4500, 512: 4400}


def noisy_table(true: dict, rng: np.random.Generator, *, rounds: int = 5, load: float = 0.3,
                jitter: float = 0.015) -> pd.DataFrame:
    """Sweep rows as ``throughput_sweep`` makes them, with one timed step per round. A shared
    machine's noise: each round's load slows every size alike (log-normal, ``load``), and each
    measurement has its own jitter."""
    slowdown = np.exp(load * rng.standard_normal(rounds))
    rows = []
    for b, samples_per_s in true.items():
        measured = samples_per_s * np.exp(jitter * rng.standard_normal(rounds)) / slowdown
        rows.append({"batch_size": b, "status": "ok", "rounds": rounds,
                     **bench.throughput_stats(b, [[b / v] for v in measured], prefix="")})
    return pd.DataFrame(rows)


def test_throughput_stats_of_rounds():
    stats = bench.throughput_stats(4, [[0.1, 0.1], [0.2, 0.2], [0.05, 0.05]], prefix="e2e_")
    assert stats["e2e_samples_per_s_rounds"] == pytest.approx([40, 20, 80])
    assert stats["e2e_samples_per_s"] == pytest.approx(40)
    assert (stats["e2e_samples_per_s_q1"], stats["e2e_samples_per_s_q3"]) == pytest.approx((30, 60))
    assert (stats["e2e_samples_per_s_min"], stats["e2e_samples_per_s_max"]) == pytest.approx((20, 80))
    assert stats["e2e_spread"] == pytest.approx(30 / 40)


def test_recommendation_is_the_same_over_repeated_noisy_sweeps():
    rng = np.random.default_rng(0)
    # jitter 3% a measurement: paired per-round ratios scatter by about 6% (IQR / median)
    tables = [noisy_table(KNEE, rng, jitter=0.03) for _ in range(200)]
    choices = [bench.recommend_batch_size(t) for t in tables]
    assert {c["batch_size"] for c in choices} == {64}
    # the former sweep (one timing per size, each size at a different moment, so under a different
    # load; smallest within 95% of the best) flips on the same draws
    single = [bench.recommend_batch_size(t.assign(samples_per_s=[r[i % len(r)] for i, r in
                                                                 enumerate(t["samples_per_s_rounds"])])
                                         .drop(columns=["samples_per_s_rounds", "spread"]))["batch_size"]
              for t in tables]
    assert len(set(single)) >= 3
    # the sentence states the noise
    c = choices[0]
    assert 0.02 < c["noise"] < 0.15 and c["tolerance"] == pytest.approx(max(0.1, c["noise"]))
    assert (f"median of 5 paired rounds; measurement noise {c['noise']:.1%}, the IQR of the per-round ratios"
            in c["sentence"])
    assert c["sentence"].startswith("Use batch size 64: ")


def test_agreement_says_whether_the_choice_is_settled():
    rng = np.random.default_rng(2)
    settled = noisy_table(KNEE, rng, jitter=0.03)
    assert bench.recommendation_agreement(settled) >= 0.9
    assert "Resampling the rounds gives the same choice" in bench.recommend_batch_size(settled)["sentence"]
    # 64 at 90% of the best: half the resamples put it inside the 10% band, half outside
    edge = noisy_table({32: 2000, 64: 4050, 128: 4500}, rng, rounds=9, jitter=0.08)
    agreement = bench.recommendation_agreement(edge)
    assert agreement < 0.9
    # the resamples split between 128 (all rounds' choice) and its neighbour 64: settled within a step
    choices = bench.resampled_choices(edge)
    assert set(choices) == {64, 128} and np.mean(choices == 128) == pytest.approx(agreement)
    near = bench.recommend_batch_size(edge)
    assert near["batch_size"] == 128 and near["settled"] and bench.neighbour_agreement(edge) == 1.0
    assert near["sentence"].endswith(f"Resampling the rounds gives the same choice {agreement:.0%} of the time, "
                                     "it or a neighbour 100%.")
    # heavy noise on a knee: the resamples stray two steps and more, so no size at all, the reason instead
    blurred = noisy_table(KNEE, np.random.default_rng(5), jitter=0.3)
    unsettled = bench.recommend_batch_size(blurred)
    assert unsettled["batch_size"] is None and unsettled["best_batch_size"] is None and not unsettled["settled"]
    near_share = bench.neighbour_agreement(blurred)
    assert near_share < 0.9
    sizes, counts = np.unique(bench.resampled_choices(blurred), return_counts=True)
    assert unsettled["reason"] == (
        f"resampling the 5 rounds gives the same size or a neighbour only {near_share:.0%} of the time (resamples "
        f"choose {', '.join(f'{b} ({c / counts.sum():.0%})' for b, c in zip(sizes, counts))}): the measurement "
        "noise blurs the plateau's edge; more rounds (--max-rounds) or a quieter machine would settle it")
    assert unsettled["sentence"] == f"Not settled, so no batch size is recommended: {unsettled['reason']}."
    assert math.isnan(bench.recommendation_agreement(table(LAB_NOTE_002)))  # one round: nothing to resample
    # the vectorised shares of a resample are those of the resampled table
    per_round = np.array(edge["samples_per_s_rounds"].tolist())
    draw = [0, 0, 3, 5, 8, 8, 2, 1, 4]
    share, noise = bench.paired_shares(per_round[None, :, draw])
    resampled = edge.assign(samples_per_s=np.median(per_round[:, draw], axis=1), samples_per_s_rounds=list(per_round[:, draw]))
    expected_share, expected_noise = bench.relative_to_best(resampled)
    assert share[0] == pytest.approx(expected_share.to_numpy()) and noise[0] == pytest.approx(expected_noise)


def with_load(rows: pd.DataFrame, others_busy: float, threads: int = 1, cores: int = 2) -> pd.DataFrame:
    """A hand-made sweep table with the load readings ``throughput_sweep`` records."""
    return rows.assign(others_busy_median=others_busy, others_busy_max=others_busy + 0.5, cpu_threads=threads,
                       cpu_cores=cores)


def test_a_clear_plateau_is_recommended_beside_one_busy_core():
    rng = np.random.default_rng(3)
    clear = noisy_table(KNEE, rng, jitter=0.02)
    # one core kept busy by another process, one thread timed on the other: a fair measurement (a burst
    # to 1.5 cores in some measurement, others_busy_max, is noise the rounds absorb)
    choice = bench.recommend_batch_size(with_load(clear, others_busy=1.0))
    assert choice["batch_size"] == 64 and choice["settled"] and choice["reason"] is None
    assert choice == bench.recommend_batch_size(clear)  # no readings (hand-made table): the same rule


def test_an_oversubscribed_sweep_recommends_no_size():
    # two threads beside one busy core: small batches stall most, so the curve keeps rising and the
    # rule alone would confidently pick 512 (the quiet machine's answer is 128)
    rising = noisy_table({32: 1500, 64: 2300, 128: 3000, 256: 3600, 512: 4200}, np.random.default_rng(4),
                         jitter=0.01, load=0.05)
    assert bench.recommend_batch_size(rising)["batch_size"] == 512
    choice = bench.recommend_batch_size(with_load(rising, others_busy=1.02, threads=2))
    assert choice["batch_size"] is None and choice["best_batch_size"] is None and not choice["settled"]
    assert choice["reason"].startswith("other processes kept 1.0 of the 2 cores busy (median of the measurements) "
                                       "while 2 thread(s) were timed")
    assert choice["sentence"].startswith("Not settled, so no batch size is recommended: other processes kept")
    # within the slack (half a core) the timings stand
    assert bench.recommend_batch_size(with_load(rising, others_busy=0.45, threads=2))["batch_size"] == 512
    # an out-of-memory row is still reported
    with_oom = pd.concat([with_load(rising, 1.5), pd.DataFrame([{"batch_size": 1024, "status": "oom",
                                                                  "samples_per_s": math.nan}])])
    assert bench.recommend_batch_size(with_oom)["sentence"].endswith("Batch size 1024 ran out of memory.")


def fake_measurements(monkeypatch, samples_per_s: dict, jitter: float, seed: int = 0) -> None:
    """measure_training / measure_end_to_end replaced by steps at the given throughput × noise."""
    rng = np.random.default_rng(seed)

    def times(batch_size, timed_steps):
        return list(batch_size / samples_per_s[batch_size] * np.exp(jitter * rng.standard_normal(timed_steps)))

    monkeypatch.setattr(bench, "measure_training", lambda cfg, b, **kw: {
        "times": times(b, kw["timed_steps"]), "peak_memory_mb": 1.0, "memory_kind": "cpu_peak_rss"})
    monkeypatch.setattr(bench, "measure_end_to_end", lambda cfg, b, **kw: times(b, kw["timed_steps"]))


def test_sweep_adds_rounds_until_the_choice_is_settled(monkeypatch, cfg, data):
    fake_measurements(monkeypatch, {8: 1000.0, 16: 2000.0, 32: 2050.0}, jitter=0.01)
    clear = bench.throughput_sweep(cfg, batch_sizes=[8, 16, 32], timed_steps=1, rounds=3, max_rounds=12, data=data)
    assert (clear["rounds"] == 3).all()  # settled after the first three rounds
    fake_measurements(monkeypatch, {8: 1000.0, 16: 1800.0, 32: 2000.0}, jitter=0.1)  # 16 at the 90% edge
    edge = bench.throughput_sweep(cfg, batch_sizes=[8, 16, 32], timed_steps=1, rounds=3, max_rounds=12, data=data)
    agreement = bench.recommendation_agreement(edge)
    assert (edge["rounds"] == 12).all() or agreement >= 0.9
    assert (edge["rounds"] > 3).all()
    with pytest.raises(ConfigError, match=r"max_rounds = 2: expected None or an integer ≥ rounds \(3\)"):
        bench.throughput_sweep(cfg, batch_sizes=[8], rounds=3, max_rounds=2, data=data)


def test_recommendation_picks_a_clearly_best_size_through_heavy_noise():
    clear = {16: 1000, 32: 1500, 64: 1600, 128: 2600, 256: 1500}
    rng = np.random.default_rng(1)
    choices = [bench.recommend_batch_size(noisy_table(clear, rng, load=0.5, jitter=0.1)) for _ in range(100)]
    for choice in choices:  # 128 whenever the five rounds settle it, never another size
        if choice["settled"]:
            assert choice["batch_size"] == 128 == choice["best_batch_size"]
            assert "it gives the best throughput" in choice["sentence"]
        else:
            assert choice["batch_size"] is None and "resampling the 5 rounds" in choice["reason"]
    assert sum(c["settled"] for c in choices) == 96


def test_noise_widens_the_band_of_sizes_counted_as_equally_fast():
    rounds = {8: [50, 70, 60, 40, 80], 16: [100, 100, 100, 100, 100], 32: [95, 120, 110, 90, 115]}
    rows = pd.DataFrame([{"batch_size": b, "status": "ok", "rounds": 5,
                          **bench.throughput_stats(b, [[b / v] for v in r], prefix="")} for b, r in rounds.items()])
    share, noise = bench.relative_to_best(rows.set_index("batch_size", drop=False))
    # best by median: 32 (110); paired shares of 16: 100/95, 100/120, 100/110, 100/90, 100/115
    paired = np.array([100 / 95, 100 / 120, 100 / 110, 100 / 90, 100 / 115])
    assert share[16] == pytest.approx(np.median(paired))
    ratios = {b: np.array(rounds[b]) / np.array(rounds[32]) for b in (8, 16)}
    spreads = [np.subtract(*np.percentile(r, [75, 25])) / np.median(r) for r in ratios.values()]
    assert noise == pytest.approx(np.median(spreads))
    choice = bench.recommend_batch_size(rows)
    assert choice["best_batch_size"] == 32 and choice["tolerance"] == pytest.approx(noise)
    assert noise > 1 - share[16]  # 16 is within the noise of 32: it is chosen
    assert choice["batch_size"] == 16
    assert "within the measurement noise" in choice["sentence"]


def test_recommendation_of_one_round_is_the_smallest_batch_within_95_percent_of_the_best():
    choice = bench.recommend_batch_size(table(LAB_NOTE_002), fraction=0.95)
    # 1543 / 1602 = 96.3 % ≥ 95 %, while 1449 / 1602 = 90.4 % is not
    assert choice["batch_size"] == 128 and choice["best_batch_size"] == 512 and choice["noise"] == 0
    assert choice["fraction_of_best"] == pytest.approx(1543 / 1602)
    assert choice["sentence"] == ("Use batch size 128: 1543 samples/s, 96% of the best round by round (1602 samples/s at "
                                  "batch size 512; one round, so no measured noise), the smallest batch size "
                                  "within 5% of the best.")
    assert bench.recommend_batch_size(table(LAB_NOTE_002), fraction=0.99)["batch_size"] == 256


def test_recommendation_boundary_and_failures():
    assert bench.recommend_batch_size(table({1: 90.0, 2: 100.0}))["batch_size"] == 1  # exactly 90 % counts
    assert bench.recommend_batch_size(table({1: 89.9, 2: 100.0}))["batch_size"] == 2
    assert bench.recommend_batch_size(table({1: 95.0, 2: 100.0}), fraction=0.95)["batch_size"] == 1
    only_best = bench.recommend_batch_size(table({1: 10.0, 2: 50.0, 4: 40.0}))
    assert only_best["batch_size"] == 2 and only_best["sentence"].startswith("Use batch size 2: it gives the best")
    oom_rows = table({1: 10.0, 2: 20.0, 4: math.nan}, status={4: "oom"})
    assert bench.recommend_batch_size(oom_rows)["batch_size"] == 2
    none = bench.recommend_batch_size(table({1: math.nan}, status={1: "oom"}))
    assert none["batch_size"] is None and "none is recommended" in none["sentence"]
    with pytest.raises(ConfigError, match="fraction = 1.5"):
        bench.recommend_batch_size(table({1: 1.0}), fraction=1.5)


def test_limiting_part_names_the_input_pipeline_only_beyond_the_noise():
    rows = pd.DataFrame([
        {"batch_size": 32, "status": "ok", "samples_per_s": 1000.0, "spread": 0.04,
         "e2e_samples_per_s": 700.0, "e2e_spread": 0.06, "input_share": 0.3},
        {"batch_size": 64, "status": "ok", "samples_per_s": 1200.0, "spread": 0.04,
         "e2e_samples_per_s": 1150.0, "e2e_spread": 0.08, "input_share": 1 - 1150 / 1200},
    ])
    slow = bench.limiting_part(rows, 32)
    assert slow["limit"] == "input pipeline" and slow["noise"] == pytest.approx(0.06)
    assert slow["sentence"] == ("At batch size 32 the input pipeline limits: 700 samples/s end to end (loader, "
                                "augmentation, host-to-device copy) against 1000 for the model step alone; "
                                "it takes 30% of an end-to-end step, beyond the 6% noise.")
    fine = bench.limiting_part(rows, 64)
    assert fine["limit"] == "model step" and "within the 8% noise" in fine["sentence"]
    with pytest.raises(ValueError, match="batch size 128: no end-to-end measurement"):
        bench.limiting_part(rows, 128)
    # with per-round values the noise is that of the paired per-round input share
    paired = rows.assign(samples_per_s_rounds=[[1000.0, 800.0, 1200.0], [1200.0] * 3],
                         e2e_samples_per_s_rounds=[[700.0, 600.0, 780.0], [1150.0] * 3])
    shares = 1 - np.array([700 / 1000, 600 / 800, 780 / 1200])
    assert bench.limiting_part(paired, 32)["noise"] == pytest.approx(np.subtract(*np.percentile(shares, [75, 25])))
    assert bench.limiting_part(paired, 64)["noise"] == 0


# --- reports and the command line ------------------------------------------------------------


def test_bench_flops_cli_prints_json(capsys):
    argv = ["bench", "flops", "--model", "vqa_mean_mlp", "--set", "model.cnn_channels=[4,8,8]",
            "--set", "data.max_train_samples=32", "--batch-size", "2"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    data = build_data({"name": "easy_vqa", "max_train_samples": 32})
    model = create_model("vqa_mean_mlp", cnn_channels=(4, 8, 8), **data.model_kwargs)
    assert report["params_total"] == sum(p.numel() for p in model.parameters())
    assert report["batch_size"] == 2 and report["inputs"]["image"] == [2, 3, 64, 64]
    assert report["forward_gmacs_per_sample"] == pytest.approx(report["forward_flops"] / 2 / 2e9)
    # training (forward + backward) costs between 2 and 3 forward passes
    assert 2 * report["forward_flops"] < report["train_flops"] <= 3 * report["forward_flops"]


def test_bench_throughput_cli_json(capsys, monkeypatch):
    monkeypatch.setattr(bench, "others_busy_since", lambda snapshot, cores: 0.0)  # a quiet machine
    argv = ["bench", "throughput", "--model", "vqa_mean_mlp", "--set", "model.cnn_channels=[4,8,8]",
            "--set", "data.max_train_samples=32", "--set", "train.device=cpu", "--batch-sizes", "4", "2",
            "--warmup", "0", "--steps", "1", "--rounds", "2", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["batch_size"] for r in out["rows"]] == [2, 4]
    assert all(r["status"] == "ok" and r["timed_steps"] == 1 and r["rounds"] == 2 for r in out["rows"])
    assert all(len(r["samples_per_s_rounds"]) == len(r["e2e_samples_per_s_rounds"]) == 2 for r in out["rows"])
    best = max(out["rows"], key=lambda r: r["samples_per_s"])
    assert out["recommendation"]["best_batch_size"] == best["batch_size"]
    assert out["limit"]["batch_size"] == out["recommendation"]["batch_size"]
    assert out["limit"]["limit"] in {"model step", "input pipeline"}


def test_bench_throughput_cli_json_says_not_settled_with_no_size(capsys, monkeypatch):
    fake_measurements(monkeypatch, {2: 100.0, 4: 190.0}, jitter=0.0)
    monkeypatch.setattr(bench, "others_busy_since", lambda snapshot, cores: 1.7)  # a busy machine
    monkeypatch.setattr(bench, "choose_threads", lambda requested: ThreadChoice(1, "1 free (a fake machine)"))
    monkeypatch.setattr(bench, "affinity_cores", lambda: {0, 1})
    argv = ["bench", "throughput", "--model", "vqa_mean_mlp", "--set", "model.cnn_channels=[4,8,8]",
            "--set", "data.max_train_samples=32", "--set", "train.device=cpu", "--batch-sizes", "4", "2",
            "--warmup", "0", "--steps", "1", "--rounds", "2", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["recommended_batch_size"] is None and out["recommendation"]["batch_size"] is None
    assert out["reason"] == out["recommendation"]["reason"]
    assert out["reason"].startswith("other processes kept 1.7 of the 2 cores busy (median of the measurements) "
                                    "while 1 thread(s)")
    assert out["limit"] is None
    assert [(r["others_busy_median"], r["others_busy_max"]) for r in out["rows"]] == [(1.7, 1.7)] * 2
    assert main(argv[:-1]) == 0  # the text form says so in its sentence
    assert "Not settled, so no batch size is recommended: other processes kept" in capsys.readouterr().out


def test_bench_cli_rejects_a_model_without_matching_data(capsys):
    assert main(["bench", "flops", "--model", "ir50_vit", "--set", "data.max_train_samples=8"]) == 2
    assert "does not take vocab_size" in capsys.readouterr().err


def test_efficiency_table_has_one_row_per_model(cfg):
    wider = build_config({**TINY, "name": "wider", "model": {**TINY["model"], "hidden_dim": 64}})
    rows = bench.efficiency_table({"tiny": cfg, "wider": wider}, batch_size=4, warmup_steps=0, timed_steps=1)
    assert rows["name"].tolist() == ["tiny", "wider"]
    assert (rows["status"] == "ok").all() and (rows["latency_ms"] > 0).all()
    # the wider head adds (in + out) × 48 weights and 48 biases; its FLOPs grow by its multiply-adds
    extra_params = rows["params_total"].iloc[1] - rows["params_total"].iloc[0]
    in_dim, out_dim = 8 + 8, 13  # image vector ⊕ embedding; easy-VQA's 13 answers
    assert extra_params == (in_dim + out_dim + 1) * 48
    extra_macs = (rows["forward_gmacs_per_sample"].iloc[1] - rows["forward_gmacs_per_sample"].iloc[0]) * 1e9
    assert extra_macs == pytest.approx((in_dim + out_dim) * 48)


def test_efficiency_table_records_the_thread_choice(cfg):
    one = build_config({**TINY, "name": "one", "train": {**TINY["train"], "num_threads": 1}})
    row = bench.efficiency_table({"one": one}, batch_size=4, warmup_steps=0, timed_steps=1).iloc[0]
    assert (row["cpu_threads"], row["threads_reason"]) == (1, "train.num_threads = 1 (set in the config)")


def test_flops_per_sample_at_batch_one_for_an_image_model():
    # A tiny FER model whose last feature map is 1×1: BatchNorm in training mode could not take
    # a batch of one; counting in eval mode can. Without shared images, cost per sample is flat.
    cfg = build_config({"model": {"name": "ir50_vit", "depth": 1, "backbone_depth": 18,
                                  "width": 0.125},
                        "data": {"name": "synthetic_faces", "num_train": 8, "num_val": 4, "image_size": 16}})
    one, two = bench.flops_report(cfg, batch_size=1), bench.flops_report(cfg, batch_size=2)
    assert one["inputs"] == {"image": [1, 3, 16, 16]}
    assert one["forward_flops"] > 0 and two["forward_flops"] == 2 * one["forward_flops"]
    assert two["train_flops"] == 2 * one["train_flops"]


def test_attention_on_the_cpu_is_counted_like_explicit_matrix_products():
    # torch counts 0 for the CPU kernel of scaled_dot_product_attention; bench registers a formula.
    import torch.nn.functional as F

    from vqalab.bench import count_flops

    q, k, v = torch.randn(2, 4, 16, 8), torch.randn(2, 4, 32, 8), torch.randn(2, 4, 32, 8)
    explicit = count_flops(lambda: torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v)
    assert explicit == 2 * 2 * (2 * 4 * 16 * 32 * 8)  # QKᵀ and AV, each 2 FLOPs per multiply-add
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == explicit


def _table(rows):
    return pd.DataFrame([{"batch_size": b, "status": s, "samples_per_s": t, "peak_memory_mb": m}
                         for b, s, t, m in rows])


def test_auto_batch_size_is_the_largest_on_the_plateau_under_the_memory_cap():
    table = _table([(8, "ok", 100.0, 100.0), (16, "ok", 190.0, 150.0), (32, "ok", 200.0, 250.0),
                    (64, "ok", 196.0, 450.0), (128, "ok", 150.0, 850.0), (256, "oom", math.nan, math.nan)])
    # plateau: ≥ 95% of 200 → 32 and 64 (16's 190 is exactly 95% too); the largest that fits wins
    assert auto_batch_size(table, memory_cap_mb=1000)["batch_size"] == 64
    choice = auto_batch_size(table, memory_cap_mb=400)  # 64 needs 450 MiB: best among 8-32 is 200
    assert choice["batch_size"] == 32 and choice["best_samples_per_s"] == 200.0
    assert "batch size 32" in choice["sentence"] and "400 MiB" in choice["sentence"]
    assert auto_batch_size(table, memory_cap_mb=120)["batch_size"] == 8
    with pytest.raises(ConfigError, match="no batch size .* fits under 50 MiB .*the smallest needs 100 MiB"):
        auto_batch_size(table, memory_cap_mb=50)


def test_auto_batch_size_falls_back_to_the_default_when_the_timings_are_not_settled():
    table = _table([(64, "ok", 100.0, 100.0), (128, "ok", 150.0, 150.0), (256, "ok", 200.0, 250.0),
                    (512, "ok", 260.0, 450.0)]).assign(others_busy_median=1.6, cpu_threads=1, cpu_cores=2)
    choice = auto_batch_size(table, memory_cap_mb=1000)  # the timings would say 512
    assert choice["batch_size"] == 128 and not choice["settled"]  # the default train.batch_size
    assert choice["reason"].startswith("other processes kept 1.6 of the 2 cores busy")
    assert choice["sentence"].startswith("batch size 128: the timings are not settled (other processes")
    assert "the default train.batch_size (128) or the largest measured size below it" in choice["sentence"]
    assert auto_batch_size(table[table["batch_size"] != 128], memory_cap_mb=1000)["batch_size"] == 64
    assert auto_batch_size(table[table["batch_size"] > 128], memory_cap_mb=1000)["batch_size"] == 256
    settled = auto_batch_size(table.assign(others_busy_median=0.2), memory_cap_mb=1000)
    assert settled["batch_size"] == 512 and settled["settled"] and settled["reason"] is None


def test_batch_size_auto_is_measured_before_training_and_recorded(tmp_path, monkeypatch, data):
    from vqalab import bench
    from vqalab.config import build_config
    from vqalab.train import fit

    measured = []
    real = bench.throughput_sweep

    def counting(cfg, **kwargs):
        measured.append(kwargs["batch_sizes"])
        return real(cfg, **kwargs)

    monkeypatch.setattr(bench, "throughput_sweep", counting)
    monkeypatch.setattr(bench, "_AUTO_CHOICES", {})
    monkeypatch.setattr(bench, "AUTO_BATCH_SIZES", (8, 16, 128))  # 128 > the 64 training questions
    monkeypatch.setattr(bench, "AUTO_WARMUP_STEPS", 0)
    monkeypatch.setattr(bench, "AUTO_TIMED_STEPS", 1)
    tree = {**TINY, "runs_root": str(tmp_path), "train": {**TINY["train"], "batch_size": "auto", "epochs": 1,
                                                          "progress": False}}
    result = fit(build_config(tree), data=data)
    auto = result.summary["batch_size_auto"]
    assert measured == [[8, 16]]  # sizes up to the 64 training questions
    assert auto["batch_size"] in (8, 16) and result.summary["batch_size"] == auto["batch_size"]
    assert [row["batch_size"] for row in auto["rows"]] == [8, 16]
    assert auto == {**auto_batch_size(pd.DataFrame(auto["rows"]), memory_cap_mb=auto["memory_cap_mb"]),
                    "rows": auto["rows"]}  # the recorded rows give the recorded choice
    assert auto["memory_cap_mb"] == pytest.approx(0.9 * bench.device_memory_mb(torch.device("cpu")))
    params = yaml.safe_load((result.run_dir / "params.yaml").read_text())
    assert params["train"]["batch_size"] == "auto"  # what was asked; the choice is in summary.json
    steps = math.ceil(64 / auto["batch_size"])
    assert result.summary["steps"] == steps
    fit(build_config({**tree, "optim": {"lr": 2e-3}}), data=data)  # another LR: the measurement is reused
    assert len(measured) == 1
    fixed = fit(build_config({**tree, "train": {**tree["train"], "batch_size": 16}}), data=data)
    assert "batch_size_auto" not in fixed.summary and fixed.summary["batch_size"] == 16 and len(measured) == 1
