"""Sweeps on an Optuna study: each point queued once, trained once by whichever worker takes it,
a dead worker's point queued again to resume from its last checkpoint (in its folder, or on another
machine from the artifact store), failures recorded and not retried, the table equal to the
in-process sweep's and complete from the study alone. Tiny easy-VQA runs on the CPU."""

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from optuna.trial import TrialState

from vqalab import runs, train
from vqalab.registry import ConfigError
from vqalab.sweep import sweep
from vqalab.sweep_queue import (
    SweepSpec,
    Worker,
    create_sweep,
    fail_stale_trials,
    load_spec,
    load_sweep,
    retry_history,
    sweep_metrics,
    sweep_status,
    sweep_table,
    take_waiting_trial,
)

REPO = Path(__file__).resolve().parents[1]
# Debian's server binaries (postgresql-15 on bookworm); the newest installed version is used.
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), default=Path("/usr/lib/postgresql/15/bin"))
FIGURES = ["best_val_acc", "best_val_loss", "final_val_acc", "best_epoch", "epochs", "steps"]


def base(runs_root, epochs=2):
    return {
        "experiment": "queue", "name": "pt", "runs_root": str(runs_root),
        "model": {"name": "vqa_mean_mlp", "cnn_channels": [4, 8], "embed_dim": 8, "hidden_dim": 16},
        "data": {"name": "easy_vqa", "max_train_samples": 64, "max_val_samples": 16},
        "train": {"epochs": epochs, "batch_size": 16, "num_threads": 1, "device": "cpu", "progress": False},
    }


def spec(runs_root, name="grid", lrs=(1e-3, 2e-3), seeds=(0,), epochs=2):
    return SweepSpec(name=name, base=base(runs_root, epochs), grid={"optim.lr": list(lrs)}, seeds=list(seeds))


def point_trials(study, name=None):
    """The study's trials of sweep points (not a trial ask() made when the queue had just emptied)."""
    return [t for t in study.get_trials() if "point" in t.user_attrs and name in (None, t.user_attrs["name"])]


def run_folders(runs_root):
    return sorted(p for p in (Path(runs_root) / "queue").iterdir() if (p / "params.yaml").is_file())


def worker_env(extra_path=None):
    path = [str(REPO)] + ([str(extra_path)] if extra_path else []) + [os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p), "OMP_NUM_THREADS": "1"}


def start_worker(name, storage, env, *extra):
    return subprocess.Popen([sys.executable, "-m", "vqalab.cli", "sweep", "work", name, "--storage", str(storage),
                             "--heartbeat", "0.5", "--grace", "4", *extra], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_all(procs, timeout=600):
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        outputs.append(out.decode(errors="replace"))
    return outputs


# -- queue bookkeeping, no training -------------------------------------------------------------


def test_spec_file_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": base(tmp_path), "grid": {"optim.lr": [1e-3]}, "seed": [0]}))
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key\(s\) seed"):
        load_spec(bad)
    bad.write_text(yaml.safe_dump({"base": "nowhere.yaml", "grid": {"optim.lr": [1e-3]}}))
    with pytest.raises(ConfigError, match="base = 'nowhere.yaml': no such params file"):
        load_spec(bad)
    bad.write_text(yaml.safe_dump({"base": base(tmp_path), "grid": {"optim.lr": [1e-3, -1.0]}}))
    with pytest.raises(ConfigError, match="optim.lr = -1"):
        load_spec(bad)
    bad.write_text(yaml.safe_dump({"base": base(tmp_path), "grid": {"optim.lr": [1e-3]}, "pruner": "asa"}))
    with pytest.raises(ConfigError, match=r"bad.yaml: pruner = 'asa': expected one of asha, hyperband, median"):
        load_spec(bad)
    assert not (tmp_path / "queue").exists()  # nothing created for a bad spec


def test_spec_base_file_is_read_beside_the_spec(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base(tmp_path)))
    (tmp_path / "depth.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "grid": {"optim.lr": [1e-3, 2e-3]},
                                                         "seeds": [0, 1]}))
    loaded = load_spec(tmp_path / "depth.yaml")
    assert loaded.name == "depth" and loaded.base["model"]["hidden_dim"] == 16
    assert [p.cfg.name for p in loaded.points()] == ["pt-lr=0.001_s0", "pt-lr=0.001_s1", "pt-lr=0.002_s0", "pt-lr=0.002_s1"]


