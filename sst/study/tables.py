"""Text tables: one list of header names and rows of cells, written as Markdown, LaTeX
(booktabs) or CSV; numbers formatted the way papers print them."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from .compare import MAX_SEEDS, Comparison
from .results import Run, Stat, not_finished_records

TEXT_FORMATS = ("markdown", "latex", "csv")
FORMATS = (*TEXT_FORMATS, "json")

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
PLUS_MINUS = " ± "
LATEX_PLUS_MINUS = " $\\pm$ "


def percent(fraction: float | None) -> str:
    """0.95 -> ``95%``, 0.9775 -> ``97.75%``."""
    return "" if fraction is None else f"{100 * fraction:.4g}%"


def number(value: float | None, digits: int = 2, *, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def mean_std(stat: Stat, digits: int = 2) -> str:
    """``mean ± std`` (the mean alone for one seed, empty for none)."""
    if stat.mean is None:
        return ""
    if stat.std is None:
        return number(stat.mean, digits)
    return f"{number(stat.mean, digits)}{PLUS_MINUS}{number(stat.std, digits)}"


def latex_escape(text: str) -> str:
    escaped = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    return escaped.replace(PLUS_MINUS.strip(), LATEX_PLUS_MINUS.strip())


def markdown_lines(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool]
) -> list[str]:
    """A Markdown table with its columns padded to one width (numbers right-aligned), so
    it also reads as plain text."""
    cells = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        padded = (
            c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    rule = ("-" * (w - 1) + ":" if n else "-" * w for w, n in zip(widths, numeric, strict=True))
    return [line(cells[0]), "| " + " | ".join(rule) + " |", *(line(r) for r in cells[1:])]


def render(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    fmt: str,
    *,
    numeric: Sequence[bool] | None = None,
    title: str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The table as ``fmt`` (``markdown``, ``latex`` or ``csv``); ``numeric`` right-aligns
    columns; ``title`` and ``notes`` go above and below it (as ``%`` comments in LaTeX,
    left out of CSV, which holds the table alone)."""
    if fmt not in TEXT_FORMATS:
        raise ValueError(f"format {fmt!r} is unknown: allowed values are {TEXT_FORMATS}")
    numeric = list(numeric) if numeric is not None else [False] * len(headers)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(rows)
        return out.getvalue()
    if fmt == "markdown":
        lines = [f"**{title}**", ""] if title else []
        lines += markdown_lines(headers, rows, numeric)
        if notes:
            lines += ["", *notes]
        return "\n".join(lines) + "\n"
    columns = "".join("r" if n else "l" for n in numeric)
    lines = [f"% {title}"] if title else []
    lines += [
        f"\\begin{{tabular}}{{{columns}}}",
        "\\toprule",
        " & ".join(latex_escape(h) for h in headers) + " \\\\",
        "\\midrule",
        *(" & ".join(latex_escape(str(c)) for c in row) + " \\\\" for row in rows),
        "\\bottomrule",
        "\\end{tabular}",
    ]
    lines += [f"% {note}" for note in notes]
    return "\n".join(lines) + "\n"


def problem_notes(problems: Sequence[Run]) -> list[str]:
    """One line per run that is not in the table: its folder, status and last step."""
    if not problems:
        return []
    lines = [f"Not in the table: {len(problems)} run(s) that did not finish:"]
    for run in problems:
        step = "" if run.last_step is None else f", last step {run.last_step}"
        lines.append(f"- {run.source}: {run.status}{step}")
    return lines


# ----------------------------------------------------------------------------- comparisons
COMPARE_NOTE = (
    "{b} - {a}: mean over pairs (runs with the same settings but {key}, and the same seed) of "
    "the difference in {metric} test accuracy (points); 95% CI from Student's t with n - 1 "
    "degrees of freedom (paired), or Welch's interval where runs cannot be paired; resolved: "
    "the CI excludes 0. Seeds needed: an ESTIMATE of the seeds at which a difference of the "
    "observed size would be resolved with 80% power, from the observed spread. The columns "
    "of {a} and {b} summarise every finished run of each side, paired or not."
)


