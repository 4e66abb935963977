"""Studies run two at a time (``run_report(jobs=2)``): lanes by experiment, the same week as one
after the other, a failing lane not stopping the other, and what two lanes wanting one point would do."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import write_notebook

from vqalab import runs
from vqalab.registry import ConfigError
from vqalab.report import run_report
from vqalab.report.lanes import longest_first, run_lanes, share_groups
from vqalab.sweep import sweep

WEEK = "2026-W12"
SLEEP_S = {"a1": 2, "a2": 2, "b": 4}  # b's lane runs while a1 and a2 run one after the other


def study(name: str, experiment: str | None = None) -> dict:
    return {"name": name, "title": name, "parameters": {} if experiment is None else {"experiment": experiment},
            "defaults": {}}


def die_or_record(study: dict, *, line, **kwargs) -> dict:
    """A stand-in for ``run_study`` in a lane's process: "crash" kills its process."""
    if study["name"] == "crash":
        os._exit(3)
    return {"name": study["name"], "status": "ok", "pid": os.getpid(), "share": os.environ.get("VQALAB_CPU_SHARE")}


def test_a_lane_whose_process_dies_goes_on_in_a_new_one_and_the_other_lane_goes_on():
    plan = [study("crash", "e"), study("after", "e"), study("other", "f"), study("other2", "f")]
    records = {s["name"]: r for s, r in run_lanes(plan, jobs=2, run_study=die_or_record, study_kwargs=lambda s: {},
                                                  durations={}, preset="quick")}
    assert records["crash"]["status"] == "failed" and "the study's process ended" in records["crash"]["error"]
    assert records["after"]["status"] == "ok" and records["after"]["share"] == "2"  # its lane, a new process
    assert records["other"]["pid"] == records["other2"]["pid"] != records["after"]["pid"]  # a lane keeps its process
    assert [s["name"] for s, _ in run_lanes(plan[1:3], jobs=1, run_study=lambda s: {}, study_kwargs=lambda s: {},
                                            durations={}, preset="quick")] == ["after", "other"]  # one lane: here, in order


def test_studies_sharing_an_experiment_share_a_lane_longest_first():
    plan = [study("adam", "fer_tuning"), study("bst"), study("cls", "fer_tuning"), study("vqa", "vqa_models"),
            {**study("depth"), "defaults": {"experiment": "fer_tuning"}}]  # the notebook's default experiment
    groups = share_groups(plan)
    assert [[s["name"] for s in g] for g in groups] == [["adam", "cls", "depth"], ["bst"], ["vqa"]]
    durations = {"adam": 90.0, "cls": 100.0, "depth": 120.0, "bst": 20.0, "vqa": 160.0}
    assert [[s["name"] for s in g] for g in longest_first(groups, durations)] == [["adam", "cls", "depth"], ["vqa"],
                                                                                  ["bst"]]
    # without last week's times a study counts as the mean of the known ones (here: none, so 1 each)
    assert [s["name"] for s in longest_first(groups, {})[0]] == ["adam", "cls", "depth"]


def test_a_point_still_training_in_another_lane_is_trained_again_in_its_own_folder(tmp_path):
    """Why studies sharing runs stay in one lane: a sweep reuses only finished runs, read when it
    starts. A point another process is training (``running``, its folder locked) is trained again
    beside it, into a new folder; the other run is left alone, and neither waits nor fails."""
    base = {"experiment": "shared", "name": "pt", "runs_root": str(tmp_path),
            "model": {"name": "vqa_mean_mlp", "cnn_channels": [4, 8], "embed_dim": 8, "hidden_dim": 16},
            "data": {"name": "easy_vqa", "max_train_samples": 32, "max_val_samples": 16},
            "train": {"epochs": 1, "batch_size": 16, "num_threads": 1, "progress": False}}
    first = sweep(base, {"optim.lr": [1e-3]}, seeds=[0])
    other = Path(first["run_dir"][0])
    summary = json.loads((other / "summary.json").read_text())
    (other / "summary.json").write_text(json.dumps({**summary, "status": "running"}))  # as while it trains
    with runs.folder_lock(other, "run folder"):
        again = sweep(base, {"optim.lr": [1e-3]}, seeds=[0])
    assert not again["reused"][0] and again["status"][0] == "completed"
    assert Path(again["run_dir"][0]) != other and Path(again["run_dir"][0]).parent == other.parent
    assert json.loads((other / "summary.json").read_text())["status"] == "running"  # untouched


