"""``sst-table``: run folders -> a results table, or a published table with sst's runs beside.

sst-table                                  # every run under outputs/runs
sst-table outputs/runs --by sparsity.gamma_sal --format latex
sst-table outputs/runs --metric best       # best test accuracy during training, labelled so
sst-table --paper srigl-resnet18-cifar10   # the paper's numbers, sst's runs and the difference
sst-table --wandb my-team/sst              # finished runs read from W&B (online)

Rows are the groups of finished runs that share dataset, model, method, sparsity,
distillation and every ``--by`` key; a row holds the mean and standard deviation over its
seeds with the seed count, and the training and inference FLOPs relative to dense. Runs that
did not finish are listed below the table (to stderr for CSV), never averaged in.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sst import __version__

from .compare import CompareSpec, compare, parse_compare
from .papers import (
    METRIC_TEXT,
    Cell,
    PaperTable,
    fill,
    load_paper_table,
    paper_table_names,
    show_match,
)
from .results import (
    DEFAULT_KEYS,
    DEFAULT_RUNS,
    METRICS,
    Collection,
    Group,
    Run,
    Stat,
    aggregate,
    gather,
    not_finished_records,
)
from .tables import FORMATS, comparison_table, mean_std, number, percent, problem_notes, render

METRIC_LABEL = {"final": "final test acc (%)", "best": "best test acc (%)"}
NO_RUNS = Stat(None, None, 0)


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def mixed_notes(label: str, mixed: Sequence[str]) -> list[str]:
    if not mixed:
        return []
    keys = [m for m in mixed if not m.startswith("seed")]
    hint = f" (split with --by {','.join(keys[:3])})" if keys else ""
    return [f"! {label} averages runs that differ in {', '.join(mixed)}{hint}"]


# ----------------------------------------------------------------------------- results table
def results_table(
    groups: Sequence[Group], keys: Sequence[str], metric: str, fmt: str, problems: Sequence[Run]
) -> str:
    if fmt == "json":
        return json.dumps(
            {
                "metric": metric,
                "groups": [
                    {
                        **g.key,
                        f"{metric}_test_acc_mean": g.accuracy.mean,
                        f"{metric}_test_acc_std": g.accuracy.std,
                        "n": g.accuracy.n,
                        "seeds": g.seeds,
                        "train_flops_rel": g.train_flops.mean,
                        "inference_flops_rel": g.inference_flops.mean,
                        "mixed": g.mixed,
                        "runs": [r.source for r in g.runs],
                    }
                    for g in groups
                ],
                "not_finished": not_finished_records(problems),
            },
            indent=2,
        )
    if fmt == "csv":
        return results_csv(groups, keys, metric)
    headers = [*keys, METRIC_LABEL[metric], "n", "train FLOPs", "inference FLOPs"]
    rows = []
    notes: list[str] = []
    for g in groups:
        cells = [percent(g.key[k]) if k == "sparsity" else _show(g.key[k]) for k in keys]
        rows.append(
            [
                *cells,
                mean_std(g.accuracy),
                str(g.accuracy.n),
                number(g.train_flops.mean, 3),
                number(g.inference_flops.mean, 3),
            ]
        )
        notes += mixed_notes(" / ".join(cells), g.mixed)
    notes.append(
        "Mean ± sample standard deviation over n seeds; FLOPs relative to the dense model "
        "(RigL paper's accounting)."
    )
    return render(
        headers,
        rows,
        fmt,
        numeric=[False] * len(keys) + [True] * 4,
        notes=[*notes, *problem_notes(problems)],
    )


def results_csv(groups: Sequence[Group], keys: Sequence[str], metric: str) -> str:
    """The results table as CSV of numbers: sparsity as a fraction, the accuracy's mean,
    standard deviation and seed count in their own columns, FLOPs relative to dense."""
    headers = [*keys, f"{metric}_test_acc_mean", f"{metric}_test_acc_std", "n"]
    headers += ["train_flops_rel", "inference_flops_rel"]
    rows = [
        [
            *(g.key[k] for k in keys),
            g.accuracy.mean,
            g.accuracy.std,
            g.accuracy.n,
            g.train_flops.mean,
            g.inference_flops.mean,
        ]
        for g in groups
    ]
    return render(headers, rows, "csv")


# ----------------------------------------------------------------------------- paper table
def _paper_csv(table: PaperTable, cells: Sequence[Cell], also: Sequence[str]) -> str:
    """The published table and sst's cells as CSV of numbers (no ``±``, no ``%``)."""
    headers = ["method", table.axis, "published", "sst_mean", "sst_std", "n", "difference"]
    headers += [f"sst_{m}_{part}" for m in also for part in ("mean", "std")]
    headers.append("epochs")
    rows = []
    for c in cells:
        epochs = sorted({_show((r.config.get("trainer") or {}).get("epochs")) for r in c.runs})
        where = c.sparsity if table.axis == "sparsity" else c.density
        row = [c.row, where, c.published, c.accuracy.mean, c.accuracy.std, c.accuracy.n]
        row.append(c.difference)
        for m in also:
            stat = c.also.get(m, NO_RUNS)
            row += [stat.mean, stat.std]
        rows.append([*row, ",".join(epochs)])
    return render(headers, rows, "csv")


