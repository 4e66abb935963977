"""Hostile and careless input: every case is refused before any compute with a message naming the
file, key or value; signals, locks, disk full and damaged run files end in a clear message."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from vqalab import io, runs, train
from vqalab.cli import main as cli_main
from vqalab.config import build_config, load_config
from vqalab.registry import ConfigError


def write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(match, path=None, overrides=None):
    with pytest.raises(ConfigError, match=match) as err:
        load_config(path, overrides)
    return str(err.value)


# --- YAML -------------------------------------------------------------------------------------

def billion_laughs(levels: int) -> str:
    text = 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels + 1):
        text += f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n"
    return text + f"train: {{epochs: *a{levels}}}\n"


@pytest.mark.parametrize("levels", [3, 7, 9])
def test_alias_expansion_is_limited_and_the_message_stays_short(tmp_path, levels):
    path = write(tmp_path, billion_laughs(levels))
    message = refused(r"anchors and aliases expand to more than 10000 values", path)
    assert str(path) in message and len(message) < 500


def test_a_small_alias_tree_is_echoed_cut_short(tmp_path):
    # 9 × 9 values: under the expansion limit, but the error must not print the whole tree
    row = "&row [" + ", ".join(["lol"] * 9) + "]"
    path = write(tmp_path, f"train:\n  epochs: [{row}, " + ", ".join(["*row"] * 8) + "]\n")
    message = refused(r"train\.epochs = \[\['lol', ", path)
    assert "..." in message and len(message) < len(str(path)) + 300


def test_duplicate_keys_name_the_file_key_and_both_lines(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 0.1\ntrain:\n  epochs: 2\noptim:\n  eps: 1.0e-7\n")
    message = refused(r"duplicate key 'optim' at lines 1 and 5", path)
    assert str(path) in message
    refused(r"duplicate key 'lr' at lines 2 and 3", write(tmp_path, "optim:\n  lr: 0.1\n  lr: 0.2\n"))


def test_merge_keys_may_still_be_overridden(tmp_path):
    path = write(tmp_path, "base: &base {lr: 0.1, eps: 1.0e-7}\n")
    cfg = load_config(write(tmp_path, "optim:\n  <<: {lr: 0.1, eps: 1.0e-7}\n  lr: 0.2\n"))
    assert cfg.optim.lr == 0.2 and cfg.optim.eps == 1e-7
    assert path.is_file()


def test_non_utf8_params_file_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("optim:\n  lr: 0.1  # taux d'apprentissage élevé\n".encode("latin-1"))
    refused(rf"{path}: not UTF-8 text \(byte 0xe9 at offset \d+\): save the file as UTF-8", path)


def test_binary_params_file_is_refused_quickly(tmp_path):
    path = tmp_path / "random.yaml"
    path.write_bytes(bytes(range(256)) * 64)
    refused(rf"{path}: not UTF-8 text", path)


def test_malformed_override_names_the_override():
    message = refused(r"--set train\.epochs: value '\[1,' is not valid YAML", overrides=["train.epochs=[1,"])
    assert "Traceback" not in message


def test_empty_params_file_is_refused_unless_an_override_confirms(tmp_path):
    path = write(tmp_path, "# nothing here yet\n")
    refused(rf"{path}: the params file is empty: .* give at least one --set", path)
    assert load_config(path, ["train.epochs=1"]).train.epochs == 1


# --- numbers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, match", [
    ("optim:\n  lr: .inf\n", r"optim\.lr = inf: Input should be a finite number"),
    ("optim:\n  lr: 1.0e+400\n", r"optim\.lr = inf: Input should be a finite number"),
    ("optim:\n  eps: .nan\n", r"optim\.eps = nan: Input should be a finite number"),
    ("train:\n  epochs: 99999999999999999999999999999\n", r"train\.epochs = 9999.*less than or equal to 1000000"),
    ("train:\n  max_steps: 99999999999999999999999999999\n", r"train\.max_steps = 9999.*too large"),
    ("seed: 4294967296\n", r"seed = 4294967296: Input should be less than 4294967296"),
    ("optim:\n  betas: [1.5, 0.999]\n", r"optim\.betas\.0 = 1\.5: Input should be less than 1"),
    ("optim:\n  betas: [0.9, -0.1]\n", r"optim\.betas\.1 = -0\.1: Input should be greater than or equal to 0"),
    ("train:\n  device: gpu\n", r"train\.device = 'gpu': .*expected auto, cpu, cuda, cuda:N"),
    ("train:\n  device: 'cuda:x'\n", r"train\.device = 'cuda:x'"),
    ("model:\n  name: vqa_mean_mlp\n  cnn_channels: [-4, 8, 8]\n",
     r"model\.cnn_channels = \(-4, 8, 8\): expected a list of channel counts, each at least 1"),
    ("model:\n  name: vqa_mean_mlp\n  dropout: .nan\n", r"model\.dropout = nan: expected a finite number"),
    ("data:\n  name: easy_vqa\n  max_train_samples: 0\n", r"data\.max_train_samples = 0: expected at least 1"),
    ("data:\n  name: easy_vqa\n  max_val_samples: -3\n", r"data\.max_val_samples = -3: expected at least 1"),
])
def test_out_of_range_numbers_are_refused_naming_file_and_key(tmp_path, text, match):
    path = write(tmp_path, text)
    message = refused(match, path)
    assert message.startswith(str(path))


def test_valid_devices_pass_validation():
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert build_config({"train": {"device": device}}).train.device == device


def test_huge_value_in_an_error_is_cut_short(tmp_path):
    path = write(tmp_path, "name: " + "x" * 100 + "\nexperiment: [" + ", ".join(["1"] * 5000) + "]\n")
    message = refused(r"experiment = \[1, 1, ", path)
    assert len(message) < 400


# --- training: device, runs_root, locks, resume checks, signals, disk full, umask ----------------

DATA_SPEC = {"name": "easy_vqa", "max_train_samples": 32, "max_val_samples": 16}


def tiny_config(runs_root, **train_overrides):
    return build_config({
        "experiment": "hard", "name": "tiny", "seed": 1, "runs_root": str(runs_root),
        "model": {"name": "vqa_mean_mlp", "cnn_channels": [4, 8], "embed_dim": 8, "hidden_dim": 16},
        "data": DATA_SPEC,
        "train": {"epochs": 3, "batch_size": 16, "num_threads": 1, "progress": False, **train_overrides},
    })


@pytest.fixture(scope="module")
def data():
    from vqalab.data import build_data

    return build_data(DATA_SPEC)


@pytest.fixture
def no_data_loading(monkeypatch):
    """Fail loudly if a check happens only after the data started loading."""
    def build_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the check")

    monkeypatch.setattr(train, "build_data", build_data)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_before_the_data_loads(tmp_path, no_data_loading):
    with pytest.raises(ConfigError, match=r"train\.device = 'cuda': CUDA is not available on this machine"):
        train.fit(tiny_config(tmp_path, device="cuda"))


def test_runs_root_that_is_a_file_or_read_only_is_refused_before_the_data_loads(tmp_path, no_data_loading,
                                                                              monkeypatch):
    a_file = tmp_path / "runs.txt"
    a_file.write_text("not a folder")
    with pytest.raises(ConfigError, match=rf"runs_root = '{a_file}/sub': {a_file} is a file, not a folder"):
        train.fit(tiny_config(a_file / "sub"))
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o555)
    if os.access(read_only, os.W_OK):  # root writes anywhere: answer as the file system would for a user
        monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match=rf"runs_root = '{read_only}': {read_only} is not writable"):
        train.fit(tiny_config(read_only))


def test_run_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        runs.write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o077)
        runs.write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644  # readable by the lab group
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A 3-epoch run whose summary is then set back to 'running' by each test's copy."""
    return train.fit(tiny_config(tmp_path_factory.mktemp("finished")), data=data)