def make_lanes_project(root: Path) -> Path:
    """a1, a2 share experiment e (one lane), b has its own; broken fails at once. Each records when
    it ran and the share of the cores its kernel was given."""
    (root / "notebooks").mkdir(parents=True)
    (root / "params").mkdir()
    for name, experiment in (("a1", "e"), ("a2", "e"), ("b", "f")):
        write_notebook(
            root / "notebooks" / f"{name}.ipynb", f"Study {name}",
            f'experiment: str = "{experiment}"  # runs folder\nruns_root: str = "runs"  # where runs go\n'
            f"value: float = {SLEEP_S[name] / 10}  # the headline figure",
            "import json, os, time\nfrom pathlib import Path\nstart = time.time()\n"
            f"time.sleep({SLEEP_S[name]})\n"
            "folder = Path(runs_root) / experiment\nfolder.mkdir(parents=True, exist_ok=True)\n"
            f"(folder / '{name}.json').write_text(json.dumps({{'start': start, 'end': time.time(), "
            "'share': os.environ.get('VQALAB_CPU_SHARE')}))",
            "from vqalab.notebook import findings\n"
            f"findings(headline={{'value': value}}, text=[f'{name} found {{value}}'])")
        (root / "params" / f"{name}.yaml").write_text("presets:\n  quick: {}\n")
    write_notebook(root / "notebooks" / "broken.ipynb", "Broken study", "fail: bool = True  # raise on purpose",
                   "if fail:\n    raise ValueError('planned failure')")
    (root / "params" / "broken.yaml").write_text("presets:\n  quick: {}\n")
    return root


def ran(runs_root: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in runs_root.glob("*/*.json")}


def page_text(path: Path) -> str:
    """A page with its times, durations and cell ids taken out (they differ from run to run; the
    two projects' notebooks were written apart)."""
    return re.sub(r"\d+", "N", re.sub(r'id="cell-id=[^"]*"', "", path.read_text(encoding="utf-8")))


@pytest.mark.slow
def test_two_lanes_write_the_same_week_as_one_and_a_failure_stops_no_lane(tmp_path):
    serial = make_lanes_project(tmp_path / "serial")
    parallel = make_lanes_project(tmp_path / "parallel")
    assert run_report(root=serial, preset="quick", week=WEEK, runs_root=serial / "runs", jobs=1) == 1
    assert run_report(root=parallel, preset="quick", week=WEEK, runs_root=parallel / "runs", jobs=2) == 1

    one, two = ran(serial / "runs"), ran(parallel / "runs")
    assert {r["share"] for r in one.values()} == {None} and {r["share"] for r in two.values()} == {"2"}
    assert one["a1"]["end"] <= one["a2"]["start"] and one["a2"]["end"] <= one["b"]["start"]
    assert two["a1"]["end"] <= two["a2"]["start"]  # one lane: a2 after a1, so a2 can reuse a1's runs
    assert two["b"]["start"] < two["a1"]["end"] and two["a1"]["start"] < two["b"]["end"]  # side by side

    summaries = [json.loads((p / "reports" / WEEK / "summary.json").read_text()) for p in (serial, parallel)]
    for summary in summaries:  # the report's order, whichever lane ended first
        assert list(summary["studies"]) == ["a1", "a2", "b", "broken"]
        assert [s["status"] for s in summary["studies"].values()] == ["ok", "ok", "ok", "failed"]
        assert "planned failure" in summary["studies"]["broken"]["error"]
    for name in ("a1", "a2", "b", "broken"):
        records = [s["studies"][name] for s in summaries]
        for key in ("headline", "noise", "text", "status", "runs", "log", "html", "notebook"):
            assert records[0].get(key) == records[1].get(key), (name, key)
        assert records[0]["parameters"] == json.loads(json.dumps(records[1]["parameters"]).replace("parallel", "serial"))
    files = [sorted(str(p.relative_to(p0)) for p in p0.rglob("*") if p.is_file())
             for p0 in (serial / "reports" / WEEK, parallel / "reports" / WEEK)]
    assert files[0] == files[1]
    for page in ("a1.html", "a2.html", "b.html", "broken.html", "index.html"):
        assert page_text(serial / "reports" / WEEK / page) == \
            page_text(parallel / "reports" / WEEK / page).replace("parallel", "serial"), page
    index = (parallel / "reports" / WEEK / "index.html").read_text()
    assert index.index("a1.html") < index.index("a2.html") < index.index("b.html") < index.index("broken.html")


def test_jobs_must_be_a_positive_number(tmp_path):
    root = make_lanes_project(tmp_path / "project")
    with pytest.raises(ConfigError, match=r"--jobs 0: expected a whole number of studies at once, 1 or more"):
        run_report(root=root, preset="quick", week=WEEK, jobs=0)
    assert not (root / "reports").exists()
    shutil.rmtree(root)


def test_without_jobs_one_lane_goes_to_a_gpu_and_the_cpu_gets_one_per_free_core(monkeypatch):
    from vqalab.report import lanes
    from vqalab.threads import ThreadChoice

    monkeypatch.setattr(lanes, "choose_threads", lambda: ThreadChoice(3, "3 cores in affinity, 3 free"))
    assert lanes.default_jobs("cuda") == 1 and lanes.default_jobs("cuda:1") == 1 and lanes.default_jobs("mps") == 1
    assert lanes.default_jobs("cpu") == 3
