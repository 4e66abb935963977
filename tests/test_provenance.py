"""What the reuse and freeze keys hold: the code that trains (and only it), weights files by their
bytes, the resolved device, no inert keys; checkpoints that need no weights file; settings refused
before any data is read. Tiny easy-VQA runs on the CPU; source edits are made on a copy of the
package (``provenance.PACKAGE_DIR`` pointed at it), never on the real files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vqalab import engine, provenance, runs, train
from vqalab.config import build_config
from vqalab.data import build_data, declared_targets
from vqalab.registry import ConfigError
from vqalab.report.freeze import freeze_inputs
from vqalab.runs import config_hash, load_checkpoint, model_from_checkpoint
from vqalab.sweep import sweep
from vqalab.train import fit

REPO = Path(__file__).resolve().parents[1]
DATA_SPEC = {"name": "easy_vqa", "max_train_samples": 32, "max_val_samples": 16}
GRID = {"optim.lr": [1e-3]}


def base(runs_root, epochs=1, **model):
    return {
        "experiment": "prov", "name": "pt", "runs_root": str(runs_root),
        "model": {"name": "vqa_mean_mlp", "cnn_channels": [4, 8], "embed_dim": 8, "hidden_dim": 16, **model},
        "data": DATA_SPEC,
        "train": {"epochs": epochs, "batch_size": 16, "num_threads": 1, "progress": False, "device": "cpu"},
    }


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the vqalab source that the fingerprints read instead of the real one."""
    copy = tmp_path / "vqalab_copy"
    shutil.copytree(provenance.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "PACKAGE_DIR", copy)
    return copy