def unfinished_copy(finished, tmp_path):
    """A copy of the finished run that looks killed after its last checkpoint (resumable)."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished.run_dir, run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    runs.write_json(run_dir / "summary.json", {**summary, "status": "running"})
    return run_dir


def test_a_run_folder_in_use_is_refused_naming_the_holder(finished, tmp_path, data):
    run_dir = unfinished_copy(finished, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from vqalab.runs import folder_lock
        with folder_lock(Path({str(run_dir)!r}), "run folder"):
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(io.FolderBusy, match=rf"run folder {run_dir} is in use by another process "
                                                  rf"\(PID {holder.pid} since "):
            train.fit(tiny_config(finished.run_dir.parents[1]), data=data, resume=run_dir)
    finally:
        holder.kill()
        holder.wait()
    # the lock goes with its holder, even a killed one
    assert train.fit(tiny_config(finished.run_dir.parents[1]), data=data, resume=run_dir).summary["status"] == "completed"


def test_metrics_csv_cut_to_its_header_is_refused_on_resume(finished, tmp_path, data):
    run_dir = unfinished_copy(finished, tmp_path)
    metrics = run_dir / "metrics.csv"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
    with pytest.raises(ConfigError, match=rf"resume: {metrics} disagrees with checkpoint "
                                          rf"{run_dir}/checkpoints/epoch_003\.pt: it has epochs \[\] up to epoch 3"):
        train.fit(tiny_config(finished.run_dir.parents[1]), data=data, resume=run_dir)


def test_an_edited_metrics_value_is_refused_on_resume(finished, tmp_path, data):
    run_dir = unfinished_copy(finished, tmp_path)
    rows = runs.read_metrics_rows(run_dir / "metrics.csv")
    real = rows[1]["val_acc"]
    rows[1]["val_acc"] = 0.99
    runs.write_metrics(run_dir / "metrics.csv", rows)
    with pytest.raises(ConfigError, match=rf"epoch 2 val_acc is 0\.99, the checkpoint recorded {real!r}"):
        train.fit(tiny_config(finished.run_dir.parents[1]), data=data, resume=run_dir)


def test_a_truncated_last_checkpoint_names_it_and_the_previous_intact_one(finished, tmp_path, data):
    run_dir = unfinished_copy(finished, tmp_path)
    last = run_dir / "checkpoints" / "epoch_003.pt"
    last.write_bytes(last.read_bytes()[:5000])
    with pytest.raises(ConfigError, match=rf"{last}: the checkpoint cannot be read \(.*\); the previous intact "
                                          rf"checkpoint is {run_dir}/checkpoints/epoch_002\.pt: move epoch_003\.pt"):
        train.fit(tiny_config(finished.run_dir.parents[1]), data=data, resume=run_dir)
    (run_dir / "checkpoints" / "epoch_002.pt").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"the previous intact checkpoint is .*/epoch_001\.pt"):
        train.fit(tiny_config(finished.run_dir.parents[1]), data=data, resume=run_dir)
    (run_dir / "checkpoints" / "epoch_001.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"and there is no earlier intact checkpoint: start the run again"):
        train.fit(tiny_config(finished.run_dir.parents[1]), data=data, resume=run_dir)
    # following the advice resumes from the intact checkpoint
    (run_dir / "checkpoints" / "epoch_001.pt").write_bytes((finished.run_dir / "checkpoints" / "epoch_001.pt").read_bytes())
    for name in ("epoch_002.pt", "epoch_003.pt"):
        (run_dir / "checkpoints" / name).rename(tmp_path / name)
    result = train.fit(tiny_config(finished.run_dir.parents[1]), data=data, resume=run_dir)
    assert result.summary["status"] == "completed" and result.summary["resumed"][-1]["from_epoch"] == 1


SIGNAL_CHILD = textwrap.dedent("""
    import os, signal, sys
    import vqalab.train as train
    from vqalab import cli

    original = train.train_one_epoch

    def epoch_then_signal(*args, **kwargs):
        if args[7] == 2:  # train_one_epoch(model, opt, sched, scaler, data, cfg, device, epoch, step)
            print("epoch 2 started", flush=True)
            os.kill(os.getpid(), getattr(signal, sys.argv[2]))
        return original(*args, **kwargs)

    train.train_one_epoch = epoch_then_signal
    sys.exit(cli.main(["train", sys.argv[1], "--no-progress"]))
