"""Predicted CUDA memory of a training step (``vqalab.memory``, ``vqalab bench memory``): the parts
against a hand count, CUDA's autocast policy, lab note 002's efficiency table and every lab preset
against the memory of its GPU. Everything runs on the CPU: fake tensors carry no data."""

import json
import math

import pytest
import torch
from torch import nn

import data_fixtures as fixtures
from vqalab.cli import main
from vqalab.config import build_config, load_config
from vqalab.memory import MIB, parse_device_memory, precision_context, predict_memory
from vqalab.registry import ConfigError

GIB_MB = 1024  # MiB in a GiB: GPU memory classes are binary ("24 GB" = 24 GiB)


def pixel_linear_config(*, image_size=16, optim=None, **train):
    """A linear classifier on raw pixels: its parameter count is 7 × (3·S²) + 7."""
    return build_config({"model": {"name": "fer_pixel_linear"},
                         "data": {"name": "synthetic_faces", "num_train": 8, "num_val": 8, "image_size": image_size},
                         "optim": optim or {"name": "adam"}, "train": {"device": "cpu", **train}})


def parts_in_bytes(result):
    return {part: mb * MIB for part, mb in result["parts_mb"].items()}  # exact: MiB = bytes / 2**20


@pytest.mark.parametrize("optim", ["adam", "sgd"])
def test_parts_of_a_linear_model_match_a_hand_count(optim):
    size, batch = 16, 4
    result = predict_memory(pixel_linear_config(image_size=size, optim={"name": optim}), batch_size=batch)
    params = 7 * 3 * size * size + 7  # weight (7, 3·S·S) and bias (7,), float32
    got = parts_in_bytes(result)
    assert result["params"] == params
    assert got["parameters"] == 4 * params
    if optim == "adam":
        # The peak is in the update: every gradient, m and v per parameter, a float32 step count per
        # tensor (weight, bias), and the √v that the multi-tensor update holds while it divides.
        assert got["gradients"] == 4 * params and got["temporaries"] == 0
        assert got["optimizer_state"] == 2 * 4 * params + 2 * 4 + 4 * params
    else:
        # SGD's update allocates nothing: the peak is in the second backward, the momentum buffer in
        # place, the new gradients and the logits' gradient (B, 7) being written.
        assert got["optimizer_state"] == 4 * params
        assert got["gradients"] + got["temporaries"] == 4 * params + 4 * batch * 7
    assert got["inputs"] == batch * 3 * size * size * 4 + 2 * batch * 8  # images; targets and indices (int64)
    assert got["activations"] <= 16  # scalars (loss, gradient norm): the forward's are freed by then
    assert result["peak_mb"] == pytest.approx(sum(result["parts_mb"].values()), abs=1e-12)
    assert (result["batch_size"], result["precision"], result["fits"]) == (batch, "fp32", None)


def test_the_fit_applies_max_memory_fraction():
    peak = predict_memory(pixel_linear_config(), batch_size=4)["peak_mb"]
    device = 1.5 * peak  # the peak is 67 % of it
    tight = predict_memory(pixel_linear_config(max_memory_fraction=0.5), batch_size=4, device_memory_mb=device)
    loose = predict_memory(pixel_linear_config(max_memory_fraction=0.9), batch_size=4, device_memory_mb=device)
    assert (tight["fits"], loose["fits"]) == (False, True)
    assert tight["memory_cap_mb"] == pytest.approx(0.5 * device) and tight["max_memory_fraction"] == 0.5


def test_cuda_autocast_policy_on_the_cpu():
    """Matmuls run in the lower precision as under CUDA autocast; norms and softmax in float32."""
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Softmax(dim=-1))
    seen = {}
    for name, module in model.named_children():
        module.register_forward_hook(lambda m, i, out, name=name: seen.__setitem__(name, out.dtype))
    x = torch.randn(2, 8)
    for precision, low in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        with precision_context(precision):
            model(x)
        assert seen == {"0": low, "1": torch.float32, "2": torch.float32}, precision


