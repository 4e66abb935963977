"""What a report's runs will find on this machine: the environment (device, GPU, versions, git
commit), every registered data set's family and builder keywords, and the status of the data sets
the studies name.

The report imports no torch: it runs notebook kernels, and asks this module in a child process,
``python -m vqalab.inventory``, with a JSON request on stdin (``{"specs": [...], "root": ...}``); the
answer is the last line of stdout. A bad data section comes back as its ConfigError's message with
exit status 2, which the report raises as its own, before any notebook runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vqalab.data import DATASETS, FAMILIES, DataStatus, data_status
from vqalab.registry import ConfigError
from vqalab.runs import environment

EXIT_BAD_INPUT = 2


def catalogue() -> dict[str, dict]:
    """Each data set's family (the studies it serves: faces, vqa, ...) and its builder's keywords."""
    return {name: {"family": FAMILIES[name], "keywords": list(DATASETS.parameters(name))} for name in DATASETS.names()}


def data_record(status: DataStatus | None) -> dict | None:
    """What the report shows of a data set: name, root, counts, fingerprint (or what is missing)."""
    if status is None:
        return None
    return {**status.identity(), "found": status.found, "expected": status.expected, "detail": status.detail}


def inventory(*, specs: list[dict | None], root: str) -> dict:
    """The environment of project ``root``, the data set catalogue, and the status record of each
    ``data`` section in ``specs`` (None for a study that names no data set)."""
    return {"environment": environment(root=Path(root)), "datasets": catalogue(),
            "statuses": [data_record(data_status(spec)) if spec is not None else None for spec in specs]}


def main() -> int:
    request = json.loads(sys.stdin.read())
    try:
        answer = inventory(specs=request["specs"], root=request["root"])
    except ConfigError as err:
        print(json.dumps({"error": str(err)}))
        return EXIT_BAD_INPUT
    print(json.dumps(answer, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