def show_value(key: str, value: Any) -> str:
    """A group field as a table cell: sparsity as a percentage, None as ``-``, a field that
    differs between the compared sides (``{"a": x, "b": y}``) as ``x / y``."""
    if isinstance(value, dict) and set(value) == {"a", "b"}:
        return f"{show_value(key, value['a'])} / {show_value(key, value['b'])}"
    if value is None:
        return "-"
    if key == "sparsity":
        return percent(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def interval(ci: Sequence[float] | None, digits: int = 2) -> str:
    """``[low, high]`` (empty without an interval)."""
    return "" if ci is None else f"[{number(ci[0], digits)}, {number(ci[1], digits)}]"


def _yes_no(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "no")


def seeds_needed_text(row: Comparison) -> str:
    """The estimate for an unresolved row; ``> MAX_SEEDS`` where it has none (no difference,
    or more seeds than that); ``-`` where it does not apply."""
    if row.resolved is not False:
        return "-"
    return str(row.seeds_needed) if row.seeds_needed is not None else f"> {MAX_SEEDS}"


def comparison_record(row: Comparison) -> dict[str, Any]:
    """A row as JSON: the group's own fields, then ``a``, ``b``, ``n_pairs``, ``mean_diff``,
    ``ci95``, ``resolved``, ``paired`` and the rest (per side, per pair, not used)."""
    m = f"{row.metric}_test_acc"
    spread = row.interval.spread if row.interval is not None else None
    return {
        **row.key,
        "a": row.spec.a,
        "b": row.spec.b,
        "n_pairs": row.n_pairs,
        "mean_diff": row.mean_diff,
        "ci95": row.ci95,
        "resolved": row.resolved,
        "paired": row.paired,
        "dof": row.interval.dof if row.interval is not None else None,
        "sd_diff": spread if row.paired else None,
        "seeds_needed_estimate": row.seeds_needed,
        f"{m}_mean_a": row.acc_a.mean,
        f"{m}_std_a": row.acc_a.std,
        "n_a": row.acc_a.n,
        f"{m}_mean_b": row.acc_b.mean,
        f"{m}_std_b": row.acc_b.std,
        "n_b": row.acc_b.n,
        "pairs": [
            {"seed": p.seed, "a": p.a.source, "b": p.b.source, "diff": p.diff} for p in row.pairs
        ],
        "unfinished_pairs": [
            {
                "seed": p.seed,
                "a": p.a.source,
                "b": p.b.source,
                "a_status": p.a.status,
                "b_status": p.b.status,
            }
            for p in row.unfinished
        ],
        "unpaired": [r.source for r in row.unpaired],
        "differ": row.differ,
        "mixed": row.mixed,
    }


CSV_COMPARE_COLUMNS = (
    "a",
    "b",
    "n_pairs",
    "mean_diff",
    "ci95_low",
    "ci95_high",
    "resolved",
    "paired",
    "dof",
    "seeds_needed_estimate",
    "n_a",
    "mean_a",
    "std_a",
    "n_b",
    "mean_b",
    "std_b",
)


def _csv_row(record: dict[str, Any], keys: Sequence[str], metric: str) -> list[Any]:
    """One CSV line: every number in its own column, as Python writes it."""
    m = f"{metric}_test_acc"
    ci = record["ci95"] or [None, None]
    values = {
        **record,
        "ci95_low": ci[0],
        "ci95_high": ci[1],
        "mean_a": record[f"{m}_mean_a"],
        "std_a": record[f"{m}_std_a"],
        "mean_b": record[f"{m}_mean_b"],
        "std_b": record[f"{m}_std_b"],
    }
    cells = [show_value(k, record[k]) if isinstance(record[k], dict) else record[k] for k in keys]
    return ["" if v is None else v for v in (*cells, *(values[c] for c in CSV_COMPARE_COLUMNS))]


def _side_cell(stat: Stat) -> str:
    return "-" if stat.n == 0 else f"{mean_std(stat)} (n={stat.n})"


def comparison_row_notes(label: str, row: Comparison) -> list[str]:
    """What a row leaves out and why: unfinished pairs, unpaired runs, other differences."""
    a, b = row.spec.a, row.spec.b
    notes = [
        f"- {label}: seed {p.seed} not used, {a} {p.a.status} / {b} {p.b.status}: "
        f"{p.a.source}, {p.b.source}"
        for p in row.unfinished
    ]
    if row.unpaired and row.paired:
        notes.append(
            f"- {label}: {len(row.unpaired)} run(s) without a partner, not used: "
            + ", ".join(r.source for r in row.unpaired)
        )
    elif row.unpaired and row.interval is not None:
        notes.append(f"- {label}: too few pairs: Welch's interval over the unpaired runs")
    if row.differ:
        notes.append(
            f"! {label}: runs of {a} and {b} also differ in {', '.join(row.differ)}: "
            "runs without a counterpart are not compared"
        )
    if row.mixed:
        hint = [m for m in row.mixed if not m.startswith("seed")]
        split = f" (split with --by {','.join(hint[:3])})" if hint else ""
        notes.append(f"! {label}: a side holds runs that differ in {', '.join(row.mixed)}{split}")
    return notes


def comparison_json(rows: Sequence[Comparison], metric: str, problems: Sequence[Run]) -> str:
    """The rows as JSON (``comparison_record``) with the metric, KEY and unfinished runs."""
    spec = rows[0].spec
    return json.dumps(
        {
            "metric": metric,
            "compare": {"key": spec.key, "a": spec.a, "b": spec.b},
            "rows": [comparison_record(r) for r in rows],
            "not_finished": not_finished_records(problems),
        },
        indent=2,
    )


def comparison_cells(row: Comparison, keys: Sequence[str]) -> list[str]:
    """A row's cells in Markdown and LaTeX (the headers of ``comparison_table``)."""
    test = "-" if row.interval is None else ("paired t" if row.paired else "Welch, unpaired")
    return [
        *(show_value(k, row.key[k]) for k in keys),
        _side_cell(row.acc_a),
        _side_cell(row.acc_b),
        str(row.n_pairs),
        number(row.mean_diff, signed=True),
        interval(row.ci95),
        _yes_no(row.resolved),
        test,
        seeds_needed_text(row),
    ]


def comparison_table(
    rows: Sequence[Comparison],
    keys: Sequence[str],
    metric: str,
    fmt: str,
    problems: Sequence[Run] = (),
) -> str:
    """``--compare`` rows as ``fmt`` (markdown, latex, csv or json): per group the two
    sides' accuracy, the pairs, B - A with its 95% CI, resolved, the test, seeds needed."""
    if not rows:
        raise ValueError("no runs of either compared value")
    if fmt == "json":
        return comparison_json(rows, metric, problems)
    if fmt == "csv":
        records = [comparison_record(r) for r in rows]
        return render(
            [*keys, *CSV_COMPARE_COLUMNS], [_csv_row(r, keys, metric) for r in records], fmt
        )
    spec = rows[0].spec
    a, b = spec.a, spec.b
    headers = [*keys, f"{a}: {metric} acc (%)", f"{b}: {metric} acc (%)", "pairs", f"{b} - {a}"]
    headers += ["95% CI", "resolved", "interval", "seeds needed (estimate)"]
    lines, notes = [], []
    for row in rows:
        lines.append(comparison_cells(row, keys))
        notes += comparison_row_notes(" / ".join(lines[-1][: len(keys)]), row)
    notes.append(COMPARE_NOTE.format(a=a, b=b, key=spec.key, metric=metric))
    if metric != "final":
        notes.append("! The accuracy is the BEST test accuracy during training, not the final one.")
    return render(
        headers,
        lines,
        fmt,
        numeric=[False] * len(keys) + [True] * 5 + [False, False, True],
        title=f"{b} vs {a} ({spec.key})",
        notes=[*notes, *problem_notes(problems)],
    )