""")


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_sigterm_and_ctrl_c_end_the_run_interrupted_with_the_resume_command(tmp_path, data, signal_name):
    cfg = tiny_config(tmp_path / "runs", checkpoint_every=1)
    params = tmp_path / "params.yaml"
    runs.write_yaml(params, cfg.to_dict())
    (tmp_path / "child.py").write_text(SIGNAL_CHILD)
    # As from a terminal: a shell's background job starts with SIGINT ignored, and Python then
    # installs no Ctrl-C handler (a run started with nohup … & rightly ignores Ctrl-C).
    proc = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(params), signal_name],
                          capture_output=True, text=True, timeout=300, check=False,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    (run_dir,) = list((tmp_path / "runs" / "hard").iterdir())
    assert proc.returncode == 128 + getattr(signal, signal_name), proc.stderr[-2000:]
    assert f"interrupted by {signal_name}" in proc.stderr
    assert f"resumable: vqalab train --resume {run_dir}" in proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["interrupted_by"] == signal_name
    assert summary["resume_command"] == f"vqalab train --resume {run_dir}" and summary["error"] is None
    assert [r["epoch"] for r in runs.read_metrics_rows(run_dir / "metrics.csv")] == [1]
    result = train.fit(cfg, data=data, resume=run_dir)  # and it resumes
    assert result.summary["status"] == "completed" and result.summary["epochs"] == 3


def test_disk_full_while_writing_a_file_says_so_and_where(tmp_path, monkeypatch):
    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "summary.json"
    with pytest.raises(runs.DiskFullError, match=rf"^no space left on device while writing {target}$"):
        runs.atomic_write_bytes(target, full)
    assert list(tmp_path.iterdir()) == []  # no temporary left behind


def test_disk_full_inside_torch_save_is_named_and_recorded(tmp_path, data, monkeypatch, capsys):
    real_save = torch.save

    def short_write(obj, f, *args, **kwargs):  # what torch's zip writer reports on a full disk
        f.write(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 367872 vs 367760")

    monkeypatch.setattr(torch, "save", short_write)
    monkeypatch.setattr(io, "free_bytes", lambda folder: 4096)
    params = tmp_path / "params.yaml"
    runs.write_yaml(params, tiny_config(tmp_path / "runs").to_dict())
    monkeypatch.setattr(train, "build_data", lambda spec, seed=0: data)
    assert cli_main(["train", str(params), "--no-progress"]) == 1
    (run_dir,) = list((tmp_path / "runs" / "hard").iterdir())
    ckpt = run_dir / "checkpoints" / "epoch_001.pt"
    assert capsys.readouterr().err.strip() == f"error: no space left on device while writing {ckpt}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"] == f"DiskFullError: no space left on device while writing {ckpt}"
    monkeypatch.setattr(torch, "save", real_save)


def test_a_torch_write_error_with_free_space_is_not_called_disk_full(tmp_path, monkeypatch):
    def short_write(obj, f, *args, **kwargs):
        raise RuntimeError("unexpected pos 10 vs 2")

    monkeypatch.setattr(torch, "save", short_write)
    monkeypatch.setattr(io, "free_bytes", lambda folder: 10 * 2**30)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        runs.save_checkpoint(tmp_path / "c.pt", {"x": 1})


# --- data files -------------------------------------------------------------------------------

@pytest.fixture
def vqa_root(tmp_path):
    # tests/ is on sys.path (pytest's rootdir-relative import), as test_report_browser uses
    from test_vqa_v2 import write_vqa_v2_fixture

    return write_vqa_v2_fixture(tmp_path / "vqa_v2")


def load_vqa_v2(root, **kwargs):
    from vqalab.data import build_data

    return build_data({"name": "vqa_v2", "root": str(root), "image_size": 32, **kwargs})


@pytest.mark.parametrize("file_key, entries_key, index, drop, match", [
    ("v2_mscoco_train2014_annotations.json", "annotations", 4, "answers",
     r"annotations entry 4 \(question_id 25001\) has no 'answers'"),
    ("v2_OpenEnded_mscoco_val2014_questions.json", "questions", 2, "question_id",
     r"questions entry 2 has no 'question_id'"),
])
def test_vqa_v2_entries_missing_a_key_name_the_file_and_entry(vqa_root, file_key, entries_key, index, drop, match):
    path = vqa_root / file_key
    content = json.loads(path.read_text())
    del content[entries_key][index][drop]
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=rf"vqa_v2: {path}: {match}"):
        load_vqa_v2(vqa_root)


def test_vqa_v2_truncated_image_is_named(vqa_root):
    image = vqa_root / "train2014" / "COCO_train2014_000000000025.jpg"
    image.write_bytes(image.read_bytes()[:200])
    data = load_vqa_v2(vqa_root)
    index = data.train.image_ids.index(25)
    with pytest.raises(ConfigError, match=rf"vqa_v2: {image}: cannot read the image \(image_id 25\)"):
        data.train[index]


def rafdb_root(tmp_path):
    from test_fer_data import write_rafdb

    return write_rafdb(tmp_path / "basic", train_labels=(1, 2, 3), test_labels=(4, 5))


@pytest.mark.parametrize("second_label, labels", [(5, "label 2 and label 5"), (2, "label 2 both times")])
def test_rafdb_image_listed_twice_is_refused_naming_both_lines(tmp_path, second_label, labels):
    from vqalab.data import build_data

    root = rafdb_root(tmp_path)
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    label_file.write_text(label_file.read_text() + f"train_00002.jpg {second_label}\n")
    with pytest.raises(ConfigError, match=rf"{label_file}: image train_00002\.jpg is listed twice, at lines "
                                          rf"2 and 6 \({labels}\): keep one line"):
        build_data({"name": "rafdb", "root": str(root), "image_size": 32})


def test_rafdb_non_utf8_label_file_is_named(tmp_path):
    from vqalab.data import build_data

    root = rafdb_root(tmp_path)
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    label_file.write_bytes(label_file.read_bytes() + b"train_\xff\xfe.jpg 1\n")
    with pytest.raises(ConfigError, match=rf"{label_file}: not UTF-8 text \(byte 0xff at offset \d+\)"):
        build_data({"name": "rafdb", "root": str(root), "image_size": 32})


# --- report -----------------------------------------------------------------------------------

# Run names a hostile user could type; each tries to change the page title when the page opens.
XSS_PAYLOADS = [
    "<svg><style><img src=x onerror=\"document.title='pwned-1'\"></style></svg>",
    ("<svg><animate attributeName=href values=\"javascript:document.title='pwned-2'\"/>"
     "<a id=p2><circle r=400></circle></a></svg>"),
    ("<svg><use href=\"data:image/svg+xml,<svg id='x' xmlns='http://www.w3.org/2000/svg'>"
     "<image href='1' onerror=\"document.title='pwned-3'\"/></svg>#x\"/></svg>"),
    "<img src=x onerror=\"document.title='pwned-4'\">",
    "<svg><style><a title=\"</style><img src=x onerror=document.title='pwned-5'>\"></a></style></svg>",
    ("<math><mtext><table><mglyph><style><img src=x onerror=\"document.title='pwned-6'\">"
     "</style></mglyph></table></mtext></math>"),
    "<noscript><p title=\"</noscript><img src=x onerror=document.title='pwned-7'>\"></noscript>",
    "<a href=\"javascript:document.title='pwned-8'\">click</a>",
    "<a href=\"data:text/html,<script>document.title='pwned-9'</script>\">click</a>",
    "<iframe srcdoc=\"<script>parent.document.title='pwned-10'</script>\"></iframe>",
    "<p style=\"background:url(https://example.org/track.png)\">tracked</p>",
]


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_sanitiser_leaves_no_script_handler_or_fetch(payload):
    from html.parser import HTMLParser

    from vqalab.report.html import sanitize_html

    cleaned = sanitize_html(f"<table><tr><td>{payload}</td></tr></table>")
    found = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, dict(attrs)))

    # whatever the browser builds from the cleaned HTML, read back by a second parser
    Collect().feed(cleaned)
    for tag, attrs in found:
        assert tag in {"table", "tbody", "tr", "td", "img", "a", "p", "style"}, cleaned
        assert not any(name.startswith("on") for name in attrs), cleaned
        assert set(attrs) <= {"href", "rel", "src", "title", "style"}, cleaned
        assert "javascript:" not in attrs.get("href", "") and "data:" not in attrs.get("href", ""), cleaned
        assert "src" not in attrs and "url(" not in attrs.get("style", ""), cleaned


def test_a_second_report_of_the_same_week_is_refused_while_one_runs(tmp_path):
    from test_report import WEEK, make_project

    from vqalab.report import run_report

    root = make_project(tmp_path / "project")
    week_dir = root / "reports" / WEEK
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from vqalab.report.build import week_lock
        with week_lock(Path({str(root / "reports")!r}), {WEEK!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(io.FolderBusy, match=rf"report week {week_dir} is in use by another process "
                                                  rf"\(PID {holder.pid} since "):
            run_report(root=root, preset="quick", week=WEEK, only=["broken"])
    finally:
        holder.kill()
        holder.wait()
    assert not week_dir.exists()  # nothing ran, nothing written


def test_a_sweep_checks_runs_root_before_loading_data_and_stops_on_a_full_disk(tmp_path, data, monkeypatch):
    from vqalab import sweep as sweep_module

    a_file = tmp_path / "runs.txt"
    a_file.write_text("not a folder")
    monkeypatch.setattr(sweep_module, "build_data", lambda *a, **k: pytest.fail("data loaded first"))
    with pytest.raises(ConfigError, match=rf"runs_root = '{a_file}': {a_file} is a file, not a folder"):
        sweep_module.sweep(tiny_config(a_file).to_dict(), {"optim.lr": [1e-3, 1e-2]})

    calls = []

    def full_disk(cfg, data=None, on_epoch=None):
        calls.append(cfg)
        raise runs.DiskFullError(tmp_path / "runs" / "x" / "metrics.csv")

    monkeypatch.setattr(sweep_module, "fit", full_disk)
    with pytest.raises(runs.DiskFullError, match="no space left on device while writing"):
        sweep_module.sweep(tiny_config(tmp_path / "runs").to_dict(), {"optim.lr": [1e-3, 1e-2]}, data=data)
    assert len(calls) == 1  # not once per point


# --- resume is the run it claims ----------------------------------------------------------------

def resume_cli(run_dir, capsys):
    """``vqalab train --resume RUN``: the config is the folder's own params.yaml."""
    code = cli_main(["train", "--resume", str(run_dir), "--no-progress"])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("key, value, recorded", [
    ("data.max_train_samples", 4, 32),
    ("optim.lr", 0.5, 0.001),
])
def test_an_edited_params_yaml_is_refused_on_resume_naming_key_and_both_values(finished, tmp_path, data,
                                                                             monkeypatch, capsys, key, value, recorded):
    from vqalab.params import set_dotted

    run_dir = unfinished_copy(finished, tmp_path)
    params = load_config(run_dir / "params.yaml").to_dict()
    set_dotted(params, key, value)
    runs.write_yaml(run_dir / "params.yaml", params)
    monkeypatch.setattr(train, "build_data", lambda *a, **k: pytest.fail("data loaded before the check"))
    code, err = resume_cli(run_dir, capsys)
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert err == (f"error: resume {run_dir}: params.yaml differs from what the run trained with (checkpoint "
                   f"epoch_003.pt): {key} is {value!r} in params.yaml but {recorded!r} in the checkpoint: restore "
                   "params.yaml, or start a new run")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"  # nothing rewritten