def test_every_point_is_queued_once_and_a_grown_grid_adds_only_new_points(tmp_path):
    storage, added = create_sweep(spec(tmp_path, seeds=[0, 1]))
    assert added == 4 and Path(storage) == tmp_path / "queue" / "sweeps" / "grid.journal"
    assert (tmp_path / "queue" / "sweeps" / "grid.artifacts").is_dir()  # the default artifact store, beside it
    assert create_sweep(spec(tmp_path, seeds=[0, 1]), storage)[1] == 0  # created again: nothing added
    assert create_sweep(spec(tmp_path, lrs=(1e-3, 2e-3, 4e-3), seeds=[0, 1]), storage)[1] == 2
    study, _ = load_sweep("grid", storage)
    params = [json.loads(t.user_attrs["point"]) for t in study.get_trials()]
    assert len(params) == 6 and len({json.dumps(p, sort_keys=True) for p in params}) == 6
    assert {"optim.lr": 4e-3, "seed": 1} in params
    assert [t.state for t in study.get_trials()] == [TrialState.WAITING] * 6
    with pytest.raises(ConfigError, match="already exists with another base, seeds"):
        create_sweep(spec(tmp_path, seeds=[0, 1, 2]), storage)
    with pytest.raises(ConfigError, match=r"uploads to the artifact store .*grid\.artifacts, not .*elsewhere"):
        create_sweep(spec(tmp_path, seeds=[0, 1]), storage, artifacts=tmp_path / "elsewhere")


@pytest.mark.parametrize("location, match", [
    ("gs://bucket", r"artifact store gs://bucket: expected a folder or s3://<bucket>"),
    ("s3://bucket/prefix", r"artifact store s3://bucket/prefix: expected s3://<bucket> \(the bucket alone\)"),
])
def test_an_artifact_store_that_cannot_be_used_is_refused_before_anything_is_queued(tmp_path, location, match):
    with pytest.raises(ConfigError, match=match):
        create_sweep(spec(tmp_path), artifacts=location)
    assert not (tmp_path / "queue").exists()


def test_an_s3_artifact_store_without_boto3_names_the_missing_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 → ImportError, installed or not
    with pytest.raises(ConfigError, match=r"artifact store s3://lab-sweeps: an s3:// store needs boto3, which is "
                                          r"not installed \(pip install boto3\)"):
        create_sweep(spec(tmp_path), artifacts="s3://lab-sweeps")