def _paper_json(
    table: PaperTable, cells: Sequence[Cell], metric: str, problems: Sequence[Run]
) -> str:
    """The published table and sst's cells as one JSON document."""
    return json.dumps(
        {
            "paper": table.name,
            "title": table.title,
            "source": table.source,
            "experiment": table.experiment,
            "metric": table.metric,
            "published_metric": METRIC_TEXT[table.metric],
            "sst_metric": METRIC_TEXT[table.metric],
            "also": [] if metric == table.metric else [metric],
            "cells": [
                {
                    "row": c.row,
                    "match": c.match,
                    "sparsity": c.sparsity,
                    "density": c.density,
                    "published": c.published,
                    "sst_mean": c.accuracy.mean,
                    "sst_std": c.accuracy.std,
                    "n": c.accuracy.n,
                    "difference": c.difference,
                    **{f"sst_{m}_mean": s.mean for m, s in c.also.items()},
                    **{f"sst_{m}_std": s.std for m, s in c.also.items()},
                    "runs": [r.source for r in c.runs],
                    "unfinished": [r.source for r in c.unfinished],
                    "mixed": c.mixed,
                }
                for c in cells
            ],
            "not_finished": not_finished_records(problems),
        },
        indent=2,
    )


def _paper_row(table: PaperTable, c: Cell, also: Sequence[str]) -> list[str]:
    """One cell of the published table as a text row (see ``_paper_headers``)."""
    where = percent(c.sparsity if table.axis == "sparsity" else c.density)
    if c.accuracy.n:
        reproduced = mean_std(c.accuracy, table.digits)
    else:
        reproduced = "missing" + (f" ({len(c.unfinished)} unfinished)" if c.unfinished else "")
    epochs = sorted({_show((r.config.get("trainer") or {}).get("epochs")) for r in c.runs})
    return [
        c.row,
        where,
        number(c.published, table.digits),
        reproduced,
        str(c.accuracy.n),
        number(c.difference, table.digits, signed=True),
        *(mean_std(c.also.get(m, NO_RUNS), table.digits) for m in also),
        ",".join(epochs),
    ]


def _paper_headers(table: PaperTable, also: Sequence[str]) -> list[str]:
    label = METRIC_LABEL[table.metric]
    others = [f"sst {METRIC_LABEL[m]}, not compared" for m in also]
    return ["method", table.axis, f"published {label}", f"sst {label}", "n", "Δ", *others, "epochs"]


def _paper_notes(table: PaperTable, cells: Sequence[Cell], also: Sequence[str]) -> list[str]:
    """Source, metric of each side, the settings each row matched on, what is missing."""
    source = table.source
    found = sum(1 for c in cells if c.accuracy.n)
    notes = [
        f"Source: {source['paper']}; {source['table']}.",
        f"Setting: {source['setting']}.",
        f"Preset: sst-train -m experiment={table.experiment}" if table.experiment else "",
        f"Metric: published = {METRIC_TEXT[table.metric]}; sst = the same metric of its runs "
        f"(summary.json {METRICS[table.metric]}), mean ± std over seeds.",
        *(
            f"The sst {METRIC_LABEL[m]} column is the {METRIC_TEXT[m]} (summary.json "
            f"{METRICS[m]}), shown beside, not compared."
            for m in also
        ),
        f"{found} of {len(cells)} cells reproduced; Δ = sst mean - published, both "
        f"{table.metric} accuracy.",
        "A run counts for a cell when it has the cell's density and these settings"
        + (f" ({show_match(table.match)} in every row):" if table.match else ":"),
    ]
    for row in table.rows:
        notes.append(f"- {row.label}: {show_match(row.match) or 'no more'}.")
    for c in cells:
        where = percent(c.sparsity if table.axis == "sparsity" else c.density)
        notes += mixed_notes(f"{c.row} at {where}", c.mixed)
    return [n for n in notes if n]


def paper_table(
    table: PaperTable, cells: Sequence[Cell], fmt: str, metric: str, problems: Sequence[Run]
) -> str:
    """The published table with sst's runs beside it, as ``fmt``. sst's column is the
    table's own metric (``table.metric``), so Δ compares like with like; ``metric`` (the
    user's ``--metric``) adds a column of that metric where it is another one."""
    if fmt == "json":
        return _paper_json(table, cells, metric, problems)
    also = [] if metric == table.metric else [metric]
    if fmt == "csv":
        return _paper_csv(table, cells, also)
    headers = _paper_headers(table, also)
    rows = [_paper_row(table, c, also) for c in cells]
    return render(
        headers,
        rows,
        fmt,
        numeric=[False] + [True] * (len(headers) - 1),
        title=f"{table.title} ({table.name})",
        notes=_paper_notes(table, cells, also) + problem_notes(problems),
    )


