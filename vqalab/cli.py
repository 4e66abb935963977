"""Command line: ``vqalab train | report | data | bench (throughput | flops | memory) | lr-find | runs | tb | sweep``. Entry point configures logging once."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from vqalab.registry import ConfigError, mask_secrets


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from vqalab import distributed
    from vqalab.config import load_config
    from vqalab.train import fit

    params = args.params
    if args.resume and params is None:
        from vqalab.paths import resolve

        params = resolve(args.resume) / "params.yaml"  # the run's own resolved config
    if params is None:
        raise ConfigError("vqalab train: give a params file, or --resume RUN_DIR")
    cfg = load_config(params, args.set)  # all validation happens here, before any compute
    if args.no_progress:
        cfg.train.progress = False
    try:
        result = fit(cfg, resume=args.resume)  # under torchrun: one rank of a DDP run
    finally:
        distributed.teardown()
    if distributed.launched() and os.environ.get("RANK", "0") != "0":
        return 0 if result.summary["status"] == "completed" else 1  # rank 0 reports
    print(f"status: {result.summary['status']}, best_val_acc: {result.summary.get('best_val_acc')}")
    print(result.run_dir)  # last line: the run folder, for scripts
    return 0 if result.summary["status"] == "completed" else 1


def cmd_report(args: argparse.Namespace) -> int:
    from vqalab.report import run_report
    from vqalab.report.build import publish_week

    if args.trend:
        from vqalab.paths import project_root
        from vqalab.report.trend import trend_table, week_summaries

        print(trend_table(week_summaries(project_root() / "reports")))
        return 0
    if args.pdf or args.post:
        return publish_week(week=args.week, pdf=args.pdf, post=args.post)

    return run_report(preset=args.preset, only=args.only, week=args.week, force=args.force, data=args.data,
                      fresh=args.fresh, jobs=args.jobs)  # None: report.lanes.default_jobs


def cmd_data(args: argparse.Namespace) -> int:
    """One line per registered data set; exit 1 when a ``--require``d one is missing."""
    from vqalab.data import DATASETS, data_status
    from vqalab.paths import data_root

    for name in args.require:
        DATASETS.get(name)  # an unknown name is a usage error (exit 2), not a missing data set
    print(f"data root: {data_root()} (set VQALAB_DATA to change it)")
    statuses = {name: data_status(name) for name in DATASETS.names()}
    for status in statuses.values():
        print(status.line())
    missing = [name for name in args.require if not statuses[name].found]
    if missing:
        print(f"required but missing: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def _bench_config(args: argparse.Namespace):
    """Params file (optional) → ``--model`` → ``--set``, validated before any compute."""
    from vqalab.config import load_config

    overrides = list(args.set)
    if getattr(args, "model", None):
        overrides = [f"model.name={args.model}", *overrides]  # --set model.* keys apply on top
    return load_config(args.params, overrides)


def cmd_bench_throughput(args: argparse.Namespace) -> int:
    import json

    from vqalab.bench import (
        format_throughput_table,
        limiting_part,
        recommend_batch_size,
        throughput_sweep,
    )

    cfg = _bench_config(args)
    table = throughput_sweep(cfg, batch_sizes=args.batch_sizes, warmup_steps=args.warmup,
                             timed_steps=args.steps, rounds=args.rounds, max_rounds=args.max_rounds,
                             fraction=args.fraction, end_to_end=not args.model_only,
                             amp=args.amp, channels_last=args.channels_last, compile_model=args.compile)
    choice = recommend_batch_size(table, args.fraction)
    limit = (limiting_part(table, choice["batch_size"])
             if choice["batch_size"] is not None and not args.model_only else None)
    if args.json:
        # recommended_batch_size is null when the choice is not settled; reason then says why
        print(json.dumps({"recommended_batch_size": choice["batch_size"], "reason": choice["reason"],
                          "rows": json.loads(table.to_json(orient="records")), "recommendation": choice,
                          "limit": limit}, indent=2))
    else:
        print(format_throughput_table(table))
        print(f"device {table['device'].iloc[0]} (torch CPU threads {table['cpu_threads'].iloc[0]}: "
              f"{table['threads_reason'].iloc[0]}), amp {table['amp'].iloc[0]}, "
              f"channels_last {table['channels_last'].iloc[0]}, compile {table['compile'].iloc[0]}; "
              f"{int(table['rounds'].max())} rounds of {args.warmup} warm-up + {args.steps} timed steps per batch size")
        print(choice["sentence"])
        if limit is not None:
            print(limit["sentence"])
    return 0


def cmd_bench_flops(args: argparse.Namespace) -> int:
    import json

    from vqalab.bench import flops_report

    report = flops_report(_bench_config(args), batch_size=args.batch_size)
    print(json.dumps(report, indent=2, default=str))
    return 0


def cmd_bench_memory(args: argparse.Namespace) -> int:
    import json

    from vqalab.memory import format_prediction, parse_device_memory, precision_of, predict_memory

    cfg = _bench_config(args)  # every input checked before the model is built
    device_memory = parse_device_memory(args.device_memory) if args.device_memory is not None else None
    precision_of(args.amp or cfg.train.amp)
    result = predict_memory(cfg, batch_size=args.batch_size, amp=args.amp, device_memory_mb=device_memory)
    print(json.dumps(result, indent=2) if args.json else format_prediction(result))
    return 0 if result["fits"] is not False else 1


def cmd_lr_find(args: argparse.Namespace) -> int:
    from vqalab.config import load_config
    from vqalab.lr_find import lr_range_test, result_json, save_lr_find

    cfg = load_config(args.params, args.set)
    result = lr_range_test(cfg, min_lr=args.min_lr, max_lr=args.max_lr, num_steps=args.steps)
    folder = save_lr_find(result, cfg)
    print(result_json(result, folder))
    print(folder)  # last line: the folder, for scripts
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    import json

    from vqalab.monitor import diff_runs, run_folders, runs_overview

    try:
        if args.diff:
            pair = run_folders(args.diff, args.runs_root)
            if len(pair) != 2:
                raise ConfigError(f"--diff takes exactly two run folders; {' '.join(args.diff)} are {len(pair)} runs")
            table = diff_runs(*pair)
        else:
            table = runs_overview(run_folders(args.targets, args.runs_root))
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    if args.json:
        print(json.dumps(json.loads(table.to_json(orient="records")), indent=2))
    elif table.empty:
        print("no runs")
    else:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def cmd_tb(args: argparse.Namespace) -> int:
    from vqalab.monitor import run_folders, start_tensorboard

    try:
        run_dirs = run_folders(args.targets, args.runs_root)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    if not run_dirs:
        raise ConfigError(f"no runs under {args.runs_root} to show")
    server = start_tensorboard(run_dirs, port=args.port)
    server.wait_ready()  # the URL printed is this server's, answering
    print(f"TensorBoard over {len(run_dirs)} runs: {server.url}  (Ctrl-C stops it)", flush=True)
    try:
        return server.process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def cmd_sweep_create(args: argparse.Namespace) -> int:
    from vqalab.sweep_queue import create_sweep, load_spec

    spec = load_spec(args.spec)  # every point validated before the storage is touched
    storage, added = create_sweep(spec, args.storage, args.artifacts)
    print(f"sweep {spec.name}: {len(spec.points())} points, {added} newly queued")
    print(f"storage: {mask_secrets(storage)}")
    print(spec.name)  # last line: the sweep name, for scripts
    return 0


def cmd_sweep_work(args: argparse.Namespace) -> int:
    from vqalab.sweep_queue import work

    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    taken = work(args.name, args.storage, devices=devices, slots=args.slots, max_trials=args.max_trials,
                 heartbeat_s=args.heartbeat, grace_s=args.grace, max_retries=args.max_retries)
    print(f"sweep {args.name}: {taken} trials taken by this worker")
    return 0


def cmd_sweep_status(args: argparse.Namespace) -> int:
    import json

    from vqalab.sweep_queue import sweep_status

    status = sweep_status(args.name, args.storage)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    for point in status["points"]:
        extra = " (reused)" if point["reused"] else f" (retry {point['retries']})" if point["retries"] else ""
        print(f"{point['status']:>10}{extra}  {point['name']}  {point['run_dir'] or '-'}")
    print(", ".join(f"{n} {state}" for state, n in sorted(status["counts"].items())))
    eta = status["eta_s"]
    print("ETA: " + ("unknown (no point finished yet)" if eta is None else f"{eta / 60:.1f} min"))
    return 0


def cmd_sweep_table(args: argparse.Namespace) -> int:
    from vqalab.sweep_queue import sweep_metrics, sweep_table

    df = (sweep_metrics if args.metrics else sweep_table)(args.name, args.storage)
    if args.csv:
        df.to_csv(args.csv, index=False)
        print(args.csv)
    else:
        print(df.to_string(index=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqalab", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run from a params file")
    p.add_argument("params", nargs="?", default=None,
                   help="params YAML file (only the keys that differ from the defaults); "
                        "optional with --resume")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run in its own folder from its last checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("report", help="execute the study notebooks and render this week's HTML report")
    p.add_argument("--preset", default="cpu", help="preset of each params/<notebook>.yaml (quick, cpu, gpu)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these notebooks")
    p.add_argument("--week", default=None, help="ISO week folder, e.g. 2026-W48 (default: this week)")
    p.add_argument("--force", action="store_true", help="re-run every study, also those reported this week "
                   "whose notebook, preset, code, study code, templates and data are unchanged (kept otherwise); earlier files move "
                   "to reports/<week>/previous/<time>/")
    p.add_argument("--data", default=None, metavar="NAME",
                   help="run the studies of this data set's family on it: rafdb (the FER studies) or vqa_v2 "
                        "(vqa_models); default: each preset's own data set")
    p.add_argument("--fresh", action="store_true",
                   help="retrain every sweep point instead of reusing finished runs of the same config, code and "
                        "data (implies --force)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="studies run at once, each on its share of the cores; studies sharing runs (one "
                        "experiment) run one after the other in one lane (default: 1 when the runs go to a GPU, "
                        "else the cores free now; 1: one study after the other)")
    p.add_argument("--pdf", action="store_true",
                   help="only print the week's report.html to report.pdf (headless Chromium); no study runs")
    p.add_argument("--trend", action="store_true",
                   help="only print each study's headline figure over every week in reports/ as a table; no study runs")
    p.add_argument("--post", action="store_true",
                   help="only write the week's blog post reports/<week>/post/ from its notebooks; no study runs")
    p.epilog = ("exit status: 0 every study ran; 1 a study failed; 2 bad command line or params file (nothing "
                "run); 3 a study was skipped because its data set is missing (see `vqalab data`)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("data", help="where each data set is looked for, whether it is there, its counts")
    p.add_argument("--require", action="append", default=[], metavar="NAME",
                   help="exit with status 1 when this data set is missing (repeatable)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("bench", help="measure models: training throughput per batch size, params and FLOPs, predicted CUDA memory")
    bench = p.add_subparsers(dest="bench_command", required=True)
    for name, helptext in (("throughput", "time the training step over batch sizes; recommend one"),
                           ("flops", "params and FLOPs per sample of one model, as JSON"),
                           ("memory", "predict the peak CUDA memory of a training step, without a GPU")):
        b = bench.add_parser(name, help=helptext)
        b.add_argument("--params", default=None, help="params YAML giving model, data and optimizer (default: library defaults)")
        b.add_argument("--model", default=None, metavar="NAME", help="registered model name (overrides the params file)")
        b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a key, e.g. --set model.embed_dim=64 --set data.name=easy_vqa (repeatable)")
        if name == "throughput":
            b.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
                           metavar="N", help="batch sizes, ascending; stops at the first out-of-memory")
            b.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per batch size")
            b.add_argument("--steps", type=int, default=10, help="timed steps per batch size and round")
            b.add_argument("--rounds", type=int, default=5,
                           help="interleaved timing rounds; the table gives the median round and its spread")
            b.add_argument("--max-rounds", type=int, default=None,
                           help="add rounds after --rounds, up to this many, until resampling the rounds "
                                "gives the same recommendation 90%% of the time")
            b.add_argument("--model-only", action="store_true",
                           help="time the model step only, not also end to end with the real loader")
            b.add_argument("--amp", choices=["off", "bf16", "fp16"], default=None,
                           help="mixed precision, CUDA or CPU (default: train.amp)")
            b.add_argument("--channels-last", action="store_true", default=None,
                           help="NHWC memory format (default: train.channels_last)")
            b.add_argument("--compile", action="store_true", default=None,
                           help="torch.compile the model with train.compile_mode (default: train.compile)")
            b.add_argument("--fraction", type=float, default=0.90,
                           help="sizes within this share of the best throughput, or within the measured noise "
                                "if that is wider, count as equally fast; the smallest is recommended")
            b.add_argument("--json", action="store_true", help="print rows and recommendation as JSON")
            b.set_defaults(func=cmd_bench_throughput)
        elif name == "flops":
            b.add_argument("--batch-size", type=int, default=1, help="items in the counted batch")
            b.set_defaults(func=cmd_bench_flops)
        else:
            b.add_argument("--batch-size", type=int, default=None, help="items per micro-batch (default: train.batch_size)")
            b.add_argument("--amp", choices=["fp32", "off", "bf16", "fp16"], default=None,
                           help="precision of the predicted step (default: train.amp; off = fp32)")
            b.add_argument("--device-memory", default=None, metavar="SIZE",
                           help="the GPU's memory, e.g. 24GB (binary: 24 GiB): says whether the peak fits within "
                                "train.max_memory_fraction of it (exit status 1 if not)")
            b.add_argument("--json", action="store_true", help="print the prediction and its parts as JSON")
            b.set_defaults(func=cmd_bench_memory)

    p = sub.add_parser("lr-find", help="learning-rate range test; writes a new folder with CSV, JSON and plot")
    p.add_argument("params", help="params YAML file (model, data, optimizer, batch size)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)")
    p.add_argument("--min-lr", type=float, default=1e-7, help="learning rate of the first step (default: %(default)g)")
    p.add_argument("--max-lr", type=float, default=1.0, help="learning rate of the last step (default: %(default)g)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps at most (default: %(default)s)")
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("runs", help="table of runs: status, best metric, epochs, duration, differing parameters")
    p.add_argument("targets", nargs="*", metavar="EXPERIMENT|RUN_DIR",
                   help="experiment names under --runs-root or run folders (default: every run)")
    p.add_argument("--diff", nargs=2, metavar="RUN_DIR", help="two runs' differing params and final figures side by side")
    p.add_argument("--runs-root", default="runs", help="folder holding all runs (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the table as JSON records")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("tb", help="start TensorBoard on localhost over some runs and print its URL")
    p.add_argument("targets", nargs="*", metavar="EXPERIMENT|RUN_DIR",
                   help="experiment names under --runs-root or run folders (default: every run)")
    p.add_argument("--runs-root", default="runs", help="folder holding all runs (default: %(default)s)")
    p.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    p.set_defaults(func=cmd_tb)

    p = sub.add_parser("sweep", help="sweeps queued in an Optuna study, trained by workers on any number of machines")
    sweep = p.add_subparsers(dest="sweep_command", required=True)
    storage_help = ("Optuna storage: a journal file path or an RDB URL (postgresql://...); default: "
                    "runs/<experiment>/sweeps/<name>.journal")
    s = sweep.add_parser("create", help="queue every point of a spec (base params, grid, seeds) once")
    s.add_argument("spec", help="sweep spec YAML: name, base (params file or mapping), grid, seeds")
    s.add_argument("--storage", default=None, help=storage_help)
    s.add_argument("--artifacts", default=None, metavar="FOLDER|s3://BUCKET",
                   help="where workers upload run files and checkpoints, for every machine (default: "
                        "runs/<experiment>/sweeps/<name>.artifacts/)")
    s.set_defaults(func=cmd_sweep_create)
    s = sweep.add_parser("work", help="train queued points until none is left (one lane per GPU or CPU slot)")
    s.add_argument("name", help="sweep name (as printed by `vqalab sweep create`)")
    s.add_argument("--storage", default=None, help=storage_help)
    s.add_argument("--devices", default=None, metavar="0,1", help="GPU indices: one lane per GPU")
    s.add_argument("--slots", type=int, default=1, help="CPU lanes when no --devices (default: %(default)s)")
    s.add_argument("--max-trials", type=int, default=None, metavar="N", help="stop after taking N trials")
    s.add_argument("--heartbeat", type=float, default=10.0, metavar="S", help="seconds between beats (default: %(default)s)")
    s.add_argument("--grace", type=float, default=60.0, metavar="S",
                   help="a running trial without a beat for this long is queued again (default: %(default)s)")
    s.add_argument("--max-retries", type=int, default=3, help="times a point whose worker died is queued again")
    s.set_defaults(func=cmd_sweep_work)
    s = sweep.add_parser("status", help="points per state, their run folders, an ETA")
    s.add_argument("name")
    s.add_argument("--storage", default=None, help=storage_help)
    s.add_argument("--json", action="store_true", help="print the status as JSON")
    s.set_defaults(func=cmd_sweep_status)
    s = sweep.add_parser("table", help="the sweep's table (one row per point, as `sweep` returns it)")
    s.add_argument("name")
    s.add_argument("--storage", default=None, help=storage_help)
    s.add_argument("--csv", default=None, metavar="FILE", help="write the table as CSV instead of printing it")
    s.add_argument("--metrics", action="store_true", help="every finished point's metrics.csv rows (one per epoch) "
                                                          "instead of one row per point")
    s.set_defaults(func=cmd_sweep_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import os

    quiet_rank = os.environ.get("RANK", "0") != "0"  # under torchrun rank 0 tells the story
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if quiet_rank else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"error: {mask_secrets(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, a run folder removed or read-only, a file that cannot be read
        if args.verbose:
            raise
        print(f"error: {mask_secrets(err)}", file=sys.stderr)  # each names its file
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C; SIGTERM arrives as train.Terminated / RunInterrupted
        name = getattr(err, "signal_name", "SIGINT")
        print(f"interrupted by {name}", file=sys.stderr)
        if getattr(err, "resume_command", None):  # train.RunInterrupted: a run folder was started
            print(f"{err.run_dir} is resumable: {err.resume_command}", file=sys.stderr)
        return 128 + signal.Signals[name]


if __name__ == "__main__":
    sys.exit(main())