def test_a_dead_workers_trial_is_queued_again_once_to_resume_its_run(tmp_path):
    storage, _ = create_sweep(spec(tmp_path, lrs=(1e-3,)))
    study, _ = load_sweep("grid", storage)
    trial = take_waiting_trial(study)
    assert take_waiting_trial(study) is None  # one point: nobody else gets it
    trial.set_user_attr("run_dir", "/runs/queue/dead")
    trial.set_user_attr("checkpoint", {"epoch": 2, "artifact_id": "a1"})
    time.sleep(0.6)  # the trial started longer ago than the grace period below ...
    trial.set_user_attr("heartbeat_at", time.time())  # ... but beats
    fail_stale_trials(study, grace_s=0.5, max_retries=3)  # beating: left alone
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]

    trial.set_user_attr("heartbeat_at", time.time() - 61)
    other, _ = load_sweep("grid", storage)  # a second worker process reaps at the same time
    fail_stale_trials(study, grace_s=0.5, max_retries=3)
    fail_stale_trials(other, grace_s=0.5, max_retries=3)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]  # one retry, not two
    retry = trials[1]
    assert retry_history(retry) == [0]
    assert {k: retry.user_attrs[k] for k in ("name", "point", "run_dir", "checkpoint")} == {
        "name": "pt-lr=0.001_s0", "point": trials[0].user_attrs["point"], "run_dir": "/runs/queue/dead",
        "checkpoint": {"epoch": 2, "artifact_id": "a1"}}  # what the next worker resumes from
    assert sweep_status("grid", storage)["points"][0]["retries"] == 1

    taken = take_waiting_trial(study)  # the retry's worker dies as well, retries used up
    assert taken.number == 1
    taken.set_user_attr("heartbeat_at", time.time() - 61)
    time.sleep(0.6)
    fail_stale_trials(study, grace_s=0.5, max_retries=1)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.FAIL]
    assert sweep_table("grid", storage).loc[0, ["status", "error"]].tolist() == ["failed", "worker lost"]


def test_a_finished_point_is_reused_not_trained(tmp_path, monkeypatch):
    done = sweep(base(tmp_path), {"optim.lr": [1e-3]}, seeds=[0])
    storage, _ = create_sweep(spec(tmp_path, lrs=(1e-3,)))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(subprocess, "Popen", no_training)
    assert Worker("grid", storage, heartbeat_s=0.5).run() == 1
    table = sweep_table("grid", storage)
    assert table.loc[0, "reused"] and table.loc[0, "run_dir"] == done.loc[0, "run_dir"]
    assert table.loc[0, "best_val_acc"] == done.loc[0, "best_val_acc"]
    assert len(run_folders(tmp_path)) == 1
    shutil.rmtree(done.loc[0, "run_dir"])  # the table needs no run folder
    assert sweep_table("grid", storage).loc[0, "best_val_acc"] == done.loc[0, "best_val_acc"]
    assert sweep_metrics("grid", storage)["epoch"].tolist() == [1, 2]  # metrics.csv rows, from the study
    status = sweep_status("grid", storage)
    assert status["counts"] == {"completed": 1} and status["points"][0]["reused"] and status["eta_s"] == 0.0


# -- worker processes ---------------------------------------------------------------------------

HOPELESS_SITECUSTOMIZE = '''
import os
_lr = os.environ.get("VQALAB_TEST_HOPELESS_LR")  # validation accuracy 0 at this LR, >= 0.5 elsewhere
if _lr:
    import vqalab.train as _train
    _evaluate = _train.evaluate

    def _hopeless_evaluate(model, data, cfg, device):
        loss, acc, preds = _evaluate(model, data, cfg, device)
        return loss, 0.0 if cfg.optim.lr == float(_lr) else 0.5 + acc / 2, preds

    _train.evaluate = _hopeless_evaluate
'''


