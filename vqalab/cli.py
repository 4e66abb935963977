"""Command line: ``vqalab train | report | bench | lr-find``. Entry point configures logging once."""

from __future__ import annotations

import argparse
import logging
import sys

from vqalab.registry import ConfigError


def cmd_train(args: argparse.Namespace) -> int:
    from vqalab.config import load_config
    from vqalab.train import fit

    cfg = load_config(args.params, args.set)  # all validation happens here, before any compute
    if args.no_progress:
        cfg.train.progress = False
    result = fit(cfg)
    print(f"status: {result.summary['status']}, best_val_acc: {result.summary.get('best_val_acc')}")
    print(result.run_dir)  # last line: the run folder, for scripts
    return 0 if result.summary["status"] == "completed" else 1


def cmd_report(args: argparse.Namespace) -> int:
    from vqalab.report import run_report

    return run_report(preset=args.preset, only=args.only, week=args.week, force=args.force)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqalab", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run from a params file")
    p.add_argument("params", help="params YAML file (only the keys that differ from the defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("report", help="execute the study notebooks and render this week's HTML report")
    p.add_argument("--preset", default="cpu", help="preset of each params/<notebook>.yaml (quick, cpu, gpu)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these notebooks")
    p.add_argument("--week", default=None, help="ISO week folder, e.g. 2026-W48 (default: this week)")
    p.add_argument("--force", action="store_true", help="replace this week's report of the same notebooks")
    p.set_defaults(func=cmd_report)
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