def test_integer_tensors_keep_their_values_under_fake_tensors():
    """unique, nonzero and boolean indexing have shapes that depend on values: the batch's integer
    tensors, and integer tensors made from nothing, keep theirs."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    from vqalab.memory import IndexValues

    ids, mask = torch.tensor([5, 3, 5, 5, 9]), torch.tensor([True, False, True, True, False])
    with FakeTensorMode(allow_non_fake_inputs=True) as fake:
        fake_ids, fake_mask = fake.from_tensor(ids), fake.from_tensor(mask)
        features = torch.zeros(5, 4)  # a float tensor: fake, no values needed
        with IndexValues(fake, [(fake_ids, ids), (fake_mask, mask)]):
            unique, inverse = torch.unique(fake_ids, return_inverse=True)
            picked = (fake_ids + torch.arange(5))[fake_mask]
            rows = features[inverse]
    assert isinstance(unique, FakeTensor) and isinstance(rows, FakeTensor)
    assert unique.shape == (3,) and inverse.shape == (5,) and picked.shape == (3,) and rows.shape == (5, 4)


@pytest.mark.parametrize("text, mb", [("24GB", 24 * 1024), ("80gib", 80 * 1024), ("8192MB", 8192), ("1.5GB", 1536)])
def test_device_memory_sizes_are_binary(text, mb):
    assert parse_device_memory(text) == mb


@pytest.mark.parametrize("text", ["24XB", "-1GB", "GB", "0GB"])
def test_a_bad_device_memory_is_refused_by_name(text):
    with pytest.raises(ConfigError, match="--device-memory"):
        parse_device_memory(text)


def test_a_batch_size_must_be_given_for_auto():
    with pytest.raises(ConfigError, match="batch size 'auto'"):
        predict_memory(pixel_linear_config(batch_size="auto"))


PIXEL_LINEAR_ARGS = ["bench", "memory", "--model", "fer_pixel_linear", "--set", "data.name=synthetic_faces",
                     "--set", "data.num_train=8", "--set", "data.num_val=8", "--set", "data.image_size=16",
                     "--set", "train.device=cpu", "--batch-size", "4"]


def test_cli_prints_the_prediction_as_json(capsys):
    assert main([*PIXEL_LINEAR_ARGS, "--amp", "bf16", "--device-memory", "24GB", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["parts_mb"]) == {"parameters", "buffers", "gradients", "optimizer_state", "activations",
                                       "temporaries", "inputs"}
    assert (result["batch_size"], result["precision"], result["device_memory_mb"], result["fits"]) == (
        4, "bf16", 24 * 1024, True)
    assert result["peak_mb"] == pytest.approx(sum(result["parts_mb"].values()))


def test_cli_exits_1_when_the_step_does_not_fit(capsys):
    # 4 images of 3×128×128 float32 alone are 0.75 MiB: more than 90 % of 0.5 MiB
    args = [a if a != "data.image_size=16" else "data.image_size=128" for a in PIXEL_LINEAR_ARGS]
    assert main([*args, "--device-memory", "0.5MB"]) == 1
    assert "does NOT fit in 90% of 0.5 MiB = 0.45 MiB" in capsys.readouterr().out


def test_cli_refuses_bad_input_before_any_compute(capsys):
    assert main([*PIXEL_LINEAR_ARGS, "--device-memory", "lots"]) == 2
    assert "--device-memory 'lots'" in capsys.readouterr().err
    assert main([*PIXEL_LINEAR_ARGS[:-1], "0"]) == 2
    assert "batch size 0" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Lab note 002 and the lab presets (full-size models: tens of seconds each on a 2-core CPU)

_PREDICTIONS: dict[str, dict] = {}


def cached_prediction(cfg, **kwargs) -> dict:
    """One prediction per distinct config: presets of several studies share their models."""
    key = json.dumps([cfg.to_dict(), kwargs], sort_keys=True, default=str)
    if key not in _PREDICTIONS:
        _PREDICTIONS[key] = predict_memory(cfg, **kwargs)
    return _PREDICTIONS[key]


def fer_config(model, *, depth=8, image_size=112, backbone_depth=50, width=1.0, amp="off", batch_size=256):
    """A FER model on synthetic faces: RAF-DB's aligned faces have the same tensors (3×S×S, 7 classes)."""
    return build_config({"model": {"name": model, "depth": depth, "backbone_depth": backbone_depth, "width": width},
                         "data": {"name": "synthetic_faces", "num_train": 8, "num_val": 8, "image_size": image_size},
                         "train": {"device": "cpu", "amp": amp, "batch_size": batch_size}})