def test_a_queued_sweep_prunes_a_hopeless_point_and_reports_reused_runs(tmp_path, monkeypatch):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOPELESS_SITECUSTOMIZE)
    for name, value in worker_env(hook).items():  # the trial processes inherit this environment
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VQALAB_TEST_HOPELESS_LR", "0.002")
    pruned_spec = dataclasses.replace(spec(tmp_path, lrs=(1e-3, 2e-3), epochs=3), pruner="asha")
    storage, _ = create_sweep(pruned_spec)
    assert Worker("grid", storage, heartbeat_s=0.5).run() == 2  # one lane: the points in grid order
    table = sweep_table("grid", storage)
    assert list(table["status"]) == ["completed", "pruned"]
    assert list(table["epochs"]) == [3, 1] and table.loc[1, "pruned_at_epoch"] == 1  # ASHA's first rung
    summary = json.loads((Path(table.loc[1, "run_dir"]) / "summary.json").read_text())
    assert (summary["status"], summary["pruned_by"], summary["pruned_at_epoch"]) == ("pruned", "asha", 1)
    study, _ = load_sweep("grid", storage)
    trials = point_trials(study)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert sorted(trials[0].intermediate_values) == [1, 2, 3] and sorted(trials[1].intermediate_values) == [1]
    assert sweep_metrics("grid", storage).groupby("optim.lr")["epoch"].max().tolist() == [3, 1]
    # Another sweep with the same pruner reuses the completed run; its epochs reach the pruner.
    again = dataclasses.replace(pruned_spec, name="again", grid={"optim.lr": [1e-3]})
    storage, _ = create_sweep(again)
    assert Worker("again", storage, heartbeat_s=0.5).run() == 1
    assert sweep_table("again", storage).loc[0, "reused"]
    trial, = point_trials(load_sweep("again", storage)[0])
    assert trial.intermediate_values == trials[0].intermediate_values
    with pytest.raises(ConfigError, match="another base, seeds, reuse setting or pruner"):
        create_sweep(dataclasses.replace(again, pruner="median"), storage)

HOLD_SITECUSTOMIZE = '''
import os, time
_hold = os.environ.get("VQALAB_TEST_HOLD")  # "<run name>|<flag file>": stop that run after epoch 1
if _hold:
    _name, _flag = _hold.split("|")
    import vqalab.runs as _runs
    _save = _runs.save_checkpoint

    def _holding_save(path, payload):
        _save(path, payload)
        if payload["epoch"] == 1 and payload["config"]["name"] == _name and not os.path.exists(_flag):
            with open(_flag, "w") as f:
                f.write(str(path.parent.parent))
            time.sleep(600)  # until its worker is killed

    _runs.save_checkpoint = _holding_save
'''


@pytest.mark.slow
def test_three_workers_one_killed_every_point_once_and_equal_to_the_sequential_sweep(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HOLD_SITECUSTOMIZE)
    held, flag = "pt-lr=0.001_s1", tmp_path / "held"  # taken in the first round
    the_spec = spec(tmp_path / "runs", lrs=(1e-3, 2e-3, 3e-3), seeds=(0, 1, 2), epochs=3)
    storage, added = create_sweep(the_spec)
    assert added == 9
    env = {**worker_env(site), "VQALAB_TEST_HOLD": f"{held}|{flag}"}
    workers = [start_worker("grid", storage, env) for _ in range(3)]
    try:
        deadline = time.time() + 300
        while not flag.exists():
            assert time.time() < deadline, "the held run never reached its first checkpoint"
            time.sleep(0.2)
        held_dir = Path(flag.read_text())
        study, _ = load_sweep("grid", storage)
        # The worker records the run folder within a poll of its creation; a tiny run can reach its
        # first checkpoint sooner, so the kill waits for the record (the contract under test).
        while True:
            owner = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if t.user_attrs["name"] == held]
            if owner and owner[0].user_attrs.get("run_dir"):
                break
            assert time.time() < deadline, "the worker never recorded the held run's folder"
            time.sleep(0.1)
        pid = int(owner[0].user_attrs["worker"].split(":")[1].split("/")[0])
        victim = next(w for w in workers if w.pid == pid)
        os.kill(pid, signal.SIGKILL)
        victim.wait()
        wait_all([w for w in workers if w is not victim])
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()

    table = sweep_table("grid", storage)
    assert len(table) == 9 and set(table["status"]) == {"completed"}
    assert table["run_dir"].nunique() == 9 and len(run_folders(tmp_path / "runs")) == 9  # each point once
    row = table[(table["optim.lr"] == 1e-3) & (table["seed"] == 1)].iloc[0]
    assert row["run_dir"] == str(held_dir)  # continued in the dead worker's folder ...
    summary = json.loads((held_dir / "summary.json").read_text())
    assert [r["from_epoch"] for r in summary["resumed"]] == [1]  # ... from its epoch-1 checkpoint
    trials = point_trials(study, held)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert retry_history(trials[1]) == [trials[0].number] and trials[1].user_attrs["run_dir"] == str(held_dir)
    assert len(point_trials(study)) == 10

    reference = sweep(base(tmp_path / "sequential", epochs=3), {"optim.lr": [1e-3, 2e-3, 3e-3]}, seeds=[0, 1, 2])
    pd.testing.assert_frame_equal(table[["optim.lr", "seed", *FIGURES]], reference[["optim.lr", "seed", *FIGURES]])
    for mine, theirs in zip(table["run_dir"], reference["run_dir"]):
        a = runs.load_checkpoint(train.latest_checkpoint(mine))["model_state"]
        b = runs.load_checkpoint(train.latest_checkpoint(theirs))["model_state"]
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the failing point asks for CUDA, which exists here")
def test_a_point_that_fails_is_recorded_failed_and_not_retried(tmp_path):
    broken = SweepSpec(name="broken", base={**base(tmp_path), "train": {**base(tmp_path)["train"], "device": "cuda"}},
                       grid={"optim.lr": [1e-3]}, seeds=[0])
    storage, _ = create_sweep(broken)
    out = wait_all([start_worker("broken", storage, worker_env())])[0]
    table = sweep_table("broken", storage)
    assert table.loc[0, "status"] == "failed" and "CUDA is not available" in table.loc[0, "error"], out
    study, _ = load_sweep("broken", storage)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL]  # not queued again