# ----------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sst-table",
        description=__doc__.split("\n\n")[2].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sst {__version__}")
    parser.add_argument(
        "paths",
        nargs="*",
        help=f"run folders or folders holding run folders (default: {DEFAULT_RUNS})",
    )
    parser.add_argument(
        "--by",
        action="append",
        type=key_list,
        default=[],
        metavar="KEY[,KEY]",
        help="more grouping keys: dotted paths into config.json, e.g. sparsity.gamma_sal; "
        "repeat --by or list them with commas (what follows a key is a path)",
    )
    parser.add_argument(
        "--metric",
        choices=sorted(METRICS),
        default="final",
        help="final test accuracy (default) or the best seen during training",
    )
    parser.add_argument(
        "--where",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="keep only runs with these values, e.g. dataset=digits sparsity.gamma_sal=0",
    )
    parser.add_argument("--format", choices=FORMATS, default="markdown")
    parser.add_argument(
        "--paper", metavar="NAME", help=f"a published table: {', '.join(paper_table_names())}"
    )
    parser.add_argument("--list-papers", action="store_true", help="list the published tables")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from W&B (online)")
    parser.add_argument("-o", "--output", type=Path, help="write the table to this file")
    parser.add_argument(
        "--compare",
        metavar="KEY=A,B",
        help="B against A in every group, paired by seed: mean difference, 95%% CI, resolved, "
        "seeds needed (estimate); KEY is any --by/--where key, e.g. method=rigl,srigl",
    )
    args = parser.parse_args(argv)
    args.by = flat(args.by)
    return args


def key_list(text: str) -> list[str]:
    """``--by a,b`` -> ``["a", "b"]``: one ``--by`` takes one argument, so a path after it
    stays a path."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise argparse.ArgumentTypeError(f"{text!r} names no key")
    return keys


def flat(lists: Sequence[Sequence[str]]) -> list[str]:
    """The keys of every ``--by``, in order, once each."""
    return list(dict.fromkeys(k for keys in lists for k in keys))


def compare_option(args: argparse.Namespace) -> CompareSpec | None:
    """``--compare KEY=A,B`` read (ValueError with a one-line message when malformed)."""
    if not args.compare:
        return None
    if args.paper:
        raise ValueError("--compare KEY=A,B compares sst's runs: leave out --paper")
    return parse_compare(args.compare)


def comparison_text(args: argparse.Namespace, spec: CompareSpec, found: Collection) -> str:
    """The ``--compare`` table; ValueError when no run has either value of KEY."""
    keys = list(dict.fromkeys([*DEFAULT_KEYS, *args.by]))
    rows = compare(found.runs, spec, keys, metric=args.metric, problems=found.problems)
    if not rows:
        raise ValueError(f"no runs with {spec.key}={spec.a} or {spec.key}={spec.b}")
    return comparison_table(rows, list(rows[0].key), args.metric, args.format, found.problems)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_papers:
        for name in paper_table_names():
            table = load_paper_table(name)
            preset = f"  (experiment={table.experiment})" if table.experiment else ""
            print(f"{name}: {table.title}{preset}")
        return 0
    try:
        table = load_paper_table(args.paper) if args.paper else None
        spec = compare_option(args)
        found = gather(args.paths, wandb=args.wandb, where=args.where)
    except (ValueError, FileNotFoundError) as error:
        print(f"sst-table: {error}", file=sys.stderr)
        return 2
    if table is not None:
        cells = fill(table, found.runs, found.problems, metric=args.metric)
        text = paper_table(table, cells, args.format, args.metric, found.problems)
    else:
        if not found.runs:
            print("sst-table: no finished runs found", file=sys.stderr)
            for line in problem_notes(found.problems):
                print(line, file=sys.stderr)
            return 1
        if spec is not None:
            try:
                text = comparison_text(args, spec, found)
            except ValueError as error:
                print(f"sst-table: {error}", file=sys.stderr)
                return 1
        else:
            keys = list(dict.fromkeys([*DEFAULT_KEYS, *args.by]))
            groups = aggregate(found.runs, keys, metric=args.metric)
            text = results_table(groups, keys, args.metric, args.format, found.problems)
    if args.format == "csv":
        for line in problem_notes(found.problems):
            print(line, file=sys.stderr)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text if text.endswith("\n") else text + "\n")
        print(f"sst-table: wrote {args.output}", file=sys.stderr)
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