@pytest.fixture(scope="module")
def other_runs(data, tmp_path_factory):
    """One-epoch runs of another seed and of another model, whose files get copied into a run."""
    root = tmp_path_factory.mktemp("others")
    seed = tiny_config(root, epochs=1).model_copy(update={"seed": 2})
    model = build_config({**tiny_config(root, epochs=1).to_dict(),
                          "model": {**tiny_config(root).model, "name": "vqa_lstm_mlp"}})
    return {"seed": train.fit(seed, data=data).run_dir, "model.name": train.fit(model, data=data).run_dir}


@pytest.mark.parametrize("key, ours, theirs", [("seed", 1, 2), ("model.name", "vqa_mean_mlp", "vqa_lstm_mlp")])
def test_another_runs_checkpoint_and_metrics_copied_in_are_refused(finished, other_runs, tmp_path, data, key,
                                                                   ours, theirs):
    import shutil

    run_dir = unfinished_copy(finished, tmp_path)
    shutil.rmtree(run_dir / "checkpoints")
    shutil.copytree(other_runs[key] / "checkpoints", run_dir / "checkpoints")
    shutil.copy(other_runs[key] / "metrics.csv", run_dir / "metrics.csv")
    with pytest.raises(ConfigError, match=rf"resume {run_dir}: params.yaml differs from what the run trained with "
                                          r"\(checkpoint epoch_001\.pt\): .*"
                                          rf"{key} is {ours!r} in params.yaml but {theirs!r} in the checkpoint"):
        train.fit(tiny_config(finished.run_dir.parents[1]), data=data, resume=run_dir)


