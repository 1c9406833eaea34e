"""Text tables: one list of header names and rows of cells, written as Markdown, LaTeX
(booktabs) or CSV; numbers formatted the way papers print them."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from .results import Run, Stat

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
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
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