@pytest.mark.heavy
@pytest.mark.parametrize("model, measured_mb", [("ir_vit", 21_580), ("ir_cls", 18_479)])
def test_lab_note_002_efficiency_table(model, measured_mb):
    """IR-50 + 8 blocks at 112 px, batch 256, fp32, Adam: lab note 002's CUDA peak, within ±10 %."""
    result = cached_prediction(fer_config(model))
    assert result["peak_mb"] == pytest.approx(measured_mb, rel=0.10), result["parts_mb"]
    assert result["parts_mb"]["optimizer_state"] == pytest.approx(2 * result["parts_mb"]["parameters"], rel=0.01)


FER_STUDIES = ["adam_eps_beta", "cls_vs_baseline", "depth_test", "lr_search", "regularisation"]
# The GPU each lab preset is sized for (GiB).
MEMORY_CLASS_GB = {"rafdb-24gb": 24, "rafdb-80gb": 80, "vqa2-24gb": 24, "vqa2-80gb": 80, "gpu-smoke": 8,
                   "gqa_subgraph_8gb.yaml": 8, "gqa_subgraph_24gb.yaml": 24}


def notebook_values(repo_root, study, preset):
    """The notebook's parameter defaults with the preset's values over them."""
    import papermill

    from vqalab.report.data import notebook_default
    from vqalab.report.presets import read_presets

    defaults = {k: notebook_default(p) for k, p in
                papermill.inspect_notebook(str(repo_root / "notebooks" / f"{study}.ipynb")).items()}
    return {**defaults, **read_presets(repo_root / "params" / f"{study}.yaml")[preset]}


def fer_preset_configs(values):
    """Each model a FER study trains at a preset, at its deepest transformer (depths or depth)."""
    depth = max(values.get("depths") or [values["depth"]])
    models = values.get("models") or [values["model"]]
    return [fer_config(m, depth=depth, image_size=values["img_size"], backbone_depth=values["backbone_depth"],
                       width=values["width"], amp=values["amp"], batch_size=values["batch_size"]) for m in models]


def vqa_preset_configs(values, tmp_path):
    """vqa_models' configs with VQA v2 replaced by the fixture in the official layout (images at the
    preset's size: the same feature maps; a fixture-sized vocabulary) and random encoder weights."""
    from vqalab.studies.vqa_models import model_configs

    kwargs = json.loads(json.dumps(values["dataset_kwargs"]))
    source = kwargs.get("source", {})
    if source.get("name") == "vqa_v2":
        source["root"] = str(fixtures.write_vqa_v2(tmp_path / "vqa_v2"))
        kwargs["weights"] = None
    configs = model_configs(models=values["models"], model_kwargs=values["model_kwargs"] or {},
                            dataset=values["dataset"], dataset_kwargs=kwargs, epochs=1,
                            batch_size=values["batch_size"], lr=1e-3, seed=0, experiment="memory",
                            runs_root=str(tmp_path / "runs"))
    for cfg in configs:
        cfg.train.device = "cpu"
    return configs