def test_another_runs_summary_copied_in_is_refused(finished, other_runs, tmp_path, data):
    import shutil

    run_dir = unfinished_copy(finished, tmp_path)
    shutil.copy(other_runs["seed"] / "summary.json", run_dir / "summary.json")
    with pytest.raises(ConfigError, match=rf"resume {run_dir}: seed is 1 in params.yaml but 2 in summary\.json "
                                          r"\(recorded at the start\)"):
        train.fit(tiny_config(finished.run_dir.parents[1]), data=data, resume=run_dir)


def test_an_edited_params_yaml_without_a_checkpoint_is_refused_by_the_recorded_hash(finished, tmp_path, data):
    import shutil

    run_dir = unfinished_copy(finished, tmp_path)
    shutil.rmtree(run_dir / "checkpoints")  # killed before its first checkpoint
    edited = tiny_config(finished.run_dir.parents[1], epochs=5)
    runs.write_yaml(run_dir / "params.yaml", edited.to_dict())
    with pytest.raises(ConfigError, match=rf"resume {run_dir}: params.yaml \(or a weights file it names\) changed after the "
                                          rf"run started: its "
                                          rf"config_hash is {runs.config_hash(edited)}, summary.json recorded "
                                          rf"{runs.config_hash(tiny_config('x'))}"):
        train.fit(edited, data=data, resume=run_dir)


@pytest.mark.parametrize("damage, reason", [
    ("delete", "summary.json is missing"),
    ("garbage", r"summary.json: not valid JSON \(Expecting value at line 1 column 1\)"),
    ("stripped", "summary.json lacks experiment, name, seed, model, config_hash"),
])
def test_a_missing_or_corrupt_summary_is_rebuilt_from_the_checkpoint(finished, tmp_path, data, damage, reason):
    from vqalab.results import runs_table

    run_dir = unfinished_copy(finished, tmp_path)
    summary_file = run_dir / "summary.json"
    if damage == "delete":
        summary_file.unlink()
    else:
        summary_file.write_text("garbage{" if damage == "garbage" else '{"status": "running"}')
    result = train.fit(tiny_config(finished.run_dir.parents[1]), data=data, resume=run_dir)
    rebuilt = json.loads(summary_file.read_text())
    assert rebuilt["status"] == "completed" and rebuilt["epochs"] == 3
    expected = finished.summary
    for key in ("experiment", "name", "seed", "model", "config_hash", "params", "steps_per_epoch", "best_val_acc"):
        assert rebuilt[key] == expected[key], key
    assert re.search(reason, rebuilt["summary_rebuilt"]) and "rebuilt from epoch_003.pt" in rebuilt["summary_rebuilt"]
    assert result.summary["summary_rebuilt"] == rebuilt["summary_rebuilt"] and set(result.summary) == set(rebuilt)
    table = runs_table([run_dir])
    assert table["name"].tolist() == ["tiny"] and table["model"].tolist() == ["vqa_mean_mlp"]


def test_a_lost_summary_of_an_auto_batch_run_is_refused_not_measured_again(tmp_path, data):
    """The batch size ``auto`` chose lived in summary.json: measuring again could choose another."""
    point = train.ResumePoint(run_dir=tmp_path, summary=None, checkpoint=tmp_path / "checkpoints" / "epoch_001.pt")
    with pytest.raises(ConfigError, match=rf"resume {tmp_path}: summary.json held the batch size .* and it is lost: "
                                          "set train.batch_size"):
        train.resolve_auto_batch(tiny_config(tmp_path, batch_size="auto"), data, torch.device("cpu"), point)


def test_a_corrupt_summary_without_a_checkpoint_is_refused(finished, tmp_path, data):
    import shutil

    run_dir = unfinished_copy(finished, tmp_path)
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "summary.json").write_text("[1, 2")
    with pytest.raises(ConfigError, match=rf"resume {run_dir}: {run_dir}/summary\.json: not valid JSON .* and there "
                                          r"is no checkpoint to rebuild it from: start the run again"):
        train.fit(tiny_config(finished.run_dir.parents[1]), data=data, resume=run_dir)


def test_a_non_number_in_metrics_csv_is_named_on_resume(finished, tmp_path, data):
    run_dir = unfinished_copy(finished, tmp_path)
    metrics = run_dir / "metrics.csv"
    lines = metrics.read_text().splitlines()
    cells = lines[2].split(",")
    cells[2] = "oops"  # train_loss of epoch 2
    lines[2] = ",".join(cells)
    metrics.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=rf"^{metrics}: line 3: train_loss = 'oops': expected a number"):
        train.fit(tiny_config(finished.run_dir.parents[1]), data=data, resume=run_dir)


# --- params files past any sane size -------------------------------------------------------------

def test_deep_nesting_is_refused_with_the_limit_not_a_recursion_error(tmp_path):
    from vqalab.params import MAX_NESTING

    for depth in (20_000, MAX_NESTING + 5):  # past Python's recursion limit, and just past ours
        path = write(tmp_path, "train: {epochs: " + "[" * depth + "1" + "]" * depth + "}\n")
        message = refused(rf"^{path}: values nested more than {MAX_NESTING} levels deep \(at line 1\)", path)
        assert "valid YAML" not in message
    block = "".join(f"{'  ' * i}k{i}:\n" for i in range(MAX_NESTING + 2)) + "  " * (MAX_NESTING + 2) + "v: 1\n"
    refused(rf"levels deep \(at line {MAX_NESTING + 1}\)", write(tmp_path, block))  # block style alike
    anchored = "a: &deep " + "[" * 40 + "1" + "]" * 40 + "\nb: " + "[" * 40 + "*deep" + "]" * 40 + "\n"
    refused(r"levels deep", write(tmp_path, anchored))  # an alias nests its anchor's levels too
    with pytest.raises(ConfigError, match="nested more than"):
        load_config(None, ["model.cnn_channels=" + "[" * 5000 + "]" * 5000])


def test_a_params_file_over_the_size_limit_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    from vqalab import params

    path = write(tmp_path, "optim:\n  lr: 0.001\n" + "# padding\n" * 20)
    monkeypatch.setattr(params, "MAX_PARAMS_BYTES", 100)
    monkeypatch.setattr(params, "load_yaml_text", lambda text: pytest.fail("parsed before the size check"))
    refused(rf"^{path}: {path.stat().st_size:,} bytes; a params file is at most 100 bytes", path)


