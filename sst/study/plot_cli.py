"""``sst-plot``: figures from run folders, each written as ``<out>.png`` and ``<out>.pdf``.

sst-plot accuracy outputs/runs -o figures/acc                  # accuracy vs sparsity per method
sst-plot accuracy outputs/runs --by sparsity.gamma_sal -o outputs/figures/gamma
sst-plot accuracy outputs/runs --ci -o figures/acc_ci          # 95% confidence bands
sst-plot layers RUN_ERK RUN_UNIFORM -o figures/layers          # per-layer density
sst-plot neurons RUN -o figures/neurons                        # SRigL active neurons over steps
sst-plot curves RUN [RUN ...] -o figures/curves                # train loss and test accuracy
sst-plot mask RUN --layer layer3.1.conv2 -o figures/mask       # one layer's mask as an image
sst-plot latency DIR/latency_table.json [--target 1.5]         # speed-up vs sparsity per layer
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

from sst import __version__
from sst.runs.checkpoint import CorruptCheckpoint

from . import plots
from .results import DEFAULT_KEYS, METRICS, aggregate, gather, read_run
from .table_cli import flat, key_list, mixed_notes
from .tables import problem_notes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sst-plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"sst {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, runs: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("runs", nargs="+", type=Path, help=runs)
        sub.add_argument("-o", "--output", type=Path, required=True, help="file stem to write")
        sub.add_argument(
            "--formats",
            nargs="+",
            default=list(plots.DEFAULT_FORMATS),
            choices=plots.FIGURE_FORMATS,
        )
        return sub

    acc = command("accuracy", "accuracy vs sparsity per method", "run or sweep folders")
    acc.add_argument(
        "--by",
        action="append",
        type=key_list,
        default=[],
        metavar="KEY[,KEY]",
        help="more series keys (repeat --by or list them with commas)",
    )
    acc.add_argument("--metric", choices=sorted(METRICS), default="final")
    acc.add_argument("--where", nargs="+", default=[], metavar="KEY=VALUE", help="keep only")
    acc.add_argument(
        "--ci",
        action="store_true",
        help="95%% confidence bands of the mean (Student's t over seeds) in place of ±1 std",
    )
    layers = command("layers", "per-layer density of runs", "run folders")
    layers.add_argument("--labels", nargs="+", help="legend labels, one per run")
    command("neurons", "active neurons per layer over training", "a run folder")
    curves = command("curves", "train loss and test accuracy over steps", "run folders")
    curves.add_argument("--labels", nargs="+", help="legend labels, one per run")
    mask = command("mask", "one layer's mask as an image", "a run folder")
    mask.add_argument("--layer", required=True, help="fully qualified layer name")
    latency = commands.add_parser("latency", help="speed-up vs sparsity per layer")
    latency.add_argument("runs", nargs=1, type=Path, help="a latency_table.json (sst-export)")
    latency.add_argument(
        "-o", "--output", type=Path, default=None, help="file stem (default: next to the table)"
    )
    latency.add_argument(
        "--formats", nargs="+", default=list(plots.DEFAULT_FORMATS), choices=plots.FIGURE_FORMATS
    )
    latency.add_argument("--target", type=float, default=None, help="default: the table's")
    args = parser.parse_args(argv)
    if args.command == "latency" and args.output is None:
        args.output = args.runs[0].with_suffix("")
    return args


def make_figure(args: argparse.Namespace):
    if args.command == "accuracy":
        found = gather(args.runs, where=args.where)
        for line in problem_notes(found.problems):
            print(line, file=sys.stderr)
        keys = list(dict.fromkeys([*DEFAULT_KEYS, *flat(args.by)]))
        groups = aggregate(found.runs, keys, metric=args.metric)
        split = sorted({m for g in groups for m in g.mixed if not m.startswith("seed")})
        if split:  # one line per value, never a point that averages unlike runs
            print(
                f"sst-plot: lines split by {', '.join(split)} (the runs differ in it)",
                file=sys.stderr,
            )
            keys += split
            groups = aggregate(found.runs, keys, metric=args.metric)
        for group in groups:  # as sst-table warns: a point that averages unlike runs
            label = " / ".join(str(group.key[k]) for k in keys)
            for line in mixed_notes(label, group.mixed):
                print(line, file=sys.stderr)
        series = [k for k in keys if k != "sparsity" and len({repr(g.key[k]) for g in groups}) > 1]
        return plots.accuracy_vs_sparsity(
            groups, series_keys=series or ["method"], metric=args.metric, ci=args.ci
        )
    if args.command == "layers":
        return plots.layer_densities([read_run(r) for r in args.runs], args.labels)
    if args.command == "curves":
        return plots.training_curves(args.runs, args.labels)
    if args.command == "latency":
        return plots.latency_speedups(plots.read_latency_table(args.runs[0]), args.target)
    if len(args.runs) != 1:
        raise ValueError(f"sst-plot {args.command} takes one run folder, got {len(args.runs)}")
    if args.command == "neurons":
        return plots.neurons_over_training(args.runs[0])
    return plots.mask_image(args.runs[0], args.layer)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    matplotlib.use("Agg")  # files only, no window: set here, not when plots is imported
    try:
        fig = make_figure(args)
    except (ValueError, FileNotFoundError, CorruptCheckpoint) as error:
        print(f"sst-plot: {error}", file=sys.stderr)
        return 2
    for path in plots.save(fig, args.output, args.formats):
        print(f"sst-plot: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
