"""The report on the lab's own data: `--data`, studies skipped when their data set is missing (before
any compute, path named, exit status 3), the data set and the reused runs named per study, `--fresh`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import write_notebook

from data_fixtures import RAFDB_DIR, write_rafdb_official
from vqalab import cli
from vqalab.registry import ConfigError
from vqalab.report import run_report
from vqalab.report.build import EXIT_OK, EXIT_SKIPPED

REPO = Path(__file__).resolve().parents[1]
WEEK = "2026-W12"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """Two tiny studies: ``faces`` (data set synthetic_faces by default) logs two sweep runs, one
    reused; ``vqa`` (easy_vqa). Each writes which data set it was given into its runs_root."""
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    (root / "params").mkdir()
    body = ("import os\nfrom pathlib import Path\nfrom vqalab.notebook import findings\n"
            "from vqalab.sweep import log_points\n"
            "Path(runs_root).mkdir(parents=True, exist_ok=True)\n"
            "(Path(runs_root) / f'{dataset}.txt').write_text(repr(dataset_kwargs))\n"
            "log_points([{'run_dir': 'a', 'status': 'completed', 'reused': True, 'finished': '2026-03-02T10:00:00'},\n"
            "            {'run_dir': 'b', 'status': 'completed', 'reused': False, 'finished': '2026-03-16T09:00:00'}])\n"
            "findings(headline={'fresh': os.environ.get('VQALAB_FRESH', '')}, text=[f'ran on {dataset}'])")
    for name, default in (("faces", "synthetic_faces"), ("vqa", "easy_vqa")):
        write_notebook(root / "notebooks" / f"{name}.ipynb", f"{name} study",
                  f'dataset: str = "{default}"  # data set\ndataset_kwargs: dict = {{}}  # its keywords\n'
                  'runs_root: str = "runs"  # where runs go', body)
        (root / "params" / f"{name}.yaml").write_text("presets:\n  quick: {}\n")
    data_root = tmp_path / "lab-data"
    data_root.mkdir()
    monkeypatch.setenv("VQALAB_DATA", str(data_root))
    monkeypatch.setenv("VQALAB_CACHE", str(tmp_path / "cache"))
    return root


def run(root: Path, **kw) -> int:
    return run_report(root=root, preset="quick", week=WEEK, runs_root=root / "runs", **kw)


def test_missing_data_set_skips_the_study_before_any_compute_and_names_the_path(project, tmp_path):
    assert run(project, data="rafdb") == EXIT_SKIPPED
    week = project / "reports" / WEEK
    summary = json.loads((week / "summary.json").read_text())
    assert list(summary["studies"]) == ["faces"]  # vqa is not a study of RAF-DB
    record = summary["studies"]["faces"]
    expected_root = str(tmp_path / "lab-data" / RAFDB_DIR)
    assert record["status"] == "skipped" and record["data"]["root"] == expected_root
    assert "EmoLabel/list_patition_label.txt" in record["data"]["expected"]
    assert not (week / "faces.ipynb").exists() and not (project / "runs").exists()  # nothing ran
    index = (week / "index.html").read_text()
    assert "1 skipped (data set missing)" in index and expected_root in index
    assert 'href="None"' not in index and "executed .ipynb" not in index  # no notebook to link to
    assert expected_root in (week / "faces.html").read_text()


def test_found_data_set_runs_the_study_on_it_and_the_report_names_it(project, tmp_path):
    write_rafdb_official(tmp_path / "lab-data" / RAFDB_DIR, train_per_class=1, test_per_class=1, size=16)
    assert run(project, data="rafdb", fresh=True) == EXIT_OK
    week = project / "reports" / WEEK
    assert (project / "runs" / "rafdb.txt").read_text() == "{}"  # the notebook was given rafdb
    record = json.loads((week / "summary.json").read_text())["studies"]["faces"]
    assert record["data"]["name"] == "rafdb" and record["data"]["counts"]["train_images"] == 7
    assert record["data"]["fingerprint"] and record["headline"] == {"fresh": "1"}  # --fresh reached the kernel
    assert record["runs"] == {"runs": 2, "reused": 1, "trained": 1, "reused_from": "2026-03-02",
                              "reused_to": "2026-03-02"}
    index = (week / "index.html").read_text()
    assert f"rafdb at {tmp_path / 'lab-data' / RAFDB_DIR}" in index
    assert "1 of 2 reused (finished 2026-03-02; same config, code and data), 1 trained" in index
    assert f"data: rafdb at {tmp_path / 'lab-data' / RAFDB_DIR}" in (week / "faces.html").read_text()


def test_each_study_checks_its_own_data_set_without_data(project):
    assert run(project) == EXIT_OK  # synthetic faces and easy-VQA are always there
    studies = json.loads((project / "reports" / WEEK / "summary.json").read_text())["studies"]
    assert {n: s["data"]["name"] for n, s in studies.items()} == {"faces": "synthetic_faces", "vqa": "easy_vqa"}
    assert studies["vqa"]["headline"] == {"fresh": ""}


def test_bad_data_choices_fail_before_anything_runs(project):
    with pytest.raises(ConfigError, match="--data rafdbb: unknown data set: did you mean 'rafdb'"):
        run(project, data="rafdbb")
    with pytest.raises(ConfigError, match="--data vqa_v2: faces cannot run on it"):
        run(project, data="vqa_v2", only=["faces"])
    assert not (project / "reports").exists()


@pytest.fixture
def lab_project(tmp_path, monkeypatch):
    """A copy of the project's notebooks and params as the project root, and an empty data root."""
    root = tmp_path / "project"
    for folder in ("notebooks", "params"):
        shutil.copytree(REPO / folder, root / folder)
    (root / "pyproject.toml").write_text("")
    monkeypatch.setenv("VQALAB_ROOT", str(root))
    monkeypatch.setenv("VQALAB_DATA", str(tmp_path / "lab-data"))
    monkeypatch.setenv("VQALAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(root)
    return root


COMMAND = ["report", "--preset", "quick", "--data", "rafdb", "--only", "cls_vs_baseline", "--week", WEEK]


def test_report_on_rafdb_absent_is_skipped_with_no_run_folder(lab_project, tmp_path):
    assert cli.main(COMMAND) == EXIT_SKIPPED
    assert not (lab_project / "runs").exists()
    index = (lab_project / "reports" / WEEK / "index.html").read_text()
    assert str(tmp_path / "lab-data" / RAFDB_DIR) in index and "skipped" in index


@pytest.mark.slow
def test_report_on_rafdb_trains_on_it(lab_project, tmp_path):
    write_rafdb_official(tmp_path / "lab-data" / RAFDB_DIR, train_per_class=4, test_per_class=2, size=32)
    assert cli.main(COMMAND) == EXIT_OK
    params = [yaml.safe_load(p.read_text()) for p in (lab_project / "runs").glob("*/*/params.yaml")]
    assert params and all(p["data"]["name"] == "rafdb" for p in params)
    assert all("img_size" not in p["model"] for p in params)  # the image size comes from the data
    html = (lab_project / "reports" / WEEK / "cls_vs_baseline.html").read_text()
    assert f"data: rafdb at {tmp_path / 'lab-data' / RAFDB_DIR}" in html


def test_switching_data_set_keeps_the_keywords_the_new_one_takes():
    from vqalab.inventory import catalogue
    from vqalab.report.data import with_data as with_data_of

    def with_data(study, name):
        return with_data_of(study, name, catalogue())

    study = {"name": "vqa_models", "parameters": {"dataset_kwargs": {"max_train_samples": 1000, "group_by_image": True}},
             "defaults": {"dataset": "easy_vqa", "dataset_kwargs": {}}}
    moved = with_data(study, "vqa_v2")["parameters"]
    assert moved == {"dataset": "vqa_v2", "dataset_kwargs": {"max_train_samples": 1000, "group_by_image": True}}
    cached = {"name": "vqa_models", "defaults": {"dataset": "easy_vqa", "dataset_kwargs": {}},
              "parameters": {"dataset": "frozen_features", "dataset_kwargs": {"source": {"name": "easy_vqa"},
                                                                               "encoder": "resnet18"}}}
    assert with_data(cached, "vqa_v2")["parameters"]["dataset_kwargs"] == {"source": {"name": "vqa_v2"},
                                                                          "encoder": "resnet18"}
    faces = {"name": "lr_search", "parameters": {"num_train": 64}, "defaults": {"dataset": "synthetic_faces",
                                                                               "dataset_kwargs": {}}}
    assert with_data(faces, "rafdb")["parameters"] == {"num_train": 64, "dataset": "rafdb", "dataset_kwargs": {}}


@pytest.mark.slow
def test_every_study_runs_on_the_fixture_lab_data_and_names_it(lab_project, tmp_path):
    from data_fixtures import write_lab_data

    write_lab_data(tmp_path / "lab-data", rafdb_layout="imagefolder")
    week = lab_project / "reports" / WEEK
    assert run_report(preset="quick", data="rafdb", week=WEEK) == EXIT_OK
    assert run_report(preset="quick", data="vqa_v2", week=WEEK) == EXIT_OK
    studies = json.loads((week / "summary.json").read_text())["studies"]
    assert len(studies) == 6  # the five FER studies and vqa_models; batch_size_throughput takes no data set
    for name, record in studies.items():
        data_set = "vqa_v2" if name == "vqa_models" else "rafdb"
        assert record["status"] == "ok" and record["data"]["name"] == data_set, name
        assert f"data: {data_set} at {tmp_path / 'lab-data'}" in (week / f"{name}.html").read_text(), name


def test_the_inventory_child_answers_as_the_loaders_do_in_this_process(tmp_path, monkeypatch):
    """The report asks a child process for the data sets and the device; its answer is what this
    process, which imports the loaders, computes for the same data sections."""
    from vqalab.data import DATASETS, FAMILIES, data_status
    from vqalab.inventory import data_record
    from vqalab.report.data import ask_inventory
    from vqalab.runs import environment

    monkeypatch.setenv("VQALAB_DATA", str(tmp_path / "lab-data"))
    specs = [{"name": "synthetic_faces", "num_train": 64, "image_size": 16}, None, {"name": "rafdb"}]
    answer = ask_inventory(specs, REPO)
    assert answer["statuses"] == [data_record(data_status(specs[0])), None, data_record(data_status(specs[2]))]
    assert answer["statuses"][0]["found"] and not answer["statuses"][2]["found"]
    assert str(tmp_path / "lab-data" / RAFDB_DIR) == answer["statuses"][2]["root"]
    assert {name: d["family"] for name, d in answer["datasets"].items()} == FAMILIES
    assert answer["datasets"]["rafdb"]["keywords"] == list(DATASETS.parameters("rafdb"))
    assert answer["environment"] == environment(root=REPO)  # device cpu: the suite sets $VQALAB_DEVICE


def test_a_bad_data_section_in_the_inventory_child_is_the_reports_config_error(monkeypatch):
    from vqalab.report import data as report_data

    with pytest.raises(ConfigError, match="rafdbb.*rafdb"):  # the registry's did-you-mean, from the child
        report_data.ask_inventory([{"name": "rafdbb"}], REPO)
    monkeypatch.setattr(report_data, "INVENTORY_MODULE", "vqalab.no_such_module")
    with pytest.raises(RuntimeError, match="exit status 1: .*No module named vqalab.no_such_module"):
        report_data.ask_inventory([], REPO)  # any other failure names the command and its error


def test_a_studys_data_section_is_the_one_its_runs_use():
    """The data line and status of a FER study describe the faces its runs train on (the preset's
    image size and counts), not the builder's defaults."""
    from vqalab.report.data import study_dataset
    from vqalab.report.presets import plan_studies

    plan = {s["name"]: s for s in plan_studies(preset="cpu", only=None, notebooks_dir=REPO / "notebooks",
                                               params_dir=REPO / "params", runs_root=None)}
    base = yaml.safe_load((REPO / "params" / "fer_base.yaml").read_text())["presets"]
    cpu = {**base["quick"], **base["cpu"]}
    for name in ("lr_search", "depth_test", "adam_eps_beta", "regularisation", "cls_vs_baseline"):
        assert study_dataset(plan[name]) == {"name": "synthetic_faces", "num_train": cpu["num_train"],
                                             "num_val": cpu["num_val"], "image_size": cpu["img_size"],
                                             **cpu["face_options"], **cpu["dataset_kwargs"]}, name
    assert study_dataset(plan["vqa_models"]) == {"name": "easy_vqa"}
    assert study_dataset(plan["batch_size_throughput"]) is None  # driven by a params file