def edit(path: Path, text: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")


def page_inputs() -> dict[str, dict]:
    """The freeze inputs of every study notebook of the project (its preset and data left fixed)."""
    code = provenance.code_fingerprint()
    return {nb.stem: freeze_inputs({"notebook": nb, "parameters": {}}, preset="quick", data=None, code=code,
                                   root=REPO)
            for nb in sorted((REPO / "notebooks").glob("*.ipynb"))}


def changed(before: dict[str, dict], after: dict[str, dict]) -> dict[str, list[str]]:
    """Study → the freeze inputs that differ."""
    return {s: [k for k in before[s] if before[s][k] != after[s][k]] for s in before}


# --- Reuse key: code -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_result_code_covers_every_module_fit_imports():
    """fit's import closure, taken in a fresh interpreter: every vqalab module in it is either in the
    fingerprint or listed, with a reason, as unable to change a result."""
    script = ("import sys, vqalab.train\n"
              "print('\\n'.join(m.__file__ for n, m in sorted(sys.modules.items()) if n.split('.')[0] == 'vqalab'))")
    env = {**os.environ, "PYTHONPATH": str(provenance.PACKAGE_DIR.parent)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True,
                         cwd=provenance.PACKAGE_DIR.parent, timeout=120).stdout
    imported = {Path(line).resolve().relative_to(provenance.PACKAGE_DIR).as_posix() for line in out.split()}
    covered = {p.relative_to(provenance.PACKAGE_DIR).as_posix() for p in provenance.result_code_files()}
    assert {"train.py", "models/vqa.py", "data/easy_vqa.py", "schedules.py", "metrics.py"} <= imported
    unlisted = sorted(m for m in imported if m not in covered and m not in provenance.NOT_RESULT_CODE)
    assert not unlisted, f"fit imports {unlisted}: add them to provenance.RESULT_CODE (or NOT_RESULT_CODE, with why)"
    for entry in (*provenance.RESULT_CODE, *provenance.NOT_RESULT_CODE):
        assert (provenance.PACKAGE_DIR / entry).exists(), entry
    outside = [m for m in covered if m.startswith(("report/", "studies/")) or m in (
        "cli.py", "monitor.py", "sweep.py", "sweep_queue.py", "bench.py", "lr_find.py", "notebook.py")]
    assert not outside


@pytest.mark.slow
def test_an_edit_outside_the_training_code_reuses_every_point_and_keeps_every_page(tmp_path, package_copy):
    first = sweep(base(tmp_path / "runs"), GRID)
    assert not first["reused"].any()
    pages = page_inputs()
    assert set(pages) >= {"depth_test", "variants", "vqa_models"} and all(len(p) == 6 for p in pages.values())

    edit(package_copy / "report" / "html.py", "\n# a comment in the sanitiser\n")
    edit(package_copy / "cli.py", '\n"""a docstring fix"""\n')
    again = sweep(base(tmp_path / "runs"), GRID)
    assert again["reused"].all() and list(again["run_dir"]) == list(first["run_dir"])
    assert page_inputs() == pages  # every page kept

    edit(package_copy / "monitor.py", "\n# TensorBoard\n")
    edit(package_copy / "sweep_queue.py", "\n# workers\n")
    assert sweep(base(tmp_path / "runs"), GRID)["reused"].all()
    assert all("code" not in keys for keys in changed(pages, page_inputs()).values())
    pages = page_inputs()

    edit(package_copy / "report_templates" / "style.css", "\nbody { margin: 0; }\n")
    assert sweep(base(tmp_path / "runs"), GRID)["reused"].all()  # the runs are reused ...
    assert set(map(tuple, changed(pages, page_inputs()).values())) == {("templates",)}  # ... every page re-runs
    pages = page_inputs()

    edit(package_copy / "studies" / "depth_test.py", "\n# a sentence of the findings\n")
    assert sweep(base(tmp_path / "runs"), GRID)["reused"].all()
    assert {s: keys for s, keys in changed(pages, page_inputs()).items() if keys} == {"depth_test": ["study"]}
    pages = page_inputs()

    edit(package_copy / "models" / "layers.py", "\n# a model file\n")
    retrained = sweep(base(tmp_path / "runs"), GRID)
    assert not retrained["reused"].any() and retrained["run_dir"].iloc[0] != first["run_dir"].iloc[0]
    assert all("code" in keys for keys in changed(pages, page_inputs()).values())


# --- Reuse key: weights files, device, inert keys -----------------------------------------------------

@pytest.fixture
def embedding_file(tmp_path, monkeypatch):
    """``emb.pt`` under a private data root: a (vocab_size, 8) matrix for easy-VQA's vocabulary."""
    monkeypatch.setenv("VQALAB_DATA", str(tmp_path / "data"))
    vocab_size = build_data(DATA_SPEC).model_kwargs["vocab_size"]
    path = tmp_path / "data" / "emb.pt"
    path.parent.mkdir()
    torch.save(torch.randn(vocab_size, 8, generator=torch.Generator().manual_seed(0)), path)
    return path


def test_a_weights_file_enters_the_key_by_its_bytes(tmp_path, embedding_file):
    cfg = base(tmp_path / "runs", embedding_weights="emb.pt")
    first = sweep(cfg, GRID)
    summary = json.loads((Path(first["run_dir"].iloc[0]) / "summary.json").read_text())
    assert summary["weight_files"] == {"embedding_weights": hashlib.sha256(embedding_file.read_bytes()).hexdigest()}
    assert sweep(cfg, GRID)["reused"].all()

    moved = embedding_file.parent / "vectors" / "emb.pt"  # the same bytes elsewhere: the same run
    moved.parent.mkdir()
    shutil.copy(embedding_file, moved)
    assert sweep(base(tmp_path / "runs", embedding_weights="vectors/emb.pt"), GRID)["reused"].all()

    vocab_size = torch.load(embedding_file, weights_only=True).shape[0]
    torch.save(torch.randn(vocab_size, 8, generator=torch.Generator().manual_seed(1)), embedding_file)  # in place
    replaced = sweep(cfg, GRID)
    assert not replaced["reused"].any() and replaced["run_dir"].iloc[0] != first["run_dir"].iloc[0]


def test_the_device_enters_the_hash_as_the_type_it_resolves_to(monkeypatch):
    def hash_of(device):
        return config_hash(build_config({"train": {"device": device}}))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hash_of("auto") == hash_of("cpu") != hash_of("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the same config on a GPU machine
    assert hash_of("auto") == hash_of("cuda") == hash_of("cuda:1") != hash_of("cpu")


@pytest.mark.parametrize("section, name, key, value", [
    ("optim", "adam", "momentum", 0.5), ("optim", "adamw", "momentum", 0.5),
    ("optim", "sgd", "betas", [0.8, 0.9]), ("optim", "sgd", "eps", 1e-6),
    ("schedule", "constant", "gamma", 0.5), ("schedule", "cosine", "step_size", 5),
    ("schedule", "step", "min_lr_ratio", 0.1), ("schedule", "constant", "min_lr_ratio", 0.1),
])
def test_a_key_the_run_never_reads_leaves_the_hash_alone(section, name, key, value):
    plain = build_config({section: {"name": name}})
    set_inert = build_config({section: {"name": name, key: value}})
    assert config_hash(set_inert) == config_hash(plain)
    readers = {"momentum": "sgd", "betas": "adam", "eps": "adam", "gamma": "step", "step_size": "step",
               "min_lr_ratio": "cosine"}
    read = build_config({section: {"name": readers[key], key: value}})
    assert config_hash(read) != config_hash(build_config({section: {"name": readers[key]}}))


def test_max_memory_fraction_is_read_with_batch_size_auto_only():
    def hash_of(**train_keys):
        return config_hash(build_config({"train": train_keys}))

    assert hash_of(batch_size=32, max_memory_fraction=0.5) == hash_of(batch_size=32)
    assert hash_of(batch_size="auto", max_memory_fraction=0.5) != hash_of(batch_size="auto")


def test_a_sweep_over_an_inert_key_trains_once(tmp_path):
    df = sweep(base(tmp_path / "runs"), {"optim.momentum": [0.8, 0.95]})  # adam: momentum is not read
    assert list(df["reused"]) == [False, True] and df["run_dir"].nunique() == 1


# --- Self-contained checkpoints ----------------------------------------------------------------------

def test_a_checkpoint_loads_and_resumes_after_its_weights_file_is_gone(tmp_path, embedding_file, monkeypatch):
    cfg = build_config(base(tmp_path / "runs", epochs=2, embedding_weights="emb.pt", freeze_embedding=True))
    data = build_data(cfg.data)
    digest = hashlib.sha256(embedding_file.read_bytes()).hexdigest()
    reference = fit(cfg, data=data)
    # a run of the same config stopped after epoch 1, as if interrupted there
    monkeypatch.setattr(train, "should_stop_early", lambda history, c: len(history) == 1)
    stopped = fit(cfg, data=data)
    monkeypatch.undo()
    summary_file = stopped.run_dir / "summary.json"
    runs.write_json(summary_file, {**json.loads(summary_file.read_text()), "status": "running"})
    embedding_file.unlink()

    ckpt_path = runs.latest_checkpoint(reference.run_dir)
    model, ckpt = model_from_checkpoint(ckpt_path)
    assert ckpt["weight_files"] == {"embedding_weights": digest}
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ckpt["model_state"].items())
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all("embed" in n for n in frozen)  # built as trained: the embedding stays frozen
    with pytest.raises(FileNotFoundError, match="emb.pt"):  # a new model does need the file
        engine.build_model(cfg, data, torch.device("cpu"))

    resumed = fit(cfg, data=data, resume=stopped.run_dir)
    assert resumed.summary["status"] == "completed" and resumed.summary["epochs"] == 2
    got = load_checkpoint(runs.latest_checkpoint(stopped.run_dir))["model_state"]
    assert all(torch.equal(got[k], v) for k, v in ckpt["model_state"].items())  # as the uninterrupted run


# --- Settings applied or refused before any data is read ---------------------------------------------

def test_bce_on_a_data_set_without_soft_scores_is_refused_naming_key_and_data_set():
    with pytest.raises(ConfigError, match=r"train\.loss = 'bce'.*data set 'easy_vqa' has none"):
        build_config({"data": DATA_SPEC, "train": {"loss": "bce"}})
    with pytest.raises(ConfigError, match=r"train\.loss = 'bce'.*'synthetic_faces'"):
        build_config({"model": {"name": "fer_pixel_linear"}, "data": {"name": "synthetic_faces"},
                      "train": {"loss": "bce"}})
    # through frozen_features, the wrapped data set decides
    with pytest.raises(ConfigError, match=r"train\.loss = 'bce'"):
        build_config({"model": {"name": "vqa_san"}, "data": {"name": "frozen_features", "source": DATA_SPEC},
                      "train": {"loss": "bce"}})
    assert build_config({"data": {"name": "vqa_v2"}, "train": {"loss": "bce"}}).train.loss == "bce"


def test_bce_on_loaded_data_without_soft_scores_is_refused_before_the_first_step(tmp_path):
    """Data passed in (a sweep loads it once) is checked too, before any run folder or step."""
    cfg = build_config({**base(tmp_path / "runs"), "data": {"name": "vqa_v2"}, "train": {"loss": "bce", "device": "cpu"}})
    with pytest.raises(ConfigError, match=r"train\.loss = 'bce': data 'vqa_v2' has no soft answer scores"):
        fit(cfg, data=build_data(DATA_SPEC))  # easy-VQA items: a class each, no soft_target
    assert not list(tmp_path.rglob("params.yaml"))


def test_label_smoothing_with_bce_is_refused():
    with pytest.raises(ConfigError, match=r"train\.label_smoothing = 0\.1: label smoothing applies to cross-entropy"):
        build_config({"data": {"name": "vqa_v2"}, "train": {"loss": "bce", "label_smoothing": 0.1}})
    assert build_config({"train": {"label_smoothing": 0.1}}).train.label_smoothing == 0.1  # with ce: applied


def test_declared_targets_match_the_items(tmp_path, monkeypatch):
    from data_fixtures import write_rafdb_official, write_vqa_v2

    monkeypatch.setenv("VQALAB_CACHE", str(tmp_path / "cache"))
    write_vqa_v2(tmp_path / "vqa_v2", train_images=2, val_images=1, size=16)
    write_rafdb_official(tmp_path / "rafdb", train_per_class=1, test_per_class=1, size=16)
    specs = [
        DATA_SPEC,
        {"name": "vqa_v2", "root": str(tmp_path / "vqa_v2"), "image_size": 16},
        {"name": "rafdb", "root": str(tmp_path / "rafdb"), "image_size": 16},
        {"name": "synthetic_faces", "num_train": 7, "num_val": 7, "image_size": 16, "use_cache": False},
        {"name": "synthetic_scenes", "num_train": 4, "num_val": 2},
        {"name": "synthetic_views", "num_train": 2, "num_val": 2, "num_cameras": 2, "image_size": 16, "map_size": 8},
    ]
    for spec in specs:
        data = build_data(spec)
        item = data.train[0]
        kind = "mask" if "mask" in item else "soft" if "soft_target" in item else "class"
        assert declared_targets(spec) == kind, spec["name"]
        assert (data.task == "segmentation") == (kind == "mask"), spec["name"]
    assert declared_targets({"name": "frozen_features", "source": specs[1]}) == "soft"
    assert declared_targets({"name": "gqa"}) == "class"  # exact-match answers: no soft scores


def test_the_loss_follows_the_task_not_a_mask_key_in_the_batch():
    cfg = build_config({})
    logits = torch.randn(4, 3)
    batch = {"target": torch.tensor([0, 1, 2, 0]), "mask": torch.ones(4, 3)}  # e.g. a token mask
    torch.testing.assert_close(engine.compute_loss(logits, batch, cfg, "classification"),
                               F.cross_entropy(logits, batch["target"]))
    torch.testing.assert_close(engine.compute_loss(logits, batch, cfg, "segmentation"),
                               F.binary_cross_entropy_with_logits(logits, batch["mask"]))
