"""A shared lab machine and shared report pages: locks, logs and outputs never follow a symbolic link
planted in ``reports/`` or ``runs/``, odd files where folders belong get a one-line error, and the CSS
of notebook outputs can neither fetch anything nor reach outside its own output."""

from __future__ import annotations

import os

import pytest

from vqalab import runs
from vqalab.cli import main as cli_main
from vqalab.registry import ConfigError

VICTIM_TEXT = "another user's file\n"


@pytest.fixture
def victim(tmp_path):
    """A file a planted symlink points at: its content must never change."""
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# --- locks, logs and week folders ---------------------------------------------------------------

def test_a_symlinked_week_lock_is_refused_and_its_target_untouched(tmp_path, victim):
    from test_report import WEEK, make_project

    root = make_project(tmp_path / "project")
    lock = root / "reports" / f".{WEEK}.lock"
    lock.parent.mkdir()
    lock.symlink_to(victim)
    from vqalab.report import run_report

    with pytest.raises(ConfigError, match=rf"lock file {lock} is a symbolic link: not followed; remove it"):
        run_report(root=root, preset="quick", week=WEEK, only=["broken"])
    assert victim.read_text() == VICTIM_TEXT
    assert lock.is_symlink() and not (root / "reports" / WEEK).exists()  # nothing ran


def test_a_symlinked_run_folder_lock_is_refused_on_resume(tmp_path, victim, capsys):
    from test_hardening import tiny_config

    cfg = tiny_config(tmp_path / "runs")
    run_dir = tmp_path / "runs" / "hard" / "20260101-000000-tiny"
    run_dir.mkdir(parents=True)
    runs.write_yaml(run_dir / "params.yaml", cfg.to_dict())
    (run_dir / runs.LOCK_FILE).symlink_to(victim)
    assert cli_main(["train", "--resume", str(run_dir), "--no-progress"]) == 2
    assert one_line_error(capsys) == (f"error: lock file {run_dir / runs.LOCK_FILE} is a symbolic link: not "
                                      "followed; remove it (the file is created anew)")
    assert victim.read_text() == VICTIM_TEXT


def test_a_lock_that_is_a_folder_gets_a_one_line_error(tmp_path, capsys):
    from test_hardening import tiny_config

    cfg = tiny_config(tmp_path / "runs")
    run_dir = tmp_path / "runs" / "hard" / "20260101-000000-tiny"
    (run_dir / runs.LOCK_FILE).mkdir(parents=True)
    runs.write_yaml(run_dir / "params.yaml", cfg.to_dict())
    assert cli_main(["train", "--resume", str(run_dir), "--no-progress"]) == 2
    assert one_line_error(capsys) == (f"error: lock file {run_dir / runs.LOCK_FILE} is a folder, not a file: "
                                      "remove it (the file is created anew)")


def test_a_lock_file_is_created_new_and_reused_as_a_plain_file(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for _ in range(2):  # created with O_EXCL the first time, opened again (no symlink) the second
        with runs.folder_lock(folder, "run folder"):
            assert (folder / runs.LOCK_FILE).read_text().startswith(f"PID {os.getpid()} since ")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=rf"lock file {fifo} is not a regular file"), \
            runs.folder_lock(folder, "run folder", lock_file=fifo):
        pass


def test_a_symlinked_study_log_is_not_written_through(tmp_path, victim):
    import json

    from test_report import WEEK, make_project

    from vqalab.report import run_report

    root = make_project(tmp_path / "project")
    log_file = root / "reports" / WEEK / "logs" / "broken.log"
    log_file.parent.mkdir(parents=True)
    log_file.symlink_to(victim)
    assert run_report(root=root, preset="quick", week=WEEK, only=["broken"]) == 1
    assert victim.read_text() == VICTIM_TEXT
    record = json.loads((root / "reports" / WEEK / "summary.json").read_text())["studies"]["broken"]
    assert record["status"] == "failed"
    assert record["error"] == (f"ConfigError: log file {log_file} is a symbolic link: not followed; remove it "
                               "(the file is created anew)")


def test_a_study_log_symlink_from_an_earlier_run_moves_to_previous(tmp_path, victim):
    """A re-run moves the earlier log away (the link itself, not its target) and writes a new one."""
    from test_report import WEEK, make_project

    from vqalab.report import run_report

    root = make_project(tmp_path / "project")
    week_dir = root / "reports" / WEEK
    assert run_report(root=root, preset="quick", week=WEEK, only=["broken"]) == 1
    log_file = week_dir / "logs" / "broken.log"
    log_file.unlink()
    log_file.symlink_to(victim)
    assert run_report(root=root, preset="quick", week=WEEK, only=["broken"]) == 1
    assert victim.read_text() == VICTIM_TEXT
    assert not log_file.is_symlink() and "before the error" in log_file.read_text()
    (archived,) = (week_dir / "previous").iterdir()
    assert (archived / "broken.log").is_symlink()


def test_an_output_notebook_symlink_is_replaced_not_written_through(tmp_path, victim):
    from test_report import WEEK, make_project

    from vqalab.report import run_report

    root = make_project(tmp_path / "project")
    week_dir = root / "reports" / WEEK
    week_dir.mkdir(parents=True)
    dangling = tmp_path / "created-by-the-report.ipynb"
    (week_dir / "broken.ipynb").symlink_to(dangling)  # papermill would create this file
    (week_dir / "broken.html").symlink_to(victim)
    assert run_report(root=root, preset="quick", week=WEEK, only=["broken"]) == 1
    assert victim.read_text() == VICTIM_TEXT and not dangling.exists()
    assert "planned failure" in (week_dir / "broken.ipynb").read_text()
    assert not (week_dir / "broken.html").is_symlink()


@pytest.mark.parametrize("where", ["week", "logs", "previous"])
def test_a_week_folder_that_is_a_file_or_a_link_gets_a_one_line_error(tmp_path, where, capsys):
    from test_report import WEEK

    from vqalab.report.build import check_week_folder

    reports = tmp_path / "reports"
    path = reports / WEEK if where == "week" else reports / WEEK / where
    path.parent.mkdir(parents=True)
    path.write_text("a file")
    with pytest.raises(ConfigError, match=rf"^week folder {path} is a file, not a folder: move it away"):
        check_week_folder(reports, WEEK)
    path.unlink()
    path.symlink_to(tmp_path)
    with pytest.raises(ConfigError, match=rf"^week folder {path} is a symbolic link: not followed"):
        check_week_folder(reports, WEEK)


def test_report_cli_names_a_week_folder_that_is_a_file(tmp_path, monkeypatch, capsys):
    from test_report import WEEK, make_project

    root = make_project(tmp_path / "project")
    (root / "reports").mkdir()
    (root / "reports" / WEEK).write_text("a file")
    monkeypatch.setattr("vqalab.report.build.project_root", lambda: root)
    assert cli_main(["report", "--preset", "quick", "--week", WEEK]) == 2
    assert one_line_error(capsys) == (f"error: week folder {root / 'reports' / WEEK} is a file, not a folder: "
                                      "move it away (the report creates the folder)")