def test_a_long_list_without_aliases_is_refused_for_its_size_not_for_aliases(tmp_path):
    path = write(tmp_path, "experiment: [" + ", ".join(["1"] * 10_001) + "]\n")
    message = refused(rf"^{path}: more than 10000 values \(a params file needs far fewer\)$", path)
    assert "alias" not in message[len(str(path)):]


def test_a_huge_run_name_is_refused_naming_the_limit(tmp_path):
    path = write(tmp_path, "name: " + "x" * 5000 + "\n")
    message = refused(r"name = 'xxx.*': String should have at most 200 characters", path)
    assert len(message) < 400
    refused(r"experiment = .*at most 200 characters", overrides=["experiment=" + "e" * 201])


# --- sweep settings ------------------------------------------------------------------------------

def sweep_spec_file(tmp_path, text):
    return write(tmp_path, textwrap.dedent(text), name="spec.yaml")


@pytest.mark.parametrize("heartbeat, grace, match", [
    (0, 60, r"--heartbeat 0: expected at least 0\.5 s"),
    (float("nan"), 60, r"--heartbeat nan: expected at least 0\.5 s"),
    (0.5, 0, r"--grace 0: expected at least 4 × --heartbeat = 2 s"),
    (10, 30, r"--grace 30: expected at least 4 × --heartbeat = 40 s"),
])
def test_heartbeat_and_grace_below_their_bounds_are_refused_before_the_storage_opens(tmp_path, capsys, heartbeat,
                                                                                     grace, match):
    journal = tmp_path / "x.journal"
    code = cli_main(["sweep", "work", "x", "--storage", str(journal), "--heartbeat", str(heartbeat),
                     "--grace", str(grace)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and re.fullmatch(rf"error: {match}.*", err) and "\n" not in err
    assert not journal.exists()


def test_queueing_reads_the_queue_once_not_once_per_point(tmp_path, monkeypatch):
    import optuna

    from vqalab.sweep_queue import SweepSpec, create_sweep

    spec = SweepSpec(name="big", base={"experiment": "q", "runs_root": str(tmp_path / "runs")},
                     grid={"optim.lr": [1e-4 * (i + 1) for i in range(6)], "optim.weight_decay": [0.0, 0.1, 0.2]},
                     seeds=[0, 1])
    reads = []
    real = optuna.Study.get_trials
    monkeypatch.setattr(optuna.Study, "get_trials", lambda self, *a, **k: reads.append(1) or real(self, *a, **k))
    storage = tmp_path / "big.journal"
    assert create_sweep(spec, storage)[1] == 36
    assert len(reads) == 1  # enqueue_trial(skip_if_exists=True) read them all again for each of 36 points
    spec.grid["optim.weight_decay"].append(0.3)  # a grown grid queues only its new points
    spec._points = None
    assert create_sweep(spec, storage)[1] == 12
    study = optuna.load_study(study_name="big", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(storage))))
    keys = [t.user_attrs["point"] for t in study.get_trials()]
    assert len(keys) == len(set(keys)) == 48


@pytest.mark.parametrize("grid, seeds, match", [
    ({"optim.lr": [0.001, 1.0e-3]}, [0], r"sweep grid: optim\.lr lists 0\.001 twice: keep one"),
    ({"optim.lr": [0.1, 0.01], "model.cnn_channels": [[4, 8], [4, 8]]}, [0],
     r"sweep grid: model\.cnn_channels lists \(4, 8\) twice: keep one"),
    ({"optim.lr": [0.1]}, [0, 1, 0], r"sweep seeds lists 0 twice: keep one"),
])
def test_a_value_listed_twice_in_a_grid_is_refused_naming_key_and_value(grid, seeds, match):
    from vqalab.sweep import expand_grid

    with pytest.raises(ConfigError, match=match):
        expand_grid({}, grid, seeds)


def test_a_spec_base_that_is_not_a_params_file_is_never_echoed(tmp_path):
    from vqalab.sweep_queue import load_spec

    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\nalice:SECRET-TOKEN:1000:1000::/home/alice:/bin/sh\n")
    spec = sweep_spec_file(tmp_path, f"base: {secret}\ngrid: {{optim.lr: [0.1]}}\n")
    with pytest.raises(ConfigError) as err:
        load_spec(spec)
    assert str(err.value) == (f"{spec}: base = '{secret}': expected a params file (a mapping of params keys), "
                              "but the file holds a str")
    secret.write_text("a: b: SECRET-TOKEN\n")  # not YAML either: the message says where, not what
    with pytest.raises(ConfigError, match=r"not valid YAML: mapping values are not allowed here at line 1, "
                                          r"column 5$") as err:
        load_spec(spec)
    assert "SECRET" not in str(err.value)


def closed_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nothing listens there


@pytest.mark.parametrize("command", ["status", "table", "work"])
@pytest.mark.parametrize("url, match", [
    ("postgresql://lab:hunter2@127.0.0.1:{port}/sweeps",
     r"cannot open the database: connection to server at \"127\.0\.0\.1\", port \d+ failed: Connection refused"),
    ("mysql://lab:hunter2@127.0.0.1/sweeps", r"no database driver for mysql:// is installed"),
    ("postgresql://lab:hunter2@127.0.0.1:notaport/sweeps", r"the port is not a number"),
    ("postgresql://lab:hunter2@127.0.0.1:70000/sweeps", r"port 70000 is out of range \(1-65535\)"),
])
def test_a_storage_url_that_cannot_be_opened_is_one_line_with_the_password_masked(capsys, command, url, match):
    url = url.format(port=closed_port())
    assert cli_main(["sweep", command, "grid", "--storage", url]) == 2
    out = capsys.readouterr()
    err = out.err.strip()
    assert "hunter2" not in out.out + out.err and "\n" not in err
    assert re.fullmatch(rf"error: storage {re.escape(url.replace(':hunter2@', ':***@'))}: {match}.*", err), err