# -- PostgreSQL ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server(password: str | None = None):
    """A throw-away PostgreSQL server in a temporary folder (Debian's binaries), stopped afterwards;
    yields its port on 127.0.0.1. ``password``: asked for over TCP (None: no password, trust)."""
    if not (PG_BIN / "initdb").is_file():
        pytest.skip(f"PostgreSQL server binaries not found at {PG_BIN} (apt-get install postgresql)")
    pytest.importorskip("psycopg2", reason="psycopg2 (psycopg2-binary) is not installed")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="vqalab-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None or subprocess.run(["id", "postgres"], capture_output=True, check=False).returncode:
            pytest.skip("running as root without a 'postgres' user and runuser to start the server")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()
    auth = ["-A", "trust"]
    if password is not None:
        (folder / "pw").write_text(password + "\n")
        if as_user:
            shutil.chown(folder / "pw", "postgres")
        auth = ["--auth-host=scram-sha-256", "--auth-local=trust", f"--pwfile={folder / 'pw'}"]
    subprocess.run([*as_user, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", *auth],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(folder / "log"),
                    "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        yield port
    finally:
        subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True, check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url():
    with postgres_server() as port:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"


@pytest.mark.slow
def test_two_workers_on_postgresql_lose_and_duplicate_no_point(tmp_path, postgres_url):
    storage, added = create_sweep(spec(tmp_path, seeds=(0, 1)), postgres_url)
    assert storage == postgres_url and added == 4
    outputs = wait_all([start_worker("grid", postgres_url, worker_env()) for _ in range(2)])
    table = sweep_table("grid", postgres_url)
    assert list(table["status"]) == ["completed"] * 4, outputs
    assert table["run_dir"].nunique() == 4 and len(run_folders(tmp_path)) == 4
    study, _ = load_sweep("grid", postgres_url)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 4
    taken = sorted(int(out.split("sweep grid: ")[1].split(" trials")[0]) for out in outputs)
    assert sum(taken) == 4  # every trial taken by exactly one of the two workers


@pytest.mark.slow
def test_two_machines_without_a_shared_disk_one_killed_mid_trial_resume_from_the_uploaded_checkpoint(
        tmp_path, postgres_url):
    """Two workers, each with its own project root (its own runs/, as on two machines), one
    PostgreSQL storage and one artifact store. Worker A is SIGKILLed while it holds its point after
    the epoch-1 checkpoint, and its whole disk is deleted; worker B continues that point from the
    uploaded checkpoint. The table and the per-epoch metrics come from the study alone."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HOLD_SITECUSTOMIZE)
    machine_a, machine_b, flag = tmp_path / "machine_a", tmp_path / "machine_b", tmp_path / "held"
    machine_a.mkdir()
    machine_b.mkdir()
    the_spec = spec("runs", lrs=(1e-3, 2e-3), epochs=3)  # runs/ of each machine's project root
    held = the_spec.points()[0].cfg.name  # the first point queued: worker A takes it
    create_sweep(the_spec, postgres_url, artifacts=tmp_path / "artifacts")
    env_a = {**worker_env(site), "VQALAB_ROOT": str(machine_a), "VQALAB_TEST_HOLD": f"{held}|{flag}"}
    worker_a = start_worker("grid", postgres_url, env_a)
    worker_b = None
    try:
        study, _ = load_sweep("grid", postgres_url)
        deadline = time.time() + 120
        while True:  # A holds its point after epoch 1, once that checkpoint is uploaded
            owner = [t for t in point_trials(study, held) if t.state == TrialState.RUNNING]
            if flag.exists() and owner and owner[0].user_attrs.get("checkpoint", {}).get("epoch") == 1:
                break
            assert time.time() < deadline and worker_a.poll() is None, "worker A never uploaded its first checkpoint"
            time.sleep(0.2)
        worker_b = start_worker("grid", postgres_url, {**worker_env(), "VQALAB_ROOT": str(machine_b)})
        worker_a.kill()
        worker_a.wait()
        shutil.rmtree(machine_a)  # nothing of A's disk is left to read
        out_b = wait_all([worker_b], timeout=300)[0]
    finally:
        for w in (worker_a, worker_b):
            if w is not None and w.poll() is None:
                w.kill()

    table = sweep_table("grid", postgres_url)
    assert list(table["status"]) == ["completed", "completed"], out_b
    assert all(Path(d).is_relative_to(machine_b / "runs") for d in table["run_dir"])
    trials = point_trials(study, held)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    resumed = trials[1].user_attrs["summary"]["resumed"]
    assert [r["from_epoch"] for r in resumed] == [1]  # from A's uploaded checkpoint, not from the start
    metrics = sweep_metrics("grid", postgres_url)
    assert metrics.groupby("name")["epoch"].apply(list).to_dict() == {p.cfg.name: [1, 2, 3] for p in the_spec.points()}

    reference = sweep(base(tmp_path / "sequential", epochs=3), {"optim.lr": [1e-3, 2e-3]}, seeds=[0])
    pd.testing.assert_frame_equal(table[["optim.lr", "seed", *FIGURES]], reference[["optim.lr", "seed", *FIGURES]])


@pytest.mark.slow
def test_sweep_with_workers_returns_the_in_process_table(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the trial processes import this checkout
    grid = {"optim.lr": [1e-3, 2e-3]}
    spread = sweep(base(tmp_path / "spread"), grid, seeds=[0], workers=2)
    inline = sweep(base(tmp_path / "inline"), grid, seeds=[0])
    assert list(spread.columns) == list(inline.columns) and spread.attrs["grid_keys"] == ["optim.lr"]
    pd.testing.assert_frame_equal(spread[["optim.lr", "seed", "status", *FIGURES]],
                                  inline[["optim.lr", "seed", "status", *FIGURES]])
    assert spread["run_dir"].nunique() == 2 and len(run_folders(tmp_path / "spread")) == 2
    journals = list((tmp_path / "spread" / "queue" / "sweeps").glob("pt-*.journal"))
    assert len(journals) == 1  # the study of this call, beside its runs
    with pytest.raises(ConfigError, match="each worker process loads its own data"):
        sweep(base(tmp_path), grid, data=object(), workers=2)