def write_gqa_stand_in(root, *, objects):
    """GQA's official files with ``objects`` objects per scene graph (lab note 001's max_boxes), each
    related to the next, and 12-word questions: the shapes of a full GQA batch."""
    root.mkdir(parents=True)
    for split in ("train", "val"):
        graphs, questions = {}, {}
        for image in range(3):
            graphs[f"{split}{image}"] = {"width": 640, "height": 480, "objects": {
                str(o): {"name": f"thing{o % 20}", "x": o, "y": o, "w": 10, "h": 10, "attributes": [f"colour{o % 7}"],
                         "relations": [{"name": "near", "object": str((o + 1) % objects)}]} for o in range(objects)}}
            questions[f"{split}q{image}"] = {
                "imageId": f"{split}{image}", "question": "is the thing on the left of the big red thing near it",
                "answer": "yes" if image % 2 else "no", "fullAnswer": "", "isBalanced": True,
                "types": {"structural": "verify", "semantic": "rel", "detailed": "x"}}
        (root / f"{split}_balanced_questions.json").write_text(json.dumps(questions))
        (root / f"{split}_sceneGraphs.json").write_text(json.dumps(graphs))
    return root


def lab_preset_cases():
    fer = [(preset, study) for preset in ("rafdb-24gb", "rafdb-80gb", "gpu-smoke") for study in FER_STUDIES]
    others = [("gpu-smoke", "batch_size_throughput"), ("vqa2-24gb", "vqa_models"), ("vqa2-80gb", "vqa_models"),
              ("gpu-smoke", "vqa_models"), ("gqa_subgraph_8gb.yaml", "gqa"), ("gqa_subgraph_24gb.yaml", "gqa")]
    return [pytest.param(preset, study, id=f"{preset}:{study}", marks=pytest.mark.heavy) for preset, study in fer + others]


@pytest.mark.parametrize("preset, study", lab_preset_cases())
def test_lab_presets_fit_their_gpu(repo_root, tmp_path, monkeypatch, preset, study):
    """Each lab preset's training step, at its batch size and precision, within
    train.max_memory_fraction of the GPU it is sized for."""
    monkeypatch.setenv("VQALAB_CACHE", str(tmp_path / "cache"))  # the VQA v2 feature maps of the fixture
    if study == "gqa":
        cfg = load_config(repo_root / "params" / "train" / preset,
                          [f"data.root={write_gqa_stand_in(tmp_path / 'gqa', objects=50)}", "train.device=cpu"])
        configs = [cfg]
    elif study == "batch_size_throughput":
        from vqalab.studies.batch_size_throughput import throughput_config

        values = notebook_values(repo_root, study, preset)
        cfg = throughput_config(params_file=values["params_file"], model_name=values["model_name"], device="cpu",
                                cpu_threads=0, overrides=values["overrides"])
        cfg.train.amp, cfg.train.batch_size = values["amp"], max(values["batch_sizes"])  # the sweep's largest
        configs = [cfg]
    else:
        values = notebook_values(repo_root, study, preset)
        configs = vqa_preset_configs(values, tmp_path) if study == "vqa_models" else fer_preset_configs(values)
    for cfg in configs:
        result = cached_prediction(cfg, device_memory_mb=MEMORY_CLASS_GB[preset] * GIB_MB)
        assert result["peak_mb"] > 0 and not math.isnan(result["peak_mb"])
        check_fits(preset, study, result)


def check_fits(preset, study, result):
    assert result["fits"], (
        f"preset {preset} ({study}, {result['model']}, batch {result['batch_size']}, {result['precision']}): "
        f"predicted {result['peak_mb']:,.0f} MiB > {result['max_memory_fraction']:.0%} of its "
        f"{MEMORY_CLASS_GB[preset]} GB class ({result['memory_cap_mb']:,.0f} MiB)")


def test_a_preset_that_does_not_fit_is_named_with_its_prediction_and_class():
    result = {"fits": False, "model": "ir_vit", "batch_size": 512, "precision": "fp32", "peak_mb": 42_000.0,
              "max_memory_fraction": 0.9, "memory_cap_mb": 0.9 * 24 * GIB_MB}
    with pytest.raises(AssertionError, match=r"preset rafdb-24gb \(cls_vs_baseline, ir_vit, batch 512, fp32\): "
                                             r"predicted 42,000 MiB > 90% of its 24 GB class \(22,118 MiB\)"):
        check_fits("rafdb-24gb", "cls_vs_baseline", result)