@pytest.mark.parametrize("make, match", [
    (lambda p: p.mkdir(), r"is a folder; expected an Optuna journal file"),
    (lambda p: p.write_bytes(b"\x00garbage{{\n" * 3), r"not an Optuna journal file \(its first line is not a journal record\)"),
    (lambda p: None, r"no such journal file"),
])
@pytest.mark.parametrize("command", ["status", "table", "work"])
def test_a_journal_that_is_missing_a_folder_or_garbage_is_refused_and_never_created(tmp_path, capsys, make, match,
                                                                                   command):
    journal = tmp_path / "typo.journal"
    make(journal)
    before = {p: p.is_dir() or p.read_bytes() for p in tmp_path.rglob("*")}
    assert cli_main(["sweep", command, "grid", "--storage", str(journal)]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(rf"error: storage {journal}: {match}.*", err) and "\n" not in err
    assert {p: p.is_dir() or p.read_bytes() for p in tmp_path.rglob("*")} == before  # nothing made or written


def test_the_storage_password_is_masked_in_every_output(tmp_path, capsys, caplog):
    import logging

    from vqalab.registry import mask_secrets

    assert mask_secrets("postgresql://lab:p4ss/w0rd@db.lab:5432/sweeps and sqlite:///x.db") == \
        "postgresql://lab:***@db.lab:5432/sweeps and sqlite:///x.db"
    assert mask_secrets("postgresql://lab@db/sweeps") == "postgresql://lab@db/sweeps"  # no password: unchanged
    url = f"postgresql://lab:hunter2@127.0.0.1:{closed_port()}/sweeps"
    spec = sweep_spec_file(tmp_path, f"""\
        base: {{experiment: q, runs_root: {tmp_path / 'runs'}}}
        grid: {{optim.lr: [0.1]}}
    """)
    with caplog.at_level(logging.DEBUG):
        assert cli_main(["sweep", "create", str(spec), "--storage", url]) == 2
    out = capsys.readouterr()
    assert "hunter2" not in out.out + out.err + caplog.text and "lab:***@" in out.err


# --- hostile data files --------------------------------------------------------------------------

@pytest.mark.parametrize("file_key, entries_key, index, key, value, match", [
    ("v2_mscoco_train2014_annotations.json", "annotations", 3, "answers", [{"answer": 2}] * 10,
     r"annotations entry 3 \(question_id \d+\): answer = 2: expected a string"),
    ("v2_mscoco_train2014_annotations.json", "annotations", 1, "multiple_choice_answer", 7,
     r"annotations entry 1 \(question_id \d+\): multiple_choice_answer = 7: expected a string"),
    ("v2_OpenEnded_mscoco_train2014_questions.json", "questions", 2, "question", None,
     r"questions entry 2 \(question_id \d+\): question = None: expected a string"),
    ("v2_OpenEnded_mscoco_train2014_questions.json", "questions", 0, "image_id", "25",
     r"questions entry 0: image_id = '25': expected an integer"),
    ("v2_mscoco_train2014_annotations.json", "annotations", 0, "question_id", 1.5,
     r"annotations entry 0: question_id = 1\.5: expected an integer"),
])
def test_vqa_v2_entries_of_the_wrong_type_name_the_file_and_entry(vqa_root, file_key, entries_key, index, key, value,
                                                                   match):
    path = vqa_root / file_key
    content = json.loads(path.read_text())
    content[entries_key][index][key] = value
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=rf"^vqa_v2: {path}: {match}"):
        load_vqa_v2(vqa_root)


@pytest.mark.parametrize("limit_factor", [0.3, 0.7])  # PIL raises past 2 × the limit, only warns below that
def test_decompression_bomb_images_are_refused_naming_the_image(tmp_path, vqa_root, monkeypatch, limit_factor):
    from PIL import Image

    from vqalab.data import build_data

    image = vqa_root / "train2014" / "COCO_train2014_000000000025.jpg"
    with Image.open(image) as img:
        pixels = img.width * img.height
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(pixels * limit_factor))
    data = load_vqa_v2(vqa_root)
    with pytest.raises(ConfigError, match=rf"^vqa_v2: {image}: cannot read the image \(image_id 25\): more than "
                                          r"[\d,]+ pixels \(PIL\.Image\.MAX_IMAGE_PIXELS\), so it is refused as a "
                                          r"possible decompression bomb$"):
        data.train[data.train.image_ids.index(25)]
    root = rafdb_root(tmp_path)
    face = next((root / "Image" / "aligned").glob("train_00001*"))
    monkeypatch.undo()
    with Image.open(face) as img:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(img.width * img.height * limit_factor))
    with pytest.raises(ConfigError, match=rf"^{face}: cannot read the image \(RAF-DB image {face.name}\): more than"):
        build_data({"name": "rafdb", "root": str(root), "image_size": 32, "use_cache": False})


# --- a run folder removed or made read-only while the run trains ---------------------------------

def after_epoch(monkeypatch, epoch, action):
    """Run ``action(run_dir)`` when ``epoch`` starts training."""
    real = train.train_one_epoch

    def wrapped(*args, **kwargs):
        if args[7] == epoch:  # train_one_epoch(model, opt, sched, scaler, data, cfg, device, epoch, step)
            action()
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", wrapped)


