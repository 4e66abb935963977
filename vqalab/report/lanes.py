"""Running a week's studies several at a time (``vqalab report --jobs N``), one lane per core.

The studies' runs are small (one torch thread each is fastest at make report's sizes), so a
2-core machine trains two studies at once about twice as fast as one after the other. Studies
that share run folders (the same ``experiment``: the five FER studies' ``fer_tuning``) reuse each
other's finished runs, so they stay in one lane, in the report's order: two lanes never want the
same point. (Had they, both would train it, each into its own folder: a sweep looks for finished
runs when it starts and does not wait for one still running.) The groups go to the lanes longest
first, by last week's times; a lane that is free takes the next group.

Each lane runs its studies in a process of its own (started once: its imports take seconds): their
kernels get the lane's share of the cores (``VQALAB_CPU_SHARE``, ``vqalab.threads``), their own
environment (the run log, ``VQALAB_FRESH``) and working folder, and a study over its time budget
stops only its own kernel. A study whose lane process dies is marked failed; that lane goes on in a
new process, and the other lanes go on.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from vqalab.report.execute import LOGS_DIR, STATUS_FAILED
from vqalab.report.pages import RUN_POINTS
from vqalab.report.presets import EXPERIMENT_PARAM
from vqalab.report.progress import ProgressLine
from vqalab.threads import SHARE_ENV, choose_threads

log = logging.getLogger(__name__)

def default_jobs(device: str) -> int:
    """Studies at once when ``--jobs`` is not given: one where the runs go to a GPU (``device``, what
    ``train.device: auto`` means here; the lab presets are sized to one GPU each), else the CPU cores
    free to this process now (``choose_threads``)."""
    if device != "cpu":
        return 1
    return choose_threads().threads


def study_experiment(study: dict) -> str | None:
    """The experiment (runs folder) a study's runs go to: its preset's, else its notebook's default."""
    return study["parameters"].get(EXPERIMENT_PARAM, study.get("defaults", {}).get(EXPERIMENT_PARAM))


def share_groups(studies: list[dict]) -> list[list[dict]]:
    """The studies in groups that share run folders (one experiment), each in the report's order;
    a study without an experiment is a group of its own."""
    groups: dict[str, list[dict]] = {}
    for study in studies:
        experiment = study_experiment(study)
        groups.setdefault(f"experiment:{experiment}" if experiment else f"study:{study['name']}", []).append(study)
    return list(groups.values())


def longest_first(groups: list[list[dict]], durations: dict[str, float | None]) -> list[list[dict]]:
    """``groups`` by their time last week, longest first (a study without one counts as the mean of
    those with one); ties keep the report's order."""
    known = [d for d in durations.values() if d]
    guess = sum(known) / len(known) if known else 1.0
    total = [sum(durations.get(s["name"]) or guess for s in group) for group in groups]
    order = sorted(range(len(groups)), key=lambda i: -total[i])  # a stable sort
    return [groups[i] for i in order]


def failed_record(study: dict, preset: str, error: str) -> dict:
    """The record of a study whose process ended before it could report (killed, crashed)."""
    name = study["name"]
    return {"name": name, "title": study["title"], "preset": preset, "parameters": study["parameters"],
            "notebook": f"{name}.ipynb", "html": f"{name}.html", "log": f"{LOGS_DIR}/{name}.log",
            "time_budget_s": study.get("time_budget_s"), "started": dt.datetime.now().isoformat(timespec="seconds"),
            "duration_s": None, "status": STATUS_FAILED, "error": error, "runs": {}, RUN_POINTS: []}


def run_in_lane(run_study: Callable[..., dict], study: dict, share: int, log_level: int, **kwargs) -> dict:
    """One study in a lane's process: its kernel and runs take ``cores // share`` threads; progress
    is printed line by line (two lanes cannot rewrite one terminal line). A study without an
    experiment shows no run in its progress line: the runs training now are another lane's."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    os.environ[SHARE_ENV] = str(share)
    if study_experiment(study) is None:
        kwargs = {**kwargs, "runs_root": None}
    return run_study(study, line=ProgressLine(rewrite=False), **kwargs)


def run_lanes(studies: list[dict], *, jobs: int, run_study: Callable[..., dict], study_kwargs: Callable[[dict], dict],
              durations: dict[str, float | None], preset: str) -> Iterator[tuple[dict, dict]]:
    """Run ``studies`` in up to ``jobs`` lanes; yields (study, record) as each one ends.

    ``run_study(study, line=..., **study_kwargs(study))`` runs one study and returns its record (a
    module-level function: it is called in the lane's process). ``durations``: each study's time
    last week. With one lane, every study runs here, one after the other, in the report's order.
    """
    groups = longest_first(share_groups(studies), durations)
    lanes = max(1, min(jobs, len(groups)))
    if lanes == 1:
        for study in studies:
            yield study, run_study(study, **study_kwargs(study))
        return
    log.info("%d studies in %d lanes: %s", len(studies), lanes,
             "; ".join(", ".join(s["name"] for s in group) for group in groups))
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no threads or state of this one

    def new_process() -> ProcessPoolExecutor:  # a lane's process, kept for its next study (imports once)
        return ProcessPoolExecutor(max_workers=1, mp_context=context)

    processes = [new_process() for _ in range(lanes)]
    waiting = deque(deque(group) for group in groups)
    running: dict[Future, tuple[dict, deque, int]] = {}

    def start(group: deque, lane: int) -> None:
        study = group.popleft()
        future = processes[lane].submit(run_in_lane, run_study, study, lanes, logging.getLogger().getEffectiveLevel(),
                                        **study_kwargs(study))
        running[future] = (study, group, lane)

    try:
        for lane in range(lanes):
            start(waiting.popleft(), lane)
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                study, group, lane = running.pop(future)
                try:
                    record = future.result()
                except Exception as err:  # noqa: BLE001 -- its process died: the other lanes go on
                    log.error("%s: its process ended: %s: %s", study["name"], type(err).__name__, err)
                    record = failed_record(study, preset, f"the study's process ended: {type(err).__name__}: {err}")
                    processes[lane].shutdown(wait=False, cancel_futures=True)
                    processes[lane] = new_process()  # the lane's next study in a fresh one
                if group:  # the lane's next study starts before this one's page is rendered
                    start(group, lane)
                elif waiting:
                    start(waiting.popleft(), lane)
                yield study, record
    finally:  # also when the caller stopped early (Ctrl-C): no lane starts another study
        for process in processes:
            process.shutdown(wait=False, cancel_futures=True)
