"""The command line's defaults are the library's: cli.py writes them out (importing bench, lr_find
or the sweep queue would load torch for every ``vqalab --help``), and this test holds them equal."""

from vqalab import bench, lr_find, sweep_queue
from vqalab.cli import build_parser


def defaults(*argv: str) -> dict:
    return vars(build_parser().parse_args(list(argv)))


def test_bench_throughput_defaults_are_the_bench_constants():
    args = defaults("bench", "throughput")
    assert tuple(args["batch_sizes"]) == bench.DEFAULT_BATCH_SIZES
    assert args["rounds"] == bench.DEFAULT_ROUNDS
    assert args["fraction"] == bench.RECOMMEND_FRACTION


def test_lr_find_defaults_are_the_lr_find_constants():
    args = defaults("lr-find", "params.yaml")
    assert (args["min_lr"], args["max_lr"], args["steps"]) == (
        lr_find.DEFAULT_MIN_LR, lr_find.DEFAULT_MAX_LR, lr_find.DEFAULT_STEPS)


def test_sweep_work_defaults_are_the_sweep_queue_constants():
    args = defaults("sweep", "work", "name")
    assert (args["heartbeat"], args["grace"], args["max_retries"]) == (
        sweep_queue.HEARTBEAT_S, sweep_queue.GRACE_S, sweep_queue.MAX_RETRIES)
