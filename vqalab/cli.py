"""Command line: ``vqalab train | report | bench | lr-find``. Entry point configures logging once."""

from __future__ import annotations

import argparse
import logging
import sys

from vqalab.registry import ConfigError


def cmd_train(args: argparse.Namespace) -> int:
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
    result = fit(cfg, resume=args.resume)
    print(f"status: {result.summary['status']}, best_val_acc: {result.summary.get('best_val_acc')}")
    print(result.run_dir)  # last line: the run folder, for scripts
    return 0 if result.summary["status"] == "completed" else 1


def cmd_report(args: argparse.Namespace) -> int:
    from vqalab.report import run_report

    return run_report(preset=args.preset, only=args.only, week=args.week, force=args.force)


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
        print(json.dumps({"rows": json.loads(table.to_json(orient="records")), "recommendation": choice,
                          "limit": limit}, indent=2))
    else:
        print(format_throughput_table(table))
        print(f"device {table['device'].iloc[0]} (torch CPU threads {table['cpu_threads'].iloc[0]}), amp "
              f"{table['amp'].iloc[0]}, channels_last {args.channels_last}, compile {args.compile}; "
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


def cmd_lr_find(args: argparse.Namespace) -> int:
    from vqalab.config import load_config
    from vqalab.lr_find import lr_range_test, result_json, save_lr_find

    cfg = load_config(args.params, args.set)
    result = lr_range_test(cfg, min_lr=args.min_lr, max_lr=args.max_lr, num_steps=args.steps)
    folder = save_lr_find(result, cfg)
    print(result_json(result, folder))
    print(folder)  # last line: the folder, for scripts
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
    p.add_argument("--force", action="store_true", help="re-run studies already reported this week "
                   "(their earlier files move to reports/<week>/previous/<time>/)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="measure models: training throughput per batch size, params and FLOPs")
    bench = p.add_subparsers(dest="bench_command", required=True)
    for name, helptext in (("throughput", "time the training step over batch sizes; recommend one"),
                           ("flops", "params and FLOPs per sample of one model, as JSON")):
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
                           help="mixed precision on CUDA (default: train.amp)")
            b.add_argument("--channels-last", action="store_true", help="NHWC memory format")
            b.add_argument("--compile", action="store_true", help="torch.compile the model")
            b.add_argument("--fraction", type=float, default=0.90,
                           help="sizes within this share of the best throughput, or within the measured noise "
                                "if that is wider, count as equally fast; the smallest is recommended")
            b.add_argument("--json", action="store_true", help="print rows and recommendation as JSON")
            b.set_defaults(func=cmd_bench_throughput)
        else:
            b.add_argument("--batch-size", type=int, default=1, help="items in the counted batch")
            b.set_defaults(func=cmd_bench_flops)

    p = sub.add_parser("lr-find", help="learning-rate range test; writes a new folder with CSV, JSON and plot")
    p.add_argument("params", help="params YAML file (model, data, optimizer, batch size)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)")
    p.add_argument("--min-lr", type=float, default=1e-7, help="learning rate of the first step (default: %(default)g)")
    p.add_argument("--max-lr", type=float, default=1.0, help="learning rate of the last step (default: %(default)g)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps at most (default: %(default)s)")
    p.set_defaults(func=cmd_lr_find)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