def test_a_run_folder_removed_mid_training_ends_in_one_line_and_is_not_made_again(tmp_path, data, monkeypatch,
                                                                                  capsys):
    import shutil

    root = tmp_path / "runs"
    after_epoch(monkeypatch, 2, lambda: shutil.rmtree(next((root / "hard").iterdir())))
    params = tmp_path / "params.yaml"
    runs.write_yaml(params, tiny_config(root).to_dict())
    monkeypatch.setattr(train, "build_data", lambda spec, seed=0: data)
    assert cli_main(["train", str(params), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(rf"error: run folder {root}/hard/\S+-tiny was removed while the run trained \(after 1 "
                        r"epoch\(s\)\): nothing more is recorded; start the run again", err), err
    assert list((root / "hard").iterdir()) == []  # no half folder of confusion matrix and headerless metrics


def test_a_run_folder_made_read_only_mid_training_says_so_and_that_its_status_could_not_be_recorded(
        tmp_path, data, monkeypatch, capsys):
    read_only = []

    def refuse_writes(real):
        def write(path, *args):
            if read_only:
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real(path, *args)
        return write

    monkeypatch.setattr(runs, "atomic_write_bytes", refuse_writes(runs.atomic_write_bytes))
    monkeypatch.setattr(runs, "append_text", refuse_writes(runs.append_text))
    after_epoch(monkeypatch, 2, lambda: read_only.append(True))
    root = tmp_path / "runs"
    params = tmp_path / "params.yaml"
    runs.write_yaml(params, tiny_config(root).to_dict())
    monkeypatch.setattr(train, "build_data", lambda spec, seed=0: data)
    assert cli_main(["train", str(params), "--no-progress"]) == 1
    (run_dir,) = list((root / "hard").iterdir())
    err = capsys.readouterr().err.strip()
    assert err == (f"error: run folder {run_dir} cannot be written any more (Read-only file system: "
                   f"{run_dir}/summary.json; read-only or removed?): the run stopped, and its summary.json still "
                   "says 'running', not 'failed'")
    monkeypatch.undo()  # once writable again, the folder resumes from its last checkpoint
    assert train.fit(tiny_config(root), data=data, resume=run_dir).summary["status"] == "completed"


@pytest.mark.parametrize("kind", ["npy", "npz"])
def test_a_nan_in_a_feature_file_names_the_file(vqa_root, kind):
    import numpy as np
    from test_vqa_v2 import SPLITS, write_region_files

    if kind == "npz":
        write_region_files(vqa_root)
    else:
        for split, ids in SPLITS.items():
            (vqa_root / f"regions_{split}").mkdir()
            for image_id in ids:
                np.save(vqa_root / f"regions_{split}" / f"COCO_{split}2014_{image_id:012d}.npy",
                        np.ones((5, 8), np.float32))
    bad = vqa_root / "regions_train" / f"COCO_train2014_000000000025.{kind}"
    if kind == "npz":
        stored = dict(np.load(bad))
        stored["features"][1, 2] = np.nan
        np.savez(bad, **stored)
    else:
        features = np.ones((5, 8), np.float32)
        features[1, 2] = np.inf
        np.save(bad, features)
    message = rf"^{bad}: features hold 1 non-finite value\(s\) \(NaN or infinity; the first at index \(1, 2\)\): " \
              r"recompute or replace the file$"
    if kind == "npy":  # .npy files go into the split's feature table while loading: refused there
        with pytest.raises(ConfigError, match=message):
            load_vqa_v2(vqa_root, train_features="regions_train", val_features="regions_val")
        return
    data = load_vqa_v2(vqa_root, train_features="regions_train", val_features="regions_val")
    with pytest.raises(ConfigError, match=message):
        data.train[data.train.image_ids.index(25)]


# --- vqalab runs and vqalab tb -------------------------------------------------------------------

@pytest.mark.parametrize("diff", [False, True])
def test_a_corrupt_summary_is_named_by_vqalab_runs(finished, other_runs, tmp_path, capsys, diff):
    run_dir = unfinished_copy(finished, tmp_path)
    (run_dir / "summary.json").write_text('{"status": "completed", ')
    args = ["runs", "--diff", str(run_dir), str(other_runs["seed"])] if diff else ["runs", str(run_dir)]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {run_dir}/summary.json: not valid JSON (Expecting property name enclosed in double " \
                  "quotes at line 1 column 25)"


def test_runs_diff_of_an_experiment_says_how_many_runs_it_holds(other_runs, capsys):
    experiment = other_runs["seed"].parent
    assert cli_main(["runs", "--diff", str(experiment), str(other_runs["seed"])]) == 2
    assert capsys.readouterr().err.strip() == (f"error: --diff takes exactly two run folders; {experiment} "
                                               f"{other_runs['seed']} are 3 runs")


@pytest.mark.parametrize("port", [0, 70000, -1])
def test_tb_port_out_of_range_is_refused(finished, capsys, port):
    assert cli_main(["tb", str(finished.run_dir), "--port", str(port)]) == 2
    out = capsys.readouterr()
    assert out.err.strip() == (f"error: --port {port}: expected a port number from 1 to 65535 (or no --port: "
                               "a free one)") and "http" not in out.out


def test_tb_port_taken_by_another_server_is_refused_without_printing_its_url(finished, capsys, monkeypatch):
    import socket

    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("TensorBoard started on a taken port"))
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        assert cli_main(["tb", str(finished.run_dir), "--port", str(port)]) == 2
    out = capsys.readouterr()
    assert re.fullmatch(rf"error: --port {port}: cannot listen on 127\.0\.0\.1:{port} \(Address already in use; "
                        r"another server may be using it\): pick another port, or leave --port out", out.err.strip())
    assert f":{port}" not in out.out


PG_PASSWORD = "hunter2-pg"


@pytest.fixture(scope="module")
def password_server():
    """A PostgreSQL server asking for the password over TCP; yields its port."""
    from test_sweep_queue import postgres_server

    with postgres_server(password=PG_PASSWORD) as port:
        yield port


@pytest.mark.slow
@pytest.mark.parametrize("password, database, match", [
    ("wrong", "postgres", r'password authentication failed for user "postgres"'),
    (PG_PASSWORD, "no_such_db", r'database "no_such_db" does not exist'),
])
def test_postgresql_wrong_password_or_missing_database_is_one_line_with_the_password_masked(
        password_server, capsys, password, database, match):
    url = f"postgresql://postgres:{password}@127.0.0.1:{password_server}/{database}"
    assert cli_main(["sweep", "status", "grid", "--storage", url]) == 2
    out = capsys.readouterr()
    assert password not in out.out + out.err
    masked = url.replace(f":{password}@", ":***@")
    assert re.fullmatch(rf"error: storage {re.escape(masked)}: cannot open the database: .*{match}.*", out.err.strip())


@pytest.mark.slow
def test_a_created_sweep_prints_and_logs_its_storage_with_the_password_masked(password_server, tmp_path, capsys,
                                                                              caplog):
    import logging

    url = f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{password_server}/postgres"
    spec = sweep_spec_file(tmp_path, f"""\
        name: masked
        base: {{experiment: q, runs_root: {tmp_path / 'runs'}}}
        grid: {{optim.lr: [0.1, 0.2]}}
    """)
    with caplog.at_level(logging.INFO):
        assert cli_main(["sweep", "create", str(spec), "--storage", url]) == 0
        assert cli_main(["sweep", "status", "masked", "--storage", url]) == 0
        assert cli_main(["sweep", "table", "masked", "--storage", url]) == 0
    out = capsys.readouterr()
    assert PG_PASSWORD not in out.out + out.err + caplog.text
    assert f"storage: postgresql://postgres:***@127.0.0.1:{password_server}/postgres" in out.out
    assert "2 waiting" in out.out
